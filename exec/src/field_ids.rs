//! Reads data files by field id (Iceberg's schema evolution): a table column
//! finds its data in the file column with the same `PARQUET:field_id`, whatever
//! either is called now. A column the file predates reads as the column's default
//! (NULL unless ADD COLUMN gave one); a column whose type was widened is cast.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapter, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use quarry_common::catalog::Column as TableColumn;

use crate::data_file::scalar_of;
use crate::types::FIELD_ID_KEY;

/// Creates a [`FieldIdAdapter`] per data file for the columns of one snapshot.
#[derive(Debug)]
pub struct FieldIdAdapterFactory {
    columns: Vec<TableColumn>,
}

impl FieldIdAdapterFactory {
    /// An adapter factory for a table scanned with `columns` (in schema order).
    pub fn new(columns: Vec<TableColumn>) -> Self {
        FieldIdAdapterFactory { columns }
    }
}

impl PhysicalExprAdapterFactory for FieldIdAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> DfResult<Arc<dyn PhysicalExprAdapter>> {
        let file_names_by_id: Vec<(u32, String)> = physical_file_schema
            .fields()
            .iter()
            .filter_map(|f| {
                f.metadata()
                    .get(FIELD_ID_KEY)
                    .and_then(|id| id.parse().ok())
                    .map(|id| (id, f.name().clone()))
            })
            .collect();
        // The table's columns renamed to what the file calls them; a column the
        // file lacks gets a name no file column has.
        let mut targets = Vec::with_capacity(self.columns.len());
        let mut fields = Vec::with_capacity(self.columns.len());
        for (column, field) in self.columns.iter().zip(logical_file_schema.fields()) {
            let in_file = file_names_by_id
                .iter()
                .find(|(id, _)| *id == column.field_id);
            let target = match in_file {
                Some((_, name)) => Target::File(name.clone()),
                None => Target::Default(scalar_of(column.default.as_ref(), &column.column_type)),
            };
            let name = match &target {
                Target::File(name) => name.clone(),
                Target::Default(_) => format!("__quarry_missing_field_{}", column.field_id),
            };
            fields.push(Field::new(
                name,
                field.data_type().clone(),
                field.is_nullable(),
            ));
            targets.push(target);
        }
        let renamed_logical = Arc::new(Schema::new(fields));
        Ok(Arc::new(FieldIdAdapter {
            targets,
            names: renamed_logical
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            inner: DefaultPhysicalExprAdapter::new(renamed_logical, physical_file_schema),
        }))
    }
}

#[derive(Debug)]
enum Target {
    /// The file column holding the field.
    File(String),
    /// The file predates the field: every row has this value.
    Default(ScalarValue),
}

/// Rewrites column references of one scan from table names to the file's.
#[derive(Debug)]
pub struct FieldIdAdapter {
    targets: Vec<Target>,
    names: Vec<String>,
    inner: DefaultPhysicalExprAdapter,
}

impl PhysicalExprAdapter for FieldIdAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> DfResult<Arc<dyn PhysicalExpr>> {
        let renamed = expr
            .transform(|e| {
                let Some(column) = e.downcast_ref::<Column>() else {
                    return Ok(Transformed::no(e));
                };
                match self.targets.get(column.index()) {
                    Some(Target::Default(value)) => Ok(Transformed::yes(Arc::new(Literal::new(
                        value.clone(),
                    ))
                        as Arc<dyn PhysicalExpr>)),
                    Some(Target::File(_)) => Ok(Transformed::yes(Arc::new(Column::new(
                        &self.names[column.index()],
                        column.index(),
                    ))
                        as Arc<dyn PhysicalExpr>)),
                    None => Ok(Transformed::no(e)),
                }
            })
            .data()?;
        self.inner.rewrite(renamed)
    }
}
