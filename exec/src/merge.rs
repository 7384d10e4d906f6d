//! MERGE INTO (PostgreSQL 15+ / BigQuery forms), as one query over a full outer
//! join of target and source that yields the target's new rows.
//!
//! For each joined row, the first WHEN clause that applies decides: UPDATE gives
//! the row new values, DELETE drops it, INSERT makes a row from source values; a
//! target row no clause applies to stays as it is, a source row no INSERT applies
//! to is dropped. The rows a clause applies to are written to new data files;
//! the target rows it updates or deletes are deleted from their data files
//! by deletion vector, or their files rewritten without them (as DELETE and
//! UPDATE do, docs/DATA_LAYOUT.md), so target rows no clause applies to are
//! not written again. A target row matched by two source rows is an error
//! (21000), as in PostgreSQL, found as the joined rows stream by (the join
//! runs once).
//!
//! Built as a DataFusion logical plan from the parsed statement: its
//! expressions (ON, WHEN conditions, SET and VALUES) are planned from the
//! AST against the joined schema.

use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Expr as PlanExpr, JoinType, LogicalPlan, LogicalPlanBuilder, case, lit, when,
};
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Expr, ExprWithAlias, Merge, MergeAction, MergeClauseKind, MergeInsertKind,
    TableFactor,
};
use quarry_common::SqlState;
use quarry_common::catalog::Table;

use crate::error::{Error, Result, user_error};
use crate::session::normalize;

/// Column of the planned query naming the clause that applied (0: none).
pub const CLAUSE_COLUMN: &str = "__quarry_merge_clause";
/// Column of the planned query: true for source rows that matched no target row.
pub const SOURCE_ONLY_COLUMN: &str = "__quarry_merge_source_only";
/// Column of the planned query: for a target row joined with a source row,
/// the target row's id (unique per target row); null otherwise. An id seen
/// twice is a target row matched twice.
pub const MATCHED_ROW_COLUMN: &str = "__quarry_merge_matched_row";
/// Column of the planned query: the target row's id (its data file and
/// position, [`crate::row_id`]); null for a source row no target row
/// matched.
pub const TARGET_ROW_COLUMN: &str = "__quarry_merge_target_row";

const ROW_ID: &str = crate::row_id::ROW_ID_COLUMN;
const FROM_SOURCE: &str = "__quarry_merge_source";

/// A MERGE as one logical plan over the pinned catalog.
pub struct MergePlan {
    /// Rows: the table's columns in order, then [`CLAUSE_COLUMN`],
    /// [`SOURCE_ONLY_COLUMN`], [`MATCHED_ROW_COLUMN`] and
    /// [`TARGET_ROW_COLUMN`].
    pub plan: LogicalPlan,
    /// 1-based clause numbers whose action is DELETE.
    pub delete_clauses: Vec<usize>,
    /// The conjuncts of the ON condition that read the target's columns
    /// alone, unqualified (for `require_partition_filter`).
    pub on_target: Vec<PlanExpr>,
}

/// The name the statement calls `factor` by: its alias, else its table name.
fn alias_of(factor: &TableFactor, fallback: &str) -> Result<String> {
    match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => Ok(normalize(&alias.name)),
        TableFactor::Table { name, .. } => Ok(name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize)
            .unwrap_or_else(|| fallback.to_owned())),
        _ => Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "MERGE needs a table or an aliased subquery as its source",
        )),
    }
}

fn column_index(table: &Table, name: &str) -> Result<usize> {
    table
        .columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| {
            user_error(
                SqlState::UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist"),
            )
        })
}

/// Plans an expression of the statement against the joined rows.
fn expr(state: &SessionState, expr: &Expr, schema: &DFSchema) -> Result<PlanExpr> {
    state
        .create_logical_expr_from_sql_expr(
            ExprWithAlias {
                expr: expr.clone(),
                alias: None,
            },
            schema,
        )
        .map_err(Error::from_engine)
}

