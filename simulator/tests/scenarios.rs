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
