//! The test topology of ARCHITECTURE.md ("Test topology"), built from network
//! namespaces with `ip`, `bridge` and `sysctl`, and guards that tear everything down.
//!
//! ```text
//!   pod ns (eth0 198.18.1.h/32) ── n1pH ┐                 ┌ n2pH ── pod ns (198.18.2.h/32)
//!                                node1 ns (kxdp) ── n1u ┐ │ node2 ns: flannel.1 (kernel vxlan)
//!                                      198.19.128.1     │ │        n2u 198.19.128.2
//!                                    underlay ns: br0 ──┴─┴── clu ── client ns 198.19.128.100
//! ```
//!
//! Only 198.18.0.0/15 and the pods' gateway 169.254.1.1 are used, and only inside the
//! namespaces a [`Topology`] creates. Namespace names are unique per test and run
//! (`kxe2e-<pid>-<n>-<role>`); interface names live inside those namespaces, so
//! they are the same in every topology (veths are created inside their namespace
//! with `ip -n`, never in the caller's). Dropping a [`Topology`] stops what is
//! still running in its namespaces and deletes them (which deletes their veths), and
//! removes its temporary directory, also when the test panicked. The guards of the
//! processes it started ([`Proc`], [`Kxdp`]) borrow it, so they are always dropped
//! first: servers are killed, kxdp gets SIGINT (so it detaches) before its
//! namespace goes away.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Once;
use std::time::{Duration, Instant};

/// node1's VTEP MAC: in its Node annotation, and in node2's flannel.1 fdb and neighbour
/// entries, as flannel writes them from that annotation.
pub const NODE1_VTEP_MAC: &str = "02:00:c6:13:80:01";
/// node2's flannel.1 MAC, published in node2's Node annotation.
pub const NODE2_VTEP_MAC: &str = "02:00:c6:13:80:02";
pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 1);
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 100);
/// node1's SNAT address: the first address of its pod CIDR (flannel's flannel.1 address).
pub const NODE1_SNAT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
pub const UPLINK: &str = "n1u";

/// Longest a topology command, a process start or a readiness wait may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);
static NEXT_PROC: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();
const PREFIX: &str = "kxe2e";

