//! The node's side of the stripe store (`quarry_storage::StripeStore`, which
//! holds the logic: placement, sealing, degraded reads, rebuilds, scrub,
//! collection): [`ClusterView`], the storage crate's [`ChunkTransport`] over
//! Raft membership, gossip and the internal RPC; and [`ClusterFiles`], the
//! engine's [`DataFileStore`] over the stripe store.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use quarry_common::catalog::{Catalog, ChunkId, NodeId, StripeLayout};
use quarry_exec::chunks::{DataFileStore, FileSink, NodeRow};
use quarry_raft::Meta;
use quarry_storage::placement::Candidate;
use quarry_storage::{ChunkRef, ChunkTransport, Error as StorageError, StripeStore, StripeWriter};

use crate::membership::Membership;
use crate::rpc::{RpcRequest, RpcResponse, Transport};

/// Deadline of one chunk transfer between nodes.
const CHUNK_CALL_DEADLINE: Duration = Duration::from_secs(60);

/// The cluster as this node sees it: members and addresses from Raft, who is
/// up from gossip, placement from the applied catalog; chunks move over the
/// internal RPC (`GetChunk`, `PutChunk`).
#[derive(Clone)]
pub struct ClusterView {
    /// This node's id (the membership's identity, copied for brevity).
    node_id: NodeId,
    meta: Arc<Meta>,
    transport: Arc<dyn Transport>,
    membership: Membership,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl ClusterView {
    /// The view of the node `membership` speaks for.
    pub fn new(meta: Arc<Meta>, transport: Arc<dyn Transport>, membership: Membership) -> Self {
        ClusterView {
            node_id: membership.me().node_id,
            meta,
            transport,
            membership,
        }
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

    /// Node `node`'s RPC address: from Raft membership, else from gossip.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        let from_raft = self.with_members(|members| {
            members
                .filter(|(id, _)| **id == node)
                .find_map(|(_, addr)| addr.rpc.parse().ok())
        });
        from_raft.or_else(|| self.membership.member(node).map(|m| m.identity.addr))
    }

    /// Sends `request` about `chunk` to `node`.
    async fn call(
        &self,
        node: NodeId,
        chunk: ChunkId,
        request: RpcRequest,
    ) -> quarry_storage::Result<RpcResponse> {
        let unreachable = |reason: String| StorageError::Unreachable {
            node,
            chunk,
            reason,
        };
        let addr = self
            .addr_of(node)
            .ok_or_else(|| unreachable("no address known".to_owned()))?;
        match self
            .transport
            .call(addr, request, CHUNK_CALL_DEADLINE)
            .await
        {
            Ok(RpcResponse::ChunkFailed { fault, message }) => Err(StorageError::Remote {
                node,
                chunk,
                fault,
                message,
            }),
            Ok(RpcResponse::Failed(message)) => Err(StorageError::Remote {
                node,
                chunk,
                fault: quarry_storage::Fault::Internal,
                message,
            }),
            Ok(answer) => Ok(answer),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

#[async_trait]
impl ChunkTransport for ClusterView {
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Nodes being decommissioned are left out: they take no new chunks.
    fn live_nodes(&self) -> Vec<Candidate> {
        let leaving = self.meta.read_local().decommissioning.clone();
        self.with_members(|members| {
            members
                .filter(|(id, _)| self.membership.is_alive(**id) && !leaving.contains_key(*id))
                .map(|(id, addr)| (*id, addr.domain.clone()))
                .collect()
        })
    }

    fn maybe_up(&self, node: NodeId) -> bool {
        self.membership.maybe_up(node)
    }

    /// Nodes being decommissioned do not count.
    fn cluster_size(&self) -> usize {
        let leaving = self.meta.read_local().decommissioning.clone();
        self.with_members(|members| members.filter(|(id, _)| !leaving.contains_key(*id)).count())
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.meta.read_local()
    }

    async fn get(&self, node: NodeId, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        let request = RpcRequest::GetChunk {
            chunk: chunk.id,
            size_bytes: chunk.size_bytes,
            checksum_crc32c: chunk.checksum_crc32c,
        };
        match self.call(node, chunk.id, request).await? {
            RpcResponse::Chunk(data) => Ok(data),
            other => Err(StorageError::Remote {
                node,
                chunk: chunk.id,
                fault: quarry_storage::Fault::Internal,
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }

    async fn get_range(
        &self,
        node: NodeId,
        chunk: ChunkRef,
        range: Range<u64>,
    ) -> quarry_storage::Result<Bytes> {
        let request = RpcRequest::GetChunkRange {
            chunk: chunk.id,
            size_bytes: chunk.size_bytes,
            checksum_crc32c: chunk.checksum_crc32c,
            start_bytes: range.start,
            end_bytes: range.end,
        };
        match self.call(node, chunk.id, request).await? {
            RpcResponse::ChunkRange {
                data,
                checksum_crc32c,
            } if data.len() as u64 == range.end - range.start
                && crc32c::crc32c(&data) == checksum_crc32c =>
            {
                Ok(data)
            }
            RpcResponse::ChunkRange { .. } => Err(StorageError::Damaged {
                node,
                chunk: chunk.id,
            }),
            other => Err(StorageError::Remote {
                node,
                chunk: chunk.id,
                fault: quarry_storage::Fault::Internal,
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }

    async fn put(&self, node: NodeId, chunk: ChunkId, data: Bytes) -> quarry_storage::Result<()> {
        match self
            .call(node, chunk, RpcRequest::PutChunk { chunk, data })
            .await?
        {
            RpcResponse::Ok => Ok(()),
            other => Err(StorageError::Remote {
                node,
                chunk,
                fault: quarry_storage::Fault::Internal,
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }
}

/// The engine's data files: the stripe store, and the cluster's nodes as
/// `quarry_system.nodes` shows them.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    stripes: StripeStore,
    view: Arc<ClusterView>,
}

impl ClusterFiles {
    /// Data files in `stripes`, whose cluster `view` is.
    pub fn new(stripes: StripeStore, view: Arc<ClusterView>) -> Self {
        ClusterFiles { stripes, view }
    }
}

#[async_trait]
impl DataFileStore for ClusterFiles {
    fn sink(&self, layout: Option<StripeLayout>) -> Arc<dyn FileSink> {
        Arc::new(StripeWriter::new(self.stripes.clone(), layout))
    }

    async fn get(&self, chunk: ChunkRef) -> quarry_storage::Result<Bytes> {
        self.stripes.get(chunk).await
    }

    async fn get_range(&self, chunk: ChunkRef, range: Range<u64>) -> quarry_storage::Result<Bytes> {
        self.stripes.get_range(chunk, range).await
    }

    fn nodes(&self) -> Vec<NodeRow> {
        let watch = self.view.meta.raft().metrics();
        let metrics = watch.borrow();
        let config = metrics.membership_config.membership();
        let voters: HashSet<NodeId> = config.voter_ids().collect();
        let me = self.view.node_id;
        config
            .nodes()
            .map(|(id, addr)| NodeRow {
                node_id: *id,
                rpc_address: addr.rpc.clone(),
                pg_address: addr.pg.clone(),
                domain: addr.domain.clone(),
                state: if *id == me {
                    "alive".to_owned()
                } else {
                    self.view
                        .membership
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
        self.view.membership.is_alive(node)
    }

    fn discard(&self, chunk: ChunkId) {
        self.stripes.discard(chunk);
    }
}
