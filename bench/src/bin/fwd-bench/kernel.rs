//! The kernel's path: IPv4 forwarding with the rules kube-proxy's nftables mode
//! writes for one ClusterIP Service with one endpoint (table `ip kube-proxy`, the
//! `service-ips` verdict map, a per-Service chain picking an endpoint chain with
//! `numgen`, the endpoint chain's `dnat`, masquerade marking, and the filter chains
//! that check new connections). Established packets, like the benchmark's, skip the
//! nat chains and meet only the conntrack lookup and the filter chains' `ct state`
//! tests: what a kube-proxy node does per packet.
//!
//! The client's host-side veth gets GRO: frames sent into a veth by XDP (the
//! generator's XDP_TX) are only received when the peer runs NAPI. No RPS: forwarding
//! on a veth runs in the sender's context, and RPS made it slower here.

use anyhow::{Context, Result};

use crate::netns::exec;
use crate::topology::{
    Topology, BACKEND_IP, CLUSTER_CIDR, CLUSTER_IP, SERVICE_CIDR, SERVICE_PORT, TARGET_PORT,
};

const TABLE: &str = "kube-proxy";

/// Forwarding and the rules, on while this lives.
pub struct KernelPath {
    node: String,
    client_host_if: String,
}

impl KernelPath {
    pub fn enable(topo: &Topology) -> Result<KernelPath> {
        exec(&topo.node, &["nft", "--version"])
            .context("nft not found: apt-get install nftables (scripts/bench does)")?;
        let rules = topo.dir().join("kube-proxy.nft");
        std::fs::write(&rules, ruleset()).with_context(|| format!("cannot write {rules:?}"))?;
        let path = KernelPath {
            node: topo.node.clone(),
            client_host_if: topo.client_host_if.clone(),
        };
        exec(&topo.node, &["nft", "-f", &rules.to_string_lossy()])?;
        exec(&topo.node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        exec(
            &topo.node,
            &["ethtool", "-K", &topo.client_host_if, "gro", "on"],
        )?;
        Ok(path)
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        let _ = exec(
            &self.node,
            &["ethtool", "-K", &self.client_host_if, "gro", "off"],
        );
        let _ = exec(&self.node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        let _ = exec(&self.node, &["nft", "delete", "table", "ip", TABLE]);
    }
}

/// kube-proxy's nftables rules (pkg/proxy/nftables/proxier.go) for the one Service.
fn ruleset() -> String {
    format!(
        r#"table ip {TABLE} {{
	set cluster-ips {{ type ipv4_addr; elements = {{ {CLUSTER_IP} }} }}
	map service-ips {{
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = {{ {CLUSTER_IP} . udp . {SERVICE_PORT} : goto service-bench-fwd-udp }}
	}}
	map service-nodeports {{ type inet_proto . inet_service : verdict; }}
	map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
	map firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}

	chain filter-prerouting {{
		type filter hook prerouting priority dstnat - 10; policy accept;
		ct state new jump firewall-check
	}}
	chain filter-forward {{
		type filter hook forward priority -110; policy accept;
		ct state new jump service-endpoints-check
		ct state new jump cluster-ips-check
	}}
	chain filter-output {{
		type filter hook output priority -110; policy accept;
		ct state new jump service-endpoints-check
		ct state new jump firewall-check
	}}
	chain firewall-check {{
		ip daddr . meta l4proto . th dport vmap @firewall-ips
	}}
	chain service-endpoints-check {{
		ip daddr . meta l4proto . th dport vmap @no-endpoint-services
	}}
	chain cluster-ips-check {{
		ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
		ip daddr {SERVICE_CIDR} drop comment "Drop traffic to unallocated ClusterIPs"
	}}
	chain nat-prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}}
	chain nat-output {{
		type nat hook output priority -100; policy accept;
		jump services
	}}
	chain nat-postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		jump masquerading
	}}
	chain mark-for-masquerade {{
		meta mark set meta mark | 0x4000
	}}
	chain masquerading {{
		meta mark & 0x4000 == 0 return
		meta mark set meta mark ^ 0x4000
		masquerade fully-random
	}}
	chain services {{
		ip daddr . meta l4proto . th dport vmap @service-ips
		fib daddr type local meta l4proto . th dport vmap @service-nodeports
	}}
	chain service-bench-fwd-udp {{
		ip daddr {CLUSTER_IP} udp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade
		numgen random mod 1 vmap {{ 0 : goto endpoint-bench-fwd-udp-0 }}
	}}
	chain endpoint-bench-fwd-udp-0 {{
		ip saddr {BACKEND_IP} jump mark-for-masquerade
		meta l4proto udp dnat to {BACKEND_IP}:{TARGET_PORT}
	}}
}}
"#
    )
}
