//! Where query operators run: on a tokio runtime of their own, apart from the
//! one that serves the network (PostgreSQL wire, internal RPC, Raft, gossip).
//!
//! DataFusion's operators are CPU-bound and poll for as long as their input is
//! ready: an aggregate over a join whose probe batches each match millions of
//! rows returns from one poll only when the join is done (seconds). On the
//! network's runtime such a poll holds a worker thread: Raft heartbeats, RPC
//! answers and cancel requests wait behind it (DataFusion's own advice is a
//! separate runtime for CPU-bound work; see its `thread_pools` example). Here
//! a stream is made and polled by a task on the execution runtime, and its
//! batches cross to the caller through a bounded channel: the caller's polls
//! only wait on that channel, so a deadline or a cancel around them fires on
//! time.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

/// Batches a stream driven on the execution runtime may run ahead of its
/// consumer (the channel's bound: back-pressure past it).
pub const BATCHES_AHEAD_MAX: usize = 2;

/// The stream `make` returns, of `schema`, made and polled on `runtime`
/// (None: the caller's own, as in tests and the single-process tools).
/// Operators that spawn tasks when executed (repartitions, merges, joins)
/// spawn them on `runtime` too.
///
/// Dropping the returned stream aborts the driving task at its next await
/// point and drops the inner stream there (which stops its spawned tasks).
///
/// # Errors
/// `make`'s: returned at once when there is no separate runtime, else as the
/// stream's first item.
pub fn drive<F>(
    runtime: Option<&Handle>,
    schema: SchemaRef,
    make: F,
) -> DfResult<SendableRecordBatchStream>
where
    F: FnOnce() -> DfResult<SendableRecordBatchStream> + Send + 'static,
{
    let Some(runtime) = runtime else {
        return make();
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(BATCHES_AHEAD_MAX);
    // The stream is made inside the runtime so that what `execute` spawns
    // lands there.
    let task = AbortOnDropHandle::new(runtime.spawn(async move {
        let mut stream = match make() {
            Ok(stream) => stream,
            Err(e) => {
                let _ = sender.send(Err(e)).await;
                return;
            }
        };
        while let Some(batch) = stream.next().await {
            let failed = batch.is_err();
            if sender.send(batch).await.is_err() || failed {
                return;
            }
        }
    }));
    let batches = futures::stream::unfold((receiver, task), |(mut receiver, task)| async move {
        let batch = receiver.recv().await?;
        Some((batch, (receiver, task)))
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
}

/// `plan`'s output, all partitions merged into one stream (DataFusion's
/// `execute_stream`), run on `runtime`; see [`drive`].
///
/// # Errors
/// DataFusion's, if the plan cannot be executed.
pub fn execute_stream(
    runtime: Option<&Handle>,
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
    drive(runtime, plan.schema(), move || {
        datafusion::physical_plan::execute_stream(plan, context)
    })
}

/// A physical optimizer rule: a yield point ([`CooperativeExec`]) above each
/// join. A join can emit thousands of batches for one batch of its input (a
/// key that matches many rows), and the operator above it (an aggregate)
/// polls it in a loop while it is ready, so without a yield point above it a
/// poll lasts until the join is done: a cancelled or failed query then keeps
/// its execution thread for that long. DataFusion's own rule
/// (`EnsureCooperative`) puts yield points at scans and exchanges only.
/// Each batch a join emits now uses one unit of tokio's task budget; a spent
/// budget makes the poll return (see DataFusion's `coop` module).
#[derive(Debug, Default)]
pub struct JoinYieldPoints;

impl PhysicalOptimizerRule for JoinYieldPoints {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let join = node.is::<HashJoinExec>()
                || node.is::<NestedLoopJoinExec>()
                || node.is::<CrossJoinExec>()
                || node.is::<SortMergeJoinExec>()
                || node.is::<SymmetricHashJoinExec>();
            Ok(if join {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "join_yield_points"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::time::{Duration, Instant};

    fn schema() -> datafusion::arrow::datatypes::SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    /// A stream whose every poll blocks its thread for `busy`, as an operator
    /// over an input that is always ready does.
    fn busy_stream(busy: Duration, batches: usize) -> SendableRecordBatchStream {
        let schema = schema();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
            .expect("batch");
        let stream = futures::stream::iter(0..batches).map(move |_| {
            std::thread::sleep(busy);
            Ok(batch.clone())
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }

    /// Polls of other tasks on a one-thread runtime while a count over a
    /// self-join whose every key matches 400 rows (1.6 M pairs, emitted 64
    /// rows a batch) runs to its end, with or without [`JoinYieldPoints`].
    async fn others_run_during_a_fan_out_join(yield_points: bool) -> u64 {
        let keys = Int64Array::from_iter_values((0..4000).map(|i| i % 10));
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(keys)]).expect("batch");
        let table =
            datafusion::datasource::MemTable::try_new(schema(), vec![vec![batch]]).expect("table");
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(64);
        let mut state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if yield_points {
            state = state.with_physical_optimizer_rule(Arc::new(JoinYieldPoints));
        }
        let ctx = datafusion::prelude::SessionContext::new_with_state(state.build());
        ctx.register_table("t", Arc::new(table)).expect("register");
        let frame = ctx
            .sql("SELECT count(*) FROM t a JOIN t b ON a.n = b.n")
            .await
            .expect("plan");
        let plan = frame.create_physical_plan().await.expect("physical plan");
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert_eq!(shown.contains("CooperativeExec"), yield_points, "{shown}");
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        tokio::task::yield_now().await;
        let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .expect("runs");
        let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
        ticker.abort();
        let count = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count")
            .value(0);
        assert_eq!(count, 1_600_000);
        during
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_join_yields_its_thread_while_it_emits() {
        // Without the rule the join's output is counted in a handful of
        // polls; with it, every 128 batches give the other task a turn.
        let without = others_run_during_a_fan_out_join(false).await;
        let with = others_run_during_a_fan_out_join(true).await;
        assert!(
            with >= 100 && with > 10 * without.max(1),
            "other tasks ran {with} times with yield points, {without} without"
        );
    }

    /// An execution runtime of one worker thread.
    fn one_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_busy_stream_leaves_the_callers_runtime_free() {
        let execution = one_thread_runtime();
        let mut stream = drive(Some(execution.handle()), schema(), || {
            Ok(busy_stream(Duration::from_millis(300), 10))
        })
        .expect("stream");
        // The caller's one worker thread stays free: a timer on it fires on
        // time while the stream's polls block the execution thread.
        let started = Instant::now();
        let first = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(first.is_err(), "no batch within 50 ms");
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "the timeout fired after {:?}",
            started.elapsed()
        );
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.expect("batch").num_rows();
        }
        assert_eq!(rows, 10);
        execution.shutdown_background();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_error_making_the_stream_is_its_first_item() {
        let execution = one_thread_runtime();
        let mut stream = drive(Some(execution.handle()), schema(), || {
            Err(datafusion::error::DataFusionError::Plan("no".to_owned()))
        })
        .expect("stream");
        let first = stream.next().await.expect("an item");
        assert!(first.is_err(), "{first:?}");
        assert!(stream.next().await.is_none());
        execution.shutdown_background();
    }
}
