//! Quarry's shared vocabulary.
//!
//! Layering: this crate depends on nothing of Quarry's and holds no I/O. Every other
//! crate (`storage`, `raft`, `exec`, `node`) speaks these types:
//!
//! ```text
//!   common ──► storage ──┐
//!      │                 ├──► exec ──► node (the `quarry` binary)
//!      └────► raft ──────┘
//! ```
//!
//! - [`catalog`]: the catalog model that Raft replicates (schemas, tables, columns
//!   with field ids, data files, table snapshots with zone maps).
//! - [`partition`]: partitioned tables (partition keys, bounds and ids).
//! - [`roles`]: roles, SCRAM verifiers, owners and privileges.
//! - [`sqlstate`]: PostgreSQL SQLSTATE codes, the error classes clients see.
#![deny(missing_docs)]

pub mod catalog;
pub mod partition;
pub mod roles;
pub mod sqlstate;
pub mod subscription;

pub use sqlstate::SqlState;
