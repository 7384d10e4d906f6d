//! pg_catalog's relation tables, answered from the statement's catalog.
//!
//! datafusion-pg-catalog serves most of pg_catalog (pg_type, pg_proc, ... as
//! PostgreSQL's own rows). The tables that describe relations — pg_namespace,
//! pg_class, pg_attribute, pg_attrdef, pg_constraint, pg_index and
//! pg_description — are built here instead, for three reasons:
//!
//! - **Stable oids.** An object's oid is derived from Quarry's own ids, so it is
//!   the same in every scan, session and node (the crate numbers objects per
//!   scan, so two scans in one query could disagree).
//! - **PostgreSQL's columns and types**, arrays as arrays: `pg_constraint.conkey`
//!   is `int2[]`, `pg_class.reloptions` is `text[]` (SQLAlchemy, psql's `\d+`).
//! - **What Quarry knows**: row counts and sizes, column defaults.
//!
//! Each table is built when the statement is planned, from the catalog
//! version it reads: Quarry's schemas, tables, views, their columns, keys
//! (each PRIMARY KEY and UNIQUE with the index PostgreSQL would build for it)
//! and comments, and the tables of the system schemas (pg_catalog's own keep
//! PostgreSQL's oids, e.g. pg_class 1259). Column lists follow PostgreSQL
//! 16's documentation, chapter 53 ("System Catalogs"). pg_type is the crate's,
//! with its regproc columns turned into oids ([`PG_TYPE`]).

use std::sync::{Arc, LazyLock, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion_pg_catalog::pg_catalog::oid_field::{kind, oid_field};
use quarry_common::catalog::{
    Catalog, Column, ColumnType, CompositeType, Constraint, ConstraintKind, DEFAULT_SCHEMA,
    FieldId, Table, TableId,
};

use crate::catalog::QuarryCatalog;

/// pg_class's own oid: the `classoid` of a relation's description.
const PG_CLASS_OID: i32 = 1259;
/// pg_catalog's namespace oid (PostgreSQL's `PG_CATALOG_NAMESPACE`).
pub const PG_CATALOG_NAMESPACE: i32 = 11;
/// The `public` schema's oid in every PostgreSQL database.
pub const PUBLIC_NAMESPACE: i32 = 2200;
/// information_schema's oid (PostgreSQL assigns it below 16384 at initdb).
const INFORMATION_SCHEMA_NAMESPACE: i32 = 13_283;
/// The first oid PostgreSQL gives user objects (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: i64 = 16384;
/// Oids from here up are named objects without an id of their own (views,
/// system relations), hashed from their names; ids map below it.
const HASHED_OID_BASE: i64 = 1 << 30;

/// The oid of the table or schema with Quarry id `id`: `16384 + id`, wrapped
/// into `[16384, 2^30)` (ids beyond that range repeat oids, see
/// docs/POSTGRESQL.md).
pub fn id_oid(id: u64) -> i32 {
    let span = (HASHED_OID_BASE - FIRST_NORMAL_OID) as u64;
    (FIRST_NORMAL_OID + (id % span) as i64) as i32
}

/// Whether `oid` is in the range of [`id_oid`] (tables and schemas).
pub fn is_id_oid(oid: i32) -> bool {
    (FIRST_NORMAL_OID..HASHED_OID_BASE).contains(&i64::from(oid))
}

/// The oid of a relation that has no Quarry id (a view, a system table): a
/// hash of its schema and name in `[2^30, 2^31)`.
pub fn named_oid(schema: &str, name: &str) -> i32 {
    // FNV-1a: fixed, so every node and release agrees.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.bytes().chain([0]).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (HASHED_OID_BASE + (hash % HASHED_OID_BASE as u64) as i64) as i32
}

/// The oid of the schema `name` in `catalog` (also for system schemas).
pub fn namespace_oid(catalog: &Catalog, name: &str) -> i32 {
    match name {
        "pg_catalog" => PG_CATALOG_NAMESPACE,
        DEFAULT_SCHEMA => PUBLIC_NAMESPACE,
        _ => match catalog.schemas.get(name) {
            Some(id) => id_oid(*id),
            None => static_namespace_oid(name).unwrap_or_else(|| named_oid("", name)),
        },
    }
}

/// Whether `name` is one of the schemas the system provides (pg_catalog,
/// information_schema, Quarry's system schema), readable by every role.
pub fn is_system_namespace(name: &str) -> bool {
    matches!(name, "pg_catalog" | "information_schema" | "pg_toast")
        || name == crate::system::SYSTEM_SCHEMA
}

/// The oid of table `id`.
pub fn table_oid(id: TableId) -> i32 {
    id_oid(id)
}

/// The PostgreSQL type a column of `column_type` has.
pub fn pg_type(column_type: &ColumnType) -> postgres_types::Type {
    use postgres_types::Type;
    match column_type {
        ColumnType::Json => Type::JSON,
        ColumnType::Struct(_) => Type::RECORD,
        // PostgreSQL has one array type per element type (no arrays of
        // arrays, which Quarry refuses as BigQuery does).
        ColumnType::Array(element) => match &element.column_type {
            ColumnType::Boolean => Type::BOOL_ARRAY,
            ColumnType::Int16 => Type::INT2_ARRAY,
            ColumnType::Int32 => Type::INT4_ARRAY,
            ColumnType::Int64 => Type::INT8_ARRAY,
            ColumnType::Float32 => Type::FLOAT4_ARRAY,
            ColumnType::Float64 => Type::FLOAT8_ARRAY,
            ColumnType::Decimal { .. } => Type::NUMERIC_ARRAY,
            ColumnType::Text => Type::TEXT_ARRAY,
            ColumnType::Date => Type::DATE_ARRAY,
            ColumnType::Timestamp => Type::TIMESTAMP_ARRAY,
            ColumnType::TimestampTz => Type::TIMESTAMPTZ_ARRAY,
            ColumnType::Bytea => Type::BYTEA_ARRAY,
            ColumnType::Json => Type::JSON_ARRAY,
            ColumnType::Struct(_) | ColumnType::Array(_) => Type::RECORD_ARRAY,
        },
        ColumnType::Boolean => Type::BOOL,
        ColumnType::Int16 => Type::INT2,
        ColumnType::Int32 => Type::INT4,
        ColumnType::Int64 => Type::INT8,
        ColumnType::Float32 => Type::FLOAT4,
        ColumnType::Float64 => Type::FLOAT8,
        ColumnType::Decimal { .. } => Type::NUMERIC,
        ColumnType::Text => Type::TEXT,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamp => Type::TIMESTAMP,
        ColumnType::TimestampTz => Type::TIMESTAMPTZ,
        ColumnType::Bytea => Type::BYTEA,
    }
}

/// The oids of composite type `composite`: its pg_class row's (the
/// relation of kind `c` that holds its fields), its pg_type row's and its
/// array type's.
pub fn composite_oids(composite: &CompositeType) -> (i32, i32, i32) {
    (
        id_oid(composite.id),
        id_oid(composite.id + 1),
        id_oid(composite.id + 2),
    )
}

/// The pg_type oid of `column` of `table`: its composite type's, or that
/// type's array's, where it is declared as one (`home addr`, `past
/// addr[]`); else the type's [`pg_type`].
pub fn column_type_oid(meta: &Catalog, table: &Table, column: &Column) -> i32 {
    if let Some(composite) = meta.composite_of(table, column.field_id) {
        return composite_oids(composite).1;
    }
    if let ColumnType::Array(element) = &column.column_type
        && let Some(composite) = meta.composite_of(table, element.field_id)
    {
        return composite_oids(composite).2;
    }
    pg_type(&column.column_type).oid() as i32
}

/// The name `format_type` prints for the composite type, or the array of
/// one, with oid `oid` (schema-qualified outside `public`).
pub fn composite_type_name(meta: &Catalog, oid: i32) -> Option<String> {
    meta.types.values().find_map(|composite| {
        let (_, type_oid, array_oid) = composite_oids(composite);
        let name = if composite.schema == DEFAULT_SCHEMA {
            quote_ident(&composite.name)
        } else {
            format!(
                "{}.{}",
                quote_ident(&composite.schema),
                quote_ident(&composite.name)
            )
        };
        if oid == type_oid {
            Some(name)
        } else if oid == array_oid {
            Some(format!("{name}[]"))
        } else {
            None
        }
    })
}

/// pg_type's rows of the composite types of `meta` and their array types,
/// as PostgreSQL's `CREATE TYPE ... AS (...)` makes them (typtype `c`,
/// category `C`, record_in/record_out; the array `_name` with array_in).
fn composite_type_rows(meta: &Catalog) -> Vec<Row> {
    // The oids of the functions PostgreSQL's pg_type names for them.
    const RECORD_IN: i32 = 2290;
    const RECORD_OUT: i32 = 2291;
    const RECORD_RECV: i32 = 2402;
    const RECORD_SEND: i32 = 2403;
    const ARRAY_IN: i32 = 750;
    const ARRAY_OUT: i32 = 751;
    const ARRAY_RECV: i32 = 2400;
    const ARRAY_SEND: i32 = 2401;
    let mut rows = Vec::new();
    for composite in meta.types.values() {
        let (relation, type_oid, array_oid) = composite_oids(composite);
        let namespace = namespace_oid(meta, &composite.schema);
        let common = |oid: i32, name: String| -> Row {
            vec![
                ("oid", int4(oid)),
                ("typname", text(name)),
                ("typnamespace", int4(namespace)),
                ("typowner", int4(BOOTSTRAP_SUPERUSER_OID)),
                ("typlen", int2(-1)),
                ("typbyval", boolean(false)),
                ("typisdefined", boolean(true)),
                ("typdelim", text(",")),
                ("typalign", text("d")),
                ("typstorage", text("x")),
                ("typnotnull", boolean(false)),
                ("typbasetype", int4(0)),
                ("typtypmod", int4(-1)),
                ("typndims", int4(0)),
                ("typcollation", int4(0)),
                ("typispreferred", boolean(false)),
            ]
        };
        let mut row = common(type_oid, composite.name.clone());
        row.extend([
            ("typtype", text("c")),
            ("typcategory", text("C")),
            ("typrelid", int4(relation)),
            ("typelem", int4(0)),
            ("typarray", int4(array_oid)),
            ("typinput", int4(RECORD_IN)),
            ("typoutput", int4(RECORD_OUT)),
            ("typreceive", int4(RECORD_RECV)),
            ("typsend", int4(RECORD_SEND)),
        ]);
        rows.push(row);
        let mut array = common(array_oid, format!("_{}", composite.name));
        array.extend([
            ("typtype", text("b")),
            ("typcategory", text("A")),
            ("typrelid", int4(0)),
            ("typelem", int4(type_oid)),
            ("typarray", int4(0)),
            ("typinput", int4(ARRAY_IN)),
            ("typoutput", int4(ARRAY_OUT)),
            ("typreceive", int4(ARRAY_RECV)),
            ("typsend", int4(ARRAY_SEND)),
        ]);
        rows.push(array);
    }
    rows
}

/// Nullable attributes numbered 1, 2, ... of the `(name, type)`s of
/// `columns`, with no defaults (an index's, a composite type's).
fn numbered_attributes<'a>(
    columns: impl Iterator<Item = (&'a String, &'a ColumnType)>,
) -> Vec<Attribute> {
    columns
        .zip(1..)
        .map(|((name, column_type), number)| Attribute {
            number,
            name: name.clone(),
            type_oid: pg_type(column_type).oid() as i32,
            column_type: Some(column_type.clone()),
            not_null: false,
            default: None,
        })
        .collect()
}

