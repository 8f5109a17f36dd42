//! The API-server source against a test double of the API server that speaks the real
//! list/watch protocol over HTTP: typed lists with `metadata.resourceVersion`, watches
//! as chunked JSON lines (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR` with a
//! 410 Status), built from real k8s-openapi Service, EndpointSlice and Node objects.
//! kxdp reaches it through a kubeconfig file, as `kxdp run --kubeconfig` does.
//!
//! Every wait is bounded ([`eventually`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;
use kxdp_control::apiserver::{Access, ApiSource, Backoff};
use kxdp_control::objects::k8s_openapi;
use kxdp_control::translate::{translate, TranslateConfig};
use kxdp_dataplane::flow::Proto;
use kxdp_dataplane::snapshot::ServiceKey;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// The API-server double.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Res {
    Services,
    Slices,
    Nodes,
}

impl Res {
    fn of_path(path: &str) -> Option<Res> {
        match path {
            "/api/v1/services" => Some(Res::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Res::Slices),
            "/api/v1/nodes" => Some(Res::Nodes),
            _ => None,
        }
    }

    fn of_kind(kind: &str) -> Res {
        match kind {
            "Service" => Res::Services,
            "EndpointSlice" => Res::Slices,
            "Node" => Res::Nodes,
            _ => panic!("the double serves no {kind}"),
        }
    }

    /// (apiVersion, kind) of one object.
    fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "Service"),
            Res::Slices => ("discovery.k8s.io/v1", "EndpointSlice"),
            Res::Nodes => ("v1", "Node"),
        }
    }
}

/// One line of the watch history: what a watch from before `rv` streams.
struct Logged {
    rv: u64,
    res: Res,
    line: String,
}

/// The double's cluster state and what it has been asked.
#[derive(Default)]
struct Cluster {
    rv: u64,
    objects: BTreeMap<(Res, String), Value>,
    log: Vec<Logged>,
    /// Watches from a resourceVersion below this get `410 Gone` (compacted history).
    gone_before: u64,
    /// Bumped to cut every open watch.
    epoch: u64,
    /// Every request answers 500 with an HTML body.
    outage: bool,
    /// Requests served, answered or not.
    requests: usize,
    lists: BTreeMap<Res, usize>,
    /// (resource, resourceVersion) of every watch request.
    watches: Vec<(Res, u64)>,
}

impl Cluster {
    fn key(obj: &Value) -> String {
        let meta = &obj["metadata"];
        format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().expect("objects have names")
        )
    }

    /// Stores an object at a new resourceVersion; returns the watch event type.
    fn put(&mut self, mut obj: Value) -> (Res, &'static str, Value) {
        let res = Res::of_kind(obj["kind"].as_str().expect("objects carry their kind"));
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let old = self.objects.insert((res, Cluster::key(&obj)), obj.clone());
        (res, if old.is_some() { "MODIFIED" } else { "ADDED" }, obj)
    }

    fn remove(&mut self, res: Res, key: &str) -> Value {
        let mut obj = self
            .objects
            .remove(&(res, key.to_owned()))
            .unwrap_or_else(|| panic!("no {res:?} {key} to delete"));
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        obj
    }

    fn log(&mut self, res: Res, line: String) {
        self.log.push(Logged {
            rv: self.rv,
            res,
            line,
        });
    }
}

type Shared = Arc<(Mutex<Cluster>, Condvar)>;

