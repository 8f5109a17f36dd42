//! Kubernetes objects to a dataplane [`Snapshot`], with the meaning kube-proxy and
//! flannel give them. Both object sources (API-server watch, `--objects` file) come
//! through here, so they cannot disagree.
//!
//! - **Nodes** (flannel's VXLAN backend): pod CIDRs from `spec.podCIDRs` (else
//!   `spec.podCIDR`), IPv4 only. The VTEP address is the annotation
//!   `flannel.alpha.coreos.com/public-ip`, else the node's InternalIP; VNI and VTEP MAC
//!   come from `flannel.alpha.coreos.com/backend-data` (`{"VNI":1,"VtepMAC":"…"}`),
//!   VNI 1 when absent. A node without a VtepMAC is still usable: its MAC is left as
//!   `00:00:00:00:00:00` for the dataplane to learn (ARP) instead.
//! - **Services** (kube-proxy's service change tracker, IPv4 family): ExternalName and
//!   headless Services are not proxied; one [`ServicePortSpec`] per port carries every
//!   IPv4 ClusterIP, the NodePort (types NodePort and LoadBalancer), externalIPs and
//!   the VIP-mode LoadBalancer ingress IPs, ClientIP affinity and both traffic
//!   policies.
//! - **EndpointSlices** (kube-proxy's EndpointSliceCache): a slice belongs to the
//!   Service its `kubernetes.io/service-name` label names, in its namespace. A Service
//!   port takes the slice port with its port name and protocol: the EndpointSlice
//!   controller has already resolved named targetPorts per pod. Only the first address
//!   of an endpoint counts (the API defines no meaning for the others and kube-proxy
//!   ignores them). Conditions default as the API documents.
//!
//! What is wrong with one object is an [`ObjectError`] and the rest still apply; only
//! a description of this node that cannot be had is fatal ([`TranslateError`]).
//!
//! Determinism: Services, slices and nodes are visited sorted by name and each port's
//! endpoints are sorted by address, so the same objects give the same snapshot in any
//! order, and every node builds the same Maglev table for the same endpoint set.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::snapshot::{
    EndpointSpec, Ipv4Net, LocalNode, Mac, RemoteNode, ServicePortSpec, Snapshot, Vni,
};

use crate::objects::{ObjectError, Objects};
pub use crate::translator::Translator;

/// flannel's annotation for the node's VTEP (underlay) address.
pub const ANNOTATION_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// flannel's annotation with the VXLAN backend's `{"VNI":…,"VtepMAC":"…"}`.
pub const ANNOTATION_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// flannel's VNI when backend-data names none.
const DEFAULT_VNI: u32 = 1;
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API default).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u64 = 10_800;
/// The API's upper bound for `timeoutSeconds` (one day).
const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86_400;

/// What translation needs to know about where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateConfig {
    /// This node's Node object (`--node-name`).
    pub node_name: String,
    /// Maglev table size M (`--maglev-table-size`), a prime.
    pub max_table_size: u32,
}

/// A snapshot and what had to be left out of it.
#[derive(Debug)]
pub struct Translated {
    /// Shared: a [`Translator`] keeps it to patch the next one from.
    pub snapshot: Arc<Snapshot>,
    pub errors: Vec<ObjectError>,
}

/// This node cannot be described, so there is no snapshot at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "no Node named {node:?} among the objects (Nodes: {known}); \
         --node-name must name this machine's Node object"
    )]
    NodeMissing {
        node: String,
        /// The Node names that were present, comma-separated, for the message.
        known: String,
    },
    #[error("Node {node} cannot be this node: {problem}")]
    LocalNode { node: String, problem: NodeProblem },
}