/// The relations of kind `c` that hold the fields of `meta`'s composite
/// types, as PostgreSQL keeps them in pg_class and pg_attribute.
fn composite_relations(meta: &Catalog) -> Vec<Relation> {
    meta.types
        .values()
        .map(|composite| Relation {
            owner: BOOTSTRAP_SUPERUSER_OID,
            acl: None,
            oid: composite_oids(composite).0,
            namespace: namespace_oid(meta, &composite.schema),
            name: composite.name.clone(),
            kind: "c",
            columns: numbered_attributes(
                composite
                    .fields
                    .iter()
                    .map(|field| (&field.name, &field.column_type)),
            ),
            rows: 0.0,
            bytes: 0,
            has_index: false,
            has_triggers: false,
        })
        .collect()
}

/// `attlen`, `attbyval`, `attalign` and `atttypmod` of a column type, as
/// pg_type and PostgreSQL's typmod encoding give them (numeric(p,s) is
/// `(p << 16 | s) + 4`).
fn storage_of(column_type: &ColumnType) -> (i16, bool, &'static str, i32) {
    match *column_type {
        ColumnType::Boolean => (1, true, "c", -1),
        ColumnType::Int16 => (2, true, "s", -1),
        ColumnType::Int32 | ColumnType::Date => (4, true, "i", -1),
        ColumnType::Float32 => (4, true, "i", -1),
        ColumnType::Int64 | ColumnType::Float64 => (8, true, "d", -1),
        ColumnType::Timestamp | ColumnType::TimestampTz => (8, true, "d", -1),
        ColumnType::Decimal { precision, scale } => (
            -1,
            false,
            "i",
            ((i32::from(precision) << 16) | i32::from(scale as u8)) + 4,
        ),
        ColumnType::Text | ColumnType::Bytea | ColumnType::Json => (-1, false, "i", -1),
        ColumnType::Array(_) | ColumnType::Struct(_) => (-1, false, "d", -1),
    }
}

/// The tables built here.
const RELATION_TABLES: [&str; 7] = [
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_attrdef",
    "pg_constraint",
    "pg_index",
    "pg_description",
];

