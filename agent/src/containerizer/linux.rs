//! The Linux containerizer: every task in its own cgroup (cpu shares and
//! optional CFS cap, memory limit with OOM detection, pids limit) and its own
//! pid, mount, uts and ipc namespaces, started through the container init
//! (`agora-init`, see [`crate::init`]).
//!
//! Each container has a runtime directory `<data>/containers/<id>/` with the
//! init's spec and, once the task ended, its `exit_status`: written by the
//! container's supervisor, it survives an agent restart.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    Container, Containerizer, ContainerizerError, Exit, LaunchSpec, WaitFuture, open_output,
};
use crate::cgroups::{CgroupManager, Limits, Usage};
use crate::image::ImageCache;
use crate::init::{InitSpec, exit_status_path};

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Runs tasks in cgroups and namespaces.
pub struct LinuxContainerizer {
    cgroups: Arc<dyn CgroupManager>,
    /// The container init command, without its directory argument:
    /// `agora-init`, or `agora container-init`.
    init_command: Vec<std::ffi::OsString>,
    runtime_dir: PathBuf,
    images: ImageCache,
    cpu_hard_limit: bool,
    pids_limit: u64,
}

impl LinuxContainerizer {
    /// A containerizer over `cgroups`, keeping runtime state under
    /// `data_dir`; creates the agent's cgroup subtree.
    pub fn new(
        cgroups: Box<dyn CgroupManager>,
        init_command: Vec<std::ffi::OsString>,
        data_dir: &Path,
        cpu_hard_limit: bool,
        pids_limit: u64,
    ) -> Result<Self, ContainerizerError> {
        cgroups
            .init_subtree()
            .map_err(|source| ContainerizerError::Cgroup {
                container: "(agent subtree)".into(),
                source,
            })?;
        // The init runs in the task's sandbox: its paths must be absolute.
        let data_dir = std::fs::create_dir_all(data_dir)
            .and_then(|()| data_dir.canonicalize())
            .map_err(|source| ContainerizerError::Sandbox {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let data_dir = data_dir.as_path();
        Ok(LinuxContainerizer {
            cgroups: Arc::from(cgroups),
            init_command,
            runtime_dir: data_dir.join("containers"),
            images: ImageCache::new(data_dir.join("images")),
            cpu_hard_limit,
            pids_limit,
        })
    }

    /// Which cgroup version is in use.
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    fn limits(&self, spec: &LaunchSpec) -> Limits {
        let hard = spec.cpu_hard_limit.unwrap_or(self.cpu_hard_limit);
        Limits {
            cpu_shares: (spec.cpus * 1024.0).round() as u64,
            cpu_limit: (hard && spec.cpus > 0.0).then_some(spec.cpus),
            memory_bytes: (spec.mem_mib > 0.0).then_some((spec.mem_mib * MIB) as u64),
            pids_max: Some(spec.pids_limit.unwrap_or(self.pids_limit)),
        }
    }

    fn cgroup_error(
        container: &str,
    ) -> impl FnOnce(crate::cgroups::CgroupError) -> ContainerizerError + '_ {
        move |source| ContainerizerError::Cgroup {
            container: container.to_string(),
            source,
        }
    }

    fn container(
        &self,
        spec: &LaunchSpec,
        pid: u32,
        child: Option<tokio::process::Child>,
    ) -> Box<dyn Container> {
        let dir = self.runtime_dir.join(&spec.container_id);
        let start_path = dir.join(SUPERVISOR_START);
        // At launch the supervisor is our unreaped child: its pid is its
        // own. Its start time, kept beside the container, tells it apart
        // from a later process given the same pid.
        let started = match child {
            Some(_) => {
                let started = process_start_time(pid);
                if let Some(t) = started {
                    let _ = std::fs::write(&start_path, t.to_string());
                }
                started
            }
            None => std::fs::read_to_string(&start_path)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        };
        Box::new(LinuxContainer {
            id: spec.container_id.clone(),
            dir,
            pid,
            started,
            child,
            cgroups: self.cgroups.clone(),
            mem_mib: spec.mem_mib,
        })
    }
}

impl Containerizer for LinuxContainerizer {
    fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, ContainerizerError> {
        let id = &spec.container_id;
        let dir = self.runtime_dir.join(id);
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContainerizerError::Sandbox { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let rootfs = match &spec.image {
            Some(image) => Some(self.images.prepare(image, &dir)?),
            None => None,
        };
        self.cgroups
            .create(id, &self.limits(spec))
            .map_err(Self::cgroup_error(id))?;
        let init = InitSpec {
            command: spec.command.clone(),
            env: spec.env.clone(),
            sandbox: spec.sandbox.clone(),
            hostname: spec.task_id.chars().take(64).collect(),
            cgroup_procs: self.cgroups.procs_files(id),
            rootfs,
            user: spec.user.clone(),
            writable: spec.writable.clone(),
        };
        let spec_path = dir.join("init.json");
        let json = serde_json::to_vec(&init).unwrap_or_default();
        std::fs::write(&spec_path, json).map_err(io_error(&spec_path))?;
        let Some((program, args)) = self.init_command.split_first() else {
            return Err(ContainerizerError::Spawn {
                task: spec.task_id.clone(),
                source: std::io::Error::other("no container init command configured"),
            });
        };
        // The start report (see `crate::init`): end-of-file once the task's
        // command has exec'd; a set-up failure's cause before that.
        let (mut report, report_writer) =
            std::io::pipe().map_err(|source| ContainerizerError::Spawn {
                task: spec.task_id.clone(),
                source,
            })?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(&dir)
            .current_dir(&spec.sandbox)
            .env_clear()
            .stdin(Stdio::from(report_writer))
            .stdout(open_output(&spec.sandbox, "stdout")?)
            .stderr(open_output(&spec.sandbox, "stderr")?)
            // Its own session: a signal to the agent's group or terminal does
            // not reach the task, and the task outlives an agent restart.
            .process_group(0);
        let child = command.spawn().map_err(|source| ContainerizerError::Spawn {
            task: spec.task_id.clone(),
            source,
        });
        // Our copy of the pipe's write end goes with the command, so the
        // read below ends when the container's copies are gone.
        drop(command);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = self.cgroups.remove(id);
                return Err(e);
            }
        };
        let mut cause = String::new();
        let read = std::io::Read::read_to_string(&mut report, &mut cause);
        if read.is_err() || !cause.is_empty() {
            let _ = child.start_kill();
            let _ = self.cgroups.kill_all(id);
            let _ = self.cgroups.remove(id);
            let _ = std::fs::remove_dir_all(&dir);
            let cause = match read {
                Err(e) => format!("reading the container's start report: {e}"),
                Ok(_) => cause,
            };
            return Err(ContainerizerError::Setup {
                task: spec.task_id.clone(),
                cause,
            });
        }
        let pid = child.id().unwrap_or(0);
        Ok(self.container(spec, pid, Some(child)))
    }

