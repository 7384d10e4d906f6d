//! JSON values: PostgreSQL's operators and functions
//! (<https://www.postgresql.org/docs/current/functions-json.html>) and
//! BigQuery's (<https://cloud.google.com/bigquery/docs/reference/standard-sql/json_functions>)
//! over JSON text.
//!
//! A JSON value is Utf8 text whose field carries Arrow's `arrow.json`
//! extension name ([`crate::types::JSON_EXTENSION`]); the wire reports such a
//! column as `json`. Reaching inside a document (`->`, `->>`, `#>`, `#>>`,
//! `json_length`, `json_object_keys`) is datafusion-functions-json's (jiter);
//! the functions here that build, compare or walk whole documents use
//! serde_json, and JSONPath (BigQuery's `$.a.b[0]`) is serde_json_path's
//! (RFC 9535).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, ListBuilder, StringArray, StringBuilder, StructBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{DFSchema, ScalarValue, exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;
use datafusion_functions_json::udfs;
use serde_json::Value;

use crate::types::is_json;

/// The field metadata of a JSON value.
fn json_metadata() -> std::collections::HashMap<String, String> {
    [(
        "ARROW:extension:name".to_owned(),
        crate::types::JSON_EXTENSION.to_owned(),
    )]
    .into()
}

/// A JSON-typed field named `name`.
fn json_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(json_metadata())
}

/// An `oid` field named `name`: int4 with datafusion-pg-catalog's alias.
fn oid_field(name: &str) -> Field {
    Field::new(name, DataType::Int32, true).with_metadata(
        [(
            arrow_pg::datatypes::PG_OID_ALIAS_KEY.to_owned(),
            "oid".to_owned(),
        )]
        .into(),
    )
}

/// The SQL planner's types: `json` and `jsonb` in casts (`$1::jsonb`) as
/// JSON values, then datafusion-pg-catalog's oid-alias and `pg_catalog.`
/// types (the planner this one wraps; a session has one).
#[derive(Debug)]
pub struct JsonTypes;

impl datafusion::logical_expr::planner::TypePlanner for JsonTypes {
    fn plan_type_field(
        &self,
        sql_type: &datafusion::sql::sqlparser::ast::DataType,
    ) -> DfResult<Option<FieldRef>> {
        use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, DataType as Sql};
        if matches!(sql_type, Sql::JSON | Sql::JSONB) {
            return Ok(Some(Arc::new(json_field(""))));
        }
        // `oid` and `oid[]`: int4 values that keep their alias (arrow-pg
        // reports an aliased int4 as `oid`; the wire layer reports a list
        // of them as `oid[]`), as the columns of pg_catalog's tables do.
        let oid = |t: &Sql| matches!(t, Sql::Custom(name, args) if args.is_empty() && name.to_string().eq_ignore_ascii_case("oid"));
        if oid(sql_type) {
            return Ok(Some(Arc::new(oid_field(""))));
        }
        if let Sql::Array(
            ArrayElemTypeDef::SquareBracket(element, None)
            | ArrayElemTypeDef::AngleBracket(element),
        ) = sql_type
            && oid(element)
        {
            return Ok(Some(Arc::new(Field::new_list("", oid_field("item"), true))));
        }
        datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner
            .plan_type_field(sql_type)
    }
}

/// Registers the JSON functions on `ctx`, and [`JsonTypes`] as its type
/// planner (after datafusion-pg-catalog's setup, which sets its own).
pub fn register(ctx: &SessionContext) {
    for udf in [
        udfs::json_get_json_udf(),
        udfs::json_as_text_udf(),
        udfs::json_length_udf(),
        udfs::json_object_keys_udf(),
    ] {
        ctx.register_udf(udf.as_ref().clone());
    }
    // PostgreSQL's names for the crate's functions.
    for (name, udf) in [
        ("jsonb_array_length", udfs::json_length_udf()),
        ("json_array_length", udfs::json_length_udf()),
        // The list jsonb_object_keys(j) unnests (crate::unnest), under a
        // name that rewrite leaves alone.
        ("json_object_key_list", udfs::json_object_keys_udf()),
    ] {
        ctx.register_udf(udf.as_ref().clone().with_aliases([name]));
    }
    for kind in Kind::ALL {
        ctx.register_udf(ScalarUDF::new_from_impl(JsonFunction::new(kind)));
    }
    let state = ctx.state_ref();
    let existing = state.read().clone();
    *state.write() =
        datafusion::execution::session_state::SessionStateBuilder::new_from_existing(existing)
            .with_type_planner(Arc::new(JsonTypes))
            .build();
}