/// Columns whose PostgreSQL type is an array (the export has them as text).
fn array_columns(table: &str) -> &'static [(&'static str, DataType)] {
    const TEXT: DataType = DataType::Utf8;
    const INT2: DataType = DataType::Int16;
    const OID: DataType = DataType::Int32;
    match table {
        "pg_namespace" => &[("nspacl", TEXT)],
        "pg_class" => &[("relacl", TEXT), ("reloptions", TEXT)],
        "pg_attribute" => &[
            ("attacl", TEXT),
            ("attoptions", TEXT),
            ("attfdwoptions", TEXT),
        ],
        "pg_constraint" => &[
            ("conkey", INT2),
            ("confkey", INT2),
            ("conpfeqop", OID),
            ("conppeqop", OID),
            ("conffeqop", OID),
            ("confdelsetcols", INT2),
            ("conexclop", OID),
        ],
        // pg_index's indkey is unnested (SQLAlchemy); its other int2vector
        // and oidvector columns are text ("0 0"), as PostgreSQL sends those
        // types, which SQLAlchemy splits.
        "pg_index" => &[("indkey", INT2)],
        _ => &[],
    }
}

/// The crate's export of pg_attrdef, pg_constraint, pg_index and
/// pg_description, for their column lists (their rows describe PostgreSQL's
/// own system catalogs, whose oids Quarry does not use).
static EXPORTED: LazyLock<
    Result<datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables, String>,
> = LazyLock::new(|| {
    datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables::try_new()
        .map_err(|e| format!("cannot read pg_catalog's column lists: {e}"))
});

/// The crate's export of one of PostgreSQL's own catalog tables (`pg_type`,
/// `pg_proc`), None if it has none of that name or cannot be read.
pub(crate) fn exported_table(name: &str) -> Option<Arc<MemTable>> {
    let exported = EXPORTED.as_ref().ok()?;
    let table = match name {
        "pg_type" => &exported.pg_type,
        "pg_proc" => &exported.pg_proc,
        _ => return None,
    };
    table.try_into_memtable().ok()
}

/// PostgreSQL's pg_type rows with their `regproc` columns (typinput,
/// typoutput, ...) as the functions' oids, as PostgreSQL keeps them: the
/// export has the functions' names, so `typinput = 'array_in'::regproc`
/// (JDBC's type cache), which compares with pg_proc's oid, failed. Its
/// `"char"` columns are marked as such for the wire.
static PG_TYPE: LazyLock<Result<Arc<MemTable>, String>> = LazyLock::new(|| {
    use datafusion::arrow::array::{Array, Int32Array, StringArray};
    let exported = EXPORTED.as_ref().map_err(Clone::clone)?;
    let batches = |table: &MemTable| -> Result<Vec<RecordBatch>, String> {
        let mut all = Vec::new();
        for partition in &table.batches {
            let partition = partition
                .try_read()
                .map_err(|_| "pg_catalog's rows are being written".to_owned())?;
            all.extend(partition.iter().cloned());
        }
        Ok(all)
    };
    let procs = exported
        .pg_proc
        .try_into_memtable()
        .map_err(|e| e.to_string())?;
    let mut oids: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    for batch in batches(&procs)? {
        let names = batch
            .column_by_name("proname")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        let ids = batch
            .column_by_name("oid")
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>().cloned());
        let (Some(names), Some(ids)) = (names, ids) else {
            return Err("pg_proc lacks proname or oid".to_owned());
        };
        for i in 0..batch.num_rows() {
            let oid = oids
                .entry(names.value(i).to_owned())
                .or_insert(ids.value(i));
            *oid = (*oid).min(ids.value(i));
        }
    }
    let types = exported
        .pg_type
        .try_into_memtable()
        .map_err(|e| e.to_string())?;
    let schema = types.schema();
    let is_regproc = |field: &Field| {
        field.data_type() == &DataType::Utf8
            && field.metadata().get(kind_key()).map(String::as_str) == Some(kind::REGPROC)
    };
    // PostgreSQL's one-byte `"char"` columns: described as "char" (oid 18)
    // and sent as one byte in binary, as clients that look types up read
    // them (tokio-postgres reads `typtype` as an i8).
    const CHAR_COLUMNS: [&str; 5] = [
        "typtype",
        "typcategory",
        "typdelim",
        "typalign",
        "typstorage",
    ];
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            if is_regproc(field) {
                oid_field(field.name(), kind::REGPROC, field.is_nullable())
            } else if CHAR_COLUMNS.contains(&field.name().as_str()) {
                let mut metadata = field.metadata().clone();
                metadata.insert(
                    arrow_pg::datatypes::PG_CHAR_KEY.to_owned(),
                    "char".to_owned(),
                );
                field.as_ref().clone().with_metadata(metadata)
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    let converted = Arc::new(Schema::new(fields));
    let mut rows = Vec::new();
    for batch in batches(&types)? {
        let columns = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                if !is_regproc(field) {
                    return column.clone();
                }
                let names = column.as_any().downcast_ref::<StringArray>();
                let ids: Int32Array = (0..column.len())
                    .map(|i| {
                        let name = names.filter(|n| n.is_valid(i)).map(|n| n.value(i))?;
                        // "-" is PostgreSQL's text for no function (oid 0).
                        Some(
                            oids.get(name.trim_start_matches("pg_catalog."))
                                .copied()
                                .unwrap_or(0),
                        )
                    })
                    .collect();
                Arc::new(ids) as datafusion::arrow::array::ArrayRef
            })
            .collect();
        rows.push(RecordBatch::try_new(converted.clone(), columns).map_err(|e| e.to_string())?);
    }
    MemTable::try_new(converted, vec![rows])
        .map(Arc::new)
        .map_err(|e| e.to_string())
});

fn kind_key() -> &'static str {
    datafusion_pg_catalog::pg_catalog::oid_field::OID_ALIAS_KEY
}

