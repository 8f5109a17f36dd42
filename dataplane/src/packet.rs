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
