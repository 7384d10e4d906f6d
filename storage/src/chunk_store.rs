//! The local chunk store: one file per chunk under `<data_dir>/chunks/`.
//!
//! A chunk file (layout 2, storage/FORMAT.md "Chunks") is the chunk's bytes,
//! then the CRC-32C of every [`BLOCK_BYTES`] block of them, then a 16-byte
//! trailer; so a read of a byte range reads and verifies only the blocks it
//! covers. Files of layout 1 (the bytes alone, whole-file checksum in the
//! catalog) are still read; a range read of one reads it whole.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use quarry_common::catalog::ChunkId;

use crate::error::{Error, Result};

/// Suffix of a chunk being written; such files are garbage after a crash.
const TEMP_SUFFIX: &str = ".tmp";

/// Bytes covered by one block checksum: the unit a range read verifies.
pub const BLOCK_BYTES: u64 = 64 * 1024;
/// First bytes of a layout-2 trailer.
const TRAILER_MAGIC: [u8; 4] = *b"QCB2";
/// Trailer: magic, block size (u32 LE), block count (u32 LE), CRC-32C of the
/// block checksum table (u32 LE).
const TRAILER_BYTES: u64 = 16;

/// Blocks of a chunk of `size_bytes` bytes.
fn block_count(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(BLOCK_BYTES)
}

/// File length of a layout-2 chunk of `size_bytes` bytes.
fn layout_2_bytes(size_bytes: u64) -> u64 {
    size_bytes + 4 * block_count(size_bytes) + TRAILER_BYTES
}

