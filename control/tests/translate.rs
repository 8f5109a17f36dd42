//! Kubernetes objects (as YAML, the way `--objects` reads them) to snapshots: the
//! kube-proxy and flannel semantics the translation promises.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use kxdp_control::objects::{parse_objects, ObjectError, Objects};
use kxdp_control::translate::{
    translate, NodeProblem, TranslateConfig, TranslateError, Translated, Translator,
};
use kxdp_control::translator::Changes;
use kxdp_dataplane::flow::{Nanos, Proto};
use kxdp_dataplane::snapshot::{
    Backend, FrontendKind, Mac, Route, ServiceKey, ServicePort, Snapshot, Vni,
};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../scripts/example/objects.yaml");

/// node1 (this node) and node2, as in the example and the test topology.
const NODES: &str = r#"
---
apiVersion: v1
kind: Node
metadata:
  name: node1
  annotations:
    flannel.alpha.coreos.com/public-ip: 198.19.128.1
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:c6:13:80:01"}'
spec: {podCIDR: 198.18.1.0/24, podCIDRs: [198.18.1.0/24]}
status: {addresses: [{type: InternalIP, address: 198.19.128.1}, {type: Hostname, address: node1}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node2
  annotations:
    flannel.alpha.coreos.com/public-ip: 198.19.128.2
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:c6:13:80:02"}'
spec: {podCIDR: 198.18.2.0/24, podCIDRs: [198.18.2.0/24]}
status: {addresses: [{type: InternalIP, address: 198.19.128.2}]}
"#;

fn svc(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {spec}\n"
    )
}

fn svc_with_status(name: &str, spec: &str, status: &str) -> String {
    format!("{}status: {status}\n", svc(name, spec))
}

fn slice(name: &str, service: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: default, \
         labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: {ports}\nendpoints: {endpoints}\n"
    )
}

fn cfg(node: &str) -> TranslateConfig {
    TranslateConfig {
        node_name: node.to_owned(),
        max_table_size: 65537,
    }
}

fn objects(text: &str) -> Objects {
    let p = parse_objects(text);
    assert_eq!(p.errors, vec![], "the fixture itself should parse");
    p.objects
}

/// Translates as node1 and expects no object errors.
fn clean(text: &str) -> Arc<Snapshot> {
    let t = translate(&objects(text), &cfg("node1"), 1).expect("node1 is describable");
    assert_eq!(t.errors, vec![], "unexpected object errors");
    t.snapshot
}

