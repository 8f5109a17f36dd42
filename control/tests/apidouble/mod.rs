//! A test double of the Kubernetes API server that speaks the real list/watch
//! protocol over HTTP: typed lists with `metadata.resourceVersion`, watches as chunked
//! JSON lines (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR` with a 410 Status),
//! built from real k8s-openapi Service, EndpointSlice and Node objects. kxdp reaches it
//! through a kubeconfig file, as `kxdp run --kubeconfig` does.
//!
//! Shared by several test binaries, each of which uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;
use kxdp_control::objects::k8s_openapi;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Services,
    Slices,
    Nodes,
}

impl Res {
    pub fn of_path(path: &str) -> Option<Res> {
        match path {
            "/api/v1/services" => Some(Res::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Res::Slices),
            "/api/v1/nodes" => Some(Res::Nodes),
            _ => None,
        }
    }

    pub fn of_kind(kind: &str) -> Res {
        match kind {
            "Service" => Res::Services,
            "EndpointSlice" => Res::Slices,
            "Node" => Res::Nodes,
            _ => panic!("the double serves no {kind}"),
        }
    }

    /// (apiVersion, kind) of one object.
    pub fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "Service"),
            Res::Slices => ("discovery.k8s.io/v1", "EndpointSlice"),
            Res::Nodes => ("v1", "Node"),
        }
    }
}

/// One line of the watch history: what a watch from before `rv` streams.
pub struct Logged {
    pub rv: u64,
    pub res: Res,
    pub line: String,
}

/// The double's cluster state and what it has been asked.
#[derive(Default)]
pub struct Cluster {
    pub rv: u64,
    pub objects: BTreeMap<(Res, String), Value>,
    pub log: Vec<Logged>,
    /// Watches from a resourceVersion below this get `410 Gone` (compacted history).
    pub gone_before: u64,
    /// Bumped to cut every open watch.
    pub epoch: u64,
    /// Every request answers 500 with an HTML body.
    pub outage: bool,
    /// Requests served, answered or not.
    pub requests: usize,
    pub lists: BTreeMap<Res, usize>,
    /// (resource, resourceVersion) of every watch request.
    pub watches: Vec<(Res, u64)>,
}

impl Cluster {
    pub fn key(obj: &Value) -> String {
        let meta = &obj["metadata"];
        format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().expect("objects have names")
        )
    }

    /// Stores an object at a new resourceVersion; returns the watch event type.
    pub fn put(&mut self, mut obj: Value) -> (Res, &'static str, Value) {
        let res = Res::of_kind(obj["kind"].as_str().expect("objects carry their kind"));
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let old = self.objects.insert((res, Cluster::key(&obj)), obj.clone());
        (res, if old.is_some() { "MODIFIED" } else { "ADDED" }, obj)
    }

    pub fn remove(&mut self, res: Res, key: &str) -> Value {
        let mut obj = self
            .objects
            .remove(&(res, key.to_owned()))
            .unwrap_or_else(|| panic!("no {res:?} {key} to delete"));
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        obj
    }

    pub fn log(&mut self, res: Res, line: String) {
        self.log.push(Logged {
            rv: self.rv,
            res,
            line,
        });
    }
}

pub type Shared = Arc<(Mutex<Cluster>, Condvar)>;

/// An API server on 127.0.0.1 with a kubeconfig that points at it (plain HTTP, no
/// authentication).
pub struct ApiDouble {
    pub shared: Shared,
    pub addr: SocketAddr,
    pub stop: Arc<AtomicBool>,
    pub accept: Option<std::thread::JoinHandle<()>>,
    /// The listening socket, shut down on drop to end a blocked accept (a connect
    /// would not reach a double in another namespace).
    wake: TcpListener,
    pub dir: PathBuf,
}

impl ApiDouble {
    pub fn start() -> ApiDouble {
        ApiDouble::serve_on(TcpListener::bind("127.0.0.1:0").expect("bind the double"))
    }

    /// A double listening on 127.0.0.1 inside the network namespace `netns` (a name
    /// `ip netns` knows), for a kxdp running there. Only the listening socket is in
    /// that namespace: the test threads stay where they are.
    pub fn start_in_netns(netns: &str) -> ApiDouble {
        let path = format!("/var/run/netns/{netns}");
        // A thread of its own enters the namespace (setns changes only the calling
        // thread's network namespace) and binds; the socket keeps its namespace.
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid namespace fd; this thread ends right after binding.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            TcpListener::bind("127.0.0.1:0").expect("bind the double in the namespace")
        })
        .join()
        .expect("binding thread");
        ApiDouble::serve_on(listener)
    }

    fn serve_on(listener: TcpListener) -> ApiDouble {
        static N: AtomicUsize = AtomicUsize::new(0);
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let wake = listener.try_clone().expect("clone the listener");
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
            wake,
            dir,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.shared.0.lock().unwrap()
    }

    pub fn notify(&self) {
        self.shared.1.notify_all();
    }

    /// Creates or updates an object and tells the watches.
    pub fn apply<K: Resource + serde::Serialize>(&self, obj: &K) {
        let mut c = self.cluster();
        let (res, kind, obj) = c.put(serde_json::to_value(obj).unwrap());
        c.log(res, json!({"type": kind, "object": obj}).to_string());
        drop(c);
        self.notify();
    }

    /// Deletes an object (`namespace/name`, or `/name` for a Node) and tells the watches.
    pub fn delete(&self, res: Res, key: &str) {
        let mut c = self.cluster();
        let obj = c.remove(res, key);
        c.log(res, json!({"type": "DELETED", "object": obj}).to_string());
        drop(c);
        self.notify();
    }

    /// Sends a raw line on the watches of `res`, as if the API server had.
    pub fn inject(&self, res: Res, line: &str) {
        let mut c = self.cluster();
        c.rv += 1;
        c.log(res, line.to_owned());
        drop(c);
        self.notify();
    }

    /// Changes objects while no watch hears of it and compacts the history up to now,
    /// then cuts every watch: a watch that resumes gets `410 Gone`.
    pub fn change_unwatched_and_compact(&self, change: impl FnOnce(&mut Cluster)) {
        let mut c = self.cluster();
        change(&mut c);
        c.gone_before = c.rv;
        c.epoch += 1;
        drop(c);
        self.notify();
    }

    /// Cuts every open watch connection (no terminating chunk).
    pub fn drop_watches(&self) {
        self.cluster().epoch += 1;
        self.notify();
    }

    /// While on, every request gets a 500 with an HTML body and open watches are cut.
    pub fn set_outage(&self, on: bool) {
        let mut c = self.cluster();
        c.outage = on;
        c.epoch += 1;
        drop(c);
        self.notify();
    }

    pub fn lists(&self, res: Res) -> usize {
        self.cluster().lists.get(&res).copied().unwrap_or(0)
    }

    pub fn watches(&self, res: Res) -> Vec<u64> {
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
        // SAFETY: shutdown of a socket we own; a blocked accept returns an error.
        unsafe { libc::shutdown(self.wake.as_raw_fd(), libc::SHUT_RDWR) };
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

pub fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    }
}

pub fn node(n: u8) -> Node {
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

pub fn service(name: &str, cluster_ip: &str) -> Service {
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
pub fn slice(name: &str, service: &str, pods: &[&str]) -> EndpointSlice {
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
