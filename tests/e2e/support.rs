//! Shared test support: real `agora` processes on loopback, test frameworks
//! built on the SDK, and waiting on conditions with a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_sdk::{
    Demand, Driver, FrameworkConfig, Offer, Resources, Scheduler, SdkError, TaskState, TaskStatus,
    is_terminal, offer_id, offer_resources, status_state, status_task_id, task, with_ports,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::mpsc;

/// Polls `check` until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `agora` process; stopped (SIGTERM, then SIGKILL) when dropped. An
/// agent's tasks outlive it by design, so dropping an agent also kills the
/// containers it started: a test leaves no process or cgroup behind.
pub struct Proc {
    child: Child,
    pub url: Option<String>,
    agent_data: Option<PathBuf>,
    /// The test stopped it on purpose (its tasks are meant to outlive it).
    stopped_by_test: bool,
    /// A master's registry, when the test did not give it a place.
    _data: Option<tempfile::TempDir>,
}

impl Proc {
    fn spawn(args: &[&str], wait_for_url: bool) -> Proc {
        Proc::spawn_logging(args, wait_for_url, None)
    }

    /// With its log (stderr) in `log` rather than the test's output.
    fn spawn_logging(args: &[&str], wait_for_url: bool, log: Option<&Path>) -> Proc {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(args)
            .env(
                "AGORA_LOG",
                std::env::var("AGORA_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning agora");
        let mut url = None;
        if wait_for_url {
            let stdout = child.stdout.take().expect("stdout");
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("reading the listen line");
            url = Some(
                line.trim()
                    .split_once("listening on ")
                    .map(|(_, url)| url.to_string())
                    .unwrap_or_else(|| panic!("unexpected first line: {line:?}")),
            );
        }
        Proc {
            child,
            url,
            agent_data: None,
            stopped_by_test: false,
            _data: None,
        }
    }

    /// A master's registry directory, when the test did not give it one.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self._data.as_ref().map(|d| d.path().to_path_buf())
    }

