//! The API-server source: list+watch of v1 Services, discovery.k8s.io/v1
//! EndpointSlices and v1 Nodes, as kube-proxy's informers do, kept in memory and
//! handed out as [`Objects`] for the same translation the `--objects` file goes through.
//!
//! kube-rs' [`watcher`] does the protocol: it lists, watches from the list's
//! `resourceVersion` with bookmarks, resumes from the last seen version when a
//! connection drops, and lists again after `410 Gone`. A [reflector] store per kind
//! applies the events; a relist is buffered and swapped in whole when it is complete
//! (`InitDone`), so a reader never sees a half-listed cluster.
//!
//! Fail static: an error from the watch (API server unreachable, a Status instead of
//! a list, an event that does not parse) changes nothing in the stores. The watch
//! retries with exponential backoff ([`Backoff`]), the error is logged once when an
//! episode starts and once when it ends, and [`ApiSource::objects`] keeps returning the
//! last good state.
//!
//! Besides the whole state ([`ApiSource::objects`]), the source remembers which objects
//! each event touched, so that [`ApiSource::take_changes`] hands the translation only
//! those (or everything, after a list).
//!
//! tokio stays inside this module: the watches run on a current-thread runtime on their
//! own thread, and the rest of kxdp reads the stores synchronously.
//!
//! [reflector]: kube::runtime::reflector

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::Backoff as KubeBackoff;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;

use crate::objects::Objects;
use crate::translator::{Changes, Key};

/// How to reach the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A kubeconfig file (`--kubeconfig`), its current context.
    Kubeconfig(PathBuf),
    /// The Pod's service account, as a DaemonSet runs kxdp (the default).
    InCluster,
}

/// Why the source could not start (the cause is the error's source). Once started it
/// does not fail: watch errors are retried (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum ApiSourceError {
    #[error("kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster config (outside a Pod give --kubeconfig FILE or --objects FILE)")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot make an API client")]
    Client(#[source] kube::Error),
    #[error("cannot start the API watch thread")]
    Thread(#[source] std::io::Error),
}

/// Retry delays of a failing watch: `initial`, doubling up to `max`, back to `initial`
/// after the first success. client-go's reflector uses 800 ms and 30 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(800),
            max: Duration::from_secs(30),
        }
    }
}

/// [`Backoff`] as kube-runtime's `StreamBackoff` wants it.
struct Doubling {
    limits: Backoff,
    next: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(self.limits.max);
        Some(now)
    }
}

impl KubeBackoff for Doubling {
    fn reset(&mut self) {
        self.next = self.limits.initial;
    }
}

/// The three kinds watched, an index into [`Watches::synced`] and [`Watches::failing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service = 0,
    EndpointSlice = 1,
    Node = 2,
}