/// An API server on 127.0.0.1 with a kubeconfig that points at it (plain HTTP, no
/// authentication).
struct ApiDouble {
    shared: Shared,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl ApiDouble {
    fn start() -> ApiDouble {
        static N: AtomicUsize = AtomicUsize::new(0);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the double");
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (shared, stop) = (shared.clone(), stop.clone());
                    std::thread::spawn(move || serve(conn, &shared, &stop));
                }
            })
        };
        let dir = std::env::temp_dir().join(format!(
            "kxdp-apiserver-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: double
  cluster: {{server: 'http://{addr}'}}
users:
- name: anonymous
  user: {{}}
contexts:
- name: double
  context: {{cluster: double, user: anonymous}}
current-context: double
"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        ApiDouble {
            shared,
            addr,
            stop,
            accept: Some(accept),
            dir,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.shared.0.lock().unwrap()
    }

    fn notify(&self) {
        self.shared.1.notify_all();
    }

    /// Creates or updates an object and tells the watches.
    fn apply<K: Resource + serde::Serialize>(&self, obj: &K) {
        let mut c = self.cluster();
        let (res, kind, obj) = c.put(serde_json::to_value(obj).unwrap());
        c.log(res, json!({"type": kind, "object": obj}).to_string());
        drop(c);
        self.notify();
    }

    /// Deletes an object (`namespace/name`, or `/name` for a Node) and tells the watches.
    fn delete(&self, res: Res, key: &str) {
        let mut c = self.cluster();
        let obj = c.remove(res, key);
        c.log(res, json!({"type": "DELETED", "object": obj}).to_string());
        drop(c);
        self.notify();
    }

    /// Sends a raw line on the watches of `res`, as if the API server had.
    fn inject(&self, res: Res, line: &str) {
        let mut c = self.cluster();
        c.rv += 1;
        c.log(res, line.to_owned());
        drop(c);
        self.notify();
    }

    /// Changes objects while no watch hears of it and compacts the history up to now,
    /// then cuts every watch: a watch that resumes gets `410 Gone`.
    fn change_unwatched_and_compact(&self, change: impl FnOnce(&mut Cluster)) {
        let mut c = self.cluster();
        change(&mut c);
        c.gone_before = c.rv;
        c.epoch += 1;
        drop(c);
        self.notify();
    }

    /// Cuts every open watch connection (no terminating chunk).
    fn drop_watches(&self) {
        self.cluster().epoch += 1;
        self.notify();
    }

    /// While on, every request gets a 500 with an HTML body and open watches are cut.
    fn set_outage(&self, on: bool) {
        let mut c = self.cluster();
        c.outage = on;
        c.epoch += 1;
        drop(c);
        self.notify();
    }

    fn lists(&self, res: Res) -> usize {
        self.cluster().lists.get(&res).copied().unwrap_or(0)
    }

    fn watches(&self, res: Res) -> Vec<u64> {
        let c = self.cluster();
        c.watches
            .iter()
            .filter(|(r, _)| *r == res)
            .map(|(_, rv)| *rv)
            .collect()
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_watches();
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request per connection (`Connection: close`), GET only, as the watcher sends.
fn serve(conn: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let mut conn = conn;
    let outage = {
        let mut c = shared.0.lock().unwrap();
        c.requests += 1;
        c.outage
    };
    if outage {
        let body = "<html><body>502 Bad Gateway</body></html>";
        respond(&mut conn, "500 Internal Server Error", "text/html", body);
        return;
    }
    let Some(res) = Res::of_path(path) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("the server could not find {path}")});
        respond(
            &mut conn,
            "404 Not Found",
            "application/json",
            &status.to_string(),
        );
        return;
    };
    if params.get("watch").copied() == Some("true") {
        let rv: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = params.get("allowWatchBookmarks").copied() == Some("true");
        watch(conn, shared, stop, res, rv, bookmarks);
    } else {
        let body = {
            let mut c = shared.0.lock().unwrap();
            *c.lists.entry(res).or_default() += 1;
            let (api_version, kind) = res.type_meta();
            // As the API server sends typed lists: items without apiVersion and kind.
            let items: Vec<Value> = c
                .objects
                .iter()
                .filter(|((r, _), _)| *r == res)
                .map(|(_, o)| {
                    let mut o = o.clone();
                    let m = o.as_object_mut().unwrap();
                    m.remove("apiVersion");
                    m.remove("kind");
                    o
                })
                .collect();
            json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": c.rv.to_string()}, "items": items})
        };
        respond(&mut conn, "200 OK", "application/json", &body.to_string());
    }
}

fn respond(conn: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Both);
}

