//! Placement helpers: the resources an instance needs, the task it becomes,
//! and an offer being filled (constraints, best-fit scoring).

use agora_sdk::placement::{AgentAttributes, check_all};
use agora_sdk::{Offer, Resources, TaskInfo, v1};

use crate::model::Run;
use crate::spec::JobSpec;

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
    info.stop_when_master_lost = spec.stop_when_master_lost;
    info.user = spec.user.clone();
    info.volumes = agora_sdk::spec::Volume::to_proto(&spec.volumes);
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

/// Where this run's live instances are, for the constraints of the next.
pub(super) fn occupied(run: &Run) -> Vec<AgentAttributes> {
    run.instances
        .iter()
        .filter(|i| i.state.has_task())
        .filter_map(|i| i.current())
        .map(|a| AgentAttributes {
            agent_id: a.agent_id.clone(),
            hostname: a.hostname.clone(),
            attributes: a.attributes.clone(),
            ..Default::default()
        })
        .collect()
}

/// An offer being filled.
pub(super) struct Slot {
    pub(super) offer_id: String,
    pub(super) agent: AgentAttributes,
    /// What is still free in the offer.
    pub(super) free: Resources,
    /// Tasks placed on it so far, and their encoded size.
    pub(super) tasks: Vec<TaskInfo>,
    pub(super) bytes: usize,
    /// Nothing more fits: skipped for the rest of the pass.
    pub(super) exhausted: bool,
}

impl Slot {
    pub(super) fn new(offer: &Offer) -> Slot {
        Slot {
            offer_id: agora_sdk::offer_id(offer).to_string(),
            agent: AgentAttributes::of(offer),
            free: agora_sdk::offer_resources(offer),
            tasks: Vec::new(),
            bytes: 0,
            exhausted: false,
        }
    }

    /// Whether this agent satisfies the spec's constraints, given where the
    /// run's other instances are (`placed`: live ones and this pass's).
    pub(super) fn admits(&self, spec: &JobSpec, placed: &[&AgentAttributes]) -> bool {
        check_all(&spec.constraints, &self.agent, placed).is_ok()
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
