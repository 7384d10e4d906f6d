//! PostgreSQL's catalog functions that clients call and that neither
//! DataFusion nor datafusion-pg-catalog provide, answered for the objects
//! Quarry has (PostgreSQL 15 documentation, "System Information Functions"
//! and "Database Object Management Functions").

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

/// Registers the functions on `ctx`, whose catalog (the session's pinned
/// view) is `catalog`.
pub fn register(ctx: &SessionContext, catalog: Arc<crate::catalog::QuarryCatalog>) {
    // Every type and function is a built-in of pg_catalog, which is always
    // on the search path: visible.
    for name in ["pg_type_is_visible", "pg_function_is_visible"] {
        ctx.register_udf(always_true(name));
    }
    // Comments (COMMENT ON) and key definitions, answered from the notes of
    // the statement's catalog; NULL for anything else, as PostgreSQL answers
    // for an object without one.
    let (oid, int, name, boolean) = (
        DataType::Int32,
        DataType::Int32,
        DataType::Utf8,
        DataType::Boolean,
    );
    let functions: [(&str, Vec<Vec<DataType>>, Describe); 6] = [
        (
            "obj_description",
            vec![vec![oid.clone()], vec![oid.clone(), name.clone()]],
            |meta, oid, _, class| match class {
                None | Some("pg_class") => crate::pg_catalog::description(meta, oid, 0),
                Some(_) => None,
            },
        ),
        (
            "col_description",
            vec![vec![oid.clone(), int.clone()]],
            |meta, oid, column, _| crate::pg_catalog::description(meta, oid, column?),
        ),
        (
            "shobj_description",
            vec![vec![oid.clone(), name.clone()]],
            |_, _, _, _| None,
        ),
        (
            "pg_get_constraintdef",
            vec![vec![oid.clone()], vec![oid.clone(), boolean.clone()]],
            |meta, oid, _, _| crate::pg_catalog::constraint_definition(meta, oid),
        ),
        // Quarry has no triggers (pg_trigger is empty).
        (
            "pg_get_triggerdef",
            vec![vec![oid.clone()], vec![oid.clone(), boolean.clone()]],
            |_, _, _, _| None,
        ),
        (
            "pg_get_indexdef",
            vec![vec![oid.clone()], vec![oid, int, boolean]],
            |meta, oid, column, _| {
                crate::pg_catalog::index_definition(meta, oid, column.unwrap_or(0))
            },
        ),
    ];
    ctx.register_udf(ScalarUDF::new_from_impl(GetExpr {
        signature: Signature::one_of(
            [
                vec![name.clone(), DataType::Int32],
                vec![name.clone(), DataType::Int32, DataType::Boolean],
            ]
            .into_iter()
            .flat_map(with_int8)
            .map(TypeSignature::Exact)
            .collect(),
            Volatility::Immutable,
        ),
    }));
    for (function, signatures, describe) in functions {
        ctx.register_udf(ScalarUDF::new_from_impl(Described {
            name: function,
            signature: Signature::one_of(
                signatures
                    .into_iter()
                    .flat_map(with_int8)
                    .map(TypeSignature::Exact)
                    .collect(),
                Volatility::Stable,
            ),
            catalog: catalog.clone(),
            describe,
        }));
    }
    // The bytes of the data files the database's tables read now (their
    // current snapshots); NULL for another database's name.
    let database = catalog.clone();
    ctx.register_udf(create_udf(
        "pg_database_size",
        vec![DataType::Utf8],
        DataType::Int64,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let view = database.view();
            let size: u64 = view
                .catalog
                .tables
                .values()
                .map(|t| t.current_bytes())
                .sum();
            let sizes: Int64Array = names
                .iter()
                .map(|name| {
                    (name == Some(crate::catalog::CATALOG_NAME))
                        .then(|| i64::try_from(size).unwrap_or(i64::MAX))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(sizes) as ArrayRef))
        }),
    ));
    // The size of a relation by oid: a table's data files at its current
    // snapshot (the heap of PostgreSQL's pg_table_size); 0 for a view or a
    // system relation; NULL for an oid that names no relation. Quarry keeps
    // no indexes, so pg_indexes_size is 0 and the total is the table's size.
    for name in [
        "pg_table_size",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_indexes_size",
    ] {
        let catalog = catalog.clone();
        let indexes = name == "pg_indexes_size";
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int32],
            DataType::Int64,
            Volatility::Stable,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let oids = datafusion::common::cast::as_int32_array(&arrays[0])?;
                let view = catalog.view();
                let sizes: Int64Array = oids
                    .iter()
                    .map(|oid| {
                        let oid = oid?;
                        match view
                            .catalog
                            .tables
                            .values()
                            .find(|t| crate::pg_catalog::table_oid(t.id) == oid)
                        {
                            Some(_) if indexes => Some(0),
                            Some(table) => {
                                Some(i64::try_from(table.current_bytes()).unwrap_or(i64::MAX))
                            }
                            None => (!crate::pg_catalog::is_id_oid(oid)).then_some(0),
                        }
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(sizes) as ArrayRef))
            }),
        ));
    }
    // A relation of Quarry's system schema is not on the search path (psql's
    // `\dt` and `\dv` leave it out, as they leave out information_schema);
    // every other relation is.
    let hidden: Vec<i32> = crate::system::NAMES
        .iter()
        .map(|name| crate::pg_catalog::named_oid(crate::system::SYSTEM_SCHEMA, name))
        .collect();
    ctx.register_udf(create_udf(
        "pg_table_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = datafusion::common::cast::as_int32_array(&arrays[0])?;
            let visible: BooleanArray = oids
                .iter()
                .map(|oid| oid.map(|oid| !hidden.contains(&oid)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(visible) as ArrayRef))
        }),
    ));
    // quarry_array_position(cardinality, position, written): BigQuery's
    // `a[OFFSET(i)]` / `a[ORDINAL(i)]` (exec/src/unnest.rs) as the 1-based
    // `position`, or 2202E when it is outside an array of `cardinality`
    // elements; NULL for a NULL array or index. `written` is the subscript
    // as the statement wrote it, for the error.
    ctx.register_udf(create_udf(
        crate::unnest::ARRAY_POSITION,
        vec![DataType::UInt64, DataType::Int64, DataType::Utf8],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let lengths = datafusion::common::cast::as_uint64_array(&arrays[0])?;
            let positions = datafusion::common::cast::as_int64_array(&arrays[1])?;
            let written = datafusion::common::cast::as_string_array(&arrays[2])?;
            let mut checked = Vec::with_capacity(positions.len());
            for row in 0..positions.len() {
                if lengths.is_null(row) || positions.is_null(row) {
                    checked.push(None);
                    continue;
                }
                let (length, position) = (lengths.value(row), positions.value(row));
                if position < 1 || position as u64 > length {
                    return Err(crate::error::to_engine(crate::error::user_error(
                        quarry_common::SqlState::ARRAY_SUBSCRIPT_ERROR,
                        format!(
                            "array index {} is out of bounds: the array has {length} elements",
                            written.value(row)
                        ),
                    )));
                }
                checked.push(Some(position));
            }
            Ok(ColumnarValue::Array(
                Arc::new(Int64Array::from(checked)) as ArrayRef
            ))
        }),
    ));
    // current_setting(name [, missing_ok]): a setting as SHOW gives it;
    // 42704 for an unknown name, unless missing_ok (then NULL).
    let settings = catalog.clone();
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting {
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Utf8]),
                TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
            ],
            Volatility::Stable,
        ),
        catalog: settings,
    }));
    // set_config(name, value, is_local) is carried out by the session
    // before planning (session/settings.rs, `set_config_calls`), where its
    // arguments are constants in a SELECT without FROM; planned here only
    // so that such a SELECT can be described. Anywhere else it would set
    // nothing, so it fails rather than answer as if it had.
    ctx.register_udf(create_udf(
        "set_config",
        vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(|_: &[ColumnarValue]| {
            Err(datafusion::error::DataFusionError::External(Box::new(
                crate::error::user_error(
                    quarry_common::SqlState::FEATURE_NOT_SUPPORTED,
                    "set_config takes constant arguments, in a SELECT without FROM",
                ),
            )))
        }),
    ));
    // Quarry has one role per session until roles exist (issue 18): the
    // session's user is a member of every role it names.
    ctx.register_udf(ScalarUDF::new_from_impl(PgHasRole {
        signature: Signature::variadic_any(Volatility::Stable),
    }));
    ctx.register_udf(create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let sizes = datafusion::common::cast::as_int64_array(&arrays[0])?;
            let pretty: StringArray = sizes.iter().map(|s| s.map(size_pretty)).collect();
            Ok(ColumnarValue::Array(Arc::new(pretty) as ArrayRef))
        }),
    ));
}

