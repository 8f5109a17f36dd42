//! One AF_XDP socket on one interface queue, with its four rings.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{BindFlags, LibxdpFlags, QueueSize, SocketConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::umem::FramePool;
use crate::verdict::PortId;

/// `--bind`: how the socket gets frames from the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// The kernel copies frames into the UMEM (every driver; veth offers only this).
    Copy,
    /// The NIC DMAs into the UMEM (drivers with AF_XDP zero-copy support).
    ZeroCopy,
    /// Zero-copy where the driver offers it, else copy.
    Auto,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot bind an AF_XDP socket to {iface} queue {queue} ({mode:?}): {err}")]
pub struct BindError {
    pub iface: String,
    pub queue: u32,
    pub mode: BindMode,
    pub err: String,
}

/// The kernel's counts of one socket's lost frames (`XDP_STATISTICS`), cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    pub iface: String,
    /// Frames the kernel could not place in the UMEM (no free frame, or too long).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// Times the kernel wanted a frame and found the fill ring empty.
    pub fill_ring_empty: u64,
    /// Descriptors the kernel rejected, on the RX and TX side.
    pub rx_invalid: u64,
    pub tx_invalid: u64,
}

pub struct XskPort {
    pub id: PortId,
    pub name: String,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fill: FillQueue,
    pub comp: CompQueue,
    /// Frames the kernel holds through this socket's fill and TX rings.
    pub in_fill: usize,
    pub in_tx: usize,
    /// Those frames, oldest first, so that [`XskPort::close`] can take them back when
    /// the interface goes away with them (a pod's veth, deleted with the pod). A frame
    /// the kernel gives back (received, or its transmission completed) is retired by
    /// its UMEM chunk: nearly always the oldest, as the rings are FIFO; one that comes
    /// back early (TX completes when the skb is freed) is found and taken out.
    held_fill: VecDeque<FrameDesc>,
    held_tx: VecDeque<FrameDesc>,
    /// log2 of the UMEM chunk size: a frame's identity is `addr >> chunk_shift` (the
    /// kernel hands frames back at an offset into their chunk).
    chunk_shift: u32,
    pub ring_size: u32,
    /// Frames one copy-mode sendto() transmits at most (see `raise_tx_budget`).
    pub tx_budget: u32,
}

impl XskPort {
    pub fn open(
        pool: &FramePool,
        id: PortId,
        iface: &str,
        queue: u32,
        ring_size: u32,
        mode: BindMode,
    ) -> Result<XskPort, BindError> {
        Self::open_on(
            &pool.umem,
            pool.chunk_shift,
            id,
            iface,
            queue,
            ring_size,
            mode,
        )
    }

