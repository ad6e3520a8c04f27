//! The engine as a state machine: offers, updates and the clock in, launches
//! and kills out — no sockets, no sleeping.

use agora_sdk::{Offer, TaskState, TaskStatus, v1};

use super::*;
use crate::model::{DeploymentKind, DeploymentState};

fn offer(n: u32, agent: &str, cpus: f64, mem: f64) -> Offer {
    let resources =
        agora_sdk::Resources::parse(&format!("cpus:{cpus};mem:{mem};ports:[31000-31099]"))
            .expect("resources");
    Offer {
        id: Some(v1::OfferId {
            value: format!("o{n}-{agent}"),
        }),
        agent_id: Some(v1::AgentId {
            value: agent.into(),
        }),
        hostname: format!("host-{agent}"),
        resources: resources.to_proto(),
        ..Default::default()
    }
}

fn spec(text: &str) -> AppSpec {
    crate::spec::parse(text).expect("valid spec").remove(0)
}

fn status(task: &str, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: Some(v1::TaskId { value: task.into() }),
        state: state as i32,
        ..Default::default()
    }
}

fn healthy(task: &str, healthy: bool) -> TaskStatus {
    let mut s = status(task, TaskState::TaskRunning);
    s.healthy = Some(healthy);
    s
}

fn engine() -> Engine {
    Engine::restore(Vec::new(), 1, 1, Some("fw".into()), 10_000)
}

fn no_connections(_: &str) -> usize {
    0
}

/// Places on fresh offers from `agents` and returns the launched task ids.
fn launch_round(e: &mut Engine, round: u32, agents: &[&str], now: Millis) -> Vec<String> {
    let offers: Vec<Offer> = agents
        .iter()
        .map(|a| offer(round, a, 4.0, 4096.0))
        .collect();
    let p = e.place(&offers, now);
    p.launches
        .into_iter()
        .flat_map(|(_, tasks)| tasks)
        .filter_map(|t| t.task_id.map(|i| i.value))
        .collect()
}

fn run_all(e: &mut Engine, tasks: &[String], now: Millis) {
    for t in tasks {
        e.on_status(&status(t, TaskState::TaskRunning), now);
    }
}

fn kills(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

fn last_deployment(e: &Engine, app: &str) -> Deployment {
    e.app(app)
        .expect("app")
        .deployments
        .last()
        .cloned()
        .expect("a deployment")
}

const WEB: &str = "id = \"web\"\ncmd = \"serve\"\ninstances = 3\nports = [\"http\"]\n";

#[test]
fn deploy_places_spread_and_succeeds_when_running() {
    let mut e = engine();
    e.deploy(spec(WEB), 0).expect("deploy");
    // What the master is told to size offers to: three instances.
    let demand = e.demand(0);
    assert_eq!(demand.tasks, 3);
    let cpus = demand.resources.scalar("cpus");
    assert!((cpus - 3.0 * spec(WEB).cpus).abs() < 1e-6, "{demand:?}");
    let tasks = launch_round(&mut e, 1, &["a", "b", "c"], 0);
    assert_eq!(tasks.len(), 3);
    let agents: std::collections::BTreeSet<String> = e
        .app("web")
        .expect("app")
        .live
        .iter()
        .map(|i| i.agent.agent_id.clone())
        .collect();
    assert_eq!(agents.len(), 3, "spread over the agents by default");
    assert!(e.demand(0).is_empty(), "all placed");
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Running);
    run_all(&mut e, &tasks, 10);
    e.tick(20, &no_connections);
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Succeeded);
    assert_eq!(e.endpoints("web").len(), 3);
    // Each instance got a port and its PORT_HTTP.
    assert!(
        e.app("web")
            .expect("app")
            .live
            .iter()
            .all(|i| i.ports.len() == 1)
    );
}

