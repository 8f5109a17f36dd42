//! AF_XDP through xsk-rs: one UMEM per worker shared by its sockets on every
//! interface (forwarding hands a frame from one interface's RX ring to another's TX
//! ring, never copying it), and the steering program that feeds them.

pub mod fill;
pub mod port;
pub mod sleep;
pub mod steer;
pub mod umem;

/// The xsk-rs types the control side handles: a frame, and the UMEM it opens pods'
/// sockets on.
pub use xsk_rs::{FrameDesc, Umem};
