//! Distributed execution (docs/ARCHITECTURE.md §4): every node does its share of a query.
//!
//! The coordinator (the node holding the client's session) takes DataFusion's
//! optimized physical plan and cuts it into **stages** at exchanges
//! ([`stages`]): a hash repartition becomes a **shuffle** (producers hash rows
//! into one partition range per consumer task), a coalesce or sort-preserving
//! merge becomes a **gather** (every producer partition goes to the consumer).
//! A stage whose rows can be divided runs as one **task** per live node, each
//! scanning the data files whose data chunk that node holds (files of a node
//! that is down go to a live one, read through parity); a stage that cannot be
//! divided runs as one task on the coordinator. The root stage runs on the
//! coordinator.
//!
//! Each task is a **fragment**: its plan, serialized with datafusion-proto,
//! is started on its node ([`fragment::Fragment`], run there by a fragment
//! actor under the node's query manager) and its partitions are
//! pulled by the consumers ([`exchange::ExchangeExec`]) as Arrow IPC batches
//! over the internal RPC, a bounded number of bytes per call, so a slow
//! consumer holds its producers back (no unbounded queue between nodes).
//! Ending the query, however it ends, stops every fragment on every node.
//!
//! ```text
//!   coordinator                 node 2                  node 3
//!   stage 0: SortPreservingMerge
//!      └ ExchangeExec(gather) ◄─ stage 2 task 1 ◄──┐    stage 2 task 2 ...
//!                                  FinalAggregate  │
//!                                  └ ExchangeExec(shuffle) ◄─ stage 1 tasks
//!                                                             PartialAggregate
//!                                                             └ scan (local chunks)
//! ```

pub mod bloom;
pub mod exchange;
pub mod filters;
pub mod fragment;
pub mod stages;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::error::DataFusionError;
use quarry_common::SqlState;
use quarry_common::catalog::{ChunkId, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, to_engine, user_error};

pub use stages::DistributedPlan;

/// Id of one distributed query, unique across the cluster (random).
pub type QueryId = u128;

/// How long a fetch waits for a producer's first batch before answering
/// "nothing yet" (so that a dead or cut-off producer is noticed within
/// [`CALL_DEADLINE`] even while a producer computes for minutes).
pub const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Bytes of Arrow IPC a fetch returns at most (past its first batch).
pub const FETCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Deadline of an exchange call to another node.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Fetched responses buffered per exchange partition ahead of its consumer.
pub const PREFETCH: usize = 2;

/// One task of one stage of a query, as started on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FragmentKey {
    /// The query.
    pub query: QueryId,
    /// The stage (0 is the root, run by the coordinator itself).
    pub stage: u32,
    /// The task within the stage.
    pub task: u32,
}

/// A request between nodes about fragments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExchangeRequest {
    /// Decode and hold a fragment until its partitions are fetched.
    Start {
        /// Which fragment.
        key: FragmentKey,
        /// Its plan (datafusion-proto `PhysicalPlanNode`).
        plan: Bytes,
        /// The dynamic filters it sends to other tasks and waits for.
        filters: filters::FilterRoutes,
    },
    /// One building task's part of a dynamic filter, for the tasks of the
    /// query on this node that scan with it.
    Filter {
        /// The filter's id.
        filter: u64,
        /// The task that built this part (and so the query).
        from: FragmentKey,
        /// The part.
        part: filters::FilterPart,
    },
    /// The next batches of one partition of a fragment.
    Fetch {
        /// Which fragment.
        key: FragmentKey,
        /// Which of its output partitions.
        partition: u32,
    },
    /// Metrics of every fragment of a query held by the node.
    Metrics {
        /// The query.
        query: QueryId,
    },
    /// Drop every fragment of a query (ends its work on the node).
    Stop {
        /// The query.
        query: QueryId,
    },
}

