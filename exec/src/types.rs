//! Column types: SQL type names → [`ColumnType`] → Arrow types.
//!
//! SQL names follow PostgreSQL's (documentation chapter 8, "Data Types"), with
//! BigQuery's spellings (INT64, FLOAT64, STRING, BYTES) accepted too.

use std::sync::Arc;

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo, TimezoneInfo};
use quarry_common::SqlState;
use quarry_common::catalog::{Column, ColumnType, CompositeType, NestedField, Table};

use crate::error::{Result, user_error};

/// Precision and scale of NUMERIC without arguments. PostgreSQL's is unbounded;
/// this is BigQuery's NUMERIC.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 9);

/// Arrow metadata key holding a column's field id (the Parquet field id).
pub const FIELD_ID_KEY: &str = "PARQUET:field_id";

/// Arrow's extension type name for JSON text (the canonical `arrow.json`
/// extension), carried in a field's metadata: a JSON column is Utf8 with it.
pub const JSON_EXTENSION: &str = "arrow.json";

/// The field metadata key naming an Arrow extension type.
const EXTENSION_TYPE_NAME_KEY: &str = "ARROW:extension:name";

/// The Arrow type that stores `column_type`; nested fields without field ids.
pub fn arrow_type(column_type: &ColumnType) -> DataType {
    arrow_type_with(column_type, false)
}

/// The Arrow type that stores `column_type`, its nested fields carrying their
/// field ids when `ids` (the type written into data files).
fn arrow_type_with(column_type: &ColumnType, ids: bool) -> DataType {
    match column_type {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Bytea => DataType::Binary,
        ColumnType::Array(element) => DataType::List(Arc::new(nested_field(element, ids))),
        ColumnType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| nested_field(f, ids))
                .collect::<Vec<_>>()
                .into(),
        ),
    }
}

/// The Arrow field of a nested field (always nullable).
fn nested_field(field: &NestedField, ids: bool) -> Field {
    let mut metadata = type_metadata(&field.column_type);
    if ids {
        metadata.insert(FIELD_ID_KEY.to_owned(), field.field_id.to_string());
    }
    Field::new(&field.name, arrow_type_with(&field.column_type, ids), true).with_metadata(metadata)
}

/// The field metadata a value of `column_type` carries: the JSON extension
/// name for JSON.
fn type_metadata(column_type: &ColumnType) -> HashMap<String, String> {
    match column_type {
        ColumnType::Json => [(
            EXTENSION_TYPE_NAME_KEY.to_owned(),
            JSON_EXTENSION.to_owned(),
        )]
        .into(),
        _ => HashMap::new(),
    }
}

/// Field metadata key: the PostgreSQL type oid a column's values are
/// described with, where its column type alone does not say it (a column
/// declared as a named composite type, or an array of one).
pub const PG_TYPE_OID_KEY: &str = "quarry.pg_type_oid";

/// The PostgreSQL type oid `field` carries under [`PG_TYPE_OID_KEY`].
pub fn pg_type_oid(field: &Field) -> Option<u32> {
    field.metadata().get(PG_TYPE_OID_KEY)?.parse().ok()
}

/// Whether `field` holds JSON text (Utf8 with the `arrow.json` extension).
pub fn is_json(field: &Field) -> bool {
    field
        .metadata()
        .get(EXTENSION_TYPE_NAME_KEY)
        .map(String::as_str)
        == Some(JSON_EXTENSION)
}

/// The column type for values in Arrow field `field` (CREATE TABLE AS):
/// its type, and JSON for a field with the JSON extension.
///
/// # Errors
/// As [`column_type_of`].
pub fn column_type_of_field(field: &Field) -> Result<ColumnType> {
    if is_json(field) {
        return Ok(ColumnType::Json);
    }
    column_type_of(field.data_type())
}

