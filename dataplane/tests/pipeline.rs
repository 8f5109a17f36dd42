//! The pipeline against the two-node world in `common`: every NAT, VXLAN and
//! Kubernetes-semantics case, checked field by field with etherparse.

mod common;

use common::*;
use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::pipeline::Config;
use kxdp_dataplane::verdict::{DropReason, Verdict};

const T0: Nanos = Nanos(1_000_000_000);

fn tx(port: kxdp_dataplane::verdict::PortId) -> Verdict {
    Verdict::Tx { port }
}

/// Which local pod a frame was sent to (by destination address).
fn port_of(ip: std::net::Ipv4Addr) -> kxdp_dataplane::verdict::PortId {
    match ip {
        x if x == A => POD_A,
        x if x == B => POD_B,
        x if x == C => POD_C,
        other => panic!("{other} is not a local pod"),
    }
}

/// C:40000's SYN to VIP:80 under `snap`; returns the backend it went to.
fn syn(
    p: &mut kxdp_dataplane::pipeline::Pipeline,
    snap: &kxdp_dataplane::snapshot::Snapshot,
) -> std::net::Ipv4Addr {
    let (_, out) = run(p, snap, T0, POD_C, &tcp(C, 40000, VIP, 80, SYN).bytes());
    seen(&out).dst
}

/// Opens C:40000 -> VIP:80 under `snap` (SYN, SYN-ACK, ACK); returns its backend.
fn connect(
    p: &mut kxdp_dataplane::pipeline::Pipeline,
    snap: &kxdp_dataplane::snapshot::Snapshot,
) -> std::net::Ipv4Addr {
    let backend = syn(p, snap);
    let syn_ack = tcp(backend, 8080, C, 40000, SYN | ACK).bytes();
    run(p, snap, T0, port_of(backend), &syn_ack);
    run(p, snap, T0, POD_C, &tcp(C, 40000, VIP, 80, ACK).bytes());
    backend
}

#[test]
fn pod_to_cluster_ip_is_dnatted_to_a_local_backend() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, SYN).bytes(),
    );
    let s = seen(&out);
    assert!(s.dst == A || s.dst == B, "backend {}", s.dst);
    assert_eq!(v, tx(port_of(s.dst)));
    assert_eq!((s.src, s.ports), (C, Some((40000, 8080))));
    assert_eq!(s.dst_mac, pod_mac(s.dst));
    assert_eq!(s.src_mac, host_veth_mac(port_of(s.dst)));
    assert_eq!(s.ttl, 63);
    assert_eq!(p.counters().new_flows, 1);
}

#[test]
fn reply_from_backend_is_reverse_natted_to_cluster_ip() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let backend = syn(&mut p, &snap);
    let reply = tcp(backend, 8080, C, 40000, SYN | ACK).bytes();
    let (v, out) = run(&mut p, &snap, T0, port_of(backend), &reply);
    assert_eq!(v, tx(POD_C));
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.ports), (VIP, C, Some((80, 40000))));
    assert_eq!(s.dst_mac, pod_mac(C));
}

#[test]
fn same_five_tuple_always_lands_on_the_same_backend() {
    let snap = snapshot(1);
    let mut first = None;
    for _ in 0..5 {
        // A fresh pipeline each time: Maglev alone, no conntrack memory, must agree.
        let mut p = pipeline();
        let (_, out) = run(
            &mut p,
            &snap,
            T0,
            POD_C,
            &tcp(C, 41000, VIP, 80, SYN).bytes(),
        );
        let b = seen(&out).dst;
        assert_eq!(*first.get_or_insert(b), b);
    }
}

#[test]
fn many_clients_spread_over_both_backends() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let mut to_a = 0;
    for port in 0..200u16 {
        let (_, out) = run(
            &mut p,
            &snap,
            T0,
            POD_C,
            &tcp(C, 20000 + port, VIP, 80, SYN).bytes(),
        );
        if seen(&out).dst == A {
            to_a += 1;
        }
    }
    assert!((70..=130).contains(&to_a), "A got {to_a} of 200");
}

#[test]
fn udp_to_service_is_translated_both_ways() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    assert_eq!(v, tx(POD_B));
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.ports), (A, B, Some((5000, 5353))));
    let (v, out) = run(&mut p, &snap, T0, POD_B, &udp(B, 5353, A, 5000).bytes());
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.ports), (VIP, A, Some((53, 5000))));
}

#[test]
fn zero_udp_checksum_stays_zero_through_nat() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let mut f = udp(B, 5353, A, 5000).bytes();
    run(&mut p, &snap, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    f[14 + 20 + 6] = 0;
    f[14 + 20 + 7] = 0;
    let (_, out) = run(&mut p, &snap, T0, POD_B, &f);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    seen(&out);
}

