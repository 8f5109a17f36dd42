//! `kxdp replay`: the exact pipeline over a capture, as Katran's simulator runs its
//! forwarding code over packets in user space.
//!
//! Input is pcap or pcapng. With pcapng, each packet's ingress is the name of the
//! interface it was captured on; with classic pcap, one `--ingress` names it. The
//! interface named `--uplink` is the node's uplink; every other one is a pod port.
//! Output is pcapng with one interface per egress port, named after it.
//!
//! Live, kxdp resolves next hops with ARP; a capture cannot answer ARP, so replay
//! first learns every sender's MAC and port from the capture itself (and takes static
//! `--neighbour` entries), then runs the pipeline packet by packet with the
//! capture's timestamps as its clock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kxdp_dataplane::flow::Nanos;
use kxdp_dataplane::frame::{Frame, HEADROOM};
use kxdp_dataplane::neighbour::Neighbour;
use kxdp_dataplane::packet;
use kxdp_dataplane::pipeline::{Config, Pipeline};
use kxdp_dataplane::ports::{Port, PortRole, Ports};
use kxdp_dataplane::snapshot::{Mac, Route, Snapshot};
use kxdp_dataplane::verdict::{Counters, DropReason, PortId, Verdict};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::DataLink;

/// A static next hop from the command line: `IP=MAC@IFACE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticNeighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub iface: String,
}

impl std::str::FromStr for StaticNeighbour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?}: want IP=MAC@IFACE, e.g. 198.18.1.10=0a:58:c6:12:01:0a@n1p10");
        let (ip, rest) = s.split_once('=').ok_or_else(err)?;
        let (mac, iface) = rest.split_once('@').ok_or_else(err)?;
        Ok(StaticNeighbour {
            ip: ip.parse().map_err(|_| err())?,
            mac: mac.parse().map_err(|_| err())?,
            iface: iface.to_string(),
        })
    }
}

pub struct ReplayOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Ingress interface for classic pcap input.
    pub ingress: Option<String>,
    pub uplink: String,
    pub uplink_mtu: u16,
    pub neighbours: Vec<StaticNeighbour>,
    pub pipeline: Config,
}

/// One captured frame.
#[derive(Debug)]
pub struct Captured {
    pub iface: String,
    pub ts: Duration,
    pub data: Vec<u8>,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub counters: Counters,
    /// Frames written per egress interface.
    pub per_egress: BTreeMap<String, u64>,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        writeln!(f, "frames in          {}", c.rx)?;
        writeln!(f, "transmitted        {}", c.tx)?;
        for (iface, n) in &self.per_egress {
            writeln!(f, "  on {iface:<15} {n}")?;
        }
        writeln!(f, "passed to kernel   {}", c.pass)?;
        writeln!(f, "dropped            {}", c.dropped())?;
        for r in DropReason::ALL {
            if c.drop_count(*r) > 0 {
                writeln!(f, "  {:<24} {}", r.name(), c.drop_count(*r))?;
            }
        }
        writeln!(f, "new flows          {}", c.new_flows)?;
        writeln!(f, "rejected (ICMP)    {}", c.rejected)?;
        writeln!(f, "frag-needed sent   {}", c.frag_needed)?;
        writeln!(f, "encapsulated       {}", c.encapsulated)?;
        write!(f, "decapsulated       {}", c.decapsulated)
    }
}

/// A deterministic, locally administered MAC for a port the capture names.
pub fn port_mac(name: &str) -> Mac {
    let h = fnv1a(name.as_bytes());
    Mac([0x02, 0x6b, 0x78, (h >> 16) as u8, (h >> 8) as u8, h as u8])
}

/// FNV-1a: enough to spread interface names over three bytes.
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ x as u32).wrapping_mul(0x0100_0193)
    })
}

/// A pcapng interface's `if_tsresol`: timestamps count units of 10^-v seconds, or
/// 2^-v when the high bit is set; microseconds when absent (RFC-draft pcapng 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TsResol(u8);

impl Default for TsResol {
    fn default() -> TsResol {
        TsResol(6)
    }
}

