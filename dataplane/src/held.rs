//! Frames a worker holds while their next hop's MAC is asked for (ARP), as the
//! kernel queues packets for an unresolved neighbour ([`Verdict::Resolve`]).
//!
//! Dropping them instead cost the first connection to a pod that had not spoken yet
//! a SYN retransmission: one second. Bounds: [`PER_ADDRESS`] frames an address,
//! [`MAX`] in all, for at most [`WAIT_AT_MOST`]. An address is asked for again every
//! [`ASK_AGAIN_EVERY`] (kept here per address: the pipeline's hold-down table is
//! direct-mapped, and two addresses sharing a slot would have it ask every loop).
//! An address whose frames waited in vain (a deleted pod's) has its next frames
//! refused for [`UNANSWERED_FOR`], as the kernel fails a neighbour, so that it cannot
//! crowd new pods' frames out. Nothing here allocates after construction.
//!
//! [`Verdict::Resolve`]: crate::verdict::Verdict::Resolve

use std::net::Ipv4Addr;

use xsk_rs::FrameDesc;

use crate::flow::Nanos;
use crate::frame::HEADROOM;
use crate::pipeline::Pipeline;
use crate::resolve::Via;
use crate::xsk::umem::FramePool;

/// Frames held at most, in all and per address (the kernel's default holds about a
/// hundred per neighbour), and for how long.
pub const MAX: usize = 256;
pub const PER_ADDRESS: usize = 16;
pub const WAIT_AT_MOST: Nanos = Nanos(1_000_000_000);
/// How often an address frames wait for is asked for again.
pub const ASK_AGAIN_EVERY: Nanos = crate::resolve::HOLD_DOWN;
/// Addresses remembered as unanswered, and for how long.
const UNANSWERED: usize = 16;
pub const UNANSWERED_FOR: Nanos = Nanos(1_000_000_000);

#[derive(Clone, Copy, Debug)]
struct Waiting {
    desc: FrameDesc,
    ip: Ipv4Addr,
    via: Via,
    since: Nanos,
    /// When its address was last asked for.
    asked: Nanos,
}

