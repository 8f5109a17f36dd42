//! Per-packet cost of the pipeline on the paths a worker runs most, in batches of 64
//! frames as a worker hands them over. Every figure is reported per packet
//! (`Throughput::Elements(64)`: criterion's time is per batch, divide by 64).
//!
//! `cargo bench -p kxdp-bench --bench pipeline` (about a minute).
//!
//! ## The world
//! node1 runs kxdp with an uplink and three pod ports (pods A, B, C in 198.18.1.0/24);
//! node2 (198.18.2.0/24) is a VXLAN peer. Services: `web` (ClusterIP 198.19.0.10:80 over
//! A and B), `np-local` (NodePort 30080, externalTrafficPolicy Local, over A and B),
//! `np-cluster` (NodePort 30090, eTP Cluster: masqueraded, over ports 8080-8083 of A
//! and B) and `remote` (ClusterIP 198.19.0.30:80 over a pod on node2). Pods' MACs are
//! learned, node2's VTEP is pinned, as `kxdp replay` sets them up. Conntrack, affinity and
//! neighbour tables have the CLI's default sizes. Frames are 64 bytes (TCP with 10
//! bytes of payload), VXLAN frames 114.
//!
//! ## What is timed
//! The pipeline rewrites frames in place, so each batch first restores its 64 buffers
//! (2 KiB each, as UMEM chunks) from a template with `copy_from_slice` and builds the
//! `Frame`s; that restore is inside the timed loop. `copy_only/*` times the restore
//! alone, per frame kind, so it can be subtracted:
//! - `copy_only/64B` for `established/uplink`, `established/pod`, `vxlan_encap/*`;
//! - `copy_only/64B_new_tuple` (the copy plus writing a new source address and port
//!   with incremental checksum updates) for `established/uplink_64k_flows` and
//!   `new_flow/*`;
//! - `copy_only/114B` for `vxlan_decap/*`.
//!
//! ## Scenarios
//! - `established/uplink`: one assured TCP flow from an external client to the
//!   NodePort (eTP Local: DNAT only), arriving on the uplink with complete checksums
//!   (incremental updates), delivered to the backend's pod port. Every frame of a
//!   batch is the same flow, so `process`'s lookahead (`dataplane/src/lookahead.rs`)
//!   prefetches for the first frame only and the rest reuse its probe.
//! - `established/uplink_64k_flows`: the same with 65,536 assured flows, each batch 64
//!   different ones in scrambled turn, so conntrack lookups leave the cache as on a
//!   busy node: what `process`'s lookahead prefetches, a few frames ahead, for every
//!   frame.
//! - `established/pod`: one assured TCP flow from pod C to the ClusterIP, arriving on
//!   a pod port with a partial checksum (the pipeline recomputes the L4 checksum in
//!   full), delivered to the backend's pod port.
//! - `new_flow/nodeport` and `new_flow/nodeport_masq`: every packet a SYN from a new
//!   client (address and port drawn from 10.0.0.0/8 x 1024..65535): a conntrack miss,
//!   a Maglev pick, an insert (and for eTP Cluster a free SNAT port). The table has
//!   the default 262,144 entries; whenever it holds 65,536 flows the timer stops, time
//!   jumps past the SYN timeout and `housekeeping` sweeps the table empty, so inserts
//!   are measured at 0-25% occupancy and never evict or fail.
//! - `vxlan_encap/pod_to_pod`: pod A to a pod on node2 (no Service: a conntrack miss),
//!   TTL, full L4 checksum (pod port), VXLAN encapsulation to node2.
//! - `vxlan_encap/service`: an assured flow from pod A to the ClusterIP whose backend
//!   is on node2: DNAT, then encapsulation.
//! - `vxlan_decap/pod_to_pod`: VXLAN from node2 carrying a remote pod's frame to pod B,
//!   decapsulated and delivered.
//!
//! Before timing, one batch of each scenario runs and every frame is checked: the
//! verdict (Tx on the expected port), the addresses and ports after NAT, and the IPv4
//! and TCP checksums (verified by etherparse). After each timed run the counters must
//! show every packet transmitted, none dropped or passed, so a drop path cannot be
//! measured by mistake.

