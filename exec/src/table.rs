//! [`SnapshotTable`]: a DataFusion table over one snapshot of a Quarry table.
//!
//! Scans prune data files by their zone maps, then read the survivors as Parquet
//! through DataFusion's Parquet source (projection, row-group and page pruning,
//! filter pushdown). Each file's bytes come from the chunk store, verified against
//! the checksum recorded in the snapshot. Inserts write new data files into the
//! statement's [`WriteSet`]; the session commits them.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, UInt64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetFileMetrics, ParquetFileReaderFactory,
    ParquetSource,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use datafusion::physical_expr::expressions::col as physical_col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use datafusion_datasource::compute_all_files_statistics;
use datafusion_datasource::file_groups::FileGroupPartitioner;
use futures::StreamExt;
use futures::future::BoxFuture;
use quarry_common::SqlState;
use quarry_common::catalog::{ColumnType, DataFile, FieldId, SnapshotId, Table, TableId};
use quarry_storage::ChunkRef;
use roaring::RoaringBitmap;

use crate::buffer::BufferedFiles;
use crate::chunks::DataFileStore;

use crate::data_file::{DataFileWriter, WriteSet, scalar_of};
use crate::error::{Error, to_engine, user_error};

/// One table at one snapshot, as DataFusion sees it.
#[derive(Debug)]
pub struct SnapshotTable {
    table: Arc<Table>,
    /// The snapshot's columns (older snapshots keep older columns).
    columns: Vec<quarry_common::catalog::Column>,
    /// DEFAULT expressions by column name, for INSERTs that omit columns.
    defaults: HashMap<String, Expr>,
    snapshot: SnapshotId,
    schema: SchemaRef,
    chunks: Arc<dyn DataFileStore>,
    /// Where inserts put their files; None for a read-only (time-travel) view.
    writes: Option<Arc<WriteSet>>,
}

impl SnapshotTable {
    /// `table` at `snapshot`. With `writes`, INSERT is allowed and its files go there.
    pub fn new(
        table: Arc<Table>,
        snapshot: SnapshotId,
        chunks: Arc<dyn DataFileStore>,
        writes: Option<Arc<WriteSet>>,
    ) -> Self {
        let columns = columns_at(&table, snapshot);
        let schema = crate::types::schema_of(&columns);
        let defaults = columns
            .iter()
            .filter_map(|c| {
                c.default.as_ref().map(|d| {
                    (
                        c.name.clone(),
                        Expr::Literal(scalar_of(Some(d), &c.column_type), None),
                    )
                })
            })
            .collect();
        SnapshotTable {
            schema,
            columns,
            defaults,
            table,
            snapshot,
            chunks,
            writes,
        }
    }

