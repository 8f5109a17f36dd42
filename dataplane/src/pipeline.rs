//! The sans-IO packet pipeline: frames, a snapshot and `now` in; verdicts out.
//!
//! ```text
//! parse ─► uplink: VXLAN to our VTEP? ─► decap ─┐
//!          uplink: Service frontend? ───────────┤
//!          pod: anything ───────────────────────┤
//!                                               ▼
//!   tracked flow, either direction? ─► NAT / reverse NAT ─────────┐
//!   frontend? ─► pick backend, insert flow, DNAT (+SNAT) ─────────┤  (affinity ─►
//!   ICMP error quoting a tracked flow? ─► translate inside and out ┤   Maglev, or
//!                                                                  ▼   reject / drop)
//!   route: local pod ─► L2 rewrite ─► Tx(pod port)
//!          remote pod CIDR ─► MTU check (frag-needed) ─► VXLAN encap ─► Tx(uplink)
//!          outside ─► back where the flow came from, or Pass to the kernel
//! ```
//!
//! The pipeline owns this worker's flow state (conntrack, session affinity, neighbours)
//! and counters; it never touches a socket or a clock. Nothing on the per-packet
//! path allocates after [`Pipeline::new`]; re-keying the per-Service counters to a
//! new snapshot and answering an inspection do, once, between batches.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::affinity::AffinityTable;
use crate::arp;
use crate::conntrack::{Dir, FlowId, FlowState, FlowTable, InsertError, Probe, TcpFlags, Timeouts};
use crate::flow::{mix64, FiveTuple, Nanos, Proto};
use crate::frame::Frame;
use crate::icmp::{self, Quote};
use crate::inspect::{FlowAnswer, FlowQuery, FlowRecord, ServiceCounter};
use crate::lookahead::{Lookahead, FLOW_AHEAD, INDEX_AHEAD};
use crate::memo::NeighbourMemo;
use crate::nat::{self, L4Csum};
use crate::neighbour::{Neighbour, NeighbourTable};
use crate::owners::{FlowOwners, WorkerId};
use crate::packet::{self, Headers, ETH_LEN, L4, L4_AT};
use crate::pick::{self, Pick};
use crate::ports::{Port, PortRole, Ports};
use crate::resolve::{ResolveQueue, Via};
use crate::snapshot::{Frontend, Mac, Route, ServiceKey, Snapshot};
use crate::verdict::{Counters, DropReason, PortId, Verdict};
use crate::vxlan::{self, Encap};

/// Tunables of one pipeline (one worker). Defaults are the CLI's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub ports: Ports,
    /// UDP port of VXLAN (flannel and Linux use 8472, IANA 4789).
    pub vxlan_port: u16,
    pub conntrack_size: usize,
    pub timeouts: Timeouts,
    pub affinity_size: usize,
    pub neighbour_size: usize,
    /// Set when several workers share the node's flows (see [`crate::owners`]).
    pub ownership: Option<Ownership>,
}

/// This pipeline's worker and the table all workers record flow ownership in.
#[derive(Clone)]
pub struct Ownership {
    pub worker: WorkerId,
    pub owners: Arc<FlowOwners>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ownership {{ worker: {} }}", self.worker)
    }
}

pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_CONNTRACK_SIZE: usize = 262_144;
pub const DEFAULT_AFFINITY_SIZE: usize = 65_536;
pub const DEFAULT_NEIGHBOUR_SIZE: usize = 4_096;

impl Config {
    pub fn new(ports: Ports) -> Config {
        Config {
            ports,
            vxlan_port: DEFAULT_VXLAN_PORT,
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            timeouts: Timeouts::default(),
            affinity_size: DEFAULT_AFFINITY_SIZE,
            neighbour_size: DEFAULT_NEIGHBOUR_SIZE,
            ownership: None,
        }
    }
}

/// [`FlowData::service`] of a flow whose Service port is gone: no counter's index.
pub const NO_SERVICE: u32 = u32::MAX;

/// What the pipeline keeps per flow beside the conntrack tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowData {
    /// Snapshot generation the backend was last checked against, truncated to 32
    /// bits (only compared for equality: a flow would have to sit idle through 2^32
    /// snapshots to miss a check). Keeps [`crate::conntrack::Flow`] at 56 bytes.
    pub generation: u32,
    /// The flow's Service port as a `ServiceId` of the current snapshot as of the
    /// backend check above, or [`NO_SERVICE`] once its Service port is gone: the slot
    /// of the per-Service counters its packets bump. Re-resolved with that check,
    /// once per flow per snapshot, so a snapshot swap costs no per-packet lookup (see
    /// [`Pipeline::follow_services`]).
    pub service: u32,
    /// Where the first packet came from: replies to a client outside every pod CIDR
    /// (a NodePort client on the underlay) go back to that port and MAC.
    pub origin: Neighbour,
}

const _: () = assert!(std::mem::size_of::<crate::conntrack::Flow<FlowData>>() <= 56);

/// Neighbour news kept between two drains.
const NEWS: usize = 32;

/// How many source ports to try before giving up on masquerading a new flow.
const SNAT_TRIES: u64 = 16;
/// Lowest source port handed out when the client's own port is taken.
const SNAT_PORT_MIN: u16 = 1024;

