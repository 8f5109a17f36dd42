//! ARP for IPv4 over Ethernet (RFC 826): the requests kxdp sends to find a next hop's
//! MAC, and reading the sender of the ARP frames it receives. The steering program
//! hands kxdp only replies to its own requests; the host's ARP stays the kernel's.

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

use crate::packet::ETH_LEN;
use crate::snapshot::Mac;

/// Ethernet header plus an IPv4-over-Ethernet ARP body.
pub const FRAME_LEN: usize = ETH_LEN + 28;
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// Writes a broadcast who-has request for `target` into `buf` and returns its length.
/// `buf` must hold [`FRAME_LEN`] bytes.
pub fn write_request(
    buf: &mut [u8],
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> usize {
    buf[0..6].copy_from_slice(&[0xff; 6]);
    buf[6..12].copy_from_slice(&sender_mac.0);
    buf[12..14].copy_from_slice(&ETHERTYPE_ARP);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(sender_mac.0),
        source_protocol_addr: sender_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_LEN..FRAME_LEN]));
    FRAME_LEN
}

/// Who sent this ARP frame (request or reply), if it is a well-formed IPv4-over-
/// Ethernet ARP frame. Gratuitous ARP counts: it announces the sender too.
pub fn sender(frame: &[u8]) -> Option<(Ipv4Addr, Mac)> {
    if frame.len() < ETH_LEN || frame[12..14] != ETHERTYPE_ARP {
        return None;
    }
    let p = ArpPacket::new_checked(&frame[ETH_LEN..]).ok()?;
    match ArpRepr::parse(&p).ok()? {
        ArpRepr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            ..
        } if !source_protocol_addr.is_unspecified() => {
            Some((source_protocol_addr, Mac(source_hardware_addr.0)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parses_back_and_names_its_sender() {
        let mut b = [0u8; FRAME_LEN];
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let ip = Ipv4Addr::new(169, 254, 1, 1);
        let n = write_request(&mut b, mac, ip, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(n, 42);
        assert_eq!(sender(&b), Some((ip, mac)));
        let p = etherparse::SlicedPacket::from_ethernet(&b).unwrap();
        let Some(etherparse::NetSlice::Arp(a)) = p.net else {
            panic!("not ARP")
        };
        assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
        assert_eq!(a.target_protocol_addr(), &[198, 18, 1, 10]);
    }

    #[test]
    fn truncated_or_foreign_frames_have_no_sender() {
        let mut b = [0u8; FRAME_LEN];
        write_request(
            &mut b,
            Mac([2; 6]),
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
        );
        for cut in 0..FRAME_LEN {
            assert_eq!(sender(&b[..cut]), None, "cut {cut}");
        }
        b[12] = 0x86;
        assert_eq!(sender(&b), None);
    }
}
