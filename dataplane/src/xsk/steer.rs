//! The XDP steering program (`bpf/steer.bpf.c`): loading it, attaching it to the
//! interfaces kxdp serves, and keeping its maps in step with the snapshot.
//!
//! Attaching goes through netlink with an explicit mode and replaces whatever program
//! the interface had, so a restart never stacks a second one. Netlink attachments
//! outlive the process: [`Steering`] detaches on drop, and if kxdp is killed the
//! program stays but finds no socket and passes everything to the kernel (fail open).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder, Xdp, XdpFlags};

use crate::snapshot::{ServiceKey, ServicePort, Snapshot};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The most queues (workers) kxdp serves on each interface.
pub const MAX_QUEUES: u32 = 64;

/// Where each AF_XDP socket sits in the XSKMAP. Interface `i` is served on its first
/// `queues(i)` queues (at most `--queues`: a pod veth usually has one), and its
/// sockets have the keys `base(i) .. base(i) + queues(i)`, packed one interface after
/// the other, so the map holds exactly as many keys as there are sockets and is sized
/// so when the program loads. (A fixed stride of 64 keys an interface in a
/// 1024-entry map once capped a node at 16 interfaces, the uplink and 15 pods.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSlots {
    queues: Vec<u32>,
    base: Vec<u32>,
    total: u32,
}

impl SocketSlots {
    /// Slots for interfaces served on `queues[i]` queues each. `None` when there is
    /// no interface, one with no queue, or more sockets than [`MAX_SOCKETS`].
    pub fn new(queues: Vec<u32>) -> Option<SocketSlots> {
        let mut base = Vec::with_capacity(queues.len());
        let mut total: u32 = 0;
        for &q in &queues {
            if q == 0 {
                return None;
            }
            base.push(total);
            total = total.checked_add(q)?;
        }
        (!queues.is_empty() && total <= MAX_SOCKETS).then_some(SocketSlots {
            queues,
            base,
            total,
        })
    }

    /// How many queues interface `i` (its position among the ports) is served on.
    pub fn queues(&self, i: u32) -> u32 {
        self.queues[i as usize]
    }

    /// The first key of interface `i`.
    pub fn base(&self, i: u32) -> u32 {
        self.base[i as usize]
    }

    /// The key of interface `i`'s socket on `queue`.
    pub fn key(&self, i: u32, queue: u32) -> u32 {
        debug_assert!(queue < self.queues(i));
        self.base(i) + queue
    }

    fn total(&self) -> u32 {
        self.total
    }

    fn interfaces(&self) -> u32 {
        self.queues.len() as u32
    }
}

/// The most sockets the XSKMAP is sized for (served queues of all interfaces): far
/// beyond a node's pods (Kubernetes' default is 110 a node), and a bound on the map's
/// memory.
pub const MAX_SOCKETS: u32 = 1 << 16;

/// How the program runs on an interface (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver: the fast path, and on veth what keeps the peer from sending
    /// GSO super-frames.
    Native,
    /// Generic XDP in the stack: works everywhere, slower.
    Skb,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
        }
    }
}

/// What an interface is to the steering program (matches `ROLE_*` in the C source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Uplink = 1,
    Pod = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error(
        "cannot load the steering program: {0} (is this root, with CAP_BPF and CAP_NET_ADMIN?)"
    )]
    Load(libbpf_rs::Error),
    #[error("cannot attach XDP in {mode:?} mode to {iface}: {err} (try --xdp-mode skb?)")]
    Attach {
        iface: String,
        mode: XdpMode,
        err: libbpf_rs::Error,
    },
    #[error("steering map {map}: {err}")]
    Map {
        map: &'static str,
        err: libbpf_rs::Error,
    },
    #[error(
        "steering map {map} holds {max} entries and this snapshot needs {need} \
         (old and new entries are both in it while it changes); the maps are unchanged"
    )]
    Full {
        map: &'static str,
        need: usize,
        max: u32,
    },
}

