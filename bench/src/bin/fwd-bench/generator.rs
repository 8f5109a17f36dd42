//! The load generator: bench/bpf/gen.bpf.c run with BPF_PROG_TEST_RUN and
//! BPF_F_TEST_XDP_LIVE_FRAMES from a thread inside the client pod's namespace, so
//! that each run transmits one 64-byte frame (60 bytes plus the FCS a wire would
//! add) out of the pod's eth0: UDP from the client pod to the Service's ClusterIP,
//! cycling through a fixed set of flows (source ports).
//!
//! A run offers load for a warm-up (ARP, conntrack entries: afterwards every frame
//! belongs to an established flow), then measures a window: frames the generator
//! sent and frames the sink counted. A BPF_PROG_TEST_RUN call costs tens of
//! milliseconds of set-up here, so the generator thread makes one call with a huge
//! repeat count and this module ends it with a signal (the test run stops on a
//! pending signal); the program paces itself and counts what it sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, Object, ProgramInput};

use crate::bpf::{self, Sink, SinkCount};
use crate::netns::{check_interrupted, enter, interrupted, pin_to};
use crate::topology::{Topology, CLIENT_IP, CLUSTER_IP, SERVICE_PORT};

/// BPF_F_TEST_XDP_LIVE_FRAMES: frames go out for real instead of back to the caller.
const LIVE_FRAMES: u32 = 1 << 1;
/// Frame length without the FCS: a 64-byte frame on a wire.
const FRAME_LEN: usize = 60;
const HEADERS_LEN: usize = 42;
const FIRST_SOURCE_PORT: u16 = 40000;
/// Runs per test-run call: far more than a window needs (the call is interrupted).
const REPEAT: u32 = i32::MAX as u32;
/// How long in-flight frames get to reach the sink after the generator stops.
const SETTLE: Duration = Duration::from_millis(200);

pub struct Generator {
    obj: Object,
    template: MapHandle,
    state: MapHandle,
    frame: Vec<u8>,
    flows: u16,
    ns: String,
    ifindex: u32,
    core: usize,
}

/// What one measured window saw.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub sent: u64,
    pub received: SinkCount,
    pub elapsed: Duration,
}

impl Window {
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
    pub fn forwarded_pps(&self) -> f64 {
        self.received.good as f64 / self.elapsed.as_secs_f64()
    }
    /// Frames sent but not received correct, as a fraction of those sent.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received.good) as f64 / self.sent as f64
    }
}

extern "C" fn on_wakeup(_: libc::c_int) {}