/// The column type for values of Arrow type `data_type` (CREATE TABLE AS).
///
/// # Errors
/// 0A000 for Arrow types Quarry cannot store yet (intervals, maps, unions).
pub fn column_type_of(data_type: &DataType) -> Result<ColumnType> {
    Ok(match data_type {
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ColumnType::Int16,
        DataType::Int32 | DataType::UInt16 => ColumnType::Int32,
        DataType::Int64 | DataType::UInt32 => ColumnType::Int64,
        DataType::UInt64 => ColumnType::Decimal {
            precision: 20,
            scale: 0,
        },
        DataType::Float16 | DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            ColumnType::Decimal {
                precision: *p,
                scale: *s,
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            ColumnType::Text
        }
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        DataType::Timestamp(_, None) => ColumnType::Timestamp,
        DataType::Timestamp(_, Some(_)) => ColumnType::TimestampTz,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => ColumnType::Bytea,
        DataType::Dictionary(_, value) => column_type_of(value)?,
        DataType::List(element)
        | DataType::LargeList(element)
        | DataType::ListView(element)
        | DataType::LargeListView(element)
        | DataType::FixedSizeList(element, _) => ColumnType::Array(Box::new(NestedField::element(
            column_type_of_field(element)?,
        ))),
        DataType::Struct(fields) => ColumnType::Struct(
            fields
                .iter()
                .map(|f| {
                    Ok(NestedField {
                        field_id: 0,
                        name: f.name().clone(),
                        column_type: column_type_of_field(f)?,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        other => {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("columns of type {other} cannot be stored yet"),
            ));
        }
    })
}

/// The column type named by a SQL type in CREATE TABLE.
///
/// # Errors
/// 42704 for unknown type names, 0A000 for known types Quarry does not store yet,
/// 22023 for an out-of-range NUMERIC precision or scale.
pub fn column_type_from_sql(sql: &ast::DataType) -> Result<ColumnType> {
    column_type_naming(sql, &|_| None, &mut Vec::new(), &mut Vec::new())
}

/// A field declared as a named composite type: the names from the column
/// down to it (an array's element is `item`; empty: the column itself),
/// and the type's schema and name.
pub type DeclaredType = (Vec<String>, String, String);

/// The column type named by a SQL type, where a name that is no built-in
/// type is looked up by `named` (a composite type of `CREATE TYPE`, whose
/// fields it stands for); each field so declared is added to `declared`,
/// found at `path` below the column.
///
/// # Errors
/// As [`column_type_from_sql`].
pub fn column_type_naming(
    sql: &ast::DataType,
    named: &dyn Fn(&ast::ObjectName) -> Option<Arc<CompositeType>>,
    path: &mut Vec<String>,
    declared: &mut Vec<DeclaredType>,
) -> Result<ColumnType> {
    use ast::DataType as T;
    Ok(match sql {
        T::Boolean | T::Bool => ColumnType::Boolean,
        T::SmallInt(_) | T::Int2(_) | T::TinyInt(_) => ColumnType::Int16,
        T::Int(_) | T::Integer(_) | T::Int4(_) | T::MediumInt(_) => ColumnType::Int32,
        T::BigInt(_) | T::Int8(_) | T::Int64 => ColumnType::Int64,
        T::Real | T::Float4 | T::Float32 => ColumnType::Float32,
        T::Double(_) | T::DoublePrecision | T::Float8 | T::Float64 | T::Float(_) => {
            ColumnType::Float64
        }
        T::Numeric(info) | T::Decimal(info) | T::Dec(info) => decimal(info)?,
        T::Text
        | T::String(_)
        | T::Varchar(_)
        | T::CharVarying(_)
        | T::CharacterVarying(_)
        | T::Char(_)
        | T::Character(_)
        | T::Nvarchar(_) => ColumnType::Text,
        T::JSON | T::JSONB => ColumnType::Json,
        T::Array(
            ast::ArrayElemTypeDef::SquareBracket(element, _)
            | ast::ArrayElemTypeDef::AngleBracket(element)
            | ast::ArrayElemTypeDef::Parenthesis(element),
        ) => {
            path.push("item".to_owned());
            let element = column_type_naming(element, named, path, declared)?;
            path.pop();
            if matches!(element, ColumnType::Array(_)) {
                // As BigQuery: an array of arrays goes through a struct
                // (`ARRAY<STRUCT<a ARRAY<T>>>`); PostgreSQL's `int[][]` is a
                // rectangular multidimensional array, which nested lists are
                // not.
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "arrays of arrays are not supported; wrap the inner array in a STRUCT",
                ));
            }
            ColumnType::Array(Box::new(NestedField::element(element)))
        }
        T::Struct(fields, _) => {
            if fields.is_empty() {
                return Err(user_error(
                    SqlState::SYNTAX_ERROR,
                    "a STRUCT type needs at least one field",
                ));
            }
            let mut nested: Vec<NestedField> = Vec::with_capacity(fields.len());
            for (i, field) in fields.iter().enumerate() {
                let name = match &field.field_name {
                    Some(name) => name.value.clone(),
                    // BigQuery names an anonymous field `_field_N`.
                    None => format!("_field_{}", i + 1),
                };
                if nested.iter().any(|f| f.name == name) {
                    return Err(user_error(
                        SqlState::DUPLICATE_COLUMN,
                        format!("duplicate field name \"{name}\" in STRUCT"),
                    ));
                }
                path.push(name.clone());
                let column_type = column_type_naming(&field.field_type, named, path, declared)?;
                path.pop();
                nested.push(NestedField {
                    field_id: 0,
                    name,
                    column_type,
                });
            }
            ColumnType::Struct(nested)
        }
        T::Date => ColumnType::Date,
        T::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) | T::Datetime(_) => {
            ColumnType::Timestamp
        }
        T::Timestamp(_, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => ColumnType::TimestampTz,
        T::Bytea | T::Bytes(_) | T::Blob(_) | T::Binary(_) | T::Varbinary(_) => ColumnType::Bytea,
        T::Custom(name, _) => match name.to_string().to_ascii_lowercase().as_str() {
            "int16" => ColumnType::Int16,
            "int32" => ColumnType::Int32,
            "serial" | "serial4" => ColumnType::Int32,
            "bigserial" | "serial8" => ColumnType::Int64,
            "timestamptz" => ColumnType::TimestampTz,
            "bpchar" | "citext" | "name" => ColumnType::Text,
            other => {
                if let Some(composite) = named(name) {
                    declared.push((
                        path.clone(),
                        composite.schema.clone(),
                        composite.name.clone(),
                    ));
                    return Ok(ColumnType::Struct(composite.fields.clone()));
                }
                return Err(user_error(
                    SqlState::UNDEFINED_OBJECT,
                    format!("type \"{other}\" does not exist"),
                ));
            }
        },
        other => {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("columns of type {other} are not supported yet"),
            ));
        }
    })
}

