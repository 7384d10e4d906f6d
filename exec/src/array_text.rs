//! PostgreSQL's text form of an array (`'{1,2,NULL}'`, `'{"a b",c}'`), as
//! `array_in` reads it
//! (<https://www.postgresql.org/docs/current/arrays.html#ARRAYS-IO>), and
//! the expression planner that gives an untyped literal compared with an array
//! the array's type, as PostgreSQL resolves an `unknown` literal against the
//! other operand (`polroles <> '{0}'` in psql's `\dp`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::sqlparser::ast::BinaryOperator;
use quarry_common::SqlState;

/// The elements of the one-dimensional array text `text`: None for an
/// unquoted `NULL`.
///
/// # Errors
/// A message in PostgreSQL's words ("malformed array literal") for text
/// that is not such an array, and for a multidimensional one.
pub fn elements(text: &str) -> Result<Vec<Option<String>>, String> {
    let malformed = |detail: &str| format!("malformed array literal: \"{text}\" ({detail})");
    let trimmed = text.trim();
    // A dimension decoration (`[1:3]={1,2,3}`) gives the bounds, which a
    // one-dimensional array of Quarry's does not keep.
    let body = match trimmed.strip_prefix('[') {
        Some(_) => trimmed
            .split_once('=')
            .map(|(_, body)| body.trim())
            .ok_or_else(|| malformed("missing \"=\" after array dimensions"))?,
        None => trimmed,
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| malformed("array value must start with \"{\" and end with \"}\""))?;
    let mut elements = Vec::new();
    if inner.trim().is_empty() {
        return Ok(elements);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let mut quoted = false;
        match chars.peek() {
            Some('"') => {
                quoted = true;
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => {
                            value.push(chars.next().ok_or_else(|| malformed("unexpected end"))?)
                        }
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => return Err(malformed("unterminated quoted element")),
                    }
                }
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
            }
            Some('{') => {
                return Err(format!(
                    "malformed array literal: \"{text}\" (multidimensional arrays are not supported)"
                ));
            }
            _ => {
                while let Some(c) = chars.next_if(|c| *c != ',') {
                    match c {
                        '\\' => {
                            value.push(chars.next().ok_or_else(|| malformed("unexpected end"))?)
                        }
                        '"' | '{' | '}' => return Err(malformed("unexpected character")),
                        c => value.push(c),
                    }
                }
                value.truncate(value.trim_end().len());
                if value.is_empty() {
                    return Err(malformed("empty element"));
                }
            }
        }
        elements.push((quoted || !value.eq_ignore_ascii_case("null")).then_some(value));
        match chars.next() {
            Some(',') => {}
            None => return Ok(elements),
            Some(_) => return Err(malformed("junk after element")),
        }
    }
}

/// The array text `text` as a list of `field`'s type.
///
/// # Errors
/// 22P02 for text that is not an array, or an element that is not a value
/// of the element type.
pub fn parse(text: &str, field: &FieldRef) -> crate::Result<ScalarValue> {
    let invalid =
        |message: String| crate::error::user_error(SqlState::INVALID_TEXT_REPRESENTATION, message);
    let elements = elements(text).map_err(invalid)?;
    let strings: Arc<dyn Array> = Arc::new(StringArray::from(elements));
    // The element type in PostgreSQL's words (bigint, not Int64).
    let type_name = crate::types::column_type_of(field.data_type())
        .map_or_else(|_| field.data_type().to_string(), |t| t.to_string());
    let values = cast(&strings, field.data_type()).map_err(|e| {
        invalid(format!(
            "invalid input syntax for type {type_name} in array \"{text}\": {e}"
        ))
    })?;
    if values.null_count() != strings.null_count() {
        return Err(invalid(format!(
            "invalid input syntax for type {type_name} in array \"{text}\""
        )));
    }
    Ok(ScalarValue::List(ScalarValue::new_list_from_iter(
        (0..values.len())
            .map(|i| ScalarValue::try_from_array(&values, i))
            .collect::<DfResult<Vec<_>>>()
            .map_err(|e| invalid(e.to_string()))?
            .into_iter(),
        field.data_type(),
        field.is_nullable(),
    )))
}

/// An expression planner: a text literal compared with an array (`=`,
/// `<>`, `<`, ..., `@>`, `<@`) is read as an array of that array's element
/// type. It runs as DataFusion plans the comparison, since the plan's
/// schema needs the comparison's type.
#[derive(Debug, Default)]
pub struct ArrayTextLiterals;

fn comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
            | BinaryOperator::AtArrow
            | BinaryOperator::ArrowAt
    )
}

