//! A table read with the identity of each row: which data file holds it and
//! at which position, for the statements that delete rows by deletion
//! vector after a join (MERGE; docs/DATA_LAYOUT.md, "Row-level changes").
//!
//! The row id is `file index << 32 | position`: the index of the data file
//! among the files the scan reads, and the row's position in that file,
//! counted as the deletion vector counts (rows deleted before included).
//! The files are read whole and in order, without filters pushed into the
//! Parquet reader, so each row's position follows from the rows before it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use quarry_common::catalog::DataFile;

use crate::table::SnapshotTable;

/// The column a [`RowIdTable`] adds after the table's own.
pub const ROW_ID_COLUMN: &str = "__quarry_row_id";

/// The data file index and position a row id names.
pub fn split_row_id(id: u64) -> (usize, u32) {
    ((id >> 32) as usize, id as u32)
}

/// A table's rows with their row ids (see the module's documentation).
#[derive(Debug)]
pub struct RowIdTable {
    source: Arc<SnapshotTable>,
    files: Vec<DataFile>,
    schema: SchemaRef,
}

impl RowIdTable {
    /// The rows of `source` (its visible files, the transaction's own
    /// included) with their row ids.
    pub fn new(source: SnapshotTable) -> Self {
        let files = source.visible_files();
        let table_schema = datafusion::catalog::TableProvider::schema(&source);
        let mut fields: Vec<Field> = table_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW_ID_COLUMN, DataType::UInt64, false));
        RowIdTable {
            source: Arc::new(source),
            files,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// The table read, at its snapshot, with the transaction's writes.
    pub fn source(&self) -> &SnapshotTable {
        &self.source
    }

    /// The data files, in the order of the row ids' file indexes.
    pub fn files(&self) -> &[DataFile] {
        &self.files
    }
}

#[async_trait]
impl datafusion::catalog::TableProvider for RowIdTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columns = self.schema.fields().len() - 1;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..=columns).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let partitions = state
            .config()
            .target_partitions()
            .clamp(1, self.files.len().max(1));
        Ok(Arc::new(RowIdExec {
            source: self.source.clone(),
            files: self.files.clone(),
            projection,
            columns,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(partitions),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            schema,
        }))
    }
}

/// Reads files `i`, `i + n`, `i + 2n`, ... in partition `i` of `n`, each
/// whole and in order, and adds the row ids.
struct RowIdExec {
    source: Arc<SnapshotTable>,
    files: Vec<DataFile>,
    /// Indexes into the table's columns and then the row id (`columns`).
    projection: Vec<usize>,
    columns: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for RowIdExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowIdExec({} files)", self.files.len())
    }
}

impl DisplayAs for RowIdExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuarryRowIdExec: files={}", self.files.len())
    }
}

/// The positions in its data file of the rows a scan of the file reads in
/// order: every position, less those of the rows deleted before.
pub(crate) struct Positions {
    deleted: Option<roaring::RoaringBitmap>,
    next: u32,
}

impl Positions {
    /// The positions of the rows read from a file whose `deleted` rows
    /// the scan skips.
    pub(crate) fn new(deleted: Option<roaring::RoaringBitmap>) -> Self {
        Positions { deleted, next: 0 }
    }

    /// The position of the next row read.
    pub(crate) fn next_row(&mut self) -> u32 {
        while self.deleted.as_ref().is_some_and(|d| d.contains(self.next)) {
            self.next += 1;
        }
        self.next += 1;
        self.next - 1
    }
}

/// The row ids of the next `rows` rows of file `index`.
fn row_ids(index: usize, rows: usize, positions: &mut Positions) -> UInt64Array {
    (0..rows)
        .map(|_| ((index as u64) << 32) | u64::from(positions.next_row()))
        .collect()
}

impl ExecutionPlan for RowIdExec {
    fn name(&self) -> &'static str {
        "QuarryRowIdExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
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
        let partitions = self.properties.partitioning.partition_count();
        if partition >= partitions {
            return Err(DataFusionError::Internal(format!(
                "RowIdExec has {partitions} partitions, not {partition}"
            )));
        }
        let mine: Vec<(usize, DataFile)> = self
            .files
            .iter()
            .cloned()
            .enumerate()
            .skip(partition)
            .step_by(partitions)
            .collect();
        let source = self.source.clone();
        let schema = self.schema.clone();
        let columns = self.columns;
        // Where each output column comes from: a column of the file scan
        // (in `read` order), or the row id.
        let read: Vec<usize> = self
            .projection
            .iter()
            .copied()
            .filter(|i| *i < columns)
            .collect();
        let output: Vec<Option<usize>> = self
            .projection
            .iter()
            .map(|i| read.iter().position(|r| r == i))
            .collect();
        let stream = futures::stream::iter(mine)
            .then(move |(index, file)| {
                let source = source.clone();
                let read = read.clone();
                let output = output.clone();
                let schema = schema.clone();
                let context = context.clone();
                async move {
                    let mut positions = Positions::new(source.deleted_rows(&file));
                    let scan = source.file_scan(vec![file], 1, Some(read), None)?;
                    let batches = scan.execute(0, context)?;
                    Ok::<_, DataFusionError>(batches.map(move |batch| {
                        let batch = batch?;
                        let ids: ArrayRef =
                            Arc::new(row_ids(index, batch.num_rows(), &mut positions));
                        let arrays: Vec<ArrayRef> = output
                            .iter()
                            .map(|from| match from {
                                Some(i) => batch.column(*i).clone(),
                                None => ids.clone(),
                            })
                            .collect();
                        Ok(RecordBatch::try_new_with_options(
                            schema.clone(),
                            arrays,
                            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
                        )?)
                    }))
                }
            })
            .map(|scan| match scan {
                Ok(batches) => batches.boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
