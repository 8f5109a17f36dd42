//! Maglev table build (control plane, once per backend-set change) and lookup (fast
//! path, once per new flow).
//!
//! `cargo bench -p kxdp-bench --bench maglev`; sample sizes are small so the run takes
//! well under a minute.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kxdp_dataplane::maglev::{MaglevBackend, MaglevTable};

/// `n` backends with kxdp's identity, `ip << 16 | port`, on 10.0.0.0/8 port 8080.
fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            id: u64::from(0x0a00_0000 + i) << 16 | 8080,
            weight: 1,
        })
        .collect()
}

/// SplitMix64: well-spread flow hashes that reach every slot.
fn hashes(count: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    for (n, m) in [(1000, 65537), (4, 509)] {
        let b = backends(n);
        group.bench_function(format!("N={n},M={m}"), |bench| {
            bench.iter(|| MaglevTable::build(black_box(&b), black_box(m)))
        });
    }
    group.finish();
}

/// 1024 lookups per iteration into the N = 1000, M = 65537 table (128 KiB, so in L2),
/// at random slots as new flows land.
fn lookup(c: &mut Criterion) {
    let table = MaglevTable::build(&backends(1000), 65537);
    let hashes = hashes(1024);
    c.bench_function("maglev_lookup", |bench| {
        bench.iter(|| {
            black_box(&hashes)
                .iter()
                .map(|&h| u64::from(table.lookup(h).unwrap_or(0)))
                .sum::<u64>()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = build, lookup
}
criterion_main!(benches);