/// Translates as node1, keeping the object errors.
fn with_errors(text: &str) -> Translated {
    translate(&objects(text), &cfg("node1"), 1).expect("node1 is describable")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn tcp(addr: &str) -> ServiceKey {
    let a = sa(addr);
    ServiceKey {
        ip: *a.ip(),
        port: a.port(),
        proto: Proto::Tcp,
    }
}

fn udp(addr: &str) -> ServiceKey {
    ServiceKey {
        proto: Proto::Udp,
        ..tcp(addr)
    }
}

fn service(snap: &Snapshot, key: ServiceKey) -> &ServicePort {
    let f = snap
        .frontend(&key)
        .unwrap_or_else(|| panic!("no frontend {key:?}"));
    snap.service(f.service)
}

fn backend_addrs(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

/// Everything observable about a snapshot, in a comparable, order-free form.
fn fingerprint(snap: &Snapshot) -> String {
    let mut frontends: Vec<String> = snap
        .frontends()
        .map(|(k, f)| {
            let s = snap.service(f.service);
            format!(
                "{k:?} {:?} -> {} {:?}",
                f.kind,
                s.spec.name,
                s.cluster.entries()
            )
        })
        .collect();
    frontends.sort();
    let services: Vec<String> = snap
        .services()
        .iter()
        .map(|s| format!("{:?} {:?} {:?}", s.spec, s.backends, s.local_backends))
        .collect();
    format!(
        "{:?}\n{:?}\n{frontends:#?}\n{services:#?}",
        snap.node,
        snap.remotes()
    )
}

#[test]
fn the_example_file_translates_with_zero_errors() {
    let p = parse_objects(EXAMPLE);
    assert_eq!(p.errors, vec![]);
    let t = translate(&p.objects, &cfg("node1"), 7).unwrap();
    assert_eq!(t.errors, vec![]);
    let snap = t.snapshot;
    assert_eq!(snap.generation, 7);
    let names: Vec<&str> = snap
        .services()
        .iter()
        .map(|s| s.spec.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "default/dns:dns",
            "default/empty:http",
            "default/sticky:http",
            "default/web:http",
            "default/web-np:http"
        ]
    );
    let web = service(&snap, tcp("198.19.0.10:80"));
    assert_eq!(
        backend_addrs(&web.backends),
        ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.2.10:8080"]
    );
    assert_eq!(web.spec.endpoints.len(), 4);
    let dns = service(&snap, udp("198.19.0.53:53"));
    assert_eq!(backend_addrs(&dns.backends), ["198.18.2.10:5353"]);
    assert!(service(&snap, tcp("198.19.0.20:80")).backends.is_empty());
    assert_eq!(
        service(&snap, tcp("198.19.0.40:80")).spec.affinity_timeout,
        Some(Nanos::from_secs(60))
    );
    let np = snap.frontend(&tcp("198.19.128.1:30080")).unwrap();
    assert_eq!(np.kind, FrontendKind::NodePort);
    assert!(snap.service(np.service).spec.external_policy_local);
    // As node2 the same file works too.
    let t2 = translate(&p.objects, &cfg("node2"), 7).unwrap();
    assert_eq!(t2.errors, vec![]);
    assert_eq!(
        t2.snapshot.route(ip("198.18.1.10")),
        Route::Remote(&t2.snapshot.remotes()[0])
    );
}

#[test]
fn a_list_and_separate_documents_give_the_same_snapshot() {
    let web = svc(
        "web",
        "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}",
    );
    let web_slice = slice(
        "web-1",
        "web",
        "[{name: http, port: 8080}]",
        "[{addresses: [198.18.1.10], nodeName: node1}]",
    );
    let separate = format!("{NODES}{web}{web_slice}");
    // kubectl's form: one List whose items are the same objects.
    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for doc in separate.split("---\n").filter(|d| !d.trim().is_empty()) {
        let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        let item = serde_yaml::to_string(&v).unwrap();
        for (i, line) in item.lines().enumerate() {
            list.push_str(if i == 0 { "- " } else { "  " });
            list.push_str(line);
            list.push('\n');
        }
    }
    assert_eq!(fingerprint(&clean(&separate)), fingerprint(&clean(&list)));
    assert_eq!(clean(&list).services().len(), 1);
}

#[test]
fn an_invalid_object_is_reported_by_kind_namespace_and_name_and_the_rest_still_translate() {
    let text = format!(
        "{NODES}{}{}{}{}",
        svc(
            "web",
            "{clusterIP: 198.19.0.10, ports: [{name: http, port: 70000}]}"
        ),
        svc(
            "unreadable",
            "{clusterIP: 198.19.0.11, ports: [{port: eighty}]}"
        ),
        svc("fine", "{clusterIP: 198.19.0.12, ports: [{port: 80}]}"),
        svc("bad-ip", "{clusterIP: 198.19.0.300, ports: [{port: 80}]}"),
    );
    let p = parse_objects(&text);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert_eq!(
        (
            p.errors[0].kind.as_str(),
            p.errors[0].namespace.as_deref(),
            p.errors[0].name.as_str()
        ),
        ("Service", Some("default"), "unreadable")
    );
    let t = translate(&p.objects, &cfg("node1"), 1).unwrap();
    let messages: Vec<String> = t.errors.iter().map(ObjectError::to_string).collect();
    assert_eq!(
        messages,
        [
            "Service default/bad-ip: spec.clusterIP: \"198.19.0.300\" is not an IP address; \
             the Service is ignored",
            "Service default/web: spec.ports[0].port: 70000 is out of range",
        ]
    );
    assert!(t.snapshot.frontend(&tcp("198.19.0.12:80")).is_some());
    assert!(t.snapshot.frontend(&tcp("198.19.0.10:80")).is_none());
}

#[test]
fn a_named_target_port_resolves_through_the_endpoint_slice_port_name() {
    let text = format!(
        "{NODES}{}{}",
        svc(
            "app",
            "{clusterIP: 198.19.0.10, ports: [\
             {name: http, port: 80, targetPort: http}, \
             {name: metrics, port: 9090, targetPort: metrics}, \
             {name: dns, port: 53, protocol: UDP, targetPort: dns}]}"
        ),
        // The controller resolved each pod's named ports; the slice's ports are listed
        // in another order, and a TCP port shares the UDP port's name.
        slice(
            "app-1",
            "app",
            "[{name: metrics, port: 9100}, {name: dns, port: 5353, protocol: UDP}, \
             {name: dns, port: 5354, protocol: TCP}, {name: http, port: 8080}]",
            "[{addresses: [198.18.1.10], nodeName: node1}]",
        ),
    );
    let snap = clean(&text);
    let port_of = |key| backend_addrs(&service(&snap, key).backends);
    assert_eq!(port_of(tcp("198.19.0.10:80")), ["198.18.1.10:8080"]);
    assert_eq!(port_of(tcp("198.19.0.10:9090")), ["198.18.1.10:9100"]);
    assert_eq!(port_of(udp("198.19.0.10:53")), ["198.18.1.10:5353"]);
}

#[test]
fn an_unnamed_service_port_takes_the_unnamed_slice_port() {
    let text = format!(
        "{NODES}{}{}",
        svc(
            "one",
            "{clusterIP: 198.19.0.10, ports: [{port: 80, targetPort: 8080}]}"
        ),
        slice(
            "one-1",
            "one",
            "[{port: 8080}]",
            "[{addresses: [198.18.1.10]}]"
        ),
    );
    let snap = clean(&text);
    let one = service(&snap, tcp("198.19.0.10:80"));
    assert_eq!(one.spec.name, "default/one:");
    assert_eq!(backend_addrs(&one.backends), ["198.18.1.10:8080"]);
}

#[test]
fn endpoint_conditions_default_as_the_api_documents() {
    let text = format!(
        "{NODES}{}{}",
        svc(
            "web",
            "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}"
        ),
        slice(
            "web-1",
            "web",
            "[{name: http, port: 8080}]",
            "[{addresses: [198.18.1.10]}, \
              {addresses: [198.18.1.11], conditions: {ready: false}}, \
              {addresses: [198.18.1.12], conditions: {serving: true, terminating: true}}]",
        ),
    );
    let snap = clean(&text);
    let web = service(&snap, tcp("198.19.0.10:80"));
    let conditions: Vec<(String, bool, bool, bool)> = web
        .spec
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conditions,
        [
            // no conditions: ready, so serving, not terminating
            ("198.18.1.10:8080".to_owned(), true, true, false),
            // not ready and serving unset: not serving either
            ("198.18.1.11:8080".to_owned(), false, false, false),
            // ready unset counts as ready even while terminating
            ("198.18.1.12:8080".to_owned(), true, true, true),
        ]
    );
    // Terminating endpoints take no new flows while a ready one exists.
    assert_eq!(backend_addrs(&web.backends), ["198.18.1.10:8080"]);
}

