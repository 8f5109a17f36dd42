//! Validating an Ethernet + IPv4 (+ TCP/UDP/ICMP) frame once, at the boundary.
//!
//! [`parse`] checks every length the fast path will rely on and returns the offsets and
//! fields it needs ([`Headers`]); after that, header accessors over the frame cannot go
//! out of bounds. A frame that fails a check gets the [`DropReason`] that names the
//! defect; a frame that is not IPv4 is left to the kernel.

use std::net::Ipv4Addr;

use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet};

use crate::checksum;
use crate::flow::{FiveTuple, Proto};
use crate::verdict::DropReason;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const TCP_MIN_LEN: usize = 20;
pub const ICMP_LEN: usize = 8;
pub const IP_PROTO_ICMP: u8 = 1;
/// Offsets of the checksum field inside the L4 header.
pub const TCP_CSUM_AT: usize = 16;
pub const UDP_CSUM_AT: usize = 6;

/// L4 details the pipeline acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
        len: u16,
    },
    /// ICMP with its type and code (an error quotes a packet after the 8-byte header).
    Icmp {
        ty: u8,
        code: u8,
    },
    Other,
}

/// What [`parse`] learned about a valid frame. Offsets are from the frame's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// IPv4 total length: the frame is `ETH_LEN + ip_len` bytes once padding is cut.
    pub ip_len: usize,
    pub dont_frag: bool,
    pub ttl: u8,
    pub l4: L4,
}

pub const L4_AT: usize = ETH_LEN + IPV4_LEN;

impl Headers {
    /// The 5-tuple of a TCP or UDP packet.
    #[inline]
    pub fn tuple(&self) -> Option<FiveTuple> {
        let (proto, sport, dport) = match self.l4 {
            L4::Tcp { sport, dport, .. } => (Proto::Tcp, sport, dport),
            L4::Udp { sport, dport, .. } => (Proto::Udp, sport, dport),
            _ => return None,
        };
        Some(FiveTuple {
            src: self.src,
            dst: self.dst,
            sport,
            dport,
            proto,
        })
    }

    /// Bytes of the L4 segment (header and payload) inside the IP packet.
    pub fn l4_len(&self) -> usize {
        self.ip_len - IPV4_LEN
    }
}

/// The 5-tuple [`parse`] would find in a TCP or UDP frame, read at fixed offsets
/// without validating the rest (no checksum, no lengths past the ports): a hint for
/// prefetching the frame's flow before it is parsed for real. `None` for a frame whose
/// first 38 bytes already say it carries no tuple: too short, not IPv4, a version or
/// header length [`parse`] rejects (options included), a fragment, another protocol.
#[inline(always)]
pub fn peek_tuple(frame: &[u8]) -> Option<FiveTuple> {
    // One length check; the array type lets every read below go unchecked.
    let b: &[u8; L4_AT + 4] = frame.get(..L4_AT + 4)?.try_into().ok()?;
    let ip = ETH_LEN;
    let version_ihl = (4 << 4) | (IPV4_LEN / 4) as u8;
    if b[12..14] != [0x08, 0x00] || b[ip] != version_ihl {
        return None;
    }
    // More-fragments flag or a fragment offset.
    if u16::from_be_bytes([b[ip + 6], b[ip + 7]]) & 0x3fff != 0 {
        return None;
    }
    let proto = Proto::from_ip_number(b[ip + 9])?;
    let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Some(FiveTuple {
        src: Ipv4Addr::from(be32(ip + 12)),
        dst: Ipv4Addr::from(be32(ip + 16)),
        sport: u16::from_be_bytes([b[L4_AT], b[L4_AT + 1]]),
        dport: u16::from_be_bytes([b[L4_AT + 2], b[L4_AT + 3]]),
        proto,
    })
}

