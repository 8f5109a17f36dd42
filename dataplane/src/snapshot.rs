//! The immutable view of the cluster a worker forwards with.
//!
//! The control side describes Services, endpoints and nodes with the `*Spec` types and
//! a [`SnapshotBuilder`] turns them into lookup structures (frontend map, Maglev
//! tables, pod-CIDR routes, VTEP set). A snapshot is never mutated: a change is a new
//! snapshot, published whole. Kubernetes semantics that decide *which* endpoints may
//! serve (ready, serving, terminating; traffic policies) live here, once, so every
//! source of objects gets them identically.
//!
//! ## Reuse
//! Most changes touch a few Services, so a builder made with
//! [`SnapshotBuilder::reusing`] takes over, by reference count, every [`ServicePort`] of
//! the previous snapshot whose spec is equal to the new one: its backend lists and Maglev
//! tables are a pure function of the spec and the table-size cap, so the result is the
//! snapshot a fresh build would give, and a one-endpoint change rebuilds one table.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::flow::{Nanos, Proto};
use crate::maglev::{MaglevBackend, MaglevTable};

/// An IPv4 prefix, e.g. a node's pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Host bits are cleared, so `198.18.1.7/24` is `198.18.1.0/24`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| format!("prefix length {prefix} is over 32"))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A VXLAN network identifier: 24 bits, checked at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vni(u32);

impl Vni {
    pub fn new(v: u32) -> Option<Vni> {
        (v < 1 << 24).then_some(Vni(v))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// This node: what kxdp terminates and where it sends from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    /// Pod CIDRs assigned to this node (`spec.podCIDRs`).
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Underlay address: outer source of encapsulated frames, destination of decap.
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub vni: Vni,
    /// Addresses NodePorts answer on (InternalIP, ExternalIP, VTEP address).
    pub node_ips: Vec<Ipv4Addr>,
    /// Source address for masqueraded traffic (external clients with
    /// externalTrafficPolicy Cluster, hairpin). As flannel does, the first address of
    /// the node's pod CIDR: other nodes route it back to this node through VXLAN.
    pub snat_ip: Ipv4Addr,
}

/// Another node of the cluster reachable through VXLAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub vni: Vni,
}

/// One endpoint of a Service port, as an EndpointSlice describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    pub addr: SocketAddrV4,
    /// The endpoint's `nodeName` is this node.
    pub is_local: bool,
    /// `conditions.ready` (nil counts as true, as the API documents).
    pub ready: bool,
    /// `conditions.serving` (nil: same as ready).
    pub serving: bool,
    /// `conditions.terminating` (nil counts as false).
    pub terminating: bool,
}

/// One port of a Service with the addresses it is reached on and its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePortSpec {
    /// `namespace/name:port-name` (port name may be empty), for humans and metrics.
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with its `timeoutSeconds`.
    pub affinity_timeout: Option<Nanos>,
    pub internal_policy_local: bool,
    pub external_policy_local: bool,
    /// Endpoints with the target port already resolved (named ports included).
    pub endpoints: Vec<EndpointSpec>,
}

/// Where a Service address was reached: it decides the traffic policy that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// A destination that belongs to a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServiceId,
    pub kind: FrontendKind,
}

/// Index of a Service port inside one snapshot (not stable across snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddrV4,
    pub is_local: bool,
}

/// A Service port ready for the fast path. Shared (`Arc`) between the snapshots whose
/// spec of it is equal, so a rebuild that does not touch it costs a reference count.
#[derive(Debug)]
pub struct ServicePort {
    pub spec: ServicePortSpec,
    /// A stable id of the Service port (hash of its name): the session-affinity key.
    pub id_hash: u64,
    /// Endpoints allowed to take new flows (kube-proxy's rules: ready ones, else
    /// serving-terminating ones); Maglev entries index this list.
    pub backends: Vec<Backend>,
    /// Maglev over `backends` (policy Cluster).
    pub cluster: MaglevTable,
    /// Maglev over the local subset of `backends` with the same fallback rule
    /// (policy Local); entries index `local_backends`.
    pub local: MaglevTable,
    pub local_backends: Vec<Backend>,
}

impl ServicePort {
    /// Does `other` answer on exactly the frontends this port answers on?
    pub fn same_frontends(&self, other: &ServicePort) -> bool {
        let (a, b) = (&self.spec, &other.spec);
        a.name == b.name
            && a.proto == b.proto
            && a.port == b.port
            && a.cluster_ips == b.cluster_ips
            && a.node_port == b.node_port
            && a.external_ips == b.external_ips
            && a.load_balancer_ips == b.load_balancer_ips
    }

