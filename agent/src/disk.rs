//! The `disk` limit, enforced as Mesos's disk isolator does: every so often
//! the agent measures what each running task holds on disk (its sandbox,
//! and its image overlay's writes) and kills a task over its `disk`
//! resource, which then fails with `REASON_CONTAINER_LIMITATION_DISK`.
//! Measuring walks directories, so it runs on a blocking thread.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One running task's place on disk and its limit.
#[derive(Clone, Debug)]
pub struct DiskClaim<K> {
    pub key: K,
    pub paths: Vec<PathBuf>,
    pub limit_bytes: u64,
}

/// A task found over its limit.
#[derive(Clone, Debug, PartialEq)]
pub struct OverDisk<K> {
    pub key: K,
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

impl<K> OverDisk<K> {
    /// The task's failure message.
    pub fn message(&self) -> String {
        format!(
            "disk limit of {} MB exceeded: the task's sandbox holds {} MB",
            self.limit_bytes / 1_000_000,
            self.used_bytes.div_ceil(1_000_000)
        )
    }
}

/// Bytes allocated below `path` (files' blocks, as `du` counts them),
/// not following symbolic links nor crossing into other filesystems (a
/// volume bound into the sandbox is not the task's to pay for).
pub fn usage(path: &Path) -> u64 {
    let Ok(root) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let device = root.dev();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// The claims whose tasks hold more than their limit.
pub fn over_limit<K: Clone>(claims: &[DiskClaim<K>]) -> Vec<OverDisk<K>> {
    claims
        .iter()
        .filter_map(|c| {
            let used: u64 = c.paths.iter().map(|p| usage(p)).sum();
            (used > c.limit_bytes).then(|| OverDisk {
                key: c.key.clone(),
                used_bytes: used,
                limit_bytes: c.limit_bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_over_its_disk_is_found_and_one_within_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        let small = dir.path().join("small");
        std::fs::create_dir_all(big.join("nested")).expect("mkdir");
        std::fs::create_dir_all(&small).expect("mkdir");
        std::fs::write(big.join("nested/blob"), vec![1u8; 3_000_000]).expect("write");
        std::fs::write(small.join("note"), b"hello").expect("write");
        // A link out of the sandbox is not followed.
        std::os::unix::fs::symlink("/usr", big.join("usr")).expect("symlink");
        assert!(
            usage(&big) >= 3_000_000 && usage(&big) < 4_000_000,
            "{}",
            usage(&big)
        );
        let claims = vec![
            DiskClaim {
                key: "big",
                paths: vec![big],
                limit_bytes: 1_000_000,
            },
            DiskClaim {
                key: "small",
                paths: vec![small, dir.path().join("missing")],
                limit_bytes: 1_000_000,
            },
        ];
        let over = over_limit(&claims);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].key, "big");
        assert!(
            over[0].message().contains("disk limit of 1 MB"),
            "{}",
            over[0].message()
        );
    }
}
