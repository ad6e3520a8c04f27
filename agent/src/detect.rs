//! What this machine offers when the operator does not say: cpus, memory,
//! disk under the data directory, and the default port range.

use std::path::Path;

use agora_proto::{RangeSet, Resources};

/// Memory kept back for the system and the agent itself (MiB).
const MEM_RESERVED_MIB: f64 = 1024.0;
/// Disk kept back under the data directory (MiB).
const DISK_RESERVED_MIB: f64 = 1024.0;

/// This machine's resources: all cpus, memory less 1 GiB, free disk of the
/// data directory's filesystem less 1 GiB, ports 31000-32000.
pub fn detect(data_dir: &Path) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mem = (total_memory_mib().unwrap_or(2048.0) - MEM_RESERVED_MIB).max(256.0);
    let disk = (free_disk_mib(data_dir).unwrap_or(10_240.0) - DISK_RESERVED_MIB).max(0.0);
    Resources::new()
        .with_scalar("cpus", cpus)
        .with_scalar("mem", mem.floor())
        .with_scalar("disk", disk.floor())
        .with_ranges("ports", RangeSet::new([(31000, 32000)]))
}

fn total_memory_mib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn free_disk_mib(path: &Path) -> Option<f64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as f64 * stat.fragment_size() as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_plausible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = detect(dir.path());
        assert!(r.scalar("cpus") >= 1.0);
        assert!(r.scalar("mem") >= 256.0);
        assert_eq!(r.ranges("ports").len(), 1001);
    }
}