/// The interface index of `name`, or an error naming it.
pub fn ifindex(name: &str) -> Result<u32, SteerError> {
    let c = CString::new(name).map_err(|_| SteerError::NoInterface(name.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(SteerError::NoInterface(name.into())),
        i => Ok(i),
    }
}

struct Attached {
    ifindex: u32,
    flags: u32,
}

impl Attached {
    fn detach(&self) {
        // SAFETY: plain syscall wrapper; a null opts pointer is allowed.
        unsafe { libbpf_sys::bpf_xdp_detach(self.ifindex as i32, self.flags, std::ptr::null()) };
    }
}

/// The loaded program, the interfaces it is attached to, and its maps.
pub struct Steering {
    obj: Object,
    attached: Vec<Attached>,
    frontends: HashSet<[u8; 8]>,
    /// Local endpoints, with how many Service ports have each.
    endpoints: HashMap<[u8; 8], u32>,
    pod_cidrs: HashSet<[u8; 8]>,
    host_addrs: HashSet<[u8; 4]>,
    /// The snapshot the maps say, to sync the next one patched from it by difference.
    synced: Option<Arc<Snapshot>>,
}

/// Keys per batch update of a steering map.
const BATCH: usize = 4096;

/// Entries a map holds at most on its way from `old` to `new`: new ones go in before
/// the gone ones go out.
fn peak<K: Eq + std::hash::Hash>(old: &HashSet<K>, new: &HashSet<K>) -> usize {
    old.len() + new.difference(old).count()
}

/// The local endpoints of a Service port, as `endpoints` map keys.
fn local_endpoints(port: &ServicePort) -> impl Iterator<Item = [u8; 8]> + '_ {
    let proto = port.spec.proto as u8;
    port.spec
        .endpoints
        .iter()
        .filter(|e| e.is_local)
        .map(move |e| l4key(*e.addr.ip(), e.addr.port(), proto))
}

fn l4key(ip: Ipv4Addr, port: u16, proto: u8) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0..4].copy_from_slice(&ip.octets());
    k[4..6].copy_from_slice(&port.to_be_bytes());
    k[6] = proto;
    k
}

fn lpm_key(ip: Ipv4Addr, prefix: u8) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0..4].copy_from_slice(&(prefix as u32).to_ne_bytes());
    k[4..8].copy_from_slice(&ip.octets());
    k
}

impl Steering {
    /// Loads the program with its XSKMAP and interface map sized for `slots`.
    pub fn load(slots: &SocketSlots) -> Result<Steering, SteerError> {
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(SteerError::Load)?;
        for mut m in open.maps_mut() {
            let size = match m.name().to_str() {
                Some("xsks") => slots.total(),
                Some("ifaces") => slots.interfaces(),
                _ => continue,
            };
            m.set_max_entries(size).map_err(SteerError::Load)?;
        }
        let obj = open.load().map_err(SteerError::Load)?;
        Ok(Steering {
            obj,
            attached: Vec::new(),
            frontends: HashSet::new(),
            endpoints: HashMap::new(),
            pod_cidrs: HashSet::new(),
            host_addrs: HashSet::new(),
            synced: None,
        })
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>, SteerError> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or(SteerError::Map {
                map: name,
                err: libbpf_rs::Error::from_raw_os_error(libc::ENOENT),
            })
    }

    fn update(&self, name: &'static str, key: &[u8], value: &[u8]) -> Result<(), SteerError> {
        self.map(name)?
            .update(key, value, MapFlags::ANY)
            .map_err(|err| SteerError::Map { map: name, err })
    }

    fn delete(&self, name: &'static str, key: &[u8]) -> Result<(), SteerError> {
        self.map(name)?
            .delete(key)
            .map_err(|err| SteerError::Map { map: name, err })
    }

    /// Attaches the program to `iface`, the `i`th interface of `slots`, served on its
    /// first `served` queues (at most `slots.queues(i)`): its sockets use the keys
    /// [`SocketSlots::key`] gives.
    pub fn attach(
        &mut self,
        iface: &str,
        role: Role,
        mode: XdpMode,
        slots: &SocketSlots,
        i: u32,
        served: u32,
    ) -> Result<u32, SteerError> {
        debug_assert!(served <= slots.queues(i));
        let ifindex = ifindex(iface)?;
        let mut value = [0u8; 12];
        value[0..4].copy_from_slice(&slots.base(i).to_ne_bytes());
        value[4..8].copy_from_slice(&(role as u32).to_ne_bytes());
        value[8..12].copy_from_slice(&served.to_ne_bytes());
        self.update("ifaces", &ifindex.to_ne_bytes(), &value)?;
        let prog = self
            .obj
            .progs()
            .find(|p| p.name() == "kxdp_steer")
            .expect("the object defines kxdp_steer");
        let attached = Xdp::new(prog.as_fd()).attach(ifindex as i32, mode.flags());
        if let Err(err) = attached {
            // The entry would hold a place in a map sized to the interfaces.
            let _ = self.delete("ifaces", &ifindex.to_ne_bytes());
            return Err(SteerError::Attach {
                iface: iface.into(),
                mode,
                err,
            });
        }
        self.attached.push(Attached {
            ifindex,
            flags: mode.flags().bits(),
        });
        Ok(ifindex)
    }

