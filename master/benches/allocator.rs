//! Allocator benchmarks shaped like Apache Mesos's own
//! (`src/tests/hierarchical_allocator_benchmarks.cpp`): agents of
//! `cpus:24;mem:4096;disk:4096;ports:[31000-32000]`, for 1,000 / 10,000 /
//! 50,000 agents and 1 / 100 / 1,000 frameworks.
//!
//! - `hungry`: one allocation pass with every framework wanting everything
//!   (every agent is offered).
//! - `declined`: one pass after every framework declined every agent with a
//!   long filter — Mesos's "DeclineOffers" steady state, where a pass finds
//!   nothing to offer.
//!
//! `cargo bench -p agora-master --bench allocator` (add a filter such as
//! `declined/10000` to run one case). `AGORA_BENCH_QUICK=1` runs only the
//! 1,000-agent cases.

use std::hint::black_box;
use std::time::Duration;

use agora_master::allocator::{Allocator, DrfAllocator};
use agora_proto::Resources;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

const AGENT: &str = "cpus:24;mem:4096;disk:4096;ports:[31000-32000]";

fn cluster(agents: usize, frameworks: usize) -> DrfAllocator {
    let total = Resources::parse(AGENT).expect("agent resources");
    let mut alloc = DrfAllocator::new();
    for f in 0..frameworks {
        alloc.add_framework(&format!("framework-{f}"), &format!("role-{}", f % 10), true);
    }
    for a in 0..agents {
        alloc.add_agent(&format!("agent-{a}"), total.clone(), &[]);
    }
    alloc
}

/// Every framework has declined every agent for a long time: each agent's
/// free resources are allocated to each framework and handed back with a
/// long filter, exactly what an offer and its decline do, without the F
/// allocation passes it would take to offer every agent to every framework.
fn declined_cluster(agents: usize, frameworks: usize) -> DrfAllocator {
    let mut alloc = cluster(agents, frameworks);
    let whole = Resources::parse(AGENT).expect("agent resources");
    let names: Vec<String> = (0..frameworks).map(|f| format!("framework-{f}")).collect();
    for a in 0..agents {
        let agent = format!("agent-{a}");
        for framework in &names {
            alloc.allocate_used(framework, &agent, &whole);
            alloc.recover(framework, &agent, &whole, Some(u64::MAX));
        }
    }
    // Sanity: a declined cluster offers nothing.
    assert!(alloc.allocate(1).is_empty(), "every agent is filtered");
    alloc
}

fn sizes() -> Vec<(usize, usize)> {
    let agent_counts: &[usize] = if std::env::var_os("AGORA_BENCH_QUICK").is_some() {
        &[1_000]
    } else {
        &[1_000, 10_000, 50_000]
    };
    agent_counts
        .iter()
        .flat_map(|&a| [1, 100, 1_000].map(|f| (a, f)))
        .collect()
}

fn hungry(c: &mut Criterion) {
    let mut group = c.benchmark_group("hungry");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (agents, frameworks) in sizes() {
        group.bench_with_input(
            BenchmarkId::new(agents.to_string(), frameworks),
            &(agents, frameworks),
            |b, &(agents, frameworks)| {
                b.iter_batched(
                    || cluster(agents, frameworks),
                    |mut alloc| {
                        let offers = alloc.allocate(1);
                        assert_eq!(offers.len(), agents);
                        black_box(offers);
                        alloc
                    },
                    BatchSize::PerIteration,
                );
            },
        );
    }
    group.finish();
}

fn declined(c: &mut Criterion) {
    let mut group = c.benchmark_group("declined");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (agents, frameworks) in sizes() {
        let mut alloc = declined_cluster(agents, frameworks);
        let mut now = 1;
        group.bench_with_input(
            BenchmarkId::new(agents.to_string(), frameworks),
            &(),
            |b, _| {
                b.iter(|| {
                    now += 1;
                    black_box(alloc.allocate(now))
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, hungry, declined);
criterion_main!(benches);
