//! kxdp's control side: Kubernetes objects to dataplane snapshots, the object
//! sources, and the pieces of the `kxdp` binary. It knows nothing about packet bytes.

pub mod apiserver;
pub mod cli;
pub mod endpoints;
pub mod metrics;
pub mod objects;
pub mod replay;
pub mod run;
pub mod translate;
pub mod translator;
