//! [`ChunkTransport`]: the cluster as the stripe store needs it. The node
//! implements it over its internal RPC, gossip membership and the Raft catalog;
//! tests implement it in-process, with faults (a node down, a call failing,
//! bytes damaged on the way).

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use quarry_common::catalog::{Catalog, ChunkId, NodeId};

use crate::placement::Candidate;
use crate::{ChunkRef, Result};

/// Who is in the cluster and up, where stripes are placed, and moving one
/// chunk's bytes to or from another node.
///
/// Calls to other nodes carry their own deadline; when it passes the call
/// fails with [`crate::Error::Unreachable`]. Dropping a call's future cancels
/// it; a cancelled `put` may or may not have stored the chunk (an unrecorded
/// chunk is an orphan that collection removes).
#[async_trait]
pub trait ChunkTransport: Send + Sync + Debug + 'static {
    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// The cluster's nodes (voters and learners) that are up now, with their
    /// failure domains.
    fn live_nodes(&self) -> Vec<Candidate>;

    /// Whether `node` may be up: false only when it is known to be down (a
    /// call to it would only wait for its deadline).
    fn maybe_up(&self, node: NodeId) -> bool;

    /// How many nodes the cluster has, up or not (the default stripe layout
    /// follows it).
    fn cluster_size(&self) -> usize;

    /// The catalog as this node last applied it: where every stripe's chunks
    /// are placed.
    fn catalog(&self) -> Arc<Catalog>;

    /// The bytes of `chunk` as stored on `node` (another node), which
    /// verifies them against `chunk`'s size and checksum before sending.
    ///
    /// # Errors
    /// `Unreachable` (no answer in time), `Remote` (the node failed to read
    /// it: missing or corrupt there).
    async fn get(&self, node: NodeId, chunk: ChunkRef) -> Result<Bytes>;

    /// Bytes `range` of `chunk` as stored on `node` (another node), which
    /// verifies the blocks it reads; the transport checks that what arrived
    /// is what was sent.
    ///
    /// # Errors
    /// As [`ChunkTransport::get`]; `Damaged` when the bytes changed on the way.
    async fn get_range(&self, node: NodeId, chunk: ChunkRef, range: Range<u64>) -> Result<Bytes>;

    /// Stores `data` as chunk `chunk` on `node` (another node), durably
    /// (written, fsynced, renamed) before answering.
    ///
    /// # Errors
    /// `Unreachable` or `Remote`; the chunk may then exist on `node` or not.
    async fn put(&self, node: NodeId, chunk: ChunkId, data: Bytes) -> Result<()>;
}
