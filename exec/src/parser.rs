//! SQL parsing: PostgreSQL's dialect, plus BigQuery's `FOR SYSTEM_TIME AS OF`,
//! plus the two statements PostgreSQL's grammar has no form for ([`QuarryStatement`]:
//! `UNDROP TABLE` and `CREATE TABLE ... CLONE ... FOR SYSTEM_TIME AS OF`), parsed by
//! their own grammar with sqlparser's parser API.
//!
//! Statements first go through datafusion-pg-catalog's PostgreSQL compatibility
//! parser, which rewrites what clients such as psql send about `pg_catalog` into
//! forms DataFusion plans. What PostgreSQL's grammar rejects is parsed again with
//! [`QuarryDialect`], PostgreSQL's dialect with table versioning (time travel), and
//! given the same rewrites.

use std::ops::ControlFlow;
use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::ast::helpers::stmt_create_table::CreateTableBuilder;
use datafusion::sql::sqlparser::ast::{
    CreateTable, CreateTableOptions, Expr, FetchDirection, FetchPosition, Ident, ObjectName, Query,
    SelectItem, SetExpr, Statement, TableAlias, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{self, SqlStatementRewriteRule};
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

    /// BigQuery's `STRUCT<a INT64, b STRING>` type and `STRUCT(1 AS a)` value.
    fn supports_struct_literal(&self) -> bool {
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

    /// PostgreSQL's, except that `>` does not continue an operator: the
    /// `>>>` closing `ARRAY<STRUCT<a ARRAY<T>>>` is `>>` and `>`, not one
    /// custom operator. Quarry has no operator ending in `>>>` or `>>`
    /// followed by another `>`.
    fn is_custom_operator_part(&self, ch: char) -> bool {
        ch != '>' && self.postgres.is_custom_operator_part(ch)
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

/// datafusion-pg-catalog's rewrite rules but two. Its `FixArrayLiteral`
/// splits `'{...}'::T[]` at commas, so quoted elements, NULLs and malformed
/// text came out wrong or accepted; array text is converted by
/// [`crate::array_text`] instead, as PostgreSQL's `array_in` does. Its `RemoveSubqueryFromProjection`
/// replaces every correlated subquery in a SELECT list by NULL, which gave
/// `SELECT a, (SELECT max(b) FROM t2 WHERE t2.k = t1.k) FROM t1` NULLs instead
/// of the maxima. Here only subqueries that read pg_catalog alone are replaced
/// ([`null_catalog_subqueries`]: client introspection that DataFusion cannot
/// decorrelate, as before); a subquery over tables is planned, or refused.
static RULES: LazyLock<Vec<Box<dyn SqlStatementRewriteRule>>> = LazyLock::new(|| {
    vec![
        Box::new(SpecialRegisters),
        Box::new(rules::AliasDuplicatedProjectionRewrite),
        Box::new(rules::ResolveUnqualifiedIdentifier),
        Box::new(rules::RewriteArrayAnyAllOperation),
        Box::new(rules::PrependUnqualifiedPgTableName),
        Box::new(rules::StripCallableQualifier),
        Box::new(rules::StripCollate),
        Box::new(rules::RewritePgCatalogOperator),
        Box::new(rules::RewriteRegCastToSubquery::new()),
        Box::new(rules::FixVersionColumnName),
    ]
});

/// PostgreSQL's special registers written without parentheses, as the
/// functions that answer them: `current_schema` → `current_schema()`,
/// `current_role` → `current_role()`, `user` → `current_user()` and
/// `current_catalog` → `current_database()`. `current_user` and
/// `session_user` stay as they are: Quarry registers them
/// ([`crate::pg_roles::register`]), each answering its own register, where
/// datafusion-pg-catalog's rule made `current_user` `session_user`.
#[derive(Debug)]
struct SpecialRegisters;

impl SqlStatementRewriteRule for SpecialRegisters {
    fn rewrite(&self, mut statement: Statement) -> Statement {
        /// The register `expr` names, if it is one that is rewritten.
        fn register(expr: &Expr) -> Option<String> {
            let name = match expr {
                Expr::Identifier(ident) if ident.quote_style.is_none() => &ident.value,
                Expr::Function(function)
                    if matches!(function.args, ast::FunctionArguments::None) =>
                {
                    &function.name.0.last()?.as_ident()?.value
                }
                _ => return None,
            };
            let name = name.to_ascii_lowercase();
            ["current_schema", "current_role", "user", "current_catalog"]
                .contains(&name.as_str())
                .then_some(name)
        }
        struct Rename;
        impl VisitorMut for Rename {
            type Break = ();
            // A result column keeps the register's name (`SELECT user`
            // names its column "user").
            fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
                if let SetExpr::Select(select) = query.body.as_mut() {
                    for item in &mut select.projection {
                        if let SelectItem::UnnamedExpr(expr) = item
                            && let Some(name) = register(expr)
                        {
                            *item = SelectItem::ExprWithAlias {
                                expr: expr.clone(),
                                alias: ast::Ident::new(name),
                            };
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
                let call = |name: &str| {
                    Some(Expr::Function(ast::Function {
                        name: ObjectName::from(vec![ast::Ident::new(name)]),
                        uses_odbc_syntax: false,
                        parameters: ast::FunctionArguments::None,
                        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                            duplicate_treatment: None,
                            args: Vec::new(),
                            clauses: Vec::new(),
                        }),
                        filter: None,
                        null_treatment: None,
                        over: None,
                        within_group: Vec::new(),
                    }))
                };
                let replacement = match expr {
                    Expr::Identifier(ident) if ident.quote_style.is_none() => {
                        match ident.value.to_ascii_lowercase().as_str() {
                            "current_schema" => call("current_schema"),
                            "current_role" => call("current_role"),
                            // `user` is `current_user` (a reserved word: a
                            // column of that name is written "user").
                            "user" => call("current_user"),
                            _ => None,
                        }
                    }
                    Expr::Function(function)
                        if matches!(function.args, ast::FunctionArguments::None) =>
                    {
                        match function.name.to_string().to_ascii_lowercase().as_str() {
                            "current_catalog" => call("current_database"),
                            "user" => call("current_user"),
                            "current_role" => call("current_role"),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(replacement) = replacement {
                    *expr = replacement;
                }
                ControlFlow::Continue(())
            }
        }
        let _ = VisitMut::visit(&mut statement, &mut Rename);
        statement
    }
}

/// `statement` through [`RULES`], then [`null_catalog_subqueries`].
fn rewrite_compatible(mut statement: Statement) -> Statement {
    for rule in RULES.iter() {
        statement = rule.rewrite(statement);
    }
    null_catalog_subqueries(&mut statement);
    statement
}

/// Rewrites each correlated subquery of a SELECT list that reads only
/// pg_catalog tables into a form DataFusion plans ([`catalog_key_lookup`]),
/// or else replaces it by NULL (what datafusion-pg-catalog's rule did to
/// every correlated subquery there).
fn null_catalog_subqueries(statement: &mut Statement) {
    struct Nulls;
    impl VisitorMut for Nulls {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            let SetExpr::Select(select) = query.body.as_mut() else {
                return ControlFlow::Continue(());
            };
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item
                    && let Expr::Subquery(subquery) = expr
                    && let SetExpr::Select(inner) = subquery.body.as_ref()
                    && reads_only_catalog(inner)
                    && is_correlated(subquery, inner)
                {
                    *expr = catalog_key_lookup(subquery)
                        .unwrap_or_else(|| Expr::Value(ast::Value::Null.into()));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(statement, &mut Nulls);
}

/// A correlated catalog subquery whose WHERE ties it to the outer row by
/// equalities only (`d.adrelid = a.attrelid AND d.adnum = a.attnum`), which
/// DataFusion decorrelates once [`aggregate_catalog_lookup`] aggregates it.
/// Conditions on the outer row alone (`AND a.atthasdef`, psql's column
/// default lookup) move out into `CASE WHEN condition THEN (subquery) END`,
/// which is NULL exactly when the subquery would find no row for them.
/// None for any other correlation, or one outside WHERE, or a parameter.
fn catalog_key_lookup(query: &Query) -> Option<Expr> {
    let mut query = query.clone();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let aliases = from_aliases(select);
    let selection = select.selection.take()?;
    if is_correlated(&query, select_of(&query)?) {
        return None;
    }
    let mut outer_only = Vec::new();
    let mut rest = Vec::new();
    for conjunct in conjuncts(selection) {
        let (outer, inner) = (
            names_outer(&conjunct, &aliases),
            names_inner(&conjunct, &aliases),
        );
        match (outer, inner) {
            (true, false) => outer_only.push(conjunct),
            (false, _) => rest.push(conjunct),
            (true, true) => match &conjunct {
                Expr::BinaryOp {
                    left,
                    op: ast::BinaryOperator::Eq,
                    right,
                } if {
                    let outer_side =
                        |e: &Expr| names_outer(e, &aliases) && !names_inner(e, &aliases);
                    (outer_side(left) && !names_outer(right, &aliases))
                        || (outer_side(right) && !names_outer(left, &aliases))
                } =>
                {
                    rest.push(conjunct)
                }
                _ => return None,
            },
        }
    }
    if let SetExpr::Select(select) = query.body.as_mut() {
        select.selection = conjoin(rest);
    }
    let lookup = Expr::Subquery(Box::new(query));
    Some(match conjoin(outer_only) {
        None => lookup,
        Some(condition) => Expr::Case {
            case_token: ast::helpers::attached_token::AttachedToken::empty(),
            end_token: ast::helpers::attached_token::AttachedToken::empty(),
            operand: None,
            conditions: vec![ast::CaseWhen {
                condition,
                result: lookup,
            }],
            else_result: None,
        },
    })
}

fn select_of(query: &Query) -> Option<&ast::Select> {
    match query.body.as_ref() {
        SetExpr::Select(select) => Some(select),
        _ => None,
    }
}

/// `expr` split at its top-level ANDs.
fn conjuncts(expr: Expr) -> Vec<Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(*left);
            all.extend(conjuncts(*right));
            all
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// The AND of `conditions`, None for none.
fn conjoin(conditions: Vec<Expr>) -> Option<Expr> {
    conditions.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: ast::BinaryOperator::And,
        right: Box::new(right),
    })
}

/// Whether `node` names a column of a table outside `aliases` (the
/// subquery's own FROM), `outer.column`, or (with `placeholders`) holds a
/// parameter.
fn names_outer_in<V: ast::Visit>(node: &V, aliases: &[String], placeholders: bool) -> bool {
    struct Find<'a>(&'a [String], bool);
    impl ast::Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Value(v) if self.1 && matches!(v.value, ast::Value::Placeholder(_)) => {
                    ControlFlow::Break(())
                }
                Expr::CompoundIdentifier(parts)
                    if parts.len() >= 2
                        && !self.0.iter().any(|a| a == &parts[parts.len() - 2].value) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    node.visit(&mut Find(aliases, placeholders)).is_break()
}

/// Whether `expr` names a column of a table outside `aliases`.
fn names_outer(expr: &Expr, aliases: &[String]) -> bool {
    names_outer_in(expr, aliases, false)
}

/// Whether `expr` names a column of the subquery's own FROM (`aliases`), or
/// an unqualified column (which may be one), or holds a subquery.
fn names_inner(expr: &Expr, aliases: &[String]) -> bool {
    struct Find<'a>(&'a [String]);
    impl ast::Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Identifier(_)
                | Expr::Subquery(_)
                | Expr::Exists { .. }
                | Expr::InSubquery { .. } => ControlFlow::Break(()),
                Expr::CompoundIdentifier(parts)
                    if parts.len() >= 2
                        && self.0.iter().any(|a| a == &parts[parts.len() - 2].value) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    ast::Visit::visit(expr, &mut Find(aliases)).is_break()
}

/// The names a SELECT's FROM gives its tables (aliases, or the tables' own
/// names).
fn from_aliases(select: &ast::Select) -> Vec<String> {
    select
        .from
        .iter()
        .flat_map(|from| {
            std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
        })
        .filter_map(|relation| match relation {
            TableFactor::Table { alias, name, .. } => Some(match alias {
                Some(alias) => alias.name.value.clone(),
                None => name.0.last()?.as_ident()?.value.clone(),
            }),
            TableFactor::Derived {
                alias: Some(alias), ..
            } => Some(alias.name.value.clone()),
            _ => None,
        })
        .collect()
}

/// Whether `query` (whose body is `select`) names a table its FROM does not
/// have (`outer.column`) or a parameter.
fn is_correlated(query: &Query, select: &ast::Select) -> bool {
    names_outer_in(query, &from_aliases(select), true)
}

/// A statement Quarry runs: one of PostgreSQL's grammar, or one of the two
/// that grammar has no form for.
#[derive(Debug, Clone, PartialEq)]
// A statement is parsed once per query: the size of the variants is not worth
// boxing PostgreSQL's statements for.
#[allow(clippy::large_enum_variant)]
pub enum QuarryStatement {
    /// A statement of PostgreSQL's grammar (with BigQuery's `FOR SYSTEM_TIME
    /// AS OF` after a table name in FROM).
    Sql(Statement),
    /// `UNDROP TABLE name` (Snowflake's): restores the most recently dropped
    /// table of that name while its data is within the time travel window.
    Undrop(ObjectName),
    /// `CREATE TABLE name CLONE source FOR SYSTEM_TIME AS OF instant [WITH
    /// (...)]` (BigQuery's table clone, at an instant of the source's
    /// history). `create` holds the name, the source (`clone`) and the options.
    CloneAsOf {
        /// The CREATE TABLE ... CLONE statement without the instant.
        create: Box<CreateTable>,
        /// The instant of the source to clone.
        instant: Expr,
    },
    /// `ALTER VIEW [IF EXISTS] name RENAME TO new_name` (PostgreSQL's; the
    /// SQL parser knows only `ALTER VIEW ... AS query`).
    RenameView {
        /// The view.
        name: ObjectName,
        /// Its new name (in the same schema).
        to: Ident,
        /// IF EXISTS: a missing view is not an error.
        if_exists: bool,
    },
    /// `CREATE ACCESS TOKEN name [VALID UNTIL 'timestamp']`: a bearer token
    /// of the HTTP API for the session's role, shown once.
    CreateAccessToken {
        /// Its name among the role's tokens.
        name: Ident,
        /// When it stops being accepted.
        valid_until: Option<Expr>,
    },
    /// `DROP ACCESS TOKEN [IF EXISTS] name`: revokes one of the session
    /// role's tokens.
    DropAccessToken {
        /// Its name.
        name: Ident,
        /// IF EXISTS: a missing token is not an error.
        if_exists: bool,
    },
    /// `CREATE USER`: PostgreSQL's CREATE ROLE with LOGIN by default.
    CreateUser(Box<ast::CreateRole>),
    /// `CREATE SUBSCRIPTION name CONNECTION 'conninfo' PUBLICATION pub [,
    /// ...] [WITH (option = value, ...)]` (PostgreSQL's).
    CreateSubscription {
        /// Its name.
        name: Ident,
        /// The source's connection string.
        connection: String,
        /// The source's publications.
        publications: Vec<Ident>,
        /// The WITH options, names lower-cased, values as written.
        options: Vec<(String, String)>,
    },
    /// `ALTER SUBSCRIPTION name ENABLE | DISABLE | CONNECTION 'conninfo' |
    /// REFRESH PUBLICATION [WITH (copy_data = ...)]`.
    AlterSubscription {
        /// Its name.
        name: Ident,
        /// ENABLE (true) or DISABLE (false).
        enabled: Option<bool>,
        /// CONNECTION: the new connection string.
        connection: Option<String>,
        /// REFRESH PUBLICATION, with its WITH options (names lower-cased,
        /// values as written).
        refresh: Option<Vec<(String, String)>>,
    },
    /// `DROP SUBSCRIPTION [IF EXISTS] name`.
    DropSubscription {
        /// Its name.
        name: Ident,
        /// IF EXISTS: a missing subscription is not an error.
        if_exists: bool,
    },
    /// `GRANT role [, ...] TO role [, ...]` (`granted`) or `REVOKE role [,
    /// ...] FROM role [, ...]`: role membership.
    GrantRole {
        /// The roles granted.
        roles: Vec<Ident>,
        /// Their new (or former) members.
        members: Vec<Ident>,
        /// GRANT (true) or REVOKE (false).
        granted: bool,
    },
    /// `ALTER VIEW [IF EXISTS] name OWNER TO role` (PostgreSQL's; the SQL
    /// parser knows only `ALTER VIEW ... AS query`).
    ViewOwner {
        /// The view.
        name: ObjectName,
        /// Its new owner.
        owner: ast::Owner,
        /// IF EXISTS: a missing view is not an error.
        if_exists: bool,
    },
    /// `LOAD DATA INTO | OVERWRITE table FROM FILES (...)` (BigQuery's):
    /// files on the node that runs it, read into the table in one commit.
    LoadData {
        /// The table.
        table: ObjectName,
        /// OVERWRITE: the files' rows replace the table's.
        overwrite: bool,
        /// The files' format.
        format: FileFormat,
        /// Paths (globs allowed) of the files.
        uris: Vec<String>,
        /// CSV: header lines to skip (0 or 1).
        skip_leading_rows: u64,
        /// Most rows that do not fit the table to skip, each reported as a
        /// NOTICE, rather than fail (BigQuery's `max_bad_records`).
        max_bad_records: u64,
    },
    /// `CREATE EXTERNAL TABLE name [(columns)] OPTIONS (...)` (BigQuery's):
    /// a table whose rows are files read in place at every scan.
    CreateExternalTable {
        /// The table.
        name: ObjectName,
        /// IF NOT EXISTS: an existing relation of that name is not an error.
        if_not_exists: bool,
        /// Its columns; empty: inferred from the files.
        columns: Vec<ast::ColumnDef>,
        /// The files.
        source: quarry_common::catalog::ExternalSource,
    },
    /// `MOVE [direction] [FROM | IN] cursor` (PostgreSQL's): repositions a
    /// cursor as FETCH with the same direction would, returning no rows.
    Move {
        /// The cursor.
        name: Ident,
        /// Where to move it.
        direction: FetchDirection,
    },
    /// `CANCEL JOB 'job_id'` (CockroachDB's form; BigQuery's
    /// `BQ.JOBS.CANCEL`): stops a running job on whichever node runs it.
    CancelJob {
        /// The job's id, as `quarry_system.jobs` shows it.
        job_id: String,
    },
    /// `ALTER NODE n DRAIN [WITH (deadline_seconds = s)]` or `ALTER NODE n
    /// RESUME`: takes node n out of service for maintenance, or back.
    AlterNode {
        /// The node's id, as `quarry_system.nodes` shows it.
        node: u64,
        /// DRAIN: seconds its running statements may take; RESUME: None.
        drain_deadline_secs: Option<u32>,
    },
    /// `ALTER NODE n DECOMMISSION`: moves every chunk off node n, then
    /// removes it from the cluster.
    DecommissionNode {
        /// The node's id, as `quarry_system.nodes` shows it.
        node: u64,
    },
    /// `BACKUP TO 'dir'` (CockroachDB's form): a backup of the catalog and
    /// every data file into directory `dir` of the node that runs it.
    Backup {
        /// The backup directory, an absolute path on this node.
        dir: String,
    },
    /// `RESTORE FROM 'dir'`: the newest backup in `dir` into this (empty)
    /// cluster.
    Restore {
        /// The backup directory, an absolute path on this node.
        dir: String,
    },
}

impl From<Statement> for QuarryStatement {
    fn from(statement: Statement) -> Self {
        QuarryStatement::Sql(statement)
    }
}

/// Parses `sql` into statements (none for an empty string). The text is split
/// into statements at the tokenizer's top-level semicolons; each is parsed by
/// Quarry's own grammar (`parse_quarry_statement`) if it starts like one,
/// else by PostgreSQL's.
///
/// # Errors
/// 42601 with the parser's message; nothing of a text with an error in any of
/// its statements is returned.
pub fn parse(sql: &str) -> Result<Vec<QuarryStatement>> {
    Ok(parse_with_text(sql)?
        .into_iter()
        .map(|(_, statement)| statement)
        .collect())
}

/// As [`parse`], each statement with its text (as the client wrote it,
/// without the semicolon).
///
/// # Errors
/// As [`parse`].
pub fn parse_with_text(sql: &str) -> Result<Vec<(String, QuarryStatement)>> {
    let sql = crate::client_queries::substitute(sql).unwrap_or(sql);
    let mut statements = Vec::new();
    for (text, tokens) in split_statements(sql)? {
        match parse_quarry_statement(text, tokens)? {
            Some(statement) => statements.push((text.to_owned(), statement)),
            None => statements.extend(
                parse_postgres(text)?
                    .into_iter()
                    .map(|s| (text.to_owned(), QuarryStatement::Sql(s))),
            ),
        }
    }
    Ok(statements)
}

/// Parses `sql` with PostgreSQL's grammar only.
///
/// # Errors
/// 42601 with the parser's message.
pub fn parse_postgres(sql: &str) -> Result<Vec<Statement>> {
    let statements = parse_postgres_compatible(sql)?;
    Ok(statements
        .into_iter()
        .map(|s| crate::unnest::SetReturningCalls.rewrite(s))
        .collect())
}

/// [`parse_postgres`] before [`crate::unnest::SetReturningCalls`].
fn parse_postgres_compatible(sql: &str) -> Result<Vec<Statement>> {
    match COMPAT.parse(sql) {
        Ok(statements) => {
            // The crate's statements differ from RULES' only where a SELECT
            // list holds a subquery, which takes a second SELECT: other
            // texts (every INSERT ... VALUES) are parsed once. The crate also
            // replaces whole fragments of known client queries before
            // parsing (its blacklist), and splits array text cast to an
            // array type at commas (`FixArrayLiteral`, not in RULES: texts
            // with `[]` are parsed again); where it did, its statements are used
            // as they are, else the text is parsed again and rewritten by
            // RULES.
            if (selects(sql) >= 2 || names_user(sql) || sql.contains("[]"))
                && let Ok(plain) = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            {
                let same = plain.len() == statements.len()
                    && plain
                        .iter()
                        .zip(&statements)
                        .all(|(p, s)| &COMPAT.rewrite(p.clone()) == s);
                if same {
                    return Ok(plain.into_iter().map(rewrite_compatible).collect());
                }
            }
            Ok(statements)
        }
        Err(postgres_error) => match Parser::parse_sql(&QuarryDialect::default(), sql) {
            Ok(statements) => Ok(statements.into_iter().map(rewrite_compatible).collect()),
            Err(_) => Err(syntax_error(postgres_error)),
        },
    }
}

/// Whether `sql` may name `current_user` (which the crate's rules make
/// `session_user`), `user` or `current_role`, which [`SpecialRegisters`]
/// rewrite.
fn names_user(sql: &str) -> bool {
    sql.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"user") || w.eq_ignore_ascii_case(b"role"))
}

/// How many times `select` occurs in `sql`, in any case (an upper bound on
/// its SELECT keywords).
fn selects(sql: &str) -> usize {
    sql.as_bytes()
        .windows(6)
        .filter(|w| w.eq_ignore_ascii_case(b"select"))
        .count()
}

fn syntax_error(e: impl std::fmt::Display) -> crate::Error {
    user_error(SqlState::SYNTAX_ERROR, e.to_string())
}

/// The statements of `sql`, each as its text and its tokens: split at
/// semicolons the tokenizer sees outside literals, quoted identifiers and
/// comments; empty statements are left out.
fn split_statements(sql: &str) -> Result<Vec<(&str, Vec<TokenWithSpan>)>> {
    let tokens = Tokenizer::new(&QuarryDialect::default(), sql)
        .tokenize_with_location()
        .map_err(syntax_error)?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    // Locations count lines and characters from 1.
    let offset = |location: Location| -> usize {
        let line_start = line_starts[(location.line as usize).saturating_sub(1)];
        sql[line_start..]
            .char_indices()
            .nth((location.column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| line_start + i)
    };
    let mut statements = Vec::new();
    let mut start: Option<usize> = None;
    let mut current = Vec::new();
    for token in tokens {
        match &token.token {
            Token::SemiColon => {
                if let Some(begin) = start.take() {
                    let text = &sql[begin..offset(token.span.start)];
                    statements.push((text, std::mem::take(&mut current)));
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                start.get_or_insert_with(|| offset(token.span.start));
                current.push(token);
            }
        }
    }
    if let Some(begin) = start {
        statements.push((&sql[begin..], current));
    }
    Ok(statements)
}

/// `CREATE ACCESS TOKEN name [VALID UNTIL 'ts']` and `DROP ACCESS TOKEN [IF
/// EXISTS] name` (Quarry's own); None for other statements.
pub use quarry_common::catalog::FileFormat;

/// The options of `LOAD DATA ... FROM FILES (...)` and `CREATE EXTERNAL
/// TABLE ... OPTIONS (...)`.
struct FileOptions {
    format: FileFormat,
    uris: Vec<String>,
    skip_leading_rows: u64,
    max_bad_records: u64,
}

/// `(format = '...', uris = ['...', ...] [, skip_leading_rows = N]
/// [, max_bad_records = N])`,
/// BigQuery's file options; `statement` names the statement in errors.
fn parse_file_options(parser: &mut Parser<'_>, statement: &str) -> Result<FileOptions> {
    parser.expect_token(&Token::LParen).map_err(syntax_error)?;
    let (mut format, mut uris, mut skip_leading_rows, mut max_bad_records) =
        (None, Vec::new(), 0u64, 0u64);
    loop {
        let option = parser
            .parse_identifier()
            .map_err(syntax_error)?
            .value
            .to_lowercase();
        parser.expect_token(&Token::Eq).map_err(syntax_error)?;
        let value = parser.parse_expr().map_err(syntax_error)?;
        let text = |value: &Expr| match value {
            Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) => Some(s.clone()),
                ast::Value::Number(n, _) => Some(n.clone()),
                _ => None,
            },
            _ => None,
        };
        let bad = || {
            syntax_error(format!(
                "{statement} option {option} = {value} is not valid"
            ))
        };
        match option.as_str() {
            "format" => {
                format = Some(
                    match text(&value).ok_or_else(bad)?.to_uppercase().as_str() {
                        "PARQUET" => FileFormat::Parquet,
                        "CSV" => FileFormat::Csv,
                        "JSON" | "NEWLINE_DELIMITED_JSON" => FileFormat::Json,
                        other => {
                            return Err(user_error(
                                SqlState::FEATURE_NOT_SUPPORTED,
                                format!("{statement} format '{other}': PARQUET, CSV or JSON"),
                            ));
                        }
                    },
                )
            }
            "uris" => {
                let Expr::Array(array) = &value else {
                    return Err(bad());
                };
                uris = array
                    .elem
                    .iter()
                    .map(|e| text(e).ok_or_else(bad))
                    .collect::<Result<_>>()?;
            }
            "skip_leading_rows" => {
                skip_leading_rows = text(&value).and_then(|n| n.parse().ok()).ok_or_else(bad)?
            }
            "max_bad_records" => {
                max_bad_records = text(&value).and_then(|n| n.parse().ok()).ok_or_else(bad)?
            }
            _ => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("{statement} option {option} is not supported"),
                ));
            }
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen).map_err(syntax_error)?;
    if parser.peek_token().token != Token::EOF {
        return Err(syntax_error(format!(
            "syntax error at or near \"{}\"",
            parser.peek_token().token
        )));
    }
    let format = format.ok_or_else(|| {
        syntax_error(format!(
            "{statement} needs format = 'PARQUET' | 'CSV' | 'JSON'"
        ))
    })?;
    if uris.is_empty() {
        return Err(syntax_error(format!(
            "{statement} needs uris = ['/path/file', ...]"
        )));
    }
    Ok(FileOptions {
        format,
        uris,
        skip_leading_rows,
        max_bad_records,
    })
}

