//! `kxdp run`: checks the node, attaches the steering program, starts one pinned
//! worker per queue, serves the endpoints, and on SIGINT/SIGTERM stops the workers
//! and detaches everything it attached.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use kxdp_dataplane::owners::FlowOwners;
use kxdp_dataplane::packet::ETH_LEN;
use kxdp_dataplane::pipeline::Ownership;
use kxdp_dataplane::ports::{Port, PortRole, Ports};
use kxdp_dataplane::snapshot::{Mac, Snapshot};
use kxdp_dataplane::worker::{Fleet, Shared, Worker, WorkerConfig, WorkerStatus};
use kxdp_dataplane::xsk::port::BindMode;
use kxdp_dataplane::xsk::steer::{
    self, Role, SocketSlots, Steering, XdpMode, MAX_QUEUES, MAX_SOCKETS,
};
use kxdp_dataplane::xsk::umem::{FramePool, FrameSize};

use crate::admin;
use crate::cli::{BindArg, FrameSizeArg, RunArgs, XdpModeArg};
use crate::endpoints::{self, State, SyncState};
use crate::metrics::{self, DataplaneMetrics, SyncMetrics};
use crate::pods::{Dataplane, PodPorts, Sockets};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

/// Builds the snapshot of a given generation from the objects source (which keeps
/// what it can of the previous one).
pub type Loader = dyn Fn(u64) -> Result<Arc<Snapshot>>;

/// A number that moves when the objects may have changed: the objects file's
/// modification time, the API source's event count. Read before loading, so that a
/// change during a load shows as a move afterwards.
pub type Changes = dyn Fn() -> u64;

/// Where [`run`] gets its snapshots: the objects file or the API server.
pub struct Source<'a> {
    pub load: &'a Loader,
    pub changes: &'a Changes,
    /// Returns when `changes` may have moved from the value given, or after the
    /// duration: a source that can say when it changes wakes the loop at once.
    pub wait: &'a dyn Fn(u64, Duration),
    /// True while the source cannot reach the objects and the last known ones serve
    /// (the API watches failing). A file source never is: a file that does not load
    /// shows as a change not applied.
    pub failing: &'a dyn Fn() -> bool,
}

/// How often the run loop looks for changes when its source cannot wake it (a `stat`
/// of the objects file), and for its other duties; the API source wakes it at once.
const TICK: Duration = Duration::from_millis(10);

/// The most `--max-pods`: slots are `PortId`s, and each costs a little in every
/// worker.
const MAX_PODS: u32 = 4096;

/// How often it looks at the workers' generations while a published snapshot has not
/// reached them all, and for how long at most: workers report a new generation as
/// soon as they load it, and an idle worker loads it within its 50 ms poll timeout.
const CONVERGE_TICK: Duration = Duration::from_millis(1);
const CONVERGE_FAST_FOR: Duration = Duration::from_secs(1);

/// Snapshots published and not yet used by every worker, whose network programming
/// latency is still to be recorded. Bounded: when workers stop following, the oldest
/// are given up (health reports the lag).
const CONVERGING_MAX: usize = 64;

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// [`Changes`] of an objects file: its modification time (0 while it cannot be read).
pub fn file_changes(path: PathBuf) -> impl Fn() -> u64 {
    move || {
        modified(&path)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

fn sysfs(iface: &str, file: &str) -> Result<String> {
    let path = format!("/sys/class/net/{iface}/{file}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}"))?
        .trim()
        .to_string())
}

/// The interface's RX queue count, from sysfs.
fn rx_queues(iface: &str) -> Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {dir}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n as u32)
}

fn frame_size(a: &RunArgs) -> FrameSize {
    match a.frame_size {
        FrameSizeArg::Half => FrameSize::Half,
        FrameSizeArg::Page => FrameSize::Page,
    }
}

