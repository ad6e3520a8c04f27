//! The allocator: decides which framework is offered which agent's free
//! resources. Pure and synchronous — no I/O, no clock of its own (callers
//! pass `now` in milliseconds), no randomness — so the same events give the
//! same offers in the master, the simulator and the benchmarks.
//!
//! The policy is hierarchical Dominant Resource Fairness, as in Mesos's
//! `HierarchicalDRFAllocator`: roles are ordered by weighted dominant share,
//! the frameworks of a role by their own dominant share, and each agent's free
//! resources go whole to the first framework in that order that wants them
//! (active, not suppressed, no refusal filter on the agent).
//!
//! Performance shape: a pass that offers nothing (every framework filtered
//! every agent, Mesos's "DeclineOffers" benchmark) costs one bitset test per
//! agent — a word-wise `eligible & !applying` over the framework slots —
//! because which filters apply is recomputed only for agents whose free
//! resources changed.

use std::collections::{BTreeSet, HashMap};

pub use agora_proto::Demand;
use agora_proto::Resources;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Resources the allocator hands to one framework on one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub framework: String,
    pub agent: String,
    pub resources: Resources,
}

/// How a pass spreads free resources over frameworks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OfferPolicy {
    /// Mesos's: each free agent goes whole to the framework furthest below
    /// its share, offers counting as allocations. A framework that is slow
    /// to decide can hold most of the cluster's free resources in offers
    /// while others wait (Omega, EuroSys 2013, §3.2).
    Mesos,
    /// Agora's: the same DRF order, but a framework's outstanding offers may
    /// hold at most this share (dominant, by cpus and memory) of what is free
    /// or on offer; one offer is always allowed. The rest goes to the next
    /// framework in DRF order, so a slow decider cannot lock the cluster.
    Capped { max_offered_share: f64 },
    /// Agora's: offers sized to demand, within a fair part. A framework
    /// that has said what it still wants placed ([`Demand`]) is offered
    /// agents, in DRF order, only until its outstanding offers hold twice
    /// that demand over at least as many agents as it has tasks — so offers
    /// scale with the work to place, not with the free agents. And with n
    /// frameworks connected, none holds more than 1/n of what is free or on
    /// offer (one offer is always allowed, and so is anything that keeps
    /// it within 1/n of the whole cluster; alone, a framework may hold
    /// everything) — so a slow framework with a backlog cannot lock the
    /// cluster. A framework that has said nothing is bounded by the fair
    /// part only.
    Demand,
}

/// How much more than its demand a framework may hold in offers: room to
/// choose (constraints, spreading, best fit) without taking the cluster.
pub const DEMAND_SLACK: f64 = 2.0;

impl OfferPolicy {
    /// `mesos`, `capped` (half), or `capped:0.3`.
    pub fn parse(text: &str) -> Result<OfferPolicy, String> {
        match text.trim() {
            "mesos" => Ok(OfferPolicy::Mesos),
            "demand" => Ok(OfferPolicy::Demand),
            "capped" => Ok(OfferPolicy::Capped {
                max_offered_share: 0.5,
            }),
            other => match other.strip_prefix("capped:").map(str::parse::<f64>) {
                Some(Ok(x)) if x > 0.0 && x <= 1.0 => Ok(OfferPolicy::Capped {
                    max_offered_share: x,
                }),
                _ => Err(format!(
                    "`{other}` is not an offer policy (demand, mesos, capped, or capped:SHARE with 0 < SHARE <= 1)"
                )),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            OfferPolicy::Mesos => "mesos".into(),
            OfferPolicy::Capped { max_offered_share } => format!("capped:{max_offered_share}"),
            OfferPolicy::Demand => "demand".into(),
        }
    }
}

/// An allocation policy. The master drives it with events and asks for a
/// pass with [`Allocator::allocate`]; allocated resources count against a
/// framework until they are [`recovered`](Allocator::recover).
pub trait Allocator: Send {
    /// Adds an agent with its total resources and what frameworks already use
    /// on it (an agent that re-registers with running tasks).
    fn add_agent(&mut self, agent: &str, total: Resources, used: &[(String, Resources)]);
    /// Removes an agent and everything allocated on it.
    fn remove_agent(&mut self, agent: &str);
    /// Adds a framework in `role` (inactive frameworks get no offers).
    fn add_framework(&mut self, framework: &str, role: &str, active: bool);
    /// Removes a framework; its allocations are released.
    fn remove_framework(&mut self, framework: &str);
    /// Marks a framework connected (offers resume) or disconnected.
    fn set_framework_active(&mut self, framework: &str, active: bool);
    /// Stops offers to a framework until it revives.
    fn suppress(&mut self, framework: &str);
    /// Resumes offers to a framework and clears its refusal filters.
    fn revive(&mut self, framework: &str);
    /// Sets a role's weight (default 1).
    fn set_weight(&mut self, role: &str, weight: f64);
    /// Records resources as allocated without a pass (tasks found running).
    fn allocate_used(&mut self, framework: &str, agent: &str, resources: &Resources);
    /// Returns resources to the pool; with `refuse_until`, the framework is
    /// not offered that agent again before then.
    fn recover(
        &mut self,
        framework: &str,
        agent: &str,
        resources: &Resources,
        refuse_until: Option<Millis>,
    );
    /// One allocation pass over every agent at time `now`.
    fn allocate(&mut self, now: Millis) -> Vec<Allocation>;
    /// A pass over what changed since the last pass (agents with more free,
    /// new agents; everything after a framework became eligible). Refusal
    /// filters that merely expired wait for the next full pass.
    fn allocate_changed(&mut self, now: Millis) -> Vec<Allocation> {
        self.allocate(now)
    }
    /// Stops (or resumes) offering an agent's free resources, keeping what
    /// runs there accounted for (an agent being drained).
    fn set_agent_active(&mut self, agent: &str, active: bool);
    /// Every role with its weight, allocation and DRF share.
    fn roles(&self) -> Vec<RoleShare>;
    /// An offer of `offered` on `agent` to `framework` is over (accepted,
    /// declined or rescinded): what of it was used stays allocated, the rest
    /// comes back through [`Allocator::recover`].
    fn offer_ended(&mut self, framework: &str, agent: &str, offered: &Resources) {
        let _ = (framework, agent, offered);
    }
    /// What a framework still wants placed (`None`: it has not said, and is
    /// offered as much as the policy gives anyone). Policies that do not
    /// size offers ignore it.
    fn set_demand(&mut self, framework: &str, demand: Option<Demand>) {
        let _ = (framework, demand);
    }
}

/// A role as the allocator sees it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoleShare {
    pub role: String,
    pub weight: f64,
    /// Scalars held by the role's frameworks (offered or in use).
    pub allocated: Resources,
    /// The largest fraction of any resource the role holds.
    pub dominant_share: f64,
    /// `dominant_share / weight`: what DRF orders roles by.
    pub weighted_share: f64,
    pub frameworks: usize,
}

/// `f64` with a total order, for share keys.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct AgentSlot {
    id: String,
    total: Resources,
    available: Resources,
    /// Allocated resources by framework slot.
    allocated: HashMap<usize, Resources>,
    filters: RefusalFilters,
    /// Bit per framework slot holding an offer on this agent: under the
    /// demand policy what is freed here meanwhile is not offered to it again
    /// until that offer ends, so it gets one offer of everything rather than
    /// a crumb per task ended.
    offered_to: Vec<u64>,
    /// Offered at all (false while the agent is drained).
    active: bool,
}

