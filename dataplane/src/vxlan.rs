//! VXLAN encapsulation and decapsulation (RFC 7348), as flannel's `vxlan` backend and
//! Linux's `vxlan` device speak it.
//!
//! Outer frame: Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) = 50 bytes in front of
//! the inner Ethernet frame. The outer UDP source port is a hash of the inner flow so
//! that underlay ECMP keeps a flow on one path (RFC 7348 section 5, "Outer UDP
//! Header"); the outer UDP checksum is zero, which RFC 7348 allows for IPv4 and Linux
//! sends by default. The inner Ethernet addresses are the VTEP MACs flannel publishes
//! in its `backend-data` annotation.

use std::net::Ipv4Addr;

use crate::frame::Frame;
use crate::nat;
use crate::packet::{Headers, ETH_LEN, IPV4_LEN, L4, UDP_LEN};
use crate::snapshot::Mac;
use crate::verdict::DropReason;
use crate::wire::vxlan::{VxlanPacket, FLAG_I, HEADER_LEN};

/// Bytes VXLAN adds in front of the inner Ethernet frame.
pub const OVERHEAD: usize = ETH_LEN + IPV4_LEN + UDP_LEN + HEADER_LEN;

/// Linux's default ephemeral range (`ip_local_port_range`), which its vxlan driver
/// draws outer source ports from.
const SPORT_MIN: u16 = 32768;
const SPORT_SPAN: u64 = 61000 - 32768;

/// The outer UDP source port for an inner flow hash.
#[inline]
pub fn source_port(flow_hash: u64) -> u16 {
    SPORT_MIN + (((flow_hash >> 32) * SPORT_SPAN) >> 32) as u16
}

/// Everything the outer headers need.
pub struct Encap {
    pub outer_src_mac: Mac,
    pub outer_dst_mac: Mac,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub udp_sport: u16,
    pub udp_dport: u16,
    pub vni: u32,
    pub inner_src_mac: Mac,
    pub inner_dst_mac: Mac,
    pub ip_ident: u16,
}

/// Puts outer headers in front of the frame (an inner Ethernet frame whose L2
/// addresses this also sets). False when the buffer has too little headroom.
pub fn encapsulate(f: &mut Frame, e: &Encap) -> bool {
    let inner_len = f.len();
    {
        let inner = f.data_mut();
        inner[0..6].copy_from_slice(&e.inner_dst_mac.0);
        inner[6..12].copy_from_slice(&e.inner_src_mac.0);
    }
    if !f.push_front(OVERHEAD) {
        return false;
    }
    let b = f.data_mut();
    b[0..6].copy_from_slice(&e.outer_dst_mac.0);
    b[6..12].copy_from_slice(&e.outer_src_mac.0);
    b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut b[ETH_LEN..ETH_LEN + IPV4_LEN];
    let total = (IPV4_LEN + UDP_LEN + HEADER_LEN + inner_len) as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&e.ip_ident.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&e.src_ip.octets());
    ip[16..20].copy_from_slice(&e.dst_ip.octets());
    nat::fill_ip_checksum(ip);
    let udp = &mut b[ETH_LEN + IPV4_LEN..ETH_LEN + IPV4_LEN + UDP_LEN];
    udp[0..2].copy_from_slice(&e.udp_sport.to_be_bytes());
    udp[2..4].copy_from_slice(&e.udp_dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_LEN + HEADER_LEN + inner_len) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let at = ETH_LEN + IPV4_LEN + UDP_LEN;
    VxlanPacket::new_checked(&mut b[at..at + HEADER_LEN])
        .expect("header room was reserved above")
        .emit(e.vni);
    true
}

/// Checks the VXLAN header of a parsed outer frame addressed to this VTEP and returns
/// the inner frame's length. The caller checks the source VTEP and strips
/// [`OVERHEAD`] bytes.
pub fn inner_len(frame: &[u8], outer: &Headers, vni: u32) -> Result<usize, DropReason> {
    let L4::Udp { len, .. } = outer.l4 else {
        return Err(DropReason::BadVxlanHeader);
    };
    let at = ETH_LEN + IPV4_LEN + UDP_LEN;
    let vx = VxlanPacket::new_checked(&frame[at..ETH_LEN + outer.ip_len])
        .ok_or(DropReason::BadVxlanHeader)?;
    if vx.flags() & FLAG_I == 0 {
        return Err(DropReason::BadVxlanHeader);
    }
    if vx.vni() != vni {
        return Err(DropReason::VxlanWrongVni);
    }
    let inner = (len as usize).saturating_sub(UDP_LEN + HEADER_LEN);
    if inner < ETH_LEN {
        return Err(DropReason::Truncated);
    }
    Ok(inner)
}
