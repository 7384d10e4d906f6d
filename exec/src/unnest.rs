//! Set-returning calls over a row's arrays and JSON, as statement rewrites
//! before planning.
//!
//! - A correlated `UNNEST` in FROM (BigQuery's `FROM t, UNNEST(t.items) AS
//!   item [WITH OFFSET AS off]`, PostgreSQL's `FROM t, unnest(t.items) AS
//!   item` and `CROSS JOIN`): each of the relation's rows repeated once per
//!   element, as a derived table `(SELECT t.*, unnest(t.items) AS item FROM t)
//!   AS t`, so `t.col`, `item` and `item.field` keep resolving. The offset is
//!   the element's zero-based position (a second `unnest` over
//!   `range(0, cardinality(...))`, which DataFusion unnests in step with the
//!   first). Rows whose array is empty or NULL give no rows, as BigQuery's
//!   comma join does.
//! - PostgreSQL's JSON set-returning functions: `jsonb_array_elements(j)`
//!   (`value`), `jsonb_array_elements_text(j)`, `jsonb_object_keys(j)` and
//!   `jsonb_each(j)` (`key`, `value`), in the select list and correlated in
//!   FROM, through `unnest` of the array function that lists them.
//! - `jsonb_agg(v)` / `json_agg(v)`: `to_jsonb(array_agg(v))`.
//! - BigQuery's `a[OFFSET(i)]`, `a[ORDINAL(i)]` and their `SAFE_` forms:
//!   the 1-based subscript `a[i + 1]`, `a[i]`; out of range the `SAFE_`
//!   forms give NULL and the others fail (2202E), as in BigQuery.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, JoinConstraint,
    JoinOperator, ObjectName, Query, Select, SelectItem, SetExpr, Statement, Subscript, TableAlias,
    TableFactor, TableWithJoins, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::rules::SqlStatementRewriteRule;

use crate::parser::QuarryDialect;

/// The rewrite rule (see the module documentation).
#[derive(Debug)]
pub struct SetReturningCalls;

