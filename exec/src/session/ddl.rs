//! DDL: CREATE TABLE (empty, CLONE, AS), ALTER TABLE, CREATE / ALTER VIEW,
//! DROP, COMMENT ON, CREATE TABLE's options and its constraints.

use super::*;
use crate::partition::{PartitionOptions, partitioning_of};
use crate::types::{DeclaredType, column_type_naming};
use quarry_common::catalog::{ColumnType, NestedField};
use quarry_common::partition::{FileLayout, MAX_CLUSTER_COLUMNS, Partitioning};
use quarry_raft::{ConstraintDef, ConstraintDefKind};

/// The name of a key column (`PRIMARY KEY (a, b)`): a plain column only.
fn key_column(column: &ast::IndexColumn) -> Result<String> {
    match &column.column.expr {
        Expr::Identifier(ident) => Ok(normalize(ident)),
        other => Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("a key over an expression ({other}) is not supported"),
        )),
    }
}

/// Refuses what Quarry cannot keep of a constraint: `ENFORCED` (Quarry keeps
/// keys as declarations, BigQuery's `NOT ENFORCED`), and referential actions
/// other than NO ACTION (nothing would carry them out).
fn unenforced(characteristics: Option<&ast::ConstraintCharacteristics>) -> Result<()> {
    if characteristics.is_some_and(|c| c.enforced == Some(true)) {
        return Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "Quarry does not enforce PRIMARY KEY, UNIQUE or FOREIGN KEY constraints: declare them NOT ENFORCED (or leave ENFORCED out)",
        ));
    }
    Ok(())
}

impl Session {
    /// A table constraint (`[CONSTRAINT name] PRIMARY KEY | UNIQUE | FOREIGN
    /// KEY ...`) as kept in the catalog.
    fn table_constraint(&self, constraint: &ast::TableConstraint) -> Result<ConstraintDef> {
        let name = |ident: &Option<Ident>| ident.as_ref().map(normalize);
        let keys = |columns: &[ast::IndexColumn]| -> Result<Vec<String>> {
            columns.iter().map(key_column).collect()
        };
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                unenforced(pk.characteristics.as_ref())?;
                Ok(ConstraintDef {
                    name: name(&pk.name),
                    kind: ConstraintDefKind::PrimaryKey(keys(&pk.columns)?),
                })
            }
            ast::TableConstraint::Unique(unique) => {
                unenforced(unique.characteristics.as_ref())?;
                Ok(ConstraintDef {
                    name: name(&unique.name),
                    kind: ConstraintDefKind::Unique(keys(&unique.columns)?),
                })
            }
            ast::TableConstraint::ForeignKey(fk) => self.foreign_key(fk, None),
            other => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "constraint {other} is not supported (PRIMARY KEY, UNIQUE and FOREIGN KEY are)"
                ),
            )),
        }
    }

    /// A FOREIGN KEY, or a column's REFERENCES (`column` names it).
    fn foreign_key(
        &self,
        fk: &ast::ForeignKeyConstraint,
        column: Option<&Ident>,
    ) -> Result<ConstraintDef> {
        unenforced(fk.characteristics.as_ref())?;
        for action in [&fk.on_delete, &fk.on_update].into_iter().flatten() {
            if !matches!(action, ast::ReferentialAction::NoAction) {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!(
                        "ON DELETE / ON UPDATE {action} is not supported: Quarry keeps foreign keys as declarations and does not enforce them"
                    ),
                ));
            }
        }
        let (schema, table) = self.resolve(&fk.foreign_table)?;
        let columns = match column {
            Some(column) => vec![normalize(column)],
            None => fk.columns.iter().map(normalize).collect(),
        };
        Ok(ConstraintDef {
            name: fk.name.as_ref().map(normalize),
            kind: ConstraintDefKind::ForeignKey {
                columns,
                schema,
                table,
                referenced: fk.referred_columns.iter().map(normalize).collect(),
            },
        })
    }

    /// The constraints a column's options declare (PRIMARY KEY, UNIQUE,
    /// REFERENCES).
    fn column_constraints(&self, column: &ast::ColumnDef) -> Result<Vec<ConstraintDef>> {
        let name = normalize(&column.name);
        let mut constraints = Vec::new();
        for option in &column.options {
            let constraint_name = option.name.as_ref().map(normalize);
            match &option.option {
                ast::ColumnOption::PrimaryKey(pk) => {
                    unenforced(pk.characteristics.as_ref())?;
                    constraints.push(ConstraintDef {
                        name: constraint_name,
                        kind: ConstraintDefKind::PrimaryKey(vec![name.clone()]),
                    });
                }
                ast::ColumnOption::Unique(unique) => {
                    unenforced(unique.characteristics.as_ref())?;
                    constraints.push(ConstraintDef {
                        name: constraint_name,
                        kind: ConstraintDefKind::Unique(vec![name.clone()]),
                    });
                }
                ast::ColumnOption::ForeignKey(fk) => {
                    let mut fk = self.foreign_key(fk, Some(&column.name))?;
                    fk.name = fk.name.or(constraint_name);
                    constraints.push(fk);
                }
                _ => {}
            }
        }
        Ok(constraints)
    }

    /// COMMENT ON TABLE name | COLUMN table.column IS 'text' | NULL.
    pub(super) async fn comment(
        &mut self,
        object_type: ast::CommentObject,
        name: &ObjectName,
        comment: Option<String>,
    ) -> Result<Output> {
        let (schema, table, column) = match object_type {
            ast::CommentObject::Table => {
                let (schema, table) = self.resolve(name)?;
                (schema, table, None)
            }
            ast::CommentObject::Column => {
                let mut parts = name.0.clone();
                let column = parts.pop().and_then(|p| p.as_ident().map(normalize));
                let (Some(column), false) = (column, parts.is_empty()) else {
                    return Err(user_error(
                        SqlState::SYNTAX_ERROR,
                        format!("column name \"{name}\" must be qualified by its table"),
                    ));
                };
                let (schema, table) = self.resolve(&ObjectName(parts))?;
                (schema, table, Some(column))
            }
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("COMMENT ON {other} is not supported (TABLE and COLUMN are)"),
                ));
            }
        };
        let catalog = self.ddl_catalog().await?;
        if catalog.view(&schema, &table).is_some() {
            return Err(user_error(
                SqlState::WRONG_OBJECT_TYPE,
                format!("\"{table}\" is not a table (comments on views are not supported yet)"),
            ));
        }
        self.write_ddl(Command::Comment {
            schema,
            table,
            column,
            comment,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("COMMENT")))
    }
}

