//! DELETE and UPDATE by copy-on-write of data files (storage/FORMAT.md says why).
//!
//! For each data file whose zone maps allow a matching row, the file is read,
//! the WHERE predicate evaluated per row, and, if any row matches, the file is
//! rewritten: DELETE keeps the rows that do not match, UPDATE also keeps the
//! matching rows with the SET expressions applied. The new file replaces the old
//! one in the transaction's write set; files without a match stay untouched.
//! A DELETE whose WHERE holds for every row of a file by its zone maps (a
//! whole partition of a partitioned table) removes the file unread. At
//! commit the replacement conflicts (40001) with any concurrent commit that
//! replaced the same file first.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeIterator, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result as DfResult};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use quarry_common::SqlState;
use quarry_common::catalog::{DataFile, Table};

use crate::data_file::{DataFileWriter, WriteSet};
use crate::error::{to_engine, user_error};
use crate::table::SnapshotTable;

/// Executes a DELETE (no assignments) or UPDATE over the candidate files of one
/// table; yields one row with the number of rows deleted or updated.
pub struct RewriteExec {
    table: Arc<Table>,
    source: SnapshotTable,
    writes: Arc<WriteSet>,
    files: Vec<DataFile>,
    /// For each of `files`, whether every row matches (a DELETE removes it
    /// unread).
    whole: Vec<bool>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    /// (column index, new value) for UPDATE; empty for DELETE.
    assignments: Vec<(usize, Arc<dyn PhysicalExpr>)>,
    properties: Arc<PlanProperties>,
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

/// `expr` with table qualifiers removed, to evaluate against the table's schema.
pub(crate) fn unqualified(expr: Expr) -> DfResult<Expr> {
    expr.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            Column::new_unqualified(c.name),
        ))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

impl RewriteExec {
    /// Plans the rewrite of `target` for rows matching all of `filters`.
    ///
    /// # Errors
    /// 0A000 for a time-travel (read-only) table or a predicate that needs a
    /// subquery; planning errors of the expressions.
    pub fn plan(
        target: &SnapshotTable,
        state: &dyn Session,
        filters: Vec<Expr>,
        assignments: Vec<(String, Expr)>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(writes) = target.writes().cloned() else {
            return Err(to_engine(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "cannot change a table read as of a past time",
            )));
        };
        let mut subquery = false;
        for filter in &filters {
            filter.apply(|e| {
                if matches!(
                    e,
                    Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
                ) {
                    subquery = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        if subquery {
            return Err(to_engine(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "DELETE and UPDATE with subqueries in WHERE are not supported yet",
            )));
        }
        let filters = filters
            .into_iter()
            .map(unqualified)
            .collect::<DfResult<Vec<_>>>()?;
        let table = target.table().clone();
        let df_schema = DFSchema::try_from(crate::types::table_schema(&table).as_ref().clone())?;
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => Some(state.create_physical_expr(expr, &df_schema)?),
            None => None,
        };
        let files = target.prune(state, target.visible_files(), &filters)?;
        // A DELETE whose WHERE holds for every row of a file, by the file's
        // zone maps, removes the file without reading it (a whole
        // partition, for one).
        let whole = if assignments.is_empty() && !filters.is_empty() {
            target.wholly_matching(state, &files, &filters)?
        } else {
            vec![false; files.len()]
        };
        let mut physical_assignments = Vec::with_capacity(assignments.len());
        for (name, expr) in assignments {
            let index = table
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| DataFusionError::Plan(format!("column '{name}' not found")))?;
            physical_assignments.push((
                index,
                state.create_physical_expr(unqualified(expr)?, &df_schema)?,
            ));
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(RewriteExec {
            // With the write set: the transaction's own files held in
            // memory are read from there.
            source: SnapshotTable::new(
                table.clone(),
                0,
                target.chunks().clone(),
                Some(writes.clone()),
            ),
            table,
            writes,
            files,
            whole,
            predicate,
            assignments: physical_assignments,
            properties,
        }))
    }
}

