//! The catalog model: what Raft replicates about schemas, tables and their data.
//!
//! A table's data is a set of immutable data files (Parquet, one per chunk). Each
//! commit creates a table snapshot; a file belongs to every snapshot from the one
//! that added it up to (not including) the one that removed it. That keeps each
//! file recorded once however long the history, in the manner of Iceberg manifests.
//!
//! Ids ([`SchemaId`], [`TableId`], [`SnapshotId`]) come from one catalog-wide
//! sequence, so snapshot ids increase with commit order across all tables.
//!
//! Every catalog version shares structure with the one before it: tables are
//! `Arc`s in persistent ordered maps, a table's snapshots and files are
//! persistent vectors, stripes a persistent map (imbl's B-trees and RRB
//! vectors). Cloning a catalog or a table is O(1) and a commit copies only the
//! paths it changes, O(log n), however long the history and however many
//! tables: the Raft state machine publishes a new version per applied batch
//! while statements keep reading the versions they pinned. Serialized, the
//! maps and vectors are plain maps and sequences, the same encoding as
//! `BTreeMap` and `Vec`.

use std::collections::BTreeMap;

use imbl::{OrdMap, Vector};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Id of a schema (namespace of tables).
pub type SchemaId = u64;
/// Id of a table; stays the same across renames.
pub type TableId = u64;
/// Id of a table snapshot; increases with commit order, catalog-wide.
pub type SnapshotId = u64;
/// Id of a column within its table; never reused, so renames and drops never
/// rewrite data files (Iceberg's field ids).
pub type FieldId = u32;
/// Microseconds since the Unix epoch (UTC).
pub type TimestampMicros = i64;

/// Name of the schema a new database starts with, as in PostgreSQL.
pub const DEFAULT_SCHEMA: &str = "public";

/// Id of a chunk: a 128-bit random id (UUID v7, so ids sort by creation time).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId(pub u128);

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl std::str::FromStr for ChunkId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(ChunkId)
    }
}

/// A column's type. Each maps to one Arrow type (see `quarry-exec`) and one
/// PostgreSQL type OID on the wire.
///
/// Arrays and structs nest to any depth, as Dremel's repeated and group
/// fields do (Melnik et al., "Dremel: Interactive Analysis of Web-Scale
/// Datasets", VLDB 2010, section 3); every nested field has its own field id,
/// written into data files as its Parquet field id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    /// BOOLEAN.
    Boolean,
    /// SMALLINT (int2).
    Int16,
    /// INTEGER (int4).
    Int32,
    /// BIGINT (int8).
    Int64,
    /// REAL (float4).
    Float32,
    /// DOUBLE PRECISION (float8).
    Float64,
    /// NUMERIC(precision, scale), precision 1..=38.
    Decimal {
        /// Total number of decimal digits, 1..=38.
        precision: u8,
        /// Digits after the decimal point, 0..=precision.
        scale: i8,
    },
    /// TEXT, VARCHAR and CHAR.
    Text,
    /// DATE: days since 1970-01-01.
    Date,
    /// TIMESTAMP (without time zone), microsecond precision.
    Timestamp,
    /// TIMESTAMPTZ, microsecond precision, stored as UTC.
    TimestampTz,
    /// BYTEA.
    Bytea,
    /// JSON (and JSONB): a JSON document, kept as the text it was given after
    /// checking that it parses (RFC 8259).
    Json,
    /// `T[]` / `ARRAY<T>`: a one-dimensional array whose elements may be NULL.
    Array(Box<NestedField>),
    /// `STRUCT<a T, ...>` / a row value: named fields, each of which may be
    /// NULL.
    Struct(Vec<NestedField>),
}

/// A field inside an array or struct column: an array's element (named
/// `item`) or one of a struct's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedField {
    /// Stable id, unique within the table (0 until the catalog assigns one).
    pub field_id: FieldId,
    /// The field's name.
    pub name: String,
    /// The field's type.
    pub column_type: ColumnType,
}

impl NestedField {
    /// An array's element field of `column_type`, its id not yet assigned,
    /// named `item` as Arrow names list elements.
    pub fn element(column_type: ColumnType) -> NestedField {
        NestedField {
            field_id: 0,
            name: "item".to_owned(),
            column_type,
        }
    }
}

impl ColumnType {
    /// Whether values of this type are arrays or structs.
    pub fn is_nested(&self) -> bool {
        matches!(self, ColumnType::Array(_) | ColumnType::Struct(_))
    }

    /// Gives every nested field a fresh id from `next`, depth first.
    pub fn assign_field_ids(&mut self, next: &mut FieldId) {
        let fields: &mut [NestedField] = match self {
            ColumnType::Array(element) => std::slice::from_mut(element.as_mut()),
            ColumnType::Struct(fields) => fields,
            _ => return,
        };
        for field in fields {
            field.field_id = *next;
            *next += 1;
            field.column_type.assign_field_ids(next);
        }
    }

    /// The fields this type nests directly: an array's element, a struct's
    /// fields; none for other types.
    pub fn nested_fields(&self) -> &[NestedField] {
        match self {
            ColumnType::Array(element) => std::slice::from_ref(element.as_ref()),
            ColumnType::Struct(fields) => fields,
            _ => &[],
        }
    }

    /// The type of the field with id `field` nested at any depth inside
    /// this type.
    pub fn field_type(&self, field: FieldId) -> Option<&ColumnType> {
        self.nested_fields().iter().find_map(|f| {
            if f.field_id == field {
                Some(&f.column_type)
            } else {
                f.column_type.field_type(field)
            }
        })
    }

    /// The largest field id inside this type, if it nests any.
    pub fn max_field_id(&self) -> Option<FieldId> {
        self.nested_fields()
            .iter()
            .map(|f| f.column_type.max_field_id().unwrap_or(0).max(f.field_id))
            .max()
    }

