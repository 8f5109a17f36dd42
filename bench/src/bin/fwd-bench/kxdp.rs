//! kxdp under test: `kxdp run` in the node's namespace, one worker pinned to one
//! core, AF_XDP in copy mode (veth has no zero-copy), stopped with SIGINT (its clean
//! shutdown detaches everything and checks that no frame leaked).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{check_interrupted, within};
use crate::topology::{Topology, UPLINK};

/// Long enough for a first list of 10,000 Services from an API server.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Kxdp {
    child: Option<Child>,
    node: String,
    log: PathBuf,
}

impl Kxdp {
    /// Serves the topology's objects file.
    pub fn start(bin: &Path, topo: &Topology, core: usize, extra: &[String]) -> Result<Kxdp> {
        let objects = topo.objects.to_string_lossy();
        Kxdp::start_from(bin, topo, core, &["--objects", objects.as_ref()], extra)
    }

    /// Takes its objects from `source` (`--objects F` or `--kubeconfig F`).
    pub fn start_from(
        bin: &Path,
        topo: &Topology,
        core: usize,
        source: &[&str],
        extra: &[String],
    ) -> Result<Kxdp> {
        let log = topo.dir().join("kxdp.log");
        let out = std::fs::File::create(&log).with_context(|| format!("cannot create {log:?}"))?;
        let core = core.to_string();
        let mut args: Vec<&str> = vec!["netns", "exec", &topo.node];
        let bin = bin.to_string_lossy();
        args.extend([bin.as_ref(), "run"]);
        args.extend(source);
        args.extend([
            "--node-name",
            "node1",
            "--uplink",
            UPLINK,
            "--pod-iface",
            &topo.client_host_if,
            "--pod-iface",
            &topo.backend_host_if,
            "--cores",
            &core,
            "--queues",
            "1",
            "--xdp-mode",
            "native",
            "--bind",
            "copy",
        ]);
        for iface in &topo.idle_pod_ifs {
            args.extend(["--pod-iface", iface]);
        }
        args.extend(extra.iter().map(String::as_str));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start kxdp")?;
        let mut k = Kxdp {
            child: Some(child),
            node: topo.node.clone(),
            log,
        };
        k.wait_ready()?;
        Ok(k)
    }

    /// `/proxyMode` answering `kxdp` on 127.0.0.1:10249 in the node means ready.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "kxdp exited ({status}) before it was ready:\n{}",
                        self.log_text()
                    );
                }
            }
            if within(&self.node, || Ok(proxy_mode()))? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kxdp not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kxdp's own account of the frames it received so far (its /metrics).
    pub fn inside(&self) -> Result<Inside> {
        let text = within(&self.node, || Ok(get("/metrics")))?
            .context("kxdp's /metrics did not answer")?;
        Ok(Inside::parse(&text))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops kxdp with SIGINT; its log, which ends with the frame accounting.
    pub fn stop(mut self) -> Result<String> {
        let status = self.interrupt()?;
        let log = self.log_text();
        if !status.success() {
            bail!("kxdp exited with {status}:\n{log}");
        }
        Ok(log)
    }

    fn interrupt(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("kxdp already stopped");
        };
        // SAFETY: signalling our own child by its pid (`ip netns exec` execs kxdp).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("kxdp did not stop within {STOP_TIMEOUT:?} of SIGINT; killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kxdp {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.interrupt() {
                eprintln!("fwd-bench: {e:#}");
            }
        }
    }
}

fn proxy_mode() -> bool {
    get("/proxyMode").is_some_and(|body| body.ends_with("kxdp"))
}

/// A GET of `path` on kxdp's metrics address (in the calling thread's namespace).
fn get(path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &"127.0.0.1:10249".parse().expect("address"),
        Duration::from_millis(200),
    )
    .ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Some(body)
}

/// The samples of kxdp's /metrics that say where frames went inside it: received
/// frames and batches, and the kernel's per-socket losses (`kxdp_xsk_*`), summed
/// over labels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inside {
    pub rx: f64,
    pub batches: f64,
    pub ring_full: f64,
    pub rx_dropped: f64,
}

impl Inside {
    fn parse(text: &str) -> Inside {
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        Inside {
            rx: sum("kxdp_rx_packets_total"),
            batches: sum("kxdp_rx_batches_total"),
            ring_full: sum("kxdp_xsk_rx_ring_full_total"),
            rx_dropped: sum("kxdp_xsk_rx_dropped_total"),
        }
    }

    /// "mean batch B; lost in the sockets' RX rings R, for want of frames D" between
    /// two readings.
    pub fn describe(&self, before: &Inside) -> String {
        let batches = (self.batches - before.batches).max(1.0);
        format!(
            "mean RX batch {:.1}; lost before kxdp saw them: {} (RX ring full), {} (no free frame)",
            (self.rx - before.rx) / batches,
            self.ring_full - before.ring_full,
            self.rx_dropped - before.rx_dropped,
        )
    }
}
