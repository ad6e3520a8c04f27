//! Frameworks: subscription (and failover to a new stream), disconnection
//! and removal.

use super::recovery::{failover_timeout_of, role_of};
use super::*;

impl Core {
    pub(super) fn subscribe(
        &mut self,
        info: v1::FrameworkInfo,
        secret: &str,
        caller: &Caller,
        tx: FrameworkTx,
    ) -> Result<(String, String), Status> {
        let mut info = info;
        match caller {
            Caller::Anonymous => {
                return Err(Status::unauthenticated("subscribing needs a credential"));
            }
            Caller::Principal(p) => {
                if !info.principal.is_empty() && info.principal != p.as_str() {
                    return Err(Status::permission_denied(format!(
                        "framework_info.principal `{}` is not the principal this credential belongs to (`{p}`)",
                        info.principal.escape_debug()
                    )));
                }
                info.principal = p.to_string();
            }
            // Without authentication a claimed principal proves nothing; it
            // must not bind the framework once authentication is on.
            Caller::Anyone => info.principal.clear(),
        }
        if info.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "framework_info.name must not be empty",
            ));
        }
        let max = crate::config::MAX_FAILOVER_TIMEOUT_SECONDS;
        if !(info.failover_timeout.is_finite() && (0.0..=max).contains(&info.failover_timeout)) {
            return Err(Status::invalid_argument(format!(
                "framework_info.failover_timeout must be between 0 and {max} seconds (a year), not {}",
                info.failover_timeout
            )));
        }
        let role = role_of(&info);
        crate::config::validate_role(&role)
            .map_err(|e| Status::invalid_argument(format!("framework_info.role: {e}")))?;
        if !self.allows(caller, Action::RegisterFramework { role: &role }) {
            warn!(principal = caller.name(), %role, "subscription refused by the ACLs");
            return Err(Status::permission_denied(format!(
                "principal `{}` may not register frameworks in role `{role}`",
                caller.name()
            )));
        }
        if !info.webui_url.is_empty()
            && !self.allows(caller, Action::AnnounceWebui { name: &info.name })
        {
            warn!(principal = caller.name(), name = %info.name, "subscription refused by the ACLs: webui_url");
            return Err(Status::permission_denied(format!(
                "principal `{}` may not announce a webui_url for frameworks named `{}`",
                caller.name(),
                info.name.escape_debug()
            )));
        }
        let id = id_or_new(info.id.as_ref().map(|i| i.value.as_str()));
        if let (Some(known), Some(p)) = (self.frameworks.get(&id), caller.principal())
            && !known.info.principal.is_empty()
            && known.info.principal != p.as_str()
        {
            warn!(framework = %id, principal = %p, "subscription refused: the framework belongs to another principal");
            return Err(Status::permission_denied(format!(
                "framework `{id}` belongs to principal `{}`, not `{p}`",
                known.info.principal
            )));
        }
        // A framework id is public (it is in every offer and in the state):
        // taking one back needs the secret issued with it.
        let known = self.frameworks.get(&id).map(|f| f.secret_sha256.as_slice());
        let Some((issued, secret_sha256)) = check_or_issue_secret(known, secret) else {
            warn!(framework = %id, "subscription refused: wrong secret for this framework id");
            return Err(Status::permission_denied(format!(
                "framework `{id}`: the secret does not match the one issued with this id"
            )));
        };
        info.id = Some(v1::FrameworkId { value: id.clone() });
        // Durable before the framework hears its id: a master that fails
        // over must know the framework's role, failover timeout and secret.
        let record = agora_proto::v1::RegistryFramework {
            info: Some(info.clone()),
            disconnected_since: None,
            secret_sha256: secret_sha256.clone(),
        };
        self.registry
            .transaction(|r| r.put_framework(&record))
            .map_err(|e| {
                Status::unavailable(format!("the master could not record the subscription: {e}"))
            })?;
        let stream_id = new_id();
        let relay_token = if self.config.auth.policy().enabled() {
            format!("{}{}", new_id(), new_id()).replace('-', "")
        } else {
            String::new()
        };
        if let Some((_, old)) = self.frameworks.get_mut(&id).and_then(|f| f.stream.take()) {
            let _ = old.send(Event {
                event: Some(event::Event::Error(event::Error {
                    message: "framework failed over to a new subscription".into(),
                })),
            });
        }
        // A new subscription starts from a clean slate of offers.
        self.rescind_where(|o| o.framework == id);
        info!(framework = %id, name = %info.name, role = %role, "framework subscribed");
        self.emit(ClusterEvent::FrameworkAdded {
            framework_id: id.clone(),
            name: info.name.clone(),
            role: role.clone(),
        });
        self.frameworks.insert(
            id.clone(),
            FrameworkEntry {
                backlog: VecDeque::new(),
                backlog_uuids: HashSet::new(),
                offers_paused: false,
                id: id.clone(),
                failover_timeout: failover_timeout_of(&info),
                info,
                role: role.clone(),
                stream: Some((stream_id.clone(), tx.clone())),
                disconnected_at: None,
                secret_sha256,
                relay_token: relay_token.clone(),
            },
        );
        self.allocator.add_framework(&id, &role, true);
        let _ = tx.send(Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: Some(v1::FrameworkId { value: id.clone() }),
                stream_id: stream_id.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat.as_secs_f64(),
                secret: issued.unwrap_or_default(),
                relay_token,
            })),
        });
        self.allocation_needed = true;
        Ok((id, stream_id))
    }

    pub(super) fn framework_closed(&mut self, framework_id: &str, stream_id: &str) {
        let Some(f) = self.frameworks.get_mut(framework_id) else {
            return;
        };
        if f.stream.as_ref().is_none_or(|(s, _)| s != stream_id) {
            return;
        }
        info!(framework = %framework_id, "framework disconnected");
        self.events.send(
            ClusterEvent::FrameworkDisconnected {
                framework_id: framework_id.to_string(),
            }
            .into(),
        );
        f.stream = None;
        f.backlog.clear();
        f.backlog_uuids.clear();
        f.offers_paused = false;
        f.disconnected_at = Some(Instant::now());
        self.persist_framework(framework_id);
        self.allocator.set_framework_active(framework_id, false);
        for id in self.offers.ids_where(|o| o.framework == framework_id) {
            self.take_offer(&id, None);
        }
    }

    pub(super) fn remove_framework(&mut self, framework_id: &str) {
        let Some(mut f) = self.frameworks.remove(framework_id) else {
            return;
        };
        self.registry.delete_framework(framework_id);
        self.emit(ClusterEvent::FrameworkRemoved {
            framework_id: framework_id.to_string(),
        });
        if let Some((_, tx)) = f.stream.take() {
            tx.close(Status::aborted("framework torn down"));
        }
        // The allocator drops everything the framework held just below.
        self.offers.forget_framework(framework_id);
        let live = self.task_keys(|(fw, _), t| fw == framework_id && !is_terminal(t.state));
        for key in live {
            // A framework of 100,000 tasks is half a second of kills.
            self.reader_checkpoint();
            self.send_kill(&key);
        }
        self.allocator.remove_framework(framework_id);
        self.allocation_needed = true;
    }
}