    /// This table with its columns declared as named composite types (or
    /// arrays of them) described by those types' oids, by column name
    /// ([`crate::types::PG_TYPE_OID_KEY`]).
    pub fn with_type_oids(mut self, oids: &[(String, i32)]) -> Self {
        if oids.is_empty() {
            return self;
        }
        let fields: Vec<_> = self
            .schema
            .fields()
            .iter()
            .map(
                |field| match oids.iter().find(|(name, _)| name == field.name()) {
                    Some((_, oid)) => {
                        let mut metadata = field.metadata().clone();
                        metadata.insert(crate::types::PG_TYPE_OID_KEY.to_owned(), oid.to_string());
                        Arc::new(field.as_ref().clone().with_metadata(metadata))
                    }
                    None => field.clone(),
                },
            )
            .collect();
        self.schema = Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
            fields,
            self.schema.metadata().clone(),
        ));
        self
    }

    /// The data files this scan sees: the snapshot's, less those the transaction
    /// replaced, plus those it wrote. Reading records the snapshot in the
    /// transaction's read set.
    fn files(&self) -> Vec<DataFile> {
        let snapshot_files = self.table.files_at(self.snapshot);
        let Some(writes) = &self.writes else {
            return snapshot_files.cloned().collect();
        };
        writes.record_read(self.table.id, self.snapshot);
        let removed = writes.removed_from(self.table.id);
        let mut files: Vec<DataFile> = snapshot_files
            .filter(|f| !removed.contains(&f.chunk))
            .cloned()
            .collect();
        files.extend(writes.added_to(self.table.id));
        files
    }

    /// The columns of the snapshot read.
    pub fn columns(&self) -> &[quarry_common::catalog::Column] {
        &self.columns
    }

    /// The table this reads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The snapshot this reads.
    pub fn snapshot_id(&self) -> SnapshotId {
        self.snapshot
    }

    /// The write set inserts and rewrites go to, if writable.
    pub fn writes(&self) -> Option<&Arc<WriteSet>> {
        self.writes.as_ref()
    }

    /// The chunk store.
    pub fn chunks(&self) -> &Arc<dyn DataFileStore> {
        &self.chunks
    }

    /// The data files this scan sees (see `SnapshotTable::files`).
    pub fn visible_files(&self) -> Vec<DataFile> {
        self.files()
    }

    /// `files` less those whose partition (for a partitioned table), then
    /// whose zone maps, show no row can match `filters`.
    ///
    /// # Errors
    /// If the filters cannot be planned.
    pub fn prune(
        &self,
        state: &dyn Session,
        mut files: Vec<DataFile>,
        filters: &[Expr],
    ) -> DfResult<Vec<DataFile>> {
        let Some(expr) = conjunction(filters.iter().cloned()) else {
            return Ok(files);
        };
        let (expr, leaves) = leaves_as_columns(expr, &self.columns)?;
        let schema = with_leaf_columns(&self.schema, &leaves);
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let predicate = state.create_physical_expr(expr, &df_schema)?;
        let pruning = PruningPredicateBuilder::new()
            .with_file_schema(schema)
            .build(predicate);
        if let Some(pruning) = pruning {
            // Whole partitions first, from metadata alone.
            if let Some(partitioning) = &self.table.partitioning {
                files = crate::partition::prune_partitions(
                    partitioning,
                    &self.columns,
                    &pruning,
                    files,
                )?;
            }
            let keep = pruning.prune(&ZoneMaps {
                columns: &self.columns,
                leaves: &leaves,
                files: &files,
            })?;
            let mut keep = keep.into_iter();
            files.retain(|_| keep.next().unwrap_or(true));
        }
        Ok(files)
    }

    /// For each of `files`, whether `filters` hold for every one of its rows
    /// by its zone maps: no row can fail them (their negation prunes the
    /// file) and no column they read holds a NULL.
    ///
    /// # Errors
    /// If the filters cannot be planned.
    pub fn wholly_matching(
        &self,
        state: &dyn Session,
        files: &[DataFile],
        filters: &[Expr],
    ) -> DfResult<Vec<bool>> {
        let none = vec![false; files.len()];
        let Some(expr) = conjunction(filters.iter().cloned()) else {
            return Ok(none);
        };
        let read: Vec<&quarry_common::catalog::Column> = expr
            .column_refs()
            .iter()
            .filter_map(|c| self.columns.iter().find(|def| def.name == c.name))
            .collect();
        let df_schema = Arc::new(DFSchema::try_from(self.schema.as_ref().clone())?);
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(df_schema.clone())
                .build(),
        );
        // NOT pushed into the comparisons, which pruning understands.
        let negated = simplifier.simplify(Expr::Not(Box::new(expr)))?;
        let predicate = state.create_physical_expr(negated, &df_schema)?;
        let Some(pruning) = PruningPredicateBuilder::new()
            .with_file_schema(self.schema.clone())
            .build(predicate)
        else {
            return Ok(none);
        };
        let may_fail = pruning.prune(&ZoneMaps {
            columns: &self.columns,
            leaves: &[],
            files,
        })?;
        Ok(files
            .iter()
            .zip(may_fail)
            .map(|(file, may_fail)| {
                !may_fail
                    && read.iter().all(|def| {
                        file.column_stats
                            .iter()
                            .any(|s| s.field_id == def.field_id && s.null_count == 0)
                    })
            })
            .collect())
    }

    /// Whether the table's data files carry bloom filters
    /// (`bloom_filter_columns`: docs/DATA_LAYOUT.md).
    fn has_bloom_filters(&self) -> bool {
        self.table
            .file_layout
            .as_ref()
            .is_some_and(|layout| !layout.bloom_filters.is_empty())
    }

    /// The order of a clustered table's rows within each data file (every
    /// writer sorts them: docs/DATA_LAYOUT.md), for DataFusion, which keeps
    /// it for a scan only where the files it reads in turn do not overlap
    /// by their statistics; none for other tables.
    fn cluster_ordering(&self) -> DfResult<Vec<LexOrdering>> {
        let Some(layout) = &self.table.file_layout else {
            return Ok(Vec::new());
        };
        let mut exprs = Vec::new();
        for id in &layout.cluster_by {
            let Some(column) = self.columns.iter().find(|c| c.field_id == *id) else {
                break;
            };
            exprs.push(PhysicalSortExpr {
                expr: physical_col(&column.name, &self.schema)?,
                options: SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            });
        }
        Ok(LexOrdering::new(exprs).into_iter().collect())
    }

    /// A Parquet scan of `files` in up to `partitions` partitions balanced by
    /// size. Row-group and page pruning and row filtering get their predicate
    /// from DataFusion's physical filter pushdown.
    ///
    /// # Errors
    /// If the projection does not fit the table.
    pub fn file_scan(
        &self,
        files: Vec<DataFile>,
        partitions: usize,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = files
            .iter()
            .map(|f| {
                let deleted = self.deleted_rows(f);
                let file =
                    PartitionedFile::new(scan_path(self.table.id, self.snapshot, f), f.size_bytes)
                        .with_statistics(Arc::new(self.file_statistics(f, deleted.as_ref())));
                skipping_deleted(file, f.row_count, deleted.as_ref())
            })
            .collect();
        // Group and table statistics for DataFusion's planner (join sides,
        // build side and broadcast choice), summed from the files'.
        let (groups, statistics) = compute_all_files_statistics(
            balanced_groups(files, partitions),
            self.schema.clone(),
            true,
            false,
        )?;
        let source = ParquetSource::new(self.schema.clone())
            .with_parquet_file_reader_factory(Arc::new(ChunkReaderFactory {
                metadata: Default::default(),
                table: self.qualified_name(),
                chunks: self.chunks.clone(),
                buffered: match &self.writes {
                    Some(writes) => BufferedFiles::with_held(&self.table, writes.held()),
                    None => BufferedFiles::of(&self.table),
                },
            }))
            .with_enable_page_index(true)
            // Only a table with `bloom_filter_columns` has bloom filters to
            // read; for any other, DataFusion would still evaluate the
            // pruning predicate once per row group against none.
            .with_bloom_filter_on_read(self.has_bloom_filters())
            .with_pushdown_filters(true);
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_output_ordering(self.cluster_ordering()?)
                .with_statistics(statistics)
                .with_projection_indices(projection)?
                .with_limit(limit)
                .with_expr_adapter(Some(Arc::new(
                    crate::field_ids::FieldIdAdapterFactory::new(self.columns.clone()),
                )))
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The rows of `file` this scan does not see: those deleted as of the
    /// snapshot, and those the transaction deleted.
    pub fn deleted_rows(&self, file: &DataFile) -> Option<RoaringBitmap> {
        let committed = self
            .table
            .deleted_rows(file.chunk, self.snapshot)
            .map(|rows| rows.as_ref().clone());
        let own = self
            .writes
            .as_ref()
            .and_then(|w| w.deleted_rows(self.table.id, file.chunk));
        match (committed, own) {
            (Some(committed), Some(own)) => Some(committed | own),
            (committed, own) => committed.or(own),
        }
    }

    /// What the snapshot knows of `file`, for DataFusion's planner: exact
    /// row counts (less `deleted`), null counts (inexact when rows are
    /// deleted), the file's size as an estimate of its bytes, and its zone
    /// map's bounds as inexact min and max (a column added after the file
    /// was written has none).
    fn file_statistics(&self, file: &DataFile, deleted: Option<&RoaringBitmap>) -> Statistics {
        let deleted = deleted.map_or(0, |d| d.len());
        let bound =
            |value: Option<&quarry_common::catalog::Datum>,
             column_type: &quarry_common::catalog::ColumnType| match value {
                Some(value) => Precision::Inexact(scalar_of(Some(value), column_type)),
                None => Precision::Absent,
            };
        let column_statistics = self
            .columns
            .iter()
            .map(|column| {
                match file
                    .column_stats
                    .iter()
                    .find(|s| s.field_id == column.field_id)
                {
                    Some(stats) => ColumnStatistics {
                        null_count: if deleted == 0 {
                            Precision::Exact(stats.null_count as usize)
                        } else {
                            Precision::Inexact(stats.null_count as usize)
                        },
                        min_value: bound(stats.min.as_ref(), &column.column_type),
                        max_value: bound(stats.max.as_ref(), &column.column_type),
                        ..ColumnStatistics::new_unknown()
                    },
                    None => ColumnStatistics::new_unknown(),
                }
            })
            .collect();
        Statistics {
            num_rows: Precision::Exact((file.row_count - deleted) as usize),
            total_byte_size: Precision::Inexact(file.size_bytes as usize),
            column_statistics,
        }
    }

    fn qualified_name(&self) -> String {
        format!("{}.{}", self.table.schema, self.table.name)
    }
}

