//! The cluster side of a node (docs/ARCHITECTURE.md §2, §6): the RPC handler for
//! node-to-node requests, forwarding of writes and read-index requests to the
//! Raft leader, joining, and the leader's duties — promoting learners to
//! voters across failure domains, replacing voters that stay down, and
//! repairing the chunks of nodes that stay down.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quarry_common::catalog::{Catalog, ChunkId, NodeId, Stripe, StripeLayout};
use quarry_raft::{Applied, Command, LeaderLink, Meta, NodeAddr, Proposal, Raft};
use quarry_storage::StripeStore;
use quarry_storage::placement::{domain_of, layouts_of, regroup_plan, repair_step, widen_to};
use tokio::time::Instant;

use crate::membership::{MemberState, Membership};
use crate::raft_network::RaftHandler;
use crate::rpc::{RemoteMetaError, RpcError, RpcRequest, RpcResponse, Transport};
use crate::stripes::ClusterView;

/// Deadline of a metadata call to another node.
const META_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Forwards writes and read-index requests to the leader over the RPC.
pub struct RpcLeaderLink {
    transport: Arc<dyn Transport>,
}

impl RpcLeaderLink {
    /// A link over `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        RpcLeaderLink { transport }
    }
}

fn leader_addr(leader: &NodeAddr) -> quarry_raft::Result<SocketAddr> {
    leader
        .rpc
        .parse()
        .map_err(|_| quarry_raft::Error::NotLeader { leader: None })
}

#[async_trait]
impl LeaderLink for RpcLeaderLink {
    async fn write(&self, leader: &NodeAddr, proposal: Proposal) -> quarry_raft::Result<Applied> {
        let addr = leader_addr(leader)?;
        match self
            .transport
            .call(addr, RpcRequest::Write(proposal), META_CALL_DEADLINE)
            .await
        {
            Ok(RpcResponse::Written(result)) => result.map_err(Into::into),
            // Never delivered: certainly not applied.
            Err(RpcError::Unreachable(..)) => Err(quarry_raft::Error::NotLeader { leader: None }),
            Ok(other) => Err(quarry_raft::Error::Unavailable(format!(
                "the leader answered {other:?}"
            ))),
            Err(e) => Err(quarry_raft::Error::Unavailable(e.to_string())),
        }
    }

    async fn read_index(&self, leader: &NodeAddr) -> quarry_raft::Result<u64> {
        let addr = leader_addr(leader)?;
        match self
            .transport
            .call(addr, RpcRequest::ReadIndex, META_CALL_DEADLINE)
            .await
        {
            Ok(RpcResponse::ReadIndex(result)) => result.map_err(Into::into),
            Ok(other) => Err(quarry_raft::Error::Unavailable(format!(
                "the leader answered {other:?}"
            ))),
            Err(_) => Err(quarry_raft::Error::NotLeader { leader: None }),
        }
    }
}

/// Answers every node-to-node request on this node.
pub struct NodeHandler {
    raft: RaftHandler,
    queries: ractor::ActorRef<crate::query_manager::QueryManagerMsg>,
    meta: Arc<Meta>,
    stripes: StripeStore,
    view: Arc<ClusterView>,
    membership: Membership,
    transport: Arc<dyn Transport>,
    jobs: Arc<crate::jobs::Jobs>,
}

impl NodeHandler {
    /// A handler for this node's Raft, catalog, chunks and membership.
    pub fn new(
        meta: Arc<Meta>,
        stripes: StripeStore,
        view: Arc<ClusterView>,
        membership: Membership,
        transport: Arc<dyn Transport>,
        queries: ractor::ActorRef<crate::query_manager::QueryManagerMsg>,
        jobs: Arc<crate::jobs::Jobs>,
    ) -> Self {
        NodeHandler {
            jobs,
            raft: RaftHandler::new(meta.raft().clone(), membership.me().node_id),
            queries,
            meta,
            stripes,
            view,
            membership,
            transport,
        }
    }

