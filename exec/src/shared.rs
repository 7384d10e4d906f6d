//! Subplans computed once for all their uses: a WITH query (CTE) that a
//! statement reads more than once.
//!
//! DataFusion's SQL planner copies a CTE's plan into every place that reads
//! it, so `WITH t AS (SELECT ... GROUP BY ...)` read twice (TPC-H Q15: the
//! revenue per supplier and its maximum) scans and aggregates twice. As
//! in PostgreSQL, where a CTE read more than once is materialized
//! (PostgreSQL manual, section 7.8.3, "Common Table Expression
//! Materialization"), and in DuckDB, its result is computed once here:
//!
//! - [`ShareCommonSubqueries`], the last logical optimizer rule, finds the
//!   aggregations and windows that occur more than once, alike, in
//!   the optimized plan of a statement and its subqueries (a CTE's copies
//!   are alike unless the optimizer pushed different filters into them, in
//!   which case each reads less than the whole would), and puts each
//!   occurrence under a [`SharedNode`] of one id. The node is opaque to the
//!   optimizer's later passes: nothing is pushed through it.
//! - [`SharedPlanner`] plans the node as a [`SharedExec`], and
//!   [`ShareSubplans`], the last physical optimizer rule, gives all the
//!   `SharedExec`s of one id one [`SharedOutput`].
//! - At execution, the first occurrence to run a partition computes it from
//!   its own input and keeps the batches (counted against the query's
//!   memory); the others replay them. The batches are dropped once every
//!   occurrence has taken them. Were they too large for the query's memory,
//!   the first occurrence streams the rest of its input instead, and each
//!   other occurrence computes the partition itself, as without sharing.
//!
//! Not shared: subplans with references to an outer query (their rows
//! differ per outer row) or volatile functions (`random()` draws anew in
//! each), statements with a recursive CTE, and subplans that only scan and
//! filter (read again rather than kept). A distributed plan
//! runs every occurrence itself ([`unshared`]): its fragments are cut and
//! sent before execution.
//!
//! Off by default: the session setting `share_subplans = on` turns it on
//! (benches/RESULTS.md, "Subplans computed once", has the measurements;
//! a shared subplan gets no dynamic filter from the joins above it, which
//! is why joins are not shared).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// Ids of shared subplans, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A CTE's plan, computed once for every occurrence of the same id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct SharedNode {
    id: u64,
    input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for SharedNode {
    fn name(&self) -> &str {
        "Shared"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Shared: id={}", self.id)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        match (inputs.pop(), inputs.is_empty()) {
            (Some(input), true) => Ok(Self { id: self.id, input }),
            _ => Err(DataFusionError::Internal("Shared has one input".into())),
        }
    }
}

/// The logical rule (see the module documentation). It does nothing unless
/// `enabled` (the session setting `share_subplans`) is set.
#[derive(Debug, Default)]
pub struct ShareCommonSubqueries {
    /// Whether subplans are shared.
    pub enabled: Arc<AtomicBool>,
}

impl OptimizerRule for ShareCommonSubqueries {
    fn name(&self) -> &str {
        "share_common_subqueries"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(Transformed::no(plan));
        }
        let mut seen: HashMap<Occurrence, usize> = HashMap::new();
        let mut recursive = false;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::RecursiveQuery(_) = node {
                recursive = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            if is_shared(node) {
                return Ok(TreeNodeRecursion::Jump);
            }
            if let Some(occurrence) = Occurrence::of(node) {
                *seen.entry(occurrence).or_default() += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if recursive {
            return Ok(Transformed::no(plan));
        }
        let repeated: HashMap<Occurrence, u64> = seen
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(occurrence, _)| (occurrence, NEXT_ID.fetch_add(1, Ordering::Relaxed)))
            .collect();
        if repeated.is_empty() {
            return Ok(Transformed::no(plan));
        }
        // Outermost occurrences first: one inside a shared subplan is
        // computed once with it.
        plan.transform_down_with_subqueries(|node| {
            if is_shared(&node) {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            let Some(id) = Occurrence::of(&node).and_then(|o| repeated.get(&o)) else {
                return Ok(Transformed::no(node));
            };
            let shared = LogicalPlan::Extension(Extension {
                node: Arc::new(SharedNode {
                    id: *id,
                    input: node,
                }),
            });
            Ok(Transformed::new(shared, true, TreeNodeRecursion::Jump))
        })
    }
}

/// Whether `plan` is a [`SharedNode`] already.
fn is_shared(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(e) if e.node.as_any().is::<SharedNode>())
}

