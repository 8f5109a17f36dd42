// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The sink, on the backend pod's eth0: counts the benchmark's UDP frames (to the
 * backend's address and port) and drops them; everything else (ARP above all: the
 * forwarders resolve the pod's MAC) goes to the pod's stack. A frame counts as
 * received only with a correct IPv4 header checksum and a correct (or absent) UDP
 * checksum; the others are counted apart, so a forwarder that mangles frames does
 * not score. Two attach points, chosen by fwd-bench --sink: tc ingress (the default)
 * or XDP; see the programs below.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"

#define MAX_UDP_LEN 512

struct target {
	__be32 ip;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct target);
} target SEC(".maps");

enum { GOOD = 0, BAD_CHECKSUM = 1, COUNTERS = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline int checksums_ok(struct iphdr *ip, struct udphdr *udp, void *end)
{
	__u16 *w = (void *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	if (csum_fold(sum) != 0xffff)
		return 0;
	if (!udp->check)
		return 1;
	__u16 len = bpf_ntohs(udp->len);
	if (len < sizeof(*udp) || len > MAX_UDP_LEN)
		return 0;
	sum = (ip->saddr >> 16) + (ip->saddr & 0xffff) + (ip->daddr >> 16) +
	      (ip->daddr & 0xffff) + bpf_htons(IPPROTO_UDP) + udp->len;
	__u8 *p = (void *)udp;
	for (int i = 0; i < MAX_UDP_LEN / 2; i++) {
		if (2 * i + 1 >= len)
			break;
		if ((void *)(p + 2 * i + 2) > end)
			return 0;
		sum += *(__u16 *)(p + 2 * i);
	}
	if (len & 1) {
		__u32 last = len - 1;
		if (last >= MAX_UDP_LEN || (void *)(p + last + 1) > end)
			return 0;
		/* the odd byte is the high half of a word in network order */
		sum += bpf_htons((__u16)p[last] << 8);
	}
	return csum_fold(sum) == 0xffff;
}

/* Counts the frame if it is the benchmark's: returns whether it was. */
static __always_inline int counted(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 zero = 0;

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		return 0;
	struct target *t = bpf_map_lookup_elem(&target, &zero);
	if (!t || ip->daddr != t->ip || udp->dest != t->port)
		return 0;
	__u32 k = checksums_ok(ip, udp, end) ? GOOD : BAD_CHECKSUM;
	__u64 *c = bpf_map_lookup_elem(&counts, &k);
	if (c)
		(*c)++;
	return 1;
}

/* At the driver: frames redirected by XDP are counted before any skb exists, but an
 * skb arriving here (the kernel's and AF_XDP's) is first converted, and copied if
 * it has less than 256 bytes of headroom, as AF_XDP's copy-mode skbs do. */
SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return counted(data, end) ? XDP_DROP : XDP_PASS;
}

/* Where the pod's stack starts (tc ingress): every path delivers an skb, as it must
 * to a real pod. */
SEC("tc")
int tc_sink(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	return counted(data, end) ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
