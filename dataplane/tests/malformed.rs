//! Bad input never panics: every malformed frame is dropped with a reason (or left to
//! the kernel when it is not IPv4 at all), and the reason names the defect.

mod common;

use common::*;
use kxdp_dataplane::flow::Nanos;
use kxdp_dataplane::verdict::{DropReason, Verdict};
use proptest::prelude::*;

const T0: Nanos = Nanos(1_000_000_000);

fn samples() -> Vec<(kxdp_dataplane::verdict::PortId, Vec<u8>)> {
    let inner = tcp(REMOTE_POD, 8080, A, 40000, SYN | ACK)
        .macs(VTEP2, VTEP1)
        .bytes();
    vec![
        (POD_C, tcp(C, 40000, VIP, 80, SYN).bytes()),
        (POD_A, udp(A, 5000, VIP, 53).bytes()),
        (POD_A, udp(A, 5000, VIP_EMPTY, 53).bytes()),
        (POD_A, tcp(A, 40000, VIP_REMOTE, 80, SYN).bytes()),
        (UPLINK, vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &inner)),
        (UPLINK, tcp(EXTERNAL, 50000, NODE1, NODE_PORT, SYN).bytes()),
    ]
}

#[test]
fn every_truncation_is_dropped_or_passed_never_forwarded_broken() {
    let snap = snapshot(1);
    for (port, frame) in samples() {
        for cut in 0..frame.len() {
            let mut p = pipeline();
            let (v, _) = run(&mut p, &snap, T0, port, &frame[..cut]);
            match v {
                Verdict::Drop(_) => {}
                // An Ethernet header with no room for IPv4 options is still "not ours".
                Verdict::Pass => assert!(cut >= 14, "cut {cut}"),
                Verdict::Tx { .. } | Verdict::Handoff { .. } | Verdict::Resolve { .. } => {
                    panic!("a frame cut at {cut} of {} was forwarded", frame.len())
                }
            }
            assert_eq!(p.counters().rx, 1);
        }
    }
}

#[test]
fn truncated_headers_are_counted_as_truncated() {
    let snap = snapshot(1);
    let frame = tcp(C, 40000, VIP, 80, SYN).bytes();
    for cut in [0, 13, 14, 33, 34, 40, 53] {
        let mut p = pipeline();
        let (v, _) = run(&mut p, &snap, T0, POD_C, &frame[..cut]);
        assert_eq!(v, Verdict::Drop(DropReason::Truncated), "cut at {cut}");
        assert_eq!(p.counters().drop_count(DropReason::Truncated), 1);
    }
}

fn verdict_of(frame: &[u8], port: kxdp_dataplane::verdict::PortId) -> Verdict {
    let mut p = pipeline();
    run(&mut p, &snapshot(1), T0, port, frame).0
}

/// Recomputes the IPv4 header checksum after a test edited the header.
fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0xf) as usize * 4;
    f[24] = 0;
    f[25] = 0;
    let mut sum = 0u32;
    for c in f[14..14 + ihl.min(f.len() - 14)].chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn bad_ihl_is_a_bad_header() {
    let mut f = tcp(C, 40000, VIP, 80, SYN).bytes();
    f[14] = 0x44;
    fix_ip_checksum(&mut f);
    assert_eq!(
        verdict_of(&f, POD_C),
        Verdict::Drop(DropReason::BadIpHeader)
    );
    f[14] = 0x65; // IPv6 version in an IPv4 ethertype
    assert_eq!(
        verdict_of(&f, POD_C),
        Verdict::Drop(DropReason::BadIpHeader)
    );
}

#[test]
fn ip_options_are_dropped_with_their_own_reason() {
    let mut f = tcp(C, 40000, VIP, 80, SYN).bytes();
    // Insert a 4-byte NOP option block.
    f.splice(34..34, [1u8, 1, 1, 0]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut f);
    assert_eq!(verdict_of(&f, POD_C), Verdict::Drop(DropReason::IpOptions));
}

