//! The kube-proxy-compatible HTTP endpoints: `/proxyMode` on the metrics address
//! (answers `kxdp`: what readiness checks and tests poll), `/healthz` and `/livez`
//! on the healthz address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};

/// Serves until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    started: SystemTime,
) -> Result<JoinHandle<()>> {
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
                    "/healthz" | "/livez" => {
                        let ts = started
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        (
                            200,
                            format!(
                                "{{\"lastUpdated\": \"{ts}\",\"currentTime\": \"{}\"}}",
                                now_secs()
                            ),
                        )
                    }
                    _ => (404, "404 page not found\n".to_string()),
                };
                let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
            }
        })?)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
