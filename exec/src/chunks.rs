//! Where data files' bytes live, as the engine sees it: [`DataFileStore`].
//!
//! On one node without peers the local [`ChunkStore`] is the whole story
//! ([`LocalFiles`]). In a cluster the node crate implements the trait over
//! `quarry_storage::StripeStore` (docs/ARCHITECTURE.md, "Write path"): new
//! data files go through a [`FileSink`] straight to their holders, grouped
//! into stripes as they arrive (`quarry_storage::StripeWriter`), and are read
//! from wherever they live, rebuilt from parity when their node is down or
//! their bytes are corrupt.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use quarry_common::catalog::{ChunkId, NodeId, Stripe, StripeLayout};
use quarry_storage::{ChunkRef, ChunkStore, blocking};

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

/// Where the new data files of one table written by one transaction go, as
/// the engine finishes them: each is stored once, where it will live.
#[async_trait]
pub trait FileSink: Send + Sync + Debug {
    /// Stores a new (uncommitted) data file where it will live.
    ///
    /// # Errors
    /// If no node (or the local disk) accepts it; then the statement fails.
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef>;

    /// Stores the bytes of a data file the catalog knows as `chunk` (one of
    /// the ingest buffer's) where it will live, under that id.
    ///
    /// # Errors
    /// As [`FileSink::put`].
    async fn put_as(&self, chunk: ChunkId, bytes: Bytes) -> quarry_storage::Result<ChunkRef>;

    /// Forgets a file put here that the transaction no longer adds.
    fn discard(&self, chunk: ChunkId);

    /// The placement of the files put here, for the commit that records
    /// them: stripes with at least one file not discarded.
    ///
    /// # Errors
    /// If the last stripe's parity cannot be stored on enough nodes; nothing
    /// is committed.
    async fn finish(&self) -> quarry_storage::Result<Vec<Stripe>>;
}

/// The cluster's sink: files go to their stripes' holders as they come.
#[async_trait]
impl FileSink for quarry_storage::StripeWriter {
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        quarry_storage::StripeWriter::put(self, bytes).await
    }

    async fn put_as(&self, chunk: ChunkId, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        quarry_storage::StripeWriter::put_as(self, chunk, bytes).await
    }

    fn discard(&self, chunk: ChunkId) {
        quarry_storage::StripeWriter::discard(self, chunk);
    }

    async fn finish(&self) -> quarry_storage::Result<Vec<Stripe>> {
        quarry_storage::StripeWriter::finish(self).await
    }
}

/// The engine's access to data files, and to the cluster they are spread over.
#[async_trait]
pub trait DataFileStore: Send + Sync + Debug + 'static {
    /// A sink for new data files of a table with stripe layout `layout`
    /// (None: the cluster default).
    fn sink(&self, layout: Option<StripeLayout>) -> Arc<dyn FileSink>;

    /// The verified bytes of data file `chunk`, wherever it lives.
    ///
    /// # Errors
    /// [`quarry_storage::Error::Missing`] / `Corrupt` / `StripeLost` when the
    /// bytes cannot be found or rebuilt.
    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes>;

    /// Bytes `range` of data file `chunk`, verified, wherever it lives; only
    /// the blocks the range covers are read where the file's layout allows.
    ///
    /// # Errors
    /// As [`DataFileStore::get`]; `OutOfRange` if `range` is not in the file.
    async fn get_range(&self, chunk: ChunkRef, range: Range<u64>) -> quarry_storage::Result<Bytes>;

    /// Deletes an uncommitted data file (best effort: a failure leaves garbage
    /// that the collector removes later).
    fn discard(&self, chunk: ChunkId);

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
impl FileSink for LocalFiles {
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        let store = self.0.clone();
        blocking(move || store.put(&bytes)).await
    }

    async fn put_as(&self, chunk: ChunkId, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        let store = self.0.clone();
        blocking(move || store.put_as(chunk, &bytes)).await
    }

    fn discard(&self, chunk: ChunkId) {
        DataFileStore::discard(self, chunk);
    }

    async fn finish(&self) -> quarry_storage::Result<Vec<Stripe>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl DataFileStore for LocalFiles {
    fn sink(&self, _layout: Option<StripeLayout>) -> Arc<dyn FileSink> {
        Arc::new(self.clone())
    }

    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        let store = self.0.clone();
        blocking(move || store.get(&chunk)).await
    }

    async fn get_range(&self, chunk: ChunkRef, range: Range<u64>) -> quarry_storage::Result<Bytes> {
        let store = self.0.clone();
        blocking(move || store.get_range(&chunk, range)).await
    }

    fn discard(&self, chunk: ChunkId) {
        if let Err(e) = self.0.delete(chunk) {
            tracing::warn!(%chunk, error = %e, "could not delete the chunk of an uncommitted data file");
        }
    }
}

