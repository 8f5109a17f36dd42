//! `explain` against what the pipeline actually does: for many tuples and several
//! snapshots, a frame driven through the sans-IO pipeline must go to the backend
//! `explain` names (and be masqueraded, rejected or dropped exactly when it says),
//! and the per-Service counters must count what went through.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use kxdp_dataplane::conntrack::FlowState;
use kxdp_dataplane::explain::{explain, Existing, Outcome, ServiceChoice};
use kxdp_dataplane::flow::{FiveTuple, Nanos, Proto};
use kxdp_dataplane::neighbour::Neighbour;
use kxdp_dataplane::pick::{How, Pick};
use kxdp_dataplane::pipeline::Pipeline;
use kxdp_dataplane::snapshot::{Route, Snapshot};
use kxdp_dataplane::verdict::{DropReason, PortId, Verdict};

const T0: Nanos = Nanos(1_000_000_000);

/// What happened to a frame: where it was delivered (the inner frame for VXLAN), its
/// source after NAT; or the verdict when it was not delivered as a TCP/UDP packet.
#[derive(Debug, PartialEq)]
enum Fate {
    Delivered { to: SocketAddrV4, src: Ipv4Addr },
    IcmpUnreachable,
    Dropped(DropReason),
}

fn fate(v: Verdict, out: &[u8]) -> Fate {
    match v {
        Verdict::Drop(r) => return Fate::Dropped(r),
        Verdict::Tx { .. } => {}
        other => panic!("unexpected verdict {other:?}"),
    }
    let mut s = seen(out);
    if s.proto == 17 && s.ports.is_some_and(|(_, d)| d == 8472) {
        s = seen(&s.payload[8..]);
    }
    if s.icmp.is_some() {
        return Fate::IcmpUnreachable;
    }
    let (sport, dport) = s.ports.expect("ports");
    let _ = sport;
    Fate::Delivered {
        to: SocketAddrV4::new(s.dst, dport),
        src: s.src,
    }
}

/// The frame of tuple `t` (a SYN for TCP) as it arrives on `ingress`.
fn frame(t: &FiveTuple, ingress: PortId) -> Vec<u8> {
    let p = match t.proto {
        Proto::Tcp => tcp(t.src, t.sport, t.dst, t.dport, SYN),
        Proto::Udp => udp(t.src, t.sport, t.dst, t.dport),
    };
    if ingress == UPLINK {
        p.macs(MAC_EXTERNAL, MAC_UPLINK).bytes()
    } else {
        p.macs(pod_mac(t.src), host_veth_mac(ingress)).bytes()
    }
}

fn choice<'a>(snap: &'a Snapshot, t: &FiveTuple) -> ServiceChoice<'a> {
    match explain(snap, t, None, None).outcome {
        Outcome::Service(c) => c,
        other => panic!("{t:?}: no Service: {other:?}"),
    }
}

/// What `explain` predicts for a new flow, in the terms of [`Fate`].
fn predicted(snap: &Snapshot, t: &FiveTuple) -> Fate {
    let c = choice(snap, t);
    match c.pick {
        Pick::Backend { backend, .. } => Fate::Delivered {
            to: backend.addr,
            src: if c.masquerade {
                snap.node.snat_ip
            } else {
                t.src
            },
        },
        Pick::Reject => Fate::IcmpUnreachable,
        Pick::NoLocalEndpoints => Fate::Dropped(DropReason::NoLocalEndpoints),
    }
}

