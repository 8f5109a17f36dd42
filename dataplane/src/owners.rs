//! Which worker owns a flow, for replies that arrive on another worker's queue.
//!
//! Each worker keeps its own conntrack table (no lock, no shared cache line on the
//! fast path). A NIC's RSS, though, spreads a request and its reply over queues
//! independently, and NAT changes the addresses the reply is hashed on, so a reply can
//! reach a worker that has never seen its flow. When a worker creates a flow it
//! records itself here under both tuples; a worker that misses in its own table looks
//! here and, if another worker owns the flow, hands the frame over (the workers share
//! one UMEM, so that is a descriptor in a queue, not a copy). One relaxed atomic load
//! per conntrack miss is the whole cost for flows that stay on one queue.
//!
//! Slots are overwritten, never cleared: a stale or colliding entry sends a frame to a
//! worker that does not know the flow either, which then treats it as any untracked
//! packet. The 24-bit tag makes that rare; it is never wrong for long.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::flow::FiveTuple;

pub struct FlowOwners {
    slots: Box<[AtomicU32]>,
    mask: usize,
}

/// A worker's index (at most 255 workers).
pub type WorkerId = u8;

impl FlowOwners {
    /// `capacity` is rounded up to a power of two; size it like the conntrack tables.
    pub fn new(capacity: usize) -> FlowOwners {
        let n = capacity.max(1024).next_power_of_two();
        FlowOwners {
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mask: n - 1,
        }
    }

    fn slot_and_tag(&self, t: &FiveTuple) -> (usize, u32) {
        let h = t.hash();
        (h as usize & self.mask, (h >> 40) as u32 & 0x00ff_ffff)
    }

    /// Records `worker` as the owner of the flow that carries tuple `t`.
    #[inline]
    pub fn claim(&self, t: &FiveTuple, worker: WorkerId) {
        let (slot, tag) = self.slot_and_tag(t);
        self.slots[slot].store(tag << 8 | (worker as u32 + 1), Ordering::Relaxed);
    }

    /// The worker that last claimed a flow carrying `t`, if any.
    #[inline]
    pub fn owner(&self, t: &FiveTuple) -> Option<WorkerId> {
        let (slot, tag) = self.slot_and_tag(t);
        let v = self.slots[slot].load(Ordering::Relaxed);
        (v != 0 && v >> 8 == tag).then(|| (v & 0xff) as u8 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Proto;
    use std::net::Ipv4Addr;

    fn t(port: u16) -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::new(198, 18, 1, 10),
            dst: Ipv4Addr::new(198, 19, 0, 10),
            sport: port,
            dport: 80,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn a_claimed_tuple_names_its_worker_and_others_are_unknown() {
        let o = FlowOwners::new(1024);
        o.claim(&t(1), 3);
        assert_eq!(o.owner(&t(1)), Some(3));
        o.claim(&t(1), 0);
        assert_eq!(o.owner(&t(1)), Some(0));
        assert_eq!(o.owner(&t(2)), None);
    }

    #[test]
    fn a_colliding_slot_is_not_mistaken_for_the_flow() {
        let o = FlowOwners::new(1024);
        for p in 0..5000 {
            o.claim(&t(p), (p % 7) as u8);
        }
        // Every answer is either right or "unknown", never another flow's worker.
        let wrong = (0..5000)
            .filter(|&p| o.owner(&t(p)).is_some_and(|w| w != (p % 7) as u8))
            .count();
        assert_eq!(wrong, 0);
    }
}
