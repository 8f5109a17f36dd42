//! A worker: one pinned thread serving one queue of every interface kxdp serves
//! (worker `q` serves queue `q`). An interface with fewer queues than there are
//! workers, such as a pod veth with one, is served by the first workers only; the
//! others hand what they transmit on it to one of those ([`Fleet::transmit`]).
//!
//! The loop is the `quinn` to the pipeline's `quinn-proto`: it moves frames between
//! rings and the sans-IO [`Pipeline`], picks up new snapshots between batches, sends
//! the ARP requests the pipeline asks for, hands frames of flows another worker owns
//! to that worker (all workers share one UMEM; see [`crate::owners`]), and sleeps on
//! its sockets (`poll(2)`, see [`crate::xsk::sleep`]) when idle unless told to
//! busy-poll.

use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use xsk_rs::FrameDesc;

use crate::arp;
use crate::conntrack::Probe;
use crate::flow::Nanos;
use crate::frame::{Frame, HEADROOM};
use crate::held::Held;
use crate::inspect::{FlowQuery, ServiceCounter};
use crate::lookahead::{Lookahead, FLOW_AHEAD, INDEX_AHEAD};
use crate::neighbour::Neighbour;
use crate::pipeline::{Config as PipelineConfig, Pipeline};
use crate::ports::{Port, PortRole};
use crate::resolve::Via;
use crate::snapshot::{Mac, Snapshot};
use crate::verdict::{Counters, DropReason, PortId, Verdict};
use crate::xsk::fill::FillShares;
use crate::xsk::port::{BindError, BindMode, SocketStats, XskPort};
use crate::xsk::sleep::{Sleeper, Wake};
use crate::xsk::steer::{SocketSlots, SteerError};
use crate::xsk::umem::FramePool;

/// How often a worker sweeps expired flows and publishes its counters.
const CHORES_EVERY: Nanos = Nanos(10_000_000);

/// Tunables of the worker loop (CLI flags).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub queue: u32,
    pub core: Option<usize>,
    pub batch_size: usize,
    pub ring_size: u32,
    pub bind: BindMode,
    pub busy_poll: bool,
}

/// How the worker tells the steering program which ARP replies on the uplink to hand
/// it (on pod ports it takes those to kxdp's own address, see `steer.bpf.c`).
pub trait ArpSteer: Send {
    fn expect_reply(&mut self, ip: Ipv4Addr) -> Result<(), SteerError>;
    /// Stops taking replies asked for long enough ago (the kernel's ARP needs them).
    fn expire(&mut self);
}

/// A change to the interfaces the workers serve: pods that come and go.
#[derive(Clone, Debug)]
pub enum PortChange {
    /// Serve `port` in slot `id`, on its first `queues` queues: worker `q` gets the
    /// socket on queue `q` if there is one, and transmits through worker
    /// `q mod queues` otherwise. The control side opens the sockets (opening and
    /// closing one waits on the kernel for milliseconds, which no worker should), and
    /// attaches the steering program only after every worker has taken its own.
    /// `addrs`: the pods the node routes through it, asked for with ARP there only.
    Add {
        id: PortId,
        port: Port,
        queues: u32,
        addrs: Vec<Ipv4Addr>,
    },
    /// Stop serving slot `id`: its interface went away, or is no pod's any more. The
    /// control side has already taken its sockets out of the XSKMAP; each worker
    /// gives its socket back, for the control side to close.
    Remove { id: PortId },
}

/// A [`PortChange`] on its way to one worker, with its socket on the port.
struct PortRequest {
    change: PortChange,
    socket: Option<XskPort>,
    done: SyncSender<PortDone>,
}

/// How a worker made a [`PortChange`], and the socket it gives back (that of a
/// removed port, or the one of an Add it refused).
struct PortDone {
    result: Result<(), String>,
    socket: Option<XskPort>,
}

/// A frame on its way to the worker that owns its flow.
#[derive(Clone, Copy, Debug)]
pub struct Handed {
    pub desc: FrameDesc,
    pub ingress: PortId,
}

/// A finished frame on its way to a worker with a socket on its egress port.
#[derive(Clone, Copy, Debug)]
pub struct Transmit {
    pub desc: FrameDesc,
    pub port: PortId,
}

/// How a worker transmits on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Egress {
    /// On its own socket, `Worker::ports[i]`.
    Own(usize),
    /// Through worker `w`: the port has no queue for this worker.
    Via(usize),
    /// Nowhere: the slot's interface went away.
    Gone,
}

