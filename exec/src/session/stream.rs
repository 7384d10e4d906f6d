//! The streaming API's appends (BigQuery's Storage Write API with offsets,
//! <https://cloud.google.com/bigquery/docs/write-api#application-created_streams>):
//! rows of one request to a channel of a table are encoded as one data file
//! held in the table's replicated ingest buffer and committed with the
//! channel's new offset in one Raft command ([`Command::AppendBuffered`]), so
//! a retried request whose answer was lost finds its rows written (the
//! offset has moved past them) and writes nothing twice. A request too large
//! for the buffer is written as data files in stripes instead
//! ([`Command::Append`]), with the same offset rule.

use super::*;
use crate::bad_rows::{BadRow, BadRows, Misfit, fit_skipping};
use crate::copy::RowBuffer;
use crate::data_file::DataFileWriter;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::reader::StreamReader;
use quarry_common::catalog::{DataFile, TableId};
use quarry_raft::TableChange;

/// A request's rows, as the client sent them.
#[derive(Debug, Clone, Copy)]
pub enum StreamRows<'a> {
    /// Newline-delimited JSON: one object per line, keys are column names.
    NdJson(&'a [u8]),
    /// An Arrow IPC stream whose fields are columns of the table.
    ArrowIpc(&'a [u8]),
}

/// Where an append stands with respect to its channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The rows are committed (or, for a pending channel, durable and
    /// waiting for its commit); the channel's next offset follows them.
    Committed {
        /// The channel's next offset.
        next_offset: u64,
        /// Rows skipped as bad ([`AppendMode::max_bad_rows`]), numbered
        /// within the request from 1.
        skipped: Vec<BadRow>,
    },
    /// The channel is past `offset` already: these rows (a retry) were
    /// written before. Nothing was written.
    AlreadyWritten {
        /// The channel's next offset.
        next_offset: u64,
    },
    /// `offset` is beyond the channel's next offset. Nothing was written.
    Gap {
        /// The channel's next offset.
        next_offset: u64,
    },
}

/// How an append is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendMode {
    /// The channel is pending (BigQuery's PENDING write stream): its rows
    /// are durable but in no snapshot until [`Session::commit_channel`]
    /// commits them all at once.
    pub pending: bool,
    /// Most rows of the request that do not fit the table to skip rather
    /// than refuse the request; skipped rows still take their offsets.
    pub max_bad_rows: u64,
}

/// A channel as a writer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelState {
    /// The offset its next row takes.
    pub next_offset: u64,
    /// Whether its rows wait for a commit.
    pub pending: bool,
}

/// Rows per batch handed to the data file writer.
const BATCH_ROWS: usize = 65_536;

/// The text a JSON value stands for, as COPY would read it; None for null.
/// Arrays and objects are kept as their JSON text where `takes_json` (text
/// and JSON columns, and array and struct columns, whose row buffer decodes
/// the JSON), and are an error elsewhere.
fn json_text(
    value: &serde_json::Value,
    takes_json: bool,
) -> std::result::Result<Option<String>, ()> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Array(_) | Value::Object(_) if takes_json => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => return Err(()),
    })
}

/// The batches of an NDJSON body for `table`, skipping bad rows while
/// `bad` allows.
///
/// # Errors
/// 22P02 for a line that is not a JSON object, 42703 for a key that is no
/// column, and COPY's conversion errors, each naming the row.
fn ndjson_batches(table: &Arc<Table>, body: &[u8], bad: &mut BadRows) -> Result<Vec<RecordBatch>> {
    let mut rows = RowBuffer::new(table.clone(), &[])?.from_request();
    let mut batches = Vec::new();
    let mut row = 0u64;
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        row += 1;
        match ndjson_record(table, line, row) {
            Ok(record) => rows.push(row, record)?,
            Err(e) if bad.skip(row, &e) => continue,
            Err(e) => return Err(e),
        }
        if rows.len() >= BATCH_ROWS {
            batches.push(rows.take_batch_skipping(bad)?);
        }
    }
    if !rows.is_empty() {
        batches.push(rows.take_batch_skipping(bad)?);
    }
    Ok(batches)
}