/// One framework's refusal of an agent.
struct Refusal {
    framework: usize,
    expiry: Millis,
    /// Index into [`RefusalFilters::refused`].
    refused: usize,
}

/// The refusal filters on one agent, with Mesos's semantics
/// (`RefusedOfferFilter`): a framework that refused resources R is not
/// offered the agent while what is free there lies within R, until the
/// filter expires. Once more is free (a task ended), the filter no longer
/// applies, so a framework that turned down the crumbs of an agent still
/// hears of it when real room appears.
#[derive(Default)]
struct RefusalFilters {
    entries: Vec<Refusal>,
    /// Refused bags, shared by the refusals that name the same one (after a
    /// round of declines every framework refused the same free resources),
    /// with their use counts.
    refused: Vec<(Resources, usize)>,
    /// Bit per framework slot whose filter applies to the agent's free
    /// resources as of the last [`RefusalFilters::refresh`].
    applying: Vec<u64>,
    /// The free resources or the filters changed since the last refresh.
    stale: bool,
    earliest_expiry: Millis,
}

impl RefusalFilters {
    fn new() -> Self {
        RefusalFilters {
            earliest_expiry: Millis::MAX,
            ..Default::default()
        }
    }

    fn add(&mut self, framework: usize, refused: &Resources, until: Millis) {
        self.remove(framework);
        let index = match self
            .refused
            .iter()
            .position(|(r, n)| *n > 0 && r == refused)
        {
            Some(i) => i,
            None => match self.refused.iter().position(|(_, n)| *n == 0) {
                Some(i) => {
                    self.refused[i].0 = refused.clone();
                    i
                }
                None => {
                    self.refused.push((refused.clone(), 0));
                    self.refused.len() - 1
                }
            },
        };
        self.refused[index].1 += 1;
        self.entries.push(Refusal {
            framework,
            expiry: until,
            refused: index,
        });
        self.earliest_expiry = self.earliest_expiry.min(until);
        self.stale = true;
    }

    fn remove(&mut self, framework: usize) {
        let refused = &mut self.refused;
        let before = self.entries.len();
        self.entries.retain(|e| {
            let keep = e.framework != framework;
            if !keep {
                refused[e.refused].1 -= 1;
            }
            keep
        });
        if self.entries.len() != before {
            set_bit(&mut self.applying, framework, false);
            self.stale = true;
        }
    }

    fn expire(&mut self, now: Millis) {
        if now < self.earliest_expiry {
            return;
        }
        let mut earliest = Millis::MAX;
        let (refused, applying) = (&mut self.refused, &mut self.applying);
        self.entries.retain(|e| {
            if e.expiry <= now {
                refused[e.refused].1 -= 1;
                set_bit(applying, e.framework, false);
                false
            } else {
                earliest = earliest.min(e.expiry);
                true
            }
        });
        self.earliest_expiry = earliest;
    }

    /// Recomputes which filters apply to `available`, if anything changed.
    fn refresh(&mut self, available: &Resources) {
        if !std::mem::take(&mut self.stale) {
            return;
        }
        let covers: Vec<bool> = self
            .refused
            .iter()
            .map(|(r, n)| *n > 0 && r.contains(available))
            .collect();
        self.applying.iter_mut().for_each(|w| *w = 0);
        for e in &self.entries {
            if covers[e.refused] {
                set_bit(&mut self.applying, e.framework, true);
            }
        }
    }
}

struct FrameworkSlot {
    id: String,
    role: usize,
    allocated: Resources,
    /// What its outstanding offers hold (part of `allocated`).
    offered: Resources,
    /// How many offers it holds.
    offers_out: u32,
    demand: Option<Demand>,
    active: bool,
    suppressed: bool,
    share: Share,
}

struct RoleSlot {
    name: String,
    weight: f64,
    allocated: Resources,
    /// The role's frameworks ordered by (share, slot).
    frameworks: BTreeSet<(Share, usize)>,
    share: Share,
}

/// Hierarchical weighted DRF.
#[derive(Default)]
pub struct DrfAllocator {
    agents: Vec<Option<AgentSlot>>,
    agent_index: HashMap<String, usize>,
    free_agent_slots: Vec<usize>,
    frameworks: Vec<Option<FrameworkSlot>>,
    framework_index: HashMap<String, usize>,
    free_framework_slots: Vec<usize>,
    roles: Vec<RoleSlot>,
    role_index: HashMap<String, usize>,
    /// Roles ordered by (weighted share, slot).
    role_order: BTreeSet<(Share, usize)>,
    /// Bit per framework slot that may receive offers.
    eligible: Vec<u64>,
    cluster_total: Resources,
    /// Where the next pass starts, so no agent is always first.
    next_start: usize,
    /// The cluster's totals changed since shares were last computed.
    shares_stale: bool,
    policy: Option<OfferPolicy>,
    /// Agents whose free resources grew since the last pass, each once.
    changed: Vec<usize>,
    changed_mark: Vec<bool>,
    /// A framework became eligible: the next pass must look everywhere.
    everything_changed: bool,
    /// A pass left an agent unoffered because every framework that could
    /// take it held its fill (cap or demand): when offers come back, the
    /// next pass looks everywhere, not only where resources were freed.
    held_back: bool,
    /// Scalars free on active agents, kept as they change: with what the
    /// frameworks hold in offers, the pool a cap divides.
    free: Resources,
}