/// The JSON functions of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// `a @> b`: a contains b (PostgreSQL's jsonb containment).
    Contains,
    /// `a ? key`: key is a top-level key, or a string element of a top-level array.
    Exists,
    /// `jsonb_typeof`: object, array, string, number, boolean or null.
    TypeOf,
    /// `to_jsonb(v)`: any value as JSON.
    ToJson,
    /// BigQuery's `TO_JSON_STRING(v)`: the same as text.
    ToJsonString,
    /// `jsonb_build_object(k, v, ...)`.
    BuildObject,
    /// `jsonb_build_array(v, ...)`.
    BuildArray,
    /// `JSON_VALUE(doc, path)`: a scalar at path as text (NULL for objects and arrays).
    Value,
    /// `JSON_QUERY(doc, path)`: the value at path as JSON.
    Query,
    /// `JSON_EXTRACT_ARRAY(doc[, path])`: the array at path as an array of JSON values.
    ExtractArray,
    /// BigQuery's `JSON_VALUE_ARRAY(doc[, path])`: the array at path as an
    /// array of its scalars' text (`jsonb_array_elements_text`).
    ExtractStringArray,
    /// `jsonb_each(doc)` as a list of (key, value) structs, for UNNEST.
    Each,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Contains,
        Kind::Exists,
        Kind::TypeOf,
        Kind::ToJson,
        Kind::ToJsonString,
        Kind::BuildObject,
        Kind::BuildArray,
        Kind::Value,
        Kind::Query,
        Kind::ExtractArray,
        Kind::ExtractStringArray,
        Kind::Each,
    ];

    /// The function's name and aliases.
    fn names(self) -> &'static [&'static str] {
        match self {
            Kind::Contains => &["jsonb_contains"],
            Kind::Exists => &["jsonb_exists"],
            Kind::TypeOf => &["jsonb_typeof", "json_typeof", "json_type"],
            Kind::ToJson => &["to_jsonb", "to_json"],
            Kind::ToJsonString => &["to_json_string"],
            Kind::BuildObject => &["jsonb_build_object", "json_build_object", "json_object"],
            Kind::BuildArray => &["jsonb_build_array", "json_build_array", "json_array"],
            Kind::Value => &["json_value", "json_extract_scalar"],
            Kind::Query => &["json_query", "json_extract"],
            Kind::ExtractArray => &["json_extract_array", "json_query_array"],
            Kind::ExtractStringArray => &["json_value_array", "json_extract_string_array"],
            Kind::Each => &["jsonb_each_entries"],
        }
    }

    /// The number of arguments it takes: at least, at most.
    fn arity(self) -> (usize, usize) {
        match self {
            Kind::Contains | Kind::Exists | Kind::Value | Kind::Query => (2, 2),
            Kind::TypeOf | Kind::ToJson | Kind::ToJsonString | Kind::Each => (1, 1),
            Kind::ExtractArray | Kind::ExtractStringArray => (1, 2),
            Kind::BuildObject | Kind::BuildArray => (0, usize::MAX),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFunction {
    kind: Kind,
    aliases: Vec<String>,
    signature: Signature,
}

impl JsonFunction {
    fn new(kind: Kind) -> Self {
        let names = kind.names();
        JsonFunction {
            kind,
            aliases: names[1..].iter().map(|s| (*s).to_owned()).collect(),
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// The type of `jsonb_each_entries`' elements.
fn entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, true),
        json_field("value"),
    ])
}

impl ScalarUDFImpl for JsonFunction {
    fn name(&self) -> &str {
        self.kind.names()[0]
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::Contains | Kind::Exists => DataType::Boolean,
            Kind::ExtractArray => DataType::List(Arc::new(json_field("item"))),
            Kind::ExtractStringArray => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
            Kind::Each => DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(entry_fields()),
                true,
            ))),
            _ => DataType::Utf8,
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let (least, most) = self.kind.arity();
        let n = args.arg_fields.len();
        if n < least || n > most {
            return plan_err!(
                "{}() takes {} arguments, not {n}",
                self.name(),
                if least == most {
                    least.to_string()
                } else if most == usize::MAX {
                    format!("at least {least}")
                } else {
                    format!("{least} to {most}")
                }
            );
        }
        if self.kind == Kind::BuildObject && !n.is_multiple_of(2) {
            return plan_err!("{}() takes an even number of arguments", self.name());
        }
        let data_type = self.return_type(&[])?;
        let field = Field::new(self.name(), data_type, true);
        Ok(Arc::new(match self.kind {
            Kind::ToJson | Kind::BuildObject | Kind::BuildArray | Kind::Query => {
                field.with_metadata(json_metadata())
            }
            _ => field,
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let result = self.evaluate(&arrays, rows)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
        } else {
            ColumnarValue::Array(result)
        })
    }
}

