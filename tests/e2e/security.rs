//! A master with an auth file, tried as an attacker would: anonymous and
//! wrong credentials are refused (and logged without the credential), a
//! fake agent cannot join, one tenant's framework cannot use another's
//! role, run as root, see, read, kill or tear down another's, agents'
//! and frameworks' own APIs answer only the master, the ACLs reload on
//! SIGHUP, and drains land in the audit log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_sdk::{
    FrameworkConfig, RefusalReason, Resources, SdkError, TaskState, offer_id, task, v1,
};
use serde_json::Value;
use tonic::Code;

use crate::support::*;

const OPS: &str = "ops-token-0123456789abcdef";
const AGENTS: &str = "agents-token-0123456789ab";
const TEAM_A: &str = "team-a-token-0123456789ab";
const TEAM_B: &str = "team-b-token-0123456789ab";

/// Principals: an operator, the agents' join credential, and two tenants,
/// each allowed its own role; `more` is appended to `[acls]`.
fn write_auth(path: &Path, more: &str) {
    let text = format!(
        r#"
[[principals]]
name = "ops"
token = "{OPS}"

[[principals]]
name = "agents"
token = "{AGENTS}"

[[principals]]
name = "team-a"
token = "{TEAM_A}"

[[principals]]
name = "team-b"
token = "{TEAM_B}"

[acls]
register_agents = [{{ principals = ["agents"] }}]
register_frameworks = [{{ principals = ["team-a"], roles = ["a"] }},
                       {{ principals = ["team-b"], roles = ["b"] }}]
run_tasks = [{{ principals = "any", users = ["nobody"] }}]
teardown_frameworks = [{{ principals = ["ops"], framework_principals = "any" }}]
view_frameworks = [{{ principals = ["ops"], framework_principals = "any" }}]
view_tasks = [{{ principals = ["ops"], framework_principals = "any" }}]
access_sandboxes = [{{ principals = ["ops"], framework_principals = "any" }}]
{more}
"#
    );
    std::fs::write(path, text).expect("auth file");
}

const OPS_DRAIN: &str = r#"drain_agents = [{ principals = ["ops"] }]"#;

