//! `GET /api/v1/state`'s writing: 100,000 tasks on 1,000 agents, shaped
//! like the scale benchmarks' (`cpus:0.01;mem:1`, no sandbox, no usage).
//!
//! - `new`: every task new since the last `/state` (nothing kept), and
//!   running, so its JSON is made and kept — a `/state` that meets tasks
//!   the core did not make JSON for (nobody read the whole state lately).
//! - `new_starting`: the same, starting: made, not kept.
//! - `kept`: every task's JSON kept from before — a quiet cluster.
//! - `serde`: the same tasks through their derived `Serialize`, what the
//!   hand-written JSON replaced, for reference.
//!
//! Inside the clock: the whole body written into a buffer reused between
//! iterations (the streamed response copies it on in pieces as big); not
//! the snapshot's making, not sending it.
//!
//! `cargo bench -p agora-master --bench state_json`.

use std::hint::black_box;
use std::sync::Arc;

use agora_master::snapshot::Snapshot;
use agora_master::state::{AgentResources, AgentView, KeptJson, TaskView};
use agora_proto::Resources;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const TASKS: usize = 100_000;
const AGENTS: usize = 1_000;
const FRAMEWORK: &str = "3f0c8f7e-2d7a-4b8e-9a51-0c1d2e3f4a5b-0001";

fn agent_id(a: usize) -> String {
    format!("6a1b2c3d-4e5f-6789-abcd-ef01234{a:05}")
}

fn snapshot() -> Snapshot {
    let task_resources = Resources::parse("cpus:0.01;mem:1").expect("resources");
    let agent_resources = Resources::parse("cpus:8;mem:16384").expect("resources");
    let mut snap = Snapshot::default();
    for a in 0..AGENTS {
        let id = agent_id(a);
        snap.agents.insert(
            id.as_str().into(),
            Arc::new(AgentView {
                id: id.clone(),
                hostname: format!("emulated-{a}"),
                endpoint: String::new(),
                attributes: Default::default(),
                status: "active",
                draining: false,
                resources: AgentResources {
                    total: agent_resources.clone(),
                    used: Resources::new(),
                    offered: Resources::new(),
                },
                task_count: 0,
                json: KeptJson::default(),
            }),
        );
    }
    // Ids shared as the read model shares them: one copy per framework
    // and agent, a task's own with its key.
    let framework: Arc<str> = FRAMEWORK.into();
    let agents: Vec<Arc<str>> = (0..AGENTS).map(|a| agent_id(a).into()).collect();
    for t in 0..TASKS {
        let name = format!("load-{t:06}");
        let id: Arc<str> = name.as_str().into();
        snap.tasks.insert(
            (framework.clone(), id.clone()),
            Arc::new(TaskView {
                name,
                id,
                framework_id: framework.clone(),
                agent_id: agents[t % AGENTS].clone(),
                state: "TASK_RUNNING",
                resources: task_resources.clone(),
                message: String::new(),
                reason: "REASON_UNKNOWN",
                sandbox: None,
                healthy: None,
                usage: None,
                json: KeptJson::default(),
            }),
        );
    }
    snap
}

/// The same snapshot with every view new (nothing kept), in `state`.
fn renewed(snap: &Snapshot, state: &'static str) -> Snapshot {
    let mut fresh = snap.clone();
    fresh.tasks = snap
        .tasks
        .iter()
        .map(|(k, t)| {
            let view = TaskView {
                state,
                json: KeptJson::default(),
                ..TaskView::clone(t)
            };
            (k.clone(), Arc::new(view))
        })
        .collect();
    fresh
}

fn state_json(c: &mut Criterion) {
    let snap = snapshot();
    let mut out: Vec<u8> = Vec::with_capacity(64 << 20);
    let mut group = c.benchmark_group("state_json");
    group.sample_size(20);
    // Running tasks' JSON is made and kept (they will last); starting
    // ones' only made.
    for (case, state) in [("new", "TASK_RUNNING"), ("new_starting", "TASK_STARTING")] {
        group.bench_function(case, |b| {
            b.iter_batched(
                || renewed(&snap, state),
                |fresh| {
                    out.clear();
                    fresh.write_state_json(0, &mut out).expect("written");
                    black_box(out.len());
                    fresh
                },
                BatchSize::PerIteration,
            );
        });
    }
    // Running tasks: kept from their first writing.
    snap.write_state_json(0, &mut Vec::new()).expect("written");
    group.bench_function("kept", |b| {
        b.iter(|| {
            out.clear();
            snap.write_state_json(0, &mut out).expect("written");
            black_box(out.len());
        });
    });
    group.bench_function("serde", |b| {
        b.iter(|| {
            out.clear();
            let tasks: Vec<&TaskView> = snap.tasks_sorted().collect();
            serde_json::to_writer(&mut out, &tasks).expect("written");
            black_box(out.len());
        });
    });
    group.finish();
}

criterion_group!(benches, state_json);
criterion_main!(benches);