/// The schema of one of the relation tables: PostgreSQL 16's columns.
fn table_schema(table: &str) -> DfResult<SchemaRef> {
    let oid = |name: &str, kind: &str| oid_field(name, kind, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let text_null = |name: &str| Field::new(name, DataType::Utf8, true);
    let int2 = |name: &str| Field::new(name, DataType::Int16, false);
    let int4 = |name: &str| Field::new(name, DataType::Int32, false);
    let boolean = |name: &str| Field::new(name, DataType::Boolean, false);
    let text_array = |name: &str| Field::new(name, DataType::new_list(DataType::Utf8, true), true);
    let fields = match table {
        "pg_namespace" => vec![
            oid("oid", kind::OID),
            text("nspname"),
            oid("nspowner", kind::OID),
            text_array("nspacl"),
        ],
        "pg_class" => vec![
            oid("oid", kind::OID),
            text("relname"),
            oid("relnamespace", kind::REGNAMESPACE),
            oid("reltype", kind::REGTYPE),
            oid("reloftype", kind::REGTYPE),
            oid("relowner", kind::OID),
            oid("relam", kind::OID),
            oid("relfilenode", kind::OID),
            oid("reltablespace", kind::OID),
            int4("relpages"),
            Field::new("reltuples", DataType::Float32, false),
            int4("relallvisible"),
            oid("reltoastrelid", kind::REGCLASS),
            boolean("relhasindex"),
            boolean("relisshared"),
            text("relpersistence"),
            text("relkind"),
            int2("relnatts"),
            int2("relchecks"),
            boolean("relhasrules"),
            boolean("relhastriggers"),
            boolean("relhassubclass"),
            boolean("relrowsecurity"),
            boolean("relforcerowsecurity"),
            boolean("relispopulated"),
            text("relreplident"),
            boolean("relispartition"),
            oid("relrewrite", kind::OID),
            text("relfrozenxid"),
            text("relminmxid"),
            text_array("relacl"),
            text_array("reloptions"),
            text_null("relpartbound"),
        ],
        "pg_attribute" => vec![
            // oid, as PostgreSQL declares them (so `attrelid = $1` is an
            // oid parameter, as tokio-postgres binds it).
            oid("attrelid", kind::OID),
            text("attname"),
            oid("atttypid", kind::OID),
            int2("attlen"),
            int2("attnum"),
            int4("attcacheoff"),
            int4("atttypmod"),
            int2("attndims"),
            boolean("attbyval"),
            text("attalign"),
            text("attstorage"),
            text("attcompression"),
            boolean("attnotnull"),
            boolean("atthasdef"),
            boolean("atthasmissing"),
            text("attidentity"),
            text("attgenerated"),
            boolean("attisdropped"),
            boolean("attislocal"),
            int2("attinhcount"),
            int2("attstattarget"),
            oid("attcollation", kind::OID),
            text_array("attacl"),
            text_array("attoptions"),
            text_array("attfdwoptions"),
            text_null("attmissingval"),
        ],
        _ => {
            let exported = EXPORTED
                .as_ref()
                .map_err(|e| DataFusionError::Internal(e.clone()))?;
            let table_rows = match table {
                "pg_attrdef" => &exported.pg_attrdef,
                "pg_constraint" => &exported.pg_constraint,
                "pg_index" => &exported.pg_index,
                _ => &exported.pg_description,
            };
            let exported_schema = table_rows.try_into_memtable()?.schema();
            return Ok(postgres_schema(table, &exported_schema));
        }
    };
    Ok(Arc::new(Schema::new(fields)))
}

/// The export's schema with array columns as lists.
fn postgres_schema(table: &str, exported: &Schema) -> SchemaRef {
    let arrays = array_columns(table);
    let fields: Vec<Field> = exported
        .fields()
        .iter()
        .map(
            |field| match arrays.iter().find(|(name, _)| name == field.name()) {
                Some((_, element)) => Field::new(
                    field.name(),
                    DataType::new_list(element.clone(), true),
                    true,
                ),
                None => field.as_ref().clone(),
            },
        )
        .collect();
    Arc::new(Schema::new(fields))
}

/// The oids PostgreSQL gives its own catalogs (fixed in its source, e.g.
/// `CATALOG(pg_class,1259,...)`), which clients compare `classoid` with.
fn system_relation_oid(name: &str) -> Option<i32> {
    Some(match name {
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_proc" => 1255,
        "pg_class" => 1259,
        "pg_authid" => 1260,
        "pg_database" => 1262,
        "pg_attrdef" => 2604,
        "pg_constraint" => 2606,
        "pg_description" => 2609,
        "pg_index" => 2610,
        "pg_namespace" => 2615,
        _ => return None,
    })
}

/// PostgreSQL's namespaces that Quarry's catalog does not hold.
fn static_namespace_oid(name: &str) -> Option<i32> {
    match name {
        "pg_catalog" => Some(PG_CATALOG_NAMESPACE),
        "pg_toast" => Some(99),
        "information_schema" => Some(INFORMATION_SCHEMA_NAMESPACE),
        _ => None,
    }
}

/// One catalog row: values by column name; columns not named are NULL, or
/// the type's zero value (false, 0, '') where the column is NOT NULL.
type Row = Vec<(&'static str, ScalarValue)>;

fn text(value: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(value.into()))
}

fn int2(value: i16) -> ScalarValue {
    ScalarValue::Int16(Some(value))
}

fn int4(value: i32) -> ScalarValue {
    ScalarValue::Int32(Some(value))
}

fn boolean(value: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(value))
}

fn int2_array(values: impl IntoIterator<Item = i16>) -> ScalarValue {
    let values: Vec<ScalarValue> = values.into_iter().map(int2).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int16))
}

/// `rows` as a batch of `schema`.
fn rows_batch(schema: &SchemaRef, rows: &[Row]) -> DfResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let missing = if field.is_nullable() {
                ScalarValue::try_from(field.data_type())?
            } else {
                ScalarValue::new_default(field.data_type())?
            };
            let values = rows
                .iter()
                .map(|row| {
                    let value = row
                        .iter()
                        .find(|(name, _)| *name == field.name())
                        .map_or_else(|| missing.clone(), |(_, value)| value.clone());
                    if &value.data_type() == field.data_type() {
                        Ok(value)
                    } else {
                        value.cast_to(field.data_type())
                    }
                })
                .collect::<DfResult<Vec<_>>>()?;
            if values.is_empty() {
                Ok(datafusion::arrow::array::new_empty_array(field.data_type()))
            } else {
                ScalarValue::iter_to_array(values)
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A relation Quarry lists in pg_class.
struct Relation {
    oid: i32,
    namespace: i32,
    name: String,
    /// 'r' (table), 'v' (view) or 'i' (the index of a key).
    kind: &'static str,
    columns: Vec<Attribute>,
    rows: f32,
    bytes: u64,
    /// Whether a key's index belongs to it.
    has_index: bool,
    /// Whether a foreign key references it or is declared on it (PostgreSQL
    /// keeps such keys with triggers; psql lists them only then).
    has_triggers: bool,
    /// The oid of its owner.
    owner: i32,
    /// Its `aclitem[]` text (None until something was granted on it).
    acl: Option<Vec<String>>,
}

/// The oid of the owner of `object` (the bootstrap superuser's, or
/// PostgreSQL's 10 before any role exists).
fn owner_oid(meta: &Catalog, object: &quarry_common::roles::Securable) -> i32 {
    meta.owner_of(object)
        .map_or(BOOTSTRAP_SUPERUSER_OID, crate::pg_roles::role_oid)
}

/// The oid PostgreSQL gives its bootstrap superuser.
const BOOTSTRAP_SUPERUSER_OID: i32 = 10;

/// An `aclitem[]` as a list of text; NULL (PostgreSQL's default ACL) for
/// None.
fn text_array(values: Option<Vec<String>>) -> ScalarValue {
    match values {
        Some(values) => {
            let values: Vec<ScalarValue> = values.into_iter().map(text).collect();
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
        }
        None => ScalarValue::try_from(&DataType::new_list(DataType::Utf8, true))
            .unwrap_or(ScalarValue::Null),
    }
}

/// A column of a [`Relation`], as pg_attribute describes it.
struct Attribute {
    number: i16,
    name: String,
    type_oid: i32,
    column_type: Option<ColumnType>,
    not_null: bool,
    /// The default's SQL text.
    default: Option<String>,
}

tokio::task_local! {
    /// Set while a relation's columns are read for pg_catalog.
    static BUILDING: ();
}

/// pg_catalog: the crate's tables, with the relation tables built here.
pub struct PgCatalogSchema {
    inner: Arc<dyn SchemaProvider>,
    catalog: Weak<QuarryCatalog>,
}

impl std::fmt::Debug for PgCatalogSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCatalogSchema").finish_non_exhaustive()
    }
}

