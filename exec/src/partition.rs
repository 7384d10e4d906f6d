//! Partitioned tables in the engine: reading `PARTITION BY` and its
//! options, the partition of each row a writer splits by, pruning whole
//! partitions from metadata before any file's statistics, and the check of
//! `require_partition_filter`. The model (keys, bounds, partition ids) is
//! `quarry_common::partition`; BigQuery's forms are followed
//! (<https://cloud.google.com/bigquery/docs/creating-partitioned-tables>).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Int64Type, SchemaRef, TimeUnit as ArrowTimeUnit, TimestampMicrosecondType,
};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column as DfColumn, DFSchema, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::sql::sqlparser::ast;
use quarry_common::SqlState;
use quarry_common::catalog::{Column, ColumnType, DataFile, Datum, Table};
use quarry_common::partition::{PartitionKey, PartitionScheme, Partitioning, TimeUnit};

use crate::data_file::scalar_of;
use crate::error::{Error, Result, user_error};
use crate::table::SnapshotTable;

/// Most partitions an integer range may make (BigQuery's limit on a
/// table's partitions).
pub const MAX_RANGE_PARTITIONS: i64 = 10_000;

/// The `WITH (...)` options that go with `PARTITION BY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartitionOptions {
    /// `partition_expiration_days`, in microseconds.
    pub expiration_micros: Option<i64>,
    /// `require_partition_filter`.
    pub require_filter: bool,
}

fn invalid(message: impl Into<String>) -> Error {
    user_error(SqlState::INVALID_TABLE_DEFINITION, message.into())
}

/// The partitioning `PARTITION BY expr` gives a table whose columns are
/// `columns`: `col` (a DATE column: days; a timestamp: days in UTC),
/// `DATE(ts)`, `DATE_TRUNC(col, DAY|HOUR|MONTH|YEAR)` (also
/// `TIMESTAMP_TRUNC`, and PostgreSQL's `date_trunc('day', col)`), or
/// `RANGE_BUCKET(int_col, GENERATE_ARRAY(start, end, interval))`.
///
/// # Errors
/// 42P16 for an expression of another form, an unknown column, a column of
/// the wrong type, or a bad range; 22023 for options without PARTITION BY
/// are the caller's.
pub fn partitioning_of(
    expr: &ast::Expr,
    columns: &[Column],
    options: PartitionOptions,
) -> Result<Partitioning> {
    let column = |e: &ast::Expr| -> Result<&Column> {
        let name = match e {
            ast::Expr::Identifier(ident) => crate::session::normalize(ident),
            ast::Expr::CompoundIdentifier(idents) if !idents.is_empty() => {
                crate::session::normalize(&idents[idents.len() - 1])
            }
            other => {
                return Err(invalid(format!("PARTITION BY takes a column, not {other}")));
            }
        };
        columns.iter().find(|c| c.name == name).ok_or_else(|| {
            invalid(format!(
                "PARTITION BY names column \"{name}\", which the table does not have"
            ))
        })
    };
    let time = |c: &Column, unit: TimeUnit| -> Result<Partitioning> {
        match (c.column_type.clone(), unit) {
            (ColumnType::Date, TimeUnit::Hour) => Err(invalid(format!(
                "column \"{}\" is a date: it is partitioned by DAY, MONTH or YEAR",
                c.name
            ))),
            (ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz, _) => {
                Ok(Partitioning {
                    field_id: c.field_id,
                    column_type: c.column_type.clone(),
                    scheme: PartitionScheme::Time(unit),
                    expiration_micros: options.expiration_micros,
                    require_filter: options.require_filter,
                })
            }
            (other, _) => Err(invalid(format!(
                "column \"{}\" is {other}: time partitioning takes a date or timestamp column",
                c.name
            ))),
        }
    };
    let partitioning = match expr {
        ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => {
            time(column(expr)?, TimeUnit::Day)?
        }
        ast::Expr::Function(function) => {
            let name = function.name.to_string().to_ascii_lowercase();
            let args = arguments(function)?;
            match (name.as_str(), args.as_slice()) {
                ("date", [c]) => time(column(c)?, TimeUnit::Day)?,
                ("date_trunc" | "timestamp_trunc" | "datetime_trunc", [a, b]) => {
                    // BigQuery: (col, UNIT); PostgreSQL: ('unit', col).
                    match (time_unit(b), time_unit(a)) {
                        (Some(unit), _) => time(column(a)?, unit)?,
                        (None, Some(unit)) => time(column(b)?, unit)?,
                        (None, None) => {
                            return Err(invalid(format!(
                                "{name} takes a unit: HOUR, DAY, MONTH or YEAR"
                            )));
                        }
                    }
                }
                ("range_bucket", [c, array]) => {
                    let c = column(c)?;
                    if !matches!(
                        c.column_type,
                        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64
                    ) {
                        return Err(invalid(format!(
                            "column \"{}\" is {}: RANGE_BUCKET takes an integer column",
                            c.name, c.column_type
                        )));
                    }
                    let (start, end, interval) = generate_array(array)?;
                    if options.expiration_micros.is_some() {
                        return Err(user_error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            "partition_expiration_days applies to time partitioning only",
                        ));
                    }
                    Partitioning {
                        field_id: c.field_id,
                        column_type: c.column_type.clone(),
                        scheme: PartitionScheme::IntegerRange {
                            start,
                            end,
                            interval,
                        },
                        expiration_micros: None,
                        require_filter: options.require_filter,
                    }
                }
                _ => return Err(unsupported(expr)),
            }
        }
        other => return Err(unsupported(other)),
    };
    Ok(partitioning)
}

