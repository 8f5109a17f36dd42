//! The benchmark's XDP programs (bench/bpf/*.bpf.c, compiled by build.rs): loading,
//! attaching with a guard that detaches, and the two that stay attached for a
//! phase: the sink on the backend pod and the in-kernel forwarder (the XDP ceiling).

use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{
    MapCore, MapFlags, MapMut, Object, ObjectBuilder, Program, TcHookBuilder, Xdp, XdpFlags,
    TC_INGRESS,
};

use crate::netns::{exec, within};
use crate::topology::{Topology, BACKEND_IP, CLUSTER_IP, POD_IF, SERVICE_PORT, TARGET_PORT};

pub static GEN_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gen.bpf.o"));
static FWD_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fwd.bpf.o"));
static SINK_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sink.bpf.o"));

pub fn load(bytes: &[u8], what: &str) -> Result<Object> {
    ObjectBuilder::default()
        .open_memory(bytes)
        .and_then(|o| o.load())
        .with_context(|| format!("cannot load the {what} XDP program"))
}

pub fn program<'o>(obj: &'o Object, name: &str) -> Result<Program<'o>> {
    obj.progs()
        .find(|p| p.name() == name)
        .ok_or_else(|| anyhow!("no program {name} in the object"))
}

pub fn map_mut<'o>(obj: &'o mut Object, name: &str) -> Result<MapMut<'o>> {
    obj.maps_mut()
        .find(|m| m.name() == name)
        .ok_or_else(|| anyhow!("no map {name} in the object"))
}

/// An XDP program attached in native mode to an interface in a namespace; detached
/// on drop (deleting the namespace would detach it too).
pub struct Attached {
    ns: String,
    iface: String,
}

impl Attached {
    pub fn new(prog: &Program, ns: &str, iface: &str) -> Result<Attached> {
        let fd = prog.as_fd();
        within(ns, || {
            let index = ifindex(iface)?;
            Xdp::new(fd)
                .attach(index, XdpFlags::DRV_MODE)
                .with_context(|| format!("cannot attach XDP to {iface} in {ns}"))
        })?;
        Ok(Attached {
            ns: ns.into(),
            iface: iface.into(),
        })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let iface = self.iface.clone();
        let _ = within(&self.ns, move || {
            let index = ifindex(&iface)?;
            // SAFETY: plain libbpf call; detaching needs no program fd.
            unsafe {
                libbpf_sys::bpf_xdp_detach(index, XdpFlags::DRV_MODE.bits(), std::ptr::null())
            };
            Ok(())
        });
    }
}

/// A tc ingress program (direct action, on a clsact qdisc) on an interface in a
/// namespace; the qdisc, and with it the program, is removed on drop.
pub struct TcAttached {
    ns: String,
    iface: String,
}

impl TcAttached {
    pub fn new(prog: &Program, ns: &str, iface: &str) -> Result<TcAttached> {
        let fd = prog.as_fd();
        within(ns, || {
            let mut hook = TcHookBuilder::new(fd)
                .ifindex(ifindex(iface)?)
                .replace(true)
                .handle(1)
                .priority(1)
                .hook(TC_INGRESS);
            hook.create()
                .and_then(|mut h| h.attach())
                .with_context(|| format!("cannot attach tc ingress to {iface} in {ns}"))?;
            Ok(())
        })?;
        Ok(TcAttached {
            ns: ns.into(),
            iface: iface.into(),
        })
    }
}

impl Drop for TcAttached {
    fn drop(&mut self) {
        let _ = exec(
            &self.ns,
            &["tc", "qdisc", "del", "dev", &self.iface, "clsact"],
        );
    }
}

/// The ifindex of `iface` in the calling thread's namespace.
pub fn ifindex(iface: &str) -> Result<i32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(anyhow!("no interface {iface}"));
    }
    Ok(index as i32)
}

/// Received-frame counters of the sink.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCount {
    /// Frames to the backend with correct checksums.
    pub good: u64,
    /// Frames to the backend with a wrong IPv4 or UDP checksum.
    pub bad: u64,
}

