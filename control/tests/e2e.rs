//! End-to-end tests: the `kxdp` binary forwarding real traffic between real peers
//! (the kernel's TCP/UDP stacks, curl, Python servers, a kernel vxlan device as
//! flannel configures it) in the two-node network-namespace topology of
//! ARCHITECTURE.md ("Test topology"); see `netns/mod.rs` for the topology and guards.
//!
//! Every test builds its own topology (unique namespace names), so they run in
//! parallel; each needs root and skips with a message otherwise. Everything a test
//! creates is removed when its guards drop, also when it fails.
//!
//! Addresses: node1 pods 198.18.1.h, node2 pods 198.18.2.h, ClusterIPs 198.19.0.x,
//! node1's underlay address 198.19.128.1, the external client 198.19.128.100.

mod apidouble;
mod netns;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use apidouble::{ApiDouble, Res};
use netns::{
    available, Reply, Service, Topology, CLIENT_IP, HTTP_SERVER, LONG_LIVED_CLIENT, NODE1_IP,
    NODE1_SNAT_IP, SINK_SERVER, TCP_ECHO_SERVER, UDP_CLIENT, UDP_ECHO_SERVER, UPLOAD_CLIENT,
};

const HTTP_PORT: u16 = 8080;

/// Runs UDP_CLIENT in `ns` against `dst` for `count` datagrams; every reply must come
/// from `dst` itself (the reverse NAT) and say the server saw `client_ip`.
fn udp_round_trips(t: &Topology, ns: &str, dst: SocketAddrV4, client_ip: Ipv4Addr, count: u32) {
    let mut c = t.python(
        ns,
        "udp-client",
        UDP_CLIENT,
        &[
            &dst.ip().to_string(),
            &dst.port().to_string(),
            &count.to_string(),
        ],
    );
    let (status, lines) = c.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "UDP client failed ({status}): {lines:?}");
    assert_eq!(lines.len(), count as usize, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("src={dst} data=ping-{i} from={client_ip}:")),
            "reply {i} must come from {dst} (the Service) and the server must have seen {client_ip}: {line}"
        );
    }
}

#[test]
fn pod_to_cluster_ip_reaches_a_local_backend_and_replies_come_from_the_cluster_ip() {
    let name = "pod_to_cluster_ip_reaches_a_local_backend_and_replies_come_from_the_cluster_ip";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[]);
    let (client, backend) = (t.pod(1, 10), t.pod(1, 11));
    let _http = t.server(backend, "http", HTTP_SERVER, HTTP_PORT);
    let _udp = t.server(backend, "udp-echo", UDP_ECHO_SERVER, 5353);
    let web = Service::tcp("web", [198, 19, 0, 10], 80, HTTP_PORT).endpoints(&[backend]);
    let dns = Service::udp("dns", [198, 19, 0, 53], 53, 5353).endpoints(&[backend]);
    let _kxdp = t.start_kxdp(&t.write_objects(&[web.clone(), dns]));

    // TCP: the handshake only completes if the SYN-ACK comes back from the ClusterIP.
    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, backend.ip, "{r:?}");
    assert_eq!(
        *r.client.ip(),
        client.ip,
        "a pod client is not masqueraded: {r:?}"
    );

    // UDP: an unconnected socket shows where each reply really came from.
    let svc = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 53), 53);
    udp_round_trips(&t, &client.ns, svc, client.ip, 3);

    // The metrics show the two new flows (workers publish every 10 ms).
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = node1_metrics(&t);
        if metrics.contains("kxdp_new_flows_total{worker=\"0\"} 2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metrics.contains("kxdp_new_flows_total{worker=\"0\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"conntrack_full\""), "{metrics}");
    // The kernel's socket statistics, one set per interface: a handful of frames
    // lose none before kxdp sees them.
    let xsk: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("kxdp_xsk_"))
        .collect();
    assert!(
        xsk.iter()
            .filter(|l| l.starts_with("kxdp_xsk_rx_ring_full_total{worker=\"0\",interface="))
            .count()
            >= 3,
        "{metrics}"
    );
    assert!(xsk.iter().all(|l| l.ends_with(" 0")), "{xsk:#?}");
    assert!(
        sample(&metrics, "kxdp_rx_batches_total{worker=\"0\"}").is_some_and(|b| b >= 1.0),
        "{metrics}"
    );
    let healthz = t
        .curl(
            &t.node1,
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:10256/healthz",
            ],
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(healthz, "200");

    // The node itself reaches an endpoint pod directly, as the kubelet's probes do:
    // the pod's reply leaves from its Service port but is the kernel's, not kxdp's.
    let probe = t
        .curl(&t.node1, &[&format!("http://{}:{HTTP_PORT}/", backend.ip)])
        .unwrap_or_else(|e| panic!("the node cannot reach its pod: {}", e.message));
    assert!(probe.contains(&backend.ip.to_string()), "{probe}");
}

#[test]
fn pod_to_cluster_ip_reaches_a_backend_on_node2_through_vxlan() {
    let name = "pod_to_cluster_ip_reaches_a_backend_on_node2_through_vxlan";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[10]);
    let (client, backend) = (t.pod(1, 10), t.pod(2, 10));
    let _http = t.server(backend, "http", HTTP_SERVER, HTTP_PORT);
    let _udp = t.server(backend, "udp-echo", UDP_ECHO_SERVER, 5353);
    let web = Service::tcp("web", [198, 19, 0, 11], 80, HTTP_PORT).endpoints(&[backend]);
    let dns = Service::udp("dns", [198, 19, 0, 54], 53, 5353).endpoints(&[backend]);
    let _kxdp = t.start_kxdp(&t.write_objects(&[web.clone(), dns]));

    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, backend.ip, "{r:?}");
    assert_eq!(*r.client.ip(), client.ip, "{r:?}");
    let svc = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 54), 53);
    udp_round_trips(&t, &client.ns, svc, client.ip, 3);
}

#[test]
fn pods_reach_each_other_across_nodes_without_a_service() {
    let name = "pods_reach_each_other_across_nodes_without_a_service";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[10]);
    let (p1, p2) = (t.pod(1, 10), t.pod(2, 10));
    let _s1 = t.server(p1, "http-node1", HTTP_SERVER, HTTP_PORT);
    let _s2 = t.server(p2, "http-node2", HTTP_SERVER, HTTP_PORT);
    let _kxdp = t.start_kxdp(&t.write_objects(&[]));

    for (from, to) in [(p2, p1), (p1, p2)] {
        let r = t.http_get(&from.ns, &format!("http://{}:{HTTP_PORT}/", to.ip));
        assert_eq!(r.backend, to.ip, "{} -> {}: {r:?}", from.ip, to.ip);
        assert_eq!(*r.client.ip(), from.ip, "{} -> {}: {r:?}", from.ip, to.ip);
    }
}