    async fn join(&self, addr: NodeAddr) -> RpcResponse {
        let raft = self.meta.raft();
        let leader = raft.metrics().borrow().current_leader;
        let me = self.membership.me().node_id;
        if leader != Some(me) {
            // Only the leader can add a learner; pass the request on.
            let Some(leader_addr) = leader.and_then(|l| self.view.addr_of(l)) else {
                return RpcResponse::Failed("no Raft leader right now; retry".to_owned());
            };
            return match self
                .transport
                .call(leader_addr, RpcRequest::Join { addr }, META_CALL_DEADLINE)
                .await
            {
                Ok(answer) => answer,
                Err(e) => RpcResponse::Failed(e.to_string()),
            };
        }
        // A retried join (its answer was lost) finds the learner it added.
        let existing = {
            let metrics = raft.metrics().borrow().clone();
            let config = metrics.membership_config.membership();
            let voters: HashSet<NodeId> = config.voter_ids().collect();
            config
                .nodes()
                .find(|(id, a)| a.rpc == addr.rpc && !voters.contains(id))
                .map(|(id, _)| *id)
        };
        let node_id = match existing {
            Some(id) => id,
            None => match self
                .meta
                .write_local(quarry_raft::Proposal {
                    command: Command::AllocateNodeId,
                    proposed_at: quarry_raft::now_micros(),
                })
                .await
            {
                Ok(Applied::NodeId(id)) => id,
                Ok(other) => return RpcResponse::Failed(format!("unexpected answer {other:?}")),
                Err(e) => return RpcResponse::Failed(e.to_string()),
            },
        };
        // A voter promotion may be under way; membership changes go one at a time.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match raft.add_learner(node_id, addr.clone(), false).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(node_id, error = %e, "adding a learner must wait");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return RpcResponse::Failed(format!(
                        "cannot add node {node_id} as a learner: {e}"
                    ));
                }
            }
        }
        tracing::info!(node_id, %addr, "node joined as a learner");
        RpcResponse::Joined {
            node_id,
            cluster_id: self.meta.read_local().cluster_id,
        }
    }

    fn hello(&self, cluster_id: u128, node_id: NodeId, addr: &NodeAddr) -> RpcResponse {
        let ours = self.meta.read_local().cluster_id;
        if ours != 0 && cluster_id != ours {
            return RpcResponse::Refused(format!(
                "the data dir belongs to cluster {}, but this seed is in cluster {}: \
                 start the node with an empty data dir to join this cluster",
                quarry_common::catalog::ChunkId(cluster_id),
                quarry_common::catalog::ChunkId(ours),
            ));
        }
        if let Some(member) = self.membership.member(node_id)
            && member.state != MemberState::Down
            && member.identity.addr.to_string() != addr.rpc
        {
            return RpcResponse::Refused(format!(
                "node id {node_id} is already in use by the live node at {}: \
                 was the data dir copied? start this node with an empty data dir",
                member.identity.addr
            ));
        }
        RpcResponse::Ok
    }
}

#[async_trait]
impl crate::rpc::Handler for NodeHandler {
    async fn handle(&self, request: RpcRequest) -> RpcResponse {
        match request {
            RpcRequest::Join { addr } => self.join(addr).await,
            RpcRequest::Hello {
                cluster_id,
                node_id,
                addr,
            } => self.hello(cluster_id, node_id, &addr),
            RpcRequest::Write(proposal) => RpcResponse::Written(
                self.meta
                    .write_local(proposal)
                    .await
                    .map_err(|e| RemoteMetaError::new(self.membership.me().node_id, e)),
            ),
            RpcRequest::Elect => match self.meta.raft().trigger().elect().await {
                Ok(()) => RpcResponse::Ok,
                Err(e) => RpcResponse::Failed(format!("cannot start an election: {e}")),
            },
            RpcRequest::ReadIndex => RpcResponse::ReadIndex(
                self.meta
                    .read_index_local()
                    .await
                    .map_err(|e| RemoteMetaError::new(self.membership.me().node_id, e)),
            ),
            RpcRequest::PutChunk { chunk, data } => {
                let local = self.stripes.local().clone();
                match quarry_storage::blocking(move || local.put_as(chunk, &data)).await {
                    Ok(_) => RpcResponse::Ok,
                    Err(e) => RpcResponse::ChunkFailed {
                        fault: e.fault(),
                        message: e.to_string(),
                    },
                }
            }
            RpcRequest::Jobs(request) => RpcResponse::Jobs(self.jobs.answer(request)),
            RpcRequest::Exchange(request) => {
                let answer = crate::query_manager::answer(&self.queries, request, None).await;
                RpcResponse::Exchange(answer.unwrap_or_else(|why| {
                    quarry_exec::distributed::ExchangeResponse::Failed {
                        sqlstate: quarry_common::SqlState::INTERNAL_ERROR.code().to_owned(),
                        message: why,
                    }
                }))
            }
            RpcRequest::GetChunk {
                chunk,
                size_bytes,
                checksum_crc32c,
            } => {
                let reference = quarry_storage::ChunkRef {
                    id: chunk,
                    size_bytes,
                    checksum_crc32c,
                };
                match self.stripes.read_local(reference).await {
                    Ok(data) => RpcResponse::Chunk(data),
                    Err(e) => RpcResponse::ChunkFailed {
                        fault: e.fault(),
                        message: e.to_string(),
                    },
                }
            }
            RpcRequest::GetChunkRange {
                chunk,
                size_bytes,
                checksum_crc32c,
                start_bytes,
                end_bytes,
            } => {
                let reference = quarry_storage::ChunkRef {
                    id: chunk,
                    size_bytes,
                    checksum_crc32c,
                };
                let local = self.stripes.local().clone();
                match quarry_storage::blocking(move || {
                    local.get_range(&reference, start_bytes..end_bytes)
                })
                .await
                {
                    Ok(data) => RpcResponse::ChunkRange {
                        checksum_crc32c: crc32c::crc32c(&data),
                        data,
                    },
                    Err(e) => RpcResponse::ChunkFailed {
                        fault: e.fault(),
                        message: e.to_string(),
                    },
                }
            }
            raft => self.raft.handle(raft).await,
        }
    }
}