/// The answer to an [`ExchangeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExchangeResponse {
    /// The fragment is ready to be fetched from.
    Started,
    /// Batches of a partition as one Arrow IPC stream (empty bytes: nothing
    /// within [`FETCH_WAIT`]); `done` when the partition has no more rows.
    Batches {
        /// Arrow IPC stream: schema, zero or more batches, end marker.
        ipc: Bytes,
        /// No more batches follow.
        done: bool,
    },
    /// Answer to `Metrics`.
    Metrics(Vec<FragmentReport>),
    /// Answer to `Stop`.
    Stopped,
    /// Answer to `Filter`: kept for the query's tasks.
    Received,
    /// The fragment failed (or is unknown); the query fails with this error.
    Failed {
        /// SQLSTATE code.
        sqlstate: String,
        /// Message.
        message: String,
    },
}

/// What one fragment did, for EXPLAIN ANALYZE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentReport {
    /// Which fragment.
    pub key: FragmentKey,
    /// The node that ran it.
    pub node: NodeId,
    /// Rows it sent to its consumers.
    pub rows_sent: u64,
    /// Bytes (Arrow IPC) it sent to its consumers.
    pub bytes_sent: u64,
    /// Milliseconds from its start to its last batch sent.
    pub elapsed_ms: u64,
    /// Its operators' time and spilled bytes so far.
    pub cost: crate::jobs::Cost,
    /// Its plan with DataFusion's metrics per operator.
    pub plan: String,
}

/// The cluster as distributed execution needs it; the node implements it over
/// gossip membership, the stripe catalog and the internal RPC.
#[async_trait]
pub trait Peers: Send + Sync + Debug + 'static {
    /// This node's id.
    fn local(&self) -> NodeId;

    /// The nodes that can run new fragments now (alive and not drained for
    /// maintenance), this one included unless drained, in ascending order.
    fn live(&self) -> Vec<NodeId>;

    /// The node holding `chunk` (a data file's data chunk), if placed.
    fn holder(&self, chunk: ChunkId) -> Option<NodeId>;

    /// Sends `request` to `node` and waits at most `deadline`; a request to
    /// this node is answered in process, by its query manager.
    ///
    /// # Errors
    /// Why the call failed (unreachable, deadline, refused); the caller
    /// cannot know whether the peer acted on it.
    async fn call(
        &self,
        node: NodeId,
        request: ExchangeRequest,
        deadline: Duration,
    ) -> Result<ExchangeResponse, String>;
}

/// The error a query fails with when `node` cannot be reached mid-query:
/// retryable (40001), as nothing was written.
pub fn node_failed(node: NodeId, why: &str) -> DataFusionError {
    to_engine(user_error(
        SqlState::SERIALIZATION_FAILURE,
        format!("node {node} failed during the query ({why}); nothing was written, retry"),
    ))
}

/// The error a node answered with, as this node raises it.
pub fn remote_error(node: NodeId, sqlstate: &str, message: &str) -> DataFusionError {
    let state = SqlState::from_code(sqlstate);
    let message = if state == SqlState::INTERNAL_ERROR {
        format!("node {node}: {message}")
    } else {
        message.to_owned()
    };
    to_engine(user_error(state, message))
}

/// The answer for a failed fragment.
pub fn failed(e: DataFusionError) -> ExchangeResponse {
    let (sqlstate, message) = described(e);
    ExchangeResponse::Failed { sqlstate, message }
}

/// `e`'s SQLSTATE and message, as they travel between nodes.
fn described(e: DataFusionError) -> (String, String) {
    let error = Error::from_engine(e);
    let message = match &error {
        Error::Engine(e) => crate::error::engine_message(e),
        other => other.to_string(),
    };
    (error.sqlstate().code().to_owned(), message)
}

/// The first error a fetch of a query coordinated here met: the node fetched
/// from, SQLSTATE and message (None while there is none).
type Failure = Option<(NodeId, String, String)>;