    fn can_recover(&self) -> bool {
        true
    }

    fn disk_paths(&self, container_id: &str) -> Vec<PathBuf> {
        vec![self.runtime_dir.join(container_id)]
    }

    fn usage(&self, container_id: &str) -> Option<Usage> {
        self.cgroups.stats(container_id).ok()
    }

    fn recover(
        &self,
        spec: &LaunchSpec,
        pid: u32,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let dir = self.runtime_dir.join(&spec.container_id);
        if pid == 0 {
            // The agent stopped mid-launch: whatever started is unaccounted
            // for, so it goes, and the task is reported failed.
            let _ = self.cgroups.kill_all(&spec.container_id);
            let _ = self.cgroups.remove(&spec.container_id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ContainerizerError::Recover {
                container: spec.container_id.clone(),
                reason: "its launch was interrupted by an agent restart".into(),
            });
        }
        if !dir.join("init.json").exists() {
            return Err(ContainerizerError::Recover {
                container: spec.container_id.clone(),
                reason: format!("no runtime directory at {}", dir.display()),
            });
        }
        Ok(self.container(spec, pid, None))
    }

    fn clean_up_except(&self, keep: &[String]) -> Vec<String> {
        // Only containers this agent started (they have a runtime directory
        // in its data directory): other agents may share the machine's
        // cgroup subtree.
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.runtime_dir) else {
            return removed;
        };
        for entry in entries.filter_map(Result::ok) {
            let id = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&id) {
                continue;
            }
            let _ = self.cgroups.kill_all(&id);
            if self.cgroups.remove(&id).is_ok() {
                let _ = std::fs::remove_dir_all(entry.path());
                removed.push(id);
            }
        }
        removed
    }
}

