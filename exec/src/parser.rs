//! SQL parsing: PostgreSQL's dialect, plus BigQuery's `FOR SYSTEM_TIME AS OF`.
//!
//! Statements first go through datafusion-pg-catalog's PostgreSQL compatibility
//! parser, which rewrites what clients such as psql send about `pg_catalog` into
//! forms DataFusion plans. What PostgreSQL's grammar rejects is parsed again with
//! [`QuarryDialect`], PostgreSQL's dialect with table versioning (time travel), and
//! given the same rewrites.

use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast::{Expr, Ident, Query, SelectItem, SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use quarry_common::SqlState;

use crate::error::{Result, user_error};

/// PostgreSQL's dialect with `FOR SYSTEM_TIME AS OF` after a table name.
///
/// It reports PostgreSQL's type id, so the parser applies every PostgreSQL-only
/// rule to it too.
#[derive(Debug, Default)]
pub struct QuarryDialect {
    postgres: PostgreSqlDialect,
}

macro_rules! delegate {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { self.postgres.$name() })*
    };
}

impl Dialect for QuarryDialect {
    fn dialect(&self) -> std::any::TypeId {
        std::any::TypeId::of::<PostgreSqlDialect>()
    }

    fn supports_table_versioning(&self) -> bool {
        true
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.postgres.identifier_quote_style(identifier)
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.postgres.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.postgres.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.postgres.is_identifier_part(ch)
    }

    fn is_reserved_for_identifier(&self, kw: Keyword) -> bool {
        self.postgres.is_reserved_for_identifier(kw)
    }

    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.postgres.is_custom_operator_part(ch)
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.postgres.get_next_precedence(parser)
    }

    fn prec_value(&self, prec: Precedence) -> u8 {
        self.postgres.prec_value(prec)
    }

    delegate!(
        supports_unicode_string_literal,
        supports_filter_during_aggregation,
        supports_group_by_expr,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_listen_notify,
        supports_factorial_operator,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_colon_operator,
        supports_named_fn_args_with_expr_name,
        supports_empty_projections,
        supports_nested_comments,
        supports_string_escape_constant,
        supports_numeric_literal_underscores,
        supports_array_typedef_with_brackets,
        supports_geometric_types,
        supports_set_names,
        supports_alter_column_type_using,
        supports_notnull_operator,
        supports_interval_options,
        supports_insert_table_alias,
        supports_create_table_like_parenthesized,
        supports_select_wildcard_with_alias,
        supports_comma_separated_trim,
        supports_xml_expressions,
        supports_comment_optimizer_hint,
    );
}

static COMPAT: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Parses `sql` into statements (none for an empty string).
///
/// # Errors
/// 42601 with the parser's message.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let desugared = desugar_clone_as_of(sql).or_else(|| desugar_undrop(sql));
    let sql = desugared.as_deref().unwrap_or(sql);
    match COMPAT.parse(sql) {
        Ok(statements) => Ok(statements),
        Err(postgres_error) => match Parser::parse_sql(&QuarryDialect::default(), sql) {
            Ok(statements) => Ok(statements.into_iter().map(|s| COMPAT.rewrite(s)).collect()),
            Err(_) => Err(user_error(
                SqlState::SYNTAX_ERROR,
                postgres_error.to_string(),
            )),
        },
    }
}

/// Table option that carries the instant of `CREATE TABLE ... CLONE source FOR
/// SYSTEM_TIME AS OF <instant>` (BigQuery's table clone syntax), which the SQL
/// parser has no grammar for.
pub const CLONE_AS_OF_OPTION: &str = "__quarry_clone_as_of";

/// Rewrites `CREATE TABLE t CLONE s FOR SYSTEM_TIME AS OF <expr>` into
/// `CREATE TABLE t CLONE s WITH (__quarry_clone_as_of = <expr>)`; None for
/// anything else.
fn desugar_clone_as_of(sql: &str) -> Option<String> {
    const AS_OF: &str = " for system_time as of ";
    let lower = sql.to_ascii_lowercase();
    if !lower.trim_start().starts_with("create table") || !lower.contains(" clone ") {
        return None;
    }
    let at = lower.find(AS_OF)?;
    lower[..at].find(" clone ")?;
    let instant = sql[at + AS_OF.len()..].trim().trim_end_matches(';').trim();
    Some(format!(
        "{} WITH ({CLONE_AS_OF_OPTION} = {instant})",
        &sql[..at]
    ))
}

/// Table option marking `CREATE TABLE t CLONE t WITH (__quarry_undrop = true)`,
/// the form `UNDROP TABLE t` is parsed into.
pub const UNDROP_OPTION: &str = "__quarry_undrop";

/// Rewrites `UNDROP TABLE name` (Snowflake's statement; the SQL parser has no
/// grammar for it) into a clone of the dropped table marked as an undrop.
fn desugar_undrop(sql: &str) -> Option<String> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    let lower = trimmed.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("undrop")?
        .trim_start()
        .strip_prefix("table")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let name = trimmed[trimmed.len() - rest.len()..].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some(format!(
        "CREATE TABLE {name} CLONE {name} WITH ({UNDROP_OPTION} = true)"
    ))
}

