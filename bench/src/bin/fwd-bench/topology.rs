//! The topology: node1 of ARCHITECTURE.md's test topology, cut down to what the
//! Service path needs. A client pod and a backend pod on the node, each a namespace
//! with one veth (`eth0`, a /32, routes via 169.254.1.1 as Calico sets them), the
//! node holding 169.254.1.1 on `lo` and a /32 route per pod, and an uplink to an
//! underlay namespace (kxdp requires one; no traffic crosses it). Only addresses in
//! 198.18.0.0/15, only inside namespaces this run created, names unique per run.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::netns::{exec, ip, run, sysfs, Namespaces};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const SERVICE_PORT: u16 = 9000;
pub const TARGET_PORT: u16 = 5201;
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 1);
pub const POD_CIDR: &str = "198.18.1.0/24";
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";
pub const SERVICE_CIDR: &str = "198.19.0.0/17";

/// Interface names inside the namespaces. The pods' host-side veths also carry the
/// run's prefix: their NAPI kernel threads (`napi/<iface>-<id>`) are named after
/// them, and fwd-bench pins its own by name.
pub const UPLINK: &str = "n1u";
pub const POD_IF: &str = "eth0";

pub type Mac = [u8; 6];

pub struct Topology {
    pub node: String,
    /// The node's side of the client's and of the backend's veth.
    pub client_host_if: String,
    pub backend_host_if: String,
    pub client: String,
    pub backend: String,
    /// eth0 of the client pod; the generator's source MAC.
    pub client_mac: Mac,
    pub client_ifindex: u32,
    /// The node's side of the client's veth: the pods' gateway MAC.
    pub client_host_mac: Mac,
    pub backend_mac: Mac,
    pub backend_host_mac: Mac,
    pub backend_host_ifindex: u32,
    /// Host sides of idle pods' veths (`--idle-pods`): ports kxdp serves that carry
    /// no traffic, as on a node with many pods.
    pub idle_pod_ifs: Vec<String>,
    /// The Kubernetes objects kxdp serves.
    pub objects: PathBuf,
    dir: PathBuf,
    // Last: dropped after everything above that may still refer to the namespaces.
    _namespaces: Namespaces,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topology {
    /// Builds the topology under names starting with `prefix`, with `idle_pods`
    /// veths more on the node.
    pub fn build(prefix: &str, idle_pods: usize) -> Result<Topology> {
        let (client_host_if, backend_host_if) = (format!("{prefix}c"), format!("{prefix}b"));
        if client_host_if.len() > 15 {
            anyhow::bail!("prefix {prefix:?} is too long for interface names (at most 14)");
        }
        let idle_name = |end: char, i: usize| format!("{prefix}{end}{i}");
        if idle_pods > 0 && idle_name('i', idle_pods).len() > 15 {
            anyhow::bail!(
                "prefix {prefix:?} is too long for {idle_pods} idle pods' interface names"
            );
        }
        let mut namespaces = Namespaces::default();
        let [node, client, backend, underlay] =
            ["node1", "client", "backend", "underlay"].map(|n| format!("{prefix}-{n}"));
        for n in [&node, &client, &backend, &underlay] {
            namespaces.add(n)?;
        }
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir:?}"))?;
        let objects = dir.join("objects.yaml");
        std::fs::write(&objects, objects_yaml())
            .with_context(|| format!("cannot write {objects:?}"))?;

        run(&[
            "ip", "link", "add", UPLINK, "netns", &node, "type", "veth", "peer", "name", "u1",
            "netns", &underlay,
        ])?;
        ip(&node, &format!("addr add {NODE_IP}/24 dev {UPLINK}"))?;
        ip(&node, &format!("link set {UPLINK} up"))?;
        ip(&underlay, "link set u1 up")?;
        ip(&node, "addr add 169.254.1.1/32 dev lo")?;
        pod(&client, &node, &client_host_if, CLIENT_IP)?;
        pod(&backend, &node, &backend_host_if, BACKEND_IP)?;
        // Both ends on the node: nothing is sent into them, so no pod needs to exist.
        let mut idle_pod_ifs = Vec::with_capacity(idle_pods);
        for i in 0..idle_pods {
            let (host, peer) = (idle_name('i', i), idle_name('p', i));
            ip(
                &node,
                &format!("link add {host} type veth peer name {peer}"),
            )?;
            ip(&node, &format!("link set {peer} up"))?;
            ip(&node, &format!("link set {host} up"))?;
            idle_pod_ifs.push(host);
        }

        let mac =
            |ns: &str, iface: &str| -> Result<Mac> { parse_mac(&sysfs(ns, iface, "address")?) };
        let index = |ns: &str, iface: &str| -> Result<u32> {
            sysfs(ns, iface, "ifindex")?.parse().context("ifindex")
        };
        Ok(Topology {
            client_mac: mac(&client, POD_IF)?,
            client_ifindex: index(&client, POD_IF)?,
            client_host_mac: mac(&node, &client_host_if)?,
            backend_mac: mac(&backend, POD_IF)?,
            backend_host_mac: mac(&node, &backend_host_if)?,
            backend_host_ifindex: index(&node, &backend_host_if)?,
            idle_pod_ifs,
            node,
            client_host_if,
            backend_host_if,
            client,
            backend,
            objects,
            dir,
            _namespaces: namespaces,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the receive processing (NAPI) of the client's host-side veth to a kernel
    /// thread pinned to `core`. Without it, that NAPI runs on the generator's core
    /// (a veth schedules its peer's NAPI on the sending CPU), where the path's first
    /// stage competes with the generator. Called after a path is enabled: the NAPI
    /// instance exists only while XDP or GRO is on, and is recreated with them.
    pub fn thread_client_napi(&self, core: usize) -> Result<()> {
        let iface = &self.client_host_if;
        exec(
            &self.node,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{iface}/threaded"),
            ],
        )
        .with_context(|| format!("cannot make {iface}'s NAPI threaded"))?;
        // comm is truncated to 15 bytes; the prefix keeps it unique to this run.
        let name: String = format!("napi/{iface}-").chars().take(15).collect();
        let mut pinned = 0;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(&name) {
                crate::netns::pin_pid(pid, core)?;
                pinned += 1;
            }
        }
        if pinned == 0 {
            anyhow::bail!("no NAPI thread {name}* found for {iface}");
        }
        Ok(())
    }

    /// `ethtool -S` of an interface in `ns`, as (name, value) pairs.
    pub fn ethtool_stats(&self, ns: &str, iface: &str) -> Result<Vec<(String, u64)>> {
        let out = exec(ns, &["ethtool", "-S", iface])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }
}

/// A pod: namespace `ns` with `eth0` (a /32), its host side `host_if` on the node.
fn pod(ns: &str, node: &str, host_if: &str, addr: Ipv4Addr) -> Result<()> {
    run(&[
        "ip", "link", "add", host_if, "netns", node, "type", "veth", "peer", "name", POD_IF,
        "netns", ns,
    ])?;
    ip(ns, &format!("addr add {addr}/32 dev {POD_IF}"))?;
    ip(ns, &format!("link set {POD_IF} up"))?;
    ip(
        ns,
        &format!("route add 169.254.1.1 dev {POD_IF} scope link"),
    )?;
    ip(ns, "route add default via 169.254.1.1")?;
    ip(node, &format!("link set {host_if} up"))?;
    ip(node, &format!("route add {addr}/32 dev {host_if}"))?;
    Ok(())
}

pub fn parse_mac(s: &str) -> Result<Mac> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))
}

