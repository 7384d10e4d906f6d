//! `quarry_system`: read-only tables about the database itself, built from the
//! catalog version the statement runs against.
//!
//! - `quarry_system.tables`: one row per table (id, current snapshot, rows, data
//!   files, bytes).
//! - `quarry_system.snapshots`: one row per table snapshot: when it committed,
//!   the operation (create, append, rewrite), the table's rows after it, and the
//!   rows and data files it added and removed. Rows count whole data files: a
//!   rewrite (DELETE/UPDATE) removes each touched file's rows and adds the rows of
//!   its replacement.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use quarry_common::catalog::Catalog;

/// Name of the system schema.
pub const SYSTEM_SCHEMA: &str = "quarry_system";

const TABLES: &str = "tables";
const SNAPSHOTS: &str = "snapshots";

/// The system schema over one catalog version.
#[derive(Debug)]
pub struct SystemSchema {
    catalog: Arc<Catalog>,
}

impl SystemSchema {
    /// The system tables of `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        SystemSchema { catalog }
    }
}

fn text(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn count(values: Vec<u64>) -> ArrayRef {
    Arc::new(UInt64Array::from(values))
}

fn table(schema: SchemaRef, columns: Vec<ArrayRef>) -> DfResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn tables(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_schema", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_id", DataType::UInt64, false),
        Field::new("snapshot_id", DataType::UInt64, false),
        Field::new("row_count", DataType::UInt64, false),
        Field::new("data_files", DataType::UInt64, false),
        Field::new("size_bytes", DataType::UInt64, false),
    ]));
    let all: Vec<_> = catalog.tables.values().collect();
    let current = |t: &quarry_common::catalog::Table| t.current_snapshot().id;
    table(
        schema,
        vec![
            text(all.iter().map(|t| t.schema.clone()).collect()),
            text(all.iter().map(|t| t.name.clone()).collect()),
            count(all.iter().map(|t| t.id).collect()),
            count(all.iter().map(|t| current(t)).collect()),
            count(all.iter().map(|t| t.current_snapshot().row_count).collect()),
            count(
                all.iter()
                    .map(|t| t.files_at(current(t)).count() as u64)
                    .collect(),
            ),
            count(
                all.iter()
                    .map(|t| t.files_at(current(t)).map(|f| f.size_bytes).sum())
                    .collect(),
            ),
        ],
    )
}

fn snapshots(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_schema", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("snapshot_id", DataType::UInt64, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("row_count", DataType::UInt64, false),
        Field::new("rows_added", DataType::UInt64, false),
        Field::new("rows_removed", DataType::UInt64, false),
        Field::new("files_added", DataType::UInt64, false),
        Field::new("files_removed", DataType::UInt64, false),
    ]));
    let mut rows = Vec::new();
    for t in catalog.tables.values() {
        let mut previous_rows = 0;
        for snapshot in &t.snapshots {
            let files_added = t.files.iter().filter(|e| e.added_in == snapshot.id).count() as u64;
            let files_removed = t
                .files
                .iter()
                .filter(|e| e.removed_in == Some(snapshot.id))
                .count() as u64;
            let rows_removed =
                (previous_rows + snapshot.rows_added).saturating_sub(snapshot.row_count);
            previous_rows = snapshot.row_count;
            rows.push((t, snapshot, rows_removed, files_added, files_removed));
        }
    }
    table(
        schema,
        vec![
            text(rows.iter().map(|r| r.0.schema.clone()).collect()),
            text(rows.iter().map(|r| r.0.name.clone()).collect()),
            count(rows.iter().map(|r| r.1.id).collect()),
            Arc::new(
                TimestampMicrosecondArray::from(
                    rows.iter().map(|r| r.1.committed_at).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            text(rows.iter().map(|r| r.1.operation.to_string()).collect()),
            count(rows.iter().map(|r| r.1.row_count).collect()),
            count(rows.iter().map(|r| r.1.rows_added).collect()),
            count(rows.iter().map(|r| r.2).collect()),
            count(rows.iter().map(|r| r.3).collect()),
            count(rows.iter().map(|r| r.4).collect()),
        ],
    )
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec![SNAPSHOTS.to_owned(), TABLES.to_owned()]
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            TABLES => tables(&self.catalog).map(Some),
            SNAPSHOTS => snapshots(&self.catalog).map(Some),
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(name, TABLES | SNAPSHOTS)
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "{SYSTEM_SCHEMA} is read-only ({name})"
        )))
    }
}
