// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * kxdp's steering program: hands kxdp the frames it owns, through an AF_XDP socket
 * on the ingress queue, and leaves everything else to the kernel untouched.
 *
 * Owned on a pod port: IPv4 to a Service frontend, to any pod CIDR, or from a local
 * Service endpoint's port (replies of translated flows), and ICMP errors about them.
 * Owned on the uplink: VXLAN to this node's VTEP, IPv4 to a Service frontend (NodePort,
 * LoadBalancer, externalIPs) and ICMP errors about those. ARP replies: on a pod port
 * those to kxdp's own address (it asks pods from the node's pod-CIDR SNAT address,
 * which nothing else uses, so the kernel's own ARP with a pod is never taken); on the
 * uplink those from addresses kxdp asked for. The redirect falls back to XDP_PASS
 * when no socket is bound to the queue, so if kxdp dies traffic fails open to the
 * kernel.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Map sizes kxdp sets at load time (sockets, interfaces): placeholders. */
#define MAX_SOCKETS 1024
#define MAX_IFACES 1024
#define ROLE_UPLINK 1
#define ROLE_POD 2

/* key: the ingress interface's first key + rx queue (each interface's served queues
 * packed after the previous interface's);
 * value: AF_XDP socket fd */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct iface {
	__u32 slot; /* first XSKMAP key of this interface */
	__u32 role;
	__u32 queues; /* its keys: slot .. slot + queues - 1 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32); /* ifindex */
	__type(value, struct iface);
} ifaces SEC(".maps");

struct config {
	__u32 enabled;
	__be32 vtep_ip;
	__be16 vxlan_port;
	__u16 pad;
	__be32 pod_arp_ip; /* the sender of kxdp's ARP requests to pods */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* (address, port, protocol), network byte order: Service frontends, endpoints */
struct l4key {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct l4key);
	__type(value, __u8);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct l4key);
	__type(value, __u8);
} endpoints SEC(".maps");

struct lpm_v4 {
	__u32 prefixlen;
	__be32 ip;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u8);
} pod_cidrs SEC(".maps");

/* The node's own addresses: traffic to them (a pod answering the kubelet's probe
 * from its Service port) is the kernel's, whatever its source. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __be32);
	__type(value, __u8);
} host_addrs SEC(".maps");

/* ARP replies on the uplink from these senders are kxdp's (it asked) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __be32);
	__type(value, __u8);
} arp_pending SEC(".maps");

struct arp_eth_ipv4 {
	__be16 htype, ptype;
	__u8 hlen, plen;
	__be16 op;
	__u8 sha[6];
	__be32 spa;
	__u8 tha[6];
	__be32 tpa;
} __attribute__((packed));

static __always_inline int is_frontend(__be32 ip, __be16 port, __u8 proto)
{
	struct l4key k = { .ip = ip, .port = port, .proto = proto };
	return bpf_map_lookup_elem(&frontends, &k) != NULL;
}

static __always_inline int is_endpoint(__be32 ip, __be16 port, __u8 proto)
{
	struct l4key k = { .ip = ip, .port = port, .proto = proto };
	return bpf_map_lookup_elem(&endpoints, &k) != NULL;
}

static __always_inline int in_pod_cidr(__be32 ip)
{
	struct lpm_v4 k = { .prefixlen = 32, .ip = ip };
	return bpf_map_lookup_elem(&pod_cidrs, &k) != NULL;
}

/* An ICMP error (dest unreachable, time exceeded, parameter problem) about a
 * TCP/UDP packet of a Service flow: its quoted packet went to or came from one. */
static __always_inline int icmp_error_is_ours(void *l4, void *end)
{
	__u8 *icmp = l4;
	if ((void *)(icmp + 8) > end)
		return 0;
	if (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12)
		return 0;
	struct iphdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > end || q->ihl != 5)
		return 0;
	__be16 *ports = (void *)(q + 1);
	if ((void *)(ports + 2) > end)
		return 0;
	return is_frontend(q->saddr, ports[0], q->protocol) ||
	       is_frontend(q->daddr, ports[1], q->protocol) ||
	       is_endpoint(q->daddr, ports[1], q->protocol) ||
	       in_pod_cidr(q->saddr);
}

SEC("xdp")
int kxdp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0, ifindex = ctx->ingress_ifindex;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct iface *ifc = bpf_map_lookup_elem(&ifaces, &ifindex);
	if (!cfg || !cfg->enabled || !ifc)
		return XDP_PASS;
	/* A queue no worker serves: its key would be the next interface's. */
	if (ctx->rx_queue_index >= ifc->queues)
		return XDP_PASS;
	__u32 key = ifc->slot + ctx->rx_queue_index;

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > end || arp->op != bpf_htons(2))
			return XDP_PASS;
		if (ifc->role == ROLE_POD)
			return arp->tpa == cfg->pod_arp_ip ? bpf_redirect_map(&xsks, key, XDP_PASS)
							   : XDP_PASS;
		if (bpf_map_lookup_elem(&arp_pending, &arp->spa))
			return bpf_redirect_map(&xsks, key, XDP_PASS);
		return XDP_PASS;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_PASS;
	void *l4 = (void *)ip + ip->ihl * 4;
	__be16 sport = 0, dport = 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return XDP_PASS;
		sport = ports[0];
		dport = ports[1];
	}
	int ours;
	if (ifc->role == ROLE_UPLINK) {
		ours = (ip->protocol == IPPROTO_UDP && ip->daddr == cfg->vtep_ip &&
			dport == cfg->vxlan_port) ||
		       is_frontend(ip->daddr, dport, ip->protocol) ||
		       (ip->protocol == IPPROTO_ICMP && icmp_error_is_ours(l4, end));
	} else {
		int to_host = bpf_map_lookup_elem(&host_addrs, &ip->daddr) != NULL;
		ours = is_frontend(ip->daddr, dport, ip->protocol) || in_pod_cidr(ip->daddr) ||
		       (!to_host && is_endpoint(ip->saddr, sport, ip->protocol)) ||
		       (ip->protocol == IPPROTO_ICMP && icmp_error_is_ours(l4, end));
	}
	if (!ours)
		return XDP_PASS;
	return bpf_redirect_map(&xsks, key, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
