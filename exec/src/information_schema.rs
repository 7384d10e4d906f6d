//! The views of information_schema that DataFusion does not serve, or
//! serves with Arrow's names for types, as the SQL standard defines them and
//! PostgreSQL 15 fills them (documentation, chapter 37 "The Information
//! Schema"): `columns`, and the constraint views that ORMs and BI tools read
//! keys from (Sequelize, TypeORM, Metabase). Each is a query
//! over Quarry's pg_catalog tables that replaces the view's name where a
//! statement reads it, as PostgreSQL itself defines information_schema as
//! views over pg_catalog.
//!
//! PostgreSQL lists a column's NOT NULL as a CHECK constraint named
//! `<schema oid>_<table oid>_<column number>_not_null` in `table_constraints`
//! and `check_constraints`; so does Quarry. `enforced` is `NO` for keys,
//! which Quarry keeps and does not enforce (docs/POSTGRESQL.md).

/// Key constraints with their tables and schemas.
const KEYS: &str = "pg_catalog.pg_constraint c \
     JOIN pg_catalog.pg_namespace nc ON nc.oid = c.connamespace \
     JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
     JOIN pg_catalog.pg_namespace nr ON nr.oid = r.relnamespace";

/// Columns declared NOT NULL, with their tables and schemas.
const NOT_NULLS: &str = "pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class r ON r.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace nr ON nr.oid = r.relnamespace \
     WHERE a.attnotnull AND a.attnum > 0 AND NOT a.attisdropped AND r.relkind IN ('r', 'p')";

/// A NOT NULL's constraint name, as PostgreSQL makes it.
const NOT_NULL_NAME: &str = "CAST(nr.oid AS TEXT) || '_' || CAST(r.oid AS TEXT) || '_' || \
     CAST(a.attnum AS TEXT) || '_not_null'";

/// A referential action (`confupdtype`, `confdeltype`) by its SQL name.
fn rule(column: &str) -> String {
    format!(
        "CASE c.{column} WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' \
         WHEN 'd' THEN 'SET DEFAULT' WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END"
    )
}

