//! The services framework end to end: a real master, real agents running
//! real containers (busybox httpd as the app), `agora services` as its own
//! process with its built-in load balancer, and apps deployed through the
//! master's port (HTTP and the CLI).
//!
//! Tests run in parallel on one machine whose agents share the host
//! network, so each test owns a slot of host ports (agents' port ranges and
//! its service ports) that no other test uses.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::*;

/// Host ports of test `slot`: 40 for agents' ranges, then service ports.
fn ports(slot: u16) -> (u16, u16) {
    let base = 20_000 + slot * 50;
    (base, base + 45)
}

/// A master, agents, and the services framework, each its own process.
struct Cluster {
    url: String,
    services: Proc,
    services_data: TempDir,
    agents: Vec<(Proc, TempDir, String)>,
    _master: Proc,
}

impl Cluster {
    /// `agents` agents (hostnames a, b, …) with 2 cpus and 1 GiB each and
    /// 20 ports each from the slot.
    async fn start(slot: u16, agents: usize) -> Cluster {
        let master = start_master("127.0.0.1:0", &[]);
        let url = master.url.clone().expect("master url");
        let (base, _) = ports(slot);
        let mut procs = Vec::new();
        for i in 0..agents {
            let host = ((b'a' + i as u8) as char).to_string();
            let first = base + i as u16 * 20;
            let resources = format!("cpus:2;mem:1024;ports:[{first}-{}]", first + 19);
            let dir = tempdir();
            let agent = start_agent(&url, dir.path(), &resources, &host);
            procs.push((agent, dir, host));
        }
        wait_for_agents(&url, agents).await;
        let services_data = tempdir();
        let services = start_services(&url, services_data.path(), &SERVICES_FLAGS);
        wait_for_services(&url).await;
        Cluster {
            url,
            services,
            services_data,
            agents: procs,
            _master: master,
        }
    }

    async fn restart_services(&mut self) {
        self.services = start_services(&self.url, self.services_data.path(), &SERVICES_FLAGS);
        wait_for_services(&self.url).await;
    }

    fn agent_data(&self, host: &str) -> &Path {
        self.agents
            .iter()
            .find(|(_, _, h)| h == host)
            .map(|(_, d, _)| d.path())
            .expect("an agent of that name")
    }
}

const SERVICES_FLAGS: [&str; 4] = ["--reconcile-grace", "5s", "--lb-address", "127.0.0.1"];