// The same two-node world the pipeline tests use (addresses, MACs, ports, node2).
#[path = "../../dataplane/tests/common/mod.rs"]
mod world;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use world::{
    pod_mac, A, ACK, B, C, EXTERNAL, MAC_EXTERNAL, MAC_NODE2, MAC_UPLINK, NODE1, NODE2, POD_A,
    POD_B, POD_C, REMOTE_POD, SNAT, SYN, UPLINK, VIP, VIP_REMOTE, VTEP1, VTEP2,
};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use kxdp_dataplane::checksum::{fold, pseudo_header, update16, update32};
use kxdp_dataplane::flow::{mix64, Nanos, Proto};
use kxdp_dataplane::frame::{Frame, HEADROOM};
use kxdp_dataplane::inspect::{FlowFilter, FlowQuery};
use kxdp_dataplane::neighbour::Neighbour;
use kxdp_dataplane::pipeline::{Config, Pipeline};
use kxdp_dataplane::snapshot::{EndpointSpec, Mac, ServicePortSpec, Snapshot, SnapshotBuilder};
use kxdp_dataplane::verdict::{PortId, Verdict};

/// Frames per batch, as a worker reads them from its RX ring.
const BATCH: usize = 64;
/// Buffer size per frame, as a UMEM chunk.
const CHUNK: usize = 2048;
/// TCP payload that makes a 64-byte frame (14 + 20 + 20 + 10).
const PAYLOAD: [u8; 10] = *b"0123456789";
/// Flows in `established/uplink_64k_flows`.
const MANY_FLOWS: u64 = 65_536;
/// `new_flow/*` sweeps the table whenever it holds this many flows.
const NEW_FLOW_WINDOW: usize = 65_536;
/// Simulated time between batches.
const BATCH_GAP: u64 = 1_000;

const NODE_PORT_LOCAL: u16 = 30080;
const NODE_PORT_CLUSTER: u16 = 30090;
const BACKEND_PORT: u16 = 8080;
const VXLAN_PORT: u16 = 8472;

// Offsets in an Ethernet + IPv4 (no options) + TCP frame.
const IP_CSUM: usize = 24;
const IP_SRC: usize = 26;
const TCP_SPORT: usize = 34;
const TCP_FLAGS_WORD: usize = 46;
const TCP_CSUM: usize = 50;