/// The fields of row `row`, NDJSON line `line`, by column.
fn ndjson_record(table: &Table, line: &[u8], row: u64) -> Result<Vec<Option<String>>> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| Error::User {
            state: SqlState::INVALID_TEXT_REPRESENTATION,
            message: format!("row {row} is not a JSON object: {e}"),
            detail: Some(format!("row {row}")),
        })?;
    let mut record: Vec<Option<String>> = vec![None; table.columns.len()];
    for (key, value) in &object {
        let Some(position) = table.columns.iter().position(|c| c.name == *key) else {
            return Err(Error::User {
                state: SqlState::UNDEFINED_COLUMN,
                message: format!(
                    "column \"{key}\" of relation \"{}\" does not exist",
                    table.name
                ),
                detail: Some(format!("row {row}")),
            });
        };
        let column = &table.columns[position];
        use quarry_common::catalog::ColumnType as T;
        let takes_json = matches!(
            column.column_type,
            T::Text | T::Json | T::Array(_) | T::Struct(_)
        );
        record[position] = json_text(value, takes_json).map_err(|()| Error::User {
            state: SqlState::DATATYPE_MISMATCH,
            message: format!(
                "column \"{key}\" is of type {} but the value is a JSON {}",
                column.column_type,
                if value.is_array() { "array" } else { "object" }
            ),
            detail: Some(format!("row {row}, column {key}")),
        })?;
    }
    Ok(record)
}

/// Batches of another schema made batches of a table: fields matched to
/// columns by name (a column with no field is NULL), cast to the column's
/// type, NOT NULL checked.
pub(super) struct Conform {
    table: Arc<Table>,
    schema: datafusion::arrow::datatypes::SchemaRef,
    /// For each column, the position of its field.
    positions: Vec<Option<usize>>,
}

impl Conform {
    /// For batches of `incoming` into `table`.
    ///
    /// # Errors
    /// 42703 for a field that is no column of `table`.
    pub(super) fn new(table: &Arc<Table>, incoming: &Schema) -> Result<Self> {
        if let Some(field) = incoming
            .fields()
            .iter()
            .find(|f| table.column(f.name()).is_none())
        {
            return Err(user_error(
                SqlState::UNDEFINED_COLUMN,
                format!(
                    "column \"{}\" of relation \"{}\" does not exist",
                    field.name(),
                    table.name
                ),
            ));
        }
        Ok(Conform {
            table: table.clone(),
            schema: crate::types::table_schema(table),
            positions: table
                .columns
                .iter()
                .map(|c| incoming.index_of(&c.name).ok())
                .collect(),
        })
    }

    /// `batch` as rows of the table, skipping rows that do not fit while
    /// `bad` allows; `first_row` numbers its first row in errors.
    ///
    /// # Errors
    /// 42804 for a type that does not cast; for the first row that does
    /// not fit (past `bad`'s limit), 22P02 for a value that does not
    /// convert to its column's type (a string that is no number, a number
    /// out of range) and 23502 for a NULL in a NOT NULL column, naming the
    /// row and column. Nothing turns NULL silently.
    pub(super) fn apply_skipping(
        &self,
        batch: &RecordBatch,
        first_row: u64,
        bad: &mut BadRows,
    ) -> Result<RecordBatch> {
        fit_skipping(batch, &|i| first_row + i as u64, bad, &|b, number| {
            self.fit(b, number)
        })
    }

