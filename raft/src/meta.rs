//! [`Meta`]: this node's handle on the replicated catalog.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{RaftNetworkFactory, SnapshotPolicy};
use quarry_common::catalog::{Catalog, DEFAULT_SCHEMA};

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
    /// How long [`Meta::bootstrap`] waits for this node to become leader.
    pub leader_wait: Duration,
}

impl MetaConfig {
    /// Defaults for node `node_id` at `addr`: 100 ms heartbeats, a snapshot every
    /// 1000 entries (small enough to bound restart replay, large enough that
    /// snapshot writes stay rare next to commits).
    pub fn new(node_id: NodeId, addr: NodeAddr) -> Self {
        MetaConfig {
            node_id,
            addr,
            heartbeat_interval: Duration::from_millis(100),
            snapshot_every_entries: 1000,
            leader_wait: Duration::from_secs(10),
        }
    }
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
}

/// Microseconds since the Unix epoch by this node's clock.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Meta {
    /// Opens (creating if needed) the metadata store `path` (a redb file) and starts
    /// the Raft node. `network` carries Raft RPCs to other nodes.
    ///
    /// # Errors
    /// [`Error::Storage`] if the database cannot be opened (e.g. another process holds
    /// it) or its contents do not decode.
    pub async fn open<N>(path: &Path, config: MetaConfig, network: N) -> Result<Meta>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let db = redb::Database::create(path)
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        let log_store = LogStore::open(db.clone())?;
        let cell = Arc::new(CatalogCell::default());
        let state_machine = StateMachine::open(db, cell.clone())?;
        let heartbeat_ms = config.heartbeat_interval.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "quarry".to_owned(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: heartbeat_ms * 3,
            election_timeout_max: heartbeat_ms * 6,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.snapshot_every_entries,
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
        Ok(Meta { raft, cell, config })
    }

    /// Makes this node the single voter of a new cluster if it has never been part
    /// of one, waits until it leads, and creates the `public` schema on first start.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if it does not become leader within `leader_wait`.
    pub async fn bootstrap(&self) -> Result<()> {
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
            self.write(Command::CreateSchema {
                name: DEFAULT_SCHEMA.to_owned(),
                if_not_exists: true,
            })
            .await?;
        }
        Ok(())
    }

    /// Proposes `command` and waits until it is committed and applied.
    ///
    /// # Errors
    /// [`Error::Catalog`] if the catalog refused it (nothing changed);
    /// [`Error::NotLeader`] if this node cannot accept writes;
    /// [`Error::Unavailable`] if Raft failed (the command may or may not apply).
    pub async fn write(&self, command: Command) -> Result<Applied> {
        let proposal = Proposal {
            command,
            proposed_at: now_micros(),
        };
        match self.raft.client_write(proposal).await {
            Ok(response) => Ok(response.data?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Error::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    /// The catalog with every write acknowledged before this call applied
    /// (read-index through the leader).
    ///
    /// # Errors
    /// [`Error::NotLeader`] / [`Error::Unavailable`] if leadership cannot be
    /// confirmed.
    pub async fn read(&self) -> Result<Arc<Catalog>> {
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
                Error::NotLeader {
                    leader: f.leader_id,
                }
            }
            other => Error::Unavailable(other.to_string()),
        })?;
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

    /// Stops the Raft node; pending writes fail.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
    }
}
