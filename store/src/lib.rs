//! Agora's durable state: named tables of records (string keys, byte
//! values), read whole at start and written in grouped, atomic commits —
//! in an embedded `redb` file (one process) or in etcd (highly available:
//! [`election`] picks one leader, whose writes are fenced on its lease).
//! The master's registry, batch's jobs and services' apps all live here.
//! [`writer`] is the group-commit loop the frameworks run over their stores.

pub mod election;
pub mod etcd;
pub mod local_etcd;
pub mod replica;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::election::Leadership;
use crate::etcd::{Etcd, EtcdError};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// This process no longer leads: the write was refused, and must not
    /// be retried by it.
    #[error("store: not written, this process is no longer the leader of `{0}`")]
    Fenced(String),
}

/// One change: `value` `None` deletes the key.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub table: &'static str,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Write {
    pub fn put(table: &'static str, key: impl Into<String>, value: Vec<u8>) -> Write {
        Write {
            table,
            key: key.into(),
            value: Some(value),
        }
    }

    pub fn delete(table: &'static str, key: impl Into<String>) -> Write {
        Write {
            table,
            key: key.into(),
            value: None,
        }
    }
}

/// A store: an embedded file, or keys under a prefix in etcd.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Redb {
        db: Database,
        path: PathBuf,
    },
    Etcd {
        etcd: Etcd,
        /// `/agora/<who>/`: tables live under it.
        prefix: String,
        /// Writes only while leading, fenced on the leader key.
        fence: Option<Leadership>,
    },
}

/// The embedded store's page cache.
const STORE_CACHE_BYTES: usize = 16 << 20;

/// etcd's most operations in one transaction (its `--max-txn-ops` default
/// is 128): bigger commits are split, each part atomic.
const ETCD_OPS_PER_TXN: usize = 100;

