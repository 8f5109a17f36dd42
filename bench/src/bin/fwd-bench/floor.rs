//! The AF_XDP floor: the least any AF_XDP forwarder does on this topology, built from
//! kxdp's own socket and UMEM code (`kxdp_dataplane::xsk`) and nothing else. One
//! busy-polling thread, pinned to the kxdp core, receives on the client's host-side
//! veth, rewrites the headers at fixed offsets as the XDP ceiling does (DNAT to the
//! backend, MACs, TTL, checksums updated incrementally) and transmits on the
//! backend's host-side veth. No parsing beyond that, no conntrack, no Maglev, no
//! snapshot: what kxdp forwards below this is what its pipeline costs; what this
//! forwards below the kernel's and XDP's paths is what copy-mode AF_XDP costs on veth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kxdp_dataplane::checksum::{update16, update32};
use kxdp_dataplane::frame::HEADROOM;
use kxdp_dataplane::verdict::PortId;
use kxdp_dataplane::xsk::port::{BindMode, XskPort};
use kxdp_dataplane::xsk::umem::{FramePool, FrameSize};
use libbpf_rs::{MapCore, MapFlags, Object};
use xsk_rs::FrameDesc;

use crate::bpf::{load, map_mut, program, Attached};
use crate::netns::{enter, pin_to};
use crate::topology::{Mac, Topology, BACKEND_IP, CLUSTER_IP, SERVICE_PORT, TARGET_PORT};

static XSK_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk.bpf.o"));

const FRAMES: u32 = 32768;
const RING: u32 = 4096;
const BATCH: usize = 64;
/// The forwarder stops by itself after this long, whatever happens to fwd-bench.
const MAX_RUN: Duration = Duration::from_secs(600);

pub struct Floor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    // Detached on drop, after the thread has stopped.
    _attached: Attached,
    _obj: Object,
}

/// What the rewrite needs: the MACs of the backend's veth pair.
#[derive(Clone, Copy)]
struct Rewrite {
    src_mac: Mac,
    dst_mac: Mac,
}