/// Facts about how a frame arrived that later steps need.
#[derive(Clone, Copy)]
struct Ingress {
    /// How to keep L4 checksums right (pods may send partial ones).
    l4: L4Csum,
    /// Decapsulated from VXLAN: never encapsulate it again.
    overlay: bool,
    /// The port and MAC the frame came from.
    origin: Neighbour,
    /// The packet as it arrived, kept when it might not fit the underlay, so a
    /// fragmentation-needed error can quote what the sender sent (before NAT).
    quote: Option<Quote>,
}

/// Whether a frame is being forwarded or was built here (no TTL, checksums complete).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hop {
    Forwarded,
    Originated,
}

pub struct Pipeline {
    cfg: Config,
    flows: FlowTable<FlowData>,
    affinity: AffinityTable,
    neighbours: NeighbourTable,
    resolve: ResolveQueue,
    /// Neighbours this pipeline learned that are news, for the worker to tell the
    /// other workers (their queues see other frames); bounded, extra news is dropped
    /// and learned again from later frames.
    news: [Option<(Ipv4Addr, Neighbour)>; NEWS],
    news_len: usize,
    /// Neighbour answers the current batch already has (crate::memo).
    memo: NeighbourMemo,
    counters: Counters,
    /// Per-Service counters indexed by `ServiceId` of the snapshot of
    /// `services_generation` (see [`Pipeline::follow_services`]).
    services: Vec<ServiceCounter>,
    services_generation: u64,
    ip_ident: u16,
    /// The time of the frame being handled (handed in by the caller).
    now: Nanos,
    /// The conntrack probe made ahead for the frame being handled (see
    /// [`Pipeline::handle_probed`]), so its lookup need not hash the tuple again;
    /// used only for the tuple it was made for.
    probe: Option<Probe>,
}

impl Pipeline {
    pub fn new(cfg: Config) -> Pipeline {
        Pipeline {
            flows: FlowTable::new(cfg.conntrack_size, cfg.timeouts),
            affinity: AffinityTable::new(cfg.affinity_size),
            neighbours: NeighbourTable::new(cfg.neighbour_size),
            resolve: ResolveQueue::default(),
            news: [None; NEWS],
            news_len: 0,
            memo: NeighbourMemo::default(),
            now: Nanos(0),
            probe: None,
            counters: Counters::default(),
            services: Vec::new(),
            services_generation: u64::MAX,
            ip_ident: 0,
            cfg,
        }
    }

    /// Runs a batch: `verdicts[i]` is the fate of `frames[i]`, whose start and length
    /// may have moved (encapsulation, decapsulation, replies built in place).
    ///
    /// The same as [`Pipeline::handle`] on each frame in turn, with the conntrack
    /// lookups of later frames prefetched while earlier ones are handled (see
    /// [`crate::lookahead`]): verdicts, bytes and counters do not differ.
    pub fn process(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
    ) {
        let n = frames.len().min(verdicts.len());
        let (frames, verdicts) = (&mut frames[..n], &mut verdicts[..n]);
        let mut ahead = Lookahead::new();
        for (j, f) in frames.iter().enumerate().take(INDEX_AHEAD) {
            ahead.index(self, snap, j, f.ingress, f.data());
        }
        for j in 0..FLOW_AHEAD.min(n) {
            ahead.flow(self, j);
        }
        for i in 0..n {
            if let Some(f) = frames.get(i + INDEX_AHEAD) {
                ahead.index(self, snap, i + INDEX_AHEAD, f.ingress, f.data());
            }
            if i + FLOW_AHEAD < n {
                ahead.flow(self, i + FLOW_AHEAD);
            }
            verdicts[i] = self.handle_probed(snap, now, &mut frames[i], ahead.probe(i));
        }
    }

    /// The key the conntrack lookup of a frame from `ingress` will use, read at fixed
    /// offsets before the frame is parsed ([`packet::peek_tuple`]): the 5-tuple of a
    /// TCP or UDP frame, or on the uplink of the frame inside VXLAN to this node's
    /// VTEP. `None` for anything else (ARP, ICMP, malformed or truncated bytes, an
    /// unknown port). For prefetching: a frame that [`Pipeline::handle`] drops or
    /// passes may still have a key.
    #[inline(always)]
    pub fn conntrack_key(
        &self,
        snap: &Snapshot,
        ingress: PortId,
        frame: &[u8],
    ) -> Option<FiveTuple> {
        let port = self.cfg.ports.get(ingress)?;
        let t = packet::peek_tuple(frame)?;
        // What `decide` decapsulates.
        let ours = port.role == PortRole::Uplink
            && t.proto == Proto::Udp
            && t.dport == self.cfg.vxlan_port
            && t.dst == snap.node.vtep_ip;
        if ours {
            return packet::peek_tuple(frame.get(vxlan::OVERHEAD..)?);
        }
        Some(t)
    }

    /// Starts loading the conntrack index slot that handling this frame (from
    /// `ingress`) will read first, and returns the probe for
    /// [`crate::conntrack::FlowTable::prefetch_flow`] (via [`Pipeline::flows`]) a few
    /// frames later and [`Pipeline::handle_probed`]. `None`, having loaded nothing,
    /// when the frame has no [`Pipeline::conntrack_key`]. A hint: it changes no state
    /// and no counter, and never panics. [`Lookahead`] runs it over a stream.
    #[inline]
    pub fn prefetch(&self, snap: &Snapshot, ingress: PortId, frame: &[u8]) -> Option<Probe> {
        let t = self.conntrack_key(snap, ingress, frame)?;
        Some(self.flows.prefetch(&t))
    }

