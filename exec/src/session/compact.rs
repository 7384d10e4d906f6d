//! Compaction: small data files of a table (streamed appends, small
//! INSERTs) merged into full-size ones, as BigQuery does without being
//! asked. The merged rows are written as new files and one commit swaps
//! them for the small ones ([`Command::Commit`] with both lists), so a
//! reader sees either the small files or the merged one, never both or
//! neither; a compaction cut anywhere before its commit leaves the table as
//! it was (its new files are orphans the chunk collector deletes), and one
//! that finds a file it merges rewritten meanwhile (a DELETE) fails its
//! commit and changes nothing.
//!
//! The same compactor moves a table's ingest buffer (the files appends hold
//! in the Raft catalog) into data files in stripes: the buffered files are
//! read in the order they were appended and written as full-size files, and
//! one [`Command::MoveBuffered`] swaps them, recording where each buffered
//! file's rows now are so that older snapshots still read them.

use super::*;
pub use crate::data_file::SMALL_FILE_ROWS;
use crate::data_file::scalar_of;
use crate::data_file::{DataFileWriter, FILE_ROWS_MAX};
use crate::table::{is_table_scan, scan_files, with_scan_files, with_scan_files_in_order};
use datafusion::arrow::compute::SortOptions;
use datafusion::common::ScalarValue;
use datafusion::common::TableReference;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::physical_expr::expressions::col as physical_col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort::SortExec;
use quarry_common::catalog::{ChunkId, DataFile, RowRange, TableId, TimestampMicros};
use quarry_common::partition::PartitionKey;
use std::collections::HashMap;

/// A table is compacted once it has this many small files.
pub const COMPACT_MIN_FILES: usize = 8;

/// Most files merged by one compaction.
const COMPACT_MAX_FILES: usize = 1024;

/// A table's ingest buffer is moved into data files once it holds this
/// many rows ...
pub const FLUSH_MIN_ROWS: u64 = SMALL_FILE_ROWS;

/// ... or this many bytes, or once its oldest file is old enough.
pub const FLUSH_MIN_BYTES: u64 = 64 << 20;

/// Most rows one move of the buffer takes (a few full data files).
const FLUSH_MAX_ROWS: u64 = 4 * FILE_ROWS_MAX;

/// What the compactor would do to a table now.
#[derive(Debug, Clone, PartialEq)]
pub enum Compaction {
    /// Move these buffered files (oldest first) into data files.
    Flush(Vec<DataFile>),
    /// Store these buffered files, which only older snapshots read, in
    /// stripes as they are ([`Command::SpillBuffered`]).
    Spill(Vec<DataFile>),
    /// Merge these small data files (oldest first).
    Merge(Vec<DataFile>),
    /// Remove these files: their partitions have expired
    /// (`partition_expiration_days`).
    Expire(Vec<DataFile>),
    /// Rewrite these overlapping files of a clustered table in one sort.
    Recluster(Vec<DataFile>),
    /// Rewrite these files without the rows their deletion vectors delete.
    Fold(Vec<DataFile>),
}

/// A data file whose deletion vector deletes at least this share of its
/// rows is rewritten without them (Iceberg's rewrite_data_files has the
/// same kind of threshold, `delete-ratio-threshold`).
pub const FOLD_MIN_DELETED_RATIO: f64 = 0.2;

/// The data files of `table`'s current snapshot whose deletion vectors
/// delete at least [`FOLD_MIN_DELETED_RATIO`] of their rows, up to about
/// one full file of rows (at least one file).
fn fold_candidates(table: &Table) -> Vec<DataFile> {
    if table.deletes.is_empty() {
        return Vec::new();
    }
    let current = table.current_snapshot().id;
    let mut chosen = Vec::new();
    let mut rows = 0;
    for chunk in table.deletes.keys() {
        let Some(entry) = table.live_file(*chunk) else {
            continue;
        };
        let deleted = table.deleted_count(*chunk, current);
        if (deleted as f64) < FOLD_MIN_DELETED_RATIO * entry.file.row_count as f64 {
            continue;
        }
        if !chosen.is_empty() && rows + entry.file.row_count > FILE_ROWS_MAX {
            break;
        }
        rows += entry.file.row_count;
        chosen.push(entry.file.clone());
    }
    chosen
}