/// `array` as text (JSON documents, keys, paths).
fn texts(array: &ArrayRef) -> DfResult<StringArray> {
    let text = cast(array, &DataType::Utf8)?;
    Ok(text
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone())
}

/// arrow-json's encoder for a JSON-typed field: the document it holds,
/// as it is, rather than a JSON string of its text.
#[derive(Debug)]
struct DocumentsAsThemselves;

struct Document<'a>(&'a StringArray);

impl datafusion::arrow::json::writer::Encoder for Document<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.value(idx).as_bytes());
    }
}

impl datafusion::arrow::json::writer::EncoderFactory for DocumentsAsThemselves {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a datafusion::arrow::json::writer::EncoderOptions,
    ) -> Result<
        Option<datafusion::arrow::json::writer::NullableEncoder<'a>>,
        datafusion::arrow::error::ArrowError,
    > {
        match array.as_any().downcast_ref::<StringArray>() {
            Some(documents) if is_json(field) => {
                Ok(Some(datafusion::arrow::json::writer::NullableEncoder::new(
                    Box::new(Document(documents)),
                    documents.nulls().cloned(),
                )))
            }
            _ => Ok(None),
        }
    }
}

/// The values of `array` (of `field`) as JSON documents: arrays and structs
/// as JSON arrays and objects, JSON-typed values as the documents they
/// hold, NULL as SQL NULL. Written by arrow-json's encoder, for a nested
/// value arriving at a JSON column (a loaded NDJSON object). A NULL struct
/// field is left out of its object: a reader inferring one struct from
/// objects of different keys (arrow-json's) fills the keys an object did
/// not have with NULL, and the document keeps the keys it had.
///
/// # Errors
/// When arrow-json has no encoding for a type in `array`.
pub fn json_documents(field: &FieldRef, array: &dyn Array) -> DfResult<StringArray> {
    use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
    let options = EncoderOptions::default()
        .with_explicit_nulls(false)
        .with_encoder_factory(Arc::new(DocumentsAsThemselves));
    let mut encoder = make_encoder(field, array, &options)?;
    let mut documents = StringBuilder::new();
    let mut out = Vec::new();
    for row in 0..array.len() {
        if array.is_null(row) {
            documents.append_null();
            continue;
        }
        out.clear();
        encoder.encode(row, &mut out);
        documents.append_value(String::from_utf8_lossy(&out));
    }
    Ok(documents.finish())
}

/// Parses JSON text, as 22P02 in PostgreSQL's words when it is not.
fn parse(text: &str) -> DfResult<Value> {
    serde_json::from_str(text).map_err(|e| {
        crate::error::to_engine(crate::error::user_error(
            quarry_common::SqlState::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type json: {e}"),
        ))
    })
}

/// A compiled JSONPath, as 22023 when it is not one.
fn json_path(text: &str) -> DfResult<serde_json_path::JsonPath> {
    serde_json_path::JsonPath::parse(text).map_err(|e| {
        crate::error::to_engine(crate::error::user_error(
            quarry_common::SqlState::INVALID_PARAMETER_VALUE,
            format!("invalid JSONPath \"{text}\": {e}"),
        ))
    })
}

/// The one value `path` selects in `doc`, if exactly one.
fn at_path<'a>(doc: &'a Value, path: &serde_json_path::JsonPath) -> Option<&'a Value> {
    path.query(doc).exactly_one().ok()
}