#[test]
fn a_task_carries_its_ports_env_and_health_check() {
    let mut e = engine();
    let text = format!(
        "{WEB}env = {{ A = \"1\" }}\n[[health_checks]]\nprotocol = \"http\"\npath = \"/ready\"\n"
    );
    e.deploy(spec(&text), 0).expect("deploy");
    let p = e.place(&[offer(1, "a", 4.0, 4096.0)], 0);
    let task = &p.launches[0].1[0];
    let env: Vec<(String, String)> = task
        .command
        .as_ref()
        .and_then(|c| c.environment.as_ref())
        .map(|e| {
            e.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    assert!(env.contains(&("A".into(), "1".into())));
    assert!(
        env.iter()
            .any(|(k, v)| k == "PORT_HTTP" && v.starts_with("310"))
    );
    let check = task.health_check.as_ref().expect("check");
    assert_eq!(check.path, "/ready");
    assert_eq!(check.port_index, 0);
    // Three instances fit on one offer when it is the only one.
    assert_eq!(p.launches[0].1.len(), 3);
}

/// Deploys WEB, runs it to success, returns the running task ids.
fn running_web(e: &mut Engine, text: &str) -> Vec<String> {
    e.deploy(spec(text), 0).expect("deploy");
    let tasks = launch_round(e, 1, &["a", "b", "c"], 0);
    run_all(e, &tasks, 10);
    for t in &tasks {
        e.on_status(&healthy(t, true), 15);
    }
    e.tick(20, &no_connections);
    assert_eq!(last_deployment(e, "web").state, DeploymentState::Succeeded);
    tasks
}

#[test]
fn a_rolling_upgrade_keeps_capacity_and_only_moves_on_health() {
    let mut e = engine();
    let text = format!(
        "{WEB}[[health_checks]]\nprotocol = \"tcp\"\n[upgrade]\nminimum_health_capacity = 1.0\nmaximum_over_capacity = 0.34\n"
    );
    let old = running_web(&mut e, &text);
    for t in &old {
        e.on_status(&healthy(t, true), 30);
    }
    let v2 = text.replace("cmd = \"serve\"", "cmd = \"serve --v2\"");
    let (version, _) = e.deploy(spec(&v2), 100).expect("v2");
    assert_eq!(version, 2);
    // Room for one extra instance: one new at a time.
    let new1 = launch_round(&mut e, 2, &["a", "b", "c"], 100);
    assert_eq!(new1.len(), 1);
    run_all(&mut e, &new1, 110);
    let actions = e.tick(120, &no_connections);
    assert!(
        kills(&actions).is_empty(),
        "running but not yet healthy: nothing goes"
    );
    assert_eq!(e.endpoints("web").len(), 3);
    e.on_status(&healthy(&new1[0], true), 130);
    let actions = e.tick(140, &no_connections);
    // One old instance leaves the rotation, then is killed (no service: no drain).
    assert_eq!(kills(&actions).len(), 1);
    assert!(old.contains(&kills(&actions)[0]));
    assert_eq!(e.endpoints("web").len(), 3, "3 healthy serve throughout");
    // And so on until all are new.
    let mut gone = kills(&actions);
    for round in 3..10 {
        for t in &gone {
            e.on_status(&status(t, TaskState::TaskKilled), 150);
        }
        let new = launch_round(&mut e, round, &["a", "b", "c"], 200);
        for t in &new {
            e.on_status(&status(t, TaskState::TaskRunning), 210);
            e.on_status(&healthy(t, true), 220);
        }
        let actions = e.tick(230, &no_connections);
        gone = kills(&actions);
        assert!(e.endpoints("web").len() >= 3);
        if last_deployment(&e, "web").state == DeploymentState::Succeeded {
            break;
        }
    }
    for t in &gone {
        e.on_status(&status(t, TaskState::TaskKilled), 240);
    }
    e.tick(250, &no_connections);
    let d = last_deployment(&e, "web");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let app = e.app("web").expect("app");
    assert!(app.live.iter().all(|i| i.version == 2));
    assert_eq!(app.live.len(), 3);
}

#[test]
fn a_new_version_that_keeps_failing_is_rolled_back() {
    let mut e = engine();
    let old = running_web(&mut e, WEB);
    let bad = WEB.replace("cmd = \"serve\"", "cmd = \"exit 1\"")
        + "[upgrade]\nmax_failures = 2\n[backoff]\ninitial = \"1s\"\n";
    e.deploy(spec(&bad), 100).expect("v2");
    let mut now = 100;
    for round in 2..6 {
        let new = launch_round(&mut e, round, &["a", "b", "c"], now);
        for t in &new {
            e.on_status(&status(t, TaskState::TaskFailed), now + 1);
        }
        now += 60_000;
        e.tick(now, &no_connections);
        if e.app("web").expect("app").deployments.len() > 2 {
            break;
        }
    }
    let app = e.app("web").expect("app");
    let failed = &app.deployments[app.deployments.len() - 2];
    assert_eq!(failed.state, DeploymentState::RolledBack, "{failed:?}");
    let rollback = app.deployments.last().expect("rollback");
    assert_eq!(rollback.kind, DeploymentKind::Rollback);
    assert_eq!(app.spec().cmd, "serve", "back on the old definition");
    assert_eq!(app.target, 3, "the rollback is a new version");
    // The old instances never stopped serving and count as current again.
    assert!(old.iter().all(|t| app.live.iter().any(|i| &i.task_id == t)));
    e.tick(now + 10, &no_connections);
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Succeeded);
}

#[test]
fn without_auto_rollback_a_failing_deployment_pauses_with_its_reason() {
    let mut e = engine();
    running_web(&mut e, WEB);
    let bad = WEB.replace("cmd = \"serve\"", "cmd = \"exit 1\"")
        + "[upgrade]\nauto_rollback = false\nprogress_deadline = \"10s\"\n";
    e.deploy(spec(&bad), 100).expect("v2");
    let new = launch_round(&mut e, 2, &["a", "b", "c"], 100);
    assert!(!new.is_empty());
    // They start but never get anywhere: no progress past the deadline.
    e.tick(20_000, &no_connections);
    let d = last_deployment(&e, "web");
    assert_eq!(d.state, DeploymentState::Paused);
    assert!(d.message.contains("no progress for 10s"), "{}", d.message);
    assert_eq!(e.app("web").expect("app").status(), "PAUSED");
    // Paused: nothing more is launched.
    assert!(launch_round(&mut e, 3, &["a", "b", "c"], 20_100).is_empty());
    // A rollback takes it on again.
    e.rollback("web", None, 21_000).expect("rollback");
    assert_eq!(e.app("web").expect("app").spec().cmd, "serve");
}

#[test]
fn scaling_up_and_down_kills_the_surplus() {
    let mut e = engine();
    running_web(&mut e, WEB);
    e.scale("web", 6, 100).expect("scale up");
    let more = launch_round(&mut e, 2, &["a", "b", "c"], 100);
    assert_eq!(more.len(), 3);
    run_all(&mut e, &more, 110);
    e.tick(120, &no_connections);
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Succeeded);
    e.scale("web", 2, 200).expect("scale down");
    let actions = e.tick(210, &no_connections);
    assert_eq!(kills(&actions).len(), 4);
    for t in kills(&actions) {
        e.on_status(&status(&t, TaskState::TaskKilled), 220);
    }
    e.tick(230, &no_connections);
    assert_eq!(e.app("web").expect("app").live.len(), 2);
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Succeeded);
    assert!(e.scale("nope", 1, 0).is_err());
}

