//! The node's audit log: one JSON object per line in `<data_dir>/audit.jsonl`
//! (fields `at_micros`, `event`, `user`, `address`, `detail`; see
//! [`quarry_exec::audit::AuditEvent`]), appended and flushed per event, and
//! the most recent [`AUDIT_EVENTS_KEPT_MAX`] kept in memory for
//! `quarry_system.audit` (read back from the file's end at start).
//!
//! The file is not rotated by the node; `logrotate` with `copytruncate`
//! works on it. A write that fails is reported in the node's own log and
//! does not fail the statement or login that caused it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quarry_exec::audit::{AuditEvent, AuditLog};

/// Events `quarry_system.audit` shows (the newest).
pub const AUDIT_EVENTS_KEPT_MAX: usize = 10_000;

/// The audit log of a node.
#[derive(Debug)]
pub struct FileAuditLog {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    recent: VecDeque<AuditEvent>,
}

impl FileAuditLog {
    /// Opens (creating if needed) the audit log at `path`, mode 0600.
    ///
    /// # Errors
    /// If the file cannot be opened for appending.
    pub fn open(path: &Path) -> anyhow::Result<FileAuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut recent = VecDeque::new();
        if let Ok(existing) = File::open(path) {
            for line in BufReader::new(existing).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<AuditEvent>(&line) {
                    if recent.len() == AUDIT_EVENTS_KEPT_MAX {
                        recent.pop_front();
                    }
                    recent.push_back(event);
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open the audit log {}: {e}", path.display()))?;
        Ok(FileAuditLog {
            path: path.to_owned(),
            state: Mutex::new(State { file, recent }),
        })
    }
}

impl AuditLog for FileAuditLog {
    fn record(&self, event: AuditEvent) {
        let mut state = self
            .state
            .lock()
            .expect("audit lock is never held across a panic");
        match serde_json::to_string(&event) {
            Ok(mut line) => {
                line.push('\n');
                if let Err(e) = state.file.write_all(line.as_bytes()) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
                }
            }
            Err(e) => tracing::error!(error = %e, "an audit event does not encode"),
        }
        if state.recent.len() == AUDIT_EVENTS_KEPT_MAX {
            state.recent.pop_front();
        }
        state.recent.push_back(event);
    }

    fn recent(&self) -> Vec<AuditEvent> {
        self.state
            .lock()
            .expect("audit lock is never held across a panic")
            .recent
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail: &str) -> AuditEvent {
        AuditEvent {
            at_micros: 1,
            event: "ddl".into(),
            user: "quarry".into(),
            address: None,
            detail: detail.into(),
        }
    }

    #[test]
    fn events_are_json_lines_read_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.jsonl");
        let log = FileAuditLog::open(&path).expect("open");
        log.record(event("CREATE TABLE public.a"));
        log.record(event("DROP TABLE public.a"));
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("{\"at_micros\":1,\"event\":\"ddl\""));
        let again = FileAuditLog::open(&path).expect("reopen");
        let details: Vec<String> = again.recent().into_iter().map(|e| e.detail).collect();
        assert_eq!(details, ["CREATE TABLE public.a", "DROP TABLE public.a"]);
    }
}