/// What all workers of a node share besides the snapshot: handoff queues (one per
/// worker) and spare frames (so that a worker that receives many handed frames gives
/// the surplus back to one that hands many away).
pub struct Fleet {
    pub handoff: Vec<ArrayQueue<Handed>>,
    /// Frames for each worker to transmit on a port the sender has no socket on.
    pub transmit: Vec<ArrayQueue<Transmit>>,
    pub spare: ArrayQueue<FrameDesc>,
    /// Neighbours one worker learned, for each of the others (a reply to the ARP
    /// request one worker sent may arrive on another's queue).
    pub neighbours: Vec<ArrayQueue<(Ipv4Addr, Neighbour)>>,
    /// Inspection queries for each worker (`kxdp flows`, `kxdp explain`), answered
    /// with the chores between batches; see [`crate::inspect`].
    pub inspect: Vec<ArrayQueue<FlowQuery>>,
    /// Interfaces to start or stop serving, for each worker ([`Fleet::change_ports`]).
    ports: Vec<ArrayQueue<PortRequest>>,
    /// Set by each worker while it sleeps, so that one handing it frames wakes it
    /// ([`Fleet::nudge`]) rather than leaving them until its poll times out.
    sleeping: Vec<AtomicBool>,
    wakers: OnceLock<Vec<Arc<Wake>>>,
}

/// Inspection queries a worker holds at most; more are refused (the admin socket
/// reports the worker as busy).
pub const INSPECT_QUEUE: usize = 8;

impl Fleet {
    pub fn new(workers: usize, frames: usize) -> Fleet {
        Fleet {
            handoff: (0..workers).map(|_| ArrayQueue::new(4096)).collect(),
            transmit: (0..workers).map(|_| ArrayQueue::new(4096)).collect(),
            spare: ArrayQueue::new(frames.max(1)),
            neighbours: (0..workers).map(|_| ArrayQueue::new(1024)).collect(),
            inspect: (0..workers)
                .map(|_| ArrayQueue::new(INSPECT_QUEUE))
                .collect(),
            ports: (0..workers).map(|_| ArrayQueue::new(4)).collect(),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            wakers: OnceLock::new(),
        }
    }

    /// Has every worker make `change` between two batches, worker `w` taking
    /// `sockets[w]`, and waits for them all (at most `timeout`). Returns how it went
    /// and the sockets the workers gave back, for the caller to close. The control
    /// side calls it, one change at a time.
    pub fn change_ports(
        &self,
        change: &PortChange,
        mut sockets: Vec<Option<XskPort>>,
        timeout: Duration,
    ) -> (Result<(), String>, Vec<XskPort>) {
        // The control side is the only producer: with room in every queue now, every
        // worker gets the change, or none does.
        if self.ports.iter().any(|q| q.is_full()) {
            let back = sockets.into_iter().flatten().collect();
            return (Err("workers have port changes pending".into()), back);
        }
        sockets.resize_with(self.ports.len(), || None);
        let (done, results) = sync_channel(self.ports.len());
        for ((w, q), socket) in self.ports.iter().enumerate().zip(sockets) {
            let req = PortRequest {
                change: change.clone(),
                socket,
                done: done.clone(),
            };
            if q.push(req).is_err() {
                unreachable!("checked for room, and nobody else pushes");
            }
            if let Some(wake) = self.wakers.get().and_then(|ws| ws.get(w)) {
                let _ = wake.wake();
            }
        }
        drop(done);
        let deadline = Instant::now() + timeout;
        let (mut errors, mut back) = (Vec::new(), Vec::new());
        for _ in 0..self.ports.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match results.recv_timeout(left) {
                Ok(d) => {
                    back.extend(d.socket);
                    errors.extend(d.result.err());
                }
                Err(_) => {
                    errors.push("a worker did not answer".into());
                    break;
                }
            }
        }
        match errors.is_empty() {
            true => (Ok(()), back),
            false => (Err(errors.join("; ")), back),
        }
    }

    /// Frames taken back from a socket the control side closed: the workers take
    /// them up from the spares ([`balance`]).
    pub fn give_back(&self, frames: Vec<FrameDesc>) {
        for d in frames {
            // The spares hold every frame there is: never full.
            let _ = self.spare.push(d);
        }
    }

    /// The workers' wakers, by worker; set once, before they run.
    pub fn set_wakers(&self, wakers: Vec<Arc<Wake>>) {
        let _ = self.wakers.set(wakers);
    }

    /// Wakes the workers in `mask` (bit `w` for worker `w`) that sleep, after frames
    /// (or neighbours) were queued for them. The fence pairs with the one in
    /// `Worker::sleep` between a worker marking itself asleep and looking at its
    /// queues one last time: either it sees the frames, or this sees it asleep.
    fn nudge(&self, mask: u64) {
        if mask == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        for (w, sleeping) in self.sleeping.iter().enumerate() {
            if mask & (1 << w) != 0 && sleeping.swap(false, Ordering::Relaxed) {
                if let Some(wake) = self.wakers.get().and_then(|ws| ws.get(w)) {
                    let _ = wake.wake();
                }
            }
        }
    }

    /// Whether frames or neighbours wait in worker `w`'s queues.
    fn has_frames_for(&self, w: usize) -> bool {
        !self.handoff[w].is_empty()
            || !self.transmit[w].is_empty()
            || !self.neighbours[w].is_empty()
    }

    /// Frames parked in the fleet's queues (for the frame count at exit).
    pub fn parked(&self) -> usize {
        self.spare.len()
            + self.handoff.iter().map(|q| q.len()).sum::<usize>()
            + self.transmit.iter().map(|q| q.len()).sum::<usize>()
    }
}

