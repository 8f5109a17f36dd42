//! The command line (clap). Every tunable is a flag with its default in `--help`;
//! docs/configuration.md mirrors this file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kxdp_dataplane::conntrack::Timeouts;
use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::maglev;
use kxdp_dataplane::pipeline::{self, Config};
use kxdp_dataplane::ports::Ports;

use crate::replay::StaticNeighbour;

#[derive(Parser, Debug)]
#[command(
    name = "kxdp",
    version,
    about = "A Kubernetes node dataplane: Service load balancing and VXLAN in user space",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve a node: attach to its uplink and pod interfaces and forward on AF_XDP.
    Run(RunArgs),
    /// Run the exact pipeline over a capture (pcap or pcapng in, pcapng out).
    Replay(ReplayArgs),
    /// Ask the running daemon for its Service ports: frontends, backends, Maglev
    /// table size, packets and new flows.
    Services(ClientArgs),
    /// Ask the running daemon for the flows its workers track.
    Flows(FlowsArgs),
    /// Ask the running daemon where a packet with this tuple goes, and why.
    Explain(ExplainArgs),
}

/// Where the daemon serves its admin socket unless `--admin-socket` says otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/kxdp/admin.sock";

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputArg {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// What every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The running daemon's admin socket (`kxdp run --admin-socket`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// How to print the answer.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

/// `tcp` or `udp`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl ProtoArg {
    pub fn proto(self) -> Proto {
        match self {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only flows of this Service port (`namespace/name:port`) or Service
    /// (`namespace/name`, all its ports).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Only flows from this address (IP or IP:PORT; the client, or the SNAT address).
    #[arg(long, value_name = "IP[:PORT]")]
    pub src: Option<String>,
    /// Only flows to this address (IP or IP:PORT; the Service address or the backend).
    #[arg(long, value_name = "IP[:PORT]")]
    pub dst: Option<String>,
    /// Only flows of this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,
    /// Most flows listed (over all workers); the count of all that match is printed.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Transport protocol.
    #[arg(value_enum)]
    pub proto: ProtoArg,
    /// Source address and port (the client), e.g. 198.18.1.10:40000.
    pub src: std::net::SocketAddrV4,
    /// Destination address and port (a Service frontend), e.g. 198.19.0.10:80.
    pub dst: std::net::SocketAddrV4,
}

/// `--xdp-mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeArg {
    Native,
    Skb,
}

/// `--frame-size`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSizeArg {
    #[value(name = "2048")]
    Half,
    #[value(name = "4096")]
    Page,
}

/// `--bind`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindArg {
    Copy,
    ZeroCopy,
    Auto,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub objects: ObjectsArgs,
    /// The node's uplink (underlay) interface: VXLAN, NodePort and LoadBalancer traffic.
    #[arg(long, value_name = "IFACE")]
    pub uplink: String,
    /// The host side of a pod's veth (repeatable).
    #[arg(long = "pod-iface", value_name = "IFACE")]
    pub pod_ifaces: Vec<String>,
    /// Also serve the pods a CNI registers as Calico's does: every interface that a
    /// /32 route in this node's pod CIDR goes through, followed as pods come and go.
    #[arg(long)]
    pub pod_routes: bool,
    /// Pods served through --pod-routes at once, at most (Kubernetes' default limit
    /// of pods a node is 110).
    #[arg(long, default_value_t = 110, value_name = "N")]
    pub max_pods: u32,
    /// CPU cores to pin workers to, in order (e.g. 1 or 0,1); unpinned when absent.
    #[arg(long, value_delimiter = ',', value_name = "CORE,...")]
    pub cores: Vec<usize>,
    /// Workers, one per queue: worker q serves queue q of every interface that has
    /// it (the uplink must have them all; a single-queue pod veth is worker 0's).
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Where the steering program runs: in the driver (native) or generic (skb).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// AF_XDP bind mode; zero-copy needs driver support (veth has none).
    #[arg(long, value_enum, default_value_t = BindArg::Auto)]
    pub bind: BindArg,
    /// Spin on the rings instead of sleeping when idle (lower latency, a busy core).
    #[arg(long)]
    pub busy_poll: bool,
    /// Frames taken from a ring at a time.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Descriptors per AF_XDP ring (a power of two).
    #[arg(long, default_value_t = 4096)]
    pub ring_size: u32,
    /// UMEM frames per worker (--frame-size bytes each, locked in memory).
    #[arg(long, default_value_t = 32768)]
    pub frames: u32,
    /// Bytes per UMEM frame: 2048 holds Ethernet frames of up to 1728 bytes (MTU
    /// 1500 and a little more), 4096 up to 3776.
    #[arg(long, value_enum, default_value_t = FrameSizeArg::Half)]
    pub frame_size: FrameSizeArg,
    /// The pods' default gateway, an address of the host's (traffic to it is the
    /// kernel's).
    #[arg(long, default_value = "169.254.1.1")]
    pub gateway_ip: std::net::Ipv4Addr,
    /// Where /proxyMode and /metrics (Prometheus text) are served.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: std::net::SocketAddr,
    /// Where /healthz and /livez are served.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: std::net::SocketAddr,
    /// Unix socket (mode 0600, root only) that `kxdp services`, `kxdp flows` and
    /// `kxdp explain` talk to; removed on exit.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// Where `kxdp run` gets the Kubernetes objects and which node this is: a file, or a