#[async_trait]
impl datafusion::catalog::TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.files();
        let files = self.prune(state, files, filters)?;
        let scan = self.file_scan(
            files,
            state.config().target_partitions(),
            projection.cloned(),
            limit,
        )?;
        Ok(with_session_reader_options(
            scan,
            &state.config().options().execution.parquet,
        ))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        crate::rewrite::RewriteExec::plan(self, state, filters, Vec::new())
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        crate::rewrite::RewriteExec::plan(self, state, filters, assignments)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(writes) = &self.writes else {
            return Err(to_engine(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "cannot insert into a table read as of a past time",
            )));
        };
        if insert_op != InsertOp::Append {
            return Err(to_engine(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("{insert_op} is not supported yet"),
            )));
        }
        let sink = TableSink {
            table: self.table.clone(),
            schema: self.schema.clone(),
            writes: writes.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Zone maps of a list of data files, in the shape DataFusion's pruning wants.
struct ZoneMaps<'a> {
    columns: &'a [quarry_common::catalog::Column],
    /// Struct fields standing as columns in the predicate.
    leaves: &'a [LeafColumn],
    files: &'a [DataFile],
}

impl ZoneMaps<'_> {
    /// The field id and type of the column or struct leaf named `name`.
    fn column(&self, name: &str) -> Option<(FieldId, &ColumnType)> {
        match self.columns.iter().find(|c| c.name == name) {
            Some(c) => Some((c.field_id, &c.column_type)),
            None => self
                .leaves
                .iter()
                .find(|l| l.name == name)
                .map(|l| (l.field_id, &l.column_type)),
        }
    }

    /// `pick` of each file's statistics of `column`, `unknown` for a file
    /// that has none (written before the column or field was added).
    fn values(
        &self,
        column: &Column,
        unknown: ScalarValue,
        pick: impl Fn(&quarry_common::catalog::ColumnStats) -> ScalarValue,
    ) -> Option<ArrayRef> {
        let (field_id, _) = self.column(&column.name)?;
        let values = self.files.iter().map(|file| {
            file.column_stats
                .iter()
                .find(|s| s.field_id == field_id)
                .map(&pick)
                .unwrap_or_else(|| unknown.clone())
        });
        ScalarValue::iter_to_array(values).ok()
    }
}