    /// How it ended, once it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Any `agora` command, not waiting for a listen line.
    pub fn spawn_plain(args: &[&str]) -> Proc {
        Proc::spawn(args, false)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// SIGKILL, and reap.
    pub fn kill_hard(&mut self) {
        self.stopped_by_test = true;
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        self.stopped_by_test = true;
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_hard();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped_by_test {
            return;
        }
        self.terminate();
        if let Some(data) = &self.agent_data {
            remove_containers(data);
        }
    }
}

/// Kills and removes every container an agent with data in `data` started
/// (for agents a test killed on purpose, whose tasks outlive them).
pub fn remove_containers(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data.join("containers")) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let id = entry.file_name().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cgroup_pids(&id).is_empty() && Instant::now() < deadline {
            for pid in cgroup_pids(&id) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in cgroup_dirs(&id) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The token `agora dev` keeps for its user (`~/.config/agora/token`).
/// Tests present it everywhere: a master without authentication ignores
/// it, and every `agora dev` of this user takes it.
pub fn user_token() -> Option<String> {
    let home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    agora_proto::auth::read_token_file(&home.join("agora/token"))
        .ok()
        .filter(|t| !t.is_empty())
}

/// An HTTP client presenting [`user_token`].
pub fn client() -> reqwest::Client {
    agora_proto::tls::install_default_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = user_token() {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// `GET url` with [`client`].
pub async fn fetch(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}

/// Master flags that make failures show up within a test's patience.
pub const FAST_MASTER: &[&str] = &["--agent-timeout", "2s", "--allocation-interval", "100ms"];

/// Starts a master on an ephemeral loopback port (or `listen`), with its
/// registry in a fresh directory unless `extra` names one.
pub fn start_master(listen: &str, extra: &[&str]) -> Proc {
    start_master_logging(listen, extra, None)
}

/// [`start_master`] with its log written to `log` (when given).
pub fn start_master_logging(listen: &str, extra: &[&str], log: Option<&Path>) -> Proc {
    let mut args = vec!["master", "--listen", listen];
    // Tests of other things run the master open; the security tests give
    // it an auth file.
    if !extra.contains(&"--auth") {
        args.push("--no-auth");
    }
    args.extend_from_slice(FAST_MASTER);
    args.extend_from_slice(extra);
    let data = (!extra.contains(&"--data-dir")).then(|| tempfile::tempdir().expect("tempdir"));
    let path = data
        .as_ref()
        .map(|d| d.path().to_str().expect("utf-8 path").to_string());
    if let Some(path) = &path {
        args.extend_from_slice(&["--data-dir", path]);
    }
    let mut master = Proc::spawn_logging(&args, true, log);
    master._data = data;
    master
}

/// Starts an agent offering `resources`, keeping its data in `data_dir`,
/// with the default (Linux) containerizer.
pub fn start_agent(master: &str, data_dir: &Path, resources: &str, hostname: &str) -> Proc {
    start_agent_with(master, data_dir, resources, hostname, &[])
}

/// [`start_agent`] with extra flags.
pub fn start_agent_with(
    master: &str,
    data_dir: &Path,
    resources: &str,
    hostname: &str,
    extra: &[&str],
) -> Proc {
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let attributes = format!("host:{hostname}");
    let mut args = vec![
        "agent",
        "--master",
        master,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--resources",
        resources,
        "--hostname",
        hostname,
        "--attributes",
        &attributes,
        "--status-retry",
        "1s",
    ];
    args.extend_from_slice(extra);
    let mut agent = Proc::spawn(&args, false);
    agent.agent_data = Some(PathBuf::from(data_dir));
    agent
}

/// The HTTP endpoint of the agent called `hostname`, from the master's state.
pub async fn agent_endpoint(master: &str, hostname: &str) -> String {
    wait_until(
        &format!("agent {hostname}'s endpoint"),
        Duration::from_secs(10),
        || async {
            let s = state(master).await;
            s["agents"]
                .as_array()?
                .iter()
                .find(|a| a["hostname"] == hostname && a["status"] == "active")?["endpoint"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(str::to_string)
        },
    )
    .await
}

/// The agent's `/api/v1/containers`.
pub async fn containers(endpoint: &str) -> Vec<Value> {
    fetch(format!("{endpoint}/api/v1/containers"))
        .await
        .expect("GET /api/v1/containers")
        .json::<Value>()
        .await
        .expect("containers JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The running container of `task` on the agent at `endpoint`.
pub async fn container_of(endpoint: &str, task: &str) -> Value {
    wait_until(
        &format!("{task}'s container"),
        Duration::from_secs(10),
        || async {
            containers(endpoint)
                .await
                .into_iter()
                .find(|c| c["task_id"] == task)
        },
    )
    .await
}

/// Every cgroup directory of container `id`, v1 (one per hierarchy) or v2.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    if root.join("agora").join(id).is_dir() {
        found.push(root.join("agora").join(id));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.filter_map(Result::ok) {
            let dir = e.path().join("agora").join(id);
            if dir.is_dir() {
                found.push(dir);
            }
        }
    }
    found
}

/// Host pids in container `id`'s cgroup.
pub fn cgroup_pids(id: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs(id)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Starts the batch framework for `master` on an ephemeral port, keeping
/// its store in `data`.
pub fn start_batch(master: &str, data: &Path, extra: &[&str]) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec![
        "batch",
        "--master",
        master,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args, true)
}

/// Starts the services framework for `master` on an ephemeral port,
/// keeping its store in `data`.
pub fn start_services(master: &str, data: &Path, extra: &[&str]) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec![
        "services",
        "--master",
        master,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args, true)
}

/// Starts `agora dev` on an ephemeral port with its data in `data`.
pub fn start_dev(data: &Path, extra: &[&str]) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--data-dir", data];
    args.extend_from_slice(extra);
    let mut dev = Proc::spawn(&args, true);
    dev.agent_data = Some(PathBuf::from(data));
    dev
}

/// The master's `/api/v1/state`.
pub async fn state(master: &str) -> Value {
    fetch(format!("{master}/api/v1/state"))
        .await
        .expect("GET /api/v1/state")
        .json()
        .await
        .expect("state JSON")
}

/// `GET url`: the status and the JSON body (null if none).
pub async fn get(url: &str) -> (u16, Value) {
    let r = fetch(url).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A request with a body: the status and the JSON body (null if none).
pub async fn send(method: reqwest::Method, url: &str, body: &str) -> (u16, Value) {
    let r = client()
        .request(method, url)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the master lists `count` active agents.
pub async fn wait_for_agents(master: &str, count: usize) -> Value {
    wait_until(
        &format!("{count} active agents"),
        Duration::from_secs(20),
        || async {
            let s = state(master).await;
            let active = s["agents"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["status"] == "active").count());
            (active == count).then_some(s)
        },
    )
    .await
}

/// What a [`Recorder`] saw.
#[derive(Debug)]
pub enum Seen {
    Subscribed(String),
    Offers(Vec<Offer>),
    Rescinded(String),
    Update(TaskStatus),
    Error(String),
    Failure(String),
    Disconnected,
}

/// A scheduler that does nothing but report; the test drives the driver.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
}

impl Recorder {
    pub fn new(tx: mpsc::UnboundedSender<Seen>) -> Recorder {
        Recorder { tx }
    }
}

impl Scheduler for Recorder {
    async fn subscribed(&mut self, _: &Driver, framework_id: &str) {
        let _ = self.tx.send(Seen::Subscribed(framework_id.to_string()));
    }
    async fn offers(&mut self, _: &Driver, offers: Vec<Offer>) {
        let _ = self.tx.send(Seen::Offers(offers));
    }
    async fn rescinded(&mut self, _: &Driver, offer_id: &str) {
        let _ = self.tx.send(Seen::Rescinded(offer_id.to_string()));
    }
    async fn status_update(&mut self, _: &Driver, status: TaskStatus) {
        let _ = self.tx.send(Seen::Update(status));
    }
    async fn error(&mut self, _: &Driver, message: &str) {
        let _ = self.tx.send(Seen::Error(message.to_string()));
    }
    async fn failure(&mut self, _: &Driver, agent_id: &str, _message: &str) {
        let _ = self.tx.send(Seen::Failure(agent_id.to_string()));
    }
    async fn disconnected(&mut self, _: &Driver) {
        let _ = self.tx.send(Seen::Disconnected);
    }
}

/// A framework run by a [`Recorder`], with its event stream.
pub struct TestFramework {
    pub driver: Driver,
    pub events: mpsc::UnboundedReceiver<Seen>,
    pub id: String,
    set_aside: std::collections::VecDeque<Seen>,
    run: tokio::task::JoinHandle<Result<Recorder, SdkError>>,
}

impl TestFramework {
    pub async fn start(master: &str, name: &str, role: &str) -> TestFramework {
        let mut config = FrameworkConfig::new(master, name);
        config.token = user_token();
        config.role = role.to_string();
        TestFramework::start_with(config).await
    }

    pub async fn start_with(config: FrameworkConfig) -> TestFramework {
        TestFramework::start_wanting(config, None).await
    }

    /// Starts a framework that tells its `demand` with its subscription.
    pub async fn start_wanting(config: FrameworkConfig, demand: Option<&Demand>) -> TestFramework {
        let name = config.name.clone();
        let driver = Driver::new(config).expect("driver");
        if demand.is_some() {
            driver
                .set_demand(demand)
                .await
                .expect("a demand before subscribing");
        }
        let (tx, mut events) = mpsc::unbounded_channel();
        let runner = driver.clone();
        let run = tokio::spawn(async move { runner.run(Recorder { tx }).await });
        let id = match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(Seen::Subscribed(id))) => id,
            other => panic!("{name}: expected a subscription, got {other:?}"),
        };
        TestFramework {
            driver,
            events,
            id,
            set_aside: Default::default(),
            run,
        }
    }

    /// The next event (set-aside ones first), or panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Seen {
        if let Some(seen) = self.set_aside.pop_front() {
            return seen;
        }
        self.receive(timeout).await
    }

