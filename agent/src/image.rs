//! Task root filesystems. An image is a directory, or a `.tar`/`.tar.gz` of
//! one; archives are unpacked once into a cache keyed by their content's
//! SHA-256. Each task gets a writable overlay of the image (mounted by the
//! container init inside the task's own mount namespace, so it vanishes with
//! the task).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::containerizer::ContainerizerError;

/// Where a task's root filesystem comes from and goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The read-only image.
    pub lower: PathBuf,
    /// The task's writes.
    pub upper: PathBuf,
    /// Overlayfs's scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the overlay is mounted, and what the task pivots into.
    pub target: PathBuf,
}

/// Unpacked images, by content hash.
#[derive(Clone, Debug)]
pub struct ImageCache {
    dir: PathBuf,
}

fn image_error(path: &Path, reason: impl std::fmt::Display) -> ContainerizerError {
    ContainerizerError::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl ImageCache {
    pub fn new(dir: PathBuf) -> Self {
        ImageCache { dir }
    }

    /// The directory holding `image`'s root filesystem, unpacking it first
    /// if it is an archive not seen before.
    pub fn resolve(&self, image: &Path) -> Result<PathBuf, ContainerizerError> {
        let meta = std::fs::metadata(image).map_err(|e| image_error(image, e))?;
        if meta.is_dir() {
            return image.canonicalize().map_err(|e| image_error(image, e));
        }
        let hash = sha256_file(image)?;
        let unpacked = self.dir.join(&hash);
        if unpacked.is_dir() {
            return Ok(unpacked);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| image_error(&self.dir, e))?;
        let scratch = self.dir.join(format!(
            "{hash}.unpacking-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&scratch).map_err(|e| image_error(&scratch, e))?;
        // GNU tar detects gzip itself and keeps owners, modes and devices.
        let out = std::process::Command::new("tar")
            .arg("-xf")
            .arg(image)
            .arg("-C")
            .arg(&scratch)
            .output()
            .map_err(|e| image_error(image, format!("running tar: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(image_error(
                image,
                format!(
                    "not a .tar or .tar.gz root filesystem: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        // Another launch may have unpacked it meanwhile; either copy is whole.
        if std::fs::rename(&scratch, &unpacked).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        Ok(unpacked)
    }

    /// Lays out a task's overlay under its runtime directory.
    pub fn prepare(
        &self,
        image: &Path,
        container_dir: &Path,
    ) -> Result<RootfsSpec, ContainerizerError> {
        let lower = self.resolve(image)?;
        if !lower.join("bin/sh").exists() {
            return Err(image_error(
                image,
                "has no /bin/sh to run the task's command with",
            ));
        }
        let spec = RootfsSpec {
            lower,
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
            target: container_dir.join("rootfs"),
        };
        for dir in [&spec.upper, &spec.work, &spec.target] {
            std::fs::create_dir_all(dir).map_err(|e| image_error(dir, e))?;
        }
        Ok(spec)
    }
}

fn sha256_file(path: &Path) -> Result<String, ContainerizerError> {
    let mut file = std::fs::File::open(path).map_err(|e| image_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| image_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_rootfs(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::write(dir.join("bin/sh"), b"#!fake").expect("write");
        std::fs::write(dir.join("marker"), b"image").expect("write");
    }

    #[test]
    fn archives_unpack_once_by_content_and_directories_are_used_in_place() {
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src");
        tiny_rootfs(&src);
        let archive = work.path().join("image.tar.gz");
        let ok = std::process::Command::new("tar")
            .args(["-czf"])
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        let cache = ImageCache::new(work.path().join("cache"));
        let first = cache.resolve(&archive).expect("unpack");
        assert_eq!(
            std::fs::read(first.join("marker")).expect("marker"),
            b"image"
        );
        let copy = work.path().join("same.tar.gz");
        std::fs::copy(&archive, &copy).expect("copy");
        assert_eq!(
            cache.resolve(&copy).expect("cached"),
            first,
            "same content, same entry"
        );
        assert_eq!(
            cache.resolve(&src).expect("dir"),
            src.canonicalize().expect("canonical")
        );

        let spec = cache
            .prepare(&archive, &work.path().join("c1"))
            .expect("prepare");
        assert!(spec.upper.is_dir() && spec.work.is_dir() && spec.target.is_dir());
    }

    #[test]
    fn bad_images_are_refused_with_the_path() {
        let work = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(work.path().join("cache"));
        let junk = work.path().join("junk.tar");
        std::fs::write(&junk, b"not a tarball").expect("write");
        let err = cache.resolve(&junk).expect_err("junk");
        assert!(err.to_string().contains("junk.tar"), "{err}");
        let empty = work.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let err = cache
            .prepare(&empty, &work.path().join("c"))
            .expect_err("no shell");
        assert!(err.to_string().contains("/bin/sh"), "{err}");
        assert!(cache.resolve(Path::new("/no/such/image")).is_err());
    }
}
