//! [`FragmentHost`]: the fragments a node runs for distributed queries,
//! started by their coordinator and pulled partition by partition by their
//! consumers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter;
use datafusion_proto::physical_plan::DeduplicatingProtoConverter;
use futures::{FutureExt, StreamExt};
use quarry_common::catalog::NodeId;
use tokio_util::task::AbortOnDropHandle;

use super::exchange::{Codec, encode};
use super::filters::{self, FilterPart, FilterRoutes};
use super::{
    Cluster, ExchangeRequest, ExchangeResponse, FETCH_BYTES_MAX, FETCH_WAIT, FRAGMENT_IDLE_MAX,
    FragmentKey, FragmentReport, QueryId, failed,
};
use crate::session::Engine;

/// The fragments this node holds, by key.
#[derive(Debug)]
pub struct FragmentHost {
    engine: Weak<Engine>,
    fragments: Mutex<HashMap<FragmentKey, Arc<Fragment>>>,
    /// Parts of dynamic filters received, by query and filter, each by the
    /// task that built it.
    filters: Mutex<HashMap<(QueryId, u64), BTreeMap<FragmentKey, FilterPart>>>,
    /// Counts filter parts received (wakes the tasks waiting for them).
    arrivals: tokio::sync::watch::Sender<u64>,
    /// The memory of each query with fragments here.
    memory: QueryMemory,
    /// The runtime fragments' operators run on (see [`crate::runtime`]): a
    /// fetch then waits for a batch at most [`FETCH_WAIT`], however long one
    /// poll of an operator takes. None: the caller's.
    runtime: Option<tokio::runtime::Handle>,
}

/// The memory pool of each distributed query with fragments on this node:
/// its fragments, and on the coordinator the client's session, take their
/// memory from one pool of the query's limit, as one statement on one node
/// does (a pool per fragment would let a query of many stages hold the
/// limit many times over). A pool lives as long as something uses it.
#[derive(Debug, Default)]
pub struct QueryMemory(Mutex<HashMap<QueryId, Weak<dyn MemoryPool>>>);

impl QueryMemory {
    /// `query`'s pool: the one in use, else a new one from `make`.
    pub fn pool(
        &self,
        query: QueryId,
        make: impl FnOnce() -> Arc<dyn MemoryPool>,
    ) -> Arc<dyn MemoryPool> {
        let mut pools = self.0.lock().expect("query memory lock");
        if let Some(pool) = pools.get(&query).and_then(Weak::upgrade) {
            return pool;
        }
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = make();
        pools.insert(query, Arc::downgrade(&pool));
        pool
    }

    /// Queries with a pool in use.
    #[cfg(test)]
    fn len(&self) -> usize {
        let pools = self.0.lock().expect("query memory lock");
        pools
            .values()
            .filter(|pool| pool.strong_count() > 0)
            .count()
    }
}

/// One started fragment.
#[derive(Debug)]
struct Fragment {
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    partitions: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Partition>>>>,
    started: Instant,
    last_used: Mutex<Instant>,
    last_sent: Mutex<Instant>,
    rows_sent: AtomicU64,
    bytes_sent: AtomicU64,
    /// Dynamic filters its scans wait for: (filter id, parts expected).
    waits: Vec<(u64, u32)>,
    /// Whether those filters are in place.
    filtered: AtomicBool,
    /// Tasks sending its joins' filters to other nodes (stopped with it).
    _senders: Vec<AbortOnDropHandle<()>>,
}

/// One output partition of a fragment, once its consumer first fetched.
#[derive(Default)]
struct Partition {
    stream: Option<SendableRecordBatchStream>,
    done: bool,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("started", &self.stream.is_some())
            .field("done", &self.done)
            .finish()
    }
}

impl FragmentHost {
    /// The fragments of `engine`'s node.
    pub fn new(engine: Weak<Engine>, runtime: Option<tokio::runtime::Handle>) -> Self {
        FragmentHost {
            engine,
            fragments: Mutex::new(HashMap::new()),
            filters: Mutex::new(HashMap::new()),
            arrivals: tokio::sync::watch::Sender::new(0),
            memory: QueryMemory::default(),
            runtime,
        }
    }

    /// The memory pools of the queries with fragments here.
    pub fn memory(&self) -> &QueryMemory {
        &self.memory
    }