fn list_field(expr: &Expr, schema: &DFSchema) -> Option<FieldRef> {
    match expr.get_type(schema).ok()? {
        DataType::List(field) | DataType::LargeList(field) => Some(field),
        _ => None,
    }
}

fn text_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => Some(s),
        _ => None,
    }
}

/// `text` read as an array like `array`, if `array` is one and `text` a
/// text literal.
fn typed(array: &Expr, text: &Expr, schema: &DFSchema) -> DfResult<Option<Expr>> {
    let (Some(field), Some(text)) = (list_field(array, schema), text_literal(text)) else {
        return Ok(None);
    };
    let value = parse(text, &field).map_err(crate::error::to_engine)?;
    Ok(Some(Expr::Literal(value, None)))
}

impl ExprPlanner for ArrayTextLiterals {
    fn plan_binary_op(
        &self,
        mut expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        if comparison(&expr.op) {
            if let Some(value) = typed(&expr.left, &expr.right, schema)? {
                expr.right = value;
            } else if let Some(value) = typed(&expr.right, &expr.left, schema)? {
                expr.left = value;
            }
        }
        Ok(PlannerResult::Original(expr))
    }
}

/// Casts from text to an array type read the text as PostgreSQL's array
/// input does (`'{1,2}'::bigint[]`, `INSERT INTO t (tags) VALUES
/// ('{a,b}')`), where Arrow's cast would make a one-element list of the
/// whole text. An analyzer rule, after DataFusion's type coercion has made
/// every cast explicit.
#[derive(Debug, Default)]
pub struct ArrayTextCasts;

impl AnalyzerRule for ArrayTextCasts {
    fn name(&self) -> &str {
        "array_text_casts"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = match node.inputs().as_slice() {
                [] => Arc::new(DFSchema::empty()),
                [one] => one.schema().clone(),
                _ => return Ok(Transformed::no(node)),
            };
            node.map_expressions(|e| {
                e.transform_up(|e| {
                    let (inner, field) = match &e {
                        Expr::Cast(c) => (&c.expr, &c.field),
                        Expr::TryCast(c) => (&c.expr, &c.field),
                        _ => return Ok(Transformed::no(e)),
                    };
                    let DataType::List(element) = field.data_type() else {
                        return Ok(Transformed::no(e));
                    };
                    if !matches!(
                        inner.get_type(&schema),
                        Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
                    ) {
                        return Ok(Transformed::no(e));
                    }
                    let udf = ScalarUDF::new_from_impl(ArrayIn {
                        element: element.clone(),
                        signature: Signature::any(1, Volatility::Immutable),
                    });
                    Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(Arc::new(udf), vec![inner.as_ref().clone()]),
                    )))
                })
            })
        })
        .map(|t| t.data)
    }
}

/// PostgreSQL's `array_in`: array text to a list of `element`'s type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayIn {
    element: FieldRef,
    signature: Signature,
}

impl ScalarUDFImpl for ArrayIn {
    fn name(&self) -> &str {
        "array_in"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::List(self.element.clone()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let text = |value: &ScalarValue| -> DfResult<ScalarValue> {
            match value {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::Utf8View(Some(s))
                | ScalarValue::LargeUtf8(Some(s)) => {
                    parse(s, &self.element).map_err(crate::error::to_engine)
                }
                _ => Ok(ScalarValue::try_from(&DataType::List(
                    self.element.clone(),
                ))?),
            }
        };
        match &args.args[0] {
            ColumnarValue::Scalar(value) => Ok(ColumnarValue::Scalar(text(value)?)),
            ColumnarValue::Array(array) => {
                let values = (0..array.len())
                    .map(|i| text(&ScalarValue::try_from_array(array, i)?))
                    .collect::<DfResult<Vec<_>>>()?;
                Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
            }
        }
    }
}

/// PostgreSQL's text of the list or struct at `row` of `column`: an array
/// as `array_out` writes it (`{1,"a b",NULL}`), a struct as `record_out`
/// (`(1,"a b",)`, a NULL field empty), to any depth; `scalar` gives the
/// text of a non-null scalar value.
///
/// # Errors
/// As `scalar` fails.
pub fn nested_text<E>(
    column: &dyn Array,
    row: usize,
    scalar: &dyn Fn(&dyn Array, usize) -> Result<String, E>,
) -> Result<String, E> {
    use datafusion::arrow::array::AsArray;
    match column.data_type() {
        DataType::List(_) | DataType::LargeList(_) => {
            let values = match column.data_type() {
                DataType::List(_) => column.as_list::<i32>().value(row),
                _ => column.as_list::<i64>().value(row),
            };
            let mut out = String::from("{");
            for i in 0..values.len() {
                if i > 0 {
                    out.push(',');
                }
                if is_null(values.as_ref(), i) {
                    out.push_str("NULL");
                    continue;
                }
                let text = nested_text(values.as_ref(), i, scalar)?;
                let quote = text.eq_ignore_ascii_case("NULL") || has_any(&text, &['{', '}']);
                push_element(&mut out, &text, quote, false);
            }
            out.push('}');
            Ok(out)
        }
        DataType::Struct(_) => {
            let fields = column.as_struct();
            let mut out = String::from("(");
            for (i, field) in fields.columns().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if is_null(field.as_ref(), row) {
                    continue;
                }
                let text = nested_text(field.as_ref(), row, scalar)?;
                let quote = has_any(&text, &['(', ')']);
                push_element(&mut out, &text, quote, true);
            }
            out.push(')');
            Ok(out)
        }
        _ => scalar(column, row),
    }
}

