//! Catalog statements that PostgreSQL drivers send as they are written and
//! DataFusion cannot plan, answered by an equivalent statement over the
//! same catalog tables (datafusion-pg-catalog does the same for the
//! statements in its own list).
//!
//! asyncpg's type introspection
//! (<https://github.com/MagicStack/asyncpg/blob/master/asyncpg/introspection.py>):
//! before it decodes a column or encodes a parameter of a type it has no
//! built-in codec for (every array type but `text[]` and `oid[]`), asyncpg
//! looks the type up, with its element, field and base types, in one
//! recursive query over `pg_type`. Its per-type columns are correlated
//! scalar subqueries inside CASE (one of them a WITH RECURSIVE), which
//! DataFusion does not plan. The statement here computes the same rows
//! with joins: the fields of composite types aggregated per row type
//! beforehand, and a domain's base type one level down (`typbasetype`;
//! asyncpg follows domains over domains to the bottom, and Quarry has no
//! user domains).

/// The equivalent of asyncpg's type introspection, its parameter `$1` the
/// `oid[]` of the types to look up. Its columns are asyncpg's, in order.
const ASYNCPG_TYPES: &str = "
WITH RECURSIVE typeinfo AS (
    SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind,
           CASE WHEN t.typtype = 'd' THEN t.typbasetype END AS basetype,
           t.typelem AS elemtype, elem_t.typdelim AS elemdelim,
           COALESCE(range_t.rngsubtype, multirange_t.rngsubtype) AS range_subtype,
           CAST(CASE WHEN t.typtype = 'c' THEN fields.attrtypoids END AS oid[]) AS attrtypoids,
           CASE WHEN t.typtype = 'c' THEN fields.attrnames END AS attrnames
    FROM pg_catalog.pg_type AS t
    INNER JOIN pg_catalog.pg_namespace AS ns ON ns.oid = t.typnamespace
    LEFT JOIN pg_catalog.pg_type AS elem_t
        ON t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid
    LEFT JOIN pg_catalog.pg_range AS range_t ON t.oid = range_t.rngtypid
    LEFT JOIN pg_catalog.pg_range AS multirange_t ON t.oid = multirange_t.rngmultitypid
    LEFT JOIN (
        SELECT c.reltype AS reltype,
               array_agg(a.atttypid ORDER BY a.attnum) AS attrtypoids,
               array_agg(a.attname::text ORDER BY a.attnum) AS attrnames
        FROM pg_catalog.pg_attribute AS a
        INNER JOIN pg_catalog.pg_class AS c ON a.attrelid = c.oid
        WHERE a.attnum > 0 AND NOT a.attisdropped
        GROUP BY c.reltype
    ) AS fields ON fields.reltype = t.oid
),
typeinfo_tree (oid, ns, name, kind, basetype, elemtype, elemdelim, range_subtype,
               attrtypoids, attrnames, depth) AS (
    SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim,
           ti.range_subtype, ti.attrtypoids, ti.attrnames, 0
    FROM typeinfo AS ti
    WHERE ti.oid = any($1::oid[])
    UNION ALL
    SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim,
           ti.range_subtype, ti.attrtypoids, ti.attrnames, tt.depth + 1
    FROM typeinfo AS ti, typeinfo_tree AS tt
    WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype)
       OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids))
       OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype)
       OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype)
)
SELECT DISTINCT *,
       pg_catalog.format_type(basetype, NULL) AS basetype_name,
       pg_catalog.format_type(elemtype, NULL) AS elemtype_name,
       pg_catalog.format_type(range_subtype, NULL) AS range_subtype_name
FROM typeinfo_tree
ORDER BY depth DESC";

/// The statement to run for `sql` when it is a driver's catalog statement
/// known here (asyncpg's type introspection, in its forms for PostgreSQL
/// 13 and 14+, told by its shape: the recursive `typeinfo_tree` over the
/// types in `$1::oid[]`, with the recursive `typebases` of domains).
pub(crate) fn substitute(sql: &str) -> Option<&'static str> {
    let words: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    (words.starts_with("WITH RECURSIVE typeinfo_tree(")
        && words.contains("WITH RECURSIVE typebases(oid, depth)")
        && words.contains("ti.oid = any($1::oid[])")
        && words.ends_with("FROM typeinfo_tree ORDER BY depth DESC"))
    .then_some(ASYNCPG_TYPES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_type_introspection_shape_is_substituted() {
        // The shape asyncpg's statement has (elided), in any layout.
        let introspection = "WITH RECURSIVE typeinfo_tree(\n oid, ns)\nAS ( SELECT ... \
             (WITH RECURSIVE typebases(oid,  depth) AS ( ... )) ... WHERE\n ti.oid = \
             any($1::oid[]) UNION ALL ... )\nSELECT DISTINCT * FROM\n  typeinfo_tree\n \
             ORDER BY\n depth DESC\n";
        assert_eq!(substitute(introspection), Some(ASYNCPG_TYPES));
        for other in [
            "SELECT 1",
            "WITH RECURSIVE typeinfo_tree(oid) AS (SELECT 1) SELECT * FROM typeinfo_tree",
            &introspection.replace("any($1::oid[])", "any($1::int[])"),
        ] {
            assert_eq!(substitute(other), None, "{other}");
        }
        // The substitute parses, as the statement the session runs.
        assert!(crate::parser::parse(ASYNCPG_TYPES).is_ok());
    }
}