/// `LOAD DATA INTO | OVERWRITE table FROM FILES (format = '...', uris =
/// ['...', ...] [, skip_leading_rows = N] [, max_bad_records = N])`, BigQuery's
/// (<https://cloud.google.com/bigquery/docs/reference/standard-sql/load-statements>).
fn parse_load_data(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let is_word = |i: usize, word: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    if !is_word(0, "load") || !is_word(1, "data") {
        return Ok(None);
    }
    let overwrite = is_word(2, "overwrite");
    if !overwrite && !is_word(2, "into") {
        return Err(syntax_error("LOAD DATA takes INTO or OVERWRITE"));
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens[3..].to_vec());
    let table = parser.parse_object_name(false).map_err(syntax_error)?;
    let files = parser.parse_keyword(Keyword::FROM)
        && matches!(&parser.next_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case("files"));
    if !files {
        return Err(syntax_error(
            "LOAD DATA ... takes FROM FILES (format = ..., uris = [...])",
        ));
    }
    let FileOptions {
        format,
        uris,
        skip_leading_rows,
        max_bad_records,
    } = parse_file_options(&mut parser, "LOAD DATA")?;
    Ok(Some(QuarryStatement::LoadData {
        table,
        overwrite,
        format,
        uris,
        skip_leading_rows,
        max_bad_records,
    }))
}