/// Whether `text` holds one of `brackets`, or anything else that makes
/// array_out and record_out quote an element: a comma, a quote, a
/// backslash, white space, or nothing at all.
fn has_any(text: &str, brackets: &[char]) -> bool {
    text.is_empty()
        || text
            .chars()
            .any(|c| brackets.contains(&c) || matches!(c, ',' | '"' | '\\') || c.is_whitespace())
}

/// Appends an element's `text` to `out`, in double quotes if `quote`, each
/// quote and backslash inside doubled (record_out) or preceded by a
/// backslash (array_out).
fn push_element(out: &mut String, text: &str, quote: bool, doubled: bool) {
    if !quote {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push(if doubled { c } else { '\\' });
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether the value at `row` is NULL, counting every value of a NullArray
/// (which has no validity buffer).
fn is_null(array: &dyn Array, row: usize) -> bool {
    array
        .logical_nulls()
        .is_some_and(|nulls| nulls.is_null(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;

    #[test]
    fn array_text_is_read_as_postgresql_reads_it() {
        let some = |v: &[Option<&str>]| -> Vec<Option<String>> {
            v.iter().map(|s| s.map(str::to_owned)).collect()
        };
        assert_eq!(elements("{}").unwrap(), some(&[]));
        assert_eq!(elements(" { } ").unwrap(), some(&[]));
        assert_eq!(elements("{0}").unwrap(), some(&[Some("0")]));
        assert_eq!(
            elements("{1, 2 ,NULL,\"NULL\"}").unwrap(),
            some(&[Some("1"), Some("2"), None, Some("NULL")])
        );
        assert_eq!(
            elements(r#"{"a b","c,d","e\"f",g\,h}"#).unwrap(),
            some(&[Some("a b"), Some("c,d"), Some("e\"f"), Some("g,h")])
        );
        assert_eq!(
            elements("[1:2]={x,y}").unwrap(),
            some(&[Some("x"), Some("y")])
        );
        for bad in [
            "1,2",
            "{1,2",
            "{1,,2}",
            "{\"a}",
            "{a\"b}",
            "{{1},{2}}",
            "{1}x",
        ] {
            let error = elements(bad).unwrap_err();
            assert!(
                error.starts_with("malformed array literal"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn elements_take_the_element_type_or_are_refused() {
        let field: FieldRef = Arc::new(datafusion::arrow::datatypes::Field::new(
            "item",
            DataType::Int32,
            true,
        ));
        let value = parse("{3,NULL,-4}", &field).unwrap();
        assert_eq!(value.to_string(), "[3, , -4]");
        assert!(matches!(&value, ScalarValue::List(l) if l.values().null_count() == 1));
        assert_eq!(value.data_type(), DataType::new_list(DataType::Int32, true));
        let error = parse("{3,x}", &field).unwrap_err();
        assert_eq!(error.sqlstate(), SqlState::INVALID_TEXT_REPRESENTATION);
    }

    #[tokio::test]
    async fn a_text_literal_compared_with_an_array_takes_its_type() {
        let mut builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        if let Some(planners) = builder.expr_planners() {
            planners.insert(0, Arc::new(ArrayTextLiterals));
        }
        let state = builder.build();
        let ctx = datafusion::prelude::SessionContext::new_with_state(state);
        let answer = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(sql).await?.collect().await?;
                Ok::<_, DataFusionError>(
                    datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string(),
                )
            }
        };
        let shown = answer(
            "SELECT a = '{1,2}' AS same, a <> '{0}' AS other, '{1}' <> a AS flipped \
             FROM (SELECT make_array(1, 2) AS a)",
        )
        .await
        .unwrap();
        assert!(shown.contains("| true | true  | true    |"), "{shown}");
        let error = answer("SELECT make_array(1) = '{x}'").await.unwrap_err();
        assert!(
            error.to_string().contains("invalid input syntax"),
            "{error}"
        );
    }
}