/// Why a Node cannot take part in the VXLAN overlay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeProblem {
    #[error(
        "it has no IPv4 pod CIDR in spec.podCIDRs or spec.podCIDR; allocate one \
         (kube-controller-manager --allocate-node-cidrs) or set spec.podCIDR"
    )]
    NoPodCidr,
    #[error("{field}: {why}")]
    BadPodCidr { field: String, why: String },
    #[error(
        "it has no VTEP address; set the annotation {ANNOTATION_PUBLIC_IP} or give it an \
         IPv4 InternalIP in status.addresses"
    )]
    NoVtep,
    #[error(
        "annotation {ANNOTATION_PUBLIC_IP}: {value:?} is not an IPv4 address; fix it, or \
         remove it to use the InternalIP"
    )]
    BadPublicIp { value: String },
    #[error(
        "annotation {ANNOTATION_BACKEND_DATA}: {why}; want JSON like \
         {{\"VNI\":1,\"VtepMAC\":\"02:00:c6:13:80:01\"}}"
    )]
    BadBackendData { why: String },
}

/// Builds the snapshot of `objects` as seen from `cfg.node_name`, from nothing. A
/// [`Translator`] does the same and keeps its results for the next change.
pub fn translate(
    objects: &Objects,
    cfg: &TranslateConfig,
    generation: u64,
) -> Result<Translated, TranslateError> {
    let mut t = Translator::new(cfg.clone());
    t.replace(objects.clone());
    t.build(generation)
}

