//! A frame in a buffer with headroom: the bytes the pipeline reads and rewrites.
//!
//! The pipeline never copies a frame: it rewrites headers in place and moves the start
//! to add (encapsulation) or strip (decapsulation) outer headers. On AF_XDP the buffer
//! is a UMEM chunk; in tests and `kxdp replay` it is a plain `Vec<u8>`.

use crate::verdict::PortId;

/// Headroom kxdp asks for in every buffer: a VXLAN encapsulation (50 bytes) rounded up.
pub const HEADROOM: usize = 64;

pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    pub ingress: PortId,
}

impl<'a> Frame<'a> {
    /// The frame occupies `buf[start..start + len]`; bytes before `start` are headroom
    /// and bytes after it are tailroom the pipeline may use to build a reply.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize, ingress: PortId) -> Frame<'a> {
        let start = start.min(buf.len());
        let end = (start + len).min(buf.len());
        Frame {
            buf,
            start,
            end,
            ingress,
        }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Offset of the frame inside its buffer (what an AF_XDP descriptor carries).
    pub fn start(&self) -> usize {
        self.start
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Bytes from the frame's start to the end of the buffer.
    pub fn capacity(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Grows the frame at the front by `n` bytes; false when the headroom is short.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }

    /// Strips `n` bytes from the front (n <= len).
    #[inline]
    pub fn pull_front(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Sets the frame's length (within capacity), e.g. to drop Ethernet padding or to
    /// cover a reply built in place.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.end = (self.start + len).min(self.buf.len());
    }
}