#[test]
fn fragments_are_dropped() {
    for (flags_hi, off_lo) in [(0x20u8, 0u8), (0x00, 0x10), (0x20, 0x10)] {
        let mut f = udp(A, 5000, VIP, 53).bytes();
        f[20] = flags_hi;
        f[21] = off_lo;
        fix_ip_checksum(&mut f);
        assert_eq!(verdict_of(&f, POD_A), Verdict::Drop(DropReason::IpFragment));
    }
}

#[test]
fn bad_ip_checksum_is_dropped() {
    let mut f = udp(A, 5000, VIP, 53).bytes();
    f[24] ^= 0xff;
    assert_eq!(
        verdict_of(&f, POD_A),
        Verdict::Drop(DropReason::BadIpChecksum)
    );
}

#[test]
fn zero_length_udp_is_dropped() {
    let mut f = udp(A, 5000, VIP, 53).bytes();
    f[38] = 0;
    f[39] = 0;
    assert_eq!(
        verdict_of(&f, POD_A),
        Verdict::Drop(DropReason::BadL4Header)
    );
    f[39] = 7; // shorter than its own header
    assert_eq!(
        verdict_of(&f, POD_A),
        Verdict::Drop(DropReason::BadL4Header)
    );
    f[38] = 0xff; // longer than the IP payload
    assert_eq!(
        verdict_of(&f, POD_A),
        Verdict::Drop(DropReason::BadL4Header)
    );
}

#[test]
fn tcp_data_offset_below_five_is_dropped() {
    let mut f = tcp(C, 40000, VIP, 80, SYN).bytes();
    f[46] = 0x40;
    assert_eq!(
        verdict_of(&f, POD_C),
        Verdict::Drop(DropReason::BadL4Header)
    );
}

#[test]
fn total_length_past_the_frame_is_truncated_and_ethernet_padding_is_cut() {
    let mut f = udp(A, 5000, B, 53).bytes();
    let total = u16::from_be_bytes([f[16], f[17]]);
    f[16..18].copy_from_slice(&(total + 1).to_be_bytes());
    fix_ip_checksum(&mut f);
    assert_eq!(verdict_of(&f, POD_A), Verdict::Drop(DropReason::Truncated));
    // Padding after the IP packet is not forwarded.
    let mut padded = udp(A, 5000, B, 53).bytes();
    let len = padded.len();
    padded.extend_from_slice(&[0u8; 20]);
    let mut p = pipeline();
    let (_, out) = run(&mut p, &snapshot(1), T0, POD_A, &padded);
    assert_eq!(out.len(), len);
}

#[test]
fn vxlan_too_short_for_its_header_is_dropped() {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_NODE2.0, MAC_UPLINK.0)
        .ipv4(NODE2.octets(), NODE1.octets(), 64)
        .udp(40000, 8472)
        .write(&mut out, &[0x08, 0, 0, 0])
        .unwrap();
    assert_eq!(
        verdict_of(&out, UPLINK),
        Verdict::Drop(DropReason::BadVxlanHeader)
    );
    // A header but no inner Ethernet frame.
    let v = vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &[0u8; 6]);
    assert_eq!(verdict_of(&v, UPLINK), Verdict::Drop(DropReason::Truncated));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary bytes, and valid frames with arbitrary bytes flipped: no panic, and
    /// anything forwarded still parses with valid IPv4 checksums.
    #[test]
    fn arbitrary_frames_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        junk in proptest::collection::vec(any::<u8>(), 0..120),
        use_junk in any::<bool>(),
    ) {
        let samples = samples();
        let (port, mut frame) = samples[which].clone();
        if use_junk {
            frame = junk;
        } else {
            for (at, b) in flips {
                let n = frame.len();
                frame[at % n] ^= b;
            }
        }
        let snap = snapshot(1);
        let mut p = pipeline();
        let (v, out) = run(&mut p, &snap, T0, port, &frame);
        if let Verdict::Tx { .. } = v {
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).expect("IPv4 out");
            let h = ip.to_header();
            prop_assert_eq!(h.calc_header_checksum(), h.header_checksum);
        }
    }
}
