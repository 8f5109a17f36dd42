//! The answers of the admin socket, built from the current snapshot, the counters the
//! workers publish, and the flows they report when asked (never by reaching into a
//! worker). `explain` calls the dataplane's own decision code
//! (`kxdp_dataplane::explain`, over `kxdp_dataplane::pick`), so it cannot disagree
//! with the pipeline.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxdp_dataplane::conntrack::FlowState;
use kxdp_dataplane::explain::{self as dp_explain, Existing, Outcome};
use kxdp_dataplane::flow::{FiveTuple, Proto};
use kxdp_dataplane::inspect::{AddrMatch, FlowAnswer, FlowFilter, FlowQuery, FlowRecord};
use kxdp_dataplane::pick::{self, How, Pick};
use kxdp_dataplane::snapshot::{FrontendKind, Route, Snapshot};
use kxdp_dataplane::worker::WorkerStatus;
use serde::{Deserialize, Serialize};

use crate::admin::{Daemon, ProtoName};

/// How long the admin thread waits for the workers' flow answers (workers answer
/// with their chores, every ~10 ms, or within their 50 ms idle sleep).
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// One Service port as `kxdp services` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `namespace/name:port-name`.
    pub name: String,
    pub proto: String,
    pub frontends: Vec<FrontendInfo>,
    /// Endpoints that take new flows (ready ones, else serving-terminating ones).
    pub backends: Vec<BackendInfo>,
    /// Endpoints listed for the port, eligible or not.
    pub endpoints: usize,
    /// Slots of the Maglev table over all backends (policy Cluster).
    pub maglev_table_size: u32,
    /// Slots of the table over local backends, for a Local traffic policy.
    pub local_maglev_table_size: Option<u32>,
    pub internal_traffic_policy: String,
    pub external_traffic_policy: String,
    /// Summed over the workers.
    pub packets: u64,
    pub new_flows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendInfo {
    pub address: SocketAddrV4,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalIP`.
    pub kind: String,
}

/// Where a backend is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub address: SocketAddrV4,
    /// `local` (a pod on this node), `remote` (a pod on `node`, through VXLAN to
    /// `vtep`) or `outside` (not in any pod CIDR).
    pub location: String,
    pub node: Option<String>,
    pub vtep: Option<Ipv4Addr>,
}

/// `kxdp flows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowsInfo {
    pub flows: Vec<FlowInfo>,
    /// Flows that matched the filter over all workers that answered (may exceed the
    /// list, which stops at the limit).
    pub matched: usize,
    pub limit: usize,
    /// Workers that did not answer in time (their flows are missing).
    pub workers_silent: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub worker: usize,
    pub proto: String,
    pub service: Option<String>,
    /// The first packet's tuple: client -> Service address.
    pub original: TupleInfo,
    /// What kxdp sends on: (client or SNAT address) -> backend.
    pub translated: TupleInfo,
    pub backend: SocketAddrV4,
    pub state: String,
    pub assured: bool,
    pub expires_in_secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleInfo {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl From<&FiveTuple> for TupleInfo {
    fn from(t: &FiveTuple) -> TupleInfo {
        TupleInfo {
            src: SocketAddrV4::new(t.src, t.sport),
            dst: SocketAddrV4::new(t.dst, t.dport),
        }
    }
}

/// `kxdp explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainInfo {
    pub proto: String,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// `backend` (packets go to `backend`), `reject` (no endpoints: ICMP port
    /// unreachable), `drop_no_local_endpoints` (policy Local, none on this node) or
    /// `no_service` (the destination is no Service frontend: plain routing).
    pub verdict: String,
    pub service: Option<String>,
    /// The kind of frontend `dst` is.
    pub frontend: Option<String>,
    /// The traffic policy that applies: `Cluster` or `Local`.
    pub policy: Option<String>,
    /// The backend packets go to (an existing flow's, or a new pick).
    pub backend: Option<BackendInfo>,
    /// How: `existing_flow`, `affinity` or `maglev`.
    pub chosen_by: Option<String>,
    /// What a new flow of this tuple gets from Maglev (or affinity).
    pub new_flow_backend: Option<SocketAddrV4>,
    pub maglev_slot: Option<u32>,
    pub maglev_table_size: Option<u32>,
    /// Source rewritten to the node's SNAT address.
    pub masquerade: bool,
    pub existing_flow: Option<ExistingFlowInfo>,
    /// For `no_service`: where plain routing sends `dst`.
    pub route: Option<BackendInfo>,
    /// The why, in one sentence.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingFlowInfo {
    pub worker: usize,
    pub backend: SocketAddrV4,
    pub state: String,
    /// The flow keeps its backend (it still serves the Service port).
    pub kept: bool,
}

fn kind_name(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::LoadBalancer => "LoadBalancer",
        FrontendKind::ExternalIp => "ExternalIP",
    }
}

fn policy_name(local: bool) -> &'static str {
    if local {
        "Local"
    } else {
        "Cluster"
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// Where `addr` is, as the snapshot routes it.
pub fn locate(snap: &Snapshot, addr: SocketAddrV4) -> BackendInfo {
    let (location, node, vtep) = match snap.route(*addr.ip()) {
        Route::LocalPod => ("local", None, None),
        Route::Remote(n) => ("remote", Some(n.name.clone()), Some(n.vtep_ip)),
        Route::Outside => ("outside", None, None),
    };
    BackendInfo {
        address: addr,
        location: location.into(),
        node,
        vtep,
    }
}

/// Per-Service (packets, new flows) summed over the workers, by `id_hash`.
pub fn service_totals(workers: &[Arc<Mutex<WorkerStatus>>]) -> HashMap<u64, (u64, u64)> {
    let mut totals: HashMap<u64, (u64, u64)> = HashMap::new();
    for w in workers {
        let Ok(s) = w.lock() else { continue };
        for c in &s.services {
            let t = totals.entry(c.id_hash).or_default();
            t.0 += c.packets;
            t.1 += c.new_flows;
        }
    }
    totals
}

/// Every Service port of `snap`, sorted by name.
pub fn services(snap: &Snapshot, workers: &[Arc<Mutex<WorkerStatus>>]) -> Vec<ServiceInfo> {
    let totals = service_totals(workers);
    let mut frontends: HashMap<u32, Vec<FrontendInfo>> = HashMap::new();
    for (key, fe) in snap.frontends() {
        frontends
            .entry(fe.service.0)
            .or_default()
            .push(FrontendInfo {
                address: SocketAddrV4::new(key.ip, key.port),
                kind: kind_name(fe.kind).into(),
            });
    }
    let mut out: Vec<ServiceInfo> = snap
        .services()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut fes = frontends.remove(&(i as u32)).unwrap_or_default();
            fes.sort_by_key(|f| (f.kind.clone(), f.address));
            let (packets, new_flows) = totals.get(&s.id_hash).copied().unwrap_or_default();
            let local = s.spec.internal_policy_local || s.spec.external_policy_local;
            ServiceInfo {
                name: s.spec.name.clone(),
                proto: proto_name(s.spec.proto).into(),
                frontends: fes,
                backends: s.backends.iter().map(|b| locate(snap, b.addr)).collect(),
                endpoints: s.spec.endpoints.len(),
                maglev_table_size: s.cluster.size(),
                local_maglev_table_size: local.then(|| s.local.size()),
                internal_traffic_policy: policy_name(s.spec.internal_policy_local).into(),
                external_traffic_policy: policy_name(s.spec.external_policy_local).into(),
                packets,
                new_flows,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `IP` or `IP:PORT`.
pub fn parse_addr_match(s: &str) -> Result<AddrMatch, String> {
    if let Ok(sa) = s.parse::<SocketAddrV4>() {
        return Ok(AddrMatch {
            ip: *sa.ip(),
            port: Some(sa.port()),
        });
    }
    s.parse::<Ipv4Addr>()
        .map(|ip| AddrMatch { ip, port: None })
        .map_err(|_| format!("{s:?} is not an IPv4 address or IPv4:port"))
}

/// The dataplane's filter from the request's fields.
pub fn flow_filter(
    service: Option<String>,
    src: Option<&str>,
    dst: Option<&str>,
    proto: Option<ProtoName>,
) -> Result<FlowFilter, String> {
    Ok(FlowFilter {
        proto: proto.map(ProtoName::proto),
        src: src.map(parse_addr_match).transpose()?,
        dst: dst.map(parse_addr_match).transpose()?,
        service,
    })
}

impl ProtoName {
    pub fn proto(self) -> Proto {
        match self {
            ProtoName::Tcp => Proto::Tcp,
            ProtoName::Udp => Proto::Udp,
        }
    }
}

/// Asks every worker for its flows matching `filter` (up to `limit` each) and, with
/// `affinity_of`, for a client's affinity pin; waits up to [`WORKER_TIMEOUT`].
/// Returns each answering worker's answer and the workers that stayed silent.
fn ask_workers(
    daemon: &Daemon,
    filter: &FlowFilter,
    limit: usize,
    affinity_of: Option<(Ipv4Addr, u64)>,
) -> (Vec<(usize, FlowAnswer)>, Vec<usize>) {
    let mut waiting: Vec<(usize, Receiver<FlowAnswer>)> = Vec::new();
    let mut silent = Vec::new();
    for (w, queue) in daemon.fleet.inspect.iter().enumerate() {
        let (tx, rx) = sync_channel(1);
        let q = FlowQuery {
            filter: filter.clone(),
            limit,
            affinity_of,
            reply: tx,
        };
        match queue.push(q) {
            Ok(()) => waiting.push((w, rx)),
            Err(_) => silent.push(w),
        }
    }
    let deadline = Instant::now() + WORKER_TIMEOUT;
    let mut answers = Vec::new();
    for (w, rx) in waiting {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(a) => answers.push((w, a)),
            Err(_) => silent.push(w),
        }
    }
    silent.sort_unstable();
    (answers, silent)
}

fn flow_info(worker: usize, f: &FlowRecord) -> FlowInfo {
    FlowInfo {
        worker,
        proto: proto_name(f.orig.proto).into(),
        service: f.service.clone(),
        original: (&f.orig).into(),
        translated: (&f.reply.reversed()).into(),
        backend: f.backend(),
        state: f.state.name().into(),
        assured: f.assured,
        expires_in_secs: f.expires_in.0 as f64 / 1e9,
    }
}

/// `kxdp flows`: the workers' matching flows, at most `limit` in all.
pub fn flows(daemon: &Daemon, filter: FlowFilter, limit: usize) -> FlowsInfo {
    let (answers, workers_silent) = ask_workers(daemon, &filter, limit, None);
    flows_from(answers, limit, workers_silent)
}

/// Merges the workers' answers: sorted by worker then original tuple, cut at `limit`.
pub fn flows_from(
    answers: Vec<(usize, FlowAnswer)>,
    limit: usize,
    workers_silent: Vec<usize>,
) -> FlowsInfo {
    let matched = answers.iter().map(|(_, a)| a.matched).sum();
    let mut flows: Vec<FlowInfo> = answers
        .iter()
        .flat_map(|(w, a)| a.flows.iter().map(move |f| flow_info(*w, f)))
        .collect();
    flows.sort_by_key(|f| (f.worker, f.original.src, f.original.dst));
    flows.truncate(limit);
    FlowsInfo {
        flows,
        matched,
        limit,
        workers_silent,
    }
}

/// `kxdp explain`: asks the workers for an existing flow of the tuple and the
/// client's affinity pin, then explains with the dataplane's own code.
pub fn explain(
    daemon: &Daemon,
    proto: ProtoName,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> ExplainInfo {
    let snap = daemon.snapshot.load_full();
    let t = FiveTuple {
        src: *src.ip(),
        dst: *dst.ip(),
        sport: src.port(),
        dport: dst.port(),
        proto: proto.proto(),
    };
    let exact = FlowFilter {
        proto: Some(t.proto),
        src: Some(AddrMatch {
            ip: t.src,
            port: Some(t.sport),
        }),
        dst: Some(AddrMatch {
            ip: t.dst,
            port: Some(t.dport),
        }),
        service: None,
    };
    let affinity_of = affinity_key(&dp_explain::explain(&snap, &t, None, None)).map(|h| (t.src, h));
    let (answers, _) = ask_workers(daemon, &exact, 16, affinity_of);
    let existing = answers.iter().find_map(|(w, a)| {
        a.flows
            .iter()
            .find(|f| f.orig == t)
            .map(|f| (*w, f.backend(), f.state))
    });
    let pinned = answers.iter().find_map(|(_, a)| a.pinned);
    explain_with(&snap, &t, existing, pinned)
}

/// The `id_hash` of the Service port an explanation names, when it has session
/// affinity (the workers are then asked for the client's pin).
fn affinity_key(e: &dp_explain::Explanation) -> Option<u64> {
    match &e.outcome {
        Outcome::Service(c) if c.service.spec.affinity_timeout.is_some() => Some(c.service.id_hash),
        _ => None,
    }
}

/// The explanation of `t` given a worker's existing flow for it (worker, backend,
/// state) and the client's affinity pin.
pub fn explain_with(
    snap: &Snapshot,
    t: &FiveTuple,
    existing: Option<(usize, SocketAddrV4, FlowState)>,
    pinned: Option<SocketAddrV4>,
) -> ExplainInfo {
    let e = dp_explain::explain(
        snap,
        t,
        existing.map(|(_, backend, state)| Existing { backend, state }),
        pinned,
    );
    let mut info = ExplainInfo {
        proto: proto_name(t.proto).into(),
        src: SocketAddrV4::new(t.src, t.sport),
        dst: SocketAddrV4::new(t.dst, t.dport),
        verdict: String::new(),
        service: None,
        frontend: None,
        policy: None,
        backend: None,
        chosen_by: None,
        new_flow_backend: None,
        maglev_slot: None,
        maglev_table_size: None,
        masquerade: false,
        existing_flow: None,
        route: None,
        reason: String::new(),
    };
    let c = match e.outcome {
        Outcome::NoService { .. } => {
            // As for a Service, a closed flow is explained as the new SYN would go.
            if let Some((worker, backend, state)) = existing.filter(|&(_, b, st)| {
                st != FlowState::TcpClosed && pick::recheck(snap, t, b, st).keeps
            }) {
                info.verdict = "backend".into();
                info.chosen_by = Some("existing_flow".into());
                info.existing_flow = Some(ExistingFlowInfo {
                    worker,
                    backend,
                    state: state.name().into(),
                    kept: true,
                });
                info.backend = Some(locate(snap, backend));
                info.reason = format!(
                    "{} {} is no longer a Service frontend, but worker {worker} still tracks this connection ({}) and pins it to {backend}: answered TCP connections outlive their Service port, as with kube-proxy's conntrack",
                    info.proto,
                    info.dst,
                    state.name()
                );
                return info;
            }
            let route = locate(snap, info.dst);
            info.verdict = "no_service".into();
            info.reason = format!(
                "{} {} is no Service frontend on this node: kxdp routes it as plain traffic ({})",
                info.proto,
                info.dst,
                match route.location.as_str() {
                    "local" => "to a local pod".to_owned(),
                    "remote" => format!(
                        "to node {} through VXLAN",
                        route.node.as_deref().unwrap_or("?")
                    ),
                    _ => "outside the pod network: the kernel's".to_owned(),
                }
            );
            info.route = Some(route);
            return info;
        }
        Outcome::Service(c) => c,
    };
    let name = c.service.spec.name.clone();
    info.service = Some(name.clone());
    info.frontend = Some(kind_name(c.kind).into());
    info.policy = Some(policy_name(c.policy_local).into());
    info.masquerade = c.masquerade;
    if let Pick::Backend { backend, how } = c.pick {
        info.new_flow_backend = Some(backend.addr);
        if let How::Maglev { slot, table_size } = how {
            info.maglev_slot = Some(slot);
            info.maglev_table_size = Some(table_size);
        }
    }
    if let (Some((worker, _, _)), Some((ex, kept))) = (existing, c.existing) {
        info.existing_flow = Some(ExistingFlowInfo {
            worker,
            backend: ex.backend,
            state: ex.state.name().into(),
            kept,
        });
    }
    info.backend = c.backend.map(|b| locate(snap, b));
    let policy = policy_name(c.policy_local);
    let frontend = kind_name(c.kind);
    match (c.existing, c.pick) {
        (Some((ex, true)), _) => {
            info.verdict = "backend".into();
            info.chosen_by = Some("existing_flow".into());
            let differs = info.new_flow_backend.is_some_and(|n| n != ex.backend);
            let left = if c.service.serves(ex.backend) {
                ""
            } else {
                ", which has left the Service port: answered TCP connections stay on their backend, as with kube-proxy's conntrack"
            };
            info.reason = format!(
                "{name} ({frontend}): worker {} already tracks this flow ({}) and pins it to {}{left}{}",
                existing.map_or(0, |e| e.0),
                ex.state.name(),
                ex.backend,
                if differs {
                    format!(
                        "; a new flow would get {}",
                        info.new_flow_backend
                            .map_or(String::new(), |b| b.to_string())
                    )
                } else {
                    String::new()
                }
            );
        }
        (_, Pick::Backend { backend, how }) => {
            info.verdict = "backend".into();
            let stale = match c.existing {
                Some((ex, false)) if ex.state == FlowState::TcpClosed => format!(
                    " (the tracked flow to {} is closed: a new SYN starts a new flow, other packets still follow it)",
                    ex.backend
                ),
                Some((ex, false)) => format!(
                    " (the tracked flow's backend {} no longer serves the Service port and the flow is not an answered TCP connection: its next packet picks anew)",
                    ex.backend
                ),
                _ => String::new(),
            };
            info.reason = match how {
                How::Affinity => {
                    info.chosen_by = Some("affinity".into());
                    format!(
                        "{name} ({frontend}, policy {policy}): session affinity pins {} to {}{stale}",
                        t.src, backend.addr
                    )
                }
                How::Maglev { slot, table_size } => {
                    info.chosen_by = Some("maglev".into());
                    format!(
                        "{name} ({frontend}, policy {policy}): Maglev slot {slot} of {table_size} picks {}{stale}",
                        backend.addr
                    )
                }
            };
        }
        (_, Pick::Reject) => {
            info.verdict = "reject".into();
            info.reason = format!(
                "{name} ({frontend}) has no endpoints: the connection is refused with ICMP port unreachable"
            );
        }
        (_, Pick::NoLocalEndpoints) => {
            info.verdict = "drop_no_local_endpoints".into();
            info.reason = format!(
                "{name} ({frontend}) has traffic policy Local and no ready endpoint on this node: dropped"
            );
        }
    }
    info
}