/// Reads CREATE TABLE's `WITH (...)` options: `retention_seconds`, the time
/// travel window (BigQuery's max_time_travel_hours, in seconds).
pub(super) fn table_options(options: &ast::CreateTableOptions) -> Result<TableOptions> {
    let ast::CreateTableOptions::With(options) = options else {
        return match options {
            ast::CreateTableOptions::None => Ok(TableOptions::default()),
            other => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("table options {other} are not supported"),
            )),
        };
    };
    let mut parsed = TableOptions::default();
    let (mut data_chunks, mut parity_chunks) = (None, None);
    for option in options {
        match option {
            ast::SqlOption::KeyValue { key, value } if normalize(key) == "retention_seconds" => {
                let seconds: i64 = value
                    .to_string()
                    .trim_matches('\'')
                    .parse()
                    .ok()
                    .filter(|s| *s >= 0)
                    .ok_or_else(|| {
                        user_error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!(
                                "retention_seconds must be a whole number of seconds, not {value}"
                            ),
                        )
                    })?;
                parsed.retention_micros = Some(seconds.saturating_mul(1_000_000));
            }
            ast::SqlOption::KeyValue { key, value }
                if matches!(normalize(key).as_str(), "data_chunks" | "parity_chunks") =>
            {
                // The range (1–32 data, 0–16 parity) is the catalog's to check.
                let key = normalize(key);
                let count: u8 = value.to_string().trim_matches('\'').parse().map_err(|_| {
                    user_error(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("{key} must be a small whole number, not {value}"),
                    )
                })?;
                if key == "data_chunks" {
                    data_chunks = Some(count);
                } else {
                    parity_chunks = Some(count);
                }
            }
            ast::SqlOption::KeyValue { key, value }
                if normalize(key) == "partition_expiration_days" =>
            {
                let days: f64 = value
                    .to_string()
                    .trim_matches('\'')
                    .parse()
                    .ok()
                    .filter(|d: &f64| d.is_finite() && *d > 0.0)
                    .ok_or_else(|| {
                        user_error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!("partition_expiration_days must be a positive number of days, not {value}"),
                        )
                    })?;
                parsed.partition.expiration_micros = Some((days * 86_400e6) as i64);
                parsed.partition_options = true;
            }
            ast::SqlOption::KeyValue { key, value } if normalize(key) == "bloom_filter_columns" => {
                let names = match value {
                    ast::Expr::Value(v) => match &v.value {
                        ast::Value::SingleQuotedString(names) => Some(names.clone()),
                        _ => None,
                    },
                    _ => None,
                }
                .ok_or_else(|| {
                    user_error(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!(
                            "bloom_filter_columns is a string of column names, 'a,b', not {value}"
                        ),
                    )
                })?;
                parsed.bloom_filter_columns = names
                    .split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .collect();
            }
            ast::SqlOption::KeyValue { key, value }
                if normalize(key) == "require_partition_filter" =>
            {
                parsed.partition.require_filter = super::settings::parse_bool(
                    value.to_string().trim_matches('\''),
                )
                .ok_or_else(|| {
                    user_error(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("require_partition_filter must be true or false, not {value}"),
                    )
                })?;
                parsed.partition_options = true;
            }
            other => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "unrecognized table option {other} (known: retention_seconds, data_chunks, \
                         parity_chunks, partition_expiration_days, require_partition_filter, \
                         bloom_filter_columns)"
                    ),
                ));
            }
        }
    }
    parsed.layout = match (data_chunks, parity_chunks) {
        (Some(data_chunks), Some(parity_chunks)) => Some(StripeLayout {
            data_chunks,
            parity_chunks,
        }),
        (None, None) => None,
        _ => {
            return Err(user_error(
                SqlState::INVALID_PARAMETER_VALUE,
                "data_chunks and parity_chunks must be given together",
            ));
        }
    };
    Ok(parsed)
}