#[test]
fn serving_terminating_endpoints_take_new_flows_only_when_none_is_ready() {
    let text = format!(
        "{NODES}{}{}",
        svc("web", "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}"),
        slice(
            "web-1",
            "web",
            "[{name: http, port: 8080}]",
            "[{addresses: [198.18.1.10], conditions: {ready: false, serving: true, terminating: true}}, \
              {addresses: [198.18.1.11], conditions: {ready: false, serving: false, terminating: true}}, \
              {addresses: [198.18.2.10], conditions: {ready: false}}]",
        ),
    );
    let snap = clean(&text);
    let web = service(&snap, tcp("198.19.0.10:80"));
    assert_eq!(backend_addrs(&web.backends), ["198.18.1.10:8080"]);
}

#[test]
fn endpoints_on_this_node_are_marked_local() {
    let text = format!(
        "{NODES}{}{}",
        svc(
            "web",
            "{clusterIP: 198.19.0.10, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}"
        ),
        slice(
            "web-1",
            "web",
            "[{name: http, port: 8080}]",
            "[{addresses: [198.18.1.10], nodeName: node1}, \
              {addresses: [198.18.2.10], nodeName: node2}, \
              {addresses: [198.18.2.11]}]",
        ),
    );
    let snap = clean(&text);
    let web = service(&snap, tcp("198.19.0.10:80"));
    let local: Vec<(String, bool)> = web
        .spec
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.is_local))
        .collect();
    assert_eq!(
        local,
        [
            ("198.18.1.10:8080".to_owned(), true),
            ("198.18.2.10:8080".to_owned(), false),
            ("198.18.2.11:8080".to_owned(), false),
        ]
    );
    assert!(web.spec.internal_policy_local);
    assert_eq!(backend_addrs(&web.local_backends), ["198.18.1.10:8080"]);
    assert_eq!(
        backend_addrs(web.selection(FrontendKind::ClusterIp).1),
        ["198.18.1.10:8080"]
    );
    // The same objects seen from node2.
    let t = translate(&objects(&text), &cfg("node2"), 1).unwrap();
    let web = service(&t.snapshot, tcp("198.19.0.10:80"));
    assert_eq!(backend_addrs(&web.local_backends), ["198.18.2.10:8080"]);
}

#[test]
fn slices_of_one_service_merge_and_a_duplicate_address_keeps_the_first() {
    const V6_SLICE: &str = "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
";
    let text =
        format!(
        "{NODES}{}{}{}{}{V6_SLICE}",
        svc("web", "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}"),
        // Listed out of name order: "first" means first by slice name.
        slice(
            "web-b",
            "web",
            "[{name: http, port: 8080}]",
            "[{addresses: [198.18.1.10], conditions: {ready: false}}, {addresses: [198.18.2.10]}]",
        ),
        slice(
            "web-a",
            "web",
            "[{name: http, port: 8080}]",
            "[{addresses: [198.18.1.10], nodeName: node1}]",
        ),
        // Another Service's slice and an IPv6 slice of this one change nothing.
        slice("other-1", "other", "[{name: http, port: 8080}]", "[{addresses: [198.18.1.99]}]"),
    );
    let snap = clean(&text);
    let web = service(&snap, tcp("198.19.0.10:80"));
    let eps: Vec<(String, bool, bool)> = web
        .spec
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.ready, e.is_local))
        .collect();
    assert_eq!(
        eps,
        [
            ("198.18.1.10:8080".to_owned(), true, true),
            ("198.18.2.10:8080".to_owned(), true, false),
        ]
    );
}

#[test]
fn a_slice_without_the_service_name_label_is_reported() {
    let text = format!(
        "{NODES}{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: stray, namespace: default}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [198.18.1.10]}}]\n",
        svc(
            "web",
            "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}"
        ),
    );
    let t = with_errors(&text);
    assert_eq!(t.errors.len(), 1);
    assert_eq!(
        (t.errors[0].kind.as_str(), t.errors[0].name.as_str()),
        ("EndpointSlice", "stray")
    );
    assert!(t.errors[0].reason.contains("kubernetes.io/service-name"));
    assert!(service(&t.snapshot, tcp("198.19.0.10:80"))
        .spec
        .endpoints
        .is_empty());
}

