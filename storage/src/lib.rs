//! Quarry's chunk storage: immutable, checksummed blobs on a node's local disk.
//!
//! Layering: depends only on `quarry-common`. Holds no DataFusion, pgwire, Raft or
//! actor code; the caller decides what a chunk contains (a Parquet data file) and
//! records the returned [`ChunkRef`] in the catalog through Raft.
//!
//! ```text
//!   bytes ──put──► <data_dir>/chunks/<id>.tmp ──fsync, rename, fsync dir──► <id>
//!                                                        │
//!   ChunkRef {id, size, crc32c} ◄────────────────────────┘   (recorded via Raft)
//!   get(ChunkRef) ──read whole file, verify size + CRC-32C──► Bytes | Error::Corrupt
//! ```
//!
//! The on-disk format is described in `storage/FORMAT.md`.
#![deny(missing_docs)]

mod chunk_store;
mod error;
pub mod stripe;

pub use chunk_store::{ChunkRef, ChunkStore};
pub use error::{Error, Result};