impl PgCatalogSchema {
    /// pg_catalog over `inner` (the crate's provider) for `catalog`.
    pub fn new(inner: Arc<dyn SchemaProvider>, catalog: &Arc<QuarryCatalog>) -> Self {
        PgCatalogSchema {
            inner,
            catalog: Arc::downgrade(catalog),
        }
    }

    /// Every relation Quarry has: the user schemas' tables and views, and the
    /// system schemas' tables other than pg_catalog's (PostgreSQL's rows list
    /// those).
    async fn relations(&self, catalog: &QuarryCatalog) -> DfResult<Vec<Relation>> {
        let view = catalog.view();
        let meta = &view.catalog;
        let mut relations = table_relations(meta);
        relations.extend(composite_relations(meta));
        // The index PostgreSQL builds for each PRIMARY KEY and UNIQUE (Quarry
        // keeps none, but psql, JDBC and SQLAlchemy read keys through them).
        for key in keys(meta) {
            let Some(index) = key.index else { continue };
            relations.push(Relation {
                owner: BOOTSTRAP_SUPERUSER_OID,
                acl: None,
                oid: index,
                namespace: key.namespace,
                name: key.constraint.name.clone(),
                kind: "i",
                columns: numbered_attributes(
                    key.columns
                        .iter()
                        .map(|column| (&column.name, &column.column_type)),
                ),
                rows: 0.0,
                bytes: 0,
                has_index: false,
                has_triggers: false,
            });
        }
        // Views, and the tables of system schemas, take their columns from
        // their providers (a view's from its planned query).
        let mut named: Vec<(String, String, &'static str)> = meta
            .views
            .values()
            .map(|v| (v.schema.clone(), v.name.clone(), "v"))
            .collect();
        for schema in catalog.schema_names() {
            if meta.schemas.contains_key(&schema) {
                continue;
            }
            let names = if schema == "pg_catalog" {
                self.inner.table_names()
            } else {
                catalog
                    .schema(&schema)
                    .map(|provider| provider.table_names())
                    .unwrap_or_default()
            };
            // pg_catalog's tables are PostgreSQL's ordinary tables; the
            // other system schemas' are computed, as PostgreSQL's views are.
            let kind = if schema == "pg_catalog" { "r" } else { "v" };
            named.extend(names.into_iter().map(|name| (schema.clone(), name, kind)));
        }
        for (schema, name, kind) in named {
            let fields = if schema == "pg_catalog" && RELATION_TABLES.contains(&name.as_str()) {
                table_schema(&name)?.fields().to_vec()
            } else if schema == "pg_catalog" {
                match self.inner.table(&name).await {
                    Ok(Some(table)) => table.schema().fields().to_vec(),
                    _ => Vec::new(),
                }
            } else if meta.view(&schema, &name).is_some() && BUILDING.try_with(|_| ()).is_ok() {
                // A view planned while pg_catalog is being built (a view over
                // pg_class) would build it again: its columns are listed as
                // text.
                meta.view(&schema, &name).map_or_else(Vec::new, |v| {
                    v.columns
                        .iter()
                        .map(|c| Arc::new(Field::new(c, DataType::Utf8, true)))
                        .collect()
                })
            } else {
                // A view that no longer plans (a table it read was dropped)
                // is listed without columns, as its use would fail.
                let provider = catalog.schema(&schema);
                match provider {
                    Some(provider) => match BUILDING.scope((), provider.table(&name)).await {
                        Ok(Some(table)) => table.schema().fields().to_vec(),
                        _ => Vec::new(),
                    },
                    None => continue,
                }
            };
            let view = quarry_common::roles::Securable::View(schema.clone(), name.clone());
            let (owner, acl) = match kind {
                "v" if meta.view(&schema, &name).is_some() => {
                    (owner_oid(meta, &view), meta.acl_text(&view))
                }
                _ => (BOOTSTRAP_SUPERUSER_OID, None),
            };
            relations.push(Relation {
                owner,
                acl,
                oid: match system_relation_oid(&name) {
                    Some(oid) if schema == "pg_catalog" => oid,
                    _ => named_oid(&schema, &name),
                },
                namespace: namespace_oid(meta, &schema),
                kind,
                columns: fields
                    .iter()
                    .enumerate()
                    .map(|(i, field)| {
                        let column_type = crate::types::column_type_of(field.data_type()).ok();
                        Attribute {
                            number: i16::try_from(i + 1).unwrap_or(i16::MAX),
                            name: field.name().clone(),
                            type_oid: column_type
                                .as_ref()
                                .map(|t| pg_type(t).oid() as i32)
                                .unwrap_or_else(|| {
                                    arrow_pg::datatypes::into_pg_type(field.data_type())
                                        .map_or(25, |t| t.oid() as i32)
                                }),
                            column_type,
                            not_null: false,
                            default: None,
                        }
                    })
                    .collect(),
                name,
                rows: 0.0,
                bytes: 0,
                has_index: false,
                has_triggers: false,
            });
        }
        Ok(relations)
    }

    async fn build(&self, table: &str) -> DfResult<Arc<dyn TableProvider>> {
        let catalog = self
            .catalog
            .upgrade()
            .ok_or_else(|| DataFusionError::Plan("the session has ended".to_owned()))?;
        let schema = table_schema(table)?;
        let rows: Vec<Row> = match table {
            "pg_namespace" => namespace_rows(&catalog),
            "pg_class" => self
                .relations(&catalog)
                .await?
                .iter()
                .map(class_row)
                .collect(),
            "pg_attribute" => self
                .relations(&catalog)
                .await?
                .iter()
                .flat_map(|relation| {
                    relation
                        .columns
                        .iter()
                        .map(|column| attribute_row(relation.oid, column))
                })
                .collect(),
            // Only tables have defaults.
            "pg_attrdef" => table_relations(&catalog.view().catalog)
                .iter()
                .flat_map(|relation| {
                    relation.columns.iter().filter_map(|column| {
                        let default = column.default.as_ref()?;
                        Some(vec![
                            (
                                "oid",
                                int4(named_oid(
                                    &relation.oid.to_string(),
                                    &column.number.to_string(),
                                )),
                            ),
                            ("adrelid", int4(relation.oid)),
                            ("adnum", int2(column.number)),
                            ("adbin", text(default.clone())),
                        ])
                    })
                })
                .collect(),
            "pg_constraint" => keys(&catalog.view().catalog)
                .iter()
                .map(constraint_row)
                .collect(),
            "pg_index" => keys(&catalog.view().catalog)
                .iter()
                .filter_map(index_row)
                .collect(),
            _ => description_rows(&catalog.view().catalog),
        };
        let batch = rows_batch(&schema, &rows)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

fn namespace_rows(catalog: &QuarryCatalog) -> Vec<Row> {
    let view = catalog.view();
    let meta = &view.catalog;
    catalog
        .schema_names()
        .into_iter()
        .chain(["pg_toast".to_owned(), "information_schema".to_owned()])
        .map(|name| {
            vec![
                ("oid", int4(namespace_oid(meta, &name))),
                ("nspowner", {
                    let schema = quarry_common::roles::Securable::Schema(name.clone());
                    int4(if meta.schemas.contains_key(&name) {
                        owner_oid(meta, &schema)
                    } else {
                        BOOTSTRAP_SUPERUSER_OID
                    })
                }),
                (
                    "nspacl",
                    text_array(
                        meta.acl_text(&quarry_common::roles::Securable::Schema(name.clone())),
                    ),
                ),
                ("nspname", text(name)),
            ]
        })
        .collect()
}

/// Quarry's tables as pg_class and pg_attribute describe them.
fn table_relations(meta: &Catalog) -> Vec<Relation> {
    let mut relations = Vec::new();
    for table in meta.tables.values() {
        let snapshot = table.current_snapshot();
        let object = quarry_common::roles::Securable::Table(table.id);
        relations.push(Relation {
            owner: owner_oid(meta, &object),
            acl: meta.acl_text(&object),
            oid: table_oid(table.id),
            namespace: namespace_oid(meta, &table.schema),
            name: table.name.clone(),
            kind: "r",
            columns: table
                .columns
                .iter()
                .map(|column| Attribute {
                    number: i16::try_from(column.field_id).unwrap_or(i16::MAX),
                    name: column.name.clone(),
                    type_oid: column_type_oid(meta, table, column),
                    column_type: Some(column.column_type.clone()),
                    not_null: !column.nullable,
                    default: column.default.as_ref().map(|datum| {
                        default_sql(
                            &crate::data_file::scalar_of(Some(datum), &column.column_type),
                            &column.column_type,
                        )
                    }),
                })
                .collect(),
            rows: snapshot.row_count as f32,
            bytes: table.current_bytes(),
            has_index: meta.notes.get(&table.id).is_some_and(|n| {
                n.constraints
                    .iter()
                    .any(|c| !matches!(c.kind, ConstraintKind::ForeignKey { .. }))
            }),
            has_triggers: meta.notes.iter().any(|(id, n)| {
                n.constraints.iter().any(|c| match &c.kind {
                    ConstraintKind::ForeignKey { table: target, .. } => {
                        *id == table.id || *target == table.id
                    }
                    _ => false,
                })
            }),
        });
    }
    relations
}

/// A declared key of a live table, with the oids pg_catalog gives it.
struct Key<'a> {
    table: &'a Table,
    table_oid: i32,
    namespace: i32,
    constraint: &'a Constraint,
    /// The constraint's oid.
    oid: i32,
    /// Its index's oid (PRIMARY KEY, UNIQUE).
    index: Option<i32>,
    /// The constrained columns, in order.
    columns: Vec<&'a Column>,
    /// A foreign key's referenced table, its oid, columns and key index.
    referenced: Option<(&'a Table, i32, Vec<&'a Column>, Option<i32>)>,
}

/// The oid of the index of key `name` of the table with oid `table`.
fn index_oid(table: i32, name: &str) -> i32 {
    named_oid(&table.to_string(), &format!("index {name}"))
}

/// Every declared constraint of the live tables, in table order; a foreign
/// key whose referenced table is gone is left out.
fn keys(meta: &Catalog) -> Vec<Key<'_>> {
    fn columns<'a>(table: &'a Table, ids: &[FieldId]) -> Vec<&'a Column> {
        ids.iter()
            .filter_map(|id| table.columns.iter().find(|c| c.field_id == *id))
            .collect()
    }
    let mut keys = Vec::new();
    for (id, notes) in &meta.notes {
        let Some(table) = meta.table_by_id(*id) else {
            continue;
        };
        let oid = table_oid(table.id);
        for constraint in &notes.constraints {
            let index = match constraint.kind {
                ConstraintKind::PrimaryKey(_) | ConstraintKind::Unique(_) => {
                    Some(index_oid(oid, &constraint.name))
                }
                ConstraintKind::ForeignKey { .. } => None,
            };
            let referenced = match &constraint.kind {
                ConstraintKind::ForeignKey {
                    table: target,
                    referenced,
                    ..
                } => {
                    let Some(target) = meta.table_by_id(*target) else {
                        continue;
                    };
                    let target_oid = table_oid(target.id);
                    // The referenced key's index (PostgreSQL's conindid).
                    let key_index = meta.notes.get(&target.id).and_then(|n| {
                        n.constraints.iter().find_map(|c| match &c.kind {
                            ConstraintKind::PrimaryKey(k) | ConstraintKind::Unique(k)
                                if k == referenced =>
                            {
                                Some(index_oid(target_oid, &c.name))
                            }
                            _ => None,
                        })
                    });
                    Some((
                        target.as_ref(),
                        target_oid,
                        columns(target, referenced),
                        key_index,
                    ))
                }
                _ => None,
            };
            keys.push(Key {
                table,
                table_oid: oid,
                namespace: namespace_oid(meta, &table.schema),
                constraint,
                oid: named_oid(&oid.to_string(), &format!("constraint {}", constraint.name)),
                index,
                columns: columns(table, constraint.kind.columns()),
                referenced,
            });
        }
    }
    keys
}

