//! Layer-2 next hops: IPv4 address -> (port, MAC).
//!
//! Filled by learning from received frames (a pod's own frames say where it is; VXLAN
//! from a VTEP says where that VTEP is) and by static entries. A fixed-size,
//! direct-mapped-with-probing table: learning on the fast path never allocates, and
//! when a probe window is full the stalest entry gives way.

use std::net::Ipv4Addr;

use crate::flow::{mix64, Nanos};
use crate::snapshot::Mac;
use crate::verdict::PortId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub port: PortId,
    pub mac: Mac,
}

#[derive(Clone, Copy)]
struct Slot {
    ip: Ipv4Addr,
    n: Neighbour,
    seen: Nanos,
    used: bool,
    /// Static entries are never replaced by learning.
    pinned: bool,
}

const PROBE: usize = 8;

pub struct NeighbourTable {
    slots: Box<[Slot]>,
    mask: usize,
}

impl NeighbourTable {
    /// `capacity` is rounded up to a power of two (at least `PROBE`).
    pub fn new(capacity: usize) -> NeighbourTable {
        let size = capacity.max(PROBE).next_power_of_two();
        let empty = Slot {
            ip: Ipv4Addr::UNSPECIFIED,
            n: Neighbour {
                port: PortId(0),
                mac: Mac::default(),
            },
            seen: Nanos(0),
            used: false,
            pinned: false,
        };
        NeighbourTable {
            slots: vec![empty; size].into_boxed_slice(),
            mask: size - 1,
        }
    }

    #[inline]
    fn home(&self, ip: Ipv4Addr) -> usize {
        mix64(u32::from(ip) as u64) as usize & self.mask
    }

    #[inline]
    pub fn get(&self, ip: Ipv4Addr) -> Option<Neighbour> {
        let h = self.home(ip);
        (0..PROBE)
            .map(|i| &self.slots[(h + i) & self.mask])
            .find(|s| s.used && s.ip == ip)
            .map(|s| s.n)
    }

    /// Records that `ip` is reachable as `n`, learned at `now`. True when that is
    /// news (the address was unknown or has moved), not just a refresh.
    #[inline]
    pub fn learn(&mut self, ip: Ipv4Addr, n: Neighbour, now: Nanos) -> bool {
        self.put(ip, n, now, false)
    }

    /// A static entry (configuration): learning never overrides it.
    pub fn pin(&mut self, ip: Ipv4Addr, n: Neighbour) {
        self.put(ip, n, Nanos(u64::MAX), true);
    }

    /// One probe of the window; true when the entry is new or changed.
    fn put(&mut self, ip: Ipv4Addr, n: Neighbour, now: Nanos, pinned: bool) -> bool {
        let h = self.home(ip);
        let mut victim: Option<usize> = None;
        for i in 0..PROBE {
            let at = (h + i) & self.mask;
            let s = self.slots[at];
            if s.used && s.ip == ip {
                if s.pinned && !pinned {
                    return false;
                }
                let slot = &mut self.slots[at];
                let news = slot.n != n;
                slot.n = n;
                slot.seen = now;
                slot.pinned = pinned;
                return news;
            }
            let better = match victim {
                None => !s.pinned,
                Some(v) => {
                    let cur = &self.slots[v];
                    !s.pinned && cur.used && (!s.used || s.seen < cur.seen)
                }
            };
            if better {
                victim = Some(at);
            }
        }
        let Some(v) = victim else {
            return false; // a window of static entries: nothing to give way
        };
        self.slots[v] = Slot {
            ip,
            n,
            seen: now,
            used: true,
            pinned,
        };
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, Neighbour)> + '_ {
        self.slots.iter().filter(|s| s.used).map(|s| (s.ip, s.n))
    }

    /// Forgets every entry on `port` (an interface that went away), static ones too.
    /// O(capacity): only when a port is removed.
    pub fn forget_port(&mut self, port: PortId) {
        for s in self.slots.iter_mut().filter(|s| s.used && s.n.port == port) {
            s.used = false;
            s.pinned = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(port: u16, last: u8) -> Neighbour {
        Neighbour {
            port: PortId(port),
            mac: Mac([2, 0, 0, 0, 0, last]),
        }
    }

    #[test]
    fn learned_neighbour_is_found_and_relearning_moves_it() {
        let mut t = NeighbourTable::new(64);
        let ip = Ipv4Addr::new(198, 18, 1, 10);
        t.learn(ip, n(1, 1), Nanos(1));
        assert_eq!(t.get(ip), Some(n(1, 1)));
        t.learn(ip, n(2, 2), Nanos(2));
        assert_eq!(t.get(ip), Some(n(2, 2)));
        assert_eq!(t.get(Ipv4Addr::new(198, 18, 1, 11)), None);
    }

    #[test]
    fn pinned_entry_survives_learning_and_pressure() {
        let mut t = NeighbourTable::new(8);
        let ip = Ipv4Addr::new(198, 19, 128, 2);
        t.pin(ip, n(0, 9));
        t.learn(ip, n(3, 3), Nanos(5));
        for i in 0..1000u32 {
            t.learn(Ipv4Addr::from(0xc612_0000 + i), n(1, 1), Nanos(i as u64));
        }
        assert_eq!(t.get(ip), Some(n(0, 9)));
    }

    #[test]
    fn a_removed_port_takes_its_neighbours_with_it() {
        let mut t = NeighbourTable::new(64);
        let (a, b) = (Ipv4Addr::new(198, 18, 1, 10), Ipv4Addr::new(198, 18, 1, 11));
        t.learn(a, n(1, 1), Nanos(1));
        t.pin(b, n(2, 2));
        t.forget_port(PortId(1));
        assert_eq!((t.get(a), t.get(b)), (None, Some(n(2, 2))));
        t.learn(a, n(3, 3), Nanos(2));
        assert_eq!(t.get(a), Some(n(3, 3)), "the slot is free for a new entry");
    }

    #[test]
    fn full_window_replaces_the_stalest_entry() {
        let mut t = NeighbourTable::new(8);
        for i in 0..8u32 {
            t.learn(Ipv4Addr::from(i + 1), n(1, i as u8), Nanos(100 + i as u64));
        }
        // Every slot is used: the entry learned first goes.
        t.learn(Ipv4Addr::from(99u32), n(1, 99), Nanos(1000));
        assert_eq!(t.get(Ipv4Addr::from(99u32)), Some(n(1, 99)));
        assert_eq!(t.get(Ipv4Addr::from(1u32)), None);
        assert_eq!(t.iter().count(), 8);
    }
}
