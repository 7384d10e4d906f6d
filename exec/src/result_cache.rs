//! Cached query results, as BigQuery's
//! (<https://cloud.google.com/bigquery/docs/cached-results>): a query whose
//! plan, session settings, user and every table snapshot it reads are those
//! of an earlier one is answered with that query's rows, read from no data
//! file.
//!
//! The key names the snapshot of each table the plan scans, so a commit to
//! any of them (a new snapshot) makes the next run a miss: nothing is ever
//! invalidated, entries of old snapshots just stop being asked for and
//! leave as the cache needs room (quick_cache's CLOCK-Pro) or after
//! [`TTL`] (24 hours). A plan is cacheable only when every
//! scan is of a table's snapshot (not a system table, an external table's
//! files, or a transaction's own uncommitted rows) and every function in it
//! is immutable: `now()`, `random()` and the like are never cached. The key
//! is taken after the statement is planned, so privileges are checked on
//! every run, hit or miss. Results past an eighth of the cache's capacity
//! are not kept. `SET use_query_cache = off` bypasses the cache, as
//! BigQuery's `useQueryCache=false`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::table::SnapshotTable;

/// How long an entry may answer, as BigQuery's 24 hours.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// Entries expected per byte of capacity (for quick_cache's sizing).
const BYTES_PER_ENTRY: u64 = 64 << 10;

/// The results of recent queries, by what makes a result the same.
pub struct ResultCache {
    entries: quick_cache::sync::Cache<String, Arc<Entry>, EntryWeight>,
    entry_bytes_max: usize,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

/// One query's rows.
#[derive(Debug)]
pub struct Entry {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    stored_at: Instant,
}

#[derive(Debug, Clone)]
struct EntryWeight;

impl quick_cache::Weighter<String, Arc<Entry>> for EntryWeight {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        let rows: usize = entry
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        (key.len() + rows).max(1) as u64
    }
}

impl ResultCache {
    /// A cache of at most `capacity_bytes` of results (0: none is kept).
    pub fn new(capacity_bytes: u64) -> Self {
        let items = (capacity_bytes / BYTES_PER_ENTRY).max(16) as usize;
        ResultCache {
            entries: quick_cache::sync::Cache::with_weighter(
                items,
                capacity_bytes.max(1),
                EntryWeight,
            ),
            entry_bytes_max: (capacity_bytes / 8) as usize,
        }
    }

    /// The stored rows of `key` as a stream, if they are there and young
    /// enough.
    pub fn get(&self, key: &str) -> Option<SendableRecordBatchStream> {
        let entry = self.entries.get(key)?;
        if entry.stored_at.elapsed() > TTL {
            self.entries.remove(key);
            return None;
        }
        let batches = entry.batches.clone();
        Some(Box::pin(RecordBatchStreamAdapter::new(
            entry.schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        )))
    }

    /// `stream`, whose rows are kept under `key` once it has ended without
    /// an error, if they are no more than an eighth of the capacity. A
    /// stream dropped before its end (a cancelled statement) keeps nothing.
    pub fn store_after(
        self: &Arc<Self>,
        key: String,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let state = Keeping {
            inner: stream,
            kept: Some((Vec::new(), 0)),
            key: Some(key),
            cache: self.clone(),
        };
        let passing = futures::stream::unfold(state, |mut state| async move {
            match state.inner.next().await {
                Some(batch) => {
                    state.keep(&batch);
                    Some((batch, state))
                }
                None => {
                    state.store();
                    None
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, passing))
    }
}

/// A stream whose batches are kept as they pass, for the cache.
struct Keeping {
    inner: SendableRecordBatchStream,
    /// The batches so far and their bytes; None once too large to keep or
    /// after an error.
    kept: Option<(Vec<RecordBatch>, usize)>,
    key: Option<String>,
    cache: Arc<ResultCache>,
}

impl Keeping {
    fn keep(&mut self, batch: &datafusion::error::Result<RecordBatch>) {
        let Some((batches, bytes)) = self.kept.as_mut() else {
            return;
        };
        match batch {
            Ok(batch) => {
                *bytes += batch.get_array_memory_size();
                if *bytes > self.cache.entry_bytes_max {
                    self.kept = None;
                } else {
                    batches.push(batch.clone());
                }
            }
            Err(_) => self.kept = None,
        }
    }

    fn store(&mut self) {
        if let (Some(key), Some((batches, _))) = (self.key.take(), self.kept.take()) {
            let entry = Entry {
                schema: self.inner.schema(),
                batches,
                stored_at: Instant::now(),
            };
            self.cache.entries.insert(key, Arc::new(entry));
        }
    }
}

/// The key of `plan` run by `user` with `settings`, or None when its result
/// may not be cached: a scan of anything but a table's snapshot, or a
/// function that is not immutable. (A transaction's own uncommitted rows
/// are the caller's to exclude.)
pub fn key_of(
    plan: &LogicalPlan,
    user: &str,
    settings: &BTreeMap<String, String>,
) -> Option<String> {
    // EXPLAIN shows a plan, EXPLAIN ANALYZE how a run went: neither is a
    // result to repeat.
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return None;
    }
    let mut snapshots = Vec::new();
    let mut cacheable = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source).ok();
            match provider
                .as_ref()
                .and_then(|p| p.downcast_ref::<SnapshotTable>())
            {
                Some(table) => {
                    snapshots.push((table.table().id, table.snapshot_id()));
                }
                None => {
                    cacheable = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if !immutable(e) {
                    cacheable = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if cacheable {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    if !cacheable || snapshots.is_empty() {
        return None;
    }
    snapshots.sort_unstable();
    Some(format!(
        "{user}\n{settings:?}\n{snapshots:?}\n{}",
        plan.display_indent()
    ))
}

/// Whether `expr` itself gives the same value for the same inputs.
fn immutable(expr: &Expr) -> bool {
    match expr {
        Expr::ScalarFunction(f) => f.func.signature().volatility == Volatility::Immutable,
        Expr::AggregateFunction(f) => f.func.signature().volatility == Volatility::Immutable,
        Expr::WindowFunction(f) => match &f.fun {
            datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(udf) => {
                udf.signature().volatility == Volatility::Immutable
            }
            datafusion::logical_expr::WindowFunctionDefinition::WindowUDF(udf) => {
                udf.signature().volatility == Volatility::Immutable
            }
        },
        Expr::Placeholder(_) => false,
        _ => true,
    }
}
