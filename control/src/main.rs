//! The `kxdp` binary: parses flags, loads objects, and hands over to the subcommand.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kxdp_control::apiserver::{Access, ApiSource, Backoff};
use kxdp_control::cli::{Cli, Command, ReplayArgs, RunArgs};
use kxdp_control::objects::{parse_objects, Objects};
use kxdp_control::replay::{self, ReplayOptions};
use kxdp_control::run::Source;
use kxdp_control::translate::{translate, translate_reusing, TranslateConfig};
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

/// Reads and translates the objects file; invalid objects are reported and skipped.
fn load_snapshot(
    path: &Path,
    node_name: &str,
    max_table_size: u32,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read objects file {}", path.display()))?;
    let parsed = parse_objects(&text);
    for e in &parsed.errors {
        tracing::warn!("rejected {e}");
    }
    translate_objects(
        &parsed.objects,
        node_name,
        max_table_size,
        generation,
        previous,
    )
    .with_context(|| format!("objects file {}", path.display()))
}

/// Translates objects from either source; invalid objects are reported and skipped.
fn translate_objects(
    objects: &Objects,
    node_name: &str,
    max_table_size: u32,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot> {
    let cfg = TranslateConfig {
        node_name: node_name.to_owned(),
        max_table_size,
    };
    // Unchanged Service ports keep their Maglev tables (shared, not rebuilt).
    let t = match previous {
        Some(prev) => translate_reusing(objects, &cfg, generation, prev)?,
        None => translate(objects, &cfg, generation)?,
    };
    for e in &t.errors {
        tracing::warn!("rejected {e}");
    }
    Ok(t.snapshot)
}

fn run_cmd(a: RunArgs) -> Result<()> {
    let node = a.objects.node_name.clone();
    let m = a.pipeline.maglev_table_size;
    if let Some(path) = a.objects.objects.clone() {
        let changes = kxdp_control::run::file_changes(path.clone());
        let load = move |generation, previous: Option<&Snapshot>| {
            load_snapshot(&path, &node, m, generation, previous)
        };
        let source = Source {
            load: &load,
            changes: &changes,
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
    let (watched, checked) = (source.clone(), source.clone());
    let load = move |generation, previous: Option<&Snapshot>| {
        wait_for_sync(&source);
        translate_objects(&source.objects(), &node, m, generation, previous)
            .context("objects from the API server")
    };
    let source = Source {
        load: &load,
        changes: &move || watched.changed(),
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
    let snap = load_snapshot(
        &a.objects.objects,
        &a.objects.node_name,
        a.pipeline.maglev_table_size,
        1,
        None,
    )?;
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