/// This node and the others, from Nodes sorted by name with duplicates removed.
pub(crate) fn describe_nodes(
    nodes: &[(&str, &Node)],
    cfg: &TranslateConfig,
    errors: &mut Vec<ObjectError>,
) -> Result<(LocalNode, Vec<RemoteNode>), TranslateError> {
    let Some(&(_, own)) = nodes.iter().find(|(name, _)| *name == cfg.node_name) else {
        let known: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        return Err(TranslateError::NodeMissing {
            node: cfg.node_name.clone(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        });
    };
    let local =
        local_node(own, &cfg.node_name, errors).map_err(|problem| TranslateError::LocalNode {
            node: cfg.node_name.clone(),
            problem,
        })?;
    let mut remotes = Vec::with_capacity(nodes.len());
    for &(name, node) in nodes {
        if name == cfg.node_name {
            continue;
        }
        match describe_node(node, name, errors) {
            Ok(v) => remotes.push(RemoteNode {
                name: name.to_owned(),
                pod_cidrs: v.pod_cidrs,
                vtep_ip: v.vtep_ip,
                vtep_mac: v.vtep_mac,
                vni: v.vni,
            }),
            Err(problem) => errors.push(ObjectError::cluster(
                "Node",
                name,
                format!("{problem}; pods on it are unreachable until it is fixed"),
            )),
        }
    }
    Ok((local, remotes))
}

// ---- Nodes ----

/// A Node as flannel's VXLAN backend sees it.
#[derive(Debug)]
struct NodeView {
    pod_cidrs: Vec<Ipv4Net>,
    vtep_ip: Ipv4Addr,
    vtep_mac: Mac,
    vni: Vni,
    /// InternalIP and ExternalIP addresses (IPv4), in the Node's order.
    addresses: Vec<Ipv4Addr>,
}

fn local_node(
    node: &Node,
    name: &str,
    errors: &mut Vec<ObjectError>,
) -> Result<LocalNode, NodeProblem> {
    let v = describe_node(node, name, errors)?;
    let mut node_ips = v.addresses;
    node_ips.push(v.vtep_ip);
    let mut seen = Vec::with_capacity(node_ips.len());
    node_ips.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    Ok(LocalNode {
        name: name.to_owned(),
        // flannel gives flannel.1 the network address of the node's subnet; other
        // nodes route that address back here through VXLAN, so it is safe to SNAT to.
        snat_ip: v.pod_cidrs[0].addr(),
        pod_cidrs: v.pod_cidrs,
        vtep_ip: v.vtep_ip,
        vtep_mac: v.vtep_mac,
        vni: v.vni,
        node_ips,
    })
}

/// Reads a Node; problems that leave it usable (an unreadable address among good
/// ones) go to `errors`, those that do not are returned.
fn describe_node(
    node: &Node,
    name: &str,
    errors: &mut Vec<ObjectError>,
) -> Result<NodeView, NodeProblem> {
    let spec = node.spec.as_ref();
    let (field, cidrs): (&str, Vec<&str>) = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => {
            ("spec.podCIDRs", list.iter().map(|s| s.as_str()).collect())
        }
        _ => (
            "spec.podCIDR",
            spec.and_then(|s| s.pod_cidr.as_deref())
                .into_iter()
                .collect(),
        ),
    };
    let mut pod_cidrs = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        if c.contains(':') {
            continue; // IPv6: the overlay is IPv4
        }
        let field = if field == "spec.podCIDRs" {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        };
        let net = c
            .parse::<Ipv4Net>()
            .map_err(|why| NodeProblem::BadPodCidr { field, why })?;
        pod_cidrs.push(net);
    }
    if pod_cidrs.is_empty() {
        return Err(NodeProblem::NoPodCidr);
    }

    let mut addresses = Vec::new();
    let mut internal = None;
    let node_addresses = node.status.as_ref().and_then(|s| s.addresses.as_deref());
    for (i, a) in node_addresses.unwrap_or_default().iter().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                if a.type_ == "InternalIP" && internal.is_none() {
                    internal = Some(ip);
                }
                addresses.push(ip);
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => errors.push(ObjectError::cluster(
                "Node",
                name,
                format!(
                    "status.addresses[{i}].address: {:?} is not an IP address; ignored",
                    a.address
                ),
            )),
        }
    }

    let annotations = node.metadata.annotations.as_ref();
    let vtep_ip = match annotations.and_then(|a| a.get(ANNOTATION_PUBLIC_IP)) {
        Some(v) => v
            .parse::<Ipv4Addr>()
            .map_err(|_| NodeProblem::BadPublicIp { value: v.clone() })?,
        None => internal.ok_or(NodeProblem::NoVtep)?,
    };
    let (vni, vtep_mac) = match annotations.and_then(|a| a.get(ANNOTATION_BACKEND_DATA)) {
        Some(json) => backend_data(json).map_err(|why| NodeProblem::BadBackendData { why })?,
        None => (DEFAULT_VNI, None),
    };
    let vni = Vni::new(vni).ok_or_else(|| NodeProblem::BadBackendData {
        why: format!("VNI {vni} does not fit in 24 bits"),
    })?;
    let vtep_mac = vtep_mac.unwrap_or_else(|| {
        tracing::debug!(
            node = name,
            "no VtepMAC in backend-data; to be learnt by ARP"
        );
        Mac::default()
    });
    Ok(NodeView {
        pod_cidrs,
        vtep_ip,
        vtep_mac,
        vni,
        addresses,
    })
}

/// flannel's `vxlanLeaseAttrs`, as its VXLAN backend writes them to backend-data.
#[derive(serde::Deserialize)]
struct BackendData {
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "VtepMAC")]
    vtep_mac: Option<String>,
}

/// (VNI, VTEP MAC) from backend-data; `null` (what other backends write) means none.
fn backend_data(json: &str) -> Result<(u32, Option<Mac>), String> {
    let data: Option<BackendData> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let Some(data) = data else {
        return Ok((DEFAULT_VNI, None));
    };
    let mac = match data.vtep_mac.as_deref() {
        None | Some("") => None,
        Some(m) => Some(m.parse::<Mac>()?),
    };
    Ok((data.vni.unwrap_or(DEFAULT_VNI), mac))
}

// ---- EndpointSlices ----

/// One IPv4 EndpointSlice, checked once however many Service ports read it.
#[derive(Debug)]
pub(crate) struct ParsedSlice {
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug)]
struct SlicePort {
    name: String,
    proto: Proto,
    port: u16,
}