/// What a worker reports, published every few milliseconds (never per packet).
#[derive(Clone, Debug, Default)]
pub struct WorkerStatus {
    pub counters: Counters,
    /// Flows in this worker's conntrack table.
    pub flows: u64,
    /// Generation of the snapshot this worker forwards with.
    pub generation: u64,
    /// When it took that snapshot up (between two batches).
    pub switched_at: Option<Instant>,
    /// Per-Service packets and new flows (keyed by `id_hash`, in the order of the
    /// snapshot of `generation`).
    pub services: Vec<ServiceCounter>,
    /// RX batches that brought at least one frame (`counters.rx / rx_batches` is the
    /// mean batch: near 1 means the worker keeps up frame by frame, near
    /// `--batch-size` that it is saturated).
    pub rx_batches: u64,
    /// The kernel's statistics of each of this worker's sockets, in port order:
    /// frames lost before kxdp saw them.
    pub sockets: Vec<SocketStats>,
}

/// What a worker shares with the control side.
#[derive(Clone)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stop: Arc<AtomicBool>,
    pub status: Arc<Mutex<WorkerStatus>>,
    pub fleet: Arc<Fleet>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Steer(#[from] SteerError),
    #[error("poll: {0}")]
    Poll(#[from] std::io::Error),
}

/// Where a worker's frames were when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameCount {
    pub free: usize,
    pub in_rings: usize,
}

pub struct Worker {
    id: usize,
    cfg: WorkerConfig,
    pool: FramePool,
    /// This worker's sockets: one on its queue of every port that has it.
    ports: Vec<XskPort>,
    /// Per port (by [`PortId`]): its socket here, or the worker that transmits on it.
    egress: Vec<Egress>,
    pipeline: Pipeline,
    shared: Shared,
    arp: Box<dyn ArpSteer>,
    /// Per-egress-port TX batches, reused every loop.
    out: Vec<Vec<FrameDesc>>,
    sleeper: Sleeper,
    rx_batches: u64,
    /// Frames each port's fill ring is kept at.
    fill: FillShares,
    /// Per port, reused every loop: frames its kernel side holds, and what to top
    /// its fill ring up to.
    held: Vec<usize>,
    fill_targets: Vec<usize>,
    /// Workers this loop queued frames for (bit per worker), woken if they sleep.
    nudge: u64,
    /// Counted here, not by the pipeline: frames handed to another worker to
    /// transmit, and frames lost to a full queue of another worker.
    handed_tx: u64,
    queue_full: u64,
    /// Frames for interfaces that went away.
    port_gone: u64,
    /// Frames held for their next hop's MAC.
    held_frames: Held,
    /// Pods' addresses and the port the node routes them through (`--pod-routes`):
    /// ARP for them goes there, not out of every pod port.
    arp_hints: std::collections::HashMap<Ipv4Addr, PortId>,
}