/// The rows of `files` of `table`'s current snapshot not deleted by their
/// deletion vectors.
fn live_rows(table: &Table, files: &[DataFile]) -> u64 {
    let current = table.current_snapshot().id;
    files
        .iter()
        .map(|f| f.row_count - table.deleted_count(f.chunk, current))
        .sum()
}

/// The current files of `table` whose time partition ended more than its
/// `partition_expiration_days` before `now` (BigQuery: a partition expires
/// that long after its end, in UTC).
fn expired_files(table: &Table, now: TimestampMicros) -> Vec<DataFile> {
    let Some(partitioning) = &table.partitioning else {
        return Vec::new();
    };
    let Some(expiration) = partitioning.expiration_micros else {
        return Vec::new();
    };
    table
        .files_at(table.current_snapshot().id)
        .filter(|f| {
            partitioning
                .key_of_file(f)
                .and_then(|key| partitioning.end_micros(key))
                .is_some_and(|end| end.saturating_add(expiration) <= now)
        })
        .take(COMPACT_MAX_FILES)
        .cloned()
        .collect()
}

/// The compaction `table` is due at time `now`: its ingest buffer's move
/// when the buffer is large enough or its oldest file has waited
/// `max_age` microseconds, else the spill of buffered files a DELETE or
/// UPDATE replaced (see `spill_candidates`), else a merge of its small
/// files (see [`compaction_candidates`]); None when none is due.
pub fn compaction_due(table: &Table, now: TimestampMicros, max_age: i64) -> Option<Compaction> {
    let expired = expired_files(table, now);
    if !expired.is_empty() {
        return Some(Compaction::Expire(expired));
    }
    let flush = flush_candidates(table, now, max_age);
    if !flush.is_empty() {
        // A clustered table's buffer is merged like small files, sorted,
        // and so is one with deleted rows (a move keeps every row); the
        // buffered files are then spilled for older snapshots.
        let deleted = flush.iter().any(|f| table.deletes.contains_key(&f.chunk));
        return Some(if is_clustered(table) || deleted {
            Compaction::Merge(flush)
        } else {
            Compaction::Flush(flush)
        });
    }
    let spill = spill_candidates(table);
    if !spill.is_empty() {
        return Some(Compaction::Spill(spill));
    }
    let merge = compaction_candidates(table);
    if !merge.is_empty() {
        return Some(Compaction::Merge(merge));
    }
    let fold = fold_candidates(table);
    if !fold.is_empty() {
        return Some(Compaction::Fold(fold));
    }
    let recluster = recluster_candidates(table);
    (!recluster.is_empty()).then_some(Compaction::Recluster(recluster))
}

/// Whether `table`'s data files are sorted by clustering columns.
fn is_clustered(table: &Table) -> bool {
    table
        .file_layout
        .as_ref()
        .is_some_and(|l| !l.cluster_by.is_empty())
}

/// Files of a clustered table are re-clustered once this many of them
/// overlap on the first clustering column.
pub const RECLUSTER_MIN_OVERLAP: usize = 4;

/// Most rows one re-clustering rewrites.
const RECLUSTER_MAX_ROWS: u64 = 8 * FILE_ROWS_MAX;