    /// [`Pipeline::handle`] with the frame's probe from this pipeline's
    /// [`Pipeline::prefetch`] (or [`Lookahead`]): the conntrack lookup takes the
    /// tuple's hash from the probe instead of computing it again. A probe of another
    /// tuple is ignored; the verdict, bytes and counters are those of
    /// [`Pipeline::handle`].
    #[inline]
    pub fn handle_probed(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        probe: Option<&Probe>,
    ) -> Verdict {
        self.probe = probe.copied();
        let v = self.handle(snap, now, f);
        self.probe = None;
        v
    }

    /// Expires up to `budget` idle flows; workers call it between batches.
    pub fn housekeeping(&mut self, now: Nanos, budget: usize) -> usize {
        self.flows.expire(now, budget)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Per-Service counters, indexed by the `ServiceId`s of the last snapshot seen.
    pub fn service_counters(&self) -> &[ServiceCounter] {
        &self.services
    }

    /// Re-keys the per-Service counters to `snap`'s `ServiceId`s, carrying each
    /// Service port's counts over by its stable `id_hash` (ports that are gone are
    /// forgotten). Workers call it when they pick up a new snapshot, between batches;
    /// [`Pipeline::handle`] calls it too if a caller did not, so counting is always
    /// indexed right. O(Services), allocates: never per packet.
    ///
    /// Why this shape: a packet bumps `services[flow.service]`, one indexed add on a
    /// line the flow's lookup already made hot, with no hash lookup. Flows made under
    /// an older snapshot carry an older `ServiceId`; they are re-resolved by the
    /// per-flow, once-per-generation backend check the pipeline already does
    /// ([`Pipeline::tracked`]), which looks the Service up anyway.
    pub fn follow_services(&mut self, snap: &Snapshot) {
        if self.services_generation == snap.generation {
            return;
        }
        let old: rustc_hash::FxHashMap<u64, ServiceCounter> =
            self.services.drain(..).map(|c| (c.id_hash, c)).collect();
        self.services
            .extend(snap.services().iter().map(|s| ServiceCounter {
                id_hash: s.id_hash,
                ..old.get(&s.id_hash).copied().unwrap_or_default()
            }));
        self.services_generation = snap.generation;
    }

    /// [`Pipeline::follow_services`] for a snapshot patched from the one followed
    /// last ([`Snapshot::with_ports`]): its Service ports are at the same indices, so
    /// the counters stay as they are (a 10,000-Service re-keying is milliseconds).
    pub fn follow_patched(&mut self, snap: &Snapshot) {
        self.services_generation = snap.generation;
    }

    #[inline]
    fn count_service(&mut self, service: u32, new_flow: bool) {
        if let Some(c) = self.services.get_mut(service as usize) {
            c.packets += 1;
            c.new_flows += new_flow as u64;
        }
    }

    /// Answers an inspection query (see [`crate::inspect`]) from this pipeline's
    /// flows and affinity pins. Off the fast path: workers call it between batches.
    pub fn inspect(&self, snap: &Snapshot, now: Nanos, q: &FlowQuery) -> FlowAnswer {
        let mut answer = FlowAnswer::default();
        let filter = &q.filter;
        for f in self.flows.iter().filter(|f| !f.is_expired(now)) {
            if !filter.matches_tuples(f.orig(), f.reply()) {
                continue;
            }
            // The name costs a frontend lookup: only when filtered on or listed (a
            // full table is 262,144 flows per worker by default).
            let listed = answer.flows.len() < q.limit;
            let service = (filter.service.is_some() || listed)
                .then(|| snap.frontend(&service_key(f.orig())))
                .flatten()
                .map(|fe| snap.service(fe.service).spec.name.as_str());
            if !filter.matches_service(service) {
                continue;
            }
            answer.matched += 1;
            if listed {
                answer.flows.push(FlowRecord {
                    orig: *f.orig(),
                    reply: *f.reply(),
                    state: f.state(),
                    assured: f.is_assured(),
                    expires_in: Nanos(f.expires().0.saturating_sub(now.0)),
                    service: service.map(str::to_owned),
                });
            }
        }
        answer.pinned = q
            .affinity_of
            .and_then(|(client, svc)| self.affinity.get(client, svc, now));
        answer
    }

    pub fn flows(&self) -> &FlowTable<FlowData> {
        &self.flows
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Puts `port` in slot `id`, or vacates it when its interface went away: its
    /// neighbours go with it, so nothing is routed to the slot until a pod there is
    /// learned again. Between batches only.
    pub fn set_port(&mut self, id: PortId, port: Option<Port>) {
        self.neighbours.forget_port(id);
        self.memo.forget();
        self.resolve.forget_asked();
        self.cfg.ports.set(id, port);
    }

    /// A neighbour another worker learned. Ignored when its port is vacant here:
    /// the news crossed the port's removal, and an entry on a vacant port would keep
    /// the address from being asked for again when its pod comes back elsewhere.
    pub fn learn_shared(&mut self, ip: Ipv4Addr, n: Neighbour, now: Nanos) {
        if self.cfg.ports.get(n.port).is_some() && self.neighbours.learn(ip, n, now) {
            self.memo.forget();
        }
    }

    /// Static neighbours (configuration) and inspection.
    pub fn neighbours_mut(&mut self) -> &mut NeighbourTable {
        self.memo.forget();
        &mut self.neighbours
    }

    fn learn(&mut self, ip: Ipv4Addr, n: Neighbour, now: Nanos) {
        // Only news changes an answer (a refresh moves a timestamp; an eviction
        // happens only to make room for a new entry, which is news).
        if !self.neighbours.learn(ip, n, now) {
            return;
        }
        self.memo.forget();
        if self.news_len < NEWS {
            self.news[self.news_len] = Some((ip, n));
            self.news_len += 1;
        }
    }

    /// Neighbours learned since the last call that were news.
    pub fn neighbour_news(&mut self) -> impl Iterator<Item = (Ipv4Addr, Neighbour)> + '_ {
        let n = std::mem::take(&mut self.news_len);
        self.news[..n].iter_mut().filter_map(Option::take)
    }

    /// Next hops to ARP for, queued by the frames that needed them.
    pub fn resolve_requests(&mut self) -> &mut ResolveQueue {
        &mut self.resolve
    }

    /// Asks for every next hop `snap` will need that is not known yet (local
    /// endpoints, remote VTEPs), so that the first packets of a flow are not the ones
    /// that wait for ARP. Workers call it when they pick up a new snapshot.
    pub fn prefetch_neighbours(&mut self, snap: &Snapshot, now: Nanos) {
        self.prefetch_backends(snap.services().iter().map(|s| &**s), now);
        for n in snap.remotes() {
            if self.neighbours.get(n.vtep_ip).is_none() {
                self.resolve.want(n.vtep_ip, Via::Uplink, now);
            }
        }
    }

    /// The local backends of these Service ports, resolved ahead (the ports a
    /// patched snapshot replaced).
    pub fn prefetch_backends<'a>(
        &mut self,
        ports: impl Iterator<Item = &'a crate::snapshot::ServicePort>,
        now: Nanos,
    ) {
        for svc in ports {
            for b in svc.backends.iter().filter(|b| b.is_local) {
                let ip = *b.addr.ip();
                if self.neighbours.get(ip).is_none() {
                    self.resolve.want(ip, Via::PodPorts, now);
                }
            }
        }
    }

