//! Cutting a physical plan into stages and stages into tasks
//! ([`DistributedPlan::new`]), starting them ([`DistributedPlan::execute`])
//! and showing them ([`DistributedPlan::display`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::JoinType;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    Distribution, ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
    replace_children_if_necessary,
};
use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
use futures::StreamExt;
use quarry_common::catalog::NodeId;
use quarry_storage::ChunkRef;
use tokio_util::task::AbortOnDropHandle;

use super::exchange::{Codec, ExchangeExec, ExchangeSpec, Producer};
use super::filters::{self, FilterRoutes};
use super::{
    Cluster, ExchangeRequest, ExchangeResponse, FragmentKey, FragmentReport, QueryId, remote_error,
};
use crate::table::{is_table_scan, scan_files, with_scan_files};

/// A query cut into stages, each stage into tasks on nodes.
#[derive(Debug)]
pub struct DistributedPlan {
    /// The query's id.
    pub query: QueryId,
    /// Stage 0, run by the coordinator.
    pub root: Arc<dyn ExecutionPlan>,
    /// The other stages, by id (1..), producers before their consumers.
    pub stages: Vec<Stage>,
    /// Dynamic filters the root's hash joins build for other stages' scans.
    root_sends: Vec<(u64, Vec<NodeId>)>,
    cluster: Arc<Cluster>,
}

/// One stage of a distributed plan.
#[derive(Debug)]
pub struct Stage {
    /// The stage's id.
    pub id: u32,
    /// Shuffle: hash partitions every task produces; None for a gather.
    pub shuffle: Option<usize>,
    /// The node of each task.
    pub tasks: Vec<NodeId>,
    /// Each task's fragment, per consumer task it serves.
    pub fragments: Vec<Fragment>,
}

/// A fragment to start.
#[derive(Debug)]
pub struct Fragment {
    /// Its key.
    pub key: FragmentKey,
    /// Its node.
    pub node: NodeId,
    /// Its plan.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Its plan, encoded.
    pub encoded: Bytes,
    /// The dynamic filters it sends and waits for.
    pub filters: FilterRoutes,
}

/// A stage as cut, before its tasks.
struct Draft {
    plan: Arc<dyn ExecutionPlan>,
    /// Hash exprs and partitions per consumer task, for a shuffle.
    shuffle: Option<(Vec<Arc<dyn PhysicalExpr>>, usize)>,
}

/// Where a task's rows come from.
struct Task<'a> {
    /// Divided stage: this task's index; None: the task reads everything.
    index: Option<usize>,
    /// Tasks of the stage.
    tasks: usize,
    /// The task on the node holding a data file's chunk, if one does
    /// (divided stages).
    holder: &'a dyn Fn(quarry_common::catalog::ChunkId) -> Option<usize>,
    /// Partitions of its scans.
    partitions: usize,
}

