//! Quarry's storage: immutable, checksummed chunks on each node's local disk,
//! grouped into erasure-coded stripes across nodes.
//!
//! Layering: depends only on `quarry-common`. Holds no DataFusion, pgwire,
//! openraft or actor code and opens no sockets: where it needs other nodes it
//! calls the [`ChunkTransport`] it is given (the node implements it over its
//! internal RPC; tests implement it in-process, with faults). The caller
//! decides what a chunk contains (a Parquet data file) and records placement
//! in the catalog through Raft.
//!
//! ```text
//!  bytes ──ChunkStore::put──► <data_dir>/chunks/<id>.tmp ──fsync, rename, fsync dir──► <id>
//!  StripeWriter::put(file) ──ChunkTransport::put──► holder; k files ──► + m parity ──► stripe
//!  StripeStore::get(ChunkRef) ──► local | holder | rebuilt from any k chunks ──► verified Bytes
//! ```
//!
//! - [`chunk_store`]: one node's chunks (write, verified read, list, delete).
//! - [`stripe`]: Reed-Solomon encoding and reconstruction of a stripe.
//! - [`placement`]: rendezvous placement over failure domains, and the plans
//!   of repair, widening, regrouping and collection (pure functions).
//! - [`stripe_store`]: the stripe store over a [`ChunkTransport`].
//! - [`stripe_writer`]: new data files into stripes, each sent once, to its holder.
//!
//! The on-disk format is described in `storage/FORMAT.md`; how storage fits the
//! whole is in `docs/ARCHITECTURE.md`.
#![deny(missing_docs)]

pub mod chunk_store;
mod error;
pub mod placement;
pub mod rebalance;
pub mod stripe;
pub mod stripe_store;
pub mod stripe_writer;
pub mod transport;

pub use chunk_store::{ChunkRef, ChunkStore};
pub use error::{Error, Fault, Result};
pub use stripe_store::{StripeStore, blocking, new_chunk_id};
pub use stripe_writer::StripeWriter;
pub use transport::ChunkTransport;