    /// The table and backend list for traffic reached through `kind`.
    pub fn selection(&self, kind: FrontendKind) -> (&MaglevTable, &[Backend]) {
        let local = if kind.is_external() {
            self.spec.external_policy_local
        } else {
            self.spec.internal_policy_local
        };
        if local {
            (&self.local, &self.local_backends)
        } else {
            (&self.cluster, &self.backends)
        }
    }

    /// Does this endpoint still serve the Service? An established flow keeps its
    /// backend across snapshots exactly as long as this holds.
    pub fn serves(&self, addr: SocketAddrV4) -> bool {
        self.spec
            .endpoints
            .iter()
            .any(|e| e.addr == addr && (e.ready || e.serving))
    }

    pub fn backend(&self, kind: FrontendKind, idx: u16) -> Option<&Backend> {
        self.selection(kind).1.get(idx as usize)
    }

    /// Backend lists and Maglev tables for `spec`, built with the table-size cap
    /// `max_table_size`. Endpoints are sorted first: Maglev tables depend on backend
    /// order, and every source of objects, in any order, must give every node the same
    /// tables.
    pub fn new(mut spec: ServicePortSpec, max_table_size: u32) -> ServicePort {
        sort_endpoints(&mut spec);
        let id_hash = twox_hash::XxHash64::oneshot(0, spec.name.as_bytes());
        ServicePort::build(spec, id_hash, max_table_size)
    }

    fn build(spec: ServicePortSpec, id_hash: u64, max_table_size: u32) -> ServicePort {
        let backends = eligible(spec.endpoints.iter());
        let local_backends = eligible(spec.endpoints.iter().filter(|e| e.is_local));
        let cluster = maglev_for(&backends, max_table_size);
        // Only a Local traffic policy ever looks at the local table.
        let local = if spec.internal_policy_local || spec.external_policy_local {
            maglev_for(&local_backends, max_table_size)
        } else {
            MaglevTable::empty()
        };
        ServicePort {
            id_hash,
            spec,
            backends,
            cluster,
            local,
            local_backends,
        }
    }
}

/// Puts a spec's endpoints in the order [`ServicePort`]s keep them (by address).
pub fn sort_endpoints(spec: &mut ServicePortSpec) {
    spec.endpoints
        .sort_by_key(|e| (u32::from(*e.addr.ip()), e.addr.port()));
}

/// Selects the endpoints that may take new flows, as kube-proxy does: ready
/// endpoints; when none is ready, those that are serving while terminating.
fn eligible<'a>(eps: impl Iterator<Item = &'a EndpointSpec> + Clone) -> Vec<Backend> {
    let to_backend = |e: &EndpointSpec| Backend {
        addr: e.addr,
        is_local: e.is_local,
    };
    let ready: Vec<Backend> = eps
        .clone()
        .filter(|e| e.ready && !e.terminating)
        .map(to_backend)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating)
        .map(to_backend)
        .collect()
}

fn maglev_for(backends: &[Backend], max_m: u32) -> MaglevTable {
    let ids: Vec<MaglevBackend> = backends
        .iter()
        .map(|b| MaglevBackend {
            id: (u32::from(*b.addr.ip()) as u64) << 16 | b.addr.port() as u64,
            weight: 1,
        })
        .collect();
    MaglevTable::build(&ids, MaglevTable::table_size_for(ids.len(), max_m))
}

/// What a destination address means to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Inside one of this node's pod CIDRs.
    LocalPod,
    /// Inside a remote node's pod CIDR: encapsulate to its VTEP.
    Remote(&'a RemoteNode),
    /// Anything else (the underlay, the outside world).
    Outside,
}

/// The immutable forwarding state published to workers.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub node: LocalNode,
    /// The Maglev table-size cap the tables were built with: reuse needs the same.
    max_table_size: u32,
    services: Vec<Arc<ServicePort>>,
    /// Shared with the snapshots patched from this one ([`Snapshot::with_ports`]).
    frontends: Arc<FxHashMap<ServiceKey, Frontend>>,
    remotes: Vec<RemoteNode>,
    /// Pod-CIDR routes, one exact-match map per prefix length, longest first.
    routes: Vec<(u8, FxHashMap<u32, u32>)>,
    vteps: FxHashMap<Ipv4Addr, u32>,
}

