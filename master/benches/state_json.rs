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
//! - `agents`: the agents of a loaded cluster's `/state`, alone: 10,000
//!   (the reads benchmark's; the emulator's resources, ports and all)
//!   whose views changed since the last `/state` (under load every agent's
//!   `used` moves).
//! - `offers`: its outstanding offers, alone: one on each of those agents.
//!
//! Inside the clock: the whole body written into a buffer reused between
//! iterations (the streamed response copies it on in pieces as big); not
//! the snapshot's making, not sending it.
//!
//! `cargo bench -p agora-master --bench state_json`.

use std::hint::black_box;
use std::sync::Arc;

use agora_master::snapshot::Snapshot;
use agora_master::state::{AgentRegistration, AgentView, KeptJson, OfferView, TaskView};
use agora_proto::Resources;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use imbl::OrdMap;

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
                registered: Arc::new(AgentRegistration::new(
                    id.clone(),
                    format!("emulated-{a}"),
                    "".into(),
                    Default::default(),
                    agent_resources.clone(),
                )),
                status: "active",
                draining: false,
                used: Resources::new(),
                offered: Resources::new(),
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

/// Views made again from `views` by `renew`, as the core makes a view
/// anew when what it shows changes (with nothing kept).
fn renewed_views<K: Clone + Ord, V: Clone>(
    views: &OrdMap<K, Arc<V>>,
    renew: impl Fn(&V) -> V,
) -> OrdMap<K, Arc<V>> {
    views
        .iter()
        .map(|(k, v)| (k.clone(), Arc::new(renew(v))))
        .collect()
}

/// The same snapshot with every task view new (nothing kept), in `state`.
fn renewed(snap: &Snapshot, state: &'static str) -> Snapshot {
    Snapshot {
        tasks: renewed_views(&snap.tasks, |t| TaskView {
            state,
            json: KeptJson::default(),
            ..t.clone()
        }),
        ..snap.clone()
    }
}

/// Times writing a snapshot made afresh by `fresh` for each iteration
/// (outside the clock), into `out`.
fn bench_fresh(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    case: &str,
    out: &mut Vec<u8>,
    fresh: impl Fn() -> Snapshot,
) {
    group.bench_function(case, |b| {
        b.iter_batched(
            &fresh,
            |snap| {
                out.clear();
                snap.write_state_json(2_000, out).expect("written");
                black_box(out.len());
                snap
            },
            BatchSize::PerIteration,
        );
    });
}

fn state_json(c: &mut Criterion) {
    let snap = snapshot();
    let mut out: Vec<u8> = Vec::with_capacity(64 << 20);
    let mut group = c.benchmark_group("state_json");
    group.sample_size(20);
    // Running tasks' JSON is made and kept (they will last); starting
    // ones' only made.
    for (case, state) in [("new", "TASK_RUNNING"), ("new_starting", "TASK_STARTING")] {
        bench_fresh(&mut group, case, &mut out, || renewed(&snap, state));
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

/// 10,000 agents as the emulator makes them, each running a few tasks and
/// with an offer of the rest outstanding, and no tasks.
fn agents_and_offers() -> Snapshot {
    const CLUSTER_AGENTS: usize = 10_000;
    let total =
        Resources::parse("cpus:8;mem:16384;disk:100000;ports:[31000-32000]").expect("resources");
    let used = Resources::parse("cpus:0.1;mem:10").expect("resources");
    let offered =
        Resources::parse("cpus:7.9;mem:16374;disk:100000;ports:[31000-32000]").expect("resources");
    let mut snap = Snapshot::default();
    for a in 0..CLUSTER_AGENTS {
        let id = agent_id(a);
        let hostname = format!("emulated-{a}");
        snap.agents_by_hostname
            .insert((hostname.clone(), id.as_str().into()));
        snap.agents.insert(
            id.as_str().into(),
            Arc::new(AgentView {
                registered: Arc::new(AgentRegistration::new(
                    id.clone(),
                    hostname,
                    "".into(),
                    [("rack".to_string(), format!("r{}", a % 100))].into(),
                    total.clone(),
                )),
                status: "active",
                draining: false,
                used: used.clone(),
                offered: offered.clone(),
                task_count: 10,
                json: KeptJson::default(),
            }),
        );
        let offer = format!("{FRAMEWORK}-o{a}");
        snap.offers.insert(
            offer.as_str().into(),
            Arc::new(OfferView {
                id: offer,
                framework_id: FRAMEWORK.into(),
                agent_id: id,
                resources: offered.clone(),
                made_at_ms: 1_000,
            }),
        );
    }
    snap
}

fn agents_and_offers_json(c: &mut Criterion) {
    let cluster = agents_and_offers();
    let mut out: Vec<u8> = Vec::with_capacity(64 << 20);
    let mut group = c.benchmark_group("state_json");
    group.sample_size(20);
    // Every agent's view new, as after a moment of load; no offers.
    let agents = Snapshot {
        offers: Default::default(),
        ..cluster.clone()
    };
    bench_fresh(&mut group, "agents", &mut out, || Snapshot {
        agents: renewed_views(&agents.agents, |a| AgentView {
            json: KeptJson::default(),
            ..a.clone()
        }),
        ..agents.clone()
    });
    // The offers alone.
    let offers = Snapshot {
        offers: cluster.offers.clone(),
        ..Snapshot::default()
    };
    group.bench_function("offers", |b| {
        b.iter(|| {
            out.clear();
            offers.write_state_json(2_000, &mut out).expect("written");
            black_box(out.len());
        });
    });
    group.finish();
}

criterion_group!(benches, state_json, agents_and_offers_json);
criterion_main!(benches);