impl RewriteExec {
    /// Bytes of the data files it reads: those it may rewrite (a file
    /// removed whole is not read).
    pub fn bytes_read(&self) -> u64 {
        self.files
            .iter()
            .zip(&self.whole)
            .filter(|(_, whole)| !**whole)
            .map(|(f, _)| f.size_bytes)
            .sum()
    }
}

impl fmt::Debug for RewriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RewriteExec({}.{})", self.table.schema, self.table.name)
    }
}

impl DisplayAs for RewriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QuarryRewriteExec: table={}.{}, op={}, candidate_files={}",
            self.table.schema,
            self.table.name,
            if self.assignments.is_empty() {
                "delete"
            } else {
                "update"
            },
            self.files.len()
        )
    }
}

/// Rewrites one data file; returns the rows it deleted or updated (0: the file
/// is left as it is).
async fn rewrite_file(
    source: &SnapshotTable,
    table: &Arc<Table>,
    writes: &Arc<WriteSet>,
    file: &DataFile,
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    assignments: &[(usize, Arc<dyn PhysicalExpr>)],
    context: Arc<TaskContext>,
) -> DfResult<u64> {
    let scan = source.file_scan(vec![file.clone()], 1, None, None)?;
    let mut batches = scan.execute(0, context)?;
    let mut output = Vec::new();
    let mut changed = 0u64;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let matched = match predicate {
            Some(predicate) => {
                let value = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let value = value
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        DataFusionError::Plan("WHERE must be a boolean expression".to_owned())
                    })?;
                // NULL does not match, as in WHERE.
                if value.null_count() > 0 {
                    prep_null_mask_filter(value)
                } else {
                    value.clone()
                }
            }
            None => BooleanArray::from(vec![true; batch.num_rows()]),
        };
        changed += matched.true_count() as u64;
        output.push(filter_record_batch(&batch, &not(&matched)?)?);
        if !assignments.is_empty() && matched.true_count() > 0 {
            let hits = filter_record_batch(&batch, &matched)?;
            let mut columns = hits.columns().to_vec();
            for (index, expr) in assignments {
                columns[*index] = expr.evaluate(&hits)?.into_array(hits.num_rows())?;
            }
            let fields: Vec<Field> = columns
                .iter()
                .zip(&table.columns)
                .map(|(c, def)| Field::new(&def.name, c.data_type().clone(), true))
                .collect();
            output.push(RecordBatch::try_new(
                Arc::new(Schema::new(fields)),
                columns,
            )?);
        }
    }
    if changed == 0 {
        return Ok(0);
    }
    let mut writer = DataFileWriter::new(table.clone(), writes.clone());
    for batch in output {
        writer.write(batch).await.map_err(to_engine)?;
    }
    writer.finish().await.map_err(to_engine)?;
    writes.remove(table.id, file.chunk);
    Ok(changed)
}

impl ExecutionPlan for RewriteExec {
    fn name(&self) -> &'static str {
        "QuarryRewriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.predicate
            .iter()
            .chain(self.assignments.iter().map(|(_, e)| e))
            .apply_until_stop(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "RewriteExec has one partition, not {partition}"
            )));
        }
        let source = SnapshotTable::new(
            self.table.clone(),
            0,
            self.source.chunks().clone(),
            Some(self.writes.clone()),
        );
        let table = self.table.clone();
        let writes = self.writes.clone();
        let files = self.files.clone();
        let whole = self.whole.clone();
        let predicate = self.predicate.clone();
        let assignments = self.assignments.clone();
        let schema = count_schema();
        let result_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let mut count = 0;
            for (file, whole) in files.iter().zip(whole) {
                if whole {
                    writes.remove(table.id, file.chunk);
                    count += file.row_count;
                    continue;
                }
                count += rewrite_file(
                    &source,
                    &table,
                    &writes,
                    file,
                    predicate.as_ref(),
                    &assignments,
                    context.clone(),
                )
                .await?;
            }
            RecordBatch::try_new(
                result_schema,
                vec![Arc::new(UInt64Array::from(vec![count]))],
            )
            .map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
