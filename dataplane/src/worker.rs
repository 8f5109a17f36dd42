//! A worker: one pinned thread serving one queue of every interface kxdp serves.
//!
//! The loop is the `quinn` to the pipeline's `quinn-proto`: it moves frames between
//! rings and the sans-IO [`Pipeline`], picks up new snapshots between batches, sends
//! the ARP requests the pipeline asks for, and sleeps on its sockets (mio) when idle
//! unless told to busy-poll.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use xsk_rs::FrameDesc;

use crate::arp;
use crate::flow::Nanos;
use crate::frame::{Frame, HEADROOM};
use crate::pipeline::{Config as PipelineConfig, Pipeline};
use crate::ports::PortRole;
use crate::resolve::Via;
use crate::snapshot::Snapshot;
use crate::verdict::{Counters, PortId, Verdict};
use crate::xsk::port::{BindError, BindMode, XskPort};
use crate::xsk::steer::SteerError;
use crate::xsk::umem::{FramePool, UmemError};

/// Tunables of the worker loop (CLI flags).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub queue: u32,
    pub core: Option<usize>,
    pub batch_size: usize,
    pub ring_size: u32,
    pub frames: u32,
    pub bind: BindMode,
    pub busy_poll: bool,
    /// Source address of ARP requests on pod ports (the pods' gateway).
    pub gateway_ip: Ipv4Addr,
}

/// How the worker tells the steering program which ARP replies to hand it.
pub trait ArpSteer: Send {
    fn expect_reply(&self, ip: Ipv4Addr) -> Result<(), SteerError>;
}

/// What a worker shares with the control side.
#[derive(Clone)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Mutex<Counters>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Umem(#[from] UmemError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Steer(#[from] SteerError),
    #[error("poll: {0}")]
    Poll(#[from] std::io::Error),
}

/// Where every frame was when the worker stopped: they must add up to `total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameCount {
    pub total: usize,
    pub free: usize,
    pub in_rings: usize,
}

pub struct Worker {
    cfg: WorkerConfig,
    pool: FramePool,
    ports: Vec<XskPort>,
    pipeline: Pipeline,
    shared: Shared,
    arp: Box<dyn ArpSteer>,
}

impl Worker {
    /// Opens a socket on queue `cfg.queue` of every port; `register` puts each socket
    /// in the steering program's map (port, fd).
    pub fn new(
        cfg: WorkerConfig,
        pipeline_cfg: PipelineConfig,
        shared: Shared,
        arp: Box<dyn ArpSteer>,
        mut register: impl FnMut(PortId, u32, i32) -> Result<(), SteerError>,
    ) -> Result<Worker, WorkerError> {
        let pool = FramePool::new(cfg.frames, cfg.ring_size)?;
        let mut ports = Vec::new();
        for (id, p) in pipeline_cfg.ports.iter() {
            let port = XskPort::open(&pool, id, &p.name, cfg.queue, cfg.ring_size, cfg.bind)?;
            register(id, cfg.queue, port.fd())?;
            ports.push(port);
        }
        Ok(Worker {
            pipeline: Pipeline::new(pipeline_cfg),
            cfg,
            pool,
            ports,
            shared,
            arp,
        })
    }