fn svc(name: &str, vip: Ipv4Addr, backends: &[(Ipv4Addr, u16, bool)]) -> ServicePortSpec {
    ServicePortSpec {
        name: name.into(),
        proto: Proto::Tcp,
        port: 80,
        cluster_ips: vec![vip],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_timeout: None,
        internal_policy_local: false,
        external_policy_local: false,
        endpoints: backends
            .iter()
            .map(|&(ip, port, is_local)| EndpointSpec {
                addr: SocketAddrV4::new(ip, port),
                is_local,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
    }
}

fn snapshot() -> Snapshot {
    let mut b = SnapshotBuilder::new(1, world::local_node(), 65537);
    b.add_remote_node(world::node2());
    let local = [(A, BACKEND_PORT, true), (B, BACKEND_PORT, true)];
    b.add_service_port(svc("default/web:http", VIP, &local))
        .unwrap();
    let mut np_local = svc("default/np-local:", Ipv4Addr::new(198, 19, 0, 60), &local);
    np_local.node_port = Some(NODE_PORT_LOCAL);
    np_local.external_policy_local = true;
    b.add_service_port(np_local).unwrap();
    // Eight backends (two pods, four ports each), as each masquerades into its own
    // 64,512 SNAT ports: at most 8,192 flows per backend in `new_flow/nodeport_masq`.
    let eight: Vec<_> = [A, B]
        .into_iter()
        .flat_map(|ip| (0..4).map(move |i| (ip, BACKEND_PORT + i, true)))
        .collect();
    let mut np_cluster = svc("default/np-cluster:", Ipv4Addr::new(198, 19, 0, 61), &eight);
    np_cluster.node_port = Some(NODE_PORT_CLUSTER);
    b.add_service_port(np_cluster).unwrap();
    b.add_service_port(svc(
        "default/remote:",
        VIP_REMOTE,
        &[(REMOTE_POD, BACKEND_PORT, false)],
    ))
    .unwrap();
    b.build()
}

/// A worker's pipeline with default table sizes that knows its pods (learned) and
/// node2's VTEP (pinned).
fn pipeline() -> Pipeline {
    let mut p = Pipeline::new(Config::new(world::ports(1500)));
    let n = p.neighbours_mut();
    for (ip, port) in [(A, POD_A), (B, POD_B), (C, POD_C)] {
        let mac = pod_mac(ip);
        n.learn(ip, Neighbour { port, mac }, Nanos(0));
    }
    n.pin(
        NODE2,
        Neighbour {
            port: UPLINK,
            mac: MAC_NODE2,
        },
    );
    p
}

/// An Ethernet/IPv4/TCP frame with complete checksums and a 10-byte payload.
fn tcp_frame(macs: (Mac, Mac), src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(macs.0 .0, macs.1 .0)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::with_capacity(64);
    b.write(&mut out, &PAYLOAD).unwrap();
    out
}

/// What a pod with checksum offload sends: only the pseudo-header sum in the TCP
/// checksum field (Linux's CHECKSUM_PARTIAL).
fn with_partial_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[26..30]).unwrap());
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap());
    let len = (frame.len() - TCP_SPORT) as u16;
    let partial = fold(pseudo_header(src, dst, 6, len));
    frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&partial.to_be_bytes());
    frame
}

/// `inner` in VXLAN from node2 to node1 as Linux's vxlan sends it (UDP checksum 0).
fn vxlan_from_node2(inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0]; // I flag, VNI 1
    vx.extend_from_slice(inner);
    let mut out = Vec::with_capacity(vx.len() + 42);
    etherparse::PacketBuilder::ethernet2(MAC_NODE2.0, MAC_UPLINK.0)
        .ipv4(NODE2.octets(), NODE1.octets(), 64)
        .udp(40000, VXLAN_PORT)
        .write(&mut out, &vx)
        .unwrap();
    out[40..42].copy_from_slice(&[0, 0]);
    out
}

/// The SYN-ACK answering the (translated) SYN `out`, from the host that received it.
fn reply_to(out: &[u8]) -> Vec<u8> {
    let mut r = out.to_vec();
    // MACs, IPv4 addresses, TCP ports.
    for (a, b, n) in [(0, 6, 6), (26, 30, 4), (34, 36, 2)] {
        for i in 0..n {
            r.swap(a + i, b + i);
        }
    }
    let old = u16::from_be_bytes([r[TCP_FLAGS_WORD], r[TCP_FLAGS_WORD + 1]]);
    r[TCP_FLAGS_WORD + 1] = SYN | ACK;
    let new = u16::from_be_bytes([r[TCP_FLAGS_WORD], r[TCP_FLAGS_WORD + 1]]);
    let c = u16::from_be_bytes([r[TCP_CSUM], r[TCP_CSUM + 1]]);
    r[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&update16(c, old, new).to_be_bytes());
    r
}

/// Client `k` of the many-flow scenarios: 10.0.0.0/8, a scattered port in 1024..65535.
#[inline]
fn client(k: u64) -> (u32, u16) {
    let ip = 0x0a00_0000 | (k as u32 & 0x00ff_ffff);
    (ip, 1024 + (mix64(k) % 64_512) as u16)
}

