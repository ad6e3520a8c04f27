//! The batch framework's records: a job, its runs, each run's instances and
//! each instance's attempts (one task each). These are what the store keeps
//! and what the HTTP API shows.

use serde::{Deserialize, Serialize};

use crate::spec::JobSpec;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// Waiting for resources, a dependency or a retry.
    Queued,
    Running,
    Succeeded,
    Failed,
    Killed,
}

impl RunState {
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Queued | RunState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Running => "RUNNING",
            RunState::Succeeded => "SUCCEEDED",
            RunState::Failed => "FAILED",
            RunState::Killed => "KILLED",
        }
    }
}

/// Where one instance of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Needs a task: not launched yet, or waiting out a retry backoff.
    Waiting,
    /// A task was sent to the master; no word from its agent yet.
    Launching,
    Running,
    Succeeded,
    Failed,
    Killed,
}

impl InstanceState {
    /// A task of this instance may be alive.
    pub fn has_task(self) -> bool {
        matches!(self, InstanceState::Launching | InstanceState::Running)
    }

    pub fn is_done(self) -> bool {
        matches!(
            self,
            InstanceState::Succeeded | InstanceState::Failed | InstanceState::Killed
        )
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Submit,
    Schedule,
    Manual,
    Dependency,
}

/// One task launched for an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub task_id: String,
    pub agent_id: String,
    pub hostname: String,
    /// The agent's attributes, for constraints on the run's other instances.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The task's last state, as the master reported it (`TASK_RUNNING`…).
    pub state: String,
    pub launched_at: Millis,
    /// When the agent first reported the task running.
    #[serde(default)]
    pub running_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub exit_code: Option<i32>,
    pub message: String,
    /// When reconciliation first said the master does not know the task.
    #[serde(skip)]
    pub unknown_since: Option<Millis>,
}

/// One of a run's parallel copies (`AGORA_INSTANCE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub index: u32,
    pub state: InstanceState,
    /// Not launched before this time (retry backoff).
    pub not_before: Millis,
    pub attempts: Vec<Attempt>,
}

impl Instance {
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// One execution of a job: all its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub number: u32,
    pub trigger: Trigger,
    pub state: RunState,
    pub message: String,
    pub queued_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// Past this the run is killed and failed (the job's `timeout`).
    pub deadline: Option<Millis>,
    pub instances: Vec<Instance>,
}

/// A submitted job with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// Submission order, unique for the life of the store (FIFO and task ids).
    pub seq: u64,
    pub submitted_at: Millis,
    pub next_run: u32,
    pub runs: Vec<Run>,
    /// When the schedule fires next.
    pub next_fire: Option<Millis>,
    /// Scheduled runs skipped because of `concurrency = "forbid"`.
    pub skipped_runs: u64,
}

impl Job {
    pub fn run(&self, number: u32) -> Option<&Run> {
        self.runs.iter().find(|r| r.number == number)
    }

    pub fn run_mut(&mut self, number: u32) -> Option<&mut Run> {
        self.runs.iter_mut().find(|r| r.number == number)
    }

    pub fn latest(&self) -> Option<&Run> {
        self.runs.last()
    }

    pub fn has_active_run(&self) -> bool {
        self.runs.iter().any(|r| r.state.is_active())
    }

    /// The job's state as users see it: its active run's, else its latest
    /// run's; `SCHEDULED` before a scheduled job first fires.
    pub fn state(&self) -> &'static str {
        if self.runs.iter().any(|r| r.state == RunState::Running) {
            "RUNNING"
        } else if self.runs.iter().any(|r| r.state == RunState::Queued) {
            "QUEUED"
        } else if let Some(run) = self.latest() {
            run.state.as_str()
        } else if self.spec.schedule.is_some() {
            "SCHEDULED"
        } else {
            "QUEUED"
        }
    }
}
