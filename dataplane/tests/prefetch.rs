//! Prefetching is only a hint: `Pipeline::prefetch` never panics and changes nothing,
//! it finds the key the lookup will use, and a batch through `Pipeline::process`
//! (which prefetches ahead and reuses the probes) ends exactly as the same frames
//! through `Pipeline::handle` one by one.

mod common;

use common::*;
use kxdp_dataplane::flow::{FiveTuple, Nanos, Proto};
use kxdp_dataplane::frame::{Frame, HEADROOM};
use kxdp_dataplane::pipeline::Pipeline;
use kxdp_dataplane::snapshot::Snapshot;
use kxdp_dataplane::verdict::{PortId, Verdict};
use proptest::prelude::*;

const T0: Nanos = Nanos(1_000_000_000);

fn arp() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC_EXTERNAL.0);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0u8; 28]);
    f
}

fn edited(mut f: Vec<u8>, at: usize, b: u8) -> Vec<u8> {
    f[at] = b;
    f
}

/// A SYN-ACK from node2's pod inside VXLAN to node1.
fn vxlan_reply() -> Vec<u8> {
    let inner = tcp(REMOTE_POD, 8080, A, 40000, SYN | ACK)
        .macs(VTEP2, VTEP1)
        .bytes();
    vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &inner)
}

#[test]
fn prefetch_of_a_frame_without_a_key_loads_nothing_and_counts_nothing() {
    let snap = snapshot(1);
    let mut p = pipeline();
    // Some state to leave alone: a flow and its counters.
    run(
        &mut p,
        &snap,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, SYN).bytes(),
    );
    let (counters, flows) = (p.counters().clone(), p.flows().len());

    let syn = tcp(C, 40001, VIP, 80, SYN).bytes();
    let vx = vxlan_reply();
    let mut frames: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("Ethernet only", syn[..14].to_vec()),
        ("cut in the IP header", syn[..30].to_vec()),
        ("cut before the ports end", syn[..37].to_vec()),
        ("ARP", arp()),
        ("IPv6", edited(syn.clone(), 12, 0x86)),
        ("IHL 4", edited(syn.clone(), 14, 0x44)),
        ("IHL 6", edited(syn.clone(), 14, 0x46)),
        ("more fragments", edited(syn.clone(), 20, 0x20)),
        ("fragment offset", edited(syn.clone(), 21, 0x08)),
        ("ICMP", edited(syn.clone(), 23, 1)),
    ];
    frames.push(("all ones", vec![0xff; 64]));
    let mut cases: Vec<_> = frames
        .iter()
        .flat_map(|(what, f)| [UPLINK, POD_A, POD_C].map(|port| (*what, port, f.clone())))
        .collect();
    // Decapsulated on the uplink only (elsewhere the outer UDP tuple is the key).
    cases.push((
        "VXLAN cut in the inner IP header",
        UPLINK,
        vx[..50 + 30].to_vec(),
    ));
    cases.push((
        "VXLAN of ARP",
        UPLINK,
        vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &arp()),
    ));
    for (what, port, f) in &cases {
        assert_eq!(p.conntrack_key(&snap, *port, f), None, "{what} on {port:?}");
        assert_eq!(p.prefetch(&snap, *port, f), None, "{what} on {port:?}");
    }
    // An unknown port has no key whatever the bytes.
    assert_eq!(p.prefetch(&snap, PortId(99), &syn), None);
    // Every truncation of every kind of frame: no panic.
    for f in [syn, vx, udp(A, 5000, VIP, 53).bytes()] {
        for cut in 0..=f.len() {
            for port in [UPLINK, POD_A, PortId(99)] {
                p.prefetch(&snap, port, &f[..cut]);
            }
        }
    }
    assert_eq!(p.counters(), &counters);
    assert_eq!(p.flows().len(), flows);
}

#[test]
fn conntrack_key_is_the_tuple_the_lookup_will_use() {
    let snap = snapshot(1);
    let p = pipeline();
    let key = |port, f: &[u8]| p.conntrack_key(&snap, port, f);
    let t = |src, sport, dst, dport, proto| FiveTuple {
        src,
        dst,
        sport,
        dport,
        proto,
    };
    assert_eq!(
        key(POD_C, &tcp(C, 40000, VIP, 80, SYN).bytes()),
        Some(t(C, 40000, VIP, 80, Proto::Tcp))
    );
    assert_eq!(
        key(POD_A, &udp(A, 5000, VIP, 53).bytes()),
        Some(t(A, 5000, VIP, 53, Proto::Udp))
    );
    // VXLAN to this node's VTEP on the uplink: the inner frame's tuple...
    let vx = vxlan_reply();
    let inner = Some(t(REMOTE_POD, 8080, A, 40000, Proto::Tcp));
    assert_eq!(key(UPLINK, &vx), inner);
    // ...which is what the pipeline looks up (a prefetch changes nothing about it).
    let mut q = pipeline();
    q.prefetch(&snap, UPLINK, &vx);
    assert!(matches!(
        run(&mut q, &snap, T0, UPLINK, &vx).0,
        Verdict::Tx { port } if port == POD_A
    ));
    // Not decapsulated elsewhere: on a pod port, or to another VTEP address.
    let outer = Some(t(NODE2, 40000, NODE1, 8472, Proto::Udp));
    assert_eq!(key(POD_A, &vx), outer);
    let mut other_vtep = vx.clone();
    other_vtep[30..34].copy_from_slice(&NODE2.octets());
    assert_eq!(
        key(UPLINK, &other_vtep),
        Some(t(NODE2, 40000, NODE2, 8472, Proto::Udp))
    );
}