#[test]
fn connections_to_a_service_spread_over_its_backends_and_a_tuple_sticks() {
    let name = "connections_to_a_service_spread_over_its_backends_and_a_tuple_sticks";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11, 12], &[10]);
    let client = t.pod(1, 10);
    let backends = [t.pod(1, 11), t.pod(1, 12), t.pod(2, 10)];
    let _servers: Vec<_> = backends
        .iter()
        .map(|b| t.server(b, "http", HTTP_SERVER, HTTP_PORT))
        .collect();
    let web = Service::tcp("web", [198, 19, 0, 12], 80, HTTP_PORT).endpoints(&backends);
    let _kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));

    // 200 connections, one after the other, each from a new ephemeral port (curl's
    // URL globbing opens a new connection per URL as the server closes each one).
    const N: usize = 200;
    let url = format!("http://{}:{}/[1-{N}]", web.cluster_ip, web.port);
    let body = t
        .curl_within(&client.ns, &[&url], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", e.message));
    let replies: Vec<Reply> = Reply::parse_all(&body)
        .into_iter()
        .map(|r| r.unwrap_or_else(|| panic!("bad reply in {body:?}")))
        .collect();
    assert_eq!(replies.len(), N, "{body}");
    let mut share: BTreeMap<Ipv4Addr, usize> = backends.iter().map(|b| (b.ip, 0)).collect();
    for r in &replies {
        assert_eq!(*r.client.ip(), client.ip, "{r:?}");
        *share
            .get_mut(&r.backend)
            .unwrap_or_else(|| panic!("{} is not a backend", r.backend)) += 1;
    }
    // Maglev's fill gives each of 3 equal backends a third of the table (within one
    // slot), and the flow hash of distinct client ports picks a slot like a fair die:
    // each count is Binomial(200, 1/3), mean 66.7, standard deviation 6.7. 35 and 100
    // are 4.7 and 5.0 standard deviations away, so a correct kxdp fails this a few
    // times in a million runs (three backends, both tails), while a broken spread (a
    // backend never or always chosen, a hash that ignores the source port) fails it
    // every time.
    eprintln!("{name}: {N} connections spread as {share:?}");
    for (b, n) in &share {
        assert!(
            (35..=100).contains(n),
            "backend {b} got {n} of {N} connections: {share:?}"
        );
    }

    // A fixed source port: the same 5-tuple, so the same backend every time. The
    // ports are above the ephemeral range (32768-60999) so nothing else takes them.
    // The server closes first (HTTP_SERVER), so TIME_WAIT is the server's and the
    // client's port is free again once its last ACK is answered; a bind that races
    // that ACK (curl exit 45) is retried.
    for port in [61000u16, 61001, 61002] {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let p = port.to_string();
            let mut tries = 0;
            let body = loop {
                tries += 1;
                match t.curl(&client.ns, &["--local-port", &p, &web.cluster_url()]) {
                    Ok(b) => break b,
                    Err(e) if e.code == Some(45) && tries < 50 => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("{} (after {tries} tries)", e.message),
                }
            };
            let r = Reply::parse_all(&body)[0].unwrap_or_else(|| panic!("{body:?}"));
            assert_eq!(r.client, SocketAddrV4::new(client.ip, port), "{r:?}");
            seen.push(r.backend);
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "source port {port}: the same tuple went to different backends: {seen:?}"
        );
    }
}

#[test]
fn node_port_from_the_underlay_with_external_traffic_policy_cluster_and_local() {
    let name = "node_port_from_the_underlay_with_external_traffic_policy_cluster_and_local";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[10]);
    let (local, remote) = (t.pod(1, 10), t.pod(2, 10));
    let _s1 = t.server(local, "http-node1", HTTP_SERVER, HTTP_PORT);
    let _s2 = t.server(remote, "http-node2", HTTP_SERVER, HTTP_PORT);
    let cluster = Service::tcp("np-cluster", [198, 19, 0, 13], 80, HTTP_PORT)
        .node_port(30080, false)
        .endpoints(&[local, remote]);
    let only_local = Service::tcp("np-local", [198, 19, 0, 14], 80, HTTP_PORT)
        .node_port(30081, true)
        .endpoints(&[local, remote]);
    let _kxdp = t.start_kxdp(&t.write_objects(&[cluster, only_local]));

    // Cluster: any backend, and the backend sees node1's SNAT address so that its
    // reply comes back through node1. 20 connections over 2 backends all landing on
    // one would happen with probability 2^-19: seeing both is the expected case.
    const N: usize = 20;
    let url = format!("http://{NODE1_IP}:30080/[1-{N}]");
    let body = t
        .curl_within(&t.client, &[&url], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{}", e.message));
    let replies: Vec<Reply> = Reply::parse_all(&body).into_iter().flatten().collect();
    assert_eq!(replies.len(), N, "{body}");
    for r in &replies {
        assert_eq!(
            *r.client.ip(),
            NODE1_SNAT_IP,
            "externalTrafficPolicy Cluster masquerades: {r:?}"
        );
    }
    for b in [local.ip, remote.ip] {
        assert!(
            replies.iter().any(|r| r.backend == b),
            "{b} never served a NodePort connection: {replies:?}"
        );
    }

    // Local: only node1's endpoint, and it sees the client's own address.
    let url = format!("http://{NODE1_IP}:30081/[1-{N}]");
    let body = t
        .curl_within(&t.client, &[&url], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{}", e.message));
    let replies: Vec<Reply> = Reply::parse_all(&body).into_iter().flatten().collect();
    assert_eq!(replies.len(), N, "{body}");
    for r in &replies {
        assert_eq!(r.backend, local.ip, "Local serves from node1 only: {r:?}");
        assert_eq!(
            *r.client.ip(),
            CLIENT_IP,
            "Local keeps the client address: {r:?}"
        );
    }
}

/// Two workers on a two-queue uplink, the pods on single-queue veths as a CNI makes
/// them: worker 0 alone has a socket on each pod, so what worker 1 translates for a
/// pod is transmitted through worker 0. NodePort connections from the underlay land
/// on either uplink queue by flow hash; with externalTrafficPolicy Local they all go
/// to the pod on node1, and none may need a retransmission.
#[test]
fn two_workers_serve_single_queue_pods_through_the_worker_that_has_their_queue() {
    let name = "two_workers_serve_single_queue_pods_through_the_worker_that_has_their_queue";
    if !available(name) {
        return;
    }
    let t = Topology::with_queues_on(name, &[10, 11], &[], 2, 1);
    let (client, backend) = (t.pod(1, 10), t.pod(1, 11));
    let _http = t.server(backend, "http", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 13], 80, HTTP_PORT)
        .node_port(30081, true)
        .endpoints(&[backend]);
    let kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));
    // From a pod: its frames reach worker 0 only.
    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, backend.ip, "{r:?}");
    // The underlay client's first connection teaches both workers its MAC.
    let base = format!("http://{NODE1_IP}:30081/");
    requests(&t, &t.client, &base, 4, &kxdp);
    let lost = || {
        net_counter(&t, &t.client, "TcpExtTCPSynRetrans")
            + net_counter(&t, &t.client, "TcpRetransSegs")
            + net_counter(&t, &backend.ns, "TcpRetransSegs")
    };
    let before = lost();
    const N: usize = 20;
    for r in requests(&t, &t.client, &base, N, &kxdp) {
        assert_eq!(r.backend, backend.ip, "{r:?}");
        assert_eq!(
            *r.client.ip(),
            CLIENT_IP,
            "Local keeps the client address: {r:?}"
        );
    }
    assert_eq!(
        lost() - before,
        0,
        "retransmissions for {N} NodePort connections: frames were lost\n{}",
        kxdp.log()
    );
    // Worker 1 did take connections, and sent their frames to the pod via worker 0.
    let metrics = node1_metrics(&t);
    let handed = sample(&metrics, "kxdp_tx_handed_total{worker=\"1\"}").unwrap_or(0.0);
    assert!(
        handed > 0.0,
        "worker 1 handed nothing to transmit:\n{metrics}"
    );
    let (status, log) = kxdp.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(log.contains("all frames accounted for"), "{log}");
}