fn rows(args: &[ColumnarValue]) -> DfResult<usize> {
    Ok(ColumnarValue::values_to_arrays(args)?
        .first()
        .map_or(1, |a| a.len()))
}

fn always_true(name: &str) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(
                vec![true; rows(args)?],
            ))))
        }),
    )
}

/// What a catalog function answers for an oid, with its second argument
/// when that is an integer (an attnum) or a name (a catalog).
type Describe =
    fn(&quarry_common::catalog::Catalog, i32, Option<i32>, Option<&str>) -> Option<String>;

/// `signature` and its variants with int8 for any of its int4 arguments:
/// Quarry computes integer literals as int8 (`col_description(oid, 2)`).
fn with_int8(signature: Vec<DataType>) -> Vec<Vec<DataType>> {
    let mut variants = vec![Vec::new()];
    for data_type in signature {
        let choices = if data_type == DataType::Int32 {
            vec![DataType::Int32, DataType::Int64]
        } else {
            vec![data_type]
        };
        variants = variants
            .into_iter()
            .flat_map(|prefix: Vec<DataType>| {
                choices.iter().map(move |choice| {
                    let mut next = prefix.clone();
                    next.push(choice.clone());
                    next
                })
            })
            .collect();
    }
    variants
}

/// `pg_get_expr(expression, relation [, pretty])`: Quarry's catalogs keep an
/// expression (pg_attrdef's `adbin`) as its SQL text, which is what
/// PostgreSQL's decompiles its node tree into.
#[derive(Debug, PartialEq, Eq, Hash)]
struct GetExpr {
    signature: Signature,
}