impl Floor {
    pub fn start(topo: &Topology, core: usize) -> Result<Floor> {
        let stop = Arc::new(AtomicBool::new(false));
        let (fd_tx, fd_rx) = mpsc::channel();
        let (node, client_if, backend_if) = (
            topo.node.clone(),
            topo.client_host_if.clone(),
            topo.backend_host_if.clone(),
        );
        let rewrite = Rewrite {
            src_mac: topo.backend_host_mac,
            dst_mac: topo.backend_mac,
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xsk-floor".into())
            .spawn(move || -> Result<()> {
                enter(&node)?;
                pin_to(core)?;
                let mut pool = FramePool::new(FRAMES, FrameSize::Half, RING)?;
                let open = |id, iface: &str| {
                    XskPort::open(&pool, PortId(id), iface, 0, RING, BindMode::Copy)
                };
                let (mut rx, mut tx) = (open(0, &client_if)?, open(1, &backend_if)?);
                fd_tx.send(rx.fd())?;
                forward(&mut pool, &mut rx, &mut tx, rewrite, &s);
                Ok(())
            })
            .context("cannot start the AF_XDP floor thread")?;
        let fd = match fd_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(fd) => fd,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return match thread.join() {
                    Ok(Err(e)) => Err(e.context("AF_XDP floor")),
                    _ => bail!("the AF_XDP floor's sockets did not open"),
                };
            }
        };
        let steer = || -> Result<(Object, Attached)> {
            let mut obj = load(XSK_OBJ, "AF_XDP floor steering")?;
            map_mut(&mut obj, "xsks")?.update(
                &0u32.to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )?;
            let prog = program(&obj, "xdp_xsk")?;
            let attached = Attached::new(&prog, &topo.node, &topo.client_host_if)?;
            Ok((obj, attached))
        };
        match steer() {
            Ok((obj, attached)) => Ok(Floor {
                stop,
                thread: Some(thread),
                _attached: attached,
                _obj: obj,
            }),
            Err(e) => {
                // Not left spinning until MAX_RUN.
                stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                Err(e)
            }
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Err(e)) => eprintln!("fwd-bench: AF_XDP floor: {e:#}"),
                Err(_) => eprintln!("fwd-bench: the AF_XDP floor thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// The loop: refill, receive a batch, rewrite, transmit, reap; until `stop` or
/// [`MAX_RUN`].
fn forward(
    pool: &mut FramePool,
    rx: &mut XskPort,
    tx: &mut XskPort,
    rewrite: Rewrite,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let mut batch = [FrameDesc::default(); BATCH];
    let mut out: Vec<FrameDesc> = Vec::with_capacity(BATCH);
    let mut scratch = vec![FrameDesc::default(); RING as usize];
    let mut loops = 0u32;
    while !stop.load(Ordering::Relaxed) {
        loops = loops.wrapping_add(1);
        if loops.is_multiple_of(4096) && started.elapsed() > MAX_RUN {
            break;
        }
        tx.reap(&mut pool.free, &mut scratch);
        rx.refill(&mut pool.free, RING as usize);
        let n = rx.receive(&mut batch);
        for d in &batch[..n] {
            pool.prefetch(d);
        }
        for d in batch[..n].iter_mut() {
            let len = d.lengths().data();
            // SAFETY: the frame was just received: it is ours and in no ring.
            let buf = unsafe { pool.buffer(d) };
            if dnat(&mut buf[HEADROOM..HEADROOM + len], rewrite) {
                out.push(*d);
            } else {
                pool.free.push(*d);
            }
        }
        if !out.is_empty() {
            let sent = tx.send(&out);
            pool.free.extend_from_slice(&out[sent..]);
            out.clear();
            tx.kick();
        }
    }
}

/// The XDP ceiling's rewrite (bench/bpf/fwd.bpf.c) for the one Service: false for a
/// frame that is not to it.
fn dnat(p: &mut [u8], r: Rewrite) -> bool {
    const IP: usize = 14;
    const UDP: usize = IP + 20;
    if p.len() < UDP + 8
        || p[12..14] != [0x08, 0x00]
        || p[IP] != 0x45
        || p[IP + 9] != libc::IPPROTO_UDP as u8
        || p[IP + 8] <= 1
        || p[IP + 16..IP + 20] != CLUSTER_IP.octets()
        || p[UDP + 2..UDP + 4] != SERVICE_PORT.to_be_bytes()
    {
        return false;
    }
    let word = |p: &[u8], at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let (old_ip, new_ip) = (u32::from(CLUSTER_IP), u32::from(BACKEND_IP));
    let mut ip_check = update32(word(p, IP + 10), old_ip, new_ip);
    let old_ttl = word(p, IP + 8);
    p[IP + 8] -= 1;
    ip_check = update16(ip_check, old_ttl, word(p, IP + 8));
    p[IP + 10..IP + 12].copy_from_slice(&ip_check.to_be_bytes());
    let udp_check = word(p, UDP + 6);
    if udp_check != 0 {
        let c = update32(udp_check, old_ip, new_ip);
        let c = update16(c, SERVICE_PORT, TARGET_PORT);
        let c = if c == 0 { 0xffff } else { c };
        p[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
    }
    p[IP + 16..IP + 20].copy_from_slice(&BACKEND_IP.octets());
    p[UDP + 2..UDP + 4].copy_from_slice(&TARGET_PORT.to_be_bytes());
    p[0..6].copy_from_slice(&r.dst_mac);
    p[6..12].copy_from_slice(&r.src_mac);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_dataplane::checksum::{checksum, ipv4_header_ok, l4_checksum};
    use std::net::Ipv4Addr;

    /// A 64-byte frame from the client to the Service, checksums complete.
    fn frame(sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[12..14].copy_from_slice(&[0x08, 0x00]);
        p[14] = 0x45;
        p[16..18].copy_from_slice(&50u16.to_be_bytes());
        p[22] = 64;
        p[23] = libc::IPPROTO_UDP as u8;
        p[26..30].copy_from_slice(&[198, 18, 1, 10]);
        p[30..34].copy_from_slice(&CLUSTER_IP.octets());
        let c = checksum(&p[14..34]);
        p[24..26].copy_from_slice(&c.to_be_bytes());
        p[34..36].copy_from_slice(&sport.to_be_bytes());
        p[36..38].copy_from_slice(&SERVICE_PORT.to_be_bytes());
        p[38..40].copy_from_slice(&30u16.to_be_bytes());
        let u = l4_checksum(
            Ipv4Addr::new(198, 18, 1, 10),
            CLUSTER_IP,
            libc::IPPROTO_UDP as u8,
            &p[34..64],
            6,
        );
        p[40..42].copy_from_slice(&u.to_be_bytes());
        p
    }

    #[test]
    fn the_rewrite_leaves_checksums_a_receiver_accepts() {
        let r = Rewrite {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
        };
        for sport in [1024, 40000, 65535] {
            let mut p = frame(sport);
            assert!(dnat(&mut p, r));
            assert!(ipv4_header_ok(&p[14..34]));
            assert_eq!(p[30..34], BACKEND_IP.octets());
            assert_eq!(p[36..38], TARGET_PORT.to_be_bytes());
            assert_eq!(p[22], 63, "TTL decremented");
            let stored = u16::from_be_bytes([p[40], p[41]]);
            let want = l4_checksum(
                Ipv4Addr::new(198, 18, 1, 10),
                BACKEND_IP,
                libc::IPPROTO_UDP as u8,
                &p[34..64],
                6,
            );
            assert_eq!(stored, want, "sport {sport}");
            assert_eq!((&p[0..6], &p[6..12]), (&r.dst_mac[..], &r.src_mac[..]));
        }
    }

    #[test]
    fn frames_not_to_the_service_are_left_alone() {
        let r = Rewrite {
            src_mac: [0; 6],
            dst_mac: [0; 6],
        };
        let mut other_port = frame(1024);
        other_port[36..38].copy_from_slice(&1u16.to_be_bytes());
        let mut arp = frame(1024);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for mut p in [other_port, arp, vec![0u8; 20]] {
            let before = p.clone();
            assert!(!dnat(&mut p, r));
            assert_eq!(p, before);
        }
    }
}