    /// Fragments held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no fragment is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FragmentKey, Arc<Fragment>>> {
        self.fragments.lock().expect("fragment map lock")
    }

    /// Answers a request from a coordinator or consumer.
    pub async fn handle(
        &self,
        cluster: &Arc<Cluster>,
        request: ExchangeRequest,
    ) -> ExchangeResponse {
        match request {
            ExchangeRequest::Start { key, plan, filters } => {
                match self.start(cluster, key, &plan, filters).await {
                    Ok(()) => ExchangeResponse::Started,
                    Err(e) => failed(e),
                }
            }
            ExchangeRequest::Filter { filter, from, part } => {
                self.filters
                    .lock()
                    .expect("filter map lock")
                    .entry((from.query, filter))
                    .or_default()
                    .insert(from, part);
                self.arrivals.send_modify(|n| *n += 1);
                ExchangeResponse::Received
            }
            ExchangeRequest::Fetch { key, partition } => self.fetch(key, partition).await,
            ExchangeRequest::Metrics { query } => {
                ExchangeResponse::Metrics(self.reports(query, cluster.peers().local()))
            }
            ExchangeRequest::Stop { query } => {
                // Dropping a fragment drops its streams, which stops their tasks.
                let stopped: Vec<_> = {
                    let mut fragments = self.lock();
                    let keys: Vec<_> = fragments
                        .keys()
                        .filter(|k| k.query == query)
                        .copied()
                        .collect();
                    keys.iter().filter_map(|k| fragments.remove(k)).collect()
                };
                drop(stopped);
                self.filters
                    .lock()
                    .expect("filter map lock")
                    .retain(|(q, _), _| *q != query);
                self.count();
                ExchangeResponse::Stopped
            }
        }
    }

    async fn start(
        &self,
        cluster: &Arc<Cluster>,
        key: FragmentKey,
        plan: &Bytes,
        routes: FilterRoutes,
    ) -> Result<(), DataFusionError> {
        let running: HashSet<QueryId> = {
            let mut fragments = self.lock();
            fragments.retain(|_, f| {
                f.last_used.lock().expect("fragment clock").elapsed() < FRAGMENT_IDLE_MAX
            });
            fragments.keys().map(|k| k.query).collect()
        };
        self.filters
            .lock()
            .expect("filter map lock")
            .retain(|(q, _), _| *q == key.query || running.contains(q));
        let engine = self
            .engine
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("the node is shutting down".to_owned()))?;
        let memory = self.memory.pool(key.query, || engine.query_pool());
        let session = engine.session_in(memory).map_err(crate::error::to_engine)?;
        let ctx = session.task_ctx();
        let catalog = engine.catalog().await.map_err(crate::error::to_engine)?;
        let codec = Codec {
            cluster: cluster.clone(),
        };
        // Deduplicated: a join and the scans its dynamic filter was pushed
        // into share one filter again (as they did on the coordinator), so
        // the scans skip what the join's build side rules out.
        let plan = physical_plan_from_bytes_with_proto_converter(
            plan,
            &ctx,
            &codec,
            &DeduplicatingProtoConverter {},
        )?;
        let chunks = engine.chunks().clone();
        let plan = plan
            .transform_up(|node| {
                Ok(
                    match crate::table::bind_scan(node.as_ref(), &catalog, &chunks)? {
                        Some(bound) => Transformed::yes(bound),
                        None => Transformed::no(node),
                    },
                )
            })?
            .data;
        let senders = filters::send(cluster, &plan, key, &routes.sends)?;
        let now = Instant::now();
        let fragment = Fragment {
            waits: routes.waits,
            filtered: AtomicBool::new(false),
            _senders: senders,
            plan,
            ctx,
            partitions: Mutex::new(HashMap::new()),
            started: now,
            last_used: Mutex::new(now),
            last_sent: Mutex::new(now),
            rows_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        };
        self.lock().insert(key, Arc::new(fragment));
        self.count();
        Ok(())
    }

    /// Publishes the number of fragments held (gauge `quarry_fragments_running`).
    fn count(&self) {
        metrics::gauge!("quarry_fragments_running").set(self.len() as f64);
    }

    async fn fetch(&self, key: FragmentKey, partition: u32) -> ExchangeResponse {
        let Some(fragment) = self.lock().get(&key).cloned() else {
            return ExchangeResponse::Failed {
                sqlstate: quarry_common::SqlState::QUERY_CANCELED.code().to_owned(),
                message: format!(
                    "task {} of stage {} of the query is not running here (stopped)",
                    key.task, key.stage
                ),
            };
        };
        *fragment.last_used.lock().expect("fragment clock") = Instant::now();
        metrics::counter!("quarry_fragment_fetches_total").increment(1);
        let slot = fragment
            .partitions
            .lock()
            .expect("partition map lock")
            .entry(partition)
            .or_default()
            .clone();
        let mut state = slot.lock().await;
        if state.done {
            return ExchangeResponse::Batches {
                ipc: Bytes::new(),
                done: true,
            };
        }
        if state.stream.is_none() {
            match self.filtered(key.query, &fragment).await {
                Ok(true) => {}
                Ok(false) => {
                    return ExchangeResponse::Batches {
                        ipc: Bytes::new(),
                        done: false,
                    };
                }
                Err(e) => return failed(e),
            }
            let plan = fragment.plan.clone();
            let ctx = fragment.ctx.clone();
            match crate::runtime::drive(self.runtime.as_ref(), plan.schema(), move || {
                plan.execute(partition as usize, ctx)
            }) {
                Ok(stream) => state.stream = Some(stream),
                Err(e) => return failed(e),
            }
        }
        let stream = state.stream.as_mut().expect("started above");
        let mut batches = Vec::new();
        let mut size = 0;
        let mut done = false;
        match tokio::time::timeout(FETCH_WAIT, stream.next()).await {
            Err(_) => {
                return ExchangeResponse::Batches {
                    ipc: Bytes::new(),
                    done: false,
                };
            }
            Ok(None) => done = true,
            Ok(Some(Err(e))) => return failed(e),
            Ok(Some(Ok(batch))) => {
                size += batch.get_array_memory_size();
                batches.push(batch);
            }
        }
        while !done && size < FETCH_BYTES_MAX {
            match stream.next().now_or_never() {
                None => break,
                Some(None) => done = true,
                Some(Some(Err(e))) => return failed(e),
                Some(Some(Ok(batch))) => {
                    size += batch.get_array_memory_size();
                    batches.push(batch);
                }
            }
        }
        if done {
            state.done = true;
            state.stream = None;
        }
        batches.retain(|b| b.num_rows() > 0);
        let ipc = if batches.is_empty() {
            Bytes::new()
        } else {
            match encode(&fragment.plan.schema(), &batches) {
                Ok(ipc) => Bytes::from(ipc),
                Err(e) => return failed(e),
            }
        };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        fragment.rows_sent.fetch_add(rows as u64, Ordering::Relaxed);
        fragment
            .bytes_sent
            .fetch_add(ipc.len() as u64, Ordering::Relaxed);
        if rows > 0 || done {
            *fragment.last_sent.lock().expect("fragment clock") = Instant::now();
        }
        ExchangeResponse::Batches { ipc, done }
    }

    /// Puts the dynamic filters `fragment`'s scans wait for in place once
    /// every part has come; false if some have not within [`FETCH_WAIT`].
    async fn filtered(&self, query: QueryId, fragment: &Fragment) -> Result<bool, DataFusionError> {
        if fragment.filtered.load(Ordering::Acquire) {
            return Ok(true);
        }
        let mut arrivals = self.arrivals.subscribe();
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let parts: Option<Vec<(u64, Vec<FilterPart>)>> = {
                let received = self.filters.lock().expect("filter map lock");
                fragment
                    .waits
                    .iter()
                    .map(|(id, expected)| {
                        let parts = received.get(&(query, *id))?;
                        (parts.len() >= *expected as usize)
                            .then(|| (*id, parts.values().cloned().collect()))
                    })
                    .collect()
            };
            if let Some(parts) = parts {
                for (id, parts) in parts {
                    filters::apply(&fragment.plan, id, &parts, &fragment.ctx)?;
                }
                fragment.filtered.store(true, Ordering::Release);
                return Ok(true);
            }
            if !matches!(
                tokio::time::timeout_at(deadline, arrivals.changed()).await,
                Ok(Ok(()))
            ) {
                return Ok(false);
            }
        }
    }

    fn reports(&self, query: QueryId, node: NodeId) -> Vec<FragmentReport> {
        let mut reports: Vec<FragmentReport> = self
            .lock()
            .iter()
            .filter(|(k, _)| k.query == query)
            .map(|(key, f)| FragmentReport {
                key: *key,
                node,
                rows_sent: f.rows_sent.load(Ordering::Relaxed),
                bytes_sent: f.bytes_sent.load(Ordering::Relaxed),
                elapsed_ms: f
                    .last_sent
                    .lock()
                    .expect("fragment clock")
                    .duration_since(f.started)
                    .as_millis() as u64,
                plan: DisplayableExecutionPlan::with_metrics(f.plan.as_ref())
                    .indent(true)
                    .to_string(),
            })
            .collect();
        reports.sort_by_key(|r| r.key);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::{ExchangeResponse, Peers};
    use async_trait::async_trait;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
    use quarry_common::catalog::Catalog;

    /// Metadata with an empty catalog that takes no writes.
    struct EmptyCatalog;

    #[async_trait]
    impl crate::Metadata for EmptyCatalog {
        async fn read(&self) -> quarry_raft::Result<Arc<Catalog>> {
            Ok(Arc::new(Catalog::default()))
        }

        async fn write(
            &self,
            _command: quarry_raft::Command,
        ) -> quarry_raft::Result<quarry_raft::Applied> {
            unreachable!("starting a fragment writes nothing")
        }
    }

    /// A cluster of this node alone.
    #[derive(Debug)]
    struct Alone;

    #[async_trait]
    impl Peers for Alone {
        fn local(&self) -> NodeId {
            1
        }

        fn live(&self) -> Vec<NodeId> {
            vec![1]
        }

        fn holder(&self, _chunk: quarry_common::catalog::ChunkId) -> Option<NodeId> {
            None
        }

        async fn call(
            &self,
            node: NodeId,
            _request: ExchangeRequest,
            _deadline: std::time::Duration,
        ) -> Result<ExchangeResponse, String> {
            Err(format!("node {node} is not in this cluster"))
        }
    }

    #[tokio::test]
    async fn started_fragments_of_one_query_take_memory_from_one_pool() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = quarry_storage::ChunkStore::open(dir.path()).expect("chunk store");
        let resources = crate::QueryResources {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        };
        let engine = Engine::new(
            Arc::new(EmptyCatalog),
            Arc::new(crate::chunks::LocalFiles(chunks)),
            1,
            resources,
            Some(Arc::new(Alone)),
        );
        let cluster = engine.cluster().expect("with peers").clone();
        let codec = Codec {
            cluster: cluster.clone(),
        };
        let plan = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let plan = physical_plan_to_bytes_with_extension_codec(plan, &codec).expect("encodes");
        let keys = [(7, 1), (7, 2), (8, 1)].map(|(query, stage)| FragmentKey {
            query,
            stage,
            task: 0,
        });
        for key in keys {
            let start = ExchangeRequest::Start {
                key,
                plan: plan.clone(),
                filters: FilterRoutes::default(),
            };
            let answer = cluster.host().handle(&cluster, start).await;
            assert!(matches!(answer, ExchangeResponse::Started), "{answer:?}");
        }
        let pools: Vec<Arc<dyn MemoryPool>> = {
            let fragments = cluster.host().lock();
            keys.iter()
                .map(|key| fragments[key].ctx.memory_pool().clone())
                .collect()
        };
        assert!(Arc::ptr_eq(&pools[0], &pools[1]), "one query, one pool");
        assert!(!Arc::ptr_eq(&pools[0], &pools[2]), "another query, another");
    }

    fn new_pool() -> Arc<dyn MemoryPool> {
        Arc::new(GreedyMemoryPool::new(1 << 20))
    }

    #[test]
    fn the_fragments_of_one_query_share_its_pool_while_it_is_used() {
        let memory = QueryMemory::default();
        let coordinator = memory.pool(1, new_pool);
        let fragment = memory.pool(1, || panic!("the query has a pool"));
        assert!(Arc::ptr_eq(&coordinator, &fragment));
        let other = memory.pool(2, new_pool);
        assert!(!Arc::ptr_eq(&coordinator, &other));
        assert_eq!(memory.len(), 2);
        // Memory taken through one is taken from the other.
        let reservation =
            datafusion::execution::memory_pool::MemoryConsumer::new("join").register(&fragment);
        reservation.try_grow(600 << 10).expect("fits");
        assert_eq!(coordinator.reserved(), 600 << 10);
        drop(reservation);
        // A query nothing uses any more gets a new pool.
        drop((coordinator, fragment));
        assert_eq!(memory.len(), 1);
        let again = memory.pool(1, new_pool);
        assert_eq!(again.reserved(), 0);
        assert_eq!(memory.len(), 2);
    }
}