#[test]
fn partial_checksum_from_a_pod_is_completed() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let mut f = tcp(C, 40001, VIP, 80, SYN).bytes();
    // Checksum offload: the pod leaves only the pseudo-header sum in the field.
    f[14 + 20 + 16] = 0x9e;
    f[14 + 20 + 17] = 0x56;
    let (_, out) = run(&mut p, &snap, T0, POD_C, &f);
    seen(&out); // verifies the TCP checksum
}

#[test]
fn established_flow_keeps_its_backend_when_endpoints_change() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let backend = syn(&mut p, &snap1);
    run(
        &mut p,
        &snap1,
        T0,
        port_of(backend),
        &tcp(backend, 8080, C, 40000, SYN | ACK).bytes(),
    );
    // Ten more endpoints: most Maglev slots move, this flow must not.
    let snap2 = snapshot_with(2, |s| {
        for i in 20..30 {
            s[0].endpoints
                .push(ep(std::net::Ipv4Addr::new(198, 18, 2, i), 8080, false));
        }
    });
    for _ in 0..3 {
        let (_, out) = run(
            &mut p,
            &snap2,
            T0,
            POD_C,
            &tcp(C, 40000, VIP, 80, ACK).bytes(),
        );
        assert_eq!(seen(&out).dst, backend);
    }
}

#[test]
fn an_unanswered_syn_whose_backend_left_the_service_is_rebalanced() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let backend = syn(&mut p, &snap1);
    let other = if backend == A { B } else { A };
    let snap2 = snapshot_with(2, |s| s[0].endpoints.retain(|e| *e.addr.ip() == other));
    let (_, out) = run(
        &mut p,
        &snap2,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, ACK).bytes(),
    );
    assert_eq!(seen(&out).dst, other);
}

#[test]
fn an_answered_connection_stays_on_a_backend_that_left_the_service_or_lost_it() {
    let mut p = pipeline();
    let backend = connect(&mut p, &snapshot(1));
    // The backend leaves `web`, then `web` itself goes: kube-proxy keeps TCP
    // conntrack entries through both, and moving the connection would only get it
    // reset by a backend that never saw its SYN.
    let left = snapshot_with(2, |s| s[0].endpoints.retain(|e| *e.addr.ip() != backend));
    let gone = snapshot_with(3, |s| {
        s.remove(0);
    });
    for snap in [&left, &gone] {
        let (v, out) = run(
            &mut p,
            snap,
            T0,
            POD_C,
            &tcp(C, 40000, VIP, 80, ACK).bytes(),
        );
        assert_eq!(v, tx(port_of(backend)), "generation {}", snap.generation);
        assert_eq!(seen(&out).dst, backend);
        let data = tcp(backend, 8080, C, 40000, ACK).bytes();
        let (v, out) = run(&mut p, snap, T0, port_of(backend), &data);
        assert_eq!(v, tx(POD_C));
        assert_eq!(seen(&out).src, VIP, "generation {}", snap.generation);
    }
}

#[test]
fn a_late_answer_from_a_backend_that_left_is_translated_and_the_client_then_moves() {
    // A SYN and a UDP datagram reach a backend, which leaves before it answers. Its
    // answer must still come from the Service address: a CI flake
    // was an HTTP response sent back untranslated, which the client's socket never
    // saw. The client's next packet, unanswered TCP or UDP, then picks anew.
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let backend = syn(&mut p, &snap1);
    let other = if backend == A { B } else { A };
    let snap2 = snapshot_with(2, |s| s[0].endpoints.retain(|e| *e.addr.ip() == other));
    let syn_ack = tcp(backend, 8080, C, 40000, SYN | ACK).bytes();
    let (v, out) = run(&mut p, &snap2, T0, port_of(backend), &syn_ack);
    assert_eq!(v, tx(POD_C));
    assert_eq!(seen(&out).src, VIP);
    // Answered now: the connection stays.
    let (_, out) = run(
        &mut p,
        &snap2,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, ACK).bytes(),
    );
    assert_eq!(seen(&out).dst, backend);

    // UDP: `web:dns` moves from B to C between a query and its answer.
    let (v, _) = run(&mut p, &snap1, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    assert_eq!(v, tx(POD_B));
    let snap3 = snapshot_with(3, |s| s[1].endpoints = vec![ep(C, 5353, true)]);
    let answer = udp(B, 5353, A, 5000).bytes();
    for _ in 0..2 {
        let (v, out) = run(&mut p, &snap3, T0, POD_B, &answer);
        assert_eq!(v, tx(POD_A));
        assert_eq!((seen(&out).src, seen(&out).ports), (VIP, Some((53, 5000))));
    }
    let (v, out) = run(&mut p, &snap3, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    assert_eq!(
        v,
        tx(POD_C),
        "kube-proxy clears the UDP entries of removed endpoints"
    );
    assert_eq!(seen(&out).dst, C);
}

#[test]
fn terminating_endpoint_keeps_its_flows_but_gets_no_new_ones() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let backend = syn(&mut p, &snap1);
    let snap2 = snapshot_with(2, |s| {
        for e in s[0]
            .endpoints
            .iter_mut()
            .filter(|e| *e.addr.ip() == backend)
        {
            e.ready = false;
            e.terminating = true; // still serving: graceful shutdown
        }
    });
    let (_, out) = run(
        &mut p,
        &snap2,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, ACK).bytes(),
    );
    assert_eq!(seen(&out).dst, backend);
    for port in 0..50 {
        let (_, out) = run(
            &mut p,
            &snap2,
            T0,
            POD_C,
            &tcp(C, 30000 + port, VIP, 80, SYN).bytes(),
        );
        assert_ne!(seen(&out).dst, backend);
    }
}