/// A subplan worth computing once, as the key of its occurrences: the plan
/// and the tables it reads. DataFusion's plan equality leaves out a scan's
/// table provider, and two providers of one name can read different
/// snapshots (time travel), so the providers themselves are compared too.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Occurrence {
    plan: LogicalPlan,
    sources: Vec<usize>,
}

impl Occurrence {
    /// `plan` as an occurrence if it is worth sharing: it aggregates or
    /// windows. Not a join: one under a selective join would lose the
    /// dynamic filter that join sends its scans (TPC-DS Q39's inventory ⋈
    /// item ⋈ warehouse, read for one month a copy, or whole when shared);
    /// nor a plain scan, cheaper read again than kept. And it reads
    /// nothing of an outer query and no volatile function (whose values
    /// each evaluation draws anew).
    fn of(plan: &LogicalPlan) -> Option<Occurrence> {
        if !matches!(
            plan,
            LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Distinct(_)
        ) {
            return None;
        }
        let (mut sources, mut unfit) = (Vec::new(), false);
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                sources.push(Arc::as_ptr(&scan.source).cast::<()>() as usize);
            }
            if is_shared(node)
                || node
                    .expressions()
                    .iter()
                    .any(|e| e.contains_outer() || e.is_volatile())
            {
                unfit = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        (!unfit).then(|| Occurrence {
            plan: plan.clone(),
            sources,
        })
    }
}

/// Plans [`SharedNode`]s as [`SharedExec`]s.
#[derive(Debug, Default)]
pub struct SharedPlanner;

#[async_trait]
impl ExtensionPlanner for SharedPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(shared) = node.as_any().downcast_ref::<SharedNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal("Shared has one input".into()));
        };
        Ok(Some(Arc::new(SharedExec::new(shared.id, input.clone()))))
    }
}

/// DataFusion's query planner with [`SharedPlanner`].
#[derive(Debug, Default)]
pub struct QuarryQueryPlanner;