/// Rewrites the source address and port of a TCP frame with incremental checksum
/// updates (RFC 1624), as the template's checksums are complete.
#[inline]
fn set_source(f: &mut [u8], ip: u32, port: u16) {
    let old_ip = u32::from_be_bytes([f[IP_SRC], f[IP_SRC + 1], f[IP_SRC + 2], f[IP_SRC + 3]]);
    let old_port = u16::from_be_bytes([f[TCP_SPORT], f[TCP_SPORT + 1]]);
    let ipc = u16::from_be_bytes([f[IP_CSUM], f[IP_CSUM + 1]]);
    let tcpc = u16::from_be_bytes([f[TCP_CSUM], f[TCP_CSUM + 1]]);
    let tcpc = update16(update32(tcpc, old_ip, ip), old_port, port);
    f[IP_CSUM..IP_CSUM + 2].copy_from_slice(&update32(ipc, old_ip, ip).to_be_bytes());
    f[IP_SRC..IP_SRC + 4].copy_from_slice(&ip.to_be_bytes());
    f[TCP_SPORT..TCP_SPORT + 2].copy_from_slice(&port.to_be_bytes());
    f[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&tcpc.to_be_bytes());
}

/// 64 preallocated frame buffers and their verdicts: a worker's batch.
struct Batch {
    mem: Vec<u8>,
    verdicts: [Verdict; BATCH],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            mem: vec![0; BATCH * CHUNK],
            verdicts: [Verdict::Pass; BATCH],
        }
    }

    /// Restores every buffer from `tmpl`, then lets `vary(i, frame)` change frame `i`.
    #[inline]
    fn fill(&mut self, tmpl: &[u8], mut vary: impl FnMut(usize, &mut [u8])) {
        for (i, c) in self.mem.chunks_exact_mut(CHUNK).enumerate() {
            let f = &mut c[HEADROOM..HEADROOM + tmpl.len()];
            f.copy_from_slice(tmpl);
            vary(i, f);
        }
    }

    /// The batch's frames (each `len` bytes after the headroom, all from `ingress`).
    #[inline]
    fn with_frames<R>(
        &mut self,
        len: usize,
        ingress: PortId,
        f: impl FnOnce(&mut [Frame], &mut [Verdict]) -> R,
    ) -> R {
        let mut bufs = self.mem.chunks_exact_mut(CHUNK);
        let mut frames: [Frame; BATCH] = std::array::from_fn(|_| {
            let buf = bufs.next().expect("BATCH chunks");
            Frame::new(buf, HEADROOM, len, ingress)
        });
        f(&mut frames, &mut self.verdicts)
    }

    #[inline]
    fn process(&mut self, p: &mut Pipeline, snap: &Snapshot, now: Nanos, len: usize, ing: PortId) {
        self.with_frames(len, ing, |frames, verdicts| {
            p.process(snap, now, frames, verdicts)
        });
    }

    /// Runs the batch and returns each frame's verdict and bytes (for checks).
    fn process_collect(
        &mut self,
        p: &mut Pipeline,
        snap: &Snapshot,
        now: Nanos,
        len: usize,
        ingress: PortId,
    ) -> Vec<(Verdict, Vec<u8>)> {
        self.with_frames(len, ingress, |frames, verdicts| {
            p.process(snap, now, frames, verdicts);
            frames
                .iter()
                .zip(verdicts.iter())
                .map(|(f, v)| (*v, f.data().to_vec()))
                .collect()
        })
    }
}

/// One frame through the pipeline (priming, outside timing).
fn run_one(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    ing: PortId,
    b: &[u8],
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + CHUNK];
    buf[HEADROOM..HEADROOM + b.len()].copy_from_slice(b);
    let mut frames = [Frame::new(&mut buf, HEADROOM, b.len(), ing)];
    let mut verdicts = [Verdict::Pass];
    p.process(snap, now, &mut frames, &mut verdicts);
    let out = frames[0].data().to_vec();
    (verdicts[0], out)
}

/// Addresses and ports of a TCP frame kxdp produced, after etherparse has verified
/// its IPv4 and TCP checksums.
fn tcp_seen(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("a valid frame");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4");
    };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
    let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
    assert_eq!(t.checksum(), want, "TCP checksum");
    assert_eq!(t.payload(), &PAYLOAD[..], "payload");
    (
        SocketAddrV4::new(h.source.into(), t.source_port()),
        SocketAddrV4::new(h.destination.into(), t.destination_port()),
    )
}

