//! Reading the files of a table's replicated ingest buffer: from the bytes
//! the catalog holds while they are buffered, and, once the compactor has
//! moved their rows into data files ([`RowRange`]s), re-encoded from those
//! rows for the snapshots that still read them (time travel, transactions
//! that began before the move, a scan planned before it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use imbl::OrdMap;
use quarry_common::catalog::{ChunkId, RowRange, Table};
use quarry_storage::ChunkRef;

use crate::chunks::DataFileStore;
use crate::data_file::ROW_GROUP_ROWS;

/// The buffered and moved files of one table as a scan found them, and what
/// the scan has fetched and re-encoded of them.
#[derive(Debug, Default)]
pub(crate) struct BufferedFiles {
    buffer: OrdMap<ChunkId, Bytes>,
    moved: OrdMap<ChunkId, Vec<RowRange>>,
    /// Data files holding moved rows, fetched once per scan.
    fetched: Mutex<HashMap<ChunkId, Bytes>>,
    /// Moved files re-encoded, once per scan.
    encoded: Mutex<HashMap<ChunkId, Bytes>>,
}

impl BufferedFiles {
    /// `table`'s buffer and moved files.
    pub(crate) fn of(table: &Table) -> Arc<Self> {
        Self::with_held(table, std::iter::empty())
    }

    /// `table`'s buffer and moved files, and the files a transaction holds
    /// in memory for it, not yet committed (`held`, see
    /// [`WriteSet::holding`](crate::data_file::WriteSet::holding)).
    pub(crate) fn with_held(
        table: &Table,
        held: impl IntoIterator<Item = (ChunkId, Bytes)>,
    ) -> Arc<Self> {
        let mut buffer = table.buffer.clone();
        buffer.extend(held);
        Arc::new(BufferedFiles {
            buffer,
            moved: table.moved.clone(),
            ..Default::default()
        })
    }

    /// Whether `chunk` is read from here rather than from its stripe.
    pub(crate) fn holds(&self, chunk: ChunkId) -> bool {
        self.buffer.contains_key(&chunk) || self.moved.contains_key(&chunk)
    }

    /// The Parquet bytes of buffered file `chunk`: as buffered, or
    /// re-encoded from the rows it moved to. None if it is neither.
    ///
    /// A scan may read a file in byte ranges (DataFusion splits files among
    /// partitions, each reading the row groups whose middle is in its
    /// range), planned on the buffered file's size `size_bytes`. Re-encoded
    /// bytes no longer than that put every row group's middle in exactly
    /// one of those ranges, so each row is read once; they are made so.
    ///
    /// # Errors
    /// Reading the data files its rows moved to; re-encoded bytes that do
    /// not fit in `size_bytes` even without statistics.
    pub(crate) async fn bytes(
        &self,
        chunk: ChunkId,
        size_bytes: u64,
        store: &Arc<dyn DataFileStore>,
    ) -> Result<Option<Bytes>, ParquetError> {
        if let Some(bytes) = self.buffer.get(&chunk) {
            return Ok(Some(bytes.clone()));
        }
        let Some(ranges) = self.moved.get(&chunk) else {
            return Ok(None);
        };
        if let Some(bytes) = lock(&self.encoded)?.get(&chunk) {
            return Ok(Some(bytes.clone()));
        }
        let mut sources = Vec::with_capacity(ranges.len());
        for range in ranges {
            let cached = lock(&self.fetched)?.get(&range.chunk).cloned();
            let file = match cached {
                Some(file) => file,
                None => {
                    let file = store
                        .get(ChunkRef {
                            id: range.chunk,
                            size_bytes: range.size_bytes,
                            checksum_crc32c: range.checksum_crc32c,
                        })
                        .await
                        .map_err(|e| ParquetError::External(Box::new(e)))?;
                    lock(&self.fetched)?.insert(range.chunk, file.clone());
                    file
                }
            };
            sources.push((file, *range));
        }
        let mut bytes = encode(&sources, false)?;
        if bytes.len() as u64 > size_bytes {
            bytes = encode(&sources, true)?;
        }
        if bytes.len() as u64 > size_bytes {
            return Err(ParquetError::General(format!(
                "buffered file {chunk} re-encodes to {} bytes, more than its {size_bytes}",
                bytes.len()
            )));
        }
        lock(&self.encoded)?.insert(chunk, bytes.clone());
        Ok(Some(bytes))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, ParquetError> {
    mutex
        .lock()
        .map_err(|_| ParquetError::General("buffered file cache lock poisoned".into()))
}

/// One Parquet file of the rows `sources` name (each a data file's bytes and
/// a range of its rows), in order, with the data files' schema (field ids
/// included), encoded as data files are, or `lean`: without statistics or
/// page index, and compressed harder.
fn encode(sources: &[(Bytes, RowRange)], lean: bool) -> Result<Bytes, ParquetError> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut schema = None;
    for (file, range) in sources {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file.clone())?;
        let total = builder.metadata().file_metadata().num_rows() as u64;
        if range.first_row + range.rows > total {
            return Err(ParquetError::General(format!(
                "rows {}..{} are not in data file {} of {total} rows",
                range.first_row,
                range.first_row + range.rows,
                range.chunk
            )));
        }
        schema.get_or_insert_with(|| builder.schema().clone());
        let selection = RowSelection::from(vec![
            RowSelector::skip(range.first_row as usize),
            RowSelector::select(range.rows as usize),
            RowSelector::skip((total - range.first_row - range.rows) as usize),
        ]);
        for batch in builder.with_row_selection(selection).build()? {
            batches.push(batch?);
        }
    }
    let schema = schema.ok_or_else(|| ParquetError::General("no rows to encode".into()))?;
    let properties = if lean {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(9)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_statistics_enabled(EnabledStatistics::None)
            .set_offset_index_disabled(true)
            .build()
    } else {
        crate::data_file::writer_properties()
    };
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))?;
    for batch in &batches {
        writer.write(batch)?;
    }
    Ok(Bytes::from(writer.into_inner()?))
}