/// True when the tests can build namespaces: root and a working `ip netns`. Otherwise
/// says why on stderr, and the test returns early (CI runs as root).
pub fn available(test: &str) -> bool {
    // SAFETY: plain libc getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root to create network namespaces and attach XDP");
        return false;
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIPPED {test}: `ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot run `ip` ({e})");
            false
        }
    }
}

/// Runs a command to completion, bounded by [`STEP_TIMEOUT`]; panics with its stderr
/// if it fails or hangs.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, STEP_TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// `cmd.output()` with a deadline: the child is killed when it is over.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let status = match wait_within(&mut child, limit) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}; killed"));
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Waits for a child to exit, at most `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ip ARGS`, the arguments written as on a shell line (none contains a space).
fn ip(args: &str) {
    run(Command::new("ip").args(args.split_whitespace()));
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what a previous run of these tests left behind when it was killed before
/// its guards ran (SIGKILL, a CI timeout): namespaces `kxe2e-<pid>-…` whose pid is
/// gone, the processes still running in them, and their temporary directories.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        kill_namespace_processes(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        if let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) {
            if !pid_alive(pid) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

/// SIGKILLs, by pid, what still runs in a namespace of ours.
fn kill_namespace_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// One pod: a namespace with `eth0` (a /32 address) whose peer is `host_if` on its node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub node: u8,
}

/// The two-node topology of ARCHITECTURE.md. Pods are given by the last octet of
/// their address: node1's in 198.18.1.0/24, node2's in 198.18.2.0/24.
pub struct Topology {
    pub test: String,
    pub node1: String,
    pub node2: String,
    pub underlay: String,
    pub client: String,
    pub pods: Vec<Pod>,
    /// Temporary files of this topology: objects file, process logs.
    pub dir: PathBuf,
    /// Every namespace created so far, deleted on drop.
    namespaces: Vec<String>,
    /// Queues of node1's uplink (and kxdp's `--queues`).
    pub queues: u32,
    /// Queues of node1's pod veths.
    pod_queues: u32,
}

impl Topology {
    pub fn new(test: &str, node1_pods: &[u8], node2_pods: &[u8]) -> Topology {
        Topology::with_queues(test, node1_pods, node2_pods, 1)
    }

    /// A topology whose node1 veths have `queues` queues each, so that a flow's
    /// request and reply can arrive on different queues (different kxdp workers).
    pub fn with_queues(test: &str, node1_pods: &[u8], node2_pods: &[u8], queues: u32) -> Topology {
        Topology::with_queues_on(test, node1_pods, node2_pods, queues, queues)
    }

    /// A topology whose node1 uplink has `queues` queues and its pods' veths
    /// `pod_queues` (a CNI makes them single-queue unless told otherwise).
    pub fn with_queues_on(
        test: &str,
        node1_pods: &[u8],
        node2_pods: &[u8],
        queues: u32,
        pod_queues: u32,
    ) -> Topology {
        SWEEP.call_once(sweep_stale);
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ns = |role: &str| format!("{id}-{role}");
        let mut t = Topology {
            test: test.to_owned(),
            node1: ns("n1"),
            node2: ns("n2"),
            underlay: ns("ul"),
            client: ns("cl"),
            pods: Vec::new(),
            dir,
            namespaces: Vec::new(),
            queues,
            pod_queues,
        };
        let mq = format!("numtxqueues {queues} numrxqueues {queues}");
        let pods = node1_pods
            .iter()
            .map(|&h| (1u8, h))
            .chain(node2_pods.iter().map(|&h| (2u8, h)));
        for (node, h) in pods {
            t.pods.push(Pod {
                ns: ns(&format!("p{node}-{h}")),
                ip: Ipv4Addr::new(198, 18, node, h),
                host_if: format!("n{node}p{h}"),
                node,
            });
        }
        let (n1, n2, ul, cl) = (
            t.node1.clone(),
            t.node2.clone(),
            t.underlay.clone(),
            t.client.clone(),
        );
        let all: Vec<String> = [&n1, &n2, &ul, &cl]
            .into_iter()
            .cloned()
            .chain(t.pods.iter().map(|p| p.ns.clone()))
            .collect();
        // From here on, a failing command panics and Drop removes what exists.
        for name in &all {
            ip(&format!("netns add {name}"));
            t.namespaces.push(name.clone());
            ip(&format!("-n {name} link set lo up"));
        }
        // The underlay: a bridge joining the nodes' uplinks and the external client.
        ip(&format!("-n {ul} link add br0 type bridge"));
        ip(&format!("-n {ul} link set br0 up"));
        let uplinks = [
            (&n1, "n1u", "u1", NODE1_IP),
            (&n2, "n2u", "u2", NODE2_IP),
            (&cl, "clu", "u3", CLIENT_IP),
        ];
        for (host, dev, port, addr) in uplinks {
            let q = if host == &n1 { mq.as_str() } else { "" };
            ip(&format!(
                "-n {host} link add {dev} {q} type veth peer name {port} {q} netns {ul}"
            ));
            ip(&format!("-n {ul} link set {port} master br0 up"));
            ip(&format!("-n {host} addr add {addr}/24 dev {dev}"));
            ip(&format!("-n {host} link set {dev} up"));
        }
        // Each node answers its pods' ARP for the gateway from lo.
        for node in [&n1, &n2] {
            ip(&format!("-n {node} addr add 169.254.1.1/32 dev lo"));
        }
        ip(&format!("netns exec {n2} sysctl -qw net.ipv4.ip_forward=1"));
        for p in &t.pods {
            t.plug(p);
        }
        // node2's flannel.1, as flannel's VXLAN backend sets it up for node1's lease.
        ip(&format!(
            "-n {n2} link add flannel.1 type vxlan id 1 local {NODE2_IP} dev n2u dstport 8472 nolearning"
        ));
        ip(&format!(
            "-n {n2} link set flannel.1 address {NODE2_VTEP_MAC} mtu 1450 up"
        ));
        ip(&format!("-n {n2} addr add 198.18.2.0/32 dev flannel.1"));
        ip(&format!(
            "-n {n2} route add 198.18.1.0/24 via 198.18.1.0 dev flannel.1 onlink"
        ));
        ip(&format!(
            "-n {n2} neigh add 198.18.1.0 lladdr {NODE1_VTEP_MAC} dev flannel.1"
        ));
        run(Command::new("bridge").args(
            format!("-n {n2} fdb append {NODE1_VTEP_MAC} dev flannel.1 dst {NODE1_IP}")
                .split_whitespace(),
        ));
        t
    }

    /// Connects a pod to its node as a Calico-style CNI's ADD does: a veth pair,
    /// the pod's address and routes, and a /32 route to it on the node.
    pub fn plug(&self, p: &Pod) {
        let node = if p.node == 1 {
            &self.node1
        } else {
            &self.node2
        };
        let (pod, host_if, addr) = (&p.ns, &p.host_if, p.ip);
        let q = match p.node {
            1 => format!("numtxqueues {0} numrxqueues {0}", self.pod_queues),
            _ => String::new(),
        };
        ip(&format!(
            "-n {node} link add {host_if} {q} type veth peer name eth0 {q} netns {pod}"
        ));
        ip(&format!("-n {pod} addr add {addr}/32 dev eth0"));
        ip(&format!("-n {pod} link set eth0 up"));
        ip(&format!(
            "-n {pod} route add 169.254.1.1 dev eth0 scope link"
        ));
        ip(&format!("-n {pod} route add default via 169.254.1.1"));
        ip(&format!("-n {node} link set {host_if} up"));
        // The registry Calico's CNI keeps in the kernel: a /32 per local pod.
        ip(&format!("-n {node} route add {addr}/32 dev {host_if}"));
    }

    /// Disconnects a pod as a CNI's DEL does: its veth pair is deleted, and the
    /// kernel drops the route through it. Its namespace stays, for [`Topology::plug`].
    #[allow(dead_code)] // not every test crate that includes this module unplugs pods
    pub fn unplug(&self, p: &Pod) {
        let node = if p.node == 1 {
            &self.node1
        } else {
            &self.node2
        };
        ip(&format!("-n {node} link del {}", p.host_if));
    }

    pub fn pod(&self, node: u8, host: u8) -> &Pod {
        let ip = Ipv4Addr::new(198, 18, node, host);
        self.pods
            .iter()
            .find(|p| p.ip == ip)
            .unwrap_or_else(|| panic!("no pod {ip} in this topology"))
    }

    /// `ip netns exec NS ARGS…` to completion (bounded); the output, success or not.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        self.exec_within(ns, args, STEP_TIMEOUT)
    }

    /// [`Topology::exec`] with its own time limit.
    pub fn exec_within(&self, ns: &str, args: &[&str], limit: Duration) -> Output {
        let what = format!("ip netns exec {ns} {args:?}");
        output_within(
            Command::new("ip").args(["netns", "exec", ns]).args(args),
            limit,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Starts a process in a namespace; it is killed when the guard drops.
    pub fn spawn(&self, ns: &str, label: &str, args: &[&str]) -> Proc<'_> {
        Proc::start(self, ns, label, args, libc::SIGKILL)
    }

    /// Starts a Python script (its source in `script`) in a namespace.
    pub fn python(&self, ns: &str, label: &str, script: &str, args: &[&str]) -> Proc<'_> {
        let mut argv = vec!["python3", "-u", "-c", script];
        argv.extend_from_slice(args);
        self.spawn(ns, label, &argv)
    }

    /// A server script that prints `ready` once it listens; returns when it has.
    pub fn server(&self, pod: &Pod, label: &str, script: &str, port: u16) -> Proc<'_> {
        let mut p = self.python(&pod.ns, label, script, &[&port.to_string()]);
        p.wait_line(|l| l == "ready", STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{label} on {}: {e}", pod.ip));
        p
    }

    /// `curl -sS` in a namespace, at most 10 s: its stdout, or why it failed.
    pub fn curl(&self, ns: &str, args: &[&str]) -> Result<String, Curl> {
        self.curl_within(ns, args, Duration::from_secs(10))
    }

    /// [`Topology::curl`] for transfers that take longer (e.g. many URLs).
    pub fn curl_within(&self, ns: &str, args: &[&str], limit: Duration) -> Result<String, Curl> {
        let max = limit.as_secs().max(1).to_string();
        let mut argv = vec!["curl", "-sS", "--connect-timeout", "5", "--max-time", &max];
        argv.extend_from_slice(args);
        let out = self.exec_within(ns, &argv, limit + Duration::from_secs(5));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Curl {
                code: out.status.code(),
                message: format!(
                    "curl {args:?} in {ns}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// One HTTP GET against [`HTTP_SERVER`]: who served it and whom it saw.
    pub fn http_get(&self, ns: &str, url: &str) -> Reply {
        let body = self
            .curl(ns, &[url])
            .unwrap_or_else(|e| panic!("{}", e.message));
        Reply::parse(body.trim()).unwrap_or_else(|| panic!("unexpected reply {body:?}"))
    }

    /// `ip link show DEV` in a namespace.
    pub fn link(&self, ns: &str, dev: &str) -> String {
        let out = self.exec(ns, &["ip", "-d", "link", "show", dev]);
        assert!(out.status.success(), "ip link show {dev} in {ns} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the objects file (atomically: a reload never sees half a file).
    pub fn write_objects(&self, services: &[Service]) -> PathBuf {
        let path = self.dir.join("objects.yaml");
        let tmp = self.dir.join("objects.yaml.tmp");
        std::fs::write(&tmp, objects_yaml(services)).expect("write objects");
        std::fs::rename(&tmp, &path).expect("rename objects");
        path
    }

    /// Starts kxdp on node1 (uplink and every node1 pod's veth) and waits until
    /// `/proxyMode` answers.
    pub fn start_kxdp(&self, objects: &Path) -> Kxdp<'_> {
        self.start_kxdp_with(&["--objects", objects.to_str().expect("utf-8 path")])
    }

    /// [`Topology::start_kxdp`] with other source flags (e.g. `--kubeconfig F`).
    /// Its admin socket is in the topology's directory (unique per test run), so
    /// tests running at once never share one.
    pub fn start_kxdp_with(&self, source: &[&str]) -> Kxdp<'_> {
        let admin_socket = self.dir.join("admin.sock");
        let mut argv = vec![env!("CARGO_BIN_EXE_kxdp"), "run"];
        argv.extend_from_slice(source);
        argv.extend(["--node-name", "node1", "--uplink", UPLINK]);
        argv.extend(["--admin-socket", admin_socket.to_str().expect("utf-8 path")]);
        // Unless kxdp finds them itself.
        if !source.contains(&"--pod-routes") {
            for p in self.pods.iter().filter(|p| p.node == 1) {
                argv.push("--pod-iface");
                argv.push(&p.host_if);
            }
        }
        let queues = self.queues.to_string();
        // Unless the test chose how many queues kxdp serves.
        if self.queues > 1 && !source.contains(&"--queues") {
            argv.push("--queues");
            argv.push(&queues);
        }
        let mut k = Kxdp {
            proc: Proc::start(self, &self.node1, "kxdp", &argv, libc::SIGINT),
            admin_socket,
        };
        k.wait_ready();
        k
    }

    /// The interfaces of node1 kxdp attaches to.
    pub fn node1_ifaces(&self) -> Vec<String> {
        std::iter::once(UPLINK.to_owned())
            .chain(
                self.pods
                    .iter()
                    .filter(|p| p.node == 1)
                    .map(|p| p.host_if.clone()),
            )
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Guards normally stopped everything; whatever a failed step left running
        // (e.g. a child of a killed process) must not keep a namespace alive.
        for ns in &self.namespaces {
            kill_namespace_processes(ns);
        }
        for ns in self.namespaces.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("{}: could not delete namespace {ns}: {out:?}", self.test);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process started in one of the topology's namespaces. Its stdout is read line
/// by line (see [`Proc::wait_line`]); its stderr goes to a file, printed when the test
/// panics. Dropping it sends `stop_signal`, waits a little, then SIGKILLs.
pub struct Proc<'t> {
    label: String,
    ns: String,
    test: String,
    child: Child,
    stop_signal: i32,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
    _topology: PhantomData<&'t Topology>,
}

impl<'t> Proc<'t> {
    fn start(t: &'t Topology, ns: &str, label: &str, args: &[&str], stop_signal: i32) -> Self {
        let n = NEXT_PROC.fetch_add(1, Ordering::Relaxed);
        let stderr = t.dir.join(format!("{label}-{n}.stderr"));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({args:?}): {e}"));
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            label: label.to_owned(),
            ns: ns.to_owned(),
            test: t.test.clone(),
            child,
            stop_signal,
            lines: rx,
            seen: Vec::new(),
            stderr,
            _topology: PhantomData,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for a stdout line matching `want`; every line read is kept in `seen`.
    pub fn wait_line(
        &mut self,
        want: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(POLL)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{} exited ({:?}) without the expected line; stdout {:?}; stderr: {}",
                        self.label,
                        wait_within(&mut self.child, Duration::from_secs(1)),
                        self.seen,
                        self.stderr_text()
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if left.is_zero() {
                return Err(format!(
                    "{}: no expected line within {limit:?}; stdout {:?}; stderr: {}",
                    self.label,
                    self.seen,
                    self.stderr_text()
                ));
            }
        }
    }

    /// Waits for the process to exit, at most `limit`; then returns its status and
    /// all of its stdout.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<(ExitStatus, Vec<String>), String> {
        let status = wait_within(&mut self.child, limit).ok_or_else(|| {
            format!(
                "{} still running after {limit:?}; stderr: {}",
                self.label,
                self.stderr_text()
            )
        })?;
        // The reader thread ends at EOF, right after the exit.
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok((status, self.seen.clone()))
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `stop_signal`; waits up to `grace`, then SIGKILLs. The exit status, if
    /// the process exited within `grace`.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: plain syscall on our own child's pid (not reaped yet, so not reused).
        unsafe { libc::kill(self.pid(), self.stop_signal) };
        let status = wait_within(&mut self.child, grace);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for Proc<'_> {
    fn drop(&mut self) {
        let grace = if self.stop_signal == libc::SIGKILL {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        let status = self.stop(grace);
        if std::thread::panicking() {
            eprintln!(
                "---- {} ({}) stdout {:?}, exit {status:?}, stderr:\n{}",
                self.label,
                self.test,
                self.seen,
                self.stderr_text()
            );
        }
    }
}

/// kxdp running on node1. Dropping it sends SIGINT (kxdp detaches and exits), waits
/// up to 5 s, then kills it; its log is printed if the test is failing.
pub struct Kxdp<'t> {
    proc: Proc<'t>,
    /// Where it serves `kxdp services`, `flows` and `explain`.
    pub admin_socket: PathBuf,
}

impl Kxdp<'_> {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let ns = self.proc.ns.clone();
        let mut tries = 0;
        loop {
            tries += 1;
            if let Ok(Some(s)) = self.proc.child.try_wait() {
                panic!("kxdp exited before it was ready ({s}):\n{}", self.log());
            }
            let out = output_within(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns,
                    "curl",
                    "-s",
                    "--max-time",
                    "1",
                    "http://127.0.0.1:10249/proxyMode",
                ]),
                Duration::from_secs(3),
            );
            if matches!(&out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "kxdp") {
                return;
            }
            assert!(
                Instant::now() < deadline && tries < 200,
                "kxdp not ready after {tries} tries:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kxdp's log (stderr) so far.
    pub fn log(&self) -> String {
        self.proc.stderr_text()
    }

    /// How many times the log says `needle` so far.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log says `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "kxdp did not log {needle:?} {n} times within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Runs a client subcommand (`services`, `flows …`, `explain …`) against this
    /// daemon's admin socket (a Unix socket: no namespace needed), at most 10 s.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kxdp"));
        cmd.args(args).arg("--admin-socket").arg(&self.admin_socket);
        output_within(&mut cmd, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("kxdp {args:?}: {e}"))
    }

    /// SIGINT, then the exit status (None if it had to be killed) and the whole log.
    pub fn stop(mut self) -> (Option<ExitStatus>, String) {
        let status = self.proc.stop(Duration::from_secs(10));
        (status, self.log())
    }
}

