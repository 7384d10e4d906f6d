//! The cluster as distributed queries see it ([`quarry_exec::distributed::Peers`]):
//! live nodes from gossip, chunk holders from the stripe catalog, exchange
//! calls over the internal RPC, and to this node through its query manager.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use quarry_common::catalog::{ChunkId, NodeId};
use quarry_exec::distributed::{ExchangeRequest, ExchangeResponse, Peers};
use quarry_storage::ChunkTransport;
use ractor::ActorRef;

use crate::query_manager::{self, QueryManagerMsg};
use crate::rpc::{RpcRequest, RpcResponse, Transport};
use crate::stripes::ClusterView;

/// [`Peers`] over this node's view of the cluster and RPC transport.
pub struct RpcPeers {
    view: Arc<ClusterView>,
    transport: Arc<dyn Transport>,
    /// This node's query manager, once spawned (it needs the engine these
    /// peers are given to).
    queries: OnceLock<ActorRef<QueryManagerMsg>>,
}

impl RpcPeers {
    /// Peers as `view` sees the cluster, called through `transport`.
    pub fn new(view: Arc<ClusterView>, transport: Arc<dyn Transport>) -> Self {
        RpcPeers {
            view,
            transport,
            queries: OnceLock::new(),
        }
    }

    /// Sends this node's own requests to `manager` from now on (until then
    /// they fail: no query runs before the node is ready).
    pub fn answer_locally(&self, manager: ActorRef<QueryManagerMsg>) {
        let _ = self.queries.set(manager);
    }
}

impl std::fmt::Debug for RpcPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcPeers")
            .field("node_id", &self.view.node_id())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Peers for RpcPeers {
    fn local(&self) -> NodeId {
        self.view.node_id()
    }

    /// Alive and not in maintenance: a drained node takes no new work (it
    /// is about to stop), so no fragment of a new query is placed on it.
    fn live(&self) -> Vec<NodeId> {
        let catalog = self.view.catalog();
        let mut live: Vec<NodeId> = self
            .view
            .live_nodes()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !catalog.maintenance.contains_key(id))
            .collect();
        live.sort_unstable();
        live
    }

    fn holder(&self, chunk: ChunkId) -> Option<NodeId> {
        let catalog = self.view.catalog();
        let stripe = catalog.stripe_of(chunk)?;
        stripe
            .chunks
            .iter()
            .find(|c| c.chunk == chunk)
            .map(|c| c.node)
    }

    async fn call(
        &self,
        node: NodeId,
        request: ExchangeRequest,
        deadline: Duration,
    ) -> Result<ExchangeResponse, String> {
        if node == self.local() {
            let manager = self
                .queries
                .get()
                .ok_or("this node's query manager has not started")?;
            return query_manager::answer(manager, request, Some(deadline)).await;
        }
        let addr = self
            .view
            .addr_of(node)
            .ok_or_else(|| format!("node {node} has no address"))?;
        match self
            .transport
            .call(addr, RpcRequest::Exchange(request), deadline)
            .await
        {
            Ok(RpcResponse::Exchange(response)) => Ok(response),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
