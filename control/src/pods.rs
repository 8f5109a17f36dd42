//! Pods that come and go (`--pod-routes`): kxdp serves every interface that a /32
//! route in the node's pod CIDR goes through, the registry a Calico-style CNI keeps
//! in the kernel (one host-side veth and one /32 route per pod), and follows it.
//!
//! The route table is read from `/proc/net/route` every [`SCAN_EVERY`]: a few
//! hundred lines, where a netlink subscription would be a second event loop for the
//! same answer. Until kxdp has attached to a new pod's veth (within that period),
//! the pod's frames go to the kernel, which routes them but translates no Service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Result;
use kxdp_dataplane::ports::{Port, PortRole};
use kxdp_dataplane::snapshot::Ipv4Net;
use kxdp_dataplane::verdict::PortId;
use kxdp_dataplane::worker::{Fleet, PortChange};
use kxdp_dataplane::xsk::port::{BindMode, XskPort};
use kxdp_dataplane::xsk::steer::{self, Role, SocketSlots, Steering, XdpMode};
use kxdp_dataplane::xsk::{FrameDesc, Umem};

/// How often the route table is read.
pub const SCAN_EVERY: Duration = Duration::from_millis(100);
/// How long a pod interface that could not be served waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long the control side waits for the workers to open or close sockets.
const WORKERS_WITHIN: Duration = Duration::from_secs(5);

/// The interfaces `/proc/net/route` (`table`) sends a pod of `cidrs` through, with
/// the pod addresses behind each: those of its gateway-less /32 routes inside a pod
/// CIDR, but `except` (the uplink, and interfaces served with `--pod-iface`) and `*`
/// (a blackhole or unreachable route).
pub fn pod_interfaces(
    table: &str,
    cidrs: &[Ipv4Net],
    except: &[&str],
) -> BTreeMap<String, Vec<Ipv4Addr>> {
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |f: &str| u32::from_str_radix(f, 16).ok();
    // The kernel prints each address as the u32 it stores: network order in memory,
    // so a little-endian read gives the octets back in order.
    let addr = |f: &str| hex(f).map(|v| Ipv4Addr::from(v.to_le_bytes()));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dst, flags, mask) = (
                *f.first()?,
                addr(f.get(1)?)?,
                hex(f.get(3)?)?,
                hex(f.get(7)?)?,
            );
            let host = mask == u32::MAX && flags & RTF_GATEWAY == 0 && iface != "*";
            (host && cidrs.iter().any(|c| c.contains(dst)) && !except.contains(&iface))
                .then(|| (iface.to_owned(), dst))
        })
        .fold(BTreeMap::new(), |mut m, (iface, dst)| {
            m.entry(iface).or_insert_with(Vec::new).push(dst);
            m
        })
}

/// A pod interface kxdp serves: its slot (the [`PortId`] and XSKMAP slot) and the
/// ifindex the program was attached to.
struct Served {
    name: String,
    ifindex: u32,
}

/// How pods' sockets are opened: on the workers' UMEM, as theirs are.
pub struct Sockets {
    pub umem: Umem,
    pub chunk_shift: u32,
    pub ring_size: u32,
    pub bind: BindMode,
}

/// Where the pods' ports go: the steering program, its socket slots, the workers.
pub struct Dataplane<'a> {
    pub steering: &'a mut Steering,
    pub slots: &'a SocketSlots,
    pub mode: XdpMode,
    pub fleet: &'a Fleet,
    pub sockets: &'a Sockets,
}

/// One slot of the pods'.
enum Slot {
    Free,
    Serving(Served),
    /// Out of the program and its maps, and not confirmed out of every worker
    /// (one did not answer in time): asked again at every scan, never reused
    /// before (a worker would refuse the slot as taken).
    Removing,
}

/// The pods served through their routes, slot by slot.
pub struct PodPorts {
    /// Slot `first + i` is `served[i]`.
    served: Vec<Slot>,
    first: u16,
    /// Where the search for a free slot starts: after the last one taken, so a
    /// slot just freed is the last to be taken again (frames and neighbours of the
    /// pod that had it may still be on their way).
    cursor: usize,
    except: Vec<String>,
    next_scan: Instant,
    /// Interfaces that could not be served, and when to try again.
    failed: Vec<(String, Instant)>,
}

/// What a pod interface is to kxdp: its port, served on how many queues.
pub type Facts<'a> = &'a dyn Fn(&str) -> Result<(Port, u32)>;