/// 0A000 for a `PARTITION BY` of none of the supported forms.
fn unsupported(expr: &ast::Expr) -> Error {
    user_error(
        SqlState::FEATURE_NOT_SUPPORTED,
        format!(
            "PARTITION BY {expr} is not supported: use a date column, \
             DATE_TRUNC(col, DAY|HOUR|MONTH|YEAR) or \
             RANGE_BUCKET(col, GENERATE_ARRAY(start, end, interval))"
        ),
    )
}

/// `table`'s `PARTITION BY` as SQL (`DATE_TRUNC(at, DAY)`,
/// `RANGE_BUCKET(n, GENERATE_ARRAY(0, 100, 10))`), with its options; None
/// when it is not partitioned.
pub fn describe_partitioning(table: &Table) -> Option<String> {
    let p = table.partitioning.as_ref()?;
    let column = table
        .columns
        .iter()
        .find(|c| c.field_id == p.field_id)
        .map_or("?", |c| c.name.as_str());
    let mut sql = match p.scheme {
        PartitionScheme::Time(unit) => format!("DATE_TRUNC({column}, {unit})"),
        PartitionScheme::IntegerRange {
            start,
            end,
            interval,
        } => format!("RANGE_BUCKET({column}, GENERATE_ARRAY({start}, {end}, {interval}))"),
    };
    if let Some(micros) = p.expiration_micros {
        sql += &format!(", partition_expiration_days = {}", micros as f64 / 86_400e6);
    }
    if p.require_filter {
        sql += ", require_partition_filter = true";
    }
    Some(sql)
}