/// Bytes of the data files `plan`'s table scans, and its DELETE's and
/// UPDATE's rewrites, read (after pruning).
///
/// # Errors
/// DataFusion's, if the plan's operators cannot be visited.
pub fn scanned_bytes(plan: &Arc<dyn ExecutionPlan>) -> DfResult<u64> {
    let mut bytes = 0;
    plan.apply(|node| {
        bytes += scan_files(node.as_ref())
            .iter()
            .map(|(file, _)| file.object_meta.size)
            .sum::<u64>();
        if let Some(rewrite) = node.downcast_ref::<crate::rewrite::RewriteExec>() {
            bytes += rewrite.bytes_read();
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(bytes)
}

impl DistributedPlan {
    /// `plan` cut into stages run by the live nodes, or None when it is better
    /// run on this node alone: one live node, nothing to divide, or a part
    /// that cannot be sent to other nodes.
    ///
    /// # Errors
    /// DataFusion's, if a rewritten plan does not fit together.
    pub fn new(
        cluster: &Arc<Cluster>,
        plan: Arc<dyn ExecutionPlan>,
        target_partitions: usize,
    ) -> DfResult<Option<DistributedPlan>> {
        let live = cluster.peers().live();
        let local = cluster.peers().local();
        if live.len() < 2 || !live.contains(&local) {
            return Ok(None);
        }
        let query: QueryId = rand::random();
        let plan = if plan.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(plan)) as Arc<dyn ExecutionPlan>
        } else {
            plan
        };
        let mut drafts: Vec<Draft> = Vec::new();
        let root = cut_below(cluster, query, &mut drafts, plan)?;
        if drafts.is_empty() {
            return Ok(None);
        }
        // The stage each stage's exchange sits in (0: root).
        let mut consumer_of: HashMap<u32, u32> = HashMap::new();
        for (id, plan) in std::iter::once((0, &root)).chain(
            drafts
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u32 + 1, &d.plan)),
        ) {
            plan.apply(|node| {
                if let Some(exchange) = node.downcast_ref::<ExchangeExec>() {
                    consumer_of.insert(exchange.spec().stage, id);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        // A gather with no shuffle cut below it (only gathers that are
        // themselves inlinable) can be read whole by each task of a divided
        // stage (a broadcast by recomputing it there). Stages below another
        // were cut before it, so theirs are known when it is looked at.
        let mut inlinable: Vec<bool> = Vec::with_capacity(drafts.len());
        for draft in &drafts {
            let nested = draft.plan.exists(|n| {
                Ok(n.downcast_ref::<ExchangeExec>()
                    .is_some_and(|e| e.spec().shuffle || !inlinable[e.spec().stage as usize - 1]))
            })?;
            inlinable.push(draft.shuffle.is_none() && !nested);
        }
        let inlinable = |stage: u32| inlinable[stage as usize - 1];
        let divided: Vec<bool> = drafts
            .iter()
            .map(|d| matches!(divides(&d.plan, false, &inlinable), Some(true)))
            .collect();
        let tasks_of = |stage: u32| -> usize {
            if stage == 0 || !divided[stage as usize - 1] {
                1
            } else {
                live.len()
            }
        };
        let codec = Codec {
            cluster: cluster.clone(),
        };
        let mut stages: Vec<Stage> = Vec::new();
        // Stages inlined into each task of their consumer (see `inlinable`),
        // and with them the gathers inlined into them: consumers come after
        // the stages they read.
        let mut inlined = vec![false; drafts.len()];
        for i in (0..drafts.len()).rev() {
            let consumer = consumer_of.get(&(i as u32 + 1)).copied().unwrap_or(0);
            inlined[i] = drafts[i].shuffle.is_none()
                && (tasks_of(consumer) > 1 || (consumer > 0 && inlined[consumer as usize - 1]));
        }
        for (i, draft) in drafts.iter().enumerate() {
            let id = i as u32 + 1;
            let consumer = consumer_of.get(&id).copied().unwrap_or(0);
            let consumers = tasks_of(consumer);
            if inlined[i] {
                continue;
            }
            let nodes: Vec<NodeId> = if divided[i] {
                live.clone()
            } else {
                vec![local]
            };
            let holder = |chunk| {
                cluster
                    .peers()
                    .holder(chunk)
                    .and_then(|h| nodes.iter().position(|n| *n == h))
            };
            let mut fragments = Vec::new();
            for (t, node) in nodes.iter().enumerate() {
                let task = Task {
                    index: divided[i].then_some(t),
                    tasks: nodes.len(),
                    holder: &holder,
                    partitions: target_partitions,
                };
                let mut plan = instantiate(&draft.plan, false, &task, &stages, &drafts)?;
                if let Some((hash, partitions)) = &draft.shuffle {
                    plan = Arc::new(RepartitionExec::try_new(
                        plan,
                        Partitioning::Hash(hash.clone(), partitions * consumers),
                    )?);
                }
                let encoded =
                    match physical_plan_to_bytes_with_extension_codec(plan.clone(), &codec) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::debug!(error = %e, "the query runs on this node alone");
                            return Ok(None);
                        }
                    };
                fragments.push(Fragment {
                    key: FragmentKey {
                        query,
                        stage: id,
                        task: t as u32,
                    },
                    node: *node,
                    plan,
                    encoded,
                    filters: FilterRoutes::default(),
                });
            }
            stages.push(Stage {
                id,
                shuffle: draft
                    .shuffle
                    .as_ref()
                    .map(|(_, partitions)| partitions * consumers),
                tasks: nodes,
                fragments,
            });
        }
        let task = Task {
            index: None,
            tasks: 1,
            holder: &|_| None,
            partitions: target_partitions,
        };
        let root = instantiate(&root, false, &task, &stages, &drafts)?;
        // Every task of a stage has the same operators, so its first task's
        // plan stands for the stage.
        let local = [local];
        let mut plans = vec![(0, &root, &local[..])];
        for stage in &stages {
            if let Some(first) = stage.fragments.first() {
                plans.push((stage.id, &first.plan, &stage.tasks[..]));
            }
        }
        let mut routes = filters::routes(&plans)?;
        for stage in &mut stages {
            if let Some(stage_routes) = routes.get(&stage.id) {
                for fragment in &mut stage.fragments {
                    fragment.filters = stage_routes.clone();
                }
            }
        }
        let root_routes = routes.remove(&0).unwrap_or_default();
        let root = filters::with_bloom_builds(root, &root_routes)?;
        let root_sends = root_routes.sends;
        Ok(Some(DistributedPlan {
            query,
            root,
            stages,
            root_sends,
            cluster: cluster.clone(),
        }))
    }

    /// The nodes running a fragment of the query.
    fn nodes(&self) -> BTreeSet<NodeId> {
        self.stages
            .iter()
            .flat_map(|s| s.fragments.iter().map(|f| f.node))
            .collect()
    }

    /// Starts every fragment; dropping the answer stops them all. Nothing
    /// has run yet when this fails, so the query may still run elsewhere.
    ///
    /// # Errors
    /// If a node cannot start its fragment (then none is left running).
    pub async fn start(&self) -> DfResult<Started> {
        let guard = StopGuard {
            cluster: self.cluster.clone(),
            query: self.query,
            nodes: self.nodes(),
        };
        let starts = self.stages.iter().flat_map(|s| &s.fragments).map(|f| {
            let cluster = self.cluster.clone();
            let request = ExchangeRequest::Start {
                key: f.key,
                plan: f.encoded.clone(),
                filters: f.filters.clone(),
            };
            let node = f.node;
            async move {
                match cluster.call(node, request).await? {
                    ExchangeResponse::Started => Ok(()),
                    ExchangeResponse::Failed { sqlstate, message } => {
                        Err(remote_error(node, &sqlstate, &message))
                    }
                    other => Err(DataFusionError::Internal(format!(
                        "node {node} answered a start with {other:?}"
                    ))),
                }
            }
        });
        futures::future::try_join_all(starts).await?;
        let root = FragmentKey {
            query: self.query,
            stage: 0,
            task: 0,
        };
        let senders = filters::send(&self.cluster, &self.root, root, &self.root_sends)?;
        Ok(Started(guard, senders))
    }

    /// Runs the root stage here over the started fragments. The stream stops
    /// every fragment on every node when it ends, fails or is dropped
    /// (cancel, timeout, client gone).
    ///
    /// # Errors
    /// If the root stage cannot be executed.
    pub fn execute(
        &self,
        Started(guard, senders): Started,
        ctx: Arc<TaskContext>,
        runtime: Option<&tokio::runtime::Handle>,
        stats: Arc<crate::jobs::StatementStats>,
    ) -> DfResult<SendableRecordBatchStream> {
        // Watched before the first fetch can fail.
        let failures = self.cluster.watch_failures(self.query);
        let stream = crate::runtime::execute_stream(runtime, self.root.clone(), ctx)?;
        let stream = crate::jobs::costed(stream, self.root.clone(), stats.clone());
        let schema = stream.schema();
        let fragments = Fragments {
            cluster: self.cluster.clone(),
            query: self.query,
            nodes: self.nodes(),
        };
        // The first error ends the query, whether it comes up through the
        // root's operators or straight from a failed fetch (which the
        // operators may not poll for a while): stop every fragment now
        // rather than when the client drops the stream. At the end, the
        // fragments' cost is added to the statement's before they stop.
        let stream = futures::stream::unfold(
            Some((stream, failures, guard, senders, fragments, stats)),
            |state| async move {
                let (mut stream, mut failures, guard, senders, fragments, stats) = state?;
                let batch = tokio::select! {
                    biased;
                    error = failures.failed() => Some(Err(error)),
                    batch = stream.next() => batch,
                };
                let Some(batch) = batch else {
                    for report in fragments.reports().await {
                        stats.add_cost(report.cost);
                    }
                    drop((guard, senders));
                    return None;
                };
                let next = batch
                    .is_ok()
                    .then_some((stream, failures, guard, senders, fragments, stats));
                Some((batch, next))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// Runs the query to its end (EXPLAIN ANALYZE): the rows it returned and
    /// what every node reported of its fragments, then stops them.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn analyze(
        &self,
        Started(guard, senders): Started,
        ctx: Arc<TaskContext>,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> DfResult<(usize, Vec<FragmentReport>)> {
        let mut stream = crate::runtime::execute_stream(runtime, self.root.clone(), ctx)?;
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch?.num_rows();
        }
        let reports = Fragments {
            cluster: self.cluster.clone(),
            query: self.query,
            nodes: self.nodes(),
        }
        .reports()
        .await;
        drop((guard, senders));
        Ok((rows, reports))
    }

    /// The query's id across the cluster.
    pub fn query(&self) -> QueryId {
        self.query
    }

    /// The stages as EXPLAIN shows them; with `reports` (EXPLAIN ANALYZE)
    /// every task's rows, bytes, time and operator metrics.
    pub fn display(&self, reports: Option<&[FragmentReport]>) -> String {
        let mut out = String::new();
        let local = self.cluster.peers().local();
        let _ = writeln!(out, "Stage 0: 1 task on node {local} (coordinator)");
        let root = match reports {
            Some(_) => DisplayableExecutionPlan::with_metrics(self.root.as_ref()),
            None => DisplayableExecutionPlan::new(self.root.as_ref()),
        };
        let _ = write!(out, "{}", indent(&root.indent(true).to_string()));
        for stage in self.stages.iter().rev() {
            let nodes: Vec<String> = stage.tasks.iter().map(ToString::to_string).collect();
            let output = match stage.shuffle {
                Some(k) => format!("shuffle by hash into {k} partitions"),
                None => "gathered".to_owned(),
            };
            let _ = writeln!(
                out,
                "Stage {}: {} task{} on node{} [{}], {}",
                stage.id,
                stage.tasks.len(),
                if stage.tasks.len() == 1 { "" } else { "s" },
                if stage.tasks.len() == 1 { "" } else { "s" },
                nodes.join(", "),
                output
            );
            match reports {
                None => {
                    if let Some(first) = stage.fragments.first() {
                        let _ = writeln!(out, "  task 0 on node {}:", first.node);
                        let plan = DisplayableExecutionPlan::new(first.plan.as_ref());
                        let _ = write!(out, "{}", indent(&plan.indent(true).to_string()));
                    }
                }
                Some(reports) => {
                    for report in reports.iter().filter(|r| r.key.stage == stage.id) {
                        let _ = writeln!(
                            out,
                            "  task {} on node {}: rows sent={}, bytes sent={}, elapsed={} ms",
                            report.key.task,
                            report.node,
                            report.rows_sent,
                            report.bytes_sent,
                            report.elapsed_ms
                        );
                        let _ = write!(out, "{}", indent(&report.plan));
                    }
                }
            }
        }
        out
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Where a query's fragments run, to ask for their reports.
struct Fragments {
    cluster: Arc<Cluster>,
    query: QueryId,
    nodes: BTreeSet<NodeId>,
}

impl Fragments {
    /// What every node reports of its fragments of the query so far (a node
    /// that does not answer is left out).
    async fn reports(&self) -> Vec<FragmentReport> {
        let asks = self.nodes.iter().map(|&node| async move {
            let request = ExchangeRequest::Metrics { query: self.query };
            match self.cluster.call(node, request).await {
                Ok(ExchangeResponse::Metrics(r)) => r,
                other => {
                    tracing::warn!(node, ?other, "no metrics of the query's fragments");
                    Vec::new()
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// A distributed query's fragments, started, and the root's dynamic filter
/// senders; dropping it stops them.
#[derive(Debug)]
pub struct Started(StopGuard, Vec<AbortOnDropHandle<()>>);

/// Times a node is asked to stop a query's fragments.
const STOP_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const STOP_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Stops the query's fragments on every node when dropped.
#[derive(Debug)]
struct StopGuard {
    cluster: Arc<Cluster>,
    query: QueryId,
    nodes: BTreeSet<NodeId>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let cluster = self.cluster.clone();
        let query = self.query;
        let nodes = std::mem::take(&mut self.nodes);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let stops = nodes.into_iter().map(|node| {
                let cluster = cluster.clone();
                async move {
                    // Stop is idempotent: a node that missed it (a lost
                    // answer, a deadline under load) would keep the query's
                    // fragments until they idle out, so it is asked again
                    // while it is alive.
                    for attempt in 1..=STOP_ATTEMPTS {
                        match cluster.call(node, ExchangeRequest::Stop { query }).await {
                            Ok(ExchangeResponse::Stopped) => return,
                            other if !cluster.peers().live().contains(&node) => {
                                tracing::debug!(
                                    node,
                                    ?other,
                                    "a node that is down keeps no fragments"
                                );
                                return;
                            }
                            other => {
                                tracing::warn!(
                                    node,
                                    attempt,
                                    ?other,
                                    "could not stop a query's fragments"
                                );
                                tokio::time::sleep(STOP_RETRY).await;
                            }
                        }
                    }
                }
            });
            futures::future::join_all(stops).await;
        });
    }
}

/// Cuts `node`'s tree bottom-up, except below a scalar subquery: its
/// subquery's result is shared with expressions in its input, so the two stay
/// in one fragment.
fn cut_below(
    cluster: &Arc<Cluster>,
    query: QueryId,
    drafts: &mut Vec<Draft>,
    node: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if node.is::<ScalarSubqueryExec>() {
        return Ok(node);
    }
    let children = node
        .children()
        .into_iter()
        .map(|child| cut_below(cluster, query, drafts, child.clone()))
        .collect::<DfResult<Vec<_>>>()?;
    let node = replace_children_if_necessary(node, children)?;
    cut(cluster, query, drafts, node)
}

/// One step of cutting (bottom-up): a hash repartition becomes a shuffle
/// exchange, the input of a coalesce or sort-preserving merge a gather.
fn cut(
    cluster: &Arc<Cluster>,
    query: QueryId,
    drafts: &mut Vec<Draft>,
    node: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let stage = drafts.len() as u32 + 1;
    if let Some(repartition) = node.downcast_ref::<RepartitionExec>()
        && let Partitioning::Hash(hash, partitions) = repartition.partitioning()
        && !repartition.preserve_order()
        && reads_data(repartition.input())
    {
        drafts.push(Draft {
            plan: repartition.input().clone(),
            shuffle: Some((hash.clone(), *partitions)),
        });
        let spec = ExchangeSpec {
            query,
            stage,
            shuffle: true,
            partitions: *partitions as u32,
            consumer: 0,
            producers: Vec::new(),
        };
        let exchange = ExchangeExec::new(spec, node.schema(), hash.clone(), cluster.clone())
            .with_filters(named_filters(repartition.input())?);
        return Ok(Arc::new(exchange));
    }
    let gathers = node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>();
    if gathers
        && let [input] = node.children().as_slice()
        && input.output_partitioning().partition_count() > 1
        && reads_data(input)
    {
        drafts.push(Draft {
            plan: (*input).clone(),
            shuffle: None,
        });
        let spec = ExchangeSpec {
            query,
            stage,
            shuffle: false,
            partitions: 0,
            consumer: 0,
            producers: Vec::new(),
        };
        let exchange = ExchangeExec::new(spec, input.schema(), Vec::new(), cluster.clone())
            .with_filters(named_filters(input)?);
        return replace_children_if_necessary(node, vec![Arc::new(exchange)]);
    }
    Ok(node)
}

/// The dynamic filters used in `plan` (a stage being cut off), for the
/// exchange that reads it to name.
fn named_filters(plan: &Arc<dyn ExecutionPlan>) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    Ok(filters::used(plan, true)?
        .into_iter()
        .map(|(_, filter)| filter)
        .collect())
}

/// Whether `plan` reads a table or another stage.
fn reads_data(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|n| Ok(is_table_scan(n.as_ref()) || n.is::<ExchangeExec>()))
        .unwrap_or(false)
}

/// The child of a join whose rows every task needs whole (the build side it
/// collects), Some(None) for other nodes, None for a join that must see all
/// probe rows in one place (it emits unmatched build rows).
fn collected_side(node: &dyn ExecutionPlan) -> Option<Option<usize>> {
    let emits_build_rows = |t: &JoinType| {
        matches!(
            t,
            JoinType::Left
                | JoinType::Full
                | JoinType::LeftSemi
                | JoinType::LeftAnti
                | JoinType::LeftMark
        )
    };
    if let Some(join) = node.downcast_ref::<HashJoinExec>() {
        return match join.partition_mode() {
            PartitionMode::Partitioned => Some(None),
            PartitionMode::CollectLeft if !emits_build_rows(join.join_type()) => Some(Some(0)),
            _ => None,
        };
    }
    if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        return (!emits_build_rows(join.join_type())).then_some(Some(0));
    }
    if node.is::<CrossJoinExec>() {
        return Some(Some(0));
    }
    Some(None)
}

/// Whether a stage's rows divide among tasks: Some(true) when each task can
/// take a share of its scans and shuffles (everything a collected join side
/// needs being read whole by each), Some(false) when nothing divides, None
/// when the stage must run as one task.
fn divides(
    node: &Arc<dyn ExecutionPlan>,
    whole: bool,
    inlinable: &dyn Fn(u32) -> bool,
) -> Option<bool> {
    if is_table_scan(node.as_ref()) {
        return Some(!whole);
    }
    if let Some(exchange) = node.downcast_ref::<ExchangeExec>() {
        return match (exchange.spec().shuffle, whole) {
            (true, false) => Some(true),
            (false, true) if inlinable(exchange.spec().stage) => Some(false),
            _ => None,
        };
    }
    if node.is::<ScalarSubqueryExec>() {
        // Its subqueries must see every row.
        return None;
    }
    let children = node.children();
    if children.is_empty() {
        // Values, generated rows: each task would repeat them.
        return whole.then_some(false);
    }
    let collected = collected_side(node.as_ref())?;
    let required = node.input_distribution_requirements();
    let mut divided = false;
    for (i, child) in children.into_iter().enumerate() {
        let child_divided = divides(child, whole || collected == Some(i), inlinable)?;
        if child_divided {
            match required.child_distribution(i) {
                Some(Distribution::UnspecifiedDistribution) => {}
                Some(Distribution::KeyPartitioned(_))
                    if matches!(child.output_partitioning(), Partitioning::Hash(..)) => {}
                _ => return None,
            }
        }
        divided |= child_divided;
    }
    Some(divided)
}

/// How far past an even share of a scan's bytes a task may be given files
/// its node holds before the rest go to other tasks, which read them over the
/// network: the price of a remote read against that of waiting for the
/// busiest node.
const HOLDER_SLACK: f64 = 1.25;

/// The task that scans each of `files` (in order), of `tasks`: the one on the
/// node holding the file's chunk while that task has at most `HOLDER_SLACK`
/// times an even share of the bytes, otherwise the least loaded task. Stripe
/// placement spreads chunks by hashing, so one table's few files may well
/// sit on one node; the tasks must still share the work. The same files give
/// the same answer on every call.
fn share_files(
    files: &[(PartitionedFile, ChunkRef)],
    tasks: usize,
    holder: &dyn Fn(quarry_common::catalog::ChunkId) -> Option<usize>,
) -> Vec<usize> {
    let tasks = tasks.max(1);
    let total: u64 = files.iter().map(|(_, c)| c.size_bytes).sum();
    let limit = (total as f64 / tasks as f64 * HOLDER_SLACK) as u64;
    let mut order: Vec<usize> = (0..files.len()).collect();
    // Largest first, ties by chunk id: deterministic across tasks.
    order.sort_by_key(|&i| (std::cmp::Reverse(files[i].1.size_bytes), files[i].1.id));
    let mut load = vec![0u64; tasks];
    let mut owners = vec![0usize; files.len()];
    for i in order {
        let chunk = &files[i].1;
        let owner = match holder(chunk.id).filter(|&h| h < tasks) {
            Some(h) if load[h] + chunk.size_bytes <= limit.max(chunk.size_bytes) => h,
            held => (0..tasks)
                .min_by_key(|&t| (load[t], Some(t) != held))
                .expect("at least one task"),
        };
        load[owner] += chunk.size_bytes;
        owners[i] = owner;
    }
    owners
}

/// A task's copy of a stage's plan: its share of the divided scans, every
/// file of the scans it needs whole, its exchanges pointed at their producers.
fn instantiate(
    node: &Arc<dyn ExecutionPlan>,
    whole: bool,
    task: &Task<'_>,
    stages: &[Stage],
    drafts: &[Draft],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if is_table_scan(node.as_ref()) {
        let Some(index) = task.index.filter(|_| !whole) else {
            return Ok(node.clone());
        };
        let files = scan_files(node.as_ref());
        let owners = share_files(&files, task.tasks, task.holder);
        let files = files
            .into_iter()
            .zip(owners)
            .filter(|(_, owner)| *owner == index)
            .map(|((file, _), _)| file)
            .collect();
        return with_scan_files(node.as_ref(), files, task.partitions)
            .ok_or_else(|| DataFusionError::Internal("a table scan lost its files".to_owned()));
    }
    if let Some(exchange) = node.downcast_ref::<ExchangeExec>() {
        let spec = exchange.spec();
        if whole && task.index.is_some() {
            // A gather into a divided stage: each task computes it whole.
            let draft = &drafts[spec.stage as usize - 1];
            return instantiate(&draft.plan, true, task, stages, drafts);
        }
        let producer = stages
            .iter()
            .find(|s| s.id == spec.stage)
            .ok_or_else(|| DataFusionError::Internal(format!("no stage {}", spec.stage)))?;
        let producers = producer
            .fragments
            .iter()
            .map(|f| Producer {
                node: f.node,
                task: f.key.task,
                partitions: f.plan.output_partitioning().partition_count() as u32,
            })
            .collect();
        let spec = ExchangeSpec {
            consumer: task.index.unwrap_or(0) as u32,
            producers,
            ..spec.clone()
        };
        return Ok(Arc::new(exchange.with_spec(spec)));
    }
    let children = node.children();
    if children.is_empty() {
        return Ok(node.clone());
    }
    let collected = collected_side(node.as_ref()).flatten();
    let children = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| instantiate(child, whole || collected == Some(i), task, stages, drafts))
        .collect::<DfResult<Vec<_>>>()?;
    replace_children_if_necessary(node.clone(), children)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_common::catalog::ChunkId;

    fn file(id: u128, size_bytes: u64) -> (PartitionedFile, ChunkRef) {
        let chunk = ChunkRef {
            id: ChunkId(id),
            size_bytes,
            checksum_crc32c: 0,
        };
        (
            PartitionedFile::new(format!("1/1/{id}.0"), size_bytes),
            chunk,
        )
    }

    #[test]
    fn files_go_to_their_holders_while_the_work_stays_even() {
        // Spread over three nodes: each task scans what its node holds.
        let files = [file(1, 100), file(2, 100), file(3, 100)];
        let spread = |c: ChunkId| Some((c.0 - 1) as usize);
        assert_eq!(share_files(&files, 3, &spread), vec![0, 1, 2]);
        // All on node 3 (stripes placed them there): two of the three go to
        // the other tasks, which read them over the network.
        let on_three = |_| Some(2);
        let mut owners = share_files(&files, 3, &on_three);
        assert!(owners.contains(&2), "the holder keeps one: {owners:?}");
        owners.sort_unstable();
        assert_eq!(owners, vec![0, 1, 2]);
        // Uneven sizes: the holder keeps its files up to 1.25 × an even share.
        let files = [file(1, 300), file(2, 100), file(3, 100), file(4, 100)];
        let owners = share_files(&files, 2, &|_| Some(0));
        assert_eq!(owners, vec![0, 1, 1, 1], "300 of 600 bytes on the holder");
        // Every task gets the same answer.
        assert_eq!(share_files(&files, 2, &|_| Some(0)), owners);
        // A file no live node holds goes to the least loaded task.
        assert_eq!(share_files(&[file(9, 10)], 2, &|_| None), vec![0]);
    }
}