/// Plans `merge` into `table`. `target` scans the table, `source` yields
/// the source's rows (both unaliased); the plan numbers the target's rows,
/// joins them with the source (full outer join on the ON condition) and
/// computes, per joined row, the clause that applies and the row's new values.
///
/// # Errors
/// 0A000 for forms not supported; 42703 for unknown columns in SET or INSERT;
/// the engine's errors for expressions that do not plan.
pub fn plan(
    state: &SessionState,
    merge: &Merge,
    table: &Table,
    target: LogicalPlan,
    source: LogicalPlan,
) -> Result<MergePlan> {
    let target_alias = alias_of(&merge.table, &table.name)?;
    let source_alias = alias_of(&merge.source, "source")?;
    let engine = Error::from_engine;
    // The target's rows carry their ids (`target` reads a RowIdTable).
    let target = LogicalPlanBuilder::from(target)
        .alias(target_alias.as_str())
        .and_then(|b| b.build())
        .map_err(engine)?;
    let mut source_columns: Vec<PlanExpr> = source
        .schema()
        .columns()
        .into_iter()
        .map(PlanExpr::Column)
        .collect();
    source_columns.push(lit(true).alias(FROM_SOURCE));
    let source = LogicalPlanBuilder::from(source)
        .project(source_columns)
        .and_then(|b| b.alias(source_alias.as_str()))
        .and_then(|b| b.build())
        .map_err(engine)?;
    let joined_schema = target.schema().join(source.schema()).map_err(engine)?;
    let on = expr(state, &merge.on, &joined_schema)?;
    let on_target = split_conjunction(&on)
        .into_iter()
        .filter(|e| {
            let columns = e.column_refs();
            !columns.is_empty()
                && columns.iter().all(|c| {
                    c.relation
                        .as_ref()
                        .is_some_and(|r| r.table() == target_alias)
                })
        })
        .map(|e| crate::rewrite::unqualified(e.clone()))
        .collect::<datafusion::common::Result<Vec<_>>>()
        .map_err(engine)?;
    let joined = LogicalPlanBuilder::from(target)
        .join_on(source, JoinType::Full, [on])
        .map_err(engine)?;

    let row_id = PlanExpr::Column(Column::new(Some(target_alias.as_str()), ROW_ID));
    let from_source = PlanExpr::Column(Column::new(Some(source_alias.as_str()), FROM_SOURCE));
    let matched = row_id
        .clone()
        .is_not_null()
        .and(from_source.clone().is_not_null());
    let source_only = row_id.clone().is_null();
    let target_only = from_source.is_null();

    let mut conditions = Vec::new();
    let mut delete_clauses = Vec::new();
    // Per column: (clause number, value) overrides.
    let mut values: Vec<Vec<(i64, PlanExpr)>> = vec![Vec::new(); table.columns.len()];
    for (i, clause) in merge.clauses.iter().enumerate() {
        let number = i as i64 + 1;
        let side = match clause.clause_kind {
            MergeClauseKind::Matched => matched.clone(),
            MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget => {
                source_only.clone()
            }
            MergeClauseKind::NotMatchedBySource => target_only.clone(),
        };
        let condition = match &clause.predicate {
            Some(predicate) => side.and(expr(state, predicate, &joined_schema)?),
            None => side,
        };
        conditions.push((condition, number));
        match &clause.action {
            MergeAction::Delete { .. } => delete_clauses.push(i + 1),
            MergeAction::Update(update) => {
                if update.update_predicate.is_some() || update.delete_predicate.is_some() {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "UPDATE ... WHERE / DELETE WHERE in MERGE is not supported",
                    ));
                }
                for assignment in &update.assignments {
                    let AssignmentTarget::ColumnName(name) = &assignment.target else {
                        return Err(user_error(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            "tuple assignments in MERGE",
                        ));
                    };
                    let column = name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(normalize)
                        .unwrap_or_default();
                    let index = column_index(table, &column)?;
                    values[index].push((number, expr(state, &assignment.value, &joined_schema)?));
                }
            }
            MergeAction::Insert(insert) => {
                let MergeInsertKind::Values(rows) = &insert.kind else {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "INSERT ROW in MERGE",
                    ));
                };
                let [row] = rows.rows.as_slice() else {
                    return Err(user_error(
                        SqlState::SYNTAX_ERROR,
                        "MERGE INSERT takes one VALUES row",
                    ));
                };
                let row: &[Expr] = row;
                let columns: Vec<String> = if insert.columns.is_empty() {
                    table.columns.iter().map(|c| c.name.clone()).collect()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(|c| {
                            c.0.last()
                                .and_then(|p| p.as_ident())
                                .map(normalize)
                                .unwrap_or_default()
                        })
                        .collect()
                };
                if columns.len() != row.len() {
                    return Err(user_error(
                        SqlState::SYNTAX_ERROR,
                        "MERGE INSERT has more or fewer values than columns",
                    ));
                }
                let mut given = vec![false; table.columns.len()];
                for (column, value) in columns.iter().zip(row) {
                    let index = column_index(table, column)?;
                    values[index].push((number, expr(state, value, &joined_schema)?));
                    given[index] = true;
                }
                for (index, given) in given.into_iter().enumerate() {
                    if !given {
                        values[index].push((number, lit(ScalarValue::Null)));
                    }
                }
            }
        }
    }
    let mut conditions = conditions.into_iter();
    let Some((first, number)) = conditions.next() else {
        return Err(user_error(
            SqlState::SYNTAX_ERROR,
            "MERGE needs at least one WHEN clause",
        ));
    };
    let mut clause_case = when(first, lit(number));
    for (condition, number) in conditions {
        clause_case = clause_case.when(condition, lit(number));
    }
    let clause = clause_case.otherwise(lit(0i64)).map_err(engine)?;

    let mut select = Vec::with_capacity(table.columns.len() + 3);
    for (column, overrides) in table.columns.iter().zip(values) {
        let original = PlanExpr::Column(Column::new(Some(target_alias.as_str()), &column.name));
        let value = match overrides.split_first() {
            None => original,
            Some(((number, value), rest)) => {
                let mut by_clause = case(clause.clone()).when(lit(*number), value.clone());
                for (number, value) in rest {
                    by_clause = by_clause.when(lit(*number), value.clone());
                }
                by_clause.otherwise(original).map_err(engine)?
            }
        };
        select.push(value.alias(&column.name));
    }
    select.push(clause.alias(CLAUSE_COLUMN));
    select.push(source_only.alias(SOURCE_ONLY_COLUMN));
    select.push(
        when(matched, row_id.clone())
            .otherwise(lit(ScalarValue::UInt64(None)))
            .map_err(engine)?
            .alias(MATCHED_ROW_COLUMN),
    );
    select.push(row_id.alias(TARGET_ROW_COLUMN));
    let plan = joined
        .project(select)
        .and_then(|b| b.build())
        .map_err(engine)?;
    Ok(MergePlan {
        plan,
        delete_clauses,
        on_target,
    })
}