    /// One frame through the pipeline, counted. [`Pipeline::process`] is this over a
    /// batch (with lookups prefetched ahead); workers that walk their RX ring call it
    /// directly, or [`Pipeline::handle_probed`] with a [`Lookahead`].
    #[inline]
    pub fn handle(&mut self, snap: &Snapshot, now: Nanos, f: &mut Frame) -> Verdict {
        self.now = now;
        if self.services_generation != snap.generation {
            self.follow_services(snap);
        }
        let v = self.decide(snap, now, f);
        self.counters.rx += 1;
        self.counters.count(v);
        v
    }

    fn decide(&mut self, snap: &Snapshot, now: Nanos, f: &mut Frame) -> Verdict {
        let Some(port) = self.cfg.ports.get(f.ingress) else {
            return Verdict::Pass;
        };
        let role = port.role;
        let l4 = if port.partial_checksums {
            L4Csum::Later
        } else {
            L4Csum::Incremental
        };
        let h = match packet::parse(f.data()) {
            Ok(Some(h)) => h,
            Ok(None) => {
                self.learn_from_arp(snap, f, role, now);
                return Verdict::Pass;
            }
            Err(r) => return Verdict::Drop(r),
        };
        f.set_len(ETH_LEN + h.ip_len); // cut Ethernet padding
        let ing = Ingress {
            l4,
            overlay: false,
            origin: Neighbour {
                port: f.ingress,
                mac: src_mac(f.data()),
            },
            quote: self.quote_if_big(f.data(), &h),
        };
        match role {
            PortRole::Uplink => {
                if let L4::Udp { dport, .. } = h.l4 {
                    if dport == self.cfg.vxlan_port && h.dst == snap.node.vtep_ip {
                        return self.decap(snap, now, f, &h, l4);
                    }
                }
                // From the underlay kxdp serves Service frontends and ICMP errors
                // about its flows (a router's fragmentation-needed about a NodePort
                // reply); the rest (the host's own traffic) is the kernel's.
                match (h.tuple(), h.l4) {
                    (Some(t), _) => match snap.frontend(&service_key(&t)) {
                        Some(fe) => self
                            .existing(snap, now, f, &h, t, ing)
                            .unwrap_or_else(|| self.new_flow(snap, now, f, &h, t, fe, ing)),
                        None => Verdict::Pass,
                    },
                    (None, L4::Icmp { ty, .. }) if icmp::is_error(ty) => self
                        .icmp_error(snap, now, f, &h, ing)
                        .unwrap_or(Verdict::Pass),
                    _ => Verdict::Pass,
                }
            }
            PortRole::Pod => {
                self.learn_sender(snap, h.src, ing.origin, now, role);
                self.forward(snap, now, f, &h, ing)
            }
        }
    }