/// `table`'s clustering columns, `a, b`; None when it has none.
pub fn describe_clustering(table: &Table) -> Option<String> {
    let layout = table.file_layout.as_ref()?;
    let names: Vec<&str> = layout
        .cluster_by
        .iter()
        .filter_map(|id| table.columns.iter().find(|c| c.field_id == *id))
        .map(|c| c.name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The plain arguments of a function call.
fn arguments(function: &ast::Function) -> Result<Vec<&ast::Expr>> {
    let ast::FunctionArguments::List(list) = &function.args else {
        return Ok(Vec::new());
    };
    list.args
        .iter()
        .map(|arg| match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Ok(e),
            other => Err(invalid(format!(
                "{}: argument {other} is not supported in PARTITION BY",
                function.name
            ))),
        })
        .collect()
}

/// `DAY`, `'day'`, ... as a unit.
fn time_unit(expr: &ast::Expr) -> Option<TimeUnit> {
    let word = match expr {
        ast::Expr::Identifier(ident) => ident.value.clone(),
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            _ => return None,
        },
        _ => return None,
    };
    match word.to_ascii_lowercase().as_str() {
        "hour" => Some(TimeUnit::Hour),
        "day" => Some(TimeUnit::Day),
        "month" => Some(TimeUnit::Month),
        "year" => Some(TimeUnit::Year),
        _ => None,
    }
}

/// `GENERATE_ARRAY(start, end, interval)` with integer literals.
fn generate_array(expr: &ast::Expr) -> Result<(i64, i64, i64)> {
    let usage = || {
        invalid(
            "RANGE_BUCKET's second argument is GENERATE_ARRAY(start, end, interval) of integers",
        )
    };
    let ast::Expr::Function(function) = expr else {
        return Err(usage());
    };
    if !function
        .name
        .to_string()
        .eq_ignore_ascii_case("generate_array")
    {
        return Err(usage());
    }
    let args = arguments(function)?;
    let [start, end, interval] = args.as_slice() else {
        return Err(usage());
    };
    let (start, end, interval) = (integer(start)?, integer(end)?, integer(interval)?);
    if interval <= 0 || end <= start {
        return Err(invalid(format!(
            "GENERATE_ARRAY({start}, {end}, {interval}) makes no range: end must be past start and the interval positive"
        )));
    }
    let buckets =
        (i128::from(end) - i128::from(start) + i128::from(interval) - 1) / i128::from(interval);
    if buckets > i128::from(MAX_RANGE_PARTITIONS) {
        return Err(invalid(format!(
            "GENERATE_ARRAY({start}, {end}, {interval}) makes {buckets} partitions; at most {MAX_RANGE_PARTITIONS}"
        )));
    }
    Ok((start, end, interval))
}

fn integer(expr: &ast::Expr) -> Result<i64> {
    let not_integer = || invalid(format!("{expr} is not an integer literal"));
    match expr {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => n.parse().map_err(|_| not_integer()),
            _ => Err(not_integer()),
        },
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => integer(expr)?.checked_neg().ok_or_else(not_integer),
        ast::Expr::Nested(e) => integer(e),
        _ => Err(not_integer()),
    }
}

/// The partition of each row of `column` (the partitioning column's
/// values).
///
/// # Errors
/// If the column is not of the partitioning's type.
pub fn keys_of(partitioning: &Partitioning, column: &ArrayRef) -> Result<Vec<PartitionKey>> {
    let key = |valid: bool, value: i64| {
        if valid {
            partitioning.key_of(value)
        } else {
            PartitionKey::Null
        }
    };
    let keys = match column.data_type() {
        DataType::Date32 => {
            let values = column.as_primitive::<Date32Type>();
            (0..values.len())
                .map(|i| key(values.is_valid(i), i64::from(values.value(i))))
                .collect()
        }
        DataType::Timestamp(ArrowTimeUnit::Microsecond, _) => {
            let values = column.as_primitive::<TimestampMicrosecondType>();
            (0..values.len())
                .map(|i| key(values.is_valid(i), values.value(i)))
                .collect()
        }
        DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let wide =
                cast(column, &DataType::Int64).map_err(|e| Error::Internal(e.to_string()))?;
            let values = wide.as_primitive::<Int64Type>();
            (0..values.len())
                .map(|i| key(values.is_valid(i), values.value(i)))
                .collect()
        }
        other => {
            return Err(Error::Internal(format!(
                "a partitioning column of type {other}"
            )));
        }
    };
    Ok(keys)
}

