//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4 and Pseudocode 1).
//!
//! Each backend gets a permutation of the M table slots from two independent hashes of
//! its stable identity: `offset = h1 % M`, `skip = h2 % (M - 1) + 1`,
//! `permutation[j] = (offset + j * skip) % M`. Backends take turns claiming their next
//! unclaimed preferred slot until the table is full. M is prime, so every permutation
//! visits every slot. Weights change how often a backend gets a turn (the paper's
//! suggestion): in each round a backend accrues its weight in credit and takes one
//! turn per `max_weight` of credit.
//!
//! The identity hash is xxHash64 with fixed seeds, so every node and every restart
//! builds the identical table for the same backend set.
//!
//! ## Memory: a size ladder
//! A table of M = 65537 two-byte entries is 128 KiB: fine for a few hundred Services,
//! 1.3 GiB for 10,000. So a Service port's table size is the smallest prime of
//! [`LADDER`] that gives each backend at least [`SLOTS_PER_BACKEND`] slots, capped at
//! `--maglev-table-size`. A function of the backend count alone, so all nodes still
//! agree. Within one rung, Maglev's minimal disruption holds; crossing a rung (the
//! backend count doubling) rebuilds the table at a new size, which moves most new-flow
//! picks but no established flow (conntrack pins those). 10,000 Services x 4 backends
//! use 509-slot tables: about 1 KiB each.

use twox_hash::XxHash64;

/// Slots each backend should get at least, so the table stays balanced to about 1%.
pub const SLOTS_PER_BACKEND: u64 = 100;

/// Table sizes, all prime, roughly doubling.
pub const LADDER: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071,
];

const SEED_OFFSET: u64 = 0x6b78_6470_6f66_6673; // "kxdpoffs"
const SEED_SKIP: u64 = 0x6b78_6470_736b_6970; // "kxdpskip"

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity (kxdp uses `ip << 16 | port`).
    pub id: u64,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// A built lookup table: slot -> index into the backend slice it was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    entries: Box<[u16]>,
}

/// Most backends a table can index (entries are u16).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

impl MaglevTable {
    /// The table for no backends: every lookup misses.
    pub fn empty() -> MaglevTable {
        MaglevTable {
            entries: Box::new([]),
        }
    }

    /// The ladder rule: smallest rung with `SLOTS_PER_BACKEND` slots per backend, at
    /// most `max_m` (which is used as-is when the ladder runs out below it).
    pub fn table_size_for(backends: usize, max_m: u32) -> u32 {
        let want = (backends as u64).saturating_mul(SLOTS_PER_BACKEND);
        LADDER
            .iter()
            .copied()
            .find(|&m| m as u64 >= want && m <= max_m)
            .unwrap_or(max_m)
            .min(max_m)
    }

    /// Builds the table of size `m` (a prime) over `backends`; entries index the slice.
    /// Backends past [`MAX_BACKENDS`] are ignored; weights of 0 count as 1.
    pub fn build(backends: &[MaglevBackend], m: u32) -> MaglevTable {
        let backends = &backends[..backends.len().min(MAX_BACKENDS)];
        if backends.is_empty() || m == 0 {
            return MaglevTable::empty();
        }
        let m64 = m as u64;
        let n = backends.len();
        let mut next = vec![0u64; n];
        let mut offset = vec![0u64; n];
        let mut skip = vec![0u64; n];
        for (i, b) in backends.iter().enumerate() {
            let key = b.id.to_le_bytes();
            offset[i] = XxHash64::oneshot(SEED_OFFSET, &key) % m64;
            skip[i] = if m > 1 {
                XxHash64::oneshot(SEED_SKIP, &key) % (m64 - 1) + 1
            } else {
                1
            };
        }
        let weight = |i: usize| backends[i].weight.max(1) as u64;
        let max_weight = (0..n).map(weight).max().unwrap_or(1);
        let mut credit = vec![0u64; n];
        const EMPTY: u16 = u16::MAX;
        let mut entries = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                credit[i] += weight(i);
                if credit[i] < max_weight {
                    continue;
                }
                credit[i] -= max_weight;
                // next[i] < m always: each backend's permutation has m distinct slots and
                // the loop stops once all m are filled.
                let mut c = (offset[i] + next[i] * skip[i]) % m64;
                while entries[c as usize] != EMPTY {
                    next[i] += 1;
                    c = (offset[i] + next[i] * skip[i]) % m64;
                }
                entries[c as usize] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m64 {
                    break 'fill;
                }
            }
        }
        MaglevTable {
            entries: entries.into_boxed_slice(),
        }
    }

    /// The backend index for a flow hash, or None when the table is empty.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        let m = self.entries.len() as u64;
        if m == 0 {
            return None;
        }
        // Lemire's multiply-shift range reduction of the high 32 bits: no division.
        let slot = ((hash >> 32) * m) >> 32;
        Some(self.entries[slot as usize])
    }

    pub fn size(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    pub fn bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<u16>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(ids: impl IntoIterator<Item = u64>) -> Vec<MaglevBackend> {
        ids.into_iter()
            .map(|id| MaglevBackend { id, weight: 1 })
            .collect()
    }

    #[test]
    fn every_slot_is_filled_with_a_valid_backend() {
        let b = backends(0..7);
        let t = MaglevTable::build(&b, 251);
        assert_eq!(t.size(), 251);
        assert!(t.entries().iter().all(|&e| (e as usize) < b.len()));
    }

    #[test]
    fn ladder_picks_smallest_rung_with_enough_slots_and_respects_the_cap() {
        assert_eq!(MaglevTable::table_size_for(1, 65537), 251);
        assert_eq!(MaglevTable::table_size_for(4, 65537), 509);
        assert_eq!(MaglevTable::table_size_for(100, 65537), 16381);
        assert_eq!(MaglevTable::table_size_for(1000, 65537), 65537);
        assert_eq!(MaglevTable::table_size_for(4, 251), 251);
        assert_eq!(MaglevTable::table_size_for(5000, 65537), 65537);
    }

    #[test]
    fn weights_shift_share_proportionally() {
        let b = vec![
            MaglevBackend { id: 1, weight: 1 },
            MaglevBackend { id: 2, weight: 3 },
        ];
        let t = MaglevTable::build(&b, 65537);
        let heavy = t.entries().iter().filter(|&&e| e == 1).count() as f64;
        assert!((heavy / 65537.0 - 0.75).abs() < 0.01, "share {}", heavy / 65537.0);
    }

    #[test]
    fn empty_table_misses() {
        assert_eq!(MaglevTable::build(&[], 251).lookup(42), None);
    }
}