    async fn receive(&mut self, timeout: Duration) -> Seen {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => panic!("framework stopped"),
            Err(_) => panic!("no event within {timeout:?}"),
        }
    }

    /// The first event matching `pick`, earlier ones that do not match set
    /// aside for later waits (so waiting for one task never loses another's
    /// update).
    pub async fn next_matching<T>(
        &mut self,
        timeout: Duration,
        pick: impl Fn(&Seen) -> Option<T>,
    ) -> T {
        if let Some(i) = self.set_aside.iter().position(|s| pick(s).is_some())
            && let Some(seen) = self.set_aside.remove(i)
            && let Some(found) = pick(&seen)
        {
            return found;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self
                .receive(deadline.saturating_duration_since(Instant::now()))
                .await;
            if let Some(found) = pick(&seen) {
                return found;
            }
            self.set_aside.push_back(seen);
        }
    }

    /// The next batch of offers.
    pub async fn next_offers(&mut self, timeout: Duration) -> Vec<Offer> {
        self.next_matching(timeout, |s| match s {
            Seen::Offers(o) => Some(o.clone()),
            _ => None,
        })
        .await
    }

    /// The next status update matching `pred`.
    pub async fn next_update(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&TaskStatus) -> bool,
    ) -> TaskStatus {
        self.next_matching(timeout, |s| match s {
            Seen::Update(u) if pred(u) => Some(u.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `task` to reach `state`.
    pub async fn wait_state(
        &mut self,
        task_id: &str,
        state: TaskState,
        timeout: Duration,
    ) -> TaskStatus {
        self.next_update(timeout, |s| {
            status_task_id(s) == task_id && status_state(s) == state
        })
        .await
    }

    /// Waits for every one of `task_ids` to reach `state`, in any order;
    /// returns the updates by task id.
    pub async fn wait_all(
        &mut self,
        task_ids: &[&str],
        state: TaskState,
        timeout: Duration,
    ) -> BTreeMap<String, TaskStatus> {
        let mut found = BTreeMap::new();
        let deadline = Instant::now() + timeout;
        while found.len() < task_ids.len() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let s = self
                .next_update(remaining, |s| {
                    status_state(s) == state
                        && task_ids.contains(&status_task_id(s))
                        && !found.contains_key(status_task_id(s))
                })
                .await;
            found.insert(status_task_id(&s).to_string(), s);
        }
        found
    }

    /// The framework process dies: its stream drops without a teardown.
    pub fn abandon(self) {
        self.run.abort();
    }

    pub async fn teardown(self) {
        self.driver.teardown();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.run).await;
    }
}

/// Outcomes a [`Launcher`] records: task id → latest state.
pub type Outcomes = Arc<Mutex<BTreeMap<String, TaskState>>>;

/// A scheduler that launches `count` copies of a command.
///
/// With `one_per_offer` it takes one task from each offer and hands the rest
/// back at once (refuse 0), the shape that makes DRF's turn-taking visible;
/// otherwise it fills each offer.
pub struct Launcher {
    pub prefix: String,
    pub command: String,
    pub per_task: Resources,
    pub count: u32,
    pub one_per_offer: bool,
    /// Ports each task takes from the offer (seen as `PORT0…`).
    pub ports: u64,
    pub launched: u32,
    pub outcomes: Outcomes,
}

impl Launcher {
    pub fn new(
        prefix: &str,
        command: &str,
        per_task: Resources,
        count: u32,
    ) -> (Launcher, Outcomes) {
        let outcomes = Outcomes::default();
        let launcher = Launcher {
            prefix: prefix.to_string(),
            command: command.to_string(),
            per_task,
            count,
            one_per_offer: false,
            ports: 0,
            launched: 0,
            outcomes: outcomes.clone(),
        };
        (launcher, outcomes)
    }
}

impl Scheduler for Launcher {
    async fn offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        for offer in offers {
            let mut left = offer_resources(&offer);
            let mut tasks = Vec::new();
            while self.launched < self.count {
                let Some(want) = with_ports(self.per_task.clone(), &left, self.ports) else {
                    break;
                };
                if !left.contains(&want) {
                    break;
                }
                tasks.push(task(
                    &format!("{}-{}", self.prefix, self.launched),
                    &self.command,
                    &want,
                ));
                left.subtract(&want);
                self.launched += 1;
                if self.one_per_offer {
                    break;
                }
            }
            let result = if tasks.is_empty() {
                driver.decline(&[offer_id(&offer)], Some(3600.0)).await
            } else {
                driver.accept(&[offer_id(&offer)], tasks, Some(0.0)).await
            };
            if let Err(e) = result {
                panic!("{}: answering an offer: {e}", self.prefix);
            }
        }
        if self.launched == self.count {
            let _ = driver.suppress().await;
        }
    }

    async fn status_update(&mut self, _: &Driver, status: TaskStatus) {
        if let Ok(mut o) = self.outcomes.lock() {
            o.insert(status_task_id(&status).to_string(), status_state(&status));
        }
    }
}

