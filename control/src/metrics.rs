//! `/metrics` in Prometheus text format, read from what the workers publish (every
//! 10 ms, never per packet) at scrape time. Names follow Prometheus conventions;
//! drop reasons come from `DropReason::name`, not strings sprinkled in code.
//!
//! The sync latency histograms ([`SyncMetrics`]) are kube-proxy's
//! `sync_proxy_rules_duration_seconds` and `network_programming_duration_seconds`
//! with a `kxdp_` prefix; the run loop records them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use kxdp_dataplane::snapshot::Snapshot;
use kxdp_dataplane::verdict::{Counters, DropReason};
use kxdp_dataplane::worker::WorkerStatus;
use kxdp_dataplane::xsk::port::SocketStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct DataplaneMetrics {
    pub workers: Vec<Arc<Mutex<WorkerStatus>>>,
    /// The newest snapshot generation published to the workers.
    pub generation: Arc<AtomicU64>,
    /// The published snapshot: names the Service ports of the per-Service counters.
    pub snapshot: Option<Arc<ArcSwap<Snapshot>>>,
}

type Labels = Vec<(&'static str, String)>;
type Rows = Vec<(Labels, u64)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for DataplaneMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| w.lock().map(|s| s.clone()).unwrap_or_default())
            .collect();
        let per_worker = |f: &dyn Fn(&Counters) -> u64| -> Vec<(Labels, u64)> {
            status
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![("worker", i.to_string())], f(&s.counters)))
                .collect()
        };
        counter(
            &mut enc,
            "kxdp_rx_packets",
            "Frames the workers received.",
            &per_worker(&|c| c.rx),
        )?;
        counter(
            &mut enc,
            "kxdp_tx_packets",
            "Frames the workers transmitted.",
            &per_worker(&|c| c.tx),
        )?;
        counter(
            &mut enc,
            "kxdp_passed_packets",
            "Frames the pipeline left to the kernel.",
            &per_worker(&|c| c.pass),
        )?;
        let drops: Vec<(Labels, u64)> = status
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        vec![("worker", i.to_string()), ("reason", r.name().to_string())],
                        s.counters.drop_count(*r),
                    )
                })
            })
            .collect();
        counter(
            &mut enc,
            "kxdp_dropped_packets",
            "Frames dropped, by reason.",
            &drops,
        )?;
        counter(
            &mut enc,
            "kxdp_rejected_connections",
            "Connections to Services without endpoints refused with ICMP port unreachable.",
            &per_worker(&|c| c.rejected),
        )?;
        counter(
            &mut enc,
            "kxdp_frag_needed_sent",
            "ICMP fragmentation-needed sent for packets too big after VXLAN.",
            &per_worker(&|c| c.frag_needed),
        )?;
        counter(
            &mut enc,
            "kxdp_vxlan_encapsulated",
            "Frames encapsulated.",
            &per_worker(&|c| c.encapsulated),
        )?;
        counter(
            &mut enc,
            "kxdp_vxlan_decapsulated",
            "Frames decapsulated.",
            &per_worker(&|c| c.decapsulated),
        )?;
        counter(
            &mut enc,
            "kxdp_new_flows",
            "Service flows created.",
            &per_worker(&|c| c.new_flows),
        )?;
        counter(
            &mut enc,
            "kxdp_handoffs",
            "Frames handed to the worker owning their flow.",
            &per_worker(&|c| c.handoffs),
        )?;
        counter(
            &mut enc,
            "kxdp_tx_handed",
            "Frames handed to another worker to transmit, on a port with no queue for this one.",
            &per_worker(&|c| c.handed_tx),
        )?;
        counter(
            &mut enc,
            "kxdp_held_for_neighbour",
            "Frames held while their next hop's MAC was asked for (ARP), then sent, or dropped as neighbour_unknown.",
            &per_worker(&|c| c.held_for_neighbour),
        )?;
        counter(
            &mut enc,
            "kxdp_rx_batches",
            "RX batches that brought frames (rx_packets / rx_batches is the mean batch size).",
            &status
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![("worker", i.to_string())], s.rx_batches))
                .collect::<Rows>(),
        )?;
        let per_socket = |f: &dyn Fn(&SocketStats) -> u64| -> Rows {
            status
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.sockets.iter().map(move |k| {
                        (
                            vec![("worker", i.to_string()), ("interface", k.iface.clone())],
                            f(k),
                        )
                    })
                })
                .collect()
        };
        counter(
            &mut enc,
            "kxdp_xsk_rx_dropped",
            "Frames the kernel could not place in a worker's UMEM (no free frame, or too long): lost before kxdp saw them.",
            &per_socket(&|k| k.rx_dropped),
        )?;
        counter(
            &mut enc,
            "kxdp_xsk_rx_ring_full",
            "Frames lost because a socket's RX ring was full: the worker fell behind.",
            &per_socket(&|k| k.rx_ring_full),
        )?;
        counter(
            &mut enc,
            "kxdp_xsk_fill_ring_empty",
            "Times the kernel found a socket's fill ring empty.",
            &per_socket(&|k| k.fill_ring_empty),
        )?;
        counter(
            &mut enc,
            "kxdp_xsk_invalid_descriptors",
            "Descriptors the kernel rejected (ring=rx or tx): a kxdp bug if ever non-zero.",
            &status
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.sockets.iter().flat_map(move |k| {
                        [("rx", k.rx_invalid), ("tx", k.tx_invalid)].map(|(ring, v)| {
                            (
                                vec![
                                    ("worker", i.to_string()),
                                    ("interface", k.iface.clone()),
                                    ("ring", ring.to_string()),
                                ],
                                v,
                            )
                        })
                    })
                })
                .collect::<Rows>(),
        )?;
        let flows: Vec<(Labels, i64)> = status
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("worker", i.to_string())], s.flows as i64))
            .collect();
        gauge(
            &mut enc,
            "kxdp_flows",
            "Flows in each worker's conntrack table.",
            &flows,
        )?;
        let generations: Vec<(Labels, i64)> = status
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("worker", i.to_string())], s.generation as i64))
            .collect();
        gauge(
            &mut enc,
            "kxdp_worker_snapshot_generation",
            "Snapshot generation each worker forwards with.",
            &generations,
        )?;
        if let Some(snap) = &self.snapshot {
            // Summed over workers by the Service port's stable id, named from the
            // current snapshot (a port gone from it is no longer reported).
            let totals = crate::inspect::service_totals(&self.workers);
            let snap = snap.load();
            let (packets, new_flows): (Rows, Rows) = snap
                .services()
                .iter()
                .map(|s| {
                    let (p, n) = totals.get(&s.id_hash).copied().unwrap_or_default();
                    let labels = vec![("service_port", s.spec.name.clone())];
                    ((labels.clone(), p), (labels, n))
                })
                .unzip();
            counter(
                &mut enc,
                "kxdp_service_packets",
                "Packets of each Service port's flows (both directions), and first packets that found no backend.",
                &packets,
            )?;
            counter(
                &mut enc,
                "kxdp_service_new_flows",
                "Flows created for each Service port.",
                &new_flows,
            )?;
        }
        gauge(
            &mut enc,
            "kxdp_snapshot_generation",
            "Newest snapshot generation published.",
            &[(vec![], self.generation.load(Ordering::Relaxed) as i64)],
        )?;
        Ok(())
    }
}

