//! fwd-bench: forwarded packets per second of 64-byte UDP frames of established
//! Service flows (client pod -> ClusterIP, DNAT to a backend pod on the same node),
//! through three paths one after another on the same topology:
//!
//! - kernel: IPv4 forwarding with kube-proxy's nftables rules (kernel.rs);
//! - kxdp: `kxdp run`, one worker pinned to one core, AF_XDP copy mode (kxdp.rs);
//! - xsk-floor: the same rewrite done by a bare AF_XDP forwarder on kxdp's socket
//!   code, with no pipeline: the most an AF_XDP dataplane can forward here (floor.rs);
//! - xdp: an XDP program doing the same DNAT and MAC rewrite and redirecting between
//!   the same veths, the ceiling for this path (bench/bpf/fwd.bpf.c).
//!
//! The load comes from an in-kernel generator in the client pod (generator.rs), the
//! count from a sink on the backend pod (bench/bpf/sink.bpf.c, `--sink`). Each path is
//! measured saturated (the generator as fast as its core goes) and paced at a
//! fraction of what it forwarded saturated, where it should lose nothing.
//!
//!   sudo ./scripts/bench            (or: sudo target/release/fwd-bench --help)

mod bpf;
mod floor;
mod generator;
mod kernel;
mod kxdp;
mod netns;
mod report;
mod topology;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::bpf::{Sink, SinkAt, XdpForwarder};
use crate::floor::Floor;
use crate::generator::Generator;
use crate::kernel::KernelPath;
use crate::kxdp::Kxdp;
use crate::netns::{catch_interrupts, check_interrupted};
use crate::report::{Counters, PathResult};
use crate::topology::{Topology, POD_IF};

#[derive(Parser, Debug)]
#[command(
    name = "fwd-bench",
    about = "Forwarding benchmark: kxdp vs kube-proxy-style nftables vs an XDP ceiling"
)]
struct Args {
    /// The kxdp binary (default: `kxdp` next to this binary).
    #[arg(long, value_name = "FILE")]
    kxdp: Option<PathBuf>,
    /// Paths to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kernel,kxdp,kxdp-busy-poll,xsk-floor,xdp"
    )]
    paths: Vec<FwdPath>,
    /// Measurement window of each run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Load offered before each window (ARP, conntrack entries), in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Core the generator runs on (and with it the kernel's and XDP's forwarding,
    /// which run in the sender's context).
    #[arg(long, default_value_t = 0)]
    gen_core: usize,
    /// Core of kxdp's one worker (`kxdp run --cores`).
    #[arg(long, default_value_t = 1)]
    kxdp_core: usize,
    /// Where the node receives the client's frames: `threaded` runs the NAPI of the
    /// client's host-side veth in a kernel thread on the forwarding core (the kxdp
    /// core), so every path gets that core for all its work and the generator has
    /// its own; `inline` leaves it on the generator's core, sharing it.
    /// (Threaded NAPI loses frames even at low rates on this VM: waking a thread on
    /// another vCPU takes milliseconds, and the veth ring holds 256 frames.)
    #[arg(long, value_enum, default_value_t = Napi::Inline)]
    napi: Napi,
    /// Where the sink on the backend pod counts frames: at tc ingress, where the
    /// pod's stack starts (every path delivers an skb), or at XDP (frames redirected
    /// by the XDP path never become skbs; AF_XDP's skbs are copied to give XDP its
    /// headroom).
    #[arg(long, value_enum, default_value_t = SinkAt::Tc)]
    sink: SinkAt,
    /// Distinct flows (source ports) the generator cycles through; a power of two.
    #[arg(long, default_value_t = 64)]
    flows: u16,
    /// Offered load of the saturating run, frames/s (default: as fast as the
    /// generator's core goes).
    #[arg(long, value_name = "PPS")]
    offered: Option<f64>,
    /// The paced run offers this fraction of what the path forwarded saturated.
    #[arg(long, default_value_t = 0.5)]
    paced_load: f64,
    /// Extra argument for `kxdp run` (repeatable), e.g. --kxdp-arg=--busy-poll.
    #[arg(long = "kxdp-arg", value_name = "ARG", allow_hyphen_values = true)]
    kxdp_args: Vec<String>,
    /// Measure every path this many times over (in turn: kernel, kxdp, ..., kernel,
    /// kxdp, ...) and end with each path's median ratios: a single round's figures
    /// move by several percent on a shared machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Idle pods on the node besides the client and the backend: veths kxdp serves
    /// (`--pod-iface`) that carry no traffic, as on a node with many pods (each takes
    /// its share of the worker's frames and a look every loop).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=250))]
    idle_pods: u16,
    /// Prefix of the namespaces' names (default: kfb<pid>).
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Napi {
    Threaded,
    Inline,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FwdPath {
    Kernel,
    Kxdp,
    /// kxdp with `--busy-poll`: the worker spins instead of sleeping in poll().
    KxdpBusyPoll,
    /// A bare AF_XDP forwarder (no pipeline) on the kxdp core: AF_XDP's own cost.
    XskFloor,
    Xdp,
}

impl FwdPath {
    fn label(self) -> &'static str {
        match self {
            FwdPath::Kernel => "kernel (nftables)",
            FwdPath::Kxdp => "kxdp (AF_XDP copy)",
            FwdPath::KxdpBusyPoll => "kxdp --busy-poll",
            FwdPath::XskFloor => "AF_XDP floor (no pipeline)",
            FwdPath::Xdp => "xdp (in-kernel)",
        }
    }
}