/// watch of the API server through a kubeconfig or, with neither flag, the in-cluster
/// config (the Pod's service account), as kube-proxy does.
#[derive(Args, Debug, Clone)]
pub struct ObjectsArgs {
    /// Services, EndpointSlices and Nodes as multi-document YAML (what
    /// `kubectl get svc,endpointslices,nodes -A -o yaml` prints), reloaded on change
    /// and on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "kubeconfig")]
    pub objects: Option<PathBuf>,
    /// Watch Services, EndpointSlices and Nodes on the API server this kubeconfig
    /// names (its current context). Without --objects or --kubeconfig: in-cluster config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object gives the pod CIDR and VTEP.
    #[arg(long, value_name = "NAME")]
    pub node_name: String,
    /// Least time between two snapshot rebuilds: object changes that arrive within it
    /// are applied together (kube-proxy's --min-sync-period).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
}

/// The objects `kxdp replay` translates, always from a file.
#[derive(Args, Debug, Clone)]
pub struct ReplayObjectsArgs {
    /// Services, EndpointSlices and Nodes as multi-document YAML (what
    /// `kubectl get svc,endpointslices,nodes -A -o yaml` prints).
    #[arg(long, value_name = "FILE")]
    pub objects: PathBuf,
    /// This node's name: its Node object gives the pod CIDR and VTEP.
    #[arg(long, value_name = "NAME")]
    pub node_name: String,
}

/// Pipeline tunables shared by `run` and `replay`.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// UDP port of VXLAN (flannel's and Linux's default; IANA's is 4789).
    #[arg(long, default_value_t = pipeline::DEFAULT_VXLAN_PORT)]
    pub vxlan_port: u16,
    /// Maglev lookup table size M, a prime; small Services use smaller tables (see
    /// docs/design.md).
    #[arg(long, default_value_t = 65537, value_parser = parse_prime)]
    pub maglev_table_size: u32,
    /// Most flows tracked per worker; when full, unreplied flows are evicted first and
    /// new flows are dropped (counted as conntrack_full) rather than established ones.
    #[arg(long, default_value_t = pipeline::DEFAULT_CONNTRACK_SIZE, value_parser = parse_conntrack_size)]
    pub conntrack_size: usize,
    /// Idle timeout of a TCP flow that has not been answered yet.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_syn: Duration,
    /// Idle timeout of an established TCP flow (kube-proxy's default).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_established: Duration,
    /// Idle timeout after one side sent FIN.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_fin: Duration,
    /// Idle timeout after RST, or FIN from both sides.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close: Duration,
    /// Idle timeout of a UDP flow that has not been answered.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Duration,
    /// Idle timeout of a UDP flow that has seen replies.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub conntrack_udp_timeout_stream: Duration,
    /// Most (client, Service) pins kept for sessionAffinity: ClientIP.
    #[arg(long, default_value_t = pipeline::DEFAULT_AFFINITY_SIZE, value_parser = parse_affinity_size)]
    pub affinity_size: usize,
}