#[test]
fn service_without_endpoints_rejects_tcp_with_port_unreachable() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let syn = tcp(C, 40000, VIP_EMPTY, 80, SYN).bytes();
    let (v, out) = run(&mut p, &snap, T0, POD_C, &syn);
    assert_eq!(v, tx(POD_C));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (VIP_EMPTY, C));
    assert_eq!(s.icmp.map(|i| (i.0, i.1)), Some((3, 3)));
    // The quote is the client's packet as it sent it: IP header and 8 bytes.
    assert_eq!(&s.payload[..28], &syn[14..14 + 28]);
    assert_eq!(s.dst_mac, pod_mac(C));
    assert_eq!(p.counters().rejected, 1);
}

#[test]
fn service_without_endpoints_rejects_udp_with_port_unreachable() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &udp(A, 7000, VIP_EMPTY, 53).bytes(),
    );
    assert_eq!(v, tx(POD_A));
    assert_eq!(seen(&out).icmp.map(|i| (i.0, i.1)), Some((3, 3)));
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, _) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 40000, VIP_LOCAL, 80, SYN).bytes(),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalEndpoints));
    assert_eq!(p.counters().drop_count(DropReason::NoLocalEndpoints), 1);
}

#[test]
fn session_affinity_pins_a_client_until_the_timeout() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let backend_for = |p: &mut kxdp_dataplane::pipeline::Pipeline, sport: u16, now: Nanos| {
        let (_, out) = run(
            p,
            &snap,
            now,
            POD_A,
            &tcp(A, sport, VIP_STICKY, 80, SYN).bytes(),
        );
        seen(&out).dst
    };
    let first = backend_for(&mut p, 10000, T0);
    for sport in 10001..10040 {
        assert_eq!(backend_for(&mut p, sport, T0), first);
    }
    // After the 10 s timeout the client is free again: some new flow goes elsewhere.
    let later = Nanos(T0.0 + 11_000_000_000);
    let others = (20000..20040)
        .map(|sp| backend_for(&mut p, sp, Nanos(later.0 + sp as u64 * 11_000_000_000)))
        .filter(|b| *b != first)
        .count();
    assert!(others > 0);
}

#[test]
fn node_port_from_external_client_is_masqueraded_and_replies_go_back_out() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let req = tcp(EXTERNAL, 50000, NODE1, NODE_PORT, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
    let (v, out) = run(&mut p, &snap, T0, UPLINK, &req.bytes());
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (SNAT, A));
    assert_eq!(s.ports.unwrap().1, 8080);
    let snat_port = s.ports.unwrap().0;
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 8080, SNAT, snat_port, SYN | ACK).bytes(),
    );
    assert_eq!(v, tx(UPLINK));
    let s = seen(&out);
    assert_eq!(
        (s.src, s.dst, s.ports),
        (NODE1, EXTERNAL, Some((NODE_PORT, 50000)))
    );
    assert_eq!((s.src_mac, s.dst_mac), (MAC_UPLINK, MAC_EXTERNAL));
}

#[test]
fn node_port_with_external_policy_local_keeps_the_client_address_and_local_backends() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    for sport in 0..40u16 {
        let req =
            tcp(EXTERNAL, 50000 + sport, NODE1, NODE_PORT + 1, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
        let (v, out) = run(&mut p, &snap, T0, UPLINK, &req.bytes());
        assert_eq!(v, tx(POD_A));
        let s = seen(&out);
        assert_eq!((s.src, s.dst), (EXTERNAL, A));
    }
}

