//! The two object sources, the API server and the `--objects` file, give identical
//! snapshots for the same objects: the same objects served by the API-server double
//! (`apidouble/`) and written to a YAML file, in a different order, translate to the
//! same frontends, Services, backends, Maglev tables, remote nodes and rejections.

mod apidouble;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use apidouble::{node, ApiDouble};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kxdp_control::apiserver::{Access, ApiSource, Backoff};
use kxdp_control::objects::{k8s_openapi, parse_objects};
use kxdp_control::translate::{
    translate, TranslateConfig, Translated, Translator, LABEL_SERVICE_NAME,
};
use kxdp_control::translator::Changes;
use kxdp_dataplane::maglev::MaglevTable;
use kxdp_dataplane::snapshot::Backend;
use serde_json::json;

/// Objects that touch every translation rule the two sources could disagree on:
/// named target ports, several slices per Service, terminating endpoints, UDP,
/// traffic policies, affinity, NodePort, externalIPs, LoadBalancer ingress, a Service
/// without endpoints, an invalid Service, three nodes.
fn objects() -> (Vec<Node>, Vec<Service>, Vec<EndpointSlice>) {
    let svc = |v: serde_json::Value| -> Service { serde_json::from_value(v).expect("Service") };
    let services = vec![
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}})),
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"type": "ClusterIP", "clusterIP": "198.19.0.53", "clusterIPs": ["198.19.0.53"],
                "internalTrafficPolicy": "Local",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                          {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353}]}})),
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "198.19.0.30", "clusterIPs": ["198.19.0.30"],
                "externalTrafficPolicy": "Local", "externalIPs": ["203.0.113.7"],
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}})),
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIP": "198.19.0.40", "clusterIPs": ["198.19.0.40"],
                "ports": [{"port": 443, "protocol": "TCP", "targetPort": 8443, "nodePort": 30443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.40"}]}}})),
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "empty", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": "198.19.0.50", "clusterIPs": ["198.19.0.50"],
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})),
        svc(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": "not-an-ip",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})),
    ];
    let ep = |ip: &str, node: &str, ready: bool, terminating: bool| {
        json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
    };
    let slice = |ns: &str,
                 name: &str,
                 service: &str,
                 eps: Vec<serde_json::Value>,
                 ports: serde_json::Value|
     -> EndpointSlice {
        serde_json::from_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns,
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": eps, "ports": ports}),
        )
        .expect("EndpointSlice")
    };
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let slices = vec![
        slice(
            "default",
            "web-a",
            "web",
            vec![
                ep("198.18.1.10", "node1", true, false),
                ep("198.18.2.10", "node2", true, false),
            ],
            http.clone(),
        ),
        slice(
            "default",
            "web-b",
            "web",
            vec![
                ep("198.18.3.10", "node3", true, false),
                ep("198.18.1.11", "node1", false, true),
            ],
            http,
        ),
        slice(
            "kube-system",
            "dns-a",
            "dns",
            vec![
                ep("198.18.1.20", "node1", true, false),
                ep("198.18.2.20", "node2", true, false),
            ],
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}]),
        ),
        slice(
            "default",
            "np-a",
            "np",
            vec![
                ep("198.18.1.30", "node1", true, false),
                ep("198.18.2.30", "node2", true, false),
                ep("198.18.3.30", "node3", true, false),
            ],
            json!([{"port": 8080, "protocol": "TCP"}]),
        ),
        slice(
            "shop",
            "lb-a",
            "lb",
            vec![
                ep("198.18.2.40", "node2", true, false),
                ep("198.18.3.40", "node3", true, false),
            ],
            json!([{"port": 8443, "protocol": "TCP"}]),
        ),
    ];
    (vec![node(1), node(2), node(3)], services, slices)
}

/// A frontend as workers see it: what it leads to, with every Maglev slot resolved to
/// the backend address it picks (indices depend on backend order, addresses do not).
#[derive(Debug, PartialEq)]
struct Seen {
    header: String,
    cluster: Vec<SocketAddrV4>,
    local: Vec<SocketAddrV4>,
}

