//! `GET /api/v1/events`' writing: the JSON of 100,000 task updates, as a
//! launch burst of 33,000 tasks makes them (staging, starting, running),
//! with ids shaped like the scale benchmarks'.
//!
//! - `by_hand`: [`ClusterEvent::write_json`], the JSON the core makes for
//!   each task update (`Event::task_updated`) and the stream copies;
//! - `serde`: the same events through their derived `Serialize`, what the
//!   hand-written JSON replaced, for reference.
//!
//! Inside the clock: every event's JSON appended to a buffer reused
//! between iterations; not the SSE framing around it, not sending it.
//!
//! `cargo bench -p agora-master --bench events_json`.

use std::hint::black_box;

use agora_master::events::ClusterEvent;
use criterion::{Criterion, criterion_group, criterion_main};

const EVENTS: usize = 100_000;

fn events() -> Vec<ClusterEvent> {
    let states = ["TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"];
    (0..EVENTS)
        .map(|n| ClusterEvent::TaskUpdated {
            framework_id: "3f0c8f7e-2d7a-4b8e-9a51-0c1d2e3f4a5b-0001".into(),
            task_id: format!("load-{:06}", n / 3),
            agent_id: format!("6a1b2c3d-4e5f-6789-abcd-ef01234{:05}", n % 10_000),
            state: states[n % 3],
            message: String::new(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let mut out = Vec::with_capacity(EVENTS * 200);
    let mut group = c.benchmark_group("events_json");
    group.sample_size(20);
    group.bench_function("by_hand", |b| {
        b.iter(|| {
            out.clear();
            for event in &events {
                event.write_json(&mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("serde", |b| {
        b.iter(|| {
            out.clear();
            for event in &events {
                serde_json::to_writer(&mut out, event).expect("events serialize");
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