#[test]
fn load_balancer_ip_is_a_frontend() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let req = tcp(EXTERNAL, 50000, LB_IP, 80, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
    let (v, out) = run(&mut p, &snap, T0, UPLINK, &req.bytes());
    assert_eq!(v, tx(POD_A));
    assert_eq!(seen(&out).dst, A);
}

#[test]
fn external_ip_is_a_frontend_with_the_external_policy() {
    let ext = std::net::Ipv4Addr::new(198, 19, 64, 9);
    let snap = snapshot_with(1, |s| {
        s[0].external_ips = vec![ext];
        s[0].external_policy_local = true; // client address kept, local endpoints only
    });
    let mut p = pipeline();
    let req = tcp(EXTERNAL, 50000, ext, 80, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
    let (v, out) = run(&mut p, &snap, T0, UPLINK, &req.bytes());
    let s = seen(&out);
    assert_eq!(v, tx(port_of(s.dst)));
    assert_eq!((s.src, s.ports.unwrap().1), (EXTERNAL, 8080));
    // The same Service through its ClusterIP keeps policy Cluster: no change there.
    let (v, _) = run(&mut p, &snap, T0, POD_C, &tcp(C, 1, VIP, 80, SYN).bytes());
    assert!(matches!(v, Verdict::Tx { .. }));
}

#[test]
fn uplink_traffic_that_is_not_ours_passes_to_the_kernel() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let ssh = tcp(EXTERNAL, 50000, NODE1, 22, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
    assert_eq!(
        run(&mut p, &snap, T0, UPLINK, &ssh.bytes()).0,
        Verdict::Pass
    );
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&MAC_EXTERNAL.0);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run(&mut p, &snap, T0, UPLINK, &arp).0, Verdict::Pass);
    assert_eq!(run(&mut p, &snap, T0, POD_A, &arp).0, Verdict::Pass);
}

#[test]
fn hairpin_to_own_service_is_masqueraded() {
    let snap = snapshot_with(1, |s| s[0].endpoints.retain(|e| *e.addr.ip() == A));
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 40000, VIP, 80, SYN).bytes(),
    );
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (SNAT, A));
    let sp = s.ports.unwrap().0;
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 8080, SNAT, sp, SYN | ACK).bytes(),
    );
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.ports), (VIP, A, Some((80, 40000))));
}

/// Splits an encapsulated frame into (outer, vxlan header, inner frame).
fn outer_and_inner(frame: &[u8]) -> (Seen, [u8; 8], Vec<u8>) {
    let outer = seen(frame);
    let mut vx = [0u8; 8];
    vx.copy_from_slice(&outer.payload[..8]);
    let inner = outer.payload[8..].to_vec();
    (outer, vx, inner)
}

#[test]
fn backend_on_another_node_is_reached_through_vxlan_and_replies_come_back() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 40000, VIP_REMOTE, 80, SYN).bytes(),
    );
    assert_eq!(v, tx(UPLINK));
    let (outer, vx, inner) = outer_and_inner(&out);
    assert_eq!((outer.src, outer.dst), (NODE1, NODE2));
    assert_eq!((outer.src_mac, outer.dst_mac), (MAC_UPLINK, MAC_NODE2));
    let (sport, dport) = outer.ports.unwrap();
    assert_eq!(dport, 8472);
    assert!((32768..61000).contains(&sport));
    assert_eq!(vx, [0x08, 0, 0, 0, 0, 0, 1, 0]);
    let s = seen(&inner);
    assert_eq!((s.src_mac, s.dst_mac), (VTEP1, VTEP2));
    assert_eq!(
        (s.src, s.dst, s.ports),
        (A, REMOTE_POD, Some((40000, 8080)))
    );

    // node2's kernel vxlan device sends the reply back.
    let reply = tcp(REMOTE_POD, 8080, A, 40000, SYN | ACK)
        .macs(VTEP2, VTEP1)
        .bytes();
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &reply),
    );
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst, s.ports), (VIP_REMOTE, A, Some((80, 40000))));
    assert_eq!(p.counters().decapsulated, 1);
    assert_eq!(p.counters().encapsulated, 1);
}

#[test]
fn outer_source_port_follows_the_inner_flow() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let sport = |p: &mut kxdp_dataplane::pipeline::Pipeline, cport| {
        let (_, out) = run(
            p,
            &snap,
            T0,
            POD_A,
            &tcp(A, cport, REMOTE_POD, 8080, SYN).bytes(),
        );
        seen(&out).ports.unwrap().0
    };
    assert_eq!(sport(&mut p, 1000), sport(&mut p, 1000));
    let distinct: std::collections::HashSet<u16> =
        (0..32).map(|i| sport(&mut p, 2000 + i)).collect();
    assert!(distinct.len() > 20, "{} distinct ports", distinct.len());
}

