//! The services framework's durable records: apps with their versions,
//! instances and deployments. Kept as one JSON record per app.

use agora_sdk::placement::AgentAttributes;
use serde::{Deserialize, Serialize};

use crate::spec::AppSpec;

/// Wall-clock milliseconds since the Unix epoch.
pub type Millis = u64;

/// Where an instance's task stands. Ended tasks leave the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Accepted, not yet reported by its agent.
    Staging,
    Starting,
    Running,
    /// Its agent is unreachable: replaced, and killed if it comes back extra.
    Unreachable,
}

/// One running copy of an app: one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub task_id: String,
    /// The app version it was launched from.
    pub version: u32,
    /// The app's restart epoch at launch (`restart` replaces older ones).
    pub restart_epoch: u32,
    pub agent: AgentAttributes,
    /// Host ports, in the order of the app's `ports`.
    pub ports: Vec<u64>,
    pub state: InstanceState,
    /// The latest health-check result (None: no check, or none yet).
    pub healthy: Option<bool>,
    pub launched_at: Millis,
    pub running_at: Option<Millis>,
    /// Out of the load balancer's rotation since then, waiting for its
    /// connections to finish before it is killed.
    pub draining_since: Option<Millis>,
    /// When the kill was (last) sent.
    pub kill_sent_at: Option<Millis>,
    pub message: String,
    /// When reconciliation first said the master does not know the task.
    #[serde(skip)]
    pub unknown_since: Option<Millis>,
    /// The latest cpu sample (time, cumulative cpu seconds) and the rate
    /// between the last two, in cores.
    #[serde(skip)]
    pub cpu_sample: Option<(Millis, f64)>,
    #[serde(skip)]
    pub cpu_rate: Option<f64>,
}

impl Instance {
    /// Whether the framework is taking it down.
    pub fn leaving(&self) -> bool {
        self.draining_since.is_some() || self.kill_sent_at.is_some()
    }
}

/// A definition the app had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub number: u32,
    pub spec: AppSpec,
    pub created_at: Millis,
    /// `deploy`, or `rollback to vN`.
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Deploy,
    Scale,
    Autoscale,
    Rollback,
    Restart,
    Remove,
}

impl DeploymentKind {
    /// Whether it replaces instances (and can fail and roll back).
    pub fn replaces(self) -> bool {
        matches!(
            self,
            DeploymentKind::Deploy | DeploymentKind::Rollback | DeploymentKind::Restart
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    Running,
    Succeeded,
    /// Failed and stopped where it was (no automatic rollback).
    Paused,
    /// Failed; a rollback deployment took over.
    RolledBack,
    /// Replaced by a newer deployment before it finished.
    Superseded,
    /// Cancelled by the user (a rollback took over).
    Cancelled,
}

/// One step of a deployment, as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at: Millis,
    pub text: String,
}

/// A change being carried out: from one version (or count) to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub kind: DeploymentKind,
    pub state: DeploymentState,
    pub from_version: u32,
    pub to_version: u32,
    pub instances: u32,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub message: String,
    /// New-version instances that failed during it.
    pub failures: u32,
    /// When the deployment last moved (an instance became ready, or an old
    /// one went), and a fingerprint of how far it was then.
    pub last_progress: Millis,
    #[serde(default)]
    pub progress_mark: u64,
    pub steps: Vec<Step>,
}

const MAX_STEPS: usize = 100;

impl Deployment {
    pub fn is_active(&self) -> bool {
        self.state == DeploymentState::Running
    }

    pub fn step(&mut self, at: Millis, text: impl Into<String>) {
        if self.steps.len() >= MAX_STEPS {
            self.steps.remove(0);
        }
        self.steps.push(Step {
            at,
            text: text.into(),
        });
    }
}

/// Launch back-off after failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Failures since an instance last became ready.
    pub failures: u32,
    /// No launch before this.
    pub delay_until: Millis,
    pub last_failure: String,
    pub last_failure_at: Option<Millis>,
}

/// A long-running app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub versions: Vec<Version>,
    /// The version instances should run.
    pub target: u32,
    /// How many instances are wanted.
    pub instances: u32,
    pub restart_epoch: u32,
    pub live: Vec<Instance>,
    /// Newest last; the last may be running.
    pub deployments: Vec<Deployment>,
    pub backoff: Backoff,
    /// Being removed: its instances are going, then the app.
    pub removing: bool,
    pub created_at: Millis,
    pub last_scaled_at: Millis,
    /// Since when measured cpu use has been below the autoscale target.
    #[serde(skip)]
    pub low_since: Option<Millis>,
}

impl App {
    pub fn version(&self, number: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// The spec instances should run.
    pub fn spec(&self) -> &AppSpec {
        match self.version(self.target) {
            Some(v) => &v.spec,
            // Versions are never trimmed past the target.
            None => &self.versions[self.versions.len() - 1].spec,
        }
    }

    pub fn latest_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.number)
    }

    /// The running deployment, if any.
    pub fn active_deployment(&self) -> Option<&Deployment> {
        self.deployments.last().filter(|d| d.is_active())
    }

    pub fn active_deployment_mut(&mut self) -> Option<&mut Deployment> {
        self.deployments.last_mut().filter(|d| d.is_active())
    }

    /// Stopped by a failed deployment without rollback.
    pub fn paused(&self) -> Option<&Deployment> {
        self.deployments
            .last()
            .filter(|d| d.state == DeploymentState::Paused)
    }

    /// Whether an instance runs what the target version would launch.
    pub fn is_current(&self, instance: &Instance) -> bool {
        if instance.restart_epoch != self.restart_epoch {
            return false;
        }
        if instance.version == self.target {
            return true;
        }
        match self.version(instance.version) {
            Some(v) => v.spec.launch_fields_eq(self.spec()),
            None => false,
        }
    }

    /// Whether an instance serves: running, healthy if checked, and not
    /// leaving.
    pub fn is_ready(&self, instance: &Instance) -> bool {
        let checked = self
            .version(instance.version)
            .is_some_and(|v| v.spec.health_check.is_some());
        instance.state == InstanceState::Running
            && !instance.leaving()
            && (!checked || instance.healthy == Some(true))
    }

    /// What the app is doing, in one word.
    pub fn status(&self) -> &'static str {
        if self.removing {
            return "REMOVING";
        }
        if self.paused().is_some() {
            return "PAUSED";
        }
        if self.backoff.failures >= 3 {
            return "CRASH_LOOPING";
        }
        if let Some(d) = self.active_deployment() {
            return if d.kind.replaces() {
                "DEPLOYING"
            } else {
                "SCALING"
            };
        }
        let ready = self.live.iter().filter(|i| self.is_ready(i)).count() as u32;
        if ready >= self.instances {
            if self.instances == 0 {
                "SUSPENDED"
            } else {
                "HEALTHY"
            }
        } else {
            "WAITING"
        }
    }
}