#[test]
fn a_failed_instance_is_replaced_after_its_backoff() {
    let mut e = engine();
    let tasks = running_web(&mut e, WEB);
    e.on_status(&status(&tasks[0], TaskState::TaskFailed), 1_000);
    assert!(
        launch_round(&mut e, 2, &["a", "b"], 1_500).is_empty(),
        "backing off 1s"
    );
    let waiting = e.waiting("web").expect("waiting reasons");
    assert!(
        waiting.reasons.keys().any(|r| r.starts_with("backing off")),
        "{waiting:?}"
    );
    let replaced = launch_round(&mut e, 3, &["a", "b"], 2_100);
    assert_eq!(replaced.len(), 1);
    // Failing again doubles the delay.
    e.on_status(&status(&replaced[0], TaskState::TaskFailed), 3_000);
    assert!(launch_round(&mut e, 4, &["a"], 4_500).is_empty());
    assert_eq!(launch_round(&mut e, 5, &["a"], 5_100).len(), 1);
}

#[test]
fn a_crash_looping_app_says_so() {
    let mut e = engine();
    e.deploy(
        spec("id = \"crash\"\ncmd = \"exit 3\"\n[backoff]\ninitial = \"1s\"\nfactor = 1.0\n"),
        0,
    )
    .expect("deploy");
    let mut now = 0;
    for round in 0..4 {
        let t = launch_round(&mut e, round, &["a"], now);
        for t in &t {
            e.on_status(&status(t, TaskState::TaskFailed), now + 10);
        }
        now += 2_000;
    }
    let app = e.app("crash").expect("app");
    assert_eq!(app.status(), "CRASH_LOOPING");
    assert!(app.backoff.last_failure.contains("TASK_FAILED"));
    // A new app has nothing to go back to: it keeps trying, in plain view.
    e.tick(now + 600_000, &no_connections);
    assert_eq!(last_deployment(&e, "crash").state, DeploymentState::Running);
}

