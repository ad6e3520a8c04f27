//! Leader election on etcd: the leader holds a key bound to its lease, keeps
//! the lease alive, and fences every write on the key's creation revision,
//! so a leader whose lease expired (it froze, or lost etcd) can write
//! nothing even before it notices. It also knows, from its own clock, when
//! its lease may have expired, and stops acting at that moment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::etcd::{self, Etcd, EtcdError};

/// A campaign for one leader key.
pub struct Election {
    etcd: Arc<Etcd>,
    key: String,
    me: String,
    ttl: Duration,
    /// Where candidates list themselves (bound to their lease), so clients
    /// can find every one of them: `<key>/members/`.
    members: String,
}

/// Being the leader: valid until the lease may have expired.
#[derive(Clone)]
pub struct Leadership {
    etcd: Arc<Etcd>,
    key: String,
    lease: i64,
    /// The creation revision of the leader key: the fencing token.
    revision: i64,
    /// Latest moment the lease is surely alive: when the last renewal that
    /// etcd confirmed was *sent*, plus the TTL.
    valid_until: Arc<Mutex<Instant>>,
    lost: watch::Receiver<bool>,
}

impl Election {
    /// A campaign for `key`, announcing `me` (the URL others are sent to).
    pub fn new(etcd: Arc<Etcd>, key: &str, me: &str, ttl: Duration) -> Election {
        Election {
            etcd,
            key: key.to_string(),
            me: me.to_string(),
            ttl,
            members: format!("{key}/members/"),
        }
    }

    /// Every candidate alive now (leader and standbys), as they announce
    /// themselves.
    pub async fn members(&self) -> Result<Vec<String>, EtcdError> {
        Ok(self
            .etcd
            .range_prefix(&self.members)
            .await?
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect())
    }

    /// Who leads now, as the leader announced itself.
    pub async fn leader(&self) -> Result<Option<String>, EtcdError> {
        Ok(self
            .etcd
            .get(&self.key)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Campaigns until elected; meanwhile `observed` hears who leads.
    /// Retries through etcd outages.
    pub async fn campaign(&self, observed: &watch::Sender<Option<String>>) -> Leadership {
        let poll = (self.ttl / 8).clamp(Duration::from_millis(50), Duration::from_millis(250));
        let mut lease: Option<(i64, Duration, Instant)> = None;
        loop {
            match self.try_once(&mut lease, observed).await {
                Ok(Some(leadership)) => return leadership,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %self.key, "campaign: {e}");
                    lease = None;
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn try_once(
        &self,
        lease: &mut Option<(i64, Duration, Instant)>,
        observed: &watch::Sender<Option<String>>,
    ) -> Result<Option<Leadership>, EtcdError> {
        // A lease kept alive while waiting, so a win is valid at once.
        let sent = Instant::now();
        let (id, ttl, renewed) = match *lease {
            Some((id, ttl, _)) => match self.etcd.keep_alive(id).await? {
                Some(_) => (id, ttl, sent),
                None => {
                    let (id, ttl) = self.etcd.grant(self.ttl).await?;
                    (id, ttl, sent)
                }
            },
            None => {
                let (id, ttl) = self.etcd.grant(self.ttl).await?;
                (id, ttl, sent)
            }
        };
        if lease.is_none_or(|(old, _, _)| old != id) {
            // A new lease: list ourselves under it (gone when it expires).
            let member = format!("{}{}", self.members, self.me);
            self.etcd
                .txn(
                    Vec::new(),
                    vec![etcd::put(&member, self.me.as_bytes(), id)],
                    Vec::new(),
                )
                .await?;
        }
        *lease = Some((id, ttl, renewed));
        let result = self
            .etcd
            .txn(
                vec![etcd::created_at(&self.key, 0)],
                vec![etcd::put(&self.key, self.me.as_bytes(), id)],
                vec![etcd::get(&self.key)],
            )
            .await?;
        if !result.succeeded {
            let leader = result
                .read
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            observed.send_if_modified(|current| {
                let changed = *current != leader;
                current.clone_from(&leader);
                changed
            });
            return Ok(None);
        }
        observed.send_replace(Some(self.me.clone()));
        let (lost_tx, lost) = watch::channel(false);
        let leadership = Leadership {
            etcd: self.etcd.clone(),
            key: self.key.clone(),
            lease: id,
            revision: result.revision,
            valid_until: Arc::new(Mutex::new(renewed + ttl)),
            lost,
        };
        tokio::spawn(keep_leading(leadership.clone(), ttl, lost_tx));
        Ok(Some(leadership))
    }
}

/// Renews the lease every third of its TTL until it is lost.
async fn keep_leading(leadership: Leadership, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        if Arc::strong_count(&leadership.valid_until) == 1 {
            return; // nobody holds the leadership any more
        }
        let sent = Instant::now();
        match leadership.etcd.keep_alive(leadership.lease).await {
            Ok(Some(_)) => {
                if let Ok(mut until) = leadership.valid_until.lock() {
                    *until = sent + ttl;
                }
            }
            Ok(None) => {
                tracing::warn!(key = %leadership.key, "leader lease expired");
                lost.send_replace(true);
                return;
            }
            Err(e) => tracing::warn!(key = %leadership.key, "renewing the leader lease: {e}"),
        }
        if !leadership.is_valid() {
            lost.send_replace(true);
            return;
        }
    }
}

impl Leadership {
    /// Whether the lease is surely still alive (by this process's clock).
    pub fn is_valid(&self) -> bool {
        !*self.lost.borrow()
            && self
                .valid_until
                .lock()
                .map(|until| Instant::now() < *until)
                .unwrap_or(false)
    }

    /// Resolves once leadership is lost (the lease expired or could not
    /// be renewed in time).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// The comparison that fences a transaction on still leading.
    pub fn fence(&self) -> Value {
        etcd::created_at(&self.key, self.revision)
    }

    /// Steps down at once: standbys need not wait for the lease to expire.
    pub async fn resign(&self) {
        if let Err(e) = self.etcd.revoke(self.lease).await {
            tracing::warn!(key = %self.key, "resigning: {e}");
        }
    }
}
