//! The master's operator HTTP API, its event stream, its metrics and its
//! web UI, against a real master, agent and framework.

use std::time::Duration;

use agora_sdk::{Resources, TaskState, offer_id, task};
use serde_json::Value;

use crate::support::*;

const AGENT: &str = "cpus:2;mem:2048;disk:1000;ports:[31000-31009]";

fn small() -> Resources {
    Resources::new()
        .with_scalar("cpus", 0.5)
        .with_scalar("mem", 64.0)
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_api_lists_filters_finds_and_refuses_with_named_errors() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "op-host");
    wait_for_agents(&url, 1).await;
    let mut config = agora_sdk::FrameworkConfig::new(&url, "op-framework");
    config.role = "web".into();
    config.webui_url = Some("http://127.0.0.1:9/op-framework/".into());
    let mut f = TestFramework::start_with(config).await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let tasks = vec![
        task("sleeper", "echo to-the-log; exec sleep 60", &small()),
        task("quick", "true", &small()),
    ];
    f.driver
        .accept(&[offer_id(&offer)], tasks, Some(0.0))
        .await
        .expect("accept");
    f.wait_state("sleeper", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    f.wait_state("quick", TaskState::TaskFinished, Duration::from_secs(10))
        .await;
    let agent_id = state(&url).await["agents"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Agents, with the tasks on each.
    let (code, body) = get(&format!("{url}/api/v1/agents")).await;
    assert_eq!(code, 200);
    assert_eq!(body["agents"][0]["hostname"], "op-host");
    assert_eq!(body["agents"][0]["tasks"][0]["id"], "sleeper", "{body:#}");
    // The agent's usage is its running tasks' cgroup accounting.
    wait_until(
        "the agent's usage to be reported",
        Duration::from_secs(10),
        || async {
            let (_, body) = get(&format!("{url}/api/v1/agents")).await;
            (body["agents"][0]["usage"]["memory_bytes"].as_u64()? > 0).then_some(())
        },
    )
    .await;
    assert_eq!(body["agents"][0]["task_count"], 1, "{body:#}");
    // A page of agents says how many there are in all.
    let (code, body) = get(&format!("{url}/api/v1/agents?limit=1")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            body["total"].as_u64(),
            body["agents"][0]["hostname"].as_str()
        ),
        (Some(1), Some("op-host"))
    );
    // Its tasks counted and their usage summed, not listed.
    let on_page = &body["agents"][0];
    assert_eq!(on_page["task_count"], 1, "{body:#}");
    assert!(
        on_page["usage"]["memory_bytes"].as_u64() > Some(0),
        "{body:#}"
    );
    assert!(on_page.get("tasks").is_none(), "{body:#}");
    let (_, body) = get(&format!("{url}/api/v1/agents?offset=1")).await;
    assert_eq!(
        (
            body["total"].as_u64(),
            body["agents"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
    for (query, parameter) in [("limit=0", "`limit`"), ("state=x", "`state`")] {
        let (code, body) = get(&format!("{url}/api/v1/agents?{query}")).await;
        assert_eq!(code, 400, "{query}");
        assert!(error_of(&body).contains(parameter), "{query}: {body}");
    }

    // The summary adds up what the agents and tasks say.
    let (code, body) = get(&format!("{url}/api/v1/summary")).await;
    assert_eq!(code, 200);
    assert_eq!(body["agents"]["total"], 1, "{body:#}");
    assert_eq!(body["agents"]["by_status"]["active"], 1, "{body:#}");
    assert_eq!(body["tasks"]["total"], 2, "{body:#}");
    assert_eq!(body["tasks"]["by_state"]["TASK_RUNNING"], 1, "{body:#}");
    assert_eq!(body["tasks"]["by_state"]["TASK_FINISHED"], 1, "{body:#}");
    assert_eq!(body["frameworks"]["total"], 1, "{body:#}");
    assert_eq!(body["resources"]["total"]["cpus"], 2.0, "{body:#}");
    assert!(
        body["resources"]["used"]["cpus"].as_f64() > Some(0.0),
        "the sleeper's cpus: {body:#}"
    );

    let (code, body) = get(&format!("{url}/api/v1/agents/{agent_id}")).await;
    assert_eq!((code, body["id"].as_str()), (200, Some(agent_id.as_str())));
    let (code, body) = get(&format!("{url}/api/v1/agents/nope")).await;
    assert_eq!(code, 404);
    assert!(error_of(&body).contains("nope"));

    // Frameworks.
    let (code, body) = get(&format!("{url}/api/v1/frameworks/{}", f.id)).await;
    assert_eq!(code, 200);
    assert_eq!(body["name"], "op-framework");
    assert_eq!(body["webui_url"], "http://127.0.0.1:9/op-framework/");
    assert_eq!(body["tasks"].as_array().map(Vec::len), Some(2));
    assert_eq!(get(&format!("{url}/api/v1/frameworks/ghost")).await.0, 404);

    // Tasks: filters, pages, lookups, and bad parameters named.
    let (_, body) = get(&format!("{url}/api/v1/tasks?state=TASK_RUNNING")).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["tasks"][0]["id"], "sleeper");
    let (_, body) = get(&format!(
        "{url}/api/v1/tasks?framework={}&limit=1&offset=1",
        f.id
    ))
    .await;
    assert_eq!(
        (
            body["total"].as_u64(),
            body["tasks"].as_array().map(Vec::len)
        ),
        (Some(2), Some(1))
    );
    let (_, body) = get(&format!(
        "{url}/api/v1/tasks?agent={agent_id}&state=TASK_FINISHED"
    ))
    .await;
    assert_eq!(body["tasks"][0]["id"], "quick");
    // The web UI's filter: any case, in ids, states, messages and hosts;
    // a page names its tasks' hosts.
    for (q, found) in [
        ("SLEEP", vec!["sleeper"]),
        ("task_finished", vec!["quick"]),
        ("OP-host", vec!["quick", "sleeper"]),
        ("no-such-thing", vec![]),
    ] {
        let (code, body) = get(&format!("{url}/api/v1/tasks?q={q}")).await;
        assert_eq!(code, 200, "{q}");
        let ids: Vec<&str> = body["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(
            (ids, body["total"].as_u64()),
            (found.clone(), Some(found.len() as u64)),
            "q={q}"
        );
    }
    let (_, body) = get(&format!("{url}/api/v1/tasks?limit=1")).await;
    assert_eq!(body["hostnames"][&agent_id], "op-host", "{body:#}");
    for (query, parameter) in [
        ("state=RUNNING", "`state`"),
        ("limit=0", "`limit`"),
        ("limit=many", "`limit`"),
        ("offset=-1", "`offset`"),
        ("colour=red", "`colour`"),
    ] {
        let (code, body) = get(&format!("{url}/api/v1/tasks?{query}")).await;
        assert_eq!(code, 400, "{query}");
        assert!(error_of(&body).contains(parameter), "{query}: {body}");
    }
    let (code, body) = get(&format!("{url}/api/v1/tasks/sleeper")).await;
    assert_eq!((code, body["state"].as_str()), (200, Some("TASK_RUNNING")));
    assert_eq!(get(&format!("{url}/api/v1/tasks/ghost")).await.0, 404);

    // Sandbox files through the master.
    let (code, body) = get(&format!("{url}/api/v1/tasks/sleeper/files")).await;
    assert_eq!(code, 200, "{body}");
    let names: Vec<&str> = body["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        names.contains(&"stdout") && names.contains(&"stderr"),
        "{names:?}"
    );
    let (code, body) = get(&format!(
        "{url}/api/v1/tasks/sleeper/files/read?path=stdout"
    ))
    .await;
    assert_eq!((code, body["data"].as_str()), (200, Some("to-the-log\n")));
    let (code, body) = get(&format!("{url}/api/v1/tasks/sleeper/files/read")).await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("`path`"));
    let (code, _) = get(&format!(
        "{url}/api/v1/tasks/sleeper/files/read?path=../../../etc/passwd"
    ))
    .await;
    assert_eq!(code, 400, "the agent refuses paths out of the sandbox");

    // Offers outstanding (the framework sits on one), and roles.
    let offers = wait_until("an outstanding offer", Duration::from_secs(10), || async {
        let (_, body) = get(&format!("{url}/api/v1/offers")).await;
        body["offers"].as_array().filter(|o| !o.is_empty()).cloned()
    })
    .await;
    assert_eq!(offers[0]["agent_id"], agent_id);
    let (code, body) = send(
        reqwest::Method::PUT,
        &format!("{url}/api/v1/roles/web"),
        r#"{"weight": 3}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = get(&format!("{url}/api/v1/roles")).await;
    let web = body["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "web")
        .cloned()
        .expect("web");
    assert_eq!(web["weight"], 3.0);
    assert!(web["dominant_share"].as_f64().expect("share") > 0.0);
    for (body, field) in [
        (r#"{"weight": -1}"#, "weight"),
        (r#"{"weight": "x"}"#, "weight"),
        ("{not json", "JSON"),
    ] {
        let (code, answer) = send(
            reqwest::Method::PUT,
            &format!("{url}/api/v1/roles/web"),
            body,
        )
        .await;
        assert_eq!(code, 400, "{body}");
        assert!(error_of(&answer).contains(field), "{body}: {answer}");
    }
    assert_eq!(get(&format!("{url}/api/v1/nothing/here")).await.0, 404);

    // Hostile input is refused, naming what is wrong, and changes nothing.
    for (role, body, field) in [
        ("a%01b", r#"{"weight": 2}"#, "role"),
        ("tiny", r#"{"weight": 5e-324}"#, "weight"),
        ("web", r#"{"weight": 2, "wieght": 3}"#, "wieght"),
        ("web", "[1, 2]", "object"),
    ] {
        let (code, answer) = send(
            reqwest::Method::PUT,
            &format!("{url}/api/v1/roles/{role}"),
            body,
        )
        .await;
        assert_eq!(code, 400, "{role} {body}");
        assert!(error_of(&answer).contains(field), "{body}: {answer}");
    }
    let long = "r".repeat(5000);
    let (code, answer) = send(
        reqwest::Method::PUT,
        &format!("{url}/api/v1/roles/{long}"),
        r#"{"weight": 2}"#,
    )
    .await;
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{agent_id}/drain"),
        r#"{"kil_tasks": true}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&answer).contains("kil_tasks"), "{answer}");
    let (_, agents) = get(&format!("{url}/api/v1/agents")).await;
    assert_eq!(
        agents["agents"][0]["draining"], false,
        "a refused drain drains nothing"
    );
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{agent_id}/undrain"),
        r#"{"now": true}"#,
    )
    .await;
    assert_eq!(code, 400);
    // A role's weight can be taken back.
    let (code, _) = send(
        reqwest::Method::DELETE,
        &format!("{url}/api/v1/roles/web"),
        "",
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = send(
        reqwest::Method::DELETE,
        &format!("{url}/api/v1/roles/web"),
        "",
    )
    .await;
    assert_eq!(code, 404, "nothing left to reset");
    // Bad numbers through the file proxy, and at the agent itself: JSON 400s.
    let (code, answer) = get(&format!(
        "{url}/api/v1/tasks/sleeper/files/read?path=stdout&offset=abc"
    ))
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&answer).contains("`offset`"), "{answer}");
    let endpoint = agent_endpoint(&url, "op-host").await;
    let (code, answer) = get(&format!("{endpoint}/files/read?path=x&length=-1")).await;
    assert_eq!(code, 400);
    assert!(error_of(&answer).contains("length"), "{answer}");

    // A subscription with a silly failover timeout or role is refused, and
    // so is a web UI address the framework does not connect from (the
    // master would relay `/hostile/…` there).
    for (role, failover, webui) in [
        ("*", 1e300_f64, None),
        ("a b", 60.0, None),
        ("*", 60.0, Some("http://127.0.0.2:22/")),
        ("*", 60.0, Some("file:///etc/passwd")),
    ] {
        let mut config = agora_sdk::FrameworkConfig::new(&url, "hostile");
        config.role = role.into();
        config.failover_timeout = Duration::from_secs_f64(failover.min(1e18));
        config.webui_url = webui.map(str::to_string);
        let refused = agora_sdk::Driver::new(config)
            .expect("driver")
            .run(Recorder::new(tokio::sync::mpsc::unbounded_channel().0))
            .await;
        assert!(
            matches!(refused, Err(agora_sdk::SdkError::SubscribeRefused(_))),
            "role {role:?}, failover {failover}, webui {webui:?}: {:?}",
            refused.err()
        );
    }
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_stops_offers_and_kills_on_request_and_teardown_removes_a_framework() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "drainee");
    wait_for_agents(&url, 1).await;
    let agent_id = state(&url).await["agents"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut f = TestFramework::start(&url, "drained", "*").await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("resident", "exec sleep 60", &small())],
            Some(0.0),
        )
        .await
        .expect("accept");
    f.wait_state("resident", TaskState::TaskRunning, Duration::from_secs(10))
        .await;

    assert_eq!(
        send(
            reqwest::Method::POST,
            &format!("{url}/api/v1/agents/ghost/drain"),
            ""
        )
        .await
        .0,
        404
    );
    let (code, body) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{agent_id}/drain"),
        r#"{"kill_tasks": "yes"}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("kill_tasks"));
    // Drain without killing: no offers while drained, the task keeps running.
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{agent_id}/drain"),
        "{}",
    )
    .await;
    assert_eq!(code, 200);
    wait_until(
        "no offers for a drained agent",
        Duration::from_secs(10),
        || async {
            let (_, body) = get(&format!("{url}/api/v1/offers")).await;
            body["offers"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        },
    )
    .await;
    let (_, agent) = get(&format!("{url}/api/v1/agents/{agent_id}")).await;
    assert_eq!(agent["draining"], true);
    let (_, t) = get(&format!("{url}/api/v1/tasks/resident")).await;
    assert_eq!(t["state"], "TASK_RUNNING");
    // Back in service: offers again.
    assert_eq!(
        send(
            reqwest::Method::POST,
            &format!("{url}/api/v1/agents/{agent_id}/undrain"),
            ""
        )
        .await
        .0,
        200
    );
    f.next_offers(Duration::from_secs(10)).await;
    // Drain with kills.
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{agent_id}/drain"),
        r#"{"kill_tasks": true}"#,
    )
    .await;
    assert_eq!(code, 200);
    f.wait_state("resident", TaskState::TaskKilled, Duration::from_secs(15))
        .await;

    // Teardown by the operator.
    assert_eq!(
        send(
            reqwest::Method::POST,
            &format!("{url}/api/v1/frameworks/ghost/teardown"),
            ""
        )
        .await
        .0,
        404
    );
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/frameworks/{}/teardown", f.id),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        get(&format!("{url}/api/v1/frameworks/{}", f.id)).await.0,
        404
    );
}

/// Reads server-sent events from `url` until `done` says enough.
/// Connects to the event stream at `url`: once this returns, the master
/// has subscribed it, so nothing that happens afterwards is missed.
async fn follow_events(url: String) -> reqwest::Response {
    let response = fetch(&url).await.expect("GET events");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    response
}

/// Reads events from `response` until `done` says so.
async fn read_events(
    mut response: reqwest::Response,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while !done(&events) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("events keep coming")
            .expect("stream")
            .expect("not closed");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(|s| s.trim().to_string());
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|s| s.trim().to_string());
            if let (Some(name), Some(data)) = (name, data) {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_heartbeats_is_never_given_up_on() {
    // The master's agent timeout here is 2 s: an agent is heard by its
    // session's connection as each message arrives (it stamps them), and
    // one that keeps heartbeating is never marked unreachable.
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "steady");
    wait_for_agents(&url, 1).await;
    let stream = follow_events(format!("{url}/api/v1/events?types=agent_unreachable")).await;
    // Watched for three timeouts: no `agent_unreachable` may come.
    let given_up = tokio::time::timeout(
        Duration::from_secs(6),
        read_events(stream, |events| !events.is_empty()),
    )
    .await;
    assert!(given_up.is_err(), "given up on: {given_up:?}");
    let s = state(&url).await;
    assert_eq!(s["agents"][0]["status"], "active", "{s:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_a_task_through_its_whole_life_and_metrics_count_it() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    // Following before anything happens: events are not replayed.
    let stream = follow_events(format!("{url}/api/v1/events")).await;
    // And a stream of two kinds only, as the web UI follows (no task
    // updates).
    let quiet = follow_events(format!(
        "{url}/api/v1/events?types=agent_added,role_weight_changed"
    ))
    .await;
    let quiet_reader = tokio::spawn(read_events(quiet, |events| {
        events.iter().any(|(n, _)| n == "role_weight_changed")
    }));
    let reader = tokio::spawn(read_events(stream, |events| {
        events
            .iter()
            .any(|(_, e)| e["task_id"] == "lifer" && e["state"] == "TASK_FINISHED")
    }));
    let _agent = start_agent(&url, dir.path(), AGENT, "eventful");
    wait_for_agents(&url, 1).await;
    let mut f = TestFramework::start(&url, "eventful", "*").await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("lifer", "sleep 0.2", &small())],
            Some(0.0),
        )
        .await
        .expect("accept");
    let events = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("in time")
        .expect("reader");

    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"agent_added"), "{names:?}");
    assert!(names.contains(&"framework_added"), "{names:?}");
    let life: Vec<&str> = events
        .iter()
        .filter(|(n, e)| n == "task_updated" && e["task_id"] == "lifer")
        .filter_map(|(_, e)| e["state"].as_str())
        .collect();
    assert_eq!(
        life,
        [
            "TASK_STAGING",
            "TASK_STARTING",
            "TASK_RUNNING",
            "TASK_FINISHED"
        ]
    );
    // The stream of two kinds saw its agent, none of the task's updates
    // (they came before the weight), then the weight.
    let (code, body) = send(
        reqwest::Method::PUT,
        &format!("{url}/api/v1/roles/eventful"),
        r#"{"weight": 2}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let quiet = tokio::time::timeout(Duration::from_secs(30), quiet_reader)
        .await
        .expect("in time")
        .expect("reader");
    let names: Vec<&str> = quiet.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["agent_added", "role_weight_changed"]);
    for (query, named) in [
        ("types=task_exploded", "`task_exploded`"),
        ("types=", "`types`"),
        ("colour=red", "`colour`"),
    ] {
        let (code, body) = get(&format!("{url}/api/v1/events?{query}")).await;
        assert_eq!(code, 400, "{query}");
        assert!(error_of(&body).contains(named), "{query}: {body}");
    }

    // Metrics: Prometheus text, every sample line well-formed, the launch counted.
    let text = fetch(format!("{url}/metrics"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP") | Some(&"TYPE")),
                "{line}"
            );
            if words[0] == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram"].contains(&words[2]),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        samples.insert(series.to_string(), value);
    }
    assert!(samples["agora_tasks_launched_total"] >= 1.0, "{text}");
    assert!(samples["agora_offers_made_total"] >= 1.0);
    // The agent's admission and the task were written to the registry.
    assert!(samples["agora_registry_commits_total"] >= 1.0, "{text}");
    assert_eq!(samples["agora_agents{status=\"active\"}"], 1.0);
    assert!(samples["agora_resources_total{resource=\"cpus\"}"] == 2.0);
    assert!(samples["agora_allocation_pass_seconds_count"] >= 1.0);
    assert!(samples["agora_status_update_ack_seconds_count"] >= 1.0);
    assert_eq!(samples["agora_tasks{state=\"TASK_FINISHED\"}"], 1.0);
    // This scrape waited for its own fresh snapshot, and counted it.
    assert!(samples["agora_read_wait_seconds_count"] >= 1.0, "{text}");
    assert!(
        samples["agora_read_wait_seconds_bucket{le=\"+Inf\"}"]
            >= samples["agora_read_wait_seconds_bucket{le=\"0.0005\"}"]
    );
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_shows_the_agent_the_task_and_its_log_in_a_real_browser() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Debian's chromium must be installed (apt-get install chromium); .ci/run does");
    let dir = tempdir();
    let data = dir.path().join("data");
    let dev = start_dev(
        &data,
        &["--resources", "cpus:2;mem:2048", "--hostname", "ui-host"],
    );
    let url = dev.url.clone().expect("url");
    wait_for_agents(&url, 1).await;
    let mut f = TestFramework::start(&url, "ui-framework", "*").await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let cmd = "echo hello-from-the-browser-test; exec sleep 60";
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("ui-task", cmd, &small())],
            Some(3600.0),
        )
        .await
        .expect("accept");
    f.wait_state("ui-task", TaskState::TaskRunning, Duration::from_secs(10))
        .await;

    // A batch job, through the master's relay to the batch framework.
    let submitted = client()
        .post(format!("{url}/batch/v1/jobs"))
        .body("id = \"ui-job\"\ncmd = \"echo out-of-a-batch-job\"\n")
        .send()
        .await
        .expect("submit");
    assert_eq!(submitted.status().as_u16(), 201);
    // Two apps through the relay to the services framework: one runs, one
    // waits for ports this agent does not offer.
    for spec in [
        "id = \"ui-app\"\ncmd = \"exec sleep 600\"\n",
        "id = \"ui-waiting\"\ncmd = \"exec sleep 600\"\nports = [\"http\"]\n",
    ] {
        let deployed = client()
            .post(format!("{url}/services/v1/apps"))
            .body(spec)
            .send()
            .await
            .expect("deploy");
        assert_eq!(deployed.status().as_u16(), 201);
    }

    // Playwright drives Debian's chromium: the agent and the task must be on
    // the page, and clicking the task must show its log; so must the job.
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/browser (.ci/run does)"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui.png");
    let child = tokio::process::Command::new("node")
        .arg(browser_dir.join("ui-check.mjs"))
        .args([
            url.as_str(),
            "ui-host",
            "ui-task",
            "hello-from-the-browser-test",
        ])
        .arg(&shot)
        .args(["ui-job", "out-of-a-batch-job"])
        .args(["ui-app", "ui-waiting", "insufficient ports"])
        .env("CHROMIUM", chromium)
        // The dev master asks for the user's token: the page first shows the
        // sign-in form, then takes the token from a `#token=` link.
        .env(
            "AGORA_UI_TOKEN",
            user_token().expect("agora dev wrote the user's token"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the browser check finishes")
        .expect("node ran");
    assert!(
        output.status.success(),
        "browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(shot.exists(), "a screenshot for people to look at");
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_half_sent_requests_are_dropped_and_cannot_crowd_out_agents() {
    let master = start_master(
        "127.0.0.1:0",
        &[
            "--header-read-timeout",
            "1s",
            "--max-connections-per-ip",
            "200",
        ],
    );
    let url = master.url.clone().expect("url");
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // An attacker on another loopback address opens many connections and
    // sends half a request on each.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        let Ok(mut stream) = socket
            .connect(format!("127.0.0.1:{port}").parse().expect("address"))
            .await
        else {
            continue;
        };
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await;
        idle.push(stream);
    }
    // An agent from elsewhere still gets in.
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "crowded");
    wait_for_agents(&url, 1).await;
    // The half-sent requests are cut off once their headers are late (the
    // master closes them; the ones over the bound were closed at once).
    let mut open = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for stream in &mut idle {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(stream, &mut buf))
            .await
        {
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => open += 1,
        }
    }
    assert_eq!(open, 0, "connections the master kept open");
    assert_eq!(get(&format!("{url}/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_request_to_a_framework_that_never_answers_ends_with_504() {
    let master = start_master("127.0.0.1:0", &["--relay-timeout", "1s"]);
    let url = master.url.clone().expect("url");
    // Accepts connections (as a frozen process's port does) and never
    // answers on them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut config = agora_sdk::FrameworkConfig::new(&url, "silent");
    config.webui_url = Some(format!("http://{addr}/"));
    let f = TestFramework::start_with(config).await;

    let (code, body) = tokio::time::timeout(
        Duration::from_secs(30),
        get(&format!("{url}/silent/v1/anything")),
    )
    .await
    .expect("the master answered the caller");
    assert_eq!(code, 504, "{body}");
    let message = error_of(&body);
    assert!(
        message.contains("`silent`") && message.contains("did not begin to answer"),
        "{message}"
    );
    f.teardown().await;
    held.abort();
}