    /// Stops steering interface `ifindex` (the `i`th of `slots`): the program is
    /// detached if the interface still exists, and its entries and sockets leave the
    /// maps, so that the sockets can close. Errors about an interface that is already
    /// gone are expected and ignored.
    pub fn detach(&mut self, ifindex: u32, slots: &SocketSlots, i: u32) {
        if let Some(at) = self.attached.iter().position(|a| a.ifindex == ifindex) {
            self.attached.swap_remove(at).detach();
        }
        let _ = self.delete("ifaces", &ifindex.to_ne_bytes());
        for q in 0..slots.queues(i) {
            let _ = self.delete("xsks", &slots.key(i, q).to_ne_bytes());
        }
    }

    /// Puts an AF_XDP socket in the XSKMAP under `key` (slot + queue).
    pub fn register_socket(&self, key: u32, fd: RawFd) -> Result<(), SteerError> {
        self.update("xsks", &key.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }

    /// Turns steering on (after the sockets are registered) or off (before they
    /// close). `pod_arp_ip` is the sender of kxdp's ARP requests to pods: replies
    /// to it on pod ports are kxdp's, and every other ARP reply there the kernel's.
    pub fn set_enabled(
        &self,
        enabled: bool,
        vtep_ip: Ipv4Addr,
        vxlan_port: u16,
        pod_arp_ip: Ipv4Addr,
    ) -> Result<(), SteerError> {
        let mut v = [0u8; 16];
        v[0..4].copy_from_slice(&(enabled as u32).to_ne_bytes());
        v[4..8].copy_from_slice(&vtep_ip.octets());
        v[8..10].copy_from_slice(&vxlan_port.to_be_bytes());
        v[12..16].copy_from_slice(&pod_arp_ip.octets());
        self.update("config", &0u32.to_ne_bytes(), &v)
    }

    /// Lets ARP replies from `ip` through to kxdp (it asked), or stops doing so.
    pub fn expect_arp_reply(&self, ip: Ipv4Addr, expect: bool) -> Result<(), SteerError> {
        if expect {
            self.update("arp_pending", &ip.octets(), &[1])
        } else {
            self.delete("arp_pending", &ip.octets()).or(Ok(()))
        }
    }

    /// A handle on the ARP map for a worker thread.
    pub fn arp_pending(&self) -> Result<ArpPending, SteerError> {
        let map = self.map("arp_pending")?;
        MapHandle::try_from(&map)
            .map(|map| ArpPending {
                map,
                asked: std::collections::VecDeque::with_capacity(ARP_OUTSTANDING),
            })
            .map_err(|err| SteerError::Map {
                map: "arp_pending",
                err,
            })
    }

    /// Makes the maps say what `snap` owns: frontends, local endpoints, pod CIDRs,
    /// and which addresses are the host's own (`extra_host_addrs`: the pods'
    /// gateway, which lives on the host's lo; the same on every call).
    ///
    /// A snapshot patched from the one synced last ([`Snapshot::with_ports`]) has
    /// the same frontends and nodes, so only the local endpoints of the ports that
    /// changed are looked at: a one-endpoint change costs a map update or two.
    pub fn sync(
        &mut self,
        snap: &Arc<Snapshot>,
        extra_host_addrs: &[Ipv4Addr],
    ) -> Result<(), SteerError> {
        match self.synced.take() {
            Some(last) if last.shares_frontends(snap) => self.sync_ports(&last, snap)?,
            _ => self.sync_all(snap, extra_host_addrs)?,
        }
        self.synced = Some(snap.clone());
        Ok(())
    }

    /// Fails, having changed nothing, when `map` cannot hold `need` entries.
    fn room(&self, map: &'static str, need: usize) -> Result<(), SteerError> {
        let max = self.map(map)?.max_entries();
        if need > max as usize {
            return Err(SteerError::Full { map, need, max });
        }
        Ok(())
    }

    /// The local endpoints of the ports `snap` replaced in `last`.
    fn sync_ports(&mut self, last: &Snapshot, snap: &Snapshot) -> Result<(), SteerError> {
        let changed: Vec<(&ServicePort, &ServicePort)> = last
            .services()
            .iter()
            .zip(snap.services())
            .filter(|(old, new)| !Arc::ptr_eq(old, new))
            .map(|(old, new)| (&**old, &**new))
            .collect();
        // New endpoints go in before the gone ones go out.
        let adding: HashSet<[u8; 8]> = changed
            .iter()
            .flat_map(|(_, new)| local_endpoints(new))
            .filter(|k| !self.endpoints.contains_key(k))
            .collect();
        self.room("endpoints", self.endpoints.len() + adding.len())?;
        for (_, new) in &changed {
            for k in local_endpoints(new) {
                let n = self.endpoints.entry(k).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.update("endpoints", &k, &[1])?;
                }
            }
        }
        for (old, _) in &changed {
            for k in local_endpoints(old) {
                let Some(n) = self.endpoints.get_mut(&k) else {
                    continue;
                };
                *n -= 1;
                if *n == 0 {
                    self.endpoints.remove(&k);
                    self.delete("endpoints", &k)?;
                }
            }
        }
        Ok(())
    }

