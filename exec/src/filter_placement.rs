//! Where a scan's filters run: inside the Parquet reader, or after decoding.
//!
//! DataFusion can evaluate a scan's filters inside the Parquet reader
//! (`pushdown_filters`, late materialization): each conjunct is decoded and
//! evaluated first, and the other columns are decoded only for the rows that
//! pass. That pays when few rows pass in long runs, as a join's dynamic
//! filter leaves them on the join key (TPC-H Q17, Q18: most of lineitem's
//! columns are never decoded). For a static filter whose passing rows are
//! scattered through the file it costs more than it saves: arrow-rs keeps
//! the passing rows as a row selection that it intersects and re-splits per
//! conjunct and per batch, and a perf profile of TPC-H Q6 puts a third of its
//! time in that bookkeeping (benches/RESULTS.md, "Filters in the Parquet
//! reader or after decoding").
//!
//! So [`FilterPlacement`] decides per scan, before DataFusion's filter
//! pushdown runs: a scan that will receive a dynamic filter (below a hash
//! join's probe side, or below a TopK sort) keeps its filters in the reader;
//! any other scan has them evaluated after decoding, by the `FilterExec`
//! above it, and still uses them to prune row groups and pages. The session
//! setting `datafusion.execution.parquet.pushdown_filters = true` puts every
//! scan's filters in the reader, as before.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, replace_children_if_necessary};

/// The physical optimizer rule placing each Parquet scan's filters (see the
/// module documentation). It must run before DataFusion's first
/// `FilterPushdown` and after `JoinSelection`, which fixes the join sides.
#[derive(Debug, Default)]
pub struct FilterPlacement;

impl PhysicalOptimizerRule for FilterPlacement {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        place(plan, false, config)
    }

    fn name(&self) -> &str {
        "filter_placement"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with its Parquet scans' reader filtering on where a dynamic filter
/// will reach them (`dynamic`: one from above `plan` does) and off elsewhere.
fn place(
    plan: Arc<dyn ExecutionPlan>,
    dynamic: bool,
    config: &ConfigOptions,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = parquet_scan(&plan) {
        let (config_scan, parquet) = scan;
        if parquet.table_parquet_options().global.pushdown_filters == dynamic {
            return Ok(plan);
        }
        let mut config_scan = config_scan.clone();
        config_scan.file_source = Arc::new(parquet.clone().with_pushdown_filters(dynamic));
        return Ok(DataSourceExec::from_data_source(config_scan));
    }
    let optimizer = &config.optimizer;
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan);
    }
    let join = plan.downcast_ref::<HashJoinExec>();
    let topk = plan
        .downcast_ref::<SortExec>()
        .is_some_and(|s| s.fetch().is_some())
        && optimizer.enable_topk_dynamic_filter_pushdown;
    let mut placed = Vec::with_capacity(children.len());
    for (i, child) in children.into_iter().enumerate() {
        let receives = match join {
            // The build side's keys filter the probe side (the right input),
            // for joins that drop unmatched probe rows.
            Some(join) => {
                (i == 1
                    && join.join_type().on_lr_is_preserved().1
                    && optimizer.enable_join_dynamic_filter_pushdown)
                    || dynamic
            }
            None => topk || dynamic,
        };
        placed.push(place(child.clone(), receives, config)?);
    }
    replace_children_if_necessary(plan, placed)
}

/// `plan`'s scan configuration and Parquet source, when it is a Parquet scan.
fn parquet_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<(&FileScanConfig, &ParquetSource)> {
    let config = plan
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source().downcast_ref::<ParquetSource>()?;
    Some((config, parquet))
}

/// DataFusion's physical optimizer rules with [`FilterPlacement`] before its
/// first filter pushdown, and `extra` at the end.
pub fn physical_rules(
    extra: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "FilterPushdown")
        .expect("DataFusion's physical optimizer pushes filters down");
    rules.insert(at, Arc::new(FilterPlacement));
    rules.extend(extra);
    rules
}