#[test]
fn a_node_port_answers_on_every_node_ip() {
    // node1 with an ExternalIP and a VTEP address of its own besides the InternalIP.
    let nodes = NODES
        .replace(
            "{type: Hostname, address: node1}",
            "{type: ExternalIP, address: 198.19.128.101}, {type: InternalIP, address: 'fd00::1'}",
        )
        .replace("public-ip: 198.19.128.1\n", "public-ip: 198.19.128.201\n");
    let text = format!(
        "{nodes}{}{}",
        svc(
            "web-np",
            "{type: NodePort, clusterIP: 198.19.0.30, externalTrafficPolicy: Local, \
             ports: [{name: http, port: 80, nodePort: 30080}]}"
        ),
        slice("web-np-1", "web-np", "[{name: http, port: 8080}]", "[{addresses: [198.18.1.10], nodeName: node1}, {addresses: [198.18.2.10], nodeName: node2}]"),
    );
    let snap = clean(&text);
    assert_eq!(
        snap.node.node_ips,
        [
            ip("198.19.128.1"),
            ip("198.19.128.101"),
            ip("198.19.128.201")
        ]
    );
    for node_ip in ["198.19.128.1", "198.19.128.101", "198.19.128.201"] {
        let f = snap
            .frontend(&tcp(&format!("{node_ip}:30080")))
            .unwrap_or_else(|| panic!("no NodePort on {node_ip}"));
        assert_eq!(f.kind, FrontendKind::NodePort);
        let s = snap.service(f.service);
        assert_eq!(s.spec.name, "default/web-np:http");
        assert_eq!(backend_addrs(s.selection(f.kind).1), ["198.18.1.10:8080"]);
    }
    assert_eq!(
        snap.frontend(&tcp("198.19.0.30:80")).unwrap().kind,
        FrontendKind::ClusterIp
    );
    assert!(snap.frontend(&udp("198.19.128.1:30080")).is_none());
}

#[test]
fn a_node_port_on_a_cluster_ip_service_is_not_opened() {
    let text = format!(
        "{NODES}{}",
        svc(
            "web",
            "{clusterIP: 198.19.0.10, ports: [{port: 80, nodePort: 30080}]}"
        ),
    );
    let snap = clean(&text);
    assert_eq!(service(&snap, tcp("198.19.0.10:80")).spec.node_port, None);
    assert!(snap.frontend(&tcp("198.19.128.1:30080")).is_none());
}

#[test]
fn load_balancer_ingress_and_external_ips_are_frontends() {
    let text = format!(
        "{NODES}{}",
        svc_with_status(
            "lb",
            "{type: LoadBalancer, clusterIP: 198.19.0.50, externalIPs: [198.18.200.2], \
             ports: [{name: http, port: 80, nodePort: 30081}]}",
            "{loadBalancer: {ingress: [{ip: 198.18.200.1}, {hostname: lb.example}, \
             {ip: 198.18.200.3, ipMode: Proxy}, {ip: 'fd00::5'}]}}"
        ),
    );
    let snap = clean(&text);
    let kind = |k: ServiceKey| snap.frontend(&k).map(|f| f.kind);
    assert_eq!(kind(tcp("198.19.0.50:80")), Some(FrontendKind::ClusterIp));
    assert_eq!(
        kind(tcp("198.18.200.1:80")),
        Some(FrontendKind::LoadBalancer)
    );
    assert_eq!(kind(tcp("198.18.200.2:80")), Some(FrontendKind::ExternalIp));
    assert_eq!(
        kind(tcp("198.19.128.1:30081")),
        Some(FrontendKind::NodePort)
    );
    // ipMode Proxy: the load balancer itself delivers to the nodes.
    assert_eq!(kind(tcp("198.18.200.3:80")), None);
    let lb = service(&snap, tcp("198.19.0.50:80"));
    assert_eq!(lb.spec.load_balancer_ips, [ip("198.18.200.1")]);
    assert_eq!(lb.spec.external_ips, [ip("198.18.200.2")]);
}

#[test]
fn client_ip_affinity_timeout_defaults_to_10800_seconds() {
    let text = format!(
        "{NODES}{}{}{}",
        svc(
            "default-timeout",
            "{clusterIP: 198.19.0.10, sessionAffinity: ClientIP, ports: [{port: 80}]}"
        ),
        svc(
            "short",
            "{clusterIP: 198.19.0.11, sessionAffinity: ClientIP, \
             sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}, ports: [{port: 80}]}"
        ),
        svc(
            "none",
            "{clusterIP: 198.19.0.12, sessionAffinity: None, ports: [{port: 80}]}"
        ),
    );
    let snap = clean(&text);
    let timeout = |k| service(&snap, k).spec.affinity_timeout;
    assert_eq!(
        timeout(tcp("198.19.0.10:80")),
        Some(Nanos::from_secs(10_800))
    );
    assert_eq!(timeout(tcp("198.19.0.11:80")), Some(Nanos::from_secs(60)));
    assert_eq!(timeout(tcp("198.19.0.12:80")), None);
}