fn resolve(table: &MaglevTable, backends: &[Backend]) -> Vec<SocketAddrV4> {
    table
        .entries()
        .iter()
        .map(|&i| backends[usize::from(i)].addr)
        .collect()
}

/// Everything a worker can observe of a snapshot, keyed by frontend.
fn observable(t: &Translated) -> (String, BTreeMap<String, Seen>, Vec<String>) {
    let s = &t.snapshot;
    let mut remotes: Vec<String> = s.remotes().iter().map(|r| format!("{r:?}")).collect();
    remotes.sort();
    let node = format!("{:?} remotes {remotes:?}", s.node);
    let mut frontends = BTreeMap::new();
    for (key, f) in s.frontends() {
        let svc = s.service(f.service);
        let header = format!(
            "{:?} spec {:?} backends {:?} local {:?}",
            f.kind, svc.spec, svc.backends, svc.local_backends
        );
        frontends.insert(
            format!("{} {}:{}", key.proto.name(), key.ip, key.port),
            Seen {
                header,
                cluster: resolve(&svc.cluster, &svc.backends),
                local: resolve(&svc.local, &svc.local_backends),
            },
        );
    }
    let mut errors: Vec<String> = t.errors.iter().map(|e| e.to_string()).collect();
    errors.sort();
    (node, frontends, errors)
}

/// The objects served by an API-server double, and a source that has listed them.
fn served(
    nodes: &[Node],
    services: &[Service],
    slices: &[EndpointSlice],
) -> (ApiDouble, ApiSource) {
    let api = ApiDouble::start();
    for n in nodes {
        api.apply(n);
    }
    for s in services {
        api.apply(s);
    }
    for s in slices {
        api.apply(s);
    }
    let quick = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let source = ApiSource::connect(&Access::Kubeconfig(api.kubeconfig()), quick).unwrap();
    assert!(source.wait_synced(Duration::from_secs(10)));
    (api, source)
}