/// A scalar field of a struct column reached through structs alone
/// (`s.a.b`), standing as a column of its own in a pruning predicate so
/// that its zone maps (written by `crate::data_file`) prune files.
struct LeafColumn {
    /// The stand-in column's name: a control character, then the path.
    name: String,
    field_id: FieldId,
    column_type: ColumnType,
}

/// `expr` with each access of a scalar field through structs (`s.a.b`,
/// DataFusion's `get_field`) replaced by a stand-in column, and the leaves
/// those columns stand for.
///
/// # Errors
/// Never in practice: rewriting an expression tree cannot fail.
fn leaves_as_columns(
    expr: Expr,
    columns: &[quarry_common::catalog::Column],
) -> DfResult<(Expr, Vec<LeafColumn>)> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let mut leaves: Vec<LeafColumn> = Vec::new();
    let expr = expr
        .transform_down(|e| {
            let Some((name, field_id, column_type)) = field_access_leaf(&e, columns) else {
                return Ok(Transformed::no(e));
            };
            if !leaves.iter().any(|l| l.name == name) {
                leaves.push(LeafColumn {
                    name: name.clone(),
                    field_id,
                    column_type,
                });
            }
            Ok(Transformed::yes(Expr::Column(Column::from_name(name))))
        })?
        .data;
    Ok((expr, leaves))
}

/// The stand-in name, field id and type of the scalar struct leaf that `e`
/// reads, if it is a field access through structs alone to one.
fn field_access_leaf(
    e: &Expr,
    columns: &[quarry_common::catalog::Column],
) -> Option<(String, FieldId, ColumnType)> {
    /// The column and field names `e` reads down through, outermost first.
    fn path(e: &Expr) -> Option<(String, Vec<String>)> {
        match e {
            Expr::Column(c) => Some((c.name.clone(), Vec::new())),
            Expr::ScalarFunction(f) if f.func.name() == "get_field" => {
                let (first, names) = f.args.split_first()?;
                let (column, mut fields) = path(first)?;
                for name in names {
                    match name {
                        Expr::Literal(ScalarValue::Utf8(Some(n)), _) => fields.push(n.clone()),
                        _ => return None,
                    }
                }
                Some((column, fields))
            }
            _ => None,
        }
    }
    let (column, fields) = path(e)?;
    if fields.is_empty() {
        return None;
    }
    let mut column_type = &columns.iter().find(|c| c.name == column)?.column_type;
    let mut field_id = 0;
    for name in &fields {
        let ColumnType::Struct(inner) = column_type else {
            return None;
        };
        let field = inner.iter().find(|f| &f.name == name)?;
        field_id = field.field_id;
        column_type = &field.column_type;
    }
    if column_type.is_nested() || *column_type == ColumnType::Json {
        return None;
    }
    let name = format!("\u{1f}{column}.{}", fields.join("."));
    Some((name, field_id, column_type.clone()))
}

/// `schema` with a column for each of `leaves`, of its Arrow type.
fn with_leaf_columns(schema: &SchemaRef, leaves: &[LeafColumn]) -> SchemaRef {
    if leaves.is_empty() {
        return schema.clone();
    }
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    for leaf in leaves {
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            &leaf.name,
            crate::types::arrow_type(&leaf.column_type),
            true,
        )));
    }
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