    /// Runs until the stop flag is set; returns where every frame ended up.
    pub fn run(mut self) -> Result<FrameCount, WorkerError> {
        if let Some(core) = self.cfg.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let mut poll = Poll::new()?;
        for (i, p) in self.ports.iter().enumerate() {
            poll.registry()
                .register(&mut SourceFd(&p.fd()), Token(i), Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(self.ports.len().max(1));
        let batch = self.cfg.batch_size.max(1);
        let mut rx = vec![FrameDesc::default(); batch];
        let mut scratch = vec![FrameDesc::default(); self.cfg.ring_size as usize];
        let mut out: Vec<Vec<FrameDesc>> = vec![Vec::with_capacity(batch * 2); self.ports.len()];
        let start = Instant::now();
        let mut generation = u64::MAX;
        let mut last_publish = Instant::now();
        let per_port_fill = (self.pool.total / (self.ports.len() * 2)).max(1);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let snap = self.shared.snapshot.load_full();
            let now = Nanos(start.elapsed().as_nanos() as u64);
            if snap.generation != generation {
                generation = snap.generation;
                self.pipeline.prefetch_neighbours(&snap, now);
            }
            let mut work = 0;
            for p in self.ports.iter_mut() {
                work += p.reap(&mut self.pool.free, &mut scratch);
                p.refill(&mut self.pool.free, per_port_fill.min(p.ring_size as usize));
            }
            for i in 0..self.ports.len() {
                let n = self.ports[i].receive(&mut rx);
                work += n;
                for desc in rx[..n].iter_mut() {
                    let ingress = self.ports[i].id;
                    let len = desc.lengths().data();
                    let (verdict, fstart, flen) = {
                        // SAFETY: the frame was just received: it is ours and in no
                        // ring; the view ends with this block.
                        let buf = unsafe { self.pool.buffer(desc) };
                        let mut frame = Frame::new(buf, HEADROOM, len, ingress);
                        let v = self.pipeline.handle(&snap, now, &mut frame);
                        (v, frame.start(), frame.len())
                    };
                    match verdict {
                        Verdict::Tx { port } => {
                            self.pool.commit(desc, fstart, flen);
                            out[port.0 as usize].push(*desc);
                        }
                        // Nothing reaches kxdp that the kernel should have: the
                        // steering program keeps it there. Recycle.
                        Verdict::Pass | Verdict::Drop(_) => self.pool.free.push(*desc),
                    }
                }
            }
            self.send_arp_requests(&snap, &mut out);
            for (p, descs) in self.ports.iter_mut().zip(out.iter_mut()) {
                if descs.is_empty() {
                    continue;
                }
                let sent = p.send(descs);
                // A full TX ring drops the rest (counted by the kernel as tx ring full).
                self.pool.free.extend_from_slice(&descs[sent..]);
                descs.clear();
                p.kick();
            }
            self.pipeline.housekeeping(now, 64);
            if last_publish.elapsed() >= Duration::from_millis(100) {
                self.publish();
                last_publish = Instant::now();
            }
            if work == 0 && !self.cfg.busy_poll {
                let waiting_tx = self.ports.iter().any(|p| p.in_tx > 0);
                let timeout = if waiting_tx {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(50)
                };
                poll.poll(&mut events, Some(timeout))?;
            }
        }
        self.publish();
        Ok(self.drain())
    }

    /// Builds the ARP requests the pipeline queued into free frames.
    fn send_arp_requests(&mut self, snap: &Snapshot, out: &mut [Vec<FrameDesc>]) {
        let requests: Vec<_> = self.pipeline.resolve_requests().drain().collect();
        for r in requests {
            if self.arp.expect_reply(r.ip).is_err() {
                continue;
            }
            let cfg = self.pipeline.config();
            let targets: Vec<(PortId, crate::snapshot::Mac, Ipv4Addr)> = cfg
                .ports
                .iter()
                .filter(|(_, p)| match r.via {
                    Via::PodPorts => p.role == PortRole::Pod,
                    Via::Uplink => p.role == PortRole::Uplink,
                })
                .map(|(id, p)| {
                    let sender = match p.role {
                        PortRole::Pod => self.cfg.gateway_ip,
                        PortRole::Uplink => snap.node.vtep_ip,
                    };
                    (id, p.mac, sender)
                })
                .collect();
            for (port, mac, sender) in targets {
                let Some(mut desc) = self.pool.free.pop() else {
                    return;
                };
                // SAFETY: a free frame is ours.
                let buf = unsafe { self.pool.buffer(&mut desc) };
                let n = arp::write_request(&mut buf[HEADROOM..], mac, sender, r.ip);
                self.pool.commit(&mut desc, HEADROOM, n);
                out[port.0 as usize].push(desc);
            }
        }
    }

    fn publish(&self) {
        if let Ok(mut c) = self.shared.counters.lock() {
            *c = self.pipeline.counters().clone();
        }
    }

    /// Waits briefly for in-flight transmissions and counts every frame.
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
            total: self.pool.total,
            free: self.pool.free.len(),
            in_rings: self.ports.iter().map(|p| p.in_fill + p.in_tx).sum(),
        }
    }
}