    /// A frame tells where its sender is. Learned once per sender per batch (the
    /// batch's frames share `now`), and again whenever the neighbour table changed in
    /// between (crate::memo).
    fn learn_sender(
        &mut self,
        snap: &Snapshot,
        ip: Ipv4Addr,
        n: Neighbour,
        now: Nanos,
        role: PortRole,
    ) {
        if self.memo.learned(now, snap.generation, ip, n) {
            return;
        }
        if worth_learning(snap, ip, role) {
            self.learn(ip, n, now);
        }
        self.memo.set_learned(now, snap.generation, ip, n);
    }

    /// ARP tells where its sender is: a pod behind a pod port, a host on the uplink.
    fn learn_from_arp(&mut self, snap: &Snapshot, f: &Frame, role: PortRole, now: Nanos) {
        let Some((ip, mac)) = arp::sender(f.data()) else {
            return;
        };
        if worth_learning(snap, ip, role) {
            let port = f.ingress;
            self.learn(ip, Neighbour { port, mac }, now);
            self.counters.arp_learned += 1;
        }
    }

    fn quote_if_big(&self, frame: &[u8], h: &Headers) -> Option<Quote> {
        let mtu = self.uplink_mtu()?;
        (h.ip_len + vxlan::OVERHEAD > mtu as usize && h.ip_len >= icmp::QUOTE_LEN)
            .then(|| Quote::of(&frame[ETH_LEN..]))
    }

    fn uplink_mtu(&self) -> Option<u16> {
        self.cfg.ports.get(self.cfg.ports.uplink()?).map(|p| p.mtu)
    }

    fn decap(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        outer: &Headers,
        l4: L4Csum,
    ) -> Verdict {
        let inner_len = match vxlan::inner_len(f.data(), outer, snap.node.vni.get()) {
            Ok(n) => n,
            Err(r) => return Verdict::Drop(r),
        };
        if snap.vtep(outer.src).is_none() {
            return Verdict::Drop(DropReason::VxlanUnknownSource);
        }
        let origin = Neighbour {
            port: f.ingress,
            mac: src_mac(f.data()),
        };
        // The VTEP's underlay MAC is where encapsulated replies go.
        self.learn_sender(snap, outer.src, origin, now, PortRole::Uplink);
        f.pull_front(vxlan::OVERHEAD);
        f.set_len(inner_len);
        self.counters.decapsulated += 1;
        let h = match packet::parse(f.data()) {
            Ok(Some(h)) => h,
            // Flannel's VXLAN carries IPv4 only (its ARP entries are static).
            Ok(None) => return Verdict::Drop(DropReason::BadIpHeader),
            Err(r) => return Verdict::Drop(r),
        };
        f.set_len(ETH_LEN + h.ip_len);
        // The inner frame's checksums are as trustworthy as the port it came in on.
        let ing = Ingress {
            l4,
            overlay: true,
            origin,
            quote: None,
        };
        self.forward(snap, now, f, &h, ing)
    }

    /// Tracked flows (either direction), then new flows to Service frontends, then
    /// plain routing. Conntrack comes first because most packets belong to a flow it
    /// holds, and its lookup was prefetched ([`crate::lookahead`]); the frontend map,
    /// large on a big cluster, is read only for a flow's first packet.
    fn forward(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        h: &Headers,
        ing: Ingress,
    ) -> Verdict {
        if let Some(t) = h.tuple() {
            if let Some(v) = self.existing(snap, now, f, h, t, ing) {
                return v;
            }
            if let Some(fe) = snap.frontend(&service_key(&t)) {
                return self.new_flow(snap, now, f, h, t, fe, ing);
            }
        } else if let L4::Icmp { ty, .. } = h.l4 {
            if icmp::is_error(ty) {
                if let Some(v) = self.icmp_error(snap, now, f, h, ing) {
                    return v;
                }
            }
        }
        self.route(snap, f, h, h.dst, ing, None, Hop::Forwarded)
    }

    /// Conntrack lookup that also re-checks the flow against each new snapshot
    /// ([`pick::recheck`]). A flow that moves off its backend is forgotten at its next
    /// packet from the client, whose next packet then picks a new backend. A reply
    /// from the old backend before that is still translated: forgetting the flow on
    /// it would send the client a packet from the backend's own address, which its
    /// socket does not know.
    fn tracked(&mut self, snap: &Snapshot, now: Nanos, t: &FiveTuple) -> Option<(FlowId, Dir)> {
        let (id, dir) = match self.probe {
            Some(p) if p.key() == t => self.flows.lookup_probed(&p, now)?,
            _ => self.flows.lookup(t, now)?,
        };
        let flow = self.flows.get(id);
        if flow.data.generation != snap.generation as u32 {
            let backend = SocketAddrV4::new(flow.reply().src, flow.reply().sport);
            let r = pick::recheck(snap, flow.orig(), backend, flow.state());
            if !r.keeps && dir == Dir::Original {
                self.flows.remove(id);
                return None;
            }
            let data = &mut self.flows.get_mut(id).data;
            data.service = r.frontend.map_or(NO_SERVICE, |fe| fe.service.0);
            if r.keeps {
                data.generation = snap.generation as u32;
            }
        }
        Some((id, dir))
    }