/// A [`DataFileStore`] that keeps what was recently read in memory: a buffer
/// pool of verified byte ranges of data files (a whole file is the range
/// `0..size`). Data files are immutable, so an entry never goes stale; it is
/// dropped when the pool needs room (quick_cache's CLOCK-Pro policy, which
/// resists one-off scans) or when the file's chunk is discarded. Bytes are
/// verified when they are read from disk, fetched or rebuilt, before they
/// enter the pool. Scans read a file's footer, page index and column chunks
/// as ranges, so the pool holds the columns queries read, not whole files.
#[derive(Debug)]
pub struct CachedFiles {
    inner: Arc<dyn DataFileStore>,
    pool: quick_cache::sync::Cache<(ChunkRef, u64, u64), Bytes, RangeWeight>,
}

/// A cached range weighs its length in bytes.
#[derive(Debug, Clone)]
struct RangeWeight;

impl quick_cache::Weighter<(ChunkRef, u64, u64), Bytes> for RangeWeight {
    fn weight(&self, _range: &(ChunkRef, u64, u64), bytes: &Bytes) -> u64 {
        bytes.len().max(1) as u64
    }
}

/// Ranges expected in the pool per byte of capacity (an estimate quick_cache
/// sizes its table by; column chunks are tens of KiB to a few MiB).
const TYPICAL_RANGE_BYTES: u64 = 256 << 10;

impl CachedFiles {
    /// `inner` with a pool of at most `capacity_bytes` (0: no pool).
    pub fn new(inner: Arc<dyn DataFileStore>, capacity_bytes: u64) -> CachedFiles {
        let items = (capacity_bytes / TYPICAL_RANGE_BYTES).max(16) as usize;
        CachedFiles {
            inner,
            pool: quick_cache::sync::Cache::with_weighter(items, capacity_bytes, RangeWeight),
        }
    }

    /// The bytes of `key` from the pool, or read by `read` (one read per key
    /// however many scans want it at once).
    async fn cached(
        &self,
        key: (ChunkRef, u64, u64),
        read: impl Future<Output = quarry_storage::Result<Bytes>>,
    ) -> quarry_storage::Result<Bytes> {
        let mut missed = false;
        let bytes = self
            .pool
            .get_or_insert_async(&key, async {
                missed = true;
                read.await
            })
            .await?;
        if missed {
            metrics::counter!("quarry_data_cache_misses_total").increment(1);
            metrics::gauge!("quarry_data_cache_bytes").set(self.pool.weight() as f64);
        } else {
            metrics::counter!("quarry_data_cache_hits_total").increment(1);
        }
        Ok(bytes)
    }
}

#[async_trait]
impl DataFileStore for CachedFiles {
    fn sink(&self, layout: Option<StripeLayout>) -> Arc<dyn FileSink> {
        self.inner.sink(layout)
    }

    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        self.cached((chunk, 0, chunk.size_bytes), self.inner.get(chunk))
            .await
    }

    async fn get_range(&self, chunk: ChunkRef, range: Range<u64>) -> quarry_storage::Result<Bytes> {
        let key = (chunk, range.start, range.end);
        self.cached(key, self.inner.get_range(chunk, range)).await
    }

    fn discard(&self, chunk: ChunkId) {
        self.pool.retain(|cached, _| cached.0.id != chunk);
        self.inner.discard(chunk);
    }

    fn nodes(&self) -> Vec<NodeRow> {
        self.inner.nodes()
    }

    fn node_available(&self, node: NodeId) -> bool {
        self.inner.node_available(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_file_is_served_from_memory_until_discarded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ChunkStore::open(dir.path()).expect("store");
        let cached = CachedFiles::new(Arc::new(LocalFiles(store.clone())), 1 << 20);
        let chunk = cached
            .sink(None)
            .put(Bytes::from_static(b"a data file"))
            .await
            .expect("put");
        assert_eq!(cached.get(chunk).await.expect("first read"), "a data file");
        // Gone from disk (without discard): the pool still has it.
        store.delete(chunk.id).expect("delete");
        assert_eq!(cached.get(chunk).await.expect("from memory"), "a data file");
        // Discarded: gone from the pool too.
        cached.discard(chunk.id);
        assert!(
            cached.get(chunk).await.is_err(),
            "a discarded file is not served"
        );
    }

    #[tokio::test]
    async fn a_pool_of_zero_bytes_reads_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ChunkStore::open(dir.path()).expect("store");
        let cached = CachedFiles::new(Arc::new(LocalFiles(store.clone())), 0);
        let chunk = cached
            .sink(None)
            .put(Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(cached.get(chunk).await.expect("read"), "x");
        store.delete(chunk.id).expect("delete");
        assert!(cached.get(chunk).await.is_err(), "nothing was kept");
    }
}