/// What kxdp needs to know of an interface it serves, checked: the port, and how
/// many of its queues are served (`--queues`, or fewer on a pod veth that has fewer;
/// its frames then all go to the first workers).
fn port_facts(a: &RunArgs, name: &str, role: PortRole) -> Result<(Port, u32)> {
    steer::ifindex(name).map_err(|_| anyhow::anyhow!("interface {name} does not exist"))?;
    let have = rx_queues(name)?;
    if a.queues > have && role == PortRole::Uplink {
        bail!(
            "the uplink {name} has no queue {}: it has {have}; see --queues",
            a.queues - 1
        );
    }
    if have > a.queues {
        tracing::warn!(
            "interface {name} has {have} queues and kxdp serves {}: what arrives on \
             the others goes to the kernel, which does not translate Service traffic \
             (raise --queues, or steer traffic to the served queues)",
            a.queues
        );
    }
    let mac: Mac = sysfs(name, "address")?
        .parse()
        .map_err(|e| anyhow::anyhow!("interface {name}: {e}"))?;
    let mtu: u16 = sysfs(name, "mtu")?.parse().context("mtu")?;
    let longest = mtu as usize + ETH_LEN;
    let size = frame_size(a);
    let holds = size.max_packet();
    if longest > holds {
        let largest = FrameSize::Page.max_packet();
        bail!(
            "interface {name} has MTU {mtu}: its {longest}-byte frames do not fit \
             --frame-size {} (at most {holds} bytes); {}",
            size.bytes(),
            if longest <= largest {
                "use --frame-size 4096".to_owned()
            } else {
                format!(
                    "kxdp holds at most {largest}-byte frames (MTU {}): jumbo frames \
                     are not supported yet",
                    largest - ETH_LEN
                )
            }
        );
    }
    // A physical NIC has a device link in sysfs; veths and other virtual links
    // do not, and carry partial checksums across.
    let virtual_link = !std::path::Path::new(&format!("/sys/class/net/{name}/device")).exists();
    let port = Port {
        name: name.to_owned(),
        role,
        mac,
        mtu,
        partial_checksums: role == PortRole::Pod || virtual_link,
    };
    Ok((port, a.queues.min(have).max(1)))
}

/// Everything that can be checked before attaching anything: the ports, and the
/// sockets' slots (each port's served queues, then room for `--pod-routes` pods).
fn preflight(a: &RunArgs) -> Result<(Vec<Port>, SocketSlots)> {
    // SAFETY: plain libc getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kxdp run needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK) to attach XDP and open AF_XDP sockets");
    }
    if a.pod_routes && !(1..=MAX_PODS).contains(&a.max_pods) {
        bail!("--max-pods {} is out of range 1..={MAX_PODS}", a.max_pods);
    }
    if a.queues == 0 || a.queues > MAX_QUEUES.min(256) {
        bail!("--queues {} is out of range 1..={MAX_QUEUES}", a.queues);
    }
    if !a.ring_size.is_power_of_two() {
        bail!("--ring-size {} is not a power of two", a.ring_size);
    }
    if !a.cores.is_empty() && a.cores.len() < a.queues as usize {
        bail!(
            "--cores names {} cores for {} queues: give one per queue",
            a.cores.len(),
            a.queues
        );
    }
    let mut ports = Vec::new();
    let mut queues = Vec::new();
    let all = std::iter::once((&a.uplink, PortRole::Uplink))
        .chain(a.pod_ifaces.iter().map(|p| (p, PortRole::Pod)));
    for (name, role) in all {
        let (port, served) = port_facts(a, name, role)?;
        ports.push(port);
        queues.push(served);
    }
    if a.pod_routes {
        // Slots for the pods that come later, on as many queues as a pod may have.
        queues.extend((0..a.max_pods).map(|_| a.queues));
    }
    // UMEM pages count against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK
    // (root does): lift the limit where allowed, and say so where not.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "memlock limit kept ({}); relying on CAP_IPC_LOCK for the UMEM",
            std::io::Error::last_os_error()
        );
    }
    let slots = SocketSlots::new(queues).ok_or_else(|| {
        anyhow::anyhow!(
            "{} interfaces{} on up to {} queues are more than the {MAX_SOCKETS} AF_XDP \
             sockets kxdp serves",
            ports.len(),
            match a.pod_routes {
                true => format!(" and {} --max-pods", a.max_pods),
                false => String::new(),
            },
            a.queues
        )
    })?;
    Ok((ports, slots))
}