/// The `echoed N` count a LONG_LIVED_CLIENT line reports.
fn echoed(line: &str) -> Option<u32> {
    line.strip_prefix("echoed ")?.parse().ok()
}

#[test]
fn a_long_lived_connection_survives_endpoint_changes_of_its_service_and_its_backend_leaving() {
    let name =
        "a_long_lived_connection_survives_endpoint_changes_of_its_service_and_its_backend_leaving";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11, 12], &[10]);
    let (client, backend) = (t.pod(1, 10), t.pod(1, 11));
    let (other1, other2) = (t.pod(1, 12), t.pod(2, 10));
    let _echo = t.server(backend, "tcp-echo", TCP_ECHO_SERVER, 7000);
    let echo = Service::tcp("echo", [198, 19, 0, 15], 7, 7000);
    let objects = t.write_objects(&[echo.clone().endpoints(&[backend])]);
    let kxdp = t.start_kxdp(&objects);

    // Three connections: whichever backend Maglev would pick for a new connection
    // with one tuple after a change, with three tuples and four multi-endpoint sets it
    // is all but certain that some change remaps some tuple away from `backend`. A
    // remapped packet would reach a pod with no socket for it and be reset.
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            t.python(
                &client.ns,
                &format!("long-lived-client-{i}"),
                LONG_LIVED_CLIENT,
                &[&echo.cluster_ip.to_string(), &echo.port.to_string()],
            )
        })
        .collect();
    let mut last = Vec::new();
    for c in &mut clients {
        let line = c
            .wait_line(
                |l| echoed(l).is_some_and(|n| n >= 5),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        last.push(echoed(&line).unwrap_or(0));
    }

    // Other endpoints come and go; every set changes the Service's Maglev table, but
    // established connections must stay where they are. Last, their backend leaves:
    // as with kube-proxy, they still stay (the others have no socket for them).
    let changes: [&[&netns::Pod]; 6] = [
        &[backend, other1],
        &[other1, backend, other2],
        &[backend, other2],
        &[other2, other1, backend],
        &[backend],
        &[other1, other2],
    ];
    let reloads = kxdp.count("objects reloaded");
    for (i, eps) in changes.iter().enumerate() {
        t.write_objects(&[echo.clone().endpoints(eps)]);
        kxdp.wait_log("objects reloaded", reloads + i + 1, Duration::from_secs(10));
        // At least 5 more lines (half a second) echoed on the new snapshot.
        for (c, last) in clients.iter_mut().zip(&mut last) {
            let want = *last + 5;
            let line = c
                .wait_line(
                    |l| echoed(l).is_some_and(|n| n >= want),
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|e| panic!("after change {i} to {eps:?}: {e}"));
            *last = echoed(&line).unwrap_or(0);
        }
    }
    for (c, last) in clients.iter_mut().zip(&last) {
        drop(c.stdin());
        let (status, lines) = c.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(
            status.success(),
            "the connection broke ({status}): {:?} {}",
            lines.last(),
            c.stderr_text()
        );
        let done = lines.last().and_then(|l| l.strip_prefix("done "));
        assert!(
            done.and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= *last),
            "{lines:?}"
        );
    }
}

#[test]
fn the_first_connection_to_a_pod_that_never_spoke_waits_for_arp_and_loses_nothing() {
    let name = "the_first_connection_to_a_pod_that_never_spoke_waits_for_arp_and_loses_nothing";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[]);
    let (client, server) = (t.pod(1, 10), t.pod(1, 11));
    let _http = t.server(server, "http", HTTP_SERVER, HTTP_PORT);
    // No Service names the server, so nothing asks for its MAC before the SYN.
    let kxdp = t.start_kxdp(&t.write_objects(&[]));
    let metric = |name: &str| {
        let metrics = node1_metrics(&t);
        (sample(&metrics, name).unwrap_or(-1.0), metrics)
    };
    let unknown = "kxdp_dropped_packets_total{worker=\"0\",reason=\"neighbour_unknown\"}";
    let held = "kxdp_held_for_neighbour_total{worker=\"0\"}";

    // First, an address in the pod CIDR with no pod (a deleted pod's): its frames
    // are held, asked for, and dropped after a second; once the first is dropped,
    // the next ones at once (pings at 1.2 s and 1.5 s), not held.
    let ping = ["ping", "-c", "6", "-i", "0.3", "-W", "1", "198.18.1.99"];
    let out = t.exec(&client.ns, &ping);
    assert!(!out.status.success(), "nobody should answer at 198.18.1.99");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(unknown).0 < 6.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (dropped, metrics) = metric(unknown);
    assert_eq!(dropped, 6.0, "{metrics}");
    let (held_dead, metrics) = metric(held);
    assert!(
        (3.0..6.0).contains(&held_dead),
        "held {held_dead} of the 6 pings:\n{metrics}"
    );

    // Then the server, which never sent a frame: its SYN waits for ARP.
    let before = net_counter(&t, &client.ns, "TcpExtTCPSynRetrans");
    let held_before = metric(held).0;
    let r = t.http_get(&client.ns, &format!("http://{}:{HTTP_PORT}/", server.ip));
    assert_eq!(r.backend, server.ip, "{r:?}");
    assert_eq!(
        net_counter(&t, &client.ns, "TcpExtTCPSynRetrans") - before,
        0,
        "the SYN was dropped while kxdp asked for the server's MAC:\n{}",
        kxdp.log()
    );
    // Workers publish their counters every few milliseconds they run.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(held).0 <= held_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (now_held, metrics) = metric(held);
    assert!(now_held > held_before, "the SYN was not held: {metrics}");
    assert_eq!(metric(unknown).0, 6.0, "{metrics}");
    let (status, log) = kxdp.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(log.contains("all frames accounted for"), "{log}");
}