/// Counts outcomes in `state`.
pub fn count_in(outcomes: &Outcomes, state: TaskState) -> usize {
    outcomes
        .lock()
        .map_or(0, |o| o.values().filter(|s| **s == state).count())
}

/// Whether every recorded outcome is terminal and there are `n` of them.
pub fn all_ended(outcomes: &Outcomes, n: usize) -> bool {
    outcomes
        .lock()
        .is_ok_and(|o| o.len() == n && o.values().all(|s| is_terminal(*s)))
}

/// Runs a [`Launcher`] in the background; returns its driver.
pub fn spawn_launcher(master: &str, name: &str, role: &str, launcher: Launcher) -> Driver {
    let mut config = FrameworkConfig::new(master, name);
    config.token = user_token();
    config.role = role.to_string();
    let driver = Driver::new(config).expect("driver");
    let runner = driver.clone();
    tokio::spawn(async move { runner.run(launcher).await });
    driver
}

/// A fresh temporary directory.
/// A scratch directory anyone may use: tasks run as `nobody` and read and
/// write the files tests share with them there.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod the scratch directory");
    dir
}

/// Reads a pid a task wrote into its sandbox.
pub fn sandbox_file(data_dir: &Path, framework: &str, task: &str, file: &str) -> PathBuf {
    data_dir
        .join("sandboxes")
        .join(framework)
        .join(task)
        .join(file)
}

