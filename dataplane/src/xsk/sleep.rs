//! How an idle worker sleeps on its sockets, and how the control side wakes it.
//!
//! `poll(2)`, not epoll (mio): an epoll registration leaves a waiter on every
//! socket's wait queue for good, and the kernel then runs a wake-up through it for
//! every frame it transmits (`sock_wfree` of each copy-mode skb) and every batch it
//! receives, whether the worker sleeps or not: 5-7 % of a busy worker's core in
//! perf. `poll(2)` puts its waiters on the queues only for the time it sleeps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Wakes a sleeping worker: an eventfd in the worker's poll set.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: plain syscall; the descriptor is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the worker's current or next sleep return at once.
    pub fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd.
        if unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) } >= 0 {
            return Ok(());
        }
        match io::Error::last_os_error() {
            // The counter is saturated: the worker will wake anyway.
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            e => Err(e),
        }
    }

    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; non-blocking.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

/// The descriptors a worker sleeps on: its sockets and its [`Wake`].
pub struct Sleeper {
    fds: Vec<libc::pollfd>,
    wake: std::sync::Arc<Wake>,
}

impl Sleeper {
    pub fn new(sockets: impl IntoIterator<Item = RawFd>) -> io::Result<Sleeper> {
        let wake = std::sync::Arc::new(Wake::new()?);
        let fds = sockets
            .into_iter()
            .chain([wake.fd.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(Sleeper { fds, wake })
    }

    pub fn wake(&self) -> std::sync::Arc<Wake> {
        self.wake.clone()
    }

    /// Sleeps on `sockets` from now on (a port was added or removed).
    pub fn set_sockets(&mut self, sockets: impl IntoIterator<Item = RawFd>) {
        let wake = self.fds.pop();
        self.fds.clear();
        self.fds.extend(sockets.into_iter().map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        self.fds.extend(wake);
    }

    /// Sleeps until a socket has frames to receive, the worker is woken, or
    /// `timeout` passes.
    pub fn sleep(&mut self, timeout: Duration) -> io::Result<()> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as _, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        if self.fds.last().is_some_and(|w| w.revents != 0) {
            self.wake.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wake_ends_the_sleep_and_is_consumed_by_it() {
        let mut s = Sleeper::new([]).unwrap();
        s.wake().wake().unwrap();
        let t = Instant::now();
        s.sleep(Duration::from_secs(5)).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "woken sleep lasted {:?}",
            t.elapsed()
        );
        // Consumed: the next sleep runs to its timeout.
        let t = Instant::now();
        s.sleep(Duration::from_millis(30)).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_readable_socket_ends_the_sleep() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut s = Sleeper::new([a.as_raw_fd()]).unwrap();
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        let t = Instant::now();
        s.sleep(Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