#[derive(Debug)]
struct SliceEndpoint {
    ip: Ipv4Addr,
    is_local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// Reads the slice `ns/name`: the name of the Service it belongs to and what it says,
/// or None when it serves no IPv4 Service (another family; no Service label, which is
/// an error).
pub(crate) fn parse_slice(
    ns: &str,
    name: &str,
    slice: &EndpointSlice,
    node_name: &str,
    errors: &mut Vec<ObjectError>,
) -> Option<(String, ParsedSlice)> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let err = |reason: String| ObjectError::namespaced("EndpointSlice", ns, name, reason);
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME));
    let Some(service) = service else {
        errors.push(err(format!(
            "label {LABEL_SERVICE_NAME} is missing, so it belongs to no Service; ignored"
        )));
        return None;
    };
    let mut ports = Vec::new();
    for (i, p) in slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let proto = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            // The Service port is reported; its slice port has nothing to serve.
            Some(_) => continue,
        };
        let port = match p.port {
            Some(v) if (1..=65535).contains(&v) => v as u16,
            Some(v) => {
                errors.push(err(format!(
                    "ports[{i}].port: {v} is out of range; ignored"
                )));
                continue;
            }
            None => {
                errors.push(err(format!(
                    "ports[{i}].port is missing (kxdp needs a port number); ignored"
                )));
                continue;
            }
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            proto,
            port,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, e) in slice.endpoints.iter().enumerate() {
        let Some(first) = e.addresses.first() else {
            errors.push(err(format!("endpoints[{i}].addresses is empty; ignored")));
            continue;
        };
        let Ok(ip) = first.parse::<Ipv4Addr>() else {
            errors.push(err(format!(
                "endpoints[{i}].addresses[0]: {first:?} is not an IPv4 address; ignored"
            )));
            continue;
        };
        let c = e.conditions.as_ref();
        // The API: nil ready means ready, nil serving means "same as ready", nil
        // terminating means not terminating.
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        endpoints.push(SliceEndpoint {
            ip,
            is_local: e.node_name.as_deref() == Some(node_name),
            ready,
            serving,
            terminating,
        });
    }
    Some((service.clone(), ParsedSlice { ports, endpoints }))
}

/// The endpoints of one Service port: every slice's port of the same name and
/// protocol, merged, the first of equal addresses kept, sorted by address.
fn endpoints_for(slices: &[&ParsedSlice], port_name: &str, proto: Proto) -> Vec<EndpointSpec> {
    let mut out = Vec::new();
    for s in slices {
        for p in s
            .ports
            .iter()
            .filter(|p| p.name == port_name && p.proto == proto)
        {
            out.extend(s.endpoints.iter().map(|e| EndpointSpec {
                addr: SocketAddrV4::new(e.ip, p.port),
                is_local: e.is_local,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            }));
        }
    }
    // Stable: of equal addresses the earliest stays first and dedup keeps it.
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    out
}

// ---- Services ----

/// What every port of a Service shares.
struct ServiceView {
    cluster_ips: Vec<Ipv4Addr>,
    has_node_ports: bool,
    external_ips: Vec<Ipv4Addr>,
    load_balancer_ips: Vec<Ipv4Addr>,
    affinity_timeout: Option<Nanos>,
    internal_policy_local: bool,
    external_policy_local: bool,
}