fn as_(token: &str) -> reqwest::Client {
    agora_proto::tls::install_default_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

async fn status_of(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A master with an auth file, and one agent that joined with the join token.
struct Secured {
    agent: Proc,
    master: Proc,
    url: String,
    auth: PathBuf,
    log: PathBuf,
    data: tempfile::TempDir,
    dir: tempfile::TempDir,
}

async fn secured() -> Secured {
    let dir = tempdir();
    let auth = dir.path().join("auth.toml");
    write_auth(&auth, OPS_DRAIN);
    let log = dir.path().join("master.log");
    let master = start_master_logging(
        "127.0.0.1:0",
        &["--auth", auth.to_str().expect("utf-8")],
        Some(&log),
    );
    let url = master.url.clone().expect("url");
    let join = dir.path().join("join-token");
    std::fs::write(&join, format!("{AGENTS}\n")).expect("join token");
    let data = tempdir();
    let agent = start_agent_with(
        &url,
        data.path(),
        "cpus:2;mem:1024",
        "secure-host",
        &["--token-file", join.to_str().expect("utf-8")],
    );
    wait_until("the agent to join", Duration::from_secs(20), || async {
        let (status, state) = status_of(as_(OPS).get(format!("{url}/api/v1/state"))).await;
        (status == 200 && state["agents"].as_array().is_some_and(|a| a.len() == 1)).then_some(())
    })
    .await;
    Secured {
        agent,
        master,
        url,
        auth,
        log,
        data,
        dir,
    }
}

fn small() -> Resources {
    Resources::new()
        .with_scalar("cpus", 0.1)
        .with_scalar("mem", 32.0)
}

async fn tenant(url: &str, name: &str, role: &str, token: &str) -> TestFramework {
    let mut config = FrameworkConfig::new(url, name);
    config.role = role.into();
    config.token = Some(token.into());
    TestFramework::start_with(config).await
}

/// A gRPC client of the scheduler API presenting `token` (if any).
async fn subscribe_as(url: &str, token: Option<&str>, role: &str) -> Result<(), tonic::Status> {
    let mut client = v1::scheduler_client::SchedulerClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(v1::SubscribeRequest {
        framework_info: Some(v1::FrameworkInfo {
            name: "intruder".into(),
            role: role.into(),
            ..Default::default()
        }),
        secret: String::new(),
        demand: None,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    client.subscribe(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_and_wrong_credentials_are_refused_and_logged_without_the_credential() {
    let s = secured().await;
    let url = &s.url;
    let anonymous = reqwest::Client::new();
    for path in [
        "/api/v1/state",
        "/api/v1/tasks",
        "/metrics",
        "/batch/v1/jobs",
    ] {
        let (status, body) = status_of(anonymous.get(format!("{url}{path}"))).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("credential"))
        );
    }
    let (status, _) = status_of(anonymous.post(format!("{url}/api/v1/agents/x/drain"))).await;
    assert_eq!(status, 401);
    let (status, _) =
        status_of(as_("wrong-token-0123456789").get(format!("{url}/api/v1/state"))).await;
    assert_eq!(status, 401);
    // What holds no secret stays open: liveness and the UI's page.
    assert_eq!(
        status_of(anonymous.get(format!("{url}/health"))).await.0,
        200
    );
    assert_eq!(
        anonymous
            .get(format!("{url}/"))
            .send()
            .await
            .expect("UI")
            .status(),
        200
    );

    // gRPC alike: an anonymous subscription, and one with a wrong token.
    let refused = subscribe_as(url, None, "a").await.expect_err("anonymous");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = subscribe_as(url, Some("wrong-token-0123456789"), "a")
        .await
        .expect_err("wrong token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A fake agent without the join token is not admitted.
    let mut agents = v1::agent_service_client::AgentServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let register = v1::AgentMessage {
        message: Some(v1::agent_message::Message::Register(
            v1::agent_message::Register {
                agent_info: Some(v1::AgentInfo {
                    hostname: "fake".into(),
                    resources: small().to_proto(),
                    ..Default::default()
                }),
                tasks: Vec::new(),
                secret: String::new(),
            },
        )),
    };
    let mut stream = agents
        .session(tokio_stream::iter(vec![register]))
        .await
        .expect("the session opens")
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer");
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (_, state) = status_of(as_(OPS).get(format!("{url}/api/v1/state"))).await;
    assert_eq!(
        state["agents"].as_array().map(Vec::len),
        Some(1),
        "only the real agent"
    );

    let log = std::fs::read_to_string(&s.log).expect("master log");
    assert!(log.contains("refused: no credential"), "{log}");
    assert!(
        log.contains("refused: the credential is not valid"),
        "{log}"
    );
    assert!(
        !log.contains("wrong-token-0123456789"),
        "a credential leaked into the log"
    );
    assert!(!log.contains(AGENTS), "the join token leaked into the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_cannot_use_see_read_kill_or_tear_down_another_s_framework() {
    let s = secured().await;
    let url = &s.url;
    // Team B may not register in team A's role.
    let refused = subscribe_as(url, Some(TEAM_B), "a")
        .await
        .expect_err("not B's role");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("role `a`"),
        "{}",
        refused.message()
    );

    let mut a = tenant(url, "team-a-app", "a", TEAM_A).await;
    // Root is not in team A's run_tasks: refused with a clear reason.
    let offer = a.next_offers(Duration::from_secs(10)).await.remove(0);
    let mut as_root = task("as-root", "id", &small());
    as_root.user = "root".into();
    let refusal = a
        .driver
        .accept(&[offer_id(&offer)], vec![as_root], Some(0.0))
        .await
        .expect_err("root refused");
    match &refusal {
        SdkError::AcceptRefused {
            reason, message, ..
        } => {
            assert_eq!(*reason, RefusalReason::NotAuthorized);
            assert!(message.contains("user `root`"), "{message}");
        }
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    let offer = a.next_offers(Duration::from_secs(10)).await.remove(0);
    a.driver
        .accept(
            &[offer_id(&offer)],
            vec![task(
                "a-task",
                "echo team-a-secret; exec sleep 60",
                &small(),
            )],
            Some(3600.0),
        )
        .await
        .expect("accept");
    a.wait_state("a-task", TaskState::TaskRunning, Duration::from_secs(15))
        .await;

    let b = tenant(url, "team-b-app", "b", TEAM_B).await;
    let team_b = as_(TEAM_B);
    // B sees neither A's framework nor its task …
    let (_, tasks) = status_of(team_b.get(format!("{url}/api/v1/tasks"))).await;
    assert_eq!(tasks["total"], 0, "{tasks}");
    let (_, state) = status_of(team_b.get(format!("{url}/api/v1/state"))).await;
    let names: Vec<&str> = state["frameworks"]
        .as_array()
        .expect("frameworks")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["team-b-app"], "{state}");
    assert_eq!(state["tasks"].as_array().map(Vec::len), Some(0));
    let (status, _) = status_of(team_b.get(format!("{url}/api/v1/tasks/a-task"))).await;
    assert_eq!(status, 403);
    // … cannot read its sandbox …
    let (status, body) =
        status_of(team_b.get(format!("{url}/api/v1/tasks/a-task/files/read?path=stdout"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("access_sandboxes"))
    );
    // … nor tear it down.
    let (status, _) =
        status_of(team_b.post(format!("{url}/api/v1/frameworks/{}/teardown", a.id))).await;
    assert_eq!(status, 403);
    // Killing A's task from B's framework names a task B does not have.
    let killed = b.driver.kill("a-task").await;
    assert!(killed.is_err(), "B cannot kill A's task");

    // A reads its own sandbox through the master (which presents the
    // agent the token the agent was given) …
    let (status, body) =
        status_of(as_(TEAM_A).get(format!("{url}/api/v1/tasks/a-task/files/read?path=stdout")))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]
            .as_str()
            .is_some_and(|d| d.contains("team-a-secret"))
    );
    // … but nobody reaches the agent's API directly.
    let (_, state) = status_of(as_(OPS).get(format!("{url}/api/v1/state"))).await;
    let endpoint = state["agents"][0]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    for token in [None, Some(OPS), Some(TEAM_A)] {
        let client = token.map_or_else(reqwest::Client::new, as_);
        let (status, _) = status_of(client.get(format!("{endpoint}/files/browse?path=."))).await;
        assert_eq!(status, 401, "agent API with {token:?}");
    }
    assert_eq!(
        reqwest::get(format!("{endpoint}/health"))
            .await
            .expect("health")
            .status(),
        200
    );
    // The operator may tear A down.
    let (status, _) =
        status_of(as_(OPS).post(format!("{url}/api/v1/frameworks/{}/teardown", a.id))).await;
    assert_eq!(status, 200);
    let _ = (&s.agent, &s.master, &s.data, &s.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn acls_reload_on_sighup_and_every_drain_is_in_the_audit_log() {
    let s = secured().await;
    let url = &s.url;
    let (_, state) = status_of(as_(OPS).get(format!("{url}/api/v1/state"))).await;
    let agent = state["agents"][0]["id"]
        .as_str()
        .expect("agent id")
        .to_string();
    let drain = |token: &str| as_(token).post(format!("{url}/api/v1/agents/{agent}/drain"));
    let (status, body) = status_of(drain(TEAM_A)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("drain_agents"))
    );
    assert_eq!(status_of(drain(OPS)).await.0, 200);

    // Team A is given drains; the master reloads on SIGHUP.
    write_auth(
        &s.auth,
        r#"drain_agents = [{ principals = ["ops", "team-a"] }]"#,
    );
    s.master.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the reloaded ACLs", Duration::from_secs(10), || async {
        (status_of(drain(TEAM_A)).await.0 == 200).then_some(())
    })
    .await;
    // A broken file is refused and the last good one stays.
    std::fs::write(&s.auth, "[[principals]]\nname = \"x\"\n").expect("broken file");
    s.master.signal(nix::sys::signal::Signal::SIGHUP);
    let undrain = as_(OPS).post(format!("{url}/api/v1/agents/{agent}/undrain"));
    assert_eq!(status_of(undrain).await.0, 200, "ops keeps its rights");

    let audit = std::fs::read_to_string(s.master_data().join("audit.log")).expect("audit log");
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let drains: Vec<(&str, u64)> = entries
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/drain")))
        .map(|e| {
            (
                e["principal"].as_str().unwrap_or(""),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        drains.starts_with(&[("team-a", 403), ("ops", 200)]),
        "{drains:?}"
    );
    assert!(drains.contains(&("team-a", 200)), "{drains:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["time"].is_string() && e["peer"].is_string())
    );
    assert!(!audit.contains(OPS), "no token in the audit log");
}

impl Secured {
    fn master_data(&self) -> PathBuf {
        self.master.data_dir().expect("the master's data directory")
    }
}

/// Runs an `agora` command to its end: (success, stdout, stderr).
fn agora(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agora"));
    command
        .args(args)
        .env_remove("AGORA_TOKEN")
        .env_remove("AGORA_TLS_CA")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("agora ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `agora certs` into `dir`: the certificate's SHA-256.
fn certificate(dir: &Path, name: &str, hosts: &str) -> String {
    let out = dir.to_str().expect("utf-8");
    let (ok, stdout, stderr) = agora(
        &["certs", "--out", out, "--name", name, "--hosts", hosts],
        &[],
    );
    assert!(ok, "agora certs: {stderr}");
    stdout
        .split("certificate_sha256 = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the certificate's SHA-256")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_end_to_end_a_wrong_ca_is_refused_and_a_client_certificate_names_a_principal() {
    agora_proto::tls::install_default_provider();
    let dir = tempdir();
    let certs = dir.path().join("certs");
    certificate(&certs, "master", "127.0.0.1,localhost");
    certificate(&certs, "agent", "127.0.0.1");
    let ops_cert = certificate(&certs, "ops-laptop", "ops-laptop");
    let other = dir.path().join("other");
    certificate(&other, "master", "127.0.0.1");
    let ca = certs.join("ca.pem");
    let path = |p: PathBuf| p.to_str().expect("utf-8").to_string();

    // A principal known only by its client certificate, who may view
    // every framework.
    let auth = dir.path().join("auth.toml");
    write_auth(&auth, OPS_DRAIN);
    let text = std::fs::read_to_string(&auth)
        .expect("auth")
        .replacen(
            "[acls]",
            &format!(
                "[[principals]]\nname = \"ops-cert\"\ncertificate_sha256 = \"{ops_cert}\"\n\n[acls]"
            ),
            1,
        )
        .replacen(
            r#"view_frameworks = [{ principals = ["ops"]"#,
            r#"view_frameworks = [{ principals = ["ops", "ops-cert"]"#,
            1,
        )
        // The batch framework, to serve its API over TLS too.
        .replacen(
            "[acls]",
            "[[principals]]\nname = \"batch\"\ntoken = \"batch-token-0123456789ab\"\n\n[acls]",
            1,
        )
        .replacen(
            "register_frameworks = [",
            "register_frameworks = [{ principals = [\"batch\"], roles = [\"*\"] },\n",
            1,
        )
        + "announce_webui = [{ principals = [\"batch\"], names = [\"batch\"] }]\n";
    std::fs::write(&auth, text).expect("auth");

    let master = start_master(
        "127.0.0.1:0",
        &[
            "--auth",
            &path(auth.clone()),
            "--tls-cert",
            &path(certs.join("master.pem")),
            "--tls-key",
            &path(certs.join("master-key.pem")),
            "--tls-client-ca",
            &path(ca.clone()),
            "--tls-ca",
            &path(ca.clone()),
        ],
    );
    let url = master.url.clone().expect("url");
    assert!(url.starts_with("https://"), "{url}");

    // An agent trusting the cluster CA joins, and serves its API over https.
    let join = dir.path().join("join");
    std::fs::write(&join, AGENTS).expect("join token");
    let data = tempdir();
    let _agent = start_agent_with(
        &url,
        data.path(),
        "cpus:1;mem:512",
        "tls-host",
        &[
            "--token-file",
            &path(join),
            "--tls-ca",
            &path(ca.clone()),
            "--tls-cert",
            &path(certs.join("agent.pem")),
            "--tls-key",
            &path(certs.join("agent-key.pem")),
        ],
    );
    let trusting = || {
        let pem = std::fs::read(&ca).expect("ca");
        let mut builder = reqwest::Client::builder().default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {OPS}").parse().expect("header"),
            );
            h
        });
        for certificate in reqwest::Certificate::from_pem_bundle(&pem).expect("pem") {
            builder = builder.add_root_certificate(certificate);
        }
        builder.build().expect("client")
    };
    let state = wait_until("the agent over TLS", Duration::from_secs(20), || async {
        let (status, state) = status_of(trusting().get(format!("{url}/api/v1/state"))).await;
        (status == 200 && state["agents"][0]["status"] == "active").then_some(state)
    })
    .await;
    let endpoint = state["agents"][0]["endpoint"].as_str().expect("endpoint");
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // A framework over TLS runs a task; its log comes back through the
    // master, which reads it from the agent over https.
    let mut config = FrameworkConfig::new(&url, "tls-app");
    config.role = "a".into();
    config.token = Some(TEAM_A.into());
    config.tls = agora_proto::tls::ClientTls::load(Some(&ca), None).expect("ca");
    let mut f = TestFramework::start_with(config).await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("tls-task", "echo over-tls; exec sleep 60", &small())],
            Some(3600.0),
        )
        .await
        .expect("accept");
    f.wait_state("tls-task", TaskState::TaskRunning, Duration::from_secs(15))
        .await;
    wait_until("the log over TLS", Duration::from_secs(10), || async {
        let (status, body) = status_of(trusting().get(format!(
            "{url}/api/v1/tasks/tls-task/files/read?path=stdout"
        )))
        .await;
        (status == 200
            && body["data"]
                .as_str()
                .is_some_and(|d| d.contains("over-tls")))
        .then_some(())
    })
    .await;

    // The CLI: the right CA works, another CA's is refused, plain http too.
    let ca_str = path(ca.clone());
    let (ok, stdout, stderr) = agora(
        &["state", "--master", &url],
        &[("AGORA_TLS_CA", &ca_str), ("AGORA_TOKEN", OPS)],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tls-host"), "{stdout}");
    let other_ca = path(other.join("ca.pem"));
    let (ok, _, stderr) = agora(
        &["state", "--master", &url],
        &[("AGORA_TLS_CA", &other_ca), ("AGORA_TOKEN", OPS)],
    );
    assert!(!ok, "a certificate from another CA must not be trusted");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let plain = url.replacen("https://", "http://", 1);
    let (ok, _, _) = agora(&["state", "--master", &plain], &[("AGORA_TOKEN", OPS)]);
    assert!(!ok, "plaintext to a TLS port fails");

    // Mutual TLS: the client certificate alone names its principal.
    let (ok, stdout, stderr) = agora(
        &["state", "--master", &url],
        &[
            ("AGORA_TLS_CA", &ca_str),
            ("AGORA_TLS_CERT", &path(certs.join("ops-laptop.pem"))),
            ("AGORA_TLS_KEY", &path(certs.join("ops-laptop-key.pem"))),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("tls-app"),
        "ops-cert sees frameworks: {stdout}"
    );
    // The same certificate from another CA names no one.
    let (ok, _, _) = agora(
        &["state", "--master", &url],
        &[
            ("AGORA_TLS_CA", &ca_str),
            ("AGORA_TLS_CERT", &path(other.join("master.pem"))),
            ("AGORA_TLS_KEY", &path(other.join("master-key.pem"))),
        ],
    );
    assert!(!ok, "an unknown client certificate is no credential");

    // The batch framework serves its API over TLS; the master relays to
    // it trusting the cluster CA.
    certificate(&certs, "batch", "127.0.0.1");
    let token_file = dir.path().join("batch-token");
    std::fs::write(&token_file, "batch-token-0123456789ab").expect("token");
    let batch_data = tempdir();
    let batch = start_batch(
        &url,
        batch_data.path(),
        &[
            "--token-file",
            &path(token_file),
            "--tls-ca",
            &ca_str,
            "--tls-cert",
            &path(certs.join("batch.pem")),
            "--tls-key",
            &path(certs.join("batch-key.pem")),
        ],
    );
    assert!(
        batch
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    );
    wait_until(
        "a job submitted over TLS, relayed over TLS",
        Duration::from_secs(30),
        || async {
            let (status, _) = status_of(
                trusting()
                    .post(format!("{url}/batch/v1/jobs"))
                    .body("id = \"tls-job\"\ncmd = \"true\"\ncpus = 0.1\nmem = 16\n"),
            )
            .await;
            (status == 201).then_some(())
        },
    )
    .await;
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_off_loopback_without_tls_refuses_to_start_unless_told_insecure() {
    let (ok, _, stderr) = agora(&["master", "--no-auth", "--listen", "0.0.0.0:0"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("--insecure"),
        "{stderr}"
    );
    let (ok, _, stderr) = agora(&["master", "--listen", "127.0.0.1:0"], &[]);
    assert!(!ok, "neither --auth nor --no-auth");
    assert!(
        stderr.contains("--auth") && stderr.contains("--no-auth"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_its_submitter_s_and_the_batch_api_answers_only_through_the_master() {
    let s = secured().await;
    let url = &s.url;
    // The batch framework, as its own principal, allowed its role and name.
    let mut text = std::fs::read_to_string(&s.auth).expect("auth");
    text = text.replacen(
        "[acls]",
        "[[principals]]\nname = \"batch\"\ntoken = \"batch-token-0123456789ab\"\n\n[acls]",
        1,
    );
    text = text.replacen(
        "register_frameworks = [",
        "register_frameworks = [{ principals = [\"batch\"], roles = [\"*\"] },\n",
        1,
    );
    text.push_str("announce_webui = [{ principals = [\"batch\"], names = [\"batch\"] }]\n");
    std::fs::write(&s.auth, text).expect("auth");
    s.master.signal(nix::sys::signal::Signal::SIGHUP);
    let token_file = s.dir.path().join("batch-token");
    std::fs::write(&token_file, "batch-token-0123456789ab").expect("token");
    let batch_data = tempdir();
    let batch = start_batch(
        url,
        batch_data.path(),
        &["--token-file", token_file.to_str().expect("utf-8")],
    );
    let direct = batch.url.clone().expect("batch url");
    wait_until(
        "the batch API through the master",
        Duration::from_secs(30),
        || async {
            let (status, _) = status_of(as_(TEAM_A).get(format!("{url}/batch/v1/jobs"))).await;
            (status == 200).then_some(())
        },
    )
    .await;

    let submit = |token: &'static str, id: &str| {
        as_(token)
            .post(format!("{url}/batch/v1/jobs"))
            .body(format!(
                "id = \"{id}\"\ncmd = \"sleep 30\"\ncpus = 0.1\nmem = 16\n"
            ))
    };
    assert_eq!(status_of(submit(TEAM_A, "a-job")).await.0, 201);
    assert_eq!(status_of(submit(TEAM_B, "b-job")).await.0, 201);
    let ids = |body: &Value| -> Vec<String> {
        body["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter_map(|j| j["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, mine) = status_of(as_(TEAM_B).get(format!("{url}/batch/v1/jobs"))).await;
    assert_eq!(ids(&mine), ["b-job"], "B sees its own jobs only");
    let (status, body) = status_of(as_(TEAM_B).get(format!("{url}/batch/v1/jobs/a-job"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("team-a")),
        "{body}"
    );
    let (status, _) = status_of(as_(TEAM_B).post(format!("{url}/batch/v1/jobs/a-job/kill"))).await;
    assert_eq!(status, 403);
    let (status, _) = status_of(as_(TEAM_B).delete(format!("{url}/batch/v1/jobs/a-job"))).await;
    assert_eq!(status, 403);
    // The operator (who may tear batch down) sees and acts on both.
    let (_, all) = status_of(as_(OPS).get(format!("{url}/batch/v1/jobs"))).await;
    assert_eq!(ids(&all), ["a-job", "b-job"]);
    let (status, _) = status_of(as_(OPS).post(format!("{url}/batch/v1/jobs/a-job/kill"))).await;
    assert_eq!(status, 200);
    // The batch API's own port answers no one directly, forged headers or not.
    let forged = reqwest::Client::new()
        .get(format!("{direct}/batch/v1/jobs"))
        .header("x-agora-principal", "ops")
        .header("x-agora-operator", "true");
    assert_eq!(status_of(forged).await.0, 401);
}
