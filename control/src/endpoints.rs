//! The kube-proxy-compatible HTTP endpoints. On the metrics address: `/proxyMode`
//! (answers `kxdp`: what readiness checks and tests poll) and `/metrics` (Prometheus
//! text). On the healthz address: `/healthz` and `/livez`, as kube-proxy serves them:
//! 200 with the last-updated time while the dataplane is current, 503 when a worker
//! has been behind the newest snapshot for longer than [`STALE_AFTER`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use kxdp_dataplane::worker::WorkerStatus;
use prometheus_client::registry::Registry;

use crate::metrics;

/// How long a worker may lag behind a new snapshot before health reports it.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the endpoints read.
pub struct State {
    pub registry: Registry,
    pub workers: Vec<Arc<Mutex<WorkerStatus>>>,
    pub generation: Arc<AtomicU64>,
    /// When the newest snapshot was published.
    pub published_at: Mutex<SystemTime>,
}

impl State {
    /// (healthy, last updated): healthy unless a worker has lagged for too long.
    pub fn health(&self, now: SystemTime) -> (bool, SystemTime) {
        let newest = self.generation.load(Ordering::Relaxed);
        let published = *self.published_at.lock().unwrap_or_else(|e| e.into_inner());
        let current = self
            .workers
            .iter()
            .all(|w| w.lock().map(|s| s.generation >= newest).unwrap_or(false));
        let lag = now.duration_since(published).unwrap_or_default();
        (current || lag <= STALE_AFTER, published)
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Serves until `stop` is set.
pub fn serve(addr: SocketAddr, stop: Arc<AtomicBool>, state: Arc<State>) -> Result<JoinHandle<()>> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(std::thread::Builder::new()
        .name(format!("http-{addr}"))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let (code, body) = match req.url() {
                    "/proxyMode" => (200, "kxdp".to_string()),
                    "/metrics" => (200, metrics::render(&state.registry)),
                    "/healthz" | "/livez" => {
                        let now = SystemTime::now();
                        let (ok, updated) = state.health(now);
                        let body = format!(
                            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"}}",
                            secs(updated),
                            secs(now)
                        );
                        (if ok { 200 } else { 503 }, body)
                    }
                    _ => (404, "404 page not found\n".to_string()),
                };
                let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
            }
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(worker_gen: u64, newest: u64, published_ago: Duration) -> State {
        let w = WorkerStatus {
            generation: worker_gen,
            ..Default::default()
        };
        State {
            registry: Registry::default(),
            workers: vec![Arc::new(Mutex::new(w))],
            generation: Arc::new(AtomicU64::new(newest)),
            published_at: Mutex::new(SystemTime::now() - published_ago),
        }
    }

    #[test]
    fn healthy_while_workers_are_current_or_only_briefly_behind() {
        let now = SystemTime::now();
        assert!(state(3, 3, Duration::from_secs(600)).health(now).0);
        assert!(state(2, 3, Duration::from_secs(1)).health(now).0);
        assert!(!state(2, 3, Duration::from_secs(30)).health(now).0);
    }
}
