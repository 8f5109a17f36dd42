//! The kube-proxy-compatible HTTP endpoints. On the metrics address: `/proxyMode`
//! (answers `kxdp`: what readiness checks and tests poll) and `/metrics` (Prometheus
//! text). On the healthz address: `/healthz` and `/livez`, 200 with the last-updated
//! time, 503 with the [`Problem`]s when not.
//!
//! kube-proxy's `/livez` is its sync staleness (an update queued and not applied
//! within its health timeout), and `/healthz` is the same plus whether the Node is
//! being deleted (`pkg/proxy/healthcheck/proxy_health.go`). kxdp's equivalents:
//! - `/livez`: a worker has stopped, or a worker has been behind the newest snapshot
//!   for longer than [`STALE_AFTER`]. Restarting kxdp can cure these.
//! - `/healthz`: those, and a change noticed but not applied (its reload failed) for
//!   longer than [`SOURCE_STALE_AFTER`]: kube-proxy's queued update not synced. The
//!   last good snapshot keeps serving meanwhile (fail static), and `/livez` ignores
//!   it on purpose: a restart cannot fix the objects, and a kxdp that cannot load its
//!   objects does not start.
//!
//! API watches failing for as long fail neither: they are named under `warnings`.
//! kube-proxy's health does not look at the API server either, and cloud load
//! balancers probing port 10256 would otherwise take every node out of rotation at
//! once during a control-plane outage, while each still forwards with its last
//! snapshot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use kxdp_dataplane::worker::WorkerStatus;
use prometheus_client::registry::Registry;

use crate::metrics;

/// How long a worker may lag behind a new snapshot before health reports it.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How long a noticed change may stay unapplied, or the API watches fail, before
/// health reports it: kube-proxy's health timeout (twice its 30 s `--sync-period`).
pub const SOURCE_STALE_AFTER: Duration = Duration::from_secs(60);

/// What the run loop reports about snapshots and their source.
#[derive(Clone, Copy, Debug)]
pub struct SyncState {
    /// When the newest snapshot was published (wall clock: `lastUpdated`).
    pub published_at: SystemTime,
    /// The same instant on the monotonic clock, for durations.
    pub published: Instant,
    /// The oldest change noticed and not yet in a published snapshot.
    pub pending_since: Option<Instant>,
    /// Since when the source has been failing (API watch errors); None while it works.
    pub failing_since: Option<Instant>,
    /// False once a worker thread has ended.
    pub workers_running: bool,
}

impl SyncState {
    /// A snapshot just published, nothing pending, workers running.
    pub fn published_now() -> SyncState {
        SyncState {
            published_at: SystemTime::now(),
            published: Instant::now(),
            pending_since: None,
            failing_since: None,
            workers_running: true,
        }
    }
}

/// The two health endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Livez,
    Healthz,
}

/// What health reports; [`Problem::fails`] says which answers it turns to 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A worker thread has ended.
    WorkerStopped,
    /// A worker has forwarded with an old snapshot for longer than [`STALE_AFTER`].
    DataplaneBehind,
    /// A change was noticed more than [`SOURCE_STALE_AFTER`] ago and is not applied
    /// (the objects did not load; the last good snapshot serves).
    ChangeNotApplied,
    /// The API watches have failed for more than [`SOURCE_STALE_AFTER`] (a warning).
    SourceFailing,
}

impl Problem {
    pub fn name(self) -> &'static str {
        match self {
            Problem::WorkerStopped => "worker_stopped",
            Problem::DataplaneBehind => "dataplane_behind",
            Problem::ChangeNotApplied => "change_not_applied",
            Problem::SourceFailing => "source_failing",
        }
    }

    /// Whether it turns `probe` to 503: `/livez` only for what a restart of kxdp can
    /// cure, `/healthz` also for a change that does not apply; a failing source for
    /// neither (module doc), it is a warning.
    pub fn fails(self, probe: Probe) -> bool {
        match self {
            Problem::WorkerStopped | Problem::DataplaneBehind => true,
            Problem::ChangeNotApplied => probe == Probe::Healthz,
            Problem::SourceFailing => false,
        }
    }
}

/// What the endpoints read.
pub struct State {
    pub registry: Registry,
    pub workers: Vec<Arc<Mutex<WorkerStatus>>>,
    pub generation: Arc<AtomicU64>,
    pub sync: Mutex<SyncState>,
}