fn chunk(conn: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(conn, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    conn.flush()
}

/// Streams the history after `rv`, then new events as they come, with a bookmark
/// whenever the watch has been idle for 100 ms.
fn watch(
    mut conn: TcpStream,
    shared: &Shared,
    stop: &AtomicBool,
    res: Res,
    rv: u64,
    bookmarks: bool,
) {
    let (lock, wake) = &**shared;
    let mut c = lock.lock().unwrap();
    c.watches.push((res, rv));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    if rv < c.gone_before {
        // What the API server sends when the watch cache no longer has `rv`.
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {rv} ({})", c.gone_before)}});
        drop(c);
        let _ = chunk(&mut conn, &gone.to_string());
        let _ = conn.write_all(b"0\r\n\r\n");
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let epoch = c.epoch;
    let mut next = c.log.partition_point(|l| l.rv <= rv);
    let mut idle_since = Instant::now();
    loop {
        if c.epoch != epoch || stop.load(Ordering::Relaxed) {
            // Cut mid-stream: no terminating chunk.
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let mut lines: Vec<String> = c.log[next..]
            .iter()
            .filter(|l| l.res == res)
            .map(|l| l.line.clone())
            .collect();
        next = c.log.len();
        if lines.is_empty() && bookmarks && idle_since.elapsed() >= Duration::from_millis(100) {
            let (api_version, kind) = res.type_meta();
            lines.push(
                json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": c.rv.to_string()}}})
                .to_string(),
            );
        }
        if lines.is_empty() {
            c = wake.wait_timeout(c, Duration::from_millis(20)).unwrap().0;
            continue;
        }
        drop(c);
        for line in &lines {
            if chunk(&mut conn, line).is_err() {
                return;
            }
        }
        idle_since = Instant::now();
        c = lock.lock().unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Objects, as the test topology has them (ARCHITECTURE.md).

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    }
}

fn node(n: u8) -> Node {
    let vtep = format!("198.19.128.{n}");
    let mut m = meta(None, &format!("node{n}"));
    m.annotations = Some(
        [
            (
                "flannel.alpha.coreos.com/public-ip".to_owned(),
                vtep.clone(),
            ),
            (
                "flannel.alpha.coreos.com/backend-data".to_owned(),
                format!(r#"{{"VNI":1,"VtepMAC":"02:00:c6:13:80:0{n}"}}"#),
            ),
        ]
        .into(),
    );
    let cidr = format!("198.18.{n}.0/24");
    Node {
        metadata: m,
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".to_owned(),
                address: vtep,
            }]),
            ..Default::default()
        }),
    }
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(Some("default"), name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An EndpointSlice of `service` with ready endpoints on port 8080; a pod's node is
/// the one whose pod CIDR holds it.
fn slice(name: &str, service: &str, pods: &[&str]) -> EndpointSlice {
    let mut m = meta(Some("default"), name);
    m.labels = Some([("kubernetes.io/service-name".to_owned(), service.to_owned())].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".to_owned(),
        endpoints: pods
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![(*ip).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                node_name: Some(format!("node{}", ip.split('.').nth(2).unwrap())),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
    }
}

/// node1, node2, and Service web (198.19.0.10:80) with a pod on each node.
fn cluster_with_web() -> ApiDouble {
    let api = ApiDouble::start();
    api.apply(&node(1));
    api.apply(&node(2));
    api.apply(&service("web", "198.19.0.10"));
    api.apply(&slice("web-1", "web", &["198.18.1.10", "198.18.2.10"]));
    api
}

// ---------------------------------------------------------------------------------
// Helpers.

/// Quick retries so that recovery shows within the tests' bounds.
const QUICK: Backoff = Backoff {
    initial: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

const LIMIT: Duration = Duration::from_secs(10);

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(api: &ApiDouble) -> ApiSource {
    let source =
        ApiSource::connect(&Access::Kubeconfig(api.kubeconfig()), QUICK).expect("source starts");
    assert!(
        source.wait_synced(LIMIT),
        "the initial lists never completed"
    );
    source
}

/// The backends of ClusterIP `ip`:80/TCP in node1's snapshot of the source's
/// objects, sorted; None when there is no such frontend.
fn backends(source: &ApiSource, ip: &str) -> Option<Vec<String>> {
    let cfg = TranslateConfig {
        node_name: "node1".to_owned(),
        max_table_size: 251,
    };
    let t = translate(&source.objects(), &cfg, 1).expect("node1 is describable");
    assert_eq!(t.errors, vec![], "the double's objects are all valid");
    let key = ServiceKey {
        ip: ip.parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
    };
    let f = t.snapshot.frontend(&key)?;
    let mut b: Vec<String> = t
        .snapshot
        .service(f.service)
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    b.sort();
    Some(b)
}

/// What kxdp logs, from every test of this binary: lines name their API server.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_log() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("kxdp_control=info")
            .with_writer(|| Capture)
            .init();
    });
}

