//! How many frames each port's fill ring is kept at.
//!
//! Every port gets an even share: half the worker's frames split among its ports, at
//! most a ring each (the other half is in flight or free). With a few ports that is a
//! full ring each. With a hundred pods it is about 160 frames, a third of a
//! millisecond of a busy pod's traffic at 500,000 frames/s, and a worker that is late
//! by more (a sleeping worker's wake-up, a paused vCPU) loses frames: the kernel
//! drops what finds the fill ring empty.
//!
//! So a port the worker fell behind on (a full batch waiting, or half its share taken
//! in one receive) grows to a full ring, out of a budget of another quarter of the
//! worker's frames shared by all ports. What a port holds cannot be
//! taken back out of its ring (AF_XDP has no way to), so the budget counts the frames
//! ports really hold beyond their share, not what they were granted: a port that was
//! busy and fell silent keeps its frames until it receives again, and meanwhile they
//! count against the budget. At worst every grant is held by silent ports and a newly
//! busy one gets the even share, as without growth; never less. A port that has
//! received nothing for [`SHRINK_AFTER`] shrinks back to the share: its ring is not
//! topped up beyond it, and the frames return as it receives. When workers balance
//! their free frames (`worker.rs`, `balance`), what a worker's ports hold beyond
//! their shares counts as its free frames: growing does not take another worker's.

use crate::flow::Nanos;

/// Idle time after which a grown port shrinks back to the even share.
pub const SHRINK_AFTER: Nanos = Nanos(1_000_000_000);

#[derive(Clone, Copy, Debug, Default)]
struct PortFill {
    grown: bool,
    last_rx: Nanos,
}

#[derive(Debug)]
pub struct FillShares {
    /// The even share every port is kept at.
    share: usize,
    frames: usize,
    ring: usize,
    /// Frames all ports together may hold beyond their share.
    budget: usize,
    ports: Vec<PortFill>,
}

impl FillShares {
    /// Shares of a worker's `frames` among `ports` fill rings of `ring` descriptors.
    pub fn new(frames: usize, ports: usize, ring: usize) -> FillShares {
        let mut f = FillShares {
            share: 0,
            frames,
            ring,
            budget: frames / 4,
            ports: vec![PortFill::default(); ports],
        };
        f.reshare();
        f
    }

    fn reshare(&mut self) {
        self.share = (self.frames / (self.ports.len().max(1) * 2))
            .min(self.ring)
            .max(1);
    }

    /// A port was added, after the others: every share shrinks (a port above it is
    /// simply not topped up until it is back under).
    pub fn add_port(&mut self) {
        self.ports.push(PortFill::default());
        self.reshare();
    }

    /// Port `i` was removed; the ports after it move down one.
    pub fn remove_port(&mut self, i: usize) {
        self.ports.remove(i);
        self.reshare();
    }

    /// The even share.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Port `i` received `n` frames at `now`, in a receive of at most `batch`. A
    /// full batch (more may be waiting), or half the share at once, says the worker
    /// fell that far behind the port: the kernel had used that much of its ring.
    #[inline]
    pub fn received(&mut self, i: usize, now: Nanos, n: usize, batch: usize) {
        let p = &mut self.ports[i];
        p.last_rx = now;
        p.grown |= self.share < self.ring && (n >= batch || n >= self.share / 2);
    }

    /// Frames the ports hold beyond their shares (`held` as for [`FillShares::plan`]):
    /// taken from the budget, and not free though they are the worker's.
    pub fn beyond(&self, held: &[usize]) -> usize {
        held.iter().map(|h| h.saturating_sub(self.share)).sum()
    }

