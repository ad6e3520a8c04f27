//! What the agent and the protocol promise frameworks, for real: RUNNING
//! only once the command runs in its container (a set-up failure is a
//! launch failure with its cause), health checks run by the agent, a kill's
//! own grace period, FAILURE events for lost agents, and typed refusals.

use std::time::Duration;

use agora_sdk::{
    RefusalReason, Resources, SdkError, TaskState, offer_id, status_state, status_task_id, task, v1,
};

use crate::support::*;

fn small() -> Resources {
    Resources::new()
        .with_scalar("cpus", 0.1)
        .with_scalar("mem", 32.0)
}

/// A master, one agent and a test framework. Fields drop in order: the
/// agent (and the containers it started) before its data directory.
struct Rig {
    f: TestFramework,
    agent: Proc,
    _master: Proc,
    data: tempfile::TempDir,
}

async fn rig(slot_ports: &str) -> Rig {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let data = tempdir();
    let resources = format!("cpus:2;mem:1024;ports:[{slot_ports}]");
    let agent = start_agent(&url, data.path(), &resources, "box");
    wait_for_agents(&url, 1).await;
    let f = TestFramework::start(&url, "protocol", "*").await;
    Rig {
        f,
        agent,
        _master: master,
        data,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_cannot_start_fails_its_launch_with_the_cause_and_is_never_running() {
    let mut rig = rig("22600-22609").await;
    let f = &mut rig.f;
    // An image whose /bin/sh cannot be executed: the container is set up
    // (cgroup, namespaces, pivot_root), then the exec fails inside it.
    let images = tempdir();
    let root = images.path().join("broken-root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::write(root.join("bin/sh"), b"not a program").expect("sh");
    let mut t = task("no-shell", "echo never", &small());
    t.image = root.display().to_string();
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(&[offer_id(&offer)], vec![t], Some(0.0))
        .await
        .expect("accept");
    let ended = f
        .next_update(Duration::from_secs(30), |s| {
            status_task_id(s) == "no-shell" && status_state(s) != TaskState::TaskStarting
        })
        .await;
    assert_eq!(status_state(&ended), TaskState::TaskFailed, "{ended:?}");
    assert_eq!(
        ended.reason,
        v1::task_status::Reason::ContainerLaunchFailed as i32,
        "{ended:?}"
    );
    assert!(ended.message.contains("exec /bin/sh"), "{}", ended.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_report_changes_and_kill_after_too_many_failures() {
    let mut rig = rig("22610-22619").await;
    let data = rig.data.path().to_path_buf();
    let f = &mut rig.f;
    // A command check on a file the test controls; 0 = report, never kill.
    let flag = data.join("healthy-flag");
    std::fs::write(&flag, b"").expect("flag");
    let mut watched = task("watched", "exec sleep 600", &small());
    watched.health_check = Some(v1::HealthCheck {
        protocol: v1::health_check::Protocol::Command as i32,
        command: format!("test -e {}", flag.display()),
        interval_seconds: 0.2,
        timeout_seconds: 2.0,
        max_consecutive_failures: 0,
        ..Default::default()
    });
    // A TCP check on a port nobody listens on: killed after 2 failures.
    let ports = agora_sdk::RangeSet::new([(22615, 22615)]);
    let mut deaf = task(
        "deaf",
        "exec sleep 600",
        &small().with_ranges("ports", ports),
    );
    deaf.health_check = Some(v1::HealthCheck {
        protocol: v1::health_check::Protocol::Tcp as i32,
        port_index: 0,
        interval_seconds: 0.2,
        timeout_seconds: 1.0,
        max_consecutive_failures: 2,
        ..Default::default()
    });
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(&[offer_id(&offer)], vec![watched, deaf], Some(0.0))
        .await
        .expect("accept");
    let good = f
        .next_update(Duration::from_secs(20), |s| {
            status_task_id(s) == "watched" && s.healthy == Some(true)
        })
        .await;
    assert_eq!(status_state(&good), TaskState::TaskRunning);
    assert_eq!(
        good.reason,
        v1::task_status::Reason::TaskHealthCheckStatusUpdated as i32
    );
    std::fs::remove_file(&flag).expect("unflag");
    let bad = f
        .next_update(Duration::from_secs(20), |s| {
            status_task_id(s) == "watched" && s.healthy == Some(false)
        })
        .await;
    assert_eq!(
        status_state(&bad),
        TaskState::TaskRunning,
        "reported, not killed"
    );
    let killed = f
        .wait_state("deaf", TaskState::TaskKilled, Duration::from_secs(20))
        .await;
    assert_eq!(
        killed.reason,
        v1::task_status::Reason::TaskUnhealthy as i32,
        "{killed:?}"
    );
    assert_eq!(killed.healthy, Some(false));
    assert!(
        killed.message.contains("health check failed 2 times"),
        "{}",
        killed.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_may_set_its_own_grace_period() {
    let mut rig = rig("22620-22629").await;
    let f = &mut rig.f;
    // The task ignores SIGTERM and asks for an hour's grace.
    let mut stubborn = task(
        "stubborn",
        "trap '' TERM; while true; do sleep 0.1; done",
        &small(),
    );
    stubborn.kill_grace_period = 3600.0;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(&[offer_id(&offer)], vec![stubborn], Some(0.0))
        .await
        .expect("accept");
    f.wait_state("stubborn", TaskState::TaskRunning, Duration::from_secs(20))
        .await;
    f.driver
        .kill_with_grace("stubborn", Some(Duration::from_millis(500)))
        .await
        .expect("kill");
    // Without the override this would wait for an hour.
    f.wait_state("stubborn", TaskState::TaskKilled, Duration::from_secs(20))
        .await;
    let err = f
        .driver
        .kill_with_grace("stubborn", Some(Duration::from_secs(7200)))
        .await
        .expect_err("ended, and too long a grace");
    assert!(err.code().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_agent_is_announced_and_a_stale_offer_refusal_is_typed() {
    let mut rig = rig("22630-22639").await;
    let f = &mut rig.f;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let agent_id = offer.agent_id.clone().map(|a| a.value).unwrap_or_default();
    f.driver
        .decline(&[offer_id(&offer)], Some(0.0))
        .await
        .expect("decline");
    let err = f
        .driver
        .accept(
            &[offer_id(&offer)],
            vec![task("late", "true", &small())],
            None,
        )
        .await
        .expect_err("a declined offer is gone");
    assert!(
        matches!(
            err,
            SdkError::AcceptRefused {
                reason: RefusalReason::OfferNotOutstanding,
                ..
            }
        ),
        "{err:?}"
    );
    rig.agent.kill_hard();
    let lost = f
        .next_matching(Duration::from_secs(20), |s| match s {
            Seen::Failure(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(lost, agent_id);
    remove_containers(rig.data.path());
}