#[test]
fn the_kernels_own_arp_with_a_pod_is_answered_while_kxdp_asks_too() {
    let name = "the_kernels_own_arp_with_a_pod_is_answered_while_kxdp_asks_too";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[]);
    let (client, pod) = (t.pod(1, 10), t.pod(1, 11));
    let _http = t.server(pod, "http", HTTP_SERVER, HTTP_PORT);
    // The pod takes pings and answers none: it never asks for its gateway, so the
    // node's kernel has not learned it when it asks itself (as the kubelet's probe).
    let sysctl = ["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"];
    assert!(t.exec(&pod.ns, &sysctl).status.success());
    let _kxdp = t.start_kxdp(&t.write_objects(&[]));
    // kxdp asks for the pod (the ping waits for it)...
    let target = pod.ip.to_string();
    let _ping = t.spawn(&client.ns, "ping", &["ping", "-c", "1", "-W", "1", &target]);
    std::thread::sleep(Duration::from_millis(100));
    // ...and the node's kernel a moment later: its answer must not go to kxdp.
    let url = format!("http://{}:{HTTP_PORT}/", pod.ip);
    let body = t
        .curl(&t.node1, &["--max-time", "1", &url])
        .unwrap_or_else(|e| panic!("the node's own connection to the pod: {}", e.message));
    assert!(body.contains(&format!("backend={}", pod.ip)), "{body}");
}

#[test]
fn pods_that_come_and_go_are_served_through_their_routes() {
    let name = "pods_that_come_and_go_are_served_through_their_routes";
    if !available(name) {
        return;
    }
    // Three slots for three pods: the pod created again takes the slot it left.
    pods_come_and_go(&Topology::new(name, &[10, 11, 12], &[]), 1, "3");
}

#[test]
fn arp_for_a_pod_found_in_the_routes_goes_out_of_its_interface_only() {
    let name = "arp_for_a_pod_found_in_the_routes_goes_out_of_its_interface_only";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11, 12], &[]);
    let (client, bystander, server) = (t.pod(1, 10), t.pod(1, 11), t.pod(1, 12));
    let _http = t.server(server, "http", HTTP_SERVER, HTTP_PORT);
    let objects = t.write_objects(&[]);
    let path = objects.to_str().expect("utf-8 path");
    let _kxdp = t.start_kxdp_with(&["--objects", path, "--pod-routes"]);
    // What reaches the bystander pod: ARP only (IPv6 from the node is no matter).
    let mut capture = t.spawn(
        &bystander.ns,
        "tcpdump",
        &["timeout", "2", "tcpdump", "-l", "-nn", "-i", "eth0", "arp"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // The server has not spoken: kxdp asks for its MAC, through n1p12 only.
    let r = t.http_get(&client.ns, &format!("http://{}:{HTTP_PORT}/", server.ip));
    assert_eq!(r.backend, server.ip, "{r:?}");
    let (_, lines) = capture.wait_exit(Duration::from_secs(5)).unwrap();
    let asked: Vec<_> = lines.iter().filter(|l| l.contains("198.18.1.12")).collect();
    assert!(
        asked.is_empty(),
        "ARP for the server reached the bystander: {asked:?}"
    );
}

#[test]
fn a_pod_beyond_max_pods_is_reported_unserved() {
    let name = "a_pod_beyond_max_pods_is_reported_unserved";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[]);
    let objects = t.write_objects(&[]);
    let path = objects.to_str().expect("utf-8 path");
    let args = ["--objects", path, "--pod-routes", "--max-pods", "1"];
    let kxdp = t.start_kxdp_with(&args);
    let metrics = node1_metrics(&t);
    assert_eq!(
        sample(&metrics, "kxdp_pod_interfaces"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kxdp_pod_interfaces_unserved"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        kxdp.log().contains("all 1 --max-pods slots are taken"),
        "{}",
        kxdp.log()
    );
}

#[test]
fn pods_that_come_and_go_are_served_by_two_workers_through_the_one_with_their_queue() {
    let name = "pods_that_come_and_go_are_served_by_two_workers_through_the_one_with_their_queue";
    if !available(name) {
        return;
    }
    let t = Topology::with_queues_on(name, &[10, 11, 12], &[], 2, 1);
    pods_come_and_go(&t, 2, "110");
}

/// Pod 12 is created after kxdp starts, becomes the Service's backend (also through
/// a NodePort: with two workers, worker 1 takes some of those connections and
/// transmits to the pod through worker 0), is deleted and created again; kxdp finds
/// each change in the routes (`--pod-routes`).
fn pods_come_and_go(t: &Topology, workers: u32, max_pods: &str) {
    let (client, first, late) = (t.pod(1, 10), t.pod(1, 11), t.pod(1, 12));
    // Pod 12 does not exist yet when kxdp starts.
    t.unplug(late);
    let _s1 = t.server(first, "http-first", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 10], 80, HTTP_PORT).node_port(30082, false);
    let objects = t.write_objects(&[web.clone().endpoints(&[first])]);
    let queues = workers.to_string();
    let kxdp = t.start_kxdp_with(&[
        "--objects",
        objects.to_str().expect("utf-8 path"),
        "--pod-routes",
        "--queues",
        &queues,
        "--max-pods",
        max_pods,
    ]);
    let served = "pod interface served";
    kxdp.wait_log(served, 2, Duration::from_secs(10));
    // Only kxdp translates Service addresses: an answer means it serves both pods.
    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, first.ip, "{r:?}");

    // The pod is created: served as a client, then as the Service's backend.
    t.plug(late);
    kxdp.wait_log(served, 3, Duration::from_secs(10));
    let r = t.http_get(&late.ns, &web.cluster_url());
    assert_eq!((r.backend, *r.client.ip()), (first.ip, late.ip), "{r:?}");
    let _s2 = t.server(late, "http-late", HTTP_SERVER, HTTP_PORT);
    let reloads = kxdp.count("objects reloaded");
    t.write_objects(&[web.clone().endpoints(&[late])]);
    kxdp.wait_log("objects reloaded", reloads + 1, Duration::from_secs(10));
    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, late.ip, "{r:?}");
    let node_port = format!("http://{NODE1_IP}:30082/");
    // Enough connections that some hash to the uplink's queue 1 (worker 1).
    for r in requests(t, &t.client, &node_port, 24, &kxdp) {
        assert_eq!(r.backend, late.ip, "{r:?}");
    }
    let metrics = node1_metrics(t);
    assert_eq!(
        sample(&metrics, "kxdp_pod_interfaces"),
        Some(3.0),
        "{metrics}"
    );
    if workers > 1 {
        let handed = sample(&metrics, "kxdp_tx_handed_total{worker=\"1\"}").unwrap_or(0.0);
        assert!(
            handed > 0.0,
            "worker 1 handed nothing to transmit:\n{metrics}"
        );
    }

    // Deleted with frames in its rings; then created again (in the slot it left when
    // there are only three).
    t.unplug(late);
    kxdp.wait_log("pod interface gone", 1, Duration::from_secs(10));
    t.write_objects(&[web.clone().endpoints(&[first])]);
    kxdp.wait_log("objects reloaded", reloads + 2, Duration::from_secs(10));
    let r = t.http_get(&client.ns, &web.cluster_url());
    assert_eq!(r.backend, first.ip, "{r:?}");
    t.plug(late);
    kxdp.wait_log(served, 4, Duration::from_secs(10));
    let r = t.http_get(&late.ns, &web.cluster_url());
    assert_eq!(r.backend, first.ip, "{r:?}");

    let (status, log) = kxdp.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    // The removed pod's socket gave back the frames it held.
    assert!(log.contains("all frames accounted for"), "{log}");
}