impl ScalarUDFImpl for GetExpr {
    fn name(&self) -> &str {
        "pg_get_expr"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(args.args[0].clone())
    }
}

/// A catalog function answered from the session's pinned catalog; NULL for
/// a NULL oid.
struct Described {
    name: &'static str,
    signature: Signature,
    catalog: Arc<crate::catalog::QuarryCatalog>,
    describe: Describe,
}

impl std::fmt::Debug for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Described")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for Described {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Described {}

impl std::hash::Hash for Described {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for Described {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        // Integer literals arrive as int8 (see with_int8).
        let int4 = |array: &ArrayRef| match array.data_type() {
            DataType::Int64 => datafusion::arrow::compute::cast(array, &DataType::Int32),
            _ => Ok(array.clone()),
        };
        let arrays = arrays.iter().map(int4).collect::<Result<Vec<_>, _>>()?;
        let oids = datafusion::common::cast::as_int32_array(&arrays[0])?;
        let second = arrays.get(1);
        let numbers = second.and_then(|a| a.as_any().downcast_ref::<Int32Array>());
        let names = second.and_then(|a| a.as_any().downcast_ref::<StringArray>());
        let view = self.catalog.view();
        let answers: StringArray = (0..rows)
            .map(|row| {
                let oid = oids.is_valid(row).then(|| oids.value(row))?;
                let number = numbers.and_then(|n| n.is_valid(row).then(|| n.value(row)));
                let name = names.and_then(|n| n.is_valid(row).then(|| n.value(row)));
                (self.describe)(&view.catalog, oid, number, name)
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(answers)))
    }
}

/// `size` bytes as `pg_size_pretty` writes them: bytes below 10 kB; else
/// the first of kB, MB, GB, TB, PB in which the size, counted in half units,
/// is below 20 × 1024 − 1, rounded half away from zero.
fn size_pretty(size: i64) -> String {
    if size.unsigned_abs() < 10 * 1024 {
        return format!("{size} bytes");
    }
    // The size in half units of the current unit, so rounding is exact.
    let mut halves = size / (1 << 9);
    for unit in ["kB", "MB", "GB", "TB"] {
        if halves.unsigned_abs() < 20 * 1024 - 1 {
            return format!("{} {unit}", half_rounded(halves));
        }
        halves /= 1 << 10;
    }
    format!("{} PB", half_rounded(halves))
}

fn half_rounded(halves: i64) -> i64 {
    (halves + if halves < 0 { -1 } else { 1 }) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_as_postgresql_writes_them() {
        for (size, text) in [
            (0, "0 bytes"),
            (10_239, "10239 bytes"),
            (10_240, "10 kB"),
            (10_752, "11 kB"),
            (10_485_247, "10239 kB"),
            (10_485_248, "10 MB"),
            (-10_240, "-10 kB"),
            (5_000_000_000_000_000, "4547 TB"),
            (i64::MAX, "8192 PB"),
        ] {
            assert_eq!(size_pretty(size), text, "{size}");
        }
    }
}

