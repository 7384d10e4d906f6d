//! The local chunk store: one file per chunk under `<data_dir>/chunks/`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use quarry_common::catalog::ChunkId;

use crate::error::{Error, Result};

/// Suffix of a chunk being written; such files are garbage after a crash.
const TEMP_SUFFIX: &str = ".tmp";

/// What the catalog records of a stored chunk: enough to find and verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The chunk's id (its file name).
    pub id: ChunkId,
    /// Length in bytes.
    pub size_bytes: u64,
    /// CRC-32C (Castagnoli) of the whole chunk.
    pub checksum_crc32c: u32,
}

/// Immutable chunks in one directory of the local disk.
///
/// Writes are durable when [`ChunkStore::put`] returns: the data is written to a
/// temporary file, fsynced, renamed to its final name and the directory fsynced.
/// Reads verify size and checksum before returning a byte.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl ChunkStore {
    /// Opens (creating if needed) the chunk directory `dir` and removes temporary
    /// files left by writes that a crash interrupted.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created or listed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = entry.map_err(io_error(&dir))?.path();
            if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(ChunkStore { dir })
    }

    /// The directory holding the chunks.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of chunk `id`.
    pub fn path_of(&self, id: ChunkId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Stores `data` as a new chunk with a fresh id and returns its reference.
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// [`Error::Io`]; then no chunk exists (a temporary file may remain until the
    /// next open).
    pub fn put(&self, data: &[u8]) -> Result<ChunkRef> {
        self.put_as(ChunkId(uuid::Uuid::now_v7().as_u128()), data)
    }

    /// Stores `data` as chunk `id` (a chunk placed here by another node, or
    /// rebuilt by repair), replacing any file of that id atomically.
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// As [`ChunkStore::put`].
    pub fn put_as(&self, id: ChunkId, data: &[u8]) -> Result<ChunkRef> {
        let path = self.path_of(id);
        let temp = self.dir.join(format!(
            "{id}.{}{TEMP_SUFFIX}",
            uuid::Uuid::now_v7().simple()
        ));
        let mut file = File::create(&temp).map_err(io_error(&temp))?;
        file.write_all(data).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
        drop(file);
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir))?;
        metrics::counter!("quarry_storage_chunk_written_bytes_total").increment(data.len() as u64);
        Ok(ChunkRef {
            id,
            size_bytes: data.len() as u64,
            checksum_crc32c: crc32c::crc32c(data),
        })
    }

    /// Reads chunk `chunk` whole and verifies its size and checksum.
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// [`Error::Missing`] if the file is gone, [`Error::Corrupt`] if its bytes do not
    /// match, [`Error::Io`] otherwise.
    pub fn get(&self, chunk: &ChunkRef) -> Result<Bytes> {
        let path = self.path_of(chunk.id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                metrics::counter!("quarry_storage_chunk_corruptions_total").increment(1);
                return Err(Error::Missing {
                    chunk: chunk.id,
                    path,
                });
            }
            Err(e) => return Err(io_error(&path)(e)),
        };
        let mut data = Vec::with_capacity(chunk.size_bytes as usize);
        file.read_to_end(&mut data).map_err(io_error(&path))?;
        let actual_crc32c = crc32c::crc32c(&data);
        if data.len() as u64 != chunk.size_bytes || actual_crc32c != chunk.checksum_crc32c {
            metrics::counter!("quarry_storage_chunk_corruptions_total").increment(1);
            return Err(Error::Corrupt {
                chunk: chunk.id,
                expected_size_bytes: chunk.size_bytes,
                actual_size_bytes: data.len() as u64,
                expected_crc32c: chunk.checksum_crc32c,
                actual_crc32c,
            });
        }
        metrics::counter!("quarry_storage_chunk_read_bytes_total").increment(data.len() as u64);
        Ok(Bytes::from(data))
    }

    /// Deletes chunk `id` if present. Used to discard the chunks of a statement that
    /// failed before its commit, and by garbage collection.
    ///
    /// # Errors
    /// [`Error::Io`] if the file exists but cannot be removed.
    pub fn delete(&self, id: ChunkId) -> Result<()> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    /// When chunk `id` was last written, if it exists.
    pub fn modified(&self, id: ChunkId) -> Option<std::time::SystemTime> {
        fs::metadata(self.path_of(id))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Ids of all chunks on disk, in id order.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed.
    pub fn list(&self) -> Result<Vec<ChunkId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let entry = entry.map_err(io_error(&self.dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ChunkStore::open(dir.path().join("chunks")).expect("open");
        (dir, store)
    }

    #[test]
    fn put_then_get_returns_the_same_bytes() {
        let (_dir, store) = store();
        let chunk = store.put(b"hello parquet").expect("put");
        assert_eq!(chunk.size_bytes, 13);
        assert_eq!(&store.get(&chunk).expect("get")[..], b"hello parquet");
        assert_eq!(store.list().expect("list"), vec![chunk.id]);
    }

    #[test]
    fn a_flipped_byte_is_reported_as_corrupt() {
        let (_dir, store) = store();
        let chunk = store.put(b"0123456789").expect("put");
        let path = store.path_of(chunk.id);
        let mut bytes = fs::read(&path).expect("read");
        bytes[3] ^= 0x01;
        fs::write(&path, bytes).expect("write");
        let err = store.get(&chunk).expect_err("corrupt chunk must not read");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.is_data_corruption());
    }

    #[test]
    fn a_truncated_chunk_is_reported_as_corrupt() {
        let (_dir, store) = store();
        let chunk = store.put(b"0123456789").expect("put");
        fs::write(store.path_of(chunk.id), b"01234").expect("write");
        assert!(matches!(store.get(&chunk), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_deleted_chunk_is_reported_as_missing() {
        let (_dir, store) = store();
        let chunk = store.put(b"x").expect("put");
        store.delete(chunk.id).expect("delete");
        assert!(matches!(store.get(&chunk), Err(Error::Missing { .. })));
        store.delete(chunk.id).expect("deleting twice is fine");
    }

    #[test]
    fn open_removes_leftover_temporary_files() {
        let (dir, store) = store();
        let chunk = store.put(b"kept").expect("put");
        let temp = store.dir().join(format!("{}{TEMP_SUFFIX}", ChunkId(7)));
        fs::write(&temp, b"torn").expect("write");
        let reopened = ChunkStore::open(dir.path().join("chunks")).expect("reopen");
        assert!(!temp.exists());
        assert_eq!(reopened.list().expect("list"), vec![chunk.id]);
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (_dir, store) = store();
            let chunk = store.put(&data).expect("put");
            prop_assert_eq!(&store.get(&chunk).expect("get")[..], &data[..]);
        }
    }
}
