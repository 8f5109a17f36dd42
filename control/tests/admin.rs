//! The admin socket and its answers, without a dataplane: a snapshot built here, a
//! stand-in worker thread that answers flow queries as a worker does between batches,
//! and the socket served on a temporary path.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use kxdp_control::admin::{self, Daemon, ProtoName, Request, Response};
use kxdp_control::inspect::{self, FlowsInfo};
use kxdp_control::tables;
use kxdp_dataplane::conntrack::FlowState;
use kxdp_dataplane::flow::{FiveTuple, Nanos, Proto};
use kxdp_dataplane::inspect::{FlowAnswer, FlowRecord, ServiceCounter};
use kxdp_dataplane::snapshot::{
    EndpointSpec, LocalNode, Mac, RemoteNode, ServicePortSpec, Snapshot, SnapshotBuilder, Vni,
};
use kxdp_dataplane::worker::{Fleet, WorkerStatus};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);

fn ep(ip: Ipv4Addr, local: bool) -> EndpointSpec {
    EndpointSpec {
        addr: SocketAddrV4::new(ip, 8080),
        is_local: local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn spec(name: &str, vip: Ipv4Addr, eps: Vec<EndpointSpec>) -> ServicePortSpec {
    ServicePortSpec {
        name: name.into(),
        proto: Proto::Tcp,
        port: 80,
        cluster_ips: vec![vip],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_timeout: None,
        internal_policy_local: false,
        external_policy_local: false,
        endpoints: eps,
    }
}

fn snapshot() -> Snapshot {
    let node = LocalNode {
        name: "node1".into(),
        pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
        vtep_ip: Ipv4Addr::new(198, 19, 128, 1),
        vtep_mac: Mac([2, 0, 0xc6, 0x13, 0x80, 1]),
        vni: Vni::new(1).unwrap(),
        node_ips: vec![Ipv4Addr::new(198, 19, 128, 1)],
        snat_ip: Ipv4Addr::new(198, 18, 1, 0),
    };
    let mut b = SnapshotBuilder::new(7, node, 65537);
    b.add_remote_node(RemoteNode {
        name: "node2".into(),
        pod_cidrs: vec!["198.18.2.0/24".parse().unwrap()],
        vtep_ip: Ipv4Addr::new(198, 19, 128, 2),
        vtep_mac: Mac([2, 0, 0xc6, 0x13, 0x80, 2]),
        vni: Vni::new(1).unwrap(),
    });
    b.add_service_port(spec(
        "default/web:http",
        VIP,
        vec![ep(LOCAL_POD, true), ep(REMOTE_POD, false)],
    ))
    .unwrap();
    b.add_service_port(spec(
        "default/empty:",
        Ipv4Addr::new(198, 19, 0, 20),
        vec![],
    ))
    .unwrap();
    b.build()
}

/// A daemon with one worker whose published counters say `web` saw 9 packets and 2
/// flows. `answering` says whether a stand-in worker thread answers flow queries.
struct World {
    daemon: Daemon,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn the_flow() -> FlowRecord {
    FlowRecord {
        orig: FiveTuple {
            src: CLIENT,
            dst: VIP,
            sport: 40000,
            dport: 80,
            proto: Proto::Tcp,
        },
        reply: FiveTuple {
            src: REMOTE_POD,
            dst: CLIENT,
            sport: 8080,
            dport: 40000,
            proto: Proto::Tcp,
        },
        state: FlowState::TcpEstablished,
        assured: true,
        expires_in: Nanos::from_secs(86_399),
        service: Some("default/web:http".into()),
    }
}

fn world(answering: bool) -> World {
    let snap = snapshot();
    let web = snap.services()[0].id_hash;
    let status = WorkerStatus {
        generation: 7,
        services: vec![ServiceCounter {
            id_hash: web,
            packets: 9,
            new_flows: 2,
        }],
        ..WorkerStatus::default()
    };
    let fleet = Arc::new(Fleet::new(1, 16));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = answering.then(|| {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                while let Some(q) = fleet.inspect[0].pop() {
                    let f = the_flow();
                    let hit = q.filter.matches(&f.orig, &f.reply, f.service.as_deref());
                    let answer = FlowAnswer {
                        flows: if hit && q.limit > 0 { vec![f] } else { vec![] },
                        matched: hit as usize,
                        pinned: None,
                    };
                    let _ = q.reply.try_send(answer);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    });
    World {
        daemon: Daemon {
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            workers: vec![Arc::new(Mutex::new(status))],
            fleet,
        },
        stop,
        worker,
    }
}

#[test]
fn services_list_frontends_backends_with_their_node_table_size_and_counters() {
    let w = world(false);
    let Response::Services(list) = admin::answer(&Request::Services {}, &w.daemon) else {
        panic!("not a services answer")
    };
    assert_eq!(list.len(), 2);
    let web = list.iter().find(|s| s.name == "default/web:http").unwrap();
    assert_eq!((web.packets, web.new_flows), (9, 2));
    assert_eq!(web.maglev_table_size, 251);
    assert_eq!(web.frontends[0].address, SocketAddrV4::new(VIP, 80));
    assert_eq!(web.frontends[0].kind, "ClusterIP");
    let locations: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.location.as_str(), b.node.as_deref()))
        .collect();
    assert_eq!(locations, vec![("local", None), ("remote", Some("node2"))]);
    let empty = list.iter().find(|s| s.name == "default/empty:").unwrap();
    assert!(empty.backends.is_empty());
    assert_eq!((empty.packets, empty.new_flows), (0, 0));

    let text = tables::services(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("SERVICE PORT"), "{text}");
    // Columns are aligned: PROTO starts at the same place in every row.
    let col = lines[0].find("PROTO").unwrap();
    assert!(
        lines[1..].iter().all(|l| &l[col..col + 3] == "tcp"),
        "{text}"
    );
    assert!(
        text.contains("198.18.2.10:8080 (node2 via 198.19.128.2)"),
        "{text}"
    );
    assert!(text.contains("198.18.1.10:8080 (local)"), "{text}");
}

#[test]
fn flows_come_from_the_workers_filtered_and_limited() {
    let w = world(true);
    let ask = |src: Option<&str>, limit| {
        let req = Request::Flows {
            service: Some("default/web".into()),
            src: src.map(str::to_owned),
            dst: None,
            proto: Some(ProtoName::Tcp),
            limit,
        };
        match admin::answer(&req, &w.daemon) {
            Response::Flows(f) => f,
            other => panic!("{other:?}"),
        }
    };
    let f: FlowsInfo = ask(Some("198.18.1.12"), 10);
    assert_eq!((f.flows.len(), f.matched), (1, 1));
    assert!(f.workers_silent.is_empty());
    assert_eq!(f.flows[0].backend, SocketAddrV4::new(REMOTE_POD, 8080));
    assert_eq!(
        f.flows[0].translated.dst,
        SocketAddrV4::new(REMOTE_POD, 8080)
    );
    assert_eq!(f.flows[0].original.dst, SocketAddrV4::new(VIP, 80));
    let none = ask(Some("198.18.1.99"), 10);
    assert_eq!((none.flows.len(), none.matched), (0, 0));
    let limited = ask(None, 0);
    assert_eq!((limited.flows.len(), limited.matched), (0, 1));

    let text = tables::flows(&f);
    assert!(
        text.contains("198.18.1.12:40000 -> 198.19.0.10:80"),
        "{text}"
    );
    assert!(
        text.contains("198.18.1.12:40000 -> 198.18.2.10:8080"),
        "{text}"
    );
    assert!(text.contains("ESTABLISHED"), "{text}");
    assert!(text.contains("1 of 1 matching flows shown"), "{text}");
}

#[test]
fn a_silent_worker_is_reported_not_waited_for_forever() {
    let w = world(false);
    let req = Request::Flows {
        service: None,
        src: None,
        dst: None,
        proto: None,
        limit: 10,
    };
    let started = std::time::Instant::now();
    let Response::Flows(f) = admin::answer(&req, &w.daemon) else {
        panic!("not a flows answer")
    };
    assert_eq!(f.workers_silent, vec![0]);
    assert!(started.elapsed() < inspect::WORKER_TIMEOUT + Duration::from_secs(1));
    assert!(tables::flows(&f).contains("did not answer"));
}

#[test]
fn explain_says_an_answered_connection_stays_on_a_backend_that_left() {
    let snap = snapshot();
    let gone = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 99), 8080);
    let to = |dst: Ipv4Addr| FiveTuple {
        src: CLIENT,
        dst,
        sport: 40000,
        dport: 80,
        proto: Proto::Tcp,
    };
    // The backend left `web`; the Service at 198.19.0.99 is gone altogether.
    for dst in [VIP, Ipv4Addr::new(198, 19, 0, 99)] {
        let e = inspect::explain_with(
            &snap,
            &to(dst),
            Some((0, gone, FlowState::TcpEstablished)),
            None,
        );
        assert_eq!(e.verdict, "backend", "{dst}: {}", e.reason);
        assert_eq!(e.chosen_by.as_deref(), Some("existing_flow"));
        assert_eq!(e.backend.unwrap().address, gone);
        assert!(e.existing_flow.unwrap().kept);
        assert!(e.reason.contains("kube-proxy's conntrack"), "{}", e.reason);
        // An unanswered SYN moves instead.
        let e = inspect::explain_with(
            &snap,
            &to(dst),
            Some((0, gone, FlowState::TcpSynSent)),
            None,
        );
        assert_ne!(
            e.backend.map(|b| b.address),
            Some(gone),
            "{dst}: {}",
            e.reason
        );
    }
}

