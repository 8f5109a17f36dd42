//! kxdp's dataplane: packet views, Maglev, conntrack, Service NAT, VXLAN and the
//! sans-IO pipeline that ties them together. It knows nothing about Kubernetes.

pub mod affinity;
pub mod conntrack;
pub mod flow;
pub mod maglev;
pub mod snapshot;