/// CREATE TABLE's options.
#[derive(Debug, Default)]
pub(super) struct TableOptions {
    /// Time travel window.
    retention_micros: Option<i64>,
    /// `data_chunks` and `parity_chunks`: the table's stripe layout.
    layout: Option<StripeLayout>,
    /// `partition_expiration_days` and `require_partition_filter`.
    partition: PartitionOptions,
    /// Whether either was given (they need PARTITION BY).
    partition_options: bool,
    /// `bloom_filter_columns`: names of columns whose column chunks carry
    /// bloom filters.
    bloom_filter_columns: Vec<String>,
}

/// The file layout CREATE TABLE's `CLUSTER BY` and `bloom_filter_columns`
/// ask for its `columns`; None with neither.
///
/// # Errors
/// 42P16 for more than four clustering columns, a column named twice, one
/// the table does not have or one of an array, struct or JSON type.
fn create_file_layout(
    cluster_by: Option<&ast::WrappedCollection<Vec<Expr>>>,
    columns: &[quarry_common::catalog::Column],
    options: &TableOptions,
) -> Result<Option<FileLayout>> {
    let field_of = |name: &str, clause: &str| {
        let column = columns.iter().find(|c| c.name == name).ok_or_else(|| {
            user_error(
                SqlState::INVALID_TABLE_DEFINITION,
                format!("{clause} names column \"{name}\", which the table does not have"),
            )
        })?;
        // BigQuery clusters by top-level scalar columns only: an array,
        // struct or JSON value has no order to sort files by, and Parquet
        // keeps no single statistics or bloom filter for it.
        if column.column_type.is_nested() || column.column_type == ColumnType::Json {
            return Err(user_error(
                SqlState::INVALID_TABLE_DEFINITION,
                format!(
                    "{clause} cannot use column \"{name}\" of type {}: only scalar columns",
                    column.column_type
                ),
            ));
        }
        Ok(column.field_id)
    };
    let mut layout = FileLayout::default();
    if let Some(
        ast::WrappedCollection::NoWrapping(exprs) | ast::WrappedCollection::Parentheses(exprs),
    ) = cluster_by
    {
        for expr in exprs {
            let Expr::Identifier(ident) = expr else {
                return Err(user_error(
                    SqlState::INVALID_TABLE_DEFINITION,
                    format!("CLUSTER BY takes column names, not {expr}"),
                ));
            };
            let id = field_of(&normalize(ident), "CLUSTER BY")?;
            if layout.cluster_by.contains(&id) {
                return Err(user_error(
                    SqlState::INVALID_TABLE_DEFINITION,
                    format!("CLUSTER BY names column \"{}\" twice", normalize(ident)),
                ));
            }
            layout.cluster_by.push(id);
        }
        if layout.cluster_by.len() > MAX_CLUSTER_COLUMNS {
            return Err(user_error(
                SqlState::INVALID_TABLE_DEFINITION,
                format!(
                    "CLUSTER BY takes at most {MAX_CLUSTER_COLUMNS} columns, not {}",
                    layout.cluster_by.len()
                ),
            ));
        }
    }
    for name in &options.bloom_filter_columns {
        let id = field_of(name, "bloom_filter_columns")?;
        if !layout.bloom_filters.contains(&id) {
            layout.bloom_filters.push(id);
        }
    }
    Ok((layout != FileLayout::default()).then_some(layout))
}

/// The partitioning CREATE TABLE's `PARTITION BY` asks for its `columns`,
/// with its options; None without PARTITION BY.
///
/// # Errors
/// 42P16 for a bad PARTITION BY; 22023 for partition options without it.
fn create_partitioning(
    partition_by: Option<&Expr>,
    columns: &[quarry_common::catalog::Column],
    options: &TableOptions,
) -> Result<Option<Partitioning>> {
    match partition_by {
        Some(expr) => partitioning_of(expr, columns, options.partition).map(Some),
        None if options.partition_options => Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            "partition_expiration_days and require_partition_filter need PARTITION BY",
        )),
        None => Ok(None),
    }
}

impl Session {
    /// The column type `sql` names, its composite type names looked up in
    /// `catalog`; the fields declared as them, their paths starting at
    /// column `column`, are added to `declared`.
    pub(super) fn column_type_in(
        &self,
        catalog: &Catalog,
        sql: &ast::DataType,
        column: &str,
        declared: &mut Vec<DeclaredType>,
    ) -> Result<ColumnType> {
        let named = |name: &ObjectName| {
            let key = self.resolve(name).ok()?;
            catalog.types.get(&key).cloned()
        };
        column_type_naming(sql, &named, &mut vec![column.to_owned()], declared)
    }