/// A failed curl: its exit code (7 no connection, 28 timeout, 45 cannot bind the
/// local port, …) and what it said.
#[derive(Debug)]
pub struct Curl {
    pub code: Option<i32>,
    pub message: String,
}

/// What [`HTTP_SERVER`] answers: its own address and the client's as it saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub backend: Ipv4Addr,
    pub client: SocketAddrV4,
}

impl Reply {
    fn parse(body: &str) -> Option<Reply> {
        let mut backend = None;
        let mut client = None;
        for field in body.split_whitespace() {
            match field.split_once('=') {
                Some(("backend", v)) => backend = v.parse().ok(),
                Some(("client", v)) => client = v.parse().ok(),
                _ => return None,
            }
        }
        Some(Reply {
            backend: backend?,
            client: client?,
        })
    }

    /// Every reply in a body holding several (curl's URL globbing).
    pub fn parse_all(body: &str) -> Vec<Option<Reply>> {
        body.lines().map(|l| Reply::parse(l.trim())).collect()
    }
}

/// A Service and its endpoints, written as a Service and one EndpointSlice.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub udp: bool,
    /// `(nodePort, externalTrafficPolicy: Local)`: makes it a NodePort Service.
    pub node_port: Option<(u16, bool)>,
    /// Pod addresses; the node is node1 for 198.18.1.0/24, node2 for 198.18.2.0/24.
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    pub fn tcp(name: &'static str, cluster_ip: [u8; 4], port: u16, target_port: u16) -> Self {
        Service {
            name,
            cluster_ip: Ipv4Addr::from(cluster_ip),
            port,
            target_port,
            udp: false,
            node_port: None,
            endpoints: Vec::new(),
        }
    }

    pub fn udp(name: &'static str, cluster_ip: [u8; 4], port: u16, target_port: u16) -> Self {
        Service {
            udp: true,
            ..Service::tcp(name, cluster_ip, port, target_port)
        }
    }

    pub fn node_port(mut self, port: u16, external_policy_local: bool) -> Self {
        self.node_port = Some((port, external_policy_local));
        self
    }

    pub fn endpoints(mut self, pods: &[&Pod]) -> Self {
        self.endpoints = pods.iter().map(|p| p.ip).collect();
        self
    }

    pub fn cluster_url(&self) -> String {
        format!("http://{}:{}/", self.cluster_ip, self.port)
    }
}