/// The store's API is blocking (it runs on blocking threads or in the
/// master's core between messages); etcd's client is async. Its requests
/// run on one runtime thread of their own.
fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    let handle = RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("agora-store-etcd".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for etcd requests");
                let _ = tx.send(runtime.handle().clone());
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("spawning the etcd request thread");
        rx.recv().expect("the etcd request runtime")
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().expect("the etcd request thread is alive")
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl Store {
    /// A store under `prefix` in the etcd cluster at `endpoints`; with a
    /// `fence`, every write is conditional on still leading.
    pub fn etcd(
        endpoints: &str,
        prefix: &str,
        fence: Option<Leadership>,
    ) -> Result<Store, StoreError> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        Ok(Store {
            backend: Backend::Etcd {
                etcd: Etcd::new(endpoints)?,
                prefix,
                fence,
            },
        })
    }

    /// Opens (or creates) the store file at `path`, and its directory.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |e: redb::Error| StoreError::Db {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(redb::StorageError::Io(e).into()))?;
        }
        // redb caches up to 1 GiB by default; these stores are small and
        // written far more than read (everything is loaded once at start).
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
            .map_err(|e| err(e.into()))?;
        Ok(Store {
            backend: Backend::Redb {
                db,
                path: path.to_path_buf(),
            },
        })
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Redb { path, .. } => path.display().to_string(),
            Backend::Etcd { etcd, prefix, .. } => {
                format!("etcd {} {prefix}", etcd.endpoints().join(","))
            }
        }
    }

    /// Every record of `name`, in key order (none if the table was never
    /// written).
    pub fn load(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Redb { db, path } => redb_load(db, path, name),
            Backend::Etcd { etcd, prefix, .. } => {
                let table = format!("{prefix}{name}/");
                let etcd = etcd.clone();
                let rows = block_on({
                    let table = table.clone();
                    async move { etcd.range_prefix(&table).await }
                })?;
                Ok(rows
                    .into_iter()
                    .filter_map(|kv| Some((kv.key.strip_prefix(&table)?.to_string(), kv.value)))
                    .collect())
            }
        }
    }

    /// One record.
    pub fn get(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Redb { db, path } => redb_get(db, path, name, key),
            Backend::Etcd { etcd, prefix, .. } => {
                let full = format!("{prefix}{name}/{key}");
                let etcd = etcd.clone();
                Ok(block_on(async move { etcd.get(&full).await })?.map(|kv| kv.value))
            }
        }
    }

    /// Applies `writes` in one durable transaction: all or nothing (in
    /// etcd, each part of at most 100 writes).
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb { db, path } => redb_commit(db, path, &last_writes(writes)),
            Backend::Etcd {
                etcd,
                prefix,
                fence,
            } => {
                // etcd refuses a transaction naming a key twice.
                let writes = last_writes(writes);
                for part in writes.chunks(ETCD_OPS_PER_TXN) {
                    if let Some(fence) = fence
                        && !fence.is_valid()
                    {
                        return Err(StoreError::Fenced(prefix.clone()));
                    }
                    let ops: Vec<_> = part
                        .iter()
                        .map(|w| {
                            let key = format!("{prefix}{}/{}", w.table, w.key);
                            match &w.value {
                                Some(v) => etcd::put(&key, v, 0),
                                None => etcd::delete(&key),
                            }
                        })
                        .collect();
                    let compare: Vec<_> = fence.iter().map(Leadership::fence).collect();
                    let etcd = etcd.clone();
                    let done = block_on(async move { etcd.txn(compare, ops, Vec::new()).await })?;
                    if !done.succeeded {
                        return Err(StoreError::Fenced(prefix.clone()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The last write of each key, in order: the one that counts. A commit
/// under load often holds several of one key (a task's starting and its
/// running), and each write skipped is a B-tree update saved.
fn last_writes(writes: &[Write]) -> Vec<&Write> {
    // foldhash, not SipHash: the keys are the master's own, and SipHash was
    // a twentieth of the writer thread's time under a launch load.
    let mut last: std::collections::HashMap<(&str, &str), usize, foldhash::fast::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(writes.len(), Default::default());
    for (i, w) in writes.iter().enumerate() {
        last.insert((w.table, w.key.as_str()), i);
    }
    writes
        .iter()
        .enumerate()
        .filter(|(i, w)| last.get(&(w.table, w.key.as_str())) == Some(i))
        .map(|(_, w)| w)
        .collect()
}

fn redb_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn redb_load(db: &Database, path: &Path, name: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let err = |e: redb::Error| redb_err(path, e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let t = match txn.open_table(table(name)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(err(e.into())),
    };
    let mut out = Vec::new();
    for entry in t.iter().map_err(|e| err(e.into()))? {
        let (k, v) = entry.map_err(|e| err(e.into()))?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

fn redb_get(
    db: &Database,
    path: &Path,
    name: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let err = |e: redb::Error| redb_err(path, e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let t = match txn.open_table(table(name)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    Ok(t.get(key)
        .map_err(|e| err(e.into()))?
        .map(|v| v.value().to_vec()))
}

fn redb_commit(db: &Database, path: &Path, writes: &[&Write]) -> Result<(), StoreError> {
    let err = |e: redb::Error| redb_err(path, e);
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    // Each table opened once per commit, not once per write: opening
    // looks the table up and closing writes its root back, and a commit
    // under load holds thousands of writes to a handful of tables.
    let mut open: Vec<(&str, redb::Table<'_, &'static str, &'static [u8]>)> = Vec::new();
    for w in writes {
        let at = match open.iter().position(|(name, _)| *name == w.table) {
            Some(at) => at,
            None => {
                let t = txn.open_table(table(w.table)).map_err(|e| err(e.into()))?;
                open.push((w.table, t));
                open.len() - 1
            }
        };
        let t = &mut open[at].1;
        match &w.value {
            Some(v) => {
                t.insert(w.key.as_str(), v.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            None => {
                t.remove(w.key.as_str()).map_err(|e| err(e.into()))?;
            }
        }
    }
    drop(open);
    txn.commit().map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_a_reopen_and_deletes_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.redb");
        {
            let store = Store::open(&path).expect("open");
            assert!(store.load("apps").expect("empty").is_empty());
            store
                .commit(&[
                    Write::put("apps", "b", b"2".to_vec()),
                    Write::put("apps", "a", b"1".to_vec()),
                    Write::put("meta", "framework_id", b"f1".to_vec()),
                ])
                .expect("commit");
            store.commit(&[Write::delete("apps", "b")]).expect("delete");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.load("apps").expect("load"),
            vec![("a".to_string(), b"1".to_vec())]
        );
        assert_eq!(
            store.get("meta", "framework_id").expect("get"),
            Some(b"f1".to_vec())
        );
        assert_eq!(store.get("meta", "nothing").expect("get"), None);
    }

    #[test]
    fn one_commit_applies_writes_across_tables_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        // Tables interleaved, and one key written, deleted and written
        // again within the commit: the last write of each key counts.
        store
            .commit(&[
                Write::put("tasks", "t1", b"staging".to_vec()),
                Write::put("states", "t1", b"1".to_vec()),
                Write::put("tasks", "t2", b"staging".to_vec()),
                Write::delete("tasks", "t1"),
                Write::put("states", "t1", b"2".to_vec()),
                Write::put("tasks", "t1", b"again".to_vec()),
                Write::delete("states", "t2"),
                Write::put("agents", "a1", b"x".to_vec()),
            ])
            .expect("commit");
        assert_eq!(
            store.load("tasks").expect("load"),
            vec![
                ("t1".to_string(), b"again".to_vec()),
                ("t2".to_string(), b"staging".to_vec())
            ]
        );
        assert_eq!(
            store.load("states").expect("load"),
            vec![("t1".to_string(), b"2".to_vec())]
        );
        assert_eq!(store.get("agents", "a1").expect("get"), Some(b"x".to_vec()));
    }
}