impl PruningStatistics for ZoneMaps<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        let (_, column_type) = self.column(&column.name)?;
        self.values(column, scalar_of(None, column_type), |s| {
            scalar_of(s.min.as_ref(), column_type)
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let (_, column_type) = self.column(&column.name)?;
        self.values(column, scalar_of(None, column_type), |s| {
            scalar_of(s.max.as_ref(), column_type)
        })
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, ScalarValue::UInt64(None), |s| {
            ScalarValue::UInt64(Some(s.null_count))
        })
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.files.iter().map(|f| f.row_count),
        )))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<datafusion::arrow::array::BooleanArray> {
        None
    }
}

/// The columns of `table` as of `snapshot` (older snapshots keep older
/// columns); the current ones if the snapshot is unknown.
fn columns_at(table: &Table, snapshot: SnapshotId) -> Vec<quarry_common::catalog::Column> {
    table
        .snapshots
        .iter()
        .find(|s| s.id == snapshot)
        .map(|s| table.columns_at(s).to_vec())
        .unwrap_or_else(|| table.columns.clone())
}

/// `scan` (a Parquet scan of [`SnapshotTable::file_scan`]) with the
/// session's settings of how the reader applies filters: DataFusion's
/// `datafusion.execution.parquet.pushdown_filters` (whether filters run
/// inside the reader, before the other columns are decoded, or after whole
/// batches are decoded; off by default, and then
/// [`crate::filter_placement`] turns it on for the scans a join's dynamic
/// filter reaches),
/// `reorder_filters`, `force_filter_selections` and
/// `max_predicate_cache_size`.
fn with_session_reader_options(
    scan: Arc<dyn ExecutionPlan>,
    session: &datafusion::common::config::ParquetOptions,
) -> Arc<dyn ExecutionPlan> {
    let Some(config) = scan
        .downcast_ref::<DataSourceExec>()
        .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
    else {
        return scan;
    };
    let Some(parquet) = config.file_source().downcast_ref::<ParquetSource>() else {
        return scan;
    };
    let mut options = parquet.table_parquet_options().clone();
    options.global.reorder_filters = session.reorder_filters;
    options.global.force_filter_selections = session.force_filter_selections;
    options.global.max_predicate_cache_size = session.max_predicate_cache_size;
    let mut config = config.clone();
    config.file_source = Arc::new(
        parquet
            .clone()
            .with_table_parquet_options(options)
            .with_pushdown_filters(session.pushdown_filters),
    );
    DataSourceExec::from_data_source(config)
}

/// `file` (of `rows` rows) read without the rows of `deleted`: a row
/// selection the Parquet reader applies with its row group and page
/// pruning, so deleted rows are not decoded where whole pages go.
fn skipping_deleted(
    file: PartitionedFile,
    rows: u64,
    deleted: Option<&RoaringBitmap>,
) -> PartitionedFile {
    let Some(deleted) = deleted.filter(|d| !d.is_empty()) else {
        return file;
    };
    let mut selectors = Vec::new();
    let mut at = 0u64;
    let mut ranges = deleted.iter();
    while let Some(range) = ranges.next_range() {
        let (start, end) = (u64::from(*range.start()), u64::from(*range.end()) + 1);
        if start > at {
            selectors.push(RowSelector::select((start - at) as usize));
        }
        selectors.push(RowSelector::skip((end - start) as usize));
        at = end;
    }
    if rows > at {
        selectors.push(RowSelector::select((rows - at) as usize));
    }
    file.with_extension(ParquetRowSelection::new(RowSelection::from(selectors)))
}

/// The path a scan gives data file `file` of table `table` read at `snapshot`:
/// `{table}/{snapshot}/{chunk}.{crc32c}`, so that a scan carries all it needs
/// to be read on another node (the size is the path's object size).
fn scan_path(table: TableId, snapshot: SnapshotId, file: &DataFile) -> String {
    format!(
        "{table}/{snapshot}/{}.{:08x}",
        file.chunk, file.checksum_crc32c
    )
}

/// The table, snapshot and data file a [`scan_path`] names.
fn parse_scan_path(file: &PartitionedFile) -> Option<(TableId, SnapshotId, ChunkRef)> {
    let path = file.object_meta.location.as_ref();
    let mut parts = path.split('/');
    let table = parts.next()?.parse().ok()?;
    let snapshot = parts.next()?.parse().ok()?;
    let (chunk, checksum) = parts.next()?.split_once('.')?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        table,
        snapshot,
        ChunkRef {
            id: chunk.parse().ok()?,
            size_bytes: file.object_meta.size,
            checksum_crc32c: u32::from_str_radix(checksum, 16).ok()?,
        },
    ))
}

