//! `LOAD DATA INTO | OVERWRITE t FROM FILES (format = ..., uris = [...])`,
//! BigQuery's statement
//! (<https://cloud.google.com/bigquery/docs/reference/standard-sql/load-statements>),
//! over files on the node that runs it (superusers only, as PostgreSQL's
//! server-side COPY FROM a file). The files are read with DataFusion's
//! Parquet, CSV and NDJSON readers, their rows conformed to the table
//! ([`super::stream::Conform`]) and written as data files committed in one
//! snapshot: a load that fails anywhere leaves nothing.

use super::stream::Conform;
use super::*;
use crate::bad_rows::BadRows;
use crate::data_file::DataFileWriter;
use crate::parser::FileFormat;
use crate::table::SnapshotTable;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};
use quarry_common::catalog::{ColumnType, ExternalSource};

/// A DataFusion error of reading the files, as Quarry's, naming LOAD DATA.
fn read_error(e: datafusion::error::DataFusionError) -> Error {
    match crate::external::read_error(e) {
        Error::User { state, message, .. } => user_error(state, format!("LOAD DATA: {message}")),
        other => other,
    }
}

/// The schema an NDJSON file of `table` is read in: its columns' types
/// (`typed`), except that a JSON column is read in the type the file's
/// inferred schema (`inferred`) has for it, an object as a struct, which
/// `Conform` writes as documents: arrow-json reads no object as text.
fn ndjson_read_schema(table: &Table, typed: &Schema, inferred: Option<&Schema>) -> Schema {
    let read_as = |field: &Field, column: &quarry_common::catalog::Column| match inferred
        .map(|s| s.field_with_name(&column.name))
    {
        Some(Ok(found)) if column.column_type == ColumnType::Json => {
            Field::new(field.name(), found.data_type().clone(), true)
        }
        _ => field.clone(),
    };
    Schema::new(
        typed
            .fields()
            .iter()
            .zip(&table.columns)
            .map(|(field, column)| read_as(field, column))
            .collect::<Vec<_>>(),
    )
}