/// The name of [`vector_element`].
pub const VECTOR_ELEMENT: &str = "quarry_vector_element";

/// `vector[i]` of an `int2vector` or `oidvector` value, which pg_catalog
/// holds as PostgreSQL's text form (`"0 1"`, what SQLAlchemy splits):
/// element `i` counting from 0, as PostgreSQL subscripts those types (JDBC's
/// `getIndexInfo` reads `indoption[ordinal - 1]`); NULL outside the vector.
/// The element is int8 (PostgreSQL's is int2 or oid; both fit).
pub fn vector_element() -> ScalarUDF {
    create_udf(
        VECTOR_ELEMENT,
        vec![DataType::Utf8, DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let vectors = datafusion::common::cast::as_string_array(&arrays[0])?;
            let subscripts = datafusion::common::cast::as_int64_array(&arrays[1])?;
            let elements: Int64Array = vectors
                .iter()
                .zip(subscripts.iter())
                .map(|(vector, i)| {
                    let i = usize::try_from(i?).ok()?;
                    vector?.split_whitespace().nth(i)?.parse().ok()
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(elements) as ArrayRef))
        }),
    )
}

/// Plans `text[i]` as [`vector_element`]: PostgreSQL subscripts no text
/// value, so a subscripted text column is one of pg_catalog's vectors.
/// Ahead of DataFusion's planners, which would plan `array_element` and
/// fail on text.
#[derive(Debug)]
pub struct VectorSubscript;

impl datafusion::logical_expr::planner::ExprPlanner for VectorSubscript {
    fn plan_field_access(
        &self,
        expr: datafusion::logical_expr::planner::RawFieldAccessExpr,
        schema: &datafusion::common::DFSchema,
    ) -> DfResult<
        datafusion::logical_expr::planner::PlannerResult<
            datafusion::logical_expr::planner::RawFieldAccessExpr,
        >,
    > {
        use datafusion::logical_expr::planner::PlannerResult;
        use datafusion::logical_expr::{ExprSchemable, GetFieldAccess};
        let text = matches!(
            expr.expr.get_type(schema),
            Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        );
        match expr.field_access {
            GetFieldAccess::ListIndex { key } if text => {
                let vector = expr.expr.cast_to(&DataType::Utf8, schema)?;
                let subscript = key.cast_to(&DataType::Int64, schema)?;
                Ok(PlannerResult::Planned(
                    Arc::new(vector_element()).call(vec![vector, subscript]),
                ))
            }
            field_access => Ok(PlannerResult::Original(
                datafusion::logical_expr::planner::RawFieldAccessExpr {
                    field_access,
                    expr: expr.expr,
                },
            )),
        }
    }
}

/// `current_setting(name [, missing_ok])`, over the session's settings.
#[derive(Debug)]
struct CurrentSetting {
    signature: Signature,
    catalog: Arc<crate::catalog::QuarryCatalog>,
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog)
    }
}

impl Eq for CurrentSetting {}

impl std::hash::Hash for CurrentSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "current_setting".hash(state);
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = datafusion::common::cast::as_string_array(&arrays[0])?;
        let missing_ok = arrays
            .get(1)
            .map(|a| datafusion::common::cast::as_boolean_array(a).cloned())
            .transpose()?;
        let settings = self.catalog.settings();
        let mut values = Vec::with_capacity(names.len());
        for row in 0..names.len() {
            if names.is_null(row) {
                values.push(None);
                continue;
            }
            let name = names.value(row).to_ascii_lowercase();
            match settings.iter().find(|(k, _)| *k == name) {
                Some((_, value)) => values.push(Some(value.clone())),
                None if missing_ok
                    .as_ref()
                    .is_some_and(|m| m.is_valid(row) && m.value(row)) =>
                {
                    values.push(None)
                }
                None => {
                    return Err(datafusion::error::DataFusionError::External(Box::new(
                        crate::error::user_error(
                            quarry_common::SqlState::UNDEFINED_OBJECT,
                            format!("unrecognized configuration parameter \"{name}\""),
                        ),
                    )));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(values))))
    }
}

/// `pg_has_role([user,] role, privilege)`: true, as every session acts as
/// one all-powerful role until roles exist.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgHasRole {
    signature: Signature,
}

impl ScalarUDFImpl for PgHasRole {
    fn name(&self) -> &str {
        "pg_has_role"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
            true;
            args.number_rows
        ]))))
    }
}