fn attnums(columns: &[&Column]) -> ScalarValue {
    int2_array(
        columns
            .iter()
            .map(|c| i16::try_from(c.field_id).unwrap_or(i16::MAX)),
    )
}

fn constraint_row(key: &Key<'_>) -> Row {
    let (contype, foreign) = match key.constraint.kind {
        ConstraintKind::PrimaryKey(_) => ("p", false),
        ConstraintKind::Unique(_) => ("u", false),
        ConstraintKind::ForeignKey { .. } => ("f", true),
    };
    let mut row = vec![
        ("oid", int4(key.oid)),
        ("conname", text(key.constraint.name.clone())),
        ("connamespace", int4(key.namespace)),
        ("contype", text(contype)),
        ("condeferrable", boolean(false)),
        ("condeferred", boolean(false)),
        ("convalidated", boolean(true)),
        ("conrelid", int4(key.table_oid)),
        ("contypid", int4(0)),
        ("conparentid", int4(0)),
        ("conislocal", boolean(true)),
        ("coninhcount", int2(0)),
        ("connoinherit", boolean(true)),
        ("conkey", attnums(&key.columns)),
        ("confupdtype", text(if foreign { "a" } else { " " })),
        ("confdeltype", text(if foreign { "a" } else { " " })),
        ("confmatchtype", text(if foreign { "s" } else { " " })),
    ];
    match &key.referenced {
        Some((_, target_oid, columns, key_index)) => {
            row.push(("confrelid", int4(*target_oid)));
            row.push(("confkey", attnums(columns)));
            row.push(("conindid", int4(key_index.unwrap_or(0))));
        }
        None => {
            row.push(("confrelid", int4(0)));
            row.push(("conindid", int4(key.index.unwrap_or(0))));
        }
    }
    row
}

