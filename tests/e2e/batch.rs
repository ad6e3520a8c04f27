//! The batch framework end to end: a real master, real agents running real
//! containers, `agora batch` as its own process, and jobs submitted through
//! the master's port (CLI and HTTP).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

/// A master, agents, and the batch framework, each its own process.
struct Cluster {
    url: String,
    batch: Proc,
    batch_data: TempDir,
    _agents: Vec<(Proc, TempDir)>,
    _master: Proc,
}

impl Cluster {
    async fn start(agents: &[(&str, &str)]) -> Cluster {
        let master = start_master("127.0.0.1:0", &[]);
        let url = master.url.clone().expect("master url");
        let mut procs = Vec::new();
        for (host, resources) in agents {
            let dir = tempdir();
            procs.push((start_agent(&url, dir.path(), resources, host), dir));
        }
        wait_for_agents(&url, agents.len()).await;
        let batch_data = tempdir();
        let batch = start_batch(&url, batch_data.path(), &["--reconcile-grace", "5s"]);
        wait_for_batch(&url).await;
        Cluster {
            url,
            batch,
            batch_data,
            _agents: procs,
            _master: master,
        }
    }

    async fn restart_batch(&mut self) {
        self.batch = start_batch(
            &self.url,
            self.batch_data.path(),
            &["--reconcile-grace", "5s"],
        );
        wait_for_batch(&self.url).await;
    }
}

