//! A worker's UMEM and the pool of frames it owns.
//!
//! Every frame is always in exactly one place: the free pool, a fill ring, an RX
//! batch being processed, a TX ring, or a completion ring on its way back; the worker
//! counts them at exit to prove none leaked.

use std::num::NonZeroU32;

use xsk_rs::config::{QueueSize, UmemConfig};
use xsk_rs::{FrameDesc, Umem};

use crate::frame::HEADROOM;

/// `--frame-size`: bytes per UMEM frame. Half a page holds a 1500-byte-MTU frame with
/// the headroom encapsulation needs, and fits twice the frames in the same locked
/// memory as a page each (deeper rings, see docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSize {
    Half = 2048,
    Page = 4096,
}

/// Headroom the kernel keeps before every received packet (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: usize = 256;

impl FrameSize {
    pub fn bytes(self) -> u32 {
        self as u32
    }

    /// The longest Ethernet frame (headers included) one frame holds.
    pub fn max_packet(self) -> usize {
        self as usize - XDP_HEADROOM - HEADROOM
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UmemError {
    #[error("invalid UMEM settings: {0}")]
    Config(String),
    #[error("cannot create a UMEM of {frames} frames: {err} (memlock limit? see --frames)")]
    Create { frames: u32, err: std::io::Error },
}

pub struct FramePool {
    pub umem: Umem,
    pub free: Vec<FrameDesc>,
    /// Frames this pool started with (its share of the UMEM).
    pub total: usize,
    /// log2 of the chunk (frame) size.
    pub chunk_shift: u32,
}

impl FramePool {
    pub fn new(frames: u32, size: FrameSize, ring_size: u32) -> Result<FramePool, UmemError> {
        let q = |n| QueueSize::new(n).map_err(|e| UmemError::Config(e.to_string()));
        let frame_size = xsk_rs::config::FrameSize::new(size.bytes())
            .map_err(|e| UmemError::Config(e.to_string()))?;
        let cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(q(ring_size)?)
            .comp_queue_size(q(ring_size)?)
            .frame_headroom(HEADROOM as u32)
            .build()
            .map_err(|e| UmemError::Config(e.to_string()))?;
        let n = NonZeroU32::new(frames).ok_or(UmemError::Config("--frames must be > 0".into()))?;
        let (umem, free) = Umem::new(cfg, n, false).map_err(|e| UmemError::Create {
            frames,
            err: std::io::Error::other(e.to_string()),
        })?;
        let total = free.len();
        Ok(FramePool {
            umem,
            free,
            total,
            chunk_shift: size.bytes().trailing_zeros(),
        })
    }

    /// Splits the pool into `n` pools over the same UMEM, one per worker: frames
    /// handed from one worker to another stay valid in every socket.
    pub fn split(self, n: usize) -> Vec<FramePool> {
        let n = n.max(1);
        let share = self.free.len() / n;
        let mut free = self.free;
        (0..n)
            .map(|i| {
                let take = if i + 1 == n { free.len() } else { share };
                let mine: Vec<FrameDesc> = free.drain(free.len() - take..).collect();
                FramePool {
                    umem: self.umem.clone(),
                    total: mine.len(),
                    free: mine,
                    chunk_shift: self.chunk_shift,
                }
            })
            .collect()
    }

    /// The frame `desc` points at as one buffer: the UMEM headroom segment followed
    /// by the data segment, so the packet starts at [`HEADROOM`] and a
    /// [`crate::frame::Frame`] can grow it at the front.
    ///
    /// # Safety
    /// The caller owns the frame (it is in no ring) and drops the slice before the
    /// frame goes back to a ring or [`FramePool::commit`] is called.
    // The UMEM is shared memory that xsk-rs itself hands out mutably from `&Umem`;
    // exclusivity comes from owning the frame, which the caller promises.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buffer<'a>(&'a self, desc: &mut FrameDesc) -> &'a mut [u8] {
        // SAFETY: xsk-rs lays a frame out as [xdp headroom][frame headroom][data], so
        // the HEADROOM bytes before the data segment belong to the same frame.
        unsafe {
            let mut data = self.umem.data_mut(desc);
            let cap = data.cursor().buf_len();
            let ptr = data.contents_mut().as_mut_ptr().sub(HEADROOM);
            std::slice::from_raw_parts_mut(ptr, HEADROOM + cap)
        }
    }

    /// The packet a received frame holds, read-only.
    ///
    /// # Safety
    /// As [`FramePool::buffer`]: the caller owns the frame, and drops the slice before
    /// taking a mutable view of it or giving it back to a ring.
    pub unsafe fn packet(&self, desc: &FrameDesc) -> &[u8] {
        // SAFETY: the caller owns the frame; no mutable view of it is alive.
        unsafe { self.umem.data(desc).contents() }
    }

    /// Asks the CPU to start loading the cache lines of the frame's headers: the
    /// first two lines (every header kxdp reads, VXLAN's included), or just the first
    /// when the packet ends in it, so that a batch of short frames does not queue
    /// twice the misses it needs. Only a hint: no access happens.
    #[inline]
    pub fn prefetch(&self, desc: &FrameDesc) {
        // SAFETY: only the address and length are taken; nothing is read here.
        let packet = unsafe { self.umem.data(desc).contents() };
        let p = packet.as_ptr();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
            if (p as usize % 64) + packet.len() > 64 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }

    /// Records that the frame's packet is now `len` bytes at `start` of its
    /// [`FramePool::buffer`], moving it back to where the descriptor says packets
    /// start (xsk-rs descriptors cannot move their start, so encapsulation and
    /// decapsulation cost one `memmove` of the packet).
    pub fn commit(&self, desc: &mut FrameDesc, start: usize, len: usize) {
        // SAFETY: the caller owns the frame (see `buffer`), and no other view of it is
        // alive: this takes the only one for the duration of the move.
        unsafe {
            if start != HEADROOM {
                let buf = self.buffer(desc);
                buf.copy_within(start..start + len, HEADROOM);
            }
            self.umem.data_mut(desc).cursor().set_pos(len);
        }
    }
}
