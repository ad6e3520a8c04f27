//! Control groups for task containers: one [`CgroupManager`] trait, a v1 and
//! a v2 implementation, chosen once at run time by looking at the cgroup
//! filesystem under an injectable root (`cgroup.controllers` at the root
//! means the unified v2 hierarchy).
//!
//! This speaks the kernel's cgroup file protocol directly rather than through
//! `cgroups-rs`: that crate discovers hierarchies from `/proc/self/mountinfo`,
//! so it cannot be pointed at a fake tree for unit tests, and the handful of
//! files a container needs (Documentation/admin-guide/cgroup-v1/*.rst,
//! cgroup-v2.rst) is smaller than the adapter would be.
//!
//! Every container lives at `<hierarchy>/agora/<container-id>`.

mod v1;
mod v2;

use std::io;
use std::path::{Path, PathBuf};

pub use v1::V1;
pub use v2::V2;

/// The subtree under each hierarchy that the agent owns.
pub const AGENT_SUBTREE: &str = "agora";

/// Why a cgroup operation failed; I/O errors carry their path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "no cgroup hierarchy found under {0} (neither cgroup.controllers nor v1 controller directories)"
    )]
    NotMounted(PathBuf),
    #[error("cgroup v1 controller `{controller}` is not mounted under {root}")]
    MissingController {
        controller: &'static str,
        root: PathBuf,
    },
    #[error("container cgroup {path} still has processes after kill")]
    StillPopulated { path: PathBuf },
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let content = read(path)?;
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content,
    })
}

/// The value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`,
/// `memory.oom_control`).
pub(crate) fn keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    let content = read(path)?;
    Ok(content.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    }))
}

pub(crate) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io {
        op: "creating",
        path: path.to_path_buf(),
        source,
    })
}

/// `rmdir` of a cgroup; one that is already gone is fine.
pub(crate) fn rmdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Pids listed in a `cgroup.procs` file.
pub(crate) fn procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(content
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What a container is allowed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Relative cpu weight in v1 shares (1 cpu = 1024).
    pub cpu_shares: u64,
    /// Hard cpu cap in cpus (CFS quota), if any.
    pub cpu_limit: Option<f64>,
    /// Memory limit in bytes, swap included.
    pub memory_bytes: Option<u64>,
    /// Most processes at once.
    pub pids_max: Option<u64>,
}

/// The CFS period used for hard cpu limits (100 ms, the kernel default).
pub const CFS_PERIOD_US: u64 = 100_000;

impl Limits {
    /// The CFS quota for the hard limit, in µs per [`CFS_PERIOD_US`].
    pub fn cfs_quota_us(&self) -> Option<u64> {
        self.cpu_limit
            .map(|cpus| ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000))
    }
}

/// What a container has used.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Cpu time, all processes, in nanoseconds.
    pub cpu_time_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
    /// How many times the kernel's OOM killer struck inside the container.
    pub oom_kills: u64,
}

/// Cgroup operations the containerizer needs; one implementation per
/// cgroup version.
pub trait CgroupManager: Send + Sync {
    /// `v1` or `v2`.
    fn version(&self) -> &'static str;
    /// Creates the agent's own subtree (and enables controllers on v2).
    fn init_subtree(&self) -> Result<(), CgroupError>;
    /// Creates a container's cgroup(s) and applies its limits.
    fn create(&self, id: &str, limits: &Limits) -> Result<(), CgroupError>;
    /// The `cgroup.procs` files a process writes itself into to join the
    /// container (one per v1 hierarchy).
    fn procs_files(&self, id: &str) -> Vec<PathBuf>;
    /// Pids in the container.
    fn pids(&self, id: &str) -> Result<Vec<i32>, CgroupError>;
    /// Usage so far.
    fn stats(&self, id: &str) -> Result<Usage, CgroupError>;
    /// SIGKILLs every process in the container, so that none can fork away
    /// meanwhile (freezer on v1, `cgroup.kill` on v2).
    fn kill_all(&self, id: &str) -> Result<(), CgroupError>;
    /// Removes the container's cgroup(s); fails while processes remain.
    fn remove(&self, id: &str) -> Result<(), CgroupError>;
}

/// Which cgroup layout is mounted under `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Result<Box<dyn CgroupManager>, CgroupError> {
    if root.join("cgroup.controllers").exists() {
        return Ok(Box::new(V2::new(root)));
    }
    if root.is_dir() {
        return Ok(Box::new(V1::new(root)?));
    }
    Err(CgroupError::NotMounted(root.to_path_buf()))
}

/// Lists the subdirectories of `dir` (a missing dir is empty).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Io {
                op: "listing",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    Ok(out)
}

/// Waits (bounded) for a cgroup to have no processes, polling its procs
/// files; kill is asynchronous in the kernel.
pub(crate) fn wait_empty(files: &[PathBuf]) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut busy = None;
        for f in files {
            if !procs(f)?.is_empty() {
                busy = Some(f.clone());
            }
        }
        match busy {
            None => return Ok(()),
            Some(path) if std::time::Instant::now() >= deadline => {
                return Err(CgroupError::StillPopulated { path });
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A fake cgroup tree in a temporary directory, with the files the
    //! kernel would create (youki's `set_fixture` idea).

    use std::path::Path;

    pub fn file(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write fixture");
    }

    pub fn read(root: &Path, rel: &str) -> String {
        std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v2_by_cgroup_controllers_and_v1_by_controller_dirs() {
        let v2 = tempfile::tempdir().expect("tempdir");
        fixture::file(v2.path(), "cgroup.controllers", "cpu memory pids\n");
        assert_eq!(detect(v2.path()).expect("v2").version(), "v2");

        let v1 = tempfile::tempdir().expect("tempdir");
        for c in ["cpu,cpuacct", "memory", "pids", "freezer"] {
            std::fs::create_dir_all(v1.path().join(c)).expect("mkdir");
        }
        assert_eq!(detect(v1.path()).expect("v1").version(), "v1");

        assert!(matches!(
            detect(Path::new("/nonexistent/cgroup")),
            Err(CgroupError::NotMounted(_))
        ));
    }

    #[test]
    fn quota_follows_the_cpu_limit() {
        let limits = Limits {
            cpu_limit: Some(0.5),
            ..Limits::default()
        };
        assert_eq!(limits.cfs_quota_us(), Some(50_000));
        assert_eq!(Limits::default().cfs_quota_us(), None);
    }
}
