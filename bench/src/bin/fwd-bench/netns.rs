//! Network namespaces the benchmark creates, and running things inside them.
//!
//! Every namespace is registered with a [`Namespaces`] guard as soon as it exists,
//! and the guard deletes them all when dropped: on success, on error, on panic, and
//! after Ctrl-C (the handler only sets a flag; the phases check [`interrupted`] and
//! unwind through the guard).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns SIGINT and SIGTERM into [`interrupted`] returning true.
pub fn catch_interrupts() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails with "interrupted" once Ctrl-C was pressed, so that `?` unwinds the guards.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs a command to completion; its stdout on success, its stderr in the error.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns` (`ip netns exec`).
pub fn exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// Runs `ip -n NS ARGS…`.
pub fn ip(ns: &str, args: &str) -> Result<String> {
    let mut all = vec!["ip", "-n", ns];
    all.extend(args.split_whitespace());
    run(&all)
}

/// Reads a file under /sys/class/net of an interface in `ns`.
pub fn sysfs(ns: &str, iface: &str, file: &str) -> Result<String> {
    Ok(
        exec(ns, &["cat", &format!("/sys/class/net/{iface}/{file}")])?
            .trim()
            .to_string(),
    )
}

/// Runs `f` on a thread that has joined namespace `ns` (setns is per thread), for
/// what must happen inside it: netlink XDP attach, BPF test runs with an ifindex.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a valid fd; affects only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to one CPU.
pub fn pin_to(core: usize) -> Result<()> {
    pin_pid(0, core)
}

/// Pins thread `pid` (0: the calling thread) to one CPU.
pub fn pin_pid(pid: i32, core: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds for
    // core < CPU_SETSIZE, which sched_setaffinity then checks against the machine.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core >= libc::CPU_SETSIZE as usize {
            bail!("core {core} is out of range");
        }
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) != 0 {
            bail!(
                "cannot pin thread {pid} to core {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Namespaces this run created; deletes them all on drop.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> Result<()> {
        run(&["ip", "netns", "add", name])?;
        self.names.push(name.to_string());
        ip(name, "link set lo up")?;
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            if let Err(e) = run(&["ip", "netns", "del", &n]) {
                eprintln!("fwd-bench: cannot delete namespace {n}: {e:#}");
            }
        }
    }
}