/// How long snapshots take to build and to reach the workers (clones share the
/// histograms).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Building and publishing one snapshot: load, translate, steering map update,
    /// swap.
    pub sync_duration: Histogram,
    /// From a change being noticed (objects file modified, SIGHUP, an API watch event)
    /// to every worker forwarding with a snapshot that includes it.
    pub programming_duration: Histogram,
    /// 1 while an API watch is failing: health does not turn on it (endpoints.rs),
    /// so this is what to alert on.
    pub watches_failing: Gauge,
    /// Pod interfaces served through `--pod-routes` (those named with `--pod-iface`
    /// are not counted).
    pub pod_interfaces: Gauge,
    /// Pod interfaces in the routes that kxdp could not serve.
    pub pod_interfaces_unserved: Gauge,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics {
            // 100 µs to 3.3 s: a one-endpoint change is sub-millisecond, 10,000
            // Services from nothing tens of milliseconds.
            sync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 ms to 65 s: includes the --min-sync-period batching (1 s by default),
            // and a change that waits for a failed reload to be fixed.
            programming_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            watches_failing: Gauge::default(),
            pod_interfaces: Gauge::default(),
            pod_interfaces_unserved: Gauge::default(),
        }
    }
}

/// A registry with the dataplane collector and the sync histograms, ready to encode.
pub fn registry(m: DataplaneMetrics, sync: &SyncMetrics) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(m));
    r.register(
        "kxdp_sync_proxy_rules_duration_seconds",
        "Time to build and publish a snapshot (kube-proxy's sync_proxy_rules_duration_seconds).",
        sync.sync_duration.clone(),
    );
    r.register(
        "kxdp_network_programming_duration_seconds",
        "Time from an object change being noticed to every worker using a snapshot with it \
         (kube-proxy's network_programming_duration_seconds).",
        sync.programming_duration.clone(),
    );
    r.register(
        "kxdp_api_watches_failing",
        "1 while a watch of the API server is failing (kxdp keeps forwarding with the \
         objects it last got; health probes do not turn on it), else 0.",
        sync.watches_failing.clone(),
    );
    r.register(
        "kxdp_pod_interfaces",
        "Pod interfaces kxdp serves because a /32 route in the pod CIDR goes through \
         them (--pod-routes).",
        sync.pod_interfaces.clone(),
    );
    r.register(
        "kxdp_pod_interfaces_unserved",
        "Pod interfaces a /32 route in the pod CIDR goes through that kxdp could not \
         serve (logged; retried every 5 s): traffic to those pods is lost. Alert on it.",
        sync.pod_interfaces_unserved.clone(),
    );
    r
}