pub struct Held {
    frames: Vec<Waiting>,
    /// Addresses that did not answer, and when (a ring, one entry an address).
    unanswered: [(Ipv4Addr, Nanos); UNANSWERED],
    next: usize,
    /// Frames held; sent once their neighbour was known; dropped (refused, or
    /// waited too long).
    pub held: u64,
    pub sent: u64,
    pub dropped: u64,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            frames: Vec::with_capacity(MAX),
            unanswered: [(Ipv4Addr::UNSPECIFIED, Nanos(0)); UNANSWERED],
            next: 0,
            held: 0,
            sent: 0,
            dropped: 0,
        }
    }
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Holds `desc`, a finished frame waiting for `ip`'s MAC (asked for at `now`),
    /// or refuses it (no room, or `ip` went unanswered lately) and gives it back to
    /// be freed, counted dropped.
    pub fn hold(
        &mut self,
        desc: FrameDesc,
        ip: Ipv4Addr,
        via: Via,
        now: Nanos,
    ) -> Option<FrameDesc> {
        let failed = self
            .unanswered
            .iter()
            .any(|&(a, at)| a == ip && at.0 != 0 && now.0.saturating_sub(at.0) < UNANSWERED_FOR.0);
        let room = self.frames.len() < MAX
            && !failed
            && self.frames.iter().filter(|w| w.ip == ip).count() < PER_ADDRESS;
        if !room {
            self.dropped += 1;
            return Some(desc);
        }
        self.held += 1;
        self.frames.push(Waiting {
            desc,
            ip,
            via,
            since: now,
            asked: now,
        });
        None
    }

    /// Sends the frames whose next hop `pipeline` knows now, in the order they came:
    /// their Ethernet addresses written (the packet starts at [`HEADROOM`] of its
    /// buffer), each put on its port's TX batch in `out`.
    pub fn release(&mut self, pipeline: &Pipeline, pool: &FramePool, out: &mut [Vec<FrameDesc>]) {
        let before = self.frames.len();
        self.frames.retain_mut(|w| {
            let Some((port, dst, src)) = pipeline.resolved(w.ip) else {
                return true;
            };
            // SAFETY: a held frame is the worker's, in no ring; the view ends here.
            let buf = unsafe { pool.buffer(&mut w.desc) };
            buf[HEADROOM..HEADROOM + 6].copy_from_slice(&dst.0);
            buf[HEADROOM + 6..HEADROOM + 12].copy_from_slice(&src.0);
            out[port.0 as usize].push(w.desc);
            false
        });
        self.sent += (before - self.frames.len()) as u64;
    }

    /// Asks again for the addresses frames still wait for (once per address every
    /// [`ASK_AGAIN_EVERY`]), and drops into `free` the frames that waited
    /// [`WAIT_AT_MOST`], remembering their address as unanswered.
    pub fn expire(&mut self, pipeline: &mut Pipeline, now: Nanos, free: &mut Vec<FrameDesc>) {
        for i in 0..self.frames.len() {
            let w = self.frames[i];
            if now.0.saturating_sub(w.asked.0) >= ASK_AGAIN_EVERY.0 {
                // Unless the pipeline's own hold-down says it was just asked.
                pipeline.resolve_requests().want(w.ip, w.via, now);
                for other in self.frames.iter_mut().filter(|o| o.ip == w.ip) {
                    other.asked = now;
                }
            }
        }
        let before = self.frames.len();
        let (unanswered, next) = (&mut self.unanswered, &mut self.next);
        let stamp = Nanos(now.0.max(1));
        self.frames.retain(|w| {
            let expired = now.0.saturating_sub(w.since.0) > WAIT_AT_MOST.0;
            if expired {
                free.push(w.desc);
                match unanswered.iter_mut().find(|(a, _)| *a == w.ip) {
                    Some(entry) => entry.1 = stamp,
                    None => {
                        unanswered[*next] = (w.ip, stamp);
                        *next = (*next + 1) % UNANSWERED;
                    }
                }
            }
            !expired
        });
        self.dropped += (before - self.frames.len()) as u64;
    }

    /// Drops every held frame into `free` (the worker stops).
    pub fn drop_all(&mut self, free: &mut Vec<FrameDesc>) {
        self.dropped += self.frames.len() as u64;
        free.extend(self.frames.drain(..).map(|w| w.desc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Config;
    use crate::ports::Ports;

    const MS: u64 = 1_000_000;
    const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const DEAD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);

    fn pipeline() -> Pipeline {
        Pipeline::new(Config::new(Ports::new(Vec::new())))
    }

    fn asked(p: &mut Pipeline) -> Vec<Ipv4Addr> {
        p.resolve_requests().drain().map(|r| r.ip).collect()
    }

    #[test]
    fn frames_are_held_within_bounds_per_address_and_in_all() {
        let mut h = Held::default();
        for _ in 0..PER_ADDRESS {
            assert!(h
                .hold(FrameDesc::default(), POD, Via::PodPorts, Nanos(MS))
                .is_none());
        }
        assert!(h
            .hold(FrameDesc::default(), POD, Via::PodPorts, Nanos(MS))
            .is_some());
        for i in 0..MAX as u32 {
            let ip = Ipv4Addr::from(0xc612_0200 + i / PER_ADDRESS as u32);
            let _ = h.hold(FrameDesc::default(), ip, Via::PodPorts, Nanos(MS));
        }
        assert_eq!(h.len(), MAX);
        assert_eq!((h.held, h.dropped), (MAX as u64, 1 + PER_ADDRESS as u64));
    }

    #[test]
    fn an_address_is_asked_again_once_a_period_and_given_up_after_a_second() {
        let (mut h, mut p, mut free) = (Held::default(), pipeline(), Vec::new());
        for _ in 0..3 {
            assert!(h
                .hold(FrameDesc::default(), DEAD, Via::PodPorts, Nanos(MS))
                .is_none());
        }
        h.expire(&mut p, Nanos(100 * MS), &mut free);
        assert!(
            asked(&mut p).is_empty(),
            "asked at hold time, not again yet"
        );
        h.expire(&mut p, Nanos(MS + ASK_AGAIN_EVERY.0), &mut free);
        assert_eq!(asked(&mut p), vec![DEAD], "once for its three frames");
        h.expire(&mut p, Nanos(2 * MS + ASK_AGAIN_EVERY.0), &mut free);
        assert!(asked(&mut p).is_empty());
        assert_eq!(h.len(), 3);

        // A second on, the frames are dropped and the address is refused a while.
        let late = Nanos(2 * MS + WAIT_AT_MOST.0);
        h.expire(&mut p, late, &mut free);
        assert_eq!((h.len(), free.len(), h.dropped), (0, 3, 3));
        let later = Nanos(late.0 + UNANSWERED_FOR.0 / 2);
        assert!(h
            .hold(FrameDesc::default(), DEAD, Via::PodPorts, later)
            .is_some());
        assert!(h
            .hold(FrameDesc::default(), POD, Via::PodPorts, later)
            .is_none());
        let much_later = Nanos(late.0 + UNANSWERED_FOR.0 + MS);
        assert!(h
            .hold(FrameDesc::default(), DEAD, Via::PodPorts, much_later)
            .is_none());
    }

    #[test]
    fn many_dead_addresses_each_keep_their_own_entry() {
        let (mut h, mut p, mut free) = (Held::default(), pipeline(), Vec::new());
        let dead = |i: u32| Ipv4Addr::from(0xc612_0300 + i);
        // dead(1)'s frame expires first, then dead(0)'s sixteen, one a loop: with
        // an entry per frame, they would overwrite dead(1)'s.
        let _ = h.hold(FrameDesc::default(), dead(1), Via::PodPorts, Nanos(0));
        for t in 0..PER_ADDRESS as u64 {
            let _ = h.hold(
                FrameDesc::default(),
                dead(0),
                Via::PodPorts,
                Nanos((t + 1) * MS),
            );
        }
        for t in 0..=PER_ADDRESS as u64 {
            h.expire(&mut p, Nanos(WAIT_AT_MOST.0 + t * MS + MS / 2), &mut free);
        }
        assert_eq!(free.len(), PER_ADDRESS + 1);
        let now = Nanos(WAIT_AT_MOST.0 + 40 * MS);
        for i in 0..2 {
            assert!(
                h.hold(FrameDesc::default(), dead(i), Via::PodPorts, now)
                    .is_some(),
                "{i}"
            );
        }
    }

    #[test]
    fn every_frame_held_at_stop_is_given_back() {
        let (mut h, mut free) = (Held::default(), Vec::new());
        for _ in 0..5 {
            let _ = h.hold(FrameDesc::default(), POD, Via::PodPorts, Nanos(MS));
        }
        h.drop_all(&mut free);
        assert_eq!((free.len(), h.dropped, h.len()), (5, 5, 0));
    }
}
