//! Agora's durable state: named tables of records (string keys, byte
//! values) in an embedded `redb` file, read whole at start and written in
//! grouped, atomic commits. The services framework keeps its apps here; the
//! master's registry and the etcd backend for high availability are meant
//! to sit behind this same small surface. [`writer`] is the group-commit
//! loop both frameworks run over their stores.

pub mod writer;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
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

/// An embedded store in one file.
pub struct Store {
    db: Database,
    path: PathBuf,
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl Store {
    /// Opens (or creates) the store file at `path`, and its directory.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |e: redb::Error| StoreError::Db {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(redb::StorageError::Io(e).into()))?;
        }
        let db = Database::create(path).map_err(|e| err(e.into()))?;
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

    /// Every record of `name`, in key order (none if the table was never
    /// written).
    pub fn load(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match txn.open_table(table(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One record.
    pub fn get(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match txn.open_table(table(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        Ok(t.get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Applies `writes` in one durable transaction: all or nothing.
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        for w in writes {
            let mut t = txn.open_table(table(w.table)).map_err(|e| self.err(e))?;
            match &w.value {
                Some(v) => {
                    t.insert(w.key.as_str(), v.as_slice())
                        .map_err(|e| self.err(e))?;
                }
                None => {
                    t.remove(w.key.as_str()).map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
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
}