/// `files` in up to `partitions` groups balanced by size (largest first into
/// the lightest group); one empty group when there are no files.
pub fn balanced_groups(mut files: Vec<PartitionedFile>, partitions: usize) -> Vec<FileGroup> {
    let count = partitions.max(1).min(files.len().max(1));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
        (0..count).map(|_| (0, Vec::new())).collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    for file in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("there is at least one group");
        lightest.0 += file.object_meta.size;
        lightest.1.push(file);
    }
    groups.into_iter().map(|(_, g)| FileGroup::new(g)).collect()
}

/// Whether `plan` is a scan of a Quarry table (made by [`SnapshotTable`]).
pub fn is_table_scan(plan: &dyn ExecutionPlan) -> bool {
    scan_config(plan).is_some()
}

/// The file scan config of a Quarry table scan.
fn scan_config(plan: &dyn ExecutionPlan) -> Option<&FileScanConfig> {
    let source = plan.downcast_ref::<DataSourceExec>()?;
    let config = source.data_source().downcast_ref::<FileScanConfig>()?;
    config.file_source().downcast_ref::<ParquetSource>()?;
    let mut files = config.file_groups.iter().flat_map(|g| g.files());
    files
        .all(|f| parse_scan_path(f).is_some())
        .then_some(config)
}

/// The data files a table scan reads, with the chunk each lives in.
pub fn scan_files(plan: &dyn ExecutionPlan) -> Vec<(PartitionedFile, ChunkRef)> {
    scan_config(plan)
        .map(|config| {
            config
                .file_groups
                .iter()
                .flat_map(|g| g.files())
                .filter_map(|f| parse_scan_path(f).map(|(_, _, chunk)| (f.clone(), chunk)))
                .collect()
        })
        .unwrap_or_default()
}

/// DataFusion's default `repartition_file_min_size`: smaller scans are not
/// split by byte ranges.
const REPARTITION_FILE_MIN_BYTES: usize = 10 << 20;

/// The table scan `plan` reading `files` instead, in up to `partitions`
/// partitions; None if `plan` is not a table scan.
pub fn with_scan_files(
    plan: &dyn ExecutionPlan,
    files: Vec<PartitionedFile>,
    partitions: usize,
) -> Option<Arc<dyn ExecutionPlan>> {
    let mut config = scan_config(plan)?.clone();
    let groups = balanced_groups(files, partitions);
    // Fewer files than partitions: split files by row-group byte ranges, as
    // DataFusion does for a local scan (`repartition_file_scans`).
    config.file_groups = FileGroupPartitioner::new()
        .with_target_partitions(partitions)
        .with_repartition_file_min_size(REPARTITION_FILE_MIN_BYTES)
        .repartition_file_groups(&groups)
        .unwrap_or(groups);
    Some(DataSourceExec::from_data_source(config))
}

/// The table scan `plan` reading `files` in this order, in one partition
/// (none split); None if `plan` is not a table scan.
pub fn with_scan_files_in_order(
    plan: &dyn ExecutionPlan,
    files: Vec<PartitionedFile>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let mut config = scan_config(plan)?.clone();
    config.file_groups = vec![FileGroup::new(files)];
    Some(DataSourceExec::from_data_source(config))
}

/// A table scan decoded on another node, bound to this node's chunk store and
/// to the table's columns in `catalog` (for renamed and dropped columns).
///
/// # Errors
/// If the scan's table is not in `catalog`.
pub fn bind_scan(
    plan: &dyn ExecutionPlan,
    catalog: &quarry_common::catalog::Catalog,
    chunks: &Arc<dyn DataFileStore>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(source) = plan.downcast_ref::<DataSourceExec>() else {
        return Ok(None);
    };
    let Some(config) = source.data_source().downcast_ref::<FileScanConfig>() else {
        return Ok(None);
    };
    let Some(parquet) = config.file_source().downcast_ref::<ParquetSource>() else {
        return Ok(None);
    };
    let mut config = config.clone();
    let first = config.file_groups.iter().flat_map(|g| g.files()).next();
    let Some((table_id, snapshot, _)) = first.and_then(parse_scan_path) else {
        // No files (a task with nothing to read) or not a table's files.
        config.file_source = Arc::new(parquet.clone().with_parquet_file_reader_factory(Arc::new(
            ChunkReaderFactory {
                metadata: Default::default(),
                table: String::new(),
                chunks: chunks.clone(),
                buffered: Default::default(),
            },
        )));
        return Ok(Some(DataSourceExec::from_data_source(config)));
    };
    let table = catalog.table_by_id(table_id).ok_or_else(|| {
        DataFusionError::Plan(format!("table {table_id} is not in this node's catalog"))
    })?;
    let columns = columns_at(table, snapshot);
    // Row selections do not travel with the plan: the deleted rows of each
    // file come from this node's catalog.
    if !table.deletes.is_empty() {
        let rows: HashMap<_, _> = table
            .files_at(snapshot)
            .filter(|f| table.deletes.contains_key(&f.chunk))
            .map(|f| (f.chunk, f.row_count))
            .collect();
        for group in &mut config.file_groups {
            let files = group
                .files()
                .iter()
                .cloned()
                .map(|file| {
                    let Some((_, _, chunk)) = parse_scan_path(&file) else {
                        return file;
                    };
                    match (rows.get(&chunk.id), table.deleted_rows(chunk.id, snapshot)) {
                        (Some(rows), Some(deleted)) => {
                            skipping_deleted(file, *rows, Some(deleted.as_ref()))
                        }
                        _ => file,
                    }
                })
                .collect();
            *group = FileGroup::new(files);
        }
    }
    config.file_source = Arc::new(parquet.clone().with_parquet_file_reader_factory(Arc::new(
        ChunkReaderFactory {
            metadata: Default::default(),
            table: format!("{}.{}", table.schema, table.name),
            chunks: chunks.clone(),
            buffered: BufferedFiles::of(table),
        },
    )));
    config.expr_adapter_factory = Some(Arc::new(crate::field_ids::FieldIdAdapterFactory::new(
        columns,
    )));
    Ok(Some(DataSourceExec::from_data_source(config)))
}