    /// [`Self::apply_skipping`] without skipping, the refused row by its index; `number` numbers
    /// rows in errors.
    fn fit(
        &self,
        batch: &RecordBatch,
        number: &dyn Fn(usize) -> u64,
    ) -> std::result::Result<RecordBatch, Misfit> {
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(self.table.columns.len());
        for ((column, position), field) in self
            .table
            .columns
            .iter()
            .zip(&self.positions)
            .zip(self.schema.fields())
        {
            let array = match position {
                Some(i) => {
                    let mut input = batch.column(*i).clone();
                    if column.column_type == quarry_common::catalog::ColumnType::Json
                        && input.data_type().is_nested()
                    {
                        // An array or object (an NDJSON file's, as its reader
                        // inferred it) is the JSON document of its value.
                        let documents =
                            crate::json::json_documents(&batch.schema().fields()[*i], &input)
                                .map_err(|e| Misfit::new(None, Error::from_engine(e)))?;
                        input = Arc::new(documents);
                    }
                    let input = &input;
                    // A value that does not convert is NULL here, then
                    // told from a NULL of the input.
                    let output = datafusion::arrow::compute::cast(input, field.data_type())
                        .map_err(|e| {
                            Misfit::new(
                                None,
                                user_error(
                                    SqlState::DATATYPE_MISMATCH,
                                    format!(
                                        "column \"{}\" is of type {} but the field is {}: {e}",
                                        column.name,
                                        column.column_type,
                                        input.data_type()
                                    ),
                                ),
                            )
                        })?;
                    if output.null_count() > input.null_count()
                        && let Some(row) =
                            (0..rows).find(|&r| input.is_valid(r) && output.is_null(r))
                    {
                        let value =
                            datafusion::arrow::util::display::array_value_to_string(input, row)
                                .unwrap_or_default();
                        return Err(Misfit::new(
                            Some(row),
                            Error::User {
                                state: SqlState::INVALID_TEXT_REPRESENTATION,
                                message: format!(
                                    "invalid input syntax for type {}: \"{value}\"",
                                    column.column_type
                                ),
                                detail: Some(format!(
                                    "row {}, column {}",
                                    number(row),
                                    column.name
                                )),
                            },
                        ));
                    }
                    output
                }
                None => datafusion::arrow::array::new_null_array(field.data_type(), rows),
            };
            if !column.nullable
                && array.null_count() > 0
                && let Some(row) = (0..rows).find(|r| array.is_null(*r))
            {
                return Err(Misfit::new(
                    Some(row),
                    Error::User {
                        state: SqlState::NOT_NULL_VIOLATION,
                        message: format!(
                            "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                            column.name, self.table.name
                        ),
                        detail: Some(format!("row {}, column {}", number(row), column.name)),
                    },
                ));
            }
            columns.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| {
            Misfit::new(
                None,
                Error::Internal(format!("a batch does not fit its table: {e}")),
            )
        })
    }
}

/// The batches of an Arrow IPC stream body, as `table`'s columns
/// ([`Conform`]).
///
/// # Errors
/// 22P02 for a body that is not an Arrow IPC stream, and [`Conform`]'s.
fn arrow_batches(table: &Arc<Table>, body: &[u8], bad: &mut BadRows) -> Result<Vec<RecordBatch>> {
    let malformed = |e: &dyn std::fmt::Display| {
        user_error(
            SqlState::INVALID_TEXT_REPRESENTATION,
            format!("the body is not an Arrow IPC stream: {e}"),
        )
    };
    let reader =
        StreamReader::try_new(std::io::Cursor::new(body), None).map_err(|e| malformed(&e))?;
    let conform = Conform::new(table, &reader.schema())?;
    let mut batches = Vec::new();
    let mut first_row = 1u64;
    for batch in reader {
        let batch = batch.map_err(|e| malformed(&e))?;
        batches.push(conform.apply_skipping(&batch, first_row, bad)?);
        first_row += batch.num_rows() as u64;
    }
    Ok(batches)
}

impl Session {
    /// Channel `channel` of table `table` (`schema.name` or a name in the
    /// search path); None for a channel never written.
    ///
    /// # Errors
    /// 42P01 for an unknown table; 42501 without SELECT or INSERT on it.
    pub async fn channel_offset(
        &mut self,
        table: &str,
        channel: &str,
    ) -> Result<Option<ChannelState>> {
        let view = self.begin_statement().await?;
        let table = self
            .stream_table(&view, table, &[Privileges::SELECT, Privileges::INSERT])
            .await?;
        Ok(channel_state(&view.catalog, table.id, channel))
    }