    /// [`XskPort::open`] with only the UMEM, for a thread that owns no frames (the
    /// control side opens pods' sockets, so that no worker waits on the kernel).
    pub fn open_on(
        umem: &Umem,
        chunk_shift: u32,
        id: PortId,
        iface: &str,
        queue: u32,
        ring_size: u32,
        mode: BindMode,
    ) -> Result<XskPort, BindError> {
        let err = |mode, e: String| BindError {
            iface: iface.into(),
            queue,
            mode,
            err: e,
        };
        let attempt = |flags: BindFlags| {
            let q = QueueSize::new(ring_size).map_err(|e| e.to_string())?;
            let cfg = SocketConfig::builder()
                .rx_queue_size(q)
                .tx_queue_size(q)
                // kxdp loads its own steering program and fills the XSKMAP itself.
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            let name = iface
                .parse()
                .map_err(|_| format!("bad interface name {iface:?}"))?;
            // SAFETY: the socket keeps a handle on the UMEM (xsk-rs counts them), so
            // the UMEM outlives it wherever the socket goes, as xsk-rs requires.
            unsafe { Socket::new(cfg, umem, &name, queue) }.map_err(|e| format!("{e}"))
        };
        let (tx, rx, rings) = match mode {
            BindMode::Copy => attempt(BindFlags::XDP_COPY).map_err(|e| err(mode, e))?,
            BindMode::ZeroCopy => attempt(BindFlags::XDP_ZEROCOPY).map_err(|e| err(mode, e))?,
            BindMode::Auto => attempt(BindFlags::XDP_ZEROCOPY)
                .or_else(|_| attempt(BindFlags::XDP_COPY))
                .map_err(|e| err(mode, e))?,
        };
        let (fill, comp) =
            rings.ok_or_else(|| err(mode, "no fill/completion rings for this queue".into()))?;
        let tx_budget = raise_tx_budget(rx.fd().as_raw_fd(), ring_size);
        Ok(XskPort {
            id,
            name: iface.into(),
            tx,
            rx,
            fill,
            comp,
            in_fill: 0,
            in_tx: 0,
            // Fill and RX rings, TX and completion rings: `ring_size` frames each, so
            // never reallocated.
            held_fill: VecDeque::with_capacity(2 * ring_size as usize),
            held_tx: VecDeque::with_capacity(2 * ring_size as usize),
            chunk_shift,
            ring_size,
            tx_budget,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// The kernel's statistics of this socket (one getsockopt; all zero if it fails).
    pub fn stats(&self) -> SocketStats {
        let s = self.rx.fd().xdp_statistics().unwrap_or_default();
        SocketStats {
            iface: self.name.clone(),
            rx_dropped: s.rx_dropped(),
            rx_ring_full: s.rx_ring_full(),
            fill_ring_empty: s.rx_fill_ring_empty_descs(),
            rx_invalid: s.rx_invalid_descs(),
            tx_invalid: s.tx_invalid_descs(),
        }
    }

    /// Gives the kernel free frames to receive into, until it holds `share` of them
    /// (in the fill ring, or received and not yet taken from the RX ring).
    pub fn refill(&mut self, free: &mut Vec<FrameDesc>, share: usize) {
        let short = share.saturating_sub(self.in_fill).min(free.len());
        // nb_free is not capped at its argument: it says how much room the ring has.
        let want = (self.fill.nb_free(short as u32) as usize).min(short);
        if want > 0 {
            let at = free.len() - want;
            // SAFETY: the frames come from the free pool: nobody else uses them.
            let n = unsafe { self.fill.produce(&free[at..]) };
            self.held_fill.extend(&free[at..at + n]);
            free.truncate(free.len() - n);
            self.in_fill += n;
        }
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Takes back frames the kernel has transmitted.
    pub fn reap(&mut self, free: &mut Vec<FrameDesc>, scratch: &mut [FrameDesc]) -> usize {
        // SAFETY: completed descriptors are ours again.
        let n = unsafe { self.comp.consume(scratch) };
        self.in_tx -= n;
        retire(&mut self.held_tx, &scratch[..n], self.chunk_shift);
        free.extend_from_slice(&scratch[..n]);
        n
    }

    /// Receives up to `out.len()` frames.
    pub fn receive(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: received descriptors are ours until we hand them to a ring.
        let n = unsafe { self.rx.consume(out) };
        self.in_fill -= n;
        retire(&mut self.held_fill, &out[..n], self.chunk_shift);
        n
    }

    /// Queues frames for transmission; returns how many the TX ring took.
    pub fn send(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the frames are ours and stay untouched until they complete.
        let n = unsafe { self.tx.produce(descs) };
        self.in_tx += n;
        self.held_tx.extend(&descs[..n]);
        n
    }

    /// Closes the socket and gives back to `free` the frames the kernel held through
    /// it. Closing the last descriptor unbinds the socket and waits for the kernel's
    /// receive path to let go of it (`xsk_release`, an RCU grace period: milliseconds,
    /// which is why the control side closes pods' sockets, not a worker), so the
    /// frames are ours after.
    pub fn close(mut self, free: &mut Vec<FrameDesc>) {
        let (fill, tx) = (
            std::mem::take(&mut self.held_fill),
            std::mem::take(&mut self.held_tx),
        );
        drop(self);
        free.extend(fill);
        free.extend(tx);
    }

    /// Copy-mode transmission happens inside sendto(), at most the socket's TX budget
    /// a call (32 unless `raise_tx_budget` took): kick until the ring is drained or
    /// the kernel stops taking frames.
    pub fn kick(&mut self) {
        let mut tries = 0;
        while self.in_tx > 0 && self.tx.nb_free_exact() < self.ring_size && tries < 64 {
            if self.tx.wakeup().is_err() {
                break;
            }
            tries += 1;
        }
    }
}

/// Takes the frames of `done` out of `held`: the oldest, unless one came back early.
#[inline]
fn retire(held: &mut VecDeque<FrameDesc>, done: &[FrameDesc], shift: u32) {
    for d in done {
        let chunk = d.addr() >> shift;
        if held.front().is_some_and(|h| h.addr() >> shift == chunk) {
            held.pop_front();
        } else if let Some(i) = held.iter().position(|h| h.addr() >> shift == chunk) {
            held.remove(i);
        }
    }
}

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17): how many frames one copy-mode sendto() may
/// transmit. The default, 32, makes a worker's batch of 64 cost two system calls.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const DEFAULT_TX_BUDGET: u32 = 32;

/// Lets one sendto() drain the whole TX ring; returns the budget in force. Older
/// kernels refuse the option (ENOPROTOOPT) and keep 32 a call, which only costs
/// more system calls; so does a ring smaller than 32 (the kernel's lower bound).
fn raise_tx_budget(fd: RawFd, ring_size: u32) -> u32 {
    if ring_size <= DEFAULT_TX_BUDGET {
        return DEFAULT_TX_BUDGET;
    }
    // SAFETY: setsockopt on the socket's fd with a u32 value of its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&ring_size as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        ring_size
    } else {
        DEFAULT_TX_BUDGET
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::HEADROOM;
    use crate::xsk::umem::FrameSize;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A namespace holding a veth pair `xa`–`xb`, both up; deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(what: &str) -> Netns {
            let ns = Netns(format!("kxdp-{what}-{}", std::process::id()));
            let ip = |args: &str| {
                let ok = Command::new("ip")
                    .args(args.split(' '))
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "ip {args}");
            };
            ip(&format!("netns add {}", ns.0));
            ip(&format!("-n {} link add xa type veth peer name xb", ns.0));
            ip(&format!("-n {} link set xa up", ns.0));
            ip(&format!("-n {} link set xb up", ns.0));
            ns
        }

        /// Moves the calling thread into the namespace.
        fn enter(&self) {
            let f = std::fs::File::open(format!("/var/run/netns/{}", self.0)).unwrap();
            // SAFETY: setns on a valid fd; changes only this thread's namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// (major, minor) of the running kernel.
    fn kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    }

    /// Frames come back in order, or one early (TX completes when its skb is freed):
    /// either way exactly the frames the kernel still holds stay.
    #[test]
    fn frames_coming_back_out_of_order_are_retired_by_identity() {
        // SAFETY: plain libc getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: a UMEM needs root");
            return;
        }
        let pool = FramePool::new(64, FrameSize::Half, 64).unwrap();
        let f: Vec<FrameDesc> = pool.free[..5].to_vec();
        let mut held: VecDeque<FrameDesc> = f.iter().copied().collect();
        let left = |h: &VecDeque<FrameDesc>| h.iter().map(|d| d.addr()).collect::<Vec<_>>();
        retire(&mut held, &f[..1], pool.chunk_shift);
        retire(&mut held, &[f[3], f[1]], pool.chunk_shift);
        assert_eq!(left(&held), vec![f[2].addr(), f[4].addr()]);
        retire(&mut held, &[f[4], f[2]], pool.chunk_shift);
        assert!(held.is_empty());
    }

    /// A pod's veth goes away with frames in the socket's fill and TX rings: closing
    /// the socket gives every one of them back.
    #[test]
    fn closing_a_socket_whose_interface_is_gone_gives_its_frames_back() {
        // SAFETY: plain libc getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: AF_XDP sockets and namespaces need root");
            return;
        }
        let ns = Netns::new("close");
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter();
                let mut pool = FramePool::new(256, FrameSize::Half, 64).unwrap();
                let total = pool.free.len();
                let mut port =
                    XskPort::open(&pool, PortId(0), "xa", 0, 64, BindMode::Copy).unwrap();
                port.refill(&mut pool.free, 48);
                let batch: Vec<FrameDesc> = pool.free.drain(..16).collect();
                assert_eq!(port.send(&batch), 16);
                assert_eq!((port.in_fill, port.in_tx), (48, 16));
                assert_eq!(pool.free.len(), total - 64);
                let ok = Command::new("ip")
                    .args(["link", "del", "xa"])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "ip link del xa");
                port.close(&mut pool.free);
                assert_eq!(pool.free.len(), total);
                let mut addrs: Vec<usize> = pool.free.iter().map(|d| d.addr()).collect();
                addrs.sort_unstable();
                addrs.dedup();
                assert_eq!(addrs.len(), total, "a frame given back twice");
            });
        });
    }

    /// With the budget raised, one sendto() transmits a whole batch of 64 frames; a
    /// kernel without the option (before 6.17) transmits 32 and keeps the rest.
    #[test]
    fn one_sendto_transmits_a_whole_batch_where_the_kernel_allows_it() {
        // SAFETY: plain libc getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: AF_XDP sockets and namespaces need root");
            return;
        }
        let ns = Netns::new("txbudget");
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter();
                let mut pool = FramePool::new(256, FrameSize::Half, 64).unwrap();
                let mut port =
                    XskPort::open(&pool, PortId(0), "xa", 0, 64, BindMode::Copy).unwrap();
                let expected = if kernel() >= (6, 17) { 64 } else { 32 };
                assert_eq!(port.tx_budget, expected);

                // 64 broadcast frames of an unused EtherType: xb's stack drops them.
                let mut batch: Vec<FrameDesc> = pool.free.drain(..64).collect();
                for desc in &mut batch {
                    // SAFETY: the frame is ours, in no ring.
                    let buf = unsafe { pool.buffer(desc) };
                    let frame = &mut buf[HEADROOM..HEADROOM + 60];
                    frame.fill(0);
                    frame[..6].fill(0xff);
                    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
                    pool.commit(desc, HEADROOM, 60);
                }
                assert_eq!(port.send(&batch), 64);
                assert!(port.tx.wakeup().is_ok(), "sendto");

                let mut scratch = vec![FrameDesc::default(); 64];
                let mut done = 0;
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline && done < 64 {
                    done += port.reap(&mut pool.free, &mut scratch);
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert_eq!(done, expected as usize, "frames one sendto() transmitted");
            });
        });
    }
}