impl JsonFunction {
    fn evaluate(&self, args: &[ArrayRef], rows: usize) -> DfResult<ArrayRef> {
        match self.kind {
            Kind::Contains | Kind::Exists => {
                let (a, b) = (texts(&args[0])?, texts(&args[1])?);
                let mut out = BooleanBuilder::with_capacity(rows);
                for i in 0..rows {
                    if a.is_null(i) || b.is_null(i) {
                        out.append_null();
                        continue;
                    }
                    let doc = parse(a.value(i))?;
                    out.append_value(if self.kind == Kind::Contains {
                        contains(&doc, &parse(b.value(i))?, true)
                    } else {
                        exists(&doc, b.value(i))
                    });
                }
                Ok(Arc::new(out.finish()))
            }
            Kind::TypeOf => {
                let a = texts(&args[0])?;
                let mut out = StringBuilder::new();
                for i in 0..rows {
                    if a.is_null(i) {
                        out.append_null();
                    } else {
                        out.append_value(type_name(&parse(a.value(i))?));
                    }
                }
                Ok(Arc::new(out.finish()))
            }
            Kind::ToJson | Kind::ToJsonString | Kind::BuildArray | Kind::BuildObject => {
                let mut out = StringBuilder::new();
                for i in 0..rows {
                    let value = match self.kind {
                        Kind::ToJson | Kind::ToJsonString => {
                            let value = to_value(&args[0], i)?;
                            if value.is_null() && self.kind == Kind::ToJson {
                                out.append_null();
                                continue;
                            }
                            value
                        }
                        Kind::BuildArray => Value::Array(
                            args.iter()
                                .map(|a| to_value(a, i))
                                .collect::<DfResult<_>>()?,
                        ),
                        _ => {
                            let mut object = serde_json::Map::new();
                            for pair in args.chunks(2) {
                                let key = match to_value(&pair[0], i)? {
                                    Value::String(s) => s,
                                    Value::Null => {
                                        return exec_err!("argument 1 cannot be null");
                                    }
                                    other => other.to_string(),
                                };
                                object.insert(key, to_value(&pair[1], i)?);
                            }
                            Value::Object(object)
                        }
                    };
                    out.append_value(value.to_string());
                }
                Ok(Arc::new(out.finish()))
            }
            Kind::Value | Kind::Query => {
                let (docs, paths) = (texts(&args[0])?, texts(&args[1])?);
                let mut out = StringBuilder::new();
                for i in 0..rows {
                    if docs.is_null(i) || paths.is_null(i) {
                        out.append_null();
                        continue;
                    }
                    let doc = parse(docs.value(i))?;
                    let found = at_path(&doc, &json_path(paths.value(i))?);
                    match (self.kind, found) {
                        (_, None) | (Kind::Value, Some(Value::Array(_) | Value::Object(_))) => {
                            out.append_null()
                        }
                        // JSON_VALUE: a JSON null is SQL NULL, a string
                        // without its quotes.
                        (Kind::Value, Some(Value::Null)) => out.append_null(),
                        (Kind::Value, Some(Value::String(s))) => out.append_value(s),
                        (_, Some(v)) => out.append_value(v.to_string()),
                    }
                }
                Ok(Arc::new(out.finish()))
            }
            Kind::ExtractArray | Kind::ExtractStringArray => {
                let docs = texts(&args[0])?;
                let paths = args.get(1).map(texts).transpose()?;
                let text = self.kind == Kind::ExtractStringArray;
                let mut out =
                    ListBuilder::new(StringBuilder::new()).with_field(Arc::new(if text {
                        Field::new("item", DataType::Utf8, true)
                    } else {
                        json_field("item")
                    }));
                for i in 0..rows {
                    if docs.is_null(i) || paths.as_ref().is_some_and(|p| p.is_null(i)) {
                        out.append_null();
                        continue;
                    }
                    let doc = parse(docs.value(i))?;
                    let found = match &paths {
                        Some(p) => at_path(&doc, &json_path(p.value(i))?),
                        None => Some(&doc),
                    };
                    match found {
                        Some(Value::Array(items)) => {
                            for item in items {
                                match (text, item) {
                                    (true, Value::String(s)) => out.values().append_value(s),
                                    (true, Value::Null) => out.values().append_null(),
                                    (_, item) => out.values().append_value(item.to_string()),
                                }
                            }
                            out.append(true);
                        }
                        _ => out.append_null(),
                    }
                }
                Ok(Arc::new(out.finish()))
            }
            Kind::Each => {
                let docs = texts(&args[0])?;
                let fields = entry_fields();
                let mut out = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 0))
                    .with_field(Arc::new(Field::new("item", DataType::Struct(fields), true)));
                for i in 0..rows {
                    if docs.is_null(i) {
                        out.append_null();
                        continue;
                    }
                    let Value::Object(object) = parse(docs.value(i))? else {
                        return Err(crate::error::to_engine(crate::error::user_error(
                            quarry_common::SqlState::INVALID_PARAMETER_VALUE,
                            "cannot call jsonb_each on a non-object",
                        )));
                    };
                    let entries = out.values();
                    for (key, value) in object {
                        entries
                            .field_builder::<StringBuilder>(0)
                            .expect("key")
                            .append_value(key);
                        entries
                            .field_builder::<StringBuilder>(1)
                            .expect("value")
                            .append_value(value.to_string());
                        entries.append(true);
                    }
                    out.append(true);
                }
                Ok(Arc::new(out.finish()))
            }
        }
    }
}