    fn sync_all(
        &mut self,
        snap: &Snapshot,
        extra_host_addrs: &[Ipv4Addr],
    ) -> Result<(), SteerError> {
        let frontends: HashSet<[u8; 8]> = snap
            .frontends()
            .map(|(k, _): (&ServiceKey, _)| l4key(k.ip, k.port, k.proto as u8))
            .collect();
        let mut endpoints: HashMap<[u8; 8], u32> = HashMap::new();
        for k in snap.services().iter().flat_map(|s| local_endpoints(s)) {
            *endpoints.entry(k).or_insert(0) += 1;
        }
        let pod_cidrs: HashSet<[u8; 8]> = snap
            .node
            .pod_cidrs
            .iter()
            .chain(snap.remotes().iter().flat_map(|n| n.pod_cidrs.iter()))
            .map(|c| lpm_key(c.addr(), c.prefix()))
            .collect();
        let host: HashSet<[u8; 4]> = snap
            .node
            .node_ips
            .iter()
            .chain(std::iter::once(&snap.node.vtep_ip))
            .chain(extra_host_addrs)
            .map(|ip| ip.octets())
            .collect();
        // Every map's room first, so that a snapshot too big for one changes none.
        let endpoints_peak = self.endpoints.len()
            + endpoints
                .keys()
                .filter(|k| !self.endpoints.contains_key(*k))
                .count();
        for (map, need) in [
            ("frontends", peak(&self.frontends, &frontends)),
            ("endpoints", endpoints_peak),
            ("pod_cidrs", peak(&self.pod_cidrs, &pod_cidrs)),
            ("host_addrs", peak(&self.host_addrs, &host)),
        ] {
            self.room(map, need)?;
        }
        let old = std::mem::take(&mut self.frontends);
        self.frontends = self.replace("frontends", old, frontends)?;
        let old: HashSet<[u8; 8]> = std::mem::take(&mut self.endpoints).into_keys().collect();
        self.replace("endpoints", old, endpoints.keys().copied().collect())?;
        self.endpoints = endpoints;
        let old = std::mem::take(&mut self.pod_cidrs);
        self.pod_cidrs = self.replace("pod_cidrs", old, pod_cidrs)?;
        for k in host.difference(&self.host_addrs) {
            self.update("host_addrs", k, &[1])?;
        }
        for k in self.host_addrs.difference(&host) {
            self.delete("host_addrs", k)?;
        }
        self.host_addrs = host;
        Ok(())
    }

    /// Inserts what is new, then deletes what is gone (never a moment without both),
    /// in batches where the map has them (a hash map does; 10,000 Services would
    /// otherwise be 10,000 syscalls).
    fn replace(
        &self,
        map: &'static str,
        old: HashSet<[u8; 8]>,
        new: HashSet<[u8; 8]>,
    ) -> Result<HashSet<[u8; 8]>, SteerError> {
        let added: Vec<[u8; 8]> = new.difference(&old).copied().collect();
        let gone: Vec<[u8; 8]> = old.difference(&new).copied().collect();
        let m = self.map(map)?;
        let err = |err| SteerError::Map { map, err };
        for chunk in added.chunks(BATCH) {
            let keys = chunk.concat();
            let ones = vec![1u8; chunk.len()];
            let n = chunk.len() as u32;
            if m.update_batch(&keys, &ones, n, MapFlags::ANY, MapFlags::ANY)
                .is_err()
            {
                for k in chunk {
                    m.update(k, &[1], MapFlags::ANY).map_err(err)?;
                }
            }
        }
        for chunk in gone.chunks(BATCH) {
            let keys = chunk.concat();
            let n = chunk.len() as u32;
            if m.delete_batch(&keys, n, MapFlags::ANY, MapFlags::ANY)
                .is_err()
            {
                // A batch may have stopped part-way: what it deleted is not found.
                for k in chunk {
                    match m.delete(k) {
                        Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => return Err(err(e)),
                        _ => {}
                    }
                }
            }
        }
        Ok(new)
    }
}