/// `CREATE EXTERNAL TABLE [IF NOT EXISTS] name [(column type, ...)] OPTIONS
/// (format = '...', uris = ['...', ...] [, skip_leading_rows = N])`,
/// BigQuery's
/// (<https://cloud.google.com/bigquery/docs/reference/standard-sql/data-definition-language#create_external_table_statement>).
fn parse_external_table(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let is_word = |i: usize, word: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    if !is_word(0, "create") || !is_word(1, "external") || !is_word(2, "table") {
        return Ok(None);
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens[3..].to_vec());
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false).map_err(syntax_error)?;
    let mut columns = Vec::new();
    if parser.peek_token().token == Token::LParen {
        let (defs, constraints) = parser.parse_columns().map_err(syntax_error)?;
        if !constraints.is_empty() {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "an external table has no constraints",
            ));
        }
        columns = defs;
    }
    let options = matches!(&parser.next_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case("options"));
    if !options {
        return Err(syntax_error(
            "CREATE EXTERNAL TABLE takes OPTIONS (format = ..., uris = [...])",
        ));
    }
    let FileOptions {
        format,
        uris,
        skip_leading_rows,
        max_bad_records,
    } = parse_file_options(&mut parser, "CREATE EXTERNAL TABLE")?;
    if max_bad_records != 0 {
        return Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "CREATE EXTERNAL TABLE option max_bad_records is not supported: a bad row fails the scan",
        ));
    }
    Ok(Some(QuarryStatement::CreateExternalTable {
        name,
        if_not_exists,
        columns,
        source: quarry_common::catalog::ExternalSource {
            format,
            uris,
            skip_leading_rows,
        },
    }))
}

fn parse_access_token(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let is_word = |i: usize, word: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let create = is_word(0, "create");
    if !(create || is_word(0, "drop")) || !is_word(1, "access") || !is_word(2, "token") {
        return Ok(None);
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens[3..].to_vec());
    let statement = if create {
        let name = parser.parse_identifier().map_err(syntax_error)?;
        let valid_until = if parser.parse_keywords(&[Keyword::VALID, Keyword::UNTIL]) {
            Some(parser.parse_expr().map_err(syntax_error)?)
        } else {
            None
        };
        QuarryStatement::CreateAccessToken { name, valid_until }
    } else {
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parser.parse_identifier().map_err(syntax_error)?;
        QuarryStatement::DropAccessToken { name, if_exists }
    };
    if parser.peek_token().token != Token::EOF {
        return Err(syntax_error(format!(
            "syntax error at or near \"{}\"",
            parser.peek_token().token
        )));
    }
    Ok(Some(statement))
}

/// A subscription statement's `( name [= value] [, ...] )` after WITH: the
/// names lower-cased, the values as written (a name alone is `true`).
fn subscription_options(parser: &mut Parser) -> Result<Vec<(String, String)>> {
    parser.expect_token(&Token::LParen).map_err(syntax_error)?;
    let mut options = Vec::new();
    loop {
        let option = parser
            .parse_identifier()
            .map_err(syntax_error)?
            .value
            .to_ascii_lowercase();
        let value = if parser.consume_token(&Token::Eq) {
            match parser.next_token().token {
                Token::SingleQuotedString(s) => s,
                Token::Word(w) => w.value,
                Token::Number(n, _) => n,
                other => {
                    return Err(syntax_error(format!("syntax error at or near \"{other}\"")));
                }
            }
        } else {
            "true".to_owned()
        };
        options.push((option, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen).map_err(syntax_error)?;
    Ok(options)
}

/// `CREATE | ALTER | DROP SUBSCRIPTION ...` (PostgreSQL's); None for other
/// statements.
fn parse_subscription(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let is_word = |i: usize, word: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let verb = ["create", "alter", "drop"]
        .into_iter()
        .find(|verb| is_word(0, verb));
    let Some(verb) = verb.filter(|_| is_word(1, "subscription")) else {
        return Ok(None);
    };
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens[2..].to_vec());
    let string = |parser: &mut Parser<'_>| parser.parse_literal_string().map_err(syntax_error);
    let statement = match verb {
        "create" => {
            let name = parser.parse_identifier().map_err(syntax_error)?;
            parser
                .expect_keyword(Keyword::CONNECTION)
                .map_err(syntax_error)?;
            let connection = string(&mut parser)?;
            match parser.next_token().token {
                Token::Word(w) if w.value.eq_ignore_ascii_case("publication") => {}
                _ => {
                    return Err(syntax_error(
                        "CREATE SUBSCRIPTION needs PUBLICATION name [, ...]",
                    ));
                }
            }
            let publications = parser
                .parse_comma_separated(|p| p.parse_identifier())
                .map_err(syntax_error)?;
            let options = if parser.parse_keyword(Keyword::WITH) {
                subscription_options(&mut parser)?
            } else {
                Vec::new()
            };
            QuarryStatement::CreateSubscription {
                name,
                connection,
                publications,
                options,
            }
        }
        "alter" => {
            let name = parser.parse_identifier().map_err(syntax_error)?;
            let (mut enabled, mut connection, mut refresh) = (None, None, None);
            if parser.parse_keyword(Keyword::ENABLE) {
                enabled = Some(true);
            } else if parser.parse_keyword(Keyword::DISABLE) {
                enabled = Some(false);
            } else if parser.parse_keyword(Keyword::CONNECTION) {
                connection = Some(string(&mut parser)?);
            } else if parser.parse_keyword(Keyword::REFRESH) {
                match parser.next_token().token {
                    Token::Word(w) if w.value.eq_ignore_ascii_case("publication") => {}
                    _ => return Err(syntax_error("REFRESH needs PUBLICATION")),
                }
                refresh = Some(if parser.parse_keyword(Keyword::WITH) {
                    subscription_options(&mut parser)?
                } else {
                    Vec::new()
                });
            } else {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "ALTER SUBSCRIPTION supports ENABLE, DISABLE, CONNECTION and REFRESH PUBLICATION",
                ));
            }
            QuarryStatement::AlterSubscription {
                name,
                enabled,
                connection,
                refresh,
            }
        }
        _ => {
            let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = parser.parse_identifier().map_err(syntax_error)?;
            QuarryStatement::DropSubscription { name, if_exists }
        }
    };
    if parser.peek_token().token != Token::EOF {
        return Err(syntax_error(format!(
            "syntax error at or near \"{}\"",
            parser.peek_token().token
        )));
    }
    Ok(Some(statement))
}

/// `CREATE USER` and `ALTER USER`, PostgreSQL's spellings of CREATE ROLE
/// (with LOGIN by default) and ALTER ROLE, which the SQL parser reads in
/// another database's grammar. None for other statements.
fn parse_user_alias(text: &str, tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let is_word = |i: usize, word: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let create = is_word(0, "create");
    if !(create || is_word(0, "alter")) || !is_word(1, "user") {
        return Ok(None);
    }
    // The text starts at the first word; USER follows it after blanks.
    let verb_len = if create { 6 } else { 5 };
    let rest = text[verb_len..].trim_start();
    let Some(after) = rest.get(4..) else {
        return Ok(None);
    };
    let rewritten = format!("{} ROLE{after}", &text[..verb_len]);
    let mut statements = parse_postgres(&rewritten)?;
    if statements.len() != 1 {
        return Err(syntax_error("one statement expected"));
    }
    Ok(Some(match statements.remove(0) {
        Statement::CreateRole(create) => QuarryStatement::CreateUser(Box::new(create)),
        other => QuarryStatement::Sql(other),
    }))
}

/// `GRANT role [, ...] TO role [, ...]` and `REVOKE role [, ...] FROM role
/// [, ...]` (no ON: membership, not privileges), which the SQL parser does
/// not read. None for other statements.
fn parse_grant_role(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let granted = match first_word(tokens).as_str() {
        "grant" => true,
        "revoke" => false,
        _ => return Ok(None),
    };
    let keyword = |t: &Token, word: Keyword| matches!(t, Token::Word(w) if w.keyword == word && w.quote_style.is_none());
    if tokens.iter().any(|t| keyword(&t.token, Keyword::ON)) {
        return Ok(None);
    }
    // Privilege words without ON are a syntax error the SQL parser reports.
    const PRIVILEGES: &[Keyword] = &[
        Keyword::SELECT,
        Keyword::INSERT,
        Keyword::UPDATE,
        Keyword::DELETE,
        Keyword::TRUNCATE,
        Keyword::REFERENCES,
        Keyword::TRIGGER,
        Keyword::USAGE,
        Keyword::CREATE,
        Keyword::ALL,
        Keyword::CONNECT,
        Keyword::TEMPORARY,
        Keyword::EXECUTE,
    ];
    if tokens
        .get(1)
        .is_some_and(|t| PRIVILEGES.iter().any(|k| keyword(&t.token, *k)))
    {
        return Ok(None);
    }
    let separator = if granted { Keyword::TO } else { Keyword::FROM };
    let mut roles = Vec::new();
    let mut members = Vec::new();
    let mut past = false;
    let mut expect_name = true;
    for token in &tokens[1..] {
        match &token.token {
            t if keyword(t, separator) && !past && !expect_name => {
                past = true;
                expect_name = true;
            }
            Token::Comma if !expect_name => expect_name = true,
            Token::Word(w) if expect_name => {
                let ident = Ident {
                    value: w.value.clone(),
                    quote_style: w.quote_style,
                    span: token.span,
                };
                if past {
                    members.push(ident);
                } else {
                    roles.push(ident);
                }
                expect_name = false;
            }
            other => {
                return Err(syntax_error(format!(
                    "syntax error at or near \"{other}\" (GRANT role TO role takes no options here)"
                )));
            }
        }
    }
    if !past || expect_name || roles.is_empty() {
        return Err(syntax_error(format!(
            "{} role [, ...] {} role [, ...] expected",
            if granted { "GRANT" } else { "REVOKE" },
            if granted { "TO" } else { "FROM" }
        )));
    }
    Ok(Some(QuarryStatement::GrantRole {
        roles,
        members,
        granted,
    }))
}