fn set_bit(bits: &mut Vec<u64>, i: usize, on: bool) {
    let word = i / 64;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    if on {
        bits[word] |= 1 << (i % 64);
    } else {
        bits[word] &= !(1 << (i % 64));
    }
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// See [`DrfAllocator::pass_limits`].
struct PassLimits {
    pool: Resources,
    fair_share: f64,
}

/// Under the demand policy: whether a framework's outstanding offers do not
/// yet cover its demand with slack (always, if it has declared none).
fn wants_more(f: &FrameworkSlot) -> bool {
    let Some(demand) = &f.demand else {
        return true;
    };
    if demand.is_empty() {
        return false;
    }
    f.offers_out < demand.tasks
        || demand
            .resources
            .scalars()
            .any(|(name, amount)| f.offered.scalar(name) < DEMAND_SLACK * amount)
}

/// The largest fraction of `total`'s cpus or memory that `held` and `more`
/// make together.
fn dominant_share(held: &Resources, more: &Resources, total: &Resources) -> f64 {
    ["cpus", "mem"]
        .iter()
        .map(|r| {
            let total = total.scalar(r);
            if total > 0.0 {
                (held.scalar(r) + more.scalar(r)) / total
            } else {
                0.0
            }
        })
        .fold(0.0_f64, f64::max)
}

/// Mesos's minimum allocatable amount: an offer must carry some cpus or memory.
fn worth_offering(r: &Resources) -> bool {
    r.scalar("cpus") >= 0.01 || r.scalar("mem") >= 32.0
}

impl DrfAllocator {
    /// An empty allocator with Mesos's offer policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty allocator with `policy`.
    pub fn with_policy(policy: OfferPolicy) -> Self {
        DrfAllocator {
            policy: Some(policy),
            ..Self::default()
        }
    }

    pub fn policy(&self) -> OfferPolicy {
        self.policy.unwrap_or(OfferPolicy::Mesos)
    }

    fn dominant_share(&self, allocated: &Resources) -> f64 {
        allocated
            .scalars()
            .map(|(name, amount)| {
                let total = self.cluster_total.scalar(name);
                if total > 0.0 { amount / total } else { 0.0 }
            })
            .fold(0.0, f64::max)
    }

    fn role_slot(&mut self, role: &str) -> usize {
        if let Some(&i) = self.role_index.get(role) {
            return i;
        }
        let i = self.roles.len();
        self.roles.push(RoleSlot {
            name: role.to_string(),
            weight: 1.0,
            allocated: Resources::new(),
            frameworks: BTreeSet::new(),
            share: Share(0.0),
        });
        self.role_index.insert(role.to_string(), i);
        self.role_order.insert((Share(0.0), i));
        i
    }

    /// Recomputes one framework's and its role's place in the order.
    fn reorder(&mut self, fw: usize) {
        let Some(f) = self.frameworks[fw].as_ref() else {
            return;
        };
        let (role, old_share) = (f.role, f.share);
        let new_share = Share(self.dominant_share(&f.allocated));
        let r = &mut self.roles[role];
        r.frameworks.remove(&(old_share, fw));
        r.frameworks.insert((new_share, fw));
        if let Some(f) = self.frameworks[fw].as_mut() {
            f.share = new_share;
        }
        self.reorder_role(role);
    }

    fn reorder_role(&mut self, role: usize) {
        let r = &self.roles[role];
        let new_share = Share(self.dominant_share(&r.allocated) / r.weight);
        let old_share = r.share;
        self.role_order.remove(&(old_share, role));
        self.role_order.insert((new_share, role));
        self.roles[role].share = new_share;
    }

    /// Recomputes every share; needed when the cluster's totals change.
    /// Frameworks and roles that hold nothing keep share 0 and are skipped.
    fn reorder_all(&mut self) {
        for fw in 0..self.frameworks.len() {
            if self.frameworks[fw]
                .as_ref()
                .is_some_and(|f| !f.allocated.is_empty())
            {
                self.reorder(fw);
            }
        }
        for role in 0..self.roles.len() {
            if !self.roles[role].allocated.is_empty() {
                self.reorder_role(role);
            }
        }
    }

    fn refresh_eligible(&mut self, fw: usize) {
        let on = self.frameworks[fw]
            .as_ref()
            .is_some_and(|f| f.active && !f.suppressed);
        if on && !bit(&self.eligible, fw) {
            // It may want agents nobody else took: look everywhere.
            self.everything_changed = true;
        }
        set_bit(&mut self.eligible, fw, on);
    }

    fn mark_changed(&mut self, agent: usize) {
        if self.changed_mark.len() <= agent {
            self.changed_mark.resize(agent + 1, false);
        }
        if !self.changed_mark[agent] {
            self.changed_mark[agent] = true;
            self.changed.push(agent);
        }
    }

    fn charge(&mut self, fw: usize, agent: usize, resources: &Resources, add: bool) {
        if !add {
            self.mark_changed(agent);
        }
        let Some(a) = self.agents[agent].as_mut() else {
            return;
        };
        // What is free changed, so which refusals apply may have too.
        a.filters.stale = true;
        let free_before = a.active.then(|| a.available.scalar_part());
        let entry = a.allocated.entry(fw).or_default();
        if add {
            entry.add(resources);
            a.available.subtract(resources);
        } else {
            entry.subtract(resources);
            if entry.is_empty() {
                a.allocated.remove(&fw);
            }
            a.available.add(resources);
            // Never offer more than the agent has (a stale recover).
            if !a.total.contains(&a.available) {
                let mut used = Resources::new();
                for r in a.allocated.values() {
                    used.add(r);
                }
                a.available = a.total.minus(&used);
            }
        }
        if let Some(before) = free_before {
            let after = a.available.scalar_part();
            self.free.subtract(&before);
            self.free.add(&after);
        }
        let Some(f) = self.frameworks[fw].as_mut() else {
            return;
        };
        let role = f.role;
        // Shares are over scalars; ranges do not sum across agents.
        let resources = &resources.scalar_part();
        if add {
            f.allocated.add(resources);
            self.roles[role].allocated.add(resources);
        } else {
            f.allocated.subtract(resources);
            self.roles[role].allocated.subtract(resources);
        }
        self.reorder(fw);
    }

    fn clear_filter(&mut self, agent: usize, fw: usize) {
        if let Some(a) = self.agents[agent].as_mut() {
            a.filters.remove(fw);
        }
    }

    /// Whether `fw` may hold `more` in offers on top of what it holds, out
    /// of `pool` free or on offer (always, under Mesos's policy).
    fn may_hold(&self, fw: usize, more: &Resources, limits: &PassLimits) -> bool {
        let Some(f) = self.frameworks[fw].as_ref() else {
            return false;
        };
        let max_offered_share = match self.policy() {
            OfferPolicy::Mesos => return true,
            OfferPolicy::Demand if !wants_more(f) => return false,
            OfferPolicy::Demand => limits.fair_share,
            OfferPolicy::Capped { max_offered_share } => max_offered_share,
        };
        let pool = &limits.pool;
        if !worth_offering(&f.offered) {
            return true;
        }
        // Never below its fair part of the whole cluster: a framework that
        // holds less (in use and on offer) may be offered more, however
        // much of what is free it holds. Otherwise the slower of two
        // frameworks lost agents to the faster while the cluster filled (5
        // of 7 one-task agents), DRF order notwithstanding.
        if self.policy() == OfferPolicy::Demand
            && dominant_share(&f.allocated, more, &self.cluster_total) <= limits.fair_share + 1e-9
        {
            return true;
        }
        dominant_share(&f.offered, more, pool) <= max_offered_share + 1e-9
    }

    /// The first framework in DRF order that may be offered `agent`
    /// (`held_back` set when one could have been but held its fill).
    fn pick_framework(
        &self,
        agent: &AgentSlot,
        limits: &PassLimits,
        held_back: &mut bool,
    ) -> Option<usize> {
        // Mesos offers what is freed on an agent to a framework that already
        // holds an offer there as a new offer; the demand policy waits for
        // the outstanding one to end and then offers it all at once.
        let coalesce = self.policy() == OfferPolicy::Demand;
        let any = self.eligible.iter().enumerate().any(|(w, e)| {
            let held = if coalesce {
                agent.offered_to.get(w).copied().unwrap_or(0)
            } else {
                0
            };
            e & !agent.filters.applying.get(w).copied().unwrap_or(0) & !held != 0
        });
        if !any {
            return None;
        }
        // Under a cap, a framework over it yields to the next in DRF order;
        // if none may take the agent it stays unoffered until offers come
        // back — free resources wait for whoever is idle rather than pile up
        // with a framework that is still deciding.
        for &(_, role) in &self.role_order {
            for &(_, fw) in &self.roles[role].frameworks {
                if bit(&self.eligible, fw)
                    && !bit(&agent.filters.applying, fw)
                    && !(coalesce && bit(&agent.offered_to, fw))
                {
                    if self.may_hold(fw, &agent.available, limits) {
                        return Some(fw);
                    }
                    *held_back = true;
                }
            }
        }
        None
    }

    /// What bounds the offers of one pass: the pool a cap divides (what is
    /// free on active agents or held in offers) and, under the demand
    /// policy, each framework's fair part of it.
    fn pass_limits(&self) -> PassLimits {
        let mut limits = PassLimits {
            pool: Resources::new(),
            fair_share: 1.0,
        };
        if self.policy() == OfferPolicy::Mesos {
            return limits;
        }
        let mut connected = 0usize;
        // `with_scalar` adds to what is there.
        let mut pool = Resources::new()
            .with_scalar("cpus", self.free.scalar("cpus"))
            .with_scalar("mem", self.free.scalar("mem"));
        for f in self.frameworks.iter().flatten() {
            connected += usize::from(f.active);
            for name in ["cpus", "mem"] {
                pool = pool.with_scalar(name, f.offered.scalar(name));
            }
        }
        limits.pool = pool;
        limits.fair_share = 1.0 / connected.max(1) as f64;
        limits
    }

    /// Under the demand policy: whether every framework that may be offered
    /// anything holds its fill — then a pass can stop, however many agents
    /// are left (its cost follows the offers made, not the cluster's size).
    fn everyone_has_enough(&self) -> bool {
        self.policy() == OfferPolicy::Demand
            && self.frameworks.iter().enumerate().all(|(fw, f)| {
                f.as_ref()
                    .is_none_or(|f| !bit(&self.eligible, fw) || !wants_more(f))
            })
    }

    /// Offers the free resources of `agents` (slot numbers, in order); with
    /// `Some(k)` when it stopped before the `k`th (from 0) because every
    /// framework had enough.
    fn pass(
        &mut self,
        now: Millis,
        agents: impl Iterator<Item = usize>,
    ) -> (Vec<Allocation>, Option<usize>) {
        // Adding or removing agents rescales every share; do it once per pass
        // rather than once per agent (10,000 agents joining is one rescale).
        if std::mem::take(&mut self.shares_stale) {
            self.reorder_all();
        }
        let mut out = Vec::new();
        let mut agents = agents.peekable();
        if agents.peek().is_none() {
            return (out, None);
        }
        let limits = self.pass_limits();
        let mut enough = self.everyone_has_enough();
        for (k, i) in agents.enumerate() {
            if enough {
                // What is left waits until someone wants more.
                self.held_back = true;
                return (out, Some(k));
            }
            let Some(agent) = self.agents.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            agent.filters.expire(now);
            if !agent.active || !worth_offering(&agent.available) {
                continue;
            }
            agent.filters.refresh(&agent.available);
            let Some(agent) = self.agents[i].as_ref() else {
                continue;
            };
            let mut held_back = false;
            let picked = self.pick_framework(agent, &limits, &mut held_back);
            self.held_back |= held_back;
            let Some(fw) = picked else {
                continue;
            };
            let resources = agent.available.clone();
            let agent_id = agent.id.clone();
            self.charge(fw, i, &resources, true);
            if let Some(a) = self.agents[i].as_mut() {
                set_bit(&mut a.offered_to, fw, true);
            }
            if let Some(f) = self.frameworks[fw].as_mut() {
                f.offered.add(&resources.scalar_part());
                f.offers_out += 1;
            }
            if let Some(f) = self.frameworks[fw].as_ref() {
                out.push(Allocation {
                    framework: f.id.clone(),
                    agent: agent_id,
                    resources,
                });
            }
            enough = self.everyone_has_enough();
        }
        (out, None)
    }

    /// The role of a framework, for tests and state views.
    pub fn role_of(&self, framework: &str) -> Option<&str> {
        let fw = *self.framework_index.get(framework)?;
        let f = self.frameworks[fw].as_ref()?;
        Some(self.roles[f.role].name.as_str())
    }

    /// The scalars a framework holds now (offered or in use).
    pub fn allocated_to(&self, framework: &str) -> Resources {
        self.framework_index
            .get(framework)
            .and_then(|&i| self.frameworks[i].as_ref())
            .map(|f| f.allocated.clone())
            .unwrap_or_default()
    }
}

impl Allocator for DrfAllocator {
    fn add_agent(&mut self, agent: &str, total: Resources, used: &[(String, Resources)]) {
        if self.agent_index.contains_key(agent) {
            self.remove_agent(agent);
        }
        self.cluster_total.add(&total);
        let slot = AgentSlot {
            id: agent.to_string(),
            available: total.clone(),
            total,
            allocated: HashMap::new(),
            filters: RefusalFilters::new(),
            offered_to: Vec::new(),
            active: true,
        };
        self.free.add(&slot.available.scalar_part());
        let i = match self.free_agent_slots.pop() {
            Some(i) => {
                self.agents[i] = Some(slot);
                i
            }
            None => {
                self.agents.push(Some(slot));
                self.agents.len() - 1
            }
        };
        self.agent_index.insert(agent.to_string(), i);
        self.mark_changed(i);
        for (framework, resources) in used {
            if let Some(&fw) = self.framework_index.get(framework) {
                self.charge(fw, i, resources, true);
            }
        }
        self.shares_stale = true;
    }

    fn remove_agent(&mut self, agent: &str) {
        let Some(i) = self.agent_index.remove(agent) else {
            return;
        };
        let Some(slot) = self.agents[i].take() else {
            return;
        };
        self.cluster_total.subtract(&slot.total);
        if slot.active {
            self.free.subtract(&slot.available.scalar_part());
        }
        for (fw, resources) in slot.allocated {
            let resources = resources.scalar_part();
            if let Some(f) = self.frameworks[fw].as_mut() {
                f.allocated.subtract(&resources);
                let role = f.role;
                self.roles[role].allocated.subtract(&resources);
                self.reorder(fw);
            }
        }
        self.free_agent_slots.push(i);
        self.shares_stale = true;
    }

    fn add_framework(&mut self, framework: &str, role: &str, active: bool) {
        if let Some(&fw) = self.framework_index.get(framework) {
            // Known already (recovered from an agent): take the real role.
            let new_role = self.role_slot(role);
            if let Some(f) = self.frameworks[fw].as_mut()
                && f.role != new_role
            {
                let (old_role, allocated, share) = (f.role, f.allocated.clone(), f.share);
                f.role = new_role;
                self.roles[old_role].frameworks.remove(&(share, fw));
                self.roles[old_role].allocated.subtract(&allocated);
                self.roles[new_role].allocated.add(&allocated);
                self.roles[new_role].frameworks.insert((share, fw));
                self.reorder_role(old_role);
            }
            self.set_framework_active(framework, active);
            self.reorder(fw);
            return;
        }
        let role = self.role_slot(role);
        let slot = FrameworkSlot {
            id: framework.to_string(),
            role,
            allocated: Resources::new(),
            offered: Resources::new(),
            offers_out: 0,
            demand: None,
            active,
            suppressed: false,
            share: Share(0.0),
        };
        let fw = match self.free_framework_slots.pop() {
            Some(i) => {
                self.frameworks[i] = Some(slot);
                i
            }
            None => {
                self.frameworks.push(Some(slot));
                self.frameworks.len() - 1
            }
        };
        self.framework_index.insert(framework.to_string(), fw);
        self.roles[role].frameworks.insert((Share(0.0), fw));
        self.refresh_eligible(fw);
    }

    fn remove_framework(&mut self, framework: &str) {
        let Some(fw) = self.framework_index.remove(framework) else {
            return;
        };
        for agent in 0..self.agents.len() {
            let held = self.agents[agent]
                .as_ref()
                .and_then(|a| a.allocated.get(&fw).cloned());
            if let Some(resources) = held {
                self.charge(fw, agent, &resources, false);
            }
            self.clear_filter(agent, fw);
            // The slot may be reused by another framework.
            if let Some(a) = self.agents[agent].as_mut() {
                set_bit(&mut a.offered_to, fw, false);
            }
        }
        if let Some(f) = self.frameworks[fw].take() {
            self.roles[f.role].frameworks.remove(&(f.share, fw));
            self.reorder_role(f.role);
        }
        set_bit(&mut self.eligible, fw, false);
        self.free_framework_slots.push(fw);
    }

    fn set_framework_active(&mut self, framework: &str, active: bool) {
        let Some(&fw) = self.framework_index.get(framework) else {
            return;
        };
        if let Some(f) = self.frameworks[fw].as_mut() {
            f.active = active;
        }
        self.refresh_eligible(fw);
    }

    fn suppress(&mut self, framework: &str) {
        let Some(&fw) = self.framework_index.get(framework) else {
            return;
        };
        if let Some(f) = self.frameworks[fw].as_mut() {
            f.suppressed = true;
        }
        self.refresh_eligible(fw);
    }

    fn revive(&mut self, framework: &str) {
        let Some(&fw) = self.framework_index.get(framework) else {
            return;
        };
        if let Some(f) = self.frameworks[fw].as_mut() {
            f.suppressed = false;
        }
        for agent in 0..self.agents.len() {
            self.clear_filter(agent, fw);
        }
        // Its cleared filters may open agents it was kept from.
        self.everything_changed = true;
        self.refresh_eligible(fw);
    }

    fn set_weight(&mut self, role: &str, weight: f64) {
        let role = self.role_slot(role);
        self.roles[role].weight = if weight > 0.0 { weight } else { 1.0 };
        self.reorder_role(role);
    }

    fn allocate_used(&mut self, framework: &str, agent: &str, resources: &Resources) {
        let (Some(&fw), Some(&a)) = (
            self.framework_index.get(framework),
            self.agent_index.get(agent),
        ) else {
            return;
        };
        self.charge(fw, a, resources, true);
    }

    fn recover(
        &mut self,
        framework: &str,
        agent: &str,
        resources: &Resources,
        refuse_until: Option<Millis>,
    ) {
        let Some(&a) = self.agent_index.get(agent) else {
            return;
        };
        let Some(&fw) = self.framework_index.get(framework) else {
            // The framework is gone; its share went with it.
            if let Some(slot) = self.agents[a].as_mut() {
                slot.available.add(resources);
                if slot.active {
                    self.free.add(&resources.scalar_part());
                }
            }
            return;
        };
        self.charge(fw, a, resources, false);
        if let (Some(until), Some(slot)) = (refuse_until, self.agents[a].as_mut()) {
            slot.filters.add(fw, resources, until);
        }
    }

    fn set_agent_active(&mut self, agent: &str, active: bool) {
        if let Some(slot) = self
            .agent_index
            .get(agent)
            .and_then(|&i| self.agents[i].as_mut())
            && slot.active != active
        {
            slot.active = active;
            let available = slot.available.scalar_part();
            if active {
                self.free.add(&available);
            } else {
                self.free.subtract(&available);
            }
        }
        if active && let Some(&i) = self.agent_index.get(agent) {
            self.mark_changed(i);
        }
    }

    fn offer_ended(&mut self, framework: &str, agent: &str, offered: &Resources) {
        let Some(&fw) = self.framework_index.get(framework) else {
            return;
        };
        if let Some(a) = self
            .agent_index
            .get(agent)
            .and_then(|&i| self.agents[i].as_mut())
        {
            set_bit(&mut a.offered_to, fw, false);
        }
        if let Some(f) = self.frameworks[fw].as_mut() {
            f.offered = f.offered.minus(&offered.scalar_part());
            f.offers_out = f.offers_out.saturating_sub(1);
            if std::mem::take(&mut self.held_back) {
                self.everything_changed = true;
            }
        }
    }

    fn set_demand(&mut self, framework: &str, demand: Option<Demand>) {
        let Some(f) = self
            .framework_index
            .get(framework)
            .and_then(|&i| self.frameworks[i].as_mut())
        else {
            return;
        };
        let grew = match (&f.demand, &demand) {
            (Some(old), Some(new)) => {
                new.tasks > old.tasks || !old.resources.contains(&new.resources)
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        f.demand = demand;
        // It may now want agents a pass left alone.
        if grew && self.policy() == OfferPolicy::Demand {
            self.everything_changed = true;
        }
    }

    fn roles(&self) -> Vec<RoleShare> {
        let mut out: Vec<RoleShare> = self
            .roles
            .iter()
            .map(|r| {
                let dominant = self.dominant_share(&r.allocated);
                RoleShare {
                    role: r.name.clone(),
                    weight: r.weight,
                    allocated: r.allocated.clone(),
                    dominant_share: dominant,
                    weighted_share: dominant / r.weight,
                    frameworks: r.frameworks.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.role.cmp(&b.role));
        out
    }

    fn allocate(&mut self, now: Millis) -> Vec<Allocation> {
        self.everything_changed = false;
        for i in std::mem::take(&mut self.changed) {
            if let Some(m) = self.changed_mark.get_mut(i) {
                *m = false;
            }
        }
        let n = self.agents.len();
        let start = if n == 0 { 0 } else { self.next_start % n };
        // Every agent once, from `start` round; not collected, as a pass
        // that stops early (most do, under the demand policy) would have
        // paid for the whole cluster's list.
        let order = (0..n).map(|k| (start + k) % n);
        let (out, stopped) = self.pass(now, order);
        // A pass that stopped early resumes there, so passes go round the
        // cluster instead of rescanning its start; one that went all the
        // way round starts one further next time.
        self.next_start = match stopped {
            Some(k) => (start + k) % n,
            None => self.next_start.wrapping_add(1),
        };
        out
    }

    fn allocate_changed(&mut self, now: Millis) -> Vec<Allocation> {
        if self.everything_changed {
            return self.allocate(now);
        }
        let changed = std::mem::take(&mut self.changed);
        for &i in &changed {
            if let Some(m) = self.changed_mark.get_mut(i) {
                *m = false;
            }
        }
        let (out, stopped) = self.pass(now, changed.iter().copied());
        if let Some(k) = stopped {
            for &i in &changed[k..] {
                self.mark_changed(i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_resources() -> Resources {
        Resources::parse("cpus:4;mem:4096;disk:1000;ports:[31000-31099]").expect("valid")
    }

    fn task() -> Resources {
        Resources::new()
            .with_scalar("cpus", 1.0)
            .with_scalar("mem", 256.0)
    }

    /// Every framework takes one task from each offer and returns the rest
    /// (refuse 0), as a hungry framework that launches one task per offer
    /// does. Runs passes until nothing more is offered; returns tasks per
    /// framework.
    /// An offer ends with `back` of it returned (refused until `refuse`).
    fn end(alloc: &mut DrfAllocator, offer: &Allocation, back: &Resources, refuse: Option<u64>) {
        alloc.offer_ended(&offer.framework, &offer.agent, &offer.resources);
        alloc.recover(&offer.framework, &offer.agent, back, refuse);
    }

    fn run_hungry(alloc: &mut DrfAllocator, frameworks: &[&str]) -> HashMap<String, u32> {
        let mut launched: HashMap<String, u32> =
            frameworks.iter().map(|f| (f.to_string(), 0)).collect();
        for pass in 0..10_000 {
            let offers = alloc.allocate(pass);
            if offers.is_empty() {
                break;
            }
            for offer in offers {
                if offer.resources.contains(&task()) {
                    *launched.entry(offer.framework.clone()).or_default() += 1;
                    let rest = offer.resources.minus(&task());
                    end(alloc, &offer, &rest, None);
                } else {
                    // Too small for a task: refuse it for a long time.
                    end(alloc, &offer, &offer.resources, Some(u64::MAX));
                }
            }
        }
        launched
    }

    #[test]
    fn two_hungry_frameworks_of_equal_weight_end_within_one_task() {
        let mut alloc = DrfAllocator::new();
        for a in 0..5 {
            alloc.add_agent(&format!("a{a}"), agent_resources(), &[]);
        }
        alloc.add_framework("f1", "web", true);
        alloc.add_framework("f2", "web", true);
        let launched = run_hungry(&mut alloc, &["f1", "f2"]);
        let (f1, f2) = (launched["f1"], launched["f2"]);
        assert_eq!(f1 + f2, 20, "the cluster fills up: {launched:?}");
        assert!(f1.abs_diff(f2) <= 1, "DRF split {f1} vs {f2}");
    }

    #[test]
    fn a_weight_two_role_gets_twice_the_share() {
        let mut alloc = DrfAllocator::new();
        for a in 0..6 {
            alloc.add_agent(&format!("a{a}"), agent_resources(), &[]);
        }
        alloc.set_weight("prod", 2.0);
        alloc.add_framework("p", "prod", true);
        alloc.add_framework("d", "dev", true);
        let launched = run_hungry(&mut alloc, &["p", "d"]);
        let (p, d) = (launched["p"], launched["d"]);
        assert_eq!(p + d, 24);
        assert!(p.abs_diff(2 * d) <= 2, "weighted split {p} vs {d}");
    }

    #[test]
    fn frameworks_within_a_role_share_the_role_by_drf() {
        let mut alloc = DrfAllocator::new();
        for a in 0..6 {
            alloc.add_agent(&format!("a{a}"), agent_resources(), &[]);
        }
        alloc.add_framework("p1", "prod", true);
        alloc.add_framework("p2", "prod", true);
        alloc.add_framework("d", "dev", true);
        let launched = run_hungry(&mut alloc, &["p1", "p2", "d"]);
        // Roles split 12/12, the prod role's frameworks split its half.
        assert!(launched["d"].abs_diff(12) <= 1, "{launched:?}");
        assert!(launched["p1"].abs_diff(launched["p2"]) <= 1, "{launched:?}");
    }

    #[test]
    fn a_refusal_filter_keeps_the_agent_from_that_framework_until_it_expires() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a", agent_resources(), &[]);
        alloc.add_framework("f1", "r", true);
        alloc.add_framework("f2", "r", true);
        let first = alloc.allocate(0);
        assert_eq!(first.len(), 1);
        let (taker, other) = if first[0].framework == "f1" {
            ("f1", "f2")
        } else {
            ("f2", "f1")
        };
        end(&mut alloc, &first[0], &first[0].resources, Some(5_000));
        let second = alloc.allocate(1);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].framework, other, "the other framework gets it");
        end(&mut alloc, &second[0], &second[0].resources, Some(10_000));
        assert!(alloc.allocate(4_999).is_empty(), "both filtered");
        let third = alloc.allocate(5_000);
        assert_eq!(third.len(), 1);
        assert_eq!(
            third[0].framework, taker,
            "offered again once the filter expired"
        );
    }

    #[test]
    fn a_refusal_lapses_when_more_than_was_refused_becomes_free() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a", agent_resources(), &[]);
        alloc.add_framework("f", "r", true);
        let offer = alloc.allocate(0).remove(0);
        // Take most of the agent, refuse the crumbs for a long time.
        let used = Resources::new()
            .with_scalar("cpus", 3.5)
            .with_scalar("mem", 3000.0);
        end(
            &mut alloc,
            &offer,
            &offer.resources.minus(&used),
            Some(u64::MAX),
        );
        assert!(alloc.allocate(1).is_empty(), "the crumbs stay refused");
        // A task ends: more is free than was refused, so the agent is offered.
        alloc.recover("f", "a", &used, None);
        let again = alloc.allocate(2);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].resources, agent_resources());
    }

    #[test]
    fn an_inactive_agent_is_not_offered_and_roles_report_their_shares() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a", agent_resources(), &[]);
        alloc.add_agent("b", agent_resources(), &[]);
        alloc.set_weight("web", 2.0);
        alloc.add_framework("f", "web", true);
        alloc.set_agent_active("a", false);
        let offers = alloc.allocate(0);
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].agent, "b");
        let roles = alloc.roles();
        let web = roles.iter().find(|r| r.role == "web").expect("web role");
        assert_eq!(web.weight, 2.0);
        assert!((web.dominant_share - 0.5).abs() < 1e-9, "{web:?}");
        assert!((web.weighted_share - 0.25).abs() < 1e-9);
        assert_eq!(web.frameworks, 1);
        end(&mut alloc, &offers[0], &agent_resources(), None);
        alloc.set_agent_active("a", true);
        assert_eq!(alloc.allocate(1).len(), 2);
    }

    #[test]
    fn suppress_stops_offers_and_revive_clears_filters() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a", agent_resources(), &[]);
        alloc.add_framework("f", "r", true);
        let offer = alloc.allocate(0).remove(0);
        end(&mut alloc, &offer, &offer.resources, Some(u64::MAX));
        assert!(alloc.allocate(1).is_empty());
        alloc.revive("f");
        let offer = alloc.allocate(2).remove(0);
        end(&mut alloc, &offer, &offer.resources, None);
        alloc.suppress("f");
        assert!(alloc.allocate(3).is_empty());
        alloc.revive("f");
        assert_eq!(alloc.allocate(4).len(), 1);
    }

    #[test]
    fn inactive_frameworks_get_nothing_and_removed_agents_free_shares() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a", agent_resources(), &[]);
        alloc.add_agent("b", agent_resources(), &[]);
        alloc.add_framework("f", "r", false);
        assert!(alloc.allocate(0).is_empty());
        alloc.set_framework_active("f", true);
        assert_eq!(alloc.allocate(1).len(), 2);
        alloc.remove_agent("a");
        assert_eq!(alloc.allocated_to("f"), agent_resources().scalar_part());
        alloc.remove_framework("f");
        alloc.add_framework("g", "r", true);
        let offers = alloc.allocate(2);
        assert_eq!(offers.len(), 1, "b's resources came back with f's removal");
        assert_eq!(offers[0].resources, agent_resources());
    }

    #[test]
    fn used_resources_of_a_reregistered_agent_are_not_offered() {
        let mut alloc = DrfAllocator::new();
        alloc.add_framework("f", "r", true);
        let used = task();
        alloc.add_agent("a", agent_resources(), &[("f".to_string(), used.clone())]);
        let offers = alloc.allocate(0);
        assert_eq!(offers[0].resources, agent_resources().minus(&used));
        assert_eq!(alloc.role_of("f"), Some("r"));
    }

    #[test]
    fn same_events_give_same_offers() {
        let run = || {
            let mut alloc = DrfAllocator::new();
            for a in 0..7 {
                alloc.add_agent(&format!("a{a}"), agent_resources(), &[]);
            }
            for f in 0..3 {
                alloc.add_framework(&format!("f{f}"), "r", true);
            }
            let mut log = Vec::new();
            for pass in 0..5 {
                for o in alloc.allocate(pass) {
                    log.push((o.framework.clone(), o.agent.clone()));
                    end(&mut alloc, &o, &task(), None);
                }
            }
            log
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn offer_policies_parse() {
        assert_eq!(OfferPolicy::parse("mesos"), Ok(OfferPolicy::Mesos));
        assert_eq!(
            OfferPolicy::parse("capped:0.25"),
            Ok(OfferPolicy::Capped {
                max_offered_share: 0.25
            })
        );
        assert!(OfferPolicy::parse("capped:0").is_err());
        assert_eq!(OfferPolicy::parse("demand"), Ok(OfferPolicy::Demand));
        assert!(OfferPolicy::parse("greedy").is_err());
    }

    /// Ten agents, two frameworks: who is offered what in one pass.
    fn one_pass(policy: OfferPolicy) -> HashMap<String, usize> {
        let mut alloc = DrfAllocator::with_policy(policy);
        for i in 0..10 {
            alloc.add_agent(&format!("a{i}"), agent_resources(), &[]);
        }
        alloc.add_framework("slow", "*", true);
        alloc.add_framework("fast", "*", true);
        let mut count = HashMap::new();
        for a in alloc.allocate(0) {
            *count.entry(a.framework).or_insert(0) += 1;
        }
        count
    }

    #[test]
    fn the_cap_spreads_a_pass_over_frameworks_and_bounds_what_each_holds() {
        // DRF alternates while shares are charged as offers go out...
        let mesos = one_pass(OfferPolicy::Mesos);
        assert_eq!(mesos.values().sum::<usize>(), 10);
        // ...and the cap keeps either from holding more than 30% of it.
        let capped = one_pass(OfferPolicy::Capped {
            max_offered_share: 0.3,
        });
        assert_eq!(capped.values().sum::<usize>(), 6, "three each: {capped:?}");
        let per_framework: Vec<usize> = capped.values().copied().collect();
        assert!(per_framework.iter().all(|n| *n <= 3), "{capped:?}");
        // A lone framework holds at most its share at once; the rest waits
        // for its offers to come back.
        let mut alloc = DrfAllocator::with_policy(OfferPolicy::Capped {
            max_offered_share: 0.2,
        });
        for i in 0..10 {
            alloc.add_agent(&format!("a{i}"), agent_resources(), &[]);
        }
        alloc.add_framework("only", "*", true);
        let first = alloc.allocate(0);
        assert_eq!(first.len(), 2);
        for a in &first {
            alloc.offer_ended("only", &a.agent, &a.resources);
            alloc.recover("only", &a.agent, &a.resources, None);
        }
        assert_eq!(alloc.allocate(1).len(), 2);
    }

    #[test]
    fn a_framework_holding_offers_over_the_cap_yields_to_the_next() {
        let mut alloc = DrfAllocator::with_policy(OfferPolicy::Capped {
            max_offered_share: 0.5,
        });
        for i in 0..4 {
            alloc.add_agent(&format!("a{i}"), agent_resources(), &[]);
        }
        // `slow` runs a lot already (its share is high), `hungry` nothing.
        alloc.add_framework("hungry", "*", true);
        alloc.add_framework("slow", "*", true);
        let first = alloc.allocate(0);
        let to_hungry: Vec<_> = first.iter().filter(|a| a.framework == "hungry").collect();
        let to_slow: Vec<_> = first.iter().filter(|a| a.framework == "slow").collect();
        assert_eq!(to_hungry.len() + to_slow.len(), 4);
        assert!(
            to_hungry.len() <= 2 && to_slow.len() <= 2,
            "neither holds more than half the free pool: {first:?}"
        );
        // Once its offers end, a framework may be offered again.
        for a in &first {
            alloc.offer_ended(&a.framework, &a.agent, &a.resources);
            alloc.recover(&a.framework, &a.agent, &a.resources, None);
        }
        assert_eq!(alloc.allocate(1).len(), 4);
    }

    /// Agents `a0`, `a1`, … under the demand policy.
    fn demand_policy_cluster(agents: usize) -> DrfAllocator {
        let mut alloc = DrfAllocator::with_policy(OfferPolicy::Demand);
        for i in 0..agents {
            alloc.add_agent(&format!("a{i}"), agent_resources(), &[]);
        }
        alloc
    }

    fn demand(tasks: u32) -> Demand {
        let mut resources = Resources::new();
        for _ in 0..tasks {
            resources.add(&task());
        }
        Demand { resources, tasks }
    }

    #[test]
    fn a_full_pass_that_stops_with_everyone_filled_resumes_where_it_stopped() {
        let mut alloc = demand_policy_cluster(10);
        alloc.add_framework("one", "*", true);
        // One task: one agent's offer is its fill, and each pass stops there.
        alloc.set_demand("one", Some(demand(1)));
        let mut offered = Vec::new();
        for now in 0..12 {
            let offers = alloc.allocate(now);
            assert_eq!(offers.len(), 1, "{offers:?}");
            let offer = &offers[0];
            offered.push(offer.agent.clone());
            end(&mut alloc, offer, &offer.resources, None);
        }
        // Round the cluster, not its first agent again and again.
        let expected: Vec<String> = (0..12).map(|i| format!("a{}", i % 10)).collect();
        assert_eq!(offered, expected);
    }

    #[test]
    fn under_the_demand_policy_a_framework_holds_twice_its_demand_and_no_more() {
        let mut alloc = demand_policy_cluster(10);
        alloc.add_framework("sized", "*", true);
        alloc.add_framework("silent", "*", true);
        // Three one-cpu tasks: three agents (one per task; 12 cpus >= 2 x 3).
        alloc.set_demand("sized", Some(demand(3)));
        let offers = alloc.allocate_changed(0);
        let sized: Vec<_> = offers.iter().filter(|a| a.framework == "sized").collect();
        assert_eq!(sized.len(), 3, "{offers:?}");
        // One that said nothing is offered as much as its fair part allows:
        // with two frameworks connected, half of what is free or on offer.
        assert_eq!(offers.len() - sized.len(), 5, "{offers:?}");
        // Alone, a framework that said nothing is offered everything.
        let mut alone = demand_policy_cluster(10);
        alone.add_framework("silent", "*", true);
        assert_eq!(alone.allocate(0).len(), 10);
        // Memory decides here: twice 6 GiB is three agents of 4 GiB.
        let mut alloc = demand_policy_cluster(10);
        alloc.add_framework("big", "*", true);
        let big = Resources::new()
            .with_scalar("cpus", 3.0)
            .with_scalar("mem", 6144.0);
        alloc.set_demand(
            "big",
            Some(Demand {
                resources: big,
                tasks: 3,
            }),
        );
        assert_eq!(alloc.allocate(0).len(), 3);
    }

    #[test]
    fn demand_that_grows_or_offers_that_come_back_open_the_rest_of_the_cluster() {
        let mut alloc = demand_policy_cluster(6);
        alloc.add_framework("f", "*", true);
        alloc.set_demand("f", Some(demand(0)));
        assert!(alloc.allocate(0).is_empty(), "no demand, no offers");
        alloc.set_demand("f", Some(demand(2)));
        let first = alloc.allocate_changed(1);
        assert_eq!(
            first.len(),
            2,
            "grown demand is seen by a changed-only pass"
        );
        assert!(alloc.allocate_changed(2).is_empty(), "its fill is on offer");
        // It declines both for a while (they did not suit it): the next
        // changed-only pass offers agents it has not seen, though nothing
        // was freed on them.
        for a in &first {
            alloc.offer_ended("f", &a.agent, &a.resources);
            alloc.recover("f", &a.agent, &a.resources, Some(1_000));
        }
        let next = alloc.allocate_changed(3);
        assert_eq!(next.len(), 2);
        assert!(
            next.iter()
                .all(|a| first.iter().all(|f| f.agent != a.agent))
        );
        // Forgetting its demand (`None`) offers it everything left.
        alloc.set_demand("f", None);
        assert_eq!(alloc.allocate_changed(4).len(), 2, "the two never offered");
    }

    #[test]
    fn a_slow_framework_that_declares_demand_leaves_the_cluster_to_others() {
        let mut alloc = demand_policy_cluster(20);
        alloc.add_framework("service", "*", true);
        alloc.set_demand("service", Some(demand(4)));
        let held = alloc.allocate(0);
        assert_eq!(held.len(), 4);
        // While it decides, a batch framework arrives and is offered what
        // its fair part (half, with two connected) allows, though it wants
        // more; the rest waits for offers to come back.
        alloc.add_framework("batch", "*", true);
        alloc.set_demand("batch", Some(demand(30)));
        let batch = alloc.allocate_changed(1);
        assert_eq!(batch.len(), 10);
        assert!(batch.iter().all(|a| a.framework == "batch"));
        // A slow framework with a backlog is held to its fair part too.
        let mut alloc = demand_policy_cluster(20);
        alloc.add_framework("service", "*", true);
        alloc.add_framework("batch", "*", true);
        alloc.set_demand("service", Some(demand(1_000)));
        alloc.set_demand("batch", Some(demand(0)));
        assert_eq!(alloc.allocate(0).len(), 10, "half the pool, not all of it");
    }

    #[test]
    fn what_is_freed_under_an_outstanding_offer_waits_for_it_to_end() {
        let mut alloc = DrfAllocator::with_policy(OfferPolicy::Demand);
        alloc.add_framework("f", "*", true);
        // The agent comes with one of f's tasks running.
        alloc.add_agent("a0", agent_resources(), &[("f".to_string(), task())]);
        let first = alloc.allocate(0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resources.scalar("cpus"), 3.0);
        // The task ends while the offer is out.
        alloc.recover("f", "a0", &task(), None);
        assert!(
            alloc.allocate(1).is_empty(),
            "no second, crumb-sized offer on the same agent"
        );
        // Another framework may be offered it meanwhile.
        alloc.add_framework("g", "*", true);
        let to_g = alloc.allocate(2);
        assert_eq!(to_g.len(), 1);
        assert_eq!(to_g[0].framework, "g");
        assert_eq!(to_g[0].resources.scalar("cpus"), 1.0);
        // Once both offers end, everything free is one offer again.
        end(&mut alloc, &first[0], &first[0].resources, None);
        end(&mut alloc, &to_g[0], &to_g[0].resources, Some(100));
        let whole = alloc.allocate(3);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].framework, "f");
        assert_eq!(whole[0].resources.scalar("cpus"), 4.0);
    }

    #[test]
    fn a_pass_over_what_changed_offers_freed_and_new_agents_only() {
        let mut alloc = DrfAllocator::new();
        for i in 0..4 {
            alloc.add_agent(&format!("a{i}"), agent_resources(), &[]);
        }
        alloc.add_framework("f", "*", true);
        let first = alloc.allocate_changed(0);
        assert_eq!(first.len(), 4, "a new framework: everything");
        assert!(alloc.allocate_changed(1).is_empty(), "nothing changed");
        // One agent's offer comes back: only it is offered again.
        let back = &first[2];
        alloc.offer_ended("f", &back.agent, &back.resources);
        alloc.recover("f", &back.agent, &back.resources, None);
        let again = alloc.allocate_changed(2);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].agent, back.agent);
        alloc.add_agent("a9", agent_resources(), &[]);
        let new = alloc.allocate_changed(3);
        assert_eq!(
            new.iter().map(|a| a.agent.as_str()).collect::<Vec<_>>(),
            ["a9"]
        );
        // A declined agent is filtered; the full pass after expiry re-offers it.
        let gone = &new[0];
        alloc.offer_ended("f", &gone.agent, &gone.resources);
        alloc.recover("f", &gone.agent, &gone.resources, Some(10));
        assert!(alloc.allocate_changed(4).is_empty(), "filtered");
        assert!(
            alloc.allocate_changed(11).is_empty(),
            "expiry waits for a full pass"
        );
        assert_eq!(alloc.allocate(11).len(), 1);
    }

    #[test]
    fn two_hungry_frameworks_split_agents_that_arrive_one_by_one_evenly() {
        // Agents joining one at a time while offers are still out, taken in
        // any order (what `spine::two_hungry_frameworks…` meets on a busy
        // machine): each one-task agent goes to whoever holds less,
        // whichever framework answers faster.
        for seed in 1..=2000u64 {
            let mut rng = seed;
            let mut next = move |n: usize| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n as u64) as usize
            };
            let mut alloc = DrfAllocator::with_policy(OfferPolicy::Demand);
            alloc.add_framework("a", "*", true);
            alloc.add_framework("b", "*", true);
            let one = Resources::parse("cpus:1;mem:1024").expect("resources");
            let task = Resources::parse("cpus:1;mem:128").expect("resources");
            let (mut joined, mut out, mut tasks) = (0, Vec::new(), HashMap::new());
            let mut trace = Vec::new();
            let mut now = 0;
            while joined < 7 || !out.is_empty() {
                now += 1;
                if joined < 7 && (out.is_empty() || next(2) == 0) {
                    alloc.add_agent(&format!("agent-{joined}"), one.clone(), &[]);
                    trace.push(format!("join {joined}"));
                    joined += 1;
                } else {
                    let Allocation {
                        framework,
                        agent,
                        resources,
                    } = out.swap_remove(next(out.len()));
                    alloc.offer_ended(&framework, &agent, &resources);
                    let mut unused = resources.clone();
                    unused.subtract(&task);
                    alloc.recover(&framework, &agent, &unused, None);
                    trace.push(format!("{framework} takes {agent}"));
                    *tasks.entry(framework).or_insert(0usize) += 1;
                }
                let mut offers = alloc.allocate_changed(now);
                while !offers.is_empty() {
                    for a in std::mem::take(&mut offers) {
                        trace.push(format!("offer {} to {}", a.agent, a.framework));
                        if a.resources.contains(&task) {
                            out.push(a);
                        } else {
                            // Too little for a task: declined for long, at
                            // once (as the frameworks do, in the same
                            // callback), and what that frees goes round.
                            alloc.offer_ended(&a.framework, &a.agent, &a.resources);
                            alloc.recover(
                                &a.framework,
                                &a.agent,
                                &a.resources,
                                Some(now + 3_600_000),
                            );
                            trace.push(format!("{} declines {}", a.framework, a.agent));
                        }
                    }
                    offers = alloc.allocate_changed(now);
                }
            }
            let (a, b) = (
                tasks.get("a").copied().unwrap_or(0),
                tasks.get("b").copied().unwrap_or(0),
            );
            assert!(
                a + b == 7 && a.abs_diff(b) <= 1,
                "seed {seed}: {a} vs {b}: {trace:?}"
            );
        }
    }
}