/// A one-member etcd on free loopback ports (Debian's `etcd-server`),
/// stopped when dropped.
pub struct EtcdServer {
    local: agora_store::local_etcd::LocalEtcd,
    _data: tempfile::TempDir,
}

impl EtcdServer {
    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.local.endpoints
    }

    /// Sends `signal` to every member.
    pub fn signal(&self, signal: Signal) {
        for pid in self.local.pids() {
            let _ = kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
}

pub async fn start_etcd() -> EtcdServer {
    let data = tempdir();
    let local = agora_store::local_etcd::LocalEtcd::start(data.path(), 1)
        .expect("etcd (apt-get install etcd-server)");
    local
        .ready(Duration::from_secs(20))
        .await
        .expect("etcd did not start");
    EtcdServer { local, _data: data }
}

/// The leader every one of `masters` that answers names, once they agree
/// (on someone other than `not`, a leader known dead or frozen).
pub async fn wait_leader(masters: &[String], not: Option<&str>) -> String {
    wait_until(
        "the masters to agree on a leader",
        Duration::from_secs(20),
        || async {
            let mut named = Vec::new();
            for m in masters {
                let (code, body) = match fetch(format!("{m}/api/v1/leader")).await {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    ),
                    Err(_) => continue,
                };
                if code != 200 {
                    return None;
                }
                named.push(body["leader"].as_str()?.to_string());
            }
            let first = named.first()?.clone();
            (Some(first.as_str()) != not && named.iter().all(|l| *l == first)).then_some(first)
        },
    )
    .await
}

