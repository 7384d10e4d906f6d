//! External tables: `CREATE EXTERNAL TABLE t OPTIONS (format = ..., uris =
//! [...])` (BigQuery's, <https://cloud.google.com/bigquery/docs/external-tables>).
//! The table is in the catalog (name, columns, owner, grants) but holds no
//! data file: every scan lists the files its uris name at that moment and
//! reads them in place with DataFusion's Parquet, CSV or NDJSON reader, cast
//! to the table's columns. Its rows cannot be changed (42809).
//!
//! The uris are absolute paths (globs allowed) on the node that runs the
//! scan: a stage that reads an external table runs on the coordinator, or on
//! every node when each task needs its rows whole (the build side of a
//! join), so the files must be at the same path on every node that may
//! coordinate a query of it (a shared mount), as a BigQuery external table's
//! files are in Cloud Storage.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use quarry_common::SqlState;
use quarry_common::catalog::{ExternalSource, FileFormat, Table};

use crate::error::{Error, Result, to_engine, user_error};

/// The files `uris` name, in order, each glob pattern expanded (sorted);
/// `statement` names the statement in errors.
///
/// # Errors
/// 22023 for a path that is not absolute; 58P01 for a path that does not
/// exist or a pattern no file matches.
pub fn resolve_files(uris: &[String], statement: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for uri in uris {
        if !uri.starts_with('/') {
            return Err(user_error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("{statement} takes absolute paths on the node, not \"{uri}\""),
            ));
        }
        if !uri.contains(['*', '?', '[']) {
            if !std::path::Path::new(uri).is_file() {
                return Err(user_error(
                    SqlState::UNDEFINED_FILE,
                    format!("could not open file \"{uri}\" for reading: No such file or directory"),
                ));
            }
            files.push(uri.clone());
            continue;
        }
        let pattern = glob::glob(uri).map_err(|e| {
            user_error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("\"{uri}\" is not a valid pattern: {e}"),
            )
        })?;
        let mut matched: Vec<String> = pattern
            .filter_map(|entry| entry.ok())
            .filter(|path| path.is_file())
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        if matched.is_empty() {
            return Err(user_error(
                SqlState::UNDEFINED_FILE,
                format!("no file matches \"{uri}\""),
            ));
        }
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

/// How DataFusion reads files of `source`'s format.
fn listing_options(source: &ExternalSource) -> ListingOptions {
    let format: Arc<dyn datafusion::datasource::file_format::FileFormat> = match source.format {
        FileFormat::Parquet => Arc::new(ParquetFormat::default()),
        FileFormat::Csv => {
            Arc::new(CsvFormat::default().with_has_header(source.skip_leading_rows == 1))
        }
        FileFormat::Json => Arc::new(JsonFormat::default()),
    };
    ListingOptions::new(format).with_file_extension("")
}

/// A listing of `files` (resolved paths) read as `source` says.
fn listing_config(source: &ExternalSource, files: &[String]) -> Result<ListingTableConfig> {
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<DfResult<Vec<_>>>()
        .map_err(Error::from_engine)?;
    Ok(
        ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(listing_options(source)),
    )
}

/// Checks `source`'s options that the parser cannot.
///
/// # Errors
/// 0A000 for a skip_leading_rows other than 0, or 1 of a CSV file.
pub fn check_source(source: &ExternalSource) -> Result<()> {
    let rows = source.skip_leading_rows;
    if rows > 1 || (rows == 1 && source.format != FileFormat::Csv) {
        return Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "skip_leading_rows is 0, or 1 for a CSV header",
        ));
    }
    Ok(())
}

/// The schema of the files `source` names, as DataFusion infers it from the
/// first file (Parquet gives it exactly; CSV and JSON from their values).
///
/// # Errors
/// 58P01 when no file exists; 22P02 / 58030 when the first file cannot be
/// read as its format.
pub async fn infer_schema(state: &dyn Session, source: &ExternalSource) -> Result<SchemaRef> {
    let files = resolve_files(&source.uris, "CREATE EXTERNAL TABLE")?;
    let config = listing_config(source, &files)?
        .infer_schema(state)
        .await
        .map_err(read_error)?;
    config
        .file_schema
        .ok_or_else(|| Error::Internal("schema inference gave no schema".to_owned()))
}

/// A DataFusion error of reading files, as Quarry's: 22P02 for a value that
/// does not parse, 58030 for the rest.
pub fn read_error(e: datafusion::error::DataFusionError) -> Error {
    match Error::from_engine(e) {
        Error::Engine(e) => {
            let message = e.to_string();
            let state = if message.contains("parsing")
                || message.contains("Parser error")
                || message.contains("Cast error")
            {
                SqlState::INVALID_TEXT_REPRESENTATION
            } else {
                SqlState::IO_ERROR
            };
            user_error(state, message)
        }
        other => other,
    }
}

/// An external table as DataFusion scans it.
#[derive(Debug)]
pub struct ExternalTable {
    table: Arc<Table>,
    source: Arc<ExternalSource>,
    schema: SchemaRef,
}

impl ExternalTable {
    /// `table`, whose rows are the files of `source` (its columns are all
    /// nullable: the files decide).
    pub fn new(table: Arc<Table>, source: Arc<ExternalSource>) -> Self {
        let schema = crate::types::table_schema(&table);
        ExternalTable {
            table,
            source,
            schema,
        }
    }

    /// The catalog's table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    fn refuse(&self) -> datafusion::error::DataFusionError {
        to_engine(user_error(
            SqlState::WRONG_OBJECT_TYPE,
            format!(
                "cannot change \"{}\": it is an external table, its rows are the files it reads",
                self.table.name
            ),
        ))
    }
}

#[async_trait]
impl datafusion::catalog::TableProvider for ExternalTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
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
        let files = resolve_files(&self.source.uris, "an external table").map_err(to_engine)?;
        let config = listing_config(&self.source, &files)
            .map_err(to_engine)?
            .with_schema(self.schema.clone());
        let listing = ListingTable::try_new(config)?;
        datafusion::catalog::TableProvider::scan(&listing, state, projection, filters, limit).await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(self.refuse())
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(self.refuse())
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(self.refuse())
    }
}
