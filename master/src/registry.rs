//! The master's registry: what the cluster could not rebuild from its agents
//! after a master restart or failover — admitted agents (with a hash of
//! their secret, drains, unreachability, operator-marked gone), frameworks
//! (info, role, failover timeout, since when they are away), role weights
//! and the tasks the master placed. Records are protobuf messages
//! (`Registry*` in `agora.proto`) in `agora-store` tables.

use std::collections::BTreeMap;
use std::path::Path;

use agora_proto::v1::{RegistryAgent, RegistryFramework, RegistryTask};
use agora_store::{Store, StoreError, Write};
use prost::Message;

const AGENTS: &str = "agents";
const FRAMEWORKS: &str = "frameworks";
const TASKS: &str = "tasks";
/// A task's latest state, apart from its record: a task on its way to
/// running rewrites a few bytes, not its whole `TaskInfo`.
const TASK_STATES: &str = "task_states";
const WEIGHTS: &str = "weights";

/// What went wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry: {0}")]
    Store(#[from] StoreError),
    #[error("registry: record `{table}/{key}` is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

/// Everything the registry holds, as read at start.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub agents: Vec<RegistryAgent>,
    pub frameworks: Vec<RegistryFramework>,
    pub tasks: Vec<RegistryTask>,
    pub weights: BTreeMap<String, f64>,
}

/// The registry over a store; changes are queued and committed together.
pub struct Registry {
    store: Store,
    pending: Vec<Write>,
}

/// A task's key in the registry: task ids never hold `/`, so the last `/`
/// splits it unambiguously.
fn task_key(framework: &str, task: &str) -> String {
    format!("{framework}/{task}")
}