fn tuple(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: Proto) -> FiveTuple {
    FiveTuple {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

/// Drives a fresh pipeline with each tuple's first packet and checks explain's answer.
fn check_new_flows(snap: &Snapshot, tuples: &[(FiveTuple, PortId)]) {
    let mut p = pipeline();
    // Local backends beyond the world's three pods sit behind pod B's port.
    for b in snap.services().iter().flat_map(|s| &s.backends) {
        let ip = *b.addr.ip();
        if b.is_local && ![A, B, C].contains(&ip) {
            let mac = pod_mac(ip);
            p.neighbours_mut().pin(ip, Neighbour { port: POD_B, mac });
        }
    }
    for (t, ingress) in tuples {
        let (v, out) = run(&mut p, snap, T0, *ingress, &frame(t, *ingress));
        assert_eq!(fate(v, &out), predicted(snap, t), "{t:?} from {ingress:?}");
    }
}

fn pod_tuples(dst: Ipv4Addr, dport: u16, proto: Proto, n: u16) -> Vec<(FiveTuple, PortId)> {
    (0..n)
        .map(|i| (tuple(C, 30000 + i * 7, dst, dport, proto), POD_C))
        .collect()
}

#[test]
fn explain_names_the_backend_the_pipeline_picks_for_cluster_ip_flows() {
    let snap = snapshot(1);
    let mut tuples = pod_tuples(VIP, 80, Proto::Tcp, 64);
    tuples.extend(pod_tuples(VIP, 53, Proto::Udp, 16));
    tuples.extend(pod_tuples(VIP_REMOTE, 80, Proto::Tcp, 8));
    check_new_flows(&snap, &tuples);
    // Both backends of `web` are seen: the comparison is not trivially one-sided.
    let backends: std::collections::HashSet<_> = pod_tuples(VIP, 80, Proto::Tcp, 64)
        .iter()
        .map(|(t, _)| choice(&snap, t).backend)
        .collect();
    assert_eq!(backends.len(), 2, "{backends:?}");
}

#[test]
fn explain_agrees_with_the_pipeline_across_snapshots_of_different_shapes() {
    let shapes: Vec<Snapshot> = vec![
        snapshot(1),
        // Six backends: a different Maglev table.
        snapshot_with(2, |s| {
            s[0].endpoints = (10..16)
                .map(|h| ep(Ipv4Addr::new(198, 18, 1, h), 8080, true))
                .collect()
        }),
        // One backend left, on node2: VXLAN.
        snapshot_with(3, |s| s[0].endpoints = vec![ep(REMOTE_POD, 8080, false)]),
        // A service inserted first: every ServiceId shifts.
        snapshot_with(4, |s| {
            s.insert(
                0,
                svc(
                    "default/first:",
                    Proto::Tcp,
                    Ipv4Addr::new(198, 19, 0, 99),
                    80,
                    vec![ep(B, 80, true)],
                ),
            )
        }),
    ];
    for snap in &shapes {
        check_new_flows(snap, &pod_tuples(VIP, 80, Proto::Tcp, 48));
    }
}

#[test]
fn explain_agrees_on_node_ports_masquerading_and_local_policy() {
    let snap = snapshot(1);
    let mut tuples: Vec<(FiveTuple, PortId)> = (0..24)
        .map(|i| {
            (
                tuple(EXTERNAL, 50000 + i, NODE1, NODE_PORT, Proto::Tcp),
                UPLINK,
            )
        })
        .collect();
    tuples.extend((0..24).map(|i| {
        (
            tuple(EXTERNAL, 50000 + i, NODE1, NODE_PORT + 1, Proto::Tcp),
            UPLINK,
        )
    }));
    tuples.push((tuple(EXTERNAL, 50000, LB_IP, 80, Proto::Tcp), UPLINK));
    // A pod reaching itself through its Service: hairpin, masqueraded.
    check_new_flows(&snap, &tuples);
    let c = choice(&snap, &tuple(EXTERNAL, 50000, NODE1, NODE_PORT, Proto::Tcp));
    assert!(c.masquerade, "eTP Cluster from outside is masqueraded");
    let c = choice(
        &snap,
        &tuple(EXTERNAL, 50000, NODE1, NODE_PORT + 1, Proto::Tcp),
    );
    assert!(!c.masquerade && c.policy_local);
    assert_eq!(
        c.backend,
        Some(SocketAddrV4::new(A, 8080)),
        "the only local one"
    );

    let hairpin = snapshot_with(1, |s| s[0].endpoints.retain(|e| *e.addr.ip() == A));
    let mut p = pipeline();
    let t = tuple(A, 40000, VIP, 80, Proto::Tcp);
    let (v, out) = run(&mut p, &hairpin, T0, POD_A, &frame(&t, POD_A));
    assert_eq!(fate(v, &out), predicted(&hairpin, &t));
    assert!(choice(&hairpin, &t).masquerade);
}

#[test]
fn explain_agrees_on_reject_and_on_local_policy_without_local_endpoints() {
    let snap = snapshot(1);
    let empty = tuple(C, 40000, VIP_EMPTY, 80, Proto::Tcp);
    assert_eq!(choice(&snap, &empty).pick, Pick::Reject);
    let local = tuple(C, 40000, VIP_LOCAL, 80, Proto::Tcp);
    assert_eq!(choice(&snap, &local).pick, Pick::NoLocalEndpoints);
    // eTP Local NodePort whose only endpoint is remote.
    let remote_only = snapshot_with(2, |s| s[8].endpoints.retain(|e| *e.addr.ip() == REMOTE_POD));
    let np = tuple(EXTERNAL, 50000, NODE1, NODE_PORT + 1, Proto::Tcp);
    assert_eq!(choice(&remote_only, &np).pick, Pick::NoLocalEndpoints);
    check_new_flows(&snap, &[(empty, POD_C), (local, POD_C)]);
    check_new_flows(&remote_only, &[(np, UPLINK)]);
    let mut p = pipeline();
    let (v, _) = run(&mut p, &snap, T0, POD_C, &frame(&local, POD_C));
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalEndpoints));
}