#[async_trait]
impl QueryPlanner for QuarryQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(SharedPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// The kept output of one shared subplan, by partition.
#[derive(Debug)]
pub struct SharedOutput {
    /// How many `SharedExec`s read it.
    consumers: usize,
    partitions: Vec<tokio::sync::Mutex<Slot>>,
}

/// One partition's kept output.
#[derive(Debug, Default)]
enum Slot {
    /// Not computed (or taken by every consumer already).
    #[default]
    Empty,
    /// Computed: the batches, and how many consumers are still to take them.
    Kept {
        batches: Arc<Vec<RecordBatch>>,
        remaining: usize,
        _memory: MemoryReservation,
    },
    /// Too large to keep: each consumer computes it itself.
    TooLarge,
}

impl SharedOutput {
    fn new(consumers: usize, partitions: usize) -> Self {
        Self {
            consumers,
            partitions: (0..partitions).map(|_| Default::default()).collect(),
        }
    }
}

/// Reads a shared subplan's output (see the module documentation); without
/// a [`SharedOutput`] (one occurrence, or a distributed plan) it passes its
/// input through.
#[derive(Debug)]
pub struct SharedExec {
    id: u64,
    input: Arc<dyn ExecutionPlan>,
    output: Option<Arc<SharedOutput>>,
}

impl SharedExec {
    fn new(id: u64, input: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            id,
            input,
            output: None,
        }
    }

    fn with_output(&self, output: Arc<SharedOutput>) -> Self {
        Self {
            id: self.id,
            input: self.input.clone(),
            output: Some(output),
        }
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.output {
            Some(output) => write!(f, "SharedExec: id={}, uses={}", self.id, output.consumers),
            None => write!(f, "SharedExec: id={}, uses=1", self.id),
        }
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &'static str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self {
                id: self.id,
                input,
                output: self.output.clone(),
            })),
            _ => Err(DataFusionError::Internal("SharedExec has one input".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let Some(output) = self.output.clone() else {
            return self.input.execute(partition, context);
        };
        if partition >= output.partitions.len() {
            return self.input.execute(partition, context);
        }
        let (input, schema, id) = (self.input.clone(), self.schema(), self.id);
        let kept_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let mut slot = output.partitions[partition].lock().await;
            match &mut *slot {
                Slot::Kept {
                    batches, remaining, ..
                } => {
                    let batches = batches.clone();
                    *remaining -= 1;
                    if *remaining == 0 {
                        *slot = Slot::Empty;
                    }
                    Ok(replay(&kept_schema, batches))
                }
                Slot::TooLarge => input.execute(partition, context),
                Slot::Empty => {
                    let memory = MemoryConsumer::new(format!("SharedExec[{id}]"))
                        .register(context.memory_pool());
                    let mut stream = input.execute(partition, context)?;
                    let mut batches = Vec::new();
                    while let Some(batch) = stream.next().await {
                        let batch = batch?;
                        if memory.try_grow(batch.get_array_memory_size()).is_err() {
                            // Too large to keep: the rest streams through.
                            *slot = Slot::TooLarge;
                            batches.push(batch);
                            let kept = futures::stream::iter(batches.into_iter().map(Ok));
                            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                                stream.schema(),
                                kept.chain(stream),
                            )) as SendableRecordBatchStream);
                        }
                        batches.push(batch);
                    }
                    let batches = Arc::new(batches);
                    if output.consumers > 1 {
                        *slot = Slot::Kept {
                            batches: batches.clone(),
                            remaining: output.consumers - 1,
                            _memory: memory,
                        };
                    }
                    Ok(replay(&kept_schema, batches))
                }
            }
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The batches of a kept partition, as a stream.
fn replay(schema: &SchemaRef, batches: Arc<Vec<RecordBatch>>) -> SendableRecordBatchStream {
    let schema = schema.clone();
    let rows = (0..batches.len()).map(move |i| Ok(batches[i].clone()));
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(rows),
    ))
}

/// The physical rule giving every `SharedExec` of one id one output. It
/// runs last, once the inputs are final.
#[derive(Debug, Default)]
pub struct ShareSubplans;

