//! What fwd-bench prints: each window as it ends, the interface counters that
//! locate lost frames, and the closing table with the ratios to the kernel's path
//! and to the XDP ceiling.

use anyhow::Result;

use crate::generator::Window;
use crate::topology::Topology;

pub struct PathResult {
    pub label: &'static str,
    pub kernel: bool,
    pub xdp: bool,
    pub saturated: Window,
    pub paced: Window,
}

pub fn print_window(what: &str, w: &Window) {
    println!(
        "   {what:<9}: sent {:>9} in {:.2} s = {:>9.0} pps offered; received {:>9} = {:>9.0} pps; \
         loss {:.2}%{}",
        w.sent,
        w.elapsed.as_secs_f64(),
        w.offered_pps(),
        w.received.good,
        w.forwarded_pps(),
        w.loss() * 100.0,
        if w.received.bad > 0 {
            format!(", {} with bad checksums", w.received.bad)
        } else {
            String::new()
        }
    );
}

/// `ethtool -S` of several interfaces at one moment.
pub struct Counters(Vec<(String, Vec<(String, u64)>)>);

impl Counters {
    pub fn read(topo: &Topology, ifaces: &[(String, String)]) -> Result<Counters> {
        let mut all = Vec::new();
        for (ns, iface) in ifaces {
            let role = ns.rsplit('-').next().unwrap_or(ns);
            all.push((format!("{role}/{iface}"), topo.ethtool_stats(ns, iface)?));
        }
        Ok(Counters(all))
    }
}

/// Prints the counters that changed.
pub fn print_deltas(before: &Counters, after: &Counters) {
    for ((name, b), (_, a)) in before.0.iter().zip(&after.0) {
        let changed: Vec<String> = a
            .iter()
            .filter_map(|(k, v)| {
                let old = b.iter().find(|(bk, _)| bk == k).map_or(0, |(_, bv)| *bv);
                (*v != old && !k.contains("bytes")).then(|| format!("{k} +{}", v - old))
            })
            .collect();
        if !changed.is_empty() {
            println!("     {name}: {}", changed.join(", "));
        }
    }
}

pub fn print_table(results: &[PathResult]) {
    let kernel = results
        .iter()
        .find(|r| r.kernel)
        .map(|r| r.saturated.forwarded_pps());
    let xdp = results
        .iter()
        .find(|r| r.xdp)
        .map(|r| r.saturated.forwarded_pps());
    let ratio = |v: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".to_string(),
    };
    println!(
        "{:<20} {:>12} {:>14} {:>10} {:>10} {:>8} {:>13} {:>11}",
        "path",
        "offered pps",
        "forwarded pps",
        "vs kernel",
        "vs xdp",
        "loss",
        "paced pps",
        "paced loss"
    );
    for r in results {
        let fwd = r.saturated.forwarded_pps();
        println!(
            "{:<20} {:>12.0} {:>14.0} {:>10} {:>10} {:>7.2}% {:>13.0} {:>10.3}%",
            r.label,
            r.saturated.offered_pps(),
            fwd,
            ratio(fwd, kernel),
            ratio(fwd, xdp),
            r.saturated.loss() * 100.0,
            r.paced.offered_pps(),
            r.paced.loss() * 100.0,
        );
    }
    println!(
        "(loss: frames the generator sent that the sink did not count with correct \
         checksums; paced: offered at a fraction of the path's saturated rate)"
    );
}

/// One path over several rounds.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub label: &'static str,
    pub forwarded: Spread,
    pub vs_kernel: Option<Spread>,
    pub vs_xdp: Option<Spread>,
    /// Rounds in which the paced run lost more than [`LOSS_RESOLUTION`], of `rounds`.
    pub paced_lossy: usize,
    /// The largest paced loss of any round, as a fraction of the frames sent.
    pub paced_worst: f64,
    pub rounds: usize,
}

/// Losses below this fraction are within what the benchmark can tell apart from
/// none: the generator's and the sink's counters are read a moment apart, and
/// frames still in flight when a window closes are not counted (a few dozen of a
/// paced window's millions, either way).
pub const LOSS_RESOLUTION: f64 = 0.00005;

/// Median and range of some figure over the rounds.
#[derive(Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.sort_by(f64::total_cmp);
        let (&min, &max) = (v.first()?, v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread { median, min, max })
    }
}

