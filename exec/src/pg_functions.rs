//! PostgreSQL's catalog functions that clients call and that neither
//! DataFusion nor datafusion-pg-catalog provide, answered for the objects
//! Quarry has (PostgreSQL 15 documentation, "System Information Functions"
//! and "Database Object Management Functions").

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;

/// Registers the functions on `ctx`, whose catalog (the session's pinned
/// view) is `catalog`.
pub fn register(ctx: &SessionContext, catalog: Arc<crate::catalog::QuarryCatalog>) {
    // Every type and function is a built-in of pg_catalog, which is always
    // on the search path: visible.
    for name in ["pg_type_is_visible", "pg_function_is_visible"] {
        ctx.register_udf(always_true(name));
    }
    // Quarry keeps no comments yet (COMMENT ON): no object has a description.
    let (oid, name) = (DataType::Int32, DataType::Utf8);
    ctx.register_udf(no_description(
        "obj_description",
        vec![oid.clone(), name.clone()],
    ));
    ctx.register_udf(no_description(
        "col_description",
        vec![oid.clone(), DataType::Int32],
    ));
    ctx.register_udf(no_description("shobj_description", vec![oid, name]));
    // The bytes of the data files the database's tables read now (their
    // current snapshots); NULL for another database's name.
    ctx.register_udf(create_udf(
        "pg_database_size",
        vec![DataType::Utf8],
        DataType::Int64,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let view = catalog.view();
            let size: u64 = view
                .catalog
                .tables
                .values()
                .flat_map(|t| t.files_at(t.current_snapshot().id))
                .map(|f| f.size_bytes)
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

fn no_description(name: &str, arguments: Vec<DataType>) -> ScalarUDF {
    create_udf(
        name,
        arguments,
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![
                None::<
                    &str,
                >;
                rows(
                    args
                )?
            ]))))
        }),
    )
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
