//! Allocation passes and the offers they make: sending, rescinding and
//! returning offered resources to the allocator.

use super::*;

impl Core {
    pub(super) fn allocate(&mut self) {
        self.allocation_needed = false;
        self.last_allocation = Instant::now();
        let pass = std::time::Instant::now();
        let allocations = if std::mem::take(&mut self.full_pass_due) {
            self.allocator.allocate(self.now_ms())
        } else {
            self.allocator.allocate_changed(self.now_ms())
        };
        self.metrics
            .allocation_pass_seconds
            .observe(pass.elapsed().as_secs_f64());
        let mut by_framework: BTreeMap<String, Vec<v1::Offer>> = BTreeMap::new();
        let now = self.now_ms();
        for a in allocations {
            self.reader_checkpoint();
            let (Some(agent), Some(framework)) =
                (self.agents.get(&a.agent), self.frameworks.get(&a.framework))
            else {
                self.allocator
                    .offer_ended(&a.framework, &a.agent, &a.resources);
                self.allocator
                    .recover(&a.framework, &a.agent, &a.resources, None);
                continue;
            };
            if framework.stream.is_none() || agent.status != AgentStatus::Active {
                self.allocator
                    .offer_ended(&a.framework, &a.agent, &a.resources);
                self.allocator
                    .recover(&a.framework, &a.agent, &a.resources, None);
                continue;
            }
            let id = new_id();
            let offer = v1::Offer {
                id: Some(v1::OfferId { value: id.clone() }),
                framework_id: Some(v1::FrameworkId {
                    value: a.framework.clone(),
                }),
                agent_id: Some(v1::AgentId {
                    value: a.agent.clone(),
                }),
                hostname: agent.registered.hostname.clone(),
                resources: a.resources.to_proto(),
                attributes: agent.attributes.clone(),
                address: task_address(&agent.registered.endpoint, &agent.registered.hostname),
            };
            let framework = a.framework.clone();
            self.offers.open(id, a, now, ());
            self.metrics.offers_made += 1;
            by_framework.entry(framework).or_default().push(offer);
        }
        for (framework, offers) in by_framework {
            debug!(framework = %framework, count = offers.len(), "sending offers");
            let ids: Vec<String> = offers
                .iter()
                .filter_map(|o| o.id.as_ref().map(|id| id.value.clone()))
                .collect();
            let event = Event {
                event: Some(event::Event::Offers(event::Offers { offers })),
            };
            let sent = self
                .frameworks
                .get(&framework)
                .and_then(|f| f.stream.as_ref())
                .is_some_and(|(_, tx)| tx.send(event).is_ok());
            if !sent {
                for id in ids {
                    self.take_offer(&id, None);
                }
            }
        }
    }

    /// Removes an offer and returns its resources to the allocator.
    pub(super) fn take_offer(
        &mut self,
        offer_id: &str,
        refuse: Option<Duration>,
    ) -> Option<OpenOffer> {
        let until = refuse.map(|d| self.now_ms().saturating_add(d.as_millis() as Millis));
        let offer = self
            .offers
            .give_back(&offer_id.to_string(), until, self.allocator.as_mut())?;
        self.allocation_needed = true;
        Some(offer)
    }

    pub(super) fn rescind_offer(&mut self, offer_id: &str) {
        let Some(offer) = self.take_offer(offer_id, None) else {
            return;
        };
        self.metrics.offers_rescinded += 1;
        self.send_master_event(
            &offer.framework,
            Event {
                event: Some(event::Event::Rescind(event::Rescind {
                    offer_id: Some(v1::OfferId {
                        value: offer_id.to_string(),
                    }),
                })),
            },
        );
    }

    pub(super) fn rescind_where(&mut self, pred: impl Fn(&OpenOffer) -> bool) {
        for id in self.offers.ids_where(pred) {
            self.rescind_offer(&id);
        }
    }
}

/// Where an agent's tasks are reached: the host of its endpoint URL
/// (`http://10.0.0.5:5051` → `10.0.0.5`), else its hostname.
fn task_address(endpoint: &str, hostname: &str) -> String {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    // `[::1]:5051` or `host:5051`.
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if host.is_empty() {
        hostname.to_string()
    } else {
        host.to_string()
    }
}
