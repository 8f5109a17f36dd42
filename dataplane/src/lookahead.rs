//! Software-pipelined conntrack prefetching over a stream of frames.
//!
//! With many live flows, a frame's conntrack lookup misses the cache twice, one miss
//! waiting on the other: the index slot, then the flow it names (see
//! [`crate::conntrack`], "Prefetching a batch"). Handling frame `i`, a worker can
//! start both misses for later frames so they are in flight behind frame `i`'s work:
//!
//! ```text
//! frame:   i            i + FLOW_AHEAD            i + INDEX_AHEAD
//!          handle,      prefetch its flow         read its tuple, hash it,
//!          lookup with  (the index slot has        prefetch its index slot
//!          its probe    arrived by now)
//! ```
//!
//! [`Lookahead`] keeps what stage one learned about each frame until the frame is
//! handled: its probe (the tuple and its hash, which the lookup then reuses instead
//! of hashing again) and whether it is a new flow. A frame of the same flow as the
//! one before it reuses that frame's probe and loads nothing: its lines are already
//! on their way, and a burst of one flow then costs a tuple read and compare per
//! frame rather than a hash and two prefetches.
//!
//! [`crate::pipeline::Pipeline::process`] runs a batch this way; a worker that walks
//! its RX ring does the same with [`Lookahead::index`], [`Lookahead::flow`] and
//! [`crate::pipeline::Pipeline::handle_probed`].

use crate::conntrack::Probe;
use crate::pipeline::Pipeline;
use crate::snapshot::Snapshot;
use crate::verdict::PortId;

/// Frames between stage one (tuple, hash, index slot) and handling. Chosen by
/// measurement (docs/results.md): from 4 to 14 ahead the 65,536-flow benchmark is
/// the same within noise, 2 is worse; fewer means less to wait for at the start of a
/// batch.
pub const INDEX_AHEAD: usize = 6;

/// Frames between stage two (the flow's slab entry) and handling: half of
/// [`INDEX_AHEAD`], so that each stage has the same time to land.
pub const FLOW_AHEAD: usize = INDEX_AHEAD / 2;

/// Probes kept: frames `i..=i + INDEX_AHEAD` while frame `i` is handled.
const RING: usize = 8;
const _: () = assert!(INDEX_AHEAD < RING && RING.is_power_of_two());

#[derive(Clone, Copy)]
struct Ahead {
    probe: Option<Probe>,
    /// Not the flow of the frame before: stage two has something to load.
    fresh: bool,
}

/// What stage one learned about the frames between the one being handled and
/// [`INDEX_AHEAD`] frames later, by position in the stream.
pub struct Lookahead {
    ahead: [Ahead; RING],
    last: Option<Probe>,
}

impl Default for Lookahead {
    fn default() -> Lookahead {
        Lookahead::new()
    }
}

impl Lookahead {
    pub fn new() -> Lookahead {
        Lookahead {
            ahead: [Ahead {
                probe: None,
                fresh: false,
            }; RING],
            last: None,
        }
    }

    /// Stage one for the frame at position `j` (from `ingress`, bytes `frame`),
    /// [`INDEX_AHEAD`] frames before it is handled: reads its conntrack key and,
    /// unless the frame before was of the same flow, hashes it and prefetches its
    /// index slot. Call it for positions in order; a frame without a key (ARP,
    /// malformed bytes) gets no probe.
    // Always inlined, as everything it calls: the probe travels in registers.
    #[inline(always)]
    pub fn index(
        &mut self,
        p: &Pipeline,
        snap: &Snapshot,
        j: usize,
        ingress: PortId,
        frame: &[u8],
    ) {
        let slot = &mut self.ahead[j % RING];
        let Some(t) = p.conntrack_key(snap, ingress, frame) else {
            *slot = Ahead {
                probe: None,
                fresh: false,
            };
            return;
        };
        *slot = match self.last {
            Some(last) if *last.key() == t => Ahead {
                probe: Some(last),
                fresh: false,
            },
            _ => {
                let probe = p.flows().prefetch(&t);
                self.last = Some(probe);
                Ahead {
                    probe: Some(probe),
                    fresh: true,
                }
            }
        };
    }

    /// Stage two for the frame at position `j`, [`FLOW_AHEAD`] frames before it is
    /// handled: prefetches the flow its index slot names.
    #[inline(always)]
    pub fn flow(&self, p: &Pipeline, j: usize) {
        if let Ahead {
            probe: Some(probe),
            fresh: true,
        } = &self.ahead[j % RING]
        {
            p.flows().prefetch_flow(probe);
        }
    }

    /// The probe of the frame at position `j`, for
    /// [`crate::pipeline::Pipeline::handle_probed`].
    #[inline(always)]
    pub fn probe(&self, j: usize) -> Option<&Probe> {
        self.ahead[j % RING].probe.as_ref()
    }
}