    /// This type with the field ids of `old` kept where a nested field of the
    /// same name and position in the tree exists there, and fresh ids from
    /// `next` elsewhere (ALTER COLUMN ... TYPE of a struct that gains fields).
    pub fn keep_field_ids(&mut self, old: &ColumnType, next: &mut FieldId) {
        match (self, old) {
            (ColumnType::Array(new), ColumnType::Array(old)) => {
                new.field_id = old.field_id;
                new.column_type.keep_field_ids(&old.column_type, next);
            }
            (ColumnType::Struct(new), ColumnType::Struct(old)) => {
                for field in new {
                    match old.iter().find(|o| o.name == field.name) {
                        Some(o) => {
                            field.field_id = o.field_id;
                            field.column_type.keep_field_ids(&o.column_type, next);
                        }
                        None => {
                            field.field_id = *next;
                            *next += 1;
                            field.column_type.assign_field_ids(next);
                        }
                    }
                }
            }
            (new, _) => new.assign_field_ids(next),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Int16 => f.write_str("smallint"),
            ColumnType::Int32 => f.write_str("integer"),
            ColumnType::Int64 => f.write_str("bigint"),
            ColumnType::Float32 => f.write_str("real"),
            ColumnType::Float64 => f.write_str("double precision"),
            ColumnType::Decimal { precision, scale } => write!(f, "numeric({precision},{scale})"),
            ColumnType::Text => f.write_str("text"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp without time zone"),
            ColumnType::TimestampTz => f.write_str("timestamp with time zone"),
            ColumnType::Bytea => f.write_str("bytea"),
            ColumnType::Json => f.write_str("json"),
            ColumnType::Array(element) => match &element.column_type {
                // PostgreSQL's spelling where it has one (`bigint[]`), which
                // it has not for arrays of arrays or of anonymous records.
                t @ (ColumnType::Array(_) | ColumnType::Struct(_)) => write!(f, "ARRAY<{t}>"),
                t => write!(f, "{t}[]"),
            },
            ColumnType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{} {}", field.name, field.column_type)?;
                }
                f.write_str(">")
            }
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Stable id, written into data files as the Parquet field id.
    pub field_id: FieldId,
    /// Current name (lower case unless created quoted).
    pub name: String,
    /// Value type.
    pub column_type: ColumnType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The value of rows whose data file predates the column (ADD COLUMN ...
    /// DEFAULT), and of inserted rows that give none; None: NULL.
    pub default: Option<Datum>,
}

/// A past version of a table's columns, kept for time travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// The version number.
    pub id: u32,
    /// The columns as they were.
    pub columns: Vec<Column>,
}

/// A single value in a zone map (min or max of a column in one data file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Datum {
    /// BOOLEAN.
    Boolean(bool),
    /// Any integer type, widened.
    Int(i64),
    /// REAL or DOUBLE PRECISION, widened.
    Float(f64),
    /// NUMERIC as its unscaled 128-bit integer (scale from the column type).
    Decimal(i128),
    /// TEXT: the exact min or max.
    Text(String),
    /// DATE in days since the epoch.
    Date(i32),
    /// TIMESTAMP or TIMESTAMPTZ in microseconds since the epoch.
    Timestamp(TimestampMicros),
    /// BYTEA.
    Bytes(Vec<u8>),
}

/// Statistics of one column in one data file, used to skip files (zone maps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// The column's field id.
    pub field_id: FieldId,
    /// Number of NULL values.
    pub null_count: u64,
    /// Smallest non-null value, if known.
    pub min: Option<Datum>,
    /// Largest non-null value, if known.
    pub max: Option<Datum>,
}

/// An immutable Parquet data file, stored as one chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    /// The chunk that holds the file's bytes.
    pub chunk: ChunkId,
    /// Length of the file in bytes.
    pub size_bytes: u64,
    /// CRC-32C (Castagnoli) of the whole file, verified on every read.
    pub checksum_crc32c: u32,
    /// Number of rows in the file.
    pub row_count: u64,
    /// Zone map per column, in column order at write time, then one per
    /// scalar field reached through structs alone (`s.a.b`), by its field id.
    pub column_stats: Vec<ColumnStats>,
}

/// A data file and the snapshots it belongs to: `added_in <= s < removed_in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file.
    pub file: DataFile,
    /// The snapshot that added the file.
    pub added_in: SnapshotId,
    /// The snapshot that removed it, if any.
    pub removed_in: Option<SnapshotId>,
}

/// What a commit did, shown in snapshot history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// CREATE TABLE (possibly with the rows of CREATE TABLE AS).
    Create,
    /// INSERT or COPY: files added, none removed.
    Append,
    /// DELETE, UPDATE, MERGE: files replaced by rewritten ones.
    Rewrite,
    /// ALTER TABLE: new columns, same data files.
    Alter,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Create => f.write_str("create"),
            Operation::Append => f.write_str("append"),
            Operation::Rewrite => f.write_str("rewrite"),
            Operation::Alter => f.write_str("alter"),
        }
    }
}

/// One commit of a table: the state of its data at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// Snapshot id.
    pub id: SnapshotId,
    /// When the commit was applied (leader's clock, strictly increasing).
    pub committed_at: TimestampMicros,
    /// What the commit did.
    pub operation: Operation,
    /// Rows in the table at this snapshot.
    pub row_count: u64,
    /// Rows the commit added.
    pub rows_added: u64,
    /// The version of the table's columns this snapshot has.
    pub schema_id: u32,
}