/// Validates a frame. `Ok(None)`: not IPv4, leave it to the kernel.
pub fn parse(frame: &[u8]) -> Result<Option<Headers>, DropReason> {
    if frame.len() < ETH_LEN {
        return Err(DropReason::Truncated);
    }
    if EthernetFrame::new_unchecked(frame).ethertype() != EthernetProtocol::Ipv4 {
        return Ok(None);
    }
    let ip_bytes = &frame[ETH_LEN..];
    if ip_bytes.len() < IPV4_LEN {
        return Err(DropReason::Truncated);
    }
    let ip = Ipv4Packet::new_unchecked(ip_bytes);
    if ip.version() != 4 || ip.header_len() < IPV4_LEN as u8 {
        return Err(DropReason::BadIpHeader);
    }
    if ip.header_len() > IPV4_LEN as u8 {
        return Err(DropReason::IpOptions);
    }
    let ip_len = ip.total_len() as usize;
    if ip_len < IPV4_LEN {
        return Err(DropReason::BadIpHeader);
    }
    if ip_len > ip_bytes.len() {
        return Err(DropReason::Truncated);
    }
    if !checksum::ipv4_header_ok(&ip_bytes[..IPV4_LEN]) {
        return Err(DropReason::BadIpChecksum);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::IpFragment);
    }
    let proto: u8 = ip.next_header().into();
    let seg = &ip_bytes[IPV4_LEN..ip_len];
    let be16 = |at: usize| u16::from_be_bytes([seg[at], seg[at + 1]]);
    let l4 = match proto {
        6 => {
            if seg.len() < TCP_MIN_LEN {
                return Err(DropReason::Truncated);
            }
            let doff = (seg[12] >> 4) as usize * 4;
            if doff < TCP_MIN_LEN {
                return Err(DropReason::BadL4Header);
            }
            if doff > seg.len() {
                return Err(DropReason::Truncated);
            }
            L4::Tcp {
                sport: be16(0),
                dport: be16(2),
                flags: seg[13],
            }
        }
        17 => {
            if seg.len() < UDP_LEN {
                return Err(DropReason::Truncated);
            }
            let len = be16(4);
            // A UDP length below the header (zero included) or past the IP payload is
            // malformed (RFC 768); shorter than the payload is trailing padding.
            if (len as usize) < UDP_LEN || len as usize > seg.len() {
                return Err(DropReason::BadL4Header);
            }
            L4::Udp {
                sport: be16(0),
                dport: be16(2),
                len,
            }
        }
        IP_PROTO_ICMP => {
            if seg.len() < ICMP_LEN {
                return Err(DropReason::Truncated);
            }
            L4::Icmp {
                ty: seg[0],
                code: seg[1],
            }
        }
        _ => L4::Other,
    };
    Ok(Some(Headers {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto,
        ip_len,
        dont_frag: ip.dont_frag(),
        ttl: ip.hop_limit(),
        l4,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(proto: Proto) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
            [10, 0, 0, 1],
            [10, 96, 0, 10],
            64,
        );
        let mut out = Vec::new();
        match proto {
            Proto::Tcp => b.tcp(40000, 80, 1, 64240).write(&mut out, b"hello"),
            Proto::Udp => b.udp(40000, 53).write(&mut out, b"hello"),
        }
        .unwrap();
        out
    }

    fn parsed_tuple(f: &[u8]) -> Option<FiveTuple> {
        parse(f).ok().flatten().and_then(|h| h.tuple())
    }

    #[test]
    fn peek_reads_the_tuple_parse_finds() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let f = frame(proto);
            let want = FiveTuple {
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(10, 96, 0, 10),
                sport: 40000,
                dport: if proto == Proto::Tcp { 80 } else { 53 },
                proto,
            };
            assert_eq!(parsed_tuple(&f), Some(want));
            assert_eq!(peek_tuple(&f), Some(want));
        }
    }

    #[test]
    fn peek_sees_no_tuple_in_frames_without_one() {
        let tcp = frame(Proto::Tcp);
        for cut in 0..L4_AT + 4 {
            assert_eq!(peek_tuple(&tcp[..cut]), None, "cut at {cut}");
        }
        let edited = |at: usize, b: u8| {
            let mut f = tcp.clone();
            f[at] = b;
            f
        };
        let cases = [
            ("ARP", edited(13, 0x06)),
            ("IPv6 ethertype", edited(12, 0x86)),
            ("IP version 6", edited(ETH_LEN, 0x65)),
            ("IHL 4", edited(ETH_LEN, 0x44)),
            ("IHL 6 (options)", edited(ETH_LEN, 0x46)),
            ("more fragments", edited(ETH_LEN + 6, 0x20)),
            ("fragment offset", edited(ETH_LEN + 7, 0x01)),
            ("fragment offset, high bits", edited(ETH_LEN + 6, 0x1f)),
            ("ICMP", edited(ETH_LEN + 9, 1)),
            ("GRE", edited(ETH_LEN + 9, 47)),
        ];
        for (what, f) in cases {
            assert_eq!(peek_tuple(&f), None, "{what}");
            assert_eq!(parsed_tuple(&f), None, "{what}: parse found a tuple");
        }
        // Don't-fragment is no fragment.
        assert!(peek_tuple(&edited(ETH_LEN + 6, 0x40)).is_some());
    }

    proptest! {
        /// Wherever parse finds a tuple, peek finds the same one (and neither panics).
        #[test]
        fn peek_agrees_with_parse_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let peeked = peek_tuple(&bytes);
            if let Some(t) = parsed_tuple(&bytes) {
                prop_assert_eq!(peeked, Some(t));
            }
        }

        #[test]
        fn peek_agrees_with_parse_on_damaged_frames(
            udp in any::<bool>(),
            edits in proptest::collection::vec((0..60usize, any::<u8>()), 1..4),
            cut in 0..70usize,
        ) {
            let mut f = frame(if udp { Proto::Udp } else { Proto::Tcp });
            for (at, b) in edits {
                if let Some(x) = f.get_mut(at) {
                    *x = b;
                }
            }
            f.truncate(cut);
            let peeked = peek_tuple(&f);
            if let Some(t) = parsed_tuple(&f) {
                prop_assert_eq!(peeked, Some(t));
            }
        }
    }
}
