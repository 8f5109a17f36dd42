//! Two pipelines back to back: what node1 encapsulates, node2 decapsulates into the
//! frame the pod sent (but for TTL and MACs), for any flow and payload.

mod common;

use common::*;
use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::verdict::Verdict;
use proptest::prelude::*;

proptest! {
    #[test]
    fn encapsulated_on_node1_and_decapsulated_on_node2_is_the_same_packet(
        tcp_proto in any::<bool>(),
        sport in 1u16.., dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        let (mut n1, s1) = (pipeline(), snapshot(1));
        let (mut n2, s2) = (pipeline_node2(), snapshot_node2(1));
        let dst = std::net::Ipv4Addr::new(198, 18, 2, 10);
        let mut pkt = if tcp_proto { tcp(A, sport, dst, dport, ACK) } else { udp(A, sport, dst, dport) };
        pkt.payload = payload;
        pkt.proto = if tcp_proto { Proto::Tcp } else { Proto::Udp };
        let sent = pkt.bytes();
        let (v, wire) = run(&mut n1, &s1, Nanos(1), POD_A, &sent);
        prop_assert_eq!(v, Verdict::Tx { port: UPLINK });
        let (v, delivered) = run(&mut n2, &s2, Nanos(1), UPLINK, &wire);
        prop_assert_eq!(v, Verdict::Tx { port: POD_A });
        prop_assert_eq!(delivered.len(), sent.len());
        // Same IP packet but the TTL (one hop: node1 forwards, node2 delivers after
        // decapsulating, as the kernel would route it once more) and the header checksum.
        prop_assert_eq!(delivered[14 + 8], sent[14 + 8] - 2);
        prop_assert_eq!(&delivered[14..14 + 8], &sent[14..14 + 8]);
        prop_assert_eq!(&delivered[14 + 12..], &sent[14 + 12..]);
        let s = seen(&delivered);
        prop_assert_eq!(s.dst_mac, pod_mac(dst));
    }
}