/// The inner frame of a VXLAN frame kxdp sent to node2 (outer headers checked).
fn vxlan_to_node2(frame: &[u8]) -> &[u8] {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("a valid frame");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4");
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "outer checksum"
    );
    assert_eq!((h.source, h.destination), (NODE1.octets(), NODE2.octets()));
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not UDP");
    };
    assert_eq!(u.destination_port(), VXLAN_PORT);
    assert_eq!(&frame[0..6], &MAC_NODE2.0, "outer destination MAC");
    &u.payload()[8..]
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// The pod port of a backend address.
fn port_of(ip: Ipv4Addr) -> PortId {
    match ip {
        _ if ip == A => POD_A,
        _ if ip == B => POD_B,
        _ if ip == C => POD_C,
        _ => panic!("{ip} is no local pod"),
    }
}

/// Opens a TCP flow with a SYN from `ingress` and a SYN-ACK from wherever the SYN
/// went, unless `reply` builds the answer itself. Returns the SYN's verdict and bytes.
fn prime(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    ingress: PortId,
    syn: &[u8],
    reply: Option<Vec<u8>>,
) -> (Verdict, Vec<u8>) {
    let (v, out) = run_one(p, snap, now, ingress, syn);
    let Verdict::Tx { port } = v else {
        panic!("SYN not forwarded: {v:?}");
    };
    let (rv, _) = run_one(p, snap, now, port, &reply.unwrap_or_else(|| reply_to(&out)));
    assert!(
        matches!(rv, Verdict::Tx { .. }),
        "reply not forwarded: {rv:?}"
    );
    (v, out)
}

fn tx_on(port: PortId) -> Box<dyn Fn(Verdict) -> bool> {
    Box::new(move |v| v == Verdict::Tx { port })
}

/// Everything a counter can say went wrong in a timed run.
fn assert_all_sent(p: &Pipeline, what: &str) {
    let c = p.counters();
    assert!(
        c.tx == c.rx && c.dropped() == 0 && c.pass == 0,
        "{what}: not every packet was sent: {c:?}"
    );
}

/// A steady-state scenario: the same template (or a rotation of many flows) again and
/// again, each batch's frames expected to get `want`.
struct Steady<'a> {
    snap: &'a Snapshot,
    pipe: Pipeline,
    tmpl: Vec<u8>,
    ingress: PortId,
    /// Rotate the source over `client(0..flows)` (a power of two); 0: the template as is.
    flows: u64,
    want: Box<dyn Fn(Verdict) -> bool>,
}

impl Steady<'_> {
    fn fill(&self, batch: &mut Batch, n: u64) {
        let flows = self.flows;
        batch.fill(&self.tmpl, |i, f| {
            if flows > 0 {
                // An odd multiplier permutes 0..flows (a power of two): every flow in
                // turn, but not in slab order, so the hardware prefetcher cannot help.
                let j = (n * BATCH as u64 + i as u64).wrapping_mul(0x9e37_79b9) % flows;
                let (ip, port) = client(j);
                set_source(f, ip, port);
            }
        });
    }

    /// Runs one batch and checks every frame with `check`.
    fn check(&mut self, now: Nanos, check: impl Fn(&[u8])) {
        let mut batch = Batch::new();
        self.fill(&mut batch, 0);
        let out = batch.process_collect(
            &mut self.pipe,
            self.snap,
            now,
            self.tmpl.len(),
            self.ingress,
        );
        for (v, bytes) in out {
            assert!((self.want)(v), "unexpected verdict {v:?}");
            check(&bytes);
        }
        assert_all_sent(&self.pipe, "check batch");
    }

    fn bench(mut self, g: &mut BenchmarkGroup<WallTime>, id: &str, mut now: Nanos) {
        let mut batch = Batch::new();
        let mut n = 0u64;
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    self.fill(&mut batch, n);
                    batch.process(
                        &mut self.pipe,
                        self.snap,
                        now,
                        self.tmpl.len(),
                        self.ingress,
                    );
                    now = Nanos(now.0 + BATCH_GAP);
                    n += 1;
                }
                let t = start.elapsed();
                assert!(batch.verdicts.iter().all(|v| (self.want)(*v)), "{id}");
                t
            });
            assert_all_sent(&self.pipe, id);
        });
    }
}

