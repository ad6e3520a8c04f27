//! The audit log: one JSON line per mutating HTTP call (who, from where,
//! what, when, and how it ended), refused ones included. Operators read it
//! with `jq`; it is appended to and never rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One call, as recorded.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub principal: &'a str,
    pub peer: String,
    pub method: &'a str,
    pub path: &'a str,
    /// The HTTP status the call got.
    pub status: u16,
}

/// An append-only file of [`AuditEntry`] lines.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens (or creates, readable by its owner only) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends `entry`. A failed write is logged, not fatal: the call it
    /// records has already happened.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!("audit entry: {e}");
                return;
            }
        };
        line.push(b'\n');
        // One write per line under the lock: lines never interleave. Calls
        // that mutate are rare, and a small append does not block for long.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::error!(path = %self.path.display(), "writing the audit log: {e}");
        }
    }
}

/// Whether a request with `method` changes something.
pub fn is_mutating(method: &axum::http::Method) -> bool {
    !matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        for status in [200, 403] {
            let log = AuditLog::open(&path).expect("open");
            log.record(&AuditEntry {
                time: "2026-11-27T00:00:00Z".into(),
                principal: "ops",
                peer: "127.0.0.1:1".into(),
                method: "POST",
                path: "/api/v1/agents/a1/drain",
                status,
            });
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["principal"], "ops");
        assert_eq!(lines[1]["status"], 403);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
