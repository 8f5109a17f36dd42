//! Zero-copy views over header bytes that smoltcp's `wire` module does not have.
//! Ethernet, IPv4, TCP, UDP and ICMPv4 come from smoltcp.

pub mod vxlan;
