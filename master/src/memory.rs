//! Gives memory the process no longer uses back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that
//! allocated, up to eight per core) and returns it only from the top of
//! the main heap: after a burst of a hundred thousand short tasks the
//! master's live heap was back to ~150 MB while it stayed 870 MB resident,
//! and over a million tasks it kept growing. `malloc_trim` releases the
//! free pages of every arena; the master calls it every [`TRIM_EVERY`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often free memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims every [`TRIM_EVERY`] on a thread of its own until the returned
/// handle is dropped.
pub fn trim_periodically() -> std::io::Result<Trimmer> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TRIM_EVERY) {
                let started = Instant::now();
                if trim() {
                    tracing::debug!(took = ?started.elapsed(), "free memory returned to the system");
                }
            }
        })?;
    Ok(Trimmer { _stop: stop })
}

/// Stops the trimming thread when dropped.
pub struct Trimmer {
    _stop: mpsc::Sender<()>,
}

/// Returns free heap pages to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own free lists, under its own locks; any thread may call it.
    unsafe { malloc_trim(0) == 1 }
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
