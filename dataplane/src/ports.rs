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

/// All ports of a pipeline; a [`PortId`] indexes this list. A slot may be vacant: a
/// pod's interface that went away, whose id a later pod reuses.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    ports: Vec<Option<Port>>,
    uplink: Option<PortId>,
}

impl Ports {
    pub fn new(ports: Vec<Port>) -> Ports {
        let uplink = ports
            .iter()
            .position(|p| p.role == PortRole::Uplink)
            .map(|i| PortId(i as u16));
        Ports {
            ports: ports.into_iter().map(Some).collect(),
            uplink,
        }
    }

    /// Puts `port` in slot `id` (or vacates it), growing the list if needed. The
    /// uplink's slot is never changed.
    pub fn set(&mut self, id: PortId, port: Option<Port>) {
        debug_assert!(Some(id) != self.uplink);
        let i = id.0 as usize;
        if i >= self.ports.len() {
            self.ports.resize(i + 1, None);
        }
        self.ports[i] = port;
    }

    #[inline]
    pub fn get(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.0 as usize)?.as_ref()
    }

    pub fn uplink(&self) -> Option<PortId> {
        self.uplink
    }

    pub fn by_name(&self, name: &str) -> Option<PortId> {
        self.iter().find(|(_, p)| p.name == name).map(|(id, _)| id)
    }

    /// The ports there are, vacant slots skipped.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PortId(i as u16), p.as_ref()?)))
    }

    /// Slots, vacant ones included: every [`PortId`] is below it.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
