//! Autoscaling from measured cpu use (the Kubernetes HPA rule): wanted =
//! ceil(instances × use / target), within `min..=max`, ignoring changes
//! within 10% of the target; at most one scaling per cool-down, and a
//! scale-down only after use stayed low for a whole cool-down, so it does
//! not flap.

use super::Engine;
use crate::model::{DeploymentKind, Millis};

/// Use within this share of the target changes nothing.
const TOLERANCE: f64 = 0.1;

impl Engine {
    /// The average cpu use of the app's serving instances, as a share of
    /// their requested cpus; `None` until every one has a rate.
    pub fn cpu_use(&self, id: &str) -> Option<f64> {
        let app = self.apps.get(id)?;
        let cpus = app.spec().cpus;
        let ready: Vec<_> = app.live.iter().filter(|i| app.is_ready(i)).collect();
        if ready.is_empty() || cpus <= 0.0 {
            return None;
        }
        let mut total = 0.0;
        for i in &ready {
            total += i.cpu_rate? / cpus;
        }
        Some(total / ready.len() as f64)
    }

    pub(super) fn autoscale(&mut self, id: &str, now: Millis) {
        let Some(app) = self.apps.get(id) else { return };
        let Some(auto) = app.spec().autoscale.clone() else {
            return;
        };
        if app.removing || app.paused().is_some() || app.active_deployment().is_some() {
            return;
        }
        let n = app.instances;
        let clamp = |x: u32| x.clamp(auto.min, auto.max);
        // Outside the bounds (a manual scale): back inside first.
        if clamp(n) != n {
            let _ = self.scale_as(id, clamp(n), DeploymentKind::Autoscale, now);
            return;
        }
        let Some(usage) = self.cpu_use(id) else {
            return;
        };
        let ready = app.live.iter().filter(|i| app.is_ready(i)).count() as u32;
        if ready < n {
            // Not everyone is up yet: their use would be misread.
            return;
        }
        let ratio = usage / auto.target_cpu;
        let desired = clamp((f64::from(n) * ratio).ceil() as u32);
        let cooled = now >= app.last_scaled_at + auto.cooldown_ms;
        let app = match self.apps.get_mut(id) {
            Some(a) => a,
            None => return,
        };
        if ratio < 1.0 - TOLERANCE && desired < n {
            let low_since = *app.low_since.get_or_insert(now);
            if cooled && now >= low_since + auto.cooldown_ms {
                app.last_scaled_at = now;
                app.low_since = None;
                self.counters.autoscale_events += 1;
                let _ = self.scale_as(id, desired, DeploymentKind::Autoscale, now);
                self.note_autoscale(id, usage, auto.target_cpu, now);
            }
            return;
        }
        app.low_since = None;
        if ratio > 1.0 + TOLERANCE && desired > n && cooled {
            app.last_scaled_at = now;
            self.counters.autoscale_events += 1;
            let _ = self.scale_as(id, desired, DeploymentKind::Autoscale, now);
            self.note_autoscale(id, usage, auto.target_cpu, now);
        }
    }

    fn note_autoscale(&mut self, id: &str, usage: f64, target: f64, now: Millis) {
        if let Some(d) = self
            .apps
            .get_mut(id)
            .and_then(|a| a.active_deployment_mut())
        {
            d.step(
                now,
                format!(
                    "autoscale: cpu use {:.0}% of requested, target {:.0}%",
                    usage * 100.0,
                    target * 100.0
                ),
            );
        }
    }
}