/// The captured lines about `api` that contain `text`.
fn logged(api: &ApiDouble, text: &str) -> usize {
    let server = format!("server=http://{}/", api.addr);
    String::from_utf8_lossy(&LOG.lock().unwrap())
        .lines()
        .filter(|l| l.contains(&server) && l.contains(text))
        .count()
}

fn both_web_pods() -> Option<Vec<String>> {
    Some(vec!["198.18.1.10:8080".into(), "198.18.2.10:8080".into()])
}

// ---------------------------------------------------------------------------------
// The tests.

#[test]
fn listed_objects_become_a_frontend_with_its_backends() {
    let api = cluster_with_web();
    let source = connect(&api);
    let objects = source.objects();
    assert_eq!(
        (
            objects.services.len(),
            objects.slices.len(),
            objects.nodes.len()
        ),
        (1, 1, 2)
    );
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
    // One list each, then a watch from the list's resourceVersion.
    let listed_at = api.cluster().rv;
    for res in [Res::Services, Res::Slices, Res::Nodes] {
        assert_eq!(api.lists(res), 1, "{res:?}");
        eventually("every kind is watched", || !api.watches(res).is_empty());
        assert_eq!(api.watches(res)[0], listed_at, "{res:?}");
    }
    assert!(!source.failing());
}

#[test]
fn added_modified_and_deleted_objects_are_reflected() {
    let api = cluster_with_web();
    let source = connect(&api);
    eventually("watching", || api.watches(Res::Slices).len() == 1);

    let before = source.changed();
    api.apply(&service("api", "198.19.0.11"));
    api.apply(&slice("api-1", "api", &["198.18.1.20"]));
    eventually("Service api is added", || {
        backends(&source, "198.19.0.11") == Some(vec!["198.18.1.20:8080".into()])
    });
    assert!(
        source.changed() > before,
        "an applied event moves changed()"
    );

    api.apply(&slice("web-1", "web", &["198.18.2.10"]));
    eventually("web's slice is modified", || {
        backends(&source, "198.19.0.10") == Some(vec!["198.18.2.10:8080".into()])
    });

    api.delete(Res::Services, "default/api");
    eventually("Service api is deleted", || {
        backends(&source, "198.19.0.11").is_none()
    });
    // Only watches did this: nothing was listed again.
    assert_eq!(api.lists(Res::Services), 1);
    assert_eq!(api.lists(Res::Slices), 1);
}

#[test]
fn an_expired_watch_410_gone_lists_again_and_converges() {
    let api = cluster_with_web();
    let source = connect(&api);
    eventually("watching", || api.watches(Res::Services).len() == 1);

    // Changes the source never hears of as events, then history before them is gone.
    api.change_unwatched_and_compact(|c| {
        c.remove(Res::Services, "default/web");
        c.put(serde_json::to_value(service("fresh", "198.19.0.12")).unwrap());
        c.put(serde_json::to_value(slice("fresh-1", "fresh", &["198.18.1.30"])).unwrap());
    });
    eventually("the relist shows the unwatched changes", || {
        backends(&source, "198.19.0.10").is_none()
            && backends(&source, "198.19.0.12") == Some(vec!["198.18.1.30:8080".into()])
    });
    assert_eq!(
        api.lists(Res::Services),
        2,
        "410 Gone made the watcher list again"
    );
    let gone_before = api.cluster().gone_before;
    assert!(
        api.watches(Res::Services)
            .iter()
            .any(|rv| *rv < gone_before),
        "the resumed watch asked for an expired version (and got 410)"
    );
    assert!(source.synced());
}