/// Frames a batch may carry: flows opened, answered, closed and reopened within the
/// batch, repeats of one flow back to back, replies, VXLAN, NodePort, UDP, routed
/// traffic, frames the pipeline passes or drops.
fn pool() -> Vec<(PortId, Vec<u8>)> {
    let mut v = Vec::new();
    for k in 0..3u16 {
        let port = 40000 + k;
        for flags in [SYN, ACK, FIN | ACK, RST] {
            v.push((POD_C, tcp(C, port, VIP, 80, flags).bytes()));
        }
        for backend in [(A, POD_A), (B, POD_B)] {
            let reply = tcp(backend.0, 8080, C, port, SYN | ACK).bytes();
            v.push((backend.1, reply));
        }
        let np = tcp(EXTERNAL, 50000 + k, NODE1, NODE_PORT, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
        v.push((UPLINK, np.bytes()));
        v.push((POD_A, tcp(A, 8080, EXTERNAL, 50000 + k, ACK).bytes()));
    }
    v.push((POD_A, udp(A, 5000, VIP, 53).bytes()));
    v.push((POD_B, udp(B, 5353, A, 5000).bytes()));
    v.push((POD_A, tcp(A, 40000, VIP_REMOTE, 80, SYN).bytes()));
    v.push((UPLINK, vxlan_reply()));
    v.push((POD_A, tcp(A, 41000, REMOTE_POD, 8080, ACK).bytes()));
    v.push((POD_A, tcp(A, 41000, VIP_EMPTY, 80, SYN).bytes()));
    v.push((UPLINK, arp()));
    let syn = tcp(C, 40000, VIP, 80, SYN).bytes();
    v.push((POD_C, syn[..40].to_vec()));
    v.push((POD_C, edited(syn.clone(), 20, 0x20)));
    v.push((POD_C, edited(syn, 24, 0)));
    v
}

/// One batch through `process`, or frame by frame through `handle`: verdicts and
/// frame bytes.
fn batch(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    frames: &[(PortId, Vec<u8>)],
    per_frame: bool,
) -> Vec<(Verdict, Vec<u8>)> {
    const CHUNK: usize = HEADROOM + 2048;
    let mut mem = vec![0u8; frames.len() * CHUNK];
    let mut fs: Vec<Frame> = mem
        .chunks_exact_mut(CHUNK)
        .zip(frames)
        .map(|(buf, (port, bytes))| {
            buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
            Frame::new(buf, HEADROOM, bytes.len(), *port)
        })
        .collect();
    let mut verdicts = vec![Verdict::Pass; fs.len()];
    if per_frame {
        for (f, v) in fs.iter_mut().zip(&mut verdicts) {
            *v = p.handle(snap, now, f);
        }
    } else {
        p.process(snap, now, &mut fs, &mut verdicts);
    }
    fs.iter()
        .zip(verdicts)
        .map(|(f, v)| (v, f.data().to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn process_ends_as_handle_frame_by_frame(
        batches in proptest::collection::vec(
            (
                proptest::collection::vec(0..64usize, 0..40),
                0..40u64,
                any::<bool>(),
            ),
            1..6,
        ),
    ) {
        let pool = pool();
        // Two snapshots: `web` without B in the second, so switching forgets flows.
        let snaps = [
            snapshot(1),
            snapshot_with(2, |s| s[0].endpoints.retain(|e| *e.addr.ip() != B)),
        ];
        let (mut batched, mut single) = (pipeline(), pipeline());
        let mut now = T0;
        for (picks, gap_secs, second) in batches {
            now = now.saturating_add(Nanos::from_secs(gap_secs));
            let snap = &snaps[second as usize];
            let frames: Vec<_> = picks.iter().map(|&i| pool[i % pool.len()].clone()).collect();
            let got = batch(&mut batched, snap, now, &frames, false);
            let want = batch(&mut single, snap, now, &frames, true);
            prop_assert_eq!(got, want);
            prop_assert_eq!(batched.counters(), single.counters());
            prop_assert_eq!(batched.flows().len(), single.flows().len());
        }
    }
}

#[test]
fn process_of_a_long_mixed_batch_is_handle_frame_by_frame() {
    // Every pool frame, each twice in a row, then all of them again: more than the
    // lookahead ring holds, with repeats and many flows.
    let pool = pool();
    let frames: Vec<_> = pool
        .iter()
        .flat_map(|f| [f.clone(), f.clone()])
        .chain(pool.iter().cloned())
        .collect();
    let snap = snapshot(1);
    let (mut batched, mut single) = (pipeline(), pipeline());
    let got = batch(&mut batched, &snap, T0, &frames, false);
    let want = batch(&mut single, &snap, T0, &frames, true);
    assert_eq!(got, want);
    assert_eq!(batched.counters(), single.counters());
    assert!(batched.counters().new_flows > 0 && batched.counters().tx > 0);
    assert!(batched.counters().dropped() > 0 && batched.counters().pass > 0);
}