/// Row positions of each partition in `keys`, in row order within each.
pub fn rows_by_partition(keys: &[PartitionKey]) -> BTreeMap<PartitionKey, Vec<u32>> {
    let mut rows: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        rows.entry(*key)
            .or_default()
            .push(u32::try_from(i).expect("a batch has fewer than 2^32 rows"));
    }
    rows
}

/// The files of `files` in partitions that `filters` may match, judged by
/// each partition's bounds (its key's first and last values), before any
/// file's own statistics. Files whose partition the zone map does not
/// tell are kept.
///
/// # Errors
/// If the filters cannot be planned.
pub fn prune_partitions(
    partitioning: &Partitioning,
    columns: &[Column],
    predicate: &PruningPredicate,
    files: Vec<DataFile>,
) -> datafusion::error::Result<Vec<DataFile>> {
    let Some(column) = columns.iter().find(|c| c.field_id == partitioning.field_id) else {
        return Ok(files);
    };
    let keys: Vec<Option<PartitionKey>> =
        files.iter().map(|f| partitioning.key_of_file(f)).collect();
    let mut partitions: Vec<PartitionKey> = keys.iter().flatten().copied().collect();
    partitions.sort_unstable();
    partitions.dedup();
    let stats = PartitionStats {
        partitioning,
        column,
        partitions: &partitions,
    };
    let keep = predicate.prune(&stats)?;
    let kept: std::collections::HashSet<PartitionKey> = partitions
        .iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|(p, _)| *p)
        .collect();
    Ok(files
        .into_iter()
        .zip(keys)
        .filter(|(_, key)| key.is_none_or(|k| kept.contains(&k)))
        .map(|(f, _)| f)
        .collect())
}

/// Each partition as a container for DataFusion's pruning: the
/// partitioning column lies within the partition's bounds (NULL only in
/// `__NULL__`); nothing is known of other columns.
struct PartitionStats<'a> {
    partitioning: &'a Partitioning,
    column: &'a Column,
    partitions: &'a [PartitionKey],
}

