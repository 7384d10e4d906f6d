//! [`StripeStore`]: a node's data files across the cluster (storage/FORMAT.md,
//! "Stripes"). New data files go straight to their holders through a
//! [`crate::StripeWriter`], which groups them into stripes of k data chunks
//! and m parity chunks on distinct nodes ([`crate::placement`]). Reads come
//! from the chunk's node; when it is down or the bytes are corrupt the chunk
//! is rebuilt from any k chunks of its stripe (a degraded read) and cached
//! locally.
//!
//! Also here: the scrub of this node's chunks, the collection of chunks no
//! stripe places on this node, and the rebuild and new parity that repair,
//! widening and regrouping use. The node decides when these run and records
//! their results through Raft.
//!
//! ```text
//!  StripeWriter::put ──► holder via ChunkTransport (k files: + m parity, concurrent)
//!  get ──► local? ─no─► holder (catalog or pending) ─fails─► cache? ─no─► rebuild from k chunks ──► cache
//! ```

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quarry_common::catalog::{ChunkId, NodeId, Stripe, StripeChunk};

use crate::placement::{chunks_to_keep, order_without};
use crate::transport::ChunkTransport;
use crate::{ChunkRef, ChunkStore, Error, Result};

/// Chunks younger than this are never collected: they may belong to a
/// statement or repair whose commit is still on its way.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);
/// Chunks rebuilt by degraded reads stay cached this long.
const CACHE_TTL: Duration = Duration::from_secs(10 * 60);

/// The node's data files: local chunks, stripes across the cluster.
#[derive(Debug, Clone)]
pub struct StripeStore {
    local: ChunkStore,
    cache: ChunkStore,
    cluster: Arc<dyn ChunkTransport>,
    /// Where this node's uncommitted data files are (their stripe writers
    /// live): the catalog does not know them yet.
    pending: Arc<Mutex<HashMap<ChunkId, NodeId>>>,
    /// Chunks placed here at the last collection, and those that have
    /// since moved away, with when collection first saw them gone.
    moved: Arc<Mutex<MovedAway>>,
    /// How long a chunk that moved away stays (the longest query window).
    moved_grace: Duration,
}

/// What collection remembers between runs: which local chunks were placed
/// here, and since when those no longer placed here have been gone.
#[derive(Debug, Default)]
struct MovedAway {
    placed: HashSet<ChunkId>,
    since: HashMap<ChunkId, SystemTime>,
}

/// The chunk-store reference of a stripe's chunk.
pub fn reference(chunk: &StripeChunk) -> ChunkRef {
    ChunkRef {
        id: chunk.chunk,
        size_bytes: chunk.size_bytes,
        checksum_crc32c: chunk.checksum_crc32c,
    }
}

/// A new chunk id: a UUIDv7, so ids sort roughly by creation time.
pub fn new_chunk_id() -> ChunkId {
    ChunkId(uuid::Uuid::now_v7().as_u128())
}

/// Runs blocking chunk-store work off the async threads.
///
/// # Errors
/// The work's error, or [`Error::Internal`] if the blocking task panicked.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal {
            message: format!("chunk task failed: {e}"),
        })?
}

impl StripeStore {
    /// A store over `local` (this node's chunks) and `cache` (rebuilt chunks),
    /// reaching other nodes through `cluster`.
    pub fn new(local: ChunkStore, cache: ChunkStore, cluster: Arc<dyn ChunkTransport>) -> Self {
        StripeStore {
            local,
            cache,
            cluster,
            pending: Arc::default(),
            moved: Arc::default(),
            moved_grace: ORPHAN_GRACE,
        }
    }

