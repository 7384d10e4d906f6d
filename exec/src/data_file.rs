//! Writing data files: Arrow batches → Parquet (zstd, page statistics, page index)
//! → chunks → [`DataFile`] records with zone maps, collected in a [`WriteSet`]
//! until the statement commits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{
    CastOptions, SortColumn, SortOptions, cast, cast_with_options, concat_batches,
    lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use quarry_common::SqlState;
use quarry_common::catalog::{
    ChunkId, ColumnStats, ColumnType, DataFile, Datum, FieldId, NestedField, SnapshotId, Table,
    TableId,
};
use quarry_common::partition::{PartitionKey, Partitioning};
use quarry_raft::{RowDeletes, TableChange};
use quarry_storage::ChunkRef;
use roaring::RoaringBitmap;

use crate::chunks::{DataFileStore, FileSink};

use crate::error::{Error, Result};
use crate::types::file_schema;

/// Rows per Parquet row group: the unit of row-group pruning and of parallel reads.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows per data file: a file is one chunk and one unit of scan parallelism.
pub const FILE_ROWS_MAX: u64 = 1024 * 1024;

/// A file under this many rows is small (an eighth of a full file): the
/// compactor merges such files, and a statement's small files go to the
/// ingest buffer rather than into stripes.
pub const SMALL_FILE_ROWS: u64 = FILE_ROWS_MAX / 8;

/// Most bytes of small files a write set holds in memory for the ingest
/// buffer, and of a streaming request's buffered file (in the Raft log and
/// every node's catalog); past it, files go into stripes. Below DataFusion's
/// `repartition_file_min_size`, so a scan never splits a buffered file by
/// byte ranges (a moved one is read re-encoded).
pub const HELD_BYTES_MAX: usize = 8 << 20;

/// What a transaction (or autocommit statement) has changed and read, not yet
/// committed: data files it wrote, data files it replaced, and the snapshots of
/// the tables it read. Each table's new files go through one [`FileSink`],
/// which stores them where they will live as they are finished. Dropping an
/// uncommitted write set discards the files it wrote, so a failed or abandoned
/// transaction leaves nothing a reader can see (chunks already on other nodes
/// are orphans their collection deletes).
///
/// A write set made by [`WriteSet::holding`] keeps small files (by default
/// under [`SMALL_FILE_ROWS`] rows; [`HELD_BYTES_MAX`] bytes in all) in memory
/// instead: the commit carries their bytes into the table's replicated
/// ingest buffer ([`Command::CommitBuffered`](quarry_raft::Command)), so a
/// small INSERT costs one Raft commit and no stripe write, and the
/// transaction's own scans read them from here.
#[derive(Debug)]
pub struct WriteSet {
    chunks: Arc<dyn DataFileStore>,
    /// Whether DELETE and UPDATE may delete rows by deletion vector (the
    /// session's `dml_mode`); else they rewrite files.
    merge_on_read: std::sync::atomic::AtomicBool,
    /// Files with fewer rows are held in memory (0: none).
    held_file_rows: u64,
    pending: Mutex<Pending>,
}

/// What [`WriteSet::take`] hands over for commit.
#[derive(Debug, Default)]
pub struct Taken {
    /// The changes, one per table, with the stripes of their stored files.
    pub changes: Vec<TableChange>,
    /// The tables read and the snapshot each was read at.
    pub reads: Vec<(TableId, SnapshotId)>,
    /// The bytes of the added files held in memory, for the ingest buffer.
    pub held: Vec<(ChunkId, Bytes)>,
    /// Rows of committed data files deleted (deletion vectors); each
    /// table with some has an entry in `changes`.
    pub deletes: Vec<RowDeletes>,
}

/// Rows of committed data files a transaction deleted, by table and file.
type Deletes = BTreeMap<TableId, BTreeMap<ChunkId, RoaringBitmap>>;

#[derive(Debug, Default)]
struct Pending {
    added: BTreeMap<TableId, Vec<DataFile>>,
    removed: BTreeMap<TableId, Vec<ChunkId>>,
    deletes: Deletes,
    reads: BTreeMap<TableId, SnapshotId>,
    /// Where each table's new files go (created by the first file).
    sinks: BTreeMap<TableId, Arc<dyn FileSink>>,
    /// The bytes of small files held in memory, by chunk, for the ingest
    /// buffer (files of the changes or of a savepoint).
    held: BTreeMap<ChunkId, Bytes>,
    /// Their bytes in all.
    held_bytes: usize,
    /// The changes as each savepoint found them, oldest first.
    savepoints: Vec<Changes>,
}

/// Files added and replaced, per table: what a savepoint restores.
#[derive(Debug, Clone, Default)]
struct Changes {
    added: BTreeMap<TableId, Vec<DataFile>>,
    removed: BTreeMap<TableId, Vec<ChunkId>>,
    deletes: Deletes,
}

impl Pending {
    /// Whether `chunk` is a file of the changes or of a savepoint (which a
    /// rollback may bring back), so its bytes must stay.
    fn holds(&self, table: TableId, chunk: ChunkId) -> bool {
        let in_added = |added: &BTreeMap<TableId, Vec<DataFile>>| {
            added
                .get(&table)
                .is_some_and(|files| files.iter().any(|f| f.chunk == chunk))
        };
        in_added(&self.added) || self.savepoints.iter().any(|s| in_added(&s.added))
    }

    /// Deletes the files of `candidates` nothing holds any more (forgets
    /// the bytes of those held in memory).
    fn discard_unheld(&mut self, candidates: impl IntoIterator<Item = (TableId, ChunkId)>) {
        for (table, chunk) in candidates {
            if self.holds(table, chunk) {
                continue;
            }
            match self.held.remove(&chunk) {
                Some(bytes) => self.held_bytes -= bytes.len(),
                None => {
                    if let Some(sink) = self.sinks.get(&table) {
                        sink.discard(chunk);
                    }
                }
            }
        }
    }

    fn files_of(added: &BTreeMap<TableId, Vec<DataFile>>) -> Vec<(TableId, ChunkId)> {
        added
            .iter()
            .flat_map(|(table, files)| files.iter().map(|f| (*table, f.chunk)))
            .collect()
    }
}

impl WriteSet {
    /// An empty write set whose chunks live in `chunks`.
    pub fn new(chunks: Arc<dyn DataFileStore>) -> Self {
        WriteSet::holding(chunks, 0)
    }