    /// What to top each port's fill ring up to, given what each holds now (`held[i]`:
    /// frames in port `i`'s fill ring or received and not yet taken). Writes
    /// `targets[i]`; a port holding more than its target is simply not topped up.
    pub fn plan(&mut self, now: Nanos, held: &[usize], targets: &mut [usize]) {
        let beyond = |h: usize| h.saturating_sub(self.share);
        let mut beyond_all = self.beyond(held);
        for (i, (p, &h)) in self.ports.iter_mut().zip(held).enumerate() {
            if p.grown && now.0.saturating_sub(p.last_rx.0) > SHRINK_AFTER.0 {
                p.grown = false;
            }
            targets[i] = if p.grown {
                let others = beyond_all - beyond(h);
                let room = self.budget.saturating_sub(others);
                let target = (self.share + room).min(self.ring);
                // The top-up below brings this port to `target` (or as far as free
                // frames go, which only leaves the budget less used).
                beyond_all = others + beyond(target.max(h));
                target
            } else {
                self.share
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn plan(f: &mut FillShares, now: u64, held: &[usize]) -> Vec<usize> {
        let mut t = vec![0; held.len()];
        f.plan(Nanos(now), held, &mut t);
        t
    }

    #[test]
    fn shares_follow_ports_that_come_and_go() {
        let mut f = FillShares::new(32768, 1, 4096);
        assert_eq!(f.share(), 4096);
        for _ in 0..15 {
            f.add_port();
        }
        assert_eq!(f.share(), 1024);
        f.received(15, Nanos(0), 64, 64);
        f.remove_port(0);
        assert_eq!(f.share(), 32768 / 30);
        // The grown port moved down one and is still grown.
        let mut held = vec![0; 15];
        held[14] = 2000;
        let t = plan(&mut f, 0, &held);
        assert!(t[14] > f.share() && t[13] == f.share(), "{t:?}");
    }

    #[test]
    fn with_few_ports_every_ring_is_full_and_nothing_grows() {
        let mut f = FillShares::new(32768, 3, 4096);
        assert_eq!(f.share(), 4096);
        f.received(0, Nanos(0), 64, 64);
        assert_eq!(plan(&mut f, 0, &[0, 4096, 10]), vec![4096; 3]);
    }

    #[test]
    fn a_port_the_worker_fell_behind_on_grows_to_a_full_ring_and_shrinks_when_idle() {
        // The uplink and 101 pods: 160 frames each.
        let mut f = FillShares::new(32768, 102, 4096);
        let share = f.share();
        assert_eq!(share, 160);
        let mut held = vec![share; 102];
        assert_eq!(plan(&mut f, 0, &held), vec![share; 102], "all quiet");
        f.received(7, Nanos(MS), 64, 64);
        held[7] = share - 64;
        let t = plan(&mut f, MS, &held);
        assert_eq!(t[7], 4096, "a full batch: the busy pod gets a whole ring");
        assert!(t.iter().enumerate().all(|(i, &x)| i == 7 || x == share));
        held[7] = 4096;
        f.received(7, Nanos(500 * MS), 1, 64);
        assert_eq!(plan(&mut f, 600 * MS, &held)[7], 4096, "still busy");
        assert_eq!(
            plan(&mut f, 1600 * MS, &held)[7],
            share,
            "idle for a second"
        );
        // Half the share at once, with batches larger than that.
        f.received(9, Nanos(1700 * MS), 80, 256);
        assert_eq!(plan(&mut f, 1700 * MS, &held)[9], 4096);
        f.received(10, Nanos(1700 * MS), 63, 64);
        let t = plan(&mut f, 1700 * MS, &held);
        assert_eq!(t[10], share, "a short batch is no sign");
    }

    #[test]
    fn frames_silent_ports_still_hold_count_against_the_budget() {
        // 102 ports of 160; the budget is 8192 frames beyond the shares.
        let mut f = FillShares::new(32768, 102, 4096);
        let share = f.share();
        let mut held = vec![share; 102];
        // Pods 1 and 2 were busy, got whole rings, and fell silent holding them.
        f.received(1, Nanos(0), 64, 64);
        f.received(2, Nanos(0), 64, 64);
        let t = plan(&mut f, 0, &held);
        assert_eq!((t[1], t[2]), (4096, 4096));
        held[1] = 4096;
        held[2] = 4096;
        assert_eq!(f.beyond(&held), 2 * (4096 - share));
        let t = plan(&mut f, 2000 * MS, &held);
        assert_eq!(
            (t[1], t[2]),
            (share, share),
            "shrunk, but they hold their frames"
        );
        // Pod 3 turns busy: only what pods 1 and 2 do not hold is left for it.
        f.received(3, Nanos(2001 * MS), 64, 64);
        let t = plan(&mut f, 2001 * MS, &held);
        assert_eq!(t[3], share + 8192 - 2 * (4096 - share));
    }

    proptest! {
        /// Whatever the ports hold and whenever they receive, a port's target is at
        /// least its share and at most a ring, and the frames held beyond the shares
        /// after topping up stay within the budget (or what was held already).
        #[test]
        fn targets_stay_between_the_share_and_a_ring_and_within_the_budget(
            ports in 1usize..120,
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec(0usize..4096, 120),
                    0usize..120,
                    0usize..300,
                    0u64..3000,
                ),
                1..30,
            ),
        ) {
            let (frames, ring) = (32768, 4096);
            let mut f = FillShares::new(frames, ports, ring);
            let share = f.share();
            let mut now = 0;
            let mut held = vec![share; ports];
            for (consumed, busy, n, dt) in steps {
                now += dt * MS;
                f.received(busy % ports, Nanos(now), n, 64);
                // The kernel took frames from the rings since the last top-up.
                for (h, c) in held.iter_mut().zip(consumed) {
                    *h = h.saturating_sub(c);
                }
                let beyond_before = f.beyond(&held);
                let mut t = vec![0; ports];
                f.plan(Nanos(now), &held, &mut t);
                for (h, &target) in held.iter_mut().zip(&t) {
                    prop_assert!((share..=ring).contains(&target));
                    *h = (*h).max(target);
                }
                let beyond = f.beyond(&held);
                prop_assert!(beyond <= f.budget.max(beyond_before), "{beyond} > {}", f.budget);
            }
        }
    }
}