/// The `webui_url` of the active framework called `name` (the replica the
/// master relays to), once it is not `not`.
pub async fn active_framework_url(master: &str, name: &str, not: Option<&str>) -> String {
    wait_until(
        &format!("the active {name} replica"),
        Duration::from_secs(30),
        || async {
            let (_, frameworks) = get(&format!("{master}/api/v1/frameworks")).await;
            let active = frameworks["frameworks"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == name && f["active"] == true)?
                .clone();
            let url = active["webui_url"].as_str()?.to_string();
            (Some(url.as_str()) != not).then_some(url)
        },
    )
    .await
}

/// Of a framework `name` run as two `replicas` on etcd: freezes the active
/// one past its lease until the other takes over, wakes it, and kills the
/// other. Woken deposed, the frozen one must have stood by: it is active
/// again, still the same process.
pub async fn freeze_the_active_replica_then_kill_the_other(
    master: &str,
    name: &str,
    replicas: &mut [Proc; 2],
) {
    let first = active_framework_url(master, name, None).await;
    let frozen = replicas
        .iter()
        .position(|r| r.url.as_deref() == Some(first.as_str()))
        .expect("one replica is active");
    replicas[frozen].signal(Signal::SIGSTOP);
    let second = active_framework_url(master, name, Some(&first)).await;
    replicas[frozen].signal(Signal::SIGCONT);
    replicas[1 - frozen].kill_hard();
    let third = active_framework_url(master, name, Some(&second)).await;
    assert_eq!(third, first, "the replica that froze is active again");
    assert!(replicas[frozen].exited().is_none());
}

/// Waits until `master` relays `/batch/` to a subscribed batch framework.
pub async fn wait_for_batch(master: &str) {
    let client = client();
    wait_until(
        "the batch API through the master",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("{master}/batch/v1/health"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
}

/// How many batch jobs are in `states` (e.g. `SUCCEEDED`, `FAILED,KILLED`).
pub async fn batch_count(master: &str, states: &str) -> Option<u64> {
    let page: Value = fetch(format!("{master}/batch/v1/jobs?state={states}&limit=0"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    page["total"].as_u64()
}

/// `count` jobs whose command appends a line to `dir/<job id>`: a job that
/// ran twice leaves two lines.
pub fn counting_jobs(prefix: &str, count: usize, dir: &Path, seconds: f64) -> String {
    let mut spec = String::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        spec.push_str(&format!(
            "[[job]]\nid = \"{id}\"\ncmd = \"sleep {seconds}; echo ran >> {dir}/{id}\"\ncpus = 0.01\nmem = 16\nvolumes = [\"{dir}\"]\n",
            dir = dir.display()
        ));
    }
    spec
}

/// Every job left exactly one line: each ran once.
pub fn assert_each_ran_once(dir: &Path, prefix: &str, count: usize) {
    let mut twice = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let runs = std::fs::read_to_string(dir.join(&id))
            .unwrap_or_default()
            .lines()
            .count();
        if runs != 1 {
            twice.push(format!("{id}: {runs}"));
        }
    }
    assert!(twice.is_empty(), "jobs not run exactly once: {twice:?}");
}
