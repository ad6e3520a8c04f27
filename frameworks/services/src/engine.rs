//! The services engine: a pure state machine (no I/O, no clock of its own —
//! `now` is an argument) that reconciles what each app wants (version,
//! instance count) with what runs. The framework feeds it offers, status
//! updates, usage samples and the load balancer's connection counts, and
//! carries out the actions it returns.
//!
//! - [`plan`] decides, per app, what to launch and what to take down (rolling
//!   upgrades within the upgrade bounds, scaling, self-healing);
//! - [`placement`] puts launches on offers (constraints, spreading, ports)
//!   and records why an app's instances could not be placed;
//! - [`autoscale`] turns measured cpu use into instance counts.

mod autoscale;
mod placement;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use agora_sdk::{TaskState, TaskStatus, v1};
use serde::Serialize;

use crate::model::{
    App, Backoff, Deployment, DeploymentKind, DeploymentState, InstanceState, Millis, Version,
};
use crate::spec::AppSpec;

pub use placement::{Placement, WaitingReasons};

/// Most versions kept per app (those instances still run are kept too).
const MAX_VERSIONS: usize = 50;
/// Most finished deployments kept per app.
const MAX_DEPLOYMENTS: usize = 20;
/// A kill not answered by an update this long after its grace is resent.
const KILL_RESEND_MS: Millis = 30_000;
/// A leaving instance stays out of rotation at least this long, so load
/// balancers elsewhere (following the event stream) drop it first.
pub const MIN_DRAIN_MS: Millis = 1_000;

/// What the framework must do for the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Kill {
        task_id: String,
        grace: Option<Duration>,
    },
    Reconcile(Vec<String>),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(#[from] agora_sdk::spec::SpecError),
}

/// What changed since the last commit.
#[derive(Debug, Default)]
pub struct Changes {
    pub version: u64,
    /// `None` removes the app.
    pub apps: Vec<(String, Option<App>)>,
    pub next_task: u64,
    pub next_deployment: u64,
    pub framework_id: Option<String>,
}

/// An app's serving instances, as discovery and load balancers see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub task_id: String,
    pub host: String,
    pub port: u64,
    pub ports: Vec<u64>,
    pub agent_id: String,
}

/// Something clients of the event stream care about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServiceEvent {
    /// The app's serving instances changed.
    Endpoints {
        app: String,
        service_port: Option<u16>,
        endpoints: Vec<Endpoint>,
    },
    /// A deployment started, moved to a new state, or made a step.
    Deployment {
        app: String,
        id: u64,
        kind: DeploymentKind,
        state: DeploymentState,
        to_version: u32,
        message: String,
    },
    /// The app was removed.
    Removed { app: String },
}

/// The engine's counters, for metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub tasks_launched: u64,
    pub instances_failed: u64,
    pub instances_lost: u64,
    pub deployments_started: u64,
    pub deployments_succeeded: u64,
    pub deployments_rolled_back: u64,
    pub deployments_paused: u64,
    pub autoscale_events: u64,
}

pub struct Engine {
    apps: BTreeMap<String, App>,
    /// task id → app id.
    tasks: HashMap<String, String>,
    next_task: u64,
    next_deployment: u64,
    framework_id: Option<String>,
    /// How long a task the master does not know may be unaccounted for.
    reconcile_grace: Millis,
    version: u64,
    dirty: BTreeSet<String>,
    meta_dirty: bool,
    /// Apps whose endpoints or deployments may have changed.
    notify: BTreeSet<String>,
    endpoints_seen: HashMap<String, Vec<Endpoint>>,
    deployments_seen: HashMap<String, (u64, DeploymentState, usize)>,
    waiting: HashMap<String, WaitingReasons>,
    /// Work appeared that wants offers now.
    new_work: bool,
    pub counters: Counters,
}