/// The data files of a clustered `table`'s current snapshot to rewrite in
/// one sort, so that they no longer overlap: in one partition, the
/// largest group of files whose ranges of the first clustering column
/// (by their zone maps) overlap, when at least [`RECLUSTER_MIN_OVERLAP`]
/// of them overlap at one value (BigQuery re-clusters in the background
/// likewise, <https://cloud.google.com/bigquery/docs/clustered-tables>).
fn recluster_candidates(table: &Table) -> Vec<DataFile> {
    let Some(first) = table
        .file_layout
        .as_ref()
        .and_then(|l| l.cluster_by.first().copied())
    else {
        return Vec::new();
    };
    let Some(column) = table.columns.iter().find(|c| c.field_id == first) else {
        return Vec::new();
    };
    let mut by_partition: HashMap<
        Option<PartitionKey>,
        Vec<(ScalarValue, ScalarValue, &DataFile)>,
    > = HashMap::new();
    for file in table
        .files_at(table.current_snapshot().id)
        .filter(|f| !table.buffer.contains_key(&f.chunk))
    {
        let Some(stats) = file.column_stats.iter().find(|s| s.field_id == first) else {
            continue;
        };
        let (Some(min), Some(max)) = (stats.min.as_ref(), stats.max.as_ref()) else {
            continue;
        };
        by_partition
            .entry(partition_of(table, file))
            .or_default()
            .push((
                scalar_of(Some(min), &column.column_type),
                scalar_of(Some(max), &column.column_type),
                file,
            ));
    }
    let mut best: Vec<DataFile> = Vec::new();
    for mut files in by_partition.into_values() {
        files.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        // Groups of files whose ranges chain into one another, and the
        // deepest overlap within each.
        let mut group: Vec<&DataFile> = Vec::new();
        let mut ends: Vec<ScalarValue> = Vec::new();
        let mut depth = 0;
        let mut group_end: Option<ScalarValue> = None;
        let consider = |group: &mut Vec<&DataFile>, depth: usize, best: &mut Vec<DataFile>| {
            if depth >= RECLUSTER_MIN_OVERLAP && group.len() > best.len() {
                let mut rows = 0;
                *best = group
                    .iter()
                    .take_while(|f| {
                        rows += f.row_count;
                        rows <= RECLUSTER_MAX_ROWS
                    })
                    .map(|f| (*f).clone())
                    .collect();
            }
            group.clear();
        };
        for (min, max, file) in files {
            // Ranges that only touch (one's last value the next one's
            // first, as a sorted rewrite leaves them) do not overlap.
            if group_end.as_ref().is_some_and(|end| &min >= end) {
                consider(&mut group, depth, &mut best);
                ends.clear();
                depth = 0;
                group_end = None;
            }
            ends.retain(|end| end > &min);
            ends.push(max.clone());
            depth = depth.max(ends.len());
            group.push(file);
            group_end = Some(match group_end {
                Some(end) if end >= max => end,
                _ => max,
            });
        }
        consider(&mut group, depth, &mut best);
    }
    if best.len() < 2 { Vec::new() } else { best }
}

/// Buffered files of `table` that its current snapshot no longer reads (a
/// DELETE, UPDATE or MERGE replaced them; older snapshots still do, for
/// time travel), up to [`COMPACT_MAX_FILES`]: their bytes need not stay
/// in every node's memory.
fn spill_candidates(table: &Table) -> Vec<DataFile> {
    if table.buffer.is_empty() {
        return Vec::new();
    }
    table
        .files
        .iter()
        .filter(|e| e.removed_in.is_some() && table.buffer.contains_key(&e.file.chunk))
        .take(COMPACT_MAX_FILES)
        .map(|e| e.file.clone())
        .collect()
}

/// The buffered files of `table`'s current snapshot, oldest first (up to
/// a few data files of rows), when the buffer is due to move at `now`.
fn flush_candidates(table: &Table, now: TimestampMicros, max_age: i64) -> Vec<DataFile> {
    if table.buffer.is_empty() {
        return Vec::new();
    }
    let buffered = table.buffered_entries();
    let Some(oldest) = buffered.first() else {
        return Vec::new();
    };
    let rows: u64 = buffered.iter().map(|e| e.file.row_count).sum();
    let bytes: u64 = buffered.iter().map(|e| e.file.size_bytes).sum();
    let waited = table
        .snapshots
        .iter()
        .find(|s| s.id == oldest.added_in)
        .is_none_or(|s| now - s.committed_at >= max_age);
    if rows < FLUSH_MIN_ROWS && bytes < FLUSH_MIN_BYTES && !waited {
        return Vec::new();
    }
    // A partitioned table's files move a partition at a time (the oldest
    // file's), so that the rows written follow the files read in order.
    let partition = partition_of(table, &oldest.file);
    let mut chosen = Vec::new();
    let mut rows = 0;
    for entry in buffered {
        if chosen.len() == COMPACT_MAX_FILES || (rows >= FLUSH_MAX_ROWS && !chosen.is_empty()) {
            break;
        }
        if partition_of(table, &entry.file) != partition {
            continue;
        }
        rows += entry.file.row_count;
        chosen.push(entry.file.clone());
    }
    chosen
}