#[test]
fn explain_reports_the_existing_flow_pin_and_the_maglev_choice() {
    let w = world(true);
    let req = Request::Explain {
        proto: ProtoName::Tcp,
        src: SocketAddrV4::new(CLIENT, 40000),
        dst: SocketAddrV4::new(VIP, 80),
    };
    let Response::Explain(e) = admin::answer(&req, &w.daemon) else {
        panic!("not an explain answer")
    };
    assert_eq!(e.verdict, "backend");
    assert_eq!(e.service.as_deref(), Some("default/web:http"));
    assert_eq!(e.frontend.as_deref(), Some("ClusterIP"));
    assert_eq!(e.chosen_by.as_deref(), Some("existing_flow"));
    let b = e.backend.as_ref().unwrap();
    assert_eq!(
        (b.address, b.location.as_str()),
        (SocketAddrV4::new(REMOTE_POD, 8080), "remote")
    );
    assert_eq!(e.maglev_table_size, Some(251));
    assert!(e.maglev_slot.unwrap() < 251);
    assert!(e.existing_flow.as_ref().unwrap().kept);
    let text = tables::explain(&e);
    assert!(
        text.contains("198.18.2.10:8080 (node2 via 198.19.128.2)"),
        "{text}"
    );
    assert!(text.contains("existing flow"), "{text}");

    // Another client port: no existing flow, Maglev decides.
    let req = Request::Explain {
        proto: ProtoName::Tcp,
        src: SocketAddrV4::new(CLIENT, 40001),
        dst: SocketAddrV4::new(VIP, 80),
    };
    let Response::Explain(e) = admin::answer(&req, &w.daemon) else {
        panic!("not an explain answer")
    };
    assert_eq!(e.chosen_by.as_deref(), Some("maglev"));
    assert_eq!(e.backend.unwrap().address, e.new_flow_backend.unwrap());

    let empty = Request::Explain {
        proto: ProtoName::Tcp,
        src: SocketAddrV4::new(CLIENT, 40000),
        dst: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 20), 80),
    };
    let Response::Explain(e) = admin::answer(&empty, &w.daemon) else {
        panic!("not an explain answer")
    };
    assert_eq!(e.verdict, "reject");
    assert!(e.reason.contains("no endpoints"), "{}", e.reason);
    let nothing = Request::Explain {
        proto: ProtoName::Udp,
        src: SocketAddrV4::new(CLIENT, 40000),
        dst: SocketAddrV4::new(VIP, 80),
    };
    let Response::Explain(e) = admin::answer(&nothing, &w.daemon) else {
        panic!("not an explain answer")
    };
    assert_eq!(e.verdict, "no_service");
}