impl PodPorts {
    /// Room for `max` pods in the slots after the `first` ones (the uplink and the
    /// `--pod-iface` interfaces, named in `except`).
    pub fn new(first: u16, max: u32, except: Vec<String>) -> PodPorts {
        PodPorts {
            served: (0..max).map(|_| Slot::Free).collect(),
            first,
            cursor: 0,
            except,
            next_scan: Instant::now(),
            failed: Vec::new(),
        }
    }

    fn serving(&self) -> impl Iterator<Item = &Served> {
        self.served.iter().filter_map(|s| match s {
            Slot::Serving(s) => Some(s),
            _ => None,
        })
    }

    /// Pods served now.
    pub fn len(&self) -> usize {
        self.serving().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pod interfaces in the routes that could not be served (waiting for a retry).
    pub fn unserved(&self) -> usize {
        self.failed.len()
    }

    /// Reads the route table if it is time, and starts or stops serving the pod
    /// interfaces that came or went. Errors are logged: a pod that cannot be served
    /// is tried again later (meanwhile what it sends goes to the kernel, and what is
    /// sent to it through kxdp is lost), and the others go on.
    pub fn follow(&mut self, cidrs: &[Ipv4Net], dp: &mut Dataplane<'_>, facts: Facts<'_>) {
        let now = Instant::now();
        if now < self.next_scan {
            return;
        }
        self.next_scan = now + SCAN_EVERY;
        let table = match std::fs::read_to_string("/proc/net/route") {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot read /proc/net/route: {e}");
                return;
            }
        };
        let except: Vec<&str> = self.except.iter().map(String::as_str).collect();
        let want = pod_interfaces(&table, cidrs, &except);
        for i in 0..self.served.len() {
            match &self.served[i] {
                Slot::Serving(s)
                    if !want.contains_key(&s.name)
                        || steer::ifindex(&s.name).ok() != Some(s.ifindex) =>
                {
                    self.remove(i, dp)
                }
                Slot::Removing => {
                    let id = self.id(i);
                    if self.leave_workers(id, dp, Vec::new()) {
                        self.served[i] = Slot::Free;
                    }
                }
                _ => {}
            }
        }
        self.failed.retain(|(_, at)| *at > now);
        for (name, addrs) in want {
            let known = self.serving().any(|s| s.name == name)
                || self.failed.iter().any(|(n, _)| *n == name);
            if known {
                continue;
            }
            if let Err(e) = self.add(&name, addrs, dp, facts) {
                tracing::warn!(iface = %name, "pod interface not served, retried in {RETRY_AFTER:?}: {e:#}");
                self.failed.push((name, now + RETRY_AFTER));
            }
        }
    }

    /// Serves `name`, the way to the pods at `addrs` (which kxdp then asks for there
    /// only, not on every pod's interface).
    fn add(
        &mut self,
        name: &str,
        addrs: Vec<Ipv4Addr>,
        dp: &mut Dataplane<'_>,
        facts: Facts<'_>,
    ) -> Result<()> {
        let n = self.served.len();
        let Some(i) = (0..n)
            .map(|k| (self.cursor + k) % n)
            .find(|&i| matches!(self.served[i], Slot::Free))
        else {
            anyhow::bail!("all {n} --max-pods slots are taken");
        };
        // Past this slot whatever happens: one that fails is not the next one tried.
        self.cursor = i + 1;
        // The interface as it is now: if it is replaced while kxdp sets up, the
        // sockets and the program would be on two different interfaces.
        let ifindex = steer::ifindex(name)?;
        let (port, queues) = facts(name)?;
        anyhow::ensure!(port.role == PortRole::Pod, "not a pod interface");
        let id = self.id(i);
        let key = |q| dp.slots.key(id.0 as u32, q);
        let mut sockets = Vec::new();
        for q in 0..queues {
            let s = &dp.sockets;
            let opened = XskPort::open_on(&s.umem, s.chunk_shift, id, name, q, s.ring_size, s.bind)
                .map_err(anyhow::Error::from)
                .and_then(|x| {
                    dp.steering.register_socket(key(q), x.fd())?;
                    Ok(x)
                });
            match opened {
                Ok(x) => sockets.push(Some(x)),
                Err(e) => {
                    self.undo(i, ifindex, dp, sockets.into_iter().flatten().collect());
                    return Err(e);
                }
            }
        }
        let add = PortChange::Add {
            id,
            port,
            queues,
            addrs,
        };
        let (done, back) = dp.fleet.change_ports(&add, sockets, WORKERS_WITHIN);
        if let Err(e) = done {
            self.undo(i, ifindex, dp, back);
            anyhow::bail!("workers: {e}");
        }
        let attached = dp
            .steering
            .attach(name, Role::Pod, dp.mode, dp.slots, id.0 as u32, queues);
        match attached {
            Ok(at) if at == ifindex => {
                self.served[i] = Slot::Serving(Served {
                    name: name.to_owned(),
                    ifindex,
                });
                tracing::info!(iface = %name, slot = id.0, queues, "pod interface served");
                Ok(())
            }
            Ok(at) => {
                dp.steering.detach(at, dp.slots, id.0 as u32);
                self.undo(i, ifindex, dp, Vec::new());
                anyhow::bail!("the interface was replaced while kxdp set it up")
            }
            Err(e) => {
                self.undo(i, ifindex, dp, Vec::new());
                Err(e.into())
            }
        }
    }