/// The column list that stands for COPY's `FORCE_QUOTE *` (every column):
/// a name no SQL text can spell, as it holds a NUL.
pub const ALL_COLUMNS: &str = "\0*";

/// Seconds a drain lets running statements go on when `ALTER NODE n DRAIN`
/// gives no `deadline_seconds`.
pub const DRAIN_DEADLINE_SECS_DEFAULT: u32 = 60;

/// `ALTER NODE n DRAIN [WITH (deadline_seconds = s)]`, `ALTER NODE n
/// RESUME` and `ALTER NODE n DECOMMISSION`; None for a statement that does
/// not start with ALTER NODE.
fn parse_alter_node(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let words: Vec<&Token> = tokens.iter().map(|t| &t.token).collect();
    if first_word(tokens) != "alter" || tokens.get(1..2).is_none_or(|t| first_word(t) != "node") {
        return Ok(None);
    }
    let usage = "expected ALTER NODE node_id DRAIN [WITH (deadline_seconds = n)], \
                 ALTER NODE node_id RESUME or ALTER NODE node_id DECOMMISSION";
    let node = match words.get(2) {
        Some(Token::Number(n, _)) => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| syntax_error(format!("invalid node id {n}")))?,
        _ => return Err(syntax_error(usage)),
    };
    let action = tokens.get(3..4).map(first_word).unwrap_or_default();
    let rest = &words[4.min(words.len())..];
    match (action.as_str(), rest) {
        ("decommission", []) => Ok(Some(QuarryStatement::DecommissionNode { node })),
        ("resume", []) => Ok(Some(QuarryStatement::AlterNode {
            node,
            drain_deadline_secs: None,
        })),
        ("drain", []) => Ok(Some(QuarryStatement::AlterNode {
            node,
            drain_deadline_secs: Some(DRAIN_DEADLINE_SECS_DEFAULT),
        })),
        (
            "drain",
            [
                Token::Word(with),
                Token::LParen,
                Token::Word(option),
                Token::Eq,
                Token::Number(seconds, _),
                Token::RParen,
            ],
        ) if with.value.eq_ignore_ascii_case("with")
            && option.value.eq_ignore_ascii_case("deadline_seconds") =>
        {
            let seconds = seconds
                .parse::<u32>()
                .map_err(|_| syntax_error(format!("invalid deadline_seconds {seconds}")))?;
            Ok(Some(QuarryStatement::AlterNode {
                node,
                drain_deadline_secs: Some(seconds),
            }))
        }
        _ => Err(syntax_error(usage)),
    }
}

/// The first token of a statement as a lower-case unquoted word ("" if it
/// is not one).
/// `CANCEL JOB 'job_id'`; None for a statement that does not start with
/// CANCEL.
fn parse_cancel_job(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    if first_word(tokens) != "cancel" {
        return Ok(None);
    }
    match tokens.get(1..).unwrap_or_default() {
        [job, id] if first_word(std::slice::from_ref(job)) == "job" => match &id.token {
            Token::SingleQuotedString(job_id) => Ok(Some(QuarryStatement::CancelJob {
                job_id: job_id.clone(),
            })),
            _ => Err(syntax_error(
                "CANCEL JOB takes the job id as a string literal",
            )),
        },
        _ => Err(syntax_error("expected CANCEL JOB 'job_id'")),
    }
}

/// `BACKUP TO 'dir'` and `RESTORE FROM 'dir'`; None for a statement that
/// starts with neither word.
fn parse_backup(tokens: &[TokenWithSpan]) -> Result<Option<QuarryStatement>> {
    let (word, preposition) = match first_word(tokens).as_str() {
        "backup" => ("BACKUP", "to"),
        "restore" => ("RESTORE", "from"),
        _ => return Ok(None),
    };
    let rest = tokens.get(1..).unwrap_or_default();
    let [keyword, dir] = rest else {
        return Err(syntax_error(format!(
            "expected {word} {} '/absolute/dir'",
            preposition.to_uppercase()
        )));
    };
    if first_word(std::slice::from_ref(keyword)) != preposition {
        return Err(syntax_error(format!(
            "expected {word} {} '/absolute/dir'",
            preposition.to_uppercase()
        )));
    }
    let Token::SingleQuotedString(dir) = &dir.token else {
        return Err(syntax_error(format!(
            "{word} takes the directory as a string literal"
        )));
    };
    let dir = dir.clone();
    Ok(Some(if word == "BACKUP" {
        QuarryStatement::Backup { dir }
    } else {
        QuarryStatement::Restore { dir }
    }))
}