async fn submit(master: &str, spec: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{master}/batch/v1/jobs"))
        .body(spec.to_string())
        .send()
        .await
        .expect("POST /batch/v1/jobs");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn submit_ok(master: &str, spec: &str) {
    let (status, body) = submit(master, spec).await;
    assert_eq!(status, 201, "submission refused: {body}");
}

async fn job(master: &str, id: &str) -> Value {
    fetch(format!("{master}/batch/v1/jobs/{id}"))
        .await
        .expect("GET job")
        .json()
        .await
        .expect("job JSON")
}

async fn wait_job(master: &str, id: &str, state: &str, timeout: Duration) -> Value {
    wait_until(&format!("job {id} {state}"), timeout, || async {
        let j = job(master, id).await;
        (j["state"] == state).then_some(j)
    })
    .await
}

/// Runs `agora job …` against `master`: (exit code, stdout, stderr).
async fn agora_job(master: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("job")
        .args(args)
        .env("AGORA_MASTER", master)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running agora job");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids of the frameworks called `batch` the master knows.
async fn batch_framework_ids(master: &str) -> Vec<String> {
    let frameworks: Value = fetch(format!("{master}/api/v1/frameworks"))
        .await
        .expect("frameworks")
        .json()
        .await
        .expect("JSON");
    frameworks["frameworks"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|f| f["name"] == "batch")
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect()
}

/// Shell that blocks a task until the test creates `gate`.
fn until_gate(gate: &Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())
}

fn write_spec(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing spec");
    path.to_str().expect("utf-8").to_string()
}

fn attempts(run: &Value, instance: usize) -> Vec<Value> {
    run["instances"][instance]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Two one-cpu jobs on a one-cpu cluster: `first` runs until its gate opens,
/// `second` waits in the queue behind it. Each appends a line when it starts.
struct RunningAndQueued {
    _dir: TempDir,
    first: std::path::PathBuf,
    second: std::path::PathBuf,
    gate: std::path::PathBuf,
}

impl RunningAndQueued {
    async fn submit(master: &str) -> RunningAndQueued {
        let dir = tempdir();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let gate = dir.path().join("gate");
        submit_ok(
            master,
            &format!(
                "id = \"first\"\ncpus = 1\ncmd = \"echo start >> {}; {}\"\nvolumes = [\"{}\"]\n",
                first.display(),
                until_gate(&gate),
                dir.path().display()
            ),
        )
        .await;
        wait_until("first running", Duration::from_secs(20), || async {
            lines(&first).first().map(|_| ())
        })
        .await;
        submit_ok(
            master,
            &format!(
                "id = \"second\"\ncpus = 1\ncmd = \"echo start >> {}\"\nvolumes = [\"{}\"]\n",
                second.display(),
                dir.path().display()
            ),
        )
        .await;
        assert_eq!(job(master, "second").await["state"], "QUEUED");
        RunningAndQueued {
            _dir: dir,
            first,
            second,
            gate,
        }
    }

    fn open_gate(&self) {
        std::fs::write(&self.gate, "").expect("open the gate");
    }

    /// Both succeed, each having started once, `first` never relaunched.
    async fn check_each_ran_once(&self, master: &str) {
        wait_job(master, "first", "SUCCEEDED", Duration::from_secs(60)).await;
        let second = wait_job(master, "second", "SUCCEEDED", Duration::from_secs(60)).await;
        let first = job(master, "first").await;
        assert_eq!(lines(&self.first), vec!["start"], "first ran once");
        assert_eq!(lines(&self.second), vec!["start"], "second ran once");
        assert_eq!(
            attempts(&first["runs"][0], 0).len(),
            1,
            "reconciled, not relaunched"
        );
        assert_eq!(attempts(&second["runs"][0], 0).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submitted_job_succeeds_and_its_output_is_readable() {
    let cluster = Cluster::start(&[("b1", "cpus:2;mem:1024")]).await;
    let dir = tempdir();
    let spec = write_spec(
        dir.path(),
        "hello.toml",
        "id = \"hello\"\ncmd = \"echo hello from $AGORA_JOB/$AGORA_INSTANCE $GREETING; echo to-stderr >&2\"\ncpus = 0.5\nmem = 64\nenv = { GREETING = \"hi\" }\n",
    );
    let (code, out, err) = agora_job(&cluster.url, &["submit", &spec, "--wait"]).await;
    assert_eq!(code, 0, "submit --wait: {out} {err}");
    assert_eq!(out.trim(), "hello");

    let (code, out, _) = agora_job(&cluster.url, &["logs", "hello"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "hello from hello/0 hi\n");
    let (_, out, _) = agora_job(&cluster.url, &["logs", "hello", "--stderr", "--run", "1"]).await;
    assert_eq!(out, "to-stderr\n");

    let (code, out, _) = agora_job(&cluster.url, &["status", "hello", "--json"]).await;
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status["state"], "SUCCEEDED");
    let run = &status["runs"][0];
    assert_eq!(run["state"], "SUCCEEDED");
    let a = attempts(run, 0);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["exit_code"], 0);
    assert_eq!(a[0]["hostname"], "b1");
    assert!(a[0]["ended_at"].as_i64() >= a[0]["launched_at"].as_i64());

    let (code, out, _) = agora_job(&cluster.url, &["list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("hello") && out.contains("SUCCEEDED"), "{out}");

    let metrics = fetch(format!("{}/batch/v1/metrics", cluster.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    assert_eq!(value("agora_batch_jobs{state=\"SUCCEEDED\"}"), 1.0);
    assert_eq!(value("agora_batch_tasks_launched_total"), 1.0);
    assert_eq!(
        value("agora_batch_runs_ended_total{outcome=\"SUCCEEDED\"}"),
        1.0
    );
    assert_eq!(value("agora_batch_instances_waiting"), 0.0);
    assert!(value("agora_batch_store_commit_seconds_count") >= 1.0);

    // Unknown ids and refused requests: a clear error and a non-zero exit.
    for args in [
        vec!["status", "nope"],
        vec!["logs", "nope"],
        vec!["kill", "nope"],
        vec!["rm", "nope"],
        vec!["run", "nope"],
    ] {
        let (code, _, err) = agora_job(&cluster.url, &args).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("unknown job `nope`"), "{args:?}: {err}");
    }
    let (code, _, err) = agora_job(&cluster.url, &["kill", "hello"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no active run"), "{err}");
    let (code, _, err) = agora_job("http://127.0.0.1:1", &["list"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach the master"), "{err}");

    let (code, _, _) = agora_job(&cluster.url, &["rm", "hello"]).await;
    assert_eq!(code, 0);
    let (code, _, _) = agora_job(&cluster.url, &["status", "hello"]).await;
    assert_ne!(code, 0, "removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_job_is_retried_then_fails_with_its_exit_code() {
    let cluster = Cluster::start(&[("b1", "cpus:2;mem:1024")]).await;
    let dir = tempdir();
    let spec = write_spec(
        dir.path(),
        "flaky.json",
        r#"{"id": "flaky", "cmd": "echo attempt $AGORA_ATTEMPT; exit 3", "retries": 2, "backoff": "200ms"}"#,
    );
    let (code, _, err) = agora_job(&cluster.url, &["submit", &spec, "--wait"]).await;
    assert_eq!(code, 1, "a failed job exits 1: {err}");
    assert!(err.contains("exit code 3"), "{err}");
    let j = job(&cluster.url, "flaky").await;
    assert_eq!(j["state"], "FAILED");
    let a = attempts(&j["runs"][0], 0);
    assert_eq!(a.len(), 3, "1 run + 2 retries");
    assert!(
        a.iter()
            .all(|a| a["exit_code"] == 3 && a["state"] == "TASK_FAILED")
    );
    // Backoff: each retry starts after the one before ended, 200ms then 400ms.
    for (i, gap) in [(1, 200), (2, 400)] {
        let ended = a[i - 1]["ended_at"].as_i64().expect("ended");
        let started = a[i]["launched_at"].as_i64().expect("launched");
        assert!(
            started - ended >= gap - 50,
            "retry {i} came {}ms after",
            started - ended
        );
    }
    let (_, out, _) = agora_job(&cluster.url, &["logs", "flaky"]).await;
    assert_eq!(out, "attempt 2\n", "logs show the latest attempt");
    let (code, out, _) = agora_job(&cluster.url, &["list", "--state", "failed"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("flaky"), "{out}");
    let (code, out, _) = agora_job(&cluster.url, &["list", "--state", "SUCCEEDED"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("flaky"), "{out}");
    let (code, _, err) = agora_job(&cluster.url, &["list", "--state", "DONE"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("parameter `state`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_instances_run_in_parallel_on_two_agents() {
    let cluster = Cluster::start(&[("p1", "cpus:2;mem:1024"), ("p2", "cpus:2;mem:1024")]).await;
    let barrier = tempdir();
    let b = barrier.path().display();
    // Each instance checks in, then waits for all four: only a parallel run
    // can finish.
    let spec = format!(
        "id = \"par\"\ncpus = 1\nmem = 64\ninstances = 4\ncmd = \"touch {b}/$AGORA_INSTANCE; for i in $(seq 200); do [ $(ls {b} | wc -l) -ge 4 ] && exit 0; sleep 0.05; done; exit 1\"\nvolumes = [\"{b}\"]\n"
    );
    submit_ok(&cluster.url, &spec).await;
    let j = wait_job(&cluster.url, "par", "SUCCEEDED", Duration::from_secs(60)).await;
    let run = &j["runs"][0];
    let mut hosts: Vec<String> = (0..4)
        .map(|i| {
            attempts(run, i)[0]["hostname"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, vec!["p1", "p1", "p2", "p2"]);
    for i in 0..4 {
        assert_eq!(attempts(run, i).len(), 1, "instance {i} ran once");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dependency_chain_runs_in_order_and_a_failure_stops_it() {
    let cluster = Cluster::start(&[("d1", "cpus:4;mem:2048")]).await;
    let out = tempdir();
    let log = out.path().join("order");
    let l = log.display();
    let o = out.path().display();
    let chain = format!(
        "[[job]]\nid = \"extract\"\ncmd = \"sleep 0.3; echo extract >> {l}\"\nvolumes = [\"{o}\"]\n\
         [[job]]\nid = \"transform\"\ncmd = \"echo transform >> {l}\"\nvolumes = [\"{o}\"]\ndepends_on = [\"extract\"]\n\
         [[job]]\nid = \"load\"\ncmd = \"echo load >> {l}\"\nvolumes = [\"{o}\"]\ndepends_on = [\"transform\"]\n"
    );
    submit_ok(&cluster.url, &chain).await;
    wait_job(&cluster.url, "load", "SUCCEEDED", Duration::from_secs(30)).await;
    assert_eq!(lines(&log), vec!["extract", "transform", "load"]);

    let broken = out.path().join("broken");
    let b = broken.display();
    let chain = format!(
        "[[job]]\nid = \"a\"\ncmd = \"echo a >> {b}\"\nvolumes = [\"{o}\"]\n\
         [[job]]\nid = \"b\"\ncmd = \"echo b >> {b}; exit 1\"\nvolumes = [\"{o}\"]\ndepends_on = [\"a\"]\n\
         [[job]]\nid = \"c\"\ncmd = \"echo c >> {b}\"\nvolumes = [\"{o}\"]\ndepends_on = [\"b\"]\n"
    );
    submit_ok(&cluster.url, &chain).await;
    let c = wait_job(&cluster.url, "c", "FAILED", Duration::from_secs(30)).await;
    assert_eq!(job(&cluster.url, "b").await["state"], "FAILED");
    assert!(
        c["runs"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("dependency `b`"),
        "{c}"
    );
    assert!(attempts(&c["runs"][0], 0).is_empty(), "c never ran");
    assert_eq!(lines(&broken), vec!["a", "b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_job_fires_repeatedly_and_forbid_skips_overlaps() {
    let cluster = Cluster::start(&[("c1", "cpus:2;mem:1024")]).await;
    // Every second, each run lasting 1.5 s: every other firing overlaps.
    submit_ok(
        &cluster.url,
        "id = \"tick\"\ncmd = \"sleep 1.5\"\nschedule = \"* * * * * *\"\ntimezone = \"Europe/Berlin\"\nconcurrency = \"forbid\"\n",
    )
    .await;
    assert_eq!(job(&cluster.url, "tick").await["state"], "SCHEDULED");
    let j = wait_until(
        "two finished runs and a skip",
        Duration::from_secs(30),
        || async {
            let j = job(&cluster.url, "tick").await;
            let done = j["runs"]
                .as_array()?
                .iter()
                .filter(|r| r["state"] == "SUCCEEDED")
                .count();
            (done >= 2 && j["skipped_runs"].as_u64() >= Some(1)).then_some(j)
        },
    )
    .await;
    let runs = j["runs"].as_array().expect("runs");
    assert!(runs.iter().all(|r| r["trigger"] == "schedule"));
    for pair in runs.windows(2) {
        let (Some(ended), Some(next)) =
            (pair[0]["ended_at"].as_i64(), pair[1]["started_at"].as_i64())
        else {
            continue;
        };
        assert!(
            next >= ended,
            "run {} started before run {} ended",
            pair[1]["number"],
            pair[0]["number"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_now_starts_a_scheduled_job_once_and_update_changes_it() {
    let cluster = Cluster::start(&[("r1", "cpus:2;mem:1024")]).await;
    submit_ok(
        &cluster.url,
        "id = \"yearly\"\ncmd = \"sleep 1\"\nschedule = \"0 0 1 1 *\"\nconcurrency = \"forbid\"\n",
    )
    .await;
    let (code, out, err) = agora_job(&cluster.url, &["run", "yearly"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "yearly run 1");
    let (code, _, err) = agora_job(&cluster.url, &["run", "yearly"]).await;
    assert_ne!(code, 0, "forbid refuses a second active run");
    assert!(err.contains("forbid"), "{err}");
    let j = wait_job(&cluster.url, "yearly", "SUCCEEDED", Duration::from_secs(30)).await;
    assert_eq!(j["runs"][0]["trigger"], "manual");

    // Updating the definition keeps the history and moves the schedule.
    let dir = tempdir();
    let new = write_spec(
        dir.path(),
        "yearly.toml",
        "id = \"yearly\"\ncmd = \"echo changed\"\nschedule = \"0 0 1 6 *\"\n",
    );
    let (code, out, err) = agora_job(&cluster.url, &["update", &new]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "updated yearly");
    let after = job(&cluster.url, "yearly").await;
    assert_eq!(after["spec"]["cmd"], "echo changed");
    assert_eq!(
        after["runs"].as_array().map(Vec::len),
        Some(1),
        "history kept"
    );
    assert_ne!(after["next_fire"], j["next_fire"], "the new schedule");
    let bad = write_spec(
        dir.path(),
        "bad.toml",
        "id = \"yearly\"\ncmd = \"x\"\ncpus = -3\n",
    );
    let (code, _, err) = agora_job(&cluster.url, &["update", &bad]).await;
    assert_ne!(code, 0);
    assert!(err.contains("cpus:"), "{err}");
    let ghost = write_spec(dir.path(), "ghost.toml", "id = \"ghost\"\ncmd = \"x\"\n");
    let (code, _, err) = agora_job(&cluster.url, &["update", &ghost]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown job `ghost`"), "{err}");
    assert_eq!(
        job(&cluster.url, "yearly").await["spec"]["cmd"],
        "echo changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_and_fails_the_run() {
    let cluster = Cluster::start(&[("t1", "cpus:2;mem:1024")]).await;
    submit_ok(
        &cluster.url,
        "id = \"slow\"\ncmd = \"sleep 60\"\ntimeout = \"1s\"\nretries = 3\n",
    )
    .await;
    let j = wait_job(&cluster.url, "slow", "FAILED", Duration::from_secs(30)).await;
    let run = &j["runs"][0];
    assert!(
        run["message"]
            .as_str()
            .unwrap_or("")
            .contains("timed out after 1s"),
        "{run}"
    );
    let a = wait_until(
        "the killed task's final state",
        Duration::from_secs(20),
        || async {
            let j = job(&cluster.url, "slow").await;
            let a = attempts(&j["runs"][0], 0);
            (a[0]["ended_at"].is_i64()).then_some(a)
        },
    )
    .await;
    assert_eq!(a.len(), 1, "a timed-out run is not retried");
    assert_eq!(a[0]["state"], "TASK_KILLED");
    let took = a[0]["ended_at"].as_i64().unwrap_or(0) - a[0]["launched_at"].as_i64().unwrap_or(0);
    assert!(
        took < 30_000,
        "killed long before `sleep 60` ended ({took}ms)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_kill_is_not_retried_and_forced_remove_kills() {
    let cluster = Cluster::start(&[("k1", "cpus:2;mem:1024")]).await;
    submit_ok(
        &cluster.url,
        "id = \"forever\"\ncmd = \"sleep 300\"\nretries = 5\n",
    )
    .await;
    wait_until("forever running", Duration::from_secs(20), || async {
        let j = job(&cluster.url, "forever").await;
        (attempts(&j["runs"][0], 0).first()?["state"] == "TASK_RUNNING").then_some(())
    })
    .await;
    let (code, out, err) = agora_job(&cluster.url, &["kill", "forever"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "killed forever");
    let j = wait_until("the kill to land", Duration::from_secs(20), || async {
        let j = job(&cluster.url, "forever").await;
        (attempts(&j["runs"][0], 0)[0]["state"] == "TASK_KILLED").then_some(j)
    })
    .await;
    assert_eq!(j["state"], "KILLED");
    assert_eq!(attempts(&j["runs"][0], 0).len(), 1);
    // Removing a job with an active run takes `--force`, which kills it.
    submit_ok(&cluster.url, "id = \"busy\"\ncmd = \"sleep 300\"\n").await;
    wait_until("busy running", Duration::from_secs(10), || async {
        (job(&cluster.url, "busy").await["state"] == "RUNNING").then_some(())
    })
    .await;
    let (code, _, err) = agora_job(&cluster.url, &["rm", "busy"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("active run"), "{err}");
    let busy = job(&cluster.url, "busy").await;
    let task = attempts(&busy["runs"][0], 0)[0]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let (code, out, err) = agora_job(&cluster.url, &["rm", "busy", "--force"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "removed busy");
    let (code, _, _) = agora_job(&cluster.url, &["status", "busy"]).await;
    assert_ne!(code, 0, "gone");
    wait_until(
        "the removed job's task killed",
        Duration::from_secs(20),
        || async {
            let t: Value = fetch(format!("{}/api/v1/tasks/{task}", cluster.url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (t["state"] == "TASK_KILLED").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_batch_runs_each_job_exactly_once() {
    let mut cluster = Cluster::start(&[("x1", "cpus:1;mem:1024")]).await;
    let pair = RunningAndQueued::submit(&cluster.url).await;
    cluster.batch.kill_hard();
    // The running task carries on without its framework.
    pair.open_gate();
    cluster.restart_batch().await;
    pair.check_each_ran_once(&cluster.url).await;
    let jobs: Value = fetch(format!("{}/batch/v1/jobs", cluster.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(2),
        "nothing lost, nothing added"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_agent_task_is_retried_elsewhere() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let (d1, d2) = (tempdir(), tempdir());
    let mut a1 = start_agent(&url, d1.path(), "cpus:1;mem:1024", "l1");
    wait_for_agents(&url, 1).await;
    let bdata = tempdir();
    let _batch = start_batch(&url, bdata.path(), &[]);
    wait_for_batch(&url).await;
    submit_ok(
        &url,
        "id = \"survivor\"\ncpus = 1\ncmd = \"sleep 2\"\nretries = 1\nbackoff = \"0s\"\n",
    )
    .await;
    wait_until(
        "survivor running on l1",
        Duration::from_secs(20),
        || async {
            let j = job(&url, "survivor").await;
            (attempts(&j["runs"][0], 0).first()?["state"] == "TASK_RUNNING").then_some(())
        },
    )
    .await;
    let _a2 = start_agent(&url, d2.path(), "cpus:1;mem:1024", "l2");
    a1.kill_hard();
    let j = wait_job(&url, "survivor", "SUCCEEDED", Duration::from_secs(60)).await;
    let a = attempts(&j["runs"][0], 0);
    assert_eq!(a.len(), 2, "the lost attempt counts");
    assert_eq!(a[0]["hostname"], "l1");
    assert_eq!(a[0]["state"], "TASK_UNREACHABLE");
    assert_eq!(a[1]["hostname"], "l2");
    drop(a1);
    // The first agent's task is still running on its own: clean it up.
    let _cleanup = start_agent_with(
        &url,
        d1.path(),
        "cpus:1;mem:1024",
        "l1",
        &["--recover", "cleanup"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_tiny_jobs_drain_each_run_exactly_once() {
    let cluster = Cluster::start(&[("t1", "cpus:2;mem:4096")]).await;
    let client = client();
    let out = tempdir();
    for batch in 0..10 {
        let spec = counting_jobs(&format!("tiny-{batch}"), 100, out.path(), 0.0);
        submit_ok(&cluster.url, &spec).await;
    }
    let done = wait_until("1,000 jobs to succeed", Duration::from_secs(240), || {
        let client = client.clone();
        let url = cluster.url.clone();
        async move {
            let count = |state: &'static str| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let page: Value = client
                        .get(format!("{url}/batch/v1/jobs?state={state}&limit=0"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    page["total"].as_u64()
                }
            };
            let bad = count("FAILED,KILLED").await?;
            assert_eq!(bad, 0, "jobs failed");
            let ok = count("SUCCEEDED").await?;
            (ok == 1000).then_some(ok)
        }
    })
    .await;
    assert_eq!(done, 1000);
    for batch in 0..10 {
        assert_each_ran_once(out.path(), &format!("tiny-{batch}"), 100);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_specs_are_refused_naming_the_field_and_nothing_is_stored() {
    let cluster = Cluster::start(&[("v1", "cpus:2;mem:1024;disk:1000")]).await;
    submit_ok(&cluster.url, "id = \"base\"\ncmd = \"true\"\n").await;
    let cases: &[(&str, &str)] = &[
        ("id = \"neg\"\ncmd = \"true\"\ncpus = -1\n", "cpus"),
        ("id = \"lots\"\ncmd = \"true\"\nmem = \"lots\"\n", "mem"),
        (
            "id = \"cron\"\ncmd = \"true\"\nschedule = \"61 * * * *\"\n",
            "schedule",
        ),
        (
            "id = \"cron2\"\ncmd = \"true\"\nschedule = \"whenever\"\n",
            "schedule",
        ),
        (
            "[[job]]\nid = \"x\"\ncmd = \"true\"\ndepends_on = [\"y\"]\n[[job]]\nid = \"y\"\ncmd = \"true\"\ndepends_on = [\"x\"]\n",
            "depends_on",
        ),
        ("id = \"huge\"\ncmd = \"true\"\ncpus = 64\n", "cpus"),
        ("id = \"fat\"\ncmd = \"true\"\nmem = 999999\n", "mem"),
        (
            "id = \"far\"\ncmd = \"true\"\nconstraints = [[\"host\", \"IS\", \"elsewhere\"]]\n",
            "constraints",
        ),
        (
            "id = \"extra\"\ncmd = \"true\"\ncolour = \"red\"\n",
            "colour",
        ),
        ("id = \"Bad Id\"\ncmd = \"true\"\n", "id"),
        ("id = \"base\"\ncmd = \"true\"\n", "id"),
        (
            "id = \"orphan\"\ncmd = \"true\"\ndepends_on = [\"ghost\"]\n",
            "depends_on[0]",
        ),
        (
            "id = \"late\"\ncmd = \"true\"\ntimeout = \"soon\"\n",
            "timeout",
        ),
        (
            "{\"id\": \"j\", \"cmd\": \"true\", \"cpus\": \"two\"}",
            "cpus",
        ),
        ("this is not = = a spec", "spec"),
    ];
    for (spec, field) in cases {
        let (status, body) = submit(&cluster.url, spec).await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert_eq!(body["field"], *field, "{spec}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{field}: ")),
            "{body}"
        );
    }
    // The CLI says the same, and exits non-zero.
    let dir = tempdir();
    let path = write_spec(
        dir.path(),
        "bad.toml",
        "id = \"neg\"\ncmd = \"true\"\ncpus = -1\n",
    );
    let (code, out, err) = agora_job(&cluster.url, &["submit", &path]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("cpus: must be a positive number"), "{err}");
    // Too large a body is refused before it is parsed, saying so in JSON.
    let big = format!("id = \"big\"\ncmd = \"{}\"\n", "x".repeat(17 << 20));
    let (status, body) = submit(&cluster.url, &big).await;
    assert_eq!(status, 413);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("bytes"),
        "{body}"
    );

    let jobs: Value = fetch(format!("{}/batch/v1/jobs", cluster.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["base"], "refused specs store nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_all_of_agora_dev_loses_and_repeats_nothing() {
    let data = tempdir();
    let flags = ["--resources", "cpus:1;mem:1024", "--reconcile-grace", "20s"];
    let mut dev = start_dev(data.path(), &flags);
    let url = dev.url.clone().expect("url");
    wait_for_batch(&url).await;
    let pair = RunningAndQueued::submit(&url).await;
    submit_ok(
        &url,
        "id = \"later\"\ncmd = \"true\"\nschedule = \"0 0 1 1 *\"\n",
    )
    .await;

    dev.stop();
    pair.open_gate();
    let dev = start_dev(data.path(), &flags);
    let url = dev.url.clone().expect("url");
    wait_for_batch(&url).await;
    pair.check_each_ran_once(&url).await;
    assert_eq!(job(&url, "later").await["state"], "SCHEDULED");
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_down_batch_registers_anew_and_retries_its_jobs() {
    let cluster = Cluster::start(&[("w1", "cpus:2;mem:1024")]).await;
    let out = tempdir();
    let marks = out.path().join("starts");
    let gate = out.path().join("gate");
    submit_ok(
        &cluster.url,
        &format!(
            "id = \"resilient\"\nretries = 1\nbackoff = \"0s\"\ncmd = \"echo $AGORA_ATTEMPT >> {}; {}\"\nvolumes = [\"{}\"]\n",
            marks.display(),
            until_gate(&gate),
            out.path().display()
        ),
    )
    .await;
    wait_until("the first attempt", Duration::from_secs(20), || async {
        lines(&marks).first().map(|_| ())
    })
    .await;
    let old_ids = batch_framework_ids(&cluster.url).await;
    assert_eq!(old_ids.len(), 1);
    let old_id = &old_ids[0];
    let r = client()
        .post(format!(
            "{}/api/v1/frameworks/{old_id}/teardown",
            cluster.url
        ))
        .send()
        .await
        .expect("teardown");
    assert!(r.status().is_success());
    // The old attempt was killed with its framework; the job is retried
    // under the new registration (after the reconcile grace) and succeeds.
    wait_until("the retry", Duration::from_secs(30), || async {
        (lines(&marks).len() >= 2).then_some(())
    })
    .await;
    std::fs::write(&gate, "").expect("open the gate");
    let j = wait_job(
        &cluster.url,
        "resilient",
        "SUCCEEDED",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(attempts(&j["runs"][0], 0).len(), 2);
    assert_eq!(lines(&marks), vec!["0", "1"]);
    let now = batch_framework_ids(&cluster.url).await;
    assert_eq!(now.len(), 1, "one batch framework: {now:?}");
    assert_ne!(&now[0], old_id, "registered anew");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_a_running_job_to_its_end() {
    let cluster = Cluster::start(&[("f1", "cpus:2;mem:1024")]).await;
    let dir = tempdir();
    let spec = write_spec(
        dir.path(),
        "talk.toml",
        "id = \"talk\"\ninstances = 2\ncmd = \"echo one-$AGORA_INSTANCE; sleep 1; echo two-$AGORA_INSTANCE\"\n",
    );
    let (code, _, err) = agora_job(&cluster.url, &["submit", &spec]).await;
    assert_eq!(code, 0, "{err}");
    // Started at once, before the job has run: it waits, follows, and ends
    // when the instance does.
    let (code, out, err) = agora_job(
        &cluster.url,
        &["logs", "talk", "--instance", "1", "--follow"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "one-1\ntwo-1\n");
    let (code, _, err) = agora_job(&cluster.url, &["logs", "talk", "--instance", "7"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no instance 7"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_a_huge_command_runs_every_instance_and_one_too_big_is_refused() {
    let cluster = Cluster::start(&[("big", "cpus:2;mem:1024;disk:1000")]).await;
    // 1.5 MB commands (beyond one `sh -c` argument, 128 KiB) and eight
    // instances: more than one accept (and the old 4 MiB gRPC limit) holds.
    let command = format!("# {}\necho big-ran", "a".repeat(1_500_000));
    let spec = format!(
        "[[job]]\nid = \"big\"\ncmd = '''{command}'''\ninstances = 8\ncpus = 0.1\nmem = 16\n"
    );
    submit_ok(&cluster.url, &spec).await;
    let job = wait_job(&cluster.url, "big", "SUCCEEDED", Duration::from_secs(60)).await;
    assert_eq!(
        job["runs"][0]["instances"].as_array().map(Vec::len),
        Some(8),
        "{job:#}"
    );

    let huge = format!(
        "[[job]]\nid = \"huge\"\ncmd = '''{}'''\n",
        "b".repeat(5_000_000)
    );
    let (status, body) = submit(&cluster.url, &huge).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("cmd"),
        "{body}"
    );
}
