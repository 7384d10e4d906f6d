//! openraft's network over the internal RPC: Raft messages travel as
//! [`RpcRequest`] variants, so partitions injected into the [`Transport`] cut
//! Raft traffic too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quarry_raft::{NodeAddr, NodeId, Raft, TypeConfig};

use crate::rpc::{Handler, RpcError, RpcRequest, RpcResponse, Transport};

/// Creates a [`RaftPeer`] per target node.
#[derive(Clone)]
pub struct RaftRpcNetwork {
    transport: Arc<dyn Transport>,
}

impl RaftRpcNetwork {
    /// Raft traffic over `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        RaftRpcNetwork { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftRpcNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> RaftPeer {
        RaftPeer {
            target,
            node: node.clone(),
            address: node.rpc.parse().ok(),
            transport: self.transport.clone(),
        }
    }
}

/// The Raft connection to one peer.
pub struct RaftPeer {
    target: NodeId,
    node: NodeAddr,
    address: Option<SocketAddr>,
    transport: Arc<dyn Transport>,
}

impl RaftPeer {
    async fn call<E: std::error::Error>(
        &self,
        request: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<NodeId, NodeAddr, E>> {
        let Some(address) = self.address else {
            let reason = std::io::Error::other(format!(
                "node {} has no RPC address ({})",
                self.target, self.node
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&reason)));
        };
        let deadline: Duration = option.hard_ttl();
        match self.transport.call(address, request, deadline).await {
            Ok(response) => Ok(response),
            Err(
                e @ (RpcError::Unreachable(..)
                | RpcError::AnswerLost(..)
                | RpcError::DeadlineExceeded(..)),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        response: RpcResponse,
    ) -> RPCError<NodeId, NodeAddr, E> {
        let reason = std::io::Error::other(format!(
            "unexpected answer from node {}: {response:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&reason))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, NodeAddr, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(RpcRequest::RaftAppend(rpc), &option).await? {
            RpcResponse::RaftAppend(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RpcRequest::RaftSnapshot(rpc), &option).await? {
            RpcResponse::RaftSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(RpcRequest::RaftVote(rpc), &option).await? {
            RpcResponse::RaftVote(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }
}

/// Answers Raft RPCs with this node's Raft.
pub struct RaftHandler {
    raft: Raft,
    node_id: NodeId,
}

impl RaftHandler {
    /// A handler for `raft`, the Raft of node `node_id`.
    pub fn new(raft: Raft, node_id: NodeId) -> Self {
        RaftHandler { raft, node_id }
    }
}

#[async_trait]
impl Handler for RaftHandler {
    async fn handle(&self, request: RpcRequest) -> RpcResponse {
        match request {
            RpcRequest::Ping { payload } => RpcResponse::Pong {
                payload,
                node_id: self.node_id,
            },
            RpcRequest::RaftAppend(rpc) => {
                RpcResponse::RaftAppend(self.raft.append_entries(rpc).await)
            }
            RpcRequest::RaftVote(rpc) => RpcResponse::RaftVote(self.raft.vote(rpc).await),
            RpcRequest::RaftSnapshot(rpc) => {
                RpcResponse::RaftSnapshot(self.raft.install_snapshot(rpc).await)
            }
            other => RpcResponse::Failed(format!("not served by a Raft-only handler: {other:?}")),
        }
    }
}