#[test]
fn a_large_tcp_transfer_through_vxlan_survives_pmtu() {
    let name = "a_large_tcp_transfer_through_vxlan_survives_pmtu";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[10]);
    let (sender, receiver) = (t.pod(1, 10), t.pod(2, 10));
    // Pods and underlay both have MTU 1500; VXLAN needs 50 bytes, so full-size TCP
    // segments (DF set, Linux's default) only fit once kxdp has answered
    // "fragmentation needed" and the sender has lowered its path MTU.
    assert!(t.link(&sender.ns, "eth0").contains("mtu 1500"));
    assert!(t.link(&t.node1, netns::UPLINK).contains("mtu 1500"));
    let mut sink = t.server(receiver, "sink", SINK_SERVER, 9000);
    let _kxdp = t.start_kxdp(&t.write_objects(&[]));

    const MIB: usize = 8;
    let started = Instant::now();
    let mut up = t.python(
        &sender.ns,
        "upload",
        UPLOAD_CLIENT,
        &[&receiver.ip.to_string(), "9000", &MIB.to_string()],
    );
    let (status, lines) = up.wait_exit(Duration::from_secs(20)).unwrap();
    let took = started.elapsed();
    assert!(status.success(), "upload failed ({status}): {lines:?}");
    let bytes = MIB << 20;
    assert_eq!(lines, [format!("acked {bytes}")], "{took:?}");
    sink.wait_line(
        |l| l == format!("received {bytes} from {}", sender.ip),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let route = t.exec(
        &sender.ns,
        &["ip", "route", "get", &receiver.ip.to_string()],
    );
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1450"),
        "the sender should have learned the 1450-byte path MTU from kxdp: {route}"
    );
    eprintln!("{name}: {MIB} MiB in {took:?}");
}

/// The XDP attachment `ip -d link show` reports, if any.
fn xdp_attachment(link: &str) -> Option<&str> {
    link.split_whitespace()
        .find(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
}

#[test]
fn kxdp_detaches_from_every_interface_on_sigint_and_exits_zero() {
    let name = "kxdp_detaches_from_every_interface_on_sigint_and_exits_zero";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[]);
    let kxdp = t.start_kxdp(&t.write_objects(&[]));
    for dev in t.node1_ifaces() {
        let link = t.link(&t.node1, &dev);
        assert!(
            xdp_attachment(&link).is_some(),
            "kxdp runs but {dev} has no XDP program: {link}"
        );
    }
    // Traffic through it, so there are frames in flight to account for.
    let _s = t.server(t.pod(1, 11), "http", HTTP_SERVER, HTTP_PORT);
    t.http_get(
        &t.pod(1, 10).ns,
        &format!("http://198.18.1.11:{HTTP_PORT}/"),
    );

    let (status, log) = kxdp.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "kxdp exit {status:?} after SIGINT:\n{log}"
    );
    assert!(log.contains("all frames accounted for"), "{log}");
    for dev in t.node1_ifaces() {
        let link = t.link(&t.node1, &dev);
        assert_eq!(
            xdp_attachment(&link),
            None,
            "{dev} still has XDP after exit: {link}"
        );
    }
    // Nothing left behind swallows the pods' traffic: the node's kernel answers them.
    let out = t.exec(&t.pod(1, 10).ns, &["ping", "-c1", "-W2", "169.254.1.1"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded_to_the_node() {
    let name = "a_pod_reaching_itself_through_its_service_is_masqueraded_to_the_node";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[]);
    let pod = t.pod(1, 10);
    let _http = t.server(pod, "http", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 16], 80, HTTP_PORT).endpoints(&[pod]);
    let _kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));

    // Without masquerade the pod would answer itself directly, from its own address,
    // and the connection to the ClusterIP would never complete (kube-proxy's hairpin
    // masquerade does the same).
    let r = t.http_get(&pod.ns, &web.cluster_url());
    assert_eq!(r.backend, pod.ip, "{r:?}");
    assert_eq!(*r.client.ip(), NODE1_SNAT_IP, "{r:?}");
}

#[test]
fn a_service_without_endpoints_refuses_connections_at_once() {
    let name = "a_service_without_endpoints_refuses_connections_at_once";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[]);
    let empty = Service::tcp("empty", [198, 19, 0, 17], 80, HTTP_PORT);
    let _kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&empty)));

    // kxdp answers ICMP port unreachable (kube-proxy's REJECT): curl fails with
    // "couldn't connect" (exit 7) at once, not after its 5 s connect timeout.
    let started = Instant::now();
    let err = t
        .curl(&t.pod(1, 10).ns, &[&empty.cluster_url()])
        .expect_err("a Service without endpoints answered");
    assert_eq!(err.code, Some(7), "{}", err.message);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusal took {:?}: {}",
        started.elapsed(),
        err.message
    );
}