/// Asks the seeds, in turn, until one answers, for `request`; gives up after
/// `timeout`.
///
/// # Errors
/// If no seed answered in time (with what each said).
pub async fn ask_seeds(
    transport: &dyn Transport,
    seeds: &[String],
    request: RpcRequest,
    timeout: Duration,
) -> anyhow::Result<RpcResponse> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no seed given");
    loop {
        for seed in seeds {
            let addrs = match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(e) => {
                    last = format!("{seed}: {e}");
                    continue;
                }
            };
            for addr in addrs {
                match transport
                    .call(addr, request.clone(), Duration::from_secs(5))
                    .await
                {
                    Ok(RpcResponse::Failed(e)) => last = format!("{seed}: {e}"),
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = format!("{seed}: {e}"),
                }
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no seed answered within {timeout:?} (last error: {last}); \
                 check --join and that the seeds are running"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Settings of the leader's duties.
#[derive(Debug, Clone)]
pub struct Duties {
    /// How long a voter may be down before it is replaced.
    pub voter_replace_after: Duration,
    /// How long a node may be down before its chunks are rebuilt elsewhere.
    pub repair_after: Duration,
    /// How long after its drain a node in maintenance is spared both.
    pub maintenance_timeout: Duration,
    /// Bytes a second rebalancing may move to or from each node (0: off).
    pub rebalance_rate: u64,
}

/// Whether node `node` is in maintenance (drained by an operator) and
/// within `timeout` of its mark: while down, it is neither repaired nor
/// replaced as a voter.
pub(crate) fn in_maintenance(catalog: &Catalog, node: NodeId, timeout: Duration) -> bool {
    catalog.maintenance.get(&node).is_some_and(|mark| {
        let age = (quarry_raft::now_micros() - mark.since).max(0) as u128;
        age < timeout.as_micros()
    })
}

/// Runs forever: every second, on the leader, manages voters, repairs
/// stripes, widens and regroups them and rebalances; on every node,
/// re-announces to Raft peers when gossip is alone.
pub async fn run_duties(
    meta: Arc<Meta>,
    stripes: StripeStore,
    membership: Membership,
    duties: Duties,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let raft = meta.raft();
        let metrics = raft.metrics().borrow().clone();
        if membership.is_alone() {
            for (id, addr) in metrics.membership_config.nodes() {
                if *id != membership.me().node_id
                    && let Ok(addr) = addr.rpc.parse()
                {
                    membership.announce(addr);
                }
            }
        }
        if metrics.current_leader != Some(membership.me().node_id) {
            continue;
        }
        let catalog = meta.read_local();
        if let Err(e) = manage_voters(raft, &metrics, &membership, &duties, started, &catalog).await
        {
            tracing::warn!(error = %e, "voter management failed; retrying");
        }
        repair(&meta, &stripes, &membership, &duties, started).await;
        widen(&meta, &stripes).await;
        regroup(&meta, &stripes).await;
        crate::rebalance::run_pass(&meta, &stripes, &duties).await;
    }
}

/// The ids of the nodes gossip says are alive.
fn live_node_ids(stripes: &StripeStore) -> HashSet<NodeId> {
    stripes
        .cluster()
        .live_nodes()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// Regroups narrow stripes (fewer data chunks than the cluster's default k,
/// because their statement wrote fewer data files) into one wider stripe, up
/// to the full width: their data chunks stay where they are, new parity is
/// computed over all of them, and one Raft `Regroup` replaces the old stripes
/// (whose parity chunks become orphans). Only stripes of tables without their
/// own layout, healthy, with full parity, and data on distinct nodes; at most
/// one new stripe per call, and each call leaves fewer stripes.
async fn regroup(meta: &Meta, stripes: &StripeStore) {
    let catalog = meta.read_local();
    let layout = StripeLayout::for_cluster(stripes.cluster().cluster_size());
    let m = usize::from(layout.parity_chunks);
    let live = live_node_ids(stripes);
    let own_layout: HashSet<ChunkId> = catalog
        .tables
        .values()
        .chain(catalog.dropped.iter().map(|d| &d.table))
        .filter(|t| t.layout.is_some())
        .flat_map(|t| t.files.iter().map(|e| e.file.chunk))
        .collect();
    let Some(group) = regroup_plan(catalog.stripes.values(), layout, &live, &own_layout) else {
        return;
    };
    let id = ChunkId(uuid::Uuid::now_v7().as_u128());
    let data: Vec<_> = group
        .iter()
        .flat_map(|s| s.data().iter().cloned())
        .collect();
    let width = data.len();
    let parity = match stripes.new_parity(id, &data, m).await {
        Ok(parity) => parity,
        Err(e) => {
            tracing::warn!(error = %e, "cannot regroup narrow stripes yet");
            return;
        }
    };
    let mut chunks = data;
    chunks.extend(parity);
    let command = Command::Regroup {
        old: group.iter().map(|s| s.id).collect(),
        new: Stripe {
            id,
            data_chunks: width as u8,
            chunks,
        },
    };
    match meta.write(command).await {
        Ok(_) => {
            tracing::info!(stripe = %id, from = group.len(), "regrouped narrow stripes into one");
            metrics::counter!("quarry_storage_stripes_regrouped_total")
                .increment(group.len() as u64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot record a regrouped stripe"),
    }
}

/// Gives every healthy stripe that was formed with fewer parity chunks than
/// its table's layout asks for (nodes were down at its commit) the full
/// parity, once enough live nodes hold none of its data. Data chunks stay
/// where they are; a narrow k (fewer data chunks per stripe) is kept.
async fn widen(meta: &Meta, stripes: &StripeStore) {
    let catalog = meta.read_local();
    let default = StripeLayout::for_cluster(stripes.cluster().cluster_size());
    let layout_of = layouts_of(&catalog, default);
    let live = live_node_ids(stripes);
    for stripe in catalog.stripes.values() {
        let Some(layout) = stripe.data().first().and_then(|c| layout_of.get(&c.chunk)) else {
            continue;
        };
        let Some(want) = widen_to(stripe, *layout, &live) else {
            continue;
        };
        let expected: Vec<ChunkId> = stripe.chunks[usize::from(stripe.data_chunks)..]
            .iter()
            .map(|c| c.chunk)
            .collect();
        let parity = match stripes.new_parity(stripe.id, stripe.data(), want).await {
            Ok(parity) => parity,
            Err(e) => {
                tracing::warn!(stripe = %stripe.id, error = %e, "cannot widen a narrow stripe yet");
                continue;
            }
        };
        let command = Command::ReplaceParity {
            stripe: stripe.id,
            expected,
            parity,
        };
        match meta.write(command).await {
            Ok(_) => {
                tracing::info!(stripe = %stripe.id, from = stripe.parity_chunks(), to = want, "widened a narrow stripe");
                metrics::counter!("quarry_storage_stripes_widened_total").increment(1);
            }
            Err(e) => {
                tracing::warn!(stripe = %stripe.id, error = %e, "cannot record a widened stripe")
            }
        }
    }
}

/// How many voters a cluster of `nodes` nodes should have: 1, then 3, then 5
/// (an even count adds no fault tolerance).
pub fn voter_target(nodes: usize) -> usize {
    match nodes {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    }
}

async fn manage_voters(
    raft: &Raft,
    metrics: &openraft::RaftMetrics<NodeId, NodeAddr>,
    membership: &Membership,
    duties: &Duties,
    started: Instant,
    catalog: &Catalog,
) -> anyhow::Result<()> {
    let config = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = config.voter_ids().collect();
    let nodes: Vec<(NodeId, NodeAddr)> = config.nodes().map(|(id, a)| (*id, a.clone())).collect();
    let last_log = metrics.last_log_index.unwrap_or(0);
    let caught_up = |id: NodeId| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id))
            .and_then(|m| m.as_ref())
            .is_some_and(|m| m.index + 100 >= last_log)
    };
    let domain = |id: NodeId| {
        nodes
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(n, a)| domain_of(*n, &a.domain))
            .unwrap_or_default()
    };
    let dead: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|v| {
            !in_maintenance(catalog, *v, duties.maintenance_timeout)
                && membership
                    .down_for(*v, started)
                    .is_some_and(|d| d >= duties.voter_replace_after)
        })
        .collect();
    let mut candidates: Vec<NodeId> = nodes
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| {
            !voters.contains(id)
                && !catalog.decommissioning.contains_key(id)
                && membership.is_alive(*id)
                && caught_up(*id)
        })
        .collect();
    let voter_domains: HashSet<String> = voters
        .iter()
        .filter(|v| !dead.contains(v))
        .map(|v| domain(*v))
        .collect();
    // New failure domains first, then lowest id.
    candidates.sort_by_key(|id| (voter_domains.contains(&domain(*id)), *id));
    let Some(&candidate) = candidates.first() else {
        return Ok(());
    };
    let mut new_voters = voters.clone();
    if let Some(&gone) = dead.first() {
        new_voters.remove(&gone);
        new_voters.insert(candidate);
        tracing::info!(gone, candidate, "replacing a voter that stayed down");
    } else {
        // Grow to the largest odd count the target and the candidates allow,
        // in one change: an even count (two voters) tolerates no more failures
        // than the odd count below it and needs more nodes for a quorum.
        let reachable = voter_target(nodes.len()).min(voters.len() + candidates.len());
        let size = if reachable.is_multiple_of(2) {
            reachable - 1
        } else {
            reachable
        };
        if size <= voters.len() {
            return Ok(());
        }
        let promoted: Vec<NodeId> = candidates[..size - voters.len()].to_vec();
        tracing::info!(?promoted, "promoting learners to voters");
        new_voters.extend(promoted);
    }
    raft.change_membership(new_voters, true).await?;
    Ok(())
}