/// A table: its columns, its snapshot history and the data files of that history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Table id.
    pub id: TableId,
    /// Name of the schema it lives in.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Current columns in order.
    pub columns: Vec<Column>,
    /// Version number of `columns`; ALTER TABLE makes a new one.
    pub schema_id: u32,
    /// Earlier versions of the columns that retained snapshots still have.
    pub past_schemas: Vec<SchemaVersion>,
    /// Next unused field id.
    pub next_field_id: FieldId,
    /// Snapshots, oldest first; never empty (creation makes the first).
    pub snapshots: Vector<TableSnapshot>,
    /// Every data file of any snapshot in `snapshots`, in the order they
    /// were added.
    pub files: Vector<FileEntry>,
    /// Where each file not yet removed is in `files`, by chunk (derived from
    /// `files`, kept in step by [`Table::add_files`] and
    /// [`Table::remove_files`]; rebuilt by [`Catalog::reindex`]).
    #[serde(skip)]
    pub live_files: OrdMap<ChunkId, usize>,
    /// How long snapshots stay readable by time travel after a newer one
    /// replaces them; None: the cluster default (7 days).
    pub retention_micros: Option<i64>,
    /// Stripe layout of new data files; None: the cluster default for its
    /// size ([`StripeLayout::for_cluster`]).
    pub layout: Option<StripeLayout>,
    /// The replicated ingest buffer: the bytes of the data files held in the
    /// catalog itself (small appends of the streaming API) rather than in
    /// stripes, by chunk, until the compactor moves their rows into
    /// full-size data files. Written to snapshots as records of their own.
    #[serde(skip)]
    pub buffer: OrdMap<ChunkId, bytes::Bytes>,
    /// Where the rows of buffered files the compactor has moved now are, in
    /// order, for the snapshots that still read those files (time travel,
    /// older transactions) until they expire.
    #[serde(skip)]
    pub moved: OrdMap<ChunkId, Vec<RowRange>>,
    /// How its rows are divided into partitions, if they are (set once,
    /// right after creation, by `Command::SetPartitioning`). A record of
    /// its own in the Raft snapshot file.
    #[serde(skip)]
    pub partitioning: Option<Arc<crate::partition::Partitioning>>,
    /// How rows are laid out within its data files, if they are (set once,
    /// right after creation, by `Command::SetFileLayout`). A record of its
    /// own in the Raft snapshot file.
    #[serde(skip)]
    pub file_layout: Option<Arc<crate::partition::FileLayout>>,
    /// Rows of data files deleted without rewriting the files (deletion
    /// vectors: merge-on-read DELETE and UPDATE), by chunk: each file's
    /// vectors, oldest first, each holding every row deleted as of its
    /// snapshot. Records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub deletes: OrdMap<ChunkId, Vector<DeletionVector>>,
}

/// The rows of one data file deleted as of a snapshot: positions counted
/// from 0 in the file's row order, as a roaring bitmap (Chambi et al.,
/// "Better bitmap performance with Roaring bitmaps", 2016; Iceberg v3's
/// and Delta Lake's deletion vectors are the same idea). A scan skips
/// them; the compactor rewrites a file without them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletionVector {
    /// The snapshot from which on these rows are deleted (until a newer
    /// vector of the same file, or the file's removal).
    pub snapshot: SnapshotId,
    /// The deleted rows' positions.
    pub rows: Arc<roaring::RoaringBitmap>,
}

/// Why rows could not be deleted by a deletion vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteConflict {
    /// The file is not in the current snapshot (a commit removed it).
    FileGone,
    /// A commit deleted one of the rows already (or there is no such row).
    RowGone,
}

/// Rows `first_row .. first_row + rows` of a data file: where rows of a
/// buffered file went when the compactor moved them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRange {
    /// The data file's chunk.
    pub chunk: ChunkId,
    /// Its length in bytes.
    pub size_bytes: u64,
    /// Its CRC-32C.
    pub checksum_crc32c: u32,
    /// The first row, counted from 0.
    pub first_row: u64,
    /// How many rows.
    pub rows: u64,
}

/// How long old snapshots stay readable unless a table says otherwise: 7 days,
/// BigQuery's default time travel window.
pub const DEFAULT_RETENTION_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

impl Table {
    /// The type of the column or nested field with id `field`.
    pub fn field_type(&self, field: FieldId) -> Option<&ColumnType> {
        self.columns.iter().find_map(|c| {
            if c.field_id == field {
                Some(&c.column_type)
            } else {
                c.column_type.field_type(field)
            }
        })
    }

    /// The newest snapshot.
    pub fn current_snapshot(&self) -> &TableSnapshot {
        self.snapshots
            .last()
            .expect("a table always has its creation snapshot")
    }

    /// The bytes of the data files the current snapshot reads.
    pub fn current_bytes(&self) -> u64 {
        self.files_at(self.current_snapshot().id)
            .map(|f| f.size_bytes)
            .sum()
    }

