//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).
//!
//! NAT changes a few 16-bit words of a header; RFC 1624 eqn. 3 updates the checksum
//! from the old and new words alone (`HC' = ~(~HC + ~m + m')`), so rewriting an
//! address costs the same whatever the packet's length. Full sums are for frames whose
//! L4 checksum cannot be trusted to be complete (pods' checksum offload) and for
//! packets kxdp builds itself.

use std::net::Ipv4Addr;

/// Adds `data` as big-endian 16-bit words into a 64-bit accumulator (not folded).
#[inline]
pub fn accumulate(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Summing 64-bit big-endian words and folding later gives the same ones'
        // complement sum as 16-bit words (RFC 1071 section 2(B)), four times faster.
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + carry as u64;
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc = add_carry(acc, u16::from_be_bytes([p[0], p[1]]) as u64);
    }
    if let [last] = pairs.remainder() {
        acc = add_carry(acc, (*last as u64) << 8);
    }
    acc
}

#[inline]
fn add_carry(acc: u64, v: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(v);
    s + carry as u64
}

/// Folds an accumulator into a 16-bit ones' complement sum (not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc >> 32) + (acc & 0xffff_ffff);
    acc = (acc >> 32) + (acc & 0xffff_ffff);
    acc = (acc >> 16) + (acc & 0xffff);
    acc = (acc >> 16) + (acc & 0xffff);
    acc as u16
}

/// The checksum of `data` (RFC 1071): the inverted folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// Whether a 20-byte IPv4 header's checksum verifies: five 32-bit words summed and
/// folded, the common case of [`checksum`] without its loop.
#[inline]
pub fn ipv4_header_ok(h: &[u8]) -> bool {
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// Sum of the IPv4 pseudo-header for TCP/UDP (RFC 793 section 3.1, RFC 768). The
/// addresses go in as 32-bit words: they fold to the same sum as their halves.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: u16) -> u64 {
    u32::from(src) as u64 + u32::from(dst) as u64 + proto as u64 + l4_len as u64
}

/// The full TCP or UDP checksum of `segment` (header with any checksum field value
/// and payload); the field is the 16-bit word at `csum_at`, an even offset.
#[inline]
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8], csum_at: usize) -> u16 {
    debug_assert!(
        csum_at.is_multiple_of(2),
        "the checksum field is a 16-bit word of the segment"
    );
    let field = u16::from_be_bytes([segment[csum_at], segment[csum_at + 1]]);
    // One pass over the whole segment, then the field's value taken back out by
    // adding its ones' complement: cheaper than summing the two sides around it.
    let acc = accumulate(
        pseudo_header(src, dst, proto, segment.len() as u16),
        segment,
    );
    !fold(add_carry(acc, (!field) as u64))
}

/// RFC 1624 eqn. 3 for one 16-bit word: the new checksum after `old` became `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(acc)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc = (!check) as u64
        + (!(old >> 16) & 0xffff) as u64
        + (!old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 as written: 16-bit words, end-around carry, one's complement.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += w as u32;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    proptest! {
        #[test]
        fn ipv4_header_check_agrees_with_the_general_checksum(h in any::<[u8; 20]>()) {
            prop_assert_eq!(ipv4_header_ok(&h), checksum(&h) == 0);
        }

        #[test]
        fn checksum_matches_rfc1071_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn incremental_update_matches_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 8..200),
            at in 0usize..100,
            new in any::<u32>(),
        ) {
            let at = (at % (data.len() / 2 - 1)) * 2; // 16-bit aligned
            let before = checksum(&data);
            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&(new as u16).to_be_bytes());
            let updated = update16(before, old16, new as u16);
            // 0x0000 and 0xffff are the same ones' complement number.
            let full = checksum(&data);
            prop_assert!(updated == full || (updated == 0xffff && full == 0) || (updated == 0 && full == 0xffff));
        }

        #[test]
        fn address_update_matches_etherparse(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            sport in any::<u16>(), dport in any::<u16>(),
        ) {
            let udp = etherparse::UdpHeader::with_ipv4_checksum(sport, dport,
                &etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst).unwrap(), &payload).unwrap();
            let updated = update32(udp.checksum, u32::from_be_bytes(dst), u32::from_be_bytes(new_dst));
            let want = etherparse::UdpHeader::with_ipv4_checksum(sport, dport,
                &etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, new_dst).unwrap(), &payload).unwrap();
            // etherparse maps a computed 0 to 0xffff (UDP's rule); compare as ones' complement numbers.
            let norm = |c: u16| if c == 0 { 0xffff } else { c };
            prop_assert_eq!(norm(updated), norm(want.checksum));
        }

        #[test]
        fn full_l4_checksum_matches_etherparse(
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sport in any::<u16>(), dport in any::<u16>(),
            field in any::<u16>(),
        ) {
            let ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst).unwrap();
            let udp = etherparse::UdpHeader::with_ipv4_checksum(sport, dport, &ip, &payload).unwrap();
            let mut seg = udp.to_bytes().to_vec();
            seg.extend_from_slice(&payload);
            // Whatever the field holds (a partial sum, garbage) does not count.
            seg[6..8].copy_from_slice(&field.to_be_bytes());
            let c = l4_checksum(src.into(), dst.into(), 17, &seg, 6);
            let norm = |c: u16| if c == 0 { 0xffff } else { c };
            prop_assert_eq!(norm(c), norm(udp.checksum));
        }
    }
}
