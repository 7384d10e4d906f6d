//! Data files across the cluster (DESIGN.md §4, storage/FORMAT.md "Stripes"):
//! the node's [`DataFileStore`]. New data files are written to the local chunk
//! store; when their statement commits they are grouped into stripes of k data
//! chunks and m parity chunks placed on distinct nodes by rendezvous hashing
//! over live nodes, spread over failure domains. Reads come from the chunk's
//! node; when it is down or the bytes are corrupt the chunk is rebuilt from any
//! k chunks of its stripe (a degraded read) and cached locally.
//!
//! Also here: the scrubber (re-verifies this node's chunks and rewrites bad ones
//! from their stripes), the collector of chunks no stripe places on this node,
//! and the rebuild that repair uses.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use quarry_common::catalog::{
    Catalog, ChunkId, DataFile, NodeId, Stripe, StripeChunk, StripeLayout,
};
use quarry_exec::chunks::{DataFileStore, NodeRow, blocking};
use quarry_raft::Meta;
use quarry_storage::{ChunkRef, ChunkStore, Error as StorageError};

use crate::membership::Membership;
use crate::rpc::{RpcRequest, RpcResponse, Transport};

/// Deadline of one chunk transfer between nodes.
const CHUNK_CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Chunks younger than this are never collected: they may belong to a
/// statement or repair whose commit is still on its way.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);
/// Chunks rebuilt by degraded reads stay cached this long.
const CACHE_TTL: Duration = Duration::from_secs(10 * 60);

/// The node's data files: local chunks, stripes across the cluster.
#[derive(Clone)]
pub struct StripeStore {
    /// This node's id (the membership's identity, copied for brevity).
    node_id: NodeId,
    local: ChunkStore,
    cache: ChunkStore,
    meta: Arc<Meta>,
    transport: Arc<dyn Transport>,
    membership: Membership,
}

impl std::fmt::Debug for StripeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeStore")
            .field("node_id", &self.node_id)
            .field("local", &self.local.dir())
            .finish()
    }
}

fn remote_error(chunk: ChunkId, message: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        path: std::path::PathBuf::from(chunk.to_string()),
        source: std::io::Error::other(message.to_string()),
    }
}

/// The chunk-store reference of a stripe's chunk.
fn reference(chunk: &StripeChunk) -> ChunkRef {
    ChunkRef {
        id: chunk.chunk,
        size_bytes: chunk.size_bytes,
        checksum_crc32c: chunk.checksum_crc32c,
    }
}

/// A node's domain for spreading: its label, or its own name when unlabelled.
pub fn domain_of(node: NodeId, domain: &str) -> String {
    if domain.is_empty() {
        format!("node-{node}")
    } else {
        domain.to_owned()
    }
}

/// Rendezvous weight of `node` for `stripe` (splitmix64 of both ids): the
/// nodes with the highest weights hold the stripe's chunks.
fn weight(stripe: ChunkId, node: NodeId) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(stripe.0 as u64 ^ mix((stripe.0 >> 64) as u64 ^ mix(node)))
}

/// The nodes of `candidates` (id, failure domain) in placement order for
/// `stripe`: rendezvous order, except that a node whose domain is already used
/// (by `taken_domains` or an earlier pick) comes after all nodes of new
/// domains. An empty domain is the node's own.
pub fn placement_order(
    stripe: ChunkId,
    candidates: &[(NodeId, String)],
    taken_domains: &HashSet<String>,
) -> Vec<NodeId> {
    let mut ranked: Vec<&(NodeId, String)> = candidates.iter().collect();
    ranked.sort_by_key(|(node, _)| std::cmp::Reverse(weight(stripe, *node)));
    let mut used = taken_domains.clone();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for candidate in ranked {
        if used.insert(domain_of(candidate.0, &candidate.1)) {
            first.push(candidate.0);
        } else {
            rest.push(candidate.0);
        }
    }
    first.extend(rest);
    first
}

/// The stripe shape for `layout` when `live` nodes are up: as many parity
/// chunks as asked while there are nodes for them (at least one node must hold
/// data), then as many data chunks as the remaining nodes allow. With fewer
/// live nodes than k + m the stripe is narrower but still survives the loss of
/// min(m, live - 1) nodes; e.g. 4+2 on 3 live nodes is 1+2 (three copies).
pub fn effective_layout(layout: StripeLayout, live: usize) -> (usize, usize) {
    let live = live.max(1);
    let parity = usize::from(layout.parity_chunks).min(live - 1);
    let data = usize::from(layout.data_chunks).min(live - parity).max(1);
    (data, parity)
}

