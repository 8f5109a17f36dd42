//! Writes `scripts/example/capture.pcapng`: what node1's interfaces would capture in a
//! short session of the built-in example cluster (`scripts/example/objects.yaml`).
//!
//! `cargo run -p kxdp-control --example make_example_capture [OUT]`
//!
//! Pods send TCP and UDP with partial checksums (checksum offload, as a veth shows
//! them); node2 and the outside world send complete ones. Replies are written for the
//! backends kxdp's Maglev picks, so the capture tells one consistent story.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::time::Duration;

use kxdp_control::objects::parse_objects;
use kxdp_control::translate::{translate, TranslateConfig};
use kxdp_dataplane::checksum;
use kxdp_dataplane::flow::{FiveTuple, Proto};
use kxdp_dataplane::snapshot::{ServiceKey, Snapshot};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

const IFACES: [&str; 3] = ["n1u", "n1p10", "n1p11"];
const GATEWAY_MAC: [u8; 6] = [0xee; 6]; // what pods resolve 169.254.1.1 to (Calico style)
const NODE1_NIC: [u8; 6] = [0x52, 0x54, 0x00, 0x13, 0x80, 0x01];
const NODE2_NIC: [u8; 6] = [0x52, 0x54, 0x00, 0x13, 0x80, 0x02];
const CLIENT_NIC: [u8; 6] = [0x52, 0x54, 0x00, 0x13, 0x80, 0x64];
const VTEP1: [u8; 6] = [0x02, 0x00, 0xc6, 0x13, 0x80, 0x01];
const VTEP2: [u8; 6] = [0x02, 0x00, 0xc6, 0x13, 0x80, 0x02];
const NODE1: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 100);
const POD10: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const POD11: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const REMOTE10: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const EMPTY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);

fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

struct Pkt {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    t: FiveTuple,
    flags: &'static str,
    payload: Vec<u8>,
    df: bool,
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: &'static str) -> Pkt {
    Pkt {
        src_mac: pod_mac(src),
        dst_mac: GATEWAY_MAC,
        t: FiveTuple {
            src,
            dst,
            sport,
            dport,
            proto: Proto::Tcp,
        },
        flags,
        payload: vec![],
        df: true,
    }
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Pkt {
    Pkt {
        t: FiveTuple {
            src,
            dst,
            sport,
            dport,
            proto: Proto::Udp,
        },
        payload: payload.to_vec(),
        df: false,
        flags: "",
        ..tcp(src, sport, dst, dport, "")
    }
}

impl Pkt {
    fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Pkt {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    fn payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }

    /// The frame with complete checksums.
    fn bytes(&self) -> Vec<u8> {
        let mut ip = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber(self.t.proto as u8),
            self.t.src.octets(),
            self.t.dst.octets(),
        )
        .unwrap();
        ip.dont_fragment = self.df;
        ip.identification = 0x4b58;
        let b = etherparse::PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
        let mut out = Vec::new();
        match self.t.proto {
            Proto::Tcp => {
                let mut t = b.tcp(self.t.sport, self.t.dport, 0x1000, 64240);
                for f in self.flags.chars() {
                    t = match f {
                        'S' => t.syn(),
                        'A' => t.ack(0x2001),
                        'F' => t.fin(),
                        'P' => t.psh(),
                        'R' => t.rst(),
                        _ => t,
                    };
                }
                t.write(&mut out, &self.payload).unwrap();
            }
            Proto::Udp => b
                .udp(self.t.sport, self.t.dport)
                .write(&mut out, &self.payload)
                .unwrap(),
        }
        out
    }

    /// As a pod with checksum offload sends it: the L4 checksum field holds only the
    /// folded pseudo-header sum.
    fn partial(&self) -> Vec<u8> {
        let mut f = self.bytes();
        let l4_len = f.len() - 34;
        let sum = checksum::fold(checksum::pseudo_header(
            self.t.src,
            self.t.dst,
            self.t.proto as u8,
            l4_len as u16,
        ));
        let at = 34 + if self.t.proto == Proto::Tcp { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        f
    }
}

/// What Linux's vxlan device on node2 sends for an inner frame.
fn from_node2(inner: &[u8], sport: u16) -> Vec<u8> {
    let mut body = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    body.extend_from_slice(inner);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(NODE2_NIC, NODE1_NIC)
        .ipv4(NODE2.octets(), NODE1.octets(), 64)
        .udp(sport, 8472)
        .write(&mut out, &body)
        .unwrap();
    out[40] = 0; // Linux sends IPv4 VXLAN without a UDP checksum
    out[41] = 0;
    out
}

/// The backend kxdp's Maglev gives this flow.
fn backend(snap: &Snapshot, t: &FiveTuple) -> (Ipv4Addr, u16) {
    let fe = snap
        .frontend(&ServiceKey {
            ip: t.dst,
            port: t.dport,
            proto: t.proto,
        })
        .expect("a Service");
    let (table, backends) = snap.service(fe.service).selection(fe.kind);
    let b = backends[table.lookup(t.hash()).unwrap() as usize].addr;
    (*b.ip(), b.port())
}

fn iface_of(pod: Ipv4Addr) -> &'static str {
    if pod == POD10 {
        "n1p10"
    } else if pod == POD11 {
        "n1p11"
    } else {
        "n1u"
    }
}

