//! Errors of the chunk store.

use std::path::PathBuf;

use quarry_common::catalog::ChunkId;

/// Result of chunk store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk failed an operation (environment's fault, maybe transient). A failed
    /// write leaves at most a `.tmp` file, removed at the next open; no chunk exists.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A chunk recorded in the catalog is not on disk (lost disk, operator deleted
    /// it). Nothing was changed.
    #[error("chunk {chunk} is missing from {path}")]
    Missing {
        /// The chunk.
        chunk: ChunkId,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A chunk's bytes do not match its recorded size or checksum (bit rot, torn or
    /// tampered file). Nothing was changed; the bytes are not returned.
    #[error(
        "chunk {chunk} is corrupt: expected {expected_size_bytes} bytes with CRC-32C {expected_crc32c:08x}, found {actual_size_bytes} bytes with CRC-32C {actual_crc32c:08x}"
    )]
    Corrupt {
        /// The chunk.
        chunk: ChunkId,
        /// Size recorded at write time.
        expected_size_bytes: u64,
        /// Size found on disk.
        actual_size_bytes: u64,
        /// Checksum recorded at write time.
        expected_crc32c: u32,
        /// Checksum of the bytes found.
        actual_crc32c: u32,
    },
    /// Fewer than k chunks of a stripe are readable: its data is lost.
    #[error("stripe lost: {available} chunks readable, {needed} needed")]
    StripeLost {
        /// Chunks needed (k).
        needed: usize,
        /// Chunks readable.
        available: usize,
    },
    /// The erasure codec refused its input (a bug: a shape it does not support).
    #[error("erasure coding failed: {0}")]
    ErasureCoding(String),
}

impl Error {
    /// Whether the error means stored data is lost or damaged (SQLSTATE XX001).
    pub fn is_data_corruption(&self) -> bool {
        matches!(
            self,
            Error::Missing { .. } | Error::Corrupt { .. } | Error::StripeLost { .. }
        )
    }
}