impl Kind {
    /// The kind a request watches, from its URL (the server URL may have a path).
    fn watched_by(uri: &http::Uri) -> Option<Kind> {
        if !uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"))
        {
            return None;
        }
        let path = uri.path();
        [
            ("/api/v1/services", Kind::Service),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                Kind::EndpointSlice,
            ),
            ("/api/v1/nodes", Kind::Node),
        ]
        .into_iter()
        .find_map(|(p, k)| path.ends_with(p).then_some(k))
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// The objects of one kind that changed since the changes were last taken.
struct Dirty {
    /// A list replaced the whole store (and at the start: nothing was taken yet).
    all: bool,
    keys: HashSet<Key>,
}

impl Default for Dirty {
    fn default() -> Dirty {
        Dirty {
            all: true,
            keys: HashSet::new(),
        }
    }
}

/// What the watch tasks tell the readers.
#[derive(Default)]
struct Watches {
    /// The API server's URL, for the log.
    server: String,
    changed: AtomicU64,
    /// Notified after `changed` moves (see [`ApiSource::wait_changed`]).
    wake: (Mutex<()>, Condvar),
    dirty: [Mutex<Dirty>; 3],
    synced: [AtomicBool; 3],
    failing: [AtomicBool; 3],
}

impl Watches {
    fn mark(&self, kind: Kind, key: Option<Key>) {
        let mut d = self.dirty[kind as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match key {
            Some(key) => {
                d.keys.insert(key);
            }
            None => d.all = true,
        }
    }

    fn notify(&self) {
        self.changed.fetch_add(1, Ordering::AcqRel);
        let _guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.1.notify_all();
    }

    fn any_failing(&self) -> bool {
        self.failing.iter().any(|f| f.load(Ordering::Acquire))
    }

    /// Logs a watch error once per episode (from the first failing watch to the last
    /// one recovering); the watcher retries by itself.
    fn failed(&self, kind: Kind, e: &watcher::Error) {
        let gone = matches!(e, watcher::Error::WatchError(s) if s.code == 410);
        if gone {
            // Routine: the version the watch resumed from has been compacted away.
            tracing::info!(
                server = %self.server,
                kind = kind.name(),
                "API watch expired (410 Gone), listing again"
            );
            return;
        }
        let quiet = self.any_failing();
        self.failing[kind as usize].store(true, Ordering::Release);
        if quiet {
            tracing::debug!(
                server = %self.server,
                kind = kind.name(),
                "API watch still failing: {e}"
            );
        } else {
            tracing::warn!(
                server = %self.server,
                kind = kind.name(),
                "API watch failed, keeping the last known objects and retrying: {e}"
            );
        }
    }

    /// An event arrived or a watch (re)started: this kind's failure episode is over.
    fn succeeded(&self, kind: Kind) {
        if self.failing[kind as usize].swap(false, Ordering::AcqRel) && !self.any_failing() {
            tracing::info!(server = %self.server, "API watches recovered");
        }
    }
}

/// The running watches and their stores. Dropping it stops the watches.
pub struct ApiSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    watches: Arc<Watches>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiSource {
    /// Reads the client configuration, then starts watching on a thread of its own.
    /// Returns at once: the initial lists arrive later (see [`ApiSource::synced`]).
    pub fn connect(access: &Access, backoff: Backoff) -> Result<ApiSource, ApiSourceError> {
        let access = access.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kxdp-apiserver".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(ApiSourceError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    // The client spawns its connection tasks, so it is made in here.
                    let (config, server) = match config(&access).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let watches = Arc::new(Watches {
                        server,
                        ..Watches::default()
                    });
                    let client = match kube::client::ClientBuilder::try_from(config) {
                        Ok(b) => b
                            .with_layer(&tower::layer::layer_fn(|inner| SeeWatchesStart {
                                inner,
                                watches: watches.clone(),
                            }))
                            .build(),
                        Err(e) => {
                            let _ = started_tx.send(Err(ApiSourceError::Client(e)));
                            return;
                        }
                    };
                    let (services, w1) =
                        watch::<Service>(&client, Kind::Service, &watches, backoff);
                    let (slices, w2) =
                        watch::<EndpointSlice>(&client, Kind::EndpointSlice, &watches, backoff);
                    let (nodes, w3) = watch::<Node>(&client, Kind::Node, &watches, backoff);
                    let _ = started_tx.send(Ok((services, slices, nodes, watches)));
                    // The watches never end on their own; stop when the source is dropped.
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = futures::future::join3(w1, w2, w3) => {}
                    }
                });
            })
            .map_err(ApiSourceError::Thread)?;
        match started_rx.recv() {
            Ok(Ok((services, slices, nodes, watches))) => Ok(ApiSource {
                services,
                slices,
                nodes,
                watches,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ApiSourceError::Thread(std::io::Error::other(
                    "the API watch thread ended before it started",
                )))
            }
        }
    }

    /// A copy of everything the stores hold now. Before [`ApiSource::synced`] some
    /// kinds may still be empty.
    pub fn objects(&self) -> Objects {
        fn owned<K: Clone + Resource + 'static>(s: &Store<K>) -> Vec<K>
        where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.state().iter().map(|o| K::clone(o)).collect()
        }
        Objects {
            services: owned(&self.services),
            slices: owned(&self.slices),
            nodes: owned(&self.nodes),
        }
    }

    /// Moves on every event applied to a store (and on every completed list): read it
    /// before [`ApiSource::objects`], and a later change shows as a different value.
    pub fn changed(&self) -> u64 {
        self.watches.changed.load(Ordering::Acquire)
    }

    /// Waits until [`ApiSource::changed`] is no longer `seen`, at most `limit`.
    pub fn wait_changed(&self, seen: u64, limit: Duration) {
        let guard = self
            .watches
            .wake
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = self
            .watches
            .wake
            .1
            .wait_timeout_while(guard, limit, |_| self.changed() == seen);
    }

    /// What changed since the last call, per kind: the objects events touched, with
    /// what the stores hold for them now (None: deleted), or every object after a
    /// list. The first call returns everything.
    pub fn take_changes(&self) -> (Changes<Service>, Changes<EndpointSlice>, Changes<Node>) {
        (
            take(&self.services, &self.watches.dirty[Kind::Service as usize]),
            take(
                &self.slices,
                &self.watches.dirty[Kind::EndpointSlice as usize],
            ),
            take(&self.nodes, &self.watches.dirty[Kind::Node as usize]),
        )
    }

    /// True once the first list of each of the three kinds is in the stores.
    pub fn synced(&self) -> bool {
        self.watches
            .synced
            .iter()
            .all(|s| s.load(Ordering::Acquire))
    }

    /// True while some watch is failing (and retrying); the stores hold what was last
    /// known good.
    pub fn failing(&self) -> bool {
        self.watches.any_failing()
    }

    /// Waits for [`ApiSource::synced`], at most `limit`; says whether it came.
    pub fn wait_synced(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.synced() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn take<K>(store: &Store<K>, dirty: &Mutex<Dirty>) -> Changes<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let d = std::mem::replace(
        &mut *dirty.lock().unwrap_or_else(|e| e.into_inner()),
        Dirty {
            all: false,
            keys: HashSet::new(),
        },
    );
    if d.all {
        return Changes::All(store.state());
    }
    Changes::Some(
        d.keys
            .into_iter()
            .map(|(ns, name)| {
                let at = ObjectRef::new(&name);
                let at = if ns.is_empty() { at } else { at.within(&ns) };
                let now = store.get(&at);
                ((ns, name), now)
            })
            .collect(),
    )
}