    /// A column definition of CREATE TABLE or ALTER TABLE ADD COLUMN; the
    /// fields declared as named composite types are added to `declared`.
    pub(super) async fn column_def(
        &self,
        catalog: &Catalog,
        column: &ast::ColumnDef,
        declared: &mut Vec<DeclaredType>,
    ) -> Result<ColumnDef> {
        let column_type = self.column_type_in(
            catalog,
            &column.data_type,
            &normalize(&column.name),
            declared,
        )?;
        let mut nullable = true;
        let mut default = None;
        for option in &column.options {
            match &option.option {
                ast::ColumnOption::NotNull | ast::ColumnOption::PrimaryKey(_) => nullable = false,
                ast::ColumnOption::Null => nullable = true,
                // Kept by column_constraints.
                ast::ColumnOption::Unique(_) | ast::ColumnOption::ForeignKey(_) => {}
                ast::ColumnOption::Default(expr) => {
                    let value = self.eval_constant(expr, &column.data_type).await?;
                    default = crate::data_file::datum_of(&value);
                }
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("column option {other} is not supported yet"),
                    ));
                }
            }
        }
        Ok(ColumnDef {
            name: normalize(&column.name),
            column_type,
            nullable,
            default,
        })
    }

    pub(super) async fn alter_table(
        &mut self,
        name: &ObjectName,
        operations: Vec<ast::AlterTableOperation>,
    ) -> Result<Output> {
        let view = self.begin_statement().await?;
        let (schema, relation) = self.resolve(name)?;
        if view.catalog.view(&schema, &relation).is_some() {
            // PostgreSQL lets ALTER TABLE rename a view.
            return match operations.as_slice() {
                [ast::AlterTableOperation::RenameTable { table_name }] => {
                    let to = match table_name {
                        ast::RenameTableNameKind::To(name) | ast::RenameTableNameKind::As(name) => {
                            object_parts(name).pop().unwrap_or_default()
                        }
                    };
                    self.write_ddl(Command::RenameView {
                        schema,
                        name: relation,
                        to,
                    })
                    .await?;
                    Ok(Output::Command(CommandTag::new("ALTER TABLE")))
                }
                _ => Err(not_a(&relation, "table", "ALTER VIEW")),
            };
        }
        let table = self.table(&view.catalog, name)?.clone();
        let mut changes = Vec::with_capacity(operations.len());
        // Constraint actions, after the column changes (a key over a column
        // added by the same statement).
        let mut constraints = Vec::new();
        // Fields given a named composite type, declared after the changes.
        let mut declared = Vec::new();
        for operation in operations {
            let change = match operation {
                ast::AlterTableOperation::AddColumn { column_def, .. } => {
                    for constraint in self.column_constraints(&column_def)? {
                        constraints.push(Command::AddConstraint {
                            schema: schema.clone(),
                            table: table.name.clone(),
                            constraint,
                        });
                    }
                    SchemaChange::AddColumn(
                        self.column_def(&view.catalog, &column_def, &mut declared)
                            .await?,
                    )
                }
                ast::AlterTableOperation::AddConstraint { constraint, .. } => {
                    constraints.push(Command::AddConstraint {
                        schema: schema.clone(),
                        table: table.name.clone(),
                        constraint: self.table_constraint(&constraint)?,
                    });
                    continue;
                }
                ast::AlterTableOperation::DropConstraint {
                    if_exists,
                    name,
                    drop_behavior,
                } => {
                    constraints.push(Command::DropConstraint {
                        schema: schema.clone(),
                        table: table.name.clone(),
                        name: normalize(&name),
                        if_exists,
                        cascade: matches!(drop_behavior, Some(ast::DropBehavior::Cascade)),
                    });
                    continue;
                }
                ast::AlterTableOperation::DropColumn { column_names, .. } => {
                    changes.extend(
                        column_names
                            .iter()
                            .map(|c| SchemaChange::DropColumn(normalize(c))),
                    );
                    continue;
                }
                ast::AlterTableOperation::RenameColumn {
                    old_column_name,
                    new_column_name,
                } => SchemaChange::RenameColumn {
                    from: normalize(&old_column_name),
                    to: normalize(&new_column_name),
                },
                ast::AlterTableOperation::RenameTable { table_name } => {
                    let target = match table_name {
                        ast::RenameTableNameKind::To(name) | ast::RenameTableNameKind::As(name) => {
                            name
                        }
                    };
                    let parts = object_parts(&target);
                    SchemaChange::RenameTable(parts.last().cloned().unwrap_or_default())
                }
                ast::AlterTableOperation::AlterColumn {
                    column_name,
                    op: ast::AlterColumnOperation::SetDataType { data_type, .. },
                } => {
                    let column = normalize(&column_name);
                    SchemaChange::SetType {
                        column_type: self.column_type_in(
                            &view.catalog,
                            &data_type,
                            &column,
                            &mut declared,
                        )?,
                        column,
                    }
                }
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("ALTER TABLE {other} is not supported yet"),
                    ));
                }
            };
            changes.push(change);
        }
        // Every action of one ALTER TABLE applies, or none.
        let mut commands: Vec<Command> = changes
            .into_iter()
            .map(|change| Command::AlterTable {
                table: table.id,
                change,
            })
            .collect();
        commands.extend(constraints);
        if !declared.is_empty() {
            // A RENAME TO in the same statement has renamed the table.
            let table_name = commands
                .iter()
                .rev()
                .find_map(|c| match c {
                    Command::AlterTable {
                        change: SchemaChange::RenameTable(to),
                        ..
                    } => Some(to.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| table.name.clone());
            commands.push(Command::DeclareTypes {
                schema: schema.clone(),
                table: table_name,
                fields: declared,
            });
        }
        let command = match commands.len() {
            1 => commands.pop().expect("one command"),
            _ => Command::Batch(commands),
        };
        self.write_ddl(command).await?;
        Ok(Output::Command(CommandTag::new("ALTER TABLE")))
    }

    /// CREATE TABLE: empty, a clone of `create.clone` (at `clone_as_of`, or
    /// its current snapshot), or AS a query.
    pub(super) async fn create_table(
        &mut self,
        create: ast::CreateTable,
        clone_as_of: Option<Expr>,
    ) -> Result<Output> {
        if create.or_replace || create.temporary || create.external {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "CREATE OR REPLACE / TEMPORARY / EXTERNAL TABLE is not supported yet",
            ));
        }
        let mut constraints = Vec::new();
        for column in &create.columns {
            constraints.extend(self.column_constraints(column)?);
        }
        for constraint in &create.constraints {
            constraints.push(self.table_constraint(constraint)?);
        }
        if !constraints.is_empty() && (create.query.is_some() || create.clone.is_some()) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "constraints of CREATE TABLE AS or CLONE are not supported: add them with ALTER TABLE ... ADD CONSTRAINT",
            ));
        }
        let view = self.begin_statement().await?;
        let (schema, name) = self.resolve(&create.name)?;
        let options = table_options(&create.table_options)?;
        let (retention_micros, layout) = (options.retention_micros, options.layout);
        if create.clone.is_some() || create.query.is_none() {
            // A zero-copy clone (BigQuery's table clone) starts with the source's
            // data files at its current snapshot (or the one current at FOR
            // SYSTEM_TIME AS OF), keeping their field ids; each table's later
            // changes write new files, so neither sees the other's. A plain
            // CREATE TABLE starts empty.
            let mut declared = Vec::new();
            let (columns, files, field_ids, deletes) = match &create.clone {
                Some(source_name) => {
                    let source = self.table(&view.catalog, source_name)?;
                    if view.catalog.external_source(source.id).is_some() {
                        return Err(user_error(
                            SqlState::WRONG_OBJECT_TYPE,
                            format!(
                                "cannot clone \"{source_name}\": it is an external table (CREATE TABLE ... AS SELECT copies its rows)"
                            ),
                        ));
                    }
                    let access = self.access().await?;
                    access.require(&Securable::Schema(source.schema.clone()), Privileges::USAGE)?;
                    access.require(&Securable::Table(source.id), Privileges::SELECT)?;
                    let snapshot = match &clone_as_of {
                        Some(expr) => self.snapshot_at(source, source_name, expr).await?,
                        None => source.current_snapshot(),
                    };
                    let source_columns = source.columns_at(snapshot);
                    let columns = source_columns
                        .iter()
                        .map(|c| ColumnDef {
                            name: c.name.clone(),
                            column_type: c.column_type.clone(),
                            nullable: c.nullable,
                            default: c.default.clone(),
                        })
                        .collect();
                    let field_ids = source_columns.iter().map(|c| c.field_id).collect();
                    let files: Vec<quarry_common::catalog::DataFile> =
                        source.files_at(snapshot.id).cloned().collect();
                    // The rows its deletion vectors delete stay deleted.
                    let deletes = files
                        .iter()
                        .filter_map(|f| {
                            let rows = source.deleted_rows(f.chunk, snapshot.id)?;
                            Some((f.chunk, quarry_raft::encode_rows(rows)))
                        })
                        .collect();
                    (columns, files, field_ids, deletes)
                }
                None => {
                    let mut columns = Vec::with_capacity(create.columns.len());
                    for column in &create.columns {
                        columns.push(
                            self.column_def(&view.catalog, column, &mut declared)
                                .await?,
                        );
                    }
                    (columns, Vec::new(), Vec::new(), Vec::new())
                }
            };
            // A clone is laid out as its source; a new table as it says.
            let (partitioning, file_layout) = match &create.clone {
                Some(source_name) => {
                    let refused = if create.partition_by.is_some() || options.partition_options {
                        Some(
                            "a clone is partitioned as its source: PARTITION BY and its options do not apply",
                        )
                    } else if create.cluster_by.is_some()
                        || !options.bloom_filter_columns.is_empty()
                    {
                        Some(
                            "a clone is clustered as its source: CLUSTER BY and bloom_filter_columns do not apply",
                        )
                    } else {
                        None
                    };
                    if let Some(message) = refused {
                        return Err(user_error(SqlState::FEATURE_NOT_SUPPORTED, message));
                    }
                    let source = self.table(&view.catalog, source_name)?;
                    (
                        source.partitioning.as_deref().cloned(),
                        source.file_layout.as_deref().cloned(),
                    )
                }
                None => {
                    let columns = columns_from_defs(&columns);
                    (
                        create_partitioning(create.partition_by.as_deref(), &columns, &options)?,
                        create_file_layout(create.cluster_by.as_ref(), &columns, &options)?,
                    )
                }
            };
            let mut columns: Vec<ColumnDef> = columns;
            // A primary key's columns are NOT NULL (PostgreSQL's rule).
            for constraint in &constraints {
                if let ConstraintDefKind::PrimaryKey(keys) = &constraint.kind {
                    for column in columns.iter_mut().filter(|c| keys.contains(&c.name)) {
                        column.nullable = false;
                    }
                }
            }
            if create.if_not_exists && view.catalog.relation_exists(&schema, &name) {
                return Ok(Output::Command(CommandTag::new("CREATE TABLE")));
            }
            let create_table = Command::CreateTable {
                schema: schema.clone(),
                name: name.clone(),
                columns,
                if_not_exists: create.if_not_exists,
                files,
                retention_micros,
                field_ids,
                layout,
                stripes: Vec::new(),
            };
            // The table, its partitioning and its constraints are created
            // together.
            let partitioning = partitioning.map(|partitioning| Command::SetPartitioning {
                schema: schema.clone(),
                name: name.clone(),
                partitioning,
            });
            let file_layout = file_layout.map(|layout| Command::SetFileLayout {
                schema: schema.clone(),
                name: name.clone(),
                layout,
            });
            let deletes = (!deletes.is_empty()).then(|| Command::SetDeletes {
                schema: schema.clone(),
                name: name.clone(),
                deletes,
            });
            let declared = (!declared.is_empty()).then(|| Command::DeclareTypes {
                schema: schema.clone(),
                table: name.clone(),
                fields: declared,
            });
            let command =
                if constraints.is_empty()
                    && partitioning.is_none()
                    && file_layout.is_none()
                    && deletes.is_none()
                    && declared.is_none()
                {
                    create_table
                } else {
                    Command::Batch(
                        std::iter::once(create_table)
                            .chain(partitioning)
                            .chain(file_layout)
                            .chain(deletes)
                            .chain(declared)
                            .chain(constraints.into_iter().map(|constraint| {
                                Command::AddConstraint {
                                    schema: schema.clone(),
                                    table: name.clone(),
                                    constraint,
                                }
                            }))
                            .collect(),
                    )
                };
            self.write_ddl(command).await?;
            return Ok(Output::Command(CommandTag::new("CREATE TABLE")));
        }
        let query = create
            .query
            .expect("checked above: CREATE TABLE AS has a query");
        // CREATE TABLE AS: table and rows commit together in one command.
        if view.catalog.table(&schema, &name).is_some() {
            if create.if_not_exists {
                return Ok(Output::Command(CommandTag::with_rows("SELECT", 0)));
            }
            return Err(quarry_raft::CatalogError::TableExists(name).into());
        }
        if !view.catalog.schemas.contains_key(&schema) {
            return Err(quarry_raft::CatalogError::SchemaNotFound(schema).into());
        }
        // Checked before any row is written; the command is checked again
        // when proposed.
        self.access()
            .await?
            .require(&Securable::Schema(schema.clone()), Privileges::CREATE)?;
        let plan = self.plan(Statement::Query(query)).await?;
        if create.columns.is_empty() {
            no_repeated_columns(&plan)?;
        }
        let arrow_schema = plan.schema().as_arrow().clone();
        let mut columns = Vec::with_capacity(arrow_schema.fields().len());
        for (i, field) in arrow_schema.fields().iter().enumerate() {
            let name = if create.columns.is_empty() {
                field.name().clone()
            } else {
                create
                    .columns
                    .get(i)
                    .map(|c| normalize(&c.name))
                    .ok_or_else(|| {
                        user_error(
                            SqlState::SYNTAX_ERROR,
                            "CREATE TABLE AS names more columns than the query has",
                        )
                    })?
            };
            columns.push(ColumnDef {
                name,
                column_type: column_type_of(field.data_type())?,
                nullable: true,
                default: None,
            });
        }
        let partitioning = create_partitioning(
            create.partition_by.as_deref(),
            &columns_from_defs(&columns),
            &options,
        )?;
        let file_layout = create_file_layout(
            create.cluster_by.as_ref(),
            &columns_from_defs(&columns),
            &options,
        )?;
        if self.in_transaction() {
            // In a transaction block the table is created in the block's
            // catalog and filled like any table there; COMMIT sends both.
            self.write_ddl(Command::CreateTable {
                schema: schema.clone(),
                name: name.clone(),
                columns,
                if_not_exists: false,
                files: Vec::new(),
                retention_micros,
                field_ids: Vec::new(),
                layout,
                stripes: Vec::new(),
            })
            .await?;
            if let Some(partitioning) = partitioning {
                self.write_ddl(Command::SetPartitioning {
                    schema: schema.clone(),
                    name: name.clone(),
                    partitioning,
                })
                .await?;
            }
            if let Some(layout) = file_layout {
                self.write_ddl(Command::SetFileLayout {
                    schema: schema.clone(),
                    name: name.clone(),
                    layout,
                })
                .await?;
            }
            let view = self.begin_statement().await?;
            let table = self.table(&view.catalog, &create.name)?.clone();
            let rows = self.write_rows(plan, table, &view.writes, true).await?;
            return Ok(Output::Command(CommandTag::with_rows("SELECT", rows)));
        }
        let provisional = Arc::new(Table {
            id: 0,
            schema: schema.clone(),
            name: name.clone(),
            next_field_id: columns.len() as u32 + 1,
            columns: columns_from_defs(&columns),
            schema_id: 0,
            past_schemas: Vec::new(),
            snapshots: Default::default(),
            files: Default::default(),
            live_files: Default::default(),
            buffer: Default::default(),
            moved: Default::default(),
            deletes: Default::default(),
            retention_micros,
            layout,
            partitioning: partitioning.clone().map(Arc::new),
            file_layout: file_layout.clone().map(Arc::new),
        });
        // CREATE TABLE carries files in stripes only.
        let rows = self
            .write_rows(plan, provisional, &view.writes, false)
            .await?;
        let changes = view.writes.take().await?.changes;
        let mut files = Vec::new();
        let mut stripes = Vec::new();
        for change in changes {
            files.extend(change.added);
            stripes.extend(change.stripes);
        }
        let (table_schema, table_name) = (schema.clone(), name.clone());
        let command = Command::CreateTable {
            schema,
            name,
            columns,
            if_not_exists: false,
            files: files.clone(),
            retention_micros,
            field_ids: Vec::new(),
            layout,
            stripes,
        };
        let layout_commands: Vec<Command> = partitioning
            .map(|partitioning| Command::SetPartitioning {
                schema: table_schema.clone(),
                name: table_name.clone(),
                partitioning,
            })
            .into_iter()
            .chain(file_layout.map(|layout| Command::SetFileLayout {
                schema: table_schema.clone(),
                name: table_name.clone(),
                layout,
            }))
            .collect();
        let command = if layout_commands.is_empty() {
            command
        } else {
            Command::Batch(std::iter::once(command).chain(layout_commands).collect())
        };
        let command = match self.authorize(command).await {
            Ok(command) => command,
            Err(e) => {
                view.writes.discard_files(files);
                return Err(e);
            }
        };
        let audited = Command::CreateTable {
            schema: table_schema,
            name: table_name,
            columns: Vec::new(),
            if_not_exists: false,
            files: Vec::new(),
            retention_micros: None,
            field_ids: Vec::new(),
            layout: None,
            stripes: Vec::new(),
        };
        match self.engine.meta.write(command).await {
            Ok(_) => {
                self.engine.audit_command(&self.user().name, &audited);
                Ok(Output::Command(CommandTag::with_rows("SELECT", rows)))
            }
            Err(e) => {
                if refused(&e) {
                    view.writes.discard_files(files);
                }
                Err(e.into())
            }
        }
    }

    /// Runs `plan` and writes its rows as data files of `table` into
    /// `writes` (small ones held for the ingest buffer if `hold`); the
    /// number of rows.
    async fn write_rows(
        &mut self,
        plan: LogicalPlan,
        table: Arc<Table>,
        writes: &Arc<WriteSet>,
        hold: bool,
    ) -> Result<u64> {
        let mut stream = self.stream(plan).await?;
        let mut writer = DataFileWriter::new(table, writes.clone());
        if !hold {
            writer = writer.into_stripes();
        }
        while let Some(batch) = stream.next().await {
            writer.write(batch.map_err(Error::from_engine)?).await?;
        }
        writer.finish().await
    }

    pub(super) async fn drop(
        &mut self,
        object_type: ObjectType,
        if_exists: bool,
        names: &[ObjectName],
        cascade: bool,
    ) -> Result<Output> {
        let tag = match object_type {
            ObjectType::Table => "DROP TABLE",
            ObjectType::View => "DROP VIEW",
            ObjectType::Schema => "DROP SCHEMA",
            ObjectType::Type => "DROP TYPE",
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("DROP {other} is not supported"),
                ));
            }
        };
        let catalog = self.ddl_catalog().await?;
        for name in names {
            let command = match object_type {
                ObjectType::Table => {
                    let (schema, name) = self.resolve(name)?;
                    if catalog.view(&schema, &name).is_some() {
                        return Err(not_a(&name, "table", "DROP VIEW"));
                    }
                    let drop = Command::DropTable {
                        schema: schema.clone(),
                        name: name.clone(),
                        if_exists,
                    };
                    match catalog.table(&schema, &name) {
                        Some(table) if cascade => {
                            let mut commands = referencing_keys(&catalog, table.id);
                            commands.push(drop);
                            Command::Batch(commands)
                        }
                        _ => drop,
                    }
                }
                ObjectType::View => {
                    let (schema, name) = self.resolve(name)?;
                    if catalog.table(&schema, &name).is_some() {
                        return Err(not_a(&name, "view", "DROP TABLE"));
                    }
                    Command::DropView {
                        schema,
                        name,
                        if_exists,
                    }
                }
                ObjectType::Type => {
                    let (schema, name) = self.resolve(name)?;
                    if cascade {
                        return Err(user_error(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            "DROP TYPE ... CASCADE is not supported: drop or alter the columns of the type first",
                        ));
                    }
                    Command::DropType {
                        schema,
                        name,
                        if_exists,
                    }
                }
                _ => Command::DropSchema {
                    name: object_parts(name).join("."),
                    if_exists,
                    cascade,
                },
            };
            self.write_ddl(command).await?;
        }
        Ok(Output::Command(CommandTag::new(tag)))
    }

    /// CREATE [OR REPLACE] VIEW name [(columns)] AS query: the query is
    /// planned now (so a view of missing tables or columns is refused) and
    /// kept as text with its column names.
    pub(super) async fn create_view(&mut self, create: ast::CreateView) -> Result<Output> {
        if create.materialized || create.temporary || create.if_not_exists || create.or_alter {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "only CREATE [OR REPLACE] VIEW name [(columns)] AS query is supported",
            ));
        }
        let (schema, name) = self.resolve(&create.name)?;
        self.begin_statement().await?;
        let plan = self.plan(Statement::Query(create.query.clone())).await?;
        if create.columns.is_empty() {
            no_repeated_columns(&plan)?;
        }
        let derived: Vec<String> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if create.columns.len() > derived.len() {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "CREATE VIEW specifies more column names than columns",
            ));
        }
        let mut columns: Vec<String> = create.columns.iter().map(|c| normalize(&c.name)).collect();
        columns.extend(derived[columns.len()..].iter().cloned());
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].contains(column) {
                return Err(user_error(
                    SqlState::DUPLICATE_COLUMN,
                    format!("column \"{column}\" specified more than once"),
                ));
            }
        }
        let view = quarry_common::catalog::View {
            schema,
            name,
            query: create.query.to_string(),
            columns,
            created_at: 0,
        };
        self.write_ddl(Command::CreateView {
            view,
            or_replace: create.or_replace,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("CREATE VIEW")))
    }

    /// CREATE TYPE name AS (field type, ...): a named composite type
    /// (PostgreSQL's, section 8.16 of its manual), usable wherever a
    /// column type is.
    pub(super) async fn create_type(
        &mut self,
        name: &ObjectName,
        representation: Option<ast::UserDefinedTypeRepresentation>,
    ) -> Result<Output> {
        let Some(ast::UserDefinedTypeRepresentation::Composite { attributes }) = representation
        else {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "only composite types (CREATE TYPE name AS (field type, ...)) are supported",
            ));
        };
        let (schema, type_name) = self.resolve(name)?;
        let catalog = self.ddl_catalog().await?;
        let mut fields: Vec<NestedField> = Vec::with_capacity(attributes.len());
        for attribute in &attributes {
            let field = normalize(&attribute.name);
            if fields.iter().any(|f| f.name == field) {
                return Err(user_error(
                    SqlState::DUPLICATE_COLUMN,
                    format!("column \"{field}\" specified more than once"),
                ));
            }
            // A field of a composite type is stored as its struct.
            let column_type =
                self.column_type_in(&catalog, &attribute.data_type, &field, &mut Vec::new())?;
            fields.push(NestedField {
                field_id: 0,
                name: field,
                column_type,
            });
        }
        if fields.is_empty() {
            // PostgreSQL allows a composite type of no fields; a struct
            // column needs one.
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "a composite type needs at least one field",
            ));
        }
        self.write_ddl(Command::CreateType {
            schema,
            name: type_name,
            fields,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("CREATE TYPE")))
    }

    /// ALTER VIEW [IF EXISTS] name RENAME TO to.
    pub(super) async fn rename_view(
        &mut self,
        name: &ObjectName,
        to: &Ident,
        if_exists: bool,
    ) -> Result<Output> {
        let (schema, name) = self.resolve(name)?;
        let catalog = self.ddl_catalog().await?;
        if catalog.table(&schema, &name).is_some() {
            return Err(not_a(&name, "view", "ALTER TABLE"));
        }
        if catalog.view(&schema, &name).is_none() && if_exists {
            return Ok(Output::Command(CommandTag::new("ALTER VIEW")));
        }
        self.write_ddl(Command::RenameView {
            schema,
            name,
            to: normalize(to),
        })
        .await?;
        Ok(Output::Command(CommandTag::new("ALTER VIEW")))
    }
}