impl Registry {
    /// Opens (or creates) the embedded registry file at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        Ok(Registry::on(Store::open(path)?))
    }

    /// The registry in `store` (e.g. etcd, fenced on leading).
    pub fn on(store: Store) -> Registry {
        Registry {
            store,
            pending: Vec::new(),
        }
    }

    /// Whether an error means this master no longer leads (and must stop).
    pub fn is_deposed(error: &RegistryError) -> bool {
        matches!(error, RegistryError::Store(StoreError::Fenced(_)))
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Recovered, RegistryError> {
        fn decode<M: Message + Default>(
            table: &'static str,
            rows: Vec<(String, Vec<u8>)>,
        ) -> Result<Vec<M>, RegistryError> {
            rows.into_iter()
                .map(|(key, bytes)| {
                    M::decode(bytes.as_slice()).map_err(|e| RegistryError::Corrupt {
                        table,
                        key,
                        reason: e.to_string(),
                    })
                })
                .collect()
        }
        let mut weights = BTreeMap::new();
        for (role, bytes) in self.store.load(WEIGHTS)? {
            let weight = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| RegistryError::Corrupt {
                    table: WEIGHTS,
                    key: role.clone(),
                    reason: "not a weight > 0".into(),
                })?;
            weights.insert(role, weight);
        }
        let states: BTreeMap<String, Vec<u8>> = self.store.load(TASK_STATES)?.into_iter().collect();
        let mut tasks = Vec::new();
        for (key, bytes) in self.store.load(TASKS)? {
            let mut task =
                RegistryTask::decode(bytes.as_slice()).map_err(|e| RegistryError::Corrupt {
                    table: TASKS,
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(state) = states.get(&key) {
                task.state = std::str::from_utf8(state)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| RegistryError::Corrupt {
                        table: TASK_STATES,
                        key: key.clone(),
                        reason: "not a task state".into(),
                    })?;
            }
            tasks.push(task);
        }
        Ok(Recovered {
            agents: decode(AGENTS, self.store.load(AGENTS)?)?,
            frameworks: decode(FRAMEWORKS, self.store.load(FRAMEWORKS)?)?,
            tasks,
            weights,
        })
    }

    pub fn put_agent(&mut self, agent: &RegistryAgent) {
        let id = agent.id.as_ref().map_or("", |i| i.value.as_str());
        self.pending
            .push(Write::put(AGENTS, id, agent.encode_to_vec()));
    }

    pub fn delete_agent(&mut self, id: &str) {
        self.pending.push(Write::delete(AGENTS, id));
    }

    pub fn put_framework(&mut self, framework: &RegistryFramework) {
        let id = framework
            .info
            .as_ref()
            .and_then(|i| i.id.as_ref())
            .map_or("", |i| i.value.as_str());
        self.pending
            .push(Write::put(FRAMEWORKS, id, framework.encode_to_vec()));
    }

    pub fn delete_framework(&mut self, id: &str) {
        self.pending.push(Write::delete(FRAMEWORKS, id));
    }

    pub fn put_task(&mut self, framework: &str, task_id: &str, task: &RegistryTask) {
        self.pending.push(Write::put(
            TASKS,
            task_key(framework, task_id),
            task.encode_to_vec(),
        ));
    }

    /// Records a task's new state without rewriting its record.
    pub fn put_task_state(&mut self, framework: &str, task_id: &str, state: i32) {
        self.pending.push(Write::put(
            TASK_STATES,
            task_key(framework, task_id),
            state.to_string().into_bytes(),
        ));
    }

    pub fn delete_task(&mut self, framework: &str, task_id: &str) {
        let key = task_key(framework, task_id);
        self.pending.push(Write::delete(TASK_STATES, key.clone()));
        self.pending.push(Write::delete(TASKS, key));
    }

    pub fn put_weight(&mut self, role: &str, weight: f64) {
        self.pending
            .push(Write::put(WEIGHTS, role, weight.to_string().into_bytes()));
    }

    pub fn delete_weight(&mut self, role: &str) {
        self.pending.push(Write::delete(WEIGHTS, role));
    }

    /// Whether changes wait to be committed.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Queues what `build` writes and commits it with everything queued
    /// before, at once; on failure what `build` wrote is dropped (the
    /// caller refuses the change), and earlier changes stay queued.
    pub fn transaction(&mut self, build: impl FnOnce(&mut Registry)) -> Result<(), RegistryError> {
        let mark = self.pending.len();
        build(self);
        let result = self.commit();
        if result.is_err() {
            self.pending.truncate(mark);
        }
        result
    }

    /// Commits every queued change in one transaction. On failure the
    /// changes stay queued for the next try.
    pub fn commit(&mut self) -> Result<(), RegistryError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.store.commit(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::v1;

    #[test]
    fn records_survive_a_reopen_and_deletes_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.redb");
        let agent = RegistryAgent {
            id: Some(v1::AgentId { value: "a1".into() }),
            hostname: "h1".into(),
            secret_sha256: vec![1, 2, 3],
            draining: true,
            ..Default::default()
        };
        let task = RegistryTask {
            framework_id: Some(v1::FrameworkId { value: "f1".into() }),
            agent_id: Some(v1::AgentId { value: "a1".into() }),
            state: v1::TaskState::TaskRunning as i32,
            ..Default::default()
        };
        {
            let mut registry = Registry::open(&path).expect("open");
            registry.put_agent(&agent);
            registry.put_weight("prod", 2.5);
            registry.put_task("f1", "t1", &task);
            registry.put_task("f1", "t2", &task);
            registry.delete_task("f1", "t2");
            assert!(registry.dirty());
            registry.commit().expect("commit");
            assert!(!registry.dirty());
        }
        let recovered = Registry::open(&path).expect("reopen").load().expect("load");
        assert_eq!(recovered.agents, vec![agent]);
        assert_eq!(recovered.tasks, vec![task.clone()]);
        assert_eq!(recovered.weights.get("prod"), Some(&2.5));
        assert!(recovered.frameworks.is_empty());
        // A state written on its own overrides the record's; a delete
        // takes both.
        {
            let mut registry = Registry::open(&path).expect("open");
            registry.put_task_state("f1", "t1", v1::TaskState::TaskUnreachable as i32);
            registry.put_task("f1", "t3", &task);
            registry.put_task_state("f1", "t3", v1::TaskState::TaskStarting as i32);
            registry.delete_task("f1", "t3");
            registry.commit().expect("commit");
        }
        let recovered = Registry::open(&path).expect("reopen").load().expect("load");
        let unreachable = RegistryTask {
            state: v1::TaskState::TaskUnreachable as i32,
            ..task
        };
        assert_eq!(recovered.tasks, vec![unreachable]);
    }
}