impl Engine {
    /// An engine over what the store held.
    pub fn restore(
        apps: Vec<App>,
        next_task: u64,
        next_deployment: u64,
        framework_id: Option<String>,
        reconcile_grace: Millis,
    ) -> Engine {
        let mut engine = Engine {
            apps: BTreeMap::new(),
            tasks: HashMap::new(),
            next_task: next_task.max(1),
            next_deployment: next_deployment.max(1),
            framework_id,
            reconcile_grace,
            version: 0,
            dirty: BTreeSet::new(),
            meta_dirty: false,
            notify: BTreeSet::new(),
            endpoints_seen: HashMap::new(),
            deployments_seen: HashMap::new(),
            waiting: HashMap::new(),
            new_work: true,
            counters: Counters::default(),
        };
        for app in apps {
            for i in &app.live {
                engine.tasks.insert(i.task_id.clone(), app.id.clone());
            }
            engine.notify.insert(app.id.clone());
            engine.apps.insert(app.id.clone(), app);
        }
        engine
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn framework_id(&self) -> Option<&str> {
        self.framework_id.as_deref()
    }

    pub fn set_framework_id(&mut self, id: &str) {
        if self.framework_id.as_deref() != Some(id) {
            self.framework_id = Some(id.to_string());
            self.meta_dirty = true;
            self.version += 1;
        }
    }

    fn touch(&mut self, app: &str) {
        self.dirty.insert(app.to_string());
        self.notify.insert(app.to_string());
        self.version += 1;
    }

    /// Everything changed since the last call, to commit.
    pub fn take_changes(&mut self) -> Option<Changes> {
        if self.dirty.is_empty() && !self.meta_dirty {
            return None;
        }
        let apps = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|id| {
                let app = self.apps.get(&id).cloned();
                (id, app)
            })
            .collect();
        self.meta_dirty = false;
        Some(Changes {
            version: self.version,
            apps,
            next_task: self.next_task,
            next_deployment: self.next_deployment,
            framework_id: self.framework_id.clone(),
        })
    }

