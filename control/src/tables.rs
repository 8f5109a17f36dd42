//! Human-readable output of `kxdp services`, `kxdp flows` and `kxdp explain`:
//! aligned columns, one row per item (`--output json` prints the answers as they are).

use std::fmt::Write;

use crate::inspect::{BackendInfo, ExplainInfo, FlowsInfo, ServiceInfo};

/// Columns padded to their widest cell, two spaces apart; the last is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `198.18.1.11:8080 (local)`, `198.18.2.10:8080 (node2 via 198.19.128.2)`.
pub fn backend_text(b: &BackendInfo) -> String {
    match (b.location.as_str(), &b.node, b.vtep) {
        ("remote", Some(node), Some(vtep)) => format!("{} ({node} via {vtep})", b.address),
        (loc, _, _) => format!("{} ({loc})", b.address),
    }
}

pub fn services(list: &[ServiceInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let frontends = s
                .frontends
                .iter()
                .map(|f| format!("{} {}", f.kind, f.address))
                .collect::<Vec<_>>()
                .join(", ");
            let backends = if s.backends.is_empty() {
                "-".to_owned()
            } else {
                s.backends
                    .iter()
                    .map(backend_text)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let maglev = match s.local_maglev_table_size {
                Some(l) => format!("{} (local {l})", s.maglev_table_size),
                None => s.maglev_table_size.to_string(),
            };
            vec![
                s.name.clone(),
                s.proto.clone(),
                s.packets.to_string(),
                s.new_flows.to_string(),
                maglev,
                frontends,
                backends,
            ]
        })
        .collect();
    table(
        &[
            "SERVICE PORT",
            "PROTO",
            "PACKETS",
            "NEW FLOWS",
            "MAGLEV",
            "FRONTENDS",
            "BACKENDS",
        ],
        &rows,
    )
}

pub fn flows(f: &FlowsInfo) -> String {
    let rows: Vec<Vec<String>> = f
        .flows
        .iter()
        .map(|x| {
            vec![
                x.worker.to_string(),
                x.proto.clone(),
                x.service.clone().unwrap_or_else(|| "-".into()),
                format!("{} -> {}", x.original.src, x.original.dst),
                format!("{} -> {}", x.translated.src, x.translated.dst),
                x.state.clone(),
                format!("{:.0}s", x.expires_in_secs.ceil()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "WORKER",
            "PROTO",
            "SERVICE PORT",
            "ORIGINAL",
            "TRANSLATED",
            "STATE",
            "EXPIRES IN",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "{} of {} matching flows shown (--limit {})",
        f.flows.len(),
        f.matched,
        f.limit
    );
    if !f.workers_silent.is_empty() {
        let _ = writeln!(
            out,
            "workers that did not answer in time (their flows are missing): {:?}",
            f.workers_silent
        );
    }
    out
}

pub fn explain(e: &ExplainInfo) -> String {
    let mut rows: Vec<(&str, String)> =
        vec![("tuple", format!("{} {} -> {}", e.proto, e.src, e.dst))];
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    rows.push(("verdict", e.verdict.clone()));
    if e.verdict == "no_service" {
        if let Some(r) = &e.route {
            rows.push(("route", backend_text(r)));
        }
    } else {
        rows.push(("service port", opt(&e.service)));
        rows.push(("frontend", opt(&e.frontend)));
        rows.push(("traffic policy", opt(&e.policy)));
        if let (Some(slot), Some(size)) = (e.maglev_slot, e.maglev_table_size) {
            rows.push(("maglev slot", format!("{slot} of {size}")));
        }
        if let Some(b) = e.new_flow_backend {
            rows.push(("new flow gets", b.to_string()));
        }
        if let Some(x) = &e.existing_flow {
            rows.push((
                "existing flow",
                format!(
                    "worker {}, {} to {}, {}",
                    x.worker,
                    x.state,
                    x.backend,
                    if x.kept { "kept" } else { "replaced" }
                ),
            ));
        }
        if let Some(b) = &e.backend {
            rows.push(("backend", backend_text(b)));
        }
        rows.push(("chosen by", opt(&e.chosen_by)));
        rows.push(("masquerade", if e.masquerade { "yes" } else { "no" }.into()));
    }
    rows.push(("why", e.reason.clone()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
