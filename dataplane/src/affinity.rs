//! `sessionAffinity: ClientIP`: a client goes back to the endpoint it last used.
//!
//! kube-proxy's iptables mode builds this from the `recent` match: each endpoint's
//! chain records the client (`-m recent --name KUBE-SEP-... --set`), and the Service
//! chain first sends a client to any endpoint that recorded it within
//! `timeoutSeconds` (`-m recent --rcheck --seconds T --reap`). The window runs from
//! the client's last *new connection* to the Service port, not its last packet:
//! packets of an established connection follow conntrack and never reach those rules.
//! The pipeline does the same: it asks [`AffinityTable::get`] before Maglev for a new
//! flow, and calls [`AffinityTable::set`] for every new flow it creates.
//!
//! This is a cache, preallocated and fixed in size. A key (client, Service port) lives
//! in the first [`PROBE`] slots from its home; a new key takes the first empty slot
//! there, else the one that expires first (which is an expired one if there is any).
//! Losing an entry loses stickiness, never correctness. As slots are never emptied
//! once used, a key is never stored past an empty slot of its window, so lookups stop
//! at the first empty one. The home slot comes from a hash keyed with a per-table
//! random seed, so a client cannot choose addresses that crowd one window and push
//! others' pins out.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::flow::{mix64, Nanos};

/// Slots a key may occupy, from its home slot on.
pub const PROBE: usize = 8;

/// Largest number of slots.
pub const MAX_CAPACITY: usize = 1 << 31;

#[derive(Clone, Copy)]
struct Entry {
    service: u64,
    expires: Nanos,
    client: Ipv4Addr,
    backend: SocketAddrV4,
    used: bool,
}

const _: () = assert!(std::mem::size_of::<Entry>() <= 32);

const UNUSED: Entry = Entry {
    service: 0,
    expires: Nanos(0),
    client: Ipv4Addr::UNSPECIFIED,
    backend: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    used: false,
};

/// Which endpoint each recent client of each Service port was sent to.
pub struct AffinityTable {
    slots: Box<[Entry]>,
    mask: usize,
    seed: u64,
    len: usize,
}

impl AffinityTable {
    /// A cache of `capacity` entries rounded up to a power of two, allocated now and
    /// never again.
    ///
    /// # Panics
    /// If `capacity` is 0 or over [`MAX_CAPACITY`].
    pub fn new(capacity: usize) -> Self {
        Self::with_seed(capacity, RandomState::new().hash_one(0x6166_6669_u64))
    }