/// Each path over the rounds. A ratio is taken within its round (the paths of a
/// round run one after another on the same topology), then summarised: on a noisy
/// machine a round's ratios move less than its absolute figures.
pub fn summarize(rounds: &[Vec<PathResult>]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    let base = |round: &[PathResult], pick: fn(&PathResult) -> bool| {
        round
            .iter()
            .find(|r| pick(r))
            .map(|r| r.saturated.forwarded_pps())
            .filter(|&b| b > 0.0)
    };
    first
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let this = |round: &Vec<PathResult>| round[i].saturated.forwarded_pps();
            let ratios = |pick: fn(&PathResult) -> bool| {
                let v: Option<Vec<f64>> = rounds
                    .iter()
                    .map(|round| base(round, pick).map(|b| this(round) / b))
                    .collect();
                v.and_then(Spread::of)
            };
            Summary {
                label: r.label,
                forwarded: Spread::of(rounds.iter().map(this).collect()).unwrap_or(Spread {
                    median: 0.0,
                    min: 0.0,
                    max: 0.0,
                }),
                vs_kernel: ratios(|r| r.kernel),
                vs_xdp: ratios(|r| r.xdp),
                paced_lossy: rounds
                    .iter()
                    .filter(|round| round[i].paced.loss() > LOSS_RESOLUTION)
                    .count(),
                paced_worst: rounds
                    .iter()
                    .map(|round| round[i].paced.loss())
                    .fold(0.0, f64::max),
                rounds: rounds.len(),
            }
        })
        .collect()
}

pub fn print_summary(rounds: &[Vec<PathResult>]) {
    let spread = |s: &Option<Spread>| match s {
        Some(s) => format!("{:.2}x ({:.2}-{:.2})", s.median, s.min, s.max),
        None => "-".to_string(),
    };
    println!(
        "\nover {} rounds (medians, ranges in brackets):\n{:<27} {:>14} {:>20} {:>20} {:>12} {:>12}",
        rounds.len(),
        "path",
        "forwarded pps",
        "vs kernel",
        "vs xdp",
        "paced: lost",
        "worst loss"
    );
    for s in summarize(rounds) {
        println!(
            "{:<27} {:>14.0} {:>20} {:>20} {:>5} of {:>3} {:>11.3}%",
            s.label,
            s.forwarded.median,
            spread(&s.vs_kernel),
            spread(&s.vs_xdp),
            s.paced_lossy,
            s.rounds,
            s.paced_worst * 100.0
        );
    }
    println!(
        "(paced: lost: rounds whose paced run lost more than {} %, the benchmark's resolution)",
        LOSS_RESOLUTION * 100.0
    );
}

/// `s` without ANSI colour escapes (kxdp's log colours its fields).
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::SinkCount;
    use std::time::Duration;

    fn window(sent: u64, good: u64) -> Window {
        Window {
            sent,
            received: SinkCount { good, bad: 0 },
            elapsed: Duration::from_secs(1),
        }
    }

    fn round(kernel: u64, kxdp: u64, xdp: u64, kxdp_paced_lost: u64) -> Vec<PathResult> {
        let path = |label, kernel, xdp, pps, lost| PathResult {
            label,
            kernel,
            xdp,
            saturated: window(pps * 3, pps),
            paced: window(pps / 2, pps / 2 - lost),
        };
        vec![
            path("kernel", true, false, kernel, 0),
            path("kxdp", false, false, kxdp, kxdp_paced_lost),
            path("xdp", false, true, xdp, 0),
        ]
    }

    #[test]
    fn ratios_are_taken_within_each_round_then_summarised() {
        // The machine slows down by half in the second round: absolute figures
        // move, the ratios do not.
        let rounds = vec![
            round(600, 1200, 2000, 0),
            round(300, 600, 1000, 30),
            round(600, 1080, 1800, 0),
        ];
        let s = summarize(&rounds);
        let kxdp = &s[1];
        assert_eq!(kxdp.label, "kxdp");
        assert_eq!(kxdp.forwarded.median, 1080.0);
        let vs_kernel = kxdp.vs_kernel.as_ref().unwrap();
        assert_eq!(
            (vs_kernel.median, vs_kernel.min, vs_kernel.max),
            (2.0, 1.8, 2.0)
        );
        assert_eq!(kxdp.vs_xdp.as_ref().unwrap().median, 0.6);
        assert_eq!((kxdp.paced_lossy, kxdp.rounds), (1, 3));
        assert_eq!(kxdp.paced_worst, 30.0 / 300.0);
        assert_eq!(s[0].vs_kernel.as_ref().unwrap().median, 1.0);
    }

    #[test]
    fn losses_within_the_resolution_are_not_counted_as_losses() {
        let mut r = round(600, 1_000_000, 2000, 0);
        r[1].paced = window(1_000_000, 1_000_000 - 40); // 0.004 %
        let s = summarize(&[r]);
        assert_eq!(s[1].paced_lossy, 0);
        assert!(s[1].paced_worst > 0.0);
    }

    #[test]
    fn no_ratio_without_its_base_and_even_counts_average_the_middle_two() {
        let rounds: Vec<Vec<PathResult>> = [(1000, 2000), (1000, 3000)]
            .iter()
            .map(|&(k, x)| round(k, x, 4000, 0).into_iter().take(2).collect())
            .collect();
        let s = summarize(&rounds);
        assert_eq!(s[1].vs_xdp, None, "no XDP path was measured");
        assert_eq!(s[1].vs_kernel.as_ref().unwrap().median, 2.5);
    }
}