impl Snapshot {
    pub fn frontend(&self, key: &ServiceKey) -> Option<Frontend> {
        self.frontends.get(key).copied()
    }
    pub fn service(&self, id: ServiceId) -> &ServicePort {
        &self.services[id.0 as usize]
    }
    pub fn services(&self) -> &[Arc<ServicePort>] {
        &self.services
    }
    pub fn remotes(&self) -> &[RemoteNode] {
        &self.remotes
    }
    pub fn frontends(&self) -> impl Iterator<Item = (&ServiceKey, &Frontend)> {
        self.frontends.iter()
    }

    pub fn route(&self, dst: Ipv4Addr) -> Route<'_> {
        if self.node.pod_cidrs.iter().any(|c| c.contains(dst)) {
            return Route::LocalPod;
        }
        let ip = u32::from(dst);
        for (prefix, map) in &self.routes {
            if let Some(&i) = map.get(&(ip & mask(*prefix))) {
                return Route::Remote(&self.remotes[i as usize]);
            }
        }
        Route::Outside
    }

    /// The remote node owning this VTEP address, if it is one we accept VXLAN from.
    pub fn vtep(&self, ip: Ipv4Addr) -> Option<&RemoteNode> {
        self.vteps.get(&ip).map(|&i| &self.remotes[i as usize])
    }

    /// Does `other` have the same frontends as this snapshot, because one was patched
    /// from the other? (The steering program's frontend map then has nothing to do.)
    pub fn shares_frontends(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.frontends, &other.frontends)
    }

    /// This snapshot as generation `generation` with some Service ports replaced by
    /// ports of the same frontends (endpoints, policies or affinity changed): the
    /// frontend map is shared, not rebuilt, so the cost is that of the replacements.
    pub fn with_ports(
        &self,
        generation: u64,
        replaced: &[(ServiceId, Arc<ServicePort>)],
    ) -> Result<Snapshot, PatchError> {
        let mut services = self.services.clone();
        for (id, port) in replaced {
            let slot = services
                .get_mut(id.0 as usize)
                .ok_or(PatchError::NoSuchPort(*id))?;
            if !slot.same_frontends(port) {
                return Err(PatchError::FrontendsDiffer(port.spec.name.clone()));
            }
            *slot = port.clone();
        }
        Ok(Snapshot {
            generation,
            node: self.node.clone(),
            max_table_size: self.max_table_size,
            services,
            frontends: self.frontends.clone(),
            remotes: self.remotes.clone(),
            routes: self.routes.clone(),
            vteps: self.vteps.clone(),
        })
    }

    /// Rough bytes held by the lookup tables (for docs and tests of the memory budget).
    pub fn approx_bytes(&self) -> usize {
        let svc: usize = self
            .services
            .iter()
            .map(|s| {
                std::mem::size_of::<ServicePort>()
                    + s.cluster.bytes()
                    + s.local.bytes()
                    + (s.backends.len() + s.local_backends.len()) * std::mem::size_of::<Backend>()
                    + s.spec.endpoints.len() * std::mem::size_of::<EndpointSpec>()
                    + s.spec.name.len()
            })
            .sum();
        svc + self.frontends.len() * (std::mem::size_of::<(ServiceKey, Frontend)>() + 8)
    }
}

/// Why [`Snapshot::with_ports`] cannot patch a snapshot.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("there is no Service port {0:?} to replace")]
    NoSuchPort(ServiceId),
    #[error("{0} does not have the frontends of the port it would replace")]
    FrontendsDiffer(String),
}

/// Errors in a Service port that make the builder refuse it (the rest still applies).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("{} {}:{} is already taken by {owner}", key.proto.name(), key.ip, key.port)]
    FrontendTaken { key: ServiceKey, owner: String },
}

/// Builds a [`Snapshot`] off the fast path.
pub struct SnapshotBuilder {
    generation: u64,
    node: LocalNode,
    max_table_size: u32,
    services: Vec<Arc<ServicePort>>,
    frontends: FxHashMap<ServiceKey, Frontend>,
    remotes: Vec<RemoteNode>,
    /// The previous snapshot's Service ports by name hash (see [`SnapshotBuilder::reusing`]).
    previous: FxHashMap<u64, Arc<ServicePort>>,
}

impl SnapshotBuilder {
    /// `max_table_size` is the Maglev table size M (`--maglev-table-size`), a prime.
    pub fn new(generation: u64, node: LocalNode, max_table_size: u32) -> SnapshotBuilder {
        SnapshotBuilder {
            generation,
            node,
            max_table_size,
            services: Vec::new(),
            frontends: FxHashMap::default(),
            remotes: Vec::new(),
            previous: FxHashMap::default(),
        }
    }