    /// As [`AffinityTable::new`] with a chosen hash seed, for reproducible runs: which
    /// entry a full window gives up depends on where keys hash to.
    pub fn with_seed(capacity: usize, seed: u64) -> Self {
        assert!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "affinity table capacity {capacity} is not in 1..={MAX_CAPACITY}"
        );
        let slots = capacity.next_power_of_two();
        AffinityTable {
            slots: vec![UNUSED; slots].into_boxed_slice(),
            mask: slots - 1,
            seed,
            len: 0,
        }
    }

    /// Slots in the cache.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries stored, expired ones included: the table has no clock to tell them
    /// apart until a `get` is asked with the time. Expired entries are the first
    /// overwritten.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The endpoint this client is pinned to for `service` (a stable id of the
    /// Service port), if the pin has not expired.
    #[inline]
    pub fn get(&self, client: Ipv4Addr, service: u64, now: Nanos) -> Option<SocketAddrV4> {
        let home = self.home(client, service);
        for k in 0..self.window() {
            let e = &self.slots[(home + k) & self.mask];
            if !e.used {
                return None;
            }
            if e.client == client && e.service == service {
                return (now < e.expires).then_some(e.backend);
            }
        }
        None
    }

    /// Pins (or re-pins) the client to `backend` for `service` until `expires`.
    #[inline]
    pub fn set(&mut self, client: Ipv4Addr, service: u64, backend: SocketAddrV4, expires: Nanos) {
        let home = self.home(client, service);
        let mut victim = home & self.mask;
        for k in 0..self.window() {
            let i = (home + k) & self.mask;
            let e = &self.slots[i];
            if !e.used || (e.client == client && e.service == service) {
                victim = i;
                break;
            }
            if e.expires < self.slots[victim].expires {
                victim = i;
            }
        }
        if !self.slots[victim].used {
            self.len += 1;
        }
        self.slots[victim] = Entry {
            service,
            expires,
            client,
            backend,
            used: true,
        };
    }

    fn window(&self) -> usize {
        PROBE.min(self.slots.len())
    }

    #[inline]
    fn home(&self, client: Ipv4Addr, service: u64) -> usize {
        let h = mix64(u32::from(client) as u64 ^ mix64(service ^ self.seed));
        h as usize & self.mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Nanos {
        Nanos::from_secs(secs)
    }

    fn client(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn backend(n: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, n), 8080)
    }

    /// A Service port id.
    const SVC: u64 = 0x0a60_000a_0050;

    #[test]
    fn pinned_within_timeout() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(10_800));
        assert_eq!(t.get(client(1), SVC, s(0)), Some(backend(3)));
        assert_eq!(t.get(client(1), SVC, s(10_799)), Some(backend(3)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn forgotten_after_timeout() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(10_800));
        assert_eq!(t.get(client(1), SVC, s(10_800)), None);
        assert_eq!(t.get(client(2), SVC, s(0)), None, "never pinned");
    }

    #[test]
    fn refresh_extends_the_pin() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(100));
        t.set(client(1), SVC, backend(3), s(150));
        assert_eq!(t.get(client(1), SVC, s(120)), Some(backend(3)));
        assert_eq!(t.get(client(1), SVC, s(150)), None);
        assert_eq!(t.len(), 1, "refreshed in place");
    }

    #[test]
    fn repin_moves_the_client() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(100));
        t.set(client(1), SVC, backend(4), s(100));
        assert_eq!(t.get(client(1), SVC, s(0)), Some(backend(4)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn different_services_are_independent() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(100));
        t.set(client(1), SVC + 1, backend(4), s(50));
        assert_eq!(t.get(client(1), SVC, s(60)), Some(backend(3)));
        assert_eq!(t.get(client(1), SVC + 1, s(0)), Some(backend(4)));
        assert_eq!(t.get(client(1), SVC + 1, s(60)), None);
        assert_eq!(t.get(client(1), SVC + 2, s(0)), None);
    }

    #[test]
    fn different_clients_are_independent() {
        let mut t = AffinityTable::new(64);
        t.set(client(1), SVC, backend(3), s(100));
        t.set(client(2), SVC, backend(4), s(100));
        assert_eq!(t.get(client(1), SVC, s(0)), Some(backend(3)));
        assert_eq!(t.get(client(2), SVC, s(0)), Some(backend(4)));
    }

    #[test]
    fn full_cache_replaces_the_oldest_not_a_random_live_one() {
        // Eight slots: every key's probe window is the whole cache.
        let mut t = AffinityTable::new(PROBE);
        let expiries = [107, 103, 101, 106, 104, 102, 108, 105];
        for (n, &e) in expiries.iter().enumerate() {
            t.set(client(n as u8), SVC, backend(n as u8), s(e));
        }
        assert_eq!(t.len(), PROBE);
        t.set(client(100), SVC, backend(100), s(200));
        assert_eq!(t.len(), PROBE);
        assert_eq!(t.get(client(100), SVC, s(0)), Some(backend(100)));
        for (n, &e) in expiries.iter().enumerate() {
            let want = (e != 101).then_some(backend(n as u8));
            assert_eq!(t.get(client(n as u8), SVC, s(0)), want, "client {n}");
        }
    }

    #[test]
    fn full_cache_reuses_expired_entries_first() {
        let mut t = AffinityTable::new(PROBE);
        for n in 0..PROBE as u8 {
            // Client 5's pin has lapsed by t = 50; the others run to 100 + n.
            let e = if n == 5 { s(40) } else { s(100 + n as u64) };
            t.set(client(n), SVC, backend(n), e);
        }
        t.set(client(100), SVC, backend(100), s(200));
        for n in (0..PROBE as u8).filter(|&n| n != 5) {
            assert_eq!(t.get(client(n), SVC, s(50)), Some(backend(n)));
        }
        assert_eq!(t.get(client(100), SVC, s(50)), Some(backend(100)));
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        assert_eq!(AffinityTable::new(1).capacity(), 1);
        assert_eq!(AffinityTable::new(1000).capacity(), 1024);
        let mut t = AffinityTable::new(1);
        t.set(client(1), SVC, backend(1), s(10));
        t.set(client(2), SVC, backend(2), s(20));
        assert_eq!(t.get(client(1), SVC, s(0)), None);
        assert_eq!(t.get(client(2), SVC, s(0)), Some(backend(2)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn many_clients_fit_a_roomy_cache() {
        let mut t = AffinityTable::with_seed(4096, 7);
        for n in 0..1024u32 {
            let c = Ipv4Addr::from(0x0a00_0000 + n);
            t.set(c, SVC, backend((n % 7) as u8), s(100));
        }
        let kept = (0..1024u32)
            .filter(|&n| {
                let c = Ipv4Addr::from(0x0a00_0000 + n);
                t.get(c, SVC, s(0)) == Some(backend((n % 7) as u8))
            })
            .count();
        // At load 1/4 a window of 8 practically never overflows.
        assert!(kept >= 1020, "kept {kept} of 1024");
    }
}