impl SqlStatementRewriteRule for SetReturningCalls {
    fn rewrite(&self, mut statement: Statement) -> Statement {
        struct Rewrite;
        impl VisitorMut for Rewrite {
            type Break = ();
            fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
                if let SetExpr::Select(select) = query.body.as_mut() {
                    lateral_unnests(select);
                    name_field_accesses(select);
                    // A rewritten call keeps its name as its column's, as
                    // PostgreSQL names a function's result column.
                    for item in &mut select.projection {
                        if let SelectItem::UnnamedExpr(expr) = item
                            && select_list_call(expr).is_some()
                            && let Some((name, _)) = call_of(expr)
                        {
                            *item = SelectItem::ExprWithAlias {
                                expr: expr.clone(),
                                alias: Ident::new(name),
                            };
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
                if let Expr::CompoundFieldAccess { root, access_chain } = expr {
                    let mut subscripted = false;
                    for k in 0..access_chain.len() {
                        // The array a subscript indexes: what comes before it.
                        let array = || match k {
                            0 => root.as_ref().clone(),
                            _ => Expr::CompoundFieldAccess {
                                root: root.clone(),
                                access_chain: access_chain[..k].to_vec(),
                            },
                        };
                        let position = match &access_chain[k] {
                            AccessExpr::Subscript(Subscript::Index { index }) => {
                                bigquery_position(index, &array())
                            }
                            _ => None,
                        };
                        let access = &mut access_chain[k];
                        match access {
                            AccessExpr::Subscript(Subscript::Index { index }) => {
                                subscripted = true;
                                if let Some(position) = position {
                                    *index = position;
                                }
                            }
                            // `a[i].field`: the field by name, as `a[i]['field']`
                            // (DataFusion plans no dot after a subscript).
                            AccessExpr::Dot(Expr::Identifier(field)) if subscripted => {
                                *access = AccessExpr::Subscript(Subscript::Index {
                                    index: Expr::Value(
                                        datafusion::sql::sqlparser::ast::Value::SingleQuotedString(
                                            field.value.clone(),
                                        )
                                        .into(),
                                    ),
                                });
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(rewritten) = select_list_call(expr) {
                    *expr = rewritten;
                }
                ControlFlow::Continue(())
            }
        }
        let _ = statement.visit(&mut Rewrite);
        statement
    }
}

/// The function that checks an `OFFSET` / `ORDINAL` position against its
/// array (registered in `crate::pg_functions`).
pub(crate) const ARRAY_POSITION: &str = "quarry_array_position";

/// BigQuery's array positions `a[OFFSET(i)]` (from 0) and `a[ORDINAL(i)]`
/// (from 1), and their `SAFE_` forms, as the 1-based subscript of `array`
/// they mean. Out of range, the `SAFE_` forms give NULL and the others fail
/// with 2202E, as in BigQuery.
fn bigquery_position(index: &Expr, array: &Expr) -> Option<Expr> {
    let (name, args) = call_of(index)?;
    let [arg] = args.as_slice() else {
        return None;
    };
    let position = match name.as_str() {
        "offset" | "safe_offset" => format!("({arg}) + 1"),
        "ordinal" | "safe_ordinal" => format!("{arg}"),
        _ => return None,
    };
    if name.starts_with("safe_") {
        return parse_expr(&position);
    }
    let written = format!("{}({arg})", name.to_uppercase()).replace('\'', "''");
    parse_expr(&format!(
        "{ARRAY_POSITION}(cardinality({array}), {position}, '{written}')"
    ))
}

/// The name of a plain function call and its plain arguments.
pub(crate) fn call_of(expr: &Expr) -> Option<(String, Vec<Expr>)> {
    let Expr::Function(function) = expr else {
        return None;
    };
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    if function.over.is_some() || function.filter.is_some() || !list.clauses.is_empty() {
        return None;
    }
    Some((function_name(&function.name)?, plain_args(&list.args)?))
}

/// A function's name, without its schema, in lower case.
pub(crate) fn function_name(name: &ObjectName) -> Option<String> {
    Some(name.0.last()?.as_ident()?.value.to_ascii_lowercase())
}

/// The arguments of a call, if all are plain expressions (no names, no `*`).
fn plain_args(args: &[FunctionArg]) -> Option<Vec<Expr>> {
    args.iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&QuarryDialect::default())
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// The array expression a JSON set-returning function unnests, and the
/// name of the column it returns; None for other functions.
fn listed(name: &str, args: &[Expr]) -> Option<(String, &'static str)> {
    let [arg] = args else {
        return None;
    };
    Some(match name {
        "jsonb_array_elements" | "json_array_elements" => {
            (format!("json_extract_array({arg})"), "value")
        }
        "jsonb_array_elements_text" | "json_array_elements_text" => {
            (format!("json_extract_string_array({arg})"), "value")
        }
        "jsonb_object_keys" | "json_object_keys" => {
            (format!("json_object_key_list({arg})"), "keys")
        }
        "jsonb_each" | "json_each" => (format!("jsonb_each_entries({arg})"), "entry"),
        _ => return None,
    })
}

/// A set-returning JSON call or `jsonb_agg` in an expression, or BigQuery's
/// `x [NOT] IN UNNEST(array)`, rewritten.
fn select_list_call(expr: &Expr) -> Option<Expr> {
    if let Expr::InUnnest {
        expr,
        array_expr,
        negated,
    } = expr
    {
        let not = if *negated { "NOT " } else { "" };
        return parse_expr(&format!("{not}array_has({array_expr}, {expr})"));
    }
    let (name, args) = call_of(expr)?;
    if let ("jsonb_agg" | "json_agg", [arg]) = (name.as_str(), args.as_slice()) {
        return parse_expr(&format!("to_jsonb(array_agg({arg}))"));
    }
    let (list, _) = listed(&name, &args)?;
    parse_expr(&format!("unnest({list})"))
}

/// Names each unaliased field access in `select`'s list (`s.a`, `t.s.a`,
/// `items[1].sku`) by its field (`a`, `sku`), as PostgreSQL names `(s).a`
/// and BigQuery `s.a`, rather than by DataFusion's `s[a]`. A compound name
/// is a field access when it goes on past a column: past the longest
/// prefix naming a relation of the FROM clause (its alias, name or
/// schema-qualified name), two or more names remain.
fn name_field_accesses(select: &mut Select) {
    let folded = |ident: &Ident| match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    };
    let mut relations: Vec<Vec<String>> = Vec::new();
    for from in &select.from {
        for relation in
            std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
        {
            if let Some(qualifier) = qualifier(relation) {
                relations.push(vec![folded(&qualifier)]);
            }
            if let TableFactor::Table {
                name, alias: None, ..
            } = relation
            {
                relations.push(
                    name.0
                        .iter()
                        .filter_map(|part| part.as_ident().map(folded))
                        .collect(),
                );
            }
        }
    }
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(expr) = item else {
            continue;
        };
        let field = match expr {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let names: Vec<String> = parts.iter().map(folded).collect();
                let qualified = relations
                    .iter()
                    .filter(|r| names.starts_with(r))
                    .map(Vec::len)
                    .max()
                    .unwrap_or(0);
                (names.len() - qualified >= 2).then(|| parts[parts.len() - 1].clone())
            }
            Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last() {
                Some(AccessExpr::Dot(Expr::Identifier(field))) => Some(field.clone()),
                _ => None,
            },
            _ => None,
        };
        if let Some(field) = field {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: field,
            };
        }
    }
}

/// The name a relation's columns are qualified with.
fn qualifier(relation: &TableFactor) -> Option<Ident> {
    match relation {
        TableFactor::Table {
            name, alias, args, ..
        } if args.is_none() => Some(match alias {
            Some(alias) => alias.name.clone(),
            None => name.0.last()?.as_ident()?.clone(),
        }),
        TableFactor::Derived {
            alias: Some(alias), ..
        } => Some(alias.name.clone()),
        _ => None,
    }
}

/// What a FROM item unnests: the array expression text, the element
/// column's name, the offset column's name, and for `jsonb_each` the
/// entries' struct column to expand into `key` and `value`.
struct Unnested {
    list: String,
    column: Ident,
    offset: Option<Ident>,
    entries: bool,
}

/// `factor` as an unnest of a correlated array, if it is one.
fn unnested(factor: &TableFactor) -> Option<Unnested> {
    let column_alias = |alias: &Option<TableAlias>, default: &str| match alias {
        Some(alias) => match alias.columns.first() {
            Some(column) => column.name.clone(),
            None => alias.name.clone(),
        },
        None => Ident::new(default),
    };
    match factor {
        TableFactor::UNNEST {
            alias,
            array_exprs,
            with_offset,
            with_offset_alias,
            with_ordinality,
        } => {
            let [array] = array_exprs.as_slice() else {
                return None;
            };
            if *with_ordinality {
                return None;
            }
            Some(Unnested {
                list: array.to_string(),
                column: column_alias(alias, "unnest"),
                offset: with_offset.then(|| {
                    with_offset_alias
                        .clone()
                        .unwrap_or_else(|| Ident::new("offset"))
                }),
                entries: false,
            })
        }
        TableFactor::Table {
            name,
            alias,
            args: Some(args),
            with_ordinality: false,
            ..
        } => {
            let function = function_name(name)?;
            let args = plain_args(&args.args)?;
            if function == "unnest" {
                let [array] = args.as_slice() else {
                    return None;
                };
                return Some(Unnested {
                    list: array.to_string(),
                    column: column_alias(alias, "unnest"),
                    offset: None,
                    entries: false,
                });
            }
            let (list, column) = listed(&function, &args)?;
            let entries = column == "entry";
            Some(Unnested {
                list,
                column: if entries {
                    Ident::new("__entry")
                } else {
                    column_alias(alias, column)
                },
                offset: None,
                entries,
            })
        }
        _ => None,
    }
}

/// Whether a join with `operator` is a plain cross join.
fn is_cross(operator: &JoinOperator) -> bool {
    let on_true = |c: &JoinConstraint| match c {
        JoinConstraint::None => true,
        JoinConstraint::On(Expr::Value(v)) => v.to_string().eq_ignore_ascii_case("true"),
        _ => false,
    };
    match operator {
        JoinOperator::CrossJoin(c) | JoinOperator::Join(c) | JoinOperator::Inner(c) => on_true(c),
        _ => false,
    }
}

/// `relation` with each row repeated per element of `unnest`, as a derived
/// table under the relation's own qualifier.
fn derived(relation: &TableFactor, unnest: &Unnested) -> Option<TableFactor> {
    let qualifier = qualifier(relation)?;
    let mut items = format!(
        "{qualifier}.*, unnest({}) AS {}",
        unnest.list, unnest.column
    );
    if let Some(offset) = &unnest.offset {
        items.push_str(&format!(
            ", unnest(range(0, cardinality({}))) AS {offset}",
            unnest.list
        ));
    }
    // `FROM public.t, UNNEST(t.a)`: the relation is named by its qualifier
    // inside too.
    let from = match relation {
        TableFactor::Table { alias: None, .. } => format!("{relation} AS {qualifier}"),
        _ => relation.to_string(),
    };
    let mut sql = format!("SELECT {items} FROM {from}");
    if unnest.entries {
        sql = format!(
            "SELECT {qualifier}.*, {qualifier}.__entry['key'] AS key, \
             {qualifier}.__entry['value'] AS value FROM ({sql}) AS {qualifier}"
        );
    }
    let query = Parser::new(&QuarryDialect::default())
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .ok()?;
    Some(TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(TableAlias {
            explicit: true,
            name: qualifier,
            columns: Vec::new(),
            at: None,
        }),
        sample: None,
    })
}

/// Rewrites the correlated unnests at the head of `select`'s FROM.
fn lateral_unnests(select: &mut Select) {
    loop {
        let Some(first) = select.from.first_mut() else {
            return;
        };
        // `FROM t CROSS JOIN UNNEST(t.a)`
        if let Some(join) = first.joins.first()
            && is_cross(&join.join_operator)
            && let Some(unnest) = unnested(&join.relation)
            && let Some(relation) = derived(&first.relation, &unnest)
        {
            first.relation = relation;
            first.joins.remove(0);
            continue;
        }
        // `FROM t, UNNEST(t.a)`
        if first.joins.is_empty()
            && let Some(second) = select.from.get(1)
            && let Some(unnest) = unnested(&second.relation)
            && let Some(relation) = derived(&select.from[0].relation, &unnest)
        {
            let second = select.from.remove(1);
            select.from[0] = TableWithJoins {
                relation,
                joins: second.joins,
            };
            continue;
        }
        return;
    }
}
