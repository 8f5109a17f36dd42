//! Next hops the pipeline needs but does not know yet, for the worker to ARP for.
//!
//! The worker holds a frame whose next hop's MAC is unknown (a VTEP's is dropped,
//! `neighbour_unknown`) and the pipeline asks here for the address to be resolved;
//! the worker drains the requests after each batch and sends ARP. A fixed-size queue and a
//! per-address hold-down keep a burst of frames to one silent pod from turning into
//! a burst of ARP requests, and nothing here allocates after construction.

use std::net::Ipv4Addr;

use crate::flow::{mix64, Nanos};

/// Where to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A local pod: it sits behind one of the pod ports (which one is what ARP tells).
    PodPorts,
    /// A VTEP or another host on the underlay.
    Uplink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub ip: Ipv4Addr,
    pub via: Via,
}

/// Most requests queued between two drains; more in one batch wait for the next.
pub const QUEUE: usize = 64;
/// How long an address is not asked for again: a frame held for it (at most a
/// second, see `worker.rs`) is asked for again at most three times more.
pub const HOLD_DOWN: Nanos = Nanos(250_000_000);
const RECENT: usize = 1024;

pub struct ResolveQueue {
    queue: [Option<Request>; QUEUE],
    len: usize,
    /// Direct-mapped memory of recent requests: (address, when).
    recent: Box<[(Ipv4Addr, Nanos)]>,
}

impl Default for ResolveQueue {
    fn default() -> Self {
        ResolveQueue {
            queue: [None; QUEUE],
            len: 0,
            recent: vec![(Ipv4Addr::UNSPECIFIED, Nanos(0)); RECENT].into_boxed_slice(),
        }
    }
}

impl ResolveQueue {
    /// Asks for `ip` unless it was asked for within [`HOLD_DOWN`] or the queue is full.
    pub fn want(&mut self, ip: Ipv4Addr, via: Via, now: Nanos) -> bool {
        let slot = mix64(u32::from(ip) as u64) as usize % RECENT;
        let (last_ip, at) = self.recent[slot];
        let asked_recently = last_ip == ip && at.0 != 0 && now.0.saturating_sub(at.0) < HOLD_DOWN.0;
        if asked_recently || self.len == QUEUE {
            return false;
        }
        self.recent[slot] = (ip, Nanos(now.0.max(1)));
        self.queue[self.len] = Some(Request { ip, via });
        self.len += 1;
        true
    }

    /// Forgets what was asked: a port was added, and questions asked before it was
    /// there (or before the steering program was on it) may have an answer now.
    pub fn forget_asked(&mut self) {
        self.recent.fill((Ipv4Addr::UNSPECIFIED, Nanos(0)));
    }

    /// Hands over the queued requests and empties the queue.
    pub fn drain(&mut self) -> impl Iterator<Item = Request> + '_ {
        let n = std::mem::take(&mut self.len);
        self.queue[..n].iter_mut().filter_map(Option::take)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);

    #[test]
    fn an_address_is_asked_for_once_per_hold_down() {
        let mut q = ResolveQueue::default();
        assert!(q.want(IP, Via::PodPorts, Nanos(10)));
        assert!(!q.want(IP, Via::PodPorts, Nanos(20)));
        assert_eq!(
            q.drain().collect::<Vec<_>>(),
            vec![Request {
                ip: IP,
                via: Via::PodPorts
            }]
        );
        assert!(!q.want(IP, Via::PodPorts, Nanos(30)));
        assert!(q.want(IP, Via::PodPorts, Nanos(10 + HOLD_DOWN.0)));
    }

    #[test]
    fn the_queue_is_bounded_and_drains_empty() {
        let mut q = ResolveQueue::default();
        let asked = (0..200u32)
            .filter(|i| q.want(Ipv4Addr::from(0xc612_0100 + i), Via::Uplink, Nanos(5)))
            .count();
        assert_eq!(asked, QUEUE);
        assert_eq!(q.drain().count(), QUEUE);
        assert!(q.is_empty());
        assert_eq!(q.drain().count(), 0);
    }
}
