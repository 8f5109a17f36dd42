//! The admin socket: a Unix stream socket (mode 0600: root only) on which the daemon
//! answers `kxdp services`, `kxdp flows` and `kxdp explain`.
//!
//! Protocol: one JSON request per line, one JSON response per line, as many as the
//! client likes on one connection. Requests are tagged by `command`:
//!
//! ```text
//! {"command":"services"}
//! {"command":"flows","service":"default/web:http","src":"198.18.1.10","dst":null,"proto":"tcp","limit":1000}
//! {"command":"explain","proto":"tcp","src":"198.18.1.10:40000","dst":"198.19.0.10:80"}
//! ```
//!
//! A response is `{"services":[...]}`, `{"flows":{...}}`, `{"explain":{...}}` or
//! `{"error":"..."}` (a malformed request gets an error, never a dropped connection
//! or a panic). The answers are built in [`crate::inspect`]; flows come from the
//! workers, which answer between batches (see `kxdp_dataplane::inspect`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use kxdp_dataplane::snapshot::Snapshot;
use kxdp_dataplane::worker::{Fleet, WorkerStatus};
use serde::{Deserialize, Serialize};

use crate::inspect::{self, ExplainInfo, FlowsInfo, ServiceInfo};

/// What the admin thread reads from the running daemon.
#[derive(Clone)]
pub struct Daemon {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub workers: Vec<Arc<Mutex<WorkerStatus>>>,
    /// The workers' inspection queues (`Fleet::inspect`).
    pub fleet: Arc<Fleet>,
}

/// `tcp` or `udp` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoName {
    Tcp,
    Udp,
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Services {},
    Flows {
        #[serde(default)]
        service: Option<String>,
        /// `IP` or `IP:PORT`.
        #[serde(default)]
        src: Option<String>,
        #[serde(default)]
        dst: Option<String>,
        #[serde(default)]
        proto: Option<ProtoName>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    Explain {
        proto: ProtoName,
        src: std::net::SocketAddrV4,
        dst: std::net::SocketAddrV4,
    },
}

fn default_limit() -> usize {
    1000
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Services(Vec<ServiceInfo>),
    Flows(FlowsInfo),
    Explain(Box<ExplainInfo>),
    Error(String),
}

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Connections served at once; more are answered with an error and closed.
const MAX_CLIENTS: usize = 16;
/// How long a connection may sit idle.
const IDLE: Duration = Duration::from_secs(30);
/// How often the accept loop looks at its stop flag.
const ACCEPT_TICK: Duration = Duration::from_millis(50);

/// The serving admin socket. Dropping it stops the thread and removes the socket.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600; its directory is created 0700 if missing) and serves it
/// from a thread until the returned guard drops. A socket file left by a daemon that
/// died is replaced; one a live daemon answers on is an error.
pub fn serve(path: &Path, daemon: Daemon) -> Result<AdminSocket> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "admin socket {} is in use: another kxdp is running (see --admin-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale admin socket {}", path.display()))?;
    }
    // Created with no access for group and others from the start, then made exact.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot bind admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("kxdp-admin".into())
            .spawn(move || accept_loop(listener, daemon, stop))
            .context("spawn the admin thread")?
    };
    tracing::info!(path = %path.display(), "admin socket ready");
    Ok(AdminSocket {
        path: path.to_owned(),
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: UnixListener, daemon: Daemon, stop: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
                    let _ = write_response(
                        &mut stream,
                        &Response::Error("busy: too many admin clients".into()),
                    );
                    continue;
                }
                clients.fetch_add(1, Ordering::Relaxed);
                let (daemon, count, stop) = (daemon.clone(), clients.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name("kxdp-admin-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(stream, &daemon, &stop) {
                            tracing::debug!("admin client: {e}");
                        }
                        count.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    clients.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_TICK),
            Err(e) => {
                tracing::warn!("admin socket accept: {e}");
                std::thread::sleep(ACCEPT_TICK);
            }
        }
    }
}

fn serve_client(stream: UnixStream, daemon: &Daemon, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() as u64 > MAX_LINE {
            write_response(
                &mut out,
                &Response::Error(format!("request longer than {MAX_LINE} bytes")),
            )?;
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        write_response(&mut out, &answer_line(&line, daemon))?;
    }
    Ok(())
}

/// The response to one request line.
pub fn answer_line(line: &[u8], daemon: &Daemon) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Ok(req) => answer(&req, daemon),
        Err(e) => Response::Error(format!("malformed request: {e}")),
    }
}

/// The response to one request.
pub fn answer(req: &Request, daemon: &Daemon) -> Response {
    let result = match req {
        Request::Services {} => Ok(Response::Services(inspect::services(
            &daemon.snapshot.load(),
            &daemon.workers,
        ))),
        Request::Flows {
            service,
            src,
            dst,
            proto,
            limit,
        } => inspect::flow_filter(service.clone(), src.as_deref(), dst.as_deref(), *proto)
            .map(|filter| Response::Flows(inspect::flows(daemon, filter, *limit))),
        Request::Explain { proto, src, dst } => Ok(Response::Explain(Box::new(inspect::explain(
            daemon, *proto, *src, *dst,
        )))),
    };
    result.unwrap_or_else(Response::Error)
}

fn write_response(out: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).unwrap_or_else(|e| {
        serde_json::to_string(&Response::Error(format!("cannot encode the answer: {e}")))
            .unwrap_or_default()
    });
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Sends one request to the daemon at `path` and reads its response (the client side).
pub fn request(path: &Path, req: &Request) -> Result<Response> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to the admin socket {} (is kxdp run serving it, and are you root? see --admin-socket)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading the daemon's answer")?;
    if reply.is_empty() {
        bail!("the daemon closed the admin connection without answering");
    }
    serde_json::from_str(&reply).context("the daemon's answer is not valid")
}