    /// The snapshot that was current at `at`, or None if the table did not exist yet.
    pub fn snapshot_as_of(&self, at: TimestampMicros) -> Option<&TableSnapshot> {
        // Commit times strictly increase, so this finds the first newer one.
        let newer = match self.snapshots.binary_search_by(|s| {
            if s.committed_at <= at {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        }) {
            Ok(i) | Err(i) => i,
        };
        newer.checked_sub(1).map(|i| &self.snapshots[i])
    }

    /// Appends `files` as added in snapshot `snapshot`.
    pub fn add_files(&mut self, files: impl IntoIterator<Item = DataFile>, snapshot: SnapshotId) {
        for file in files {
            self.live_files.insert(file.chunk, self.files.len());
            self.files.push_back(FileEntry {
                file,
                added_in: snapshot,
                removed_in: None,
            });
        }
    }

    /// The live (not yet removed) file entry of `chunk`.
    pub fn live_file(&self, chunk: ChunkId) -> Option<&FileEntry> {
        self.live_files.get(&chunk).map(|&i| &self.files[i])
    }

    /// Marks the live files of `chunks` removed in snapshot `snapshot`;
    /// returns the rows they held (less those deleted by their deletion
    /// vectors). Chunks that are not live are skipped.
    pub fn remove_files(&mut self, chunks: &[ChunkId], snapshot: SnapshotId) -> u64 {
        let mut rows = 0;
        for chunk in chunks {
            if let Some(i) = self.live_files.remove(chunk) {
                let deleted = self.deleted_count(*chunk, snapshot);
                let entry = &mut self.files[i];
                entry.removed_in = Some(snapshot);
                rows += entry.file.row_count - deleted;
            }
        }
        rows
    }

    /// The rows of data file `chunk` deleted as of snapshot `snapshot`
    /// (its newest deletion vector no newer than it), if any are.
    pub fn deleted_rows(
        &self,
        chunk: ChunkId,
        snapshot: SnapshotId,
    ) -> Option<&Arc<roaring::RoaringBitmap>> {
        self.deletes
            .get(&chunk)?
            .iter()
            .rev()
            .find(|v| v.snapshot <= snapshot)
            .map(|v| &v.rows)
    }

    /// How many rows of data file `chunk` are deleted as of `snapshot`.
    pub fn deleted_count(&self, chunk: ChunkId, snapshot: SnapshotId) -> u64 {
        self.deleted_rows(chunk, snapshot).map_or(0, |r| r.len())
    }

    /// The snapshot of data file `chunk`'s newest deletion vector, if it
    /// has one: a commit that read the file before it would undo its
    /// deletes by rewriting the file.
    pub fn deleted_since(&self, chunk: ChunkId) -> Option<SnapshotId> {
        self.deletes.get(&chunk)?.last().map(|v| v.snapshot)
    }

    /// Checks that `rows` of live data file `chunk` can be deleted now:
    /// the file is live, each row exists, and none is deleted already.
    ///
    /// # Errors
    /// What stands in the way.
    pub fn check_delete(
        &self,
        chunk: ChunkId,
        rows: &roaring::RoaringBitmap,
    ) -> Result<(), DeleteConflict> {
        let entry = self.live_file(chunk).ok_or(DeleteConflict::FileGone)?;
        if rows
            .max()
            .is_some_and(|last| u64::from(last) >= entry.file.row_count)
        {
            return Err(DeleteConflict::RowGone);
        }
        if let Some(deleted) = self.deletes.get(&chunk).and_then(|h| h.last())
            && !deleted.rows.is_disjoint(rows)
        {
            return Err(DeleteConflict::RowGone);
        }
        Ok(())
    }

    /// Deletes `rows` of live data file `chunk` from snapshot `snapshot` on
    /// (checked by [`Table::check_delete`] first); returns how many.
    pub fn delete_rows(
        &mut self,
        chunk: ChunkId,
        rows: &roaring::RoaringBitmap,
        snapshot: SnapshotId,
    ) -> u64 {
        let history = self.deletes.entry(chunk).or_default();
        let mut all = history
            .last()
            .map(|v| v.rows.as_ref().clone())
            .unwrap_or_default();
        let before = all.len();
        all |= rows;
        let added = all.len() - before;
        if history.last().is_some_and(|v| v.snapshot == snapshot) {
            history.pop_back();
        }
        history.push_back(DeletionVector {
            snapshot,
            rows: Arc::new(all),
        });
        added
    }

    /// Forgets deletion vectors no snapshot from `keep_from` on reads: those
    /// of files no longer in the table, and each file's vectors older than
    /// the one `keep_from` reads.
    pub fn expire_deletes(&mut self, keep_from: SnapshotId) {
        let files: std::collections::HashSet<ChunkId> =
            self.files.iter().map(|e| e.file.chunk).collect();
        let chunks: Vec<ChunkId> = self.deletes.keys().copied().collect();
        for chunk in chunks {
            if !files.contains(&chunk) {
                self.deletes.remove(&chunk);
                continue;
            }
            let Some(history) = self.deletes.get_mut(&chunk) else {
                continue;
            };
            if let Some(read) = history.iter().rposition(|v| v.snapshot <= keep_from) {
                let _older = history.slice(..read);
            }
        }
    }

    /// Rebuilds `live_files` from `files` (after decoding, or after `files`
    /// was edited as a whole).
    pub fn reindex(&mut self) {
        self.live_files = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, e)| e.removed_in.is_none())
            .map(|(i, e)| (e.file.chunk, i))
            .collect();
    }

    /// The files of the current snapshot held in the ingest buffer.
    pub fn buffered_files(&self) -> impl Iterator<Item = &DataFile> {
        self.buffered_entries().into_iter().map(|e| &e.file)
    }

    /// The entries of the current snapshot's buffered files, oldest first
    /// (found from the buffer, not by walking the table's history).
    pub fn buffered_entries(&self) -> Vec<&FileEntry> {
        let mut at: Vec<usize> = self
            .buffer
            .keys()
            .filter_map(|chunk| self.live_files.get(chunk).copied())
            .collect();
        at.sort_unstable();
        at.into_iter().map(|i| &self.files[i]).collect()
    }

    /// The data files of snapshot `id`.
    pub fn files_at(&self, id: SnapshotId) -> impl Iterator<Item = &DataFile> {
        self.files
            .iter()
            .filter(move |e| e.added_in <= id && e.removed_in.is_none_or(|r| id < r))
            .map(|e| &e.file)
    }

    /// The table's time travel window in microseconds.
    pub fn retention(&self) -> i64 {
        self.retention_micros.unwrap_or(DEFAULT_RETENTION_MICROS)
    }

    /// The oldest snapshot that must stay readable at time `now`: the one that
    /// was current when the retention window began.
    pub fn retention_boundary(&self, now: TimestampMicros) -> &TableSnapshot {
        self.snapshot_as_of(now - self.retention())
            .unwrap_or_else(|| &self.snapshots[0])
    }

    /// The columns as of `snapshot`.
    pub fn columns_at(&self, snapshot: &TableSnapshot) -> &[Column] {
        if snapshot.schema_id == self.schema_id {
            return &self.columns;
        }
        self.past_schemas
            .iter()
            .find(|s| s.id == snapshot.schema_id)
            .map(|s| s.columns.as_slice())
            .unwrap_or(&self.columns)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The whole catalog: what the Raft state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Schemas by name.
    pub schemas: BTreeMap<String, SchemaId>,
    /// Tables by (schema, name). Change it through [`Catalog::insert_table`]
    /// and [`Catalog::remove_table`], which keep `table_keys` in step.
    pub tables: OrdMap<(String, String), Arc<Table>>,
    /// The (schema, name) of every table in `tables`, by id (derived; rebuilt
    /// by [`Catalog::reindex`]).
    #[serde(skip)]
    pub table_keys: OrdMap<TableId, (String, String)>,
    /// Next unused id for schemas, tables and snapshots.
    pub next_id: u64,
    /// Commit time of the newest commit; commit times strictly increase.
    pub last_commit_at: TimestampMicros,
    /// Dropped tables, restorable with UNDROP TABLE until their time travel
    /// window has passed.
    pub dropped: Vec<DroppedTable>,
    /// The cluster's id, chosen when its first node bootstrapped it; every
    /// node keeps it in its data dir and refuses a cluster with another.
    pub cluster_id: u128,
    /// Next unused node id (node ids start at 1, the bootstrapping node).
    pub next_node_id: NodeId,
    /// Every stripe that holds a live chunk, by stripe id.
    pub stripes: OrdMap<StripeId, Stripe>,
    /// The stripe of every data chunk in `stripes` (derived, kept in step).
    pub stripe_of: OrdMap<ChunkId, StripeId>,
    /// Views by (schema, name); tables and views share one namespace per
    /// schema. Kept out of this struct's serde encoding (the Raft snapshot
    /// file writes each view as its own record), so catalogs encoded before
    /// views existed still decode.
    #[serde(skip)]
    pub views: OrdMap<(String, String), Arc<View>>,
    /// Comments and declared constraints of tables, by table id (so they
    /// follow a rename and an UNDROP); written as records of their own in
    /// the Raft snapshot file, like `views`.
    #[serde(skip)]
    pub notes: OrdMap<TableId, Arc<TableNotes>>,
    /// Roles by name ([`crate::roles`]); records of their own in the Raft
    /// snapshot file, like `views`.
    #[serde(skip)]
    pub roles: OrdMap<String, Arc<crate::roles::Role>>,
    /// Owners and grants of schemas, tables and views; an object with no
    /// entry is owned by the bootstrap superuser and granted to nobody.
    #[serde(skip)]
    pub acls: OrdMap<crate::roles::Securable, Arc<crate::roles::Acl>>,
    /// The key that authenticates gossip datagrams between the nodes of a
    /// cluster that talks over mutual TLS (set once, by the first node that
    /// finds none); a record of its own in the Raft snapshot file.
    #[serde(skip)]
    pub gossip_key: Option<GossipKey>,
    /// The HTTP API's bearer tokens, by id; records of their own in the Raft
    /// snapshot file.
    #[serde(skip)]
    pub tokens: OrdMap<String, Arc<crate::roles::AccessToken>>,
    /// The streaming API's channels: the next row offset of each channel of
    /// each table (the rows before it are committed), changed only with the
    /// rows they cover; records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub channels: OrdMap<(TableId, String), u64>,
    /// The streaming API's pending channels (BigQuery's PENDING write
    /// streams): rows durable in stripes, in no snapshot until the channel
    /// is committed. A channel is in `channels` or here, not both. Records
    /// of their own in the Raft snapshot file.
    #[serde(skip)]
    pub pending: OrdMap<(TableId, String), Arc<PendingChannel>>,
    /// The sources of external tables (`CREATE EXTERNAL TABLE`), by table
    /// id: such a table has no data files of its own, its rows are the
    /// files the source names, read when a query scans it. Records of their
    /// own in the Raft snapshot file.
    #[serde(skip)]
    pub external: OrdMap<TableId, Arc<ExternalSource>>,
    /// Nodes an operator took out of service (`ALTER NODE n DRAIN`,
    /// `quarry node drain`), by node id: such a node takes no new clients
    /// and gives up Raft leadership, and while it is down for a restart its
    /// chunks are not rebuilt elsewhere nor its voter replaced (until
    /// `maintenance_timeout_secs`). Records of their own in the Raft
    /// snapshot file.
    #[serde(skip)]
    pub maintenance: OrdMap<NodeId, Maintenance>,
    /// The newest rebalance (under way or finished): the chunk moves the
    /// leader planned and which it has made, so that a new leader carries
    /// on where the old one stopped. A record of its own in the Raft
    /// snapshot file.
    #[serde(skip)]
    pub rebalance: Option<Arc<Rebalance>>,
    /// Nodes being decommissioned (`ALTER NODE n DECOMMISSION`), by node
    /// id, with when it was asked for: they take no new chunks, rebalancing
    /// moves all of theirs away, then the leader removes them from Raft.
    /// Records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub decommissioning: OrdMap<NodeId, TimestampMicros>,
    /// Named composite types (`CREATE TYPE name AS (...)`) by (schema,
    /// name); records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub types: OrdMap<(String, String), Arc<CompositeType>>,
    /// The fields declared as a named composite type, by (table, field id),
    /// with the type's id: a column `home addr`, an array's element
    /// (`past addr[]`) or a struct's field. An entry counts only while the
    /// field exists with the type's fields ([`Catalog::composite_of`]).
    /// Records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub typed_fields: OrdMap<(TableId, FieldId), u64>,
    /// Subscriptions to PostgreSQL publications (`CREATE SUBSCRIPTION`),
    /// by name; records of their own in the Raft snapshot file.
    #[serde(skip)]
    pub subscriptions: OrdMap<String, Arc<crate::subscription::Subscription>>,
}