#[test]
fn replies_landing_on_another_workers_queue_are_still_translated() {
    let name = "replies_landing_on_another_workers_queue_are_still_translated";
    if !available(name) {
        return;
    }
    // Two queues on every node1 veth and two kxdp workers: a pod picks its TX queue
    // by flow hash, so a request and its reply (different sockets, different
    // hashes) land on either worker about half the time each.
    let t = Topology::with_queues(name, &[10, 11, 12], &[10], 2);
    let client = t.pod(1, 10);
    let backends = [t.pod(1, 11), t.pod(1, 12), t.pod(2, 10)];
    let _servers: Vec<_> = backends
        .iter()
        .map(|b| t.server(b, "http", HTTP_SERVER, HTTP_PORT))
        .collect();
    let web = Service::tcp("web", [198, 19, 0, 13], 80, HTTP_PORT).endpoints(&backends);
    let kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));
    const N: usize = 60;
    let base = format!("http://{}:{}/", web.cluster_ip, web.port);
    for r in requests(&t, &client.ns, &base, N, &kxdp) {
        assert_eq!(*r.client.ip(), client.ip, "{r:?}");
    }
    // Success alone could hide lost replies behind retransmissions (a retried SYN may
    // happen to land on the right queue): without handoff about half the handshakes
    // needed one. With it, none should.
    let syn = net_counter(&t, &client.ns, "TcpExtTCPSynRetrans");
    let synack: u64 = backends
        .iter()
        .map(|b| net_counter(&t, &b.ns, "TcpRetransSegs"))
        .sum();
    assert!(
        syn + synack < 5,
        "{syn} SYN and {synack} server retransmissions for {N} connections: replies were lost\n{}",
        kxdp.log()
    );
}

/// `n` HTTP requests from namespace `ns` to `base` (`[1-n]` appended), a new
/// connection each (the test server closes them); their replies, every one parsed.
fn requests(t: &Topology, ns: &str, base: &str, n: usize, kxdp: &netns::Kxdp) -> Vec<Reply> {
    let url = format!("{base}[1-{n}]");
    let body = t
        .curl_within(ns, &["--max-time", "5", &url], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, kxdp.log()));
    let replies: Vec<Reply> = Reply::parse_all(&body).into_iter().flatten().collect();
    assert_eq!(replies.len(), n, "{body}");
    replies
}