#[test]
fn pod_to_pod_across_nodes_is_encapsulated_without_nat() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &udp(A, 1234, REMOTE_POD, 4321).bytes(),
    );
    assert_eq!(v, tx(UPLINK));
    let (_, _, inner) = outer_and_inner(&out);
    let s = seen(&inner);
    assert_eq!((s.src, s.dst, s.ports), (A, REMOTE_POD, Some((1234, 4321))));
    assert_eq!(s.ttl, 63);
}

#[test]
fn remote_pod_to_local_pod_is_decapsulated_and_delivered() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let inner = udp(REMOTE_POD, 1234, B, 4321).macs(VTEP2, VTEP1).bytes();
    let (v, out) = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &inner),
    );
    assert_eq!(v, tx(POD_B));
    let s = seen(&out);
    assert_eq!(
        (s.src, s.dst, s.payload.as_slice()),
        (REMOTE_POD, B, &b"udp payload"[..])
    );
    assert_eq!((s.src_mac, s.dst_mac), (host_veth_mac(POD_B), pod_mac(B)));
}

#[test]
fn vxlan_from_an_unknown_vtep_is_dropped() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let inner = udp(REMOTE_POD, 1234, B, 4321).bytes();
    let v = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(ROUTER, MAC_ROUTER, 1, 0x08, &inner),
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::VxlanUnknownSource));
}

#[test]
fn vxlan_without_the_i_flag_or_with_another_vni_is_dropped() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let inner = udp(REMOTE_POD, 1234, B, 4321).bytes();
    let v = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(NODE2, MAC_NODE2, 1, 0x00, &inner),
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::BadVxlanHeader));
    let v = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(NODE2, MAC_NODE2, 2, 0x08, &inner),
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::VxlanWrongVni));
}

#[test]
fn decapsulated_traffic_for_another_node_is_not_reencapsulated() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let inner = udp(REMOTE_POD, 1234, std::net::Ipv4Addr::new(198, 18, 2, 99), 1).bytes();
    let v = run(
        &mut p,
        &snap,
        T0,
        UPLINK,
        &vxlan_from(NODE2, MAC_NODE2, 1, 0x08, &inner),
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::OverlayLoop));
}

#[test]
fn too_big_for_the_underlay_with_df_gets_fragmentation_needed() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    // 1500-byte IP packet: 1550 on the underlay, over its 1500 MTU.
    let big = tcp(A, 40000, VIP_REMOTE, 80, ACK).payload_len(1500 - 40);
    let bytes = big.bytes();
    let (v, out) = run(&mut p, &snap, T0, POD_A, &bytes);
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!(s.dst, A);
    let (ty, code, rest) = s.icmp.unwrap();
    assert_eq!((ty, code), (3, 4));
    assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1450);
    // It quotes the packet as the pod sent it: to the ClusterIP, not the backend.
    assert_eq!(&s.payload[..28], &bytes[14..14 + 28]);
    assert_eq!(p.counters().frag_needed, 1);
    // The same size without DF cannot be sent either (kxdp does not fragment).
    let mut no_df = tcp(A, 40001, REMOTE_POD, 80, ACK).payload_len(1460);
    no_df.dont_frag = false;
    assert_eq!(
        run(&mut p, &snap, T0, POD_A, &no_df.bytes()).0,
        Verdict::Drop(DropReason::TooBig)
    );
    // One byte smaller fits exactly.
    let fits = tcp(A, 40002, REMOTE_POD, 80, ACK).payload_len(1450 - 40);
    assert_eq!(run(&mut p, &snap, T0, POD_A, &fits.bytes()).0, tx(UPLINK));
}

/// An ICMP error as a host would send it: IP header + 8+ bytes of `about`'s IP packet.
fn icmp_error(
    src: std::net::Ipv4Addr,
    ty: u8,
    code: u8,
    mtu: u16,
    about: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let ip = &about[14..];
    let mut body = vec![ty, code, 0, 0, 0, 0];
    body.extend_from_slice(&mtu.to_be_bytes());
    body.extend_from_slice(&ip[..quote_len.min(ip.len())]);
    let c = {
        let mut sum = 0u32;
        for ch in body.chunks(2) {
            sum += u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    body[2..4].copy_from_slice(&c.to_be_bytes());
    let to = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(pod_mac(src).0, [0xee; 6])
        .ipv4(src.octets(), to.octets(), 64)
        .write(&mut out, etherparse::IpNumber::ICMP, &body)
        .unwrap();
    out
}

#[test]
fn port_unreachable_from_a_backend_is_translated_back_to_the_cluster_ip() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (_, dnatted) = run(&mut p, &snap, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    // B has nothing on 5353 and says so about the packet it received.
    let err = icmp_error(B, 3, 3, 0, &dnatted, 64);
    let (v, out) = run(&mut p, &snap, T0, POD_B, &err);
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (VIP, A));
    let q = &s.payload;
    assert_eq!(&q[12..16], &A.octets());
    assert_eq!(&q[16..20], &VIP.octets());
    assert_eq!(u16::from_be_bytes([q[20], q[21]]), 5000);
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), 53);
    // The quoted IP header's checksum was fixed too.
    let qh = etherparse::Ipv4HeaderSlice::from_slice(&q[..20])
        .unwrap()
        .to_header();
    assert_eq!(qh.calc_header_checksum(), qh.header_checksum);
}

