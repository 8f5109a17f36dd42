/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Internet checksum helpers shared by the benchmark's XDP programs. */
#ifndef KXDP_BENCH_CSUM_H
#define KXDP_BENCH_CSUM_H

#include <linux/types.h>

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit word m -> m'. Byte order
 * does not matter as long as all three are in the same one. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	return ~csum_fold((__u16)~check + (__u16)~old + (__u32) new);
}

static __always_inline __u16 csum_replace32(__u16 check, __u32 old, __u32 new)
{
	check = csum_replace16(check, old >> 16, new >> 16);
	return csum_replace16(check, old & 0xffff, new & 0xffff);
}

#endif