/// The query behind information_schema view `name`, if Quarry defines it.
pub fn view_query(name: &str) -> Option<String> {
    Some(match name {
        "table_constraints" => format!(
            "SELECT current_database() AS constraint_catalog, nc.nspname AS constraint_schema, \
             c.conname AS constraint_name, current_database() AS table_catalog, \
             nr.nspname AS table_schema, r.relname AS table_name, \
             CASE c.contype WHEN 'c' THEN 'CHECK' WHEN 'f' THEN 'FOREIGN KEY' \
             WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END AS constraint_type, \
             'NO' AS is_deferrable, 'NO' AS initially_deferred, 'NO' AS enforced, \
             CASE WHEN c.contype = 'u' THEN 'YES' END AS nulls_distinct \
             FROM {KEYS} WHERE c.contype IN ('c', 'f', 'p', 'u') AND r.relkind IN ('r', 'p') \
             UNION ALL \
             SELECT current_database() AS constraint_catalog, nr.nspname AS constraint_schema, \
             {NOT_NULL_NAME} AS constraint_name, current_database() AS table_catalog, \
             nr.nspname AS table_schema, r.relname AS table_name, 'CHECK' AS constraint_type, \
             'NO' AS is_deferrable, 'NO' AS initially_deferred, 'YES' AS enforced, \
             CAST(NULL AS TEXT) AS nulls_distinct \
             FROM {NOT_NULLS}"
        ),
        "check_constraints" => format!(
            "SELECT current_database() AS constraint_catalog, nr.nspname AS constraint_schema, \
             {NOT_NULL_NAME} AS constraint_name, a.attname || ' IS NOT NULL' AS check_clause \
             FROM {NOT_NULLS}"
        ),
        // Each column of a PRIMARY KEY, UNIQUE or FOREIGN KEY, with its
        // place in the key and, for a foreign key, the place of the column
        // it references in the referenced key.
        "key_column_usage" => format!(
            "SELECT current_database() AS constraint_catalog, nc.nspname AS constraint_schema, \
             c.conname AS constraint_name, current_database() AS table_catalog, \
             nr.nspname AS table_schema, r.relname AS table_name, a.attname AS column_name, \
             CAST(k.value AS INT) AS ordinal_position, \
             CASE WHEN c.contype = 'f' \
             THEN CAST(array_position(u.conkey, c.confkey[k.value]) AS INT) END \
             AS position_in_unique_constraint \
             FROM {KEYS} \
             JOIN generate_series(1, 32) AS k(value) ON k.value <= cardinality(c.conkey) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum = c.conkey[k.value] \
             LEFT JOIN pg_catalog.pg_constraint u ON c.contype = 'f' \
             AND u.conrelid = c.confrelid AND u.conindid = c.conindid AND u.contype IN ('p', 'u') \
             WHERE c.contype IN ('f', 'p', 'u') AND r.relkind IN ('r', 'p')"
        ),
        "referential_constraints" => format!(
            "SELECT current_database() AS constraint_catalog, nc.nspname AS constraint_schema, \
             c.conname AS constraint_name, \
             CASE WHEN u.conname IS NOT NULL THEN current_database() END \
             AS unique_constraint_catalog, \
             nu.nspname AS unique_constraint_schema, u.conname AS unique_constraint_name, \
             CASE c.confmatchtype WHEN 'f' THEN 'FULL' WHEN 'p' THEN 'PARTIAL' ELSE 'NONE' END \
             AS match_option, {} AS update_rule, {} AS delete_rule \
             FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_namespace nc ON nc.oid = c.connamespace \
             LEFT JOIN pg_catalog.pg_constraint u ON u.conrelid = c.confrelid \
             AND u.conindid = c.conindid AND u.contype IN ('p', 'u') \
             LEFT JOIN pg_catalog.pg_namespace nu ON nu.oid = u.connamespace \
             WHERE c.contype = 'f'",
            rule("confupdtype"),
            rule("confdeltype")
        ),
        // The columns each constraint uses: its own table's for a key, the
        // referenced table's for a foreign key.
        "constraint_column_usage" => {
            let usage = |keys: &str, relation: &str, types: &str| {
                format!(
                    "SELECT current_database() AS table_catalog, nr.nspname AS table_schema, \
                     r.relname AS table_name, a.attname AS column_name, \
                     current_database() AS constraint_catalog, nc.nspname AS constraint_schema, \
                     c.conname AS constraint_name \
                     FROM pg_catalog.pg_constraint c \
                     JOIN pg_catalog.pg_namespace nc ON nc.oid = c.connamespace \
                     JOIN pg_catalog.pg_class r ON r.oid = c.{relation} \
                     JOIN pg_catalog.pg_namespace nr ON nr.oid = r.relnamespace \
                     JOIN generate_series(1, 32) AS k(value) ON k.value <= cardinality(c.{keys}) \
                     JOIN pg_catalog.pg_attribute a \
                     ON a.attrelid = r.oid AND a.attnum = c.{keys}[k.value] \
                     WHERE c.contype IN ({types}) AND r.relkind IN ('r', 'p')"
                )
            };
            format!(
                "{} UNION ALL {}",
                usage("conkey", "conrelid", "'c', 'p', 'u'"),
                usage("confkey", "confrelid", "'f'")
            )
        }
        "columns" => COLUMNS.to_owned(),
        _ => return None,
    })
}