/// Opens data files through the chunk store, verifying checksums, and the
/// files of the table's ingest buffer from the catalog.
#[derive(Debug)]
struct ChunkReaderFactory {
    table: String,
    chunks: Arc<dyn DataFileStore>,
    buffered: Arc<BufferedFiles>,
    /// Footers this scan has parsed, by data file and page index policies:
    /// a file opened again by the same scan is not read and parsed again.
    metadata: Arc<std::sync::Mutex<HashMap<MetadataKey, Arc<ParquetMetaData>>>>,
}

/// A data file (its footer is always read with its page index when present,
/// so one parse serves every policy a scan asks for).
type MetadataKey = ChunkRef;

/// Fewest bytes read from a data file's end at first open (Parquet's metadata
/// prefetch hint): the footer and page index of small files in one read.
const FOOTER_PREFETCH_BYTES_MIN: u64 = 16 * 1024;

/// The metadata prefetch for a data file of `size_bytes` bytes: its last
/// checksum block (and the one before when that is short), so the first read
/// verifies whole blocks and no byte of them is read for nothing.
fn footer_prefetch_bytes(size_bytes: u64) -> usize {
    let block = quarry_storage::chunk_store::BLOCK_BYTES;
    let tail = match size_bytes % block {
        0 => block,
        short => short,
    };
    let prefetch = if tail >= FOOTER_PREFETCH_BYTES_MIN {
        tail
    } else {
        tail + block
    };
    prefetch.min(size_bytes) as usize
}

impl ParquetFileReaderFactory for ChunkReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        // The scan's `bytes_scanned` (EXPLAIN ANALYZE): what this reader fetches.
        let bytes_scanned = ParquetFileMetrics::new(
            partition_index,
            partitioned_file.object_meta.location.as_ref(),
            metrics,
        )
        .bytes_scanned;
        let (_, _, chunk) = parse_scan_path(&partitioned_file).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "scan of unknown data file {}",
                partitioned_file.object_meta.location
            ))
        })?;
        let buffered = self.buffered.holds(chunk.id).then(|| self.buffered.clone());
        Ok(Box::new(ChunkReader {
            table: self.table.clone(),
            chunks: self.chunks.clone(),
            metadata: self.metadata.clone(),
            buffered,
            memory: None,
            chunk,
            prefetch_bytes: metadata_size_hint
                .unwrap_or_else(|| footer_prefetch_bytes(chunk.size_bytes)),
            bytes_scanned,
        }))
    }
}

/// Largest gap between two ranges of one request read as one span.
const RANGE_GAP_BYTES: u64 = 64 * 1024;

/// A data file read by byte range (the footer, the page index, the column
/// chunks and pages a scan needs), each range verified by the chunk store
/// against the block checksums it covers.
struct ChunkReader {
    table: String,
    chunks: Arc<dyn DataFileStore>,
    metadata: Arc<std::sync::Mutex<HashMap<MetadataKey, Arc<ParquetMetaData>>>>,
    /// Where a buffered file's bytes are (None: a data file in a stripe).
    buffered: Option<Arc<BufferedFiles>>,
    /// A buffered file's bytes, once found.
    memory: Option<Bytes>,
    chunk: ChunkRef,
    prefetch_bytes: usize,
    /// Bytes fetched, for the scan's metrics.
    bytes_scanned: datafusion::physical_plan::metrics::Count,
}

impl ChunkReader {
    /// A buffered file's bytes (found on first use); None for a data file
    /// in a stripe. A moved buffered file's re-encoded bytes differ from
    /// the ones buffered, so its length is theirs, not the scan path's.
    async fn memory(&mut self) -> Result<Option<Bytes>, ParquetError> {
        if self.memory.is_none()
            && let Some(buffered) = &self.buffered
        {
            self.memory = buffered
                .bytes(self.chunk.id, self.chunk.size_bytes, &self.chunks)
                .await?;
        }
        Ok(self.memory.clone())
    }