/// Cluster access for distributed queries: the peers, and the memory of the
/// queries with fragments on this node.
#[derive(Debug)]
pub struct Cluster {
    peers: Arc<dyn Peers>,
    /// The memory pool of each query with fragments here.
    memory: crate::memory::QueryMemory,
    /// The runtime exchanges fetch on (the network's, apart from the one
    /// operators run on); None: the caller's.
    network: Option<tokio::runtime::Handle>,
    /// Queries coordinated here, each with the first error met by one of this
    /// node's fetches: the coordinator ends the query with it at once, even
    /// while every execution thread is busy in a long poll of an operator.
    failures: Mutex<HashMap<QueryId, tokio::sync::watch::Sender<Failure>>>,
}

impl Cluster {
    /// The cluster of `peers`; exchanges fetch on the current runtime, if
    /// any.
    pub fn new(peers: Arc<dyn Peers>) -> Self {
        Cluster {
            peers,
            memory: crate::memory::QueryMemory::default(),
            network: tokio::runtime::Handle::try_current().ok(),
            failures: Mutex::default(),
        }
    }

    /// The runtime exchanges fetch on (None: the caller's).
    pub(crate) fn network(&self) -> Option<&tokio::runtime::Handle> {
        self.network.as_ref()
    }

    /// Watches `query` (coordinated here) for the first error of a fetch;
    /// the watch ends when dropped.
    fn watch_failures(self: &Arc<Self>, query: QueryId) -> FailureWatch {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        self.failures
            .lock()
            .expect("failure map lock")
            .insert(query, sender);
        FailureWatch {
            cluster: self.clone(),
            query,
            receiver,
        }
    }

    /// Records that a fetch of `query` failed with `e` (kept if the query is
    /// coordinated here and has no error yet), and returns the error.
    pub(crate) fn fail(&self, query: QueryId, node: NodeId, e: DataFusionError) -> DataFusionError {
        let (sqlstate, message) = described(e);
        if let Some(sender) = self.failures.lock().expect("failure map lock").get(&query) {
            sender.send_if_modified(|failure| {
                let first = failure.is_none();
                if first {
                    *failure = Some((node, sqlstate.clone(), message.clone()));
                }
                first
            });
        }
        remote_error(node, &sqlstate, &message)
    }

    /// The peers.
    pub fn peers(&self) -> &Arc<dyn Peers> {
        &self.peers
    }

    /// The memory pools of the queries with fragments on this node.
    pub fn memory(&self) -> &crate::memory::QueryMemory {
        &self.memory
    }

    /// Sends `request` to `node`, this node included (answered in process).
    ///
    /// # Errors
    /// [`node_failed`] when the node cannot be reached in time.
    pub async fn call(
        self: &Arc<Self>,
        node: NodeId,
        request: ExchangeRequest,
    ) -> Result<ExchangeResponse, DataFusionError> {
        self.peers
            .call(node, request, CALL_DEADLINE)
            .await
            .map_err(|why| node_failed(node, &why))
    }
}

/// A query's watch for the first failed fetch ([`Cluster::fail`]); the query
/// is forgotten when it is dropped.
#[derive(Debug)]
struct FailureWatch {
    cluster: Arc<Cluster>,
    query: QueryId,
    receiver: tokio::sync::watch::Receiver<Failure>,
}

impl FailureWatch {
    /// Resolves with the query's error once a fetch failed.
    async fn failed(&mut self) -> DataFusionError {
        let failure = match self.receiver.wait_for(Option::is_some).await {
            Ok(failure) => failure.clone(),
            // The sender lives in the map until this watch is dropped.
            Err(_) => None,
        };
        match failure {
            Some((node, sqlstate, message)) => remote_error(node, &sqlstate, &message),
            None => std::future::pending().await,
        }
    }
}

impl Drop for FailureWatch {
    fn drop(&mut self) {
        self.cluster
            .failures
            .lock()
            .expect("failure map lock")
            .remove(&self.query);
    }
}