/// PostgreSQL's jsonb containment (`@>`): objects contain objects whose
/// every key they have with a contained value; arrays contain arrays whose
/// every element some element of theirs contains (and, at the top level, a
/// scalar they hold); scalars contain equal scalars.
fn contains(a: &Value, b: &Value, top: bool) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .all(|(k, bv)| a.get(k).is_some_and(|av| contains(av, bv, false))),
        (Value::Array(a), Value::Array(b)) => b
            .iter()
            .all(|bv| a.iter().any(|av| contains(av, bv, false))),
        (Value::Array(a), b) if top && !b.is_object() => a.iter().any(|av| av == b),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// PostgreSQL's `?`: `key` is a key of the top-level object, or a string
/// element of the top-level array, or the top-level string.
fn exists(doc: &Value, key: &str) -> bool {
    match doc {
        Value::Object(o) => o.contains_key(key),
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(key)),
        Value::String(s) => s == key,
        _ => false,
    }
}

/// `jsonb_typeof`'s name for `v`'s type.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
}

/// Row `row` of `array` as JSON, as PostgreSQL's `to_jsonb` converts: numbers
/// and booleans as themselves, a JSON value as the document it holds, arrays
/// and structs as JSON arrays and objects, anything else as its text.
fn to_value(array: &ArrayRef, row: usize) -> DfResult<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let json_text = |s: &str| -> DfResult<Value> { parse(s) };
    let scalar = ScalarValue::try_from_array(array, row)?;
    scalar_value(&scalar, &json_text)
}

fn scalar_value(
    scalar: &ScalarValue,
    json_text: &dyn Fn(&str) -> DfResult<Value>,
) -> DfResult<Value> {
    use ScalarValue as S;
    if scalar.is_null() {
        return Ok(Value::Null);
    }
    Ok(match scalar {
        S::Boolean(Some(b)) => Value::Bool(*b),
        S::Int8(Some(v)) => Value::from(*v),
        S::Int16(Some(v)) => Value::from(*v),
        S::Int32(Some(v)) => Value::from(*v),
        S::Int64(Some(v)) => Value::from(*v),
        S::UInt8(Some(v)) => Value::from(*v),
        S::UInt16(Some(v)) => Value::from(*v),
        S::UInt32(Some(v)) => Value::from(*v),
        S::UInt64(Some(v)) => Value::from(*v),
        S::Float32(Some(v)) => serde_json::Number::from_f64(f64::from(*v))
            .map_or(Value::String(v.to_string()), Value::Number),
        S::Float64(Some(v)) => {
            serde_json::Number::from_f64(*v).map_or(Value::String(v.to_string()), Value::Number)
        }
        // A NUMERIC's digits, exactly.
        S::Decimal128(..) => serde_json::from_str(&scalar.to_string())
            .unwrap_or_else(|_| Value::String(scalar.to_string())),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Value::String(s.clone()),
        S::List(list) => {
            let values = list.value(0);
            let elements_are_json = matches!(list.data_type(), DataType::List(f) if is_json(f));
            Value::Array(
                (0..values.len())
                    .map(|i| {
                        let element = ScalarValue::try_from_array(&values, i)?;
                        if let (true, S::Utf8(Some(s))) =
                            (!values.is_null(i) && elements_are_json, &element)
                        {
                            return json_text(s);
                        }
                        scalar_value(&element, json_text)
                    })
                    .collect::<DfResult<_>>()?,
            )
        }
        S::Struct(array) => {
            let mut object = serde_json::Map::new();
            for (field, column) in array.fields().iter().zip(array.columns()) {
                let value = if column.is_null(0) {
                    Value::Null
                } else if is_json(field) {
                    json_text(texts(column)?.value(0))?
                } else {
                    scalar_value(&ScalarValue::try_from_array(column, 0)?, json_text)?
                };
                object.insert(field.name().clone(), value);
            }
            Value::Object(object)
        }
        // Dates and timestamps as PostgreSQL's to_json writes them
        // (ISO 8601), other values as their text.
        other => {
            let text = cast(&other.to_array()?, &DataType::Utf8)?;
            Value::String(texts(&text)?.value(0).replace(' ', "T"))
        }
    })
}