    /// Commits every row of pending channels `channels` of `table` in one
    /// snapshot (BigQuery's BatchCommitWriteStreams): each channel's next
    /// offset. A channel committed before gives its next offset again (a
    /// retry).
    ///
    /// # Errors
    /// 42P01 / 42501 as [`Self::append_rows`]; 42704 for a channel never
    /// written (nothing is committed then).
    pub async fn commit_channels(&mut self, table: &str, channels: &[String]) -> Result<Vec<u64>> {
        let view = self.begin_statement().await?;
        let table = self
            .stream_table(&view, table, &[Privileges::INSERT])
            .await?;
        let offsets = channels
            .iter()
            .map(|channel| {
                channel_state(&view.catalog, table.id, channel)
                    .map(|state| state.next_offset)
                    .ok_or_else(|| quarry_raft::CatalogError::ChannelNotFound(channel.clone()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.engine
            .meta
            .write(Command::CommitPending {
                table: table.id,
                channels: channels.to_vec(),
            })
            .await?;
        Ok(offsets)
    }

    /// Forgets pending channel `channel` of `table` and its rows (their
    /// chunks are collected): the next offset it had.
    ///
    /// # Errors
    /// 42P01 / 42501 as [`Self::append_rows`]; 42704 for a channel never
    /// written; 55000 for a committed channel.
    pub async fn discard_channel(&mut self, table: &str, channel: &str) -> Result<u64> {
        let view = self.begin_statement().await?;
        let table = self
            .stream_table(&view, table, &[Privileges::INSERT])
            .await?;
        let state = channel_state(&view.catalog, table.id, channel)
            .ok_or_else(|| quarry_raft::CatalogError::ChannelNotFound(channel.to_owned()))?;
        if !state.pending {
            return Err(quarry_raft::CatalogError::ChannelState {
                channel: channel.to_owned(),
                problem: "is not pending: its rows were committed".to_owned(),
            }
            .into());
        }
        self.engine
            .meta
            .write(Command::DiscardPending {
                table: table.id,
                channel: channel.to_owned(),
            })
            .await?;
        Ok(state.next_offset)
    }

    /// The table a streaming request names, once the session's role may
    /// use its schema and has one of `any_of` on it.
    async fn stream_table(
        &self,
        view: &CatalogView,
        name: &str,
        any_of: &[Privileges],
    ) -> Result<Arc<Table>> {
        let parts: Vec<Ident> = name.split('.').map(Ident::new).collect();
        if parts.len() > 2 || parts.iter().any(|p| p.value.is_empty()) {
            return Err(user_error(
                SqlState::UNDEFINED_TABLE,
                format!("\"{name}\" is not a table name (schema.table)"),
            ));
        }
        let table = self.table(&view.catalog, &ObjectName::from(parts))?.clone();
        if view.catalog.external_source(table.id).is_some() {
            return Err(quarry_raft::CatalogError::ExternalTable(table.name.clone()).into());
        }
        let access = self.access().await?;
        access.require(&Securable::Schema(table.schema.clone()), Privileges::USAGE)?;
        let object = Securable::Table(table.id);
        let mut refused = None;
        for wanted in any_of {
            match access.require(&object, *wanted) {
                Ok(()) => return Ok(table),
                Err(e) => refused = Some(e),
            }
        }
        Err(refused.unwrap_or_else(|| Error::Internal("no privilege asked for".to_owned())))
    }

    /// Appends `rows` to channel `channel` of table `table` at `offset`,
    /// the channel's row offset of the first row: committed (with the
    /// channel's new offset, in one Raft command) when `offset` is the
    /// channel's next offset, else nothing is written. A pending channel's
    /// rows are held for its commit instead.
    ///
    /// # Errors
    /// 42P01 / 42501 as [`Self::channel_offset`] (INSERT needed); a row
    /// that does not fit the table (naming it) past `mode.max_bad_rows`;
    /// 55000 for rows of a pending channel sent as committed, or the
    /// reverse; the commit's errors. A failed append leaves nothing behind.
    pub async fn append_rows(
        &mut self,
        table: &str,
        channel: &str,
        offset: u64,
        rows: StreamRows<'_>,
        mode: AppendMode,
    ) -> Result<Appended> {
        let view = self.begin_statement().await?;
        let table = self
            .stream_table(&view, table, &[Privileges::INSERT])
            .await?;
        let next_offset =
            channel_state(&view.catalog, table.id, channel).map_or(0, |state| state.next_offset);
        if let Some(settled) = settled(offset, next_offset) {
            return Ok(settled);
        }
        let mut bad = BadRows::new(mode.max_bad_rows);
        let batches = match rows {
            StreamRows::NdJson(body) => ndjson_batches(&table, body, &mut bad)?,
            StreamRows::ArrowIpc(body) => arrow_batches(&table, body, &mut bad)?,
        };
        let count: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let skipped = bad.count();
        if count + skipped == 0 {
            return Ok(Appended::Committed {
                next_offset,
                skipped: Vec::new(),
            });
        }
        let mut writer = DataFileWriter::in_memory(table.clone());
        for batch in batches {
            writer.write(batch).await?;
        }
        let mut files = writer.finish_in_memory().await?;
        let writes = view.writes.clone();
        let mut stored = None;
        let command = match files.pop() {
            Some((file, bytes))
                if !mode.pending
                    && files.is_empty()
                    && bytes.len() <= crate::data_file::HELD_BYTES_MAX =>
            {
                Command::AppendBuffered {
                    table: table.id,
                    file,
                    bytes,
                    channel: channel.to_owned(),
                    offset,
                    skipped,
                }
            }
            last => {
                for (file, bytes) in files.into_iter().chain(last) {
                    let chunk = writes.put(&table, bytes).await?;
                    writes.add(
                        table.id,
                        DataFile {
                            chunk: chunk.id,
                            size_bytes: chunk.size_bytes,
                            checksum_crc32c: chunk.checksum_crc32c,
                            ..file
                        },
                    );
                }
                let mut changes = writes.take().await?.changes;
                let change = match changes.pop() {
                    Some(change) if changes.is_empty() => change,
                    // Every row skipped: the offsets move past them alone.
                    None if count == 0 => TableChange {
                        table: table.id,
                        added: Vec::new(),
                        removed: Vec::new(),
                        stripes: Vec::new(),
                    },
                    _ => {
                        return Err(Error::Internal(
                            "an append wrote other than one table's files".to_owned(),
                        ));
                    }
                };
                stored = Some(change.clone());
                if mode.pending {
                    Command::AppendPending {
                        change,
                        channel: channel.to_owned(),
                        offset,
                        skipped,
                    }
                } else {
                    Command::Append {
                        change,
                        channel: channel.to_owned(),
                        offset,
                        skipped,
                    }
                }
            }
        };
        match self.engine.meta.write(command).await {
            Ok(_) => Ok(Appended::Committed {
                next_offset: offset + count + skipped,
                skipped: bad.rows,
            }),
            Err(e) => {
                if let Some(change) = stored.filter(|_| transaction::refused(&e)) {
                    writes.discard_changes(vec![change]);
                }
                match e {
                    quarry_raft::Error::Catalog(quarry_raft::CatalogError::ChannelOffset {
                        next_offset,
                        ..
                    }) => Ok(settled(offset, next_offset).unwrap_or(Appended::Committed {
                        next_offset,
                        skipped: Vec::new(),
                    })),
                    e => Err(e.into()),
                }
            }
        }
    }
}

/// Channel `channel` of table `table` in `catalog`, pending or committed.
fn channel_state(catalog: &Catalog, table: TableId, channel: &str) -> Option<ChannelState> {
    let key = (table, channel.to_owned());
    match catalog.pending.get(&key) {
        Some(pending) => Some(ChannelState {
            next_offset: pending.next_offset,
            pending: true,
        }),
        None => catalog.channels.get(&key).map(|&next_offset| ChannelState {
            next_offset,
            pending: false,
        }),
    }
}

/// What an append at `offset` to a channel at `next_offset` comes to
/// without writing: None when it is to be written.
fn settled(offset: u64, next_offset: u64) -> Option<Appended> {
    match offset.cmp(&next_offset) {
        std::cmp::Ordering::Less => Some(Appended::AlreadyWritten { next_offset }),
        std::cmp::Ordering::Greater => Some(Appended::Gap { next_offset }),
        std::cmp::Ordering::Equal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_read_as_copy_text() {
        let text = |v: serde_json::Value, takes_json| json_text(&v, takes_json);
        assert_eq!(text(serde_json::json!(null), false), Ok(None));
        assert_eq!(
            text(serde_json::json!(12.5), false),
            Ok(Some("12.5".into()))
        );
        assert_eq!(
            text(serde_json::json!(true), false),
            Ok(Some("true".into()))
        );
        assert_eq!(text(serde_json::json!("x"), false), Ok(Some("x".into())));
        assert_eq!(
            text(serde_json::json!({"a": [1]}), true),
            Ok(Some("{\"a\":[1]}".into()))
        );
        assert_eq!(text(serde_json::json!([1]), false), Err(()));
    }

    #[test]
    fn a_value_that_does_not_convert_is_an_error_naming_its_row_not_a_null() {
        use datafusion::arrow::array::StringArray;
        let mut catalog = Catalog::default();
        for command in [
            Command::CreateSchema {
                name: "public".into(),
                if_not_exists: false,
            },
            Command::CreateTable {
                schema: "public".into(),
                name: "t".into(),
                columns: vec![ColumnDef {
                    name: "a".into(),
                    column_type: quarry_common::catalog::ColumnType::Int32,
                    nullable: true,
                    default: None,
                }],
                if_not_exists: false,
                files: Vec::new(),
                retention_micros: None,
                field_ids: Vec::new(),
                layout: None,
                stripes: Vec::new(),
            },
        ] {
            quarry_raft::command::apply(
                &mut catalog,
                &quarry_raft::command::Proposal {
                    command,
                    proposed_at: 1,
                },
            )
            .expect("applies");
        }
        let table = catalog.table("public", "t").expect("t").clone();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let conform = Conform::new(&table, &schema).expect("conform");
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                Some("12"),
                None,
                Some("x"),
            ]))],
        )
        .expect("batch");
        match conform.apply_skipping(&batch, 10, &mut BadRows::default()) {
            Err(Error::User { state, detail, .. }) => {
                assert_eq!(state, SqlState::INVALID_TEXT_REPRESENTATION);
                assert_eq!(detail.as_deref(), Some("row 12, column a"));
            }
            other => panic!("{other:?}"),
        }
        // A NULL stays NULL; a value converts.
        let out = conform
            .apply_skipping(&batch.slice(0, 2), 1, &mut BadRows::default())
            .expect("fits");
        assert_eq!(out.column(0).null_count(), 1);
        // Skipped when allowed: the other rows stay, the bad one is named.
        let mut bad = BadRows::new(1);
        let out = conform.apply_skipping(&batch, 10, &mut bad).expect("skips");
        assert_eq!(out.num_rows(), 2);
        assert_eq!(bad.rows[0].row, 12);
        assert_eq!(bad.rows[0].detail.as_deref(), Some("row 12, column a"));
    }

    #[test]
    fn an_offset_is_written_retried_or_a_gap() {
        assert_eq!(settled(5, 5), None);
        assert_eq!(
            settled(3, 5),
            Some(Appended::AlreadyWritten { next_offset: 5 })
        );
        assert_eq!(settled(7, 5), Some(Appended::Gap { next_offset: 5 }));
    }
}
