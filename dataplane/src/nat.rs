//! Rewriting a packet's addresses and ports, with checksum upkeep.
//!
//! A NAT'ed flow is fully described by its two conntrack tuples: a packet seen as one
//! tuple leaves as the other direction's tuple reversed (the Linux conntrack model).
//! Checksums follow RFC 1624 incrementally, except where the caller will compute the
//! L4 checksum in full anyway (frames from pods, see [`crate::ports::PortRole::Pod`]).

use std::net::Ipv4Addr;

use crate::checksum::{self, fold, update16, update32};
use crate::flow::{FiveTuple, Proto};
use crate::packet::{ETH_LEN, IPV4_LEN, L4_AT, TCP_CSUM_AT, UDP_CSUM_AT};

/// How to keep the L4 checksum right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Csum {
    /// The checksum is complete: update it for each changed word.
    Incremental,
    /// The caller recomputes it in full afterwards (it may be a partial checksum).
    Later,
}

#[inline]
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Position of the L4 checksum inside the segment, and whether zero means "none".
#[inline]
fn l4_csum_at(proto: Proto) -> (usize, bool) {
    match proto {
        Proto::Tcp => (TCP_CSUM_AT, false),
        Proto::Udp => (UDP_CSUM_AT, true),
    }
}

/// Rewrites the IPv4/TCP/UDP packet `ip` (IP header first) from tuple `from` to `to`.
/// `ip` must hold at least the IP header and the first `csum_at + 2` bytes of the L4
/// header (so this also serves packets quoted inside ICMP errors, whose L4 header may
/// be cut short: a missing L4 checksum is then left alone).
pub fn rewrite(ip: &mut [u8], from: &FiveTuple, to: &FiveTuple, mode: L4Csum) {
    // RFC 1624 eqn. 3 for every changed word, summed first and folded once:
    // HC' = ~(~HC + sum(~m) + sum(m')).
    let (src0, dst0) = (u32::from(from.src), u32::from(from.dst));
    let (src1, dst1) = (u32::from(to.src), u32::from(to.dst));
    let addr_delta = word_delta(src0, src1) + word_delta(dst0, dst1);
    let ipc = !fold((!get16(ip, 10)) as u64 + addr_delta);
    put16(ip, 10, ipc);
    ip[12..16].copy_from_slice(&to.src.octets());
    ip[16..20].copy_from_slice(&to.dst.octets());

    let l4 = IPV4_LEN;
    if ip.len() >= l4 + 4 {
        put16(ip, l4, to.sport);
        put16(ip, l4 + 2, to.dport);
    }
    let (at, zero_is_none) = l4_csum_at(from.proto);
    if mode == L4Csum::Later || ip.len() < l4 + at + 2 {
        return;
    }
    let c = get16(ip, l4 + at);
    if zero_is_none && c == 0 {
        return; // IPv4 UDP without a checksum stays without one.
    }
    let port_delta =
        (!from.sport) as u64 + to.sport as u64 + (!from.dport) as u64 + to.dport as u64;
    let mut c = !fold((!c) as u64 + addr_delta + port_delta);
    if zero_is_none && c == 0 {
        c = 0xffff; // a computed zero is sent as all ones (RFC 768)
    }
    put16(ip, l4 + at, c);
}

/// `~m + m'` for both 16-bit halves of a 32-bit field (RFC 1624's update terms).
#[inline]
fn word_delta(old: u32, new: u32) -> u64 {
    (!(old >> 16) & 0xffff) as u64
        + (!old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64
}

/// Recomputes the L4 checksum of the frame's TCP or UDP segment in full. A UDP
/// checksum of zero (none) stays zero.
pub fn complete_l4_checksum(frame: &mut [u8], proto: Proto, l4_len: usize) {
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[ETH_LEN + 12..ETH_LEN + 16]).unwrap());
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[ETH_LEN + 16..ETH_LEN + 20]).unwrap());
    let (at, zero_is_none) = l4_csum_at(proto);
    let seg = &mut frame[L4_AT..L4_AT + l4_len];
    if zero_is_none && get16(seg, at) == 0 {
        return;
    }
    let mut c = checksum::l4_checksum(src, dst, proto as u8, seg, at);
    if zero_is_none && c == 0 {
        c = 0xffff;
    }
    put16(seg, at, c);
}

/// Sets the IPv4 source and destination addresses, updating the header checksum
/// (for ICMP, whose checksum does not cover a pseudo-header).
pub fn set_addrs(ip: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let mut c = get16(ip, 10);
    let old_src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let old_dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    c = update32(c, old_src, u32::from(src));
    c = update32(c, old_dst, u32::from(dst));
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    put16(ip, 10, c);
}

/// Decrements the TTL with an incremental header-checksum update. False when the
/// packet must not be forwarded (TTL would reach zero).
#[inline]
pub fn decrement_ttl(ip: &mut [u8]) -> bool {
    let ttl = ip[8];
    if ttl <= 1 {
        return false;
    }
    let old = get16(ip, 8);
    ip[8] = ttl - 1;
    let new = get16(ip, 8);
    let c = update16(get16(ip, 10), old, new);
    put16(ip, 10, c);
    true
}

