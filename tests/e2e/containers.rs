//! The Linux containerizer for real: cgroup limits enforced by the kernel,
//! namespaces seen from inside a task, images, kills, and agent restarts.
//! These run as root with cgroups, as CI does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_sdk::{Resources, TaskInfo, TaskState, offer_id, status_task_id, task, v1};

use crate::support::*;

const AGENT: &str = "cpus:2;mem:2048;disk:1000;ports:[31000-31009]";

fn resources(cpus: f64, mem: f64) -> Resources {
    Resources::new()
        .with_scalar("cpus", cpus)
        .with_scalar("mem", mem)
}

/// A master, one agent, one framework; the agent's HTTP endpoint.
struct Rig {
    _master: Proc,
    agent: Option<Proc>,
    url: String,
    data: tempfile::TempDir,
    f: TestFramework,
    endpoint: String,
}

impl Rig {
    async fn new(agent_flags: &[&str]) -> Rig {
        let master = start_master("127.0.0.1:0", &[]);
        let url = master.url.clone().expect("url");
        let data = tempdir();
        let agent = start_agent_with(&url, data.path(), AGENT, "box", agent_flags);
        wait_for_agents(&url, 1).await;
        let endpoint = agent_endpoint(&url, "box").await;
        let f = TestFramework::start(&url, "containers", "*").await;
        Rig {
            _master: master,
            agent: Some(agent),
            url,
            data,
            f,
            endpoint,
        }
    }

    /// Launches `tasks` on the next offer.
    async fn launch(&mut self, tasks: Vec<TaskInfo>) {
        let offer = self.f.next_offers(Duration::from_secs(10)).await.remove(0);
        self.f
            .driver
            .accept(&[offer_id(&offer)], tasks, Some(0.0))
            .await
            .expect("accept");
    }