/// A named composite type (PostgreSQL's `CREATE TYPE name AS (field type,
/// ...)`, section 8.16 of its manual): a struct type with a name, usable
/// as a column's type, an array's element or a struct's field. Values are
/// stored as any struct's are; the name is what the catalog shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositeType {
    /// Its id; the oids of its pg_class row, its pg_type row and its array
    /// type's are made from `id`, `id + 1` and `id + 2`.
    pub id: u64,
    /// Schema it lives in.
    pub schema: String,
    /// Type name.
    pub name: String,
    /// Its fields in order (field ids 0: a column of the type gets its own).
    pub fields: Vec<NestedField>,
}

impl CompositeType {
    /// Whether `column_type` is a struct with this type's field names and
    /// types in order (field ids aside).
    pub fn matches(&self, column_type: &ColumnType) -> bool {
        fn same(a: &ColumnType, b: &ColumnType) -> bool {
            match (a, b) {
                (ColumnType::Array(a), ColumnType::Array(b)) => {
                    same(&a.column_type, &b.column_type)
                }
                (ColumnType::Struct(a), ColumnType::Struct(b)) => {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .all(|(a, b)| a.name == b.name && same(&a.column_type, &b.column_type))
                }
                (a, b) => a == b,
            }
        }
        same(&ColumnType::Struct(self.fields.clone()), column_type)
    }
}

