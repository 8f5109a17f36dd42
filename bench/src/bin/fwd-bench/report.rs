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