impl PipelineArgs {
    pub fn config(&self, ports: Ports) -> Config {
        let n = |d: Duration| Nanos(d.as_nanos() as u64);
        Config {
            ports,
            vxlan_port: self.vxlan_port,
            conntrack_size: self.conntrack_size,
            timeouts: Timeouts {
                tcp_syn: n(self.conntrack_tcp_timeout_syn),
                tcp_established: n(self.conntrack_tcp_timeout_established),
                tcp_fin: n(self.conntrack_tcp_timeout_fin),
                tcp_close: n(self.conntrack_tcp_timeout_close),
                udp_unreplied: n(self.conntrack_udp_timeout),
                udp_replied: n(self.conntrack_udp_timeout_stream),
            },
            affinity_size: self.affinity_size,
            neighbour_size: pipeline::DEFAULT_NEIGHBOUR_SIZE,
            ownership: None,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub objects: ReplayObjectsArgs,
    /// Capture to replay: pcap, or pcapng whose interface names are the ingress ports.
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write what kxdp transmits (pcapng, one interface per egress port).
    #[arg(long = "out", value_name = "FILE")]
    pub output: PathBuf,
    /// Ingress interface of every packet of a classic pcap file.
    #[arg(long, value_name = "IFACE")]
    pub ingress: Option<String>,
    /// The interface that is the node's uplink; all others are pod ports.
    #[arg(long, value_name = "IFACE")]
    pub uplink: String,
    /// MTU of the uplink: encapsulated packets must fit it.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    /// A static next hop, IP=MAC@IFACE (repeatable). Others are learned from the capture.
    #[arg(long = "neighbour", value_name = "IP=MAC@IFACE")]
    pub neighbours: Vec<StaticNeighbour>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// Largest accepted `--maglev-table-size`: 2 bytes a slot, so 2 MiB per table.
const MAX_TABLE_SIZE: u32 = 1 << 20;

fn parse_prime(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n > MAX_TABLE_SIZE {
        return Err(format!("{n} is over the limit of {MAX_TABLE_SIZE} slots"));
    }
    if n < 2 || !maglev::is_prime(n) {
        return Err(format!(
            "{n} is not prime; Maglev needs a prime table size (e.g. 251, 16381, 65537)"
        ));
    }
    Ok(n)
}

fn parse_size(s: &str, max: usize) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 || n > max {
        return Err(format!("{n} is out of range 1..={max}"));
    }
    Ok(n)
}

fn parse_conntrack_size(s: &str) -> Result<usize, String> {
    parse_size(s, kxdp_dataplane::conntrack::MAX_CAPACITY)
}

fn parse_affinity_size(s: &str) -> Result<usize, String> {
    parse_size(s, kxdp_dataplane::affinity::MAX_CAPACITY)
}

/// `90s`, `2m`, `24h`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m, 24h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_objects_or_kubeconfig_not_both() {
        let base = ["kxdp", "run", "--node-name", "n", "--uplink", "u"];
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| match c.command {
                Command::Run(a) => a.objects,
                _ => unreachable!(),
            })
        };
        let o = parse(&["--objects", "f.yaml"]).unwrap();
        assert_eq!(o.objects, Some(PathBuf::from("f.yaml")));
        assert_eq!(o.min_sync_period, Duration::from_secs(1));
        let o = parse(&["--kubeconfig", "k", "--min-sync-period", "250ms"]).unwrap();
        assert_eq!(o.kubeconfig, Some(PathBuf::from("k")));
        assert_eq!(o.min_sync_period, Duration::from_millis(250));
        let o = parse(&[]).unwrap();
        assert_eq!((o.objects, o.kubeconfig), (None, None), "in-cluster");
        assert!(parse(&["--objects", "f", "--kubeconfig", "k"]).is_err());
    }

    #[test]
    fn replay_needs_an_objects_file() {
        let args = [
            "kxdp",
            "replay",
            "--node-name",
            "n",
            "--in",
            "a",
            "--out",
            "b",
        ];
        assert!(Cli::try_parse_from(args.iter().chain(&["--uplink", "u"])).is_err());
        let with = ["--uplink", "u", "--objects", "f"];
        assert!(Cli::try_parse_from(args.iter().chain(&with)).is_ok());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn maglev_table_size_must_be_prime() {
        assert_eq!(parse_prime("65537"), Ok(65537));
        assert!(parse_prime("65536").unwrap_err().contains("not prime"));
        assert!(parse_prime("4294967291").unwrap_err().contains("limit"));
    }

    #[test]
    fn table_sizes_must_be_positive_and_bounded() {
        assert!(parse_conntrack_size("0").is_err());
        assert_eq!(parse_conntrack_size("1024"), Ok(1024));
        assert!(parse_conntrack_size("99999999999").is_err());
    }
}
