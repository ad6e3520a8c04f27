//! Placing launches on offers: the resources and ports an instance needs,
//! the app's constraints, spreading over agents by default (the agent with
//! the fewest of the app's instances wins, then the tightest fit), and the
//! reasons an app's instances could not be placed, counted over recent
//! offers — the answer to "why is my app waiting?".

use std::collections::BTreeMap;

use agora_sdk::placement::{AgentAttributes, check_all};
use agora_sdk::{Offer, Resources, TaskInfo, v1};
use serde::Serialize;

use super::{Engine, plan};
use crate::model::{App, Instance, InstanceState, Millis};
use crate::spec::{AppSpec, Protocol, port_variable};

/// How long a window of waiting reasons lasts; two are shown.
const WINDOW_MS: Millis = 30_000;

/// What to do with a round of offers.
#[derive(Debug, Default)]
pub struct Placement {
    /// (offer id, tasks) to accept.
    pub launches: Vec<(String, Vec<TaskInfo>)>,
    /// Offers nothing was placed on.
    pub unused: Vec<String>,
}

/// Why an app's instances were not placed, over recent offers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WaitingReasons {
    /// Instances that could not be placed in the latest round.
    pub unplaced: u32,
    /// Offers looked at in the current and previous windows.
    pub offers: u64,
    /// Reason → how many of those offers it ruled out.
    pub reasons: BTreeMap<String, u64>,
    pub since: Millis,
    #[serde(skip)]
    window_start: Millis,
    #[serde(skip)]
    previous: BTreeMap<String, u64>,
    #[serde(skip)]
    previous_offers: u64,
    #[serde(skip)]
    current: BTreeMap<String, u64>,
    #[serde(skip)]
    current_offers: u64,
}

impl WaitingReasons {
    fn record(&mut self, now: Millis, unplaced: u32, reasons: &BTreeMap<String, u64>, offers: u64) {
        if self.since == 0 {
            self.since = now;
            self.window_start = now;
        }
        if now >= self.window_start + WINDOW_MS {
            self.previous = std::mem::take(&mut self.current);
            self.previous_offers = std::mem::take(&mut self.current_offers);
            self.window_start = now;
        }
        self.unplaced = unplaced;
        for (r, n) in reasons {
            *self.current.entry(r.clone()).or_default() += n;
        }
        self.current_offers += offers;
        self.offers = self.previous_offers + self.current_offers;
        self.reasons = self.previous.clone();
        for (r, n) in &self.current {
            *self.reasons.entry(r.clone()).or_default() += n;
        }
    }
}

/// The resources one instance needs (ports are picked per offer).
pub(super) fn needs(spec: &AppSpec) -> Resources {
    let mut r = Resources::new()
        .with_scalar("cpus", spec.cpus)
        .with_scalar("mem", spec.mem);
    if spec.disk > 0.0 {
        r = r.with_scalar("disk", spec.disk);
    }
    r
}

/// An offer being filled.
struct Slot {
    offer_id: String,
    agent: AgentAttributes,
    free: Resources,
    tasks: Vec<TaskInfo>,
}

/// Why `slot` cannot take an instance of `app`, if it cannot.
fn refusal(app: &App, spec: &AppSpec, need: &Resources, slot: &Slot) -> Option<String> {
    for name in ["cpus", "mem", "disk"] {
        let want = need.scalar(name);
        if want > 0.0 && slot.free.scalar(name) + 1e-9 < want {
            return Some(format!("insufficient {name}"));
        }
    }
    if (slot.free.ranges("ports").len() as usize) < spec.ports.len() {
        return Some("insufficient ports".into());
    }
    let placed: Vec<&AgentAttributes> = app
        .live
        .iter()
        .filter(|i| !i.leaving() && i.state != InstanceState::Unreachable)
        .map(|i| &i.agent)
        .collect();
    if let Err(why) = check_all(&spec.constraints, &slot.agent, &placed) {
        // The reason without the agent's own value, so offers group.
        let key = why.split(':').next().unwrap_or(&why).trim().to_string();
        return Some(format!("constraint {key}"));
    }
    None
}