    /// A commit failed: its changes go back to be written again.
    pub fn requeue(&mut self, changes: Changes) {
        for (id, _) in changes.apps {
            self.dirty.insert(id);
        }
        self.meta_dirty = true;
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    pub fn app(&self, id: &str) -> Result<&App, EngineError> {
        self.apps
            .get(id)
            .ok_or_else(|| EngineError::NotFound(format!("no app `{id}`")))
    }

    pub fn waiting(&self, id: &str) -> Option<&WaitingReasons> {
        self.waiting.get(id)
    }

    /// Task ids the engine believes are alive, to reconcile.
    pub fn live_task_ids(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    /// Whether new work appeared since the last call (revive offers).
    pub fn take_new_work(&mut self) -> bool {
        std::mem::take(&mut self.new_work)
    }

    // ---- requests --------------------------------------------------------------------

    fn new_deployment(
        &mut self,
        app_id: &str,
        kind: DeploymentKind,
        from_version: u32,
        now: Millis,
        message: String,
    ) -> u64 {
        let id = self.next_deployment;
        self.next_deployment += 1;
        self.meta_dirty = true;
        self.counters.deployments_started += 1;
        let Some(app) = self.apps.get_mut(app_id) else {
            return id;
        };
        if let Some(old) = app.active_deployment_mut() {
            old.state = DeploymentState::Superseded;
            old.ended_at = Some(now);
            old.message = format!("superseded by deployment {id}");
        }
        let mut d = Deployment {
            id,
            kind,
            state: DeploymentState::Running,
            from_version,
            to_version: app.target,
            instances: app.instances,
            started_at: now,
            ended_at: None,
            message,
            failures: 0,
            last_progress: now,
            progress_mark: 0,
            steps: Vec::new(),
        };
        d.step(now, d.message.clone());
        app.deployments.push(d);
        let finished = app.deployments.len().saturating_sub(1);
        if finished > MAX_DEPLOYMENTS {
            app.deployments.drain(..finished - MAX_DEPLOYMENTS);
        }
        self.new_work = true;
        self.touch(app_id);
        id
    }

    fn push_version(app: &mut App, spec: AppSpec, now: Millis, origin: String) -> u32 {
        let number = app.latest_version() + 1;
        app.versions.push(Version {
            number,
            spec,
            created_at: now,
            origin,
        });
        // Old versions go, except those instances still run and the target.
        while app.versions.len() > MAX_VERSIONS {
            let keep: BTreeSet<u32> = app
                .live
                .iter()
                .map(|i| i.version)
                .chain([app.target, number])
                .collect();
            match app.versions.iter().position(|v| !keep.contains(&v.number)) {
                Some(i) => {
                    app.versions.remove(i);
                }
                None => break,
            }
        }
        number
    }

    /// Deploys `spec` as the app's next version (creating the app); returns
    /// (version, deployment id).
    pub fn deploy(&mut self, spec: AppSpec, now: Millis) -> Result<(u32, u64), EngineError> {
        if let Some(port) = spec.service.as_ref().map(|s| s.port)
            && let Some(other) = self.apps.values().find(|a| {
                a.id != spec.id
                    && !a.removing
                    && a.spec().service.as_ref().map(|s| s.port) == Some(port)
            })
        {
            return Err(EngineError::Invalid(agora_sdk::spec::SpecError::new(
                "service.port",
                format!(
                    "port {port} is already the service port of app `{}`",
                    other.id
                ),
            )));
        }
        let id = spec.id.clone();
        match self.apps.get_mut(&id) {
            Some(app) if app.removing => Err(EngineError::Conflict(format!(
                "app `{id}` is being removed; deploy it again once it is gone"
            ))),
            Some(app) => {
                let from = app.target;
                let changes_instances = !app.spec().launch_fields_eq(&spec);
                app.instances = spec.instances;
                let number = Self::push_version(app, spec, now, "deploy".into());
                app.target = number;
                let kind = if changes_instances {
                    DeploymentKind::Deploy
                } else {
                    DeploymentKind::Scale
                };
                let message = if changes_instances {
                    format!("deploying v{number} (from v{from})")
                } else {
                    format!(
                        "v{number}: same instances as v{from}, {} wanted",
                        app.instances
                    )
                };
                let d = self.new_deployment(&id, kind, from, now, message);
                Ok((number, d))
            }
            None => {
                let app = App {
                    id: id.clone(),
                    versions: vec![Version {
                        number: 1,
                        spec: spec.clone(),
                        created_at: now,
                        origin: "deploy".into(),
                    }],
                    target: 1,
                    instances: spec.instances,
                    restart_epoch: 0,
                    live: Vec::new(),
                    deployments: Vec::new(),
                    backoff: Backoff::default(),
                    removing: false,
                    created_at: now,
                    last_scaled_at: now,
                    low_since: None,
                };
                self.apps.insert(id.clone(), app);
                let d =
                    self.new_deployment(&id, DeploymentKind::Deploy, 0, now, "deploying v1".into());
                Ok((1, d))
            }
        }
    }

    /// Changes the wanted number of instances.
    pub fn scale(&mut self, id: &str, instances: u32, now: Millis) -> Result<u64, EngineError> {
        self.scale_as(id, instances, DeploymentKind::Scale, now)
    }

    fn scale_as(
        &mut self,
        id: &str,
        instances: u32,
        kind: DeploymentKind,
        now: Millis,
    ) -> Result<u64, EngineError> {
        if instances > crate::spec::MAX_INSTANCES {
            return Err(EngineError::Invalid(agora_sdk::spec::SpecError::new(
                "instances",
                format!("at most {}", crate::spec::MAX_INSTANCES),
            )));
        }
        let app = self.live_app_mut(id)?;
        let before = app.instances;
        app.instances = instances;
        let target = app.target;
        // A deployment that replaces instances carries the new count along.
        if let Some(d) = app.active_deployment_mut()
            && d.kind.replaces()
        {
            d.instances = instances;
            d.step(
                now,
                format!("scaled from {before} to {instances} during the deployment"),
            );
            let id_ = d.id;
            self.touch(id);
            self.new_work = true;
            return Ok(id_);
        }
        let message = format!("scaling from {before} to {instances}");
        Ok(self.new_deployment(id, kind, target, now, message))
    }

    fn live_app_mut(&mut self, id: &str) -> Result<&mut App, EngineError> {
        match self.apps.get_mut(id) {
            None => Err(EngineError::NotFound(format!("no app `{id}`"))),
            Some(a) if a.removing => Err(EngineError::Conflict(format!(
                "app `{id}` is being removed"
            ))),
            Some(a) => Ok(a),
        }
    }

    /// Rolls back to version `to` (default: the one before the target), as
    /// a new version deployed the rolling way.
    pub fn rollback(
        &mut self,
        id: &str,
        to: Option<u32>,
        now: Millis,
    ) -> Result<(u32, u64), EngineError> {
        let app = self.live_app_mut(id)?;
        let to = match to {
            Some(v) => v,
            None => app
                .versions
                .iter()
                .rev()
                .map(|v| v.number)
                .find(|n| *n < app.target)
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "app `{id}` has no version before v{}",
                        app.target
                    ))
                })?,
        };
        let spec = app
            .version(to)
            .map(|v| v.spec.clone())
            .ok_or_else(|| EngineError::NotFound(format!("app `{id}` has no version {to}")))?;
        Ok(self.roll_to(id, spec, to, DeploymentKind::Rollback, now))
    }

    fn roll_to(
        &mut self,
        id: &str,
        spec: AppSpec,
        to: u32,
        kind: DeploymentKind,
        now: Millis,
    ) -> (u32, u64) {
        let Some(app) = self.apps.get_mut(id) else {
            return (0, 0);
        };
        let from = app.target;
        let number = Self::push_version(app, spec, now, format!("rollback to v{to}"));
        app.target = number;
        // A failing app gets a fresh start on the version it goes back to.
        app.backoff = Backoff::default();
        let message = format!("rolling back to v{to} as v{number} (from v{from})");
        let d = self.new_deployment(id, kind, from, now, message);
        (number, d)
    }

    /// Replaces every instance with a fresh one, the rolling way.
    pub fn restart(&mut self, id: &str, now: Millis) -> Result<u64, EngineError> {
        let app = self.live_app_mut(id)?;
        app.restart_epoch += 1;
        let target = app.target;
        Ok(self.new_deployment(
            id,
            DeploymentKind::Restart,
            target,
            now,
            "restarting every instance".into(),
        ))
    }

    /// Cancels the app's running deployment: it rolls back to where it
    /// started.
    pub fn cancel(&mut self, id: &str, now: Millis) -> Result<u64, EngineError> {
        let app = self.live_app_mut(id)?;
        let Some(d) = app.active_deployment_mut() else {
            return Err(EngineError::Conflict(format!(
                "app `{id}` has no running deployment"
            )));
        };
        let (kind, from) = (d.kind, d.from_version);
        d.state = DeploymentState::Cancelled;
        d.ended_at = Some(now);
        d.message = "cancelled".into();
        if !kind.replaces() || from == 0 {
            self.touch(id);
            return Ok(0);
        }
        let Some(spec) = app.version(from).map(|v| v.spec.clone()) else {
            self.touch(id);
            return Ok(0);
        };
        let (_, d) = self.roll_to(id, spec, from, DeploymentKind::Rollback, now);
        Ok(d)
    }

    /// Removes the app: its instances are drained and killed, then it goes.
    pub fn remove(&mut self, id: &str, now: Millis) -> Result<(), EngineError> {
        let app = self.live_app_mut(id)?;
        app.removing = true;
        app.instances = 0;
        let target = app.target;
        self.new_deployment(
            id,
            DeploymentKind::Remove,
            target,
            now,
            "removing the app".into(),
        );
        Ok(())
    }

    // ---- status updates ----------------------------------------------------------------

    /// The master reports a task's state.
    pub fn on_status(&mut self, status: &TaskStatus, now: Millis) -> Vec<Action> {
        let task_id = agora_sdk::status_task_id(status).to_string();
        let state = agora_sdk::status_state(status);
        let Some(app_id) = self.tasks.get(&task_id).cloned() else {
            // Not ours (any more): a task that still runs is a ghost.
            if !agora_sdk::is_terminal(state) && state != TaskState::TaskUnknown {
                return vec![Action::Kill {
                    task_id,
                    grace: None,
                }];
            }
            return Vec::new();
        };
        let Some(app) = self.apps.get_mut(&app_id) else {
            return Vec::new();
        };
        let Some(index) = app.live.iter().position(|i| i.task_id == task_id) else {
            return Vec::new();
        };
        let reason = v1::task_status::Reason::try_from(status.reason).unwrap_or_default();
        let current = app.is_current(&app.live[index]);
        let instance = &mut app.live[index];
        if state != TaskState::TaskUnknown {
            instance.unknown_since = None;
        }
        if let Some(h) = status.healthy {
            instance.healthy = Some(h);
        }
        if !status.message.is_empty() {
            instance.message = status.message.clone();
        }
        match state {
            TaskState::TaskStaging => {}
            TaskState::TaskStarting => {
                if instance.state == InstanceState::Staging {
                    instance.state = InstanceState::Starting;
                }
            }
            TaskState::TaskRunning => {
                instance.state = InstanceState::Running;
                instance.running_at.get_or_insert(now);
            }
            TaskState::TaskKilling => {}
            TaskState::TaskUnreachable => {
                instance.state = InstanceState::Unreachable;
                self.counters.instances_lost += 1;
                if let Some(d) = app.active_deployment_mut() {
                    d.step(
                        now,
                        format!("instance {task_id} unreachable with its agent; replacing it"),
                    );
                }
            }
            TaskState::TaskUnknown => {
                instance.unknown_since.get_or_insert(now);
            }
            _ => {
                // Ended.
                let instance = app.live.remove(index);
                self.tasks.remove(&task_id);
                let by_us = instance.kill_sent_at.is_some();
                let lost = matches!(
                    state,
                    TaskState::TaskLost | TaskState::TaskGone | TaskState::TaskDropped
                );
                if !by_us && !app.removing {
                    let why = if reason == v1::task_status::Reason::TaskUnhealthy {
                        format!("killed for failing its health checks: {}", status.message)
                    } else {
                        format!("{}: {}", state.as_str_name(), status.message)
                    };
                    if lost {
                        self.counters.instances_lost += 1;
                    } else {
                        self.counters.instances_failed += 1;
                        let spec = app
                            .version(instance.version)
                            .map_or_else(|| app.spec().backoff.clone(), |v| v.spec.backoff.clone());
                        let b = &mut app.backoff;
                        b.failures += 1;
                        let delay = (spec.initial_ms as f64
                            * spec
                                .factor
                                .powi(b.failures.saturating_sub(1).min(60) as i32))
                        .min(spec.max_ms as f64) as Millis;
                        b.delay_until = now + delay;
                        b.last_failure = format!("{task_id} {why}");
                        b.last_failure_at = Some(now);
                    }
                    if let Some(d) = app.active_deployment_mut() {
                        if current && !lost && d.kind.replaces() {
                            d.failures += 1;
                        }
                        d.step(now, format!("instance {task_id} ended: {why}"));
                    }
                }
                self.new_work = true;
            }
        }
        self.touch(&app_id);
        Vec::new()
    }

    /// An agent was lost: its instances count as unreachable at once (the
    /// master's updates follow).
    pub fn on_agent_lost(&mut self, agent_id: &str, now: Millis) {
        let ids: Vec<String> = self
            .apps
            .values()
            .flat_map(|a| a.live.iter())
            .filter(|i| i.agent.agent_id == agent_id && i.state != InstanceState::Unreachable)
            .map(|i| i.task_id.clone())
            .collect();
        for task_id in ids {
            let status = TaskStatus {
                task_id: Some(v1::TaskId { value: task_id }),
                state: TaskState::TaskUnreachable as i32,
                message: format!("agent {agent_id} was lost"),
                ..Default::default()
            };
            self.on_status(&status, now);
        }
    }

    /// A launch the master refused: its instances never existed.
    pub fn unlaunch(&mut self, task_ids: &[String], failed: Option<&str>, now: Millis) {
        for task_id in task_ids {
            let Some(app_id) = self.tasks.remove(task_id) else {
                continue;
            };
            if let Some(app) = self.apps.get_mut(&app_id) {
                app.live.retain(|i| i.task_id != *task_id);
                if let Some(why) = failed {
                    app.backoff.failures += 1;
                    app.backoff.delay_until = now + app.spec().backoff.initial_ms;
                    app.backoff.last_failure = format!("the master refused the launch: {why}");
                    app.backoff.last_failure_at = Some(now);
                }
            }
            self.touch(&app_id);
        }
        self.new_work = true;
    }

    /// Usage samples: (task id, cumulative cpu seconds) at `now`.
    pub fn observe_usage(&mut self, samples: &[(String, f64)], now: Millis) {
        for (task_id, cpu) in samples {
            let Some(app) = self.tasks.get(task_id).and_then(|a| self.apps.get_mut(a)) else {
                continue;
            };
            let Some(i) = app.live.iter_mut().find(|i| i.task_id == *task_id) else {
                continue;
            };
            if let Some((at, before)) = i.cpu_sample
                && now > at + 500
                && *cpu >= before
            {
                i.cpu_rate = Some((cpu - before) / ((now - at) as f64 / 1000.0));
            }
            i.cpu_sample = Some((now, *cpu));
        }
    }

    // ---- the clock ---------------------------------------------------------------------

    /// Advances every app: deployments' progress and failure, drains that
    /// are done, lost tasks given up on, autoscaling. `connections` gives
    /// the open load-balancer connections of a task.
    pub fn tick(&mut self, now: Millis, connections: &dyn Fn(&str) -> usize) -> Vec<Action> {
        let mut actions = Vec::new();
        let ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in ids {
            self.autoscale(&id, now);
            self.advance(&id, now, connections, &mut actions);
        }
        actions
    }

    fn advance(
        &mut self,
        id: &str,
        now: Millis,
        connections: &dyn Fn(&str) -> usize,
        actions: &mut Vec<Action>,
    ) {
        let Some(app) = self.apps.get_mut(id) else {
            return;
        };
        let mut changed = false;
        // Tasks the master has forgotten are given up after the grace.
        let grace = self.reconcile_grace;
        let forgotten: Vec<String> = app
            .live
            .iter()
            .filter(|i| i.unknown_since.is_some_and(|t| now >= t + grace))
            .map(|i| i.task_id.clone())
            .collect();
        for task_id in &forgotten {
            app.live.retain(|i| i.task_id != *task_id);
            self.tasks.remove(task_id);
            self.counters.instances_lost += 1;
            changed = true;
        }
        let decision = plan::plan(app);
        for task_id in &decision.take_down {
            if let Some(i) = app.live.iter_mut().find(|i| i.task_id == *task_id) {
                i.draining_since = Some(now);
                changed = true;
            }
        }
        // Leaving instances whose connections are done get their kill.
        let spec_drain = app.spec().service.as_ref().map(|s| s.drain_timeout_ms);
        for i in app.live.iter_mut().filter(|i| i.draining_since.is_some()) {
            let since = i.draining_since.unwrap_or(now);
            let balanced = app
                .versions
                .iter()
                .find(|v| v.number == i.version)
                .is_some_and(|v| v.spec.service.is_some())
                || spec_drain.is_some();
            let drained = !balanced
                || now >= since + spec_drain.unwrap_or(0)
                || (now >= since + MIN_DRAIN_MS && connections(&i.task_id) == 0);
            let resend = i
                .kill_sent_at
                .is_some_and(|at| now >= at + KILL_RESEND_MS + app_grace(&app.versions, i.version));
            if drained && (i.kill_sent_at.is_none() || resend) {
                i.kill_sent_at = Some(now);
                actions.push(Action::Kill {
                    task_id: i.task_id.clone(),
                    grace: None,
                });
                changed = true;
            }
        }
        if decision.launch > 0 {
            self.new_work = true;
        }
        changed |= self.progress(id, now);
        if changed {
            self.touch(id);
        }
        self.finish_removal(id);
    }

    /// Moves the app's deployment on: progress, success, failure.
    fn progress(&mut self, id: &str, now: Millis) -> bool {
        let Some(app) = self.apps.get_mut(id) else {
            return false;
        };
        let want = app.instances;
        let current_ready = app
            .live
            .iter()
            .filter(|i| app.is_current(i) && app.is_ready(i))
            .count() as u32;
        let current_live = app
            .live
            .iter()
            .filter(|i| app.is_current(i) && !i.leaving() && i.state != InstanceState::Unreachable)
            .count() as u32;
        // Instances on an unreachable agent cannot be waited for: they are
        // killed if they ever come back.
        let others = app
            .live
            .iter()
            .filter(|i| {
                (!app.is_current(i) || i.leaving()) && i.state != InstanceState::Unreachable
            })
            .count() as u32;
        let upgrade = app.spec().upgrade.clone();
        let ready = app.live.iter().any(|i| app.is_ready(i));
        if ready && app.backoff.failures > 0 {
            // An instance that serves ends the crash loop.
            let healthy_since_failure = app
                .live
                .iter()
                .filter(|i| app.is_ready(i))
                .any(|i| i.running_at >= app.backoff.last_failure_at);
            if healthy_since_failure {
                app.backoff = Backoff::default();
            }
        }
        let Some(d) = app.active_deployment_mut() else {
            return false;
        };
        let mut changed = false;
        let mark = (u64::from(current_ready) << 32) | u64::from(u32::MAX - others);
        if d.progress_mark != mark {
            // The first look only records where the deployment starts from.
            if d.progress_mark != 0 {
                d.last_progress = now;
            }
            d.progress_mark = mark;
            changed = true;
        }
        let done = current_ready == want && current_live == want && others == 0;
        if done {
            d.state = DeploymentState::Succeeded;
            d.ended_at = Some(now);
            d.message = format!("{want} instance(s) of v{} ready", d.to_version);
            let text = d.message.clone();
            d.step(now, text);
            self.counters.deployments_succeeded += 1;
            return true;
        }
        // Only a deployment that replaces a working version can fail (and
        // go back to it); a new app keeps trying, its crash loop or its
        // waiting reasons in plain view.
        if !d.kind.replaces() || d.from_version == 0 {
            return changed;
        }
        let spec = upgrade;
        let failed = if d.failures >= spec.max_failures {
            Some(format!(
                "{} new instance(s) failed (upgrade.max_failures = {})",
                d.failures, spec.max_failures
            ))
        } else if now >= d.last_progress + spec.progress_deadline_ms {
            Some(format!(
                "no progress for {}",
                agora_sdk::spec::format_duration(Duration::from_millis(spec.progress_deadline_ms))
            ))
        } else {
            None
        };
        let Some(why) = failed else {
            return changed;
        };
        let (kind, from) = (d.kind, d.from_version);
        d.ended_at = Some(now);
        let can_roll_back = spec.auto_rollback && kind != DeploymentKind::Rollback && from > 0;
        if can_roll_back {
            d.state = DeploymentState::RolledBack;
            d.message = format!("failed: {why}; rolling back to v{from}");
            let text = d.message.clone();
            d.step(now, text);
            self.counters.deployments_rolled_back += 1;
            if let Some(spec) = app.version(from).map(|v| v.spec.clone()) {
                self.roll_to(id, spec, from, DeploymentKind::Rollback, now);
            }
        } else {
            d.state = DeploymentState::Paused;
            d.message = format!("failed: {why}; paused (deploy or roll back to go on)");
            let text = d.message.clone();
            d.step(now, text);
            self.counters.deployments_paused += 1;
        }
        true
    }

    fn finish_removal(&mut self, id: &str) {
        // Instances lost with their agent do not hold the removal up: if
        // they come back, they are strangers and get killed.
        let done = self.apps.get(id).is_some_and(|a| {
            a.removing
                && a.live
                    .iter()
                    .all(|i| i.state == InstanceState::Unreachable && i.kill_sent_at.is_some())
        });
        if done {
            if let Some(app) = self.apps.get(id) {
                for i in &app.live {
                    self.tasks.remove(&i.task_id);
                }
            }
            self.apps.remove(id);
            self.waiting.remove(id);
            self.dirty.insert(id.to_string());
            self.notify.insert(id.to_string());
            self.version += 1;
        }
    }

    // ---- discovery ---------------------------------------------------------------------

    /// The app's serving instances (an app without ports has nothing to
    /// reach, so no endpoints).
    pub fn endpoints(&self, id: &str) -> Vec<Endpoint> {
        let Some(app) = self.apps.get(id) else {
            return Vec::new();
        };
        let mut out: Vec<Endpoint> = app
            .live
            .iter()
            .filter(|i| app.is_ready(i) && !i.ports.is_empty())
            .map(|i| Endpoint {
                task_id: i.task_id.clone(),
                host: if i.agent.address.is_empty() {
                    i.agent.hostname.clone()
                } else {
                    i.agent.address.clone()
                },
                port: i.ports.first().copied().unwrap_or(0),
                ports: i.ports.clone(),
                agent_id: i.agent.agent_id.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        out
    }

    /// Events for what changed since the last call.
    pub fn take_events(&mut self) -> Vec<ServiceEvent> {
        let mut events = Vec::new();
        for id in std::mem::take(&mut self.notify) {
            let Some(app) = self.apps.get(&id) else {
                if self.endpoints_seen.remove(&id).is_some() {
                    events.push(ServiceEvent::Endpoints {
                        app: id.clone(),
                        service_port: None,
                        endpoints: Vec::new(),
                    });
                }
                self.deployments_seen.remove(&id);
                events.push(ServiceEvent::Removed { app: id });
                continue;
            };
            if let Some(d) = app.deployments.last() {
                let key = (d.id, d.state, d.steps.len());
                if self.deployments_seen.get(&id) != Some(&key) {
                    self.deployments_seen.insert(id.clone(), key);
                    events.push(ServiceEvent::Deployment {
                        app: id.clone(),
                        id: d.id,
                        kind: d.kind,
                        state: d.state,
                        to_version: d.to_version,
                        message: d.message.clone(),
                    });
                }
            }
            let service_port = app.spec().service.as_ref().map(|s| s.port);
            let endpoints = self.endpoints(&id);
            if self.endpoints_seen.get(&id) != Some(&endpoints) {
                self.endpoints_seen.insert(id.clone(), endpoints.clone());
                events.push(ServiceEvent::Endpoints {
                    app: id,
                    service_port,
                    endpoints,
                });
            }
        }
        events
    }

    /// Whether any app wants launches now (offers are wanted).
    pub fn wants_offers(&self, now: Millis) -> bool {
        !self.demand(now).is_empty()
    }

    /// The instances apps want launched now (not backing off), for the
    /// master's demand policy to size offers to.
    pub fn demand(&self, now: Millis) -> agora_sdk::Demand {
        let mut demand = agora_sdk::Demand::default();
        for app in self.apps.values().filter(|a| now >= a.backoff.delay_until) {
            let launch = plan::plan(app).launch;
            if launch > 0 {
                demand.add(&placement::needs(app.spec()), launch);
            }
        }
        demand
    }
}

fn app_grace(versions: &[Version], version: u32) -> Millis {
    versions
        .iter()
        .find(|v| v.number == version)
        .map_or(0, |v| v.spec.kill_grace_period_ms)
}