/// Each column of each table and view with PostgreSQL's description of its
/// type (`data_type` as `format_type` prints it, `ARRAY` for arrays,
/// `udt_name` the pg_type name, lengths, precisions and scales from the
/// type modifier as PostgreSQL 15's view computes them). DataFusion's own
/// view describes Arrow types (`Utf8`, `Int64`), which BI tools (Grafana,
/// Metabase, DBeaver) show to their users and map to nothing.
const COLUMNS: &str = "SELECT current_database() AS table_catalog, nc.nspname AS table_schema, \
     c.relname AS table_name, a.attname AS column_name, CAST(a.attnum AS INT) AS ordinal_position, \
     pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) AS column_default, \
     CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END AS is_nullable, \
     CASE WHEN t.typcategory = 'A' THEN 'ARRAY' ELSE pg_catalog.format_type(a.atttypid, NULL) END \
     AS data_type, \
     CASE WHEN a.atttypid IN (1042, 1043) AND a.atttypmod > 0 THEN CAST(a.atttypmod - 4 AS INT) END \
     AS character_maximum_length, \
     CASE WHEN a.atttypid IN (25, 1042, 1043) THEN CASE WHEN a.atttypmod > 0 \
     THEN CAST((a.atttypmod - 4) * 4 AS INT) ELSE 1073741824 END END AS character_octet_length, \
     CAST(CASE a.atttypid WHEN 21 THEN 16 WHEN 23 THEN 32 WHEN 20 THEN 64 WHEN 700 THEN 24 \
     WHEN 701 THEN 53 WHEN 1700 THEN CASE WHEN a.atttypmod >= 4 \
     THEN ((a.atttypmod - 4) / 65536) % 65536 END END AS INT) AS numeric_precision, \
     CAST(CASE WHEN a.atttypid IN (20, 21, 23, 700, 701) THEN 2 WHEN a.atttypid = 1700 THEN 10 END \
     AS INT) AS numeric_precision_radix, \
     CAST(CASE WHEN a.atttypid IN (20, 21, 23) THEN 0 \
     WHEN a.atttypid = 1700 AND a.atttypmod >= 4 THEN (a.atttypmod - 4) % 65536 END AS INT) \
     AS numeric_scale, \
     CAST(CASE WHEN a.atttypid = 1082 THEN 0 \
     WHEN a.atttypid IN (1083, 1114, 1184, 1266, 1186) THEN CASE WHEN a.atttypmod < 0 THEN 6 \
     ELSE a.atttypmod END END AS INT) AS datetime_precision, \
     CAST(NULL AS TEXT) AS interval_type, CAST(NULL AS INT) AS interval_precision, \
     CAST(NULL AS TEXT) AS character_set_catalog, CAST(NULL AS TEXT) AS character_set_schema, \
     CAST(NULL AS TEXT) AS character_set_name, CAST(NULL AS TEXT) AS collation_catalog, \
     CAST(NULL AS TEXT) AS collation_schema, CAST(NULL AS TEXT) AS collation_name, \
     CAST(NULL AS TEXT) AS domain_catalog, CAST(NULL AS TEXT) AS domain_schema, \
     CAST(NULL AS TEXT) AS domain_name, current_database() AS udt_catalog, \
     'pg_catalog' AS udt_schema, t.typname AS udt_name, CAST(NULL AS TEXT) AS scope_catalog, \
     CAST(NULL AS TEXT) AS scope_schema, CAST(NULL AS TEXT) AS scope_name, \
     CAST(NULL AS INT) AS maximum_cardinality, CAST(a.attnum AS TEXT) AS dtd_identifier, \
     'NO' AS is_self_referencing, 'NO' AS is_identity, CAST(NULL AS TEXT) AS identity_generation, \
     CAST(NULL AS TEXT) AS identity_start, CAST(NULL AS TEXT) AS identity_increment, \
     CAST(NULL AS TEXT) AS identity_maximum, CAST(NULL AS TEXT) AS identity_minimum, \
     'NO' AS identity_cycle, 'NEVER' AS is_generated, CAST(NULL AS TEXT) AS generation_expression, \
     CASE WHEN c.relkind IN ('r', 'p') THEN 'YES' ELSE 'NO' END AS is_updatable \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace nc ON nc.oid = c.relnamespace \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'f', 'p', 'm')";