/// Where the sink counts on the backend pod's eth0 (bench/bpf/sink.bpf.c).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkAt {
    /// tc ingress: every path hands the pod an skb, as a real pod needs.
    Tc,
    /// XDP: frames redirected by XDP are dropped before an skb exists; skbs (the
    /// kernel's, AF_XDP's) are converted first, AF_XDP's copied (too little headroom).
    Xdp,
}

/// The sink on the backend pod's eth0 (bench/bpf/sink.bpf.c).
pub struct Sink {
    obj: Object,
    _attached: SinkAttached,
}

enum SinkAttached {
    Tc(#[allow(dead_code)] TcAttached),
    Xdp(#[allow(dead_code)] Attached),
}

impl Sink {
    pub fn attach(topo: &Topology, at: SinkAt) -> Result<Sink> {
        let mut obj = load(SINK_OBJ, "sink")?;
        let mut target = [0u8; 8];
        target[0..4].copy_from_slice(&BACKEND_IP.octets());
        target[4..6].copy_from_slice(&TARGET_PORT.to_be_bytes());
        map_mut(&mut obj, "target")?.update(&0u32.to_ne_bytes(), &target, MapFlags::ANY)?;
        let attached = match at {
            SinkAt::Tc => {
                // XDP redirects into a veth land in its peer's NAPI, which a veth has
                // only with XDP or GRO on.
                exec(&topo.backend, &["ethtool", "-K", POD_IF, "gro", "on"])
                    .context("cannot turn GRO on for the backend's eth0")?;
                SinkAttached::Tc(TcAttached::new(
                    &program(&obj, "tc_sink")?,
                    &topo.backend,
                    POD_IF,
                )?)
            }
            SinkAt::Xdp => SinkAttached::Xdp(Attached::new(
                &program(&obj, "xdp_sink")?,
                &topo.backend,
                POD_IF,
            )?),
        };
        Ok(Sink {
            obj,
            _attached: attached,
        })
    }

    pub fn count(&self) -> Result<SinkCount> {
        let counts = self
            .obj
            .maps()
            .find(|m| m.name() == "counts")
            .ok_or_else(|| anyhow!("no map counts"))?;
        let sum = |k: u32| -> Result<u64> {
            let per_cpu = counts
                .lookup_percpu(&k.to_ne_bytes(), MapFlags::ANY)?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or_default()))
                .sum())
        };
        Ok(SinkCount {
            good: sum(0)?,
            bad: sum(1)?,
        })
    }
}

/// The XDP ceiling (bench/bpf/fwd.bpf.c) on the client pod's host-side veth: the
/// Service's frontend maps to the backend, its veth and MACs.
pub struct XdpForwarder {
    _obj: Object,
    _attached: Attached,
}

impl XdpForwarder {
    pub fn attach(topo: &Topology) -> Result<XdpForwarder> {
        let mut obj = load(FWD_OBJ, "forwarder")?;
        let mut key = [0u8; 8];
        key[0..4].copy_from_slice(&CLUSTER_IP.octets());
        key[4..6].copy_from_slice(&SERVICE_PORT.to_be_bytes());
        key[6] = libc::IPPROTO_UDP as u8;
        let mut backend = [0u8; 24];
        backend[0..4].copy_from_slice(&BACKEND_IP.octets());
        backend[4..6].copy_from_slice(&TARGET_PORT.to_be_bytes());
        backend[8..12].copy_from_slice(&topo.backend_host_ifindex.to_ne_bytes());
        backend[12..18].copy_from_slice(&topo.backend_host_mac);
        backend[18..24].copy_from_slice(&topo.backend_mac);
        map_mut(&mut obj, "services")?.update(&key, &backend, MapFlags::ANY)?;
        let attached = Attached::new(&program(&obj, "xdp_fwd")?, &topo.node, &topo.client_host_if)?;
        Ok(XdpForwarder {
            _obj: obj,
            _attached: attached,
        })
    }
}
