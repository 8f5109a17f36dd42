//! What the pipeline decides for each frame, and the counters those decisions feed.

/// Index of an interface kxdp serves, in the order of [`crate::ports::Ports`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// The fate of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the frame's (possibly moved) bytes on `port`.
    Tx {
        port: PortId,
    },
    /// Hand the frame, untouched, to the kernel's stack.
    Pass,
    /// Another worker owns this frame's flow: hand it the frame, untouched.
    Handoff {
        worker: u8,
    },
    /// Ready to go but for its Ethernet addresses: the next hop `ip` is being asked
    /// for (ARP). The worker holds the frame until it is known, as the kernel holds a
    /// few packets per unresolved neighbour, instead of dropping the first packet to
    /// a pod that has not spoken yet (a SYN's sender would wait a second to resend).
    Resolve {
        ip: std::net::Ipv4Addr,
        via: crate::resolve::Via,
    },
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a frame was dropped: one counter per variant, named for metrics.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Snake-case name used as the metrics label.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated", "A header runs past the end of the frame.";
    BadIpHeader => "bad_ip_header", "IPv4 version, IHL or total length is inconsistent.";
    IpOptions => "ip_options", "IPv4 options are not supported on the fast path.";
    BadIpChecksum => "bad_ip_checksum", "The IPv4 header checksum does not verify.";
    IpFragment => "ip_fragment", "Fragments carry no ports to translate: not reassembled.";
    TtlExpired => "ttl_expired", "TTL would reach zero on forwarding.";
    BadL4Header => "bad_l4_header", "TCP data offset or UDP length is inconsistent.";
    BadVxlanHeader => "bad_vxlan_header", "VXLAN without the I flag or shorter than its header.";
    VxlanUnknownSource => "vxlan_unknown_source", "VXLAN from an address that is no known VTEP.";
    VxlanWrongVni => "vxlan_wrong_vni", "VXLAN with a VNI this node does not serve.";
    NoLocalEndpoints => "no_local_endpoints", "Traffic policy Local and no endpoint on this node.";
    ConntrackFull => "conntrack_full", "The flow table is full of established flows.";
    SnatPortsExhausted => "snat_ports_exhausted", "No free source port to masquerade with.";
    NeighbourUnknown => "neighbour_unknown", "The next hop's MAC address could not be learned in time (a VTEP's is not waited for).";
    NoHeadroom => "no_headroom", "No room in the buffer for the encapsulation headers.";
    TooBig => "too_big", "Too big for the underlay after encapsulation.";
    OverlayLoop => "overlay_loop", "Decapsulated traffic that would be encapsulated again.";
    FlowClash => "flow_clash", "The translated tuple is already another flow's.";
    WorkerQueueFull => "worker_queue_full", "A frame for another worker (its flow's owner, or the one transmitting on its port) found that worker's queue full.";
    PortGone => "port_gone", "A frame for an interface that went away (a pod deleted) while the frame was on its way.";
}

/// Per-worker counters; the worker exports them, the pipeline only adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx: u64,
    pub tx: u64,
    pub pass: u64,
    pub drops: [u64; DropReason::ALL.len()],
    pub rejected: u64,
    pub frag_needed: u64,
    pub encapsulated: u64,
    pub decapsulated: u64,
    pub new_flows: u64,
    /// Neighbours learned from ARP frames.
    pub arp_learned: u64,
    /// Frames handed to the worker that owns their flow.
    pub handoffs: u64,
    /// Frames handed to another worker to transmit, on a port with no queue for this
    /// worker (counted by the worker, not the pipeline).
    pub handed_tx: u64,
    /// Frames held while their next hop was resolved ([`Verdict::Resolve`]), counted
    /// by the worker; each is later counted as transmitted, or dropped as
    /// `neighbour_unknown`.
    pub held_for_neighbour: u64,
}

impl Counters {
    #[inline]
    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Tx { .. } => self.tx += 1,
            Verdict::Pass => self.pass += 1,
            Verdict::Handoff { .. } => self.handoffs += 1,
            // Counted by whoever holds the frame (the worker), or drops it.
            Verdict::Resolve { .. } => {}
            Verdict::Drop(r) => self.drops[r as usize] += 1,
        }
    }

    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names_are_unique_and_index_the_counters() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