/// Whatever makes a path forward; undone on drop.
enum Active {
    Kernel(#[allow(dead_code)] KernelPath),
    Kxdp(Kxdp),
    Floor(#[allow(dead_code)] Floor),
    Xdp(#[allow(dead_code)] XdpForwarder),
}

fn main() {
    catch_interrupts();
    if let Err(e) = run(Args::parse()) {
        eprintln!("fwd-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // SAFETY: plain libc getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("fwd-bench needs root (network namespaces, XDP, AF_XDP): run it with sudo");
    }
    let kxdp_bin = match &args.kxdp {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the current executable")?
            .join("kxdp"),
    };
    let runs_kxdp = args
        .paths
        .iter()
        .any(|p| matches!(p, FwdPath::Kxdp | FwdPath::KxdpBusyPoll));
    if runs_kxdp && !kxdp_bin.exists() {
        bail!("{kxdp_bin:?} not found: cargo build --release -p kxdp-control, or --kxdp FILE");
    }
    let window = Duration::from_secs_f64(args.window);
    let warmup = Duration::from_secs_f64(args.warmup);
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("kfb{}", std::process::id()));

    let topo = Topology::build(&prefix, args.idle_pods.into())?;
    let sink = Sink::attach(&topo, args.sink)?;
    let mut gen = Generator::new(&topo, args.flows, args.gen_core)?;
    println!(
        "fwd-bench: {} flows of 64-byte UDP {}:{} (ClusterIP) -> {}:{} (backend pod), \
         generator on core {}, kxdp worker on core {};\n{:.0} s windows after {:.0} s warm-up",
        args.flows,
        topology::CLUSTER_IP,
        topology::SERVICE_PORT,
        topology::BACKEND_IP,
        topology::TARGET_PORT,
        args.gen_core,
        args.kxdp_core,
        args.window,
        args.warmup,
    );
    if args.idle_pods > 0 {
        println!("idle pods on the node, served by kxdp: {}", args.idle_pods);
    }
    println!(
        "namespaces: {prefix}-{{node1,client,backend,underlay}}; the node's receive NAPI: {}",
        match args.napi {
            Napi::Threaded => format!("threaded, on core {}", args.kxdp_core),
            Napi::Inline => format!("inline, on the generator's core {}", args.gen_core),
        }
    );

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("\n#### round {round} of {}", args.rounds);
        }
        let results = measure_round(&args, &topo, &sink, &mut gen, &kxdp_bin, window, warmup)?;
        println!();
        report::print_table(&results);
        rounds.push(results);
    }
    if args.rounds > 1 {
        report::print_summary(&rounds);
    }
    Ok(())
}

/// Every path of `args.paths`, one after another.
fn measure_round(
    args: &Args,
    topo: &Topology,
    sink: &Sink,
    gen: &mut Generator,
    kxdp_bin: &std::path::Path,
    window: Duration,
    warmup: Duration,
) -> Result<Vec<PathResult>> {
    let mut results = Vec::new();
    for &path in &args.paths {
        check_interrupted()?;
        println!("\n== {}", path.label());
        let active = match path {
            FwdPath::Kernel => Active::Kernel(KernelPath::enable(topo)?),
            FwdPath::Kxdp | FwdPath::KxdpBusyPoll => {
                let mut extra = args.kxdp_args.clone();
                if path == FwdPath::KxdpBusyPoll && !extra.iter().any(|a| a == "--busy-poll") {
                    extra.push("--busy-poll".into());
                }
                Active::Kxdp(Kxdp::start(kxdp_bin, topo, args.kxdp_core, &extra)?)
            }
            FwdPath::XskFloor => Active::Floor(Floor::start(topo, args.kxdp_core)?),
            FwdPath::Xdp => Active::Xdp(XdpForwarder::attach(topo)?),
        };
        if args.napi == Napi::Threaded {
            topo.thread_client_napi(args.kxdp_core)?;
        }
        let inside = |a: &Active| match a {
            Active::Kxdp(k) => k.inside().map(Some),
            _ => Ok(None),
        };
        let start = inside(&active)?;
        let saturated = gen.run(sink, warmup, window, args.offered)?;
        check_interrupted()?;
        report::print_window("saturated", &saturated);
        let rate = (saturated.forwarded_pps() * args.paced_load).max(1000.0);
        let before = Counters::read(topo, &counted_interfaces(topo))?;
        let middle = inside(&active)?;
        let paced = gen.run(sink, warmup, window, Some(rate))?;
        let after = Counters::read(topo, &counted_interfaces(topo))?;
        let end = inside(&active)?;
        check_interrupted()?;
        report::print_window("paced", &paced);
        if let (Some(s), Some(m), Some(e)) = (start, middle, end) {
            println!("   kxdp, saturated (warm-up included): {}", m.describe(&s));
            println!("   kxdp, paced (warm-up included): {}", e.describe(&m));
        }
        println!("   interface counters over the paced run (warm-up included):");
        report::print_deltas(&before, &after);
        if let Active::Kxdp(k) = active {
            let log = k.stop()?;
            for l in log.lines().filter(|l| l.contains("frames")) {
                println!("   kxdp: {}", report::plain(l).trim());
            }
        }
        results.push(PathResult {
            label: path.label(),
            kernel: path == FwdPath::Kernel,
            xdp: path == FwdPath::Xdp,
            saturated,
            paced,
        });
    }
    Ok(results)
}

/// (namespace, interface) pairs whose `ethtool -S` counters locate lost frames.
fn counted_interfaces(topo: &Topology) -> Vec<(String, String)> {
    vec![
        (topo.client.clone(), POD_IF.into()),
        (topo.node.clone(), topo.client_host_if.clone()),
        (topo.node.clone(), topo.backend_host_if.clone()),
        (topo.backend.clone(), POD_IF.into()),
    ]
}
