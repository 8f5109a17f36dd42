//! A small two-node world for driving the pipeline from tests: node1 runs kxdp with an
//! uplink and three pod ports; node2 is a VXLAN peer. Packets are built and checked
//! with etherparse, an implementation independent of kxdp's own.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::frame::{Frame, HEADROOM};
use kxdp_dataplane::neighbour::Neighbour;
use kxdp_dataplane::pipeline::{Config, Pipeline};
use kxdp_dataplane::ports::{Port, PortRole, Ports};
use kxdp_dataplane::snapshot::{
    EndpointSpec, Ipv4Net, LocalNode, Mac, RemoteNode, ServicePortSpec, Snapshot, SnapshotBuilder,
    Vni,
};
use kxdp_dataplane::verdict::{PortId, Verdict};

pub const UPLINK: PortId = PortId(0);
pub const POD_A: PortId = PortId(1);
pub const POD_B: PortId = PortId(2);
pub const POD_C: PortId = PortId(3);

pub const A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
pub const C: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
pub const NODE1: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 1);
pub const NODE2: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 2);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 254);
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 100);
pub const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
pub const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 40);
pub const VIP_STICKY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 64, 1);
pub const NODE_PORT: u16 = 30080;

pub const MAC_UPLINK: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
pub const MAC_ROUTER: Mac = Mac([0x02, 0, 0, 0, 0, 0xfe]);
pub const MAC_NODE2: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);
pub const VTEP1: Mac = Mac([0x02, 0, 0xc6, 0x13, 0x80, 0x01]);
pub const VTEP2: Mac = Mac([0x02, 0, 0xc6, 0x13, 0x80, 0x02]);
pub const MAC_EXTERNAL: Mac = Mac([0x02, 0, 0, 0, 0, 0x64]);

pub fn pod_mac(ip: Ipv4Addr) -> Mac {
    Mac([0x0a, 0x58, 198, 18, ip.octets()[2], ip.octets()[3]])
}

pub fn host_veth_mac(p: PortId) -> Mac {
    Mac([0xee, 0xee, 0, 0, 0, p.0 as u8])
}

pub fn ports(uplink_mtu: u16) -> Ports {
    let mut v = vec![Port {
        name: "uplink".into(),
        role: PortRole::Uplink,
        mac: MAC_UPLINK,
        mtu: uplink_mtu,
        partial_checksums: false,
    }];
    for (i, name) in ["podA", "podB", "podC"].iter().enumerate() {
        v.push(Port {
            name: (*name).into(),
            role: PortRole::Pod,
            mac: host_veth_mac(PortId(i as u16 + 1)),
            mtu: 1500,
            partial_checksums: true,
        });
    }
    Ports::new(v)
}

pub fn local_node() -> LocalNode {
    LocalNode {
        name: "node1".into(),
        pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
        vtep_ip: NODE1,
        vtep_mac: VTEP1,
        vni: Vni::new(1).unwrap(),
        node_ips: vec![NODE1],
        snat_ip: SNAT,
    }
}

/// node2 as node1 sees it: pod CIDR 198.18.2.0/24 behind VTEP NODE2.
pub fn node2() -> RemoteNode {
    RemoteNode {
        name: "node2".into(),
        pod_cidrs: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 2, 0), 24).unwrap()],
        vtep_ip: NODE2,
        vtep_mac: VTEP2,
        vni: Vni::new(1).unwrap(),
    }
}