/// The block checksum table and trailer that follow `data` in its file.
fn block_table(data: &[u8]) -> Vec<u8> {
    let mut table =
        Vec::with_capacity((4 * block_count(data.len() as u64) + TRAILER_BYTES) as usize);
    for block in data.chunks(BLOCK_BYTES as usize) {
        table.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    let table_crc32c = crc32c::crc32c(&table);
    let blocks = block_count(data.len() as u64) as u32;
    table.extend_from_slice(&TRAILER_MAGIC);
    table.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
    table.extend_from_slice(&blocks.to_le_bytes());
    table.extend_from_slice(&table_crc32c.to_le_bytes());
    table
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

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
/// Reads verify what they return before returning a byte: a whole read the
/// chunk's size and checksum, a range read the checksums of the blocks it
/// covers.
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
        file.write_all(&block_table(data))
            .map_err(io_error(&temp))?;
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

    /// Opens chunk `chunk`'s file and tells its layout by its length.
    fn open_chunk(&self, chunk: &ChunkRef) -> Result<(File, PathBuf, Layout)> {
        let path = self.path_of(chunk.id);
        let file = match File::open(&path) {
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
        let length = file.metadata().map_err(io_error(&path))?.len();
        let layout = if length == layout_2_bytes(chunk.size_bytes) {
            Layout::Blocks
        } else if length == chunk.size_bytes {
            Layout::Whole
        } else {
            metrics::counter!("quarry_storage_chunk_corruptions_total").increment(1);
            return Err(Error::Corrupt {
                chunk: chunk.id,
                expected_size_bytes: chunk.size_bytes,
                actual_size_bytes: length,
                expected_crc32c: chunk.checksum_crc32c,
                actual_crc32c: 0,
            });
        };
        Ok((file, path, layout))
    }

    /// Reads chunk `chunk` whole and verifies its size and checksum (and, in
    /// layout 2, its block checksums, so scrubbing finds a damaged table too).
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// [`Error::Missing`] if the file is gone, [`Error::Corrupt`] if its bytes do not
    /// match, [`Error::BlockCorrupt`] if its block checksums do not, [`Error::Io`]
    /// otherwise.
    pub fn get(&self, chunk: &ChunkRef) -> Result<Bytes> {
        let (mut file, path, layout) = self.open_chunk(chunk)?;
        let mut data = Vec::with_capacity(chunk.size_bytes as usize);
        file.read_to_end(&mut data).map_err(io_error(&path))?;
        metrics::counter!("quarry_storage_chunk_read_bytes_total").increment(data.len() as u64);
        let table = data.split_off(chunk.size_bytes.min(data.len() as u64) as usize);
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
        if layout == Layout::Blocks && table != block_table(&data) {
            metrics::counter!("quarry_storage_chunk_corruptions_total").increment(1);
            return Err(Error::BlockCorrupt {
                chunk: chunk.id,
                offset_bytes: chunk.size_bytes,
                length_bytes: table.len() as u64,
            });
        }
        Ok(Bytes::from(data))
    }

    /// Reads bytes `range` of chunk `chunk`, verified: in layout 2 only the
    /// blocks the range covers are read and checked (plus the block checksum
    /// table, itself checked); a layout-1 chunk is read and checked whole.
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// As [`ChunkStore::get`]; [`Error::BlockCorrupt`] names the damaged
    /// block; [`Error::OutOfRange`] if `range` is not within the chunk.
    pub fn get_range(&self, chunk: &ChunkRef, range: Range<u64>) -> Result<Bytes> {
        if range.start > range.end || range.end > chunk.size_bytes {
            return Err(Error::OutOfRange {
                chunk: chunk.id,
                start_bytes: range.start,
                end_bytes: range.end,
                size_bytes: chunk.size_bytes,
            });
        }
        let (file, path, layout) = self.open_chunk(chunk)?;
        if layout == Layout::Whole {
            drop(file);
            return Ok(self
                .get(chunk)?
                .slice(range.start as usize..range.end as usize));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let corrupt = |offset_bytes: u64, length_bytes: u64| {
            metrics::counter!("quarry_storage_chunk_corruptions_total").increment(1);
            Error::BlockCorrupt {
                chunk: chunk.id,
                offset_bytes,
                length_bytes,
            }
        };
        let blocks = block_count(chunk.size_bytes);
        let mut table = vec![0u8; (4 * blocks + TRAILER_BYTES) as usize];
        file.read_exact_at(&mut table, chunk.size_bytes)
            .map_err(io_error(&path))?;
        let (sums, trailer) = table.split_at((4 * blocks) as usize);
        if trailer[..4] != TRAILER_MAGIC
            || u64::from(u32_at(trailer, 4)) != BLOCK_BYTES
            || u64::from(u32_at(trailer, 8)) != blocks
            || u32_at(trailer, 12) != crc32c::crc32c(sums)
        {
            return Err(corrupt(chunk.size_bytes, table.len() as u64));
        }
        let first = range.start / BLOCK_BYTES;
        let last = (range.end - 1) / BLOCK_BYTES;
        let start = first * BLOCK_BYTES;
        let end = ((last + 1) * BLOCK_BYTES).min(chunk.size_bytes);
        let mut data = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut data, start)
            .map_err(io_error(&path))?;
        metrics::counter!("quarry_storage_chunk_read_bytes_total")
            .increment(data.len() as u64 + table.len() as u64);
        for (i, block) in data.chunks(BLOCK_BYTES as usize).enumerate() {
            let index = first as usize + i;
            if crc32c::crc32c(block) != u32_at(sums, 4 * index) {
                return Err(corrupt(index as u64 * BLOCK_BYTES, block.len() as u64));
            }
        }
        let data = Bytes::from(data);
        Ok(data.slice((range.start - start) as usize..(range.end - start) as usize))
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

/// How a chunk file is laid out (storage/FORMAT.md "Chunks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Layout 1: the bytes alone; the catalog's checksum covers them whole.
    Whole,
    /// Layout 2: the bytes, their block checksums, a trailer.
    Blocks,
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

    /// Bytes that differ from block to block.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_range_read_checks_only_the_blocks_it_covers() {
        let (_dir, store) = store();
        let data = pattern(5 * BLOCK_BYTES as usize + 100);
        let chunk = store.put(&data).expect("put");
        let path = store.path_of(chunk.id);
        let mut bytes = fs::read(&path).expect("read");
        // Damage block 3.
        bytes[3 * BLOCK_BYTES as usize + 10] ^= 0x01;
        fs::write(&path, bytes).expect("write");
        let b = BLOCK_BYTES;
        let clean = store
            .get_range(&chunk, 10..2 * b + 5)
            .expect("blocks 0-2 are intact");
        assert_eq!(&clean[..], &data[10..(2 * b + 5) as usize]);
        let tail = store
            .get_range(&chunk, 4 * b..5 * b + 100)
            .expect("blocks 4-5 are intact");
        assert_eq!(&tail[..], &data[(4 * b) as usize..]);
        let err = store
            .get_range(&chunk, 2 * b..3 * b + 1)
            .expect_err("block 3 is read");
        assert!(
            matches!(err, Error::BlockCorrupt { offset_bytes, .. } if offset_bytes == 3 * b),
            "{err}"
        );
        assert!(err.is_data_corruption());
        assert!(
            matches!(store.get(&chunk), Err(Error::Corrupt { .. })),
            "a whole read sees it"
        );
    }

    #[test]
    fn a_damaged_block_table_is_reported_by_range_and_whole_reads() {
        let (_dir, store) = store();
        let data = pattern(3 * BLOCK_BYTES as usize);
        let chunk = store.put(&data).expect("put");
        let path = store.path_of(chunk.id);
        let mut bytes = fs::read(&path).expect("read");
        bytes[data.len() + 5] ^= 0x10;
        fs::write(&path, bytes).expect("write");
        let err = store
            .get_range(&chunk, 0..10)
            .expect_err("the table is checked");
        assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
        let err = store
            .get(&chunk)
            .expect_err("a whole read (scrub) checks the table too");
        assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
    }

    #[test]
    fn chunks_of_the_old_whole_file_layout_are_still_read() {
        let (_dir, store) = store();
        let data = pattern(2 * BLOCK_BYTES as usize + 7);
        // Layout 1: the bytes alone, as nodes wrote them before block checksums.
        let id = ChunkId(42);
        fs::write(store.path_of(id), &data).expect("write layout 1");
        let chunk = ChunkRef {
            id,
            size_bytes: data.len() as u64,
            checksum_crc32c: crc32c::crc32c(&data),
        };
        assert_eq!(&store.get(&chunk).expect("whole")[..], &data[..]);
        let range = store.get_range(&chunk, 5..BLOCK_BYTES + 9).expect("range");
        assert_eq!(&range[..], &data[5..(BLOCK_BYTES + 9) as usize]);
        let mut bytes = data.clone();
        bytes[BLOCK_BYTES as usize * 2] ^= 1;
        fs::write(store.path_of(id), &bytes).expect("damage");
        assert!(
            matches!(store.get_range(&chunk, 0..1), Err(Error::Corrupt { .. })),
            "a layout-1 range read checks the whole file"
        );
    }

    #[test]
    fn a_range_outside_the_chunk_is_refused() {
        let (_dir, store) = store();
        let chunk = store.put(b"0123456789").expect("put");
        assert!(matches!(
            store.get_range(&chunk, 5..11),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(&store.get_range(&chunk, 10..10).expect("empty")[..], b"");
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (_dir, store) = store();
            let chunk = store.put(&data).expect("put");
            prop_assert_eq!(&store.get(&chunk).expect("get")[..], &data[..]);
        }

        #[test]
        fn any_range_reads_what_a_whole_read_slices(
            len in 0usize..(3 * BLOCK_BYTES as usize),
            a in 0usize..(3 * BLOCK_BYTES as usize),
            b in 0usize..(3 * BLOCK_BYTES as usize),
        ) {
            let (_dir, store) = store();
            let data = pattern(len);
            let chunk = store.put(&data).expect("put");
            let (start, end) = (a.min(b).min(len), a.max(b).min(len));
            let range = store.get_range(&chunk, start as u64..end as u64).expect("range");
            prop_assert_eq!(&range[..], &data[start..end]);
        }
    }
}
