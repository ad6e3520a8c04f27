//! The batch framework's durable state on `agora-store` (an embedded file,
//! or etcd when batch runs as replicas): one JSON record per job
//! (definition, runs, attempts) and a little metadata (the framework id to
//! resume, the next submission number). Writes are grouped: whatever
//! changed since the last commit goes in one transaction.

use std::path::Path;

use agora_store::{Store, Write};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::engine::Changes;
use crate::model::Job;

const JOBS: &str = "jobs";
const META: &str = "meta";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Store(#[from] agora_store::StoreError),
    #[error("batch store: record `{key}` is unreadable: {source}")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("batch store: moving {path} to the new format: {reason}")]
    Migration { path: String, reason: String },
}

/// Everything the store held at start.
pub struct Loaded {
    pub jobs: Vec<Job>,
    pub next_seq: u64,
    pub framework_id: Option<String>,
    /// The secret the master issued with `framework_id`.
    pub framework_secret: Option<String>,
}

pub struct BatchStore {
    store: Store,
}

impl BatchStore {
    pub fn on(store: Store) -> BatchStore {
        BatchStore { store }
    }

    /// Reads every job and the metadata.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut jobs = Vec::new();
        for (key, bytes) in self.store.load(JOBS)? {
            let job: Job = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Record { key, source })?;
            jobs.push(job);
        }
        let meta = |k: &str| -> Result<Option<String>, StoreError> {
            Ok(self
                .store
                .get(META, k)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        Ok(Loaded {
            jobs,
            next_seq: meta("next_seq")?.and_then(|s| s.parse().ok()).unwrap_or(1),
            framework_id: meta("framework_id")?.filter(|s| !s.is_empty()),
            framework_secret: meta("framework_secret")?.filter(|s| !s.is_empty()),
        })
    }

    /// Keeps the secret the master issued with the framework id.
    pub fn save_framework_secret(&self, secret: &str) -> Result<(), StoreError> {
        Ok(self.store.commit(&[Write::put(
            META,
            "framework_secret",
            secret.as_bytes().to_vec(),
        )])?)
    }

    /// Writes `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(changes.jobs.len() + 2);
        for (id, job) in &changes.jobs {
            writes.push(match job {
                Some(job) => {
                    let bytes = serde_json::to_vec(job).map_err(|source| StoreError::Record {
                        key: id.clone(),
                        source,
                    })?;
                    Write::put(JOBS, id.clone(), bytes)
                }
                None => Write::delete(JOBS, id.clone()),
            });
        }
        writes.push(Write::put(
            META,
            "next_seq",
            changes.next_seq.to_string().into_bytes(),
        ));
        if let Some(id) = &changes.framework_id {
            writes.push(Write::put(META, "framework_id", id.clone().into_bytes()));
        }
        Ok(self.store.commit(&writes)?)
    }
}

/// Moves a store written by an older batch (`batch.redb`, text metadata)
/// into `into` once, then renames the old file `batch.redb.migrated`.
pub fn migrate_old_file(old: &Path, into: &Store) -> Result<(), StoreError> {
    if !old.exists() {
        return Ok(());
    }
    let fail = |reason: String| StoreError::Migration {
        path: old.display().to_string(),
        reason,
    };
    let jobs: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
    let meta: TableDefinition<&str, &str> = TableDefinition::new("meta");
    let db = Database::open(old).map_err(|e| fail(e.to_string()))?;
    let txn = db.begin_read().map_err(|e| fail(e.to_string()))?;
    let mut writes = Vec::new();
    if let Ok(table) = txn.open_table(jobs) {
        for entry in table.iter().map_err(|e| fail(e.to_string()))? {
            let (k, v) = entry.map_err(|e| fail(e.to_string()))?;
            writes.push(Write::put(JOBS, k.value(), v.value().to_vec()));
        }
    }
    if let Ok(table) = txn.open_table(meta) {
        for entry in table.iter().map_err(|e| fail(e.to_string()))? {
            let (k, v) = entry.map_err(|e| fail(e.to_string()))?;
            writes.push(Write::put(META, k.value(), v.value().as_bytes().to_vec()));
        }
    }
    drop(txn);
    drop(db);
    into.commit(&writes)?;
    let done = old.with_extension("redb.migrated");
    std::fs::rename(old, &done).map_err(|e| fail(e.to_string()))?;
    tracing::info!(jobs = writes.len(), from = %old.display(), "batch store moved to the new format");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn what_is_committed_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("batch-store.redb");
        let mut engine = Engine::new(30_000);
        let specs = crate::spec::parse(
            "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\n",
        )
        .expect("valid");
        engine.submit(specs, 1_000).expect("submitted");
        engine.set_framework_id("fw-1");
        {
            let store = BatchStore::on(Store::open(&path).expect("open"));
            store
                .commit(&engine.take_changes().expect("changes"))
                .expect("commit");
            engine.kill("b", None, 2_000).expect("killed");
            engine.remove("b", false, 2_000).expect("removed");
            store
                .commit(&engine.take_changes().expect("changes"))
                .expect("commit");
            assert!(engine.take_changes().is_none(), "nothing left to write");
        }
        let store = BatchStore::on(Store::open(&path).expect("reopen"));
        let loaded = store.load().expect("load");
        assert_eq!(loaded.framework_id.as_deref(), Some("fw-1"));
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.jobs[0], *engine.job("a").expect("a"));
        assert_eq!(loaded.next_seq, 3);
    }

    #[test]
    fn an_old_store_file_is_moved_over_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("batch.redb");
        {
            let db = Database::create(&old).expect("old db");
            let txn = db.begin_write().expect("txn");
            {
                let jobs: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
                let meta: TableDefinition<&str, &str> = TableDefinition::new("meta");
                let mut engine = Engine::new(30_000);
                engine
                    .submit(
                        crate::spec::parse("[[job]]\nid = \"a\"\ncmd = \"true\"\n").expect("spec"),
                        1,
                    )
                    .expect("submit");
                let job = serde_json::to_vec(engine.job("a").expect("a")).expect("json");
                txn.open_table(jobs)
                    .expect("jobs")
                    .insert("a", job.as_slice())
                    .expect("insert");
                let mut m = txn.open_table(meta).expect("meta");
                m.insert("framework_id", "fw-old").expect("insert");
                m.insert("next_seq", "7").expect("insert");
            }
            txn.commit().expect("commit");
        }
        let store = Store::open(&dir.path().join("batch-store.redb")).expect("new");
        migrate_old_file(&old, &store).expect("migrate");
        assert!(!old.exists());
        migrate_old_file(&old, &store).expect("a second run does nothing");
        let loaded = BatchStore::on(store).load().expect("load");
        assert_eq!(loaded.framework_id.as_deref(), Some("fw-old"));
        assert_eq!(loaded.next_seq, 7);
        assert_eq!(loaded.jobs.len(), 1);
    }
}
