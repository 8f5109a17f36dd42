//! kxdp's control side: Kubernetes objects to dataplane snapshots, the object
//! sources, and the pieces of the `kxdp` binary. It knows nothing about packet bytes.

pub mod admin;
pub mod apiserver;
pub mod cli;
pub mod client;
pub mod endpoints;
pub mod inspect;
pub mod metrics;
pub mod objects;
pub mod pods;
pub mod replay;
pub mod run;
pub mod tables;
pub mod translate;
pub mod translator;
