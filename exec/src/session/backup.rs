//! `BACKUP TO 'dir'` and `RESTORE FROM 'dir'` ([`crate::backup`]).

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::Int64Array;
use quarry_common::catalog::{ChunkId, StripeLayout};

use super::*;
use crate::backup::{self, BackedUpFile};

/// One row of text and bigint columns.
fn summary_row(columns: Vec<(&str, Result<String, i64>)>) -> Result<Output> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, value)| {
                let kind = if value.is_ok() {
                    DataType::Utf8
                } else {
                    DataType::Int64
                };
                Field::new(*name, kind, false)
            })
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .into_iter()
        .map(|(_, value)| -> datafusion::arrow::array::ArrayRef {
            match value {
                Ok(text) => Arc::new(StringArray::from(vec![text])),
                Err(number) => Arc::new(Int64Array::from(vec![number])),
            }
        })
        .collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::Internal(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok(batch) });
    Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
        schema, stream,
    ))))
}

/// 22023 unless `dir` is an absolute path.
fn absolute(dir: &str) -> Result<&Path> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("the backup directory must be an absolute path on the node, not \"{dir}\""),
        ));
    }
    Ok(path)
}

impl Session {
    /// `BACKUP TO 'dir'`: the catalog as of now (read-index) and every data
    /// file it lists, into `dir` on this node. One row: the backup's id, its
    /// data files, those copied now and their bytes. 42501 for a role that
    /// is not a superuser.
    pub(super) async fn backup(&self, dir: &str) -> Result<Output> {
        let catalog = self.superuser_catalog("take a backup").await?;
        let dir = absolute(dir)?;
        let summary = backup::create(&catalog, self.engine.chunks.as_ref(), dir).await?;
        tracing::info!(
            backup = %summary.backup_id,
            files = summary.files,
            files_copied = summary.files_copied,
            bytes_copied = summary.bytes_copied,
            "backup written"
        );
        summary_row(vec![
            ("backup_id", Ok(summary.backup_id)),
            ("files", Err(summary.files as i64)),
            ("files_copied", Err(summary.files_copied as i64)),
            ("bytes_copied", Err(summary.bytes_copied as i64)),
            ("catalog_bytes", Err(summary.catalog_bytes as i64)),
        ])
    }

    /// `RESTORE FROM 'dir'`: the newest backup in `dir` into this cluster,
    /// which must hold no table, view or data file. Every data file is
    /// checked (SHA-256, length, CRC-32C) and written as new stripes for
    /// this cluster's nodes; then one Raft command replaces the catalog. A
    /// failure before that command leaves the cluster as it was (the files
    /// written are orphans that collection removes). One row: the backup's
    /// id, its tables, data files and their bytes. 42501 for a role that
    /// is not a superuser, 55000 for a cluster that is not empty, XX001 for
    /// a damaged backup.
    pub(super) async fn restore(&self, dir: &str) -> Result<Output> {
        let current = self.superuser_catalog("restore a backup").await?;
        let dir = absolute(dir)?.to_owned();
        if !current.tables.is_empty() || !current.views.is_empty() || !current.stripes.is_empty() {
            return Err(user_error(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "RESTORE needs an empty cluster: this one holds tables, views or data files",
            ));
        }
        let read_dir = dir.clone();
        let (manifest, mut restored) =
            tokio::task::spawn_blocking(move || backup::newest(&read_dir))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
        // Each file goes into stripes of its table's layout.
        let mut layout_of: BTreeMap<ChunkId, Option<StripeLayout>> = BTreeMap::new();
        for table in restored
            .tables
            .values()
            .map(|t| t.as_ref())
            .chain(restored.dropped.iter().map(|d| d.table.as_ref()))
        {
            for entry in &table.files {
                layout_of.insert(entry.file.chunk, table.layout);
            }
        }
        let mut groups: BTreeMap<Option<(u8, u8)>, Vec<&BackedUpFile>> = BTreeMap::new();
        for file in &manifest.files {
            let layout = layout_of.get(&file.chunk_id()?).copied().flatten();
            groups
                .entry(layout.map(|l| (l.data_chunks, l.parity_chunks)))
                .or_default()
                .push(file);
        }
        let mut stripes = Vec::new();
        let mut bytes = 0u64;
        for (layout, files) in groups {
            let sink = self.engine.chunks.sink(layout.map(|(k, m)| StripeLayout {
                data_chunks: k,
                parity_chunks: m,
            }));
            for file in files {
                let (from, wanted) = (dir.clone(), file.clone());
                let data = tokio::task::spawn_blocking(move || backup::read_file(&from, &wanted))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
                bytes += data.len() as u64;
                sink.put_as(file.chunk_id()?, data).await.map_err(|e| {
                    user_error(
                        SqlState::IO_ERROR,
                        format!("cannot store data file {}: {e}", file.chunk),
                    )
                })?;
            }
            stripes.extend(sink.finish().await.map_err(|e| {
                user_error(SqlState::IO_ERROR, format!("cannot store the stripes: {e}"))
            })?);
        }
        restored.stripes = Default::default();
        restored.stripe_of = Default::default();
        for stripe in stripes {
            restored.add_stripe(stripe);
        }
        let mut snapshot = Vec::new();
        quarry_raft::snapshot_file::write(&restored, &mut snapshot)
            .map_err(|e| Error::Internal(format!("cannot encode the catalog: {e}")))?;
        self.engine
            .meta
            .write(Command::Restore { snapshot })
            .await?;
        tracing::info!(backup = %manifest.backup_id, files = manifest.files.len(), bytes, "backup restored");
        summary_row(vec![
            ("backup_id", Ok(manifest.backup_id.clone())),
            ("tables", Err(restored.tables.len() as i64)),
            ("files", Err(manifest.files.len() as i64)),
            ("bytes", Err(bytes as i64)),
        ])
    }
}
