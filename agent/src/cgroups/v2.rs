//! cgroup v2: the unified hierarchy; containers at `<root>/agora/<id>` with
//! the cpu, memory and pids controllers enabled down the path
//! (Documentation/admin-guide/cgroup-v2.rst).

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    AGENT_SUBTREE, CFS_PERIOD_US, CgroupError, CgroupManager, Limits, Usage, keyed, mkdir, procs,
    read_u64, rmdir, wait_empty, write,
};

const CONTROLLERS: &str = "+cpu +memory +pids";

/// The unified hierarchy.
#[derive(Debug)]
pub struct V2 {
    root: PathBuf,
}

impl V2 {
    pub fn new(root: &Path) -> V2 {
        V2 {
            root: root.to_path_buf(),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(AGENT_SUBTREE).join(id)
    }

    /// v1 shares (2..=262144) to v2 weight (1..=10000), the mapping runc
    /// and the kernel documentation use.
    pub fn weight_from_shares(shares: u64) -> u64 {
        let shares = shares.clamp(2, 262_144);
        1 + ((shares - 2) * 9999) / 262_142
    }
}

impl CgroupManager for V2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn init_subtree(&self) -> Result<(), CgroupError> {
        // Controllers must be enabled in every ancestor's subtree_control.
        write(&self.root.join("cgroup.subtree_control"), CONTROLLERS)?;
        let subtree = self.root.join(AGENT_SUBTREE);
        mkdir(&subtree)?;
        write(&subtree.join("cgroup.subtree_control"), CONTROLLERS)
    }

    fn create(&self, id: &str, limits: &Limits) -> Result<(), CgroupError> {
        let dir = self.dir(id);
        mkdir(&dir)?;
        write(
            &dir.join("cpu.weight"),
            &Self::weight_from_shares(limits.cpu_shares).to_string(),
        )?;
        let max = match limits.cfs_quota_us() {
            Some(quota) => format!("{quota} {CFS_PERIOD_US}"),
            None => format!("max {CFS_PERIOD_US}"),
        };
        write(&dir.join("cpu.max"), &max)?;
        if let Some(bytes) = limits.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        let pids_max = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
        write(&dir.join("pids.max"), &pids_max)
    }

    fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        vec![self.dir(id).join("cgroup.procs")]
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>, CgroupError> {
        procs(&self.dir(id).join("cgroup.procs"))
    }

    fn stats(&self, id: &str) -> Result<Usage, CgroupError> {
        let dir = self.dir(id);
        let peak = dir.join("memory.peak");
        Ok(Usage {
            cpu_time_ns: keyed(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000,
            memory_bytes: read_u64(&dir.join("memory.current"))?,
            // memory.peak exists from Linux 5.19.
            memory_peak_bytes: if peak.exists() { read_u64(&peak)? } else { 0 },
            pids: read_u64(&dir.join("pids.current"))?,
            oom_kills: keyed(&dir.join("memory.events"), "oom_kill")?.unwrap_or(0),
        })
    }

    fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        let dir = self.dir(id);
        if !dir.exists() || procs(&dir.join("cgroup.procs"))?.is_empty() {
            return Ok(());
        }
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            // Linux 5.14+: the kernel kills the whole subtree atomically.
            write(&kill_file, "1")?;
        } else {
            write(&dir.join("cgroup.freeze"), "1")?;
            for pid in procs(&dir.join("cgroup.procs"))? {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            write(&dir.join("cgroup.freeze"), "0")?;
        }
        wait_empty(&self.procs_files(id))
    }

    fn remove(&self, id: &str) -> Result<(), CgroupError> {
        rmdir(&self.dir(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::fixture;

    #[test]
    fn create_enables_controllers_and_writes_limits() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        fixture::file(r, "cgroup.controllers", "cpu memory pids io\n");
        fixture::file(r, "agora/c1/memory.swap.max", "max\n");
        let v2 = V2::new(r);
        v2.init_subtree().expect("subtree");
        assert_eq!(fixture::read(r, "cgroup.subtree_control"), CONTROLLERS);
        assert_eq!(
            fixture::read(r, "agora/cgroup.subtree_control"),
            CONTROLLERS
        );
        let limits = Limits {
            cpu_shares: 1024,
            cpu_limit: Some(1.5),
            memory_bytes: Some(128 << 20),
            pids_max: None,
        };
        v2.create("c1", &limits).expect("create");
        assert_eq!(fixture::read(r, "agora/c1/cpu.weight"), "39");
        assert_eq!(fixture::read(r, "agora/c1/cpu.max"), "150000 100000");
        assert_eq!(fixture::read(r, "agora/c1/memory.max"), "134217728");
        assert_eq!(fixture::read(r, "agora/c1/memory.swap.max"), "0");
        assert_eq!(fixture::read(r, "agora/c1/pids.max"), "max");
        assert_eq!(v2.procs_files("c1"), vec![r.join("agora/c1/cgroup.procs")]);
    }

    #[test]
    fn stats_and_kill_use_the_unified_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        fixture::file(
            r,
            "agora/c1/cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        fixture::file(r, "agora/c1/memory.current", "1024\n");
        fixture::file(r, "agora/c1/memory.peak", "2048\n");
        fixture::file(r, "agora/c1/pids.current", "2\n");
        fixture::file(
            r,
            "agora/c1/memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        fixture::file(r, "agora/c1/cgroup.kill", "");
        // A pid no process has: the fake kernel below empties the cgroup
        // once it is told to kill it.
        fixture::file(r, "agora/c1/cgroup.procs", "2147483646\n");
        let kernel = {
            let dir = r.join("agora/c1");
            std::thread::spawn(move || {
                while std::fs::read_to_string(dir.join("cgroup.kill")).unwrap_or_default() != "1" {
                    std::thread::yield_now();
                }
                std::fs::write(dir.join("cgroup.procs"), "").expect("empty the fake cgroup");
            })
        };
        let v2 = V2::new(r);
        let usage = v2.stats("c1").expect("stats");
        assert_eq!(usage.cpu_time_ns, 2_500_000);
        assert_eq!(
            (
                usage.memory_bytes,
                usage.memory_peak_bytes,
                usage.pids,
                usage.oom_kills
            ),
            (1024, 2048, 2, 1)
        );
        v2.kill_all("c1").expect("kill");
        kernel.join().expect("fake kernel");
        assert_eq!(fixture::read(r, "agora/c1/cgroup.kill"), "1");
    }

    #[test]
    fn shares_map_to_weights_like_runc() {
        assert_eq!(V2::weight_from_shares(2), 1);
        assert_eq!(V2::weight_from_shares(262_144), 10_000);
        assert_eq!(V2::weight_from_shares(1024), 39);
    }
}