/// The steering program's ARP map, owned by a worker: which ARP replies it expects.
/// An entry lives [`ARP_WINDOW`]: long enough for a reply, short enough that the
/// kernel's own ARP with the same neighbour (the kubelet probing a pod, say) is not
/// starved of its replies. At most [`ARP_OUTSTANDING`] entries per worker.
pub struct ArpPending {
    map: MapHandle,
    asked: std::collections::VecDeque<(Ipv4Addr, std::time::Instant)>,
}

/// ARP requests one worker keeps answerable at a time.
pub const ARP_OUTSTANDING: usize = 1024;
/// How long kxdp takes the ARP replies of an address it asked for.
pub const ARP_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

impl ArpPending {
    fn forget_oldest(&mut self) {
        if let Some((old, _)) = self.asked.pop_front() {
            if !self.asked.iter().any(|(ip, _)| *ip == old) {
                let _ = self.map.delete(&old.octets());
            }
        }
    }
}

impl crate::worker::ArpSteer for ArpPending {
    fn expect_reply(&mut self, ip: Ipv4Addr) -> Result<(), SteerError> {
        if self.asked.len() >= ARP_OUTSTANDING {
            self.forget_oldest();
        }
        self.asked.push_back((ip, std::time::Instant::now()));
        self.map
            .update(&ip.octets(), &[1], MapFlags::ANY)
            .map_err(|err| SteerError::Map {
                map: "arp_pending",
                err,
            })
    }

    fn expire(&mut self) {
        while self
            .asked
            .front()
            .is_some_and(|(_, at)| at.elapsed() >= ARP_WINDOW)
        {
            self.forget_oldest();
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        let _ = self.set_enabled(false, Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED);
        for a in &self.attached {
            a.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Proto;
    use crate::snapshot::{
        EndpointSpec, Ipv4Net, LocalNode, Mac, ServiceId, ServicePortSpec, SnapshotBuilder, Vni,
    };
    use std::net::SocketAddrV4;

    fn node() -> LocalNode {
        LocalNode {
            name: "node1".to_owned(),
            pod_cidrs: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 1, 0), 24).unwrap()],
            vtep_ip: Ipv4Addr::new(198, 19, 128, 1),
            vtep_mac: Mac::default(),
            vni: Vni::new(1).unwrap(),
            node_ips: vec![Ipv4Addr::new(198, 19, 128, 1)],
            snat_ip: Ipv4Addr::new(198, 18, 1, 0),
        }
    }

    /// A Service port on ClusterIP 198.19.0.`vip`:80 with local pods 198.18.1.`pods`.
    fn port(vip: u8, pods: &[u8]) -> ServicePortSpec {
        ServicePortSpec {
            name: format!("default/s{vip}:http"),
            proto: Proto::Tcp,
            port: 80,
            cluster_ips: vec![Ipv4Addr::new(198, 19, 0, vip)],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_timeout: None,
            internal_policy_local: false,
            external_policy_local: false,
            endpoints: pods
                .iter()
                .map(|&p| EndpointSpec {
                    addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, p), 8080),
                    is_local: true,
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        }
    }

    fn snapshot(ports: &[ServicePortSpec]) -> Arc<Snapshot> {
        let mut b = SnapshotBuilder::new(1, node(), 251);
        for p in ports {
            b.add_service_port(p.clone()).unwrap();
        }
        Arc::new(b.build())
    }

    fn keys(s: &Steering, map: &'static str) -> HashSet<Vec<u8>> {
        s.map(map).unwrap().keys().collect()
    }

