//! Type names and function signatures as PostgreSQL prints them:
//! `format_type`, `pg_get_function_result`, `pg_get_function_arguments` and
//! `pg_get_function_identity_arguments` (PostgreSQL 15 documentation, "System
//! Catalog Information Functions"; the rules of its `format_type.c` and
//! `ruleutils.c`), over the rows of pg_type and pg_proc that
//! datafusion-pg-catalog exports from PostgreSQL. psql's `\df`, JDBC's
//! `getFunctions` and DBeaver's function lists call them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int16Array, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;

/// A pg_type row, as far as names need it.
struct TypeRow {
    name: String,
    /// The element type of an array type (`_int4` → 23), else 0.
    element: i32,
}

/// A pg_proc row, as far as signatures need it.
struct ProcRow {
    kind: String,
    returns_set: bool,
    result: i32,
    /// The input arguments' types (`proargtypes`).
    inputs: Vec<i32>,
    /// Every argument's type when some are not inputs (`proallargtypes`).
    all: Vec<i32>,
    /// Each argument's mode, when some are not `i` (`proargmodes`).
    modes: Vec<char>,
    /// Each argument's name, `""` for none (`proargnames`).
    names: Vec<String>,
    /// The default values of the last inputs, as PostgreSQL prints them;
    /// None where the stored expression is one Quarry does not decode.
    defaults: Vec<Option<String>>,
}

fn rows(table: &MemTable) -> Vec<RecordBatch> {
    table
        .batches
        .iter()
        .filter_map(|partition| partition.try_read().ok().map(|p| p.clone()))
        .flatten()
        .collect()
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name)?.as_any().downcast_ref()
}

fn int32s<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a Int32Array> {
    batch.column_by_name(name)?.as_any().downcast_ref()
}

fn text(column: Option<&StringArray>, row: usize) -> &str {
    match column {
        Some(c) if !c.is_null(row) => c.value(row),
        _ => "",
    }
}

static TYPES: LazyLock<HashMap<i32, TypeRow>> = LazyLock::new(|| {
    let mut types = HashMap::new();
    let Some(table) = crate::pg_catalog::exported_table("pg_type") else {
        return types;
    };
    for batch in rows(&table) {
        let (Some(oids), Some(names)) = (int32s(&batch, "oid"), strings(&batch, "typname")) else {
            continue;
        };
        let elements = int32s(&batch, "typelem");
        for row in 0..batch.num_rows() {
            types.insert(
                oids.value(row),
                TypeRow {
                    name: names.value(row).to_owned(),
                    element: elements.map_or(0, |e| e.value(row)),
                },
            );
        }
    }
    types
});

static PROCS: LazyLock<HashMap<i32, ProcRow>> = LazyLock::new(|| {
    let mut procs = HashMap::new();
    let Some(table) = crate::pg_catalog::exported_table("pg_proc") else {
        return procs;
    };
    for batch in rows(&table) {
        let Some(oids) = int32s(&batch, "oid") else {
            continue;
        };
        let result = int32s(&batch, "prorettype");
        let sets = batch
            .column_by_name("proretset")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>());
        let defaults_count = batch
            .column_by_name("pronargdefaults")
            .and_then(|c| c.as_any().downcast_ref::<Int16Array>());
        for row in 0..batch.num_rows() {
            let inputs = oid_list(text(strings(&batch, "proargtypes"), row));
            let mut defaults = node_constants(text(strings(&batch, "proargdefaults"), row));
            let wanted = defaults_count.map_or(0, |c| c.value(row).max(0) as usize);
            defaults.resize(wanted, None);
            procs.insert(
                oids.value(row),
                ProcRow {
                    kind: text(strings(&batch, "prokind"), row).to_owned(),
                    returns_set: sets.is_some_and(|s| s.value(row)),
                    result: result.map_or(0, |r| r.value(row)),
                    inputs,
                    all: oid_list(text(strings(&batch, "proallargtypes"), row)),
                    modes: listed(text(strings(&batch, "proargmodes"), row))
                        .iter()
                        .filter_map(|m| m.chars().next())
                        .collect(),
                    names: listed(text(strings(&batch, "proargnames"), row)),
                    defaults,
                },
            );
        }
    }
    procs
});

/// pg_proc's array columns: the export keeps them as text (`['i', 'o']`).
const PROC_ARRAYS: [(&str, bool); 5] = [
    ("proallargtypes", true),
    ("proargmodes", false),
    ("proargnames", false),
    ("proconfig", false),
    ("proacl", false),
];