/// A rebalance: chunk moves planned by the Raft leader to even out the
/// bytes each node holds or to empty nodes being decommissioned
/// (docs/ARCHITECTURE.md, "Rebalancing").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    /// When it was planned (the leader's clock); identifies it.
    pub planned_at: TimestampMicros,
    /// Why it was planned, for people.
    pub reason: String,
    /// The moves, in the order they are made.
    pub moves: Vec<PlannedMove>,
    /// When its last move was made or given up; None while under way.
    pub finished_at: Option<TimestampMicros>,
}

impl Rebalance {
    /// Moves made so far and their bytes.
    pub fn progress(&self) -> (usize, u64) {
        self.moves
            .iter()
            .filter(|m| m.moved_at.is_some())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.bytes))
    }

    /// Bytes of all its moves.
    pub fn total_bytes(&self) -> u64 {
        self.moves.iter().map(|m| m.bytes).sum()
    }
}

/// One chunk move of a [`Rebalance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    /// The chunk's stripe.
    pub stripe: StripeId,
    /// The chunk's position in the stripe.
    pub index: u8,
    /// The node holding it when planned.
    pub from: NodeId,
    /// The node to hold it.
    pub to: NodeId,
    /// Its length.
    pub bytes: u64,
    /// When its `MoveChunk` was committed; None if not (yet) made.
    pub moved_at: Option<TimestampMicros>,
}

/// A node in maintenance: since when, and how long its running statements
/// may take to finish before they are cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// When the drain was asked for (the leader's clock).
    pub since: TimestampMicros,
    /// Seconds running statements may go on after the drain starts.
    pub deadline_secs: u32,
}

/// A pending channel of the streaming API: its rows' data files, kept out
/// of every snapshot until the channel is committed (all at once) or
/// discarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingChannel {
    /// The data files of its rows, in order.
    pub files: Vec<DataFile>,
    /// The channel's next row offset.
    pub next_offset: u64,
    /// Commit time of its last append (expiry counts from it).
    pub appended_at: TimestampMicros,
}

/// The format of files read in place or loaded (`LOAD DATA`, external
/// tables), BigQuery's `format` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFormat {
    /// Apache Parquet: columns matched by name.
    Parquet,
    /// CSV (RFC 4180): columns by position.
    Csv,
    /// Newline-delimited JSON: keys matched to columns by name.
    Json,
}

/// Where an external table's rows are: files on the nodes' file systems,
/// read in place at every scan (BigQuery's external table definition,
/// <https://cloud.google.com/bigquery/docs/reference/standard-sql/data-definition-language#create_external_table_statement>).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSource {
    /// The files' format.
    pub format: FileFormat,
    /// Absolute paths, glob patterns allowed; the same path must name the
    /// same file on every node that may run a scan of it.
    pub uris: Vec<String>,
    /// CSV: header lines to skip (0 or 1).
    pub skip_leading_rows: u64,
}

/// A cluster's gossip key: 32 random bytes, HMAC-SHA-256 key of every gossip
/// datagram. Its `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey(pub [u8; 32]);

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// What a table declares about itself beyond its columns: COMMENT ON TABLE /
/// COLUMN, and PRIMARY KEY, UNIQUE and FOREIGN KEY constraints, which Quarry
/// keeps and shows in the catalogs but does not enforce (BigQuery's
/// unenforced keys). A primary key's columns are NOT NULL, which is enforced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableNotes {
    /// COMMENT ON TABLE.
    pub comment: Option<String>,
    /// COMMENT ON COLUMN, by field id.
    pub column_comments: BTreeMap<FieldId, String>,
    /// Declared constraints, in the order they were added.
    pub constraints: Vec<Constraint>,
}

impl TableNotes {
    /// Whether nothing is declared (the notes can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.comment.is_none() && self.column_comments.is_empty() && self.constraints.is_empty()
    }
}

/// A declared constraint of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    /// Its name, unique among the table's constraints.
    pub name: String,
    /// What it declares.
    pub kind: ConstraintKind,
}

/// The kinds of constraint a table can declare, over columns by field id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConstraintKind {
    /// PRIMARY KEY (at most one per table).
    PrimaryKey(Vec<FieldId>),
    /// UNIQUE.
    Unique(Vec<FieldId>),
    /// FOREIGN KEY (columns) REFERENCES table (referenced columns); the
    /// referenced columns are that table's primary key or a unique constraint.
    ForeignKey {
        /// The referencing columns.
        columns: Vec<FieldId>,
        /// The referenced table.
        table: TableId,
        /// Its columns, in the order of `columns`.
        referenced: Vec<FieldId>,
    },
}

