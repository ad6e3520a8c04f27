//! The batch framework's durable state in an embedded `redb` file: one JSON
//! record per job (definition, runs, attempts) and a little metadata (the
//! framework id to resume, the next submission number). Writes are grouped:
//! whatever changed since the last commit goes in one transaction.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::engine::Changes;
use crate::model::Job;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("batch store {path}: record `{key}` is unreadable: {source}")]
    Record {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Everything the store held at start.
pub struct Loaded {
    pub jobs: Vec<Job>,
    pub next_seq: u64,
    pub framework_id: Option<String>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db_err = |e: redb::Error| StoreError::Db {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| db_err(redb::StorageError::Io(e).into()))?;
        }
        let db = Database::create(path).map_err(|e| db_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
        txn.open_table(JOBS).map_err(|e| db_err(e.into()))?;
        txn.open_table(META).map_err(|e| db_err(e.into()))?;
        txn.commit().map_err(|e| db_err(e.into()))?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Reads every job and the metadata.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(JOBS).map_err(|e| self.err(e))?;
        let mut jobs = Vec::new();
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let job: Job =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Record {
                    path: self.path.clone(),
                    key: key.value().to_string(),
                    source,
                })?;
            jobs.push(job);
        }
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let get = |k: &str| -> Result<Option<String>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_string()))
        };
        let next_seq = get("next_seq")?.and_then(|s| s.parse().ok()).unwrap_or(1);
        let framework_id = get("framework_id")?.filter(|s| !s.is_empty());
        Ok(Loaded {
            jobs,
            next_seq,
            framework_id,
        })
    }

    /// Writes `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(|e| self.err(e))?;
            for (id, job) in &changes.jobs {
                match job {
                    Some(job) => {
                        let bytes =
                            serde_json::to_vec(job).map_err(|source| StoreError::Record {
                                path: self.path.clone(),
                                key: id.clone(),
                                source,
                            })?;
                        jobs.insert(id.as_str(), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    None => {
                        jobs.remove(id.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let seq = changes.next_seq.to_string();
            meta.insert("next_seq", seq.as_str())
                .map_err(|e| self.err(e))?;
            let fw = changes.framework_id.clone().unwrap_or_default();
            meta.insert("framework_id", fw.as_str())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn what_is_committed_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("batch.redb");
        let mut engine = Engine::new(30_000);
        let specs = crate::spec::parse(
            "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\n",
        )
        .expect("valid");
        engine.submit(specs, 1_000).expect("submitted");
        engine.set_framework_id("fw-1");
        {
            let store = Store::open(&path).expect("open");
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
        let store = Store::open(&path).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.framework_id.as_deref(), Some("fw-1"));
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.jobs[0], *engine.job("a").expect("a"));
        assert_eq!(loaded.next_seq, 3);
    }
}