fn first_word(tokens: &[TokenWithSpan]) -> String {
    match tokens.first().map(|t| &t.token) {
        Some(Token::Word(word)) if word.quote_style.is_none() => word.value.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// CREATE TABLE with the clauses of a table's data layout that the SQL
/// parser does not take for PostgreSQL: `CLUSTER BY col, ...` (BigQuery's;
/// anywhere after the column list, before AS), and `PARTITION BY expr WITH
/// (options)` in PostgreSQL's order (the parser takes WITH first). The
/// CLUSTER BY columns are taken out and put in the statement's
/// `cluster_by`, and the WITH group is moved before PARTITION BY. None for
/// any other statement.
fn parse_create_table_layout(tokens: &[TokenWithSpan]) -> Result<Option<Statement>> {
    let is_word = |token: &Token, word: &str| matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let next = |tokens: &[TokenWithSpan], from: usize| {
        (from..tokens.len()).find(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
    };
    // Top-level clause positions, before any AS.
    let clauses = |tokens: &[TokenWithSpan]| {
        let (mut depth, mut partition, mut cluster, mut with) = (0usize, None, None, None);
        for (i, t) in tokens.iter().enumerate() {
            match &t.token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                token if depth == 0 && is_word(token, "as") => break,
                token
                    if depth == 0
                        && (is_word(token, "partition") || is_word(token, "cluster"))
                        && next(tokens, i + 1).is_some_and(|n| is_word(&tokens[n].token, "by")) =>
                {
                    if is_word(token, "partition") {
                        partition.get_or_insert(i);
                    } else {
                        cluster.get_or_insert(i);
                    }
                }
                token if depth == 0 && is_word(token, "with") => {
                    with.get_or_insert(i);
                }
                _ => {}
            }
        }
        (partition, cluster, with)
    };
    let (_, cluster, _) = clauses(tokens);
    let mut tokens = tokens.to_vec();
    let mut cluster_by = Vec::new();
    if let Some(at) = cluster {
        // CLUSTER BY ident [, ident]*
        let mut i = next(&tokens, at + 1).expect("BY follows") + 1;
        while let Some(n) = next(&tokens, i) {
            match &tokens[n].token {
                Token::Word(w) => cluster_by.push(Ident {
                    value: w.value.clone(),
                    quote_style: w.quote_style,
                    span: tokens[n].span,
                }),
                _ => return Err(syntax_error("CLUSTER BY takes column names")),
            }
            i = n + 1;
            match next(&tokens, i) {
                Some(c) if tokens[c].token == Token::Comma => i = c + 1,
                _ => break,
            }
        }
        tokens.drain(at..i);
    }
    let (partition, _, with) = clauses(&tokens);
    let reorder = matches!((partition, with), (Some(p), Some(w)) if p < w);
    if cluster.is_none() && !reorder {
        return Ok(None);
    }
    if let (true, Some(partition), Some(with)) = (reorder, partition, with) {
        // The WITH group: up to its closing parenthesis.
        let Some(open) = next(&tokens, with + 1).filter(|o| tokens[*o].token == Token::LParen)
        else {
            return Ok(None);
        };
        let mut depth = 0usize;
        let mut close = None;
        for (i, t) in tokens.iter().enumerate().skip(open) {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            return Ok(None);
        };
        let mut reordered = Vec::with_capacity(tokens.len() + 1);
        reordered.extend_from_slice(&tokens[..partition]);
        reordered.extend_from_slice(&tokens[with..=close]);
        reordered.push(TokenWithSpan::wrap(Token::Whitespace(
            datafusion::sql::sqlparser::tokenizer::Whitespace::Space,
        )));
        reordered.extend_from_slice(&tokens[partition..with]);
        reordered.extend_from_slice(&tokens[close + 1..]);
        tokens = reordered;
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut statement = parser.parse_statement().map_err(syntax_error)?;
    while parser.consume_token(&Token::SemiColon) {}
    parser.expect_token(&Token::EOF).map_err(syntax_error)?;
    if !cluster_by.is_empty() {
        let Statement::CreateTable(create) = &mut statement else {
            return Err(syntax_error("CLUSTER BY belongs to CREATE TABLE"));
        };
        create.cluster_by = Some(ast::WrappedCollection::NoWrapping(
            cluster_by.into_iter().map(Expr::Identifier).collect(),
        ));
    }
    Ok(Some(statement))
}

/// A COPY statement with `FORCE_QUOTE *` (or the older `FORCE QUOTE *`),
/// the `*` read as the column list [`ALL_COLUMNS`]; None for a COPY
/// without it.
fn parse_copy_force_quote_all(tokens: &[TokenWithSpan]) -> Result<Option<Statement>> {
    let is_word = |token: &Token, word: &str| matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    // FORCE_QUOTE takes a parenthesized list, the older FORCE QUOTE a bare one.
    #[derive(PartialEq)]
    enum After {
        Other,
        ForceQuote,
        LegacyForceQuote,
    }
    let mut rewritten: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len() + 2);
    let mut after = After::Other;
    let mut found = false;
    for token in tokens {
        match &token.token {
            Token::Whitespace(_) => {}
            Token::Mul if after != After::Other => {
                found = true;
                let all = Token::Word(datafusion::sql::sqlparser::tokenizer::Word {
                    value: ALL_COLUMNS.to_owned(),
                    quote_style: Some('"'),
                    keyword: Keyword::NoKeyword,
                });
                let list = if after == After::ForceQuote {
                    vec![Token::LParen, all, Token::RParen]
                } else {
                    vec![all]
                };
                rewritten.extend(list.into_iter().map(|token| TokenWithSpan {
                    token,
                    span: Span::empty(),
                }));
                after = After::Other;
                continue;
            }
            other => {
                let previous_force = rewritten
                    .iter()
                    .rev()
                    .find(|t| !matches!(t.token, Token::Whitespace(_)))
                    .is_some_and(|t| is_word(&t.token, "force"));
                after = if is_word(other, "force_quote") {
                    After::ForceQuote
                } else if is_word(other, "quote") && previous_force {
                    After::LegacyForceQuote
                } else {
                    After::Other
                };
            }
        }
        rewritten.push(token.clone());
    }
    if !found {
        return Ok(None);
    }
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(rewritten);
    let statement = parser.parse_statement().map_err(syntax_error)?;
    Ok(Some(statement))
}

/// Parses `FETCH [direction] [FROM | IN] name` from its tokens, with what the
/// SQL parser lacks of PostgreSQL's grammar: `FETCH name` (NEXT) and negative
/// counts (`RELATIVE -2`, `BACKWARD -1`).
fn parse_fetch(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let mut merged: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut negate = false;
    for token in tokens {
        match token.token {
            Token::Minus => negate = true,
            Token::Whitespace(_) if negate => {}
            Token::Number(n, long) if negate => {
                negate = false;
                merged.push(TokenWithSpan {
                    token: Token::Number(format!("-{n}"), long),
                    span: token.span,
                });
            }
            _ => merged.push(token),
        }
    }
    let words: Vec<&Token> = merged
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF | Token::SemiColon))
        .collect();
    if let [Token::Word(_), Token::Word(name)] = words.as_slice() {
        return Ok(Statement::Fetch {
            name: Ident {
                value: name.value.clone(),
                quote_style: name.quote_style,
                span: Span::empty(),
            },
            direction: FetchDirection::Next,
            position: FetchPosition::From,
            into: None,
        });
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(merged);
    let statement = parser.parse_statement().map_err(syntax_error)?;
    match statement {
        Statement::Fetch { into: None, .. } if parser.peek_token_ref().token == Token::EOF => {
            Ok(statement)
        }
        _ => Err(syntax_error(
            "FETCH | MOVE [direction] [FROM | IN] cursor_name",
        )),
    }
}

/// Parses one statement (its tokens) of Quarry's own grammar, or returns None if it
/// does not start like one:
///
/// ```text
/// UNDROP TABLE name
/// CREATE TABLE [IF NOT EXISTS] name CLONE source FOR SYSTEM_TIME AS OF expr [WITH (option = value, ...)]
/// ALTER VIEW [IF EXISTS] name RENAME TO new_name
/// ```
///
/// # Errors
/// 42601 for a statement that starts like one of these and does not follow it.
fn parse_quarry_statement(
    text: &str,
    mut tokens: Vec<TokenWithSpan>,
) -> Result<Option<QuarryStatement>> {
    // COPY ... FORCE_QUOTE *, which the SQL parser takes only with a list.
    if first_word(&tokens) == "copy"
        && let Some(copy) = parse_copy_force_quote_all(&tokens)?
    {
        return Ok(Some(QuarryStatement::Sql(copy)));
    }
    // FETCH, and MOVE (which takes FETCH's grammar).
    let first_word = first_word(&tokens);
    if first_word == "fetch" || first_word == "move" {
        tokens[0].token = Token::make_keyword("FETCH");
        let fetch = parse_fetch(tokens)?;
        return Ok(Some(if first_word == "move" {
            let Statement::Fetch {
                name, direction, ..
            } = fetch
            else {
                unreachable!("parse_fetch returns FETCH statements")
            };
            QuarryStatement::Move { name, direction }
        } else {
            QuarryStatement::Sql(fetch)
        }));
    }
    if let Some(statement) = parse_access_token(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_subscription(&tokens)? {
        return Ok(Some(statement));
    }
    if first_word == "create"
        && let Some(statement) = parse_create_table_layout(&tokens)?
    {
        return Ok(Some(QuarryStatement::Sql(statement)));
    }
    if let Some(statement) = parse_load_data(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_external_table(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_user_alias(text, &tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_grant_role(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_cancel_job(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_backup(&tokens)? {
        return Ok(Some(statement));
    }
    if let Some(statement) = parse_alter_node(&tokens)? {
        return Ok(Some(statement));
    }
    // Most statements start otherwise: they are not parsed twice.
    let starts_undrop = matches!(
        tokens.first().map(|t| &t.token),
        Some(Token::Word(word)) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("undrop")
    );
    let starts_create = matches!(
        tokens.first().map(|t| &t.token),
        Some(Token::Word(word)) if word.keyword == Keyword::CREATE
    );
    let starts_alter = matches!(
        tokens.first().map(|t| &t.token),
        Some(Token::Word(word)) if word.keyword == Keyword::ALTER
    );
    if !starts_undrop && !starts_create && !starts_alter {
        return Ok(None);
    }
    let dialect = QuarryDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let statement = if starts_alter {
        if !parser.parse_keywords(&[Keyword::ALTER, Keyword::VIEW]) {
            return Ok(None);
        }
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let Ok(name) = parser.parse_object_name(false) else {
            return Ok(None);
        };
        if parser.parse_keywords(&[Keyword::OWNER, Keyword::TO]) {
            let owner = match parser.parse_one_of_keywords(&[
                Keyword::CURRENT_USER,
                Keyword::CURRENT_ROLE,
                Keyword::SESSION_USER,
            ]) {
                Some(Keyword::CURRENT_USER) => ast::Owner::CurrentUser,
                Some(Keyword::CURRENT_ROLE) => ast::Owner::CurrentRole,
                Some(_) => ast::Owner::SessionUser,
                None => ast::Owner::Ident(parser.parse_identifier().map_err(syntax_error)?),
            };
            parser.expect_token(&Token::EOF).map_err(syntax_error)?;
            return Ok(Some(QuarryStatement::ViewOwner {
                name,
                owner,
                if_exists,
            }));
        }
        if !parser.parse_keywords(&[Keyword::RENAME, Keyword::TO]) {
            return Ok(None);
        }
        let to = parser.parse_identifier().map_err(syntax_error)?;
        QuarryStatement::RenameView {
            name,
            to,
            if_exists,
        }
    } else if starts_undrop {
        parser.next_token();
        let name = (|| {
            parser.expect_keyword(Keyword::TABLE)?;
            parser.parse_object_name(false)
        })()
        .map_err(syntax_error)?;
        QuarryStatement::Undrop(name)
    } else {
        if !parser.parse_keywords(&[Keyword::CREATE, Keyword::TABLE]) {
            return Ok(None);
        }
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let Ok(name) = parser.parse_object_name(false) else {
            return Ok(None);
        };
        if !parser.parse_keyword(Keyword::CLONE) {
            return Ok(None);
        }
        let Ok(source) = parser.parse_object_name(false) else {
            return Ok(None);
        };
        if !parser.parse_keywords(&[Keyword::FOR, Keyword::SYSTEM_TIME, Keyword::AS, Keyword::OF]) {
            return Ok(None);
        }
        let (instant, options) = (|| {
            let instant = parser.parse_expr()?;
            let options = parser.parse_options(Keyword::WITH)?;
            Ok::<_, ParserError>((instant, options))
        })()
        .map_err(syntax_error)?;
        let table_options = if options.is_empty() {
            CreateTableOptions::None
        } else {
            CreateTableOptions::With(options)
        };
        let create = CreateTableBuilder::new(name)
            .if_not_exists(if_not_exists)
            .clone_clause(Some(source))
            .table_options(table_options)
            .build();
        QuarryStatement::CloneAsOf {
            create: Box::new(create),
            instant,
        }
    };
    let rest = parser.peek_token_ref();
    if rest.token != Token::EOF {
        return Err(syntax_error(format!(
            "syntax error at or near \"{}\" (line {}, column {})",
            rest.token, rest.span.start.line, rest.span.start.column
        )));
    }
    Ok(Some(statement))
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
        // A scalar subquery is named after its one column.
        Expr::Subquery(query) => Some(subquery_column_name(query)),
        _ => Some("?column?".to_owned()),
    }
}

/// The name of the first result column of `query`, as PostgreSQL names a
/// scalar subquery's column.
fn subquery_column_name(query: &Query) -> String {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return "?column?".to_owned();
    };
    match select.projection.first() {
        Some(SelectItem::ExprWithAlias { alias, .. }) => match alias.quote_style {
            Some(_) => alias.value.clone(),
            None => alias.value.to_lowercase(),
        },
        Some(SelectItem::UnnamedExpr(Expr::Identifier(ident))) => ident.value.to_lowercase(),
        Some(SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts))) => parts
            .last()
            .map_or_else(|| "?column?".to_owned(), |p| p.value.to_lowercase()),
        Some(SelectItem::UnnamedExpr(expr)) => {
            postgres_column_name(expr).unwrap_or_else(|| "?column?".to_owned())
        }
        _ => "?column?".to_owned(),
    }
}

/// DataFusion's `information_schema.views` lists every table, with a null
/// definition for those that are not views, and names the definition column
/// `definition`; PostgreSQL's lists views only, with the SQL standard's
/// columns (Quarry's views are read-only).
const VIEWS_ONLY: &str = "SELECT table_catalog, table_schema, table_name, \
     definition AS view_definition, 'NONE' AS check_option, 'NO' AS is_updatable, \
     'NO' AS is_insertable_into, 'NO' AS is_trigger_updatable, \
     'NO' AS is_trigger_deletable, 'NO' AS is_trigger_insertable_into \
     FROM information_schema.views WHERE definition IS NOT NULL";

/// Replaces each `information_schema.views` that `statement` reads by its
/// views-only rows (see [`VIEWS_ONLY`]), and each information_schema view
/// DataFusion does not serve by Quarry's query for it
/// ([`crate::information_schema`]), keeping the name it is known by.
pub fn filter_information_schema_views(statement: &mut Statement) {
    struct Filter;
    impl VisitorMut for Filter {
        type Break = ();
        // After the factor's own parts are visited, so the subquery put in
        // its place is not visited again.
        fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            let TableFactor::Table { name, alias, .. } = factor else {
                return ControlFlow::Continue(());
            };
            let parts: Vec<String> = name
                .0
                .iter()
                .filter_map(|p| p.as_ident())
                .map(|i| match i.quote_style {
                    Some(_) => i.value.clone(),
                    None => i.value.to_lowercase(),
                })
                .collect();
            let view = match parts.as_slice() {
                [schema, table] | [_, schema, table] if schema == "information_schema" => {
                    table.as_str()
                }
                _ => return ControlFlow::Continue(()),
            };
            let query = match view {
                "views" => VIEWS_ONLY.to_owned(),
                other => match crate::information_schema::view_query(other) {
                    Some(query) => query,
                    None => return ControlFlow::Continue(()),
                },
            };
            let Some(subquery) = template_query(&query) else {
                return ControlFlow::Continue(());
            };
            let alias = alias.take().unwrap_or_else(|| TableAlias {
                explicit: true,
                name: Ident::new(view),
                columns: Vec::new(),
                at: None,
            });
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                sample: None,
            };
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(statement, &mut Filter);
}

/// PostgreSQL's `to_regtype(name)`, `to_regclass(name)`,
/// `to_regnamespace(name)` and `to_regproc(name)`: the object's oid, or NULL
/// when there is none (where a cast to `regtype` ... fails). Each lookup is a
/// scalar subquery over the pg_catalog table; `max` makes it one row, NULL
/// when nothing matches.
const REG_LOOKUPS: &[(&str, &str)] = &[
    (
        "to_regtype",
        "SELECT max(oid) FROM pg_catalog.pg_type WHERE typname = $1",
    ),
    (
        "to_regclass",
        "SELECT max(c.oid) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
         ON c.relnamespace = n.oid WHERE c.relname = $1 \
         AND n.nspname IN ('pg_catalog', current_schema())",
    ),
    (
        "to_regnamespace",
        "SELECT max(oid) FROM pg_catalog.pg_namespace WHERE nspname = $1",
    ),
    (
        "to_regproc",
        "SELECT max(oid) FROM pg_catalog.pg_proc WHERE proname = $1",
    ),
];

/// PostgreSQL's `ARRAY(subquery)`: the subquery's single column as an array,
/// in the subquery's order, empty for no rows. The rows' subquery stands
/// where `(SELECT 1, 1)` is; when it has an ORDER BY, its rows are numbered
/// in that order (`row_number() OVER (ORDER BY ...)`) and aggregated by number.
const ARRAY_OF_SUBQUERY: &str = "SELECT coalesce(array_agg(__quarry_array_value \
     ORDER BY __quarry_array_order), make_array()) \
     FROM (SELECT 1, 1) AS __quarry_array_rows(__quarry_array_value, __quarry_array_order)";

/// The query of a fixed SQL text (one of this module's templates).
fn template_query(sql: &str) -> Option<Box<Query>> {
    match parse_postgres(sql).ok()?.pop()? {
        Statement::Query(query) => Some(query),
        _ => None,
    }
}

/// The function call a fixed `SELECT f(...)` text selects.
fn template_function(sql: &str) -> Option<ast::Function> {
    let SetExpr::Select(select) = *template_query(sql)?.body else {
        return None;
    };
    match select.projection.into_iter().next()? {
        SelectItem::UnnamedExpr(Expr::Function(function)) => Some(function),
        _ => None,
    }
}

/// The arguments of the call that is `function`'s first argument (`g` of
/// `f(g(...), ...)`), to fill in a template.
fn first_argument_call(function: &mut ast::Function) -> Option<&mut ast::FunctionArgumentList> {
    let ast::FunctionArguments::List(arguments) = &mut function.args else {
        return None;
    };
    let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Function(inner)))) =
        arguments.args.first_mut()
    else {
        return None;
    };
    match &mut inner.args {
        ast::FunctionArguments::List(list) => Some(list),
        _ => None,
    }
}

/// `coalesce(array_agg(value ORDER BY ...), make_array())`: the values of a
/// simple subquery's rows as an array, empty for none.
const ARRAY_AGGREGATE: &str = "SELECT coalesce(array_agg(1 ORDER BY 1), make_array())";

/// Aggregates that a subquery's single value must not be, for it to become
/// `array_agg(value)` in place.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
];

/// Whether `query` (whose body is `select`) is a plain SELECT: no WITH,
/// LIMIT, FETCH, DISTINCT, GROUP BY or HAVING (WHERE and ORDER BY may be
/// there).
fn plain_select(query: &Query, select: &ast::Select) -> bool {
    query.with.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && select.distinct.is_none()
        && select.having.is_none()
        && matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
}