    fn id(&self, i: usize) -> PortId {
        PortId(self.first + i as u16)
    }

    fn remove(&mut self, i: usize, dp: &mut Dataplane<'_>) {
        let Slot::Serving(s) = std::mem::replace(&mut self.served[i], Slot::Free) else {
            return;
        };
        self.undo(i, s.ifindex, dp, Vec::new());
        tracing::info!(iface = %s.name, slot = self.id(i).0, "pod interface gone");
    }

    /// Takes slot `i` out of the program, its maps and the workers, and closes its
    /// sockets (and `sockets`, opened and not handed over). The slot is free after,
    /// or still being removed if a worker did not confirm.
    fn undo(&mut self, i: usize, ifindex: u32, dp: &mut Dataplane<'_>, sockets: Vec<XskPort>) {
        let id = self.id(i);
        // First out of the XSKMAP, so that nothing is steered to a closing socket.
        dp.steering.detach(ifindex, dp.slots, id.0 as u32);
        self.served[i] = match self.leave_workers(id, dp, sockets) {
            true => Slot::Free,
            false => Slot::Removing,
        };
    }

    /// Has every worker let go of slot `id`, and closes the sockets they hand back
    /// (and `sockets`): off the workers, since a close waits on the kernel. Their
    /// frames go back to the workers' spares. False when a worker did not confirm.
    fn leave_workers(&self, id: PortId, dp: &Dataplane<'_>, mut sockets: Vec<XskPort>) -> bool {
        let remove = PortChange::Remove { id };
        let (done, back) = dp.fleet.change_ports(&remove, Vec::new(), WORKERS_WITHIN);
        sockets.extend(back);
        let mut frames: Vec<FrameDesc> = Vec::new();
        for s in sockets {
            s.close(&mut frames);
        }
        dp.fleet.give_back(frames);
        if let Err(e) = &done {
            // A socket a worker hands back after the wait closes on its thread, and
            // its frames are missing from the count at exit.
            tracing::warn!(
                slot = id.0,
                "removing a pod interface, asked again later: {e}"
            );
        }
        done.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
n1u\t00000000\t0180C6C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
n1u\t0080C6C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
cali1\t0A0112C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
cali2\t0B0112C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
*\t0C0112C6\t00000000\t0205\t0\t0\t0\tFFFFFFFF\t0\t0\t0
via4\t0D0112C6\t0180C6C6\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0
other\t0A0212C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
static\t0E0112C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn pod_interfaces_are_those_of_direct_host_routes_in_the_pod_cidr() {
        let cidr = Ipv4Net::new(Ipv4Addr::new(198, 18, 1, 0), 24).unwrap();
        let got = pod_interfaces(TABLE, &[cidr], &["static"]);
        // Not: the default and underlay routes, a blackhole, one through a gateway,
        // another node's pod, an interface served with --pod-iface.
        let pod = |h| vec![Ipv4Addr::new(198, 18, 1, h)];
        assert_eq!(
            got,
            BTreeMap::from([("cali1".into(), pod(10)), ("cali2".into(), pod(11))])
        );
        assert!(pod_interfaces(TABLE, &[], &[]).is_empty());
        assert!(pod_interfaces("garbage\nline", &[cidr], &[]).is_empty());
    }
}
