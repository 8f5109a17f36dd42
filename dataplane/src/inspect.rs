//! What a worker tells the control side about its flows and Services, off the fast
//! path: per-Service counters (published with the other counters every few
//! milliseconds) and conntrack dumps answered between batches.
//!
//! The control side never reaches into a worker: it queues a [`FlowQuery`] for each
//! worker (a bounded lock-free queue the worker checks with its chores, every
//! ~10 ms) and waits, with a timeout, for the answers on the query's channel. The
//! worker filters and copies its entries out; allocation there is fine, it is not
//! per packet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::mpsc::SyncSender;

use crate::conntrack::FlowState;
use crate::flow::{FiveTuple, Nanos, Proto};

/// One Service port's counters in one worker. The pipeline keeps them in a `Vec`
/// indexed by the current snapshot's `ServiceId`; `id_hash` (stable across
/// snapshots) is how they are carried to the next snapshot and summed across workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounter {
    /// [`crate::snapshot::ServicePort::id_hash`].
    pub id_hash: u64,
    /// Packets of the Service port's flows, both directions, and first packets that
    /// found no backend (rejected, no local endpoint).
    pub packets: u64,
    /// Flows created.
    pub new_flows: u64,
}

/// An address with an optional port: `--src 198.18.1.10` or `--src 198.18.1.10:80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrMatch {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl AddrMatch {
    fn matches(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.ip == ip && self.port.is_none_or(|p| p == port)
    }
}

/// Which flows a dump returns; every field set must match. Addresses are matched
/// against the flow's original tuple (client -> Service) and its translated one
/// (towards the backend), so `--dst` finds flows by Service address or by backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub proto: Option<Proto>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    /// A Service port name (`namespace/name:port`) or a Service (`namespace/name`,
    /// all its ports).
    pub service: Option<String>,
}

impl FlowFilter {
    /// Does the flow (`orig`, `reply`) of Service port `service` match?
    pub fn matches(&self, orig: &FiveTuple, reply: &FiveTuple, service: Option<&str>) -> bool {
        self.matches_tuples(orig, reply) && self.matches_service(service)
    }

    /// The protocol and address parts of [`FlowFilter::matches`].
    pub fn matches_tuples(&self, orig: &FiveTuple, reply: &FiveTuple) -> bool {
        let translated = reply.reversed();
        let side = |m: &Option<AddrMatch>, pick: fn(&FiveTuple) -> (Ipv4Addr, u16)| {
            m.is_none_or(|m| {
                let (a, p) = pick(orig);
                let (b, q) = pick(&translated);
                m.matches(a, p) || m.matches(b, q)
            })
        };
        self.proto.is_none_or(|p| p == orig.proto)
            && side(&self.src, |t| (t.src, t.sport))
            && side(&self.dst, |t| (t.dst, t.dport))
    }

    /// The Service part of [`FlowFilter::matches`].
    pub fn matches_service(&self, service: Option<&str>) -> bool {
        self.service.as_deref().is_none_or(|want| {
            service.is_some_and(|have| {
                have == want
                    || have
                        .strip_prefix(want)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
        })
    }
}

/// A request to one worker: its matching flows (at most `limit`) and, for
/// `kxdp explain`, the backend a client is pinned to by session affinity.
pub struct FlowQuery {
    pub filter: FlowFilter,
    pub limit: usize,
    /// (client, Service port `id_hash`) whose affinity pin to report.
    pub affinity_of: Option<(Ipv4Addr, u64)>,
    /// Where the worker sends its answer (never blocks: the channel has room).
    pub reply: SyncSender<FlowAnswer>,
}

/// One tracked flow as a worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// The tuple of the first packet: client -> Service address.
    pub orig: FiveTuple,
    /// The tuple replies carry: backend -> client (or -> the SNAT address).
    pub reply: FiveTuple,
    pub state: FlowState,
    /// Has seen a reply.
    pub assured: bool,
    /// Time left before the flow expires unless a packet refreshes it.
    pub expires_in: Nanos,
    /// The Service port (`namespace/name:port`) its original destination belongs to
    /// in the worker's current snapshot; None if that frontend is gone.
    pub service: Option<String>,
}

impl FlowRecord {
    /// Where the flow's packets are sent: the backend.
    pub fn backend(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.reply.src, self.reply.sport)
    }
}

/// A worker's answer to a [`FlowQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowAnswer {
    pub flows: Vec<FlowRecord>,
    /// Flows that matched, including those past the limit.
    pub matched: usize,
    /// The affinity pin asked for, if the worker has a live one.
    pub pinned: Option<SocketAddrV4>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            sport,
            dport,
            proto: Proto::Tcp,
        }
    }

    /// Pod 198.18.1.12:40000 to ClusterIP 198.19.0.10:80, DNATed to 198.18.1.10:8080.
    fn flow() -> (FiveTuple, FiveTuple) {
        (
            t([198, 18, 1, 12], 40000, [198, 19, 0, 10], 80),
            t([198, 18, 1, 10], 8080, [198, 18, 1, 12], 40000),
        )
    }

    fn addr(ip: [u8; 4], port: Option<u16>) -> Option<AddrMatch> {
        Some(AddrMatch {
            ip: Ipv4Addr::from(ip),
            port,
        })
    }

    #[test]
    fn destination_matches_the_service_address_or_the_backend() {
        let (o, r) = flow();
        let by = |dst| FlowFilter {
            dst,
            ..FlowFilter::default()
        };
        assert!(by(addr([198, 19, 0, 10], Some(80))).matches(&o, &r, None));
        assert!(by(addr([198, 18, 1, 10], None)).matches(&o, &r, None));
        assert!(by(addr([198, 18, 1, 10], Some(8080))).matches(&o, &r, None));
        assert!(!by(addr([198, 18, 1, 10], Some(80))).matches(&o, &r, None));
        assert!(!by(addr([198, 18, 1, 12], None)).matches(&o, &r, None));
    }

    #[test]
    fn service_matches_a_port_name_or_every_port_of_the_service() {
        let (o, r) = flow();
        let by = |s: &str| FlowFilter {
            service: Some(s.into()),
            ..FlowFilter::default()
        };
        let name = Some("default/web:http");
        assert!(by("default/web:http").matches(&o, &r, name));
        assert!(by("default/web").matches(&o, &r, name));
        assert!(!by("default/we").matches(&o, &r, name));
        assert!(!by("default/web:dns").matches(&o, &r, name));
        assert!(!by("default/web").matches(&o, &r, None));
        let udp = FlowFilter {
            proto: Some(Proto::Udp),
            ..FlowFilter::default()
        };
        assert!(!udp.matches(&o, &r, name));
        assert!(FlowFilter::default().matches(&o, &r, None));
    }
}