    /// The verdict of a frame whose flow exists: translated here when this worker
    /// tracks it, else handed to the worker that does. `None` for a flow nobody
    /// tracks, and for a fresh SYN on the tuple of a closed flow: a new connection
    /// (port reuse), whose old flow is forgotten.
    fn existing(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        h: &Headers,
        t: FiveTuple,
        ing: Ingress,
    ) -> Option<Verdict> {
        if let Some((id, dir)) = self.tracked(snap, now, &t) {
            let reuse = dir == Dir::Original
                && tcp_flags(h).is_some_and(|fl| fl.syn && !fl.ack)
                && self.flows.get(id).state() == FlowState::TcpClosed;
            if !reuse {
                return Some(self.translate(snap, now, f, h, t, id, dir, ing));
            }
            self.flows.remove(id);
        }
        let worker = self.owned_elsewhere(&t)?;
        Some(Verdict::Handoff { worker })
    }

    /// The first frame of a flow to frontend `fe`: pick a backend, track the flow.
    #[allow(clippy::too_many_arguments)]
    fn new_flow(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        h: &Headers,
        t: FiveTuple,
        fe: Frontend,
        ing: Ingress,
    ) -> Verdict {
        let tcp = tcp_flags(h);
        let svc = snap.service(fe.service);
        let affinity = &self.affinity;
        let picked = pick::pick(svc, fe.kind, &t, || affinity.get(t.src, svc.id_hash, now));
        let backend = match picked {
            Pick::Backend { backend, .. } => backend.addr,
            Pick::Reject => {
                self.count_service(fe.service.0, false);
                // No endpoint at all: refuse, as kube-proxy's REJECT rule does.
                self.counters.rejected += 1;
                let quote = Quote::of(&f.data()[ETH_LEN..]);
                return self.emit_error(snap, f, t.dst, icmp::CODE_PORT_UNREACHABLE, 0, quote, ing);
            }
            Pick::NoLocalEndpoints => {
                self.count_service(fe.service.0, false);
                return Verdict::Drop(DropReason::NoLocalEndpoints);
            }
        };
        let (reply_dst, reply_dport) = if pick::masquerades(snap, svc, fe.kind, &t, backend) {
            match self.snat_port(snap, now, backend, &t) {
                Some(p) => (snap.node.snat_ip, p),
                None => return Verdict::Drop(DropReason::SnatPortsExhausted),
            }
        } else {
            (t.src, t.sport)
        };
        let reply = FiveTuple {
            src: *backend.ip(),
            dst: reply_dst,
            sport: backend.port(),
            dport: reply_dport,
            proto: t.proto,
        };
        let data = FlowData {
            generation: snap.generation as u32,
            service: fe.service.0,
            origin: ing.origin,
        };
        match self.flows.insert(t, reply, tcp, data, now) {
            Ok(_) => {
                self.counters.new_flows += 1;
                self.count_service(fe.service.0, true);
                if let Some(o) = &self.cfg.ownership {
                    o.owners.claim(&t, o.worker);
                    o.owners.claim(&reply, o.worker);
                }
            }
            Err(InsertError::Full) => return Verdict::Drop(DropReason::ConntrackFull),
            Err(InsertError::Exists) => return Verdict::Drop(DropReason::FlowClash),
        }
        if let Some(timeout) = svc.spec.affinity_timeout {
            self.affinity
                .set(t.src, svc.id_hash, backend, now.saturating_add(timeout));
        }
        let to = reply.reversed();
        nat::rewrite(&mut f.data_mut()[ETH_LEN..], &t, &to, ing.l4);
        self.route(snap, f, h, to.dst, ing, None, Hop::Forwarded)
    }

    /// Another worker owns the flow carrying `t` (this one does not track it).
    #[inline]
    fn owned_elsewhere(&self, t: &FiveTuple) -> Option<WorkerId> {
        let o = self.cfg.ownership.as_ref()?;
        o.owners.owner(t).filter(|&w| w != o.worker)
    }

    /// A source port on the node's SNAT address that no live flow uses towards this
    /// backend: the client's own port if free, else pseudo-random ones.
    fn snat_port(
        &self,
        snap: &Snapshot,
        now: Nanos,
        backend: SocketAddrV4,
        t: &FiveTuple,
    ) -> Option<u16> {
        let mut candidate = t.sport;
        for i in 0..SNAT_TRIES {
            let r = FiveTuple {
                src: *backend.ip(),
                dst: snap.node.snat_ip,
                sport: backend.port(),
                dport: candidate,
                proto: t.proto,
            };
            if !self.flows.contains(&r, now) {
                return Some(candidate);
            }
            let span = (u16::MAX - SNAT_PORT_MIN) as u64 + 1;
            candidate = SNAT_PORT_MIN + (mix64(t.hash() ^ (i + 1)) % span) as u16;
        }
        None
    }

    /// A packet of a tracked flow: rewrite it to the other side's view.
    #[allow(clippy::too_many_arguments)]
    fn translate(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        h: &Headers,
        t: FiveTuple,
        id: FlowId,
        dir: Dir,
        ing: Ingress,
    ) -> Verdict {
        self.flows.observe(id, dir, tcp_flags(h), now);
        let flow = self.flows.get(id);
        let service = flow.data.service;
        let (to, origin) = match dir {
            Dir::Original => (flow.reply().reversed(), None),
            Dir::Reply => (flow.orig().reversed(), Some(flow.data.origin)),
        };
        self.count_service(service, false);
        nat::rewrite(&mut f.data_mut()[ETH_LEN..], &t, &to, ing.l4);
        self.route(snap, f, h, to.dst, ing, origin, Hop::Forwarded)
    }

