//! How a task's command becomes running processes. The [`Containerizer`]
//! trait is what the agent needs; [`LinuxContainerizer`] (the default) runs
//! each task in its own cgroup and namespaces, [`ProcessContainerizer`] as a
//! plain process group.

mod linux;
mod process;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use linux::LinuxContainerizer;
pub use process::ProcessContainerizer;

use crate::cgroups::{CgroupError, Usage};

/// Everything a containerizer needs to start a task.
#[derive(Clone, Debug, Default)]
pub struct LaunchSpec {
    /// Unique per launch; names the cgroup and the runtime directory.
    pub container_id: String,
    /// Task id, for names, logs and the container's hostname.
    pub task_id: String,
    /// Shell command, run with `sh -c`.
    pub command: String,
    /// Environment on top of a minimal one.
    pub env: Vec<(String, String)>,
    /// The task's own directory: working directory, `stdout`, `stderr`.
    pub sandbox: PathBuf,
    pub cpus: f64,
    pub mem_mib: f64,
    /// Cap cpu at `cpus`; `None` = the containerizer's default.
    pub cpu_hard_limit: Option<bool>,
    /// Most processes; `None` = the containerizer's default.
    pub pids_limit: Option<u64>,
    /// Root filesystem (a directory, or a .tar/.tar.gz of one).
    pub image: Option<PathBuf>,
    /// Who the command runs as.
    pub user: TaskUser,
    /// Host paths the task may write besides its sandbox.
    pub writable: Vec<PathBuf>,
}

/// A resolved user: the command runs with these ids (and no others).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Default for TaskUser {
    /// `nobody`, as on Debian.
    fn default() -> Self {
        TaskUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    }
}

impl TaskUser {
    /// Looks `name` up in this machine's user database.
    pub fn resolve(name: &str) -> Result<TaskUser, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(TaskUser {
                name: name.to_string(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(format!("no user `{name}` on this agent")),
            Err(e) => Err(format!("looking up user `{name}`: {e}")),
        }
    }
}

/// How a task's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// `exit N` / `signal N`, the form the container init records.
    pub fn encode(self) -> String {
        match self {
            Exit::Code(c) => format!("exit {c}"),
            Exit::Signal(s) => format!("signal {s}"),
        }
    }

    /// Parses what [`Exit::encode`] wrote.
    pub fn decode(text: &str) -> Option<Exit> {
        let (kind, n) = text.trim().split_once(' ')?;
        let n: i32 = n.parse().ok()?;
        match kind {
            "exit" => Some(Exit::Code(n)),
            "signal" => Some(Exit::Signal(n)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {s} ({sig})"),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// Why a launch or a signal failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    #[error("opening {path}: {source}")]
    Sandbox { path: PathBuf, source: io::Error },
    #[error("starting task {task}: {source}")]
    Spawn { task: String, source: io::Error },
    #[error("signalling task {task}: {source}")]
    Signal { task: String, source: nix::Error },
    #[error("container {container}: {source}")]
    Cgroup {
        container: String,
        source: CgroupError,
    },
    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    /// The container was set up but the task's command never started.
    #[error("setting up the container of task {task} failed: {cause}")]
    Setup { task: String, cause: String },
    #[error("container {container} cannot be recovered: {reason}")]
    Recover { container: String, reason: String },
}

/// A future that resolves when the task's command has ended.
pub type WaitFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Exit>> + Send + 'a>>;

/// A running task.
pub trait Container: Send {
    /// The process the agent signals (the task, or its container's supervisor).
    fn pid(&self) -> u32;
    /// Resolves when the task's command has ended.
    fn wait(&mut self) -> WaitFuture<'_>;
    /// Asks the task to stop (SIGTERM to the task).
    fn terminate(&self) -> Result<(), ContainerizerError>;
    /// Kills every process of the task (SIGKILL).
    fn kill_all(&self) -> Result<(), ContainerizerError>;
    /// After the task ended: the limit the kernel enforced on it, if any, as
    /// a message for the status update (the memory limit's OOM kill).
    fn limitation(&self) -> Option<String> {
        None
    }
    /// After the task ended: releases what the container held (its cgroup).
    fn destroy(&mut self) -> Result<(), ContainerizerError> {
        Ok(())
    }
}

/// Starts, watches and re-attaches to tasks.
pub trait Containerizer: Send + Sync + 'static {
    /// Starts the task; returns once its processes exist.
    fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, ContainerizerError>;
    /// Usage of a running container, if the containerizer accounts for it.
    fn usage(&self, container_id: &str) -> Option<Usage> {
        let _ = container_id;
        None
    }
    /// Re-attaches to a container started by an earlier run of the agent
    /// (supervisor pid `pid`); it may have ended meanwhile.
    fn recover(
        &self,
        spec: &LaunchSpec,
        pid: u32,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let _ = pid;
        Err(ContainerizerError::Recover {
            container: spec.container_id.clone(),
            reason: "this containerizer cannot re-attach to tasks".into(),
        })
    }
    /// Where a container keeps what its task writes outside its sandbox
    /// (an image's overlay), for the disk limit.
    fn disk_paths(&self, container_id: &str) -> Vec<std::path::PathBuf> {
        let _ = container_id;
        Vec::new()
    }

    /// Whether tasks survive an agent restart (so a stopping agent leaves
    /// them running).
    fn can_recover(&self) -> bool {
        false
    }
    /// Kills and removes containers that no checkpoint claims.
    fn clean_up_except(&self, keep: &[String]) -> Vec<String> {
        let _ = keep;
        Vec::new()
    }
}

/// Creates the task's `stdout` or `stderr` in its sandbox.
pub(crate) fn open_output(sandbox: &Path, name: &str) -> Result<std::fs::File, ContainerizerError> {
    let path = sandbox.join(name);
    std::fs::File::create(&path).map_err(|source| ContainerizerError::Sandbox { path, source })
}

/// Commands longer than this run from [`COMMAND_FILE`] rather than as one
/// `sh -c` argument, which the kernel caps at 128 KiB (`MAX_ARG_STRLEN`).
const LONGEST_INLINE_COMMAND: usize = 64 * 1024;
/// Where a long command is written, in the task's sandbox.
pub(crate) const COMMAND_FILE: &str = ".agora-command";

/// The arguments to `/bin/sh` for a task's command, run in `sandbox`:
/// `-c COMMAND`, or — for a long command — a script file written there.
pub(crate) fn shell_args(command: &str, sandbox: &std::path::Path) -> std::io::Result<Vec<String>> {
    if command.len() <= LONGEST_INLINE_COMMAND {
        return Ok(vec!["-c".into(), command.into()]);
    }
    std::fs::write(sandbox.join(COMMAND_FILE), command)?;
    Ok(vec![format!("./{COMMAND_FILE}")])
}