/// Why a whole Service is left out.
enum Skip {
    /// Not proxied by design (ExternalName, headless, no IPv4 ClusterIP).
    Silently(&'static str),
    Invalid(String),
}

/// What became of one port of a Service, in the order of `spec.ports`.
#[derive(Debug)]
pub(crate) enum PortOutcome {
    Port { index: usize, spec: ServicePortSpec },
    Error(ObjectError),
}

/// The Service `ns/name` with its slices (in slice-name order): a spec per port it
/// proxies, and errors for what it cannot.
pub(crate) fn service_ports(
    ns: &str,
    name: &str,
    svc: &Service,
    slices: &[&ParsedSlice],
) -> Vec<PortOutcome> {
    let mut out = Vec::new();
    let err =
        |reason: String| PortOutcome::Error(ObjectError::namespaced("Service", ns, name, reason));
    let view = match service_view(svc) {
        Ok(v) => v,
        Err(Skip::Silently(why)) => {
            tracing::debug!(namespace = ns, name, why, "Service not proxied");
            return out;
        }
        Err(Skip::Invalid(reason)) => {
            out.push(err(format!("{reason}; the Service is ignored")));
            return out;
        }
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref());
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let proto = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            Some("SCTP") => {
                out.push(err(format!(
                    "spec.ports[{i}].protocol: SCTP is not supported (kxdp proxies TCP and UDP); \
                     this port is ignored"
                )));
                continue;
            }
            Some(other) => {
                out.push(err(format!(
                    "spec.ports[{i}].protocol: {other:?} is not TCP, UDP or SCTP; \
                     this port is ignored"
                )));
                continue;
            }
        };
        let Some(port) = port_number(p.port) else {
            out.push(err(format!(
                "spec.ports[{i}].port: {} is out of range",
                p.port
            )));
            continue;
        };
        let node_port = match p.node_port {
            Some(v) if view.has_node_ports => match port_number(v) {
                Some(np) => Some(np),
                None => {
                    out.push(err(format!(
                        "spec.ports[{i}].nodePort: {v} is out of range"
                    )));
                    continue;
                }
            },
            _ => None,
        };
        let port_name = p.name.as_deref().unwrap_or_default();
        let spec = ServicePortSpec {
            name: format!("{ns}/{name}:{port_name}"),
            proto,
            port,
            cluster_ips: view.cluster_ips.clone(),
            node_port,
            external_ips: view.external_ips.clone(),
            load_balancer_ips: view.load_balancer_ips.clone(),
            affinity_timeout: view.affinity_timeout,
            internal_policy_local: view.internal_policy_local,
            external_policy_local: view.external_policy_local,
            endpoints: endpoints_for(slices, port_name, proto),
        };
        out.push(PortOutcome::Port { index: i, spec });
    }
    out
}

fn port_number(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|&p| p != 0)
}

fn service_view(svc: &Service) -> Result<ServiceView, Skip> {
    let Some(spec) = svc.spec.as_ref() else {
        return Err(Skip::Invalid("spec is missing".to_owned()));
    };
    let has_node_ports = match spec.type_.as_deref() {
        None | Some("ClusterIP") => false,
        Some("NodePort") | Some("LoadBalancer") => true,
        Some("ExternalName") => return Err(Skip::Silently("type ExternalName")),
        Some(other) => {
            return Err(Skip::Invalid(format!(
                "spec.type: {other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"
            )))
        }
    };

    let (field, ips): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            ("spec.clusterIPs", list.iter().map(|s| s.as_str()).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    if ips.contains(&"None") {
        return Err(Skip::Silently("headless"));
    }
    // An unallocated ClusterIP ("" in a hand-written object) means none, as for
    // kube-proxy.
    let ips: Vec<&str> = ips.into_iter().filter(|ip| !ip.is_empty()).collect();
    let cluster_ips = ipv4s(field, &ips)?;
    if cluster_ips.is_empty() {
        return Err(Skip::Silently("no IPv4 ClusterIP"));
    }

    let external: Vec<&str> = spec
        .external_ips
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| s.as_str())
        .collect();
    let external_ips = ipv4s("spec.externalIPs", &external)?;

    // As kube-proxy: ingress IPs in VIP mode (the default) are ours to answer; in
    // Proxy mode the load balancer delivers to the nodes itself.
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut lb = Vec::new();
    for (i, ing) in ingress.iter().enumerate() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                if !lb.contains(&v4) {
                    lb.push(v4);
                }
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => {
                return Err(Skip::Invalid(format!(
                    "status.loadBalancer.ingress[{i}].ip: {ip:?} is not an IP address"
                )))
            }
        }
    }

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match secs {
                None => Some(Nanos::from_secs(DEFAULT_AFFINITY_TIMEOUT_SECS)),
                Some(s) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&s) => {
                    Some(Nanos::from_secs(s as u64))
                }
                Some(s) => {
                    return Err(Skip::Invalid(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {s} is out of \
                         range (1-{MAX_AFFINITY_TIMEOUT_SECS})"
                    )))
                }
            }
        }
        Some(other) => {
            return Err(Skip::Invalid(format!(
                "spec.sessionAffinity: {other:?} is not None or ClientIP"
            )))
        }
    };

    Ok(ServiceView {
        cluster_ips,
        has_node_ports,
        external_ips,
        load_balancer_ips: lb,
        affinity_timeout,
        internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    })
}