/// SIGUSR1 interrupts the generator's test run: a handler without SA_RESTART.
fn install_wakeup() {
    // SAFETY: a zeroed sigaction with a handler that does nothing is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wakeup as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

impl Generator {
    /// `flows` (a power of two) distinct source ports; runs pinned to `core`.
    pub fn new(topo: &Topology, flows: u16, core: usize) -> Result<Generator> {
        if !flows.is_power_of_two() {
            bail!("--flows {flows} is not a power of two");
        }
        install_wakeup();
        let mut obj = bpf::load(bpf::GEN_OBJ, "generator")?;
        let template = MapHandle::try_from(&bpf::map_mut(&mut obj, "template")?)?;
        let state = MapHandle::try_from(&bpf::map_mut(&mut obj, "state")?)?;
        Ok(Generator {
            obj,
            template,
            state,
            frame: first_frame(topo),
            flows,
            ns: topo.client.clone(),
            ifindex: topo.client_ifindex,
            core,
        })
    }

    /// Writes the template: headers of flow 0, the flow mask, the pacing interval.
    fn set_rate(&self, rate: Option<f64>) -> Result<()> {
        let mut t = [0u8; 56];
        t[..HEADERS_LEN].copy_from_slice(&self.frame[..HEADERS_LEN]);
        t[HEADERS_LEN..HEADERS_LEN + 2].copy_from_slice(&(self.flows - 1).to_ne_bytes());
        let interval = rate.map_or(0, |r| (1e9 / r).round().max(1.0) as u64);
        t[48..56].copy_from_slice(&interval.to_ne_bytes());
        self.template
            .update(&0u32.to_ne_bytes(), &t, MapFlags::ANY)?;
        Ok(())
    }

    /// Offers load for `warmup`, then measures for `window`; as fast as one core
    /// can (`rate` None) or paced at `rate` frames per second.
    pub fn run(
        &mut self,
        sink: &Sink,
        warmup: Duration,
        window: Duration,
        rate: Option<f64>,
    ) -> Result<Window> {
        self.set_rate(rate)?;
        let (obj, state, frame) = (&mut self.obj, &self.state, &self.frame);
        let (ns, ifindex, core) = (&self.ns, self.ifindex, self.core);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| -> Result<Window> {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = &stop;
            let generator = s.spawn(move || -> Result<()> {
                enter(ns)?;
                pin_to(core)?;
                // SAFETY: plain libc getter.
                let _ = tx.send(unsafe { libc::pthread_self() });
                let prog = obj
                    .progs_mut()
                    .find(|p| p.name() == "xdp_gen")
                    .context("no program xdp_gen")?;
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex. XDP_TX leaves by the ingress device.
                let ctx: [u32; 6] = [0, FRAME_LEN as u32, 0, ifindex, 0, 0];
                while !stop.load(Ordering::Relaxed) && !interrupted() {
                    let mut ctx_bytes: Vec<u8> = ctx.iter().flat_map(|v| v.to_ne_bytes()).collect();
                    let input = ProgramInput {
                        data_in: Some(frame),
                        context_in: Some(&mut ctx_bytes),
                        flags: LIVE_FRAMES,
                        repeat: REPEAT,
                        ..Default::default()
                    };
                    match prog.test_run(input) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e).context("BPF_PROG_TEST_RUN with live frames"),
                    }
                }
                Ok(())
            });
            let Ok(thread) = rx.recv() else {
                // It ended before it started sending: its error says why.
                generator
                    .join()
                    .map_err(|_| anyhow!("generator thread panicked"))??;
                bail!("generator thread ended early");
            };
            let measured = (|| -> Result<(u64, SinkCount, Instant)> {
                sleep(warmup)?;
                let start = (sent(state)?, sink.count()?, Instant::now());
                sleep(window)?;
                Ok(start)
            })();
            // Stop the generator whatever happened. A signal that lands just before
            // a test run starts is missed, so keep signalling until it is gone.
            stop.store(true, Ordering::Relaxed);
            let t1 = Instant::now();
            while !generator.is_finished() {
                // SAFETY: the thread is ours and has not finished, so its pthread_t
                // is valid.
                unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(5));
            }
            generator
                .join()
                .map_err(|_| anyhow!("generator thread panicked"))??;
            let (sent0, received0, t0) = measured?;
            let sent = sent(state)? - sent0;
            std::thread::sleep(SETTLE);
            let received1 = sink.count()?;
            Ok(Window {
                sent,
                received: SinkCount {
                    good: received1.good - received0.good,
                    bad: received1.bad - received0.bad,
                },
                elapsed: t1 - t0,
            })
        })
    }
}

/// Frames the generator sent so far, over all CPUs.
fn sent(state: &MapHandle) -> Result<u64> {
    let per_cpu = state
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?
        .unwrap_or_default();
    Ok(per_cpu
        .iter()
        .map(|v| u64::from_ne_bytes(v[16..24].try_into().unwrap_or_default()))
        .sum())
}

/// Sleeps `d`, or less if Ctrl-C was pressed (then fails).
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
        );
    }
    Ok(())
}

/// Flow 0's frame: client pod -> ClusterIP:SERVICE_PORT, checksums complete.
fn first_frame(topo: &Topology) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&topo.client_host_mac);
    f[6..12].copy_from_slice(&topo.client_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (FRAME_LEN - 14) as u16;
    let udp_len = ip_len - 20;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, as Linux sends UDP
    ip[8] = 64;
    ip[9] = libc::IPPROTO_UDP as u8;
    ip[12..16].copy_from_slice(&CLIENT_IP.octets());
    ip[16..20].copy_from_slice(&CLUSTER_IP.octets());
    let c = checksum(&[ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..];
    udp[0..2].copy_from_slice(&FIRST_SOURCE_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&SERVICE_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&CLIENT_IP.octets());
    pseudo[4..8].copy_from_slice(&CLUSTER_IP.octets());
    pseudo[9] = libc::IPPROTO_UDP as u8;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let c = checksum(&[&pseudo, udp]);
    // zero means "no checksum" in UDP over IPv4: a computed zero is sent as all ones
    let c = if c == 0 { 0xffff } else { c };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f
}

/// The Internet checksum over the concatenation of even-length `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = parts
        .iter()
        .flat_map(|p| p.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