#[test]
fn fragmentation_needed_from_a_router_keeps_the_router_address() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let (_, dnatted) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 40000, VIP, 80, SYN).bytes(),
    );
    let backend = seen(&dnatted).dst;
    // A router between: an error about the client's packet, quoted as it saw it.
    let mut err = icmp_error(ROUTER, 3, 4, 1400, &dnatted, 28);
    err[6..12].copy_from_slice(&MAC_ROUTER.0);
    let (v, out) = run(&mut p, &snap, T0, port_of(backend), &err);
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (ROUTER, A));
    assert_eq!(&s.payload[16..20], &VIP.octets());
    assert_eq!(
        u16::from_be_bytes([s.icmp.unwrap().2[2], s.icmp.unwrap().2[3]]),
        1400
    );
}

#[test]
fn fragmentation_needed_about_a_node_port_reply_reaches_the_backend() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let req = tcp(EXTERNAL, 50000, NODE1, NODE_PORT, SYN).macs(MAC_EXTERNAL, MAC_UPLINK);
    let (_, to_pod) = run(&mut p, &snap, T0, UPLINK, &req.bytes());
    let snat_port = seen(&to_pod).ports.unwrap().0;
    let (_, reply) = run(
        &mut p,
        &snap,
        T0,
        POD_A,
        &tcp(A, 8080, SNAT, snat_port, SYN | ACK).bytes(),
    );
    // A router on the way to the client cannot forward the reply as it left node1.
    let mut err = icmp_error(ROUTER, 3, 4, 1280, &reply, 28);
    err[0..6].copy_from_slice(&MAC_UPLINK.0);
    err[6..12].copy_from_slice(&MAC_ROUTER.0);
    let (v, out) = run(&mut p, &snap, T0, UPLINK, &err);
    assert_eq!(v, tx(POD_A));
    let s = seen(&out);
    assert_eq!((s.src, s.dst), (ROUTER, A));
    // The quote now shows the packet as the backend sent it.
    assert_eq!(&s.payload[12..16], &A.octets());
    assert_eq!(&s.payload[16..20], &SNAT.octets());
    assert_eq!(u16::from_be_bytes([s.payload[20], s.payload[21]]), 8080);
    assert_eq!(
        u16::from_be_bytes([s.payload[22], s.payload[23]]),
        snat_port
    );
    // An error about nothing kxdp tracks is the kernel's.
    let stray = icmp_error(
        ROUTER,
        3,
        4,
        1280,
        &tcp(NODE1, 22, EXTERNAL, 5, ACK).bytes(),
        28,
    );
    assert_eq!(run(&mut p, &snap, T0, UPLINK, &stray).0, Verdict::Pass);
}

#[test]
fn ttl_one_is_not_forwarded() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let mut f = udp(A, 1, B, 2);
    f.ttl = 1;
    assert_eq!(
        run(&mut p, &snap, T0, POD_A, &f.bytes()).0,
        Verdict::Drop(DropReason::TtlExpired)
    );
}

#[test]
fn full_conntrack_refuses_new_flows_and_counts_them() {
    let mut cfg = Config::new(ports(1500));
    cfg.conntrack_size = 4;
    let (mut p, snap) = (pipeline_with(cfg), snapshot(1));
    for i in 0..4u16 {
        let (_, out) = run(
            &mut p,
            &snap,
            T0,
            POD_C,
            &tcp(C, 100 + i, VIP, 80, SYN).bytes(),
        );
        let b = seen(&out).dst;
        // Established (assured) flows are not evicted.
        run(
            &mut p,
            &snap,
            T0,
            port_of(b),
            &tcp(b, 8080, C, 100 + i, SYN | ACK).bytes(),
        );
    }
    let v = run(&mut p, &snap, T0, POD_C, &tcp(C, 200, VIP, 80, SYN).bytes()).0;
    assert_eq!(v, Verdict::Drop(DropReason::ConntrackFull));
    assert_eq!(p.counters().drop_count(DropReason::ConntrackFull), 1);
}