/// A counter of the network stack in namespace `ns` (`nstat`), e.g. retransmissions.
fn net_counter(t: &Topology, ns: &str, counter: &str) -> u64 {
    let out = t.exec(ns, &["nstat", "-az", counter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(counter)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Frames on a queue kxdp does not serve are the kernel's. node1's veths have two
/// queues and kxdp serves queue 0 only; a pod picks its TX queue by flow hash, so
/// about half the connections between two pods on node1 travel through node1's
/// kernel, which must get them: the steering program's key for queue 1 would be the
/// next interface's queue 0, whose socket the kernel refuses to deliver to (the frame
/// would be dropped, and the connection would stall until a retransmission happened
/// to pick queue 0).
#[test]
fn frames_on_queues_kxdp_does_not_serve_are_left_to_the_kernel() {
    let name = "frames_on_queues_kxdp_does_not_serve_are_left_to_the_kernel";
    if !available(name) {
        return;
    }
    let t = Topology::with_queues(name, &[10, 11], &[], 2);
    let (client, server) = (t.pod(1, 10), t.pod(1, 11));
    let _http = t.server(server, "http", HTTP_SERVER, HTTP_PORT);
    t.exec(&t.node1, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // A Service with both pods as endpoints makes kxdp resolve their MACs as it
    // starts: a frame kxdp must first ARP for is dropped, which would add a
    // retransmission of its own.
    let both = Service::tcp("both", [198, 19, 0, 10], 80, HTTP_PORT).endpoints(&[client, server]);
    let objects = t.write_objects(&[both]);
    let kxdp = t.start_kxdp_with(&[
        "--objects",
        objects.to_str().expect("utf-8 path"),
        "--queues",
        "1",
    ]);
    // Neighbours first: kxdp and node1's kernel both ARP for the pods as this starts,
    // and a reply kxdp asked for goes to kxdp only, so the kernel's first connection
    // may wait a second for its own ARP retry.
    let url = format!("http://{}:{HTTP_PORT}/", server.ip);
    t.curl_within(
        &client.ns,
        &["--max-time", "5", &url],
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{}\n{}", e.message, kxdp.log()));
    std::thread::sleep(Duration::from_millis(1500));
    let lost = || {
        net_counter(&t, &client.ns, "TcpExtTCPSynRetrans")
            + net_counter(&t, &server.ns, "TcpRetransSegs")
    };
    let before = lost();
    // A new connection each (the server closes them): 2^-20 that all take queue 0.
    const N: usize = 20;
    requests(&t, &client.ns, &url, N, &kxdp);
    let retransmitted = lost() - before;
    assert_eq!(
        retransmitted,
        0,
        "SYN and server retransmissions for {N} connections: frames were lost\n{}",
        kxdp.log()
    );
}

/// More pods than the steering program once had room for (its socket map was sized
/// for 16 interfaces): kxdp starts, and serves the pods on the last interfaces.
#[test]
fn a_node_with_twenty_pods_is_served_on_every_interface() {
    let name = "a_node_with_twenty_pods_is_served_on_every_interface";
    if !available(name) {
        return;
    }
    let hosts: Vec<u8> = (10..30).collect();
    let t = Topology::new(name, &hosts, &[]);
    let backend = t.pod(1, 10);
    let _http = t.server(backend, "http", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 10], 80, HTTP_PORT).endpoints(&[backend]);
    let _kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));
    for h in [20, 29] {
        let r = t.http_get(&t.pod(1, h).ns, &web.cluster_url());
        assert_eq!(r.backend, backend.ip, "from pod {h}: {r:?}");
    }
}

/// kxdp's `/metrics` on node1.
fn node1_metrics(t: &Topology) -> String {
    t.curl(&t.node1, &["http://127.0.0.1:10249/metrics"])
        .unwrap_or_else(|e| panic!("{}", e.message))
}

/// The value of an unlabelled sample in Prometheus text, e.g. a histogram's `_count`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn kxdp_run_against_the_api_server_serves_a_cluster_ip_and_follows_a_watched_endpoint_change() {
    let name =
        "kxdp_run_against_the_api_server_serves_a_cluster_ip_and_follows_a_watched_endpoint_change";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11, 12], &[]);
    let (client, first, second) = (t.pod(1, 10), t.pod(1, 11), t.pod(1, 12));
    let _s1 = t.server(first, "http-first", HTTP_SERVER, HTTP_PORT);
    let _s2 = t.server(second, "http-second", HTTP_SERVER, HTTP_PORT);
    // The API server where kxdp can reach it: on node1's loopback.
    let api = ApiDouble::start_in_netns(&t.node1);
    api.apply(&apidouble::node(1));
    api.apply(&apidouble::node(2));
    api.apply(&apidouble::service("web", "198.19.0.10"));
    api.apply(&apidouble::slice("web-1", "web", &["198.18.1.11"]));
    let kubeconfig = api.kubeconfig();
    let kxdp = t.start_kxdp_with(&[
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
        "--min-sync-period",
        "100ms",
    ]);
    let url = "http://198.19.0.10:80/";
    let r = t.http_get(&client.ns, url);
    assert_eq!(r.backend, first.ip, "{r:?}\n{}", kxdp.log());
    assert_eq!(*r.client.ip(), client.ip, "{r:?}");

    // The endpoint moves to the second pod; kxdp hears it on its open watch.
    let lists = api.lists(Res::Slices);
    api.apply(&apidouble::slice("web-1", "web", &["198.18.1.12"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = t.http_get(&client.ns, url);
        if r.backend == second.ip {
            break;
        }
        assert_eq!(r.backend, first.ip, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "the new backend never served:\n{}",
            kxdp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        api.lists(Res::Slices),
        lists,
        "the change came as a watch event, not a relist"
    );

    // The change is in the latency histograms; health is current.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = node1_metrics(&t);
        if sample(&metrics, "kxdp_network_programming_duration_seconds_count")
            .is_some_and(|n| n >= 1.0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let count = sample(&metrics, "kxdp_network_programming_duration_seconds_count");
    let sum = sample(&metrics, "kxdp_network_programming_duration_seconds_sum");
    assert!(count.is_some_and(|n| n >= 1.0), "{metrics}");
    let syncs = sample(&metrics, "kxdp_sync_proxy_rules_duration_seconds_count");
    assert!(
        syncs.is_some_and(|n| n >= 2.0),
        "the first snapshot and the change: {metrics}"
    );
    eprintln!(
        "{name}: network programming {count:?} changes, {sum:?} s in all; syncs {syncs:?}, {:?} s in all",
        sample(&metrics, "kxdp_sync_proxy_rules_duration_seconds_sum")
    );
    for path in ["healthz", "livez"] {
        let code = t
            .curl(
                &t.node1,
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://127.0.0.1:10256/{path}"),
                ],
            )
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(code, "200", "/{path}");
    }
}

/// Runs a client subcommand with `--output json` and parses what it printed.
fn client_json(kxdp: &netns::Kxdp, args: &[&str]) -> serde_json::Value {
    let mut argv = args.to_vec();
    argv.extend(["--output", "json"]);
    let out = kxdp.client(&argv);
    assert!(
        out.status.success(),
        "kxdp {argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kxdp {argv:?} printed no JSON ({e}): {out:?}"))
}

#[test]
fn services_flows_and_explain_show_the_traffic_kxdp_forwarded() {
    let name = "services_flows_and_explain_show_the_traffic_kxdp_forwarded";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10, 11], &[10]);
    let (client, local, remote) = (t.pod(1, 10), t.pod(1, 11), t.pod(2, 10));
    let _s1 = t.server(local, "http-local", HTTP_SERVER, HTTP_PORT);
    let _s2 = t.server(remote, "http-remote", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 10], 80, HTTP_PORT).endpoints(&[local, remote]);
    let kxdp = t.start_kxdp(&t.write_objects(std::slice::from_ref(&web)));
    assert!(kxdp.admin_socket.exists());

    // Twelve connections from fixed source ports: fixed tuples, so which backend each
    // gets is fixed too (Maglev), and both backends are used.
    const PORTS: std::ops::Range<u16> = 41000..41012;
    let mut used: BTreeMap<u16, Ipv4Addr> = BTreeMap::new();
    for port in PORTS {
        let body = t
            .curl(
                &client.ns,
                &["--local-port", &port.to_string(), &web.cluster_url()],
            )
            .unwrap_or_else(|e| panic!("{}", e.message));
        let r = Reply::parse_all(&body)[0].unwrap_or_else(|| panic!("reply {body:?}"));
        assert_eq!(r.client, SocketAddrV4::new(client.ip, port));
        used.insert(port, r.backend);
    }
    let backends: std::collections::BTreeSet<_> = used.values().collect();
    assert_eq!(backends.len(), 2, "both backends served: {used:?}");

    // kxdp services: the Service port, its backends and where they are, and the
    // traffic (workers publish every 10 ms).
    let mut svc = serde_json::Value::Null;
    for _ in 0..50 {
        let list = client_json(&kxdp, &["services"]);
        svc = list
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == "default/web:p"))
            .cloned()
            .unwrap_or_else(|| panic!("default/web:p missing from {list}"));
        if svc["new_flows"] == 12 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(svc["new_flows"], 12, "{svc}");
    // A connection is at least SYN, SYN-ACK, ACK, request, reply, FINs and ACKs.
    let packets = svc["packets"].as_u64().unwrap();
    assert!(packets >= 12 * 8, "{svc}");
    assert_eq!(svc["frontends"][0]["address"], "198.19.0.10:80", "{svc}");
    let where_: BTreeMap<String, (String, serde_json::Value)> = svc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                (
                    b["location"].as_str().unwrap().to_owned(),
                    b["node"].clone(),
                ),
            )
        })
        .collect();
    assert_eq!(where_["198.18.1.11:8080"].0, "local", "{svc}");
    assert_eq!(
        where_["198.18.2.10:8080"],
        ("remote".into(), "node2".into()),
        "{svc}"
    );
    let table = String::from_utf8_lossy(&kxdp.client(&["services"]).stdout).into_owned();
    assert!(table.starts_with("SERVICE PORT"), "{table}");
    assert!(table.contains("default/web:p"), "{table}");
    assert!(
        table.contains("198.18.2.10:8080 (node2 via 198.19.128.2)"),
        "{table}"
    );

    // kxdp flows: every connection with the backend it really used.
    let src = client.ip.to_string();
    let flows = client_json(
        &kxdp,
        &[
            "flows",
            "--service",
            "default/web",
            "--src",
            &src,
            "--proto",
            "tcp",
        ],
    );
    let listed = flows["flows"].as_array().unwrap();
    assert_eq!(flows["matched"], 12, "{flows}");
    for (port, backend) in &used {
        let f = listed
            .iter()
            .find(|f| f["original"]["src"] == format!("{}:{port}", client.ip))
            .unwrap_or_else(|| panic!("no flow from port {port} in {flows}"));
        assert_eq!(f["original"]["dst"], "198.19.0.10:80", "{f}");
        assert_eq!(f["backend"], format!("{backend}:{HTTP_PORT}"), "{f}");
        assert_eq!(
            f["translated"]["dst"],
            format!("{backend}:{HTTP_PORT}"),
            "{f}"
        );
        assert_eq!(f["service"], "default/web:p", "{f}");
    }
    let to_remote = client_json(&kxdp, &["flows", "--dst", "198.18.2.10"]);
    let n_remote = used.values().filter(|b| **b == remote.ip).count();
    assert_eq!(to_remote["matched"], n_remote, "{to_remote}");
    let limited = client_json(&kxdp, &["flows", "--limit", "3"]);
    assert_eq!(limited["flows"].as_array().unwrap().len(), 3, "{limited}");

    // kxdp explain: names the backend each connection used, and where it is.
    for (port, backend) in &used {
        let src = format!("{}:{port}", client.ip);
        let e = client_json(&kxdp, &["explain", "tcp", &src, "198.19.0.10:80"]);
        assert_eq!(e["verdict"], "backend", "{e}");
        assert_eq!(e["service"], "default/web:p", "{e}");
        assert_eq!(e["frontend"], "ClusterIP", "{e}");
        assert_eq!(
            e["backend"]["address"],
            format!("{backend}:{HTTP_PORT}"),
            "{e}"
        );
        let location = if *backend == remote.ip {
            "remote"
        } else {
            "local"
        };
        assert_eq!(e["backend"]["location"], location, "{e}");
        assert!(e["maglev_slot"].as_u64().unwrap() < e["maglev_table_size"].as_u64().unwrap());
    }
    let text = kxdp.client(&["explain", "tcp", "198.18.1.10:41000", "198.19.0.10:80"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("maglev slot") && text.contains("why"),
        "{text}"
    );
    let nothing = client_json(
        &kxdp,
        &["explain", "udp", "198.18.1.10:41000", "198.19.0.10:80"],
    );
    assert_eq!(nothing["verdict"], "no_service", "{nothing}");

    // /metrics: the per-Service counters moved.
    let metrics = node1_metrics(&t);
    let label = "{service_port=\"default/web:p\"}";
    let new_flows = sample(&metrics, &format!("kxdp_service_new_flows_total{label}"));
    assert_eq!(new_flows, Some(12.0), "{metrics}");
    let pkts = sample(&metrics, &format!("kxdp_service_packets_total{label}"));
    assert!(pkts.is_some_and(|p| p >= packets as f64), "{metrics}");

    let socket = kxdp.admin_socket.clone();
    let (status, log) = kxdp.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(!socket.exists(), "the admin socket is removed on exit");
}