fn index_row(key: &Key<'_>) -> Option<Row> {
    let index = key.index?;
    let count = i16::try_from(key.columns.len()).unwrap_or(i16::MAX);
    let zeros = |n: i16| text(vec!["0"; n as usize].join(" "));
    Some(vec![
        ("indexrelid", int4(index)),
        ("indrelid", int4(key.table_oid)),
        ("indnatts", int2(count)),
        ("indnkeyatts", int2(count)),
        ("indisunique", boolean(true)),
        (
            "indisprimary",
            boolean(matches!(key.constraint.kind, ConstraintKind::PrimaryKey(_))),
        ),
        ("indimmediate", boolean(true)),
        ("indisvalid", boolean(true)),
        ("indisready", boolean(true)),
        ("indislive", boolean(true)),
        ("indkey", attnums(&key.columns)),
        ("indcollation", zeros(count)),
        ("indclass", zeros(count)),
        ("indoption", zeros(count)),
    ])
}

/// COMMENT ON TABLE / COLUMN, as pg_description rows of pg_class objects.
fn description_rows(meta: &Catalog) -> Vec<Row> {
    let mut rows = Vec::new();
    for (id, notes) in &meta.notes {
        let Some(table) = meta.table_by_id(*id) else {
            continue;
        };
        let oid = table_oid(table.id);
        let row = |subid: i32, description: &str| {
            vec![
                ("objoid", int4(oid)),
                ("classoid", int4(PG_CLASS_OID)),
                ("objsubid", int4(subid)),
                ("description", text(description)),
            ]
        };
        if let Some(comment) = &notes.comment {
            rows.push(row(0, comment));
        }
        for (field, comment) in &notes.column_comments {
            rows.push(row(*field as i32, comment));
        }
    }
    rows
}

/// The comment on the object `oid` of catalog `class` (`pg_class`): a
/// table's (`column` 0) or one of its columns' (`column` its attnum).
pub fn description(meta: &Catalog, oid: i32, column: i32) -> Option<String> {
    let table = meta.tables.values().find(|t| table_oid(t.id) == oid)?;
    let notes = meta.notes.get(&table.id)?;
    if column == 0 {
        notes.comment.clone()
    } else {
        notes
            .column_comments
            .get(&u32::try_from(column).ok()?)
            .cloned()
    }
}

