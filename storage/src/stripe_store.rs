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
}

/// The chunk-store reference of a stripe's chunk.
pub fn reference(chunk: &StripeChunk) -> ChunkRef {
    ChunkRef {
        id: chunk.chunk,
        size_bytes: chunk.size_bytes,
        checksum_crc32c: chunk.checksum_crc32c,
    }
}

pub(crate) fn new_chunk_id() -> ChunkId {
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
        }
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
    /// table lists, if written before `older_than`; and cached chunks past
    /// their time. The catalog must be fresh (read-index). Returns how many
    /// local chunks were deleted.
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
        for chunk in self.local.list()? {
            let old = self.local.modified(chunk).is_some_and(|m| m < older_than);
            if !keep.contains(&chunk) && old {
                self.local.delete(chunk)?;
                deleted += 1;
            }
        }
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
mod tests {
    //! The stripe store over an in-process cluster: every node a chunk store
    //! in a temporary directory, reached through a transport that can take a
    //! node down, make it refuse chunks, or damage what it sends.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use quarry_common::catalog::{Catalog, DataFile, StripeLayout};

    use super::*;
    use crate::StripeWriter;
    use crate::placement::Candidate;

    /// What a fake node does when asked.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        None,
        /// Does not answer (a dead node).
        Down,
        /// Answers every put with an error (a full disk).
        RefusesPuts,
        /// Flips a bit of every chunk it sends.
        Damages,
    }

    #[derive(Debug)]
    struct Net {
        _dirs: Vec<tempfile::TempDir>,
        stores: BTreeMap<NodeId, ChunkStore>,
        caches: BTreeMap<NodeId, ChunkStore>,
        faults: Mutex<BTreeMap<NodeId, Fault>>,
        catalog: Mutex<Arc<Catalog>>,
        puts: Mutex<Vec<(NodeId, ChunkId)>>,
    }

    impl Net {
        fn new(nodes: u64) -> Arc<Net> {
            let mut dirs = Vec::new();
            let mut stores = BTreeMap::new();
            let mut caches = BTreeMap::new();
            for node in 1..=nodes {
                let dir = tempfile::tempdir().expect("temp dir");
                stores.insert(
                    node,
                    ChunkStore::open(dir.path().join("chunks")).expect("store"),
                );
                caches.insert(
                    node,
                    ChunkStore::open(dir.path().join("cache")).expect("cache"),
                );
                dirs.push(dir);
            }
            Arc::new(Net {
                _dirs: dirs,
                stores,
                caches,
                faults: Mutex::new(BTreeMap::new()),
                catalog: Mutex::new(Arc::new(Catalog::default())),
                puts: Mutex::new(Vec::new()),
            })
        }

        fn fault(&self, node: NodeId) -> Fault {
            *self
                .faults
                .lock()
                .expect("lock")
                .get(&node)
                .unwrap_or(&Fault::None)
        }

        fn set(&self, node: NodeId, fault: Fault) {
            self.faults.lock().expect("lock").insert(node, fault);
        }

        fn commit(&self, stripes: &[Stripe]) {
            let mut catalog = self.catalog.lock().expect("lock");
            let mut next = (**catalog).clone();
            for stripe in stripes {
                next.add_stripe(stripe.clone());
            }
            *catalog = Arc::new(next);
        }

        /// Node `me`'s stripe store.
        fn store(self: &Arc<Net>, me: NodeId) -> StripeStore {
            StripeStore::new(
                self.stores[&me].clone(),
                self.caches[&me].clone(),
                Arc::new(View {
                    me,
                    net: self.clone(),
                }),
            )
        }
    }

    #[derive(Debug)]
    struct View {
        me: NodeId,
        net: Arc<Net>,
    }

    #[async_trait]
    impl ChunkTransport for View {
        fn node_id(&self) -> NodeId {
            self.me
        }

        fn live_nodes(&self) -> Vec<Candidate> {
            self.net
                .stores
                .keys()
                .filter(|n| self.net.fault(**n) != Fault::Down)
                .map(|n| (*n, String::new()))
                .collect()
        }

        fn maybe_up(&self, node: NodeId) -> bool {
            self.net.fault(node) != Fault::Down
        }

        fn cluster_size(&self) -> usize {
            self.net.stores.len()
        }

        fn catalog(&self) -> Arc<Catalog> {
            self.net.catalog.lock().expect("lock").clone()
        }

        async fn get(&self, node: NodeId, chunk: ChunkRef) -> Result<Bytes> {
            let remote = |message: String| Error::Remote {
                node,
                chunk: chunk.id,
                message,
            };
            match self.net.fault(node) {
                Fault::Down => Err(Error::Unreachable {
                    node,
                    chunk: chunk.id,
                    reason: "connection refused".into(),
                }),
                fault => {
                    let data = self.net.stores[&node]
                        .get(&chunk)
                        .map_err(|e| remote(e.to_string()))?;
                    if fault != Fault::Damages {
                        return Ok(data);
                    }
                    let mut damaged = data.to_vec();
                    damaged[0] ^= 1;
                    Ok(Bytes::from(damaged))
                }
            }
        }

        async fn get_range(
            &self,
            node: NodeId,
            chunk: ChunkRef,
            range: Range<u64>,
        ) -> Result<Bytes> {
            let whole = self.get(node, chunk).await?;
            Ok(whole.slice(range.start as usize..range.end as usize))
        }

        async fn put(&self, node: NodeId, chunk: ChunkId, data: Bytes) -> Result<()> {
            match self.net.fault(node) {
                Fault::Down => Err(Error::Unreachable {
                    node,
                    chunk,
                    reason: "connection refused".into(),
                }),
                Fault::RefusesPuts => Err(Error::Remote {
                    node,
                    chunk,
                    message: "no space left on device".into(),
                }),
                _ => {
                    self.net.stores[&node].put_as(chunk, &data)?;
                    self.net.puts.lock().expect("lock").push((node, chunk));
                    Ok(())
                }
            }
        }
    }

    fn layout(data_chunks: u8, parity_chunks: u8) -> Option<StripeLayout> {
        Some(StripeLayout {
            data_chunks,
            parity_chunks,
        })
    }

    /// Writes `count` data files of distinct lengths from `store`'s node
    /// through a stripe writer with `layout`; returns the files, their bytes
    /// and the stripes, or the first error.
    async fn write_files(
        store: &StripeStore,
        layout: Option<StripeLayout>,
        count: usize,
    ) -> Result<(Vec<DataFile>, Vec<Bytes>, Vec<Stripe>)> {
        let writer = StripeWriter::new(store.clone(), layout);
        let mut files = Vec::new();
        let mut contents = Vec::new();
        for i in 0..count {
            let bytes = Bytes::from(vec![i as u8 + 1; 1000 + 37 * i]);
            let chunk = writer.put(bytes.clone()).await?;
            files.push(DataFile {
                chunk: chunk.id,
                size_bytes: chunk.size_bytes,
                checksum_crc32c: chunk.checksum_crc32c,
                row_count: 0,
                column_stats: Vec::new(),
            });
            contents.push(bytes);
        }
        let stripes = writer.finish().await?;
        Ok((files, contents, stripes))
    }

    fn file_ref(file: &DataFile) -> ChunkRef {
        ChunkRef {
            id: file.chunk,
            size_bytes: file.size_bytes,
            checksum_crc32c: file.checksum_crc32c,
        }
    }

    #[tokio::test]
    async fn sealed_stripes_hold_each_chunk_on_a_distinct_node_readable_everywhere() {
        let net = Net::new(4);
        let writer = net.store(1);
        let (files, contents, stripes) =
            write_files(&writer, layout(2, 1), 5).await.expect("write");
        assert_eq!(stripes.len(), 3, "5 files in stripes of 2");
        for stripe in &stripes {
            let nodes: HashSet<NodeId> = stripe.chunks.iter().map(|c| c.node).collect();
            assert_eq!(
                nodes.len(),
                stripe.chunks.len(),
                "distinct nodes: {stripe:?}"
            );
            assert_eq!(stripe.parity_chunks(), 1);
            for chunk in &stripe.chunks {
                net.stores[&chunk.node]
                    .get(&reference(chunk))
                    .expect("every chunk stored, verified, where the stripe says");
            }
            for chunk in stripe.data().iter().filter(|c| c.node != 1) {
                assert!(
                    !net.stores[&1].list().expect("list").contains(&chunk.chunk),
                    "a file placed elsewhere is never written on the writer's node"
                );
            }
        }
        net.commit(&stripes);
        for reader in 1..=4 {
            let store = net.store(reader);
            for (file, bytes) in files.iter().zip(&contents) {
                assert_eq!(&store.get(file_ref(file)).await.expect("read"), bytes);
                assert_eq!(
                    store
                        .get_range(file_ref(file), 7..900)
                        .await
                        .expect("range"),
                    bytes.slice(7..900)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_node_that_refuses_chunks_is_skipped_and_a_stripe_with_too_few_nodes_fails() {
        let net = Net::new(4);
        net.set(2, Fault::RefusesPuts);
        let writer = net.store(1);
        let (_, _, stripes) = write_files(&writer, layout(2, 1), 4)
            .await
            .expect("write around node 2");
        assert!(
            stripes.iter().all(|s| s.chunks.iter().all(|c| c.node != 2)),
            "nothing placed on the refusing node: {stripes:?}"
        );
        net.set(3, Fault::RefusesPuts);
        let e = write_files(&writer, layout(2, 1), 2)
            .await
            .expect_err("two of four nodes refuse a 3-chunk stripe");
        assert!(matches!(e, Error::Placement { needed: 3, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_chunk_on_a_down_node_is_rebuilt_from_its_stripe_and_cached() {
        let net = Net::new(3);
        let writer = net.store(1);
        let (files, contents, stripes) =
            write_files(&writer, layout(2, 1), 2).await.expect("write");
        net.commit(&stripes);
        let stripe = &stripes[0];
        let away = stripe
            .data()
            .iter()
            .find(|c| c.node != 1)
            .expect("a data chunk elsewhere");
        let index = stripe
            .chunks
            .iter()
            .position(|c| c.chunk == away.chunk)
            .expect("in stripe");
        let file = files
            .iter()
            .position(|f| f.chunk == away.chunk)
            .expect("a file");
        net.set(away.node, Fault::Down);
        let reader = net.store(1);
        assert_eq!(
            reader
                .get(file_ref(&files[file]))
                .await
                .expect("degraded read"),
            contents[file]
        );
        assert!(
            net.caches[&1]
                .get(&reference(&stripe.chunks[index]))
                .is_ok(),
            "the rebuilt chunk is cached"
        );
        assert_eq!(
            reader
                .get_range(file_ref(&files[file]), 3..40)
                .await
                .expect("range from the cache"),
            contents[file].slice(3..40)
        );
        // With a second node down, fewer than k chunks remain.
        let other = stripe
            .chunks
            .iter()
            .find(|c| c.node != away.node && c.node != 1)
            .expect("a third node");
        net.set(other.node, Fault::Down);
        let e = net
            .store(1)
            .rebuild(stripe, index)
            .await
            .expect_err("one of three chunks left");
        assert!(matches!(e, Error::StripeLost { .. }), "{e}");
    }

    #[tokio::test]
    async fn bytes_damaged_in_transfer_are_refused_and_read_around() {
        let net = Net::new(3);
        let writer = net.store(1);
        let (files, contents, stripes) =
            write_files(&writer, layout(2, 1), 2).await.expect("write");
        net.commit(&stripes);
        let away = stripes[0]
            .data()
            .iter()
            .find(|c| c.node != 1)
            .expect("remote data chunk")
            .clone();
        net.set(away.node, Fault::Damages);
        let e = net
            .store(1)
            .fetch(&away)
            .await
            .expect_err("damaged bytes refused");
        assert!(
            matches!(e, Error::Damaged { node, .. } if node == away.node),
            "{e}"
        );
        // The read rebuilds the chunk from the stripe's other two chunks.
        let file = files
            .iter()
            .position(|f| f.chunk == away.chunk)
            .expect("a file");
        assert_eq!(
            net.store(1)
                .get(file_ref(&files[file]))
                .await
                .expect("read around"),
            contents[file]
        );
    }

    #[tokio::test]
    async fn scrub_rewrites_a_corrupt_local_chunk_from_its_stripe() {
        let net = Net::new(3);
        let writer = net.store(1);
        let (_, _, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
        net.commit(&stripes);
        let (holder, chunk) = stripes[0]
            .chunks
            .iter()
            .map(|c| (c.node, c.clone()))
            .next()
            .expect("a chunk");
        let path = net.stores[&holder].path_of(chunk.chunk);
        let original = std::fs::read(&path).expect("read");
        let mut damaged = original.clone();
        damaged[original.len() / 2] ^= 0x40;
        std::fs::write(&path, &damaged).expect("damage");
        assert_eq!(net.store(holder).scrub().await, 1, "one chunk repaired");
        assert_eq!(std::fs::read(&path).expect("read"), original);
        assert_eq!(net.store(holder).scrub().await, 0, "nothing left to repair");
    }

    #[tokio::test]
    async fn new_parity_goes_to_nodes_without_the_stripes_data() {
        let net = Net::new(5);
        let writer = net.store(1);
        let (_, _, stripes) = write_files(&writer, layout(2, 0), 2).await.expect("write");
        let data = stripes[0].data().to_vec();
        let holders: HashSet<NodeId> = data.iter().map(|c| c.node).collect();
        let parity = writer
            .new_parity(stripes[0].id, &data, 2)
            .await
            .expect("parity");
        assert_eq!(parity.len(), 2);
        let nodes: HashSet<NodeId> = parity.iter().map(|c| c.node).collect();
        assert_eq!(nodes.len(), 2, "distinct nodes");
        assert!(
            nodes.is_disjoint(&holders),
            "{nodes:?} vs data on {holders:?}"
        );
        // The parity rebuilds a lost data chunk.
        let mut stripe = stripes[0].clone();
        stripe.chunks.extend(parity);
        for node in &holders {
            net.set(*node, Fault::Down);
        }
        let reader = net.store(*nodes.iter().next().expect("a parity node"));
        let rebuilt = reader
            .rebuild(&stripe, 0)
            .await
            .expect("rebuilt from parity alone");
        assert_eq!(rebuilt.len() as u64, stripe.chunks[0].size_bytes);
    }

    #[tokio::test]
    async fn collection_keeps_placed_chunks_and_young_orphans() {
        let net = Net::new(3);
        let writer = net.store(1);
        let (_, _, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
        net.commit(&stripes);
        let orphan = net.stores[&1].put(b"an uncommitted file").expect("put");
        let catalog = net.catalog.lock().expect("lock").clone();
        let before = net.stores[&1].list().expect("list").len();
        assert_eq!(
            writer
                .collect(&catalog, SystemTime::now() - ORPHAN_GRACE)
                .expect("collect"),
            0,
            "a young orphan stays"
        );
        let later = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(
            writer.collect(&catalog, later).expect("collect"),
            1,
            "an old orphan goes"
        );
        assert!(net.stores[&1].get(&orphan).is_err());
        assert_eq!(
            net.stores[&1].list().expect("list").len(),
            before - 1,
            "placed chunks stay"
        );
    }

    #[tokio::test]
    async fn files_go_once_to_their_holders_and_parity_as_a_stripe_completes() {
        let net = Net::new(4);
        let store = net.store(1);
        let writer = StripeWriter::new(store.clone(), layout(2, 1));
        let first = writer.put(Bytes::from(vec![7u8; 3000])).await.expect("put");
        let held: Vec<NodeId> = net
            .stores
            .iter()
            .filter(|(_, s)| s.list().expect("list").contains(&first.id))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(held.len(), 1, "one copy, on its holder: {held:?}");
        assert_eq!(
            store.get(first).await.expect("an uncommitted file reads"),
            Bytes::from(vec![7u8; 3000])
        );
        assert_eq!(
            store.get_range(first, 10..20).await.expect("and by range"),
            Bytes::from(vec![7u8; 10])
        );
        let second = writer.put(Bytes::from(vec![9u8; 2000])).await.expect("put");
        let stored_before_finish: HashSet<ChunkId> = net
            .stores
            .values()
            .flat_map(|s| s.list().expect("list"))
            .collect();
        let stripes = writer.finish().await.expect("finish");
        assert_eq!(stripes.len(), 1);
        assert!(
            stored_before_finish.contains(&stripes[0].chunks[2].chunk),
            "the second file completes the stripe: its parity is sent with it"
        );
        let data: Vec<ChunkId> = stripes[0].data().iter().map(|c| c.chunk).collect();
        assert_eq!(data, vec![first.id, second.id]);
        drop(writer);
        assert!(
            store.pending().is_empty(),
            "a dropped writer forgets its files"
        );
    }

    #[tokio::test]
    async fn a_discarded_file_leaves_an_open_stripe_and_stays_in_a_sealed_one() {
        let net = Net::new(4);
        let store = net.store(1);
        let writer = StripeWriter::new(store.clone(), layout(2, 1));
        let put = |n: u8| {
            let writer = &writer;
            async move {
                writer
                    .put(Bytes::from(vec![n; 500 + usize::from(n)]))
                    .await
                    .expect("put")
            }
        };
        let (a, b) = (put(1).await, put(2).await);
        let c = put(3).await;
        writer.discard(c.id);
        let d = put(4).await;
        writer.discard(a.id);
        let stripes = writer.finish().await.expect("finish");
        let data: Vec<Vec<ChunkId>> = stripes
            .iter()
            .map(|s| s.data().iter().map(|c| c.chunk).collect())
            .collect();
        assert_eq!(
            data,
            vec![vec![a.id, b.id], vec![d.id]],
            "a stays for b's sake; c left the open stripe"
        );

        let writer = StripeWriter::new(store.clone(), layout(2, 1));
        let e = writer.put(Bytes::from_static(b"e")).await.expect("put");
        let f = writer.put(Bytes::from_static(b"f")).await.expect("put");
        writer.discard(e.id);
        writer.discard(f.id);
        assert!(
            writer.finish().await.expect("finish").is_empty(),
            "a stripe of only discarded files is not committed"
        );
    }
}
