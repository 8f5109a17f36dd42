//! The `kxdp` binary: parses flags, loads objects, and hands over to the subcommand.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use kxdp_control::cli::{Cli, Command, ObjectsArgs, ReplayArgs, RunArgs};
use kxdp_control::objects::parse_objects;
use kxdp_control::replay::{self, ReplayOptions};
use kxdp_control::translate::{translate, TranslateConfig};
use kxdp_dataplane::snapshot::Snapshot;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_cmd(args),
        Command::Replay(args) => replay_cmd(args),
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
fn load_snapshot(o: &ObjectsArgs, max_table_size: u32, generation: u64) -> Result<Snapshot> {
    let text = std::fs::read_to_string(&o.objects)
        .with_context(|| format!("cannot read objects file {}", o.objects.display()))?;
    let parsed = parse_objects(&text);
    for e in &parsed.errors {
        tracing::warn!("rejected {e}");
    }
    let cfg = TranslateConfig {
        node_name: o.node_name.clone(),
        max_table_size,
    };
    let t = translate(&parsed.objects, &cfg, generation)
        .with_context(|| format!("objects file {}", o.objects.display()))?;
    for e in &t.errors {
        tracing::warn!("rejected {e}");
    }
    Ok(t.snapshot)
}

fn run_cmd(a: RunArgs) -> Result<()> {
    let objects = a.objects.clone();
    let m = a.pipeline.maglev_table_size;
    kxdp_control::run::run(a, &move |generation| load_snapshot(&objects, m, generation))
}

fn replay_cmd(a: ReplayArgs) -> Result<()> {
    let snap = load_snapshot(&a.objects, a.pipeline.maglev_table_size, 1)?;
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
