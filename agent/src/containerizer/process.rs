//! The plain-process containerizer: each task is its own process group, no
//! isolation. Kept for machines without cgroups (`--containerizer process`)
//! and as the floor the benchmarks compare isolation against.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{
    Container, Containerizer, ContainerizerError, Exit, LaunchSpec, WaitFuture, open_output,
};

/// Runs each task as its own process group, output to the sandbox.
#[derive(Clone, Debug, Default)]
pub struct ProcessContainerizer;

struct ProcessContainer {
    task_id: String,
    pid: u32,
    child: tokio::process::Child,
}

impl Containerizer for ProcessContainerizer {
    fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, ContainerizerError> {
        let stdout = open_output(&spec.sandbox, "stdout")?;
        let stderr = open_output(&spec.sandbox, "stderr")?;
        let args = super::shell_args(&spec.command, &spec.sandbox).map_err(|source| {
            ContainerizerError::Spawn {
                task: spec.task_id.clone(),
                source,
            }
        })?;
        let child = tokio::process::Command::new("sh")
            .args(&args)
            .uid(spec.user.uid)
            .gid(spec.user.gid)
            .current_dir(&spec.sandbox)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a kill reaches the command's children.
            .process_group(0)
            .spawn()
            .map_err(|source| ContainerizerError::Spawn {
                task: spec.task_id.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        Ok(Box::new(ProcessContainer {
            task_id: spec.task_id.clone(),
            pid,
            child,
        }))
    }
}

impl ProcessContainer {
    fn signal(&self, signal: Signal) -> Result<(), ContainerizerError> {
        match killpg(Pid::from_raw(self.pid as i32), signal) {
            // The group is already gone: nothing left to signal.
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ContainerizerError::Signal {
                task: self.task_id.clone(),
                source,
            }),
        }
    }
}

impl Container for ProcessContainer {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> WaitFuture<'_> {
        Box::pin(async move {
            let status = self.child.wait().await?;
            Ok(match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Signal(nix::sys::signal::Signal::SIGKILL as i32),
            })
        })
    }

    fn terminate(&self) -> Result<(), ContainerizerError> {
        self.signal(Signal::SIGTERM)
    }

    fn kill_all(&self) -> Result<(), ContainerizerError> {
        self.signal(Signal::SIGKILL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec run as the task's default user, in a sandbox it owns (as the
    /// agent makes it).
    fn spec(dir: &std::path::Path, command: &str) -> LaunchSpec {
        let user = super::super::TaskUser::default();
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).expect("chown the sandbox");
        LaunchSpec {
            task_id: "t".into(),
            command: command.into(),
            env: vec![("GREETING".into(), "hello".into())],
            sandbox: dir.to_path_buf(),
            user,
            ..LaunchSpec::default()
        }
    }

    #[tokio::test]
    async fn runs_in_the_sandbox_with_env_and_output_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = ProcessContainerizer
            .launch(&spec(
                dir.path(),
                "echo $GREETING; pwd; echo oops >&2; exit 3",
            ))
            .expect("launch");
        let status = c.wait().await.expect("wait");
        assert_eq!(status, Exit::Code(3));
        let out = std::fs::read_to_string(dir.path().join("stdout")).expect("stdout");
        let cwd = dir.path().canonicalize().expect("canonical");
        assert_eq!(out, format!("hello\n{}\n", cwd.display()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stderr")).expect("stderr"),
            "oops\n"
        );
    }

    #[tokio::test]
    async fn kill_all_reaches_the_commands_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = ProcessContainerizer
            .launch(&spec(dir.path(), "sleep 60 & echo $! > child; wait"))
            .expect("launch");
        let child_file = dir.path().join("child");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let child: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&child_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child pid never written"
            );
            tokio::task::yield_now().await;
        };
        c.kill_all().expect("kill");
        let status = c.wait().await.expect("wait");
        assert_eq!(status, Exit::Signal(9), "killed by SIGKILL");
        // The background child is gone too (or a zombie awaiting init).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {child} survived: {stat}"
            );
            tokio::task::yield_now().await;
        }
    }
}
