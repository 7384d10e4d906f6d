//! Errors of the metadata layer.

use crate::NodeId;
use crate::command::CatalogError;

/// Result of metadata operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong reading or writing metadata.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command was applied and refused by the catalog (caller's fault, e.g. the
    /// table exists). The catalog is unchanged.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// No leader could serve the request: this node is not the leader and could
    /// not reach one (election under way, partition, majority down). Nothing was
    /// written; retrying is safe.
    #[error("no Raft leader reachable from this node{}; nothing was written, retry", leader.map(|l| format!(" (last known leader: node {l})")).unwrap_or_default())]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Raft could not complete the request: no quorum, shut down, or a storage
    /// failure (transient unless the node is shutting down). A write may or may not
    /// have been applied.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    /// The Raft storage (redb) failed: the node stops serving metadata.
    #[error("metadata storage error: {0}")]
    Storage(String),
}