impl Worker {
    /// Opens a socket on queue `cfg.queue` of every port served on it (`slots`), over
    /// `pool`'s UMEM; `register` puts each socket in the steering program's map
    /// (port, queue, fd).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: WorkerConfig,
        pool: FramePool,
        pipeline_cfg: PipelineConfig,
        slots: &SocketSlots,
        shared: Shared,
        arp: Box<dyn ArpSteer>,
        mut register: impl FnMut(PortId, u32, i32) -> Result<(), SteerError>,
    ) -> Result<Worker, WorkerError> {
        let mut ports = Vec::new();
        let mut pool = pool;
        let served = |pid: PortId| slots.queues(pid.0 as u32);
        let own = pipeline_cfg
            .ports
            .iter()
            .filter(|&(pid, _)| cfg.queue < served(pid))
            .count();
        let fill = FillShares::new(pool.total, own, cfg.ring_size as usize);
        let mut egress = Vec::with_capacity(pipeline_cfg.ports.len());
        for (pid, p) in pipeline_cfg.ports.iter() {
            if cfg.queue >= served(pid) {
                egress.push(Egress::Via((cfg.queue % served(pid)) as usize));
                continue;
            }
            let mut port = XskPort::open(&pool, pid, &p.name, cfg.queue, cfg.ring_size, cfg.bind)?;
            // Frames to receive into before the steering program sends any: the
            // kernel drops what finds the fill ring empty.
            port.refill(&mut pool.free, fill.share());
            register(pid, cfg.queue, port.fd())?;
            egress.push(Egress::Own(ports.len()));
            ports.push(port);
        }
        let out = vec![Vec::with_capacity(cfg.batch_size.max(1) * 2); egress.len()];
        let sleeper = Sleeper::new(ports.iter().map(|p| p.fd()))?;
        Ok(Worker {
            sleeper,
            rx_batches: 0,
            fill,
            held: vec![0; own],
            fill_targets: vec![0; own],
            nudge: 0,
            handed_tx: 0,
            queue_full: 0,
            port_gone: 0,
            held_frames: Held::default(),
            arp_hints: std::collections::HashMap::new(),
            id,
            pipeline: Pipeline::new(pipeline_cfg),
            cfg,
            pool,
            ports,
            egress,
            shared,
            arp,
            out,
        })
    }

    /// Frames one copy-mode sendto() of this worker transmits at most (its smallest
    /// port's; 32 where the kernel refused to raise it).
    pub fn tx_budget(&self) -> u32 {
        self.ports.iter().map(|p| p.tx_budget).min().unwrap_or(0)
    }

    /// Wakes the worker if it sleeps: the control side calls it after publishing a
    /// snapshot, so an idle worker takes it up now rather than at its poll timeout.
    pub fn waker(&self) -> Arc<Wake> {
        self.sleeper.wake()
    }

    /// Runs until the stop flag is set; returns where its frames ended up.
    pub fn run(mut self) -> Result<FrameCount, WorkerError> {
        if let Some(core) = self.cfg.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let batch = self.cfg.batch_size.max(1);
        let mut rx = vec![FrameDesc::default(); batch];
        let mut scratch = vec![FrameDesc::default(); self.cfg.ring_size as usize];
        let start = Instant::now();
        // Housekeeping and publishing counters run every few milliseconds, not every
        // loop: a busy-polling worker would otherwise spend its time there.
        let mut next_chores = Nanos(0);
        let mut current = self.shared.snapshot.load_full();
        self.take_up(None, &current, Nanos(0));
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Nanos(start.elapsed().as_nanos() as u64);
            // A guard, not a clone: the snapshot's reference count, which every
            // worker shares, is touched only when the snapshot changed.
            if self.shared.snapshot.load().generation != current.generation {
                let prev = std::mem::replace(&mut current, self.shared.snapshot.load_full());
                self.take_up(Some(&prev), &current, now);
            }
            if !self.shared.fleet.ports[self.id].is_empty() {
                self.change_ports();
            }
            let snap = &*current;
            let mut work = 0;
            for (p, held) in self.ports.iter_mut().zip(&mut self.held) {
                work += p.reap(&mut self.pool.free, &mut scratch);
                *held = p.in_fill;
            }
            self.fill.plan(now, &self.held, &mut self.fill_targets);
            for (p, &target) in self.ports.iter_mut().zip(&self.fill_targets) {
                p.refill(&mut self.pool.free, target);
            }
            for i in 0..self.ports.len() {
                let n = self.ports[i].receive(&mut rx);
                if n == 0 {
                    continue;
                }
                work += n;
                self.rx_batches += 1;
                self.fill.received(i, now, n, rx.len());
                // The kernel wrote these frames on another core: start fetching
                // their headers for the whole batch before the first is parsed.
                for desc in &rx[..n] {
                    self.pool.prefetch(desc);
                }
                let ingress = self.ports[i].id;
                // Conntrack lookups prefetched a few frames ahead (crate::lookahead).
                let mut ahead = Lookahead::new();
                for (j, desc) in rx[..n].iter().enumerate().take(INDEX_AHEAD) {
                    // SAFETY: received frames are ours; the view is read and dropped.
                    let bytes = unsafe { self.pool.packet(desc) };
                    ahead.index(&self.pipeline, snap, j, ingress, bytes);
                }
                for j in 0..FLOW_AHEAD.min(n) {
                    ahead.flow(&self.pipeline, j);
                }
                for j in 0..n {
                    if j + INDEX_AHEAD < n {
                        // SAFETY: as above; frame j + INDEX_AHEAD is not handled yet.
                        let bytes = unsafe { self.pool.packet(&rx[j + INDEX_AHEAD]) };
                        ahead.index(&self.pipeline, snap, j + INDEX_AHEAD, ingress, bytes);
                    }
                    if j + FLOW_AHEAD < n {
                        ahead.flow(&self.pipeline, j + FLOW_AHEAD);
                    }
                    self.handle(snap, now, &mut rx[j], ingress, true, ahead.probe(j));
                }
                // A neighbour learned from this port (its ARP reply, its own
                // frames): the frames held for it leave before later ones to it.
                if !self.held_frames.is_empty() && self.pipeline.learned() {
                    self.held_frames
                        .release(&self.pipeline, &self.pool, &mut self.out);
                }
            }
            // Frames other workers handed over: their flows are ours.
            for _ in 0..batch {
                let Some(mut h) = self.shared.fleet.handoff[self.id].pop() else {
                    break;
                };
                work += 1;
                self.handle(snap, now, &mut h.desc, h.ingress, false, None);
            }
            self.share_neighbours(now);
            if !self.held_frames.is_empty() {
                let h = &mut self.held_frames;
                h.release(&self.pipeline, &self.pool, &mut self.out);
                h.expire(&mut self.pipeline, now, &mut self.pool.free);
            }
            self.send_arp_requests(snap);
            // Frames other workers finished for ports they have no socket on; a batch
            // a loop, as for handoffs, so a TX ring takes them with this worker's own.
            for _ in 0..batch {
                let Some(t) = self.shared.fleet.transmit[self.id].pop() else {
                    break;
                };
                work += 1;
                match self.out.get_mut(t.port.0 as usize) {
                    Some(out) => out.push(t.desc),
                    // A port this worker has not been told of yet (or no longer).
                    None => {
                        self.port_gone += 1;
                        self.pool.free.push(t.desc);
                    }
                }
            }
            self.transmit();
            self.shared.fleet.nudge(std::mem::take(&mut self.nudge));
            self.balance_frames();
            if now >= next_chores {
                self.pipeline.housekeeping(now, 1024);
                self.arp.expire();
                self.answer_queries(snap, now);
                self.publish(current.generation);
                next_chores = Nanos(now.0 + CHORES_EVERY.0);
            }
            if work == 0 && !self.cfg.busy_poll {
                self.sleep()?;
            }
        }
        // Frames still held at stop are dropped, and counted so.
        self.held_frames.drop_all(&mut self.pool.free);
        self.publish(current.generation);
        Ok(self.drain())
    }

    /// Switches to `snap` between two batches. A snapshot patched from the previous
    /// one has the same ports at the same places: only the replaced ones are looked
    /// at. (The previous one is not freed here: the control side holds it until
    /// every worker reports the new generation.)
    fn take_up(&mut self, prev: Option<&Snapshot>, snap: &Snapshot, now: Nanos) {
        match prev {
            Some(prev) if prev.shares_frontends(snap) => {
                self.pipeline.follow_patched(snap);
                let replaced = prev
                    .services()
                    .iter()
                    .zip(snap.services())
                    .filter(|(old, new)| !Arc::ptr_eq(old, new))
                    .map(|(_, new)| &**new);
                self.pipeline.prefetch_backends(replaced, now);
            }
            _ => {
                self.pipeline.follow_services(snap);
                self.pipeline.prefetch_neighbours(snap, now);
            }
        }
        if let Ok(mut s) = self.shared.status.lock() {
            s.switched_at = Some(Instant::now());
        }
        self.publish(snap.generation);
    }

    /// One frame through the pipeline and to where its verdict sends it.
    #[inline]
    fn handle(
        &mut self,
        snap: &Snapshot,
        now: Nanos,
        desc: &mut FrameDesc,
        ingress: PortId,
        may_hand_off: bool,
        probe: Option<&Probe>,
    ) {
        let len = desc.lengths().data();
        let (verdict, start, flen) = {
            // SAFETY: the frame is ours (just received or handed over) and in no ring;
            // the view ends with this block.
            let buf = unsafe { self.pool.buffer(desc) };
            let mut frame = Frame::new(buf, HEADROOM, len, ingress);
            let v = self.pipeline.handle_probed(snap, now, &mut frame, probe);
            (v, frame.start(), frame.len())
        };
        match verdict {
            Verdict::Tx { port } => {
                self.pool.commit(desc, start, flen);
                self.out[port.0 as usize].push(*desc);
            }
            // The frame is untouched until the pipeline decides to hand it off, so
            // the owner sees exactly what arrived.
            Verdict::Handoff { worker } if may_hand_off => {
                let handed = Handed {
                    desc: *desc,
                    ingress,
                };
                if self.shared.fleet.handoff[worker as usize]
                    .push(handed)
                    .is_err()
                {
                    self.queue_full += 1;
                    self.pool.free.push(*desc);
                }
                self.nudge |= 1 << worker;
            }
            Verdict::Resolve { ip, via } => {
                self.pool.commit(desc, start, flen);
                if let Some(refused) = self.held_frames.hold(*desc, ip, via, now) {
                    self.pool.free.push(refused);
                }
            }
            // Nothing reaches kxdp that the kernel should have (the steering program
            // keeps it there), and a handed frame is never handed on: recycle.
            Verdict::Handoff { .. } | Verdict::Pass | Verdict::Drop(_) => {
                self.pool.free.push(*desc)
            }
        }
    }

    /// Tells the other workers what this one learned, and learns what they did.
    fn share_neighbours(&mut self, now: Nanos) {
        let queues = &self.shared.fleet.neighbours;
        for (ip, n) in self.pipeline.neighbour_news() {
            for (w, q) in queues.iter().enumerate() {
                if w != self.id {
                    let _ = q.push((ip, n));
                    // Woken to learn it before a frame that needs it wakes it.
                    self.nudge |= 1 << w;
                }
            }
        }
        while let Some((ip, n)) = queues[self.id].pop() {
            self.pipeline.learn_shared(ip, n, now);
        }
    }

    /// Sleeps on the sockets until traffic, a wake-up, or a timeout: 1 ms while
    /// transmissions are in flight (their completions raise no event), else 50 ms.
    fn sleep(&mut self) -> Result<(), WorkerError> {
        let fleet = &self.shared.fleet;
        let sleeping = &fleet.sleeping[self.id];
        sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in Fleet::nudge: frames queued before it are seen
        // here, and a worker queueing after it sees this one asleep.
        fence(Ordering::SeqCst);
        if !fleet.has_frames_for(self.id) {
            let waiting = self.ports.iter().any(|p| p.in_tx > 0);
            let timeout = Duration::from_millis(if waiting { 1 } else { 50 });
            self.sleeper.sleep(timeout)?;
        }
        sleeping.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Puts every port's frames on its TX ring and kicks it, or hands them to the
    /// worker that has a socket on the port.
    fn transmit(&mut self) {
        for (port, descs) in self.out.iter_mut().enumerate() {
            if descs.is_empty() {
                continue;
            }
            match self.egress[port] {
                Egress::Own(i) => {
                    let p = &mut self.ports[i];
                    let sent = p.send(descs);
                    // A full TX ring drops the rest (the kernel counts tx ring full).
                    self.pool.free.extend_from_slice(&descs[sent..]);
                    descs.clear();
                    p.kick();
                }
                Egress::Via(w) => {
                    let port = PortId(port as u16);
                    for desc in descs.drain(..) {
                        if self.shared.fleet.transmit[w]
                            .push(Transmit { desc, port })
                            .is_ok()
                        {
                            self.handed_tx += 1;
                        } else {
                            self.queue_full += 1;
                            self.pool.free.push(desc);
                        }
                    }
                    self.nudge |= 1 << w;
                }
                Egress::Gone => {
                    self.port_gone += descs.len() as u64;
                    self.pool.free.append(descs);
                }
            }
        }
    }

    /// Makes the port changes the control side queued, and says how each went.
    fn change_ports(&mut self) {
        while let Some(req) = self.shared.fleet.ports[self.id].pop() {
            let done = match req.change {
                // Its pod is not asked for here: the steering program is not on the
                // port yet, so the answer would go to the kernel (and hold the next
                // question back for a second). The first frame to it asks.
                PortChange::Add {
                    id,
                    port,
                    queues,
                    addrs,
                } => {
                    let done = self.add_port(id, port, queues, req.socket);
                    if done.result.is_ok() {
                        self.arp_hints.extend(addrs.into_iter().map(|a| (a, id)));
                    }
                    done
                }
                PortChange::Remove { id } => PortDone {
                    result: Ok(()),
                    socket: self.remove_port(id),
                },
            };
            let _ = req.done.try_send(done);
        }
    }

    /// Serves `port` in slot `id` from now on: through `socket`, this worker's on
    /// the port, given frames before the steering program sends any; or through the
    /// worker that has a queue on it. A refused socket is handed back.
    fn add_port(
        &mut self,
        id: PortId,
        port: Port,
        queues: u32,
        socket: Option<XskPort>,
    ) -> PortDone {
        let slot = id.0 as usize;
        let refuse = |e: String, socket| PortDone {
            result: Err(e),
            socket,
        };
        if slot < self.egress.len() && self.egress[slot] != Egress::Gone {
            return refuse(format!("slot {} is taken", id.0), socket);
        }
        if (self.cfg.queue < queues) != socket.is_some() {
            let e = format!("worker {}: a socket for {} queues", self.id, queues);
            return refuse(e, socket);
        }
        if slot >= self.egress.len() {
            self.egress.resize(slot + 1, Egress::Gone);
            let cap = self.cfg.batch_size.max(1) * 2;
            self.out.resize_with(slot + 1, || Vec::with_capacity(cap));
        }
        self.egress[slot] = match socket {
            Some(mut xsk) => {
                self.fill.add_port();
                xsk.refill(&mut self.pool.free, self.fill.share());
                self.ports.push(xsk);
                self.held.push(0);
                self.fill_targets.push(0);
                self.sleeper.set_sockets(self.ports.iter().map(|p| p.fd()));
                Egress::Own(self.ports.len() - 1)
            }
            None => Egress::Via((self.cfg.queue % queues) as usize),
        };
        self.pipeline.set_port(id, Some(port));
        PortDone {
            result: Ok(()),
            socket: None,
        }
    }

    /// Stops serving slot `id`; returns this worker's socket on it, frames and all.
    fn remove_port(&mut self, id: PortId) -> Option<XskPort> {
        let slot = id.0 as usize;
        let egress = *self.egress.get(slot)?;
        self.egress[slot] = Egress::Gone;
        self.arp_hints.retain(|_, p| *p != id);
        self.pipeline.set_port(id, None);
        let Egress::Own(i) = egress else {
            return None;
        };
        let xsk = self.ports.remove(i);
        self.held.remove(i);
        self.fill_targets.remove(i);
        self.fill.remove_port(i);
        for e in &mut self.egress {
            if let Egress::Own(j) = e {
                if *j > i {
                    *j -= 1;
                }
            }
        }
        self.sleeper.set_sockets(self.ports.iter().map(|p| p.fd()));
        Some(xsk)
    }

    /// Keeps this worker's free frames near its share: surplus goes to the fleet's
    /// spares, a shortage is made up from them.
    fn balance_frames(&mut self) {
        // A lone worker has no one to share with, and takes back what the control
        // side returned (the frames of a pod's closed socket).
        if self.shared.fleet.handoff.len() <= 1 {
            while let Some(d) = self.shared.fleet.spare.pop() {
                self.pool.free.push(d);
            }
            return;
        }
        balance(
            &mut self.pool.free,
            self.fill.beyond(&self.held),
            self.pool.total,
            &self.shared.fleet.spare,
        );
    }

    /// Builds the ARP requests the pipeline queued into free frames.
    fn send_arp_requests(&mut self, snap: &Snapshot) {
        if self.pipeline.resolve_requests().is_empty() {
            return;
        }
        let mut requests = [None; crate::resolve::QUEUE];
        for (slot, r) in requests
            .iter_mut()
            .zip(self.pipeline.resolve_requests().drain())
        {
            *slot = Some(r);
        }
        for r in requests.into_iter().map_while(|r| r) {
            if r.via == Via::Uplink && self.arp.expect_reply(r.ip).is_err() {
                continue;
            }
            let ports = self.pipeline.config().ports.iter();
            // A pod the node routes through a port it serves is asked for there.
            let hint = match r.via {
                Via::PodPorts => self.arp_hints.get(&r.ip).copied(),
                Via::Uplink => None,
            };
            let hint = hint.filter(|&h| self.pipeline.config().ports.get(h).is_some());
            for (port, p) in ports.filter(|(id, _)| hint.is_none_or(|h| h == *id)) {
                let sender = match (r.via, p.role) {
                    // An address of kxdp's own (the node's pod-CIDR SNAT address):
                    // the steering program takes the replies to it, and leaves the
                    // kernel the replies to its own requests (from the gateway).
                    (Via::PodPorts, PortRole::Pod) => snap.node.snat_ip,
                    (Via::Uplink, PortRole::Uplink) => snap.node.vtep_ip,
                    _ => continue,
                };
                let mac: Mac = p.mac;
                let Some(mut desc) = self.pool.free.pop() else {
                    return;
                };
                // SAFETY: a free frame is ours.
                let buf = unsafe { self.pool.buffer(&mut desc) };
                let n = arp::write_request(&mut buf[HEADROOM..], mac, sender, r.ip);
                self.pool.commit(&mut desc, HEADROOM, n);
                self.out[port.0 as usize].push(desc);
            }
        }
    }

    fn publish(&self, generation: u64) {
        // Read before taking the lock: a getsockopt per socket, every few ms.
        let sockets: Vec<SocketStats> = self.ports.iter().map(|p| p.stats()).collect();
        if let Ok(mut s) = self.shared.status.lock() {
            s.rx_batches = self.rx_batches;
            s.sockets = sockets;
            s.counters = self.pipeline.counters().clone();
            s.counters.handed_tx = self.handed_tx;
            s.counters.drops[DropReason::WorkerQueueFull as usize] += self.queue_full;
            s.counters.drops[DropReason::PortGone as usize] += self.port_gone;
            let h = &self.held_frames;
            s.counters.tx += h.sent;
            s.counters.held_for_neighbour = h.held;
            s.counters.drops[DropReason::NeighbourUnknown as usize] += h.dropped;
            s.flows = self.pipeline.flows().len() as u64;
            s.generation = generation;
            s.services.clear();
            s.services
                .extend_from_slice(self.pipeline.service_counters());
        }
    }

    /// Answers the inspection queries queued for this worker. A query whose asker
    /// gave up (timed out) finds its channel closed: the answer is dropped.
    fn answer_queries(&mut self, snap: &Snapshot, now: Nanos) {
        while let Some(q) = self.shared.fleet.inspect[self.id].pop() {
            let _ = q.reply.try_send(self.pipeline.inspect(snap, now, &q));
        }
    }

    /// Waits briefly for in-flight transmissions and counts the frames.
    fn drain(mut self) -> FrameCount {
        let mut scratch = vec![FrameDesc::default(); self.cfg.ring_size as usize];
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.ports.iter().any(|p| p.in_tx > 0) && Instant::now() < deadline {
            for p in self.ports.iter_mut() {
                p.kick();
                p.reap(&mut self.pool.free, &mut scratch);
            }
        }
        FrameCount {
            free: self.pool.free.len(),
            in_rings: self.ports.iter().map(|p| p.in_fill + p.in_tx).sum(),
        }
    }
}

