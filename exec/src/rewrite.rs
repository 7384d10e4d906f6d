//! DELETE and UPDATE: merge-on-read by deletion vectors, or copy-on-write of
//! data files (docs/DATA_LAYOUT.md, "Row-level changes").
//!
//! For each data file whose zone maps allow a matching row, the file is read
//! (less the rows already deleted) and the WHERE predicate evaluated per
//! row. When the rows it matches leave at least half of the file's rows in
//! place, their positions join the file's deletion vector in the
//! transaction's write set and the file stays; UPDATE writes the matching
//! rows, with the SET expressions applied, to new files. Otherwise the file
//! is rewritten: DELETE keeps the rows that do not match, UPDATE also keeps
//! the matching rows changed, and the new file replaces the old one (so is a
//! file the transaction wrote itself). A DELETE that matches every row of a
//! file, or whose WHERE holds for every row of it by its zone maps (a whole
//! partition of a partitioned table), removes the file.
//!
//! At commit, deleting a row that a concurrent commit deleted first, or
//! replacing a file that a concurrent commit replaced or deleted rows of
//! first, fails (40001); deletes of different rows of one file both commit.

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
use quarry_common::catalog::{DataFile, SnapshotId, Table};
use roaring::RoaringBitmap;

use crate::data_file::{DataFileWriter, WriteSet};
use crate::error::{to_engine, user_error};
use crate::table::SnapshotTable;

/// Executes a DELETE (no assignments) or UPDATE over the candidate files of one
/// table; yields one row with the number of rows deleted or updated.
pub struct RewriteExec {
    table: Arc<Table>,
    /// The snapshot read.
    snapshot: SnapshotId,
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
                target.snapshot_id(),
                target.chunks().clone(),
                Some(writes.clone()),
            ),
            snapshot: target.snapshot_id(),
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

/// A rewrite of the files of one statement: what it reads with, and the
/// writer of the rows UPDATE changes in files that keep their place.
struct Rewrite<'a> {
    source: &'a SnapshotTable,
    table: &'a Arc<Table>,
    writes: &'a Arc<WriteSet>,
    predicate: Option<&'a Arc<dyn PhysicalExpr>>,
    assignments: &'a [(usize, Arc<dyn PhysicalExpr>)],
    /// Rows UPDATE changed, created on the first.
    updated: Option<DataFileWriter>,
}

/// Whether deleting `matched` more rows of a file of `rows` rows, `deleted`
/// of them deleted before, by its deletion vector leaves at least half of
/// its rows in place (else the file is rewritten without them).
pub(crate) fn by_vector(rows: u64, deleted: u64, matched: u64) -> bool {
    (deleted + matched) * 2 <= rows
}

/// Whether `more` rows of data file `file` of table `table`, whose rows
/// `deleted` are deleted already, are deleted by its deletion vector: the
/// file is committed (not one the transaction wrote), the session's
/// `dml_mode` is merge-on-read, and [`by_vector`] holds.
fn deletes_by_vector(
    writes: &WriteSet,
    table: quarry_common::catalog::TableId,
    file: &DataFile,
    deleted: Option<&RoaringBitmap>,
    more: u64,
) -> bool {
    let own = writes.added_to(table).iter().any(|f| f.chunk == file.chunk);
    !own && writes.merge_on_read()
        && by_vector(file.row_count, deleted.map_or(0, |d| d.len()), more)
}

/// Deletes the rows at `positions` of data file `file` of `source`'s table
/// in the transaction's write set: by removing the file when they are all
/// its rows left; by deletion vector when that leaves at least half of the
/// file's rows (see [`by_vector`]), the file is committed and the session's
/// `dml_mode` allows; otherwise by writing the file's other rows to
/// `writer` and replacing the file.
///
/// # Errors
/// Reading the file or writing its rows.
pub(crate) async fn delete_positions(
    source: &SnapshotTable,
    writes: &Arc<WriteSet>,
    file: &DataFile,
    positions: &RoaringBitmap,
    writer: &mut DataFileWriter,
    context: Arc<TaskContext>,
) -> DfResult<()> {
    let table = source.table().id;
    let deleted = source.deleted_rows(file);
    // Every row left: the file goes, unread.
    if positions.len() == file.row_count - deleted.as_ref().map_or(0, |d| d.len()) {
        writes.remove(table, file.chunk);
        return Ok(());
    }
    if deletes_by_vector(writes, table, file, deleted.as_ref(), positions.len()) {
        writes.delete_rows(table, file.chunk, positions);
        return Ok(());
    }
    let scan = source.file_scan(vec![file.clone()], 1, None, None)?;
    let mut batches = scan.execute(0, context)?;
    let mut read = crate::row_id::Positions::new(deleted);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|_| Some(!positions.contains(read.next_row())))
            .collect();
        writer
            .write(filter_record_batch(&batch, &keep)?)
            .await
            .map_err(to_engine)?;
    }
    writes.remove(table, file.chunk);
    Ok(())
}

