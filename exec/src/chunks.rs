//! Where data files' bytes live, as the engine sees it: [`DataFileStore`].
//!
//! On one node without peers the local [`ChunkStore`] is the whole story
//! ([`LocalFiles`]). In a cluster the node crate implements the trait over
//! stripes (DESIGN.md §4): new data files are written locally, placed into
//! stripes across nodes when their statement commits ([`DataFileStore::seal`]),
//! and read from wherever they live, rebuilt from parity when their node is
//! down or their bytes are corrupt.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use quarry_common::catalog::{ChunkId, DataFile, NodeId, Stripe, StripeLayout};
use quarry_storage::{ChunkRef, ChunkStore};

/// A node of the cluster as `quarry_system.nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node id.
    pub node_id: NodeId,
    /// Node-to-node address.
    pub rpc_address: String,
    /// PostgreSQL address.
    pub pg_address: String,
    /// Failure domain.
    pub domain: String,
    /// alive, suspect or down (gossip).
    pub state: String,
    /// leader, voter or learner (Raft).
    pub raft_role: String,
}

/// The engine's access to data files, and to the cluster they are spread over.
#[async_trait]
pub trait DataFileStore: Send + Sync + Debug + 'static {
    /// Stores the bytes of a new (uncommitted) data file on this node.
    ///
    /// # Errors
    /// The local disk's error; then nothing is stored.
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef>;

    /// The verified bytes of data file `chunk`, wherever it lives.
    ///
    /// # Errors
    /// [`quarry_storage::Error::Missing`] / `Corrupt` / `StripeLost` when the
    /// bytes cannot be found or rebuilt.
    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes>;

    /// Deletes an uncommitted data file (best effort: a failure leaves garbage
    /// that the collector removes later).
    fn discard(&self, chunk: ChunkId);

    /// Places `files`, new data files of a table with stripe layout `layout`
    /// (None: the cluster default), into stripes on the cluster's nodes, ready
    /// for the commit that records the returned placement.
    ///
    /// # Errors
    /// If the chunks cannot be stored on enough nodes; nothing is committed.
    async fn seal(
        &self,
        layout: Option<StripeLayout>,
        files: &[DataFile],
    ) -> quarry_storage::Result<Vec<Stripe>>;

    /// The cluster's nodes as this node sees them.
    fn nodes(&self) -> Vec<NodeRow> {
        Vec::new()
    }

    /// Whether chunks placed on `node` can be read now.
    fn node_available(&self, _node: NodeId) -> bool {
        true
    }
}

/// Data files in a local chunk store and nowhere else (no stripes).
#[derive(Debug, Clone)]
pub struct LocalFiles(pub ChunkStore);

#[async_trait]
impl DataFileStore for LocalFiles {
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        let store = self.0.clone();
        blocking(move || store.put(&bytes)).await
    }

    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        let store = self.0.clone();
        blocking(move || store.get(&chunk)).await
    }

    fn discard(&self, chunk: ChunkId) {
        if let Err(e) = self.0.delete(chunk) {
            tracing::warn!(%chunk, error = %e, "could not delete the chunk of an uncommitted data file");
        }
    }

    async fn seal(
        &self,
        _layout: Option<StripeLayout>,
        _files: &[DataFile],
    ) -> quarry_storage::Result<Vec<Stripe>> {
        Ok(Vec::new())
    }
}

/// Runs blocking chunk-store work off the async threads.
///
/// # Errors
/// The work's error, or `Io` if the blocking task panicked.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> quarry_storage::Result<T> + Send + 'static,
) -> quarry_storage::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| quarry_storage::Error::Io {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(format!("chunk task failed: {e}")),
        })?
}