/// Where the rows of each of `files` (read in order and written as `added`,
/// a new data file every [`FILE_ROWS_MAX`] rows) are in `added`.
fn moved_rows(files: &[DataFile], added: &[DataFile]) -> Result<Vec<(ChunkId, Vec<RowRange>)>> {
    let mut at = 0u64;
    let mut moved = Vec::with_capacity(files.len());
    for file in files {
        let mut ranges = Vec::new();
        let end = at + file.row_count;
        while at < end {
            let index = (at / FILE_ROWS_MAX) as usize;
            let first_row = at % FILE_ROWS_MAX;
            let target = added.get(index).ok_or_else(|| {
                Error::Internal(format!("moved rows past the {} files written", added.len()))
            })?;
            let rows = (end - at).min(FILE_ROWS_MAX - first_row);
            if first_row + rows > target.row_count {
                return Err(Error::Internal(format!(
                    "moved rows {first_row}+{rows} past the {} of a written file",
                    target.row_count
                )));
            }
            ranges.push(RowRange {
                chunk: target.chunk,
                size_bytes: target.size_bytes,
                checksum_crc32c: target.checksum_crc32c,
                first_row,
                rows,
            });
            at += rows;
        }
        moved.push((file.chunk, ranges));
    }
    Ok(moved)
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Small files replaced.
    pub files_removed: usize,
    /// Files written.
    pub files_added: usize,
    /// Rows moved.
    pub rows: u64,
    /// Which kind of compaction it was.
    pub kind: CompactionKind,
}

/// The kinds of [`Compaction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionKind {
    /// The ingest buffer moved into data files.
    Flush,
    /// Replaced buffered files stored in stripes.
    Spill,
    /// Small data files merged.
    Merge,
    /// Expired partitions' files removed.
    Expire,
    /// Overlapping files of a clustered table rewritten in one sort.
    Recluster,
    /// Files rewritten without the rows their deletion vectors delete.
    Fold,
}

/// `plan` sorted by `table`'s clustering columns (ascending, NULLs last).
fn cluster_sort(table: &Table, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    let columns = table
        .file_layout
        .as_ref()
        .map(|l| l.cluster_by.clone())
        .unwrap_or_default();
    let mut exprs = Vec::new();
    for id in columns {
        let Some(def) = table.columns.iter().find(|c| c.field_id == id) else {
            continue;
        };
        exprs.push(PhysicalSortExpr {
            expr: physical_col(&def.name, &schema).map_err(Error::from_engine)?,
            options: SortOptions {
                descending: false,
                nulls_first: false,
            },
        });
    }
    match LexOrdering::new(exprs) {
        Some(ordering) => Ok(Arc::new(SortExec::new(ordering, plan))),
        None => Ok(plan),
    }
}

/// The partition of `file` of `table`, if the table is partitioned.
fn partition_of(table: &Table, file: &DataFile) -> Option<PartitionKey> {
    table
        .partitioning
        .as_ref()
        .and_then(|p| p.key_of_file(file))
}

/// The small files of `table`'s current snapshot to merge, oldest first (up
/// to one full file of rows); empty when there are too few. A partitioned
/// table's come from one partition, the one with the most.
pub fn compaction_candidates(table: &Table) -> Vec<DataFile> {
    let mut small: Vec<&DataFile> = table
        .files_at(table.current_snapshot().id)
        .filter(|f| f.row_count < SMALL_FILE_ROWS && !table.buffer.contains_key(&f.chunk))
        .collect();
    if small.len() < COMPACT_MIN_FILES {
        return Vec::new();
    }
    if table.partitioning.is_some() {
        let mut counts: HashMap<Option<PartitionKey>, usize> = HashMap::new();
        for file in &small {
            *counts.entry(partition_of(table, file)).or_default() += 1;
        }
        let busiest = counts
            .into_iter()
            .max_by_key(|(key, n)| (*n, std::cmp::Reverse(*key)))
            .map(|(key, _)| key);
        small.retain(|f| Some(partition_of(table, f)) == busiest);
    }
    let mut chosen = Vec::new();
    let mut rows = 0;
    for file in small {
        if chosen.len() == COMPACT_MAX_FILES
            || (rows + file.row_count > FILE_ROWS_MAX && !chosen.is_empty())
        {
            break;
        }
        rows += file.row_count;
        chosen.push(file.clone());
    }
    if chosen.len() < 2 {
        return Vec::new();
    }
    chosen
}

