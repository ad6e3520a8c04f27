//! cgroup v1: one hierarchy per controller (or a few combined, such as
//! `cpu,cpuacct`), each with its own `agora/<id>` directory.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    AGENT_SUBTREE, CFS_PERIOD_US, CgroupError, CgroupManager, Limits, Usage, keyed, mkdir, procs,
    read, read_u64, rmdir, subdirs, wait_empty, write,
};

/// The v1 hierarchies the containerizer uses.
pub struct V1 {
    root: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: PathBuf,
    pids: PathBuf,
    freezer: PathBuf,
    /// The devices controller, where the host has it mounted: tasks get
    /// the few devices of `confine::DEVICES` and no others.
    devices: Option<PathBuf>,
}

impl V1 {
    /// Finds each controller's hierarchy under `root`.
    pub fn new(root: &Path) -> Result<V1, CgroupError> {
        let dirs = subdirs(root)?;
        let find = |controller: &'static str| {
            dirs.iter()
                .find(|d| d.split(',').any(|c| c == controller))
                .map(|d| root.join(d))
                .ok_or_else(|| CgroupError::MissingController {
                    controller,
                    root: root.to_path_buf(),
                })
        };
        Ok(V1 {
            root: root.to_path_buf(),
            cpu: find("cpu")?,
            cpuacct: find("cpuacct").or_else(|_| find("cpu"))?,
            memory: find("memory")?,
            pids: find("pids")?,
            freezer: find("freezer")?,
            devices: find("devices").ok(),
        })
    }

    fn hierarchies(&self) -> Vec<&Path> {
        let mut all: Vec<&Path> = vec![
            &self.cpu,
            &self.cpuacct,
            &self.memory,
            &self.pids,
            &self.freezer,
        ];
        all.extend(self.devices.as_deref());
        all.sort();
        all.dedup();
        all
    }

    fn dir(hierarchy: &Path, id: &str) -> PathBuf {
        hierarchy.join(AGENT_SUBTREE).join(id)
    }

    fn wait_frozen(&self, state: &Path) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read(state)?.trim() != "FROZEN" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }
}

