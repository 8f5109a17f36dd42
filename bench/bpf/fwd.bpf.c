// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The in-kernel ceiling: what an XDP dataplane does for an established Service flow
 * to a pod on the same node, and nothing more. A frame to a Service frontend
 * (ClusterIP, port, protocol) gets its destination rewritten to the backend (address
 * and port, IPv4 and L4 checksums updated incrementally, TTL decremented), the MACs
 * of the backend's veth, and is redirected out of it. No conntrack and no Maglev:
 * one hash lookup stands for both. Everything else goes to the kernel.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"

struct frontend {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct backend {
	__be32 ip;
	__be16 port;
	__u16 pad;
	__u32 ifindex; /* the backend pod's host-side veth */
	__u8 src_mac[ETH_ALEN]; /* that veth's */
	__u8 dst_mac[ETH_ALEN]; /* the pod's eth0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct frontend);
	__type(value, struct backend);
} services SEC(".maps");

SEC("xdp")
int xdp_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
		return XDP_PASS;
	__be16 *ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > end)
		return XDP_PASS;
	struct frontend key = { .ip = ip->daddr, .port = ports[1], .proto = ip->protocol };
	struct backend *b = bpf_map_lookup_elem(&services, &key);
	if (!b)
		return XDP_PASS;

	__u16 *l4check = 0;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		/* zero means "no checksum" in IPv4: leave it zero */
		if (udp->check)
			l4check = &udp->check;
	} else if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return XDP_PASS;
		l4check = &tcp->check;
	} else {
		return XDP_PASS;
	}
	if (l4check) {
		__u16 c = csum_replace32(*l4check, ip->daddr, b->ip);
		c = csum_replace16(c, ports[1], b->port);
		if (!c && ip->protocol == IPPROTO_UDP)
			c = 0xffff;
		*l4check = c;
	}
	ports[1] = b->port;
	__u16 ip_check = csum_replace32(ip->check, ip->daddr, b->ip);
	/* TTL shares a 16-bit word with the protocol */
	__u16 old_ttl = *(__u16 *)&ip->ttl;
	ip->ttl--;
	ip->check = csum_replace16(ip_check, old_ttl, *(__u16 *)&ip->ttl);
	ip->daddr = b->ip;
	__builtin_memcpy(eth->h_source, b->src_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, b->dst_mac, ETH_ALEN);
	return bpf_redirect(b->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