impl PhysicalOptimizerRule for ShareSubplans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Occurrences and their partition counts, by id.
        let mut found: HashMap<u64, Vec<usize>> = HashMap::new();
        plan.apply(|node| {
            if let Some(shared) = node.downcast_ref::<SharedExec>() {
                found.entry(shared.id).or_default().push(
                    shared
                        .input
                        .properties()
                        .output_partitioning()
                        .partition_count(),
                );
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let outputs: HashMap<u64, Arc<SharedOutput>> = found
            .into_iter()
            .filter(|(_, counts)| counts.len() > 1 && counts.iter().all(|c| *c == counts[0]))
            .map(|(id, counts)| (id, Arc::new(SharedOutput::new(counts.len(), counts[0]))))
            .collect();
        if outputs.is_empty() {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(shared) = node.downcast_ref::<SharedExec>() else {
                return Ok(Transformed::no(node));
            };
            match outputs.get(&shared.id) {
                Some(output) => Ok(Transformed::yes(
                    Arc::new(shared.with_output(output.clone())) as Arc<dyn ExecutionPlan>,
                )),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "share_subplans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with every occurrence computing its own output, for a plan cut
/// into fragments that run apart.
///
/// # Errors
/// DataFusion's, rebuilding the plan.
pub fn unshared(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| match node.downcast_ref::<SharedExec>() {
        Some(shared) => Ok(Transformed::yes(shared.input.clone())),
        None => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    fn context() -> SessionContext {
        let mut rules = datafusion::optimizer::Optimizer::new().rules;
        rules.push(Arc::new(ShareCommonSubqueries {
            enabled: Arc::new(AtomicBool::new(true)),
        }));
        let mut physical =
            datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        physical.push(Arc::new(ShareSubplans));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules)
            .with_physical_optimizer_rules(physical)
            .with_query_planner(Arc::new(QuarryQueryPlanner))
            .build();
        SessionContext::new_with_state(state)
    }

    async fn plan_and_rows(ctx: &SessionContext, sql: &str) -> (String, Vec<i64>) {
        let frame = ctx.sql(sql).await.expect("plan");
        let physical = frame
            .clone()
            .create_physical_plan()
            .await
            .expect("physical");
        let shown = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(false)
            .to_string();
        let batches = frame.collect().await.expect("run");
        let mut rows = Vec::new();
        for batch in batches {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("bigint")
                .clone();
            rows.extend(column.iter().map(|v| v.expect("not null")));
        }
        (shown, rows)
    }

    const Q15_LIKE: &str = "WITH totals AS (
            SELECT k, sum(v) AS total FROM t GROUP BY k)
        SELECT k FROM totals WHERE total = (SELECT max(total) FROM totals) ORDER BY k";

    async fn with_table(ctx: &SessionContext) {
        ctx.sql("CREATE TABLE t AS SELECT v % 7 AS k, v FROM generate_series(1, 10000) AS g(v)")
            .await
            .expect("create")
            .collect()
            .await
            .expect("created");
    }

    #[tokio::test]
    async fn a_cte_read_twice_is_computed_once_with_the_same_answer() {
        let ctx = context();
        with_table(&ctx).await;
        let (plan, rows) = plan_and_rows(&ctx, Q15_LIKE).await;
        assert!(plan.contains("SharedExec: id="), "{plan}");
        assert!(plan.contains("uses=2"), "{plan}");
        let plain = SessionContext::new();
        with_table(&plain).await;
        let expected = plan_and_rows(&plain, Q15_LIKE).await.1;
        assert_eq!(rows, expected);
        assert_eq!(rows, vec![4]);
    }

    /// A session with the rules and table `t`, and its physical plan of
    /// [`Q15_LIKE`].
    async fn q15_like_plan() -> (SessionContext, Arc<dyn ExecutionPlan>) {
        let ctx = context();
        with_table(&ctx).await;
        let frame = ctx.sql(Q15_LIKE).await.expect("plan");
        let physical = frame.create_physical_plan().await.expect("physical");
        (ctx, physical)
    }

    #[tokio::test]
    async fn a_shared_cte_runs_its_input_once() {
        let (ctx, physical) = q15_like_plan().await;
        let task = ctx.task_ctx();
        let batches = datafusion::physical_plan::collect(physical.clone(), task)
            .await
            .expect("run");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        // The rows each occurrence's aggregate produced: one computed all
        // seven groups, the other nothing.
        let mut produced = Vec::new();
        physical
            .apply(|node| {
                if let Some(shared) = node.downcast_ref::<SharedExec>() {
                    let rows = shared
                        .input
                        .metrics()
                        .and_then(|m| m.output_rows())
                        .unwrap_or(0);
                    produced.push(rows);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
        produced.sort_unstable();
        assert_eq!(produced, vec![0, 7]);
    }

    #[tokio::test]
    async fn nothing_is_shared_unless_enabled() {
        let mut rules = datafusion::optimizer::Optimizer::new().rules;
        rules.push(Arc::new(ShareCommonSubqueries::default()));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules)
            .with_query_planner(Arc::new(QuarryQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        with_table(&ctx).await;
        let (plan, rows) = plan_and_rows(&ctx, Q15_LIKE).await;
        assert!(!plan.contains("SharedExec"), "{plan}");
        assert_eq!(rows, vec![4]);
    }

    #[tokio::test]
    async fn ctes_read_once_or_only_scanning_are_not_shared() {
        let ctx = context();
        with_table(&ctx).await;
        let once = "WITH totals AS (SELECT k, sum(v) AS total FROM t GROUP BY k)
            SELECT k FROM totals ORDER BY k";
        let (plan, rows) = plan_and_rows(&ctx, once).await;
        assert!(!plan.contains("SharedExec"), "{plan}");
        assert_eq!(rows, (0..7).collect::<Vec<_>>());
        let scan = "WITH small AS (SELECT k FROM t WHERE v < 3)
            SELECT a.k FROM small a JOIN small b ON a.k = b.k ORDER BY a.k";
        let (plan, rows) = plan_and_rows(&ctx, scan).await;
        assert!(!plan.contains("SharedExec"), "{plan}");
        assert_eq!(rows, vec![1, 2]);
        // Each copy with its own filter pushed in reads less than the whole.
        let filtered = "WITH totals AS (SELECT k, sum(v) AS total FROM t GROUP BY k)
            SELECT (SELECT total FROM totals WHERE k = 1) - (SELECT total FROM totals WHERE k = 2)";
        let (plan, rows) = plan_and_rows(&ctx, filtered).await;
        assert!(!plan.contains("SharedExec"), "{plan}");
        assert_eq!(rows, vec![-1429]);
        // A volatile function inside the aggregate draws anew in each copy.
        let volatile =
            "WITH r AS (SELECT k, sum(v + CAST(random() * 0 AS BIGINT)) AS x FROM t GROUP BY k)
            SELECT count(*) FROM r a JOIN r b ON a.k = b.k AND a.x = b.x";
        let (plan, rows) = plan_and_rows(&ctx, volatile).await;
        assert!(!plan.contains("SharedExec"), "{plan}");
        assert_eq!(rows, vec![7]);
    }

    /// Two occurrences of one input of three 1,000-row batches, sharing an
    /// output, run in turn with `pool_bytes` of query memory: the rows each
    /// returned, and whether the output was kept for the second.
    async fn two_occurrences(pool_bytes: usize) -> (usize, usize, bool) {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion_datasource::memory::MemorySourceConfig;
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |start: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(start..start + 1000))],
            )
            .expect("batch")
        };
        let partitions = vec![vec![batch(0), batch(1000), batch(2000)]];
        let input = MemorySourceConfig::try_new_exec(&partitions, schema.clone(), None)
            .expect("input") as Arc<dyn ExecutionPlan>;
        let output = Arc::new(SharedOutput::new(2, 1));
        let first = SharedExec::new(7, input.clone()).with_output(output.clone());
        let second = SharedExec::new(7, input).with_output(output.clone());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(pool_bytes)))
            .build_arc()
            .expect("runtime");
        let task = Arc::new(TaskContext::default().with_runtime(runtime));
        let rows = |batches: Vec<RecordBatch>| batches.iter().map(RecordBatch::num_rows).sum();
        let a: Vec<RecordBatch> = first
            .execute(0, task.clone())
            .expect("first")
            .try_collect()
            .await
            .expect("first rows");
        let kept = matches!(*output.partitions[0].lock().await, Slot::Kept { .. });
        let b: Vec<RecordBatch> = second
            .execute(0, task)
            .expect("second")
            .try_collect()
            .await
            .expect("second rows");
        // Taken by both: nothing is kept any more.
        assert!(!matches!(
            *output.partitions[0].lock().await,
            Slot::Kept { .. }
        ));
        (rows(a), rows(b), kept)
    }

    #[tokio::test]
    async fn an_output_too_large_for_the_query_memory_is_computed_by_each_occurrence() {
        // Room for the three batches: kept once, replayed for the second.
        assert_eq!(two_occurrences(1 << 20).await, (3000, 3000, true));
        // Room for one batch: the first streams on, the second computes.
        assert_eq!(two_occurrences(10_000).await, (3000, 3000, false));
    }

    #[tokio::test]
    async fn a_distributed_plan_runs_each_occurrence_itself() {
        let (ctx, physical) = q15_like_plan().await;
        let apart = unshared(physical).expect("unshared");
        let shown = datafusion::physical_plan::displayable(apart.as_ref())
            .indent(false)
            .to_string();
        assert!(!shown.contains("SharedExec"), "{shown}");
        let batches = datafusion::physical_plan::collect(apart, ctx.task_ctx())
            .await
            .expect("run");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    }
}