#[test]
fn a_dropped_watch_resumes_from_its_resource_version_without_listing() {
    let api = cluster_with_web();
    let source = connect(&api);
    eventually("watching", || api.watches(Res::Services).len() == 1);
    let listed_at = api.cluster().rv;

    api.drop_watches();
    api.apply(&service("late", "198.19.0.13"));
    api.apply(&slice("late-1", "late", &["198.18.2.40"]));
    eventually("what happened around the drop arrives", || {
        backends(&source, "198.19.0.13") == Some(vec!["198.18.2.40:8080".into()])
    });
    let watches = api.watches(Res::Services);
    assert!(watches.len() >= 2, "the watch reconnected: {watches:?}");
    assert!(
        watches[1..].iter().all(|rv| *rv >= listed_at),
        "resumed from what it had seen: {watches:?}"
    );
    assert_eq!(
        api.lists(Res::Services),
        1,
        "a resumable watch needs no list"
    );
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
}

#[test]
fn malformed_events_do_not_lose_the_last_good_objects() {
    let api = cluster_with_web();
    let source = connect(&api);
    eventually("watching", || api.watches(Res::Services).len() == 1);

    api.inject(Res::Services, "this is not JSON {");
    api.inject(
        Res::Services,
        r#"{"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Service",
            "metadata":{"name":"web","namespace":"default","resourceVersion":"999"},
            "spec":{"clusterIP":"198.19.0.10","ports":[{"port":"eighty"}]}}}"#
            .replace('\n', "")
            .as_str(),
    );
    api.inject(Res::Services, r#"{"type":"ADDED","object":[1,2,3]}"#);
    eventually("the watch has reported the garbage", || source.failing());
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());

    // The same watch goes on: a good event after the garbage applies.
    api.apply(&service("after", "198.19.0.14"));
    eventually("a later good event applies", || {
        backends(&source, "198.19.0.14") == Some(vec![])
    });
    eventually("the episode ends", || !source.failing());
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
}

#[test]
fn an_api_server_outage_keeps_the_last_objects_and_recovery_lists_again() {
    let api = cluster_with_web();
    let source = connect(&api);
    eventually("watching", || api.watches(Res::Services).len() == 1);

    api.set_outage(true);
    eventually("the source notices the outage", || source.failing());
    // Fail static: the stores keep serving what was last known.
    for _ in 0..5 {
        assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(source.synced());

    // While it was down, web lost a pod and the history moved past the source.
    api.change_unwatched_and_compact(|c| {
        c.put(serde_json::to_value(slice("web-1", "web", &["198.18.1.10"])).unwrap());
    });
    api.set_outage(false);
    eventually("the source relists after the outage", || {
        backends(&source, "198.19.0.10") == Some(vec!["198.18.1.10:8080".into()])
    });
    eventually("the episode ends", || !source.failing());
    assert!(api.lists(Res::Slices) >= 2);
}

#[test]
fn a_source_started_before_the_api_server_answers_syncs_when_it_does() {
    let api = cluster_with_web();
    api.set_outage(true);
    let source =
        ApiSource::connect(&Access::Kubeconfig(api.kubeconfig()), QUICK).expect("source starts");
    eventually("the failed list is noticed", || source.failing());
    assert!(!source.synced());
    assert!(source.objects().services.is_empty());
    api.set_outage(false);
    assert!(
        source.wait_synced(LIMIT),
        "synced once the API server answers"
    );
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
}

#[test]
fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    capture_log();
    let api = cluster_with_web();
    let source = connect(&api);
    for res in [Res::Services, Res::Slices, Res::Nodes] {
        eventually("every kind is watched", || api.watches(res).len() == 1);
    }

    api.set_outage(true);
    eventually("the outage is noticed", || source.failing());
    // With the quick backoff every watch retries many times in this while.
    let retried = api.cluster().requests;
    std::thread::sleep(Duration::from_millis(500));
    assert!(api.cluster().requests >= retried + 6, "the watches retried");
    assert_eq!(
        logged(&api, "API watch failed"),
        1,
        "{}",
        String::from_utf8_lossy(&LOG.lock().unwrap())
    );

    // No object changes: the episode ends when the watches are back, not at an event.
    api.set_outage(false);
    eventually("the watches are back", || !source.failing());
    assert_eq!(logged(&api, "API watches recovered"), 1);

    // A second outage is a second episode.
    api.set_outage(true);
    eventually("the second outage is noticed", || source.failing());
    assert_eq!(logged(&api, "API watch failed"), 2);
    api.set_outage(false);
    eventually("the watches are back again", || !source.failing());
    assert_eq!(backends(&source, "198.19.0.10"), both_web_pods());
}
