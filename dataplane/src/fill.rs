//! How many frames each of a worker's fill rings is kept at.
//!
//! A worker parks half its frames in its ports' fill rings; the other half is in
//! flight or free. A fill ring's frames are what the kernel can receive into while
//! the worker is off its core (a hypervisor pausing the vCPU stops it for
//! milliseconds), so they should sit where traffic arrives. Split evenly, a node
//! with a hundred pod interfaces gives each ring about 160 frames, a third of a
//! millisecond of one busy pod at 500,000 frames/s. So the split follows what each
//! port received lately: every port keeps a batch's worth (less when there are so
//! many ports that batches would take more than half), the rest goes in proportion
//! to recent traffic, at most a ring each. With no traffic yet, or none
//! for a while, the split is even.
//!
//! A ring is only ever topped up to its share: frames above a lowered share stay
//! until the kernel receives into them, so a port that fell idle keeps what it had.
//! Parked frames stay under all the worker's frames even then (each side of that is
//! at most half), and busy rings get back the frames they receive into.

/// Frames every port keeps whatever its traffic: one batch.
const MIN_SHARE: usize = 64;

pub struct FillShares {
    /// Frames parked in fill rings in all (half the worker's).
    budget: usize,
    ring: usize,
    /// Frames each port received, decayed by a quarter at each update.
    recent: Vec<u64>,
    /// Each port's receive total at the last update.
    seen: Vec<u64>,
    shares: Vec<usize>,
}

impl FillShares {
    /// Even shares of half of `frames` over `ports` rings of `ring` descriptors.
    pub fn new(frames: usize, ports: usize, ring: usize) -> FillShares {
        let mut f = FillShares {
            budget: frames / 2,
            ring,
            recent: vec![0; ports],
            seen: vec![0; ports],
            shares: vec![0; ports],
        };
        f.split();
        f
    }

    /// The frames port `i`'s fill ring is kept at.
    #[inline]
    pub fn share(&self, i: usize) -> usize {
        self.shares[i]
    }

    /// Takes each port's receive total (cumulative, in port order) and splits again.
    /// Called every few milliseconds.
    pub fn update(&mut self, totals: impl IntoIterator<Item = u64>) {
        for ((recent, seen), total) in self.recent.iter_mut().zip(&mut self.seen).zip(totals) {
            // 3/4 rather than minus a quarter: small counts decay to zero too.
            *recent = *recent * 3 / 4 + total.wrapping_sub(*seen);
            *seen = total;
        }
        self.split();
    }

    fn split(&mut self) {
        let n = self.shares.len().max(1);
        let even = (self.budget / n).clamp(1, self.ring);
        let traffic: u64 = self.recent.iter().sum();
        if traffic == 0 {
            self.shares.fill(even);
            return;
        }
        // At most half the budget goes to floors, whatever the number of ports.
        let floor = (self.budget / (2 * n)).clamp(1, MIN_SHARE);
        let rest = self.budget.saturating_sub(floor * n) as u128;
        for (share, &recent) in self.shares.iter_mut().zip(&self.recent) {
            let extra = (rest * recent as u128 / traffic as u128) as usize;
            *share = (floor + extra).min(self.ring);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_traffic_the_split_is_even_and_at_most_a_ring() {
        let f = FillShares::new(32768, 3, 4096);
        assert_eq!((0..3).map(|i| f.share(i)).collect::<Vec<_>>(), [4096; 3]);
        let f = FillShares::new(32768, 101, 4096);
        assert!((0..101).all(|i| f.share(i) == 16384 / 101));
    }

    #[test]
    fn a_busy_port_among_a_hundred_gets_a_full_ring_and_the_others_a_batch() {
        let mut f = FillShares::new(32768, 101, 4096);
        let mut totals = vec![0u64; 101];
        totals[57] = 5000;
        f.update(totals.iter().copied());
        assert_eq!(f.share(57), 4096);
        assert!((0..101).filter(|&i| i != 57).all(|i| f.share(i) == 64));
        assert!((0..101).map(|i| f.share(i)).sum::<usize>() <= 16384);
    }

    #[test]
    fn busy_ports_share_in_proportion_to_their_traffic() {
        let mut f = FillShares::new(8192, 4, 4096);
        f.update([3000, 1000, 0, 0]);
        // Half of 8192 frames: 64 each, and the other 3840 split 3:1.
        assert_eq!([f.share(0), f.share(1)], [64 + 2880, 64 + 960]);
        assert_eq!([f.share(2), f.share(3)], [64, 64]);
    }

    #[test]
    fn a_port_that_falls_idle_gives_its_share_back_and_silence_evens_the_split() {
        let mut f = FillShares::new(32768, 101, 4096);
        let mut totals = vec![0u64; 101];
        totals[3] = 10_000;
        f.update(totals.iter().copied());
        assert_eq!(f.share(3), 4096);
        // Port 9 becomes the busy one; port 3's past traffic decays away.
        for step in 1..=40u64 {
            totals[9] = 10_000 * step;
            f.update(totals.iter().copied());
        }
        assert_eq!(f.share(9), 4096);
        assert_eq!(f.share(3), 64);
        // No traffic at all for long enough: even again.
        for _ in 0..200 {
            f.update(totals.iter().copied());
        }
        assert!((0..101).all(|i| f.share(i) == 16384 / 101));
    }

    #[test]
    fn more_ports_than_the_budget_holds_batches_for_still_stay_within_it() {
        let mut f = FillShares::new(32768, 1000, 4096);
        let mut totals = vec![1u64; 1000];
        totals[0] = 1_000_000;
        f.update(totals.iter().copied());
        let sum: usize = (0..1000).map(|i| f.share(i)).sum();
        assert!(sum <= 16384, "{sum}");
        assert!(
            (0..1000).all(|i| f.share(i) >= 8),
            "every port keeps some frames"
        );
        assert_eq!(f.share(0), 4096);
    }
}