impl PartitionStats<'_> {
    fn bound(&self, column: &DfColumn, last: bool) -> Option<ArrayRef> {
        if column.name != self.column.name {
            return None;
        }
        let values = self.partitions.iter().map(|key| match key {
            PartitionKey::Start(start) => {
                let (first, end) = self.partitioning.bounds(*start);
                let value = if last { end } else { first };
                let datum = match self.column.column_type {
                    ColumnType::Date => i32::try_from(value).ok().map(Datum::Date),
                    ColumnType::Timestamp | ColumnType::TimestampTz => {
                        Some(Datum::Timestamp(value))
                    }
                    _ => Some(Datum::Int(value)),
                };
                scalar_of(datum.as_ref(), &self.column.column_type)
            }
            // NULL bounds: unknown, so never pruned by them.
            PartitionKey::Null | PartitionKey::Unpartitioned => {
                scalar_of(None, &self.column.column_type)
            }
        });
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for PartitionStats<'_> {
    fn min_values(&self, column: &DfColumn) -> Option<ArrayRef> {
        self.bound(column, false)
    }

    fn max_values(&self, column: &DfColumn) -> Option<ArrayRef> {
        self.bound(column, true)
    }

    fn num_containers(&self) -> usize {
        self.partitions.len()
    }

    fn null_counts(&self, column: &DfColumn) -> Option<ArrayRef> {
        if column.name != self.column.name {
            return None;
        }
        // A value partition holds no NULL; the others may.
        let counts: Vec<Option<u64>> = self
            .partitions
            .iter()
            .map(|key| match key {
                PartitionKey::Start(_) => Some(0),
                _ => None,
            })
            .collect();
        Some(Arc::new(UInt64Array::from(counts)))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(
        &self,
        _column: &DfColumn,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

/// Refuses `plan` if it scans a table with `require_partition_filter`
/// without a filter on its partitioning column that can skip partitions
/// (BigQuery's rule: DML too). `optimized` is `plan` after DataFusion's
/// logical optimizer, whose scans carry the filters pushed to them.
///
/// # Errors
/// 42000 naming the table and column.
pub fn check_required_filters(plan: &LogicalPlan, state: &SessionState) -> Result<()> {
    if !scans_requiring_filter(plan) {
        return Ok(());
    }
    let optimized = state.optimize(plan).map_err(Error::from_engine)?;
    let mut refused = None;
    optimized
        .apply(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some(required) = required(&scan.source)
                && !usable_filter(state, &scan.filters, &required)
            {
                refused = Some((required.name, required.column.name));
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(Error::from_engine)?;
    match refused {
        Some((table, column)) => Err(missing_filter(&table, &column)),
        None => Ok(()),
    }
}

/// 42000 for a statement that reads `table` without a usable filter on its
/// partitioning column `column`.
fn missing_filter(table: &str, column: &str) -> Error {
    user_error(
        SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
        format!(
            "cannot query table \"{table}\" without a filter over column \"{column}\" \
             that can be used for partition elimination (the table has require_partition_filter)"
        ),
    )
}

/// For a MERGE into `target`: when the table requires a partition filter,
/// `on_target` (the conjuncts of its ON condition on the target's columns
/// alone) must hold one that can skip partitions, as BigQuery prunes a
/// MERGE's target partitions from such static conditions.
///
/// # Errors
/// 42000 naming the table and column.
pub fn check_merge_filter(
    target: &SnapshotTable,
    on_target: &[Expr],
    state: &SessionState,
) -> Result<()> {
    let Some(required) = required_of(target) else {
        return Ok(());
    };
    if usable_filter(state, on_target, &required) {
        return Ok(());
    }
    Err(missing_filter(&required.name, &required.column.name))
}

fn scans_requiring_filter(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && required(&scan.source).is_some()
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A scanned table that requires a partition filter: its name, schema
/// and partitioning column.
struct Required {
    name: String,
    schema: SchemaRef,
    column: Column,
}

/// What a scan of `source` requires, if its table requires a partition
/// filter.
fn required(source: &Arc<dyn datafusion::logical_expr::TableSource>) -> Option<Required> {
    let provider = source_as_provider(source).ok()?;
    required_of(provider.downcast_ref::<SnapshotTable>()?)
}

/// What reading `table` requires, if it requires a partition filter.
fn required_of(table: &SnapshotTable) -> Option<Required> {
    let partitioning = table.table().partitioning.clone()?;
    if !partitioning.require_filter {
        return None;
    }
    let column = table
        .columns()
        .iter()
        .find(|c| c.field_id == partitioning.field_id)?
        .clone();
    Some(Required {
        name: table.table().name.clone(),
        schema: datafusion::catalog::TableProvider::schema(table),
        column,
    })
}

/// Whether `filters` hold a condition on the partitioning column that can
/// skip partitions.
fn usable_filter(state: &SessionState, filters: &[Expr], required: &Required) -> bool {
    let on_column: Vec<Expr> = filters
        .iter()
        .filter(|f| {
            f.column_refs()
                .iter()
                .any(|c| c.name == required.column.name)
        })
        .cloned()
        .collect();
    let Some(Ok(expr)) = conjunction(on_column).map(crate::rewrite::unqualified) else {
        return false;
    };
    let schema = required.schema.clone();
    let Ok(df_schema) = DFSchema::try_from(schema.as_ref().clone()) else {
        return false;
    };
    let Ok(physical) = state.create_physical_expr(expr, &df_schema) else {
        return false;
    };
    // None when it would keep every partition.
    PruningPredicateBuilder::new()
        .with_file_schema(schema)
        .build(physical)
        .is_some()
}