#[test]
fn instances_on_a_lost_agent_come_back_elsewhere_and_a_returning_one_is_killed() {
    let mut e = engine();
    running_web(&mut e, WEB);
    let on_a: Vec<String> = e
        .app("web")
        .expect("app")
        .live
        .iter()
        .filter(|i| i.agent.agent_id == "a")
        .map(|i| i.task_id.clone())
        .collect();
    assert_eq!(on_a.len(), 1);
    e.on_agent_lost("a", 100);
    assert_eq!(e.endpoints("web").len(), 2);
    let replacement = launch_round(&mut e, 2, &["b", "c"], 200);
    assert_eq!(replacement.len(), 1);
    run_all(&mut e, &replacement, 210);
    // The lost one returns: one too many, so one goes.
    e.on_status(&status(&on_a[0], TaskState::TaskRunning), 300);
    let actions = e.tick(310, &no_connections);
    assert_eq!(kills(&actions).len(), 1);
}

#[test]
fn unique_hostname_with_too_few_agents_waits_with_the_reason() {
    let mut e = engine();
    let text =
        "id = \"u\"\ncmd = \"x\"\ninstances = 3\nconstraints = [[\"hostname\", \"UNIQUE\"]]\n";
    e.deploy(spec(text), 0).expect("deploy");
    let placed = launch_round(&mut e, 1, &["a", "b"], 0);
    assert_eq!(placed.len(), 2);
    launch_round(&mut e, 2, &["a", "b"], 1_000);
    let w = e.waiting("u").expect("waiting");
    assert_eq!(w.unplaced, 1);
    assert!(
        w.reasons
            .get("constraint hostname UNIQUE")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{w:?}"
    );
    let small = Engine::restore(Vec::new(), 1, 1, None, 0);
    drop(small);
    // Too small an offer says which resource.
    let mut e = engine();
    e.deploy(spec("id = \"big\"\ncmd = \"x\"\ncpus = 8\n"), 0)
        .expect("deploy");
    e.place(&[offer(1, "a", 4.0, 4096.0)], 0);
    assert!(
        e.waiting("big")
            .expect("waiting")
            .reasons
            .contains_key("insufficient cpus")
    );
}

#[test]
fn a_service_instance_drains_before_its_kill() {
    let mut e = engine();
    let text = format!("{WEB}[service]\nport = 18080\ndrain_timeout = \"30s\"\n");
    running_web(&mut e, &text);
    e.scale("web", 2, 1_000).expect("scale");
    let busy = |_: &str| 1;
    let actions = e.tick(1_000, &busy);
    assert!(kills(&actions).is_empty(), "out of rotation first");
    assert_eq!(e.endpoints("web").len(), 2);
    let actions = e.tick(5_000, &busy);
    assert!(kills(&actions).is_empty(), "connections still open");
    let actions = e.tick(5_100, &no_connections);
    assert_eq!(kills(&actions).len(), 1, "drained: killed");
    // A connection that never ends is cut at the drain timeout.
    e.scale("web", 1, 10_000).expect("scale");
    e.tick(10_000, &busy);
    assert!(kills(&e.tick(39_000, &busy)).is_empty());
    assert_eq!(kills(&e.tick(40_001, &busy)).len(), 1);
}

