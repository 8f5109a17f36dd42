//! The API-server source against a test double of the API server (`apidouble/`) that
//! speaks the real list/watch protocol over HTTP. kxdp reaches it through a kubeconfig
//! file, as `kxdp run --kubeconfig` does.
//!
//! Every wait is bounded ([`eventually`]).

mod apidouble;

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use apidouble::{node, service, slice, ApiDouble, Res};
use kxdp_control::apiserver::{Access, ApiSource, Backoff};
use kxdp_control::translate::{translate, TranslateConfig};
use kxdp_dataplane::flow::Proto;
use kxdp_dataplane::snapshot::ServiceKey;

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
