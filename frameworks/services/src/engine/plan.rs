//! The reconcile step of one app: from what runs and what is wanted, how
//! many instances to launch and which to take down — rolling upgrades
//! within the upgrade bounds (Marathon's `minimumHealthCapacity` and
//! `maximumOverCapacity`), scaling, and self-healing, all as one rule.

use crate::model::{App, InstanceState};

/// What one app needs now.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Decision {
    /// New instances of the target version to launch.
    pub launch: u32,
    /// Instances to take out of rotation and kill.
    pub take_down: Vec<String>,
}

pub(crate) fn plan(app: &App) -> Decision {
    let mut decision = Decision::default();
    let want = app.instances as usize;
    // Instances that count: not leaving, not lost with their agent.
    let live: Vec<_> = app
        .live
        .iter()
        .filter(|i| !i.leaving() && i.state != InstanceState::Unreachable)
        .collect();
    let (current, old): (Vec<_>, Vec<_>) = live.iter().partition(|i| app.is_current(i));
    // Instances lost with their agent are replaced; they are told to stop,
    // which reaches them if their agent returns.
    decision.take_down.extend(
        app.live
            .iter()
            .filter(|i| i.state == InstanceState::Unreachable && !i.leaving())
            .map(|i| i.task_id.clone()),
    );
    if app.paused().is_some() {
        // A failed deployment stopped here: nothing moves until the user
        // deploys or rolls back — but extra current instances still go.
        if current.len() > want {
            decision
                .take_down
                .extend(surplus(app, &current, current.len() - want));
        }
        return decision;
    }
    let upgrade = &app.spec().upgrade;
    let min_healthy = (want as f64 * upgrade.minimum_health_capacity).ceil() as usize;
    let mut max_total = want + (want as f64 * upgrade.maximum_over_capacity).floor() as usize;
    if !old.is_empty() && max_total == want && min_healthy >= want {
        // Neither room for an extra instance nor one to spare: one extra
        // keeps the deployment moving (Marathon refuses such bounds).
        max_total = want + 1;
    }
    let ready_total = live.iter().filter(|i| app.is_ready(i)).count();

    // Launch new instances up to the wanted number, within the room above.
    if current.len() < want {
        let room = max_total.saturating_sub(live.len());
        let room = if old.is_empty() { want } else { room };
        decision.launch = (want - current.len()).min(room) as u32;
    }

    // Old instances go once they are not needed for capacity: unready ones
    // at once, ready ones while enough others stay ready.
    if !old.is_empty() {
        let current_ready = current.iter().filter(|i| app.is_ready(i)).count();
        let mut spare_ready = ready_total.saturating_sub(min_healthy);
        let all_new_ready = current.len() >= want && current_ready >= want;
        let mut ordered: Vec<_> = old.clone();
        // Unready first, then the oldest.
        ordered.sort_by_key(|i| (app.is_ready(i), i.launched_at));
        for i in ordered {
            if !app.is_ready(i) {
                decision.take_down.push(i.task_id.clone());
            } else if all_new_ready || spare_ready > 0 {
                spare_ready = spare_ready.saturating_sub(1);
                decision.take_down.push(i.task_id.clone());
            }
        }
    }

    // More current instances than wanted (scaled down, or a lost one came
    // back): the surplus goes.
    if current.len() > want {
        let extra = surplus(app, &current, current.len() - want);
        decision.take_down.extend(extra);
    }
    decision
}

/// `n` instances to let go: unready first, then the youngest.
fn surplus(app: &App, instances: &[&&crate::model::Instance], n: usize) -> Vec<String> {
    let mut ordered: Vec<_> = instances.to_vec();
    ordered.sort_by_key(|i| (app.is_ready(i), std::cmp::Reverse(i.launched_at)));
    ordered
        .into_iter()
        .take(n)
        .map(|i| i.task_id.clone())
        .collect()
}