impl Session {
    /// Runs `LOAD DATA`.
    ///
    /// # Errors
    /// 42501 for a role that is not a superuser; 58P01 for a file that does
    /// not exist (or a pattern no file matches); 42703 / 42804 / 23502 /
    /// 22P02 for rows that do not fit the table (past `max_bad_records`
    /// skipped, each a NOTICE naming its file, row and column); nothing is
    /// written then.
    pub(super) async fn load_data(
        &mut self,
        name: &ObjectName,
        overwrite: bool,
        format: FileFormat,
        uris: &[String],
        skip_leading_rows: u64,
        max_bad_records: u64,
    ) -> Result<Output> {
        let view = self.begin_statement().await?;
        let table = self.table(&view.catalog, name)?.clone();
        let access = self.access().await?;
        if !access.is_superuser() {
            return Err(user_error(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "must be superuser to LOAD DATA from files on the server",
            ));
        }
        crate::external::check_source(&ExternalSource {
            format,
            uris: Vec::new(),
            skip_leading_rows,
        })?;
        let paths = crate::external::resolve_files(uris, "LOAD DATA")?;
        // CSV columns are the table's, by position, read as text and
        // converted by `Conform` (so a bad value names its row and column);
        // JSON keys are read as the columns of their names.
        let field =
            |c: &quarry_common::catalog::Column, data_type| Field::new(&c.name, data_type, true);
        let typed = Schema::new(
            table
                .columns
                .iter()
                .map(|c| field(c, crate::types::arrow_type(&c.column_type)))
                .collect::<Vec<_>>(),
        );
        let text = Schema::new(
            table
                .columns
                .iter()
                .map(|c| field(c, DataType::Utf8))
                .collect::<Vec<_>>(),
        );
        // One file at a time, in one partition, in order: rows are
        // numbered within their file.
        let reader = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(1)
                .with_repartition_file_scans(false),
        );
        let mut writer = DataFileWriter::new(table.clone(), view.writes.clone());
        let mut rows = 0u64;
        let mut bad = BadRows::new(max_bad_records);
        for path in &paths {
            let in_file = |e: Error| match e {
                Error::User {
                    state,
                    message,
                    detail,
                } => Error::User {
                    state,
                    message,
                    detail: Some(match detail {
                        Some(detail) => format!("file {path}, {detail}"),
                        None => format!("file {path}"),
                    }),
                },
                other => other,
            };
            let frame = match format {
                FileFormat::Parquet => {
                    reader
                        .read_parquet(
                            path.as_str(),
                            ParquetReadOptions::default().file_extension(""),
                        )
                        .await
                }
                FileFormat::Csv => {
                    reader
                        .read_csv(
                            path.as_str(),
                            CsvReadOptions::new()
                                .has_header(skip_leading_rows == 1)
                                .schema(&text)
                                .file_extension(""),
                        )
                        .await
                }
                FileFormat::Json => {
                    let inferred = if table
                        .columns
                        .iter()
                        .any(|c| c.column_type == ColumnType::Json)
                    {
                        reader
                            .read_json(path.as_str(), JsonReadOptions::default().file_extension(""))
                            .await
                            .ok()
                            .map(|frame| frame.schema().as_arrow().clone())
                    } else {
                        None
                    };
                    let schema = ndjson_read_schema(&table, &typed, inferred.as_ref());
                    reader
                        .read_json(
                            path.as_str(),
                            JsonReadOptions::default()
                                .schema(&schema)
                                .file_extension(""),
                        )
                        .await
                }
            }
            .map_err(|e| match read_error(e) {
                Error::User { state, message, .. } if state == SqlState::IO_ERROR => {
                    user_error(SqlState::UNDEFINED_FILE, message)
                }
                other => other,
            })
            .map_err(in_file)?;
            let plan = frame.create_physical_plan().await.map_err(read_error)?;
            let conform = Conform::new(&table, plan.schema().as_ref()).map_err(in_file)?;
            let mut batches = datafusion::physical_plan::execute_stream(plan, reader.task_ctx())
                .map_err(read_error)?;
            let mut row = 1u64;
            let skipped_before = bad.rows.len();
            while let Some(batch) = batches.next().await {
                let batch = batch.map_err(read_error).map_err(in_file)?;
                let fitting = conform
                    .apply_skipping(&batch, row, &mut bad)
                    .map_err(in_file)?;
                row += batch.num_rows() as u64;
                rows += fitting.num_rows() as u64;
                writer.write(fitting).await?;
            }
            for skipped in &mut bad.rows[skipped_before..] {
                skipped.detail = Some(match skipped.detail.take() {
                    Some(detail) => format!("file {path}, {detail}"),
                    None => format!("file {path}, row {}", skipped.row),
                });
            }
        }
        writer.finish().await?;
        if overwrite {
            let current = SnapshotTable::new(
                table.clone(),
                table.current_snapshot().id,
                self.engine.chunks.clone(),
                None,
            );
            for file in current.visible_files() {
                view.writes.remove(table.id, file.chunk);
            }
        }
        self.commit_statement(&view.writes).await?;
        // As PostgreSQL's COPY ... ON_ERROR ignore LOG_VERBOSITY verbose:
        // one NOTICE per row skipped, then their count.
        for skipped in &bad.rows {
            self.notices.push(Notice {
                message: format!("skipping a row that does not fit: {}", skipped.message),
                detail: skipped.detail.clone(),
            });
        }
        if bad.count() > 0 {
            self.notices.push(Notice {
                message: format!(
                    "{} row{} skipped (max_bad_records = {max_bad_records})",
                    bad.count(),
                    if bad.count() == 1 { " was" } else { "s were" }
                ),
                detail: None,
            });
        }
        Ok(Output::Command(CommandTag::with_rows("LOAD", rows)))
    }
}
