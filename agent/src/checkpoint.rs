//! Per-task checkpoints in the agent's data directory
//! (`<data>/checkpoints/<container-id>.pb`): the task, its container, and
//! its unacknowledged status updates, so that a restarted agent re-attaches
//! and keeps its at-least-once promise. Written atomically (temp file,
//! rename) on every change, and fsynced when asked (a task's outcome) —
//! by a writer thread of its own ([`CheckpointWriter`]), in order, so the
//! agent's event loop never waits on the disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use agora_proto::v1::TaskCheckpoint;
use prost::Message;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a task checkpoint: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
}

/// The checkpoint directory.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    pub fn new(data_dir: &Path) -> Self {
        Checkpoints {
            dir: data_dir.join("checkpoints"),
        }
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.pb"))
    }

    /// Writes (replaces) one task's checkpoint; with `durable`, it is on
    /// disk before this returns, not just in the page cache.
    pub fn save(&self, checkpoint: &TaskCheckpoint, durable: bool) -> Result<(), CheckpointError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let path = self.path(&checkpoint.container_id);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(&checkpoint.encode_to_vec())
            .map_err(io("writing", &tmp))?;
        if durable {
            file.sync_data().map_err(io("syncing", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("renaming", &path))
    }

    /// Forgets a task.
    pub fn remove(&self, container_id: &str) {
        let _ = std::fs::remove_file(self.path(container_id));
    }

    /// Every checkpoint on disk; unreadable ones are reported, not fatal.
    pub fn load_all(&self) -> (Vec<TaskCheckpoint>, Vec<CheckpointError>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (found, errors);
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pb") {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => match TaskCheckpoint::decode(bytes.as_slice()) {
                    Ok(c) => found.push(c),
                    Err(source) => errors.push(CheckpointError::Decode { path, source }),
                },
                Err(source) => errors.push(CheckpointError::Io {
                    op: "reading",
                    path,
                    source,
                }),
            }
        }
        (found, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::v1;

    #[test]
    fn checkpoints_round_trip_and_garbage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::new(dir.path());
        let checkpoint = TaskCheckpoint {
            framework_id: Some(v1::FrameworkId { value: "f".into() }),
            container_id: "c1".into(),
            pid: 42,
            state: v1::TaskState::TaskRunning as i32,
            ..Default::default()
        };
        store.save(&checkpoint, true).expect("save");
        std::fs::write(dir.path().join("checkpoints/bad.pb"), b"\xff\xff\xff").expect("write");
        let (found, errors) = store.load_all();
        assert_eq!(found, vec![checkpoint]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad.pb"));
        store.remove("c1");
        assert!(store.load_all().0.is_empty());
    }
}

/// What the writer thread is asked to do, in order.
enum Job<T> {
    Save {
        checkpoint: Box<TaskCheckpoint>,
        durable: bool,
        /// Handed back once the checkpoint is on disk.
        then: Option<T>,
    },
    Remove(String),
}

/// Checkpoints written by a thread of its own. A write asked to be
/// reported (`then`) is handed to `done` once it is on disk, so its
/// caller can send what must not go out before.
pub struct CheckpointWriter<T: Send + 'static> {
    jobs: std::sync::mpsc::Sender<Job<T>>,
}

impl<T: Send + 'static> CheckpointWriter<T> {
    pub fn start(checkpoints: Checkpoints, done: impl Fn(T) + Send + 'static) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job<T>>();
        std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || {
                for job in queue {
                    match job {
                        Job::Save {
                            checkpoint,
                            durable,
                            then,
                        } => {
                            if let Err(e) = checkpoints.save(&checkpoint, durable) {
                                tracing::warn!(container = %checkpoint.container_id, "{e}");
                            }
                            if let Some(then) = then {
                                done(then);
                            }
                        }
                        Job::Remove(container_id) => checkpoints.remove(&container_id),
                    }
                }
            })
            .expect("spawning the checkpoint writer");
        CheckpointWriter { jobs }
    }

    /// Queues a write; `then` comes back through `done` once it is on disk.
    pub fn save(&self, checkpoint: TaskCheckpoint, durable: bool, then: Option<T>) {
        let _ = self.jobs.send(Job::Save {
            checkpoint: Box::new(checkpoint),
            durable,
            then,
        });
    }

    /// Queues a removal (after every write queued before it).
    pub fn remove(&self, container_id: &str) {
        let _ = self.jobs.send(Job::Remove(container_id.to_string()));
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn writes_land_in_order_and_a_reported_one_is_on_disk_when_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = Checkpoints::new(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = checkpoints.clone();
        let writer = CheckpointWriter::start(checkpoints, move |n: u32| {
            // Read back at the moment of the report.
            let found = reader.load_all().0.len();
            let _ = tx.send((n, found));
        });
        let cp = |id: &str| TaskCheckpoint {
            container_id: id.into(),
            ..Default::default()
        };
        writer.save(cp("a"), false, None);
        writer.save(cp("b"), true, Some(1));
        writer.remove("a");
        writer.save(cp("c"), true, Some(2));
        let reports: Vec<(u32, usize)> = rx.iter().take(2).collect();
        assert_eq!(
            reports,
            [(1, 2), (2, 2)],
            "b on disk with a; then a gone, c there"
        );
    }
}