/// Settings kxdp cannot serve are refused before anything is attached, with a
/// message naming what is wrong: an interface that does not exist, a queue it does
/// not have, a ring size that is not a power of two, and MTUs whose frames do not
/// fit the UMEM's frames (one that would with `--frame-size 4096`, one that never
/// would).
#[test]
fn kxdp_run_refuses_bad_settings_before_attaching_anything() {
    let name = "kxdp_run_refuses_bad_settings_before_attaching_anything";
    if !available(name) {
        return;
    }
    let t = Topology::new(name, &[10], &[]);
    let objects = t.write_objects(&[]);
    let admin = t.dir.join("admin.sock");
    let pod_if = t.pod(1, 10).host_if.clone();
    t.exec(&t.node1, &["ip", "link", "set", &pod_if, "mtu", "1800"]);
    let refused = |extra: &[&str], expected: &str| {
        let mut argv = vec![env!("CARGO_BIN_EXE_kxdp"), "run", "--objects"];
        argv.push(objects.to_str().expect("utf-8 path"));
        argv.extend(["--node-name", "node1", "--admin-socket"]);
        argv.push(admin.to_str().expect("utf-8 path"));
        argv.extend(extra);
        let out = t.exec_within(&t.node1, &argv, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        for iface in [netns::UPLINK, pod_if.as_str()] {
            let link = t.link(&t.node1, iface);
            assert!(
                !link.contains("xdp"),
                "{extra:?} attached XDP to {iface}: {link}"
            );
        }
    };
    let uplink = ["--uplink", netns::UPLINK, "--pod-iface", &pod_if];
    refused(
        &["--uplink", "nosuch0", "--pod-iface", &pod_if],
        "interface nosuch0 does not exist",
    );
    refused(
        &[&uplink[..], &["--queues", "2"]].concat(),
        "has no queue 1",
    );
    refused(
        &[&uplink[..], &["--ring-size", "3000"]].concat(),
        "--ring-size 3000 is not a power of two",
    );
    // 1814-byte frames: more than a 2048-byte frame holds after the headroom.
    refused(
        &uplink,
        &format!(
            "interface {pod_if} has MTU 1800: its 1814-byte frames do not fit --frame-size 2048"
        ),
    );
    t.exec(&t.node1, &["ip", "link", "set", &pod_if, "mtu", "9000"]);
    refused(
        &[&uplink[..], &["--frame-size", "4096"]].concat(),
        "jumbo frames are not supported yet",
    );
}

/// More fill rings than frames to fill them all: every interface still gets its
/// share, so pods on the last interfaces are served too (each fill ring once took
/// all the free frames it had room for, and the first interfaces took them all).
#[test]
fn pods_on_every_interface_are_served_when_the_rings_could_hold_more_frames_than_there_are() {
    let name =
        "pods_on_every_interface_are_served_when_the_rings_could_hold_more_frames_than_there_are";
    if !available(name) {
        return;
    }
    // The uplink and five pods: six fill rings of 1024 against 4096 frames.
    let t = Topology::new(name, &[10, 11, 12, 13, 14], &[]);
    let backend = t.pod(1, 10);
    let _http = t.server(backend, "http", HTTP_SERVER, HTTP_PORT);
    let web = Service::tcp("web", [198, 19, 0, 10], 80, HTTP_PORT).endpoints(&[backend]);
    let objects = t.write_objects(std::slice::from_ref(&web));
    let objects = objects.to_str().expect("utf-8 path");
    let _kxdp = t.start_kxdp_with(&[
        "--objects",
        objects,
        "--frames",
        "4096",
        "--ring-size",
        "1024",
    ]);
    for h in [11, 12, 13, 14] {
        let r = t.http_get(&t.pod(1, h).ns, &web.cluster_url());
        assert_eq!(r.backend, backend.ip, "from pod {h}: {r:?}");
    }
}
