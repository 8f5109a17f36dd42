//! The control-plane benchmark: how long kxdp takes from Kubernetes objects arriving
//! to every worker forwarding with them, for a cluster of 10,000 Services x 4
//! endpoints served by an API server (the tests' list/watch double) to `kxdp run
//! --kubeconfig` on fwd-bench's netns topology.
//!
//! - From nothing: kxdp starts against the full cluster; its first sync (the lists
//!   translated, the steering maps filled, the snapshot published) is
//!   `kxdp_sync_proxy_rules_duration_seconds` of generation 1.
//! - One endpoint: with kxdp running, one EndpointSlice changes at a time (one
//!   endpoint moves to another pod); each change is one watch event and one
//!   `kxdp_network_programming_duration_seconds` observation, from the event applied
//!   to kxdp's store to the last worker taking up the new snapshot (as the workers
//!   note it). Changes are spaced beyond `--min-sync-period`, so none waits for it.
//!
//!   sudo ./scripts/bench-control
//!   sudo ./scripts/bench-control --services 1000 --changes 20

#[path = "../../../../control/tests/apidouble/mod.rs"]
mod apidouble;
#[allow(dead_code)]
#[path = "../fwd-bench/kxdp.rs"]
mod kxdp;
#[allow(dead_code)]
#[path = "../fwd-bench/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "../fwd-bench/topology.rs"]
mod topology;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use apidouble::{node, service, slice, ApiDouble};
use kxdp::Kxdp;
use netns::{check_interrupted, within};
use topology::Topology;

/// How long one change may take to show in the metrics before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(about = "kxdp control plane: objects arriving to every worker switched")]
struct Args {
    /// The kxdp binary (a release build).
    #[arg(long, default_value = "target/release/kxdp")]
    kxdp: PathBuf,
    /// Services in the cluster, 4 endpoints each (one EndpointSlice per Service).
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    /// One-endpoint changes to time.
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// kxdp's --min-sync-period; changes are spaced 50 ms beyond it.
    #[arg(long, default_value = "100ms")]
    min_sync_period: String,
    /// Core for kxdp's worker.
    #[arg(long, default_value_t = 1)]
    core: usize,
}

fn main() {
    netns::catch_interrupts();
    if let Err(e) = run(Args::parse()) {
        eprintln!("control-bench: {e:#}");
        std::process::exit(1);
    }
}

/// Service i's ClusterIP: 198.19.0.0/17, from .1 up (room for 32,766 Services).
fn cluster_ip(i: u32) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i).to_string()
}

/// Service i's endpoints: two pods on node1 and two on node2 (pods repeat across
/// Services, as on a real node with fewer pods than Services); `moved` moves the
/// first one to another pod.
fn pods(i: u32, moved: bool) -> Vec<String> {
    let host = |k: u32| 10 + (i * 2 + k) % 240;
    let first = if moved { host(0) + 1 } else { host(0) };
    vec![
        format!("198.18.1.{first}"),
        format!("198.18.1.{}", host(1)),
        format!("198.18.2.{}", host(0)),
        format!("198.18.2.{}", host(1)),
    ]
}