impl Rewrite<'_> {
    /// The rows of `batch` that `assignments` change, with their new values.
    fn updated(&self, batch: &RecordBatch, matched: &BooleanArray) -> DfResult<RecordBatch> {
        let hits = filter_record_batch(batch, matched)?;
        let mut columns = hits.columns().to_vec();
        for (index, expr) in self.assignments {
            columns[*index] = expr.evaluate(&hits)?.into_array(hits.num_rows())?;
        }
        let fields: Vec<Field> = columns
            .iter()
            .zip(&self.table.columns)
            .map(|(c, def)| Field::new(&def.name, c.data_type().clone(), true))
            .collect();
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// Which rows of `batch` the WHERE matches (NULL does not, as in WHERE).
    fn matches(&self, batch: &RecordBatch) -> DfResult<BooleanArray> {
        let Some(predicate) = self.predicate else {
            return Ok(BooleanArray::from(vec![true; batch.num_rows()]));
        };
        let value = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let value = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                DataFusionError::Plan("WHERE must be a boolean expression".to_owned())
            })?;
        Ok(if value.null_count() > 0 {
            prep_null_mask_filter(value)
        } else {
            value.clone()
        })
    }

    /// Deletes or updates the matching rows of one data file; returns how
    /// many (0: the file is left as it is).
    async fn file(&mut self, file: &DataFile, context: Arc<TaskContext>) -> DfResult<u64> {
        let deleted = self.source.deleted_rows(file);
        let scan = self.source.file_scan(vec![file.clone()], 1, None, None)?;
        let mut batches = scan.execute(0, context)?;
        let mut batches_read = Vec::new();
        let mut matches = Vec::new();
        let mut changed = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let matched = self.matches(&batch)?;
            changed += matched.true_count() as u64;
            batches_read.push(batch);
            matches.push(matched);
        }
        if changed == 0 {
            return Ok(0);
        }
        let live = file.row_count - deleted.as_ref().map_or(0, |d| d.len());
        if changed == live && self.assignments.is_empty() {
            self.writes.remove(self.table.id, file.chunk);
            return Ok(changed);
        }
        if deletes_by_vector(self.writes, self.table.id, file, deleted.as_ref(), changed) {
            // The positions of the rows read: the file's, less those
            // deleted, in order.
            let mut rows = RoaringBitmap::new();
            let mut read = crate::row_id::Positions::new(deleted);
            for matched in &matches {
                for hit in matched.iter() {
                    let position = read.next_row();
                    if hit == Some(true) {
                        rows.insert(position);
                    }
                }
            }
            if !self.assignments.is_empty() {
                for (batch, matched) in batches_read.iter().zip(&matches) {
                    if matched.true_count() == 0 {
                        continue;
                    }
                    let updated = self.updated(batch, matched)?;
                    let writer = self.updated.get_or_insert_with(|| {
                        DataFileWriter::new(self.table.clone(), self.writes.clone())
                    });
                    writer.write(updated).await.map_err(to_engine)?;
                }
            }
            self.writes.delete_rows(self.table.id, file.chunk, &rows);
            return Ok(changed);
        }
        let mut writer = DataFileWriter::new(self.table.clone(), self.writes.clone());
        for (batch, matched) in batches_read.iter().zip(&matches) {
            writer
                .write(filter_record_batch(batch, &not(matched)?)?)
                .await
                .map_err(to_engine)?;
            if !self.assignments.is_empty() && matched.true_count() > 0 {
                writer
                    .write(self.updated(batch, matched)?)
                    .await
                    .map_err(to_engine)?;
            }
        }
        writer.finish().await.map_err(to_engine)?;
        self.writes.remove(self.table.id, file.chunk);
        Ok(changed)
    }

    /// Writes out the rows UPDATE changed in files that keep their place.
    async fn finish(self) -> DfResult<()> {
        if let Some(writer) = self.updated {
            writer.finish().await.map_err(to_engine)?;
        }
        Ok(())
    }
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
            self.snapshot,
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
            let mut rewrite = Rewrite {
                source: &source,
                table: &table,
                writes: &writes,
                predicate: predicate.as_ref(),
                assignments: &assignments,
                updated: None,
            };
            for (file, whole) in files.iter().zip(whole) {
                if whole {
                    count += file.row_count - source.deleted_rows(file).map_or(0, |d| d.len());
                    writes.remove(table.id, file.chunk);
                    continue;
                }
                count += rewrite.file(file, context.clone()).await?;
            }
            rewrite.finish().await?;
            RecordBatch::try_new(
                result_schema,
                vec![Arc::new(UInt64Array::from(vec![count]))],
            )
            .map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