/// Waits until the master relays `/services/` to a subscribed framework.
async fn wait_for_services(master: &str) {
    let client = client();
    wait_until(
        "the services API through the master",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("{master}/services/v1/health"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
}

/// An httpd app that serves `version` at `/`, with an HTTP health check.
fn web_spec(id: &str, version: &str, instances: u32, service_port: Option<u16>) -> String {
    let mut spec = format!(
        r#"
id = "{id}"
cmd = "mkdir -p www && echo {version} > www/index.html && exec busybox httpd -f -p $PORT_HTTP -h www"
cpus = 0.1
mem = 16
instances = {instances}
ports = ["http"]
kill_grace_period = "2s"
[[health_checks]]
protocol = "http"
port = "http"
path = "/index.html"
grace_period = "10s"
interval = "300ms"
timeout = "1s"
max_consecutive_failures = 3
[backoff]
initial = "200ms"
"#
    );
    if let Some(port) = service_port {
        spec.push_str(&format!(
            "[service]\nport = {port}\ndrain_timeout = \"10s\"\n"
        ));
    }
    spec
}

async fn post(master: &str, path: &str, body: String) -> (u16, Value) {
    let r = client()
        .post(format!("{master}/services/v1{path}"))
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn deploy(master: &str, spec: &str) -> Value {
    let (status, body) = post(master, "/apps", spec.to_string()).await;
    assert_eq!(status, 201, "deploy refused: {body}");
    body["deployments"][0].clone()
}

async fn app(master: &str, id: &str) -> Value {
    fetch(format!("{master}/services/v1/apps/{id}"))
        .await
        .expect("GET app")
        .json()
        .await
        .expect("app JSON")
}

/// Waits until deployment `number` of `id` is in `state`; returns the app.
async fn wait_deployment(
    master: &str,
    id: &str,
    number: u64,
    state: &str,
    within: Duration,
) -> Value {
    wait_until(
        &format!("deployment {number} of {id} to be {state}"),
        within,
        || async {
            let a = app(master, id).await;
            let d = a["deployments"]
                .as_array()?
                .iter()
                .find(|d| d["id"].as_u64() == Some(number))?
                .clone();
            (d["state"] == state).then_some(a)
        },
    )
    .await
}

async fn endpoints(master: &str, id: &str) -> Vec<Value> {
    fetch(format!("{master}/services/v1/apps/{id}/endpoints"))
        .await
        .expect("GET endpoints")
        .json::<Value>()
        .await
        .expect("endpoints JSON")["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_healthy(master: &str, id: &str, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} healthy endpoints of {id}"),
        Duration::from_secs(60),
        || async {
            let e = endpoints(master, id).await;
            let a = app(master, id).await;
            (e.len() == n && a["status"] == "HEALTHY").then_some(e)
        },
    )
    .await
}

fn task_ids(app: &Value) -> BTreeSet<String> {
    app["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["task_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// GET / through the load balancer, on a fresh connection.
async fn through_lb(client: &reqwest::Client, port: u16) -> Result<String, String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/index.html"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    r.text()
        .await
        .map(|t| t.trim().to_string())
        .map_err(|e| e.to_string())
}

fn fresh_connections() -> reqwest::Client {
    agora_proto::tls::install_default_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_serves_three_healthy_endpoints_and_a_rolling_upgrade_drops_no_request() {
    let cluster = Cluster::start(0, 2).await;
    let (_, service) = ports(0);
    let d = deploy(&cluster.url, &web_spec("web", "v1", 3, Some(service))).await;
    assert_eq!(d["version"], 1);
    let eps = wait_healthy(&cluster.url, "web", 3).await;
    let hosts: BTreeSet<&str> = eps.iter().filter_map(|e| e["host"].as_str()).collect();
    assert!(!hosts.is_empty());
    let client = fresh_connections();
    assert_eq!(through_lb(&client, service).await.as_deref(), Ok("v1"));

    // A client keeps asking through the balancer for the whole upgrade.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let client = fresh_connections();
        let (mut ok, mut failed, mut versions) = (0u32, Vec::new(), BTreeSet::new());
        loop {
            match through_lb(&client, service).await {
                Ok(v) => {
                    ok += 1;
                    versions.insert(v);
                }
                Err(e) => failed.push(e),
            }
            if *stop_rx.borrow_and_update() {
                return (ok, failed, versions);
            }
        }
    });
    let d = deploy(&cluster.url, &web_spec("web", "v2", 3, Some(service))).await;
    let number = d["deployment"].as_u64().expect("deployment id");
    let a = wait_deployment(
        &cluster.url,
        "web",
        number,
        "SUCCEEDED",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(a["version"], 2);
    // The last old instances drained; a few more requests on the new ones.
    wait_until("only v2 answering", Duration::from_secs(30), || async {
        let v = through_lb(&fresh_connections(), service).await.ok()?;
        (v == "v2").then_some(())
    })
    .await;
    stop_tx.send_replace(true);
    let (ok, failed, versions) = load.await.expect("load task");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "the client kept asking ({ok} requests)");
    assert!(
        versions.contains("v1") && versions.contains("v2"),
        "{versions:?}"
    );
    let a = app(&cluster.url, "web").await;
    assert_eq!(a["instances"]["healthy"], 3);
    assert!(
        a["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .all(|t| t["version"] == 2)
    );

    // The CLI agrees.
    let out = agora_cli(&cluster.url, &["app", "endpoints", "web"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = agora_cli(&cluster.url, &["app", "versions", "web"]);
    assert!(out.contains("v1") && out.contains("v2"), "{out}");
}

/// Runs `agora …` against `master`; its stdout.
fn agora_cli(master: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(args)
        .env("AGORA_MASTER", master)
        .output()
        .expect("running agora");
    assert!(
        out.status.success(),
        "agora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_version_rolls_back_by_itself_and_manual_rollback_restores_an_old_one() {
    let cluster = Cluster::start(1, 1).await;
    let (_, service) = ports(1);
    deploy(&cluster.url, &web_spec("api", "v1", 2, Some(service))).await;
    wait_healthy(&cluster.url, "api", 2).await;
    let before = task_ids(&app(&cluster.url, "api").await);
    // v2 exits at once: it fails, fails again, and is rolled back.
    let broken = web_spec("api", "v2", 2, Some(service))
        .replace("mkdir -p www", "echo broken >&2; exit 1; mkdir -p www")
        + "[upgrade]\nmax_failures = 3\n";
    let d = deploy(&cluster.url, &broken).await;
    let number = d["deployment"].as_u64().expect("id");
    let a = wait_deployment(
        &cluster.url,
        "api",
        number,
        "ROLLED_BACK",
        Duration::from_secs(60),
    )
    .await;
    let message = a["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["id"].as_u64() == Some(number))
        .map(|d| d["message"].to_string())
        .unwrap_or_default();
    assert!(message.contains("failed"), "{message}");
    wait_until(
        "the rollback to finish",
        Duration::from_secs(30),
        || async {
            let a = app(&cluster.url, "api").await;
            (a["status"] == "HEALTHY" && a["deployment"]["kind"] == "rollback").then_some(())
        },
    )
    .await;
    // The v1 instances served throughout: the same tasks, still there.
    assert_eq!(task_ids(&app(&cluster.url, "api").await), before);
    let client = fresh_connections();
    assert_eq!(through_lb(&client, service).await.as_deref(), Ok("v1"));

    // v4 replaces v1's definition; rolling back to v1 brings it back.
    let d = deploy(&cluster.url, &web_spec("api", "v4", 2, Some(service))).await;
    assert_eq!(d["version"], 4);
    wait_deployment(
        &cluster.url,
        "api",
        d["deployment"].as_u64().expect("id"),
        "SUCCEEDED",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(through_lb(&client, service).await.as_deref(), Ok("v4"));
    let out = agora_cli(
        &cluster.url,
        &["app", "rollback", "api", "--to", "1", "--wait"],
    );
    assert!(out.contains("succeeded"), "{out}");
    let a = app(&cluster.url, "api").await;
    assert_eq!(a["version"], 5, "a rollback is a new version");
    wait_until(
        "v1 through the balancer",
        Duration::from_secs(20),
        || async { (through_lb(&fresh_connections(), service).await.ok()? == "v1").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_three_to_six_to_two() {
    let cluster = Cluster::start(2, 2).await;
    deploy(&cluster.url, &web_spec("scaled", "v1", 3, None)).await;
    wait_healthy(&cluster.url, "scaled", 3).await;
    let out = agora_cli(&cluster.url, &["app", "scale", "scaled", "6", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    wait_healthy(&cluster.url, "scaled", 6).await;
    let (status, body) = post(
        &cluster.url,
        "/apps/scaled/scale",
        json!({"instances": 2}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_healthy(&cluster.url, "scaled", 2).await;
    wait_until("the surplus to stop", Duration::from_secs(30), || async {
        let a = app(&cluster.url, "scaled").await;
        (a["tasks"].as_array()?.len() == 2).then_some(())
    })
    .await;
    // The master agrees: exactly two of the framework's tasks still run.
    let s = state(&cluster.url).await;
    let running = s["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["state"] == "TASK_RUNNING")
        .count();
    assert_eq!(running, 2);
    let (status, body) = post(
        &cluster.url,
        "/apps/scaled/scale",
        json!({"instances": -1}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "instances");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_and_an_unhealthy_one_are_replaced() {
    let cluster = Cluster::start(3, 1).await;
    deploy(&cluster.url, &web_spec("heal", "v1", 2, None)).await;
    let eps = wait_healthy(&cluster.url, "heal", 2).await;
    let victim = eps[0]["task_id"].as_str().expect("task id").to_string();
    // Kill the instance's processes from outside, as a crash would.
    let endpoint = agent_endpoint(&cluster.url, "a").await;
    let container = container_of(&endpoint, &victim).await;
    let id = container["container_id"]
        .as_str()
        .expect("container id")
        .to_string();
    for pid in cgroup_pids(&id) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let eps = wait_until("a replacement", Duration::from_secs(60), || async {
        let e = endpoints(&cluster.url, "heal").await;
        (e.len() == 2 && e.iter().all(|e| e["task_id"] != victim.as_str())).then_some(e)
    })
    .await;
    assert_eq!(eps.len(), 2);

    // An app whose health check starts failing: killed by its agent with
    // a health-check reason, and replaced.
    let sick = r#"
id = "sick"
cmd = "mkdir -p www; echo ok > www/index.html; (sleep 2; rm www/index.html) & exec busybox httpd -f -p $PORT_HTTP -h www"
cpus = 0.1
mem = 16
ports = ["http"]
[[health_checks]]
path = "/index.html"
grace_period = "1s"
interval = "300ms"
max_consecutive_failures = 2
[backoff]
initial = "100ms"
"#;
    deploy(&cluster.url, sick).await;
    let first = wait_healthy(&cluster.url, "sick", 1).await[0]["task_id"]
        .as_str()
        .expect("id")
        .to_string();
    let killed = wait_until(
        "the unhealthy task to be killed",
        Duration::from_secs(30),
        || async {
            let s = state(&cluster.url).await;
            s["tasks"]
                .as_array()?
                .iter()
                .find(|t| t["id"] == first.as_str() && t["state"] == "TASK_KILLED")
                .cloned()
        },
    )
    .await;
    assert_eq!(killed["reason"], "REASON_TASK_UNHEALTHY", "{killed}");
    wait_until("a healthy replacement", Duration::from_secs(30), || async {
        let e = endpoints(&cluster.url, "sick").await;
        (e.len() == 1 && e[0]["task_id"] != first.as_str()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_of_a_stopped_agent_come_back_on_another() {
    let mut cluster = Cluster::start(4, 2).await;
    deploy(&cluster.url, &web_spec("moving", "v1", 2, None)).await;
    let eps = wait_healthy(&cluster.url, "moving", 2).await;
    let on_b: Vec<String> = {
        let a = app(&cluster.url, "moving").await;
        a["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["host"] == "b")
            .filter_map(|t| t["task_id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(on_b.len(), 1, "spread over both agents: {eps:?}");
    let b_data = cluster.agent_data("b").to_path_buf();
    let agent_b = cluster
        .agents
        .iter_mut()
        .find(|(_, _, h)| h == "b")
        .map(|(p, _, _)| p)
        .expect("agent b");
    agent_b.kill_hard();
    let eps = wait_until(
        "both instances on agent a",
        Duration::from_secs(60),
        || async {
            let a = app(&cluster.url, "moving").await;
            let e = endpoints(&cluster.url, "moving").await;
            let on_a = a["tasks"]
                .as_array()?
                .iter()
                .filter(|t| t["host"] == "a" && t["ready"] == true)
                .count();
            (on_a == 2 && e.len() == 2).then_some(e)
        },
    )
    .await;
    assert!(eps.iter().all(|e| e["task_id"] != on_b[0].as_str()));
    remove_containers(&b_data);
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_hostnames_with_too_few_agents_wait_with_the_reason() {
    let cluster = Cluster::start(5, 2).await;
    let spec = web_spec("spread", "v1", 3, None).replace(
        "instances = 3",
        "instances = 3\nconstraints = [[\"hostname\", \"UNIQUE\"]]",
    );
    deploy(&cluster.url, &spec).await;
    let a = wait_until(
        "two placed, one waiting with a reason",
        Duration::from_secs(60),
        || async {
            let a = app(&cluster.url, "spread").await;
            let reasons = a["waiting"]["reasons"].as_object()?;
            let unique = reasons.get("constraint hostname UNIQUE")?.as_u64()?;
            (a["instances"]["healthy"] == 2 && unique > 0 && a["waiting"]["unplaced"] == 1)
                .then_some(a)
        },
    )
    .await;
    let hosts: BTreeSet<String> = a["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["host"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hosts.len(), 2, "one per agent");
    let out = agora_cli(&cluster.url, &["app", "status", "spread"]);
    assert!(out.contains("constraint hostname UNIQUE"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscale_follows_a_cpu_burning_load_up_and_back_down() {
    let cluster = Cluster::start(6, 1).await;
    let dir = tempdir();
    let flag = dir.path().join("burn");
    let spec = format!(
        r#"
id = "auto"
cmd = "while true; do if [ -e {flag} ]; then i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; else sleep 0.2; fi; done"
cpus = 0.2
mem = 16
instances = 1
volumes = ["{dir}"]
[autoscale]
min = 1
max = 3
target_cpu = 0.5
cooldown = "3s"
"#,
        flag = flag.display(),
        dir = dir.path().display()
    );
    deploy(&cluster.url, &spec).await;
    wait_until("one instance running", Duration::from_secs(30), || async {
        (app(&cluster.url, "auto").await["status"] == "HEALTHY").then_some(())
    })
    .await;
    std::fs::write(&flag, b"").expect("start burning");
    let up = wait_until("a scale-up", Duration::from_secs(60), || async {
        let a = app(&cluster.url, "auto").await;
        (a["instances"]["wanted"].as_u64()? > 1).then_some(a)
    })
    .await;
    std::fs::remove_file(&flag).expect("stop burning");
    let kinds: Vec<String> = up["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    assert!(kinds.contains(&"autoscale".to_string()), "{kinds:?}");
    wait_until("back down to one", Duration::from_secs(90), || async {
        let a = app(&cluster.url, "auto").await;
        (a["instances"]["wanted"] == 1 && a["tasks"].as_array()?.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_services_framework_adopts_its_instances() {
    let mut cluster = Cluster::start(7, 1).await;
    deploy(&cluster.url, &web_spec("kept", "v1", 2, None)).await;
    wait_healthy(&cluster.url, "kept", 2).await;
    let before = task_ids(&app(&cluster.url, "kept").await);
    cluster.services.kill_hard();
    cluster.restart_services().await;
    let eps = wait_healthy(&cluster.url, "kept", 2).await;
    let after: BTreeSet<String> = eps
        .iter()
        .filter_map(|e| e["task_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(after, before, "the same tasks, adopted");
    // Nothing was launched again: the master knows just those two.
    let s = state(&cluster.url).await;
    let ids: BTreeSet<String> = s["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, before);
    assert!(
        s["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .all(|t| t["state"] == "TASK_RUNNING")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_specs_are_refused_with_their_field_and_change_nothing() {
    let cluster = Cluster::start(8, 1).await;
    let cases: &[(&str, &str)] = &[
        ("id = \"Bad\"\ncmd = \"x\"", "id"),
        ("id = \"a\"", "cmd"),
        ("id = \"a\"\ncmd = \"x\"\ncpus = -1", "cpus"),
        ("id = \"a\"\ncmd = \"x\"\ncpus = 64", "cpus"),
        ("id = \"a\"\ncmd = \"x\"\nmem = \"lots\"", "mem"),
        ("id = \"a\"\ncmd = \"x\"\ninstances = 1.5", "instances"),
        ("id = \"a\"\ncmd = \"x\"\nports = [1]", "ports[0]"),
        ("id = \"a\"\ncmd = \"x\"\ncolour = \"red\"", "colour"),
        (
            "id = \"a\"\ncmd = \"x\"\nconstraints = [[\"rack\", \"IS\", \"r9\"]]",
            "constraints",
        ),
        (
            "id = \"a\"\ncmd = \"x\"\n[[health_checks]]\nprotocol = \"udp\"",
            "health_checks[0].protocol",
        ),
        (
            "id = \"a\"\ncmd = \"x\"\n[upgrade]\nmaximum_over_capacity = -1",
            "upgrade.maximum_over_capacity",
        ),
        (
            "id = \"a\"\ncmd = \"x\"\n[autoscale]\nmax = 2",
            "autoscale.target_cpu",
        ),
        (
            "id = \"a\"\ncmd = \"x\"\nkill_grace_period = \"forever\"",
            "kill_grace_period",
        ),
        (
            "{\"id\": \"a\", \"cmd\": \"x\", \"instances\": -3}",
            "instances",
        ),
        ("not toml at all [", "spec"),
    ];
    for (spec, field) in cases {
        let (status, body) = post(&cluster.url, "/apps", spec.to_string()).await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert_eq!(body["field"], *field, "{spec}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.starts_with(field)),
            "{body}"
        );
    }
    let list: Value = fetch(format!("{}/services/v1/apps", cluster.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        list["apps"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );
    // Unknown apps are 404, and the CLI says so.
    let r = fetch(format!("{}/services/v1/apps/nope", cluster.url))
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["app", "status", "nope"])
        .env("AGORA_MASTER", &cluster.url)
        .output()
        .expect("agora");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app `nope`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_stream_as_events_and_a_standalone_lb_follows_them() {
    let cluster = Cluster::start(9, 1).await;
    let (_, service) = ports(9);
    let spec = web_spec("edge", "v1", 2, Some(service));
    let mut events = fetch(format!("{}/services/v1/events", cluster.url))
        .await
        .expect("event stream");
    deploy(&cluster.url, &spec).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("\"task_id\"") || seen.matches("\"task_id\"").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("endpoints in time")
            .expect("stream")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(last) = seen.rfind("event: endpoints") {
            seen = seen[last..].to_string();
        }
    }
    assert!(seen.contains("\"app\":\"edge\""), "{seen}");

    // `agora lb` on an "edge machine": a second loopback address, since
    // the built-in balancer holds the service port on 127.0.0.1.
    let _lb = LbProc::start(&cluster.url);
    wait_until(
        "the standalone lb serving",
        Duration::from_secs(30),
        || async {
            let r = fetch(format!("http://127.0.0.2:{service}/index.html"))
                .await
                .ok()?;
            (r.text().await.ok()?.trim() == "v1").then_some(())
        },
    )
    .await;
}

/// `agora lb` bound on 127.0.0.2 (an "edge machine" on loopback).
struct LbProc(std::process::Child);

impl LbProc {
    fn start(master: &str) -> LbProc {
        LbProc(
            std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
                .args(["lb", "--master", master, "--address", "127.0.0.2"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("agora lb"),
        )
    }
}

impl Drop for LbProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_services_replica_frozen_past_its_lease_stands_by_and_takes_over_again() {
    let etcd = start_etcd().await;
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("master url");
    let (base, _) = ports(10);
    let agent_data = tempdir();
    let _agent = start_agent(
        &url,
        agent_data.path(),
        &format!("cpus:2;mem:1024;ports:[{base}-{}]", base + 19),
        "a",
    );
    wait_for_agents(&url, 1).await;
    let mut flags = SERVICES_FLAGS.to_vec();
    flags.extend(["--etcd", etcd.url(), "--leader-lease", "1s"]);
    let state = [tempdir(), tempdir()];
    let mut replicas = [
        start_services(&url, state[0].path(), &flags),
        start_services(&url, state[1].path(), &flags),
    ];
    wait_for_services(&url).await;
    deploy(&url, &web_spec("kept", "v1", 2, None)).await;
    wait_healthy(&url, "kept", 2).await;
    let before = task_ids(&app(&url, "kept").await);

    // It takes over with the app as it was.
    freeze_the_active_replica_then_kill_the_other(&url, "services", &mut replicas).await;
    wait_healthy(&url, "kept", 2).await;
    assert_eq!(
        task_ids(&app(&url, "kept").await),
        before,
        "its instances, adopted"
    );
    let (status, body) = post(
        &url,
        "/apps/kept/scale",
        json!({"instances": 3}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_healthy(&url, "kept", 3).await;
}
