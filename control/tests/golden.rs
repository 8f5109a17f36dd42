//! Golden test: the shipped example capture through `kxdp replay`, every output frame
//! described field by field and compared with `tests/golden/example.txt`; every
//! checksum is verified independently (etherparse). `UPDATE_GOLDEN=1` rewrites the file
//! after a deliberate change.

use std::fmt::Write as _;
use std::path::Path;

use kxdp_control::objects::parse_objects;
use kxdp_control::replay::{self, ports_for, read_capture};
use kxdp_control::translate::{translate, TranslateConfig};
use kxdp_dataplane::pipeline::Config;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One line per layer of a frame; panics on anything malformed or a bad checksum.
fn describe(frame: &[u8], out: &mut String) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("valid frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
        panic!("not Ethernet")
    };
    write!(
        out,
        "  eth {} > {}",
        mac(&eth.source()),
        mac(&eth.destination())
    )
    .unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
    writeln!(
        out,
        "\n  ip {} > {} ttl {} id {} df {} len {}",
        std::net::Ipv4Addr::from(h.source),
        std::net::Ipv4Addr::from(h.destination),
        h.time_to_live,
        h.identification,
        h.dont_fragment as u8,
        h.total_len
    )
    .unwrap();
    match p.transport.expect("L4") {
        etherparse::TransportSlice::Tcp(t) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            let flags: String = [
                (t.syn(), 'S'),
                (t.ack(), 'A'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
            ]
            .iter()
            .filter(|f| f.0)
            .map(|f| f.1)
            .collect();
            writeln!(
                out,
                "  tcp {} > {} [{flags}] payload {}",
                t.source_port(),
                t.destination_port(),
                t.payload().len()
            )
            .unwrap();
        }
        etherparse::TransportSlice::Udp(u) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
            writeln!(
                out,
                "  udp {} > {} csum {}",
                u.source_port(),
                u.destination_port(),
                if u.checksum() == 0 { "none" } else { "ok" }
            )
            .unwrap();
            if u.destination_port() == 8472 {
                let vx = u.payload();
                writeln!(
                    out,
                    "  vxlan flags {:#04x} vni {}",
                    vx[0],
                    u32::from_be_bytes([0, vx[4], vx[5], vx[6]])
                )
                .unwrap();
                describe(&vx[8..], out);
            } else {
                writeln!(out, "  payload {}", u.payload().len()).unwrap();
            }
        }
        etherparse::TransportSlice::Icmpv4(i) => {
            let b = i.slice();
            let mut sum = 0u32;
            for c in b.chunks(2) {
                sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "ICMP checksum");
            let q = &b[8..];
            writeln!(
                out,
                "  icmp type {} code {} mtu {} quotes {} > {} ports {} > {}",
                b[0],
                b[1],
                u16::from_be_bytes([b[6], b[7]]),
                std::net::Ipv4Addr::new(q[12], q[13], q[14], q[15]),
                std::net::Ipv4Addr::new(q[16], q[17], q[18], q[19]),
                u16::from_be_bytes([q[20], q[21]]),
                u16::from_be_bytes([q[22], q[23]]),
            )
            .unwrap();
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn example_capture_replays_to_the_golden_output() {
    let objects = std::fs::read_to_string(root().join("scripts/example/objects.yaml")).unwrap();
    let parsed = parse_objects(&objects);
    assert!(parsed.errors.is_empty());
    let cfg = TranslateConfig {
        node_name: "node1".into(),
        max_table_size: 65537,
    };
    let snap = translate(&parsed.objects, &cfg, 1).unwrap().snapshot;
    let frames = read_capture(&root().join("scripts/example/capture.pcapng"), None).unwrap();
    let ports = ports_for(&frames, "n1u", 1500, &[]);
    let mut out = Vec::new();
    let report = replay::replay(&snap, &frames, Config::new(ports), &[], &mut out).unwrap();

    let mut text = format!("{report}\n");
    let written = read_back(&out);
    for (i, (iface, frame)) in written.iter().enumerate() {
        writeln!(text, "#{i} out {iface}").unwrap();
        describe(frame, &mut text);
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/example.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(
        text,
        want,
        "replay output differs from {}",
        golden.display()
    );
}

/// Reads the pcapng kxdp wrote: (interface name, frame) in order.
fn read_back(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let path = std::env::temp_dir().join(format!("kxdp-golden-{}.pcapng", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let frames = read_capture(&path, None).unwrap();
    std::fs::remove_file(&path).ok();
    frames.into_iter().map(|c| (c.iface, c.data)).collect()
}

#[test]
fn classic_pcap_needs_and_uses_an_ingress_name() {
    let mut pcap = Vec::new();
    {
        let mut w = pcap_file::pcap::PcapWriter::new(&mut pcap).unwrap();
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([0x0a, 0x58, 198, 18, 1, 10], [0xee; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 1, 11], 64)
            .udp(1, 2)
            .write(&mut f, b"hi")
            .unwrap();
        w.write_packet(&pcap_file::pcap::PcapPacket::new(
            std::time::Duration::from_secs(1),
            f.len() as u32,
            &f,
        ))
        .unwrap();
    }
    let path = std::env::temp_dir().join(format!("kxdp-classic-{}.pcap", std::process::id()));
    std::fs::write(&path, &pcap).unwrap();
    let err = read_capture(&path, None).unwrap_err().to_string();
    assert!(err.contains("--ingress"), "{err}");
    let frames = read_capture(&path, Some("n1p10")).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].iface, "n1p10");
    assert_eq!(frames[0].ts, std::time::Duration::from_secs(1));
}