#[test]
fn an_sctp_port_is_reported_and_the_other_ports_apply() {
    let text = format!(
        "{NODES}{}",
        svc(
            "mixed",
            "{clusterIP: 198.19.0.10, ports: [{name: sig, port: 3868, protocol: SCTP}, \
             {name: http, port: 80}, {name: metrics, port: 81}]}"
        ),
    );
    let t = with_errors(&text);
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    let e = &t.errors[0];
    assert_eq!((e.kind.as_str(), e.name.as_str()), ("Service", "mixed"));
    assert!(e.reason.starts_with("spec.ports[0].protocol: SCTP"), "{e}");
    assert!(t.snapshot.frontend(&tcp("198.19.0.10:80")).is_some());
    assert!(t.snapshot.frontend(&tcp("198.19.0.10:81")).is_some());
}

#[test]
fn an_out_of_range_node_port_skips_that_port() {
    let text = format!(
        "{NODES}{}",
        svc(
            "np",
            "{type: NodePort, clusterIP: 198.19.0.10, \
             ports: [{name: a, port: 80, nodePort: 70000}, {name: b, port: 81, nodePort: 30081}]}"
        ),
    );
    let t = with_errors(&text);
    let messages: Vec<String> = t.errors.iter().map(ObjectError::to_string).collect();
    assert_eq!(
        messages,
        ["Service default/np: spec.ports[0].nodePort: 70000 is out of range"]
    );
    assert!(t.snapshot.frontend(&tcp("198.19.0.10:80")).is_none());
    assert!(t.snapshot.frontend(&tcp("198.19.128.1:30081")).is_some());
}

#[test]
fn a_frontend_claimed_twice_is_reported_for_the_later_service() {
    let text = format!(
        "{NODES}{}{}",
        // Listed in reverse: "later" is by namespace/name, not file order.
        svc(
            "b-copy",
            "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}, {name: other, port: 81}]}"
        ),
        svc(
            "a-first",
            "{clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}"
        ),
    );
    let t = with_errors(&text);
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert_eq!(t.errors[0].name, "b-copy");
    assert!(
        t.errors[0].reason.contains("default/a-first:http"),
        "{}",
        t.errors[0]
    );
    assert_eq!(
        service(&t.snapshot, tcp("198.19.0.10:80")).spec.name,
        "default/a-first:http"
    );
    assert_eq!(
        service(&t.snapshot, tcp("198.19.0.10:81")).spec.name,
        "default/b-copy:other"
    );
}

#[test]
fn headless_and_external_name_services_are_skipped_silently() {
    let text = format!(
        "{NODES}{}{}{}",
        svc(
            "headless",
            "{clusterIP: None, clusterIPs: [None], ports: [{port: 80}]}"
        ),
        svc(
            "ext",
            "{type: ExternalName, externalName: example.com, ports: [{port: 80}]}"
        ),
        svc(
            "v6only",
            "{clusterIP: 'fd00::10', clusterIPs: ['fd00::10'], ports: [{port: 80}]}"
        ),
    );
    let snap = clean(&text);
    assert!(snap.services().is_empty());
}

#[test]
fn a_dual_stack_service_keeps_its_ipv4_cluster_ip() {
    let text = format!(
        "{NODES}{}",
        svc(
            "dual",
            "{clusterIP: 'fd00::10', clusterIPs: ['fd00::10', 198.19.0.10], ports: [{port: 80}]}"
        ),
    );
    let snap = clean(&text);
    assert_eq!(
        service(&snap, tcp("198.19.0.10:80")).spec.cluster_ips,
        [ip("198.19.0.10")]
    );
}

#[test]
fn a_remote_node_pod_cidr_routes_to_its_vtep() {
    let snap = clean(NODES);
    let Route::Remote(node2) = snap.route(ip("198.18.2.10")) else {
        panic!("198.18.2.10 should be routed to node2");
    };
    assert_eq!(node2.name, "node2");
    assert_eq!(node2.vtep_ip, ip("198.19.128.2"));
    assert_eq!(node2.vtep_mac, "02:00:c6:13:80:02".parse::<Mac>().unwrap());
    assert_eq!(node2.vni, Vni::new(1).unwrap());
    assert_eq!(snap.route(ip("198.18.1.10")), Route::LocalPod);
    assert_eq!(snap.route(ip("198.19.128.2")), Route::Outside);
    assert_eq!(
        snap.vtep(ip("198.19.128.2")).map(|n| n.name.as_str()),
        Some("node2")
    );
    assert!(
        snap.vtep(ip("198.19.128.1")).is_none(),
        "our own VTEP is not a remote"
    );
    assert_eq!(snap.remotes().len(), 1);
}