/// node1, one UDP Service (ClusterIP:SERVICE_PORT -> TARGET_PORT) with the backend
/// pod as its only endpoint, in the shape `kubectl get … -o yaml` prints.
fn objects_yaml() -> String {
    format!(
        r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: node1
    annotations:
      flannel.alpha.coreos.com/backend-data: '{{"VNI":1,"VtepMAC":"02:00:c6:13:80:01"}}'
      flannel.alpha.coreos.com/backend-type: vxlan
      flannel.alpha.coreos.com/public-ip: {NODE_IP}
  spec:
    podCIDR: {POD_CIDR}
    podCIDRs:
    - {POD_CIDR}
  status:
    addresses:
    - address: {NODE_IP}
      type: InternalIP
- apiVersion: v1
  kind: Service
  metadata:
    name: fwd
    namespace: bench
  spec:
    clusterIP: {CLUSTER_IP}
    clusterIPs:
    - {CLUSTER_IP}
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ports:
    - name: udp
      port: {SERVICE_PORT}
      protocol: UDP
      targetPort: {TARGET_PORT}
    sessionAffinity: None
    type: ClusterIP
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  metadata:
    name: fwd-x1
    namespace: bench
    labels:
      kubernetes.io/service-name: fwd
  endpoints:
  - addresses:
    - {BACKEND_IP}
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node1
  ports:
  - name: udp
    port: {TARGET_PORT}
    protocol: UDP
"#
    )
}