fn decimal(info: &ExactNumberInfo) -> Result<ColumnType> {
    let (precision, scale) = match info {
        ExactNumberInfo::None => (DEFAULT_NUMERIC.0 as u64, DEFAULT_NUMERIC.1 as i64),
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=38).contains(&precision) {
        return Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("NUMERIC precision {precision} must be between 1 and 38"),
        ));
    }
    if !(0..=precision as i64).contains(&scale) {
        return Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("NUMERIC scale {scale} must be between 0 and precision {precision}"),
        ));
    }
    Ok(ColumnType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

/// The Arrow field of `column` (the schema queries see): no field ids, the
/// JSON extension name on JSON.
pub fn field(column: &Column) -> Field {
    Field::new(
        &column.name,
        arrow_type(&column.column_type),
        column.nullable,
    )
    .with_metadata(type_metadata(&column.column_type))
}

/// The Arrow schema queries see for `table`.
pub fn table_schema(table: &Table) -> SchemaRef {
    schema_of(&table.columns)
}

/// The Arrow schema of `columns`.
pub fn schema_of(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(columns.iter().map(field).collect::<Vec<_>>()))
}

/// The Arrow schema written into data files: the table schema with each column's
/// field id in its metadata, as Parquet field ids.
pub fn file_schema(table: &Table) -> SchemaRef {
    file_schema_of(&table.columns)
}

/// The Arrow schema written into data files of `columns`, as [`file_schema`].
pub fn file_schema_of(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| {
                let mut metadata = type_metadata(&c.column_type);
                metadata.insert(FIELD_ID_KEY.to_owned(), c.field_id.to_string());
                Field::new(&c.name, arrow_type_with(&c.column_type, true), c.nullable)
                    .with_metadata(metadata)
            })
            .collect::<Vec<_>>(),
    ))
}