impl StripeStore {
    /// A store over `local` (this node's chunks) and `cache` (rebuilt chunks).
    pub fn new(
        local: ChunkStore,
        cache: ChunkStore,
        meta: Arc<Meta>,
        transport: Arc<dyn Transport>,
        membership: Membership,
    ) -> Self {
        StripeStore {
            node_id: membership.me().node_id,
            local,
            cache,
            meta,
            transport,
            membership,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The catalog as this node last applied it (stripe placement).
    pub fn catalog(&self) -> Arc<quarry_common::catalog::Catalog> {
        self.meta.read_local()
    }

    /// This node's chunk store.
    pub fn local(&self) -> &ChunkStore {
        &self.local
    }

    /// `f` over the Raft members (voters and learners), borrowed from the
    /// Raft metrics without copying them (addr_of is on the read path).
    fn with_members<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = (&NodeId, &quarry_raft::NodeAddr)>) -> T,
    ) -> T {
        let metrics = self.meta.raft().metrics();
        let metrics = metrics.borrow();
        f(&mut metrics.membership_config.nodes())
    }

    /// The Raft members (id, failure domain) gossip says are alive.
    pub fn live_nodes(&self) -> Vec<(NodeId, String)> {
        self.with_members(|members| {
            members
                .filter(|(id, _)| self.membership.is_alive(**id))
                .map(|(id, addr)| (*id, addr.domain.clone()))
                .collect()
        })
    }

    /// The number of nodes in the cluster (voters and learners).
    pub fn cluster_size(&self) -> usize {
        self.with_members(|members| members.count())
    }