    /// This store, keeping chunks that move away (rebalance, repair) for
    /// `grace` after collection first sees them gone, so that a query
    /// planned before the move still reads them here.
    pub fn with_moved_grace(mut self, grace: Duration) -> Self {
        self.moved_grace = grace;
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, NodeId>> {
        self.pending
            .lock()
            .expect("pending locations are never locked across a panic")
    }

    /// Records that uncommitted data file `chunk` is on `node`.
    pub(crate) fn note_pending(&self, chunk: ChunkId, node: NodeId) {
        self.pending().insert(chunk, node);
    }

    /// Forgets where uncommitted `chunks` are (committed or abandoned).
    pub(crate) fn forget_pending(&self, chunks: &[ChunkId]) {
        let mut pending = self.pending();
        for chunk in chunks {
            pending.remove(chunk);
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.cluster.node_id()
    }

    /// The cluster as this store sees it.
    pub fn cluster(&self) -> &Arc<dyn ChunkTransport> {
        &self.cluster
    }

    /// This node's chunk store.
    pub fn local(&self) -> &ChunkStore {
        &self.local
    }

    /// Reads `chunk` from this node's chunk store, verified.
    ///
    /// # Errors
    /// `Missing`, `Corrupt` or `Io` from the local disk.
    pub async fn read_local(&self, chunk: ChunkRef) -> Result<Bytes> {
        let local = self.local.clone();
        blocking(move || local.get(&chunk)).await
    }

    /// Deletes an uncommitted data file if this node holds it (best effort: a
    /// failure leaves garbage that [`StripeStore::collect`] removes later); a
    /// copy on another node is an orphan that node's collection removes.
    pub fn discard(&self, chunk: ChunkId) {
        let holder = self.pending().remove(&chunk);
        if holder.is_some_and(|node| node != self.node_id()) {
            return;
        }
        if let Err(e) = self.local.delete(chunk) {
            tracing::warn!(%chunk, error = %e, "could not delete the chunk of an uncommitted data file");
        }
    }

    /// The verified bytes of `chunk` as placed on its node.
    ///
    /// # Errors
    /// The local read's error, or the transport's; `Damaged` when the bytes
    /// that arrived do not match the chunk's size and checksum.
    pub async fn fetch(&self, chunk: &StripeChunk) -> Result<Bytes> {
        if chunk.node == self.node_id() {
            return self.read_local(reference(chunk)).await;
        }
        let data = self.cluster.get(chunk.node, reference(chunk)).await?;
        if data.len() as u64 != chunk.size_bytes || crc32c::crc32c(&data) != chunk.checksum_crc32c {
            return Err(Error::Damaged {
                node: chunk.node,
                chunk: chunk.chunk,
            });
        }
        Ok(data)
    }

    /// Stores `data` as chunk `id` on `node` (this node or another).
    ///
    /// # Errors
    /// The local disk's error or the transport's.
    pub async fn store_on(&self, node: NodeId, id: ChunkId, data: Bytes) -> Result<()> {
        if node == self.node_id() {
            let local = self.local.clone();
            return blocking(move || local.put_as(id, &data).map(|_| ())).await;
        }
        self.cluster.put(node, id, data).await
    }

    /// The verified bytes of data file `chunk`, wherever it lives: this node's
    /// disk, its holder, the cache of rebuilt chunks, or rebuilt from its
    /// stripe (a degraded read, then cached).
    ///
    /// # Errors
    /// The local error when the chunk has no stripe; `StripeLost` when fewer
    /// than k chunks of its stripe are readable.
    pub async fn get(&self, chunk: ChunkRef) -> Result<Bytes> {
        self.read(chunk, None).await
    }

    /// Bytes `range` of data file `chunk`, verified, read from wherever it
    /// lives as [`StripeStore::get`] does; this node's disk and a holder read
    /// only the blocks the range covers. A degraded read rebuilds (and
    /// caches) the whole chunk.
    ///
    /// # Errors
    /// As [`StripeStore::get`]; `OutOfRange` if `range` is not in the chunk.
    pub async fn get_range(&self, chunk: ChunkRef, range: Range<u64>) -> Result<Bytes> {
        self.read(chunk, Some(range)).await
    }

    /// [`StripeStore::get`] (`range` None) or [`StripeStore::get_range`].
    async fn read(&self, chunk: ChunkRef, range: Option<Range<u64>>) -> Result<Bytes> {
        if let Some(range) = &range
            && (range.start > range.end || range.end > chunk.size_bytes)
        {
            return Err(Error::OutOfRange {
                chunk: chunk.id,
                start_bytes: range.start,
                end_bytes: range.end,
                size_bytes: chunk.size_bytes,
            });
        }
        let local = self.local.clone();
        let wanted = range.clone();
        let first_error = match blocking(move || match wanted {
            None => local.get(&chunk),
            Some(range) => local.get_range(&chunk, range),
        })
        .await
        {
            Ok(data) => return Ok(data),
            Err(e) if e.is_data_corruption() => e,
            Err(e) => return Err(e),
        };
        let catalog = self.cluster.catalog();
        let Some(stripe) = catalog.stripe_of(chunk.id) else {
            let holder = self.pending().get(&chunk.id).copied();
            return match holder {
                Some(node) if node != self.node_id() => match range {
                    None => self.cluster.get(node, chunk).await,
                    Some(range) => self.cluster.get_range(node, chunk, range).await,
                },
                _ => Err(first_error),
            };
        };
        let index = stripe
            .chunks
            .iter()
            .position(|c| c.chunk == chunk.id)
            .expect("stripe_of indexes the stripe's data chunks");
        let placed = &stripe.chunks[index];
        if placed.node != self.node_id() && self.cluster.maybe_up(placed.node) {
            let fetched = match range.clone() {
                None => self.fetch(placed).await,
                Some(range) => self.cluster.get_range(placed.node, chunk, range).await,
            };
            match fetched {
                Ok(data) => return Ok(data),
                Err(e) => {
                    tracing::warn!(chunk = %chunk.id, node = placed.node, error = %e, "remote chunk read failed; rebuilding from the stripe")
                }
            }
        }
        let slice = |data: Bytes| match &range {
            None => data,
            Some(range) => data.slice(range.start as usize..range.end as usize),
        };
        let cache = self.cache.clone();
        if let Ok(data) = blocking(move || cache.get(&chunk)).await {
            return Ok(slice(data));
        }
        let data = self.rebuild(stripe, index).await?;
        metrics::counter!("quarry_storage_degraded_reads_total").increment(1);
        let cache = self.cache.clone();
        let cached = data.clone();
        if let Err(e) = blocking(move || cache.put_as(chunk.id, &cached)).await {
            tracing::warn!(chunk = %chunk.id, error = %e, "cannot cache a rebuilt chunk");
        }
        Ok(slice(data))
    }

    /// Rebuilds chunk `index` of `stripe` from the other chunks (fetched from
    /// wherever they are placed, concurrently).
    ///
    /// # Errors
    /// `StripeLost` when fewer than k other chunks are readable; `Corrupt`
    /// when the rebuilt bytes do not match the chunk's checksum.
    pub async fn rebuild(&self, stripe: &Stripe, index: usize) -> Result<Bytes> {
        let fetches = stripe.chunks.iter().enumerate().map(|(i, chunk)| async move {
            if i == index || !self.cluster.maybe_up(chunk.node) {
                return None;
            }
            match self.fetch(chunk).await {
                Ok(data) => Some(data),
                Err(e) => {
                    tracing::debug!(chunk = %chunk.chunk, node = chunk.node, error = %e, "stripe chunk unreadable during rebuild");
                    None
                }
            }
        });
        let fetched: Vec<Option<Bytes>> = futures::future::join_all(fetches).await;
        let k = usize::from(stripe.data_chunks);
        let lengths: Vec<u64> = stripe.data().iter().map(|c| c.size_bytes).collect();
        let expected = stripe.chunks[index].clone();
        let rebuilt = blocking(move || {
            let data: Vec<Option<&[u8]>> = fetched[..k].iter().map(|c| c.as_deref()).collect();
            let parity: Vec<Option<&[u8]>> = fetched[k..].iter().map(|c| c.as_deref()).collect();
            let all_data = crate::stripe::reconstruct(&lengths, &data, &parity)?;
            if index < k {
                return Ok(Bytes::from(all_data[index].clone()));
            }
            let refs: Vec<&[u8]> = all_data.iter().map(Vec::as_slice).collect();
            let parity = crate::stripe::encode_parity(&refs, fetched.len() - k)?;
            Ok(Bytes::from(parity[index - k].clone()))
        })
        .await?;
        let actual_crc32c = crc32c::crc32c(&rebuilt);
        if rebuilt.len() as u64 != expected.size_bytes || actual_crc32c != expected.checksum_crc32c
        {
            return Err(Error::Corrupt {
                chunk: expected.chunk,
                expected_size_bytes: expected.size_bytes,
                actual_size_bytes: rebuilt.len() as u64,
                expected_crc32c: expected.checksum_crc32c,
                actual_crc32c,
            });
        }
        Ok(rebuilt)
    }

    /// Stores each of `chunks` (id, bytes) on a node of `order`, all at once:
    /// chunk i goes to `order[i]`; a chunk whose node refuses it goes to the
    /// next node of `order` no chunk has used, until every chunk is placed.
    /// Chunks listed in `already_local` are this node's data files: placed on
    /// this node they need no copy. Returns each chunk's node, in order.
    ///
    /// # Errors
    /// `Placement` when `order` runs out of nodes; chunks already stored are
    /// then orphans that collection removes.
    pub(crate) async fn place(
        &self,
        stripe: ChunkId,
        chunks: &[(ChunkId, Bytes)],
        order: Vec<NodeId>,
        already_local: &HashSet<ChunkId>,
    ) -> Result<Vec<NodeId>> {
        let me = self.node_id();
        let mut spare = order.into_iter();
        let mut nodes: Vec<Option<NodeId>> = vec![None; chunks.len()];
        let mut pending: Vec<usize> = (0..chunks.len()).collect();
        while !pending.is_empty() {
            let mut attempts = Vec::with_capacity(pending.len());
            for index in pending.drain(..) {
                let Some(node) = spare.next() else {
                    return Err(Error::Placement {
                        stripe,
                        needed: chunks.len(),
                        placed: nodes.iter().flatten().count(),
                    });
                };
                attempts.push((index, node));
            }
            let stores = attempts.iter().map(|&(index, node)| {
                let (chunk, bytes) = &chunks[index];
                async move {
                    if node == me && already_local.contains(chunk) {
                        return Ok(());
                    }
                    self.store_on(node, *chunk, bytes.clone()).await
                }
            });
            let results = futures::future::join_all(stores).await;
            for ((index, node), result) in attempts.into_iter().zip(results) {
                match result {
                    Ok(()) => nodes[index] = Some(node),
                    Err(e) => {
                        tracing::warn!(node, chunk = %chunks[index].0, error = %e, "placing a chunk failed; trying the next node");
                        pending.push(index);
                    }
                }
            }
        }
        Ok(nodes.into_iter().flatten().collect())
    }

    /// New parity for stripe `id` with data chunks `data_chunks`: `parity`
    /// chunks computed from them and stored on live nodes that hold none of
    /// them (spread over failure domains), ready for a `ReplaceParity` or
    /// `Regroup` command. Stored chunks a failed or refused change leaves
    /// behind are collected as orphans.
    ///
    /// # Errors
    /// If a data chunk cannot be read or too few live nodes accept a chunk.
    pub async fn new_parity(
        &self,
        id: ChunkId,
        data_chunks: &[StripeChunk],
        parity: usize,
    ) -> Result<Vec<StripeChunk>> {
        let data = futures::future::try_join_all(data_chunks.iter().map(|c| self.fetch(c))).await?;
        let encoded = blocking(move || {
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
            crate::stripe::encode_parity(&refs, parity)
        })
        .await?;
        let holders: HashSet<NodeId> = data_chunks.iter().map(|c| c.node).collect();
        let order = order_without(id, &self.cluster.live_nodes(), &holders);
        let chunks: Vec<(ChunkId, Bytes)> = encoded
            .into_iter()
            .map(|bytes| (new_chunk_id(), Bytes::from(bytes)))
            .collect();
        let nodes = self.place(id, &chunks, order, &HashSet::new()).await?;
        Ok(chunks
            .into_iter()
            .zip(nodes)
            .map(|((chunk, bytes), node)| StripeChunk {
                chunk,
                node,
                size_bytes: bytes.len() as u64,
                checksum_crc32c: crc32c::crc32c(&bytes),
            })
            .collect())
    }

    /// Re-verifies every chunk placed on this node and rewrites a corrupt or
    /// missing one from its stripe; returns how many were repaired.
    pub async fn scrub(&self) -> usize {
        let catalog = self.cluster.catalog();
        let me = self.node_id();
        let mut repaired = 0;
        for (stripe, index) in catalog.chunks_on(me) {
            let chunk = &stripe.chunks[index];
            match self.read_local(reference(chunk)).await {
                Ok(_) => continue,
                Err(e) if e.is_data_corruption() => {
                    tracing::warn!(chunk = %chunk.chunk, error = %e, "scrubber found a bad chunk; rebuilding it from its stripe");
                }
                Err(e) => {
                    tracing::warn!(chunk = %chunk.chunk, error = %e, "scrubber cannot read a chunk");
                    continue;
                }
            }
            match self.rebuild(stripe, index).await {
                Ok(data) => match self.store_on(me, chunk.chunk, data).await {
                    Ok(()) => {
                        repaired += 1;
                        metrics::counter!("quarry_storage_chunks_repaired_total").increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %chunk.chunk, error = %e, "cannot rewrite a scrubbed chunk")
                    }
                },
                Err(e) => {
                    tracing::warn!(chunk = %chunk.chunk, error = %e, "cannot rebuild a bad chunk")
                }
            }
        }
        repaired
    }

    /// Deletes local chunks that no live stripe places on this node and that no
    /// table lists, if written before `older_than` — but a chunk an earlier
    /// run saw placed here (it has moved away since) only once the moved
    /// grace has passed since a run first saw it gone; and cached chunks
    /// past their time. The catalog must be fresh (read-index). Returns how
    /// many local chunks were deleted.
    ///
    /// # Errors
    /// The local disk's error; chunks not yet deleted stay for the next run.
    pub fn collect(
        &self,
        catalog: &quarry_common::catalog::Catalog,
        older_than: SystemTime,
    ) -> Result<usize> {
        let keep = chunks_to_keep(catalog, self.node_id());
        let mut deleted = 0;
        let now = SystemTime::now();
        let local = self.local.list()?;
        let present: HashSet<ChunkId> = local.iter().copied().collect();
        let mut moved = self.moved.lock().expect("never locked across a panic");
        let MovedAway { placed, since } = &mut *moved;
        since.retain(|chunk, _| !keep.contains(chunk) && present.contains(chunk));
        for &chunk in &local {
            if keep.contains(&chunk) {
                continue;
            }
            if placed.contains(&chunk) || since.contains_key(&chunk) {
                let gone = *since.entry(chunk).or_insert(now);
                if gone + self.moved_grace > now {
                    continue;
                }
            } else if self.local.modified(chunk).is_none_or(|m| m >= older_than) {
                continue;
            }
            self.local.delete(chunk)?;
            since.remove(&chunk);
            deleted += 1;
        }
        *placed = local.into_iter().filter(|c| keep.contains(c)).collect();
        drop(moved);
        let expired = SystemTime::now() - CACHE_TTL;
        for chunk in self.cache.list()? {
            if self.cache.modified(chunk).is_none_or(|m| m < expired) {
                self.cache.delete(chunk)?;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
