//! kxdp's dataplane: packet views, Maglev, conntrack, Service NAT, VXLAN and the
//! sans-IO pipeline that ties them together. It knows nothing about Kubernetes.

pub mod affinity;
pub mod arp;
pub mod checksum;
pub mod conntrack;
pub mod explain;
pub mod flow;
pub mod frame;
pub mod held;
pub mod icmp;
pub mod inspect;
pub mod lookahead;
pub mod maglev;
pub mod memo;
pub mod nat;
pub mod neighbour;
pub mod owners;
pub mod packet;
pub mod pick;
pub mod pipeline;
pub mod ports;
pub mod resolve;
pub mod snapshot;
pub mod verdict;
pub mod vxlan;
pub mod wire;
pub mod worker;
pub mod xsk;