#[test]
fn expired_flows_are_swept_between_batches() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    run(&mut p, &snap, T0, POD_A, &udp(A, 5000, VIP, 53).bytes());
    assert_eq!(p.flows().len(), 1);
    assert_eq!(p.housekeeping(Nanos(T0.0 + 31_000_000_000), 64), 1);
    assert_eq!(p.flows().len(), 0);
}

#[test]
fn local_pod_without_a_known_mac_is_held_for_arp_not_guessed() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let silent = std::net::Ipv4Addr::new(198, 18, 1, 77);
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, silent, 2).bytes());
    assert_eq!(
        v,
        Verdict::Resolve {
            ip: silent,
            via: kxdp_dataplane::resolve::Via::PodPorts
        }
    );
    // Finished but for its Ethernet addresses, which the worker writes later.
    assert_eq!(seen(&out).ttl, 63);
    assert_eq!(p.resolved(silent), None);
}

#[test]
fn an_unknown_next_hop_is_queued_for_arp_once_and_learned_from_the_reply() {
    use kxdp_dataplane::resolve::{Request, Via};
    let mut p = kxdp_dataplane::pipeline::Pipeline::new(Config::new(ports(1500)));
    let snap = snapshot(1);
    for _ in 0..3 {
        let v = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes()).0;
        assert_eq!(
            v,
            Verdict::Resolve {
                ip: B,
                via: kxdp_dataplane::resolve::Via::PodPorts
            }
        );
    }
    let asked: Vec<Request> = p.resolve_requests().drain().collect();
    assert_eq!(
        asked,
        vec![Request {
            ip: B,
            via: Via::PodPorts
        }]
    );
    // B answers kxdp's who-has on its port.
    let mut reply = vec![0u8; 42];
    kxdp_dataplane::arp::write_request(&mut reply, pod_mac(B), B, SNAT);
    reply[21] = 2; // operation: reply
    assert_eq!(run(&mut p, &snap, T0, POD_B, &reply).0, Verdict::Pass);
    assert_eq!(p.counters().arp_learned, 1);
    // The held frames can go now.
    assert_eq!(
        p.resolved(B),
        Some((POD_B, pod_mac(B), host_veth_mac(POD_B)))
    );
    assert_eq!(
        run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes()).0,
        tx(POD_B)
    );
}

#[test]
fn a_new_snapshot_prefetches_local_endpoints_and_vteps() {
    use kxdp_dataplane::resolve::Via;
    let mut p = kxdp_dataplane::pipeline::Pipeline::new(Config::new(ports(1500)));
    p.prefetch_neighbours(&snapshot(1), T0);
    let mut asked: Vec<_> = p
        .resolve_requests()
        .drain()
        .map(|r| (r.ip, r.via))
        .collect();
    asked.sort_by_key(|(ip, _)| *ip);
    assert_eq!(
        asked,
        vec![
            (A, Via::PodPorts),
            (B, Via::PodPorts),
            (C, Via::PodPorts),
            (NODE2, Via::Uplink)
        ]
    );
}

#[test]
fn a_pod_is_learned_from_its_own_frames() {
    let mut p = kxdp_dataplane::pipeline::Pipeline::new(Config::new(ports(1500)));
    let snap = snapshot(1);
    // Before B speaks, nobody knows where it is.
    assert_eq!(
        run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes()).0,
        Verdict::Resolve {
            ip: B,
            via: kxdp_dataplane::resolve::Via::PodPorts
        }
    );
    run(&mut p, &snap, T0, POD_B, &udp(B, 2, A, 1).bytes());
    assert_eq!(
        run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes()).0,
        tx(POD_B)
    );
}

#[test]
fn a_pod_that_moves_within_a_batch_is_followed_at_once() {
    // Frames of one batch share their time: these calls all run at T0, so what the
    // pipeline remembers for the batch (crate::memo) would be stale if the move
    // did not clear it.
    let mut p = kxdp_dataplane::pipeline::Pipeline::new(Config::new(ports(1500)));
    let snap = snapshot(1);
    run(&mut p, &snap, T0, POD_B, &udp(B, 2, A, 1).bytes());
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!((v, seen(&out).dst_mac), (tx(POD_B), pod_mac(B)));
    // B comes back on another port with another MAC (a pod recreated, same IP),
    // speaking to a pod elsewhere so that nothing else is looked up on the way.
    let moved = kxdp_dataplane::snapshot::Mac([0x02, 0, 0, 0, 0x99, 0x0b]);
    let hello = udp(B, 2, REMOTE_POD, 1).macs(moved, host_veth_mac(POD_C));
    run(&mut p, &snap, T0, POD_C, &hello.bytes());
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!((v, seen(&out).dst_mac), (tx(POD_C), moved));
    // And back again, in the same batch.
    run(&mut p, &snap, T0, POD_B, &udp(B, 2, REMOTE_POD, 1).bytes());
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!((v, seen(&out).dst_mac), (tx(POD_B), pod_mac(B)));
}