#[test]
fn autoscale_follows_cpu_use_with_a_cooldown() {
    let mut e = engine();
    let text = "id = \"auto\"\ncmd = \"burn\"\ncpus = 0.5\ninstances = 1\n[autoscale]\nmin = 1\nmax = 4\ntarget_cpu = 0.5\ncooldown = \"10s\"\n";
    e.deploy(spec(text), 0).expect("deploy");
    let t = launch_round(&mut e, 1, &["a"], 0);
    run_all(&mut e, &t, 10);
    e.tick(20, &no_connections);
    // 0.5 cpus requested, 0.5 cores used: 100% against a 50% target.
    e.observe_usage(&[(t[0].clone(), 0.0)], 1_000);
    e.observe_usage(&[(t[0].clone(), 1.0)], 3_000);
    e.tick(3_000, &no_connections);
    assert_eq!(
        e.app("auto").expect("app").instances,
        1,
        "cooling down since start"
    );
    e.observe_usage(&[(t[0].clone(), 5.0)], 11_000);
    e.tick(11_000, &no_connections);
    assert_eq!(e.app("auto").expect("app").instances, 2);
    assert_eq!(last_deployment(&e, "auto").kind, DeploymentKind::Autoscale);
    let more = launch_round(&mut e, 2, &["a"], 11_100);
    run_all(&mut e, &more, 11_200);
    e.tick(11_300, &no_connections);
    // Idle now: low for a whole cooldown before scaling down.
    let all: Vec<String> = e
        .app("auto")
        .expect("app")
        .live
        .iter()
        .map(|i| i.task_id.clone())
        .collect();
    for (n, at) in [(0.0, 12_000), (0.0, 14_000)] {
        let samples: Vec<(String, f64)> = all.iter().map(|t| (t.clone(), 10.0 + n)).collect();
        e.observe_usage(&samples, at);
        e.tick(at, &no_connections);
    }
    assert_eq!(
        e.app("auto").expect("app").instances,
        2,
        "not yet: cooldown"
    );
    let samples: Vec<(String, f64)> = all.iter().map(|t| (t.clone(), 10.0)).collect();
    e.observe_usage(&samples, 25_000);
    e.tick(25_000, &no_connections);
    assert_eq!(e.app("auto").expect("app").instances, 1);
}

#[test]
fn restore_adopts_instances_and_gives_up_on_forgotten_ones_after_the_grace() {
    let mut e = engine();
    let tasks = running_web(&mut e, WEB);
    let changes = e.take_changes().expect("changes");
    let apps: Vec<App> = changes.apps.into_iter().filter_map(|(_, a)| a).collect();
    let mut again = Engine::restore(
        apps,
        changes.next_task,
        changes.next_deployment,
        changes.framework_id,
        10_000,
    );
    let mut live = again.live_task_ids();
    live.sort();
    let mut expected = tasks.clone();
    expected.sort();
    assert_eq!(live, expected, "the same task ids, to reconcile");
    assert!(
        launch_round(&mut again, 9, &["a", "b", "c"], 100).is_empty(),
        "nothing relaunched"
    );
    // The master knows two of them; the third stays unknown past the grace.
    again.on_status(&status(&tasks[0], TaskState::TaskRunning), 200);
    again.on_status(&status(&tasks[1], TaskState::TaskRunning), 200);
    again.on_status(&status(&tasks[2], TaskState::TaskUnknown), 200);
    again.tick(5_000, &no_connections);
    assert_eq!(again.app("web").expect("app").live.len(), 3);
    again.tick(10_300, &no_connections);
    assert_eq!(again.app("web").expect("app").live.len(), 2);
    assert_eq!(launch_round(&mut again, 10, &["c"], 10_400).len(), 1);
}