struct LinuxContainer {
    id: String,
    dir: PathBuf,
    /// The container's supervisor (`agora container-init`).
    pid: u32,
    /// When the supervisor started (clock ticks since boot), if known: a
    /// process with its pid but another start time is not it.
    started: Option<u64>,
    /// Present when this agent started it; a recovered container is watched
    /// by polling instead (it is not our child any more).
    child: Option<tokio::process::Child>,
    cgroups: Arc<dyn CgroupManager>,
    mem_mib: f64,
}

/// Where a container's supervisor start time is kept.
const SUPERVISOR_START: &str = "supervisor.start";

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses): the state first (field 3 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A process's start time, in clock ticks since boot (field 22).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the process `pid` runs and, when `started` is known, is the one
/// that started then (not a later process given the same pid).
fn alive(pid: u32, started: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    // A zombie still "exists" for kill(0); /proc tells them apart.
    let zombie = fields.first().is_some_and(|s| s == "Z");
    let same = started.is_none_or(|t| fields.get(19).and_then(|f| f.parse().ok()) == Some(t));
    !zombie && same
}

impl LinuxContainer {
    fn recorded_exit(&self) -> Option<Exit> {
        std::fs::read_to_string(exit_status_path(&self.dir))
            .ok()
            .and_then(|s| Exit::decode(&s))
    }
}

impl Container for LinuxContainer {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> WaitFuture<'_> {
        Box::pin(async move {
            let own = match self.child.as_mut() {
                Some(child) => {
                    let status = child.wait().await?;
                    Some(status)
                }
                None => {
                    while alive(self.pid, self.started) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None
                }
            };
            if let Some(exit) = self.recorded_exit() {
                return Ok(exit);
            }
            // The supervisor itself died before recording (SIGKILL): its own
            // status is all there is.
            use std::os::unix::process::ExitStatusExt;
            Ok(match own {
                Some(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Signal(Signal::SIGKILL as i32),
                },
                None => Exit::Signal(Signal::SIGKILL as i32),
            })
        })
    }

    fn terminate(&self) -> Result<(), ContainerizerError> {
        // A recovered supervisor may be gone and its pid given to another
        // process: that one must not get the signal.
        if self.child.is_none() && !alive(self.pid, self.started) {
            return Ok(());
        }
        // The supervisor forwards it to pid 1, which forwards it to the task.
        match kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ContainerizerError::Signal {
                task: self.id.clone(),
                source,
            }),
        }
    }

    fn kill_all(&self) -> Result<(), ContainerizerError> {
        self.cgroups
            .kill_all(&self.id)
            .map_err(LinuxContainerizer::cgroup_error(&self.id))
    }

    fn limitation(&self) -> Option<String> {
        let usage = self.cgroups.stats(&self.id).ok()?;
        (usage.oom_kills > 0).then(|| {
            format!(
                "memory limit of {} MiB reached: the kernel's OOM killer ended the task (peak {} MiB)",
                self.mem_mib,
                usage.memory_peak_bytes / (1024 * 1024)
            )
        })
    }

    fn destroy(&mut self) -> Result<(), ContainerizerError> {
        self.cgroups
            .kill_all(&self.id)
            .and_then(|()| self.cgroups.remove(&self.id))
            .map_err(LinuxContainerizer::cgroup_error(&self.id))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}