#[test]
fn a_neighbour_another_worker_shares_mid_batch_is_followed_at_once() {
    // What a worker does with another worker's news (worker.rs, share_neighbours).
    let mut p = kxdp_dataplane::pipeline::Pipeline::new(Config::new(ports(1500)));
    let snap = snapshot(1);
    run(&mut p, &snap, T0, POD_B, &udp(B, 2, A, 1).bytes());
    let (v, _) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!(v, tx(POD_B));
    let moved = kxdp_dataplane::snapshot::Mac([0x02, 0, 0, 0, 0x99, 0x0b]);
    let there = kxdp_dataplane::neighbour::Neighbour {
        port: POD_C,
        mac: moved,
    };
    p.neighbours_mut().learn(B, there, T0);
    let (v, out) = run(&mut p, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!((v, seen(&out).dst_mac), (tx(POD_C), moved));
}

#[test]
fn a_syn_on_a_closed_flows_tuple_is_a_new_flow() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    let syn = tcp(C, 40000, VIP, 80, SYN).bytes();
    let (v, out) = run(&mut p, &snap, T0, POD_C, &syn);
    let backend = seen(&out).dst;
    assert_eq!(v, tx(port_of(backend)));
    run(
        &mut p,
        &snap,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, RST).bytes(),
    );
    assert_eq!(p.counters().new_flows, 1);
    // The client reuses its source port: a new connection, tracked afresh.
    let (v, out) = run(&mut p, &snap, Nanos(T0.0 + 1), POD_C, &syn);
    assert_eq!(p.counters().new_flows, 2);
    assert_eq!((v, seen(&out).dst), (tx(port_of(backend)), backend));
}

#[test]
fn proto_of_services_is_respected() {
    let (mut p, snap) = (pipeline(), snapshot(1));
    // UDP to the TCP-only port 80 of VIP is no frontend: routed as plain traffic.
    let v = run(&mut p, &snap, T0, POD_A, &udp(A, 1, VIP, 80).bytes()).0;
    assert_eq!(v, Verdict::Pass);
    let _ = Proto::Tcp;
}

#[test]
fn a_reply_on_another_worker_is_handed_to_the_worker_that_owns_the_flow() {
    use kxdp_dataplane::owners::FlowOwners;
    use kxdp_dataplane::pipeline::{Ownership, Pipeline};
    use std::sync::Arc;
    let owners = Arc::new(FlowOwners::new(4096));
    let worker = |id: u8| {
        let mut cfg = Config::new(ports(1500));
        cfg.ownership = Some(Ownership {
            worker: id,
            owners: owners.clone(),
        });
        pipeline_with(cfg)
    };
    let (mut w0, mut w1): (Pipeline, Pipeline) = (worker(0), worker(1));
    let snap = snapshot(1);
    let (_, out) = run(
        &mut w0,
        &snap,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, SYN).bytes(),
    );
    let backend = seen(&out).dst;
    // The reply reaches worker 1, which has never seen the flow.
    let reply = tcp(backend, 8080, C, 40000, SYN | ACK).bytes();
    let (v, untouched) = run(&mut w1, &snap, T0, port_of(backend), &reply);
    assert_eq!(v, Verdict::Handoff { worker: 0 });
    assert_eq!(
        untouched, reply,
        "a handed-off frame is passed on as it arrived"
    );
    let (v, out) = run(&mut w0, &snap, T0, port_of(backend), &untouched);
    assert_eq!(v, tx(POD_C));
    assert_eq!(seen(&out).src, VIP);
    // Traffic nobody owns is not handed anywhere.
    let (v, _) = run(&mut w1, &snap, T0, POD_A, &udp(A, 1, B, 2).bytes());
    assert_eq!(v, tx(POD_B));
    // The client's next packet landing on worker 1 goes to worker 0 too, instead of
    // opening a second flow there.
    let (v, _) = run(
        &mut w1,
        &snap,
        T0,
        POD_C,
        &tcp(C, 40000, VIP, 80, ACK).bytes(),
    );
    assert_eq!(v, Verdict::Handoff { worker: 0 });
    assert_eq!(w1.counters().new_flows, 0);
}