#[test]
fn endpoint_events_follow_readiness_and_removal() {
    let mut e = engine();
    e.deploy(spec(WEB), 0).expect("deploy");
    e.take_events();
    let tasks = launch_round(&mut e, 1, &["a"], 0);
    assert!(!e.take_events().iter().any(
        |ev| matches!(ev, ServiceEvent::Endpoints { endpoints, .. } if !endpoints.is_empty())
    ));
    run_all(&mut e, &tasks, 10);
    let events = e.take_events();
    let last = events
        .iter()
        .rev()
        .find_map(|ev| match ev {
            ServiceEvent::Endpoints { endpoints, .. } => Some(endpoints.len()),
            _ => None,
        })
        .expect("an endpoints event");
    assert_eq!(last, 3);
    e.remove("web", 100).expect("remove");
    let actions = e.tick(110, &no_connections);
    assert_eq!(kills(&actions).len(), 3);
    for t in &tasks {
        e.on_status(&status(t, TaskState::TaskKilled), 120);
    }
    e.tick(130, &no_connections);
    assert!(e.app("web").is_err(), "gone once its instances are");
    assert!(
        e.take_events()
            .iter()
            .any(|ev| matches!(ev, ServiceEvent::Removed { .. }))
    );
}

#[test]
fn ghosts_and_conflicts() {
    let mut e = engine();
    // An update for a task nobody knows that still runs: killed.
    let actions = e.on_status(&status("stray.1", TaskState::TaskRunning), 0);
    assert_eq!(kills(&actions), vec!["stray.1".to_string()]);
    e.deploy(
        spec("id = \"a\"\ncmd = \"x\"\nports = [\"p\"]\n[service]\nport = 9000\n"),
        0,
    )
    .expect("a");
    let err = e
        .deploy(
            spec("id = \"b\"\ncmd = \"x\"\nports = [\"p\"]\n[service]\nport = 9000\n"),
            0,
        )
        .expect_err("port taken");
    assert!(
        matches!(err, EngineError::Invalid(ref s) if s.field == "service.port"),
        "{err}"
    );
    assert!(matches!(
        e.rollback("a", None, 1),
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        e.rollback("a", Some(9), 1),
        Err(EngineError::NotFound(_))
    ));
}

#[test]
fn restart_replaces_every_instance_and_cancel_rolls_back() {
    let mut e = engine();
    let old = running_web(&mut e, WEB);
    e.restart("web", 100).expect("restart");
    let fresh = launch_round(&mut e, 2, &["a", "b", "c"], 100);
    assert_eq!(fresh.len(), 3, "maximum_over_capacity 1.0: all at once");
    assert!(fresh.iter().all(|t| !old.contains(t)));
    let v2 = WEB.replace("serve", "serve2");
    e.deploy(spec(&v2), 200).expect("v2");
    e.cancel("web", 300).expect("cancel");
    let app = e.app("web").expect("app");
    assert_eq!(app.spec().cmd, "serve");
    assert_eq!(
        app.deployments.last().map(|d| d.kind),
        Some(DeploymentKind::Rollback)
    );
}

#[test]
fn an_instance_lost_with_its_agent_does_not_hold_up_a_scale_down_or_a_removal() {
    let mut e = engine();
    running_web(&mut e, WEB);
    e.on_agent_lost("a", 100);
    // Its replacement comes up on another agent.
    let new = launch_round(&mut e, 2, &["b", "c"], 200);
    run_all(&mut e, &new, 210);
    for t in &new {
        e.on_status(&healthy(t, true), 215);
    }
    e.scale("web", 1, 300).expect("scale");
    for t in kills(&e.tick(310, &no_connections)) {
        e.on_status(&status(&t, TaskState::TaskKilled), 320);
    }
    e.tick(330, &no_connections);
    assert_eq!(last_deployment(&e, "web").state, DeploymentState::Succeeded);
    e.remove("web", 400).expect("remove");
    for t in kills(&e.tick(410, &no_connections)) {
        e.on_status(&status(&t, TaskState::TaskKilled), 420);
    }
    e.tick(430, &no_connections);
    assert!(
        e.app("web").is_err(),
        "removed although one instance is unreachable"
    );
    // If it comes back, it is a stranger: killed.
    let lost = e.on_status(&status("web.1", TaskState::TaskRunning), 500);
    assert_eq!(kills(&lost), vec!["web.1".to_string()]);
}