/// An expression planner for PostgreSQL's JSON operators on JSON or text
/// operands: `->` and `#>` (JSON), `->>` and `#>>` (text), `@>` and `<@`
/// (containment), `?` (key exists).
#[derive(Debug, Default)]
pub struct JsonOperators;

/// Whether `expr` is a JSON value (or text, which the operators take as JSON).
fn is_json_operand(expr: &Expr, schema: &DFSchema) -> bool {
    match expr.to_field(schema) {
        Ok((_, field)) => {
            is_json(&field) || matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View)
        }
        Err(_) => false,
    }
}

/// `#>`'s path operand as the arguments of a path lookup: a text array
/// literal (`'{a,0,b}'`) as one argument per element, integers as array
/// indexes.
fn path_arguments(path: Expr) -> DfResult<Vec<Expr>> {
    let Expr::Literal(ScalarValue::Utf8(Some(text)), _) = &path else {
        return Ok(vec![path]);
    };
    let elements = crate::array_text::elements(text).map_err(|message| {
        crate::error::to_engine(crate::error::user_error(
            quarry_common::SqlState::INVALID_TEXT_REPRESENTATION,
            message,
        ))
    })?;
    Ok(elements
        .into_iter()
        .map(|e| match e {
            Some(e) => match e.parse::<i64>() {
                Ok(index) => Expr::Literal(ScalarValue::Int64(Some(index)), None),
                Err(_) => Expr::Literal(ScalarValue::Utf8(Some(e)), None),
            },
            None => Expr::Literal(ScalarValue::Utf8(None), None),
        })
        .collect())
}

fn call(udf: Arc<ScalarUDF>, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        udf, args,
    ))
}

fn own(kind: Kind) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(JsonFunction::new(kind)))
}

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        let op = expr.op.clone();
        let json_ops = matches!(
            op,
            BinaryOperator::Arrow
                | BinaryOperator::LongArrow
                | BinaryOperator::HashArrow
                | BinaryOperator::HashLongArrow
                | BinaryOperator::Question
        );
        let containment = matches!(op, BinaryOperator::AtArrow | BinaryOperator::ArrowAt);
        if !(json_ops || containment) || !is_json_operand(&expr.left, schema) {
            return Ok(PlannerResult::Original(expr));
        }
        if containment && !is_json_operand(&expr.right, schema) {
            return Ok(PlannerResult::Original(expr));
        }
        let RawBinaryExpr { left, right, .. } = expr;
        Ok(PlannerResult::Planned(match op {
            BinaryOperator::Arrow => call(udfs::json_get_json_udf(), vec![left, right]),
            BinaryOperator::LongArrow => call(udfs::json_as_text_udf(), vec![left, right]),
            BinaryOperator::HashArrow => {
                let mut args = vec![left];
                args.extend(path_arguments(right)?);
                call(udfs::json_get_json_udf(), args)
            }
            BinaryOperator::HashLongArrow => {
                let mut args = vec![left];
                args.extend(path_arguments(right)?);
                call(udfs::json_as_text_udf(), args)
            }
            BinaryOperator::Question => call(own(Kind::Exists), vec![left, right]),
            BinaryOperator::AtArrow => call(own(Kind::Contains), vec![left, right]),
            _ => call(own(Kind::Contains), vec![right, left]),
        }))
    }
}

/// Registers [`JsonOperators`] ahead of DataFusion's planners (whose `@>` is
/// array containment) on `planners`.
pub fn add_planner(planners: &mut Vec<Arc<dyn ExprPlanner>>) {
    planners.insert(0, Arc::new(JsonOperators));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_follows_postgresql() {
        let j = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        assert!(contains(
            &j(r#"{"a":1,"b":[1,2,3]}"#),
            &j(r#"{"b":[3]}"#),
            true
        ));
        assert!(!contains(&j(r#"{"a":1}"#), &j(r#"{"a":2}"#), true));
        assert!(contains(&j(r#"[1,2,[3]]"#), &j(r#"[[3]]"#), true));
        assert!(contains(&j(r#"["a","b"]"#), &j(r#""a""#), true));
        assert!(!contains(&j(r#"[[1]]"#), &j(r#"1"#), true));
        assert!(contains(&j(r#"{"n":1.0}"#), &j(r#"{"n":1}"#), true));
        assert!(exists(&j(r#"["x","y"]"#), "y"));
        assert!(!exists(&j(r#"{"a":{"b":1}}"#), "b"));
    }
}