fn run(args: Args) -> Result<()> {
    if !args.kxdp.exists() {
        bail!(
            "{} not found; build it with cargo build --release",
            args.kxdp.display()
        );
    }
    let min_sync = parse_ms(&args.min_sync_period)?;
    let prefix = format!("kxcb{}", std::process::id() % 100_000);
    let topo = Topology::build(&prefix, 0)?;
    let api = ApiDouble::start_in_netns(&topo.node);
    api.apply(&node(1));
    api.apply(&node(2));
    for i in 0..args.services {
        let name = format!("svc-{i}");
        api.apply(&service(&name, &cluster_ip(i)));
        let eps = pods(i, false);
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        api.apply(&slice(&format!("{name}-abcde"), &name, &eps));
    }
    println!(
        "cluster: {} Services x 4 endpoints, one EndpointSlice each, 2 nodes",
        args.services
    );

    let kubeconfig = api.kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy();
    let extra = vec!["--min-sync-period".to_owned(), args.min_sync_period.clone()];
    let started = Instant::now();
    let kxdp = Kxdp::start_from(
        &args.kxdp,
        &topo,
        args.core,
        &["--kubeconfig", kubeconfig.as_ref()],
        &extra,
    )?;
    println!(
        "kxdp ready after {:.2} s (process start, lists, first sync, workers)",
        started.elapsed().as_secs_f64()
    );
    let m = metrics(&topo.node)?;
    let first_sync = sample(&m, "kxdp_sync_proxy_rules_duration_seconds_sum")?;
    println!(
        "from nothing: first sync (translate {} Services, fill the steering maps, publish) \
         {:.1} ms",
        args.services,
        first_sync * 1e3
    );

    // Like every change below, the first comes after a quiet --min-sync-period, so
    // that none waits for it: the run loop's period starts at its first sync.
    std::thread::sleep(min_sync + Duration::from_millis(50));
    let mut latencies = Vec::with_capacity(args.changes as usize);
    let mut syncs = Vec::with_capacity(args.changes as usize);
    for c in 0..args.changes {
        check_interrupted()?;
        let before = metrics(&topo.node)?;
        let (count, sum) = histogram(&before, "kxdp_network_programming_duration_seconds")?;
        let (sync_count, sync_sum) = histogram(&before, "kxdp_sync_proxy_rules_duration_seconds")?;
        // Service c moves its first endpoint (and back on the next round).
        let i = c % args.services;
        let name = format!("svc-{i}");
        let eps = pods(i, (c / args.services).is_multiple_of(2));
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        api.apply(&slice(&format!("{name}-abcde"), &name, &eps));
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let now = metrics(&topo.node)?;
            let (n, s) = histogram(&now, "kxdp_network_programming_duration_seconds")?;
            if n > count {
                if n != count + 1.0 {
                    bail!("change {c} was programmed as {} changes", n - count);
                }
                latencies.push(s - sum);
                let (sn, ss) = histogram(&now, "kxdp_sync_proxy_rules_duration_seconds")?;
                syncs.push((ss - sync_sum) / (sn - sync_count).max(1.0));
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "change {c} not programmed within {CHANGE_TIMEOUT:?}:\n{}",
                    kxdp.log_text()
                );
            }
        }
        std::thread::sleep(min_sync + Duration::from_millis(50));
    }
    let mut slowest: Vec<(usize, f64)> = latencies.iter().copied().enumerate().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(c, s)| format!("#{c} {:.3} ms", s * 1e3))
        .collect();
    let lat = summary(&mut latencies);
    let sync = summary(&mut syncs);
    println!(
        "one endpoint changed, event applied -> every worker switched ({} changes): \
         median {:.3} ms, p90 {:.3} ms, max {:.3} ms",
        args.changes, lat.0, lat.1, lat.2
    );
    println!("  slowest: {}", slowest.join(", "));
    println!(
        "  of which sync (translate, maps, publish): median {:.3} ms, p90 {:.3} ms, max {:.3} ms",
        sync.0, sync.1, sync.2
    );
    let log = kxdp.stop()?;
    if !log.contains("all frames accounted for") {
        bail!("kxdp did not account for its frames:\n{log}");
    }
    Ok(())
}

/// (median, p90, max) in milliseconds of values in seconds.
fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1e3;
    (at(0.5), at(0.9), at(1.0))
}

fn parse_ms(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        _ => bail!("{s:?}: use ms or s"),
    })
}

/// kxdp's /metrics, read inside the node's namespace.
fn metrics(node: &str) -> Result<String> {
    within(node, || {
        let mut s = TcpStream::connect("127.0.0.1:10249").context("connect to /metrics")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
}

/// The value of an unlabelled sample.
fn sample(metrics: &str, name: &str) -> Result<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// A histogram's (count, sum).
fn histogram(metrics: &str, name: &str) -> Result<(f64, f64)> {
    Ok((
        sample(metrics, &format!("{name}_count"))?,
        sample(metrics, &format!("{name}_sum"))?,
    ))
}
