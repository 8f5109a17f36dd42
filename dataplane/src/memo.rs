//! What the frames of one batch already asked about neighbours.
//!
//! The frames of a batch share their time and snapshot, and mostly come from and go
//! to few pods: a pod port's frames come from its one pod, a Service's flows go to
//! its few backends. Within a batch the neighbour table answers the same question
//! the same way unless the table changed in between, so the pipeline asks it once a
//! batch and keeps the answer here; any change to the table clears it.

use std::net::Ipv4Addr;

use crate::flow::Nanos;
use crate::neighbour::Neighbour;

#[derive(Default)]
pub struct NeighbourMemo {
    /// The batch the answers belong to: its time and snapshot generation.
    batch: Option<(Nanos, u64)>,
    /// A pod source learned from a frame of this batch.
    learned: Option<(Ipv4Addr, Neighbour)>,
    /// A local pod's address and where it is (the snapshot routes it to a pod).
    local: Option<(Ipv4Addr, Neighbour)>,
}

impl NeighbourMemo {
    /// The answers of the batch at `now` under snapshot `generation`; those of any
    /// other batch are dropped first.
    #[inline]
    fn batch(&mut self, now: Nanos, generation: u64) -> &mut Self {
        if self.batch != Some((now, generation)) {
            *self = NeighbourMemo {
                batch: Some((now, generation)),
                ..NeighbourMemo::default()
            };
        }
        self
    }

    /// Whether this batch already learned `ip` as `n`.
    #[inline]
    pub fn learned(&mut self, now: Nanos, generation: u64, ip: Ipv4Addr, n: Neighbour) -> bool {
        self.batch(now, generation).learned == Some((ip, n))
    }

    #[inline]
    pub fn set_learned(&mut self, now: Nanos, generation: u64, ip: Ipv4Addr, n: Neighbour) {
        self.batch(now, generation).learned = Some((ip, n));
    }

    /// Where local pod `ip` is, if this batch already looked it up.
    #[inline]
    pub fn local(&mut self, now: Nanos, generation: u64, ip: Ipv4Addr) -> Option<Neighbour> {
        match self.batch(now, generation).local {
            Some((at, n)) if at == ip => Some(n),
            _ => None,
        }
    }

    /// `ip`, which the snapshot routes to a local pod, is at `n`.
    #[inline]
    pub fn set_local(&mut self, now: Nanos, generation: u64, ip: Ipv4Addr, n: Neighbour) {
        self.batch(now, generation).local = Some((ip, n));
    }

    /// The neighbour table changed (or may have): nothing remembered holds.
    #[inline]
    pub fn forget(&mut self) {
        *self = NeighbourMemo::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Mac;
    use crate::verdict::PortId;

    fn n(port: u16) -> Neighbour {
        Neighbour {
            port: PortId(port),
            mac: Mac([2, 0, 0, 0, 0, port as u8]),
        }
    }

    const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);

    #[test]
    fn answers_hold_within_a_batch_only() {
        let mut m = NeighbourMemo::default();
        m.set_local(Nanos(10), 1, IP, n(3));
        m.set_learned(Nanos(10), 1, IP, n(3));
        assert_eq!(m.local(Nanos(10), 1, IP), Some(n(3)));
        assert!(m.learned(Nanos(10), 1, IP, n(3)));
        assert!(
            !m.learned(Nanos(10), 1, IP, n(4)),
            "another port is another answer"
        );
        assert_eq!(m.local(Nanos(10), 1, Ipv4Addr::new(198, 18, 1, 6)), None);
        assert_eq!(
            m.local(Nanos(10), 2, IP),
            None,
            "a new snapshot starts afresh"
        );
        m.set_local(Nanos(10), 1, IP, n(3));
        assert_eq!(m.local(Nanos(11), 1, IP), None, "a new batch starts afresh");
        m.set_local(Nanos(11), 1, IP, n(3));
        m.set_learned(Nanos(11), 1, IP, n(3));
        m.forget();
        assert_eq!(
            m.local(Nanos(11), 1, IP),
            None,
            "a change to the table clears it"
        );
        assert!(!m.learned(Nanos(11), 1, IP, n(3)), "all of it");
    }
}