#[test]
fn this_node_takes_its_vtep_node_ips_and_snat_address_from_its_node_object() {
    let snap = clean(NODES);
    let n = &snap.node;
    assert_eq!(n.name, "node1");
    assert_eq!(n.pod_cidrs, ["198.18.1.0/24".parse().unwrap()]);
    assert_eq!(n.vtep_ip, ip("198.19.128.1"));
    assert_eq!(n.vtep_mac, "02:00:c6:13:80:01".parse::<Mac>().unwrap());
    assert_eq!(n.vni, Vni::new(1).unwrap());
    assert_eq!(n.node_ips, [ip("198.19.128.1")]);
    // flannel's flannel.1 address: the network address of the node's subnet.
    assert_eq!(n.snat_ip, ip("198.18.1.0"));
}

#[test]
fn without_flannel_annotations_the_vtep_is_the_internal_ip_with_vni_1_and_an_unknown_mac() {
    let text = "
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDR: 198.18.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.19.128.1}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node2
  annotations: {flannel.alpha.coreos.com/backend-data: '{\"VNI\":42}'}
spec: {podCIDRs: ['fd00:2::/64', 198.18.2.0/24]}
status: {addresses: [{type: InternalIP, address: 198.19.128.2}]}
";
    let snap = clean(text);
    assert_eq!(snap.node.vtep_ip, ip("198.19.128.1"));
    assert_eq!(snap.node.vni, Vni::new(1).unwrap());
    assert_eq!(snap.node.vtep_mac, Mac::default());
    let node2 = &snap.remotes()[0];
    assert_eq!(node2.vni, Vni::new(42).unwrap());
    assert_eq!(node2.vtep_mac, Mac::default());
    assert_eq!(node2.pod_cidrs, ["198.18.2.0/24".parse().unwrap()]);
}

#[test]
fn a_missing_own_node_is_a_fatal_error_naming_it() {
    let err = translate(&objects(NODES), &cfg("node9"), 1).unwrap_err();
    assert!(matches!(&err, TranslateError::NodeMissing { node, .. } if node == "node9"));
    let msg = err.to_string();
    assert!(msg.contains("\"node9\""), "{msg}");
    assert!(msg.contains("node1, node2"), "{msg}");
    assert!(msg.contains("--node-name"), "{msg}");
}

#[test]
fn an_own_node_without_a_pod_cidr_is_fatal() {
    let text = NODES.replace(
        "spec: {podCIDR: 198.18.1.0/24, podCIDRs: [198.18.1.0/24]}",
        "spec: {podCIDRs: ['fd00:1::/64']}",
    );
    let err = translate(&objects(&text), &cfg("node1"), 1).unwrap_err();
    assert_eq!(
        err,
        TranslateError::LocalNode {
            node: "node1".to_owned(),
            problem: NodeProblem::NoPodCidr
        }
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("Node node1 cannot be this node: it has no IPv4 pod CIDR"),
        "{msg}"
    );
}

#[test]
fn an_own_node_without_a_vtep_address_is_fatal() {
    let text = NODES
        .replace("    flannel.alpha.coreos.com/public-ip: 198.19.128.1\n", "")
        .replace("{type: InternalIP, address: 198.19.128.1}, ", "");
    let err = translate(&objects(&text), &cfg("node1"), 1).unwrap_err();
    assert!(
        matches!(&err, TranslateError::LocalNode { node, problem: NodeProblem::NoVtep } if node == "node1"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("flannel.alpha.coreos.com/public-ip"));
    let bad = NODES.replace("public-ip: 198.19.128.1", "public-ip: not-an-ip");
    let err = translate(&objects(&bad), &cfg("node1"), 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"not-an-ip\" is not an IPv4 address"),
        "{err}"
    );
}

#[test]
fn a_remote_node_without_a_pod_cidr_is_skipped_with_an_error() {
    let text = NODES.replace(
        "spec: {podCIDR: 198.18.2.0/24, podCIDRs: [198.18.2.0/24]}",
        "spec: {}",
    );
    let t = with_errors(&text);
    assert_eq!(t.errors.len(), 1);
    assert_eq!(
        (
            t.errors[0].kind.as_str(),
            t.errors[0].namespace.as_deref(),
            t.errors[0].name.as_str()
        ),
        ("Node", None, "node2")
    );
    assert!(t.snapshot.remotes().is_empty());
    assert_eq!(t.snapshot.route(ip("198.18.2.10")), Route::Outside);
}

#[test]
fn the_same_objects_in_any_order_give_the_same_snapshot() {
    let mut objs = objects(EXAMPLE);
    let a = translate(&objs, &cfg("node1"), 3).unwrap();
    objs.services.reverse();
    objs.slices.reverse();
    objs.nodes.reverse();
    for s in &mut objs.slices {
        s.endpoints.reverse();
    }
    let b = translate(&objs, &cfg("node1"), 3).unwrap();
    assert_eq!(fingerprint(&a.snapshot), fingerprint(&b.snapshot));
}

/// A Service with one port and one slice, small enough that random ones collide on
/// ClusterIPs and share endpoints.
#[derive(Clone, Debug, PartialEq)]
struct SvcModel {
    cluster_ip: u8,
    port: u16,
    node_port: Option<u16>,
    internal_local: bool,
    external_local: bool,
    /// (pod address last octet, on node1, ready, terminating)
    endpoints: Vec<(u8, bool, bool, bool)>,
}