/// `ARRAY(subquery)` of a plain `SELECT value FROM ... [WHERE] [ORDER BY]`:
/// the same query with `value` aggregated in place, so references to the
/// outer query stay where they were (psql's `\du` correlates one).
fn array_in_place(subquery: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = subquery.body.as_ref() else {
        return None;
    };
    if !plain_select(subquery, select) || select.projection.len() != 1 {
        return None;
    }
    let mut query = subquery.clone();
    let order = match query.order_by.take() {
        Some(ast::OrderBy {
            kind: ast::OrderByKind::Expressions(order),
            ..
        }) => order,
        Some(_) => return None,
        None => Vec::new(),
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let value = match select.projection.pop()? {
        SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. } => value,
        _ => return None,
    };
    if contains_aggregate(&value) {
        return None;
    }
    // `ORDER BY 1`: the subquery's one column.
    let order: Vec<ast::OrderByExpr> = order
        .into_iter()
        .map(|mut o| {
            if let Expr::Value(v) = &o.expr
                && matches!(&v.value, ast::Value::Number(n, _) if n == "1")
            {
                o.expr = value.clone();
            }
            o
        })
        .collect();
    if names_subquery(&value) {
        return array_over_rows(query, value, order);
    }
    let mut coalesce = template_function(ARRAY_AGGREGATE)?;
    let list = first_argument_call(&mut coalesce)?;
    list.args = vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(value))];
    list.clauses = if order.is_empty() {
        Vec::new()
    } else {
        vec![ast::FunctionArgumentClause::OrderBy(order)]
    };
    select
        .projection
        .push(SelectItem::UnnamedExpr(Expr::Function(coalesce)));
    Some(Expr::Subquery(Box::new(query)))
}

/// Whether `expr` holds a subquery.
fn names_subquery(expr: &Expr) -> bool {
    struct Find;
    impl ast::Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            ControlFlow::Break(())
        }
    }
    ast::Visit::visit(expr, &mut Find).is_break()
}

/// [`array_in_place`] for a value that holds a subquery of its own, which
/// DataFusion does not decorrelate inside an aggregate's argument: the value
/// is computed in a derived table of the subquery's rows, which carries the
/// inner side of each correlating equality (`polrelid = c.oid`, psql's
/// `\dp`) out to the aggregating query's WHERE, where the correlation is
/// one DataFusion plans. `query` is the subquery without its value and ORDER
/// BY; None unless every condition naming the outer row is such an equality
/// and the order names only the value.
fn array_over_rows(mut query: Query, value: Expr, order: Vec<ast::OrderByExpr>) -> Option<Expr> {
    if order.iter().any(|o| o.expr != value) {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let aliases = from_aliases(select);
    let mut inner = Vec::new();
    let mut outer = Vec::new();
    for conjunct in select.selection.take().map(conjuncts).unwrap_or_default() {
        if !names_outer(&conjunct, &aliases) {
            inner.push(conjunct);
            continue;
        }
        let Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } = conjunct
        else {
            return None;
        };
        let outer_side = |e: &Expr| names_outer(e, &aliases) && !names_inner(e, &aliases);
        let (key, against) = if outer_side(&right) && !names_outer(&left, &aliases) {
            (*left, *right)
        } else if outer_side(&left) && !names_outer(&right, &aliases) {
            (*right, *left)
        } else {
            return None;
        };
        let name = ast::Ident::new(format!("__quarry_array_key{}", outer.len()));
        select.projection.push(SelectItem::ExprWithAlias {
            expr: key,
            alias: name.clone(),
        });
        outer.push(Expr::BinaryOp {
            left: Box::new(Expr::CompoundIdentifier(vec![
                ast::Ident::new("__quarry_array_rows"),
                name,
            ])),
            op: ast::BinaryOperator::Eq,
            right: Box::new(against),
        });
    }
    select.selection = conjoin(inner);
    select.projection.insert(
        0,
        SelectItem::ExprWithAlias {
            expr: value,
            alias: ast::Ident::new("__quarry_array_value"),
        },
    );
    let value = Expr::CompoundIdentifier(vec![
        ast::Ident::new("__quarry_array_rows"),
        ast::Ident::new("__quarry_array_value"),
    ]);
    let mut coalesce = template_function(ARRAY_AGGREGATE)?;
    let list = first_argument_call(&mut coalesce)?;
    list.args = vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
        value.clone(),
    ))];
    list.clauses = if order.is_empty() {
        Vec::new()
    } else {
        vec![ast::FunctionArgumentClause::OrderBy(
            order
                .into_iter()
                .map(|o| ast::OrderByExpr {
                    expr: value.clone(),
                    ..o
                })
                .collect(),
        )]
    };
    let mut aggregate = template_query(ARRAY_OF_SUBQUERY)?;
    let SetExpr::Select(outer_select) = aggregate.body.as_mut() else {
        return None;
    };
    outer_select.projection = vec![SelectItem::UnnamedExpr(Expr::Function(coalesce))];
    outer_select.selection = conjoin(outer);
    let [from] = outer_select.from.as_mut_slice() else {
        return None;
    };
    let TableFactor::Derived {
        subquery, alias, ..
    } = &mut from.relation
    else {
        return None;
    };
    if let Some(alias) = alias {
        alias.columns.clear();
    }
    **subquery = query;
    Some(Expr::Subquery(aggregate))
}

/// `ARRAY(SELECT f(x) FROM unnest(a) x)` with nothing else in the subquery
/// (psql's `\d+` over an outer column): `array_transform(a, x -> f(x))`,
/// empty when `a` is NULL, as DataFusion plans no subquery correlated inside
/// UNNEST.
fn array_transform_of_unnest(subquery: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = subquery.body.as_ref() else {
        return None;
    };
    let plain =
        plain_select(subquery, select) && subquery.order_by.is_none() && select.selection.is_none();
    let ([from], [SelectItem::UnnamedExpr(value)], true) =
        (select.from.as_slice(), select.projection.as_slice(), plain)
    else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let (array, alias) = match &from.relation {
        TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } if array_exprs.len() == 1 => (array_exprs[0].clone(), alias),
        TableFactor::Table {
            name,
            args: Some(args),
            alias: Some(alias),
            ..
        } if name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("unnest"))
            && args.args.len() == 1 =>
        {
            let ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)) = &args.args[0] else {
                return None;
            };
            (array.clone(), alias)
        }
        _ => return None,
    };
    let variable = match alias.columns.as_slice() {
        [] => alias.name.clone(),
        [column] => column.name.clone(),
        _ => return None,
    };
    let mut coalesce =
        template_function("SELECT coalesce(array_transform(NULL, NULL), make_array())")?;
    let list = first_argument_call(&mut coalesce)?;
    let lambda = Expr::Lambda(ast::LambdaFunction {
        params: ast::OneOrManyWithParens::One(ast::LambdaFunctionParameter {
            name: variable,
            data_type: None,
        }),
        body: Box::new(value.clone()),
        syntax: ast::LambdaSyntax::Arrow,
    });
    list.args = vec![
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)),
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(lambda)),
    ];
    Some(Expr::Function(coalesce))
}

/// `ARRAY(subquery)` as a scalar subquery over the subquery's rows.
fn array_of_subquery(subquery: &Query) -> Option<Expr> {
    if let Some(array) = array_transform_of_unnest(subquery) {
        return Some(array);
    }
    if let Some(array) = array_in_place(subquery) {
        return Some(array);
    }
    let mut rows = subquery.clone();
    let order = match rows.order_by.take() {
        Some(ast::OrderBy {
            kind: ast::OrderByKind::Expressions(order),
            ..
        }) => order,
        Some(other) => {
            rows.order_by = Some(other);
            Vec::new()
        }
        None => Vec::new(),
    };
    let SetExpr::Select(select) = rows.body.as_mut() else {
        return None;
    };
    if select.projection.len() != 1 {
        return None;
    }
    let mut row_number = template_function("SELECT row_number() OVER ()")?;
    if let Some(ast::WindowType::WindowSpec(spec)) = &mut row_number.over {
        spec.order_by = order;
    }
    select
        .projection
        .push(SelectItem::UnnamedExpr(Expr::Function(row_number)));
    let mut query = template_query(ARRAY_OF_SUBQUERY)?;
    let SetExpr::Select(outer) = query.body.as_mut() else {
        return None;
    };
    let [from] = outer.from.as_mut_slice() else {
        return None;
    };
    let TableFactor::Derived { subquery, .. } = &mut from.relation else {
        return None;
    };
    **subquery = rows;
    Some(Expr::Subquery(query))
}

/// A scalar subquery that reads only pg_catalog tables and returns one plain
/// value (JDBC's `(SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE
/// c.oid = t.typrelid)`) is a lookup by a unique key; DataFusion plans a
/// correlated scalar subquery only when it is aggregated, so the value is
/// wrapped in `max(...)`, which keeps a single row's value (and NULL for
/// none).
fn aggregate_catalog_lookup(query: &mut Query) {
    // `ORDER BY ... LIMIT 1`: the first row's value in that order, which
    // `first_value(value ORDER BY ...)` keeps (psql's lookup of a trigger's
    // parent).
    let order = match (&query.order_by, &query.limit_clause) {
        (None, None) => None,
        (
            Some(ast::OrderBy {
                kind: ast::OrderByKind::Expressions(order),
                ..
            }),
            Some(ast::LimitClause::LimitOffset {
                limit: Some(Expr::Value(limit)),
                offset: None,
                limit_by,
            }),
        ) if limit.value == ast::Value::Number("1".into(), false) && limit_by.is_empty() => {
            Some(order.clone())
        }
        _ => return,
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    if !reads_only_catalog(select) {
        return;
    }
    let plain_group_by =
        matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if !plain_group_by || select.having.is_some() || select.distinct.is_some() {
        return;
    }
    let [SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }] =
        select.projection.as_mut_slice()
    else {
        return;
    };
    // An aggregate already gives one row (and cannot be nested in another).
    if contains_aggregate(value) {
        return;
    }
    let template = if order.is_some() {
        "SELECT first_value(1 ORDER BY 1)"
    } else {
        "SELECT max(1)"
    };
    let Some(mut aggregate) = template_function(template) else {
        return;
    };
    if let ast::FunctionArguments::List(list) = &mut aggregate.args {
        list.args = vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
            value.clone(),
        ))];
        list.clauses = order
            .into_iter()
            .map(ast::FunctionArgumentClause::OrderBy)
            .collect();
    }
    *value = Expr::Function(aggregate);
    query.order_by = None;
    query.limit_clause = None;
}

/// `generate_subscripts(array, 1)` in a SELECT list (SQLAlchemy numbers a
/// key's columns so): `unnest(generate_series(1, cardinality(array)))`, the
/// subscripts 1..n of a one-dimensional array, row by row beside any other
/// unnest of the same list.
fn generate_subscripts(function: &ast::Function) -> Option<Expr> {
    let ast::FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let [
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)),
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(dimension)),
    ] = list.args.as_slice()
    else {
        return None;
    };
    // The first dimension: a literal 1, or a parameter (SQLAlchemy binds it,
    // cast to integer); catalog arrays have one dimension.
    let mut dimension = dimension;
    while let Expr::Cast { expr, .. } | Expr::Nested(expr) = dimension {
        dimension = expr;
    }
    let first = match dimension {
        Expr::Value(v) => {
            matches!(&v.value, ast::Value::Placeholder(_))
                || v.value == ast::Value::Number("1".into(), false)
        }
        _ => false,
    };
    if !first {
        return None;
    }
    let mut subscripts = Expr::Function(template_function(
        "SELECT unnest(generate_series(1, cardinality(NULL)))",
    )?);
    fill_slots(&mut subscripts, &ast::Value::Null, array);
    Some(subscripts)
}

/// `information_schema._pg_expandarray(array)` (PostgreSQL's set-returning
/// function of `(x, n)` records: each element and its subscript; JDBC's
/// `getPrimaryKeys` and `getIndexInfo` call it in a SELECT list):
/// `named_struct('x', unnest(array), 'n', unnest(generate_series(1,
/// cardinality(array))))`, one row per element beside any other unnest of
/// the same list, as PostgreSQL runs set-returning functions in lockstep.
fn expand_array(function: &ast::Function) -> Option<Expr> {
    let ast::FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array))] = list.args.as_slice()
    else {
        return None;
    };
    let mut elements = Expr::Function(template_function(
        "SELECT named_struct('x', unnest(NULL), 'n', \
         unnest(generate_series(1, cardinality(NULL))))",
    )?);
    fill_slots(&mut elements, &ast::Value::Null, array);
    Some(elements)
}

/// `(composite).field` (a record's field, as `(i.keys).x`): DataFusion's
/// `get_field(composite, 'field')`, its planner taking `.field` after an
/// expression only for string literals.
fn field_of_composite(expr: &Expr) -> Option<Expr> {
    let Expr::CompoundFieldAccess { root, access_chain } = expr else {
        return None;
    };
    let mut fields = Vec::with_capacity(access_chain.len());
    for access in access_chain {
        match access {
            ast::AccessExpr::Dot(Expr::Identifier(field)) => {
                fields.push(crate::session::normalize(field))
            }
            _ => return None,
        }
    }
    let mut value = root.as_ref().clone();
    for field in fields {
        let mut get = template_function("SELECT get_field(NULL, 'field')")?;
        fill_slots(&mut get, &ast::Value::Null, &value);
        if let ast::FunctionArguments::List(list) = &mut get.args
            && let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(name)))) =
                list.args.get_mut(1)
        {
            name.value = ast::Value::SingleQuotedString(field);
        }
        value = Expr::Function(get);
    }
    Some(value)
}