    fn root() -> bool {
        // SAFETY: plain libc getter.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: loading the steering program needs root");
        }
        root
    }

    #[test]
    fn socket_slots_give_every_interface_and_queue_its_own_key_densely() {
        // An uplink on 2 queues, a pod veth on 1, another on 2.
        let slots = SocketSlots::new(vec![2, 1, 2]).unwrap();
        let keys: Vec<u32> = (0..3)
            .flat_map(|i| (0..slots.queues(i)).map(move |q| (i, q)))
            .map(|(i, q)| slots.key(i, q))
            .collect();
        assert_eq!(keys, (0..5).collect::<Vec<_>>());
        assert_eq!(slots.total(), 5, "the map is sized to the keys");
        assert_eq!(SocketSlots::new(vec![]), None);
        assert_eq!(SocketSlots::new(vec![1, 0]), None);
        let most = vec![1; MAX_SOCKETS as usize];
        assert_eq!(
            SocketSlots::new(most.clone()).map(|s| s.total()),
            Some(MAX_SOCKETS)
        );
        assert_eq!(SocketSlots::new([most, vec![1]].concat()), None);
    }

    /// A snapshot that needs more entries than a steering map holds is refused before
    /// any map changes: the last one synced stays whole.
    #[test]
    fn a_snapshot_too_big_for_a_map_changes_none() {
        if !root() {
            return;
        }
        let slots = SocketSlots::new(vec![1, 1]).unwrap();
        let mut steering = Steering::load(&slots).unwrap();
        let first = snapshot(&[port(1, &[10, 11])]);
        steering.sync(&first, &[]).unwrap();
        let before: Vec<_> = ["frontends", "endpoints", "host_addrs"]
            .map(|m| keys(&steering, m))
            .into();
        // host_addrs holds 256: the node's addresses and 300 more do not fit.
        let many: Vec<Ipv4Addr> = (0..300u32)
            .map(|i| Ipv4Addr::from(0xc612_0000 + i))
            .collect();
        let second = snapshot(&[port(1, &[12]), port(2, &[13])]);
        match steering.sync(&second, &many) {
            Err(SteerError::Full {
                map: "host_addrs",
                need,
                max: 256,
            }) => assert!(need > 300),
            other => panic!("expected host_addrs to be full, got {other:?}"),
        }
        let after: Vec<_> = ["frontends", "endpoints", "host_addrs"]
            .map(|m| keys(&steering, m))
            .into();
        assert_eq!(before, after, "no map changed");
        // The next snapshot that fits is synced whole.
        steering.sync(&second, &[]).unwrap();
        assert_eq!(keys(&steering, "frontends").len(), 2);
    }

    /// Syncing a patched snapshot by difference leaves the maps as a full sync of it
    /// does; a pod two Services share stays while one of them still has it.
    #[test]
    fn a_sync_by_difference_leaves_the_maps_a_full_sync_leaves() {
        if !root() {
            return;
        }
        let first = snapshot(&[port(1, &[10, 11]), port(2, &[11])]);
        let slots = SocketSlots::new(vec![1, 1]).unwrap();
        let mut steering = Steering::load(&slots).unwrap();
        steering.sync(&first, &[]).unwrap();
        assert_eq!(keys(&steering, "frontends").len(), 2);
        assert_eq!(keys(&steering, "endpoints").len(), 2);

        // s1 moves from pods .10 and .11 to .12 only; s2 still has .11.
        let moved = Arc::new(ServicePort::new(port(1, &[12]), 251));
        let second = Arc::new(first.with_ports(2, &[(ServiceId(0), moved)]).unwrap());
        steering.sync(&second, &[]).unwrap();
        let mut fresh = Steering::load(&slots).unwrap();
        fresh.sync(&second, &[]).unwrap();
        for map in ["frontends", "endpoints", "pod_cidrs", "host_addrs"] {
            assert_eq!(keys(&steering, map), keys(&fresh, map), "{map}");
        }
        let endpoint = |p: u8| l4key(Ipv4Addr::new(198, 18, 1, p), 8080, Proto::Tcp as u8).to_vec();
        let endpoints = keys(&steering, "endpoints");
        assert!(endpoints.contains(&endpoint(11)), "s2 still has .11");
        assert!(endpoints.contains(&endpoint(12)));
        assert!(!endpoints.contains(&endpoint(10)));

        // A snapshot built anew (a Service gone) is synced whole.
        let third = snapshot(&[port(2, &[11])]);
        steering.sync(&third, &[]).unwrap();
        assert_eq!(keys(&steering, "frontends").len(), 1);
        assert_eq!(keys(&steering, "endpoints").len(), 1);
    }
}