/// The table scan in `plan` (the plan itself, or its first descendant that
/// is one).
fn find_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if is_table_scan(plan.as_ref()) {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_scan)
}

impl Session {
    /// Moves table `id`'s ingest buffer into data files or merges its small
    /// files, whichever is due (see [`compaction_due`], `max_age` as there);
    /// None when neither is. Runs as its own statement: call it on a
    /// session outside a transaction block.
    ///
    /// # Errors
    /// Reading or writing the files, or the commit's (40001 when a merged
    /// file was rewritten meanwhile); then nothing changed.
    pub async fn compact_table(&mut self, id: TableId, max_age: i64) -> Result<Option<Compacted>> {
        if self.transaction.is_some() {
            return Err(Error::Internal(
                "compaction runs outside a transaction block".to_owned(),
            ));
        }
        let view = self.begin_statement().await?;
        let Some(table) = view.catalog.table_by_id(id).cloned() else {
            return Ok(None);
        };
        let due = compaction_due(&table, quarry_raft::now_micros(), max_age);
        let (chosen, flush) = match due.clone() {
            None => return Ok(None),
            Some(Compaction::Spill(files)) => return self.spill(&table, &files).await.map(Some),
            Some(Compaction::Expire(files)) => {
                return self.expire(&table, &view, &files).await.map(Some);
            }
            Some(Compaction::Flush(files)) => (files, true),
            Some(Compaction::Merge(files)) => (files, false),
            Some(Compaction::Recluster(files) | Compaction::Fold(files)) => (files, false),
        };
        let recluster = matches!(due, Some(Compaction::Recluster(_)));
        let fold = matches!(due, Some(Compaction::Fold(_)));
        let logical = self
            .scan_plan(TableReference::partial(
                table.schema.as_str(),
                table.name.as_str(),
            ))
            .await?;
        let physical = self
            .ctx
            .state()
            .create_physical_plan(&logical)
            .await
            .map_err(Error::from_engine)?;
        let scan = find_scan(&physical)
            .ok_or_else(|| Error::Internal(format!("no table scan of {}", table.name)))?;
        // Whole files: the planner may have split a file by byte ranges.
        let mut by_chunk: HashMap<ChunkId, PartitionedFile> = scan_files(scan.as_ref())
            .into_iter()
            .map(|(mut file, chunk)| {
                file.range = None;
                (chunk.id, file)
            })
            .collect();
        let files: Vec<_> = chosen
            .iter()
            .filter_map(|f| by_chunk.remove(&f.chunk))
            .collect();
        if files.len() != chosen.len() {
            return Err(Error::Internal(format!(
                "compaction of {} found {} of its {} files in the scan",
                table.name,
                files.len(),
                chosen.len()
            )));
        }
        // A move of the buffer reads its files in order, so that where each
        // one's rows land follows from the row counts.
        let merged = if flush {
            with_scan_files_in_order(scan.as_ref(), files)
        } else {
            with_scan_files(scan.as_ref(), files, 1)
        }
        .ok_or_else(|| Error::Internal("the scan cannot be narrowed".to_owned()))?;
        // Re-clustering sorts all the rows, so the files it cuts from them
        // do not overlap.
        let merged = if recluster {
            cluster_sort(&table, merged)?
        } else {
            merged
        };
        let mut batches = self.execute_physical(merged)?;
        let mut writer = DataFileWriter::new(table.clone(), view.writes.clone()).into_stripes();
        if flush {
            writer = writer.keeping_order();
        }
        let mut rows = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(Error::from_engine)?;
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
        writer.finish().await?;
        let expected = live_rows(&table, &chosen);
        if rows != expected {
            return Err(Error::Internal(format!(
                "compaction of {} read {rows} rows from files that hold {expected}",
                table.name
            )));
        }
        for file in &chosen {
            view.writes.remove(table.id, file.chunk);
        }
        let taken = view.writes.take().await?;
        let changes = taken.changes.clone();
        let files_added = changes.iter().map(|c| c.added.len()).sum();
        let command = match (flush, changes.as_slice()) {
            (true, [change]) => Command::MoveBuffered {
                change: change.clone(),
                moved: moved_rows(&chosen, &change.added)?,
            },
            (true, _) => {
                view.writes.discard_changes(changes);
                return Err(Error::Internal(format!(
                    "a move of {}'s buffer changed other than one table",
                    table.name
                )));
            }
            // A file that lost rows to a DELETE since it was read must
            // not be replaced by the rows read.
            (false, _) => transaction::data_commit(&taken, Vec::new(), taken.reads.clone()),
        };
        if let Err(e) = self.engine.meta.write(command).await {
            if transaction::refused(&e) {
                view.writes.discard_changes(changes);
            }
            return Err(e.into());
        }
        Ok(Some(Compacted {
            files_removed: chosen.len(),
            files_added,
            rows,
            kind: if flush {
                CompactionKind::Flush
            } else if recluster {
                CompactionKind::Recluster
            } else if fold {
                CompactionKind::Fold
            } else {
                CompactionKind::Merge
            },
        }))
    }

