//! Whole-system launch benchmark: accept → `TASK_RUNNING` latency (p50/p99)
//! and launch throughput for `true` tasks, through a real master and agent,
//! for the plain-process containerizer, the Linux containerizer, and the
//! Linux containerizer with an image — next to the floor, a plain
//! fork/exec of `sh -c true` measured in the same run.
//!
//! `cargo bench --bench launch` (as root, with cgroups; the image case needs
//! busybox-static). `AGORA_BENCH_TASKS=N` sets the sample size (default 200).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_sdk::{
    Driver, FrameworkConfig, Offer, Resources, Scheduler, TaskState, TaskStatus, is_terminal,
    offer_id, status_state, status_task_id, task,
};
use tokio::sync::mpsc;

enum Seen {
    Offers(Vec<Offer>),
    Update(TaskStatus),
}

struct Forward(mpsc::UnboundedSender<Seen>);

impl Scheduler for Forward {
    async fn offers(&mut self, _: &Driver, offers: Vec<Offer>) {
        let _ = self.0.send(Seen::Offers(offers));
    }
    async fn status_update(&mut self, _: &Driver, status: TaskStatus) {
        let _ = self.0.send(Seen::Update(status));
    }
}

struct Cluster {
    master: Child,
    agent: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in [&mut self.agent, &mut self.master] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

fn start(containerizer: &str) -> Cluster {
    let bin = env!("CARGO_BIN_EXE_agora");
    let data = tempfile::tempdir().expect("tempdir");
    let mut master = Command::new(bin)
        .args([
            "master",
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--allocation-interval",
            "100ms",
        ])
        .arg("--data-dir")
        .arg(data.path().join("master"))
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("master");
    let mut line = String::new();
    BufReader::new(master.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    let url = line
        .trim()
        .trim_start_matches("agora listening on ")
        .to_string();
    let agent = Command::new(bin)
        .args([
            "agent",
            "--master",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--containerizer",
            containerizer,
        ])
        .args(["--resources", "cpus:2;mem:4096", "--data-dir"])
        .arg(data.path().join("agent"))
        .env("AGORA_LOG", "warn")
        .spawn()
        .expect("agent");
    Cluster {
        master,
        agent,
        url,
        _data: data,
    }
}

fn busybox_image(dir: &Path) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).ok()?;
    std::fs::copy(busybox, root.join("bin/busybox")).ok()?;
    for applet in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).ok()?;
    }
    Some(root)
}

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The floor: fork/exec of `sh -c true`, to running (spawn returned, i.e.
/// exec succeeded) and throughput to exit.
fn floor(n: usize) -> Figures {
    let mut lat: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut child = Command::new("sh")
            .args(["-c", "true"])
            .spawn()
            .expect("spawn");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.wait();
    }
    let t = Instant::now();
    let children: Vec<Child> = (0..n)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "true"])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut c in children {
        let _ = c.wait();
    }
    let per_second = n as f64 / t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Figures {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        per_second,
    }
}

async fn through_agora(containerizer: &str, image: Option<&Path>, n: usize) -> Figures {
    let cluster = start(containerizer);
    let driver = Driver::new(FrameworkConfig::new(&cluster.url, "launch-bench")).expect("driver");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = driver.clone();
    tokio::spawn(async move { runner.run(Forward(tx)).await });
    let per_task = Resources::new()
        .with_scalar("cpus", 0.01)
        .with_scalar("mem", 8.0);
    let make = |id: String| {
        let mut t = task(&id, "true", &per_task);
        if let Some(image) = image {
            t.image = image.display().to_string();
        }
        t
    };
    let next_offer = async |rx: &mut mpsc::UnboundedReceiver<Seen>| loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Seen::Offers(mut o))) => return o.remove(0),
            Ok(Some(_)) => continue,
            _ => panic!("no offer"),
        }
    };

    // Latency: one task at a time on an otherwise idle agent, accept →
    // TASK_RUNNING; the next is launched once this one has ended, so no
    // container's teardown overlaps another's start.
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let offer = next_offer(&mut rx).await;
        let id = format!("lat-{i}");
        let t = Instant::now();
        driver
            .accept(&[offer_id(&offer)], vec![make(id.clone())], Some(0.0))
            .await
            .expect("accept");
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(Seen::Update(s))) if status_task_id(&s) == id => match status_state(&s) {
                    TaskState::TaskRunning => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    state if is_terminal(state) => break,
                    _ => {}
                },
                Ok(Some(_)) => continue,
                _ => panic!("{id} never ended ({containerizer})"),
            }
        }
    }
    // Throughput: n tasks in as few accepts as the offers allow, first
    // accept to last terminal update.
    let t = Instant::now();
    let mut launched = 0;
    let mut ended = 0;
    while ended < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Seen::Offers(offers))) => {
                for offer in offers {
                    let room = (Resources::from_proto(&offer.resources)
                        .unwrap_or_default()
                        .scalar("cpus")
                        / 0.01) as usize;
                    let batch: Vec<_> = (launched..n.min(launched + room))
                        .map(|i| make(format!("tput-{i}")))
                        .collect();
                    launched += batch.len();
                    let _ = driver.accept(&[offer_id(&offer)], batch, Some(0.0)).await;
                }
            }
            Ok(Some(Seen::Update(s))) => {
                if status_task_id(&s).starts_with("tput-") && is_terminal(status_state(&s)) {
                    ended += 1;
                }
            }
            _ => panic!("throughput run stalled at {ended}/{n} ({containerizer})"),
        }
    }
    let per_second = n as f64 / t.elapsed().as_secs_f64();
    driver.teardown();
    lat.sort_by(f64::total_cmp);
    Figures {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        per_second,
    }
}

#[tokio::main]
async fn main() {
    agora_proto::tls::install_default_provider();
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("AGORA_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let images = tempfile::tempdir().expect("tempdir");
    let image = busybox_image(images.path());
    println!("launch benchmark: {n} `true` tasks per case\n");
    println!("| case | accept→RUNNING p50 | p99 | launch throughput |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, f: &Figures| {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.0} tasks/s |",
            f.p50_ms, f.p99_ms, f.per_second
        );
    };
    let base = floor(n);
    row("floor: fork/exec `sh -c true`", &base);
    let process = through_agora("process", None, n).await;
    row("agora, process containerizer", &process);
    let linux = through_agora("linux", None, n).await;
    row("agora, linux containerizer", &linux);
    if let Some(image) = &image {
        let with_image = through_agora("linux", Some(image), n).await;
        row("agora, linux containerizer + image", &with_image);
    }
    println!(
        "\nisolation cost at p50: {:.2} ms over the process containerizer, {:.2} ms over the floor",
        linux.p50_ms - process.p50_ms,
        linux.p50_ms - base.p50_ms
    );
}
