//! Whole-system benchmark of high availability and of the registry's cost.
//!
//! 1. Failover: three masters on a three-member etcd (loopback), one agent
//!    and one framework given the list of masters. The leader is killed
//!    with SIGKILL (or stopped with SIGTERM, when it resigns), and the clock
//!    runs from the signal to (a) the framework subscribed again — to the
//!    new leader — and (b) the first offer it receives from the new leader.
//!    The killed master is started again (as a standby) between rounds.
//! 2. Registry writes: agent registrations per second against one master,
//!    embedded (redb) and on etcd — each registration is one durable
//!    registry transaction before the agent is answered. The clock runs from
//!    the first `Register` sent to the last `Registered` received, with all
//!    sessions open at once.
//! 3. The registry on the launch path: accept → `TASK_RUNNING` latency of
//!    one task at a time (process containerizer), embedded vs etcd.
//!
//! `cargo bench --bench failover` (needs Debian's `etcd-server`).
//! `AGORA_BENCH_KILLS=N` sets the number of kills (default 20).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_proto::v1::{self, agent_message, agent_service_client::AgentServiceClient};
use agora_sdk::{
    Driver, FrameworkConfig, Offer, Resources, Scheduler, TaskState, TaskStatus, offer_id,
    status_state, status_task_id, task,
};
use agora_store::local_etcd::LocalEtcd;
use tokio::sync::mpsc;

#[path = "support/dev.rs"]
mod dev;
use dev::percentile;
use tokio_stream::wrappers::UnboundedReceiverStream;

enum Seen {
    Subscribed,
    Offers(Vec<Offer>),
    Update(TaskStatus),
}

struct Forward(mpsc::UnboundedSender<(Instant, Seen)>);

impl Scheduler for Forward {
    async fn subscribed(&mut self, _: &Driver, _: &str) {
        let _ = self.0.send((Instant::now(), Seen::Subscribed));
    }
    async fn offers(&mut self, _: &Driver, offers: Vec<Offer>) {
        let _ = self.0.send((Instant::now(), Seen::Offers(offers)));
    }
    async fn status_update(&mut self, _: &Driver, status: TaskStatus) {
        let _ = self.0.send((Instant::now(), Seen::Update(status)));
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), signal);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A three-member etcd cluster on loopback, answering.
async fn start_etcd(data: &Path) -> LocalEtcd {
    let etcd = LocalEtcd::start(data, 3).expect("etcd (apt-get install etcd-server)");
    etcd.ready(Duration::from_secs(30))
        .await
        .expect("etcd did not start");
    etcd
}

/// `agora master` on `listen`; returns once it serves.
fn start_master(listen: &str, etcd: Option<&str>, data: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    cmd.args([
        "master",
        "--no-auth",
        "--listen",
        listen,
        "--allocation-interval",
        "100ms",
    ])
    .args(["--agent-timeout", "5s"])
    .arg("--data-dir")
    .arg(data);
    if let Some(etcd) = etcd {
        cmd.args(["--etcd", etcd, "--leader-lease", "1s"]);
    }
    let mut child = cmd
        .env("AGORA_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("master");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    Proc(child)
}

fn start_agent(masters: &str, data: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["agent", "--master", masters, "--listen", "127.0.0.1:0"])
        .args([
            "--containerizer",
            "process",
            "--resources",
            "cpus:4;mem:4096",
        ])
        .arg("--data-dir")
        .arg(data)
        .env("AGORA_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("agent");
    Proc(child)
}

async fn leader_of(masters: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in masters {
            if let Ok(r) = reqwest::get(format!("{m}/api/v1/leader")).await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["standby"] == false
                && let Some(l) = v["leader"].as_str()
            {
                return l.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.0} ms max={:.0} ms",
        ms.len(),
        percentile(&ms, 0.5),
        ms.last().copied().unwrap_or(0.0)
    );
}

/// Kills (or stops) the leader `rounds` times; returns the times to
/// resubscription and to the first offer of the new leader, in ms.
async fn failovers(rounds: usize, graceful: bool) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_etcd(&dir.path().join("etcd")).await;
    let etcd = cluster.endpoints.clone();
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let data = |i: usize| dir.path().join(format!("m{i}"));
    let mut masters: Vec<Proc> = listens
        .iter()
        .enumerate()
        .map(|(i, l)| start_master(l, Some(&etcd), &data(i)))
        .collect();
    let list = urls.join(",");
    let _agent = start_agent(&list, &dir.path().join("agent"));
    let driver = Driver::new(FrameworkConfig::new(&list, "failover-bench")).expect("driver");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = driver.clone();
    tokio::spawn(async move { runner.run(Forward(tx)).await });
    // Offers go back at once, so a new leader's first one comes quickly.
    let decline = |driver: Driver, offers: Vec<Offer>| async move {
        let ids: Vec<&str> = offers.iter().map(offer_id).collect();
        let _ = driver.decline(&ids, Some(0.05)).await;
    };
    let (mut to_subscribed, mut to_offer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let leader = leader_of(&urls).await;
        let index = urls
            .iter()
            .position(|u| *u == leader)
            .expect("a known leader");
        // Steady state: the framework is offered the agent.
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some((_, Seen::Offers(o)))) => {
                    decline(driver.clone(), o).await;
                    break;
                }
                Ok(Some(_)) => {}
                _ => panic!("no offers before round {round}"),
            }
        }
        while let Ok((_, seen)) = rx.try_recv() {
            if let Seen::Offers(o) = seen {
                decline(driver.clone(), o).await;
            }
        }
        let signal = if graceful {
            nix::sys::signal::Signal::SIGTERM
        } else {
            nix::sys::signal::Signal::SIGKILL
        };
        let start = Instant::now();
        masters[index].signal(signal);
        let mut subscribed_at = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some((at, Seen::Subscribed))) => subscribed_at = Some(at),
                Ok(Some((at, Seen::Offers(o)))) => {
                    decline(driver.clone(), o).await;
                    if let Some(sub) = subscribed_at {
                        to_subscribed.push((sub - start).as_secs_f64() * 1000.0);
                        to_offer.push((at - start).as_secs_f64() * 1000.0);
                        break;
                    }
                }
                Ok(Some(_)) => {}
                _ => panic!("no failover in round {round}"),
            }
        }
        eprintln!(
            "round {}: resubscribed {:.0} ms, first offer {:.0} ms",
            round + 1,
            to_subscribed.last().copied().unwrap_or(0.0),
            to_offer.last().copied().unwrap_or(0.0)
        );
        let _ = masters[index].0.wait();
        masters[index] = start_master(&listens[index], Some(&etcd), &data(index));
    }
    driver.teardown();
    (to_subscribed, to_offer)
}