/// Keeps a worker's free frames between a quarter and three quarters of its `share`:
/// the surplus goes to the fleet's `spare` frames, a shortage is made up from them.
/// `beyond`, the frames its fill rings hold beyond their even shares ([`FillShares`]),
/// counts as free: the rings of busy ports grow out of the worker's own frames, not
/// out of what it would otherwise give back.
///
/// A worker parks half of its share in its fill rings, so one whose frames come and
/// go evenly stays inside the band. Handoffs move frames for good: the worker that
/// hands a frame over gets it back only through this. The upper bound must be one a
/// worker can reach while the other starves: at twice the share (the whole UMEM of
/// two workers) it never was, so the worker handing frames away ran out, its fill
/// rings emptied, and the kernel dropped everything on its queues; and a receiving
/// worker whose rings had grown would likewise have kept a quarter more.
///
/// Frames move in bulk, down or up to half the share, and only when outside ¼..¾:
/// a free list hovering at a bound would otherwise pass a few frames through the
/// shared queue on every loop.
fn balance(free: &mut Vec<FrameDesc>, beyond: usize, share: usize, spare: &ArrayQueue<FrameDesc>) {
    let (low, high, middle) = (share / 4, share - share / 4, share / 2);
    let held = |free: &Vec<FrameDesc>| free.len() + beyond;
    if held(free) > high {
        while held(free) > middle {
            let Some(d) = free.pop() else { break };
            if let Err(d) = spare.push(d) {
                free.push(d);
                break;
            }
        }
    }
    if held(free) < low {
        while held(free) < middle {
            let Some(d) = spare.pop() else { break };
            free.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers of `share` frames each, half of them in fill rings; every step
    /// one frame is received by the first worker and handed to the second, which
    /// transmits it (the frame completes into the second worker's free list).
    #[test]
    fn a_worker_handing_frames_away_gets_them_back_through_the_spares() {
        let share = 16384;
        let spare = ArrayQueue::new(2 * share);
        let mut giver = vec![FrameDesc::default(); share / 2];
        let mut taker = vec![FrameDesc::default(); share / 2];
        for step in 0..10 * share {
            let frame = giver.pop().unwrap_or_else(|| {
                panic!("the handing worker ran out of frames after {step} handoffs")
            });
            taker.push(frame);
            balance(&mut taker, 0, share, &spare);
            balance(&mut giver, 0, share, &spare);
        }
        assert!(giver.len() >= share / 4, "{}", giver.len());
        assert!(taker.len() <= share - share / 4, "{}", taker.len());
        assert_eq!(
            giver.len() + taker.len() + spare.len(),
            share,
            "frames conserved"
        );
    }

    /// As above, with the receiving worker's fill rings grown by a quarter of its
    /// share beyond the even shares: it gives back as much, so the handing worker
    /// keeps what it had.
    #[test]
    fn a_worker_whose_rings_grew_gives_back_as_many_more_frames() {
        let share = 16384;
        let beyond = share / 4;
        let spare = ArrayQueue::new(2 * share);
        let mut giver = vec![FrameDesc::default(); share / 2];
        let mut taker = vec![FrameDesc::default(); share / 2 - beyond];
        for step in 0..10 * share {
            let frame = giver.pop().unwrap_or_else(|| {
                panic!("the handing worker ran out of frames after {step} handoffs")
            });
            taker.push(frame);
            balance(&mut taker, beyond, share, &spare);
            balance(&mut giver, 0, share, &spare);
            assert!(
                taker.len() + beyond <= share - share / 4,
                "the taker holds {} free and {beyond} in grown rings",
                taker.len()
            );
        }
        assert!(giver.len() >= share / 4, "{}", giver.len());
    }
}
