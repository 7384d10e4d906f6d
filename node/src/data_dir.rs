//! The node's data directory:
//!
//! ```text
//! <data_dir>/LOCK       exclusive lock held while a quarry process uses the dir
//! <data_dir>/NODE_ID    this node's Raft node id, decimal, written once
//! <data_dir>/meta.redb  Raft log, vote, state-machine snapshot (quarry-raft)
//! <data_dir>/chunks/    data chunks (quarry-storage, see storage/FORMAT.md)
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An opened data directory; holds its lock until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    node_id: u64,
}

/// Why a data directory cannot be used (the operator's to fix; nothing was written
/// unless the directory was new).
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error("data directory {0} is in use by another quarry process")]
    Locked(PathBuf),
    /// The NODE_ID file is not a number.
    #[error("data directory {path} has an unreadable NODE_ID file: {reason}")]
    BadNodeId {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("data directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DataDir {
    /// Opens `path` (creating it if needed), takes its lock, and reads or assigns
    /// the node id (`new_node_id` for a new directory).
    ///
    /// # Errors
    /// [`DataDirError::Locked`] if another process uses it; others as named.
    pub fn open(path: &Path, new_node_id: u64) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked(path.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let id_path = path.join("NODE_ID");
        let node_id = match fs::read_to_string(&id_path) {
            Ok(text) => text.trim().parse().map_err(|e| DataDirError::BadNodeId {
                path: path.to_owned(),
                reason: format!("{e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let temp = path.join("NODE_ID.tmp");
                let mut file = File::create(&temp).map_err(io(&temp))?;
                writeln!(file, "{new_node_id}").map_err(io(&temp))?;
                file.sync_all().map_err(io(&temp))?;
                fs::rename(&temp, &id_path).map_err(io(&id_path))?;
                File::open(path)
                    .and_then(|d| d.sync_all())
                    .map_err(io(path))?;
                new_node_id
            }
            Err(e) => return Err(io(&id_path)(e)),
        };
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
            node_id,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_a_locked_dir_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDir::open(dir.path(), 1).expect("first open");
        let second = DataDir::open(dir.path(), 1).expect_err("locked");
        assert!(matches!(second, DataDirError::Locked(_)), "{second}");
        drop(first);
        DataDir::open(dir.path(), 1).expect("open after release");
    }

    #[test]
    fn the_node_id_is_kept_across_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(DataDir::open(dir.path(), 7).expect("open").node_id(), 7);
        assert_eq!(DataDir::open(dir.path(), 9).expect("reopen").node_id(), 7);
    }
}