impl ConstraintKind {
    /// The constrained columns of this table.
    pub fn columns(&self) -> &[FieldId] {
        match self {
            ConstraintKind::PrimaryKey(columns) | ConstraintKind::Unique(columns) => columns,
            ConstraintKind::ForeignKey { columns, .. } => columns,
        }
    }
}

/// A view (PostgreSQL's CREATE VIEW): a stored query, planned where it is
/// named, over the catalog version the statement naming it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Schema it lives in.
    pub schema: String,
    /// View name.
    pub name: String,
    /// The defining query, as SQL text (what `pg_views.definition` shows).
    pub query: String,
    /// The names of its columns, in order (the query's own, or the column
    /// list given to CREATE VIEW).
    pub columns: Vec<String>,
    /// When it was created or last replaced.
    pub created_at: TimestampMicros,
}

/// A node's id in the cluster: assigned once through Raft, kept in its data dir.
pub type NodeId = u64;

/// A stripe's id (a UUIDv7 like chunk ids).
pub type StripeId = ChunkId;

/// How a table's data files are grouped into stripes: `data_chunks` (k) whole
/// data files and `parity_chunks` (m) Reed-Solomon parity chunks, each on its
/// own node, so any m nodes may be lost (docs/ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeLayout {
    /// k: data chunks per stripe.
    pub data_chunks: u8,
    /// m: parity chunks per stripe.
    pub parity_chunks: u8,
}

impl StripeLayout {
    /// The default for a cluster of `nodes` nodes: 1 → k=1 m=0, 2 → 1+1 (a
    /// mirror), 3–5 → 2+1, 6 or more → 4+2.
    pub fn for_cluster(nodes: usize) -> StripeLayout {
        let (data_chunks, parity_chunks) = match nodes {
            0 | 1 => (1, 0),
            2 => (1, 1),
            3..=5 => (2, 1),
            _ => (4, 2),
        };
        StripeLayout {
            data_chunks,
            parity_chunks,
        }
    }
}

impl fmt::Display for StripeLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.data_chunks, self.parity_chunks)
    }
}

/// One chunk of a stripe and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeChunk {
    /// The chunk (for a data chunk, the data file's chunk).
    pub chunk: ChunkId,
    /// The node that holds it.
    pub node: NodeId,
    /// Its length in bytes.
    pub size_bytes: u64,
    /// CRC-32C of its bytes.
    pub checksum_crc32c: u32,
}

/// k data chunks and m parity chunks, each on a different node where the
/// cluster allows; parity is computed over the data chunks zero-padded to the
/// longest (rounded up to even), storage/FORMAT.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    /// The stripe's id.
    pub id: StripeId,
    /// k: how many of `chunks` (the first ones) are data chunks.
    pub data_chunks: u8,
    /// Data chunks, then parity chunks.
    pub chunks: Vec<StripeChunk>,
}

impl Stripe {
    /// m: the number of parity chunks.
    pub fn parity_chunks(&self) -> usize {
        self.chunks.len() - usize::from(self.data_chunks)
    }

    /// The data chunks.
    pub fn data(&self) -> &[StripeChunk] {
        &self.chunks[..usize::from(self.data_chunks)]
    }
}

/// A dropped table, kept whole for UNDROP TABLE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedTable {
    /// The table as it was.
    pub table: Arc<Table>,
    /// When DROP committed.
    pub dropped_at: TimestampMicros,
}

