//! Which backend a new flow of a Service port gets, and whether it is masqueraded.
//!
//! The one decision the pipeline makes for every new Service flow, kept pure (the
//! snapshot's Service port, the tuple and the client's affinity pin in; the choice
//! out) so that `kxdp explain` calls the very same code and cannot disagree with the
//! dataplane. Order, as kube-proxy's rules: no endpoint at all rejects; a Local
//! traffic policy without a local endpoint drops; a live `sessionAffinity: ClientIP`
//! pin to a backend still eligible wins; else Maglev on the flow hash.

use std::net::SocketAddrV4;

use crate::conntrack::FlowState;
use crate::flow::FiveTuple;
use crate::snapshot::{Backend, Frontend, FrontendKind, Route, ServiceKey, ServicePort, Snapshot};

/// The outcome of [`pick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// A backend, and how it was chosen.
    Backend { backend: Backend, how: How },
    /// The Service port has no endpoint at all: refused with ICMP port unreachable,
    /// as kube-proxy's REJECT rule does.
    Reject,
    /// The traffic policy that applies is Local and no endpoint is on this node.
    NoLocalEndpoints,
}

/// How a backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// `sessionAffinity: ClientIP` had pinned the client to it.
    Affinity,
    /// Maglev: slot `slot` of a table of `table_size` slots.
    Maglev { slot: u32, table_size: u32 },
}

/// Picks the backend of a new flow `t` reaching `svc` through a frontend of `kind`.
/// `pinned` is asked (only for Services with session affinity) for the backend the
/// client is pinned to.
#[inline]
pub fn pick(
    svc: &ServicePort,
    kind: FrontendKind,
    t: &FiveTuple,
    pinned: impl FnOnce() -> Option<SocketAddrV4>,
) -> Pick {
    let (table, backends) = svc.selection(kind);
    if backends.is_empty() {
        return if svc.backends.is_empty() {
            Pick::Reject
        } else {
            Pick::NoLocalEndpoints
        };
    }
    if svc.spec.affinity_timeout.is_some() {
        // A pin to a backend that no longer takes new flows is ignored.
        if let Some(b) = pinned().and_then(|a| backends.iter().find(|b| b.addr == a)) {
            return Pick::Backend {
                backend: *b,
                how: How::Affinity,
            };
        }
    }
    let chosen = table.slot(t.hash()).and_then(|slot| {
        let i = table.entries()[slot as usize];
        backends.get(i as usize).map(|b| (slot, *b))
    });
    match chosen {
        Some((slot, backend)) => Pick::Backend {
            backend,
            how: How::Maglev {
                slot,
                table_size: table.size(),
            },
        },
        None => Pick::NoLocalEndpoints,
    }
}

/// Must the flow be masqueraded (source rewritten to the node's SNAT address) so that
/// replies come back through this node? External clients under
/// externalTrafficPolicy Cluster, and hairpin (a pod reaching itself through its
/// Service), as kube-proxy's KUBE-MARK-MASQ does.
#[inline]
pub fn masquerades(
    snap: &Snapshot,
    svc: &ServicePort,
    kind: FrontendKind,
    t: &FiveTuple,
    backend: SocketAddrV4,
) -> bool {
    let hairpin = *backend.ip() == t.src;
    let external_cluster = kind.is_external()
        && !svc.spec.external_policy_local
        && snap.route(t.src) != Route::LocalPod;
    hairpin || external_cluster
}

/// What a tracked flow (first packet `orig`, in `state`, pinned to `backend`) does
/// under `snap`: the frontend its packets now count under, if its Service port is
/// still there, and whether it keeps its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recheck {
    pub frontend: Option<Frontend>,
    pub keeps: bool,
}

/// A flow keeps its backend while the backend serves the flow's Service port. When
/// it no longer does (removed, not ready, or the Service is gone), an answered TCP
/// connection still stays on it: kube-proxy never clears TCP conntrack entries, so
/// connections drain to a terminating pod, and a connection moved to another backend
/// could only be reset by it. Unanswered SYNs and UDP flows pick anew at their next
/// packet: a retransmitted SYN reaches a live backend, and kube-proxy clears the
/// UDP conntrack entries of removed endpoints for the same reason.
#[inline]
pub fn recheck(
    snap: &Snapshot,
    orig: &FiveTuple,
    backend: SocketAddrV4,
    state: FlowState,
) -> Recheck {
    let frontend = snap.frontend(&ServiceKey {
        ip: orig.dst,
        port: orig.dport,
        proto: orig.proto,
    });
    let serves = frontend.is_some_and(|fe| snap.service(fe.service).serves(backend));
    let answered_tcp = matches!(
        state,
        FlowState::TcpEstablished | FlowState::TcpFinWait | FlowState::TcpClosed
    );
    Recheck {
        frontend,
        keeps: serves || answered_tcp,
    }
}
