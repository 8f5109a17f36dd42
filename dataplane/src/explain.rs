//! Why a tuple goes where it goes: the pipeline's Service decision, spelled out for
//! `kxdp explain`. It calls the pipeline's own pure helpers ([`crate::pick`]) on the
//! same snapshot, so it cannot disagree with what the dataplane does; the only
//! inputs it does not have itself (a worker's existing flow for the tuple, its
//! affinity pin) are handed in, read from the workers by the caller.

use std::net::SocketAddrV4;

use crate::conntrack::FlowState;
use crate::flow::FiveTuple;
use crate::pick::{self, Pick};
use crate::snapshot::{FrontendKind, Route, ServiceId, ServiceKey, ServicePort, Snapshot};

/// A flow a worker already tracks for the tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing {
    pub backend: SocketAddrV4,
    pub state: FlowState,
}

/// What the pipeline does with a packet carrying the tuple.
#[derive(Debug)]
pub struct Explanation<'a> {
    pub tuple: FiveTuple,
    pub outcome: Outcome<'a>,
}

#[derive(Debug)]
pub enum Outcome<'a> {
    /// The destination is no Service frontend: plain routing (`route`) applies.
    NoService {
        route: Route<'a>,
    },
    Service(ServiceChoice<'a>),
}

/// The Service port the tuple reaches and the backend it gets.
#[derive(Debug)]
pub struct ServiceChoice<'a> {
    pub id: ServiceId,
    pub service: &'a ServicePort,
    pub kind: FrontendKind,
    /// The traffic policy that applied (internal for ClusterIP, external otherwise)
    /// is Local.
    pub policy_local: bool,
    /// What a new flow gets (also computed when an existing flow keeps its backend,
    /// to show where a new one would go).
    pub pick: Pick,
    /// A tracked flow for the tuple, and whether it keeps its backend in this
    /// snapshot ([`pick::recheck`]).
    pub existing: Option<(Existing, bool)>,
    /// The backend packets actually go to: the existing flow's if kept, else the pick.
    pub backend: Option<SocketAddrV4>,
    /// The flow's source is rewritten to the node's SNAT address.
    pub masquerade: bool,
    /// Where the backend lives: a local pod, a remote node's pod CIDR (VXLAN to its
    /// VTEP), or outside the pod network.
    pub backend_route: Option<Route<'a>>,
}

/// Explains `t` against `snap`. `existing` is a worker's flow whose first packet
/// carried `t`; `pinned` the client's session-affinity pin for the Service port.
pub fn explain<'a>(
    snap: &'a Snapshot,
    t: &FiveTuple,
    existing: Option<Existing>,
    pinned: Option<SocketAddrV4>,
) -> Explanation<'a> {
    let key = ServiceKey {
        ip: t.dst,
        port: t.dport,
        proto: t.proto,
    };
    let Some(fe) = snap.frontend(&key) else {
        return Explanation {
            tuple: *t,
            outcome: Outcome::NoService {
                route: snap.route(t.dst),
            },
        };
    };
    let svc = snap.service(fe.service);
    let pick = pick::pick(svc, fe.kind, t, || pinned);
    // A closed TCP flow is replaced by the next SYN; explain what a new flow gets.
    let existing = existing.map(|e| {
        let kept =
            e.state != FlowState::TcpClosed && pick::recheck(snap, t, e.backend, e.state).keeps;
        (e, kept)
    });
    let backend = match (existing, pick) {
        (Some((e, true)), _) => Some(e.backend),
        (_, Pick::Backend { backend, .. }) => Some(backend.addr),
        _ => None,
    };
    let policy_local = if fe.kind.is_external() {
        svc.spec.external_policy_local
    } else {
        svc.spec.internal_policy_local
    };
    Explanation {
        tuple: *t,
        outcome: Outcome::Service(ServiceChoice {
            id: fe.service,
            service: svc,
            kind: fe.kind,
            policy_local,
            pick,
            existing,
            backend,
            masquerade: backend.is_some_and(|b| pick::masquerades(snap, svc, fe.kind, t, b)),
            backend_route: backend.map(|b| snap.route(*b.ip())),
        }),
    }
}