/// Puts `value`, parenthesized, wherever `template` (one of this module's
/// fixed SQL texts) has the literal `slot` (NULL, or the parameter `$1`).
fn fill_slots<T: VisitMut>(template: &mut T, slot: &ast::Value, value: &Expr) {
    struct Fill<'a> {
        slot: &'a ast::Value,
        value: &'a Expr,
    }
    impl VisitorMut for Fill<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if matches!(expr, Expr::Value(v) if &v.value == self.slot) {
                *expr = Expr::Nested(Box::new(self.value.clone()));
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(template, &mut Fill { slot, value });
}

/// Whether `expr` calls one of [`AGGREGATES`] outside its subqueries (an
/// aggregate inside a subquery aggregates that subquery's rows).
fn contains_aggregate(expr: &Expr) -> bool {
    struct Find {
        depth: usize,
    }
    impl ast::Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f)
                    if self.depth == 0
                        && AGGREGATES.contains(&f.name.to_string().to_lowercase().as_str()) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    ast::Visit::visit(expr, &mut Find { depth: 0 }).is_break()
}

/// Whether `select` reads only pg_catalog tables (`pg_*`), directly or
/// through derived tables that do.
fn reads_only_catalog(select: &ast::Select) -> bool {
    !select.from.is_empty()
        && select.from.iter().all(|from| {
            std::iter::once(&from.relation)
                .chain(from.joins.iter().map(|j| &j.relation))
                .all(|relation| match relation {
                    TableFactor::Table {
                        name, args: None, ..
                    } => name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .is_some_and(|i| i.value.to_ascii_lowercase().starts_with("pg_")),
                    TableFactor::Derived { subquery, .. } => match subquery.body.as_ref() {
                        SetExpr::Select(inner) => reads_only_catalog(inner),
                        _ => false,
                    },
                    _ => false,
                })
        })
}

/// `pg_partition_ancestors(relation)` in a FROM clause: the relation and the
/// partitioned tables above it. Quarry has no partitioned tables, so the
/// ancestors of `relation` are the relation alone: pg_class's row of it. The
/// function (psql calls it with an outer column, which DataFusion cannot
/// pass to a table function) becomes `(SELECT oid AS relid [, 1 AS depth]
/// FROM pg_catalog.pg_class) AS alias` with `alias.relid = relation` added to
/// the query's WHERE.
fn rewrite_partition_ancestors(select: &mut ast::Select) {
    let mut conditions = Vec::new();
    for from in &mut select.from {
        let TableFactor::Table {
            name,
            args: Some(args),
            alias,
            with_ordinality,
            ..
        } = &mut from.relation
        else {
            continue;
        };
        let is_ancestors = name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_partition_ancestors"));
        let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(relation))] =
            args.args.as_slice()
        else {
            continue;
        };
        if !is_ancestors {
            continue;
        }
        let sql = if *with_ordinality {
            "SELECT oid AS relid, 1 AS depth FROM pg_catalog.pg_class"
        } else {
            "SELECT oid AS relid FROM pg_catalog.pg_class"
        };
        let Some(subquery) = template_query(sql) else {
            continue;
        };
        let alias = alias.take().unwrap_or_else(|| ast::TableAlias {
            explicit: true,
            name: ast::Ident::new("pg_partition_ancestors"),
            columns: Vec::new(),
            at: None,
        });
        let column = alias
            .columns
            .first()
            .map_or_else(|| ast::Ident::new("relid"), |c| c.name.clone());
        conditions.push(Expr::BinaryOp {
            left: Box::new(Expr::CompoundIdentifier(vec![alias.name.clone(), column])),
            op: ast::BinaryOperator::Eq,
            right: Box::new(Expr::Nested(Box::new(relation.clone()))),
        });
        from.relation = TableFactor::Derived {
            lateral: false,
            subquery,
            alias: Some(alias),
            sample: None,
        };
    }
    for condition in conditions {
        select.selection = Some(match select.selection.take() {
            Some(existing) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(existing))),
                op: ast::BinaryOperator::And,
                right: Box::new(condition),
            },
            None => condition,
        });
    }
}

/// Rewrites the PostgreSQL forms DataFusion does not plan into ones it does:
/// `to_reg*(name)` lookups into subqueries ([`REG_LOOKUPS`]), `ARRAY(subquery)`
/// into an aggregate over the subquery's rows, `FROM [pg_catalog.]unnest(...)
/// alias` into DataFusion's UNNEST with the alias naming its column, and
/// correlated key lookups in pg_catalog into aggregates
/// ([`aggregate_catalog_lookup`]).
pub fn rewrite_postgres_forms(statement: &mut Statement) {
    struct Rewrite;
    impl VisitorMut for Rewrite {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                rewrite_partition_ancestors(select);
            }
            ControlFlow::Continue(())
        }
        // `FROM [pg_catalog.]unnest(...)` parsed as a table function (psql's
        // \d+ writes it so): unnest is a table factor of its own to DataFusion.
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            // pg_catalog's tables Quarry adds to the crate's are found
            // unqualified too (pg_catalog comes first in PostgreSQL's
            // search path).
            if let TableFactor::Table {
                name, args: None, ..
            } = factor
                && let [part] = name.0.as_slice()
                && part.as_ident().is_some_and(|i| {
                    i.quote_style.is_none()
                        && i.value.eq_ignore_ascii_case(crate::pg_activity::NAME)
                })
            {
                *name = ObjectName(vec![
                    ast::ObjectNamePart::Identifier(Ident::new("pg_catalog")),
                    ast::ObjectNamePart::Identifier(Ident::new(crate::pg_activity::NAME)),
                ]);
            }
            if let TableFactor::Table {
                name,
                args: Some(args),
                alias,
                ..
            } = factor
                && let Some((function, schema)) = name.0.split_last()
                && schema.iter().all(|s| {
                    s.as_ident()
                        .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog"))
                })
                && schema.len() <= 1
                && function
                    .as_ident()
                    .is_some_and(|i| i.value.eq_ignore_ascii_case("unnest"))
            {
                let array_exprs: Option<Vec<Expr>> = args
                    .args
                    .iter()
                    .map(|arg| match arg {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Some(e.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(array_exprs) = array_exprs {
                    *factor = TableFactor::UNNEST {
                        alias: alias.take(),
                        array_exprs,
                        with_offset: false,
                        with_offset_alias: None,
                        with_ordinality: false,
                    };
                }
            }
            // `FROM generate_series(...) g`: the same rule for the set
            // returning functions of one column (DataFusion calls it value).
            if let TableFactor::Table {
                name,
                args: Some(_),
                alias: Some(alias),
                ..
            } = factor
                && alias.columns.is_empty()
                && name
                    .0
                    .last()
                    .and_then(|part| part.as_ident())
                    .is_some_and(|i| {
                        i.value.eq_ignore_ascii_case("generate_series")
                            || i.value.eq_ignore_ascii_case("range")
                    })
            {
                alias.columns = vec![ast::TableAliasColumnDef {
                    name: alias.name.clone(),
                    data_type: None,
                }];
            }
            // `FROM unnest(...) x`: for a function of one column the alias
            // names the column too (PostgreSQL's rule; DataFusion names only
            // the table).
            if let TableFactor::UNNEST {
                alias: Some(alias),
                array_exprs,
                ..
            } = factor
                && array_exprs.len() == 1
                && alias.columns.is_empty()
            {
                alias.columns = vec![ast::TableAliasColumnDef {
                    name: alias.name.clone(),
                    data_type: None,
                }];
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::Subquery(query) = expr {
                aggregate_catalog_lookup(query);
                return ControlFlow::Continue(());
            }
            if let Some(field) = field_of_composite(expr) {
                *expr = field;
                return ControlFlow::Continue(());
            }
            let Expr::Function(function) = expr else {
                return ControlFlow::Continue(());
            };
            if let ast::FunctionArguments::Subquery(subquery) = &function.args
                && function.name.to_string().eq_ignore_ascii_case("array")
            {
                if let Some(mut array) = array_of_subquery(subquery) {
                    // The subquery inside ARRAY(...) is not visited on the
                    // way down.
                    let _ = VisitMut::visit(&mut array, &mut Rewrite);
                    *expr = array;
                }
                return ControlFlow::Continue(());
            }
            let name = function.name.to_string().to_lowercase();
            let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
            if name == "generate_subscripts"
                && let Some(subscripts) = generate_subscripts(function)
            {
                *expr = subscripts;
                return ControlFlow::Continue(());
            }
            if name.rsplit('.').next() == Some("_pg_expandarray")
                && let Some(elements) = expand_array(function)
            {
                *expr = elements;
                return ControlFlow::Continue(());
            }
            let Some((_, template)) = REG_LOOKUPS.iter().find(|(f, _)| *f == name) else {
                return ControlFlow::Continue(());
            };
            let ast::FunctionArguments::List(list) = &function.args else {
                return ControlFlow::Continue(());
            };
            let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(argument))] =
                list.args.as_slice()
            else {
                return ControlFlow::Continue(());
            };
            let argument = argument.clone();
            let Some(mut query) = template_query(template) else {
                return ControlFlow::Continue(());
            };
            let text = Expr::Cast {
                kind: ast::CastKind::DoubleColon,
                expr: Box::new(Expr::Nested(Box::new(argument))),
                data_type: ast::DataType::Text,
                array: false,
                format: None,
            };
            fill_slots(&mut *query, &ast::Value::Placeholder("$1".into()), &text);
            *expr = Expr::Subquery(query);
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(statement, &mut Rewrite);
    if let Statement::Query(query) = statement
        && let SetExpr::Select(select) = query.body.as_mut()
    {
        for item in &mut select.projection {
            if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
                regclass_as_name(expr);
            }
        }
    }
}

/// `expr::regclass` in a statement's result columns shows the relation's
/// name, as PostgreSQL's regclass output does (psql's "Referenced by: TABLE
/// child"): `coalesce((SELECT max(relname) FROM pg_catalog.pg_class WHERE oid
/// = expr), expr::text)`, the number for an oid that names no relation. A
/// literal (`'t'::regclass`) and a cast inside an expression stay oids.
fn regclass_as_name(expr: &mut Expr) {
    let Expr::Cast {
        expr: value,
        data_type,
        ..
    } = expr
    else {
        return;
    };
    let is_regclass = data_type
        .to_string()
        .to_ascii_lowercase()
        .rsplit('.')
        .next()
        .is_some_and(|t| t == "regclass");
    if !is_regclass || matches!(value.as_ref(), Expr::Value(_)) {
        return;
    }
    let Some(mut name) = template_function(
        "SELECT coalesce((SELECT max(__quarry_class.relname) FROM pg_catalog.pg_class \
         AS __quarry_class WHERE __quarry_class.oid = NULL), CAST(NULL AS TEXT))",
    ) else {
        return;
    };
    fill_slots(&mut name, &ast::Value::Null, value);
    *expr = Expr::Function(name);
}

/// Marks a result column's name as a repeat: `a\u{1}2` is the second result
/// column named `a`. DataFusion needs distinct names; PostgreSQL gives its
/// clients the name before the mark (`name_result_columns`).
pub const REPEATED_NAME_MARK: char = '\u{1}';

/// The name PostgreSQL gives a result column Quarry named `name` (see
/// [`REPEATED_NAME_MARK`]).
pub fn client_column_name(name: &str) -> &str {
    name.split(REPEATED_NAME_MARK).next().unwrap_or(name)
}

