//! [`Meta`]: this node's handle on the replicated catalog.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{RaftNetworkFactory, SnapshotPolicy};
use quarry_common::catalog::{Catalog, DEFAULT_SCHEMA};
use tokio::time::Instant;

use crate::command::{Applied, Command, Proposal};
use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::state_machine::{CatalogCell, StateMachine};
use crate::{NodeAddr, NodeId, Raft, TypeConfig};

/// Settings of the metadata Raft group.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's addresses, recorded in membership at bootstrap.
    pub addr: NodeAddr,
    /// Leader heartbeat period. Election timeouts are 3–6 heartbeats.
    pub heartbeat_interval: Duration,
    /// Build a state-machine snapshot (and purge the log before it) every this many
    /// applied entries.
    pub snapshot_every_entries: u64,
    /// Bytes per message when a snapshot file is sent to a lagging follower.
    pub snapshot_chunk_bytes: u64,
    /// How long [`Meta::bootstrap`] waits for this node to become leader.
    pub leader_wait: Duration,
    /// How long a read or write waits for a leader and its answer before it
    /// fails (NotLeader if nothing was sent, Unavailable if a write's outcome
    /// is unknown).
    pub request_timeout: Duration,
}

impl MetaConfig {
    /// Defaults for node `node_id` at `addr`: 250 ms heartbeats (elections after
    /// 0.75–1.5 s of silence: quick failover without spurious elections on a
    /// loaded machine), a snapshot every
    /// 1000 entries (small enough to bound restart replay, large enough that
    /// snapshot writes stay rare next to commits), sent in 3 MiB chunks.
    pub fn new(node_id: NodeId, addr: NodeAddr) -> Self {
        MetaConfig {
            node_id,
            addr,
            heartbeat_interval: Duration::from_millis(250),
            snapshot_every_entries: 1000,
            snapshot_chunk_bytes: 3 * 1024 * 1024,
            leader_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// How a follower reaches the leader: the node implements it over its internal
/// RPC (the leader answers with [`Meta::write_local`] and
/// [`Meta::read_index_local`]).
#[async_trait]
pub trait LeaderLink: Send + Sync + 'static {
    /// Has the leader at `leader` commit `proposal`.
    ///
    /// # Errors
    /// [`Error::NotLeader`] if it was certainly not applied (the peer was
    /// unreachable or is not the leader); [`Error::Unavailable`] if the outcome
    /// is unknown.
    async fn write(&self, leader: &NodeAddr, proposal: Proposal) -> Result<Applied>;
    /// Asks the leader at `leader` for its read index: the log index a replica
    /// must have applied to serve a linearizable read.
    async fn read_index(&self, leader: &NodeAddr) -> Result<u64>;
}

/// The [`LeaderLink`] of a node without peers: every leader is unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLink;

#[async_trait]
impl LeaderLink for NoLink {
    async fn write(&self, _leader: &NodeAddr, _proposal: Proposal) -> Result<Applied> {
        Err(Error::NotLeader { leader: None })
    }

    async fn read_index(&self, _leader: &NodeAddr) -> Result<u64> {
        Err(Error::NotLeader { leader: None })
    }
}

/// Where a request must go, as a local attempt found out.
enum Route<T> {
    /// Served here.
    Done(T),
    /// Another node leads.
    Leader(NodeId, NodeAddr),
    /// No leader known yet (election under way or no quorum).
    NoLeader(Option<NodeId>),
}

/// This node's replica of the catalog, and the way to change it.
///
/// Reads ([`Meta::read`]) are linearizable: they see every write acknowledged before
/// they started. Writes ([`Meta::write`]) return once applied on a majority.
#[derive(Clone)]
pub struct Meta {
    raft: Raft,
    cell: Arc<CatalogCell>,
    config: MetaConfig,
    link: Arc<dyn LeaderLink>,
    /// The metadata store, to wait at shutdown until every task using it
    /// (a snapshot being built) has let go of it.
    db: std::sync::Weak<redb::Database>,
}

/// How long to wait between attempts to find a leader.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Microseconds since the Unix epoch by this node's clock.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Meta {
    /// Opens (creating if needed) the metadata store `path` (a redb file) and starts
    /// the Raft node. `network` carries Raft RPCs to other nodes; `link` carries
    /// forwarded writes and read-index requests to the leader.
    ///
    /// # Errors
    /// [`Error::Storage`] if the database cannot be opened (e.g. another process holds
    /// it) or its contents do not decode.
    pub async fn open<N>(
        path: &Path,
        config: MetaConfig,
        network: N,
        link: Arc<dyn LeaderLink>,
    ) -> Result<Meta>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let db = redb::Database::create(path)
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        let weak_db = Arc::downgrade(&db);
        let log_store = LogStore::open(db.clone())?;
        let cell = Arc::new(CatalogCell::default());
        let state_machine = StateMachine::open(db, path.with_extension("snapshots"), cell.clone())?;
        let heartbeat_ms = config.heartbeat_interval.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "quarry".to_owned(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: heartbeat_ms * 3,
            election_timeout_max: heartbeat_ms * 6,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.snapshot_every_entries,
            snapshot_max_chunk_size: config.snapshot_chunk_bytes,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| Error::Storage(format!("invalid Raft config: {e}")))?,
        );
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(Meta {
            raft,
            cell,
            config,
            link,
            db: weak_db,
        })
    }

    /// Whether this node's Raft state says it has been part of a cluster.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if Raft has stopped.
    pub async fn is_initialized(&self) -> Result<bool> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Makes this node the single voter of a new cluster `cluster_id` if it has
    /// never been part of one, waits until it leads, and creates the `public`
    /// schema on first start. Called again on an initialized node (a one-node
    /// cluster restarting), it only waits until this node leads.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if it does not become leader within `leader_wait`.
    pub async fn bootstrap(&self, cluster_id: u128) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(self.config.node_id, self.config.addr.clone())]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
        }
        self.raft
            .wait(Some(self.config.leader_wait))
            .current_leader(self.config.node_id, "waiting to lead the one-node cluster")
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if !initialized {
            self.write(Command::InitCluster { cluster_id }).await?;
            self.write(Command::CreateSchema {
                name: DEFAULT_SCHEMA.to_owned(),
                if_not_exists: true,
            })
            .await?;
        }
        Ok(())
    }

    /// Proposes `command` and waits until it is committed and applied, through
    /// the leader wherever it is.
    ///
    /// # Errors
    /// [`Error::Catalog`] if the catalog refused it (nothing changed);
    /// [`Error::NotLeader`] if no leader could be reached within the request
    /// timeout (nothing written); [`Error::Unavailable`] if the outcome is
    /// unknown (the leader was lost after the command was sent).
    pub async fn write(&self, command: Command) -> Result<Applied> {
        let proposal = Proposal {
            command,
            proposed_at: now_micros(),
        };
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let route =
                match tokio::time::timeout_at(deadline, self.try_write(proposal.clone())).await {
                    Ok(route) => route?,
                    Err(_) => return Err(self.write_timed_out()),
                };
            let last_known = match route {
                Route::Done(applied) => return Ok(applied),
                Route::Leader(id, addr) => {
                    match tokio::time::timeout_at(
                        deadline,
                        self.link.write(&addr, proposal.clone()),
                    )
                    .await
                    {
                        Ok(Err(Error::NotLeader { .. })) => Some(id),
                        Ok(answer) => return answer,
                        Err(_) => return Err(self.write_timed_out()),
                    }
                }
                Route::NoLeader(last_known) => last_known,
            };
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(Error::NotLeader { leader: last_known });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    fn write_timed_out(&self) -> Error {
        Error::Unavailable(format!(
            "the write was not confirmed within {:?} (no majority of voters answered); \
             it may or may not have been applied",
            self.config.request_timeout
        ))
    }

    /// Commits `proposal` if this node leads; the leader's side of a forwarded
    /// write. Never forwards.
    ///
    /// # Errors
    /// As [`Meta::write`]; NotLeader if this node does not lead.
    pub async fn write_local(&self, proposal: Proposal) -> Result<Applied> {
        match self.try_write(proposal).await? {
            Route::Done(applied) => Ok(applied),
            Route::Leader(id, _) => Err(Error::NotLeader { leader: Some(id) }),
            Route::NoLeader(leader) => Err(Error::NotLeader { leader }),
        }
    }

    async fn try_write(&self, proposal: Proposal) -> Result<Route<Applied>> {
        match self.raft.client_write(proposal).await {
            Ok(response) => Ok(Route::Done(response.data?)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Ok(match (forward.leader_id, forward.leader_node) {
                    (Some(id), Some(addr)) if id != self.config.node_id => Route::Leader(id, addr),
                    (leader, _) => Route::NoLeader(leader),
                })
            }
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    /// The catalog with every write acknowledged before this call applied: the
    /// leader's read index (confirmed by a quorum of heartbeats), then this
    /// replica waits until it has applied that far.
    ///
    /// # Errors
    /// [`Error::NotLeader`] if no leader confirmed its leadership within the
    /// request timeout; [`Error::Unavailable`] if Raft stopped.
    pub async fn read(&self) -> Result<Arc<Catalog>> {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let route = tokio::time::timeout_at(deadline, self.try_read_index())
                .await
                .map_err(|_| Error::NotLeader { leader: None })??;
            let last_known = match route {
                Route::Done(index) => return self.applied_through(index, deadline).await,
                Route::Leader(id, addr) => {
                    match tokio::time::timeout_at(deadline, self.link.read_index(&addr)).await {
                        Ok(Ok(index)) => return self.applied_through(index, deadline).await,
                        Ok(Err(Error::NotLeader { .. } | Error::Unavailable(_))) => Some(id),
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(Error::NotLeader { leader: Some(id) }),
                    }
                }
                Route::NoLeader(last_known) => last_known,
            };
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(Error::NotLeader { leader: last_known });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// This node's read index if it leads; the leader's side of a follower's
    /// read.
    ///
    /// # Errors
    /// NotLeader if this node does not lead.
    pub async fn read_index_local(&self) -> Result<u64> {
        match self.try_read_index().await? {
            Route::Done(index) => Ok(index),
            Route::Leader(id, _) => Err(Error::NotLeader { leader: Some(id) }),
            Route::NoLeader(leader) => Err(Error::NotLeader { leader }),
        }
    }

    async fn try_read_index(&self) -> Result<Route<u64>> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(Route::Done(read.map(|l| l.index).unwrap_or(0))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Ok(match (forward.leader_id, forward.leader_node) {
                    (Some(id), Some(addr)) if id != self.config.node_id => Route::Leader(id, addr),
                    (leader, _) => Route::NoLeader(leader),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                tracing::debug!(error = %e, "leadership not confirmed by a quorum");
                Ok(Route::NoLeader(Some(self.config.node_id)))
            }
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    /// The catalog once this replica has applied log index `index`.
    async fn applied_through(&self, index: u64, deadline: Instant) -> Result<Arc<Catalog>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|e| Error::Unavailable(format!("this replica did not catch up: {e}")))?;
        Ok(self.cell.get())
    }

    /// The locally applied catalog, without confirming it is the newest.
    pub fn read_local(&self) -> Arc<Catalog> {
        self.cell.get()
    }

    /// The Raft handle, for metrics and membership changes.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops the Raft node; pending writes fail. Returns once the metadata
    /// store is closed (a snapshot still being written is finished first), so
    /// it can be opened again, or after 10 s with a warning.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.db.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!("the metadata store is still in use 10 s after shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