fn svc_model() -> impl Strategy<Value = SvcModel> {
    (
        0u8..12,
        prop_oneof![Just(80u16), Just(443)],
        proptest::option::of(30000u16..30004),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((0u8..8, any::<bool>(), any::<bool>(), any::<bool>()), 0..6),
    )
        .prop_map(
            |(cluster_ip, port, node_port, internal_local, external_local, endpoints)| SvcModel {
                cluster_ip,
                port,
                node_port,
                internal_local,
                external_local,
                endpoints,
            },
        )
}

fn cluster_text(services: &[Option<SvcModel>]) -> String {
    let mut text = NODES.to_owned();
    for (i, m) in services.iter().enumerate() {
        let Some(m) = m else { continue };
        let name = format!("s{i}");
        let node_port = match m.node_port {
            Some(np) => format!(", nodePort: {np}"),
            None => String::new(),
        };
        let policy = |local| if local { "Local" } else { "Cluster" };
        text += &svc(
            &name,
            &format!(
                "{{type: NodePort, clusterIP: 198.19.0.{}, internalTrafficPolicy: {}, \
                 externalTrafficPolicy: {}, ports: [{{name: http, port: {}{node_port}}}]}}",
                m.cluster_ip,
                policy(m.internal_local),
                policy(m.external_local),
                m.port,
            ),
        );
        let endpoints: Vec<String> = m
            .endpoints
            .iter()
            .map(|&(pod, on_node1, ready, terminating)| {
                let node = if on_node1 { 1 } else { 2 };
                format!(
                    "{{addresses: [198.18.{node}.{pod}], nodeName: node{node}, \
                     conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}}}"
                )
            })
            .collect();
        text += &slice(
            &format!("{name}-1"),
            &name,
            "[{name: http, port: 8080}]",
            &format!("[{}]", endpoints.join(", ")),
        );
    }
    text
}

/// Everything a worker can see of a snapshot, Service port by Service port (in
/// ServiceId order), with both Maglev tables in full.
fn everything(snap: &Snapshot) -> String {
    let services: Vec<String> = snap
        .services()
        .iter()
        .map(|s| {
            format!(
                "{:?}\n{} {:?} {:?}\ncluster {:?}\nlocal {:?}",
                s.spec,
                s.id_hash,
                s.backends,
                s.local_backends,
                s.cluster.entries(),
                s.local.entries()
            )
        })
        .collect();
    let mut frontends: Vec<String> = snap
        .frontends()
        .map(|(k, f)| format!("{k:?} -> {f:?}"))
        .collect();
    frontends.sort();
    format!(
        "{} {:?}\n{:?}\n{frontends:#?}\n{services:#?}",
        snap.generation,
        snap.node,
        snap.remotes()
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Incremental translation is exact: after any mix of kept, changed, added and
    /// deleted Services (told as the objects that changed, as the API source tells
    /// them, or as a whole new set, as a file reload does), the snapshot a translator
    /// builds is the snapshot built from nothing; and every Service port whose spec is
    /// unchanged is the previous one, shared.
    #[test]
    fn a_translator_told_of_changes_builds_what_a_translation_from_nothing_builds(
        changes in proptest::collection::vec(
            (proptest::option::of(svc_model()), proptest::option::of(svc_model()), any::<bool>()),
            1..16,
        ),
        whole_set in any::<bool>(),
        endpoints_only in any::<bool>(),
    ) {
        let before: Vec<Option<SvcModel>> = changes.iter().map(|c| c.0.clone()).collect();
        let after: Vec<Option<SvcModel>> = changes
            .iter()
            .map(|(old, new, keep)| match (old, new) {
                _ if *keep => old.clone(),
                // The common change: endpoints come and go, frontends stay.
                (Some(old), Some(new)) if endpoints_only => Some(SvcModel {
                    endpoints: new.endpoints.clone(),
                    ..old.clone()
                }),
                _ => new.clone(),
            })
            .collect();
        let node1 = cfg("node1");
        let mut translator = Translator::new(node1.clone());
        translator.replace(objects(&cluster_text(&before)));
        let previous = translator.build(1).unwrap();
        let now = objects(&cluster_text(&after));
        if whole_set {
            translator.replace(now.clone());
        } else {
            let key = |name: String| ("default".to_owned(), name);
            let named = |m: &Option<String>, n: &str| m.as_deref() == Some(n);
            let mut services = Vec::new();
            let mut slices = Vec::new();
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                if b == a {
                    continue;
                }
                let (svc, slice) = (format!("s{i}"), format!("s{i}-1"));
                let s = now.services.iter().find(|s| named(&s.metadata.name, &svc));
                services.push((key(svc.clone()), s.cloned().map(Arc::new)));
                let e = now.slices.iter().find(|e| named(&e.metadata.name, &slice));
                slices.push((key(slice), e.cloned().map(Arc::new)));
            }
            translator.apply_slices(Changes::Some(slices));
            translator.apply_services(Changes::Some(services));
        }
        let incremental = translator.build(2).unwrap();
        let fresh = translate(&now, &node1, 2).unwrap();
        prop_assert_eq!(everything(&incremental.snapshot), everything(&fresh.snapshot));
        prop_assert_eq!(&incremental.errors, &fresh.errors);
        for port in incremental.snapshot.services() {
            let old = previous.snapshot.services().iter().find(|p| p.spec.name == port.spec.name);
            if let Some(old) = old.filter(|old| old.spec == port.spec) {
                prop_assert!(Arc::ptr_eq(old, port), "{} was rebuilt", port.spec.name);
            }
        }
    }
}