    /// An empty write set that holds files of fewer than `file_rows` rows
    /// in memory for the ingest buffer (see [`WriteSet`]), the others going
    /// to `chunks`.
    pub fn holding(chunks: Arc<dyn DataFileStore>, file_rows: u64) -> Self {
        WriteSet {
            chunks,
            merge_on_read: std::sync::atomic::AtomicBool::new(true),
            held_file_rows: file_rows,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .expect("write set lock is never held across a panic")
    }

    /// Stores the bytes of a new data file of `table` through the table's sink.
    pub(crate) async fn put(&self, table: &Table, bytes: Bytes) -> Result<ChunkRef> {
        let sink = {
            let mut pending = self.lock();
            pending
                .sinks
                .entry(table.id)
                .or_insert_with(|| self.chunks.sink(table.layout))
                .clone()
        };
        sink.put(bytes).await.map_err(Error::Storage)
    }

    pub(crate) fn add(&self, table: TableId, file: DataFile) {
        self.lock().added.entry(table).or_default().push(file);
    }

    /// Adds `file` of `table` with its bytes held in memory, if it is small
    /// and the set holds small files and has room for it; otherwise gives
    /// both back, for [`WriteSet::put`].
    ///
    /// # Errors
    /// The file and its bytes, when they are not held.
    #[allow(clippy::result_large_err)]
    pub(crate) fn hold(
        &self,
        table: TableId,
        file: DataFile,
        bytes: Bytes,
    ) -> std::result::Result<(), (DataFile, Bytes)> {
        let mut pending = self.lock();
        let room = HELD_BYTES_MAX.saturating_sub(pending.held_bytes);
        if file.row_count >= self.held_file_rows || bytes.len() > room {
            return Err((file, bytes));
        }
        pending.held_bytes += bytes.len();
        pending.held.insert(file.chunk, bytes);
        pending.added.entry(table).or_default().push(file);
        Ok(())
    }

    /// The bytes of the files held in memory (see [`WriteSet::holding`]),
    /// for the transaction's own scans.
    pub fn held(&self) -> BTreeMap<ChunkId, Bytes> {
        self.lock().held.clone()
    }

    /// Whether the transaction has added or replaced no data file and
    /// deleted no row of one yet.
    pub fn writes_nothing(&self) -> bool {
        let pending = self.lock();
        pending.added.values().all(Vec::is_empty)
            && pending.removed.values().all(Vec::is_empty)
            && pending.deletes.values().all(BTreeMap::is_empty)
    }

    /// Sets whether DELETE and UPDATE may delete rows by deletion vector
    /// (the session's `dml_mode` is `merge-on-read`).
    pub fn set_merge_on_read(&self, on: bool) {
        self.merge_on_read
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether DELETE and UPDATE may delete rows by deletion vector.
    pub fn merge_on_read(&self) -> bool {
        self.merge_on_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records that the transaction deletes `rows` of committed data file
    /// `chunk` of `table` (a deletion vector: the file stays).
    pub fn delete_rows(&self, table: TableId, chunk: ChunkId, rows: &RoaringBitmap) {
        *self
            .lock()
            .deletes
            .entry(table)
            .or_default()
            .entry(chunk)
            .or_default() |= rows;
    }

    /// The rows of committed data file `chunk` of `table` this transaction
    /// deleted, if any.
    pub fn deleted_rows(&self, table: TableId, chunk: ChunkId) -> Option<RoaringBitmap> {
        self.lock().deletes.get(&table)?.get(&chunk).cloned()
    }

    /// Files this transaction added to `table` (it reads its own writes).
    pub fn added_to(&self, table: TableId) -> Vec<DataFile> {
        self.lock().added.get(&table).cloned().unwrap_or_default()
    }

    /// Committed files of `table` this transaction replaced.
    pub fn removed_from(&self, table: TableId) -> Vec<ChunkId> {
        self.lock().removed.get(&table).cloned().unwrap_or_default()
    }

    /// Records that the transaction replaces data file `chunk` of `table`. A file
    /// the transaction wrote itself is simply dropped (and deleted, unless a
    /// savepoint taken since it was written may bring it back).
    pub fn remove(&self, table: TableId, chunk: ChunkId) {
        let mut pending = self.lock();
        if let Some(added) = pending.added.get_mut(&table)
            && let Some(i) = added.iter().position(|f| f.chunk == chunk)
        {
            added.remove(i);
            // Every added file came through its table's sink (put, then add).
            pending.discard_unheld([(table, chunk)]);
            return;
        }
        // The file's replacement was made from its rows less those deleted.
        if let Some(deletes) = pending.deletes.get_mut(&table) {
            deletes.remove(&chunk);
        }
        pending.removed.entry(table).or_default().push(chunk);
    }

    /// Takes a savepoint: [`WriteSet::rollback_to`] with the returned depth
    /// restores the files added and replaced as they are now.
    pub fn savepoint(&self) -> usize {
        let mut pending = self.lock();
        let changes = Changes {
            added: pending.added.clone(),
            removed: pending.removed.clone(),
            deletes: pending.deletes.clone(),
        };
        pending.savepoints.push(changes);
        pending.savepoints.len() - 1
    }

    /// Undoes every change since savepoint `depth` was taken (PostgreSQL's
    /// ROLLBACK TO SAVEPOINT): files written since are deleted, files
    /// replaced since are current again. The savepoint stays; later ones are
    /// gone. The tables read since stay read (a SERIALIZABLE commit still
    /// checks them).
    pub fn rollback_to(&self, depth: usize) {
        let mut pending = self.lock();
        let Some(changes) = pending.savepoints.get(depth).cloned() else {
            return;
        };
        pending.savepoints.truncate(depth + 1);
        let written = Pending::files_of(&pending.added);
        pending.added = changes.added;
        pending.removed = changes.removed;
        pending.deletes = changes.deletes;
        pending.discard_unheld(written);
    }

    /// Forgets savepoint `depth` and every later one (RELEASE SAVEPOINT); the
    /// changes made since stay.
    pub fn release(&self, depth: usize) {
        let mut pending = self.lock();
        if depth >= pending.savepoints.len() {
            return;
        }
        let released: Vec<Changes> = pending.savepoints.drain(depth..).collect();
        let files = released.iter().flat_map(|c| Pending::files_of(&c.added));
        let files: Vec<_> = files.collect();
        pending.discard_unheld(files);
    }

    /// Records that the transaction read `table` at `snapshot` (the first read
    /// counts).
    pub fn record_read(&self, table: TableId, snapshot: SnapshotId) {
        self.lock().reads.entry(table).or_insert(snapshot);
    }

    /// Hands the changes over for commit, one per table, with the stripes
    /// their new files were placed in, the tables read, and the bytes of
    /// the files held in memory; the set is then empty. If the commit fails
    /// definitely, pass the changes to [`WriteSet::discard_changes`].
    ///
    /// # Errors
    /// If a table's last stripe cannot be completed (its parity finds too few
    /// nodes); the changes are discarded and nothing is to be committed.
    pub async fn take(&self) -> Result<Taken> {
        // Files only a savepoint held are not part of the commit.
        self.release(0);
        let (mut taken, sinks) = self.take_pending();
        for change in &mut taken.changes {
            let Some(sink) = sinks.get(&change.table) else {
                continue;
            };
            match sink.finish().await {
                Ok(stripes) => change.stripes = stripes,
                Err(e) => {
                    self.discard_changes(taken.changes);
                    return Err(Error::Storage(e));
                }
            }
        }
        Ok(taken)
    }

    /// Empties the set (its savepoints released before, by the callers).
    fn take_pending(&self) -> (Taken, BTreeMap<TableId, Arc<dyn FileSink>>) {
        let Pending {
            added,
            mut removed,
            deletes,
            reads,
            sinks,
            held,
            held_bytes: _,
            savepoints: _,
        } = std::mem::take(&mut *self.lock());
        let mut changes: Vec<TableChange> = added
            .into_iter()
            .map(|(table, added)| TableChange {
                table,
                added,
                removed: removed.remove(&table).unwrap_or_default(),
                stripes: Vec::new(),
            })
            .collect();
        changes.extend(removed.into_iter().map(|(table, removed)| TableChange {
            table,
            added: Vec::new(),
            removed,
            stripes: Vec::new(),
        }));
        let deletes: Vec<RowDeletes> = deletes
            .into_iter()
            .flat_map(|(table, files)| {
                files
                    .into_iter()
                    .filter(|(_, rows)| !rows.is_empty())
                    .map(move |(chunk, rows)| RowDeletes {
                        table,
                        chunk,
                        rows: quarry_raft::encode_rows(&rows),
                    })
            })
            .collect();
        changes.retain(|c| {
            !c.added.is_empty()
                || !c.removed.is_empty()
                || deletes.iter().any(|d| d.table == c.table)
        });
        for delete in &deletes {
            if !changes.iter().any(|c| c.table == delete.table) {
                changes.push(TableChange {
                    table: delete.table,
                    added: Vec::new(),
                    removed: Vec::new(),
                    stripes: Vec::new(),
                });
            }
        }
        let taken = Taken {
            changes,
            reads: reads.into_iter().collect(),
            held: held.into_iter().collect(),
            deletes,
        };
        (taken, sinks)
    }

    /// Deletes the chunks of `files` (best effort: a failure only leaves garbage).
    pub fn discard_files(&self, files: impl IntoIterator<Item = DataFile>) {
        for file in files {
            self.chunks.discard(file.chunk);
        }
    }

    /// Deletes the files `changes` added.
    pub fn discard_changes(&self, changes: Vec<TableChange>) {
        self.discard_files(changes.into_iter().flat_map(|c| c.added));
    }

    /// Deletes the stored files `taken` added (those held in memory were
    /// never stored).
    pub fn discard_taken(&self, taken: Taken) {
        let held: std::collections::HashSet<ChunkId> =
            taken.held.iter().map(|(chunk, _)| *chunk).collect();
        self.discard_files(
            taken
                .changes
                .into_iter()
                .flat_map(|c| c.added)
                .filter(|f| !held.contains(&f.chunk)),
        );
    }

    /// Deletes every pending file and forgets every change.
    pub fn discard(&self) {
        // Files only a savepoint held first, then the changes' own.
        self.release(0);
        let (taken, _) = self.take_pending();
        self.discard_taken(taken);
    }
}

impl Drop for WriteSet {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Min, max and null count of one column over the rows of a file. Arrays,
/// structs and JSON documents keep only the null count: they have no order
/// a filter could prune by (DataFusion cannot compare lists of structs) and
/// a document's bounds would be whole documents in the catalog. A struct's
/// scalar leaves have zone maps of their own ([`StructLeaf`]).
struct ColumnZoneMap {
    bounds: Option<(MinAccumulator, MaxAccumulator)>,
    null_count: u64,
}

impl ColumnZoneMap {
    /// An empty zone map for values of `data_type`, with bounds if `bounded`.
    fn new(data_type: &DataType, bounded: bool) -> datafusion::error::Result<Self> {
        Ok(ColumnZoneMap {
            bounds: if bounded {
                Some((
                    MinAccumulator::try_new(data_type)?,
                    MaxAccumulator::try_new(data_type)?,
                ))
            } else {
                None
            },
            null_count: 0,
        })
    }

    /// Takes in `values`, of which `null_count` are NULL.
    fn update(&mut self, values: &ArrayRef, null_count: usize) -> datafusion::error::Result<()> {
        if let Some((min, max)) = &mut self.bounds {
            min.update_batch(std::slice::from_ref(values))?;
            max.update_batch(std::slice::from_ref(values))?;
        }
        self.null_count += null_count as u64;
        Ok(())
    }

    /// The column statistics of field `field_id`.
    fn finish(self, field_id: FieldId) -> datafusion::error::Result<ColumnStats> {
        let (min, max) = match self.bounds {
            Some((mut min, mut max)) => (datum_of(&min.evaluate()?), datum_of(&max.evaluate()?)),
            None => (None, None),
        };
        Ok(ColumnStats {
            field_id,
            null_count: self.null_count,
            min,
            max,
        })
    }
}

/// A scalar field reached from a column through structs alone, no array
/// between (`s.a.b`): Parquet keeps one value per row for it, and its zone
/// map prunes files for filters on the field as a column's does.
struct StructLeaf {
    field_id: FieldId,
    /// The column's position in the table.
    column: usize,
    /// The field's position in each struct on the way down.
    path: Vec<usize>,
}

/// The scalar leaves of column `column` of type `column_type` reached
/// through structs alone (none unless it is a struct), JSON leaves left out
/// as a JSON column is.
fn struct_leaves(column: usize, column_type: &ColumnType) -> Vec<StructLeaf> {
    fn walk(
        fields: &[NestedField],
        column: usize,
        path: &mut Vec<usize>,
        out: &mut Vec<StructLeaf>,
    ) {
        for (i, field) in fields.iter().enumerate() {
            path.push(i);
            match &field.column_type {
                ColumnType::Struct(inner) => walk(inner, column, path, out),
                ColumnType::Array(_) | ColumnType::Json => {}
                _ => out.push(StructLeaf {
                    field_id: field.field_id,
                    column,
                    path: path.clone(),
                }),
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    if let ColumnType::Struct(fields) = column_type {
        walk(fields, column, &mut Vec::new(), &mut out);
    }
    out
}

impl StructLeaf {
    /// The leaf's Arrow type in a table of `schema`.
    fn data_type(&self, schema: &SchemaRef) -> DataType {
        let mut data_type = schema.field(self.column).data_type().clone();
        for &i in &self.path {
            data_type = match data_type {
                DataType::Struct(fields) => fields[i].data_type().clone(),
                other => other,
            };
        }
        data_type
    }

    /// The leaf's values in `batch`, NULL wherever a struct on the way is
    /// (a struct's fields hold arbitrary values under its NULLs), and how
    /// many are NULL.
    fn values(&self, batch: &RecordBatch) -> datafusion::error::Result<(ArrayRef, usize)> {
        use datafusion::arrow::array::{AsArray, BooleanArray};
        use datafusion::arrow::buffer::NullBuffer;
        let mut values = batch.column(self.column).clone();
        let mut outer: Option<NullBuffer> = None;
        for &i in &self.path {
            outer = NullBuffer::union(outer.as_ref(), values.logical_nulls().as_ref());
            values = values.as_struct().column(i).clone();
        }
        if let Some(outer) = outer.filter(|n| n.null_count() > 0) {
            let null_under = BooleanArray::new(!outer.inner(), None);
            values = datafusion::arrow::compute::nullif(&values, &null_under)?;
        }
        let nulls = values.logical_null_count();
        Ok((values, nulls))
    }
}

/// Streams batches of one table into data files, cutting a new file every
/// [`FILE_ROWS_MAX`] rows. Each finished file is stored as a chunk and recorded
/// in the [`WriteSet`].
///
/// A partitioned table's rows are split by partition first: each partition
/// has its own open file, so that no file holds rows of two partitions.
pub struct DataFileWriter {
    table: Arc<Table>,
    schema: SchemaRef,
    destination: Destination,
    properties: WriterProperties,
    /// The open file of each partition (one, under `PartitionKey::Null`,
    /// for a table that is not partitioned).
    open: BTreeMap<PartitionKey, OpenFile>,
    /// The table's partitioning and the position of its column.
    partitioning: Option<(Arc<Partitioning>, usize)>,
    /// Positions of the columns each file's rows are sorted by (a
    /// clustered table's; empty: rows stay in the order written).
    sort_by: Vec<usize>,
    /// The struct columns' scalar leaves, which get zone maps of their own.
    leaves: Vec<StructLeaf>,
    rows_written: u64,
    /// Whether small files may be held in the write set's memory.
    holds_small_files: bool,
}

/// A data file being written.
struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    zone_maps: Vec<ColumnZoneMap>,
    /// Zone maps of the struct columns' scalar leaves ([`StructLeaf`]), in
    /// the order of `DataFileWriter::leaves`.
    leaf_zone_maps: Vec<ColumnZoneMap>,
    rows: u64,
    /// Rows held until the file is finished, to be sorted then (a
    /// clustered table's).
    held: Vec<RecordBatch>,
    /// Their memory.
    held_bytes: usize,
}

/// Most files a writer keeps open at once (one per partition written to).
const MAX_OPEN_FILES: usize = 1024;

/// Most memory a writer's open files may hold (encoded pages and rows not
/// yet encoded): past it, the largest is finished early, and the compactor
/// merges such small files later. A statement writing one file stays far
/// below it; one spreading rows over many partitions finishes files of a
/// few MB each rather than hold the whole table.
const OPEN_FILES_MEMORY_MAX: usize = 256 << 20;

/// How data files are encoded: ZSTD, [`ROW_GROUP_ROWS`] rows per row group,
/// statistics per page (and so a page index).
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Where a [`DataFileWriter`] puts finished files.
enum Destination {
    /// Stored as chunks and recorded in a write set.
    Writes(Arc<WriteSet>),
    /// Kept in memory, with the file each is (its chunk id new, unstored).
    Memory(Vec<(DataFile, Bytes)>),
}

impl DataFileWriter {
    /// A writer for `table` (its current columns) that records files in `writes`.
    pub fn new(table: Arc<Table>, writes: Arc<WriteSet>) -> Self {
        Self::to(table, Destination::Writes(writes))
    }

    /// A writer for `table` that keeps its files in memory, for
    /// [`Self::finish_in_memory`] (rows bound for the ingest buffer).
    pub fn in_memory(table: Arc<Table>) -> Self {
        Self::to(table, Destination::Memory(Vec::new()))
    }

    fn to(table: Arc<Table>, destination: Destination) -> Self {
        let position = |id: &u32| table.columns.iter().position(|c| c.field_id == *id);
        let (sort_by, bloom_filters): (Vec<usize>, Vec<usize>) = match &table.file_layout {
            Some(layout) => (
                layout.cluster_by.iter().filter_map(position).collect(),
                layout.bloom_filters.iter().filter_map(position).collect(),
            ),
            None => Default::default(),
        };
        let properties = if bloom_filters.is_empty() {
            writer_properties()
        } else {
            // Split-block bloom filters on the chosen columns (Parquet's
            // default false-positive rate, 5%).
            let mut builder = writer_properties().into_builder();
            for i in bloom_filters {
                builder = builder.set_column_bloom_filter_enabled(
                    ColumnPath::from(table.columns[i].name.as_str()),
                    true,
                );
            }
            builder.build()
        };
        let partitioning = table.partitioning.as_ref().and_then(|p| {
            table
                .columns
                .iter()
                .position(|c| c.field_id == p.field_id)
                .map(|index| (p.clone(), index))
        });
        let leaves = table
            .columns
            .iter()
            .enumerate()
            .flat_map(|(i, c)| struct_leaves(i, &c.column_type))
            .collect();
        DataFileWriter {
            schema: file_schema(&table),
            leaves,
            table,
            destination,
            properties,
            open: BTreeMap::new(),
            partitioning,
            sort_by,
            rows_written: 0,
            holds_small_files: true,
        }
    }

    /// This writer keeping rows in the order written, even for a clustered
    /// table (a move of the ingest buffer, whose rows' positions are
    /// recorded; re-clustering sorts them later).
    pub fn keeping_order(mut self) -> Self {
        self.sort_by.clear();
        self
    }

    /// This writer with every file stored in stripes, none held in memory
    /// for the ingest buffer (the compactor's, whose files leave it).
    pub fn into_stripes(mut self) -> Self {
        self.holds_small_files = false;
        self
    }

    /// Rows written so far (including files not finished yet).
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Appends `batch`, whose columns are the table's columns in order. Values are
    /// cast to the column types where needed.
    ///
    /// # Errors
    /// 23502 if a NOT NULL column gets a NULL, 22P02 / 22003 if a value does not
    /// convert, an I/O error if a finished file cannot be stored.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = self.conform(batch)?;
        let Some((partitioning, index)) = &self.partitioning else {
            return self.write_partition(PartitionKey::Null, batch).await;
        };
        let keys = crate::partition::keys_of(partitioning, batch.column(*index))?;
        match keys.first() {
            None => Ok(()),
            Some(first) if keys.iter().all(|k| k == first) => {
                self.write_partition(*first, batch).await
            }
            Some(_) => {
                for (key, rows) in crate::partition::rows_by_partition(&keys) {
                    let rows =
                        take_record_batch(&batch, &UInt32Array::from(rows)).map_err(|e| {
                            Error::Internal(format!("splitting rows by partition: {e}"))
                        })?;
                    self.write_partition(key, rows).await?;
                }
                Ok(())
            }
        }
    }

    /// Appends `batch` (conformed, all of partition `key`) to the
    /// partition's files: a batch larger than the open file's room is
    /// split across files, so no file holds more than FILE_ROWS_MAX rows.
    async fn write_partition(&mut self, key: PartitionKey, mut batch: RecordBatch) -> Result<()> {
        while batch.num_rows() > 0 {
            let in_file = self.open.get(&key).map_or(0, |f| f.rows);
            let room = (FILE_ROWS_MAX - in_file) as usize;
            let rest = batch.slice(
                room.min(batch.num_rows()),
                batch.num_rows().saturating_sub(room),
            );
            self.write_into_file(key, batch.slice(0, room.min(batch.num_rows())))
                .await?;
            batch = rest;
        }
        Ok(())
    }

    /// Appends `batch` (conformed, no more rows than the open file's room)
    /// to partition `key`'s open file, finishing the file when it is full.
    async fn write_into_file(&mut self, key: PartitionKey, batch: RecordBatch) -> Result<()> {
        if !self.open.contains_key(&key) {
            if self.open.len() >= MAX_OPEN_FILES
                && let Some(fullest) = self
                    .open
                    .iter()
                    .max_by_key(|(_, f)| f.rows)
                    .map(|(k, _)| *k)
            {
                self.finish_file(fullest).await?;
            }
            let writer = ArrowWriter::try_new(
                Vec::new(),
                self.schema.clone(),
                Some(self.properties.clone()),
            )
            .map_err(|e| Error::Internal(format!("cannot start a Parquet writer: {e}")))?;
            let zone_maps = self
                .schema
                .fields()
                .iter()
                .map(|f| {
                    let bounded = !f.data_type().is_nested() && !crate::types::is_json(f);
                    ColumnZoneMap::new(f.data_type(), bounded)
                })
                .collect::<Result<Vec<_>, datafusion::error::DataFusionError>>()?;
            let leaf_zone_maps = self
                .leaves
                .iter()
                .map(|leaf| ColumnZoneMap::new(&leaf.data_type(&self.schema), true))
                .collect::<Result<Vec<_>, datafusion::error::DataFusionError>>()?;
            self.open.insert(
                key,
                OpenFile {
                    writer,
                    zone_maps,
                    leaf_zone_maps,
                    rows: 0,
                    held: Vec::new(),
                    held_bytes: 0,
                },
            );
        }
        let file = self.open.get_mut(&key).expect("opened above");
        for (zone_map, column) in file.zone_maps.iter_mut().zip(batch.columns()) {
            zone_map.update(column, column.null_count())?;
        }
        for (zone_map, leaf) in file.leaf_zone_maps.iter_mut().zip(&self.leaves) {
            let (values, nulls) = leaf.values(&batch)?;
            zone_map.update(&values, nulls)?;
        }
        let rows = batch.num_rows() as u64;
        if self.sort_by.is_empty() {
            file.writer
                .write(&batch)
                .map_err(|e| Error::Internal(format!("Parquet encoding failed: {e}")))?;
        } else {
            file.held_bytes += batch.get_array_memory_size();
            file.held.push(batch);
        }
        file.rows += rows;
        self.rows_written += rows;
        if file.rows >= FILE_ROWS_MAX {
            self.finish_file(key).await?;
        } else if self.open.len() > 1 {
            self.limit_memory().await?;
        }
        Ok(())
    }

    /// Finishes the open files holding the most memory until all of them
    /// hold at most [`OPEN_FILES_MEMORY_MAX`].
    async fn limit_memory(&mut self) -> Result<()> {
        let size = |f: &OpenFile| f.writer.memory_size() + f.writer.bytes_written() + f.held_bytes;
        loop {
            let total: usize = self.open.values().map(size).sum();
            if total <= OPEN_FILES_MEMORY_MAX {
                return Ok(());
            }
            let Some(largest) = self
                .open
                .iter()
                .max_by_key(|(_, f)| size(f))
                .map(|(k, _)| *k)
            else {
                return Ok(());
            };
            self.finish_file(largest).await?;
        }
    }

    /// Finishes every open file, in partition order.
    async fn finish_files(&mut self) -> Result<()> {
        let keys: Vec<PartitionKey> = self.open.keys().copied().collect();
        for key in keys {
            self.finish_file(key).await?;
        }
        Ok(())
    }

    /// Finishes the last file. Returns the number of rows written.
    ///
    /// # Errors
    /// An I/O error if the file cannot be stored.
    pub async fn finish(mut self) -> Result<u64> {
        self.finish_files().await?;
        Ok(self.rows_written)
    }

    /// Finishes the last file of a writer made by [`Self::in_memory`]:
    /// the files written, in order, with their bytes.
    ///
    /// # Errors
    /// If the last file does not encode.
    pub async fn finish_in_memory(mut self) -> Result<Vec<(DataFile, Bytes)>> {
        self.finish_files().await?;
        match self.destination {
            Destination::Memory(files) => Ok(files),
            Destination::Writes(_) => Err(Error::Internal(
                "a data file writer to a write set has no files in memory".to_owned(),
            )),
        }
    }

    /// Casts `batch` to the file schema and checks NOT NULL columns.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.num_columns() != self.schema.fields().len() {
            return Err(Error::Internal(format!(
                "a batch of {} columns for table {} with {} columns",
                batch.num_columns(),
                self.table.name,
                self.schema.fields().len()
            )));
        }
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for ((column, field), def) in batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .zip(&self.table.columns)
        {
            if !def.nullable && column.null_count() > 0 {
                return Err(Error::User {
                    state: SqlState::NOT_NULL_VIOLATION,
                    message: format!(
                        "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                        def.name, self.table.name
                    ),
                    detail: None,
                });
            }
            check_json(column, &def.column_type, &def.name)?;
            if column.data_type() == field.data_type() {
                columns.push(column.clone());
            } else {
                let cast = cast_with_options(column, field.data_type(), &options).map_err(|e| {
                    Error::User {
                        state: SqlState::INVALID_TEXT_REPRESENTATION,
                        message: format!(
                            "invalid value for column \"{}\" of type {}: {e}",
                            def.name, def.column_type
                        ),
                        detail: None,
                    }
                })?;
                columns.push(cast);
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| {
            Error::Internal(format!("batch does not fit table {}: {e}", self.table.name))
        })
    }

    async fn finish_file(&mut self, key: PartitionKey) -> Result<()> {
        let Some(OpenFile {
            mut writer,
            zone_maps,
            leaf_zone_maps,
            rows: row_count,
            held,
            ..
        }) = self.open.remove(&key)
        else {
            return Ok(());
        };
        if !held.is_empty() {
            let sorted = sorted_rows(&self.schema, &held, &self.sort_by)?;
            writer
                .write(&sorted)
                .map_err(|e| Error::Internal(format!("Parquet encoding failed: {e}")))?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|e| Error::Internal(format!("Parquet encoding failed: {e}")))?;
        let mut column_stats = Vec::with_capacity(zone_maps.len() + leaf_zone_maps.len());
        for (zone_map, column) in zone_maps.into_iter().zip(&self.table.columns) {
            column_stats.push(zone_map.finish(column.field_id)?);
        }
        for (zone_map, leaf) in leaf_zone_maps.into_iter().zip(&self.leaves) {
            column_stats.push(zone_map.finish(leaf.field_id)?);
        }
        let bytes = Bytes::from(bytes);
        let file = DataFile {
            chunk: quarry_storage::new_chunk_id(),
            size_bytes: bytes.len() as u64,
            checksum_crc32c: crc32c::crc32c(&bytes),
            row_count,
            column_stats,
        };
        match &mut self.destination {
            Destination::Writes(writes) => {
                let (mut file, bytes) = if self.holds_small_files {
                    match writes.hold(self.table.id, file, bytes) {
                        Ok(()) => return Ok(()),
                        Err(refused) => refused,
                    }
                } else {
                    (file, bytes)
                };
                let chunk = writes.put(&self.table, bytes).await?;
                file.chunk = chunk.id;
                file.size_bytes = chunk.size_bytes;
                file.checksum_crc32c = chunk.checksum_crc32c;
                writes.add(self.table.id, file);
            }
            Destination::Memory(files) => files.push((file, bytes)),
        }
        Ok(())
    }
}

/// `batches` as one batch sorted by the columns at `sort_by` (ascending,
/// NULLs last, as BigQuery orders clustered data).
fn sorted_rows(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    sort_by: &[usize],
) -> Result<RecordBatch> {
    let internal = |e: datafusion::arrow::error::ArrowError| {
        Error::Internal(format!("sorting a clustered file's rows: {e}"))
    };
    let all = concat_batches(schema, batches).map_err(internal)?;
    let columns: Vec<SortColumn> = sort_by
        .iter()
        .map(|i| SortColumn {
            values: all.column(*i).clone(),
            options: Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
        })
        .collect();
    let order = lexsort_to_indices(&columns, None).map_err(internal)?;
    take_record_batch(&all, &order).map_err(internal)
}

/// A zone-map value from an engine scalar; None for NULL or unsupported types.
pub fn datum_of(value: &ScalarValue) -> Option<Datum> {
    Some(match value {
        ScalarValue::Boolean(Some(v)) => Datum::Boolean(*v),
        ScalarValue::Int8(Some(v)) => Datum::Int(*v as i64),
        ScalarValue::Int16(Some(v)) => Datum::Int(*v as i64),
        ScalarValue::Int32(Some(v)) => Datum::Int(*v as i64),
        ScalarValue::Int64(Some(v)) => Datum::Int(*v),
        ScalarValue::Float32(Some(v)) => Datum::Float(*v as f64),
        ScalarValue::Float64(Some(v)) => Datum::Float(*v),
        ScalarValue::Decimal128(Some(v), _, _) => Datum::Decimal(*v),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Datum::Text(v.clone()),
        ScalarValue::Date32(Some(v)) => Datum::Date(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Datum::Timestamp(*v),
        ScalarValue::Binary(Some(v))
        | ScalarValue::LargeBinary(Some(v))
        | ScalarValue::BinaryView(Some(v)) => Datum::Bytes(v.clone()),
        _ => return None,
    })
}

/// 22P02 unless every value of `column` that a JSON type (at any depth of
/// `column_type`) holds parses as JSON (RFC 8259).
fn check_json(column: &ArrayRef, column_type: &ColumnType, name: &str) -> Result<()> {
    use datafusion::arrow::array::AsArray;
    match column_type {
        ColumnType::Json => {
            let text = cast(column, &DataType::Utf8)
                .map_err(|e| Error::Internal(format!("JSON column {name} as text: {e}")))?;
            for value in text.as_string::<i32>().iter().flatten() {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(value) {
                    return Err(Error::User {
                        state: SqlState::INVALID_TEXT_REPRESENTATION,
                        message: format!("invalid input syntax for type json: {e}"),
                        detail: Some(format!("column \"{name}\": {value}")),
                    });
                }
            }
            Ok(())
        }
        ColumnType::Array(element) => match column.as_list_opt::<i32>() {
            Some(list) => check_json(list.values(), &element.column_type, name),
            None => Ok(()),
        },
        ColumnType::Struct(fields) => match column.as_struct_opt() {
            Some(array) => fields
                .iter()
                .zip(array.columns())
                .try_for_each(|(f, c)| check_json(c, &f.column_type, name)),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The engine scalar of a zone-map value of a column of type `column_type`;
/// a typed NULL when `datum` is None.
pub fn scalar_of(datum: Option<&Datum>, column_type: &ColumnType) -> ScalarValue {
    match (column_type, datum) {
        (ColumnType::Boolean, Some(Datum::Boolean(v))) => ScalarValue::Boolean(Some(*v)),
        (ColumnType::Int16, Some(Datum::Int(v))) => ScalarValue::Int16(Some(*v as i16)),
        (ColumnType::Int32, Some(Datum::Int(v))) => ScalarValue::Int32(Some(*v as i32)),
        (ColumnType::Int64, Some(Datum::Int(v))) => ScalarValue::Int64(Some(*v)),
        (ColumnType::Float32, Some(Datum::Float(v))) => ScalarValue::Float32(Some(*v as f32)),
        (ColumnType::Float64, Some(Datum::Float(v))) => ScalarValue::Float64(Some(*v)),
        (ColumnType::Decimal { precision, scale }, Some(Datum::Decimal(v))) => {
            ScalarValue::Decimal128(Some(*v), *precision, *scale)
        }
        (ColumnType::Text, Some(Datum::Text(v))) => ScalarValue::Utf8(Some(v.clone())),
        (ColumnType::Date, Some(Datum::Date(v))) => ScalarValue::Date32(Some(*v)),
        (ColumnType::Timestamp, Some(Datum::Timestamp(v))) => {
            ScalarValue::TimestampMicrosecond(Some(*v), None)
        }
        (ColumnType::TimestampTz, Some(Datum::Timestamp(v))) => {
            ScalarValue::TimestampMicrosecond(Some(*v), Some("UTC".into()))
        }
        (ColumnType::Bytea, Some(Datum::Bytes(v))) => ScalarValue::Binary(Some(v.clone())),
        (t, _) => ScalarValue::try_from(&crate::types::arrow_type(t)).unwrap_or(ScalarValue::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use quarry_common::catalog::Column;
    use quarry_storage::ChunkStore;

    use crate::chunks::LocalFiles;

    fn table() -> Arc<Table> {
        Arc::new(Table {
            id: 7,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    field_id: 1,
                    name: "id".into(),
                    column_type: ColumnType::Int64,
                    nullable: false,
                    default: None,
                },
                Column {
                    field_id: 2,
                    name: "name".into(),
                    column_type: ColumnType::Text,
                    nullable: true,
                    default: None,
                },
            ],
            schema_id: 0,
            past_schemas: vec![],
            next_field_id: 3,
            snapshots: Default::default(),
            files: Default::default(),
            live_files: Default::default(),
            buffer: Default::default(),
            moved: Default::default(),
            deletes: Default::default(),
            retention_micros: None,
            layout: None,
            partitioning: None,
            file_layout: None,
        })
    }

    fn batch(table: &Table, ids: Vec<i64>) -> RecordBatch {
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 2 == 0).then(|| format!("n{i}")))
            .collect();
        RecordBatch::try_new(
            crate::types::table_schema(table),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .expect("batch")
    }

    #[tokio::test]
    async fn a_holding_write_set_keeps_small_files_in_memory_until_commit_or_rollback() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = ChunkStore::open(dir.path()).expect("store");
        let files: Arc<dyn DataFileStore> = Arc::new(LocalFiles(chunks.clone()));
        let writes = Arc::new(WriteSet::holding(files.clone(), SMALL_FILE_ROWS));
        let table = table();
        let write = |ids: Vec<i64>, stripes: bool| {
            let (table, writes) = (table.clone(), writes.clone());
            async move {
                let mut writer = DataFileWriter::new(table.clone(), writes);
                if stripes {
                    writer = writer.into_stripes();
                }
                writer.write(batch(&table, ids)).await.expect("write");
                writer.finish().await.expect("finish");
            }
        };
        // A small file is held, not stored.
        write(vec![1, 2, 3], false).await;
        assert!(chunks.list().expect("list").is_empty());
        let held = writes.held();
        assert_eq!(held.len(), 1);
        let first = writes.added_to(7)[0].clone();
        assert_eq!(held[&first.chunk].len() as u64, first.size_bytes);
        assert_eq!(crc32c::crc32c(&held[&first.chunk]), first.checksum_crc32c);
        // A file that is not small, and one from a writer into stripes, are stored.
        write((0..SMALL_FILE_ROWS as i64).collect(), false).await;
        write(vec![4], true).await;
        assert_eq!(chunks.list().expect("list").len(), 2);
        assert_eq!(writes.held().len(), 1);
        // Held files a savepoint rolls back are forgotten; one replaced too.
        let depth = writes.savepoint();
        write(vec![5], false).await;
        assert_eq!(writes.held().len(), 2);
        writes.rollback_to(depth);
        assert_eq!(writes.held().len(), 1);
        write(vec![6], false).await;
        let sixth = writes.added_to(7).last().expect("sixth").chunk;
        writes.release(0);
        writes.remove(7, sixth);
        assert_eq!(writes.held().keys().collect::<Vec<_>>(), [&first.chunk]);
        // The commit takes the held bytes; the set is then empty.
        let taken = writes.take().await.expect("take");
        assert_eq!(taken.changes[0].added.len(), 3);
        assert_eq!(taken.held.len(), 1);
        assert_eq!(taken.held[0].0, first.chunk);
        assert!(writes.held().is_empty());
        // Room for held bytes is bounded: past it, small files are stored.
        let writes = Arc::new(WriteSet::holding(files.clone(), SMALL_FILE_ROWS));
        let big = Bytes::from(vec![0u8; HELD_BYTES_MAX]);
        let file = |chunk: u128| DataFile {
            chunk: ChunkId(chunk),
            size_bytes: 0,
            checksum_crc32c: 0,
            row_count: 1,
            column_stats: vec![],
        };
        assert!(writes.hold(7, file(1), big.clone()).is_ok());
        assert!(writes.hold(7, file(2), Bytes::from_static(b"x")).is_err());
        // A write set that does not hold gives every file back.
        let plain = WriteSet::new(files);
        assert!(plain.hold(7, file(3), Bytes::from_static(b"x")).is_err());
    }

    #[tokio::test]
    async fn written_files_carry_zone_maps_and_dropping_the_write_set_deletes_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = ChunkStore::open(dir.path()).expect("store");
        let files: Arc<dyn DataFileStore> = Arc::new(LocalFiles(chunks.clone()));
        let writes = Arc::new(WriteSet::new(files.clone()));
        let table = table();
        let mut writer = DataFileWriter::new(table.clone(), writes.clone());
        writer
            .write(batch(&table, vec![5, 3, 9, 4]))
            .await
            .expect("write");
        assert_eq!(writer.finish().await.expect("finish"), 4);
        assert_eq!(chunks.list().expect("list").len(), 1);
        let changes = writes.take().await.expect("take").changes;
        let file = &changes[0].added[0];
        assert_eq!(file.row_count, 4);
        assert_eq!(file.column_stats[0].min, Some(Datum::Int(3)));
        assert_eq!(file.column_stats[0].max, Some(Datum::Int(9)));
        assert_eq!(file.column_stats[1].null_count, 3);

        // Files taken for commit survive the write set; pending ones do not.
        let mut writer = DataFileWriter::new(table.clone(), writes.clone());
        writer.write(batch(&table, vec![1])).await.expect("write");
        writer.finish().await.expect("finish");
        assert_eq!(chunks.list().expect("list").len(), 2);
        drop(writes);
        assert_eq!(chunks.list().expect("list"), vec![file.chunk]);
    }

    #[tokio::test]
    async fn savepoints_keep_the_files_they_may_bring_back_and_delete_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = ChunkStore::open(dir.path()).expect("store");
        let writes = Arc::new(WriteSet::new(Arc::new(LocalFiles(chunks.clone()))));
        let table = table();
        let write = |ids: Vec<i64>| {
            let (table, writes) = (table.clone(), writes.clone());
            async move {
                let mut writer = DataFileWriter::new(table.clone(), writes);
                writer.write(batch(&table, ids)).await.expect("write");
                writer.finish().await.expect("finish");
            }
        };
        write(vec![1]).await;
        let first = writes.added_to(table.id)[0].chunk;
        let a = writes.savepoint();
        // Replacing the first file after the savepoint keeps its bytes: a
        // rollback to the savepoint brings it back.
        writes.remove(table.id, first);
        write(vec![2]).await;
        let second = writes.added_to(table.id)[0].chunk;
        assert_eq!(chunks.list().expect("list").len(), 2);
        writes.rollback_to(a);
        let added: Vec<ChunkId> = writes.added_to(table.id).iter().map(|f| f.chunk).collect();
        assert_eq!(added, vec![first]);
        assert_eq!(
            chunks.list().expect("list"),
            vec![first],
            "the second file is gone"
        );

        // Without a savepoint holding it, a replaced file goes at once.
        let b = writes.savepoint();
        write(vec![3]).await;
        let third = writes.added_to(table.id)[1].chunk;
        writes.release(b);
        writes.remove(table.id, third);
        assert_eq!(chunks.list().expect("list"), vec![first]);
        assert_ne!(second, third);

        // A file only a savepoint still holds is not committed, and deleted.
        writes.savepoint();
        writes.remove(table.id, first);
        write(vec![4]).await;
        let fourth = writes.added_to(table.id)[0].chunk;
        let changes = writes.take().await.expect("take").changes;
        let committed: Vec<ChunkId> = changes[0].added.iter().map(|f| f.chunk).collect();
        assert_eq!(committed, vec![fourth]);
        assert_eq!(chunks.list().expect("list"), vec![fourth]);

        // A rolled-back transaction deletes what only a savepoint held too.
        write(vec![5]).await;
        let fifth = writes.added_to(table.id)[0].chunk;
        writes.savepoint();
        writes.remove(table.id, fifth);
        assert_eq!(
            chunks.list().expect("list").len(),
            2,
            "the savepoint holds it"
        );
        writes.discard();
        assert_eq!(chunks.list().expect("list"), vec![fourth]);
    }

    #[tokio::test]
    async fn a_batch_larger_than_a_file_is_split_at_file_rows_max() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = ChunkStore::open(dir.path()).expect("store");
        let writes = Arc::new(WriteSet::new(Arc::new(LocalFiles(chunks.clone()))));
        let table = table();
        let mut writer = DataFileWriter::new(table.clone(), writes.clone());
        writer
            .write(batch(&table, vec![0; 10]))
            .await
            .expect("write");
        let rows = FILE_ROWS_MAX as i64 + 5;
        writer
            .write(batch(&table, (0..rows).collect()))
            .await
            .expect("write");
        assert_eq!(writer.finish().await.expect("finish"), rows as u64 + 10);
        let changes = writes.take().await.expect("take").changes;
        let counts: Vec<u64> = changes[0].added.iter().map(|f| f.row_count).collect();
        assert_eq!(counts, vec![FILE_ROWS_MAX, 15]);
        assert_eq!(chunks.list().expect("list").len(), 2);
    }

    #[tokio::test]
    async fn a_null_in_a_not_null_column_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks: Arc<dyn DataFileStore> =
            Arc::new(LocalFiles(ChunkStore::open(dir.path()).expect("store")));
        let table = table();
        let mut writer = DataFileWriter::new(table.clone(), Arc::new(WriteSet::new(chunks)));
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b")]));
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "id",
                datafusion::arrow::datatypes::DataType::Int64,
                true,
            ),
            datafusion::arrow::datatypes::Field::new(
                "name",
                datafusion::arrow::datatypes::DataType::Utf8,
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(schema, vec![ids, names]).expect("batch");
        let e = writer.write(batch).await.expect_err("null id");
        assert_eq!(e.sqlstate(), SqlState::NOT_NULL_VIOLATION);
    }

    #[test]
    fn zone_map_values_round_trip_through_scalars() {
        let cases = [
            (ColumnType::Int32, Datum::Int(-7)),
            (ColumnType::Int64, Datum::Int(1 << 40)),
            (ColumnType::Float64, Datum::Float(2.5)),
            (
                ColumnType::Decimal {
                    precision: 15,
                    scale: 2,
                },
                Datum::Decimal(12345),
            ),
            (ColumnType::Text, Datum::Text("abc".into())),
            (ColumnType::Date, Datum::Date(10_000)),
            (
                ColumnType::Timestamp,
                Datum::Timestamp(1_700_000_000_000_000),
            ),
            (ColumnType::Boolean, Datum::Boolean(true)),
        ];
        for (column_type, datum) in cases {
            let scalar = scalar_of(Some(&datum), &column_type);
            assert_eq!(datum_of(&scalar), Some(datum), "{column_type}");
        }
        assert!(scalar_of(None, &ColumnType::Int32).is_null());
    }
}