impl TsResol {
    /// pcap-file hands the raw tick count over as nanoseconds; scale it.
    fn duration(self, ticks: u64) -> Duration {
        let v = (self.0 & 0x7f) as u32;
        let ns = if self.0 & 0x80 == 0 {
            match 9i32 - v as i32 {
                d if d >= 0 => ticks.saturating_mul(10u64.pow(d as u32)),
                d => ticks / 10u64.pow((-d) as u32),
            }
        } else {
            ((ticks as u128 * 1_000_000_000) >> v.min(127)) as u64
        };
        Duration::from_nanos(ns)
    }
}

/// Reads a pcap or pcapng file (told apart by their magic numbers).
pub fn read_capture(path: &Path, ingress: Option<&str>) -> Result<Vec<Captured>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| BufReader::new(f).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read capture {}", path.display()))?;
    let magic = bytes.get(..4).unwrap_or(&[]);
    let mut out = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(&bytes[..])
            .with_context(|| format!("{}: not a valid pcapng file", path.display()))?;
        // Interfaces in the order their description blocks appear (pcapng ids): name
        // and timestamp resolution.
        let mut ifaces: Vec<(Option<String>, TsResol)> = Vec::new();
        while let Some(block) = r.next_block() {
            match block.with_context(|| format!("{}: corrupt pcapng block", path.display()))? {
                Block::InterfaceDescription(idb) => {
                    let mut name = None;
                    let mut resol = TsResol::default();
                    for o in &idb.options {
                        match o {
                            InterfaceDescriptionOption::IfName(n) => name = Some(n.to_string()),
                            InterfaceDescriptionOption::IfTsResol(r) => resol = TsResol(*r),
                            _ => {}
                        }
                    }
                    ifaces.push((name, resol));
                }
                Block::EnhancedPacket(epb) => {
                    let iface = ifaces.get(epb.interface_id as usize);
                    let name = iface
                        .and_then(|i| i.0.clone())
                        .or_else(|| ingress.map(str::to_string))
                        .with_context(|| {
                            format!(
                                "{}: interface {} has no name; pass --ingress",
                                path.display(),
                                epb.interface_id
                            )
                        })?;
                    let resol = iface.map(|i| i.1).unwrap_or_default();
                    out.push(Captured {
                        iface: name,
                        ts: resol.duration(epb.timestamp.as_nanos() as u64),
                        data: epb.data.into_owned(),
                    });
                }
                _ => {}
            }
        }
    } else {
        let Some(iface) = ingress else {
            bail!(
                "{}: a classic pcap file does not name interfaces; pass --ingress IFACE",
                path.display()
            );
        };
        let mut r = PcapReader::new(&bytes[..])
            .with_context(|| format!("{}: neither pcap nor pcapng", path.display()))?;
        if r.header().datalink != DataLink::ETHERNET {
            bail!(
                "{}: link type {:?}, want Ethernet",
                path.display(),
                r.header().datalink
            );
        }
        while let Some(p) = r.next_packet() {
            let p = p.with_context(|| format!("{}: corrupt pcap record", path.display()))?;
            out.push(Captured {
                iface: iface.to_string(),
                ts: p.timestamp,
                data: p.data.into_owned(),
            });
        }
    }
    Ok(out)
}

/// The ports a capture implies: the uplink first, then every other interface named.
pub fn ports_for(frames: &[Captured], uplink: &str, uplink_mtu: u16, extra: &[String]) -> Ports {
    let mut names: Vec<&str> = vec![uplink];
    for n in frames
        .iter()
        .map(|f| f.iface.as_str())
        .chain(extra.iter().map(String::as_str))
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ports::new(
        names
            .into_iter()
            .map(|n| Port {
                name: n.to_string(),
                role: if n == uplink {
                    PortRole::Uplink
                } else {
                    PortRole::Pod
                },
                mac: port_mac(n),
                mtu: if n == uplink { uplink_mtu } else { 1500 },
                // Captures of pod veths show partial checksums; an uplink capture is
                // taken as a NIC's (complete checksums).
                partial_checksums: n != uplink,
            })
            .collect(),
    )
}

