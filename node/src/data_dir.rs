//! The node's data directory:
//!
//! ```text
//! <data_dir>/LOCK       exclusive lock held while a quarry process uses the dir
//! <data_dir>/NODE_ID    this node's id, decimal, written once (after joining)
//! <data_dir>/CLUSTER_ID the cluster's id, hex, written with NODE_ID
//! <data_dir>/meta.redb  Raft log, vote, state-machine snapshot (quarry-raft)
//! <data_dir>/chunks/    data chunks (quarry-storage, see storage/FORMAT.md)
//! <data_dir>/cache/     chunks rebuilt by degraded reads (deleted after a while)
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An opened data directory; holds its lock until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    identity: Option<(u64, u128)>,
    created: bool,
}

/// Why a data directory cannot be used (the operator's to fix; nothing was written
/// unless the directory was new).
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error("data directory {0} is in use by another quarry process")]
    Locked(PathBuf),
    /// The NODE_ID or CLUSTER_ID file is not a number.
    #[error("unreadable id file {path}: {reason}")]
    BadId {
        /// The file.
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

fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), DataDirError> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp).map_err(io(&temp))?;
    writeln!(file, "{text}").map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    let target = dir.join(name);
    fs::rename(&temp, &target).map_err(io(&target))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn read_id(dir: &Path, name: &str, radix: u32) -> Result<Option<u128>, DataDirError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => u128::from_str_radix(text.trim(), radix)
            .map(Some)
            .map_err(|e| DataDirError::BadId {
                path: path.clone(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

impl DataDir {
    /// Opens `path` (creating it if needed), takes its lock, and reads the
    /// node's identity if it has one. Writes nothing else.
    ///
    /// # Errors
    /// [`DataDirError::Locked`] if another process uses it; others as named.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let created = !path.exists();
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
        let node_id = read_id(path, "NODE_ID", 10)?;
        let cluster_id = read_id(path, "CLUSTER_ID", 16)?;
        let identity = match (node_id, cluster_id) {
            (Some(node), Some(cluster)) => Some((node as u64, cluster)),
            // Written by a version before cluster ids: node 1 of its own cluster.
            (Some(node), None) => Some((node as u64, 0)),
            _ => None,
        };
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
            identity,
            created,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This node's id and its cluster's id, once assigned.
    pub fn identity(&self) -> Option<(u64, u128)> {
        self.identity
    }

    /// Records the node's identity (once, when it bootstraps or joins).
    ///
    /// # Errors
    /// If the files cannot be written.
    pub fn set_identity(&mut self, node_id: u64, cluster_id: u128) -> Result<(), DataDirError> {
        write_atomically(&self.path, "CLUSTER_ID", &format!("{cluster_id:032x}"))?;
        write_atomically(&self.path, "NODE_ID", &node_id.to_string())?;
        self.identity = Some((node_id, cluster_id));
        Ok(())
    }

    /// Undoes [`DataDir::open`] of a directory that has no identity: removes
    /// the lock file, and the directory if this open created it, so a failed
    /// first start leaves nothing behind.
    pub fn abandon(self) {
        if self.identity.is_some() {
            return;
        }
        let _ = fs::remove_file(self.path.join("LOCK"));
        if self.created {
            let _ = fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_a_locked_dir_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDir::open(dir.path()).expect("first open");
        let second = DataDir::open(dir.path()).expect_err("locked");
        assert!(matches!(second, DataDirError::Locked(_)), "{second}");
        drop(first);
        DataDir::open(dir.path()).expect("open after release");
    }

    #[test]
    fn the_identity_is_kept_across_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut first = DataDir::open(dir.path()).expect("open");
        assert_eq!(first.identity(), None);
        first.set_identity(7, 0xabc).expect("set");
        drop(first);
        assert_eq!(
            DataDir::open(dir.path()).expect("reopen").identity(),
            Some((7, 0xabc))
        );
    }

    #[test]
    fn abandoning_a_new_dir_removes_it() {
        let parent = tempfile::tempdir().expect("temp dir");
        let path = parent.path().join("node");
        DataDir::open(&path).expect("open").abandon();
        assert!(!path.exists());
    }
}