/// `pg_get_constraintdef(oid)`: the constraint's definition as PostgreSQL
/// writes it (`PRIMARY KEY (id)`, `FOREIGN KEY (a) REFERENCES t(id)`).
pub fn constraint_definition(meta: &Catalog, oid: i32) -> Option<String> {
    let keys = keys(meta);
    let key = keys.iter().find(|k| k.oid == oid)?;
    let names = |columns: &[&Column]| {
        columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(match &key.constraint.kind {
        ConstraintKind::PrimaryKey(_) => format!("PRIMARY KEY ({})", names(&key.columns)),
        ConstraintKind::Unique(_) => format!("UNIQUE ({})", names(&key.columns)),
        ConstraintKind::ForeignKey { .. } => {
            let (target, _, referenced, _) = key.referenced.as_ref()?;
            let target_name = if target.schema == key.table.schema {
                quote_ident(&target.name)
            } else {
                format!(
                    "{}.{}",
                    quote_ident(&target.schema),
                    quote_ident(&target.name)
                )
            };
            format!(
                "FOREIGN KEY ({}) REFERENCES {target_name}({})",
                names(&key.columns),
                names(referenced)
            )
        }
    })
}

/// `pg_get_indexdef(oid [, column, pretty])`: the CREATE INDEX of a key's
/// index, or (column > 0) that column of it.
pub fn index_definition(meta: &Catalog, oid: i32, column: i32) -> Option<String> {
    let keys = keys(meta);
    let key = keys.iter().find(|k| k.index == Some(oid))?;
    // pg_get_indexdef(index, n, pretty) with n > 0: that key column alone
    // (empty past the last), as JDBC's getIndexInfo names each column.
    if column > 0 {
        let nth = usize::try_from(column - 1)
            .ok()
            .and_then(|i| key.columns.get(i));
        return Some(nth.map(|c| quote_ident(&c.name)).unwrap_or_default());
    }
    Some(format!(
        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
        quote_ident(&key.constraint.name),
        quote_ident(&key.table.schema),
        quote_ident(&key.table.name),
        key.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// An identifier as PostgreSQL's quote_ident writes it: bare when it is
/// lower case letters, digits and underscores not starting with a digit.
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn class_row(relation: &Relation) -> Row {
    let pages = relation.bytes.div_ceil(8192);
    vec![
        ("oid", int4(relation.oid)),
        ("relname", text(relation.name.clone())),
        ("relnamespace", int4(relation.namespace)),
        ("relowner", int4(relation.owner)),
        ("relacl", text_array(relation.acl.clone())),
        (
            "relam",
            int4(match relation.kind {
                "r" => 2,   // heap
                "i" => 403, // btree
                _ => 0,
            }),
        ),
        ("relhasindex", boolean(relation.has_index)),
        ("relhastriggers", boolean(relation.has_triggers)),
        ("relfilenode", int4(relation.oid)),
        ("relpages", int4(i32::try_from(pages).unwrap_or(i32::MAX))),
        ("reltuples", ScalarValue::Float32(Some(relation.rows))),
        ("relpersistence", text("p")),
        ("relkind", text(relation.kind)),
        (
            "relnatts",
            int2(i16::try_from(relation.columns.len()).unwrap_or(i16::MAX)),
        ),
        ("relispopulated", boolean(true)),
        ("relreplident", text("d")),
        ("relfrozenxid", text("0")),
        ("relminmxid", text("0")),
    ]
}

fn attribute_row(relation: i32, column: &Attribute) -> Row {
    let (len, by_value, align, typmod) = column
        .column_type
        .as_ref()
        .map_or((-1, false, "i", -1), storage_of);
    vec![
        ("attrelid", int4(relation)),
        ("attname", text(column.name.clone())),
        ("atttypid", int4(column.type_oid)),
        ("attlen", int2(len)),
        ("attnum", int2(column.number)),
        ("attcacheoff", int4(-1)),
        ("atttypmod", int4(typmod)),
        ("attbyval", boolean(by_value)),
        ("attalign", text(align)),
        ("attstorage", text(if len == -1 { "x" } else { "p" })),
        ("attcompression", text("")),
        ("attnotnull", boolean(column.not_null)),
        ("atthasdef", boolean(column.default.is_some())),
        ("attidentity", text("")),
        ("attgenerated", text("")),
        ("attislocal", boolean(true)),
        ("attstattarget", int2(-1)),
        (
            "attcollation",
            int4(if column.type_oid == 25 { 100 } else { 0 }),
        ),
    ]
}

/// A column default as PostgreSQL's `pg_get_expr` writes it: numbers and
/// booleans bare, other values quoted and cast to the column's type.
fn default_sql(value: &ScalarValue, column_type: &ColumnType) -> String {
    if value.is_null() {
        return "NULL".to_owned();
    }
    match column_type {
        ColumnType::Boolean
        | ColumnType::Int16
        | ColumnType::Int32
        | ColumnType::Int64
        | ColumnType::Float32
        | ColumnType::Float64
        | ColumnType::Decimal { .. } => value.to_string(),
        _ => format!(
            "'{}'::{}",
            value.to_string().replace('\'', "''"),
            match column_type {
                ColumnType::Text => "text".to_owned(),
                other => other.to_string(),
            }
        ),
    }
}

impl PgCatalogSchema {
    /// pg_settings: the session's settings (`name`, `setting`, and
    /// `context`: `internal` for those fixed at build, `user` for those SET
    /// changes), in the crate's columns, the others NULL.
    async fn settings_table(&self) -> DfResult<Arc<dyn TableProvider>> {
        let catalog = self
            .catalog
            .upgrade()
            .ok_or_else(|| DataFusionError::Plan("the session has ended".to_owned()))?;
        let schema = self
            .inner
            .table("pg_settings")
            .await?
            .ok_or_else(|| DataFusionError::Internal("pg_settings is missing".to_owned()))?
            .schema();
        let settings = catalog.settings();
        let rows = settings.len();
        let text = |values: Vec<Option<&str>>| -> datafusion::arrow::array::ArrayRef {
            Arc::new(datafusion::arrow::array::StringArray::from(values))
        };
        let columns = schema
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "name" => Ok(text(
                    settings.iter().map(|(n, _)| Some(n.as_str())).collect(),
                )),
                "setting" => Ok(text(
                    settings.iter().map(|(_, v)| Some(v.as_str())).collect(),
                )),
                "context" => Ok(text(
                    settings
                        .iter()
                        .map(|(n, _)| {
                            Some(if crate::session::is_preset_setting(n) {
                                "internal"
                            } else {
                                "user"
                            })
                        })
                        .collect(),
                )),
                _ => Ok(datafusion::arrow::array::new_null_array(
                    field.data_type(),
                    rows,
                )),
            })
            .collect::<DfResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.push(crate::pg_activity::NAME.to_owned());
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if name == crate::pg_activity::NAME {
            let catalog = self
                .catalog
                .upgrade()
                .ok_or_else(|| DataFusionError::Plan("the session has ended".to_owned()))?;
            return crate::pg_activity::table(catalog.jobs().as_ref(), &catalog.viewer())
                .await
                .map(Some);
        }
        if RELATION_TABLES.contains(&name.as_str()) {
            return self.build(&name).await.map(Some);
        }
        if name == "pg_settings" {
            return self.settings_table().await.map(Some);
        }
        if let Some(catalog) = self.catalog.upgrade()
            && let Some(table) = crate::pg_roles::table(&catalog.view().catalog, &name)
        {
            return table.map(Some);
        }
        if name == "pg_proc" {
            let table = crate::pg_signatures::PG_PROC
                .as_ref()
                .map_err(|e| DataFusionError::Internal(e.clone()))?;
            return Ok(Some(table.clone()));
        }
        if name == "pg_type" {
            let table = PG_TYPE
                .as_ref()
                .map_err(|e| DataFusionError::Internal(e.clone()))?;
            // PostgreSQL's types, then the composite types of CREATE TYPE.
            let user_types = match self.catalog.upgrade() {
                Some(catalog) => composite_type_rows(&catalog.view().catalog),
                None => Vec::new(),
            };
            if user_types.is_empty() {
                return Ok(Some(table.clone()));
            }
            let schema = table.schema();
            let mut batches = Vec::new();
            for partition in &table.batches {
                let partition = partition.read().await;
                batches.extend(partition.iter().cloned());
            }
            batches.push(rows_batch(&schema, &user_types)?);
            return Ok(Some(Arc::new(MemTable::try_new(schema, vec![batches])?)));
        }
        self.inner.table(&name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(crate::pg_activity::NAME) || self.inner.table_exist(name)
    }
}

/// The columns of every relation table here are PostgreSQL's, with arrays as
/// lists (checked against the export the crate ships).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_lists_and_column_lists_are_postgresql_s() {
        let constraint = table_schema("pg_constraint").unwrap();
        let conkey = constraint.field_with_name("conkey").unwrap();
        assert_eq!(
            conkey.data_type(),
            &DataType::new_list(DataType::Int16, true)
        );
        assert_eq!(table_schema("pg_class").unwrap().fields().len(), 33);
        assert_eq!(table_schema("pg_attribute").unwrap().fields().len(), 26);
        assert_eq!(table_schema("pg_index").unwrap().fields().len(), 21);
        let index = table_schema("pg_index").unwrap();
        assert_eq!(
            index.field_with_name("indoption").unwrap().data_type(),
            &DataType::Utf8
        );
        assert_eq!(static_namespace_oid("pg_catalog"), Some(11));
    }

    #[test]
    fn oids_are_stable_and_in_their_ranges() {
        assert_eq!(id_oid(0), 16384);
        assert_eq!(id_oid(5), 16389);
        assert!(id_oid(u64::MAX) < 1 << 30);
        let view = named_oid("public", "v");
        assert_eq!(view, named_oid("public", "v"));
        assert_ne!(view, named_oid("public", "w"));
        assert!(view >= 1 << 30);
    }

    #[test]
    fn numeric_typmod_is_postgresql_s() {
        // numeric(10,2): (10 << 16 | 2) + 4, as PostgreSQL stores it.
        let (_, _, _, typmod) = storage_of(&ColumnType::Decimal {
            precision: 10,
            scale: 2,
        });
        assert_eq!(typmod, 655_366);
    }
}
