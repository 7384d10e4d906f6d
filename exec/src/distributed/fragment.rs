//! [`Fragment`]: one task of one stage of a distributed query, as the node
//! it was started on runs it.
//!
//! This is plain logic over DataFusion; the node's fragment actor
//! (`node/src/fragment`) owns one and feeds it its messages, under the
//! node's query manager (docs/ARCHITECTURE.md §2):
//!
//! ```text
//!  Start ──► Fragment::start (decode the plan, bind its scans to local chunks,
//!            │                start sending its joins' dynamic filters)
//!  Filter ──►├ receive: a part of a filter its scans wait for; with every
//!            │          part come, the filters are put in place
//!  Fetch ───►├ fetch: a future answering with the partition's next batches
//!            │        (the actor runs it as its own task); `sent` counts them
//!  Metrics ─►└ report
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter;
use datafusion_proto::physical_plan::DeduplicatingProtoConverter;
use futures::{FutureExt, StreamExt};
use quarry_common::SqlState;
use quarry_common::catalog::NodeId;
use tokio_util::task::AbortOnDropHandle;

use super::exchange::{Codec, encode};
use super::filters::{self, FilterPart, FilterRoutes};
use super::{
    Cluster, ExchangeResponse, FETCH_BYTES_MAX, FETCH_WAIT, FragmentKey, FragmentReport, failed,
};
use crate::session::Engine;

/// A started fragment: its plan bound to this node's data chunks, the output
/// partitions its consumers have begun to fetch, and what it has sent.
pub struct Fragment {
    key: FragmentKey,
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    /// The runtime its operators run on (see [`crate::runtime`]); None: the
    /// caller's.
    runtime: Option<tokio::runtime::Handle>,
    partitions: HashMap<u32, Arc<tokio::sync::Mutex<Partition>>>,
    /// Dynamic filters its scans wait for: (filter id, parts expected).
    waits: Vec<(u64, u32)>,
    /// Parts of those filters received, by filter and building task.
    parts: HashMap<u64, BTreeMap<FragmentKey, FilterPart>>,
    /// Whether its scans may read (their filters are in place).
    filters: tokio::sync::watch::Sender<Filters>,
    started: Instant,
    last_fetched: Instant,
    last_sent: Instant,
    rows_sent: u64,
    bytes_sent: u64,
    /// Tasks sending its joins' filters to other nodes (stopped with it).
    _senders: Vec<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragment")
            .field("key", &self.key)
            .field("partitions", &self.partitions.len())
            .field("rows_sent", &self.rows_sent)
            .finish_non_exhaustive()
    }
}

/// The dynamic filters of a fragment's scans.
#[derive(Debug, Clone, PartialEq)]
enum Filters {
    /// Some part has not come yet: its scans do not start.
    Waiting,
    /// Every filter is in place (or it waits for none).
    InPlace,
    /// A part could not be applied: every fetch fails with this answer.
    Failed(ExchangeResponse),
}

/// One output partition of a fragment, once its consumer first fetched.
#[derive(Default)]
struct Partition {
    stream: Option<SendableRecordBatchStream>,
    done: bool,
}

/// The answer to one fetch, with what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The answer for the consumer.
    pub answer: ExchangeResponse,
    /// Rows in it.
    pub rows: u64,
    /// Bytes of Arrow IPC in it.
    pub bytes: u64,
}

impl Fetched {
    fn nothing(done: bool) -> Self {
        Fetched {
            answer: ExchangeResponse::Batches {
                ipc: Bytes::new(),
                done,
            },
            rows: 0,
            bytes: 0,
        }
    }

    fn failed(answer: ExchangeResponse) -> Self {
        Fetched {
            answer,
            rows: 0,
            bytes: 0,
        }
    }

    /// Whether its partition has no more rows.
    pub fn done(&self) -> bool {
        matches!(self.answer, ExchangeResponse::Batches { done: true, .. })
    }
}

impl Fragment {
    /// Starts fragment `key` of a query on this node: decodes `plan`, binds
    /// its scans to the data chunks this node reads, and starts sending the
    /// dynamic filters its joins build (`routes`). Its memory comes from the
    /// query's pool on this node ([`Cluster::memory`]).
    ///
    /// # Errors
    /// DataFusion's, if the plan does not decode or names a table or data
    /// file the catalog does not have; internal if the catalog cannot be
    /// read.
    pub async fn start(
        engine: &Arc<Engine>,
        cluster: &Arc<Cluster>,
        key: FragmentKey,
        plan: &Bytes,
        routes: FilterRoutes,
    ) -> Result<Fragment, DataFusionError> {
        let memory = cluster.memory().pool(key.query, || engine.query_pool());
        let session = engine.session_in(memory).map_err(crate::error::to_engine)?;
        session.configure(filters::sent_as_keys);
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
        let plan = filters::with_bloom_builds(plan, &routes)?;
        let senders = filters::send(cluster, &plan, key, &routes.sends)?;
        let filters = if routes.waits.is_empty() {
            Filters::InPlace
        } else {
            Filters::Waiting
        };
        let now = Instant::now();
        Ok(Fragment {
            key,
            plan,
            ctx,
            runtime: engine.runtime().cloned(),
            partitions: HashMap::new(),
            waits: routes.waits,
            parts: HashMap::new(),
            filters: tokio::sync::watch::Sender::new(filters),
            started: now,
            last_fetched: now,
            last_sent: now,
            rows_sent: 0,
            bytes_sent: 0,
            _senders: senders,
        })
    }