/// Registers `n` new agents at once over raw sessions; registrations/s.
async fn registrations(master: &str, n: usize) -> f64 {
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = tonic::transport::Endpoint::from_shared(master.to_string())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        let inbound = AgentServiceClient::new(channel)
            .session(UnboundedReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        sessions.push((tx, inbound));
    }
    let info = v1::AgentInfo {
        hostname: "bench".into(),
        resources: Resources::new().with_scalar("cpus", 1.0).to_proto(),
        ..Default::default()
    };
    let start = Instant::now();
    for (tx, _) in &sessions {
        tx.send(v1::AgentMessage {
            message: Some(agent_message::Message::Register(agent_message::Register {
                agent_info: Some(info.clone()),
                ..Default::default()
            })),
        })
        .expect("send");
    }
    for (_, inbound) in &mut sessions {
        inbound
            .message()
            .await
            .expect("an answer")
            .expect("registered");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Accept → TASK_RUNNING, one task at a time; ms.
async fn launch_latency(master: &str, n: usize) -> Vec<f64> {
    let driver = Driver::new(FrameworkConfig::new(master, "registry-bench")).expect("driver");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = driver.clone();
    tokio::spawn(async move { runner.run(Forward(tx)).await });
    let per_task = Resources::new()
        .with_scalar("cpus", 0.01)
        .with_scalar("mem", 8.0);
    let mut out = Vec::with_capacity(n);
    // The real agent's offers (the registration phase's sessions are gone),
    // kept when they come while a task is watched: the allocator offers
    // the agent again only once an offer is answered or times out.
    let real = |offers: Vec<Offer>| offers.into_iter().filter(|o| o.hostname != "bench");
    let mut spare: Vec<Offer> = Vec::new();
    for i in 0..n {
        let id = format!("t{i}");
        let start = loop {
            let offer = match spare.pop() {
                Some(offer) => Some(offer),
                None => match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some((_, Seen::Offers(o)))) => real(o).next(),
                    Ok(Some(_)) => None,
                    _ => panic!("no offer"),
                },
            };
            let Some(offer) = offer else { continue };
            let start = Instant::now();
            let launched = driver
                .accept(
                    &[offer_id(&offer)],
                    vec![task(&id, "true", &per_task)],
                    Some(0.0),
                )
                .await;
            if launched.is_ok() {
                break start;
            }
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some((at, Seen::Update(s)))) if status_task_id(&s) == id => {
                    match status_state(&s) {
                        TaskState::TaskRunning => out.push((at - start).as_secs_f64() * 1000.0),
                        s if agora_sdk::is_terminal(s) => break,
                        _ => {}
                    }
                }
                Ok(Some((_, Seen::Offers(o)))) => spare.extend(real(o)),
                Ok(Some(_)) => {}
                _ => panic!("{id} never ended"),
            }
        }
    }
    driver.teardown();
    out
}

#[tokio::main]
async fn main() {
    agora_proto::tls::install_default_provider();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let kills: usize = std::env::var("AGORA_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    println!("== failover: 3 masters on a 3-member etcd (lease 1 s), 1 agent, 1 framework ==");
    let (sub, offer) = failovers(kills, false).await;
    summary("kill -9 → framework resubscribed", sub);
    summary("kill -9 → first offer from the new leader", offer);
    let (sub, offer) = failovers(kills.min(10), true).await;
    summary("SIGTERM (resign) → framework resubscribed", sub);
    summary("SIGTERM (resign) → first offer from the new leader", offer);

    println!("== the registry's cost ==");
    for backend in ["embedded", "etcd"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = match backend {
            "etcd" => Some(start_etcd(&dir.path().join("etcd")).await),
            _ => None,
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let url = format!("http://{listen}");
        let _master = start_master(
            &listen,
            etcd.as_ref().map(|e| e.endpoints.as_str()),
            &dir.path().join("master"),
        );
        leader_of(std::slice::from_ref(&url)).await;
        let rate = registrations(&url, 200).await;
        println!("{backend}: {rate:.0} agent registrations/s (200 at once)");
        let _agent = start_agent(&url, &dir.path().join("agent"));
        summary(
            &format!("{backend}: accept → TASK_RUNNING (process containerizer)"),
            launch_latency(&url, 100).await,
        );
    }
}
