//! Quarry's replicated metadata: one openraft group whose state machine is the
//! catalog (schemas, tables, field ids) and every table's snapshot history.
//!
//! Layering: depends on `quarry-common` only; holds no DataFusion, pgwire or actor
//! code and opens no sockets. Where Raft needs the network it calls the
//! [`openraft::RaftNetworkFactory`] the caller passes in (the node implements it
//! over its internal RPC; a one-node group never sends anything).
//!
//! ```text
//!  exec ──Command──► Meta::write ──client_write──► leader log (redb) ──commit──►
//!        StateMachine::apply ──► Catalog' (Arc swap) ──► Meta::read (read-index)
//! ```
//!
//! The Raft log, the vote, the committed log id and which state-machine snapshot
//! is current live in one redb database, `<data_dir>/meta.redb`; the snapshot
//! itself is a file in `<data_dir>/meta.snapshots/`, written and streamed to
//! followers record by record ([`snapshot_file`]).
#![deny(missing_docs)]
// openraft's StorageError is large and is the error type its traits require.
#![allow(clippy::result_large_err)]

pub mod command;
mod error;
mod log_store;
mod meta;
pub mod network;
pub mod snapshot_file;
mod state_machine;

pub use command::{
    Applied, CatalogError, ColumnDef, Command, ConstraintDef, ConstraintDefKind, PUBLIC_NAME,
    Proposal, RoleOptions, RowDeletes, SchemaChange, TableChange, created_tables, decode_rows,
    encode_rows,
};
pub use error::{Error, Result};
pub use meta::{LeaderLink, Meta, MetaConfig, NoLink, now_micros};

/// Raft node id; assigned once per node and kept in its data dir.
pub type NodeId = u64;

/// What the cluster knows of a node's addresses, stored in Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeAddr {
    /// Address of the node's internal RPC listener (HOST:PORT).
    pub rpc: String,
    /// Address of its PostgreSQL listener (HOST:PORT).
    pub pg: String,
    /// Its failure domain label; empty: the node is a domain of its own.
    pub domain: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rpc={} pg={}", self.rpc, self.pg)?;
        if !self.domain.is_empty() {
            write!(f, " domain={}", self.domain)?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// Quarry's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = std::result::Result<Applied, CatalogError>,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle type.
pub type Raft = openraft::Raft<TypeConfig>;