    fn stdout(&self, task_id: &str) -> String {
        std::fs::read_to_string(sandbox_file(
            self.data.path(),
            &self.f.id,
            task_id,
            "stdout",
        ))
        .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_over_its_memory_is_oom_killed_and_says_so() {
    let mut rig = Rig::new(&[]).await;
    // The shell keeps the command substitution's output in memory: ~100 MiB.
    let hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}";
    rig.launch(vec![task("hog", hog, &resources(0.5, 32.0))])
        .await;
    let failed = rig
        .f
        .wait_state("hog", TaskState::TaskFailed, Duration::from_secs(30))
        .await;
    assert_eq!(
        failed.reason,
        v1::task_status::Reason::ContainerLimitationMemory as i32,
        "{failed:?}"
    );
    assert!(failed.message.contains("32 MiB"), "{}", failed.message);
    assert!(!rig.stdout("hog").contains("survived"));
    // The agent lives on and runs the next task.
    rig.launch(vec![task("after", "echo fine", &resources(0.5, 32.0))])
        .await;
    rig.f
        .wait_state("after", TaskState::TaskFinished, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_stops_at_the_pids_limit_and_the_agent_survives() {
    let mut rig = Rig::new(&[]).await;
    // Every copy forks two more and stays: exponential, and it never lets go.
    // The first line gives the test time to find the cgroup.
    let mut bomb = task(
        "bomb",
        "sleep 1; b() { b & b & sleep 60; }; b",
        &resources(0.5, 256.0),
    );
    bomb.pids_limit = 32;
    rig.launch(vec![bomb]).await;
    rig.f
        .wait_state("bomb", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    let container = container_of(&rig.endpoint, "bomb").await;
    let id = container["container_id"].as_str().expect("id").to_string();
    let pids_max = cgroup_dirs(&id)
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
        .expect("a pids cgroup");
    assert_eq!(pids_max.trim(), "32");
    // The kernel refuses its forks at the ceiling.
    let stderr = sandbox_file(rig.data.path(), &rig.f.id, "bomb", "stderr");
    wait_until(
        "the bomb's forks to be refused",
        Duration::from_secs(20),
        || async {
            let e = std::fs::read_to_string(&stderr).ok()?;
            e.to_lowercase().contains("fork").then_some(())
        },
    )
    .await;
    assert!(cgroup_pids(&id).len() <= 32);
    // A kill (or its own end, as dash gives up on refused forks) leaves
    // nothing behind, and the agent runs the next task as if nothing happened.
    let _ = rig.f.driver.kill("bomb").await;
    rig.f
        .next_update(Duration::from_secs(20), |s| {
            status_task_id(s) == "bomb" && agora_sdk::is_terminal(agora_sdk::status_state(s))
        })
        .await;
    wait_until(
        "the bomb's cgroup to go",
        Duration::from_secs(10),
        || async { cgroup_dirs(&id).is_empty().then_some(()) },
    )
    .await;
    rig.launch(vec![task("after-bomb", "echo calm", &resources(0.2, 32.0))])
        .await;
    rig.f
        .wait_state(
            "after-bomb",
            TaskState::TaskFinished,
            Duration::from_secs(20),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_limit_of_half_a_cpu_holds_a_busy_loop_to_half_a_core() {
    let mut rig = Rig::new(&[]).await;
    let mut spin = task("spin", "while :; do :; done", &resources(0.5, 64.0));
    spin.cpu_hard_limit = Some(true);
    rig.launch(vec![spin]).await;
    rig.f
        .wait_state("spin", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    let cpu = |c: &serde_json::Value| c["usage"]["cpu_time_ns"].as_f64().expect("cpu time");
    let first = container_of(&rig.endpoint, "spin").await;
    let started = Instant::now();
    // Sample the cgroup's own cpu accounting over a couple of CFS periods' worth.
    let last = wait_until(
        "two seconds of accounting",
        Duration::from_secs(10),
        || async {
            let c = container_of(&rig.endpoint, "spin").await;
            (started.elapsed() >= Duration::from_secs(2)).then_some(c)
        },
    )
    .await;
    let used = (cpu(&last) - cpu(&first)) / 1e9;
    let cores = used / started.elapsed().as_secs_f64();
    assert!(
        (0.35..=0.65).contains(&cores),
        "busy loop used {cores:.2} cores under a 0.5 cpu limit"
    );
    rig.f.driver.kill("spin").await.expect("kill");
    rig.f
        .wait_state("spin", TaskState::TaskKilled, Duration::from_secs(10))
        .await;
}

fn namespace_link(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_sees_its_own_pid_uts_mount_and_ipc_namespaces() {
    let mut rig = Rig::new(&[]).await;
    let probe = "echo pid=$$; echo host=$(hostname); echo procs=$(ls /proc | grep -c '^[0-9]'); \
                 echo init=$(cat /proc/1/comm); for n in pid uts ipc mnt; do echo $n=$(readlink /proc/self/ns/$n); done; \
                 sleep 1 & wait";
    rig.launch(vec![task("probe-1", probe, &resources(0.2, 64.0))])
        .await;
    // The agent lists a container while it is still being set up: its
    // cgroup exists once the task runs.
    rig.f
        .wait_state("probe-1", TaskState::TaskRunning, Duration::from_secs(20))
        .await;
    let container = container_of(&rig.endpoint, "probe-1").await;
    let id = container["container_id"].as_str().expect("id").to_string();
    assert!(
        !cgroup_dirs(&id).is_empty(),
        "the running task has its cgroup"
    );
    rig.f
        .wait_state("probe-1", TaskState::TaskFinished, Duration::from_secs(20))
        .await;
    assert!(
        cgroup_dirs(&id).is_empty(),
        "no cgroup left once the task ended"
    );
    let out = rig.stdout("probe-1");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from {out:?}"))
            .to_string()
    };
    // The command's shell is the second process of its own pid namespace,
    // under the container init.
    assert_eq!(field("pid"), "2");
    assert_eq!(field("init"), "agora-init");
    let procs: usize = field("procs").parse().expect("count");
    assert!(
        procs <= 5,
        "/proc shows only the task's processes, saw {procs}"
    );
    assert_eq!(field("host"), "probe-1", "hostname is the task id");
    for ns in ["pid", "uts", "ipc", "mnt"] {
        assert_ne!(
            field(ns),
            namespace_link("self", ns),
            "{ns} namespace is the task's own"
        );
    }
    // The host kept its own hostname.
    assert_ne!(nix::unistd::gethostname().expect("hostname"), "probe-1");
}

/// A root filesystem of busybox (Debian's busybox-static) in `dir`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static must be installed (apt-get install busybox-static)");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "ls", "cat", "echo", "hostname", "touch"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("IMAGE_MARKER"), b"busybox image\n").expect("marker");
    root
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_task_sees_only_its_image_and_its_sandbox() {
    let mut rig = Rig::new(&[]).await;
    let images = tempdir();
    let rootfs = busybox_rootfs(images.path());
    let archive = images.path().join("busybox.tar.gz");
    let packed = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .expect("tar");
    assert!(packed.success());
    let probe =
        "ls /; cat /IMAGE_MARKER; touch /written-by-task; echo in-sandbox > /mnt/sandbox/note; pwd";
    let mut from_dir = task("image-dir", probe, &resources(0.2, 64.0));
    from_dir.image = rootfs.display().to_string();
    let mut from_tar = task("image-tar", probe, &resources(0.2, 64.0));
    from_tar.image = archive.display().to_string();
    rig.launch(vec![from_dir, from_tar]).await;
    rig.f
        .wait_all(
            &["image-dir", "image-tar"],
            TaskState::TaskFinished,
            Duration::from_secs(30),
        )
        .await;
    for t in ["image-dir", "image-tar"] {
        let out = rig.stdout(t);
        let listing: Vec<&str> = out.lines().take_while(|l| *l != "busybox image").collect();
        let mut listing = listing.join(" ");
        listing = listing.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            listing, "IMAGE_MARKER bin dev mnt proc tmp",
            "{t}: / is the image's root"
        );
        assert!(out.contains("busybox image"), "{out}");
        assert!(
            out.trim_end().ends_with("/mnt/sandbox"),
            "{t} starts in its sandbox: {out}"
        );
        let note = sandbox_file(rig.data.path(), &rig.f.id, t, "note");
        assert_eq!(std::fs::read_to_string(note).expect("note"), "in-sandbox\n");
    }
    // Writes went to the task's overlay, not to the image.
    assert!(!rootfs.join("written-by-task").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_and_restarted_reattaches_and_reports_what_ended_meanwhile() {
    let mut rig = Rig::new(&[]).await;
    // The gate is in a declared volume: a task sees no more of the host's
    // /tmp than that.
    let gates = tempdir();
    let gate = gates.path().join("gate");
    let waits = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        gate.display()
    );
    let mut short = task("short", &waits, &resources(0.2, 64.0));
    short.volumes = vec![v1::Volume {
        host_path: gates.path().display().to_string(),
        read_only: false,
    }];
    rig.launch(vec![
        task("long", "exec sleep 120", &resources(0.2, 64.0)),
        short,
    ])
    .await;
    rig.f
        .wait_all(
            &["long", "short"],
            TaskState::TaskRunning,
            Duration::from_secs(10),
        )
        .await;
    let long = container_of(&rig.endpoint, "long").await;
    let long_id = long["container_id"].as_str().expect("id").to_string();
    // The container's init and the task's process, once both are in place.
    let long_pids = wait_until(
        "the long task's processes",
        Duration::from_secs(10),
        || async {
            let pids = cgroup_pids(&long_id);
            (pids.len() >= 2).then_some(pids)
        },
    )
    .await;

    rig.agent.as_mut().expect("agent").kill_hard();
    // The short task ends while its agent is down.
    std::fs::write(&gate, b"").expect("open the gate");
    wait_until(
        "the short task to finish",
        Duration::from_secs(10),
        || async { rig.stdout("short").contains("done").then_some(()) },
    )
    .await;
    assert!(
        long_pids.iter().all(|p| process_alive(*p)),
        "the long task survived its agent"
    );

    rig.agent = Some(start_agent(&rig.url, rig.data.path(), AGENT, "box"));
    let finished = rig
        .f
        .wait_state("short", TaskState::TaskFinished, Duration::from_secs(20))
        .await;
    assert_eq!(finished.exit_code, Some(0));
    let endpoint = agent_endpoint(&rig.url, "box").await;
    let again = container_of(&endpoint, "long").await;
    assert_eq!(
        again["container_id"], long["container_id"],
        "re-attached, not relaunched"
    );
    assert!(long_pids.iter().all(|p| process_alive(*p)));

    // A graceful stop leaves it running too; --recover=cleanup kills it.
    rig.agent.as_mut().expect("agent").stop();
    assert!(
        long_pids.iter().all(|p| process_alive(*p)),
        "SIGTERM to the agent spares its tasks"
    );
    rig.agent = Some(start_agent_with(
        &rig.url,
        rig.data.path(),
        AGENT,
        "box",
        &["--recover", "cleanup"],
    ));
    let killed = rig
        .f
        .wait_state("long", TaskState::TaskKilled, Duration::from_secs(20))
        .await;
    assert_eq!(status_task_id(&killed), "long");
    wait_until(
        "the long task's processes to go",
        Duration::from_secs(10),
        || async { long_pids.iter().all(|p| !process_alive(*p)).then_some(()) },
    )
    .await;
    // Its cgroups go once the agent has reaped it, a moment after.
    let container = long["container_id"].as_str().expect("id");
    wait_until(
        "the long task's cgroups to go",
        Duration::from_secs(10),
        || async { cgroup_dirs(container).is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_files_are_served_and_paths_out_of_them_refused() {
    let mut rig = Rig::new(&[]).await;
    rig.launch(vec![task(
        "talker",
        "echo hello sandbox; ln -s /etc/hostname escape",
        &resources(0.2, 32.0),
    )])
    .await;
    rig.f
        .wait_state("talker", TaskState::TaskFinished, Duration::from_secs(20))
        .await;
    let s = state(&rig.url).await;
    let t = s["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "talker")
        .cloned()
        .expect("task");
    let stdout_url = t["sandbox"]["stdout"]
        .as_str()
        .expect("stdout url")
        .to_string();
    let body: serde_json::Value = fetch(&stdout_url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(body["data"], "hello sandbox\n");
    assert_eq!(body["offset"], 0);
    let partial: serde_json::Value = fetch(format!("{stdout_url}&offset=6&length=7"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(partial["data"], "sandbox");

    let sandbox = t["sandbox"]["path"].as_str().expect("path");
    for bad in [
        format!("{sandbox}/../../../../etc/passwd"),
        format!("{sandbox}/escape"),
        "/etc/passwd".to_string(),
    ] {
        let r = fetch(format!("{}/files/read?path={bad}", rig.endpoint))
            .await
            .expect("GET");
        assert_eq!(r.status(), 400, "{bad} must be refused");
        let body: serde_json::Value = r.json().await.expect("json error");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_sandboxes_are_collected_after_the_gc_delay() {
    let mut rig = Rig::new(&["--sandbox-gc", "1s"]).await;
    rig.launch(vec![task("brief", "echo gone soon", &resources(0.2, 32.0))])
        .await;
    rig.f
        .wait_state("brief", TaskState::TaskFinished, Duration::from_secs(20))
        .await;
    let dir = sandbox_file(rig.data.path(), &rig.f.id, "brief", "");
    wait_until(
        "the sandbox to be collected",
        Duration::from_secs(15),
        || async { (!dir.exists()).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_run_as_nobody_unless_told_and_never_as_root_unless_the_agent_allows() {
    let mut rig = Rig::new(&[]).await;
    let shared = tempdir();
    let scratch = tempdir();
    let who = format!(
        "id -u; id -g; grep CapEff /proc/self/status; head -c1 /etc/shadow && echo read-shadow || echo no-shadow; touch owned && echo wrote-sandbox; touch {}/x && echo wrote-host || echo host-read-only; touch {}/y && echo wrote-volume; true",
        scratch.path().display(),
        shared.path().display()
    );
    let who = who.as_str();
    let mut as_daemon = task("daemon-task", who, &resources(0.1, 32.0));
    as_daemon.user = "daemon".into();
    let mut as_root = task("root-task", "id -u", &resources(0.1, 32.0));
    as_root.user = "root".into();
    let mut default_task = task("default-task", who, &resources(0.1, 32.0));
    default_task.volumes = vec![v1::Volume {
        host_path: shared.path().display().to_string(),
        read_only: false,
    }];
    rig.launch(vec![default_task, as_daemon, as_root]).await;
    rig.f
        .wait_all(
            &["default-task", "daemon-task"],
            TaskState::TaskFinished,
            Duration::from_secs(15),
        )
        .await;
    let out = rig.stdout("default-task");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("65534"),
        "nobody by default: {out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        "no capabilities: {out}"
    );
    assert!(out.contains("no-shadow"), "cannot read /etc/shadow: {out}");
    assert!(
        out.contains("wrote-sandbox"),
        "its sandbox is its own: {out}"
    );
    assert!(
        out.contains("host-read-only"),
        "the host is read-only: {out}"
    );
    assert!(!scratch.path().join("x").exists());
    assert!(
        out.contains("wrote-volume"),
        "a declared volume is writable: {out}"
    );
    assert!(shared.path().join("y").exists());
    let daemon = rig.stdout("daemon-task");
    let daemon_uid = nix::unistd::User::from_name("daemon")
        .expect("lookup")
        .expect("a daemon user")
        .uid
        .as_raw();
    assert_eq!(
        daemon.lines().next(),
        Some(daemon_uid.to_string().as_str()),
        "{daemon}"
    );
    // Root is refused, with the reason, on an agent that does not allow it.
    let refused = rig
        .f
        .wait_state("root-task", TaskState::TaskFailed, Duration::from_secs(15))
        .await;
    assert!(refused.message.contains("root"), "{}", refused.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_confined_root_keeps_few_capabilities_and_none_may_mount_or_leave() {
    let mut rig = Rig::new(&["--allow-root-tasks"]).await;
    // A file below the host's /tmp, given to one task as a volume.
    let shared = tempdir();
    let note = shared.path().join("note");
    std::fs::write(&note, "shared-note\n").expect("note");
    std::fs::set_permissions(&note, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let probe = format!(
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
        mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo mount-refused; \
        unshare -U true 2>/dev/null && echo unshared || echo unshare-refused; \
        echo dev: $(ls /dev); \
        echo private > /tmp/agora-private-probe && echo wrote-tmp; \
        head -c1 /dev/urandom > /dev/null && echo urandom-ok; \
        touch /etc/agora-probe 2>/dev/null && echo wrote-etc || echo etc-read-only; \
        cat {} 2>/dev/null || echo no-note",
        note.display()
    );
    let mut as_root = task("root-probe", &probe, &resources(0.1, 32.0));
    as_root.user = "root".into();
    let mut as_nobody = task("nobody-probe", &probe, &resources(0.1, 32.0));
    as_nobody.volumes = vec![v1::Volume {
        host_path: note.display().to_string(),
        read_only: false,
    }];
    let _ = std::fs::remove_file("/tmp/agora-private-probe");
    rig.launch(vec![as_root, as_nobody]).await;
    rig.f
        .wait_all(
            &["root-probe", "nobody-probe"],
            TaskState::TaskFinished,
            Duration::from_secs(15),
        )
        .await;
    let root = rig.stdout("root-probe");
    // Docker's default set less CAP_MKNOD: no CAP_SYS_ADMIN, no CAP_SYS_PTRACE.
    assert!(root.contains("CapEff:\t00000000a00425fb"), "{root}");
    assert!(root.contains("CapBnd:\t00000000a00425fb"), "{root}");
    let nobody = rig.stdout("nobody-probe");
    assert!(nobody.contains("CapEff:\t0000000000000000"), "{nobody}");
    assert!(nobody.contains("CapBnd:\t0000000000000000"), "{nobody}");
    for (who, out) in [("root", &root), ("nobody", &nobody)] {
        assert!(out.contains("mount-refused"), "{who} cannot mount: {out}");
        // Unprivileged user namespaces work on the host; seccomp refuses them.
        assert!(
            out.contains("unshare-refused"),
            "{who} cannot unshare: {out}"
        );
        let dev = out
            .lines()
            .find_map(|l| l.strip_prefix("dev: "))
            .expect("the /dev listing");
        assert_eq!(
            dev, "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
            "{who}: only the usual devices"
        );
        assert!(
            out.contains("wrote-tmp") && out.contains("urandom-ok"),
            "{out}"
        );
        assert!(
            out.contains("etc-read-only"),
            "{who} cannot write /etc: {out}"
        );
    }
    // /tmp was the task's own: the host's has nothing, and a file below it
    // is seen only by the task that declared it.
    assert!(!Path::new("/tmp/agora-private-probe").exists());
    assert!(nobody.contains("shared-note"), "{nobody}");
    assert!(root.contains("no-note"), "{root}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_writing_past_its_disk_is_killed_and_fails_with_the_disk_limitation() {
    let mut rig = Rig::new(&["--disk-watch-interval", "200ms"]).await;
    let hog_cmd = "head -c 5000000 /dev/zero > blob && echo written; exec sleep 60";
    let hog = task(
        "disk-hog",
        hog_cmd,
        &resources(0.1, 32.0).with_scalar("disk", 2.0),
    );
    let modest = task(
        "disk-modest",
        "head -c 100000 /dev/zero > blob; exec sleep 60",
        &resources(0.1, 32.0).with_scalar("disk", 2.0),
    );
    rig.launch(vec![hog, modest]).await;
    let failed = rig
        .f
        .wait_state("disk-hog", TaskState::TaskFailed, Duration::from_secs(15))
        .await;
    assert_eq!(
        failed.reason(),
        agora_sdk::v1::task_status::Reason::ContainerLimitationDisk,
        "{failed:?}"
    );
    assert!(
        failed.message.contains("disk limit of 2 MB"),
        "{}",
        failed.message
    );
    // The task within its disk keeps running.
    let (_, tasks) = get(&format!("{}/api/v1/tasks/disk-modest", rig.url)).await;
    assert_eq!(tasks["state"], "TASK_RUNNING", "{tasks}");
}