#[test]
fn explain_names_no_service_for_plain_traffic() {
    let snap = snapshot(1);
    let e = explain(
        &snap,
        &tuple(A, 40000, REMOTE_POD, 80, Proto::Tcp),
        None,
        None,
    );
    assert!(matches!(
        e.outcome,
        Outcome::NoService {
            route: Route::Remote(n)
        } if n.name == "node2"
    ));
}

#[test]
fn an_existing_flow_keeps_its_backend_while_it_serves_and_explain_says_so() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let t = tuple(C, 41000, VIP, 80, Proto::Tcp);
    let (v, out) = run(&mut p, &snap1, T0, POD_C, &frame(&t, POD_C));
    let Fate::Delivered { to: first, .. } = fate(v, &out) else {
        panic!("not delivered")
    };
    // Six more backends: Maglev may now pick another one for a new flow, but the
    // flow is pinned.
    let snap2 = snapshot_with(2, |s| {
        s[0].endpoints
            .extend((13..19).map(|h| ep(Ipv4Addr::new(198, 18, 1, h), 8080, true)))
    });
    let existing = Existing {
        backend: first,
        state: FlowState::TcpSynSent,
    };
    let ack = tcp(C, 41000, VIP, 80, ACK)
        .macs(pod_mac(C), host_veth_mac(POD_C))
        .bytes();
    let (v, out) = run(&mut p, &snap2, T0, POD_C, &ack);
    let actual = fate(v, &out);
    let Outcome::Service(c) = explain(&snap2, &t, Some(existing), None).outcome else {
        panic!("no Service")
    };
    assert_eq!(c.existing, Some((existing, true)));
    assert_eq!(
        actual,
        Fate::Delivered {
            to: c.backend.unwrap(),
            src: C
        }
    );
    assert_eq!(c.backend, Some(first));

    // The backend leaves: the flow is forgotten and a new pick applies, as explain says.
    let snap3 = snapshot_with(3, |s| s[0].endpoints.retain(|e| e.addr != first));
    let Outcome::Service(c) = explain(&snap3, &t, Some(existing), None).outcome else {
        panic!("no Service")
    };
    assert_eq!(c.existing, Some((existing, false)));
    let (v, out) = run(&mut p, &snap3, T0, POD_C, &frame(&t, POD_C));
    assert_eq!(
        fate(v, &out),
        Fate::Delivered {
            to: c.backend.unwrap(),
            src: C
        }
    );
    assert_ne!(c.backend, Some(first));
}

#[test]
fn explain_follows_session_affinity_as_the_pipeline_does() {
    let snap = snapshot(1);
    let mut p = pipeline();
    let first = tuple(C, 42000, VIP_STICKY, 80, Proto::Tcp);
    let (v, out) = run(&mut p, &snap, T0, POD_C, &frame(&first, POD_C));
    let Fate::Delivered { to: pinned, .. } = fate(v, &out) else {
        panic!("not delivered")
    };
    for sport in 42001..42017 {
        let t = tuple(C, sport, VIP_STICKY, 80, Proto::Tcp);
        let (v, out) = run(&mut p, &snap, T0, POD_C, &frame(&t, POD_C));
        let Outcome::Service(c) = explain(&snap, &t, None, Some(pinned)).outcome else {
            panic!("no Service")
        };
        assert!(matches!(
            c.pick,
            Pick::Backend {
                how: How::Affinity,
                ..
            }
        ));
        assert_eq!(
            fate(v, &out),
            Fate::Delivered {
                to: c.backend.unwrap(),
                src: C
            }
        );
    }
}

fn counter_of(p: &Pipeline, snap: &Snapshot, name: &str) -> (u64, u64) {
    let id_hash = snap
        .services()
        .iter()
        .find(|s| s.spec.name == name)
        .expect("service")
        .id_hash;
    let c = p
        .service_counters()
        .iter()
        .find(|c| c.id_hash == id_hash)
        .expect("counter");
    (c.packets, c.new_flows)
}