impl Catalog {
    /// The table `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(&(schema.to_owned(), name.to_owned()))
    }

    /// The view `schema.name`.
    pub fn view(&self, schema: &str, name: &str) -> Option<&Arc<View>> {
        self.views.get(&(schema.to_owned(), name.to_owned()))
    }

    /// Whether a table or a view is called `schema.name`.
    pub fn relation_exists(&self, schema: &str, name: &str) -> bool {
        self.table(schema, name).is_some() || self.view(schema, name).is_some()
    }

    /// The composite type that field `field` of table `table` is declared
    /// as, if it is one and the field still has the type's fields.
    pub fn composite_of(&self, table: &Table, field: FieldId) -> Option<&Arc<CompositeType>> {
        let id = self.typed_fields.get(&(table.id, field))?;
        let composite = self.types.values().find(|t| t.id == *id)?;
        let column_type = table.field_type(field)?;
        composite.matches(column_type).then_some(composite)
    }

    /// The views of `schema`, by name.
    pub fn views_in<'a>(&'a self, schema: &'a str) -> impl Iterator<Item = &'a Arc<View>> {
        self.views
            .range((schema.to_owned(), String::new())..)
            .take_while(move |((s, _), _)| s == schema)
            .map(|(_, v)| v)
    }

    /// The source of table `id` when it is an external table.
    pub fn external_source(&self, id: TableId) -> Option<&Arc<ExternalSource>> {
        self.external.get(&id)
    }

    /// The (schema, name) of table `id`.
    pub fn table_key(&self, id: TableId) -> Option<&(String, String)> {
        self.table_keys.get(&id)
    }

    /// The table with id `id`.
    pub fn table_by_id(&self, id: TableId) -> Option<&Arc<Table>> {
        self.table_key(id).and_then(|key| self.tables.get(key))
    }

    /// Adds (or replaces) the table at `key`.
    pub fn insert_table(&mut self, key: (String, String), table: Arc<Table>) {
        self.table_keys.insert(table.id, key.clone());
        self.tables.insert(key, table);
    }

    /// Removes the table at `key`.
    pub fn remove_table(&mut self, key: &(String, String)) -> Option<Arc<Table>> {
        let table = self.tables.remove(key)?;
        self.table_keys.remove(&table.id);
        Some(table)
    }

    /// Rebuilds the derived indexes that are not serialized (`table_keys`,
    /// each table's `live_files`): after decoding a catalog.
    pub fn reindex(&mut self) {
        self.table_keys = self
            .tables
            .iter()
            .map(|(key, table)| (table.id, key.clone()))
            .collect();
        let keys: Vec<(String, String)> = self.tables.keys().cloned().collect();
        for key in keys {
            let table = self.tables.get_mut(&key).expect("a key just listed");
            Arc::make_mut(table).reindex();
        }
        for dropped in &mut self.dropped {
            Arc::make_mut(&mut dropped.table).reindex();
        }
    }

    /// Every chunk some table, dropped table, retained snapshot or pending
    /// channel still lists:
    /// what must stay on disk.
    pub fn referenced_chunks(&self) -> std::collections::HashSet<ChunkId> {
        self.tables
            .values()
            .chain(self.dropped.iter().map(|d| &d.table))
            .flat_map(|t| t.files.iter().map(|e| e.file.chunk))
            .chain(
                self.pending
                    .values()
                    .flat_map(|p| p.files.iter().map(|f| f.chunk)),
            )
            .collect()
    }

    /// Every chunk that must be kept somewhere: those [`Self::referenced_chunks`]
    /// lists and every chunk of a live stripe (a data chunk no table lists any
    /// more still takes part in its stripe's parity).
    pub fn live_chunks(&self) -> std::collections::HashSet<ChunkId> {
        let mut live = self.referenced_chunks();
        live.extend(
            self.stripes
                .values()
                .flat_map(|s| s.chunks.iter().map(|c| c.chunk)),
        );
        live
    }

    /// The chunks placed on `node`, with their stripe.
    pub fn chunks_on(&self, node: NodeId) -> impl Iterator<Item = (&Stripe, usize)> {
        self.stripes.values().flat_map(move |s| {
            s.chunks
                .iter()
                .enumerate()
                .filter(move |(_, c)| c.node == node)
                .map(move |(i, _)| (s, i))
        })
    }

    /// The stripe holding data chunk `chunk`.
    pub fn stripe_of(&self, chunk: ChunkId) -> Option<&Stripe> {
        self.stripe_of.get(&chunk).and_then(|s| self.stripes.get(s))
    }

    /// Adds `stripe` and indexes its data chunks.
    pub fn add_stripe(&mut self, stripe: Stripe) {
        for c in stripe.data() {
            self.stripe_of.insert(c.chunk, stripe.id);
        }
        self.stripes.insert(stripe.id, stripe);
    }

    /// Removes the stripes none of whose data chunks a table (live, dropped or
    /// in retained history) lists any more; returns every chunk they held.
    pub fn drop_dead_stripes(&mut self) -> Vec<ChunkId> {
        let referenced = self.referenced_chunks();
        let dead: Vec<StripeId> = self
            .stripes
            .values()
            .filter(|s| !s.data().iter().any(|c| referenced.contains(&c.chunk)))
            .map(|s| s.id)
            .collect();
        let mut released = Vec::new();
        for id in dead {
            if let Some(stripe) = self.stripes.remove(&id) {
                for c in stripe.data() {
                    self.stripe_of.remove(&c.chunk);
                }
                released.extend(stripe.chunks.iter().map(|c| c.chunk));
            }
        }
        released
    }

    /// Tables of `schema`, by name.
    pub fn tables_in<'a>(&'a self, schema: &'a str) -> impl Iterator<Item = &'a Arc<Table>> {
        self.tables
            .range((schema.to_owned(), String::new())..)
            .take_while(move |((s, _), _)| s == schema)
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: SnapshotId, committed_at: TimestampMicros) -> TableSnapshot {
        TableSnapshot {
            id,
            committed_at,
            operation: Operation::Append,
            row_count: 0,
            rows_added: 0,
            schema_id: 0,
        }
    }

    fn file(chunk: u128, added_in: SnapshotId, removed_in: Option<SnapshotId>) -> FileEntry {
        FileEntry {
            file: DataFile {
                chunk: ChunkId(chunk),
                size_bytes: 1,
                checksum_crc32c: 0,
                row_count: 1,
                column_stats: vec![],
            },
            added_in,
            removed_in,
        }
    }

    fn table() -> Table {
        Table {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![],
            schema_id: 0,
            past_schemas: vec![],
            next_field_id: 1,
            snapshots: imbl::vector![snapshot(2, 100), snapshot(5, 200), snapshot(9, 300)],
            files: imbl::vector![file(1, 2, None), file(2, 5, Some(9)), file(3, 9, None)],
            live_files: OrdMap::new(),
            buffer: OrdMap::new(),
            moved: OrdMap::new(),
            deletes: OrdMap::new(),
            retention_micros: Some(50),
            layout: None,
            partitioning: None,
            file_layout: None,
        }
    }

    #[test]
    fn snapshot_as_of_picks_the_newest_commit_not_after_the_instant() {
        let t = table();
        assert_eq!(t.snapshot_as_of(99), None);
        assert_eq!(t.snapshot_as_of(100).map(|s| s.id), Some(2));
        assert_eq!(t.snapshot_as_of(250).map(|s| s.id), Some(5));
        assert_eq!(t.snapshot_as_of(i64::MAX).map(|s| s.id), Some(9));
    }

    #[test]
    fn files_at_honours_added_and_removed_bounds() {
        let t = table();
        let chunks = |id| t.files_at(id).map(|f| f.chunk.0).collect::<Vec<_>>();
        assert_eq!(chunks(2), vec![1]);
        assert_eq!(chunks(5), vec![1, 2]);
        assert_eq!(chunks(9), vec![1, 3]);
    }

    #[test]
    fn the_retention_boundary_is_the_snapshot_current_when_the_window_began() {
        let t = table();
        assert_eq!(t.retention_boundary(120).id, 2);
        assert_eq!(t.retention_boundary(260).id, 5);
        assert_eq!(t.retention_boundary(1000).id, 9);
    }

    #[test]
    fn chunk_id_round_trips_through_hex() {
        let id = ChunkId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string().parse::<ChunkId>().ok(), Some(id));
    }
}
