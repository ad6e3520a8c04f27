//! The shipped scenarios, run through the real allocator.

use std::path::Path;

use agora_sim::scenario;

fn load(name: &str) -> agora_sim::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    scenario::load(&path).expect("the shipped scenario parses")
}

#[test]
fn drf_worked_example_gives_a_three_tasks_and_b_two() {
    let report = agora_sim::run(load("drf-example.toml"), &mut |_| {});
    let a = report.framework("A").expect("A");
    let b = report.framework("B").expect("B");
    assert_eq!((a.tasks_launched, b.tasks_launched), (3, 2), "{report:#?}");
    // Whole-agent offers to frameworks that place a whole job of many
    // tasks at once: whoever is offered the machine first packs it — not
    // DRF's answer.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let text = std::fs::read_to_string(dir.join("drf-example.toml"))
        .expect("read")
        .replace("tasks = \"1\"", "tasks = \"20\"")
        .replace("max_jobs = 20", "max_jobs = 1");
    let greedy = scenario::parse(&text, &dir).expect("valid");
    let report = agora_sim::run(greedy, &mut |_| {});
    let a = report.framework("A").expect("A").tasks_launched;
    let b = report.framework("B").expect("B").tasks_launched;
    assert_ne!((a, b), (3, 2));
    assert!(
        a + 3 * b <= 9 && 4 * a + b <= 18,
        "within the machine: {a}, {b}"
    );
}

#[test]
fn the_same_scenario_and_seed_give_the_same_summary_byte_for_byte() {
    let run = || {
        let report = agora_sim::run(load("drf-example.toml"), &mut |_| {});
        serde_json::to_string(&report).expect("json")
    };
    assert_eq!(run(), run());
}

#[test]
fn a_failed_rack_loses_its_tasks_and_the_cluster_recovers() {
    // The shipped scenario, made small enough for a test.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let text = std::fs::read_to_string(dir.join("rack-failure.toml"))
        .expect("read")
        .replace("count = 5000", "count = 200")
        .replace("interarrival = \"exp 2s\"", "interarrival = \"exp 40s\"")
        .replace("interarrival = \"exp 30s\"", "interarrival = \"exp 600s\"");
    let s = scenario::parse(&text, &dir).expect("valid");
    let report = agora_sim::run(s, &mut |_| {});
    assert_eq!(report.agents_failed, 20, "one rack of ten");
    let lost: u64 = report.frameworks.iter().map(|f| f.tasks_lost).sum();
    assert!(lost > 0, "the rack ran tasks: {report:#?}");
    // Every lost task was placed again: nothing is left waiting at the end.
    for f in &report.frameworks {
        assert_eq!(f.jobs_abandoned, 0, "{}", f.name);
        assert!(
            f.jobs_pending <= 2,
            "{}: {} pending",
            f.name,
            f.jobs_pending
        );
    }
    let after: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.t_seconds > 3600.0)
        .collect();
    assert!(after.iter().all(|s| s.agents == 180));
}

#[test]
fn traces_and_the_google_sample_replay() {
    let report = agora_sim::run(load("trace-replay.toml"), &mut |_| {});
    let batch = report.framework("batch").expect("batch");
    assert_eq!(batch.jobs_submitted, 5, "the CSV's batch lines");
    assert_eq!(batch.jobs_scheduled, 5);
    let google = report.framework("google").expect("google");
    assert_eq!(google.jobs_submitted, 3, "the sample's three jobs");
    assert_eq!(google.tasks_launched, 6);
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for entry in std::fs::read_dir(&dir).expect("scenarios") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// Omega's Mesos result and Agora's answer, on a small copy of the shipped
/// experiment (200 machines, the job arrivals slowed tenfold): a service
/// scheduler that takes 100 s per job makes batch jobs wait under Mesos's
/// policy, and makes no difference to them under the demand policy.
#[test]
fn a_slow_scheduler_holds_batch_up_under_mesos_and_not_under_demand() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let text = std::fs::read_to_string(dir.join("omega-mesos.toml"))
        .expect("read")
        .replace("count = 2000", "count = 200")
        .replace("racks = 50", "racks = 5")
        .replace("interarrival = \"exp 10s\"", "interarrival = \"exp 100s\"")
        .replace("interarrival = \"exp 20s\"", "interarrival = \"exp 200s\"");
    let values = ["0.1".to_string(), "100".to_string()];
    let policies = ["mesos".to_string(), "demand".to_string()];
    let points = agora_sim::sweep(
        &text,
        &dir,
        "frameworks.service.t_job",
        &values,
        &policies,
        &mut |_, _, _| {},
    )
    .expect("sweep");
    let batch_wait = |policy: &str, value: &str| {
        let p = points
            .iter()
            .find(|p| p.policy == policy && p.value == value)
            .expect("point");
        let batch = p.report.framework("batch").expect("batch");
        assert_eq!(batch.jobs_abandoned, 0);
        batch.wait_mean_s
    };
    let (mesos_fast, mesos_slow) = (batch_wait("mesos", "0.1"), batch_wait("mesos", "100"));
    let (demand_fast, demand_slow) = (batch_wait("demand", "0.1"), batch_wait("demand", "100"));
    assert!(
        mesos_slow > 3.0 * mesos_fast,
        "mesos: batch waits {mesos_fast:.1} s, then {mesos_slow:.1} s"
    );
    assert!(
        demand_slow < 1.5 * demand_fast && demand_slow * 3.0 < mesos_slow,
        "demand: batch waits {demand_fast:.1} s, then {demand_slow:.1} s (mesos {mesos_slow:.1} s)"
    );
}

/// An offer held past the offer timeout is rescinded at the next tick, as
/// the master does; the placements made on it are lost (a conflict).
#[test]
fn offers_held_past_the_timeout_are_rescinded_and_their_placements_lost() {
    let text = r#"
name = "slow"
duration = "10m"
offer_timeout = "30s"
[[machines]]
count = 4
resources = "cpus:4;mem:16384"
[[frameworks]]
name = "slow"
t_job = "45s"
max_attempts = 3
[frameworks.workload]
interarrival = "60s"
tasks = "2"
duration = "60s"
cpus = "1"
mem = "1024"
"#;
    let s = scenario::parse(text, Path::new(".")).expect("valid");
    let report = agora_sim::run(s, &mut |_| {});
    let slow = report.framework("slow").expect("slow");
    assert!(report.offers_rescinded > 0, "{report:#?}");
    assert!(slow.conflicts > 0);
    assert_eq!(slow.tasks_launched, 0, "every decision outlived its offers");
}
