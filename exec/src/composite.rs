//! PostgreSQL's row values for struct columns: `ROW(1, 'a')` or `(1, 'a')`
//! in `INSERT ... VALUES`, `INSERT ... SELECT` or `UPDATE ... SET s = ...` assigns its values to
//! a struct column's fields by position, as PostgreSQL assigns a row to a composite column
//! (<https://www.postgresql.org/docs/current/rowtypes.html#ROWTYPES-IO-SYNTAX>).
//! DataFusion's row value is a struct of fields `c0, c1, ...`, which does
//! not cast to a struct of other names, so each is written as BigQuery's
//! `STRUCT(1 AS a, 'a' AS b)` in the column's field names before planning;
//! through arrays (`ARRAY[ROW(...)]`) and nested structs too. A cast to a
//! named composite type (`ROW('x', 1)::addr`) becomes a cast to its struct.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, DataType, Expr, Ident, Insert, ObjectName, SelectItem, SetExpr, Statement,
    Update, visit_expressions_mut,
};
use datafusion::sql::sqlparser::parser::Parser;
use quarry_common::SqlState;
use quarry_common::catalog::{ColumnType, CompositeType, Table};

use crate::error::{Result, user_error};

/// Rewrites the row values of `insert`'s VALUES rows or SELECT list that
/// go into struct columns of `table`.
///
/// # Errors
/// 42846 for a row value with more or fewer values than its struct has
/// fields (PostgreSQL's "cannot cast type record": too few or too many
/// columns).
pub(crate) fn row_values_as_structs(insert: &mut Insert, table: &Table) -> Result<()> {
    let Some(source) = insert.source.as_mut() else {
        return Ok(());
    };
    let targets: Vec<Option<&ColumnType>> = if insert.columns.is_empty() {
        table.columns.iter().map(|c| Some(&c.column_type)).collect()
    } else {
        insert
            .columns
            .iter()
            .map(|name| {
                let name = name.0.last()?.as_ident()?.value.as_str();
                table.column(name).map(|c| &c.column_type)
            })
            .collect()
    };
    // The expressions of each row: a VALUES row, or a SELECT's list (up to
    // a `*`, after which positions are not known here).
    let rows: Vec<Vec<&mut Expr>> = match source.body.as_mut() {
        SetExpr::Values(values) => values
            .rows
            .iter_mut()
            .map(|row| row.iter_mut().collect())
            .collect(),
        SetExpr::Select(select) => vec![
            select
                .projection
                .iter_mut()
                .map_while(|item| match item {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                        Some(expr)
                    }
                    _ => None,
                })
                .collect(),
        ],
        _ => Vec::new(),
    };
    for row in rows {
        for (expr, target) in row.into_iter().zip(&targets) {
            if let Some(target) = target {
                as_struct(expr, target)?;
            }
        }
    }
    Ok(())
}

/// Rewrites the row values `update` assigns to struct columns of `table`
/// (`SET s = ROW(1, 'a')`).
///
/// # Errors
/// As [`row_values_as_structs`].
pub(crate) fn row_values_in_update(update: &mut Update, table: &Table) -> Result<()> {
    for assignment in &mut update.assignments {
        let AssignmentTarget::ColumnName(name) = &assignment.target else {
            continue;
        };
        let Some(column) = name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .and_then(|ident| table.column(&ident.value))
        else {
            continue;
        };
        as_struct(&mut assignment.value, &column.column_type)?;
    }
    Ok(())
}

/// The values of a row value: `ROW(a, b)` or `(a, b)`.
fn row_value(expr: &Expr) -> Option<Vec<Expr>> {
    match expr {
        Expr::Tuple(values) => Some(values.clone()),
        Expr::Function(_) => {
            let (name, args) = crate::unnest::call_of(expr)?;
            (name == "row").then_some(args)
        }
        _ => None,
    }
}

/// Rewrites each cast to a named composite type of `CREATE TYPE`
/// (`ROW('x', 1)::addr`, `CAST(v AS addr[])`), which `named` looks up,
/// into a cast to its struct type: a row value first becomes a struct of
/// the type's field names, as a row value into a column does, and the cast
/// then converts each field by name.
///
/// # Errors
/// 42846 for a row value of another length than the type's fields.
pub(crate) fn casts_to_composite_types(
    statement: &mut Statement,
    named: &dyn Fn(&ObjectName) -> Option<Arc<CompositeType>>,
) -> Result<()> {
    let mut failed = None;
    let _ = visit_expressions_mut(statement, |expr| {
        let Expr::Cast {
            expr: value,
            data_type,
            ..
        } = expr
        else {
            return ControlFlow::<()>::Continue(());
        };
        let mut declared = Vec::new();
        let target = match data_type {
            DataType::Custom(..) | DataType::Array(_) => {
                crate::types::column_type_naming(data_type, named, &mut Vec::new(), &mut declared)
                    .ok()
            }
            _ => None,
        };
        let Some(target) = target.filter(|_| !declared.is_empty()) else {
            return ControlFlow::Continue(());
        };
        let struct_type = Parser::new(&crate::parser::QuarryDialect::default())
            .try_with_sql(&target.to_string())
            .and_then(|mut p| p.parse_data_type());
        match (as_struct(value, &target), struct_type) {
            (Ok(()), Ok(struct_type)) => {
                *data_type = struct_type;
                ControlFlow::Continue(())
            }
            (Err(e), _) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
            (_, Err(e)) => {
                failed = Some(crate::error::Error::Internal(format!(
                    "the struct type {target} does not parse: {e}"
                )));
                ControlFlow::Break(())
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

fn as_struct(expr: &mut Expr, target: &ColumnType) -> Result<()> {
    match target {
        ColumnType::Struct(fields) => {
            let Some(mut values) = row_value(expr) else {
                return Ok(());
            };
            if values.len() != fields.len() {
                return Err(user_error(
                    SqlState::CANNOT_COERCE,
                    format!(
                        "cannot cast type record to {target}: the row has {} values, the \
                         struct {} fields",
                        values.len(),
                        fields.len()
                    ),
                ));
            }
            for (value, field) in values.iter_mut().zip(fields) {
                as_struct(value, &field.column_type)?;
            }
            *expr = Expr::Struct {
                values: values
                    .into_iter()
                    .zip(fields)
                    .map(|(value, field)| Expr::Named {
                        expr: Box::new(value),
                        name: Ident::with_quote('"', &field.name),
                    })
                    .collect(),
                fields: Vec::new(),
            };
        }
        ColumnType::Array(element) => {
            if let Expr::Array(array) = expr {
                for value in &mut array.elem {
                    as_struct(value, &element.column_type)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}