#[test]
fn a_translator_follows_a_slice_moving_between_services_and_nodes_coming_and_going() {
    let services = svc(
        "a",
        "{clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}",
    ) + &svc(
        "b",
        "{clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}",
    );
    let endpoints = "[{addresses: [198.18.1.10], nodeName: node1}]";
    let in_a = slice("x", "a", "[{name: http, port: 8080}]", endpoints);
    let in_b = slice("x", "b", "[{name: http, port: 8080}]", endpoints);
    let mut t = Translator::new(cfg("node1"));
    t.replace(objects(&format!("{NODES}{services}{in_a}")));
    let first = t.build(1).unwrap().snapshot;
    let backends = |snap: &Snapshot, vip: &str| {
        let f = snap.frontend(&tcp(vip)).expect("a frontend");
        snap.service(f.service).backends.len()
    };
    assert_eq!(backends(&first, "198.19.0.1:80"), 1);
    assert_eq!(backends(&first, "198.19.0.2:80"), 0);

    // The slice's label now names b: a loses its endpoint, b gains it.
    let moved = objects(&in_b).slices.remove(0);
    let key = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
    t.apply_slices(Changes::Some(vec![(
        key("default", "x"),
        Some(Arc::new(moved)),
    )]));
    // As the API source tells it: no news for the other kinds.
    t.apply_nodes(Changes::Some(vec![]));
    t.apply_services(Changes::Some(vec![]));
    let second = t.build(2).unwrap();
    let fresh = translate(
        &objects(&format!("{NODES}{services}{in_b}")),
        &cfg("node1"),
        2,
    )
    .unwrap();
    assert_eq!(everything(&second.snapshot), everything(&fresh.snapshot));
    assert!(
        second.snapshot.shares_frontends(&first),
        "only endpoints changed: the snapshot is patched"
    );
    assert_eq!(backends(&second.snapshot, "198.19.0.1:80"), 0);
    assert_eq!(backends(&second.snapshot, "198.19.0.2:80"), 1);

    // node2 goes: its pod CIDR is no longer routed.
    t.apply_nodes(Changes::Some(vec![(key("", "node2"), None)]));
    let third = t.build(3).unwrap().snapshot;
    assert!(
        !third.shares_frontends(&second.snapshot),
        "a Node change reassembles"
    );
    assert_eq!(third.remotes().len(), 0);
    assert_eq!(third.route(ip("198.18.2.7")), Route::Outside);

    // Without its own Node there is no snapshot; with it back, there is again.
    let node1 = objects(NODES).nodes.remove(0);
    t.apply_nodes(Changes::Some(vec![(key("", "node1"), None)]));
    assert!(matches!(
        t.build(4),
        Err(TranslateError::NodeMissing { .. })
    ));
    t.apply_nodes(Changes::Some(vec![(
        key("", "node1"),
        Some(Arc::new(node1)),
    )]));
    let back = t.build(5).unwrap().snapshot;
    assert_eq!(backends(&back, "198.19.0.2:80"), 1);

    // The slice goes: b has no endpoint left.
    t.apply_slices(Changes::Some(vec![(key("default", "x"), None)]));
    assert_eq!(backends(&t.build(6).unwrap().snapshot, "198.19.0.2:80"), 0);
}

/// A translation on several threads (kxdp's first, from nothing) builds the snapshot
/// one thread builds, errors in the same order included.
#[test]
fn a_translation_on_two_threads_builds_what_one_thread_builds() {
    let models: Vec<Option<SvcModel>> = (0..1500u32)
        .map(|i| {
            (i % 7 != 0).then(|| SvcModel {
                cluster_ip: (i % 250) as u8,
                port: 80 + (i / 250) as u16,
                node_port: None,
                internal_local: i % 3 == 0,
                external_local: false,
                endpoints: vec![
                    ((i % 8) as u8, i % 2 == 0, true, false),
                    (9, false, true, false),
                ],
            })
        })
        .collect();
    let objs = objects(&cluster_text(&models));
    let one = translate(&objs, &cfg("node1"), 1).unwrap();
    let mut t = Translator::new(cfg("node1"));
    t.set_threads(2);
    t.replace(objs);
    let two = t.build(1).unwrap();
    assert!(
        one.snapshot.services().len() > 1024,
        "enough to go parallel"
    );
    assert_eq!(everything(&two.snapshot), everything(&one.snapshot));
    assert_eq!(two.errors, one.errors);
}