impl State {
    pub fn sync_state(&self) -> SyncState {
        *self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates what the run loop reports.
    pub fn update(&self, f: impl FnOnce(&mut SyncState)) {
        f(&mut self.sync.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Everything wrong at `now` (empty when healthy), and when the newest snapshot
    /// was published.
    pub fn problems(&self, now: Instant) -> (Vec<Problem>, SystemTime) {
        let s = self.sync_state();
        let newest = self.generation.load(Ordering::Relaxed);
        let current = self
            .workers
            .iter()
            .all(|w| w.lock().map(|w| w.generation >= newest).unwrap_or(false));
        let longer = |since: Option<Instant>, limit: Duration| {
            since.is_some_and(|t| now.saturating_duration_since(t) > limit)
        };
        let mut problems = Vec::new();
        if !s.workers_running {
            problems.push(Problem::WorkerStopped);
        }
        if !current && longer(Some(s.published), STALE_AFTER) {
            problems.push(Problem::DataplaneBehind);
        }
        if longer(s.pending_since, SOURCE_STALE_AFTER) {
            problems.push(Problem::ChangeNotApplied);
        }
        if longer(s.failing_since, SOURCE_STALE_AFTER) {
            problems.push(Problem::SourceFailing);
        }
        (problems, s.published_at)
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The `/healthz` or `/livez` answer: status code and kube-proxy's JSON body, with the
/// problems that fail it named, and the others as warnings.
fn health_response(state: &State, probe: Probe) -> (u16, String) {
    let (all, updated) = state.problems(Instant::now());
    let (problems, warnings): (Vec<Problem>, Vec<Problem>) =
        all.into_iter().partition(|p| p.fails(probe));
    let names = |list: &[Problem]| -> String {
        let quoted: Vec<String> = list.iter().map(|p| format!("\"{}\"", p.name())).collect();
        quoted.join(",")
    };
    let body = format!(
        "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\",\"problems\": [{}],\"warnings\": [{}]}}",
        secs(updated),
        secs(SystemTime::now()),
        names(&problems),
        names(&warnings)
    );
    (if problems.is_empty() { 200 } else { 503 }, body)
}

/// An endpoint bound and not answering yet: kxdp binds before it attaches anything,
/// so a port in use stops it cleanly, and answers once it is ready ([`Listener::serve`]).
pub struct Listener {
    server: tiny_http::Server,
    addr: SocketAddr,
}

pub fn listen(addr: SocketAddr) -> Result<Listener> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(Listener { server, addr })
}

impl Listener {
    /// Answers until `stop` is set.
    pub fn serve(self, stop: Arc<AtomicBool>, state: Arc<State>) -> Result<JoinHandle<()>> {
        let Listener { server, addr } = self;
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
                        "/healthz" => health_response(&state, Probe::Healthz),
                        "/livez" => health_response(&state, Probe::Livez),
                        _ => (404, "404 page not found\n".to_string()),
                    };
                    let _ =
                        req.respond(tiny_http::Response::from_string(body).with_status_code(code));
                }
            })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGO_LONG: Duration = Duration::from_secs(600);

    fn state(worker_gen: u64, newest: u64, published_ago: Duration) -> State {
        let w = WorkerStatus {
            generation: worker_gen,
            ..Default::default()
        };
        let mut sync = SyncState::published_now();
        sync.published = Instant::now() - published_ago;
        State {
            registry: Registry::default(),
            workers: vec![Arc::new(Mutex::new(w))],
            generation: Arc::new(AtomicU64::new(newest)),
            sync: Mutex::new(sync),
        }
    }

    fn problems(s: &State) -> Vec<Problem> {
        s.problems(Instant::now()).0
    }

    #[test]
    fn healthy_while_workers_are_current_or_only_briefly_behind() {
        assert_eq!(problems(&state(3, 3, AGO_LONG)), vec![]);
        assert_eq!(problems(&state(2, 3, Duration::from_secs(1))), vec![]);
        assert_eq!(
            problems(&state(2, 3, Duration::from_secs(30))),
            vec![Problem::DataplaneBehind]
        );
    }

    #[test]
    fn an_unapplied_change_turns_healthz_not_livez_after_the_timeout() {
        let s = state(3, 3, AGO_LONG);
        s.update(|s| s.pending_since = Some(Instant::now() - Duration::from_secs(10)));
        assert_eq!(problems(&s), vec![], "a change may take a while");
        s.update(|s| s.pending_since = Some(Instant::now() - Duration::from_secs(61)));
        assert_eq!(problems(&s), vec![Problem::ChangeNotApplied]);
        let (code, body) = health_response(&s, Probe::Healthz);
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("\"problems\": [\"change_not_applied\"]"),
            "{body}"
        );
        let (code, body) = health_response(&s, Probe::Livez);
        assert_eq!(code, 200, "livez ignores it: {body}");
        assert!(
            body.contains("\"warnings\": [\"change_not_applied\"]"),
            "{body}"
        );
    }

    #[test]
    fn a_failing_source_is_a_warning_that_fails_neither_probe() {
        let s = state(3, 3, AGO_LONG);
        s.update(|s| s.failing_since = Some(Instant::now() - Duration::from_secs(10)));
        assert_eq!(problems(&s), vec![], "a short outage is not even a warning");
        s.update(|s| s.failing_since = Some(Instant::now() - Duration::from_secs(3600)));
        assert_eq!(problems(&s), vec![Problem::SourceFailing]);
        for probe in [Probe::Healthz, Probe::Livez] {
            let (code, body) = health_response(&s, probe);
            assert_eq!(code, 200, "{probe:?}: {body}");
            assert!(
                body.contains("\"problems\": [],\"warnings\": [\"source_failing\"]"),
                "{probe:?}: {body}"
            );
        }
    }

    #[test]
    fn a_stopped_worker_fails_livez_and_healthz() {
        let s = state(3, 3, AGO_LONG);
        s.update(|s| s.workers_running = false);
        assert_eq!(health_response(&s, Probe::Livez).0, 503);
        assert_eq!(health_response(&s, Probe::Healthz).0, 503);
    }
}
