//! Placement helpers: the resources an instance needs, the task it becomes,
//! and an offer being filled (constraints, best-fit scoring).

use agora_sdk::{Offer, Resources, TaskInfo, v1};

use crate::model::Run;
use crate::spec::{JobSpec, Operator};

/// The resources one instance of `spec` takes.
pub(super) fn needs(spec: &JobSpec) -> Resources {
    let mut r = Resources::new()
        .with_scalar("cpus", spec.cpus)
        .with_scalar("mem", spec.mem);
    if spec.disk > 0.0 {
        r = r.with_scalar("disk", spec.disk);
    }
    r
}

pub(super) fn task_info(
    spec: &JobSpec,
    task_id: &str,
    run: u32,
    instance: usize,
    attempt: usize,
    need: &Resources,
) -> TaskInfo {
    let mut info = agora_sdk::task(task_id, &spec.cmd, need);
    info.name = format!("{} run {run} instance {instance}", spec.id);
    info.image = spec.image.clone();
    let mut vars: Vec<v1::environment::Variable> = spec
        .env
        .iter()
        .map(|(name, value)| v1::environment::Variable {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    for (name, value) in [
        ("AGORA_JOB", spec.id.clone()),
        ("AGORA_RUN", run.to_string()),
        ("AGORA_INSTANCE", instance.to_string()),
        ("AGORA_ATTEMPT", attempt.to_string()),
    ] {
        vars.push(v1::environment::Variable {
            name: name.into(),
            value,
        });
    }
    if let Some(cmd) = info.command.as_mut() {
        cmd.environment = Some(v1::Environment { variables: vars });
    }
    info
}

/// (agent id, hostname) of this run's live instances, for `UNIQUE`.
pub(super) fn unique_values(run: &Run) -> Vec<(String, String)> {
    run.instances
        .iter()
        .filter(|i| i.state.has_task())
        .filter_map(|i| i.current())
        .map(|a| (a.agent_id.clone(), a.hostname.clone()))
        .collect()
}

/// An offer being filled.
pub(super) struct Slot {
    pub(super) offer_id: String,
    pub(super) agent_id: String,
    pub(super) hostname: String,
    attributes: Vec<(String, String)>,
    /// What is still free in the offer.
    pub(super) free: Resources,
    /// Tasks placed on it so far.
    pub(super) tasks: Vec<TaskInfo>,
    /// Nothing more fits: skipped for the rest of the pass.
    pub(super) exhausted: bool,
}

impl Slot {
    pub(super) fn new(offer: &Offer) -> Slot {
        Slot {
            offer_id: agora_sdk::offer_id(offer).to_string(),
            agent_id: offer
                .agent_id
                .as_ref()
                .map_or(String::new(), |a| a.value.clone()),
            hostname: offer.hostname.clone(),
            attributes: offer
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.text.clone()))
                .collect(),
            free: agora_sdk::offer_resources(offer),
            tasks: Vec::new(),
            exhausted: false,
        }
    }

    pub(super) fn attribute(&self, name: &str) -> Option<String> {
        if name == "hostname" {
            return Some(self.hostname.clone());
        }
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Whether this agent satisfies the spec's constraints. For `UNIQUE`, no
    /// live instance of the same run may share the agent's value (`live` is
    /// (agent id, hostname) of those instances; only `hostname` and agent
    /// identity are known for them, so other attributes are checked within
    /// this pass, against `placed`).
    pub(super) fn admits(
        &self,
        spec: &JobSpec,
        run: u32,
        live: &[(String, String)],
        placed: &[(String, u32, String, Option<String>)],
    ) -> bool {
        spec.constraints.iter().all(|c| {
            let actual = self.attribute(&c.attribute);
            if c.operator != Operator::Unique {
                return c.admits(actual.as_deref());
            }
            let clash_live = c.attribute == "hostname"
                && live
                    .iter()
                    .any(|(agent, host)| *agent == self.agent_id || *host == self.hostname);
            let clash_here = placed.iter().any(|(job, r, attr, value)| {
                *job == spec.id && *r == run && *attr == c.attribute && *value == actual
            });
            !clash_live && !clash_here
        })
    }

    /// How much of the offer would be left over, relative to the need: the
    /// smallest is the tightest fit.
    pub(super) fn leftover(&self, need: &Resources) -> f64 {
        ["cpus", "mem"]
            .iter()
            .map(|r| {
                let want = need.scalar(r).max(1e-3);
                (self.free.scalar(r) - need.scalar(r)) / want
            })
            .sum()
    }
}