#[test]
fn the_api_server_and_the_objects_file_give_identical_snapshots() {
    let (nodes, services, slices) = objects();
    let cfg = TranslateConfig {
        node_name: "node1".to_owned(),
        max_table_size: 65537,
    };

    let (_api, source) = served(&nodes, &services, &slices);
    let from_api = translate(&source.objects(), &cfg, 1).expect("node1 is describable");

    // The file lists the objects in another order than the API server did, as
    // `kubectl get -o yaml` documents.
    let mut docs: Vec<String> = Vec::new();
    docs.extend(
        slices
            .iter()
            .rev()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    docs.extend(
        services
            .iter()
            .rev()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    docs.extend(
        nodes
            .iter()
            .rev()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    let parsed = parse_objects(&docs.join("---\n"));
    assert_eq!(parsed.errors, vec![], "the file parses");
    let from_file = translate(&parsed.objects, &cfg, 1).expect("node1 is describable");

    let (api_node, api_frontends, api_errors) = observable(&from_api);
    let (file_node, file_frontends, file_errors) = observable(&from_file);
    assert_eq!(api_node, file_node);
    assert_eq!(api_errors, file_errors);
    assert_eq!(
        api_errors.len(),
        1,
        "the invalid Service is rejected: {api_errors:?}"
    );
    assert_eq!(
        api_frontends.keys().collect::<Vec<_>>(),
        file_frontends.keys().collect::<Vec<_>>()
    );
    for (key, a) in &api_frontends {
        let f = &file_frontends[key];
        assert_eq!(a.header, f.header, "{key}");
        let differ = |x: &[SocketAddrV4], y: &[SocketAddrV4]| {
            x.len() != y.len() || x.iter().zip(y).any(|(p, q)| p != q)
        };
        assert!(
            !differ(&a.cluster, &f.cluster),
            "{key}: cluster Maglev tables differ"
        );
        assert!(
            !differ(&a.local, &f.local),
            "{key}: local Maglev tables differ"
        );
    }
    // What the comparison covered, so that a translation that dropped everything
    // could not pass: 2 web/dns ClusterIPs (3 ports), NodePort on each node IP and
    // its ClusterIP and externalIP, the LoadBalancer's three, the empty Service.
    assert!(api_frontends.len() >= 10, "{:?}", api_frontends.keys());
    assert_eq!(from_api.snapshot.remotes().len(), 2);
    let web = &api_frontends["TCP 198.19.0.10:80"];
    assert!(web.cluster.len() > 1, "web has a Maglev table");
    assert!(api_frontends["TCP 198.19.0.50:80"].cluster.is_empty());
}

/// Waits until the source has seen `n` more events than `since`.
fn wait_events(source: &ApiSource, since: u64, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while source.changed() < since + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch events did not arrive"
        );
        source.wait_changed(source.changed(), Duration::from_millis(50));
    }
}

#[test]
fn a_translator_fed_the_api_sources_changes_builds_what_a_translation_from_nothing_builds() {
    let (nodes, services, slices) = objects();
    let cfg = TranslateConfig {
        node_name: "node1".to_owned(),
        max_table_size: 65537,
    };
    let (api, source) = served(&nodes, &services, &slices);
    let mut translator = Translator::new(cfg.clone());
    let feed = |t: &mut Translator| {
        let (services, slices, nodes) = source.take_changes();
        let told = [
            matches!(services, Changes::All(_)),
            matches!(slices, Changes::All(_)),
            matches!(nodes, Changes::All(_)),
        ];
        t.apply_nodes(nodes);
        t.apply_slices(slices);
        t.apply_services(services);
        told
    };
    assert_eq!(
        feed(&mut translator),
        [true; 3],
        "the first changes are the lists"
    );
    let first = translator.build(1).unwrap();
    assert_eq!(
        observable(&first),
        observable(&translate(&source.objects(), &cfg, 1).unwrap())
    );

    // An endpoint moves, a slice moves to another Service, a Service goes, another
    // comes, a Node goes: five events, told as five changed objects.
    let seen = source.changed();
    let mut web = slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web-a"))
        .expect("web-a")
        .clone();
    web.endpoints[0].addresses = vec!["198.18.1.99".to_owned()];
    api.apply(&web);
    let mut moved = slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web-b"))
        .expect("web-b")
        .clone();
    moved.metadata.labels = Some([(LABEL_SERVICE_NAME.to_owned(), "new".to_owned())].into());
    api.apply(&moved);
    api.delete(apidouble::Res::Services, "shop/lb");
    api.apply(&apidouble::service("new", "198.19.0.60"));
    api.delete(apidouble::Res::Nodes, "/node3");
    wait_events(&source, seen, 5);
    assert_eq!(
        feed(&mut translator),
        [false; 3],
        "watch events are told one by one"
    );
    let second = translator.build(2).unwrap();
    let fresh = translate(&source.objects(), &cfg, 2).unwrap();
    assert_eq!(observable(&second), observable(&fresh));
    let (_, frontends, _) = observable(&second);
    assert!(frontends["TCP 198.19.0.60:80"]
        .header
        .contains("198.18.3.10"));
    assert!(!frontends["TCP 198.19.0.10:80"]
        .header
        .contains("198.18.3.10"));
    assert!(frontends["TCP 198.19.0.10:80"]
        .header
        .contains("198.18.1.99"));
    assert!(!frontends.contains_key("TCP 198.19.0.40:443"));
    assert_eq!(second.snapshot.remotes().len(), 1);
    // Unchanged Service ports are the previous ones, Maglev tables and all.
    let dns = |t: &Translated| {
        t.snapshot
            .services()
            .iter()
            .find(|p| p.spec.name.starts_with("kube-system/dns"))
            .cloned()
            .expect("dns")
    };
    assert!(std::sync::Arc::ptr_eq(&dns(&first), &dns(&second)));
}