    /// Which fragment this is.
    pub fn key(&self) -> FragmentKey {
        self.key
    }

    /// Takes building task `from`'s part of dynamic filter `filter`; once
    /// every part of every filter its scans wait for has come, puts them in
    /// place, and its partitions start. Parts of filters it does not wait
    /// for are ignored.
    pub fn receive(&mut self, filter: u64, from: FragmentKey, part: FilterPart) {
        if *self.filters.borrow() != Filters::Waiting
            || !self.waits.iter().any(|(id, _)| *id == filter)
        {
            return;
        }
        self.parts.entry(filter).or_default().insert(from, part);
        let complete = self.waits.iter().all(|(id, expected)| {
            self.parts
                .get(id)
                .is_some_and(|parts| parts.len() >= *expected as usize)
        });
        if !complete {
            return;
        }
        let applied = self.parts.iter().try_for_each(|(id, parts)| {
            let parts: Vec<FilterPart> = parts.values().cloned().collect();
            filters::apply(&self.plan, *id, &parts, &self.ctx)
        });
        self.parts.clear();
        self.filters.send_replace(match applied {
            Ok(()) => Filters::InPlace,
            Err(e) => Filters::Failed(failed(e)),
        });
    }

    /// The next batches of output `partition` (starting it on the first
    /// fetch): at least one batch, or none if none came within
    /// [`FETCH_WAIT`], and more as long as they are ready, up to
    /// [`FETCH_BYTES_MAX`]. Until the filters its scans wait for are in
    /// place, a fetch waits for them at most [`FETCH_WAIT`] and answers with
    /// nothing.
    ///
    /// The future holds the partition (fetches of one partition take turns);
    /// dropping it stops the wait and keeps the partition's stream.
    /// [`Fragment::sent`] counts what it answered.
    pub fn fetch(&mut self, partition: u32) -> impl Future<Output = Fetched> + Send + 'static {
        self.last_fetched = Instant::now();
        metrics::counter!("quarry_fragment_fetches_total").increment(1);
        let slot = self.partitions.entry(partition).or_default().clone();
        let mut filters = self.filters.subscribe();
        let plan = self.plan.clone();
        let ctx = self.ctx.clone();
        let runtime = self.runtime.clone();
        async move {
            let mut state = slot.lock().await;
            if state.done {
                return Fetched::nothing(true);
            }
            if state.stream.is_none() {
                let ready =
                    tokio::time::timeout(FETCH_WAIT, filters.wait_for(|f| *f != Filters::Waiting))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|filters| filters.clone());
                match ready {
                    Some(Filters::InPlace) => {}
                    Some(Filters::Failed(answer)) => return Fetched::failed(answer),
                    // Not yet (or the fragment is gone, and this fetch with it).
                    Some(Filters::Waiting) | None => return Fetched::nothing(false),
                }
                let schema = plan.schema();
                match crate::runtime::drive(runtime.as_ref(), schema, move || {
                    plan.execute(partition as usize, ctx)
                }) {
                    Ok(stream) => state.stream = Some(stream),
                    Err(e) => return Fetched::failed(failed(e)),
                }
            }
            let stream = state.stream.as_mut().expect("started above");
            let schema = stream.schema();
            let mut batches = Vec::new();
            let mut size = 0;
            let mut done = false;
            match tokio::time::timeout(FETCH_WAIT, stream.next()).await {
                Err(_) => return Fetched::nothing(false),
                Ok(None) => done = true,
                Ok(Some(Err(e))) => return Fetched::failed(failed(e)),
                Ok(Some(Ok(batch))) => {
                    size += batch.get_array_memory_size();
                    batches.push(batch);
                }
            }
            while !done && size < FETCH_BYTES_MAX {
                match stream.next().now_or_never() {
                    None => break,
                    Some(None) => done = true,
                    Some(Some(Err(e))) => return Fetched::failed(failed(e)),
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
                match encode(&schema, &batches) {
                    Ok(ipc) => Bytes::from(ipc),
                    Err(e) => return Fetched::failed(failed(e)),
                }
            };
            let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
            let bytes = ipc.len() as u64;
            Fetched {
                answer: ExchangeResponse::Batches { ipc, done },
                rows,
                bytes,
            }
        }
    }

    /// Counts what one of its fetches answered.
    pub fn sent(&mut self, rows: u64, bytes: u64, done: bool) {
        self.rows_sent += rows;
        self.bytes_sent += bytes;
        if rows > 0 || done {
            self.last_sent = Instant::now();
        }
    }

    /// How long since a consumer last fetched from it (or since its start).
    pub fn idle(&self) -> Duration {
        self.last_fetched.elapsed()
    }

    /// What it did so far, as run on `node`.
    pub fn report(&self, node: NodeId) -> FragmentReport {
        FragmentReport {
            key: self.key,
            node,
            rows_sent: self.rows_sent,
            bytes_sent: self.bytes_sent,
            elapsed_ms: self.last_sent.duration_since(self.started).as_millis() as u64,
            cost: crate::jobs::plan_cost(&self.plan),
            plan: DisplayableExecutionPlan::with_metrics(self.plan.as_ref())
                .indent(true)
                .to_string(),
        }
    }
}