/// PostgreSQL's pg_proc rows with their array columns as arrays (`oid[]`
/// as int8 lists, which clients read as JDBC reads `oid[]`, as 64-bit
/// integers; the others as text lists), so `array_to_string(proacl,
/// ...)` (psql's `\df+`) and `unnest(proargnames)` work.
pub(crate) static PG_PROC: LazyLock<Result<Arc<MemTable>, String>> = LazyLock::new(|| {
    use datafusion::arrow::array::{Int64Builder, ListBuilder, StringBuilder};
    use datafusion::arrow::datatypes::{Field, Schema};
    let table = crate::pg_catalog::exported_table("pg_proc")
        .ok_or_else(|| "pg_catalog's pg_proc cannot be read".to_owned())?;
    let exported = table.schema();
    let array_of = |name: &str| {
        PROC_ARRAYS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, oids)| *oids)
    };
    let fields: Vec<Field> = exported
        .fields()
        .iter()
        .map(|field| match array_of(field.name()) {
            Some(oids) => Field::new(
                field.name(),
                DataType::new_list(
                    if oids {
                        DataType::Int64
                    } else {
                        DataType::Utf8
                    },
                    true,
                ),
                true,
            ),
            None => field.as_ref().clone(),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut converted = Vec::new();
    for batch in rows(&table) {
        let columns = exported
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                let Some(oids) = array_of(field.name()) else {
                    return column.clone();
                };
                let texts = column.as_any().downcast_ref::<StringArray>();
                let items = |row: usize| -> Option<Vec<String>> {
                    let texts = texts?;
                    let items = listed(texts.is_valid(row).then(|| texts.value(row))?);
                    (!items.is_empty()).then_some(items)
                };
                if oids {
                    let mut list = ListBuilder::new(Int64Builder::new());
                    for row in 0..column.len() {
                        match items(row) {
                            Some(items) => {
                                list.append_value(items.iter().map(|i| i.parse::<i64>().ok()))
                            }
                            None => list.append_null(),
                        }
                    }
                    Arc::new(list.finish()) as ArrayRef
                } else {
                    let mut list = ListBuilder::new(StringBuilder::new());
                    for row in 0..column.len() {
                        match items(row) {
                            Some(items) => list.append_value(items.into_iter().map(Some)),
                            None => list.append_null(),
                        }
                    }
                    Arc::new(list.finish()) as ArrayRef
                }
            })
            .collect();
        converted.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?);
    }
    MemTable::try_new(schema, vec![converted])
        .map(Arc::new)
        .map_err(|e| e.to_string())
});