#[test]
fn per_service_counters_count_both_directions_and_survive_a_snapshot_swap() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let t = tuple(C, 43000, VIP, 80, Proto::Tcp);
    let (v, out) = run(&mut p, &snap1, T0, POD_C, &frame(&t, POD_C));
    let Fate::Delivered { to, .. } = fate(v, &out) else {
        panic!("not delivered")
    };
    let reply = tcp(*to.ip(), to.port(), C, 43000, SYN | ACK)
        .macs(pod_mac(*to.ip()), host_veth_mac(port_of_pod(*to.ip())))
        .bytes();
    run(&mut p, &snap1, T0, port_of_pod(*to.ip()), &reply);
    run(
        &mut p,
        &snap1,
        T0,
        POD_C,
        &frame(&tuple(C, 40000, VIP_EMPTY, 80, Proto::Tcp), POD_C),
    );
    assert_eq!(counter_of(&p, &snap1, "default/web:http"), (2, 1));
    assert_eq!(
        counter_of(&p, &snap1, "default/empty:"),
        (1, 0),
        "rejected SYN"
    );

    // A Service port inserted first shifts every ServiceId; the flow made under snap1
    // keeps counting under the right name.
    let snap2 = snapshot_with(2, |s| {
        s.insert(
            0,
            svc(
                "default/first:",
                Proto::Tcp,
                Ipv4Addr::new(198, 19, 0, 99),
                80,
                vec![ep(B, 80, true)],
            ),
        )
    });
    let ack = tcp(C, 43000, VIP, 80, ACK)
        .macs(pod_mac(C), host_veth_mac(POD_C))
        .bytes();
    let (v, _) = run(&mut p, &snap2, T0, POD_C, &ack);
    assert!(matches!(v, Verdict::Tx { .. }));
    run(&mut p, &snap2, T0, port_of_pod(*to.ip()), &reply);
    assert_eq!(counter_of(&p, &snap2, "default/web:http"), (4, 1));
    assert_eq!(counter_of(&p, &snap2, "default/empty:"), (1, 0));
    assert_eq!(counter_of(&p, &snap2, "default/first:"), (0, 0));
    assert_eq!(p.service_counters().len(), snap2.services().len());
}

fn port_of_pod(ip: Ipv4Addr) -> PortId {
    match ip {
        x if x == A => POD_A,
        x if x == B => POD_B,
        x if x == C => POD_C,
        other => panic!("{other} is not a local pod"),
    }
}

/// A snapshot patched from the one the counters follow (an endpoint change) keeps
/// every port at its index: following it costs nothing and the counts go on.
#[test]
fn per_service_counters_go_on_across_a_patched_snapshot() {
    let mut p = pipeline();
    let snap1 = snapshot(1);
    let t = tuple(C, 43001, VIP, 80, Proto::Tcp);
    let (v, out) = run(&mut p, &snap1, T0, POD_C, &frame(&t, POD_C));
    assert!(matches!(fate(v, &out), Fate::Delivered { .. }));
    assert_eq!(counter_of(&p, &snap1, "default/web:http"), (1, 1));

    // "default/empty:" gains an endpoint: same frontends, a new port at its index.
    let at = snap1
        .services()
        .iter()
        .position(|s| s.spec.name == "default/empty:")
        .expect("empty");
    let mut spec = snap1.services()[at].spec.clone();
    spec.endpoints = vec![ep(B, 80, true)];
    let port = std::sync::Arc::new(kxdp_dataplane::snapshot::ServicePort::new(spec, 65537));
    let id = kxdp_dataplane::snapshot::ServiceId(at as u32);
    let snap2 = snap1.with_ports(2, &[(id, port)]).expect("same frontends");
    p.follow_patched(&snap2);
    let (v, _) = run(&mut p, &snap2, T0, POD_C, &frame(&t, POD_C));
    assert!(matches!(v, Verdict::Tx { .. }));
    run(
        &mut p,
        &snap2,
        T0,
        POD_C,
        &frame(&tuple(C, 40001, VIP_EMPTY, 80, Proto::Tcp), POD_C),
    );
    assert_eq!(counter_of(&p, &snap2, "default/web:http"), (2, 1));
    assert_eq!(
        counter_of(&p, &snap2, "default/empty:"),
        (1, 1),
        "now served"
    );
}