impl CgroupManager for V1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn init_subtree(&self) -> Result<(), CgroupError> {
        for h in self.hierarchies() {
            mkdir(&h.join(AGENT_SUBTREE))?;
        }
        Ok(())
    }

    fn create(&self, id: &str, limits: &Limits) -> Result<(), CgroupError> {
        for h in self.hierarchies() {
            mkdir(&Self::dir(h, id))?;
        }
        let cpu = Self::dir(&self.cpu, id);
        write(
            &cpu.join("cpu.shares"),
            &limits.cpu_shares.max(2).to_string(),
        )?;
        match limits.cfs_quota_us() {
            Some(quota) => {
                write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            None => write(&cpu.join("cpu.cfs_quota_us"), "-1")?,
        }
        if let Some(bytes) = limits.memory_bytes {
            let memory = Self::dir(&self.memory, id);
            write(&memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // No swap beyond the limit, where swap accounting exists.
            let memsw = memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
        let pids_max = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
        write(&Self::dir(&self.pids, id).join("pids.max"), &pids_max)?;
        if let Some(devices) = &self.devices {
            let dir = Self::dir(devices, id);
            write(&dir.join("devices.deny"), "a")?;
            for rule in crate::confine::device_cgroup_rules() {
                write(&dir.join("devices.allow"), &rule)?;
            }
        }
        Ok(())
    }

    fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.hierarchies()
            .into_iter()
            .map(|h| Self::dir(h, id).join("cgroup.procs"))
            .collect()
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>, CgroupError> {
        procs(&Self::dir(&self.freezer, id).join("cgroup.procs"))
    }

    fn stats(&self, id: &str) -> Result<Usage, CgroupError> {
        let memory = Self::dir(&self.memory, id);
        Ok(Usage {
            cpu_time_ns: read_u64(&Self::dir(&self.cpuacct, id).join("cpuacct.usage"))?,
            memory_bytes: read_u64(&memory.join("memory.usage_in_bytes"))?,
            memory_peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes"))?,
            pids: read_u64(&Self::dir(&self.pids, id).join("pids.current"))?,
            oom_kills: keyed(&memory.join("memory.oom_control"), "oom_kill")?.unwrap_or(0),
        })
    }

    fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        let freezer = Self::dir(&self.freezer, id);
        // Nothing to freeze: the usual case once a task's init has exited.
        if !freezer.exists()
            || self
                .procs_files(id)
                .iter()
                .all(|f| procs(f).is_ok_and(|p| p.is_empty()))
        {
            return Ok(());
        }
        // Frozen processes cannot fork while we kill them one by one
        // (Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst).
        let state = freezer.join("freezer.state");
        write(&state, "FROZEN")?;
        self.wait_frozen(&state)?;
        for pid in procs(&freezer.join("cgroup.procs"))? {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        write(&state, "THAWED")?;
        wait_empty(&self.procs_files(id))
    }

    fn remove(&self, id: &str) -> Result<(), CgroupError> {
        // Page cache the task left (its sandbox files) stays charged to its
        // memory cgroup, which then lingers in the kernel as an offline
        // "zombie" after rmdir; enough of those slow every cgroup operation
        // down. Reclaim the charge first (cgroup-v1/memory.rst, force_empty).
        let force_empty = Self::dir(&self.memory, id).join("memory.force_empty");
        if force_empty.exists() {
            let _ = write(&force_empty, "0");
        }
        for h in self.hierarchies() {
            rmdir(&Self::dir(h, id))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for V1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cgroup v1 at {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::fixture;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in ["cpu,cpuacct", "memory", "pids", "freezer", "systemd"] {
            std::fs::create_dir_all(dir.path().join(c)).expect("mkdir");
        }
        fixture::file(
            dir.path(),
            "memory/agora/c1/memory.memsw.limit_in_bytes",
            "",
        );
        dir
    }

    #[test]
    fn create_writes_every_limit_in_its_hierarchy() {
        let root = tree();
        let v1 = V1::new(root.path()).expect("v1");
        v1.init_subtree().expect("subtree");
        let limits = Limits {
            cpu_shares: 512,
            cpu_limit: Some(0.5),
            memory_bytes: Some(64 << 20),
            pids_max: Some(100),
        };
        v1.create("c1", &limits).expect("create");
        let r = root.path();
        assert_eq!(fixture::read(r, "cpu,cpuacct/agora/c1/cpu.shares"), "512");
        assert_eq!(
            fixture::read(r, "cpu,cpuacct/agora/c1/cpu.cfs_quota_us"),
            "50000"
        );
        assert_eq!(
            fixture::read(r, "cpu,cpuacct/agora/c1/cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(
            fixture::read(r, "memory/agora/c1/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(
            fixture::read(r, "memory/agora/c1/memory.memsw.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(fixture::read(r, "pids/agora/c1/pids.max"), "100");
        assert!(
            !r.join("systemd/agora").exists(),
            "only the controllers it uses"
        );
        // One procs file per distinct hierarchy: cpu and cpuacct share one.
        assert_eq!(v1.procs_files("c1").len(), 4);
        assert!(r.join("freezer/agora/c1").is_dir());
    }

    #[test]
    fn with_a_devices_hierarchy_everything_is_denied_but_the_usual_few() {
        let root = tree();
        std::fs::create_dir_all(root.path().join("devices")).expect("mkdir");
        let v1 = V1::new(root.path()).expect("v1");
        v1.init_subtree().expect("subtree");
        v1.create("c1", &Limits::default()).expect("create");
        let r = root.path();
        assert_eq!(fixture::read(r, "devices/agora/c1/devices.deny"), "a");
        // (A real cgroup takes each line; the fixture keeps the last.)
        let last = crate::confine::device_cgroup_rules().pop().expect("rules");
        assert_eq!(fixture::read(r, "devices/agora/c1/devices.allow"), last);
        assert_eq!(v1.procs_files("c1").len(), 5);
    }

    #[test]
    fn stats_read_the_kernel_files() {
        let root = tree();
        let r = root.path();
        fixture::file(r, "cpu,cpuacct/agora/c1/cpuacct.usage", "1500000000\n");
        fixture::file(r, "memory/agora/c1/memory.usage_in_bytes", "4096\n");
        fixture::file(r, "memory/agora/c1/memory.max_usage_in_bytes", "8192\n");
        fixture::file(
            r,
            "memory/agora/c1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        fixture::file(r, "pids/agora/c1/pids.current", "3\n");
        let usage = V1::new(r).expect("v1").stats("c1").expect("stats");
        assert_eq!(
            usage,
            Usage {
                cpu_time_ns: 1_500_000_000,
                memory_bytes: 4096,
                memory_peak_bytes: 8192,
                pids: 3,
                oom_kills: 1
            }
        );
    }

    #[test]
    fn missing_controller_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("cpu")).expect("mkdir");
        let err = V1::new(dir.path()).expect_err("no memory controller");
        assert!(
            err.to_string().contains("`cpuacct`") || err.to_string().contains("`memory`"),
            "{err}"
        );
    }
}
