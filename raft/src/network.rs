//! Raft networking seams.
//!
//! openraft sends RPCs through a [`RaftNetworkFactory`]; the node implements it over
//! its internal RPC. [`Unconnected`] is the factory of a node that has no peers (a
//! one-node cluster): a one-voter group never sends an RPC, and if it tried, every
//! peer would be reported unreachable.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{NodeAddr, NodeId, TypeConfig};

/// Network of a node without peers: every RPC fails with `Unreachable`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unconnected;

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, NodeAddr, E> {
    let reason = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("node {target} is not connected to this node"),
    );
    RPCError::Unreachable(Unreachable::new(&reason))
}

impl RaftNetworkFactory<TypeConfig> for Unconnected {
    type Network = UnconnectedPeer;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> Self::Network {
        UnconnectedPeer { target }
    }
}

/// A peer that [`Unconnected`] cannot reach.
#[derive(Debug, Clone, Copy)]
pub struct UnconnectedPeer {
    target: NodeId,
}

impl RaftNetwork<TypeConfig> for UnconnectedPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }
}
