//! How long the control side takes to turn a large cluster into a snapshot: 10,000
//! Services x 4 endpoints (one EndpointSlice each) and two nodes, with M = 65537 as the
//! cap on Maglev table sizes. From nothing (a `Translator` given the whole set, as at
//! start or after a list), and one endpoint changed (a `Translator` that holds the
//! cluster told of one changed EndpointSlice, as a watch event tells it: it translates
//! that Service again, rebuilds its Maglev table and reassembles the snapshot).
//!
//! The objects are built in code, outside the timed part; the snapshot is dropped
//! outside it too (`iter_with_large_drop`), since the control thread hands it on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kxdp_control::objects::k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use kxdp_control::objects::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use kxdp_control::objects::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kxdp_control::objects::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kxdp_control::objects::Objects;
use kxdp_control::translate::{translate, TranslateConfig, Translator};
use kxdp_control::translator::Changes;
use std::sync::Arc;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 4;
const MAX_TABLE_SIZE: u32 = 65_537;

/// node1 holds pods in 198.18.0.0/17, node2 in 198.18.128.0/17 (room for 40,000
/// distinct pods); underlay 198.19.128.0/24, as in the test topology.
fn node(n: u8) -> Node {
    let vtep = format!("198.19.128.{n}");
    let annotations = BTreeMap::from([
        (
            "flannel.alpha.coreos.com/public-ip".to_owned(),
            vtep.clone(),
        ),
        (
            "flannel.alpha.coreos.com/backend-data".to_owned(),
            format!(r#"{{"VNI":1,"VtepMAC":"02:00:c6:13:80:0{n}"}}"#),
        ),
    ]);
    let cidr = format!("198.18.{}.0/17", (n - 1) * 128);
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node{n}")),
            annotations: Some(annotations),
            ..Default::default()
        },
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

/// Service i: ClusterIP 198.19.0.0/17 + i, port 80 "http" -> named targetPort.
fn service(i: usize) -> Service {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32 + 1);
    Service {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}")),
            namespace: Some("bench".to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.to_string()),
            cluster_ips: Some(vec![ip.to_string()]),
            type_: Some("ClusterIP".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::String("http".to_owned())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Service i's one slice: its endpoints alternate between node1 and node2.
fn slice(i: usize) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|j| {
            let n = j % 2;
            let base = u32::from(Ipv4Addr::new(198, 18, (n * 128) as u8, 0));
            let ip = Ipv4Addr::from(base + (i * ENDPOINTS_PER_SERVICE / 2 + j / 2) as u32 + 1);
            Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node{}", n + 1)),
                ..Default::default()
            }
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-abcde")),
            namespace: Some("bench".to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                format!("svc-{i}"),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
    }
}

fn cluster() -> Objects {
    Objects {
        services: (0..SERVICES).map(service).collect(),
        slices: (0..SERVICES).map(slice).collect(),
        nodes: vec![node(1), node(2)],
    }
}

fn bench_translate(c: &mut Criterion) {
    let objects = cluster();
    let cfg = TranslateConfig {
        node_name: "node1".to_owned(),
        max_table_size: MAX_TABLE_SIZE,
    };
    let t = translate(&objects, &cfg, 1).expect("node1 is describable");
    assert!(
        t.errors.is_empty(),
        "{:?}",
        &t.errors[..t.errors.len().min(3)]
    );
    assert_eq!(t.snapshot.services().len(), SERVICES);
    eprintln!(
        "snapshot of {SERVICES} Services x {ENDPOINTS_PER_SERVICE} endpoints, M <= \
         {MAX_TABLE_SIZE}: approx_bytes = {} ({:.1} MiB), cluster table size {}",
        t.snapshot.approx_bytes(),
        t.snapshot.approx_bytes() as f64 / (1024.0 * 1024.0),
        t.snapshot.services()[0].cluster.size(),
    );
    drop(t);

    let mut g = c.benchmark_group("translate");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("10k_services_x4_endpoints", |b| {
        b.iter_batched(
            || objects.clone(),
            // The translator is returned, to be dropped outside the timing: the
            // control side keeps it (and the objects) for the next change.
            |objects| {
                let mut t = Translator::new(cfg.clone());
                t.replace(objects);
                let built = t.build(1).unwrap();
                (t, built)
            },
            BatchSize::LargeInput,
        )
    });

    // The same on every core, as kxdp's first build (before any worker forwards).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    g.bench_function("10k_services_x4_endpoints_all_cores", |b| {
        b.iter_batched(
            || objects.clone(),
            |objects| {
                let mut t = Translator::new(cfg.clone());
                t.set_threads(cores);
                t.replace(objects);
                let built = t.build(1).unwrap();
                (t, built)
            },
            BatchSize::LargeInput,
        )
    });

    // One endpoint of one Service moves to a new pod and back, as two watch events:
    // each build translates one Service again and reassembles the snapshot.
    let mut translator = Translator::new(cfg.clone());
    translator.replace(objects.clone());
    translator.build(1).unwrap();
    let original = Arc::new(objects.slices[SERVICES / 2].clone());
    let mut moved = objects.slices[SERVICES / 2].clone();
    moved.endpoints[0].addresses[0] = "198.18.127.250".to_owned();
    let moved = Arc::new(moved);
    let key = (
        "bench".to_owned(),
        original.metadata.name.clone().expect("named"),
    );
    let mut generation = 1;
    g.bench_function("10k_services_one_endpoint_changed", |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            let slice = if generation % 2 == 0 {
                &moved
            } else {
                &original
            };
            translator.apply_slices(Changes::Some(vec![(key.clone(), Some(slice.clone()))]));
            let t = translator.build(generation).unwrap();
            assert_eq!(t.snapshot.services().len(), SERVICES);
            t
        })
    });
    g.finish();
}

criterion_group!(benches, bench_translate);
criterion_main!(benches);
