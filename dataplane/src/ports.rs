//! The interfaces a pipeline serves and what each is for.

use crate::snapshot::Mac;
use crate::verdict::PortId;

/// What an interface connects kxdp to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// The node's underlay: VXLAN to and from other nodes, NodePort/LB clients.
    Uplink,
    /// The host side of a pod's veth.
    Pod,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub role: PortRole,
    pub mac: Mac,
    pub mtu: u16,
    /// Frames from this port may carry partial L4 checksums, so the pipeline completes
    /// them in software: pod veths (checksum offload), and any virtual link such as a
    /// veth uplink, where even a kernel VXLAN peer's inner checksums stay partial. A
    /// NIC delivers complete checksums and gets RFC 1624 updates only.
    pub partial_checksums: bool,
}

/// All ports of a pipeline; a [`PortId`] indexes this list.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    ports: Vec<Port>,
    uplink: Option<PortId>,
}

impl Ports {
    pub fn new(ports: Vec<Port>) -> Ports {
        let uplink = ports
            .iter()
            .position(|p| p.role == PortRole::Uplink)
            .map(|i| PortId(i as u16));
        Ports { ports, uplink }
    }

    #[inline]
    pub fn get(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.0 as usize)
    }

    pub fn uplink(&self) -> Option<PortId> {
        self.uplink
    }

    pub fn by_name(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| PortId(i as u16))
    }

    pub fn iter(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| (PortId(i as u16), p))
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