/// 42809: `name` is a relation of the other kind (PostgreSQL's "... is not a
/// table"), with the statement that fits it.
/// DROP CONSTRAINT of each foreign key of another table that references
/// table `id` (DROP TABLE ... CASCADE).
fn referencing_keys(
    catalog: &quarry_common::catalog::Catalog,
    id: quarry_common::catalog::TableId,
) -> Vec<Command> {
    catalog
        .notes
        .iter()
        .filter(|(other, _)| **other != id)
        .filter_map(|(other, notes)| Some((catalog.table_by_id(*other)?, notes)))
        .flat_map(|(table, notes)| {
            notes.constraints.iter().filter_map(move |c| match &c.kind {
                quarry_common::catalog::ConstraintKind::ForeignKey { table: target, .. }
                    if *target == id =>
                {
                    Some(Command::DropConstraint {
                        schema: table.schema.clone(),
                        table: table.name.clone(),
                        name: c.name.clone(),
                        if_exists: true,
                        cascade: false,
                    })
                }
                _ => None,
            })
        })
        .collect()
}

pub(super) fn not_a(name: &str, kind: &str, use_instead: &str) -> Error {
    user_error(
        SqlState::WRONG_OBJECT_TYPE,
        format!("\"{name}\" is not a {kind}; use {use_instead}"),
    )
}

/// 42701 when `plan` has two result columns of one name, which a query may
/// return but a table or view may not have (PostgreSQL's rule).
fn no_repeated_columns(plan: &LogicalPlan) -> Result<()> {
    match plan
        .schema()
        .fields()
        .iter()
        .find(|f| f.name().contains(crate::parser::REPEATED_NAME_MARK))
    {
        Some(field) => Err(user_error(
            SqlState::DUPLICATE_COLUMN,
            format!(
                "column \"{}\" specified more than once",
                crate::parser::client_column_name(field.name())
            ),
        )),
        None => Ok(()),
    }
}
