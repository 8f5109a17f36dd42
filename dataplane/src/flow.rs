//! Flow identity: the 5-tuple that conntrack, Maglev and the VXLAN source port hash.

use std::net::Ipv4Addr;

/// Transport protocols kxdp translates. Anything else is routed untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

impl Proto {
    pub fn from_ip_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One direction of a flow as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
}

const _: () = assert!(std::mem::size_of::<FiveTuple>() <= 16);

impl FiveTuple {
    /// The tuple a reply to this packet carries.
    pub fn reversed(&self) -> FiveTuple {
        FiveTuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// A fixed, seedless hash: every node computes the same value for the same flow, so
    /// Maglev picks and VXLAN source ports agree across nodes and restarts.
    #[inline]
    pub fn hash(&self) -> u64 {
        let a = (u32::from(self.src) as u64) << 32 | u32::from(self.dst) as u64;
        let b = (self.sport as u64) << 32 | (self.dport as u64) << 16 | self.proto as u64;
        mix64(a ^ mix64(b))
    }
}

/// The finaliser of SplitMix64: a cheap, well-distributed 64-bit mixer.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Monotonic time in nanoseconds, handed to the pipeline by its caller (the pipeline
/// never reads a clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s * 1_000_000_000)
    }
    pub fn saturating_add(self, d: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(d.0))
    }
}