/// The name PostgreSQL gives a result column computed by `expr` without an alias
/// (its FigureColname rules, simplified): a column keeps its name, a function call
/// or aggregate takes the function's name, CASE is `case`, anything else is
/// `?column?`.
fn postgres_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
        Expr::Nested(inner) => postgres_column_name(inner).or_else(|| Some("?column?".to_owned())),
        Expr::Cast { expr, .. } => match expr.as_ref() {
            Expr::Identifier(ident) => Some(ident.value.to_lowercase()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.to_lowercase()),
            other => postgres_column_name(other),
        },
        Expr::Function(function) => function
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| ident.value.to_lowercase()),
        Expr::Case { .. } => Some("case".to_owned()),
        Expr::Exists { .. } => Some("exists".to_owned()),
        _ => Some("?column?".to_owned()),
    }
}

/// Names the unaliased result columns of `query` as PostgreSQL would (`count`
/// rather than `count(*)`), where that name is unique among the result columns;
/// DataFusion needs distinct names.
pub fn name_result_columns(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let proposed: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) => postgres_column_name(expr),
            _ => None,
        })
        .collect();
    let taken: Vec<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) => Some(ident.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|p| p.value.to_lowercase())
            }
            _ => None,
        })
        .collect();
    for (item, name) in select.projection.iter_mut().zip(&proposed) {
        let Some(name) = name else { continue };
        let unique = proposed.iter().filter(|n| n.as_ref() == Some(name)).count() == 1
            && !taken.contains(name);
        if !unique {
            continue;
        }
        if let SelectItem::UnnamedExpr(expr) = item {
            let expr = std::mem::replace(
                expr,
                Expr::value(datafusion::sql::sqlparser::ast::Value::Null),
            );
            *item = SelectItem::ExprWithAlias {
                expr,
                alias: Ident::with_quote('"', name.clone()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::{TableFactor, TableVersion};

    #[test]
    fn result_columns_get_postgres_names_when_unique() {
        let cases = [
            (
                "select count(*), sum(a) from t",
                "SELECT count(*) AS \"count\", sum(a) AS \"sum\" FROM t",
            ),
            ("select 1", "SELECT 1 AS \"?column?\""),
            ("select 1, 2", "SELECT 1, 2"),
            (
                "select a, cast(b as text) from t",
                "SELECT a, CAST(b AS TEXT) AS \"b\" FROM t",
            ),
            (
                "select max(a) as m, max(b) from t",
                "SELECT max(a) AS m, max(b) AS \"max\" FROM t",
            ),
            (
                "select a, upper(a) as a from t",
                "SELECT a, upper(a) AS a FROM t",
            ),
        ];
        for (sql, expected) in cases {
            let mut statements = parse(sql).expect(sql);
            let Statement::Query(query) = &mut statements[0] else {
                panic!("not a query");
            };
            name_result_columns(query);
            assert_eq!(query.to_string(), expected, "{sql}");
        }
    }

    #[test]
    fn time_travel_clause_is_parsed() {
        let statements =
            parse("select * from t for system_time as of timestamp '2026-01-01 00:00:00'")
                .expect("parses");
        let Statement::Query(query) = &statements[0] else {
            panic!("not a query: {statements:?}");
        };
        let SetExpr::Select(select) = query.body.as_ref() else {
            panic!("not a select");
        };
        let TableFactor::Table { version, .. } = &select.from[0].relation else {
            panic!("not a table");
        };
        assert!(matches!(version, Some(TableVersion::ForSystemTimeAsOf(_))));
    }

    #[test]
    fn postgres_syntax_still_parses() {
        for sql in [
            "select 1::int4, 'a' || 'b', e'\\n', $1",
            "copy t from stdin with (format csv, header true)",
            "create table if not exists s.t (a int not null, b numeric(15,2))",
        ] {
            assert_eq!(parse(sql).expect(sql).len(), 1, "{sql}");
        }
    }

    #[test]
    fn clone_as_of_is_desugared_into_a_table_option() {
        let sql = "CREATE TABLE c CLONE s FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-01 00:00:00';";
        assert_eq!(
            desugar_clone_as_of(sql).as_deref(),
            Some(
                "CREATE TABLE c CLONE s WITH (__quarry_clone_as_of = TIMESTAMP '2026-01-01 00:00:00')"
            )
        );
        assert_eq!(parse(sql).expect("parses").len(), 1);
        assert_eq!(
            desugar_clone_as_of("SELECT * FROM t FOR SYSTEM_TIME AS OF now()"),
            None
        );
    }

    #[test]
    fn undrop_is_desugared() {
        assert_eq!(
            desugar_undrop("undrop table s.t;").as_deref(),
            Some("CREATE TABLE s.t CLONE s.t WITH (__quarry_undrop = true)")
        );
        assert_eq!(desugar_undrop("UNDROP TABLEt"), None);
        assert_eq!(parse("UNDROP TABLE t").expect("parses").len(), 1);
    }

    #[test]
    fn syntax_errors_are_42601() {
        let e = parse("selec 1").expect_err("bad syntax");
        assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR);
    }
}