fn node_yaml(name: &str, cidr: &str, ip: Ipv4Addr, vtep_mac: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    flannel.alpha.coreos.com/backend-data: '{{"VNI":1,"VtepMAC":"{vtep_mac}"}}'
    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/kube-subnet-manager: "true"
    flannel.alpha.coreos.com/public-ip: {ip}
spec:
  podCIDR: {cidr}
  podCIDRs:
  - {cidr}
status:
  addresses:
  - address: {ip}
    type: InternalIP
  - address: {name}
    type: Hostname
"#
    )
}

/// The objects file: both Nodes, then every Service and its EndpointSlice, in the
/// multi-document shape `kubectl get … -o yaml` output concatenates to.
pub fn objects_yaml(services: &[Service]) -> String {
    let mut y = String::new();
    y += &node_yaml("node1", "198.18.1.0/24", NODE1_IP, NODE1_VTEP_MAC);
    y += "---\n";
    y += &node_yaml("node2", "198.18.2.0/24", NODE2_IP, NODE2_VTEP_MAC);
    for s in services {
        let proto = if s.udp { "UDP" } else { "TCP" };
        let (ty, node_port, policy) = match s.node_port {
            Some((p, local)) => (
                "NodePort",
                format!("\n    nodePort: {p}"),
                format!(
                    "\n  externalTrafficPolicy: {}",
                    if local { "Local" } else { "Cluster" }
                ),
            ),
            None => ("ClusterIP", String::new(), String::new()),
        };
        write!(
            y,
            r#"---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: {ty}
  clusterIP: {ip}
  clusterIPs:
  - {ip}{policy}
  ipFamilies:
  - IPv4
  ports:
  - name: p
    port: {port}
    protocol: {proto}
    targetPort: {target}{node_port}
  selector:
    app: {name}
  sessionAffinity: None
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata:
  name: {name}-e2e
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
ports:
- name: p
  port: {target}
  protocol: {proto}
"#,
            name = s.name,
            ip = s.cluster_ip,
            port = s.port,
            target = s.target_port,
        )
        .expect("write to String");
        if s.endpoints.is_empty() {
            y += "endpoints: []\n";
        } else {
            y += "endpoints:\n";
        }
        for e in &s.endpoints {
            let node = if e.octets()[2] == 1 { "node1" } else { "node2" };
            write!(
                y,
                "- addresses:\n  - {e}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n  nodeName: {node}\n"
            )
            .expect("write to String");
        }
    }
    y
}