/// Runs until SIGINT/SIGTERM. The source's `load` rebuilds the snapshot when
/// `changes` moves (at most once per `--min-sync-period`, so a burst of changes is one
/// rebuild) or on SIGHUP; objects that do not load keep the last good snapshot.
pub fn run(a: RunArgs, source: &Source) -> Result<()> {
    let (ports, slots) = preflight(&a)?;
    let listeners = [
        endpoints::listen(a.metrics_bind_address)?,
        endpoints::listen(a.healthz_bind_address)?,
    ];
    let sync_metrics = SyncMetrics::default();
    let mut seen = (source.changes)();
    let started = Instant::now();
    let snap = (source.load)(1)?;
    let built = started.elapsed();
    let mode = match a.xdp_mode {
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Skb => XdpMode::Skb,
    };
    let bind = match a.bind {
        BindArg::Copy => BindMode::Copy,
        BindArg::ZeroCopy => BindMode::ZeroCopy,
        BindArg::Auto => BindMode::Auto,
    };
    let vtep: Ipv4Addr = snap.node.vtep_ip;
    // kxdp's ARP requests to pods come from the node's pod-CIDR SNAT address.
    let mut pod_arp_ip = snap.node.snat_ip;
    let vxlan_port = a.pipeline.vxlan_port;
    let mut steering = Steering::load(&slots)?;
    for (i, p) in ports.iter().enumerate() {
        let role = match p.role {
            PortRole::Uplink => Role::Uplink,
            PortRole::Pod => Role::Pod,
        };
        steering.attach(
            &p.name,
            role,
            mode,
            &slots,
            i as u32,
            slots.queues(i as u32),
        )?;
    }
    let started = Instant::now();
    steering.sync(&snap, &[a.gateway_ip])?;
    let shared_snapshot = Arc::new(ArcSwap::new(snap));
    // The first sync too (as kube-proxy's); attaching the program is not part of it.
    sync_metrics
        .sync_duration
        .observe((built + started.elapsed()).as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let static_ports = ports.len();
    let pipeline_cfg = a.pipeline.config(Ports::new(ports));
    // One UMEM for all workers, so a reply that lands on another worker's queue can
    // be handed to the worker that owns its flow (see dataplane::owners).
    let total_frames = a.frames.saturating_mul(a.queues);
    let pools = FramePool::new(total_frames, frame_size(&a), a.ring_size)?.split(a.queues as usize);
    let pod_sockets = Sockets {
        umem: pools[0].umem.clone(),
        chunk_shift: pools[0].chunk_shift,
        ring_size: a.ring_size,
        bind,
    };
    let fleet = Arc::new(Fleet::new(a.queues as usize, total_frames as usize));
    let owners = (a.queues > 1).then(|| {
        Arc::new(FlowOwners::new(
            a.pipeline.conntrack_size * a.queues as usize * 2,
        ))
    });
    let mut workers = Vec::new();
    let mut statuses = Vec::new();
    for (q, pool) in (0..a.queues).zip(pools) {
        let cfg = WorkerConfig {
            queue: q,
            core: a.cores.get(q as usize).copied(),
            batch_size: a.batch_size,
            ring_size: a.ring_size,
            bind,
            busy_poll: a.busy_poll,
        };
        let status = Arc::new(Mutex::new(WorkerStatus::default()));
        statuses.push(status.clone());
        let shared = Shared {
            snapshot: shared_snapshot.clone(),
            stop: stop.clone(),
            status,
            fleet: fleet.clone(),
        };
        let mut pcfg = pipeline_cfg.clone();
        pcfg.ownership = owners.as_ref().map(|o| Ownership {
            worker: q as u8,
            owners: o.clone(),
        });
        let arp = Box::new(steering.arp_pending()?);
        let w = Worker::new(
            q as usize,
            cfg,
            pool,
            pcfg,
            &slots,
            shared,
            arp,
            |port, queue, fd| steering.register_socket(slots.key(port.0 as u32, queue), fd),
        )?;
        workers.push(w);
    }
    steering.set_enabled(true, vtep, vxlan_port, pod_arp_ip)?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let generation_published = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let state = Arc::new(State {
        registry: metrics::registry(
            DataplaneMetrics {
                workers: statuses.clone(),
                generation: generation_published.clone(),
                snapshot: Some(shared_snapshot.clone()),
            },
            &sync_metrics,
        ),
        workers: statuses.clone(),
        generation: generation_published.clone(),
        sync: Mutex::new(SyncState::published_now()),
    });
    let wakers: Vec<_> = workers.iter().map(|w| w.waker()).collect();
    fleet.set_wakers(wakers.clone());
    // Removed when `run` returns, however it returns.
    let _admin = admin::serve(
        &a.admin_socket,
        admin::Daemon {
            snapshot: shared_snapshot.clone(),
            workers: statuses.clone(),
            fleet: fleet.clone(),
        },
    )?;
    let mut pods = a.pod_routes.then(|| {
        let except = std::iter::once(&a.uplink)
            .chain(&a.pod_ifaces)
            .cloned()
            .collect();
        PodPorts::new(static_ports as u16, a.max_pods, except)
    });
    let pod_facts = |name: &str| port_facts(&a, name, PortRole::Pod);
    let mut follow_pods = |steering: &mut Steering| {
        let Some(pods) = &mut pods else {
            return;
        };
        let cidrs = shared_snapshot.load().node.pod_cidrs.clone();
        let mut dp = Dataplane {
            steering,
            slots: &slots,
            mode,
            fleet: &fleet,
            sockets: &pod_sockets,
        };
        pods.follow(&cidrs, &mut dp, &pod_facts);
        sync_metrics.pod_interfaces.set(pods.len() as i64);
        sync_metrics
            .pod_interfaces_unserved
            .set(pods.unserved() as i64);
    };
    let tx_budget = workers.iter().map(|w| w.tx_budget()).min().unwrap_or(0);
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(q, w)| {
            std::thread::Builder::new()
                .name(format!("kxdp-worker-{q}"))
                .spawn(move || w.run())
                .expect("spawn worker")
        })
        .collect();
    // The pods there are now are served before kxdp says it is ready.
    follow_pods(&mut steering);
    let http: Vec<_> = listeners
        .into_iter()
        .map(|l| l.serve(stop.clone(), state.clone()))
        .collect::<Result<_>>()?;
    tracing::info!(
        queues = a.queues,
        uplink = %a.uplink,
        pods = a.pod_ifaces.len(),
        pod_routes = a.pod_routes,
        tx_budget,
        "kxdp is forwarding"
    );
    let mut generation = 1;
    let mut last_sync = Instant::now();
    // A change seen and not loaded yet; the oldest change not in a published snapshot
    // (a failed load leaves it pending until a later load succeeds).
    let mut dirty = false;
    let mut pending: Option<Instant> = None;
    // (generation, change noticed, published) of snapshots not yet used by every worker.
    let mut converging: VecDeque<(u64, Instant, Instant)> = VecDeque::new();
    // Snapshots replaced (by the generation given), freed here once every worker has
    // moved on, so that no worker frees one between two batches.
    let mut retired: VecDeque<(u64, Arc<Snapshot>)> = VecDeque::new();
    let mut failing_since: Option<Instant> = None;
    let mut workers_running = true;
    while !STOP.load(Ordering::Relaxed) {
        let fast = converging
            .front()
            .is_some_and(|&(_, _, published)| published.elapsed() < CONVERGE_FAST_FOR);
        if fast {
            std::thread::sleep(CONVERGE_TICK);
        } else {
            (source.wait)(seen, TICK);
        }
        let now = Instant::now();
        let current = (source.changes)();
        if current != seen {
            seen = current;
            dirty = true;
            pending.get_or_insert(now);
        }
        let forced = RELOAD.swap(false, Ordering::Relaxed);
        if forced {
            pending.get_or_insert(now);
        }
        if forced || (dirty && last_sync.elapsed() >= a.objects.min_sync_period) {
            dirty = false;
            last_sync = Instant::now();
            // A snapshot the steering maps cannot take (one too big for a map) is
            // refused like objects that do not load: the last good one keeps serving.
            let loaded = (source.load)(generation + 1).and_then(|snap| {
                steering.sync(&snap, &[a.gateway_ip])?;
                // The node's pod CIDR, hence kxdp's ARP address, may have changed.
                if snap.node.snat_ip != pod_arp_ip {
                    steering.set_enabled(true, vtep, vxlan_port, snap.node.snat_ip)?;
                    pod_arp_ip = snap.node.snat_ip;
                }
                Ok(snap)
            });
            match loaded {
                Ok(snap) => {
                    generation += 1;
                    // The old snapshot is freed (by whoever drops it last) after the
                    // workers have been told: not on the way to them.
                    let old = shared_snapshot.swap(snap);
                    for w in &wakers {
                        // A worker that cannot be woken takes it at its poll timeout.
                        let _ = w.wake();
                    }
                    generation_published.store(generation, Ordering::Relaxed);
                    let published = Instant::now();
                    sync_metrics
                        .sync_duration
                        .observe((published - last_sync).as_secs_f64());
                    if let Some(noticed) = pending.take() {
                        if converging.len() == CONVERGING_MAX {
                            converging.pop_front();
                        }
                        converging.push_back((generation, noticed, published));
                    }
                    state.update(|s| {
                        s.published_at = SystemTime::now();
                        s.published = published;
                    });
                    tracing::info!(generation, "objects reloaded");
                    retired.push_back((generation, old));
                }
                Err(e) => {
                    tracing::error!("objects reload failed, keeping generation {generation}: {e:#}")
                }
            }
        }
        // Network programming latency: recorded when the slowest worker reports the
        // generation (workers report it as they load it).
        // The switch is when the last worker took it up, as the workers noted.
        let (slowest, switched) = statuses
            .iter()
            .map(|w| {
                w.lock()
                    .map(|s| (s.generation, s.switched_at))
                    .unwrap_or((0, None))
            })
            .fold((u64::MAX, None), |(g, at), (wg, wat)| {
                (g.min(wg), at.max(wat))
            });
        while let Some(&(g, noticed, _)) = converging.front() {
            if slowest < g {
                break;
            }
            let switched = switched.unwrap_or(now).max(noticed);
            sync_metrics
                .programming_duration
                .observe((switched - noticed).as_secs_f64());
            converging.pop_front();
        }
        while retired.front().is_some_and(|&(g, _)| g <= slowest) {
            retired.pop_front();
        }
        if retired.len() > CONVERGING_MAX {
            // A worker that stopped following: its last snapshot stays alive anyway.
            retired.pop_front();
        }
        follow_pods(&mut steering);
        let failing = (source.failing)();
        sync_metrics.watches_failing.set(i64::from(failing));
        failing_since = match failing {
            true => failing_since.or(Some(now)),
            false => None,
        };
        if workers_running {
            if let Some(q) = handles.iter().position(|h| h.is_finished()) {
                workers_running = false;
                tracing::error!(queue = q, "a worker stopped; /livez and /healthz report it");
            }
        }
        state.update(|s| {
            s.pending_since = pending;
            s.failing_since = failing_since;
            s.workers_running = workers_running;
        });
    }
    tracing::info!("stopping");
    // Steering off first: from here on the kernel gets everything (fail open).
    steering.set_enabled(false, vtep, vxlan_port, pod_arp_ip)?;
    stop.store(true, Ordering::Relaxed);
    let mut accounted = 0;
    let mut failed = false;
    for (q, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(count)) => accounted += count.free + count.in_rings,
            Ok(Err(e)) => {
                tracing::error!(queue = q, "worker failed: {e}");
                failed = true;
            }
            Err(_) => {
                tracing::error!(queue = q, "worker panicked");
                failed = true;
            }
        }
    }
    // Only now: until every worker has stopped, one may still queue frames for another.
    accounted += fleet.parked();
    let leaked = !failed && accounted != total_frames as usize;
    if leaked {
        tracing::error!(accounted, total = total_frames, "frames leaked");
    } else if !failed {
        tracing::info!(frames = total_frames, "all frames accounted for");
    }
    for h in http {
        let _ = h.join();
    }
    drop(steering);
    if leaked {
        bail!("frames leaked");
    }
    if failed {
        bail!("a worker failed (see the log above)");
    }
    Ok(())
}