    /// Node `node`'s RPC address: from Raft membership, else from gossip.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        let from_raft = self.with_members(|members| {
            members
                .filter(|(id, _)| **id == node)
                .find_map(|(_, addr)| addr.rpc.parse().ok())
        });
        from_raft.or_else(|| self.membership.member(node).map(|m| m.identity.addr))
    }

    /// Reads `chunk` from this node's chunk store, verified.
    pub async fn read_local(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        let local = self.local.clone();
        blocking(move || local.get(&chunk)).await
    }

    /// The verified bytes of `chunk` as placed on its node.
    pub async fn fetch(&self, chunk: &StripeChunk) -> quarry_storage::Result<Bytes> {
        if chunk.node == self.node_id {
            return self.read_local(reference(chunk)).await;
        }
        let addr = self.addr_of(chunk.node).ok_or_else(|| {
            remote_error(chunk.chunk, format!("node {} has no address", chunk.node))
        })?;
        let request = RpcRequest::GetChunk {
            chunk: chunk.chunk,
            size_bytes: chunk.size_bytes,
            checksum_crc32c: chunk.checksum_crc32c,
        };
        match self
            .transport
            .call(addr, request, CHUNK_CALL_DEADLINE)
            .await
        {
            Ok(RpcResponse::Chunk(data))
                if data.len() as u64 == chunk.size_bytes
                    && crc32c::crc32c(&data) == chunk.checksum_crc32c =>
            {
                Ok(data)
            }
            Ok(RpcResponse::Chunk(_)) => Err(remote_error(chunk.chunk, "damaged in transfer")),
            Ok(other) => Err(remote_error(
                chunk.chunk,
                format!("node {}: {other:?}", chunk.node),
            )),
            Err(e) => Err(remote_error(chunk.chunk, e)),
        }
    }

    /// Stores `data` as chunk `id` on `node`.
    pub async fn store_on(
        &self,
        node: NodeId,
        id: ChunkId,
        data: Bytes,
    ) -> quarry_storage::Result<()> {
        if node == self.node_id {
            let local = self.local.clone();
            return blocking(move || local.put_as(id, &data).map(|_| ())).await;
        }
        let addr = self
            .addr_of(node)
            .ok_or_else(|| remote_error(id, format!("node {node} has no address")))?;
        match self
            .transport
            .call(
                addr,
                RpcRequest::PutChunk { chunk: id, data },
                CHUNK_CALL_DEADLINE,
            )
            .await
        {
            Ok(RpcResponse::Ok) => Ok(()),
            Ok(other) => Err(remote_error(id, format!("node {node}: {other:?}"))),
            Err(e) => Err(remote_error(id, e)),
        }
    }

    /// Rebuilds chunk `index` of `stripe` from the other chunks (fetched from
    /// wherever they are placed, concurrently).
    ///
    /// # Errors
    /// `StripeLost` when fewer than k other chunks are readable.
    pub async fn rebuild(&self, stripe: &Stripe, index: usize) -> quarry_storage::Result<Bytes> {
        let fetches = stripe.chunks.iter().enumerate().map(|(i, chunk)| async move {
            if i == index || !self.membership.maybe_up(chunk.node) {
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
        let rebuilt = tokio::task::spawn_blocking(move || -> quarry_storage::Result<Bytes> {
            let data: Vec<Option<&[u8]>> = fetched[..k].iter().map(|c| c.as_deref()).collect();
            let parity: Vec<Option<&[u8]>> = fetched[k..].iter().map(|c| c.as_deref()).collect();
            let all_data = quarry_storage::stripe::reconstruct(&lengths, &data, &parity)?;
            if index < k {
                return Ok(Bytes::from(all_data[index].clone()));
            }
            let refs: Vec<&[u8]> = all_data.iter().map(Vec::as_slice).collect();
            let parity = quarry_storage::stripe::encode_parity(&refs, fetched.len() - k)?;
            Ok(Bytes::from(parity[index - k].clone()))
        })
        .await
        .map_err(|e| remote_error(expected.chunk, format!("rebuild task failed: {e}")))??;
        if rebuilt.len() as u64 != expected.size_bytes
            || crc32c::crc32c(&rebuilt) != expected.checksum_crc32c
        {
            return Err(StorageError::Corrupt {
                chunk: expected.chunk,
                expected_size_bytes: expected.size_bytes,
                actual_size_bytes: rebuilt.len() as u64,
                expected_crc32c: expected.checksum_crc32c,
                actual_crc32c: crc32c::crc32c(&rebuilt),
            });
        }
        Ok(rebuilt)
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
    ) -> quarry_storage::Result<Vec<StripeChunk>> {
        let mut data = Vec::with_capacity(data_chunks.len());
        for chunk in data_chunks {
            data.push(self.fetch(chunk).await?);
        }
        let encoded = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
            quarry_storage::stripe::encode_parity(&refs, parity)
        })
        .await
        .map_err(|e| remote_error(id, format!("parity task failed: {e}")))??;
        let holders: HashSet<NodeId> = data_chunks.iter().map(|c| c.node).collect();
        let live = self.live_nodes();
        let taken: HashSet<String> = live
            .iter()
            .filter(|(n, _)| holders.contains(n))
            .map(|(n, d)| domain_of(*n, d))
            .collect();
        let free: Vec<(NodeId, String)> = live
            .into_iter()
            .filter(|(n, _)| !holders.contains(n))
            .collect();
        let mut candidates = placement_order(id, &free, &taken).into_iter();
        let mut placed = Vec::with_capacity(parity);
        for bytes in encoded {
            let bytes = Bytes::from(bytes);
            let chunk = ChunkId(uuid::Uuid::now_v7().as_u128());
            let node = loop {
                let Some(node) = candidates.next() else {
                    return Err(remote_error(id, "not enough live nodes for the parity"));
                };
                match self.store_on(node, chunk, bytes.clone()).await {
                    Ok(()) => break node,
                    Err(e) => {
                        tracing::warn!(node, %chunk, error = %e, "placing a parity chunk failed; trying the next node")
                    }
                }
            };
            placed.push(StripeChunk {
                chunk,
                node,
                size_bytes: bytes.len() as u64,
                checksum_crc32c: crc32c::crc32c(&bytes),
            });
        }
        Ok(placed)
    }

    /// Re-verifies every chunk placed on this node and rewrites a corrupt or
    /// missing one from its stripe; returns how many were repaired.
    pub async fn scrub(&self) -> usize {
        let catalog = self.meta.read_local();
        let mut repaired = 0;
        for (stripe, index) in catalog.chunks_on(self.node_id) {
            let chunk = &stripe.chunks[index];
            match self.read_local(reference(chunk)).await {
                Ok(_) => continue,
                Err(e) if e.is_data_corruption() => {
                    metrics::counter!("quarry_chunk_corruptions_detected_total").increment(1);
                    tracing::warn!(chunk = %chunk.chunk, error = %e, "scrubber found a bad chunk; rebuilding it from its stripe");
                }
                Err(e) => {
                    tracing::warn!(chunk = %chunk.chunk, error = %e, "scrubber cannot read a chunk");
                    continue;
                }
            }
            match self.rebuild(stripe, index).await {
                Ok(data) => match self.store_on(self.node_id, chunk.chunk, data).await {
                    Ok(()) => {
                        repaired += 1;
                        metrics::counter!("quarry_chunks_repaired_total").increment(1);
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
    /// their time. `catalog` must be fresh (read-index). Returns how many.
    pub fn collect(
        &self,
        catalog: &Catalog,
        older_than: SystemTime,
    ) -> quarry_storage::Result<usize> {
        let mut keep: HashSet<ChunkId> = catalog
            .chunks_on(self.node_id)
            .map(|(s, i)| s.chunks[i].chunk)
            .collect();
        // Data files without a stripe (written before stripes existed) stay.
        keep.extend(
            catalog
                .referenced_chunks()
                .into_iter()
                .filter(|c| catalog.stripe_of(*c).is_none()),
        );
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

#[async_trait]
impl DataFileStore for StripeStore {
    async fn put(&self, bytes: Bytes) -> quarry_storage::Result<ChunkRef> {
        let local = self.local.clone();
        blocking(move || local.put(&bytes)).await
    }

    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        let first_error = match self.read_local(chunk).await {
            Ok(data) => return Ok(data),
            Err(e) if e.is_data_corruption() => {
                if matches!(e, StorageError::Corrupt { .. }) {
                    metrics::counter!("quarry_chunk_corruptions_detected_total").increment(1);
                }
                e
            }
            Err(e) => return Err(e),
        };
        let catalog = self.meta.read_local();
        let Some(stripe) = catalog.stripe_of(chunk.id) else {
            return Err(first_error);
        };
        let index = stripe
            .chunks
            .iter()
            .position(|c| c.chunk == chunk.id)
            .expect("stripe_of indexes the stripe's data chunks");
        let placed = &stripe.chunks[index];
        if placed.node != self.node_id && self.membership.maybe_up(placed.node) {
            match self.fetch(placed).await {
                Ok(data) => return Ok(data),
                Err(e) => {
                    tracing::warn!(chunk = %chunk.id, node = placed.node, error = %e, "remote chunk read failed; rebuilding from the stripe")
                }
            }
        }
        let cache = self.cache.clone();
        if let Ok(data) = blocking(move || cache.get(&chunk)).await {
            return Ok(data);
        }
        let data = self.rebuild(stripe, index).await?;
        metrics::counter!("quarry_degraded_reads_total").increment(1);
        let cache = self.cache.clone();
        let cached = data.clone();
        if let Err(e) = blocking(move || cache.put_as(chunk.id, &cached)).await {
            tracing::warn!(chunk = %chunk.id, error = %e, "cannot cache a rebuilt chunk");
        }
        Ok(data)
    }

    fn nodes(&self) -> Vec<NodeRow> {
        let watch = self.meta.raft().metrics();
        let metrics = watch.borrow();
        let config = metrics.membership_config.membership();
        let voters: HashSet<NodeId> = config.voter_ids().collect();
        config
            .nodes()
            .map(|(id, addr)| NodeRow {
                node_id: *id,
                rpc_address: addr.rpc.clone(),
                pg_address: addr.pg.clone(),
                domain: addr.domain.clone(),
                state: if *id == self.node_id {
                    "alive".to_owned()
                } else {
                    self.membership
                        .member(*id)
                        .map(|m| m.state.to_string())
                        .unwrap_or_else(|| "down".to_owned())
                },
                raft_role: if metrics.current_leader == Some(*id) {
                    "leader"
                } else if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
            })
            .collect()
    }

    fn node_available(&self, node: NodeId) -> bool {
        self.membership.is_alive(node)
    }

    fn discard(&self, chunk: ChunkId) {
        if let Err(e) = self.local.delete(chunk) {
            tracing::warn!(%chunk, error = %e, "could not delete the chunk of an uncommitted data file");
        }
    }

    async fn seal(
        &self,
        layout: Option<StripeLayout>,
        files: &[DataFile],
    ) -> quarry_storage::Result<Vec<Stripe>> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let layout = layout.unwrap_or_else(|| StripeLayout::for_cluster(self.cluster_size()));
        let live = self.live_nodes();
        let (k, m) = effective_layout(layout, live.len());
        let mut stripes = Vec::new();
        let mut moved = Vec::new();
        for group in files.chunks(k) {
            let id = ChunkId(uuid::Uuid::now_v7().as_u128());
            let order = placement_order(id, &live, &HashSet::new());
            let mut data = Vec::with_capacity(group.len());
            for file in group {
                data.push(
                    self.read_local(ChunkRef {
                        id: file.chunk,
                        size_bytes: file.size_bytes,
                        checksum_crc32c: file.checksum_crc32c,
                    })
                    .await?,
                );
            }
            let for_parity = data.clone();
            let parity = tokio::task::spawn_blocking(move || {
                let refs: Vec<&[u8]> = for_parity.iter().map(|d| d.as_ref()).collect();
                quarry_storage::stripe::encode_parity(&refs, m)
            })
            .await
            .map_err(|e| remote_error(id, format!("parity task failed: {e}")))??;
            let mut chunks: Vec<(ChunkId, Bytes)> =
                group.iter().zip(data).map(|(f, d)| (f.chunk, d)).collect();
            chunks.extend(
                parity
                    .into_iter()
                    .map(|p| (ChunkId(uuid::Uuid::now_v7().as_u128()), Bytes::from(p))),
            );
            let mut candidates = order.into_iter();
            let mut placed = Vec::with_capacity(chunks.len());
            for (chunk, bytes) in chunks {
                let size_bytes = bytes.len() as u64;
                let checksum_crc32c = crc32c::crc32c(&bytes);
                let node = loop {
                    let Some(node) = candidates.next() else {
                        return Err(remote_error(
                            chunk,
                            "not enough live nodes accepted the stripe's chunks",
                        ));
                    };
                    let is_local_data =
                        node == self.node_id && group.iter().any(|f| f.chunk == chunk);
                    if is_local_data {
                        break node;
                    }
                    match self.store_on(node, chunk, bytes.clone()).await {
                        Ok(()) => break node,
                        Err(e) => {
                            tracing::warn!(node, %chunk, error = %e, "placing a chunk failed; trying the next node")
                        }
                    }
                };
                if node != self.node_id && group.iter().any(|f| f.chunk == chunk) {
                    moved.push(chunk);
                }
                placed.push(StripeChunk {
                    chunk,
                    node,
                    size_bytes,
                    checksum_crc32c,
                });
            }
            stripes.push(Stripe {
                id,
                data_chunks: group.len() as u8,
                chunks: placed,
            });
        }
        for chunk in moved {
            self.discard(chunk);
        }
        Ok(stripes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_stripes_keep_as_much_parity_as_the_live_nodes_allow() {
        let layout = StripeLayout {
            data_chunks: 4,
            parity_chunks: 2,
        };
        assert_eq!(effective_layout(layout, 6), (4, 2));
        assert_eq!(effective_layout(layout, 8), (4, 2));
        assert_eq!(effective_layout(layout, 5), (3, 2));
        assert_eq!(effective_layout(layout, 3), (1, 2));
        assert_eq!(effective_layout(layout, 2), (1, 1));
        assert_eq!(effective_layout(layout, 1), (1, 0));
    }

    #[test]
    fn placement_spreads_over_domains_before_reusing_one() {
        let nodes: Vec<(NodeId, String)> = (1..=6)
            .map(|n| {
                (
                    n,
                    if n <= 3 {
                        "rack-a".to_owned()
                    } else {
                        "rack-b".to_owned()
                    },
                )
            })
            .collect();
        for stripe in 0..50u128 {
            let order = placement_order(ChunkId(stripe * 7919), &nodes, &HashSet::new());
            assert_eq!(order.len(), 6);
            let racks: HashSet<bool> = order[..2].iter().map(|n| *n <= 3).collect();
            assert_eq!(
                racks.len(),
                2,
                "the first two picks use both racks: {order:?}"
            );
        }
    }

    #[test]
    fn rendezvous_order_moves_little_when_a_node_leaves() {
        let all: Vec<(NodeId, String)> = (1..=6).map(|n| (n, String::new())).collect();
        let without_6: Vec<(NodeId, String)> = (1..=5).map(|n| (n, String::new())).collect();
        let mut same_first = 0;
        for stripe in 0..200u128 {
            let id = ChunkId(stripe.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            let before = placement_order(id, &all, &HashSet::new());
            let after = placement_order(id, &without_6, &HashSet::new());
            let expected: Vec<NodeId> = before.into_iter().filter(|n| *n != 6).collect();
            if after == expected {
                same_first += 1;
            }
        }
        assert_eq!(
            same_first, 200,
            "removing a node keeps every other node's rank"
        );
    }
}