fn established(c: &mut Criterion, snap: &Snapshot) {
    let mut g = group(c, "established");
    let now = Nanos::from_secs(1);

    // External client -> NodePort (eTP Local) on the uplink.
    let mut pipe = pipeline();
    let client_addr = sock(EXTERNAL, 50000);
    let frontend = sock(NODE1, NODE_PORT_LOCAL);
    let syn = tcp_frame((MAC_EXTERNAL, MAC_UPLINK), client_addr, frontend, SYN);
    let (v, out) = prime(&mut pipe, snap, now, UPLINK, &syn, None);
    let backend = tcp_seen(&out).1;
    assert_eq!(
        v,
        Verdict::Tx {
            port: port_of(*backend.ip())
        }
    );
    let mut s = Steady {
        snap,
        pipe,
        tmpl: tcp_frame((MAC_EXTERNAL, MAC_UPLINK), client_addr, frontend, ACK),
        ingress: UPLINK,
        flows: 0,
        want: tx_on(port_of(*backend.ip())),
    };
    s.check(now, |f| {
        assert_eq!(tcp_seen(f), (client_addr, backend));
        assert_eq!(&f[0..6], &pod_mac(*backend.ip()).0);
    });
    s.bench(&mut g, "uplink", now);

    // 65,536 assured flows from clients on the uplink, 64 different ones per batch.
    let mut pipe = pipeline();
    let tmpl = tcp_frame((MAC_EXTERNAL, MAC_UPLINK), client_addr, frontend, ACK);
    for k in 0..MANY_FLOWS {
        let (ip, port) = client(k);
        let mut syn = syn.clone();
        set_source(&mut syn, ip, port);
        prime(&mut pipe, snap, now, UPLINK, &syn, None);
    }
    assert!(MANY_FLOWS.is_power_of_two());
    assert_eq!(pipe.flows().len() as u64, MANY_FLOWS);
    assert!(pipe.flows().iter().all(|f| f.is_assured()));
    let mut s = Steady {
        snap,
        pipe,
        tmpl,
        ingress: UPLINK,
        flows: MANY_FLOWS,
        want: Box::new(|v| matches!(v, Verdict::Tx { port } if port == POD_A || port == POD_B)),
    };
    s.check(now, |f| {
        let (src, dst) = tcp_seen(f);
        assert_eq!(src.ip().octets()[0], 10);
        assert!([A, B].contains(dst.ip()) && dst.port() == BACKEND_PORT);
    });
    s.bench(&mut g, "uplink_64k_flows", now);

    // Pod C -> ClusterIP, partial checksums.
    let mut pipe = pipeline();
    let client_addr = sock(C, 40000);
    let vip = sock(VIP, 80);
    let macs = (pod_mac(C), Mac([0xee, 0xee, 0, 0, 0, 3]));
    let syn = with_partial_checksum(tcp_frame(macs, client_addr, vip, SYN));
    let (v, out) = prime(&mut pipe, snap, now, POD_C, &syn, None);
    let backend = tcp_seen(&out).1;
    assert_eq!(
        v,
        Verdict::Tx {
            port: port_of(*backend.ip())
        }
    );
    let mut s = Steady {
        snap,
        pipe,
        tmpl: with_partial_checksum(tcp_frame(macs, client_addr, vip, ACK)),
        ingress: POD_C,
        flows: 0,
        want: tx_on(port_of(*backend.ip())),
    };
    s.check(now, |f| assert_eq!(tcp_seen(f), (client_addr, backend)));
    s.bench(&mut g, "pod", now);
    g.finish();
}