/// The items of an exported list: `[1034, 26]`, `['i', 'o']`, or an
/// oidvector's `700 701`.
fn listed(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split([',', ' '])
        .map(|item| item.trim().trim_matches('\'').trim_matches('"'))
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn oid_list(text: &str) -> Vec<i32> {
    listed(text).iter().filter_map(|t| t.parse().ok()).collect()
}

/// The constants of a stored expression list (`proargdefaults`, a
/// pg_node_tree such as `({CONST :consttype 16 ... :constvalue 1 [ 0 0 ...
/// ]})`), printed as PostgreSQL's `pg_get_expr` would: booleans, integers,
/// text and NULLs. Other expressions are None.
fn node_constants(tree: &str) -> Vec<Option<String>> {
    tree.split("{")
        .skip(1)
        .map(|node| {
            let field = |name: &str| {
                let start = node.find(&format!(":{name} "))? + name.len() + 2;
                node[start..].split_whitespace().next()
            };
            if !node.starts_with("CONST ") {
                return None;
            }
            let ty: i32 = field("consttype")?.parse().ok()?;
            let type_name = format_type(ty, None);
            if field("constisnull")? == "true" {
                return Some(format!("NULL::{type_name}"));
            }
            let start = node.find('[')? + 1;
            let end = node[start..].find(']')? + start;
            let bytes: Vec<u8> = node[start..end]
                .split_whitespace()
                .filter_map(|b| b.parse::<i16>().ok().map(|b| b as u8))
                .collect();
            let little = |n: usize| -> Option<i64> {
                let mut value = [0u8; 8];
                value[..n].copy_from_slice(bytes.get(..n)?);
                Some(i64::from_le_bytes(value))
            };
            match ty {
                16 => Some(
                    if bytes.first()? != &0 {
                        "true"
                    } else {
                        "false"
                    }
                    .to_owned(),
                ),
                21 => Some((little(2)? as i16).to_string()),
                23 => Some((little(4)? as i32).to_string()),
                20 => Some(little(8)?.to_string()),
                // A varlena with a 4-byte header, then the text.
                25 | 1043 => {
                    let value = std::str::from_utf8(bytes.get(4..)?).ok()?;
                    Some(format!("'{}'::{type_name}", value.replace('\'', "''")))
                }
                _ => None,
            }
        })
        .collect()
}

/// PostgreSQL's `format_type(type, typmod)`: the SQL name of a type, with
/// its modifier when one is given (None: no modifier given, as for
/// `format_type(t, NULL)`). An unknown oid is `???`, as in PostgreSQL; oid 0
/// is `-`.
pub fn format_type(oid: i32, typmod: Option<i32>) -> String {
    if oid == 0 {
        return "-".to_owned();
    }
    let Some(row) = TYPES.get(&oid) else {
        return "???".to_owned();
    };
    if row.element != 0 && row.name.starts_with('_') {
        return format!("{}[]", format_type(row.element, typmod));
    }
    let modifier = typmod.filter(|m| *m >= 0);
    let given = typmod.is_some();
    let with_length = |name: &str, offset: i32| match modifier {
        Some(m) => format!("{name}({})", m - offset),
        None => name.to_owned(),
    };
    let with_precision = |before: &str, after: &str| match modifier {
        Some(p) => format!("{before}({p}){after}"),
        None => format!("{before}{after}"),
    };
    match oid {
        1560 => with_length("bit", 0),
        16 => "boolean".to_owned(),
        1042 if modifier.is_none() && given => "bpchar".to_owned(),
        1042 => with_length("character", 4),
        700 => "real".to_owned(),
        701 => "double precision".to_owned(),
        21 => "smallint".to_owned(),
        23 => "integer".to_owned(),
        20 => "bigint".to_owned(),
        1186 => match modifier {
            // The full field range with a precision.
            Some(m) if (m >> 16) & 0x7fff == 0x7fff && m & 0xffff != 0xffff => {
                format!("interval({})", m & 0xffff)
            }
            _ => "interval".to_owned(),
        },
        1700 => match modifier {
            Some(m) => {
                let m = m - 4;
                format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff)
            }
            None => "numeric".to_owned(),
        },
        1083 => with_precision("time", " without time zone"),
        1266 => with_precision("time", " with time zone"),
        1114 => with_precision("timestamp", " without time zone"),
        1184 => with_precision("timestamp", " with time zone"),
        1562 => with_length("bit varying", 0),
        1043 => with_length("character varying", 4),
        _ => quote_name(&row.name),
    }
}

/// A type name quoted where PostgreSQL's quote_identifier would: not a
/// plain lower-case identifier, or a keyword other than an unreserved one.
fn quote_name(name: &str) -> String {
    const KEYWORDS: [&str; 2] = ["any", "char"];
    if KEYWORDS.contains(&name) {
        format!("\"{name}\"")
    } else {
        crate::pg_catalog::quote_ident(name)
    }
}

impl ProcRow {
    /// Each argument as (mode, name, type).
    fn arguments(&self) -> Vec<(char, &str, i32)> {
        let types = if self.all.is_empty() {
            &self.inputs
        } else {
            &self.all
        };
        types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let mode = self.modes.get(i).copied().unwrap_or('i');
                let name = self.names.get(i).map_or("", String::as_str);
                (mode, name, *ty)
            })
            .collect()
    }

    /// `pg_get_function_result`.
    fn result(&self) -> Option<String> {
        if self.kind == "p" {
            return None;
        }
        let table: Vec<String> = self
            .arguments()
            .into_iter()
            .filter(|(mode, ..)| *mode == 't')
            .map(|(_, name, ty)| format!("{} {}", name, format_type(ty, None)))
            .collect();
        Some(if !table.is_empty() {
            format!("TABLE({})", table.join(", "))
        } else if self.returns_set {
            format!("SETOF {}", format_type(self.result, None))
        } else {
            format_type(self.result, None)
        })
    }

    /// `pg_get_function_arguments` (with defaults and OUT arguments) or
    /// `pg_get_function_identity_arguments` (inputs only).
    fn argument_list(&self, identity: bool) -> String {
        let arguments = self.arguments();
        let inputs = arguments
            .iter()
            .filter(|(mode, ..)| matches!(mode, 'i' | 'b' | 'v'))
            .count();
        let first_default = inputs.saturating_sub(self.defaults.len());
        let mut input = 0;
        let mut printed = Vec::new();
        for (mode, name, ty) in arguments {
            let is_input = matches!(mode, 'i' | 'b' | 'v');
            if mode == 't' || (identity && !is_input) {
                continue;
            }
            let mut argument = match mode {
                'o' => "OUT ".to_owned(),
                'b' => "INOUT ".to_owned(),
                'v' => "VARIADIC ".to_owned(),
                _ => String::new(),
            };
            if !name.is_empty() {
                argument.push_str(&quote_name(name));
                argument.push(' ');
            }
            argument.push_str(&format_type(ty, None));
            if is_input {
                if !identity
                    && input >= first_default
                    && let Some(Some(default)) = self.defaults.get(input - first_default)
                {
                    argument.push_str(" DEFAULT ");
                    argument.push_str(default);
                }
                input += 1;
            }
            printed.push(argument);
        }
        printed.join(", ")
    }
}