/// The client configuration and the server URL it names.
async fn config(access: &Access) -> Result<(Config, String), ApiSourceError> {
    let config = match access {
        Access::Kubeconfig(path) => {
            let kubeconfig_error = |source| ApiSourceError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        Access::InCluster => Config::incluster().map_err(ApiSourceError::InCluster)?,
    };
    let server = config.cluster_url.to_string();
    Ok((config, server))
}

/// A client layer that sees watch requests succeed. The watcher reports errors but
/// not a watch that comes back without news; without this, an outage on a quiet kind
/// would last (and the next one go unlogged) until its next event.
#[derive(Clone)]
struct SeeWatchesStart<S> {
    inner: S,
    watches: Arc<Watches>,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for SeeWatchesStart<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let watched = Kind::watched_by(request.uri());
        let response = self.inner.call(request);
        let watches = self.watches.clone();
        Box::pin(async move {
            let response = response.await;
            if let (Some(kind), Ok(r)) = (watched, &response) {
                if r.status().is_success() {
                    watches.succeeded(kind);
                }
            }
            response
        })
    }
}

/// Starts the list+watch of one kind into a store; the future runs it forever.
fn watch<K>(
    client: &Client,
    kind: Kind,
    watches: &Arc<Watches>,
    backoff: Backoff,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let watches = watches.clone();
    let events = watcher(api, watcher::Config::default())
        .backoff(Doubling {
            limits: backoff,
            next: backoff.initial,
        })
        .reflect(writer);
    let run = async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    watches.succeeded(kind);
                    // The store has applied the event when it comes out here.
                    match event {
                        Event::Apply(o) | Event::Delete(o) => {
                            let meta = o.meta();
                            let key = (
                                meta.namespace.clone().unwrap_or_default(),
                                meta.name.clone().unwrap_or_default(),
                            );
                            watches.mark(kind, Some(key));
                        }
                        Event::InitDone => {
                            watches.mark(kind, None);
                            watches.synced[kind as usize].store(true, Ordering::Release)
                        }
                        // A (re)list is buffered by the store until InitDone.
                        Event::Init | Event::InitApply(_) => continue,
                    }
                    watches.notify();
                }
                Err(e) => watches.failed(kind, &e),
            }
        }
    };
    (store, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_limit_and_resets() {
        let limits = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let mut b = Doubling {
            limits,
            next: limits.initial,
        };
        let ms: Vec<u128> = (&mut b).take(4).map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn watch_requests_name_their_kind() {
        let kind = |u: &str| Kind::watched_by(&u.parse().unwrap());
        assert_eq!(
            kind("https://k:6443/api/v1/services?&watch=true&resourceVersion=4"),
            Some(Kind::Service)
        );
        assert_eq!(
            kind("https://k/k8s/clusters/c-1/apis/discovery.k8s.io/v1/endpointslices?watch=true"),
            Some(Kind::EndpointSlice)
        );
        assert_eq!(kind("https://k/api/v1/nodes?&limit=500"), None, "a list");
        assert_eq!(kind("https://k/api/v1/pods?watch=true"), None);
    }

    #[test]
    fn a_missing_kubeconfig_is_named() {
        let path = PathBuf::from("/nonexistent/kxdp-kubeconfig");
        let Err(e) = ApiSource::connect(&Access::Kubeconfig(path), Backoff::default()) else {
            panic!("connected without a kubeconfig");
        };
        assert!(
            e.to_string().contains("/nonexistent/kxdp-kubeconfig"),
            "{e}"
        );
    }
}
