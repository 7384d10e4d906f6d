//! Compaction: small data files of a table (streamed appends, small
//! INSERTs) merged into full-size ones, as BigQuery does without being
//! asked. The merged rows are written as new files and one commit swaps
//! them for the small ones ([`Command::Commit`] with both lists), so a
//! reader sees either the small files or the merged one, never both or
//! neither; a compaction cut anywhere before its commit leaves the table as
//! it was (its new files are orphans the chunk collector deletes), and one
//! that finds a file it merges rewritten meanwhile (a DELETE) fails its
//! commit and changes nothing.

use super::*;
use crate::data_file::{DataFileWriter, FILE_ROWS_MAX};
use crate::table::{is_table_scan, scan_files, with_scan_files};
use datafusion::common::TableReference;
use datafusion::physical_plan::ExecutionPlan;
use quarry_common::catalog::{DataFile, TableId};

/// A file under this many rows is small.
pub const SMALL_FILE_ROWS: u64 = FILE_ROWS_MAX / 8;

/// A table is compacted once it has this many small files.
pub const COMPACT_MIN_FILES: usize = 8;

/// Most files merged by one compaction.
const COMPACT_MAX_FILES: usize = 1024;

/// What one compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Small files replaced.
    pub files_removed: usize,
    /// Files written.
    pub files_added: usize,
    /// Rows moved.
    pub rows: u64,
}

/// The small files of `table`'s current snapshot to merge, oldest first (up
/// to one full file of rows); empty when there are too few.
pub fn compaction_candidates(table: &Table) -> Vec<DataFile> {
    let small: Vec<&DataFile> = table
        .files_at(table.current_snapshot().id)
        .filter(|f| f.row_count < SMALL_FILE_ROWS)
        .collect();
    if small.len() < COMPACT_MIN_FILES {
        return Vec::new();
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
    /// Merges the small files of table `id` (see [`compaction_candidates`]);
    /// None when it has too few. Runs as its own statement: call it on a
    /// session outside a transaction block.
    ///
    /// # Errors
    /// Reading or writing the files, or the commit's (40001 when a merged
    /// file was rewritten meanwhile); then nothing changed.
    pub async fn compact_table(&mut self, id: TableId) -> Result<Option<Compacted>> {
        if self.transaction.is_some() {
            return Err(Error::Internal(
                "compaction runs outside a transaction block".to_owned(),
            ));
        }
        let view = self.begin_statement().await?;
        let Some(table) = view.catalog.table_by_id(id).cloned() else {
            return Ok(None);
        };
        let chosen = compaction_candidates(&table);
        if chosen.is_empty() {
            return Ok(None);
        }
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
        let wanted: std::collections::HashSet<_> = chosen.iter().map(|f| f.chunk).collect();
        let files: Vec<_> = scan_files(scan.as_ref())
            .into_iter()
            .filter(|(_, chunk)| wanted.contains(&chunk.id))
            .map(|(file, _)| file)
            .collect();
        if files.len() != chosen.len() {
            return Err(Error::Internal(format!(
                "compaction of {} found {} of its {} files in the scan",
                table.name,
                files.len(),
                chosen.len()
            )));
        }
        let merged = with_scan_files(scan.as_ref(), files, 1)
            .ok_or_else(|| Error::Internal("the scan cannot be narrowed".to_owned()))?;
        let mut batches = self.execute_physical(merged)?;
        let mut writer = DataFileWriter::new(table.clone(), view.writes.clone());
        let mut rows = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(Error::from_engine)?;
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
        writer.finish().await?;
        let expected: u64 = chosen.iter().map(|f| f.row_count).sum();
        if rows != expected {
            return Err(Error::Internal(format!(
                "compaction of {} read {rows} rows from files that hold {expected}",
                table.name
            )));
        }
        for file in &chosen {
            view.writes.remove(table.id, file.chunk);
        }
        let (changes, _) = view.writes.take().await?;
        let files_added = changes.iter().map(|c| c.added.len()).sum();
        let command = Command::Commit {
            changes: changes.clone(),
            read_set: Vec::new(),
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
        }))
    }
}