/// Names the unaliased result columns of `query` as PostgreSQL would (`count`
/// rather than `count(*)`), and gives the second and later columns of one
/// name (`SELECT 1 AS a, 2 AS a`, `SELECT count(*), count(a)`) names marked
/// as repeats ([`REPEATED_NAME_MARK`]), which PostgreSQL allows and
/// DataFusion does not.
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
    // Repeated names: the first keeps its name, the others are marked.
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (item, proposed) in select.projection.iter_mut().zip(proposed) {
        let name = match &*item {
            SelectItem::ExprWithAlias { alias, .. } => match alias.quote_style {
                Some(_) => alias.value.clone(),
                None => alias.value.to_lowercase(),
            },
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) => ident.value.to_lowercase(),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => match parts.last() {
                Some(part) => part.value.to_lowercase(),
                None => continue,
            },
            SelectItem::UnnamedExpr(_) => match proposed {
                Some(name) => name,
                None => continue,
            },
            _ => continue,
        };
        let count = seen.entry(name.clone()).or_insert(0);
        *count += 1;
        let alias = match *count {
            1 if matches!(
                item,
                SelectItem::UnnamedExpr(Expr::Identifier(_) | Expr::CompoundIdentifier(_))
                    | SelectItem::ExprWithAlias { .. }
            ) =>
            {
                continue;
            }
            1 => name,
            n => format!("{name}{REPEATED_NAME_MARK}{n}"),
        };
        let expr = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
            SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr,
            other => {
                *item = other;
                continue;
            }
        };
        *item = SelectItem::ExprWithAlias {
            expr,
            alias: Ident::with_quote('"', alias),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::{TableFactor, TableVersion};

    #[test]
    fn result_columns_get_postgres_names_and_repeats_are_marked() {
        let cases = [
            (
                "select count(*), sum(a) from t",
                "SELECT count(*) AS \"count\", sum(a) AS \"sum\" FROM t",
            ),
            ("select 1", "SELECT 1 AS \"?column?\""),
            // Names PostgreSQL repeats: the later ones are marked.
            (
                "select 1, 2",
                "SELECT 1 AS \"?column?\", 2 AS \"?column?\u{1}2\"",
            ),
            (
                "select count(*), count(a) from t",
                "SELECT count(*) AS \"count\", count(a) AS \"count\u{1}2\" FROM t",
            ),
            (
                "select (select max(a) from t), (select b as total from u)",
                "SELECT (SELECT max(a) FROM t) AS \"max\", (SELECT b AS total FROM u) AS \"total\"",
            ),
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
                "SELECT a, upper(a) AS \"a\u{1}2\" FROM t",
            ),
        ];
        for (sql, expected) in cases {
            let mut statements = parse_postgres(sql).expect(sql);
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
            parse_postgres("select * from t for system_time as of timestamp '2026-01-01 00:00:00'")
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

    fn rewritten(sql: &str) -> String {
        let mut statement = parse_postgres(sql).expect(sql).pop().expect(sql);
        rewrite_postgres_forms(&mut statement);
        statement.to_string()
    }

    #[test]
    fn catalog_forms_become_ones_datafusion_plans() {
        // SQLAlchemy's numbering of a key's columns.
        let subscripts = rewritten(
            "SELECT unnest(conkey), generate_subscripts(conkey, 1) FROM pg_catalog.pg_constraint",
        );
        assert!(
            subscripts.contains("unnest(generate_series(1, cardinality((conkey))))"),
            "{subscripts}"
        );
        // psql's \d+ over an outer array: a lambda over the array.
        let transform = rewritten(
            "SELECT array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x) \
             FROM pg_catalog.pg_class tc",
        );
        assert!(
            transform.contains("array_transform(tc.reloptions, x -> 'toast.' || x)"),
            "{transform}"
        );
        // pg_partition_ancestors of an outer column: pg_class's row of it.
        let ancestors = rewritten(
            "SELECT relid FROM pg_catalog.pg_partition_ancestors(t.tgrelid) \
             WITH ORDINALITY AS a(relid, depth)",
        );
        assert!(
            ancestors.contains("SELECT oid AS relid, 1 AS depth FROM pg_catalog.pg_class")
                && ancestors.contains("WHERE a.relid = (t.tgrelid)"),
            "{ancestors}"
        );
        // A correlated lookup with ORDER BY ... LIMIT 1 (inside an
        // expression, as psql's is inside a CASE): the first value in that
        // order.
        let first = rewritten(
            "SELECT coalesce((SELECT u.tgname FROM pg_catalog.pg_trigger u \
             WHERE u.tgrelid = t.tgrelid ORDER BY u.oid LIMIT 1), '') FROM pg_catalog.pg_trigger t",
        );
        assert!(
            first.contains("first_value(u.tgname ORDER BY u.oid)") && !first.contains("LIMIT"),
            "{first}"
        );
        // A correlated subquery in a SELECT list is kept over tables. Over
        // pg_catalog alone, one tied to the outer row by equalities is a
        // key lookup (conditions on the outer row alone move into a CASE,
        // psql's column defaults); any other is replaced by NULL.
        let over_tables = rewritten("SELECT a, (SELECT max(b) FROM u WHERE u.k = t.k) FROM t");
        assert!(over_tables.contains("max(b)"), "{over_tables}");
        let default = rewritten(
            "SELECT a.attname, (SELECT d.adbin FROM pg_catalog.pg_attrdef d \
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef) \
             FROM pg_catalog.pg_attribute a",
        );
        assert!(
            default.contains("CASE WHEN a.atthasdef THEN (SELECT max(d.adbin)")
                && default.contains("WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum)"),
            "{default}"
        );
        let collation = rewritten(
            "SELECT a.attname, (SELECT c.collname FROM pg_catalog.pg_collation c, \
             pg_catalog.pg_type t WHERE c.oid = a.attcollation AND t.oid = a.atttypid \
             AND a.attcollation <> t.typcollation) FROM pg_catalog.pg_attribute a",
        );
        assert!(
            !collation.contains("collname") && collation.contains("NULL"),
            "{collation}"
        );
        // An oid shown as regclass is the relation's name.
        let name = rewritten(
            "SELECT conrelid::pg_catalog.regclass AS ontable FROM pg_catalog.pg_constraint",
        );
        assert!(
            name.contains("max(__quarry_class.relname)") && name.contains("= (conrelid)"),
            "{name}"
        );
        // An aggregate inside the value is left alone.
        let aggregated = rewritten(
            "SELECT cardinality((SELECT coalesce(array_agg(r.rolname), make_array()) \
             FROM pg_catalog.pg_roles r WHERE r.oid = m.roleid)) FROM pg_catalog.pg_auth_members m",
        );
        assert!(
            aggregated.contains("array_agg(r.rolname)") && !aggregated.contains("max("),
            "{aggregated}"
        );
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
    fn clone_as_of_is_parsed_by_its_grammar() {
        let sql = "CREATE TABLE IF NOT EXISTS c\n  CLONE s.t\n  FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-01 00:00:00' - INTERVAL '1 hour'\n  WITH (retention_seconds = 60);";
        let statements = parse(sql).expect("parses");
        let [QuarryStatement::CloneAsOf { create, instant }] = statements.as_slice() else {
            panic!("not a clone at an instant: {statements:?}");
        };
        assert_eq!(create.name.to_string(), "c");
        assert!(create.if_not_exists);
        assert_eq!(
            create.clone.as_ref().map(ToString::to_string).as_deref(),
            Some("s.t")
        );
        assert_eq!(
            instant.to_string(),
            "TIMESTAMP '2026-01-01 00:00:00' - INTERVAL '1 hour'"
        );
        assert_eq!(
            create.table_options.to_string(),
            "WITH (retention_seconds = 60)"
        );
        // A clone of the current snapshot is PostgreSQL-grammar CREATE TABLE.
        assert!(matches!(
            parse("create table c clone s").expect("parses").as_slice(),
            [QuarryStatement::Sql(Statement::CreateTable(_))]
        ));
        let e = parse("CREATE TABLE c CLONE s FOR SYSTEM_TIME AS OF").expect_err("no instant");
        assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR);
        let e = parse("CREATE TABLE c CLONE s FOR SYSTEM_TIME AS OF now() garbage")
            .expect_err("trailing words");
        assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR);
    }

    #[test]
    fn undrop_is_parsed_by_its_grammar_among_other_statements() {
        let statements =
            parse("select 1;\nundrop\n  table \"S\".t; -- comment; not a statement\nselect ';'")
                .expect("parses");
        assert_eq!(statements.len(), 3, "{statements:?}");
        let QuarryStatement::Undrop(name) = &statements[1] else {
            panic!("not an undrop: {statements:?}");
        };
        assert_eq!(name.to_string(), "\"S\".t");
        assert!(
            matches!(&statements[2], QuarryStatement::Sql(Statement::Query(q)) if q.to_string() == "SELECT ';'")
        );
        for bad in ["UNDROP TABLEt", "UNDROP TABLE", "undrop table a b"] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR, "{bad}");
        }
        // A text with an error anywhere yields no statement.
        assert!(parse("undrop table t; selec 1").is_err());
        assert!(parse(" ; ;").expect("empty statements").is_empty());
    }

    #[test]
    fn load_data_takes_bigquery_s_form() {
        let statements = parse(
            "LOAD DATA INTO s.t FROM FILES (format = 'csv', uris = ['/a/*.csv', '/b.csv'], skip_leading_rows = 1)",
        )
        .expect("parses");
        assert_eq!(
            statements,
            [QuarryStatement::LoadData {
                table: ObjectName::from(vec![Ident::new("s"), Ident::new("t")]),
                overwrite: false,
                format: FileFormat::Csv,
                uris: vec!["/a/*.csv".into(), "/b.csv".into()],
                skip_leading_rows: 1,
                max_bad_records: 0,
            }]
        );
        let parsed = parse(
            "LOAD DATA INTO t FROM FILES (format = 'CSV', uris = ['/a'], max_bad_records = 10)",
        );
        let Ok(
            [
                QuarryStatement::LoadData {
                    max_bad_records, ..
                },
            ],
        ) = parsed.as_deref()
        else {
            panic!("max_bad_records: {parsed:?}");
        };
        assert_eq!(*max_bad_records, 10);
        let parsed =
            parse("load data overwrite t from files (uris = ['/x.parquet'], format = 'PARQUET')");
        let Ok(
            [
                QuarryStatement::LoadData {
                    overwrite, format, ..
                },
            ],
        ) = parsed.as_deref()
        else {
            panic!("not a load: {parsed:?}");
        };
        assert!(*overwrite);
        assert_eq!(*format, FileFormat::Parquet);
        for bad in [
            "LOAD DATA t FROM FILES (format = 'CSV', uris = ['/a'])",
            "LOAD DATA INTO t FROM FILES (uris = ['/a'])",
            "LOAD DATA INTO t FROM FILES (format = 'CSV')",
            "LOAD DATA INTO t FROM FILES (format = 'CSV', uris = '/a')",
            "LOAD DATA INTO t FROM FILES (format = 'CSV', uris = ['/a']) x",
        ] {
            assert_eq!(
                parse(bad).expect_err(bad).sqlstate(),
                SqlState::SYNTAX_ERROR,
                "{bad}"
            );
        }
        let e = parse("LOAD DATA INTO t FROM FILES (format = 'AVRO', uris = ['/a'])")
            .expect_err("avro");
        assert_eq!(e.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED);
    }

    #[test]
    fn create_external_table_takes_bigquery_options_and_optional_columns() {
        let statements = parse(
            "CREATE EXTERNAL TABLE s.e OPTIONS (format = 'PARQUET', uris = ['/d/*.parquet']);
             create external table if not exists e (a int, b text) options (uris = ['/c.csv'], format = 'csv', skip_leading_rows = 1)",
        )
        .expect("parses");
        let [
            QuarryStatement::CreateExternalTable {
                name,
                if_not_exists: false,
                columns,
                source,
            },
            QuarryStatement::CreateExternalTable {
                if_not_exists: true,
                columns: declared,
                source: csv,
                ..
            },
        ] = statements.as_slice()
        else {
            panic!("{statements:?}");
        };
        assert_eq!(name.to_string(), "s.e");
        assert!(columns.is_empty());
        assert_eq!(source.format, FileFormat::Parquet);
        assert_eq!(source.uris, ["/d/*.parquet"]);
        assert_eq!(declared.len(), 2);
        assert_eq!((csv.format, csv.skip_leading_rows), (FileFormat::Csv, 1));
        for bad in [
            "CREATE EXTERNAL TABLE e",
            "CREATE EXTERNAL TABLE e OPTIONS (format = 'CSV')",
            "CREATE EXTERNAL TABLE e (a int) STORED AS PARQUET LOCATION '/x'",
            "CREATE EXTERNAL TABLE e OPTIONS (format = 'CSV', uris = ['/a']) x",
        ] {
            assert_eq!(
                parse(bad).expect_err(bad).sqlstate(),
                SqlState::SYNTAX_ERROR,
                "{bad}"
            );
        }
    }

    #[test]
    fn fetch_and_move_take_postgresql_forms() {
        let statements = parse(
            "FETCH c; MOVE c; fetch relative -2 in c; MOVE BACKWARD - 3 FROM \"C\"; move all in c",
        )
        .expect("parses");
        let directions: Vec<String> = statements
            .iter()
            .map(|s| match s {
                QuarryStatement::Sql(Statement::Fetch {
                    name, direction, ..
                }) => {
                    format!("fetch {direction} {name}")
                }
                QuarryStatement::Move { name, direction } => format!("move {direction} {name}"),
                other => panic!("not a fetch or move: {other:?}"),
            })
            .collect();
        assert_eq!(
            directions,
            [
                "fetch NEXT c",
                "move NEXT c",
                "fetch RELATIVE -2 c",
                "move BACKWARD -3 \"C\"",
                "move ALL c"
            ]
        );
        for bad in [
            "MOVE",
            "MOVE 1 IN",
            "MOVE 1 IN c d",
            "FETCH 1 FROM c INTO x",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR, "{bad}");
        }
    }

    #[test]
    fn syntax_errors_are_42601() {
        let e = parse("selec 1").expect_err("bad syntax");
        assert_eq!(e.sqlstate(), SqlState::SYNTAX_ERROR);
    }
}