    /// Removes `files` of `table`, whose partitions expired, in one commit
    /// (kept for time travel like any removed file).
    async fn expire(
        &self,
        table: &Table,
        view: &CatalogView,
        files: &[DataFile],
    ) -> Result<Compacted> {
        for file in files {
            view.writes.remove(table.id, file.chunk);
        }
        let taken = view.writes.take().await?;
        self.engine
            .meta
            .write(transaction::data_commit(&taken, Vec::new(), Vec::new()))
            .await?;
        Ok(Compacted {
            files_removed: files.len(),
            files_added: 0,
            rows: live_rows(table, files),
            kind: CompactionKind::Expire,
        })
    }

    /// Stores the buffered `files` of `table` (replaced, see
    /// [`spill_candidates`]) in stripes byte for byte under their chunk
    /// ids, and proposes [`Command::SpillBuffered`]. A scan that still
    /// finds a file in the buffer reads the same bytes as one that finds
    /// it in its stripe. Stored copies of a refused spill are deleted with
    /// the files, when their snapshots expire.
    async fn spill(&self, table: &Table, files: &[DataFile]) -> Result<Compacted> {
        let sink = self.engine.chunks.sink(table.layout);
        let mut chunks = Vec::with_capacity(files.len());
        let mut rows = 0;
        for file in files {
            let Some(bytes) = table.buffer.get(&file.chunk) else {
                continue;
            };
            sink.put_as(file.chunk, bytes.clone())
                .await
                .map_err(Error::Storage)?;
            chunks.push(file.chunk);
            rows += file.row_count;
        }
        let stripes = sink.finish().await.map_err(Error::Storage)?;
        let spilled = chunks.len();
        let command = Command::SpillBuffered {
            table: table.id,
            files: chunks,
            stripes,
        };
        self.engine.meta.write(command).await?;
        Ok(Compacted {
            files_removed: spilled,
            files_added: spilled,
            rows,
            kind: CompactionKind::Spill,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(chunk: u128, row_count: u64) -> DataFile {
        DataFile {
            chunk: ChunkId(chunk),
            size_bytes: 100 + chunk as u64,
            checksum_crc32c: chunk as u32,
            row_count,
            column_stats: Vec::new(),
        }
    }

    #[test]
    fn moved_rows_follow_the_order_files_were_read_in() {
        let max = FILE_ROWS_MAX;
        // Three buffered files, the second straddling the written files' cut.
        let files = [file(1, max - 10), file(2, 30), file(3, 5)];
        let added = [file(10, max), file(11, 25)];
        let moved = moved_rows(&files, &added).expect("placed");
        let ranges = |moved: &[RowRange]| -> Vec<(u128, u64, u64)> {
            moved
                .iter()
                .map(|r| (r.chunk.0, r.first_row, r.rows))
                .collect()
        };
        assert_eq!(moved[0].0, ChunkId(1));
        assert_eq!(ranges(&moved[0].1), [(10, 0, max - 10)]);
        assert_eq!(ranges(&moved[1].1), [(10, max - 10, 10), (11, 0, 20)]);
        assert_eq!(ranges(&moved[2].1), [(11, 20, 5)]);
        assert_eq!(moved[2].1[0].size_bytes, 111);
        // Written files that do not hold the rows read: refused.
        assert!(moved_rows(&files, &added[..1]).is_err());
        assert!(moved_rows(&files, &[file(10, max), file(11, 3)]).is_err());
    }
}
