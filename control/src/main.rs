//! The `kxdp` binary: parses flags, loads objects, and hands over to the subcommand.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kxdp_control::apiserver::{Access, ApiSource, Backoff};
use kxdp_control::cli::{Cli, Command, ReplayArgs, RunArgs};
use kxdp_control::objects::{parse_objects, ObjectError, Objects};
use kxdp_control::replay::{self, ReplayOptions};
use kxdp_control::run::Source;
use kxdp_control::translate::{translate, TranslateConfig, Translator};
use kxdp_dataplane::snapshot::Snapshot;

/// The log filter without RUST_LOG.
const QUIET_BY_DEFAULT: &str =
    "info,kube_client=error,kube_client::client::builder=off,kube_runtime=error";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-rs logs every failed request of a retrying watch; the
                // API source logs each failure episode once instead.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET_BY_DEFAULT)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_cmd(args),
        Command::Replay(args) => replay_cmd(args),
        Command::Services(args) => kxdp_control::client::services(&args),
        Command::Flows(args) => kxdp_control::client::flows(&args),
        Command::Explain(args) => kxdp_control::client::explain(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kxdp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the objects file; objects that do not load are reported and skipped.
fn read_objects(path: &Path) -> Result<Objects> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read objects file {}", path.display()))?;
    let parsed = parse_objects(&text);
    for e in &parsed.errors {
        tracing::warn!("rejected {e}");
    }
    Ok(parsed.objects)
}

/// Logs each object error once while it lasts (a source rebuilds often, and most
/// errors outlive many rebuilds).
#[derive(Default)]
struct Rejections {
    logged: HashSet<String>,
}

impl Rejections {
    fn report(&mut self, errors: &[ObjectError]) {
        let now: HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
        for e in now.difference(&self.logged) {
            tracing::warn!("rejected {e}");
        }
        self.logged = now;
    }
}

/// Threads for translating generation `generation`: every core for the first, which
/// is built before any worker forwards; one afterwards, so as not to take the
/// workers' cores.
fn threads_for(generation: u64) -> usize {
    if generation == 1 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// Builds a snapshot from what the translator was given and reports new errors.
fn build(
    translator: &mut Translator,
    rejections: &mut Rejections,
    generation: u64,
) -> Result<Arc<Snapshot>> {
    let t = translator.build(generation)?;
    rejections.report(&t.errors);
    Ok(t.snapshot)
}

fn run_cmd(a: RunArgs) -> Result<()> {
    let cfg = TranslateConfig {
        node_name: a.objects.node_name.clone(),
        max_table_size: a.pipeline.maglev_table_size,
    };
    // Kept across rebuilds: unchanged Service ports keep their Maglev tables.
    let translator = RefCell::new(Translator::new(cfg));
    let rejections = RefCell::new(Rejections::default());
    if let Some(path) = a.objects.objects.clone() {
        let changes = kxdp_control::run::file_changes(path.clone());
        let load = move |generation| {
            let objects = read_objects(&path)?;
            let mut t = translator.borrow_mut();
            t.set_threads(threads_for(generation));
            t.replace(objects);
            build(&mut t, &mut rejections.borrow_mut(), generation)
                .with_context(|| format!("objects file {}", path.display()))
        };
        let source = Source {
            load: &load,
            changes: &changes,
            wait: &|_, limit| std::thread::sleep(limit),
            failing: &|| false,
        };
        return kxdp_control::run::run(a, &source);
    }
    let access = match a.objects.kubeconfig.clone() {
        Some(path) => Access::Kubeconfig(path),
        None => Access::InCluster,
    };
    let source = Arc::new(ApiSource::connect(&access, Backoff::default())?);
    // Before run: the first lists move `changed()`, and a run loop that saw them
    // move would rebuild the first snapshot again for nothing.
    wait_for_sync(&source);
    let (watched, waited, checked) = (source.clone(), source.clone(), source.clone());
    let load = move |generation| {
        wait_for_sync(&source);
        let (services, slices, nodes) = source.take_changes();
        let mut t = translator.borrow_mut();
        t.set_threads(threads_for(generation));
        t.apply_nodes(nodes);
        t.apply_slices(slices);
        t.apply_services(services);
        build(&mut t, &mut rejections.borrow_mut(), generation)
            .context("objects from the API server")
    };
    let source = Source {
        load: &load,
        changes: &move || watched.changed(),
        wait: &move |seen, limit| waited.wait_changed(seen, limit),
        failing: &move || checked.failing(),
    };
    kxdp_control::run::run(a, &source)
}

/// Waits for the first lists as kube-proxy waits for its informers: without them a
/// snapshot would drop every Service not yet listed.
fn wait_for_sync(source: &ApiSource) {
    if source.synced() {
        return;
    }
    tracing::info!("waiting for the API server to list Services, EndpointSlices and Nodes");
    while !source.wait_synced(Duration::from_secs(10)) {
        tracing::warn!("still waiting for the API server's first lists (see the errors above)");
    }
    tracing::info!("API server objects listed");
}

fn replay_cmd(a: ReplayArgs) -> Result<()> {
    let cfg = TranslateConfig {
        node_name: a.objects.node_name.clone(),
        max_table_size: a.pipeline.maglev_table_size,
    };
    let path = &a.objects.objects;
    let t = translate(&read_objects(path)?, &cfg, 1)
        .with_context(|| format!("objects file {}", path.display()))?;
    for e in &t.errors {
        tracing::warn!("rejected {e}");
    }
    let snap = t.snapshot;
    let opts = ReplayOptions {
        input: a.input,
        output: a.output,
        ingress: a.ingress,
        uplink: a.uplink,
        uplink_mtu: a.mtu,
        neighbours: a.neighbours,
        pipeline: a.pipeline.config(Default::default()),
    };
    let report = replay::run(&snap, &opts)?;
    println!("{report}");
    Ok(())
}