/// The answer to a fetch or other request for a fragment this node does not
/// run (never started here, or stopped: the query ended).
pub fn not_running(key: FragmentKey) -> ExchangeResponse {
    ExchangeResponse::Failed {
        sqlstate: SqlState::QUERY_CANCELED.code().to_owned(),
        message: format!(
            "task {} of stage {} of the query is not running here (stopped)",
            key.task, key.stage
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Alone, EmptyCatalog};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::execution::memory_pool::MemoryPool;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;

    /// An engine of one node with a query memory limit, over an empty catalog.
    fn engine(dir: &tempfile::TempDir) -> Arc<Engine> {
        let chunks = quarry_storage::ChunkStore::open(dir.path()).expect("chunk store");
        let resources = crate::QueryResources {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        };
        Engine::new(
            Arc::new(EmptyCatalog),
            Arc::new(crate::chunks::LocalFiles(chunks)),
            1,
            resources,
            Some(Arc::new(Alone)),
        )
    }

    /// An encoded plan of one partition that yields no rows.
    fn empty_plan(cluster: &Arc<Cluster>) -> Bytes {
        let codec = Codec {
            cluster: cluster.clone(),
        };
        let plan = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        physical_plan_to_bytes_with_extension_codec(plan, &codec).expect("encodes")
    }

    fn key(query: u128, stage: u32, task: u32) -> FragmentKey {
        FragmentKey { query, stage, task }
    }

    #[tokio::test]
    async fn started_fragments_of_one_query_take_memory_from_one_pool() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(&dir);
        let cluster = engine.cluster().expect("with peers").clone();
        let plan = empty_plan(&cluster);
        let mut fragments = Vec::new();
        for key in [key(7, 1, 0), key(7, 2, 0), key(8, 1, 0)] {
            let started = Fragment::start(&engine, &cluster, key, &plan, FilterRoutes::default())
                .await
                .expect("starts");
            fragments.push(started);
        }
        let pools: Vec<&Arc<dyn MemoryPool>> =
            fragments.iter().map(|f| f.ctx.memory_pool()).collect();
        assert!(Arc::ptr_eq(pools[0], pools[1]), "one query, one pool");
        assert!(!Arc::ptr_eq(pools[0], pools[2]), "another query, another");
    }

    fn part() -> FilterPart {
        FilterPart {
            schema: Bytes::new(),
            expr: Bytes::new(),
            keys: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_fragment_reads_once_every_part_of_the_filters_it_waits_for_has_come() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(&dir);
        let cluster = engine.cluster().expect("with peers").clone();
        let routes = FilterRoutes {
            sends: Vec::new(),
            // Filter 5 is built by two tasks. (The plan does not use it, so
            // its parts are not decoded when put in place.)
            waits: vec![(5, 2)],
            builders: 0,
            blooms: Vec::new(),
        };
        let mut fragment = Fragment::start(
            &engine,
            &cluster,
            key(1, 1, 0),
            &empty_plan(&cluster),
            routes,
        )
        .await
        .expect("starts");
        let nothing_yet = Fetched::nothing(false);
        assert_eq!(fragment.fetch(0).await, nothing_yet, "no part yet");
        fragment.receive(5, key(1, 2, 0), part());
        fragment.receive(6, key(1, 2, 1), part());
        fragment.receive(5, key(1, 2, 0), part());
        assert_eq!(
            fragment.fetch(0).await,
            nothing_yet,
            "one task's part (twice), and a filter it does not wait for"
        );
        fragment.receive(5, key(1, 2, 1), part());
        let last = fragment.fetch(0).await;
        assert_eq!(last, Fetched::nothing(true), "every part: the scan ran");
        fragment.sent(last.rows, last.bytes, last.done());
        assert_eq!(fragment.fetch(0).await, Fetched::nothing(true));
        assert_eq!(fragment.report(1).rows_sent, 0);
    }
}
