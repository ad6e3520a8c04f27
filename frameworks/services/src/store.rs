//! The services framework's durable state on `agora-store`: one JSON record
//! per app (its versions, instances and deployments) and a little metadata
//! (the framework id to resume, the next task and deployment numbers).

use std::path::Path;

use agora_store::{Store, StoreError, Write};

use crate::engine::Changes;
use crate::model::App;

const APPS: &str = "apps";
const META: &str = "meta";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ServicesStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("services store: record `{key}` is unreadable: {source}")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Everything the store held at start.
pub struct Loaded {
    pub apps: Vec<App>,
    pub next_task: u64,
    pub next_deployment: u64,
    pub framework_id: Option<String>,
    /// The secret the master issued with `framework_id`.
    pub framework_secret: Option<String>,
}

pub struct ServicesStore {
    store: Store,
}

impl ServicesStore {
    pub fn open(path: &Path) -> Result<ServicesStore, ServicesStoreError> {
        Ok(ServicesStore::on(Store::open(path)?))
    }

    /// The services state in `store` (a file, or etcd for replicas).
    pub fn on(store: Store) -> ServicesStore {
        ServicesStore { store }
    }

    pub fn load(&self) -> Result<Loaded, ServicesStoreError> {
        let mut apps = Vec::new();
        for (key, bytes) in self.store.load(APPS)? {
            let app: App = serde_json::from_slice(&bytes)
                .map_err(|source| ServicesStoreError::Record { key, source })?;
            apps.push(app);
        }
        let meta = |k: &str| -> Result<Option<String>, ServicesStoreError> {
            Ok(self
                .store
                .get(META, k)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let number = |k: &str| -> Result<u64, ServicesStoreError> {
            Ok(meta(k)?.and_then(|s| s.parse().ok()).unwrap_or(1))
        };
        Ok(Loaded {
            apps,
            next_task: number("next_task")?,
            next_deployment: number("next_deployment")?,
            framework_id: meta("framework_id")?.filter(|s| !s.is_empty()),
            framework_secret: meta("framework_secret")?.filter(|s| !s.is_empty()),
        })
    }

    /// Keeps the secret the master issued with the framework id.
    pub fn save_framework_secret(&self, secret: &str) -> Result<(), ServicesStoreError> {
        Ok(self.store.commit(&[Write::put(
            META,
            "framework_secret",
            secret.as_bytes().to_vec(),
        )])?)
    }

    /// Writes `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), ServicesStoreError> {
        let mut writes = Vec::with_capacity(changes.apps.len() + 3);
        for (id, app) in &changes.apps {
            writes.push(match app {
                Some(app) => {
                    let bytes =
                        serde_json::to_vec(app).map_err(|source| ServicesStoreError::Record {
                            key: id.clone(),
                            source,
                        })?;
                    Write::put(APPS, id.clone(), bytes)
                }
                None => Write::delete(APPS, id.clone()),
            });
        }
        writes.push(Write::put(
            META,
            "next_task",
            changes.next_task.to_string().into_bytes(),
        ));
        writes.push(Write::put(
            META,
            "next_deployment",
            changes.next_deployment.to_string().into_bytes(),
        ));
        if let Some(id) = &changes.framework_id {
            writes.push(Write::put(META, "framework_id", id.clone().into_bytes()));
        }
        Ok(self.store.commit(&writes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn apps_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("services.redb");
        let mut engine = Engine::restore(Vec::new(), 1, 1, None, 1000);
        engine.set_framework_id("fw-1");
        let spec = crate::spec::parse("id = \"shop/web\"\ncmd = \"serve\"\ninstances = 2")
            .expect("spec")
            .remove(0);
        engine.deploy(spec, 5).expect("deploy");
        {
            let store = ServicesStore::open(&path).expect("open");
            store
                .commit(&engine.take_changes().expect("changes"))
                .expect("commit");
        }
        let loaded = ServicesStore::open(&path)
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(loaded.framework_id.as_deref(), Some("fw-1"));
        assert_eq!(loaded.apps.len(), 1);
        assert_eq!(loaded.apps[0].id, "shop/web");
        assert_eq!(loaded.apps[0].instances, 2);
        assert_eq!(loaded.next_deployment, 2);
    }
}