/// The registry in Prometheus text format.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_dataplane::flow::Proto;
    use kxdp_dataplane::inspect::ServiceCounter;
    use kxdp_dataplane::snapshot::{LocalNode, ServicePortSpec, SnapshotBuilder, Vni};

    #[test]
    fn per_service_counters_are_summed_over_workers_and_named_by_service_port() {
        let node = LocalNode {
            name: "node1".into(),
            pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
            vtep_ip: "198.19.128.1".parse().unwrap(),
            vtep_mac: Default::default(),
            vni: Vni::new(1).unwrap(),
            node_ips: vec![],
            snat_ip: "198.18.1.0".parse().unwrap(),
        };
        let mut b = SnapshotBuilder::new(3, node, 65537);
        for (name, ip) in [
            ("default/web:http", [198, 19, 0, 10]),
            ("kube-system/dns:", [198, 19, 0, 53]),
        ] {
            b.add_service_port(ServicePortSpec {
                name: name.into(),
                proto: Proto::Tcp,
                port: 80,
                cluster_ips: vec![ip.into()],
                node_port: None,
                external_ips: vec![],
                load_balancer_ips: vec![],
                affinity_timeout: None,
                internal_policy_local: false,
                external_policy_local: false,
                endpoints: vec![],
            })
            .unwrap();
        }
        let snap = b.build();
        let web = snap.services()[0].id_hash;
        let worker = |packets, new_flows| {
            let s = WorkerStatus {
                services: vec![ServiceCounter {
                    id_hash: web,
                    packets,
                    new_flows,
                }],
                ..WorkerStatus::default()
            };
            Arc::new(Mutex::new(s))
        };
        let r = registry(
            DataplaneMetrics {
                workers: vec![worker(5, 1), worker(4, 2)],
                generation: Arc::new(AtomicU64::new(3)),
                snapshot: Some(Arc::new(ArcSwap::from_pointee(snap))),
            },
            &SyncMetrics::default(),
        );
        let text = render(&r);
        for line in [
            "kxdp_service_packets_total{service_port=\"default/web:http\"} 9",
            "kxdp_service_new_flows_total{service_port=\"default/web:http\"} 3",
            "kxdp_service_packets_total{service_port=\"kube-system/dns:\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn metrics_name_every_drop_reason_per_worker_and_the_generation() {
        let mut s = WorkerStatus::default();
        s.counters.rx = 7;
        s.counters.drops[DropReason::Truncated as usize] = 3;
        s.counters.held_for_neighbour = 6;
        s.flows = 2;
        s.generation = 5;
        s.rx_batches = 4;
        s.sockets = vec![SocketStats {
            iface: "eth1".into(),
            rx_dropped: 1,
            rx_ring_full: 2,
            fill_ring_empty: 3,
            rx_invalid: 4,
            tx_invalid: 5,
        }];
        let sync = SyncMetrics::default();
        sync.sync_duration.observe(0.0003);
        sync.programming_duration.observe(0.02);
        sync.watches_failing.set(1);
        sync.pod_interfaces.set(12);
        sync.pod_interfaces_unserved.set(2);
        let r = registry(
            DataplaneMetrics {
                workers: vec![Arc::new(Mutex::new(s))],
                generation: Arc::new(AtomicU64::new(5)),
                snapshot: None,
            },
            &sync,
        );
        let text = render(&r);
        assert!(
            text.contains("kxdp_rx_packets_total{worker=\"0\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("kxdp_dropped_packets_total{worker=\"0\",reason=\"truncated\"} 3"),
            "{text}"
        );
        for reason in DropReason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", reason.name())),
                "{reason:?}"
            );
        }
        assert!(text.contains("kxdp_flows{worker=\"0\"} 2"), "{text}");
        for line in [
            "kxdp_rx_batches_total{worker=\"0\"} 4",
            "kxdp_held_for_neighbour_total{worker=\"0\"} 6",
            "kxdp_api_watches_failing 1",
            "kxdp_pod_interfaces 12",
            "kxdp_pod_interfaces_unserved 2",
            "kxdp_xsk_rx_dropped_total{worker=\"0\",interface=\"eth1\"} 1",
            "kxdp_xsk_rx_ring_full_total{worker=\"0\",interface=\"eth1\"} 2",
            "kxdp_xsk_fill_ring_empty_total{worker=\"0\",interface=\"eth1\"} 3",
            "kxdp_xsk_invalid_descriptors_total{worker=\"0\",interface=\"eth1\",ring=\"rx\"} 4",
            "kxdp_xsk_invalid_descriptors_total{worker=\"0\",interface=\"eth1\",ring=\"tx\"} 5",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("kxdp_snapshot_generation 5"), "{text}");
        assert!(
            text.contains("kxdp_sync_proxy_rules_duration_seconds_bucket{le=\"0.0004\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kxdp_sync_proxy_rules_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kxdp_network_programming_duration_seconds_bucket{le=\"0.016\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kxdp_network_programming_duration_seconds_bucket{le=\"0.032\"} 1"),
            "{text}"
        );
    }
}