fn new_flow(c: &mut Criterion, snap: &Snapshot) {
    let mut g = group(c, "new_flow");
    for (id, node_port, masq) in [
        ("nodeport", NODE_PORT_LOCAL, false),
        ("nodeport_masq", NODE_PORT_CLUSTER, true),
    ] {
        let mut pipe = pipeline();
        let mut now = Nanos::from_secs(1);
        let tmpl = tcp_frame(
            (MAC_EXTERNAL, MAC_UPLINK),
            sock(EXTERNAL, 50000),
            sock(NODE1, node_port),
            SYN,
        );
        let mut k = 0u64;
        let mut batch = Batch::new();
        let fill = |batch: &mut Batch, k: &mut u64| {
            batch.fill(&tmpl, |_, f| {
                let (ip, port) = client(*k);
                set_source(f, ip, port);
                *k += 1;
            })
        };
        let want = |v: Verdict| matches!(v, Verdict::Tx { port } if port == POD_A || port == POD_B);

        fill(&mut batch, &mut k);
        for (v, f) in batch.process_collect(&mut pipe, snap, now, tmpl.len(), UPLINK) {
            assert!(want(v), "{id}: {v:?}");
            let (src, dst) = tcp_seen(&f);
            assert_eq!(masq, *src.ip() == SNAT, "{id}: source {src}");
            assert!(
                [A, B].contains(dst.ip()) && (BACKEND_PORT..BACKEND_PORT + 4).contains(&dst.port())
            );
        }
        assert_eq!(pipe.counters().new_flows, BATCH as u64);

        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut start = Instant::now();
                for _ in 0..iters {
                    if pipe.flows().len() + BATCH > NEW_FLOW_WINDOW {
                        timed += start.elapsed();
                        now = Nanos(now.0 + pipe.flows().timeouts().tcp_syn.0 + 1);
                        pipe.housekeeping(now, pipe.flows().capacity());
                        assert!(pipe.flows().is_empty(), "sweep left flows");
                        start = Instant::now();
                    }
                    fill(&mut batch, &mut k);
                    batch.process(&mut pipe, snap, now, tmpl.len(), UPLINK);
                    now = Nanos(now.0 + BATCH_GAP);
                }
                timed += start.elapsed();
                assert!(batch.verdicts.iter().all(|v| want(*v)), "{id}");
                timed
            });
            let c = pipe.counters();
            assert_all_sent(&pipe, id);
            assert_eq!(c.new_flows, c.rx, "{id}: a packet was not a new flow");
            assert_eq!(pipe.flows().evictions() + pipe.flows().insert_full(), 0);
        });
    }
    g.finish();
}

fn vxlan(c: &mut Criterion, snap: &Snapshot) {
    let now = Nanos::from_secs(1);
    let mut g = group(c, "vxlan_encap");
    let macs_a = (pod_mac(A), Mac([0xee, 0xee, 0, 0, 0, 1]));

    // Pod A -> a pod on node2, no Service.
    let src = sock(A, 40000);
    let dst = sock(REMOTE_POD, BACKEND_PORT);
    let mut s = Steady {
        snap,
        pipe: pipeline(),
        tmpl: with_partial_checksum(tcp_frame(macs_a, src, dst, ACK)),
        ingress: POD_A,
        flows: 0,
        want: tx_on(UPLINK),
    };
    s.check(now, |f| assert_eq!(tcp_seen(vxlan_to_node2(f)), (src, dst)));
    s.bench(&mut g, "pod_to_pod", now);

    // Pod A -> ClusterIP whose backend is on node2: DNAT, then encapsulation.
    let mut pipe = pipeline();
    let src = sock(A, 40001);
    let vip = sock(VIP_REMOTE, 80);
    let syn = with_partial_checksum(tcp_frame(macs_a, src, vip, SYN));
    let syn_ack = tcp_frame((VTEP2, VTEP1), dst, src, SYN | ACK);
    let (v, _) = prime(
        &mut pipe,
        snap,
        now,
        POD_A,
        &syn,
        Some(vxlan_from_node2(&syn_ack)),
    );
    assert_eq!(v, Verdict::Tx { port: UPLINK });
    let mut s = Steady {
        snap,
        pipe,
        tmpl: with_partial_checksum(tcp_frame(macs_a, src, vip, ACK)),
        ingress: POD_A,
        flows: 0,
        want: tx_on(UPLINK),
    };
    s.check(now, |f| assert_eq!(tcp_seen(vxlan_to_node2(f)), (src, dst)));
    s.bench(&mut g, "service", now);
    g.finish();

    // A pod on node2 -> pod B.
    let mut g = group(c, "vxlan_decap");
    let src = sock(REMOTE_POD, 40000);
    let dst = sock(B, BACKEND_PORT);
    let mut s = Steady {
        snap,
        pipe: pipeline(),
        tmpl: vxlan_from_node2(&tcp_frame((VTEP2, VTEP1), src, dst, ACK)),
        ingress: UPLINK,
        flows: 0,
        want: tx_on(POD_B),
    };
    s.check(now, |f| {
        assert_eq!(tcp_seen(f), (src, dst));
        assert_eq!(&f[0..6], &pod_mac(B).0);
    });
    s.bench(&mut g, "pod_to_pod", now);
    g.finish();
}