    /// The file's length in bytes.
    async fn len(&mut self) -> Result<u64, ParquetError> {
        Ok(match self.memory().await? {
            Some(bytes) => bytes.len() as u64,
            None => self.chunk.size_bytes,
        })
    }

    /// The storage error `source` as the query's error: XX001 naming the
    /// table and file when stored data is damaged or lost.
    fn error(&self, source: quarry_storage::Error) -> ParquetError {
        let error = if source.is_data_corruption() {
            Error::DataCorrupted {
                table: self.table.clone(),
                chunk: self.chunk.id,
                source,
            }
        } else {
            Error::Storage(source)
        };
        ParquetError::External(Box::new(error))
    }
}

impl AsyncFileReader for ChunkReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        Box::pin(async move {
            let len = self.len().await?;
            if range.end > len {
                return Err(ParquetError::EOF(format!(
                    "range {range:?} beyond data file of {len} bytes"
                )));
            }
            self.bytes_scanned.add((range.end - range.start) as usize);
            if let Some(bytes) = self.memory().await? {
                return Ok(bytes.slice(range.start as usize..range.end as usize));
            }
            self.chunks
                .get_range(self.chunk, range)
                .await
                .map_err(|e| self.error(e))
        })
    }

    /// Ranges closer than [`RANGE_GAP_BYTES`] are read as one span (the chunk
    /// store reads and verifies whole 64 KiB blocks, so neighbouring pages
    /// would otherwise read their shared blocks again).
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        Box::pin(async move {
            let mut order: Vec<usize> = (0..ranges.len()).collect();
            order.sort_by_key(|&i| ranges[i].start);
            let mut spans: Vec<Range<u64>> = Vec::new();
            for &i in &order {
                let range = &ranges[i];
                match spans.last_mut() {
                    Some(span) if range.start <= span.end + RANGE_GAP_BYTES => {
                        span.end = span.end.max(range.end);
                    }
                    _ => spans.push(range.clone()),
                }
            }
            let mut fetched = Vec::with_capacity(spans.len());
            for span in &spans {
                fetched.push(self.get_bytes(span.clone()).await?);
            }
            Ok(ranges
                .iter()
                .map(|range| {
                    // The last span starting at or before the range holds it.
                    let at = spans.partition_point(|s| s.start <= range.start) - 1;
                    let span = &spans[at];
                    fetched[at].slice(
                        (range.start - span.start) as usize..(range.end - span.start) as usize,
                    )
                })
                .collect())
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        Box::pin(async move {
            // The page index is read unless required: data files always
            // have one, and a scan that skips it now may use it next.
            let at_least_optional = |policy: PageIndexPolicy| match policy {
                PageIndexPolicy::Required => PageIndexPolicy::Required,
                _ => PageIndexPolicy::Optional,
            };
            let (column_index, offset_index) = options
                .map(|o| {
                    (
                        at_least_optional(o.column_index_policy()),
                        at_least_optional(o.offset_index_policy()),
                    )
                })
                .unwrap_or((PageIndexPolicy::Optional, PageIndexPolicy::Optional));
            let key = self.chunk;
            let parsed = self
                .metadata
                .lock()
                .map_err(|_| ParquetError::General("metadata cache lock poisoned".into()))?
                .get(&key)
                .cloned();
            if let Some(metadata) = parsed {
                return Ok(metadata);
            }
            let size = self.len().await?;
            let metadata = Arc::new(
                ParquetMetaDataReader::new()
                    .with_prefetch_hint(Some(self.prefetch_bytes))
                    .with_column_index_policy(column_index)
                    .with_offset_index_policy(offset_index)
                    .load_and_finish(&mut *self, size)
                    .await?,
            );
            self.metadata
                .lock()
                .map_err(|_| ParquetError::General("metadata cache lock poisoned".into()))?
                .insert(key, metadata.clone());
            Ok(metadata)
        })
    }
}

/// Writes inserted rows into new data files of the statement's write set.
struct TableSink {
    table: Arc<Table>,
    schema: SchemaRef,
    writes: Arc<WriteSet>,
}

impl fmt::Debug for TableSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableSink({}.{})", self.table.schema, self.table.name)
    }
}

impl DisplayAs for TableSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QuarryTableSink: table={}.{}",
            self.table.schema, self.table.name
        )
    }
}

#[async_trait]
impl DataSink for TableSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut writer = DataFileWriter::new(self.table.clone(), self.writes.clone());
        while let Some(batch) = data.next().await {
            writer.write(batch?).await.map_err(to_engine)?;
        }
        writer.finish().await.map_err(to_engine)
    }
}