pub fn ep(ip: Ipv4Addr, port: u16, local: bool) -> EndpointSpec {
    EndpointSpec {
        addr: SocketAddrV4::new(ip, port),
        is_local: local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

pub fn svc(
    name: &str,
    proto: Proto,
    vip: Ipv4Addr,
    port: u16,
    eps: Vec<EndpointSpec>,
) -> ServicePortSpec {
    ServicePortSpec {
        name: name.into(),
        proto,
        port,
        cluster_ips: vec![vip],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_timeout: None,
        internal_policy_local: false,
        external_policy_local: false,
        endpoints: eps,
    }
}

/// The standard world: `web` (A and B on this node, port 8080), `empty`, `remote`
/// (one pod on node2), `local` (internalTrafficPolicy Local, only remote endpoints),
/// `sticky` (ClientIP affinity over A, B, C), `np` (NodePort + LB over A, eTP Cluster),
/// `np-local` (NodePort 30081 eTP Local over A and the remote pod), `dns` (UDP).
pub fn snapshot(generation: u64) -> Snapshot {
    snapshot_with(generation, |_| {})
}

pub fn snapshot_with(generation: u64, tweak: impl FnOnce(&mut Vec<ServicePortSpec>)) -> Snapshot {
    let mut specs = vec![
        svc(
            "default/web:http",
            Proto::Tcp,
            VIP,
            80,
            vec![ep(A, 8080, true), ep(B, 8080, true)],
        ),
        svc(
            "default/web:dns",
            Proto::Udp,
            VIP,
            53,
            vec![ep(B, 5353, true)],
        ),
        svc("default/empty:", Proto::Tcp, VIP_EMPTY, 80, vec![]),
        svc("default/empty:udp", Proto::Udp, VIP_EMPTY, 53, vec![]),
        svc(
            "default/remote:",
            Proto::Tcp,
            VIP_REMOTE,
            80,
            vec![ep(REMOTE_POD, 8080, false)],
        ),
        {
            let mut s = svc(
                "default/local:",
                Proto::Tcp,
                VIP_LOCAL,
                80,
                vec![ep(REMOTE_POD, 8080, false)],
            );
            s.internal_policy_local = true;
            s
        },
        {
            let mut s = svc(
                "default/sticky:",
                Proto::Tcp,
                VIP_STICKY,
                80,
                vec![ep(A, 80, true), ep(B, 80, true), ep(C, 80, true)],
            );
            s.affinity_timeout = Some(Nanos::from_secs(10));
            s
        },
        {
            let mut s = svc(
                "default/np:",
                Proto::Tcp,
                Ipv4Addr::new(198, 19, 0, 60),
                80,
                vec![ep(A, 8080, true)],
            );
            s.node_port = Some(NODE_PORT);
            s.load_balancer_ips = vec![LB_IP];
            s
        },
        {
            let mut s = svc(
                "default/np-local:",
                Proto::Tcp,
                Ipv4Addr::new(198, 19, 0, 61),
                80,
                vec![ep(A, 8080, true), ep(REMOTE_POD, 8080, false)],
            );
            s.node_port = Some(NODE_PORT + 1);
            s.external_policy_local = true;
            s
        },
    ];
    tweak(&mut specs);
    let mut b = SnapshotBuilder::new(generation, local_node(), 65537);
    b.add_remote_node(node2());
    for s in specs {
        b.add_service_port(s).unwrap();
    }
    b.build()
}

/// A pipeline that already knows its pods' and next hops' MACs.
pub fn pipeline_with(cfg: Config) -> Pipeline {
    let mut p = Pipeline::new(cfg);
    let n = p.neighbours_mut();
    for (ip, port) in [(A, POD_A), (B, POD_B), (C, POD_C)] {
        n.pin(
            ip,
            Neighbour {
                port,
                mac: pod_mac(ip),
            },
        );
    }
    n.pin(
        NODE2,
        Neighbour {
            port: UPLINK,
            mac: MAC_NODE2,
        },
    );
    p
}

pub fn pipeline() -> Pipeline {
    pipeline_with(Config::new(ports(1500)))
}

/// Builds an Ethernet/IPv4/TCP or UDP frame with correct checksums.
pub struct Pkt {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub dont_frag: bool,
    pub ttl: u8,
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Pkt {
    Pkt {
        src_mac: pod_mac(src),
        dst_mac: Mac([0xee; 6]),
        src,
        dst,
        sport,
        dport,
        proto: Proto::Tcp,
        tcp_flags: flags,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        dont_frag: true,
        ttl: 64,
    }
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Pkt {
    Pkt {
        proto: Proto::Udp,
        tcp_flags: 0,
        payload: b"udp payload".to_vec(),
        dont_frag: false,
        ..tcp(src, sport, dst, dport, 0)
    }
}

impl Pkt {
    pub fn macs(mut self, src: Mac, dst: Mac) -> Pkt {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn payload_len(mut self, n: usize) -> Pkt {
        self.payload = (0..n).map(|i| i as u8).collect();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(self.src_mac.0, self.dst_mac.0).ip(
            etherparse::IpHeaders::Ipv4(
                {
                    let mut h = etherparse::Ipv4Header::new(
                        0,
                        self.ttl,
                        etherparse::IpNumber(self.proto as u8),
                        self.src.octets(),
                        self.dst.octets(),
                    )
                    .unwrap();
                    h.dont_fragment = self.dont_frag;
                    h.identification = 0x1234;
                    h
                },
                Default::default(),
            ),
        );
        let mut out = Vec::new();
        match self.proto {
            Proto::Tcp => {
                let mut t = b.tcp(self.sport, self.dport, 1000, 64240);
                if self.tcp_flags & SYN != 0 {
                    t = t.syn();
                }
                if self.tcp_flags & ACK != 0 {
                    t = t.ack(1);
                }
                if self.tcp_flags & FIN != 0 {
                    t = t.fin();
                }
                if self.tcp_flags & RST != 0 {
                    t = t.rst();
                }
                t.write(&mut out, &self.payload).unwrap();
            }
            Proto::Udp => {
                b.udp(self.sport, self.dport)
                    .write(&mut out, &self.payload)
                    .unwrap();
            }
        }
        out
    }
}

/// Wraps an inner frame in VXLAN from `src` (a VTEP) to node1, as Linux's vxlan does.
pub fn vxlan_from(src: Ipv4Addr, src_mac: Mac, vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![flags, 0, 0, 0, 0, 0, 0, 0];
    vx[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
    vx.extend_from_slice(inner);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac.0, MAC_UPLINK.0)
        .ipv4(src.octets(), NODE1.octets(), 64)
        .udp(40000, 8472)
        .write(&mut out, &vx)
        .unwrap();
    out
}

/// One frame through the pipeline at time `now`: the verdict and the bytes after.
pub fn run(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    ingress: PortId,
    bytes: &[u8],
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + 2048];
    buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
    let mut frames = [Frame::new(&mut buf, HEADROOM, bytes.len(), ingress)];
    let mut verdicts = [Verdict::Pass];
    p.process(snap, now, &mut frames, &mut verdicts);
    let out = frames[0].data().to_vec();
    (verdicts[0], out)
}

/// What etherparse reads in a frame kxdp produced, with every checksum verified
/// independently. Panics (fails the test) on a malformed frame or a bad checksum.
#[derive(Debug)]
pub struct Seen {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// (sport, dport) for TCP/UDP.
    pub ports: Option<(u16, u16)>,
    /// ICMP type, code, and the rest of its header (bytes 4..8).
    pub icmp: Option<(u8, u8, [u8; 4])>,
    /// TCP/UDP payload, or for ICMP the body after its 8-byte header (the quote).
    pub payload: Vec<u8>,
}

pub fn seen(frame: &[u8]) -> Seen {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("valid frame");
    let eth = match p.link.unwrap() {
        etherparse::LinkSlice::Ethernet2(e) => e,
        other => panic!("not ethernet: {other:?}"),
    };
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => ip,
        other => panic!("not IPv4: {other:?}"),
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "IPv4 header checksum"
    );
    let l4 = p.transport.expect("a transport header");
    let payload = ip.payload().payload;
    let (ports, icmp, body) = match l4 {
        etherparse::TransportSlice::Tcp(t) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (
                Some((t.source_port(), t.destination_port())),
                None,
                t.payload().to_vec(),
            )
        }
        etherparse::TransportSlice::Udp(u) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
            (
                Some((u.source_port(), u.destination_port())),
                None,
                u.payload().to_vec(),
            )
        }
        etherparse::TransportSlice::Icmpv4(i) => {
            let mut sum = 0u32;
            for c in payload.chunks(2) {
                sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "ICMP checksum");
            let b = i.slice();
            (
                None,
                Some((b[0], b[1], [b[4], b[5], b[6], b[7]])),
                payload[8..].to_vec(),
            )
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen {
        src_mac: Mac(eth.source()),
        dst_mac: Mac(eth.destination()),
        src: h.source.into(),
        dst: h.destination.into(),
        ttl: h.time_to_live,
        proto: h.protocol.0,
        ports,
        payload: body,
        icmp,
    }
}

/// node2's own view of the same cluster (for round trips between two pipelines).
pub fn snapshot_node2(generation: u64) -> Snapshot {
    let node = LocalNode {
        name: "node2".into(),
        pod_cidrs: vec!["198.18.2.0/24".parse().unwrap()],
        vtep_ip: NODE2,
        vtep_mac: VTEP2,
        vni: Vni::new(1).unwrap(),
        node_ips: vec![NODE2],
        snat_ip: Ipv4Addr::new(198, 18, 2, 0),
    };
    let mut b = SnapshotBuilder::new(generation, node, 65537);
    b.add_remote_node(RemoteNode {
        name: "node1".into(),
        pod_cidrs: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 1, 0), 24).unwrap()],
        vtep_ip: NODE1,
        vtep_mac: VTEP1,
        vni: Vni::new(1).unwrap(),
    });
    b.build()
}

/// A pipeline for node2 whose pod REMOTE_POD sits on port 1 and node1 is reachable.
pub fn pipeline_node2() -> Pipeline {
    let mut p = Pipeline::new(Config::new(ports(1500)));
    let n = p.neighbours_mut();
    n.pin(
        REMOTE_POD,
        Neighbour {
            port: POD_A,
            mac: pod_mac(REMOTE_POD),
        },
    );
    n.pin(
        NODE1,
        Neighbour {
            port: UPLINK,
            mac: MAC_UPLINK,
        },
    );
    p
}
