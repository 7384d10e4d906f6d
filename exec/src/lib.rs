//! Quarry's query execution: SQL sessions over DataFusion, reading table snapshots
//! from Parquet data files in the chunk store and writing new ones.
//!
//! Layering: depends on `quarry-common`, `quarry-storage` (chunks) and `quarry-raft`
//! (catalog commands). Opens no sockets and spawns no actors; the node drives
//! [`Session`]s from its PostgreSQL front end and implements [`Metadata`] over Raft.
//!
//! ```text
//!  Session ──parse──► Statement ──► DataFusion plan ──► SnapshotTable::scan
//!     │                                   │                  │ zone-map pruning
//!     │                                   ▼                  ▼
//!     │                           TableSink / CopyIn    ChunkStore::get (CRC-32C)
//!     │                                   │
//!     └──────── Metadata::write ◄── WriteSet (data files pending commit)
//! ```
#![deny(missing_docs)]

pub mod array_text;
pub mod audit;
pub mod backup;
pub mod bad_rows;
mod buffer;
pub mod bytea;
pub mod catalog;
pub mod charset;
pub mod chunks;
pub(crate) mod client_queries;
pub(crate) mod composite;
pub mod copy;
pub mod copy_binary;
pub mod credentials;
pub mod data_file;
pub mod distributed;
pub mod error;
pub mod external;
pub mod field_ids;
pub mod filter_placement;
pub mod information_schema;
pub mod jobs;
pub mod json;
pub mod memory;
pub mod merge;
pub mod optimizer;
pub mod parser;
pub mod partition;
pub mod pg_activity;
pub mod pg_catalog;
pub mod pg_functions;
pub mod pg_roles;
pub mod pg_signatures;
pub mod pgoutput;
pub mod privileges;
pub mod replication;
pub mod result_cache;
pub mod rewrite;
pub mod row_id;
pub mod runtime;
pub mod scram;
pub mod session;
pub mod shared;
pub mod source;
pub mod system;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;
pub mod unnest;

pub use error::{Error, Result};
pub use parser::QuarryStatement;
pub use session::{
    AppendMode, Appended, ChannelState, CommandTag, Compacted, Compaction, CompactionKind, CopyIn,
    Engine, Metadata, Notice, Output, QueryResources, Session, StreamRows, compaction_candidates,
    compaction_due,
};