/// Learns where every IPv4 sender in the capture is (what ARP would tell live).
fn learn_from_capture(p: &mut Pipeline, snap: &Snapshot, frames: &[Captured]) {
    let ports = p.config().ports.clone();
    for f in frames {
        let Some(port) = ports.by_name(&f.iface) else {
            continue;
        };
        let Ok(Some(h)) = packet::parse(&f.data) else {
            continue;
        };
        let role = ports.get(port).map(|p| p.role);
        let pod_sender = snap.route(h.src) == Route::LocalPod;
        if (role == Some(PortRole::Pod) && pod_sender) || role == Some(PortRole::Uplink) {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&f.data[6..12]);
            p.neighbours_mut().learn(
                h.src,
                Neighbour {
                    port,
                    mac: Mac(mac),
                },
                Nanos(0),
            );
        }
    }
}

/// Runs the pipeline over `frames` and writes what it transmits to `out`.
pub fn replay(
    snap: &Snapshot,
    frames: &[Captured],
    cfg: Config,
    neighbours: &[StaticNeighbour],
    out: impl Write,
) -> Result<ReplayReport> {
    let mut p = Pipeline::new(cfg);
    learn_from_capture(&mut p, snap, frames);
    for n in neighbours {
        let Some(port) = p.config().ports.by_name(&n.iface) else {
            bail!(
                "--neighbour {}: no interface {:?} in this replay",
                n.ip,
                n.iface
            );
        };
        p.neighbours_mut().pin(n.ip, Neighbour { port, mac: n.mac });
    }
    let mut w = PcapNgWriter::new(out).context("cannot write pcapng header")?;
    let mut idb_of: BTreeMap<PortId, u32> = BTreeMap::new();
    let mut report = ReplayReport::default();
    let mut buf = vec![0u8; HEADROOM + 65536];
    let mut unresolved = 0;
    for f in frames {
        let Some(port) = p.config().ports.by_name(&f.iface) else {
            continue;
        };
        let len = f.data.len().min(buf.len() - HEADROOM);
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&f.data[..len]);
        let mut batch = [Frame::new(&mut buf, HEADROOM, len, port)];
        let mut verdicts = [Verdict::Pass];
        p.process(
            snap,
            Nanos(f.ts.as_nanos() as u64),
            &mut batch,
            &mut verdicts,
        );
        let egress = match verdicts[0] {
            Verdict::Tx { port } => port,
            Verdict::Resolve { .. } => {
                unresolved += 1;
                continue;
            }
            _ => continue,
        };
        let name = p
            .config()
            .ports
            .get(egress)
            .map_or("?", |p| p.name.as_str())
            .to_string();
        let next_id = idb_of.len() as u32;
        let id = *idb_of.entry(egress).or_insert(next_id);
        if id == next_id {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                    // pcap-file writes nanosecond ticks: say so.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .context("cannot write pcapng interface")?;
        }
        let data = batch[0].data();
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: id,
            timestamp: f.ts,
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })
        .context("cannot write pcapng packet")?;
        *report.per_egress.entry(name).or_default() += 1;
    }
    w.into_inner()
        .flush()
        .context("cannot write the output capture")?;
    report.counters = p.counters().clone();
    // A replay sends no ARP: a frame that would wait for its next hop is dropped.
    report.counters.drops[DropReason::NeighbourUnknown as usize] += unresolved;
    Ok(report)
}

/// `kxdp replay` end to end: files in, file out.
pub fn run(snap: &Snapshot, opts: &ReplayOptions) -> Result<ReplayReport> {
    let frames = read_capture(&opts.input, opts.ingress.as_deref())?;
    let mut cfg = opts.pipeline.clone();
    cfg.ports = ports_for(&frames, &opts.uplink, opts.uplink_mtu, &[]);
    let out = File::create(&opts.output)
        .with_context(|| format!("cannot create {}", opts.output.display()))?;
    replay(snap, &frames, cfg, &opts.neighbours, BufWriter::new(out))
}