/// Registers `format_type` (replacing datafusion-pg-catalog's, which knows
/// a few dozen types; the composite types of CREATE TYPE are looked up in
/// the statement's `catalog`) and the signature functions on `ctx`.
pub fn register(ctx: &SessionContext, catalog: Arc<crate::catalog::QuarryCatalog>) {
    ctx.register_udf(create_udf(
        "format_type",
        vec![DataType::Int64, DataType::Int64],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (types, mods) = (int64s(&arrays[0])?, int64s(&arrays[1])?);
            let view = catalog.view();
            let names: StringArray = types
                .iter()
                .zip(mods.iter())
                .map(|(ty, typmod)| {
                    let ty = ty? as i32;
                    Some(
                        crate::pg_catalog::composite_type_name(&view.catalog, ty)
                            .unwrap_or_else(|| format_type(ty, typmod.map(|m| m as i32))),
                    )
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(names) as ArrayRef))
        }),
    ));
    type Print = fn(&ProcRow) -> Option<String>;
    let signature_functions: [(&str, Print); 4] = [
        // Only a function whose body is SQL (BEGIN ATOMIC ... END) has one;
        // pg_proc's functions are built-ins.
        ("pg_get_function_sqlbody", |_| None),
        ("pg_get_function_result", ProcRow::result),
        ("pg_get_function_arguments", |p| {
            Some(p.argument_list(false))
        }),
        ("pg_get_function_identity_arguments", |p| {
            Some(p.argument_list(true))
        }),
    ];
    for (name, print) in signature_functions {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let printed: StringArray = int64s(&arrays[0])?
                    .iter()
                    .map(|oid| PROCS.get(&(oid? as i32)).and_then(print))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(printed) as ArrayRef))
            }),
        ));
    }
}

fn int64s(array: &ArrayRef) -> DfResult<datafusion::arrow::array::Int64Array> {
    let cast = datafusion::arrow::compute::cast(array, &DataType::Int64)?;
    Ok(datafusion::common::cast::as_int64_array(&cast)?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_print_as_postgresql_prints_them() {
        assert_eq!(format_type(23, None), "integer");
        assert_eq!(format_type(1007, None), "integer[]");
        assert_eq!(format_type(2276, None), "\"any\"");
        assert_eq!(format_type(18, None), "\"char\"");
        assert_eq!(format_type(1043, Some(14)), "character varying(10)");
        assert_eq!(format_type(1015, Some(14)), "character varying(10)[]");
        assert_eq!(format_type(1700, Some((12 << 16) + 2 + 4)), "numeric(12,2)");
        assert_eq!(format_type(1700, Some((12 << 16) + 4)), "numeric(12,0)");
        assert_eq!(format_type(1184, Some(3)), "timestamp(3) with time zone");
        assert_eq!(format_type(1042, Some(-1)), "bpchar");
        assert_eq!(format_type(1042, None), "character");
        assert_eq!(format_type(22, None), "int2vector");
        assert_eq!(format_type(0, None), "-");
        assert_eq!(format_type(987_654, None), "???");
    }

    #[test]
    fn signatures_print_as_postgresql_prints_them() {
        let with_arguments = |arguments: &str| {
            PROCS
                .values()
                .find(|p| p.argument_list(false) == arguments)
                .map(|p| (p.result(), p.argument_list(true)))
        };
        // abs(real) returns real.
        let abs = PROCS.get(&1394).expect("abs(real) is oid 1394");
        assert_eq!(abs.result().as_deref(), Some("real"));
        assert_eq!(abs.argument_list(false), "real");
        // aclexplode has OUT arguments and returns a set of records.
        let (result, identity) =
            with_arguments("acl aclitem[], OUT grantor oid, OUT grantee oid, OUT privilege_type text, OUT is_grantable boolean")
                .expect("aclexplode");
        assert_eq!(result.as_deref(), Some("SETOF record"));
        assert_eq!(identity, "acl aclitem[]");
        // A boolean default is printed.
        assert!(
            PROCS.values().any(|p| p
                .argument_list(false)
                .ends_with("insert_after boolean DEFAULT false")),
            "jsonb_insert's default"
        );
    }
}
