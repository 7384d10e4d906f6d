//! Fakes of what an [`crate::Engine`] is built over, for tests of this crate
//! and of the node's actors (feature `testing`): a catalog that stays empty
//! and a cluster of one node.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quarry_common::catalog::{Catalog, ChunkId, NodeId};

use crate::distributed::{ExchangeRequest, ExchangeResponse, Peers};

/// Metadata with an empty catalog that takes no writes.
#[derive(Debug)]
pub struct EmptyCatalog;

#[async_trait]
impl crate::Metadata for EmptyCatalog {
    async fn read(&self) -> quarry_raft::Result<Arc<Catalog>> {
        Ok(Arc::new(Catalog::default()))
    }

    async fn write(
        &self,
        command: quarry_raft::Command,
    ) -> quarry_raft::Result<quarry_raft::Applied> {
        Err(quarry_raft::Error::Unavailable(format!(
            "the empty test catalog takes no writes ({command:?})"
        )))
    }
}

/// A cluster of node 1 alone, which calls no other node.
#[derive(Debug)]
pub struct Alone;

#[async_trait]
impl Peers for Alone {
    fn local(&self) -> NodeId {
        1
    }

    fn live(&self) -> Vec<NodeId> {
        vec![1]
    }

    fn holder(&self, _chunk: ChunkId) -> Option<NodeId> {
        None
    }

    async fn call(
        &self,
        node: NodeId,
        _request: ExchangeRequest,
        _deadline: Duration,
    ) -> Result<ExchangeResponse, String> {
        Err(format!("node {node}: a test's lone node calls no node"))
    }
}