    /// An ICMP error quoting a packet of a tracked flow: translate the quoted packet
    /// and the outer addresses as the flow's packets are translated (RFC 5508 s. 5).
    fn icmp_error(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        f: &mut Frame,
        h: &Headers,
        ing: Ingress,
    ) -> Option<Verdict> {
        let end = ETH_LEN + h.ip_len;
        let quoted = icmp::quoted_tuple(&f.data()[L4_AT..end])?;
        // The quoted packet went the other way: its reverse is this error's direction.
        let Some((id, dir)) = self.tracked(snap, now, &quoted.reversed()) else {
            return self
                .owned_elsewhere(&quoted.reversed())
                .map(|worker| Verdict::Handoff { worker });
        };
        let flow = self.flows.get(id);
        let (mine, other, origin) = match dir {
            Dir::Reply => (*flow.reply(), *flow.orig(), Some(flow.data.origin)),
            Dir::Original => (*flow.orig(), *flow.reply(), None),
        };
        let new_dst = other.src;
        // Only the flow's own endpoint is renamed; a router on the path keeps its address.
        let new_src = if h.src == mine.src { other.dst } else { h.src };
        let data = f.data_mut();
        icmp::translate_quoted(&mut data[L4_AT..end], &mine.reversed(), &other);
        nat::set_addrs(&mut data[ETH_LEN..], new_src, new_dst);
        let ing = Ingress {
            l4: L4Csum::Incremental, // ICMP checksums are computed by the sender's CPU
            ..ing
        };
        Some(self.route(snap, f, h, new_dst, ing, origin, Hop::Forwarded))
    }

