//! Running a framework as several replicas: with etcd, the replicas of one
//! framework campaign for its leader key and only the elected one opens the
//! store (fenced on its lease) and acts; the others wait their turn. With a
//! file, the one process leads at once.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::election::{Election, Leadership};
use crate::etcd::Etcd;
use crate::{Store, StoreError};

/// Where a framework keeps its state.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// One process, one embedded file.
    File(PathBuf),
    /// Replicas sharing state in etcd; one is active.
    Etcd(ReplicaConfig),
}

/// A framework replica on etcd.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// `http://h1:2379,http://h2:2379`.
    pub endpoints: String,
    /// The framework's name: replicas of the same name share one state.
    pub name: String,
    /// How this replica announces itself while active (its API's URL).
    pub me: String,
    /// A dead active replica is replaced within about this.
    pub lease_ttl: Duration,
}

impl StoreConfig {
    /// A framework's store: `file` alone, or shared in etcd by the
    /// replicas named `name` when `etcd` is given.
    pub fn for_framework(
        file: PathBuf,
        etcd: Option<&str>,
        name: &str,
        me: &str,
        lease_ttl: Duration,
    ) -> StoreConfig {
        match etcd {
            Some(endpoints) => StoreConfig::Etcd(ReplicaConfig {
                endpoints: endpoints.to_string(),
                name: name.to_string(),
                me: me.to_string(),
                lease_ttl,
            }),
            None => StoreConfig::File(file),
        }
    }
}

/// The process may act: (on etcd) the leadership it holds.
pub struct Active {
    leadership: Option<Leadership>,
    deposed: AtomicBool,
}

/// Waits until this process may write — at once for a file; in etcd once
/// this replica is elected — and opens the store. `None` if `shutdown`
/// came first.
pub async fn become_active(
    config: &StoreConfig,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<(Store, Active)>, StoreError> {
    let (store, leadership) = match config {
        StoreConfig::File(path) => (Store::open(path)?, None),
        StoreConfig::Etcd(replica) => {
            let etcd = Arc::new(Etcd::new(&replica.endpoints)?);
            let prefix = format!("/agora/frameworks/{}", replica.name);
            let election = Election::new(
                etcd,
                &format!("{prefix}/leader"),
                &replica.me,
                replica.lease_ttl,
            );
            tracing::info!(framework = %replica.name, "standing by: campaigning to be the active replica");
            let (observed, _) = watch::channel(None);
            let leadership = tokio::select! {
                l = election.campaign(&observed) => l,
                () = shutdown => return Ok(None),
            };
            tracing::info!(framework = %replica.name, "this replica is now the active one");
            let store = Store::etcd(
                &replica.endpoints,
                &format!("{prefix}/state"),
                Some(leadership.clone()),
            )?;
            (store, Some(leadership))
        }
    };
    Ok(Some((
        store,
        Active {
            leadership,
            deposed: AtomicBool::new(false),
        },
    )))
}

impl Active {
    /// Resolves on `shutdown`, or when the leadership is lost (then
    /// [`Active::deposed`] says so).
    pub async fn until(&self, shutdown: impl Future<Output = ()>) {
        let lost = async {
            match &self.leadership {
                Some(l) => l.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = lost => self.deposed.store(true, Ordering::Relaxed),
        }
    }

    /// Whether this process stopped because another replica may lead now:
    /// its leadership was lost, or is no longer surely held (a replica
    /// that froze past its lease may hear of the other one — the master
    /// tells it its subscription failed over — before it notices itself).
    pub fn deposed(&self) -> bool {
        self.deposed.load(Ordering::Relaxed)
            || self.leadership.as_ref().is_some_and(|l| !l.is_valid())
    }

    /// Hands over at once (a graceful stop).
    pub async fn resign(&self) {
        if let Some(l) = &self.leadership {
            l.resign().await;
        }
    }
}
