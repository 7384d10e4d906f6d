//! Client-side sub-commands of `quarry` that talk to a running node over the
//! PostgreSQL wire protocol, like any other client.
//!
//! Layering: depends on no other Quarry crate; uses tokio-postgres only, so what it
//! does is exactly what an external client could do.
//!
//! - [`tpch`]: `quarry load tpch`, the TPC-H sample data through COPY.
//! - [`cluster`]: `quarry cluster status` from the system tables, and
//!   `quarry cluster local`, which starts child `quarry` processes.
#![deny(missing_docs)]

pub mod cluster;
pub mod tpch;