fn main() {
    let out_path = std::env::args()
        .nth(1)
        .unwrap_or("scripts/example/capture.pcapng".into());
    let objects = std::fs::read_to_string("scripts/example/objects.yaml")
        .expect("run from the repository root");
    let parsed = parse_objects(&objects);
    let cfg = TranslateConfig {
        node_name: "node1".into(),
        max_table_size: 65537,
    };
    let snap = translate(&parsed.objects, &cfg, 1)
        .expect("example translates")
        .snapshot;

    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
    // 1. pod .10 -> web ClusterIP, a whole short TCP exchange with whichever backend.
    let syn = tcp(POD10, 40000, WEB, 80, "S");
    let (bip, bport) = backend(&snap, &syn.t);
    frames.push(("n1p10", syn.partial()));
    let reply = |flags| {
        let p = tcp(bip, bport, POD10, 40000, flags);
        if iface_of(bip) == "n1u" {
            ("n1u", from_node2(&p.macs(VTEP2, VTEP1).bytes(), 50123))
        } else {
            (iface_of(bip), p.partial())
        }
    };
    frames.push(reply("SA"));
    frames.push((
        "n1p10",
        tcp(POD10, 40000, WEB, 80, "AP")
            .payload(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .partial(),
    ));
    frames.push(reply("AP"));
    // 2. pod .11 asks the DNS Service; its only endpoint is on node2.
    frames.push((
        "n1p11",
        udp(
            POD11,
            33333,
            DNS,
            53,
            b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        )
        .partial(),
    ));
    frames.push((
        "n1u",
        from_node2(
            &udp(
                REMOTE10,
                5353,
                POD11,
                33333,
                b"\x12\x34\x81\x80\x00\x00\x00\x00\x00\x00\x00\x00",
            )
            .macs(VTEP2, VTEP1)
            .bytes(),
            50777,
        ),
    ));
    // 3. a Service without endpoints: rejected with ICMP port unreachable.
    frames.push(("n1p10", tcp(POD10, 40001, EMPTY, 80, "S").partial()));
    // 4. an outside client on the underlay reaches the NodePort (externalTrafficPolicy
    //    Local: the local endpoint, client address kept), and the pod answers.
    frames.push((
        "n1u",
        tcp(CLIENT, 51000, NODE1, 30080, "S")
            .macs(CLIENT_NIC, NODE1_NIC)
            .bytes(),
    ));
    frames.push(("n1p10", tcp(POD10, 8080, CLIENT, 51000, "SA").partial()));
    // 5. pod to pod across nodes, both ways, no Service.
    frames.push(("n1p11", udp(POD11, 7000, REMOTE10, 7001, b"ping").partial()));
    frames.push((
        "n1u",
        from_node2(
            &udp(REMOTE10, 7001, POD11, 7000, b"pong")
                .macs(VTEP2, VTEP1)
                .bytes(),
            50999,
        ),
    ));
    // 6. too big for the underlay after VXLAN's 50 bytes, with DF: fragmentation needed.
    frames.push((
        "n1p11",
        tcp(POD11, 40002, REMOTE10, 8080, "A")
            .payload(&[0x5a; 1460])
            .partial(),
    ));
    // 7. what kxdp leaves to the kernel: the host's own SSH, a pod's ARP.
    frames.push((
        "n1u",
        tcp(CLIENT, 52000, NODE1, 22, "S")
            .macs(CLIENT_NIC, NODE1_NIC)
            .bytes(),
    ));
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&pod_mac(POD10));
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&pod_mac(POD10));
    arp.extend_from_slice(&POD10.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[169, 254, 1, 1]);
    frames.push(("n1p10", arp));
    // 8. bad input, dropped and counted: a truncated frame, VXLAN from a stranger, a
    //    corrupt IP header checksum.
    let mut cut = tcp(POD10, 40003, WEB, 80, "S").partial();
    cut.truncate(40);
    frames.push(("n1p10", cut));
    let mut stranger = from_node2(
        &udp(REMOTE10, 1, POD11, 2, b"x").macs(VTEP2, VTEP1).bytes(),
        50000,
    );
    stranger[26..30].copy_from_slice(&[198, 19, 128, 99]);
    stranger[24] = 0;
    stranger[25] = 0;
    let c = checksum::checksum(&stranger[14..34]);
    stranger[24..26].copy_from_slice(&c.to_be_bytes());
    frames.push(("n1u", stranger));
    let mut bad = udp(POD10, 1, POD11, 2, b"x").partial();
    bad[24] ^= 0xff;
    frames.push(("n1p10", bad));

    let file = std::fs::File::create(&out_path).expect("create output");
    let mut w = PcapNgWriter::new(std::io::BufWriter::new(file)).unwrap();
    for name in IFACES {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                InterfaceDescriptionOption::IfTsResol(9), // pcap-file writes nanoseconds
            ],
        })
        .unwrap();
    }
    let t0 = Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z
    for (i, (iface, data)) in frames.iter().enumerate() {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: IFACES.iter().position(|n| n == iface).unwrap() as u32,
            timestamp: t0 + Duration::from_millis(10 * i as u64),
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })
        .unwrap();
    }
    println!("wrote {} frames to {out_path}", frames.len());
}