/// The restore of each scenario alone: what to subtract from its figure.
fn copy_only(c: &mut Criterion) {
    let mut g = group(c, "copy_only");
    let tcp = tcp_frame(
        (MAC_EXTERNAL, MAC_UPLINK),
        sock(EXTERNAL, 50000),
        sock(NODE1, 80),
        ACK,
    );
    let vx = vxlan_from_node2(&tcp);
    let mut batch = Batch::new();
    for (id, tmpl, vary) in [
        ("64B", &tcp, false),
        ("64B_new_tuple", &tcp, true),
        ("114B", &vx, false),
    ] {
        let mut k = 0u64;
        g.bench_function(id, |b| {
            b.iter(|| {
                batch.fill(tmpl, |_, f| {
                    if vary {
                        let (ip, port) = client(k);
                        set_source(f, ip, port);
                        k += 1;
                    }
                });
                batch.with_frames(tmpl.len(), UPLINK, |frames, _| {
                    black_box(frames);
                });
            })
        });
    }
    g.finish();
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(BATCH as u64))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g
}

/// `kxdp flows` on a worker holding 65,536 flows: the worker answers between two
/// batches, so this is how long the query holds its traffic up. Listing stops at the
/// client's default limit (1000); every flow is still visited to count matches.
fn inspect(c: &mut Criterion, snap: &Snapshot) {
    let mut g = c.benchmark_group("inspect");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let now = Nanos::from_secs(1);
    let mut pipe = pipeline();
    let syn = tcp_frame(
        (MAC_EXTERNAL, MAC_UPLINK),
        sock(EXTERNAL, 50000),
        sock(NODE1, NODE_PORT_LOCAL),
        SYN,
    );
    for k in 0..MANY_FLOWS {
        let (ip, port) = client(k);
        let mut syn = syn.clone();
        set_source(&mut syn, ip, port);
        prime(&mut pipe, snap, now, UPLINK, &syn, None);
    }
    assert_eq!(pipe.flows().len() as u64, MANY_FLOWS);
    let (reply, _answers) = std::sync::mpsc::sync_channel(1);
    let q = FlowQuery {
        filter: FlowFilter::default(),
        limit: 1000,
        affinity_of: None,
        reply,
    };
    let answer = pipe.inspect(snap, now, &q);
    assert_eq!(
        (answer.matched, answer.flows.len()),
        (MANY_FLOWS as usize, 1000)
    );
    g.bench_function("flows_64k_list_1000", |b| {
        b.iter(|| black_box(pipe.inspect(snap, now, &q)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    inspect(c, &snap);
    established(c, &snap);
    new_flow(c, &snap);
    vxlan(c, &snap);
    copy_only(c);
}

criterion_group! {
    name = pipeline_benches;
    // No plots and fewer bootstrap resamples: the whole run takes about a minute.
    config = Criterion::default().without_plots().nresamples(20_000);
    targets = benches
}
criterion_main!(pipeline_benches);
