//! Errors of the chunk store.

use std::path::PathBuf;

use quarry_common::catalog::{ChunkId, NodeId};
use serde::{Deserialize, Serialize};

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
    /// Part of a chunk does not match its block checksums, or its block
    /// checksum table is damaged (bit rot, torn or tampered file). Nothing was
    /// changed; the bytes are not returned.
    #[error(
        "chunk {chunk} is corrupt in bytes {offset_bytes}..+{length_bytes} (block checksum mismatch)"
    )]
    BlockCorrupt {
        /// The chunk.
        chunk: ChunkId,
        /// Where the damaged block (or the table) starts in the chunk file.
        offset_bytes: u64,
        /// Its length.
        length_bytes: u64,
    },
    /// A range read past the end of a chunk (a bug of the caller). Nothing was read.
    #[error("range {start_bytes}..{end_bytes} is outside chunk {chunk} of {size_bytes} bytes")]
    OutOfRange {
        /// The chunk.
        chunk: ChunkId,
        /// Start of the range asked for.
        start_bytes: u64,
        /// End of the range asked for.
        end_bytes: u64,
        /// The chunk's length.
        size_bytes: u64,
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
    /// Another node could not be asked about a chunk in time (no address,
    /// connection refused, deadline passed): transient. A `put` may or may not
    /// have stored the chunk there; an unrecorded chunk is collected later.
    #[error("node {node} unreachable for chunk {chunk}: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// The chunk asked for or sent.
        chunk: ChunkId,
        /// What the transport saw.
        reason: String,
    },
    /// Another node answered with an error of its own (its copy is missing or
    /// corrupt, its disk failed). Nothing changed here.
    #[error("node {node} failed on chunk {chunk}: {message}")]
    Remote {
        /// The node.
        node: NodeId,
        /// The chunk.
        chunk: ChunkId,
        /// The kind of the node's error, as it reported it.
        fault: Fault,
        /// The node's error.
        message: String,
    },
    /// A chunk's bytes arrived from another node not matching its recorded
    /// size or checksum (damaged in transfer): transient; nothing returned.
    #[error("chunk {chunk} from node {node} was damaged in transfer")]
    Damaged {
        /// The node it came from.
        node: NodeId,
        /// The chunk.
        chunk: ChunkId,
    },
    /// Too few live nodes accepted a stripe's chunks (the caller's cluster is
    /// too small or too many nodes are down): nothing was committed; chunks
    /// already stored are orphans that collection removes.
    #[error("stripe {stripe}: {placed} of {needed} chunks placed, no more live nodes to try")]
    Placement {
        /// The stripe.
        stripe: ChunkId,
        /// Chunks to place.
        needed: usize,
        /// Chunks placed before the nodes ran out.
        placed: usize,
    },
    /// A bug: a blocking task of the store panicked. Its work may be half
    /// done; what it wrote is unrecorded and collected later.
    #[error("internal storage error: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

/// The kind of a chunk error, as it crosses the internal RPC: the node that
/// asked another about a chunk classifies that node's error as it would its
/// own, so a client gets the same SQLSTATE wherever the chunk was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The chunk is not on the node's disk ([`Error::Missing`]).
    Missing,
    /// The chunk's bytes are damaged ([`Error::Corrupt`], [`Error::BlockCorrupt`]).
    Corrupt,
    /// The node's disk failed the operation ([`Error::Io`]).
    Io,
    /// The request was outside the chunk ([`Error::OutOfRange`]).
    OutOfRange,
    /// Anything else the node could not do (a bug, or a failure of its own peers).
    Internal,
}

impl Error {
    /// Whether the error means stored data is lost or damaged (SQLSTATE XX001),
    /// here or on the node that answered.
    pub fn is_data_corruption(&self) -> bool {
        matches!(
            self,
            Error::Missing { .. }
                | Error::Corrupt { .. }
                | Error::BlockCorrupt { .. }
                | Error::StripeLost { .. }
                | Error::Remote {
                    fault: Fault::Missing | Fault::Corrupt,
                    ..
                }
        )
    }

    /// This error's kind, for sending it to the node that asked.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Missing { .. } => Fault::Missing,
            Error::Corrupt { .. } | Error::BlockCorrupt { .. } | Error::StripeLost { .. } => {
                Fault::Corrupt
            }
            Error::Io { .. } => Fault::Io,
            Error::OutOfRange { .. } => Fault::OutOfRange,
            Error::Remote { fault, .. } => *fault,
            Error::ErasureCoding(_)
            | Error::Unreachable { .. }
            | Error::Damaged { .. }
            | Error::Placement { .. }
            | Error::Internal { .. } => Fault::Internal,
        }
    }
}