/// The IPv4 addresses of a list of IPs (IPv6 ones belong to the other family);
/// anything that is not an IP makes the Service invalid.
fn ipv4s(field: &str, ips: &[&str]) -> Result<Vec<Ipv4Addr>, Skip> {
    let mut out = Vec::with_capacity(ips.len());
    for (i, s) in ips.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => {
                // spec.clusterIP is one address, the others are lists.
                let at = if field.ends_with('s') {
                    format!("{field}[{i}]")
                } else {
                    field.to_owned()
                };
                return Err(Skip::Invalid(format!("{at}: {s:?} is not an IP address")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_data_reads_flannel_vxlan_attrs() {
        let (vni, mac) = backend_data(r#"{"VNI":7,"VtepMAC":"02:00:c6:13:80:01"}"#).unwrap();
        assert_eq!(vni, 7);
        assert_eq!(mac, Some(Mac([0x02, 0, 0xc6, 0x13, 0x80, 0x01])));
    }

    #[test]
    fn backend_data_defaults_vni_to_1_and_leaves_a_missing_mac_unknown() {
        assert_eq!(backend_data("{}").unwrap(), (1, None));
        assert_eq!(backend_data("null").unwrap(), (1, None));
        assert_eq!(backend_data(r#"{"VtepMAC":""}"#).unwrap(), (1, None));
    }

    #[test]
    fn backend_data_rejects_a_bad_mac_and_bad_json() {
        assert!(backend_data(r#"{"VtepMAC":"zz"}"#).is_err());
        assert!(backend_data("{VNI: 1").is_err());
    }

    #[test]
    fn port_numbers_are_1_to_65535() {
        assert_eq!(port_number(0), None);
        assert_eq!(port_number(-1), None);
        assert_eq!(port_number(65536), None);
        assert_eq!(port_number(65535), Some(65535));
        assert_eq!(port_number(1), Some(1));
    }

    #[test]
    fn endpoints_merge_across_slices_keep_the_first_duplicate_and_sort() {
        let ep = |ip: [u8; 4], ready| SliceEndpoint {
            ip: Ipv4Addr::from(ip),
            is_local: false,
            ready,
            serving: ready,
            terminating: false,
        };
        let port = || SlicePort {
            name: "http".to_owned(),
            proto: Proto::Tcp,
            port: 8080,
        };
        let slices = [
            ParsedSlice {
                ports: vec![port()],
                endpoints: vec![ep([198, 18, 2, 10], true), ep([198, 18, 1, 10], true)],
            },
            ParsedSlice {
                ports: vec![port()],
                endpoints: vec![ep([198, 18, 1, 10], false), ep([198, 18, 1, 11], true)],
            },
        ];
        let slices = [&slices[0], &slices[1]];
        let eps = endpoints_for(&slices, "http", Proto::Tcp);
        let addrs: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.2.10:8080"]
        );
        assert!(
            eps[0].ready,
            "the first slice's copy of 198.18.1.10 is kept"
        );
        assert!(endpoints_for(&slices, "http", Proto::Udp).is_empty());
        assert!(endpoints_for(&slices, "", Proto::Tcp).is_empty());
    }
}