fn task_info(
    app: &App,
    spec: &AppSpec,
    task_id: &str,
    need: &Resources,
    ports: &[u64],
) -> TaskInfo {
    let mut resources = need.clone();
    if !ports.is_empty() {
        let set = agora_sdk::RangeSet::new(ports.iter().map(|p| (*p, *p)));
        resources = resources.with_ranges("ports", set);
    }
    let mut info = agora_sdk::task(task_id, &spec.cmd, &resources);
    info.name = format!("{} v{}", app.id, app.target);
    info.image = spec.image.clone();
    info.user = spec.user.clone();
    info.volumes = agora_sdk::spec::Volume::to_proto(&spec.volumes);
    info.kill_grace_period = spec.kill_grace_period_ms as f64 / 1000.0;
    let mut vars: Vec<v1::environment::Variable> = spec
        .env
        .iter()
        .map(|(name, value)| v1::environment::Variable {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    let mut add =
        |name: String, value: String| vars.push(v1::environment::Variable { name, value });
    add("AGORA_APP".into(), app.id.clone());
    add("AGORA_APP_VERSION".into(), app.target.to_string());
    for (name, port) in spec.ports.iter().zip(ports) {
        add(port_variable(name), port.to_string());
    }
    if let Some(cmd) = info.command.as_mut() {
        cmd.environment = Some(v1::Environment { variables: vars });
    }
    if let Some(check) = &spec.health_check {
        let protocol = match check.protocol {
            Protocol::Http => v1::health_check::Protocol::Http,
            Protocol::Tcp => v1::health_check::Protocol::Tcp,
            Protocol::Command => v1::health_check::Protocol::Command,
        };
        info.health_check = Some(v1::HealthCheck {
            protocol: protocol as i32,
            port_index: check.port_index as u32,
            path: check.path.clone(),
            command: check.command.clone(),
            grace_period_seconds: check.grace_period_ms as f64 / 1000.0,
            interval_seconds: check.interval_ms as f64 / 1000.0,
            timeout_seconds: check.timeout_ms as f64 / 1000.0,
            max_consecutive_failures: check.max_consecutive_failures,
        });
    }
    info
}

impl Engine {
    /// Places the launches every app needs on `offers`.
    pub fn place(&mut self, offers: &[Offer], now: Millis) -> Placement {
        let mut slots: Vec<Slot> = offers
            .iter()
            .map(|o| Slot {
                offer_id: agora_sdk::offer_id(o).to_string(),
                agent: AgentAttributes::of(o),
                free: agora_sdk::offer_resources(o),
                tasks: Vec::new(),
            })
            .collect();
        let ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in ids {
            let Some(app) = self.apps.get(&id) else {
                continue;
            };
            let wanted = plan::plan(app).launch;
            if wanted == 0 {
                self.waiting.remove(&id);
                continue;
            }
            if now < app.backoff.delay_until {
                let mut reasons = BTreeMap::new();
                reasons.insert(
                    format!(
                        "backing off after {} failure(s): {}",
                        app.backoff.failures, app.backoff.last_failure
                    ),
                    slots.len() as u64,
                );
                self.waiting.entry(id.clone()).or_default().record(
                    now,
                    wanted,
                    &reasons,
                    slots.len() as u64,
                );
                continue;
            }
            let mut placed = 0;
            for _ in 0..wanted {
                let Some(app) = self.apps.get(&id) else { break };
                let spec = app.spec().clone();
                let need = needs(&spec);
                // Spread: the agent with fewest of this app's instances,
                // then the tightest fit.
                let count_on = |agent: &str| {
                    app.live
                        .iter()
                        .filter(|i| !i.leaving() && i.agent.agent_id == agent)
                        .count()
                };
                let best = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| refusal(app, &spec, &need, s).is_none())
                    .min_by(|(_, a), (_, b)| {
                        count_on(&a.agent.agent_id)
                            .cmp(&count_on(&b.agent.agent_id))
                            .then(leftover(a, &need).total_cmp(&leftover(b, &need)))
                    })
                    .map(|(i, _)| i);
                let Some(best) = best else { break };
                let slot = &mut slots[best];
                let ports: Vec<u64> = if spec.ports.is_empty() {
                    Vec::new()
                } else {
                    match slot
                        .free
                        .ranges("ports")
                        .take_first(spec.ports.len() as u64)
                    {
                        Some(set) => set.iter().collect(),
                        None => break,
                    }
                };
                let task_id = format!("{}.{}", id.replace('/', "."), self.next_task);
                self.next_task += 1;
                self.meta_dirty = true;
                let info = task_info(app, &spec, &task_id, &need, &ports);
                let used = agora_sdk::Resources::from_proto(&info.resources).unwrap_or_default();
                slot.free = slot.free.minus(&used);
                slot.tasks.push(info);
                let instance = Instance {
                    task_id: task_id.clone(),
                    version: app.target,
                    restart_epoch: app.restart_epoch,
                    agent: slot.agent.clone(),
                    ports,
                    state: InstanceState::Staging,
                    healthy: None,
                    launched_at: now,
                    running_at: None,
                    draining_since: None,
                    kill_sent_at: None,
                    message: String::new(),
                    unknown_since: None,
                    cpu_sample: None,
                    cpu_rate: None,
                };
                let host = slot.agent.hostname.clone();
                if let Some(app) = self.apps.get_mut(&id) {
                    app.live.push(instance);
                    let target = app.target;
                    if let Some(d) = app.active_deployment_mut() {
                        d.step(now, format!("launching {task_id} (v{target}) on {host}"));
                    }
                }
                self.tasks.insert(task_id, id.clone());
                self.counters.tasks_launched += 1;
                placed += 1;
            }
            if placed > 0 {
                self.touch(&id);
            }
            let unplaced = wanted - placed;
            if unplaced == 0 {
                self.waiting.remove(&id);
                continue;
            }
            let Some(app) = self.apps.get(&id) else {
                continue;
            };
            let spec = app.spec().clone();
            let need = needs(&spec);
            let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
            for slot in &slots {
                let why = refusal(app, &spec, &need, slot)
                    .unwrap_or_else(|| "offer used by other instances in the same round".into());
                *reasons.entry(why).or_default() += 1;
            }
            if slots.is_empty() {
                reasons.insert("no offers".into(), 0);
            }
            self.waiting.entry(id.clone()).or_default().record(
                now,
                unplaced,
                &reasons,
                slots.len() as u64,
            );
        }
        let mut placement = Placement::default();
        for slot in slots {
            if slot.tasks.is_empty() {
                placement.unused.push(slot.offer_id);
            } else {
                placement.launches.push((slot.offer_id, slot.tasks));
            }
        }
        placement
    }
}

/// How much of the offer would be left over: the smallest is the
/// tightest fit.
fn leftover(slot: &Slot, need: &Resources) -> f64 {
    ["cpus", "mem"]
        .iter()
        .map(|r| {
            let want = need.scalar(r).max(1e-3);
            (slot.free.scalar(r) - need.scalar(r)) / want
        })
        .sum()
}