/// An HTTP server answering every GET with `backend=<its address> client=<peer>`.
/// HTTP/1.0 without Content-Length: the body ends when the server closes, so the
/// server always closes first and the TIME_WAIT state stays on the server's side,
/// leaving the client free to reuse its source port at once.
pub const HTTP_SERVER: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        me = self.connection.getsockname()[0]
        peer = self.client_address
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(f"backend={me} client={peer[0]}:{peer[1]}\n".encode())
    def log_message(self, *args):
        pass
class S(ThreadingHTTPServer):
    request_queue_size = 128
s = S(("0.0.0.0", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// A UDP echo server: sends back each datagram followed by ` from=<peer>`.
pub const UDP_ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data + f" from={peer[0]}:{peer[1]}".encode(), peer)
"#;

/// A UDP client on an unconnected socket (so it receives replies from any source):
/// sends `ping-i` to argv[1]:argv[2], prints `src=<reply source> data=<reply>` for
/// each answer. Retries a lost datagram a bounded number of times.
pub const UDP_CLIENT: &str = r#"
import socket, sys
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for i in range(int(sys.argv[3])):
    msg = f"ping-{i}".encode()
    for attempt in range(10):
        s.sendto(msg, dst)
        try:
            while True:
                data, src = s.recvfrom(65535)
                if data.startswith(msg + b" "):
                    break
        except socket.timeout:
            continue
        print(f"src={src[0]}:{src[1]} data={data.decode()}", flush=True)
        break
    else:
        sys.exit(f"no answer to {msg!r}")
"#;

/// A TCP line echo server.
pub const TCP_ECHO_SERVER: &str = r#"
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(16)
print("ready", flush=True)
def serve(c):
    with c:
        for line in c.makefile("rb"):
            c.sendall(line)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// One long-lived TCP connection to argv[1]:argv[2]: a line every 100 ms, each echo
/// checked, until stdin closes. Prints `connected`, `echoed N` after each line and
/// `done N` at the end; any lost, wrong or late (3 s) echo, or a reset, exits non-zero.
pub const LONG_LIVED_CLIENT: &str = r#"
import select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(3)
f = s.makefile("rb")
print(f"connected from {s.getsockname()[0]}:{s.getsockname()[1]}", flush=True)
n = 0
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0.1)
    if r and not sys.stdin.readline():
        break
    line = f"line {n}\n".encode()
    s.sendall(line)
    back = f.readline()
    if back != line:
        sys.exit(f"connection broken at line {n}: got {back!r}")
    n += 1
    print(f"echoed {n}", flush=True)
s.close()
print(f"done {n}", flush=True)
"#;

/// Receives one connection on argv[1] and counts its bytes until EOF; answers the
/// count and prints `received N`.
pub const SINK_SERVER: &str = r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1)
print("ready", flush=True)
c, peer = srv.accept()
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    n += len(b)
c.sendall(f"{n}\n".encode())
c.close()
print(f"received {n} from {peer[0]}", flush=True)
"#;

/// Uploads argv[3] MiB to argv[1]:argv[2], then prints `acked N` with the count the
/// sink reports.
pub const UPLOAD_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
chunk = bytes(1 << 20)
for _ in range(int(sys.argv[3])):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
print(f"acked {s.makefile().readline().strip()}", flush=True)
"#;

impl Kxdp<'_> {
    /// kxdp's process id (`ip netns exec` execs it in place), for signals such as
    /// SIGHUP (reload the objects now).
    #[allow(dead_code)] // not every test crate that includes this module sends signals
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}