    /// Makes [`SnapshotBuilder::add_service_port`] take over `previous`'s Service port of
    /// the same name when its spec is equal (after endpoint sorting) instead of
    /// rebuilding it. Exact: the backend lists and tables are a function of the spec and
    /// the table-size cap, and nothing is taken over when the caps differ.
    pub fn reusing(mut self, previous: &Snapshot) -> SnapshotBuilder {
        if previous.max_table_size == self.max_table_size {
            // A name hash shared by two ports (a collision, or a duplicate name in a
            // file) keeps one of them: the other is rebuilt, which is only slower.
            self.previous = previous
                .services
                .iter()
                .map(|s| (s.id_hash, s.clone()))
                .collect();
        }
        self
    }

    pub fn add_remote_node(&mut self, node: RemoteNode) {
        self.remotes.push(node);
    }

    /// Makes room for `n` more Service ports.
    pub fn reserve(&mut self, n: usize) {
        self.services.reserve(n);
        self.frontends.reserve(n);
    }

    /// Adds a Service port with all its frontends. A frontend (ip, port, proto) that
    /// another Service port already claims is an error and nothing of this port is
    /// added.
    pub fn add_service_port(&mut self, mut spec: ServicePortSpec) -> Result<ServiceId, SpecError> {
        sort_endpoints(&mut spec);
        let id_hash = twox_hash::XxHash64::oneshot(0, spec.name.as_bytes());
        let port = match self.previous.get(&id_hash) {
            Some(prev) if prev.spec == spec => prev.clone(),
            _ => Arc::new(ServicePort::build(spec, id_hash, self.max_table_size)),
        };
        self.add_port(port)
    }

    /// [`SnapshotBuilder::add_service_port`] of a port already built (with this
    /// builder's table-size cap), shared with the snapshots that have it.
    pub fn add_port(&mut self, port: Arc<ServicePort>) -> Result<ServiceId, SpecError> {
        let id = ServiceId(self.services.len() as u32);
        let spec = &port.spec;
        let key = |ip, port| ServiceKey {
            ip,
            port,
            proto: spec.proto,
        };
        let node_ports = spec
            .node_port
            .into_iter()
            .flat_map(|np| self.node.node_ips.iter().map(move |&ip| (ip, np)));
        let keys = spec
            .cluster_ips
            .iter()
            .map(|&ip| (key(ip, spec.port), FrontendKind::ClusterIp))
            .chain(node_ports.map(|(ip, np)| (key(ip, np), FrontendKind::NodePort)))
            .chain(
                spec.load_balancer_ips
                    .iter()
                    .map(|&ip| (key(ip, spec.port), FrontendKind::LoadBalancer)),
            )
            .chain(
                spec.external_ips
                    .iter()
                    .map(|&ip| (key(ip, spec.port), FrontendKind::ExternalIp)),
            );
        // Checked first, so that a refused port leaves nothing behind.
        for (k, _) in keys.clone() {
            if let Some(f) = self.frontends.get(&k) {
                return Err(SpecError::FrontendTaken {
                    key: k,
                    owner: self.services[f.service.0 as usize].spec.name.clone(),
                });
            }
        }
        for (k, kind) in keys {
            // A Service port listing one address twice (say an external IP that is
            // also its LoadBalancer IP) keeps the first kind.
            self.frontends
                .entry(k)
                .or_insert(Frontend { service: id, kind });
        }
        self.services.push(port);
        Ok(id)
    }

    pub fn build(self) -> Snapshot {
        let mut by_prefix: Vec<(u8, FxHashMap<u32, u32>)> = Vec::new();
        let mut vteps = FxHashMap::default();
        for (i, n) in self.remotes.iter().enumerate() {
            vteps.insert(n.vtep_ip, i as u32);
            for c in &n.pod_cidrs {
                let slot = match by_prefix.iter().position(|(p, _)| *p == c.prefix()) {
                    Some(s) => s,
                    None => {
                        by_prefix.push((c.prefix(), FxHashMap::default()));
                        by_prefix.len() - 1
                    }
                };
                by_prefix[slot].1.insert(u32::from(c.addr()), i as u32);
            }
        }
        by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(*prefix));
        Snapshot {
            generation: self.generation,
            node: self.node,
            max_table_size: self.max_table_size,
            services: self.services,
            frontends: Arc::new(self.frontends),
            remotes: self.remotes,
            routes: by_prefix,
            vteps,
        }
    }
}