/// Fills the IPv4 header checksum of a header kxdp built itself.
pub fn fill_ip_checksum(ip: &mut [u8]) {
    put16(ip, 10, 0);
    let c = checksum::checksum(&ip[..IPV4_LEN]);
    put16(ip, 10, c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::checksum;
    use proptest::prelude::*;

    fn tuple(proto: Proto, s: [u8; 4], d: [u8; 4], sp: u16, dp: u16) -> FiveTuple {
        FiveTuple {
            src: s.into(),
            dst: d.into(),
            sport: sp,
            dport: dp,
            proto,
        }
    }

    /// A valid IPv4 packet built by etherparse with correct checksums.
    fn packet(t: &FiveTuple, payload: &[u8], udp_csum: bool) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(t.src.octets(), t.dst.octets(), 64);
        let mut out = Vec::new();
        match t.proto {
            Proto::Tcp => b
                .tcp(t.sport, t.dport, 7, 1000)
                .syn()
                .write(&mut out, payload)
                .unwrap(),
            Proto::Udp => b.udp(t.sport, t.dport).write(&mut out, payload).unwrap(),
        }
        if !udp_csum && t.proto == Proto::Udp {
            out[IPV4_LEN + 6] = 0;
            out[IPV4_LEN + 7] = 0;
        }
        out
    }

    fn l4_ok(ip: &[u8]) -> bool {
        let h = etherparse::Ipv4HeaderSlice::from_slice(ip).unwrap();
        let seg = &ip[IPV4_LEN..];
        let mut acc = checksum::pseudo_header(
            h.source_addr(),
            h.destination_addr(),
            ip[9],
            seg.len() as u16,
        );
        acc = checksum::accumulate(acc, seg);
        checksum::fold(acc) == 0xffff
    }

    proptest! {
        #[test]
        fn rewrite_keeps_ip_and_l4_checksums_valid(
            tcp in any::<bool>(),
            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
            p in any::<[u16; 4]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let proto = if tcp { Proto::Tcp } else { Proto::Udp };
            let from = tuple(proto, a, b, p[0], p[1]);
            let to = tuple(proto, c, d, p[2], p[3]);
            let mut pkt = packet(&from, &payload, true);
            rewrite(&mut pkt, &from, &to, L4Csum::Incremental);
            prop_assert_eq!(checksum(&pkt[..IPV4_LEN]), 0);
            prop_assert!(l4_ok(&pkt));
            let want = packet(&to, &payload, true);
            // Same bytes as building the translated packet from scratch, but for the
            // ones' complement ambiguity of an all-ones TCP checksum.
            prop_assert_eq!(&pkt[..IPV4_LEN + 4], &want[..IPV4_LEN + 4]);
        }

        #[test]
        fn zero_udp_checksum_stays_zero(a in any::<[u8; 4]>(), c in any::<[u8; 4]>(), p in any::<u16>()) {
            let from = tuple(Proto::Udp, a, [198, 19, 0, 10], p, 53);
            let to = tuple(Proto::Udp, c, [198, 18, 2, 10], p, 5353);
            let mut pkt = packet(&from, b"query", false);
            rewrite(&mut pkt, &from, &to, L4Csum::Incremental);
            prop_assert_eq!(&pkt[IPV4_LEN + 6..IPV4_LEN + 8], &[0u8, 0][..]);
            prop_assert_eq!(checksum(&pkt[..IPV4_LEN]), 0);
        }

        #[test]
        fn ttl_decrement_keeps_header_checksum_valid(ttl in 2u8..=255) {
            let t = tuple(Proto::Udp, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
            let mut pkt = packet(&t, b"x", true);
            pkt[8] = ttl;
            fill_ip_checksum(&mut pkt);
            prop_assert!(decrement_ttl(&mut pkt));
            prop_assert_eq!(pkt[8], ttl - 1);
            prop_assert_eq!(checksum(&pkt[..IPV4_LEN]), 0);
        }
    }

    #[test]
    fn ttl_of_one_is_not_forwarded() {
        let t = tuple(Proto::Udp, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        let mut pkt = packet(&t, b"x", true);
        pkt[8] = 1;
        assert!(!decrement_ttl(&mut pkt));
    }

    #[test]
    fn partial_checksum_is_completed_in_full() {
        let t = tuple(Proto::Tcp, [198, 18, 1, 10], [198, 18, 1, 11], 40000, 80);
        let good = packet(&t, b"hello", true);
        let mut frame = vec![0u8; ETH_LEN];
        frame.extend_from_slice(&good);
        // What a pod with tx offload sends: only the pseudo-header sum in the field.
        frame[L4_AT + TCP_CSUM_AT..L4_AT + TCP_CSUM_AT + 2].copy_from_slice(&[0x9e, 0x56]);
        complete_l4_checksum(&mut frame, Proto::Tcp, good.len() - IPV4_LEN);
        assert_eq!(&frame[ETH_LEN..], &good[..]);
    }
}
