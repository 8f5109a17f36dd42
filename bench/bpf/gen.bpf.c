// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Load generator. User space runs this program with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES, ingress_ifindex set to the client pod's eth0, so every
 * XDP_TX sends one frame out of eth0 to the node: about 1 Mpps on one core here,
 * where user-space generators top out near 470 kpps.
 *
 * The kernel recycles the frames' pages after the receiver has rewritten them in
 * place (forwarding and NAT do), so every run writes the whole Ethernet, IPv4 and
 * UDP header again from the template, then picks the flow: consecutive runs cycle
 * through `flow_mask + 1` source ports, the UDP checksum adjusted to match.
 *
 * Each BPF_PROG_TEST_RUN call costs tens of milliseconds of set-up and tear-down
 * here, so user space makes one call with a huge repeat count and stops it with a
 * signal, and the program paces itself: with a non-zero `interval_ns` a run that
 * comes before its turn returns XDP_DROP (the page goes straight back to the test
 * run's pool) instead of sending. `sent` counts the frames sent.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"

#define HDR_WORDS 21 /* 14 + 20 + 8 bytes of headers, as 16-bit words */
#define SPORT_WORD 17 /* (14 + 20) / 2: the UDP source port */
#define UCSUM_WORD 20 /* (14 + 20 + 6) / 2: the UDP checksum */
#define MAX_LAG 64

struct template {
	__u16 hdr[HDR_WORDS]; /* headers of flow 0, checksums complete */
	__u16 flow_mask;      /* flows - 1; flows is a power of two */
	__u32 pad;
	__u64 interval_ns;    /* pacing: time between frames; 0 sends at every run */
};

/* per CPU: the flow sequence number, the next frame's due time, frames sent */
struct state {
	__u32 seq;
	__u32 pad;
	__u64 due_ns;
	__u64 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct template);
} template SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
} state SEC(".maps");

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u16 *w = data;
	__u32 zero = 0;

	if ((void *)(w + HDR_WORDS) > end)
		return XDP_ABORTED;
	struct template *t = bpf_map_lookup_elem(&template, &zero);
	struct state *st = bpf_map_lookup_elem(&state, &zero);
	if (!t || !st)
		return XDP_ABORTED;
	if (t->interval_ns) {
		__u64 now = bpf_ktime_get_ns();
		if (now < st->due_ns)
			return XDP_DROP;
		/* after a stall (the thread preempted) catch up with at most one
		 * batch: a longer burst would overflow the peer veth's 256-frame ring
		 * when its NAPI runs on another core */
		if (now - st->due_ns > MAX_LAG * t->interval_ns)
			st->due_ns = now - MAX_LAG * t->interval_ns;
		st->due_ns += t->interval_ns;
	}
#pragma unroll
	for (int i = 0; i < HDR_WORDS; i++)
		w[i] = t->hdr[i];
	__u16 flow = st->seq++ & t->flow_mask;
	__u16 sport = bpf_htons(bpf_ntohs(t->hdr[SPORT_WORD]) + flow);
	__u16 check = csum_replace16(t->hdr[UCSUM_WORD], t->hdr[SPORT_WORD], sport);
	w[SPORT_WORD] = sport;
	w[UCSUM_WORD] = check ? check : 0xffff;
	st->sent++;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