/// Rebuilds, on other live nodes, the chunks of nodes down for longer than
/// `repair_after` (or no longer in the cluster), and commits each move.
async fn repair(
    meta: &Meta,
    stripes: &StripeStore,
    membership: &Membership,
    duties: &Duties,
    started: Instant,
) {
    let catalog = meta.read_local();
    let live = stripes.cluster().live_nodes();
    let members: HashSet<NodeId> = meta
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    let lost = |node: NodeId| {
        !members.contains(&node)
            || (!in_maintenance(&catalog, node, duties.maintenance_timeout)
                && membership
                    .down_for(node, started)
                    .is_some_and(|d| d >= duties.repair_after))
    };
    let mut bytes = 0u64;
    let began = Instant::now();
    // One move per stripe per pass: the next pass plans from the new placement.
    for stripe in catalog.stripes.values() {
        let Some((index, target)) = repair_step(stripe, &live, lost) else {
            continue;
        };
        let chunk = &stripe.chunks[index];
        let data = match stripes.rebuild(stripe, index).await {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!(stripe = %stripe.id, index, error = %e, "cannot rebuild a chunk of a lost node");
                continue;
            }
        };
        let len = data.len() as u64;
        if let Err(e) = stripes.store_on(target, chunk.chunk, data).await {
            tracing::warn!(target, error = %e, "cannot store a rebuilt chunk");
            continue;
        }
        let command = Command::MoveChunk {
            stripe: stripe.id,
            index: index as u8,
            from: chunk.node,
            to: target,
        };
        match meta.write(command).await {
            Ok(_) => {
                bytes += len;
                metrics::counter!("quarry_storage_repaired_bytes_total").increment(len);
                metrics::counter!("quarry_storage_chunks_repaired_total").increment(1);
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a repaired chunk"),
        }
    }
    if bytes > 0 {
        let seconds = began.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            bytes,
            seconds,
            mb_per_s = bytes as f64 / 1e6 / seconds,
            "repaired chunks of lost nodes"
        );
    }
}