/// PostgreSQL types an integer literal `int4` when it fits (`SELECT 1` is
/// int4, `SELECT 3000000000` int8); DataFusion types every integer literal
/// Int64. The literals a query returns as its own columns (its outermost
/// projection, under ORDER BY and LIMIT) are narrowed to Int32, so clients
/// see PostgreSQL's column types; literals inside expressions keep Int64,
/// whose arithmetic does not wrap where int4's would overflow.
///
/// # Errors
/// DataFusion's, if the narrowed projection does not plan.
pub fn int4_result_literals(
    plan: datafusion::logical_expr::LogicalPlan,
) -> datafusion::common::Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::ScalarValue;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::expr::Alias;
    use datafusion::logical_expr::{Expr, LogicalPlan, Projection};

    fn narrow(expr: Expr) -> Expr {
        match expr {
            Expr::Literal(ScalarValue::Int64(Some(v)), metadata) => match i32::try_from(v) {
                Ok(v) => Expr::Literal(ScalarValue::Int32(Some(v)), metadata),
                Err(_) => Expr::Literal(ScalarValue::Int64(Some(v)), metadata),
            },
            Expr::Alias(alias) => Expr::Alias(Alias {
                expr: Box::new(narrow(*alias.expr)),
                ..alias
            }),
            other => other,
        }
    }
    match plan {
        LogicalPlan::Projection(projection) => {
            let exprs = projection.expr.into_iter().map(narrow).collect();
            Ok(LogicalPlan::Projection(Projection::try_new(
                exprs,
                projection.input,
            )?))
        }
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => plan
            .map_children(|child| int4_result_literals(child).map(Transformed::yes))?
            .data
            .recompute_schema(),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse_type(sql: &str) -> ast::DataType {
        Parser::new(&crate::parser::QuarryDialect::default())
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_data_type())
            .expect("type parses")
    }

    #[test]
    fn sql_type_names_map_to_column_types() {
        let cases = [
            ("integer", ColumnType::Int32),
            ("int", ColumnType::Int32),
            ("bigint", ColumnType::Int64),
            ("smallint", ColumnType::Int16),
            ("double precision", ColumnType::Float64),
            ("real", ColumnType::Float32),
            (
                "decimal(15,2)",
                ColumnType::Decimal {
                    precision: 15,
                    scale: 2,
                },
            ),
            (
                "numeric",
                ColumnType::Decimal {
                    precision: 38,
                    scale: 9,
                },
            ),
            ("varchar(25)", ColumnType::Text),
            ("char(1)", ColumnType::Text),
            ("text", ColumnType::Text),
            ("date", ColumnType::Date),
            ("timestamp", ColumnType::Timestamp),
            ("timestamptz", ColumnType::TimestampTz),
            ("timestamp with time zone", ColumnType::TimestampTz),
            ("boolean", ColumnType::Boolean),
            ("bytea", ColumnType::Bytea),
        ];
        for (sql, expected) in cases {
            let parsed = parse_type(sql);
            assert_eq!(column_type_from_sql(&parsed).expect(sql), expected, "{sql}");
        }
    }

    #[test]
    fn unknown_and_out_of_range_types_are_refused() {
        let unknown = column_type_from_sql(&parse_type("frobnicator")).expect_err("unknown");
        assert_eq!(unknown.sqlstate(), SqlState::UNDEFINED_OBJECT);
        let wide = column_type_from_sql(&parse_type("numeric(50,2)")).expect_err("too wide");
        assert_eq!(wide.sqlstate(), SqlState::INVALID_PARAMETER_VALUE);
    }

    #[test]
    fn every_column_type_round_trips_through_arrow() {
        for t in [
            ColumnType::Boolean,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 12,
                scale: 3,
            },
            ColumnType::Text,
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            ColumnType::Bytea,
            ColumnType::Json,
            ColumnType::Array(Box::new(NestedField::element(ColumnType::Int64))),
            ColumnType::Struct(vec![
                NestedField {
                    field_id: 0,
                    name: "a".to_owned(),
                    column_type: ColumnType::Json,
                },
                NestedField {
                    field_id: 0,
                    name: "b".to_owned(),
                    column_type: ColumnType::Array(Box::new(NestedField::element(
                        ColumnType::Text,
                    ))),
                },
            ]),
        ] {
            let field = Field::new("c", arrow_type(&t), true).with_metadata(type_metadata(&t));
            assert_eq!(column_type_of_field(&field).expect("maps"), t);
        }
    }

    #[test]
    fn nested_types_parse_in_both_spellings_and_carry_field_ids_into_files() {
        let postgres = column_type_from_sql(&parse_type("bigint[]")).expect("parses");
        let bigquery = column_type_from_sql(&parse_type("ARRAY<INT64>")).expect("parses");
        assert_eq!(postgres, bigquery);
        assert_eq!(postgres.to_string(), "bigint[]");
        let mut nested =
            column_type_from_sql(&parse_type("STRUCT<a INT64, tags ARRAY<STRING>, doc JSON>"))
                .expect("parses");
        assert_eq!(
            nested.to_string(),
            "STRUCT<a bigint, tags text[], doc json>"
        );
        // Three closing brackets in a row are `>>` and `>`.
        assert_eq!(
            column_type_from_sql(&parse_type("ARRAY<STRUCT<f ARRAY<STRING>>>"))
                .expect("parses")
                .to_string(),
            "ARRAY<STRUCT<f text[]>>"
        );
        let mut next = 10;
        nested.assign_field_ids(&mut next);
        assert_eq!(next, 14);
        assert_eq!(nested.max_field_id(), Some(13));
        let columns = [Column {
            field_id: 1,
            name: "s".to_owned(),
            column_type: nested,
            nullable: true,
            default: None,
        }];
        let schema = file_schema_of(&columns);
        let DataType::Struct(fields) = schema.field(0).data_type() else {
            panic!("a struct");
        };
        let ids: Vec<_> = fields
            .iter()
            .map(|f| f.metadata()[FIELD_ID_KEY].clone())
            .collect();
        assert_eq!(ids, ["10", "11", "13"]);
        let DataType::List(element) = fields[1].data_type() else {
            panic!("a list");
        };
        assert_eq!(element.metadata()[FIELD_ID_KEY], "12");
        assert!(is_json(&fields[2]));
        // The schema queries see has no ids.
        assert!(schema_of(&columns).field(0).metadata().is_empty());
    }

    #[test]
    fn arrays_of_arrays_and_empty_structs_are_refused() {
        for sql in ["int[][]", "ARRAY<ARRAY<INT64>>"] {
            let e = column_type_from_sql(&parse_type(sql)).expect_err(sql);
            assert_eq!(e.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED, "{sql}");
        }
    }
}
