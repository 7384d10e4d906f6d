//! MERGE INTO (PostgreSQL 15+ / BigQuery forms), as one query over a full outer
//! join of target and source that yields the target's new rows.
//!
//! For each joined row, the first WHEN clause that applies decides: UPDATE gives
//! the row new values, DELETE drops it, INSERT makes a row from source values; a
//! target row no clause applies to stays as it is, a source row no INSERT applies
//! to is dropped. The whole table is then rewritten (copy-on-write of every data
//! file), so a concurrent rewrite of the same table conflicts (40001). A target
//! row matched by two source rows is an error (21000), as in PostgreSQL.

use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Expr, Merge, MergeAction, MergeClauseKind, MergeInsertKind, TableFactor,
};
use quarry_common::SqlState;
use quarry_common::catalog::Table;

use crate::error::{Result, user_error};
use crate::session::normalize;

/// Column of the planned query naming the clause that applied (0: none).
pub const CLAUSE_COLUMN: &str = "__quarry_merge_clause";
/// Column of the planned query: true for source rows that matched no target row.
pub const SOURCE_ONLY_COLUMN: &str = "__quarry_merge_source_only";

const ROW_ID: &str = "__quarry_merge_row";
const FROM_SOURCE: &str = "__quarry_merge_source";

/// A MERGE turned into SQL over the pinned catalog.
pub struct MergePlan {
    /// Rows: the table's columns in order, then [`CLAUSE_COLUMN`] and
    /// [`SOURCE_ONLY_COLUMN`].
    pub query: String,
    /// Counts target rows matched by more than one source row.
    pub duplicate_check: String,
    /// 1-based clause numbers whose action is DELETE.
    pub delete_clauses: Vec<usize>,
}

fn alias_of(factor: &TableFactor, fallback: &str) -> Result<String> {
    match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => Ok(alias.name.value.clone()),
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

/// Plans `merge` into `table`, whose target reference is `target_sql`
/// (schema-qualified name).
///
/// # Errors
/// 0A000 for forms not supported; 42703 for unknown columns in SET or INSERT.
pub fn plan(merge: &Merge, table: &Table, target_sql: &str) -> Result<MergePlan> {
    let target = alias_of(&merge.table, &table.name)?;
    let source = alias_of(&merge.source, "source")?;
    let source_sql = match &merge.source {
        TableFactor::Table { name, .. } => name.to_string(),
        TableFactor::Derived { subquery, .. } => format!("({subquery})"),
        _ => unreachable!("alias_of accepted only tables and subqueries"),
    };
    let on = &merge.on;
    let matched = format!("{target}.{ROW_ID} IS NOT NULL AND {source}.{FROM_SOURCE} IS NOT NULL");
    let source_only = format!("{target}.{ROW_ID} IS NULL");
    let target_only = format!("{source}.{FROM_SOURCE} IS NULL");

    let mut conditions = Vec::new();
    let mut delete_clauses = Vec::new();
    // Per column: (clause number, value) overrides.
    let mut values: Vec<Vec<(usize, String)>> = vec![Vec::new(); table.columns.len()];
    for (i, clause) in merge.clauses.iter().enumerate() {
        let number = i + 1;
        let side = match clause.clause_kind {
            MergeClauseKind::Matched => &matched,
            MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget => &source_only,
            MergeClauseKind::NotMatchedBySource => &target_only,
        };
        let predicate = clause
            .predicate
            .as_ref()
            .map(|p| format!(" AND ({p})"))
            .unwrap_or_default();
        conditions.push(format!("WHEN {side}{predicate} THEN {number}"));
        match &clause.action {
            MergeAction::Delete { .. } => delete_clauses.push(number),
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
                    let index = table
                        .columns
                        .iter()
                        .position(|c| c.name == column)
                        .ok_or_else(|| {
                            user_error(
                                SqlState::UNDEFINED_COLUMN,
                                format!("column \"{column}\" does not exist"),
                            )
                        })?;
                    values[index].push((number, assignment.value.to_string()));
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
                    let index = table
                        .columns
                        .iter()
                        .position(|c| c.name == *column)
                        .ok_or_else(|| {
                            user_error(
                                SqlState::UNDEFINED_COLUMN,
                                format!("column \"{column}\" does not exist"),
                            )
                        })?;
                    values[index].push((number, value.to_string()));
                    given[index] = true;
                }
                for (index, given) in given.into_iter().enumerate() {
                    if !given {
                        values[index].push((number, "NULL".to_owned()));
                    }
                }
            }
        }
    }
    let clause_case = format!("CASE {} ELSE 0 END", conditions.join(" "));
    let mut select = Vec::with_capacity(table.columns.len() + 2);
    for (column, overrides) in table.columns.iter().zip(&values) {
        let name = &column.name;
        let original = format!("{target}.\"{name}\"");
        if overrides.is_empty() {
            select.push(format!("{original} AS \"{name}\""));
            continue;
        }
        let whens: Vec<String> = overrides
            .iter()
            .map(|(number, value)| format!("WHEN {number} THEN {value}"))
            .collect();
        select.push(format!(
            "CASE ({clause_case}) {} ELSE {original} END AS \"{name}\"",
            whens.join(" ")
        ));
    }
    select.push(format!("{clause_case} AS {CLAUSE_COLUMN}"));
    select.push(format!("({source_only}) AS {SOURCE_ONLY_COLUMN}"));
    let target_rows = format!("(SELECT *, row_number() OVER () AS {ROW_ID} FROM {target_sql})");
    let source_rows = format!("(SELECT *, true AS {FROM_SOURCE} FROM {source_sql})");
    let query = format!(
        "SELECT {} FROM {target_rows} AS {target} FULL OUTER JOIN {source_rows} AS {source} ON {on}",
        select.join(", ")
    );
    let duplicate_check = format!(
        "SELECT count(*) FROM (SELECT {target}.{ROW_ID} FROM {target_rows} AS {target} \
         JOIN {source_rows} AS {source} ON {on} GROUP BY {target}.{ROW_ID} HAVING count(*) > 1) AS d"
    );
    Ok(MergePlan {
        query,
        duplicate_check,
        delete_clauses,
    })
}