    /// Replaces the frame with an ICMP destination-unreachable error about `quote`,
    /// sent from `from`, and routes it back to the quoted packet's sender.
    #[allow(clippy::too_many_arguments)]
    fn emit_error(
        &mut self,
        snap: &Snapshot,
        f: &mut Frame,
        from: Ipv4Addr,
        code: u8,
        mtu: u16,
        quote: Quote,
        ing: Ingress,
    ) -> Verdict {
        if f.capacity() < icmp::ERROR_FRAME_LEN {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        f.set_len(icmp::ERROR_FRAME_LEN);
        let ident = self.next_ident();
        icmp::build_error(
            f.data_mut(),
            from,
            icmp::DEST_UNREACHABLE,
            code,
            mtu,
            &quote,
            ident,
        );
        let h = match packet::parse(f.data()) {
            Ok(Some(h)) => h,
            _ => return Verdict::Drop(DropReason::BadIpHeader), // unreachable: built above
        };
        let to = quote.src();
        self.route(snap, f, &h, to, ing, Some(ing.origin), Hop::Originated)
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Sends the (translated) packet towards `dst`.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        snap: &Snapshot,
        f: &mut Frame,
        h: &Headers,
        dst: Ipv4Addr,
        ing: Ingress,
        origin: Option<Neighbour>,
        hop: Hop,
    ) -> Verdict {
        let (now, generation) = (self.now, snap.generation);
        if let Some(n) = self.memo.local(now, generation, dst) {
            return self.deliver(f, h, ing, hop, n);
        }
        match snap.route(dst) {
            Route::LocalPod => match self.neighbours.get(dst) {
                Some(n) => {
                    self.memo.set_local(now, generation, dst, n);
                    self.deliver(f, h, ing, hop, n)
                }
                None => self.await_neighbour(f, h, ing, hop, dst, Via::PodPorts),
            },
            Route::Remote(node) => {
                if ing.overlay && hop == Hop::Forwarded {
                    return Verdict::Drop(DropReason::OverlayLoop);
                }
                let Some(uplink) = self.cfg.ports.uplink() else {
                    return Verdict::Pass;
                };
                let mtu = self.cfg.ports.get(uplink).map_or(1500, |p| p.mtu) as usize;
                if f.len() - ETH_LEN + vxlan::OVERHEAD > mtu {
                    return match (h.dont_frag, ing.quote) {
                        (true, Some(q)) => {
                            self.counters.frag_needed += 1;
                            let room = (mtu - vxlan::OVERHEAD) as u16;
                            self.emit_error(
                                snap,
                                f,
                                snap.node.vtep_ip,
                                icmp::CODE_FRAG_NEEDED,
                                room,
                                q,
                                ing,
                            )
                        }
                        _ => Verdict::Drop(DropReason::TooBig),
                    };
                }
                let Some(next_hop) = self.neighbours.get(node.vtep_ip) else {
                    return self.unresolved(node.vtep_ip, Via::Uplink);
                };
                if let Some(drop) = self.finish(f, h, ing, hop) {
                    return drop;
                }
                let hash = flow_hash(f.data(), h);
                let e = Encap {
                    outer_src_mac: self.port_mac(uplink),
                    outer_dst_mac: next_hop.mac,
                    src_ip: snap.node.vtep_ip,
                    dst_ip: node.vtep_ip,
                    udp_sport: vxlan::source_port(hash),
                    udp_dport: self.cfg.vxlan_port,
                    vni: node.vni.get(),
                    inner_src_mac: snap.node.vtep_mac,
                    inner_dst_mac: node.vtep_mac,
                    ip_ident: self.next_ident(),
                };
                if !vxlan::encapsulate(f, &e) {
                    return Verdict::Drop(DropReason::NoHeadroom);
                }
                self.counters.encapsulated += 1;
                Verdict::Tx { port: uplink }
            }
            Route::Outside => match origin {
                Some(n) => self.deliver(f, h, ing, hop, n),
                // Not ours to route (the node itself, the internet): the kernel's.
                None if hop == Hop::Forwarded && dst == h.dst => Verdict::Pass,
                None => match self.neighbours.get(dst) {
                    Some(n) => self.deliver(f, h, ing, hop, n),
                    None => self.await_neighbour(f, h, ing, hop, dst, Via::Uplink),
                },
            },
        }
    }

    /// A VTEP's MAC is unknown: drop this frame and ask the worker to ARP (VTEPs
    /// are asked for when a snapshot names them, so this is rare).
    fn unresolved(&mut self, ip: Ipv4Addr, via: Via) -> Verdict {
        self.resolve.want(ip, via, self.now);
        Verdict::Drop(DropReason::NeighbourUnknown)
    }

    /// The next hop's MAC is unknown: finish the frame but for its Ethernet
    /// addresses, ask the worker to ARP, and have it hold the frame meanwhile
    /// ([`Verdict::Resolve`], [`Pipeline::resolved`]).
    fn await_neighbour(
        &mut self,
        f: &mut Frame,
        h: &Headers,
        ing: Ingress,
        hop: Hop,
        ip: Ipv4Addr,
        via: Via,
    ) -> Verdict {
        if let Some(drop) = self.finish(f, h, ing, hop) {
            return drop;
        }
        self.resolve.want(ip, via, self.now);
        Verdict::Resolve { ip, via }
    }

    /// Where a frame held for `ip` goes now, if `ip` has been learned: its port,
    /// and the destination and source MACs to write.
    pub fn resolved(&self, ip: Ipv4Addr) -> Option<(PortId, Mac, Mac)> {
        let n = self.neighbours.get(ip)?;
        let port = self.cfg.ports.get(n.port)?;
        Some((n.port, n.mac, port.mac))
    }

    /// Whether a neighbour was learned since the worker last shared the news.
    pub fn learned(&self) -> bool {
        self.news_len > 0
    }

    /// Last touches of a forwarded packet: TTL, and full L4 checksums where the
    /// sender's may be partial.
    fn finish(&mut self, f: &mut Frame, h: &Headers, ing: Ingress, hop: Hop) -> Option<Verdict> {
        if hop == Hop::Originated {
            return None;
        }
        let data = f.data_mut();
        if !nat::decrement_ttl(&mut data[ETH_LEN..]) {
            return Some(Verdict::Drop(DropReason::TtlExpired));
        }
        if ing.l4 == L4Csum::Later {
            match h.l4 {
                L4::Tcp { .. } => {
                    nat::complete_l4_checksum(data, crate::flow::Proto::Tcp, h.l4_len())
                }
                L4::Udp { len, .. } => {
                    nat::complete_l4_checksum(data, crate::flow::Proto::Udp, len as usize)
                }
                _ => {}
            }
        }
        None
    }

    fn deliver(
        &mut self,
        f: &mut Frame,
        h: &Headers,
        ing: Ingress,
        hop: Hop,
        n: Neighbour,
    ) -> Verdict {
        if let Some(drop) = self.finish(f, h, ing, hop) {
            return drop;
        }
        let src = self.port_mac(n.port);
        let data = f.data_mut();
        data[0..6].copy_from_slice(&n.mac.0);
        data[6..12].copy_from_slice(&src.0);
        Verdict::Tx { port: n.port }
    }

    fn port_mac(&self, p: PortId) -> Mac {
        self.cfg.ports.get(p).map(|p| p.mac).unwrap_or_default()
    }
}

/// Senders worth a neighbour entry: a local pod behind a pod port (not a pod
/// elsewhere that a misrouted frame claims), anything on the uplink (VTEPs, hosts).
#[inline]
fn worth_learning(snap: &Snapshot, ip: Ipv4Addr, role: PortRole) -> bool {
    match role {
        PortRole::Pod => snap.route(ip) == Route::LocalPod,
        PortRole::Uplink => true,
    }
}

#[inline]
fn service_key(t: &FiveTuple) -> ServiceKey {
    ServiceKey {
        ip: t.dst,
        port: t.dport,
        proto: t.proto,
    }
}

#[inline]
fn src_mac(frame: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[6..12]);
    Mac(m)
}

#[inline]
fn tcp_flags(h: &Headers) -> Option<TcpFlags> {
    match h.l4 {
        L4::Tcp { flags, .. } => Some(TcpFlags::from_byte(flags)),
        _ => None,
    }
}

/// The inner flow's hash for the outer UDP source port, read from the final bytes.
fn flow_hash(frame: &[u8], h: &Headers) -> u64 {
    let ip = &frame[ETH_LEN..];
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]) as u64;
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]) as u64;
    let ports = match h.l4 {
        L4::Tcp { .. } | L4::Udp { .. } => u32::from_be_bytes([
            frame[L4_AT],
            frame[L4_AT + 1],
            frame[L4_AT + 2],
            frame[L4_AT + 3],
        ]) as u64,
        _ => 0,
    };
    mix64((src << 32 | dst) ^ mix64(ports << 8 | h.proto as u64))
}
