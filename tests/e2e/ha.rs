//! High availability with real processes and a real etcd: three masters
//! (one leads), agents and frameworks given the list of masters, the
//! leader killed or frozen mid-work; batch as two replicas.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::*;

const LEASE: &str = "1s";

fn masters_on(etcd: &EtcdServer) -> Vec<Proc> {
    (0..3)
        .map(|_| {
            start_master(
                "127.0.0.1:0",
                &["--etcd", etcd.url(), "--leader-lease", LEASE],
            )
        })
        .collect()
}

fn urls(masters: &[Proc]) -> Vec<String> {
    masters
        .iter()
        .map(|m| m.url.clone().expect("url"))
        .collect()
}

async fn submit(master: &str, spec: String) {
    let r = client()
        .post(format!("{master}/batch/v1/jobs"))
        .body(spec)
        .send()
        .await
        .expect("POST /batch/v1/jobs");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
}

/// Waits until `count` jobs succeeded (through whichever master leads) and
/// none failed.
async fn wait_succeeded(masters: &[String], count: u64, timeout: Duration) {
    wait_until(&format!("{count} jobs to succeed"), timeout, || async {
        for m in masters {
            let Some(ok) = batch_count(m, "SUCCEEDED").await else {
                continue;
            };
            let bad = batch_count(m, "FAILED,KILLED").await.unwrap_or(0);
            assert_eq!(bad, 0, "jobs failed");
            return (ok >= count).then_some(());
        }
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leading_master_mid_batch_loses_no_job_and_runs_none_twice() {
    let etcd = start_etcd().await;
    let mut masters = masters_on(&etcd);
    let all = urls(&masters);
    let list = all.join(",");
    let leader = wait_leader(&all, None).await;
    let (da, db) = (tempdir(), tempdir());
    let _a = start_agent(&list, da.path(), "cpus:2;mem:2048;disk:1000", "ha-a");
    let _b = start_agent(&list, db.path(), "cpus:2;mem:2048;disk:1000", "ha-b");
    wait_for_agents(&leader, 2).await;
    let batch_data = tempdir();
    let _batch = start_batch(&list, batch_data.path(), &["--reconcile-grace", "10s"]);
    wait_for_batch(&leader).await;

    let out = tempdir();
    submit(&leader, counting_jobs("j", 500, out.path(), 0.05)).await;
    // Asked of every master, and the leader found again after: on a
    // loaded machine the leader can lose its lease on its own before the
    // kill, and a standby does not relay the batch framework's API.
    wait_succeeded(&all, 100, Duration::from_secs(120)).await;
    let leader = wait_leader(&all, None).await;

    let index = all
        .iter()
        .position(|u| *u == leader)
        .expect("leader is one of them");
    let killed = Instant::now();
    masters[index].kill_hard();
    let rest: Vec<String> = all.iter().filter(|u| **u != leader).cloned().collect();
    let new_leader = wait_leader(&rest, Some(&leader)).await;
    eprintln!("new leader {new_leader} after {:?}", killed.elapsed());
    assert_ne!(new_leader, leader);

    wait_succeeded(&rest, 500, Duration::from_secs(180)).await;
    assert_each_ran_once(out.path(), "j", 500);
    // The cluster is whole again under the new leader.
    let s = wait_for_agents(&new_leader, 2).await;
    assert_eq!(s["agents"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_frozen_past_its_lease_writes_nothing_and_stands_by_again() {
    let etcd = start_etcd().await;
    let mut masters = masters_on(&etcd);
    let all = urls(&masters);
    let leader = wait_leader(&all, None).await;
    let index = all.iter().position(|u| *u == leader).expect("leader");
    let dir = tempdir();
    let _agent = start_agent(&all.join(","), dir.path(), "cpus:1;mem:256", "frozen-ha");
    wait_for_agents(&leader, 1).await;

    masters[index].signal(Signal::SIGSTOP);
    // A change asked of the frozen leader waits in its socket.
    let frozen = leader.clone();
    let queued = tokio::spawn(async move {
        client()
            .put(format!("{frozen}/api/v1/roles/stale"))
            .body(r#"{"weight": 9}"#)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let rest: Vec<String> = all.iter().filter(|u| **u != leader).cloned().collect();
    let new_leader = wait_leader(&rest, Some(&leader)).await;
    assert_ne!(new_leader, leader);

    masters[index].signal(Signal::SIGCONT);
    // It wakes up deposed: it acts on nothing, and stands by again,
    // sending clients to the new leader.
    wait_until(
        "the old leader to stand by",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{leader}/api/v1/leader")).await;
            (code == 200 && body["standby"] == true && body["leader"] == new_leader.as_str())
                .then_some(())
        },
    )
    .await;
    assert!(
        masters[index].exited().is_none(),
        "a deposed master stays up to stand by"
    );
    // It ended its sessions: its agent found the new leader.
    wait_for_agents(&new_leader, 1).await;
    let answer = queued.await.expect("request task");
    assert_ne!(
        answer.ok(),
        Some(200),
        "the frozen leader acted after waking"
    );

    // Nothing of it in etcd, nor in the new leader's state.
    let (_, roles) = get(&format!("{new_leader}/api/v1/roles")).await;
    let stale = roles["roles"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["role"] == "stale").cloned());
    assert!(stale.is_none_or(|r| r["weight"] != 9.0), "{roles:#}");
    let etcd_url = etcd.url().to_string();
    let load_weights = move || {
        let etcd_url = etcd_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                agora_store::Store::etcd(&etcd_url, "/agora/master/registry", None)
                    .expect("store")
                    .load("weights")
                    .expect("load")
            })
            .await
            .expect("blocking")
        }
    };
    let weights = load_weights().await;
    assert!(
        weights.iter().all(|(role, _)| role != "stale"),
        "a deposed leader wrote: {weights:?}"
    );

    // It campaigns like any standby: with the others gone, it leads again
    // and acts.
    for (i, m) in masters.iter_mut().enumerate() {
        if i != index {
            m.kill_hard();
        }
    }
    let again = wait_leader(std::slice::from_ref(&leader), Some(&new_leader)).await;
    assert_eq!(again, leader);
    let (code, body) = send(
        reqwest::Method::PUT,
        &format!("{leader}/api/v1/roles/again"),
        r#"{"weight": 3}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let weights = load_weights().await;
    assert!(
        weights.iter().any(|(role, _)| role == "again"),
        "its second term writes: {weights:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_masters_come_back_after_the_whole_machine_froze_past_the_lease() {
    // As a paused virtual machine: etcd and every master stop together, for
    // longer than the lease. Whoever led is deposed when they wake; every
    // master must campaign again, one lead, and the agent find it.
    let etcd = start_etcd().await;
    let masters = masters_on(&etcd);
    let all = urls(&masters);
    let leader = wait_leader(&all, None).await;
    let dir = tempdir();
    let _agent = start_agent(&all.join(","), dir.path(), "cpus:1;mem:256", "paused-vm");
    wait_for_agents(&leader, 1).await;

    etcd.signal(Signal::SIGSTOP);
    for m in &masters {
        m.signal(Signal::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    etcd.signal(Signal::SIGCONT);
    for m in &masters {
        m.signal(Signal::SIGCONT);
    }

    let now = wait_leader(&all, None).await;
    wait_for_agents(&now, 1).await;
    let mut masters = masters;
    for m in &mut masters {
        assert!(m.exited().is_none(), "every master is still up");
    }
}

/// One master and agent, and the batch framework as two replicas on etcd.
struct ReplicatedBatch {
    url: String,
    replicas: [Proc; 2],
    _state: [tempfile::TempDir; 2],
    _agent: (Proc, tempfile::TempDir),
    _master: Proc,
    _etcd: EtcdServer,
}

impl ReplicatedBatch {
    async fn start() -> ReplicatedBatch {
        let etcd = start_etcd().await;
        let master = start_master("127.0.0.1:0", &[]);
        let url = master.url.clone().expect("url");
        let agent_data = tempdir();
        let agent = start_agent(
            &url,
            agent_data.path(),
            "cpus:2;mem:2048;disk:1000",
            "replicas",
        );
        wait_for_agents(&url, 1).await;
        let replica_args = ["--etcd", etcd.url(), "--leader-lease", LEASE];
        let state = [tempdir(), tempdir()];
        let replicas = [
            start_batch(&url, state[0].path(), &replica_args),
            start_batch(&url, state[1].path(), &replica_args),
        ];
        wait_for_batch(&url).await;
        ReplicatedBatch {
            url,
            replicas,
            _state: state,
            _agent: (agent, agent_data),
            _master: master,
            _etcd: etcd,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_active_batch_replica_hands_over_to_the_standby() {
    let mut cluster = ReplicatedBatch::start().await;
    let (url, replicas) = (cluster.url.clone(), &mut cluster.replicas);

    let out = tempdir();
    submit(&url, counting_jobs("r", 100, out.path(), 0.1)).await;
    wait_succeeded(std::slice::from_ref(&url), 20, Duration::from_secs(60)).await;

    // The active replica is the one the master relays to.
    let active_url = active_framework_url(&url, "batch", None).await;
    let active = replicas
        .iter()
        .position(|r| r.url.as_deref() == Some(active_url.as_str()))
        .expect("one replica is active");
    replicas[active].kill_hard();

    wait_succeeded(std::slice::from_ref(&url), 100, Duration::from_secs(120)).await;
    assert_each_ran_once(out.path(), "r", 100);
    let (_, frameworks) = get(&format!("{url}/api/v1/frameworks")).await;
    let batches: Vec<&Value> = frameworks["frameworks"]
        .as_array()
        .expect("frameworks")
        .iter()
        .filter(|f| f["name"] == "batch")
        .collect();
    assert_eq!(batches.len(), 1, "the standby resumed the same framework");
    assert_eq!(
        batches[0]["webui_url"].as_str(),
        replicas[1 - active].url.as_deref()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_replica_frozen_past_its_lease_stands_by_and_takes_over_again() {
    let mut cluster = ReplicatedBatch::start().await;
    let (url, replicas) = (cluster.url.clone(), &mut cluster.replicas);
    let out = tempdir();
    submit(&url, counting_jobs("f", 60, out.path(), 0.1)).await;
    wait_succeeded(std::slice::from_ref(&url), 10, Duration::from_secs(60)).await;

    freeze_the_active_replica_then_kill_the_other(&url, "batch", replicas).await;
    wait_succeeded(std::slice::from_ref(&url), 60, Duration::from_secs(120)).await;
    assert_each_ran_once(out.path(), "f", 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_moves_to_the_new_leader_by_itself() {
    let chromium = "/usr/bin/chromium";
    assert!(
        Path::new(chromium).exists(),
        "apt-get install chromium (.ci/run does)"
    );
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/browser (.ci/run does)"
    );
    let etcd = start_etcd().await;
    let mut masters = masters_on(&etcd);
    let all = urls(&masters);
    let leader = wait_leader(&all, None).await;
    let dir = tempdir();
    let _agent = start_agent(&all.join(","), dir.path(), "cpus:1;mem:256", "ui-ha-host");
    wait_for_agents(&leader, 1).await;

    let mut check = tokio::process::Command::new("node")
        .arg(browser_dir.join("ha-check.mjs"))
        .args([leader.as_str(), "ui-ha-host"])
        .env("CHROMIUM", chromium)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdout = tokio::io::BufReader::new(check.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .expect("the page comes up")
    .expect("read");
    assert_eq!(line.trim(), "ready", "the browser check did not start");

    let index = all.iter().position(|u| *u == leader).expect("leader");
    masters[index].kill_hard();
    let mut stdin = check.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"killed\n")
        .await
        .expect("tell the check");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), check.wait_with_output())
        .await
        .expect("the browser check finishes")
        .expect("node ran");
    let mut rest = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await;
    assert!(
        output.status.success(),
        "the page did not follow the leader:\n{rest}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(rest.contains("ha-check: ok"), "{rest}");
}