#[test]
fn malformed_requests_get_an_error_reply() {
    let w = world(false);
    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"command\":\"reboot\"}",
        b"{\"command\":\"explain\",\"proto\":\"icmp\",\"src\":\"1.2.3.4:1\",\"dst\":\"1.2.3.4:2\"}",
        b"{\"command\":\"explain\",\"proto\":\"tcp\",\"src\":\"1.2.3.4\",\"dst\":\"1.2.3.4:2\"}",
        b"{\"command\":\"flows\",\"src\":\"300.1.1.1\"}",
        b"{\"command\":\"flows\",\"limit\":-1}",
        b"{\"command\":\"services\",\"extra\":1}",
        b"\xff\xfe",
    ] {
        match admin::answer_line(bad, &w.daemon) {
            Response::Error(e) => assert!(!e.is_empty()),
            other => panic!(
                "{:?} was answered with {other:?}",
                String::from_utf8_lossy(bad)
            ),
        }
    }
}

#[test]
fn the_socket_is_root_only_answers_line_by_line_and_is_removed_on_drop() {
    let w = world(false);
    let dir = std::env::temp_dir().join(format!("kxdp-admin-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub").join("admin.sock");
    let guard = admin::serve(&path, w.daemon.clone()).expect("serve");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    // A second daemon on the same path is refused.
    assert!(admin::serve(&path, w.daemon.clone()).is_err());

    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"garbage\n{\"command\":\"services\"}\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(
        matches!(serde_json::from_str(&line).unwrap(), Response::Error(_)),
        "{line}"
    );
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(matches!(serde_json::from_str(&line).unwrap(), Response::Services(l) if l.len() == 2));
    drop(s);
    let answered = admin::request(&path, &Request::Services {}).unwrap();
    assert!(matches!(answered, Response::Services(_)));

    drop(guard);
    assert!(!path.exists(), "the socket file is removed");
    // A stale socket file (a daemon that died) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let guard = admin::serve(&path, w.daemon.clone()).expect("serve over a stale socket");
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
