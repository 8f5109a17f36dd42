//! ICMP errors: the ones kxdp sends, and translating the ones that quote a NAT'ed flow.
//!
//! RFC 792: an error carries the offending packet's IP header and at least its first 8
//! bytes (the ports, and TCP's sequence number). kxdp sends *destination unreachable*
//! with code 3 (port unreachable, a Service with no endpoints, as kube-proxy's REJECT)
//! and code 4 (fragmentation needed, RFC 1191, when a DF packet would not fit the
//! underlay after VXLAN's 50 bytes). An error about a NAT'ed flow must be translated
//! inside too, or the sender's stack cannot match it to its socket (RFC 5508 section 5).

use std::net::Ipv4Addr;

use crate::checksum;
use crate::flow::{FiveTuple, Proto};
use crate::nat::{self, L4Csum};
use crate::packet::{ETH_LEN, ICMP_LEN, IPV4_LEN, IP_PROTO_ICMP};

pub const DEST_UNREACHABLE: u8 = 3;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;

/// What an error quotes: the IP header (no options, kxdp drops those) and 8 bytes.
pub const QUOTE_LEN: usize = IPV4_LEN + 8;
/// Bytes of an error kxdp builds, Ethernet header included.
pub const ERROR_FRAME_LEN: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + QUOTE_LEN;

/// Types whose body quotes the packet that caused them.
pub fn is_error(ty: u8) -> bool {
    matches!(ty, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
}

/// The start of the packet an error is about, copied out before the frame is reused.
#[derive(Clone, Copy)]
pub struct Quote {
    bytes: [u8; QUOTE_LEN],
}

impl Quote {
    /// Copies the IP header and the 8 bytes after it (the caller checked they exist).
    pub fn of(ip: &[u8]) -> Quote {
        let mut bytes = [0u8; QUOTE_LEN];
        bytes.copy_from_slice(&ip[..QUOTE_LEN]);
        Quote { bytes }
    }

    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[12],
            self.bytes[13],
            self.bytes[14],
            self.bytes[15],
        )
    }
}

/// Writes into `buf` (an Ethernet frame of `ERROR_FRAME_LEN` bytes or more) an ICMP
/// error from `from` to the quoted packet's source, and returns the frame length.
/// Ethernet addresses are left for routing to fill.
pub fn build_error(
    buf: &mut [u8],
    from: Ipv4Addr,
    ty: u8,
    code: u8,
    mtu: u16,
    quote: &Quote,
    ident: u16,
) -> usize {
    let to = quote.src();
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut buf[ETH_LEN..ERROR_FRAME_LEN];
    let total = (IPV4_LEN + ICMP_LEN + QUOTE_LEN) as u16;
    ip[0] = 0x45;
    ip[1] = 0xc0; // internetwork control precedence, as Linux marks its ICMP errors
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[8] = 64;
    ip[9] = IP_PROTO_ICMP;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    nat::fill_ip_checksum(ip);
    let icmp = &mut ip[IPV4_LEN..];
    icmp[0] = ty;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    // RFC 1191: next-hop MTU in the low 16 bits of the otherwise unused word.
    icmp[4..6].copy_from_slice(&[0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_LEN..].copy_from_slice(&quote.bytes);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ERROR_FRAME_LEN
}

/// The 5-tuple of the TCP/UDP packet an ICMP error quotes, if it quotes one fully
/// enough (IP header without options and the two ports).
pub fn quoted_tuple(icmp: &[u8]) -> Option<FiveTuple> {
    let q = icmp.get(ICMP_LEN..)?;
    if q.len() < IPV4_LEN + 4 || q[0] != 0x45 {
        return None;
    }
    let proto = Proto::from_ip_number(q[9])?;
    Some(FiveTuple {
        src: Ipv4Addr::new(q[12], q[13], q[14], q[15]),
        dst: Ipv4Addr::new(q[16], q[17], q[18], q[19]),
        sport: u16::from_be_bytes([q[20], q[21]]),
        dport: u16::from_be_bytes([q[22], q[23]]),
        proto,
    })
}

/// Rewrites the packet quoted in the ICMP message `icmp` from `from` to `to` and fixes
/// the quoted headers' checksums (incrementally) and the ICMP checksum. The outer IP header is the
/// caller's.
pub fn translate_quoted(icmp: &mut [u8], from: &FiveTuple, to: &FiveTuple) {
    let quoted = &mut icmp[ICMP_LEN..];
    // The quoted L4 checksum covers bytes the error does not carry: only an
    // incremental update can keep it consistent.
    nat::rewrite(quoted, from, to, L4Csum::Incremental);
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}
