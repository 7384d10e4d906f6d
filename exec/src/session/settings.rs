//! Session settings: SET / SHOW, their defaults, and the values they accept
//! (durations with PostgreSQL's units, `distsql` modes).

use super::*;

/// The session setting `distsql`: whether a query runs over the cluster's
/// live nodes or on the node it arrives at (CockroachDB's setting, with its
/// values `off`, `auto` and `on`; its `always` is `on` here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistSql {
    /// Every query on this node alone.
    Off,
    /// Queries that read at least [`QueryResources::distribute_min_bytes`]
    /// over the cluster, smaller ones here: below that, a distributed run's
    /// fixed cost (starting fragments on every node, exchange round trips)
    /// outweighs what sharing the scan saves.
    Auto,
    /// Every query that can be over the cluster.
    On,
}

impl DistSql {
    /// The mode a setting's value names (any case); None if none.
    pub fn parse(value: &str) -> Option<DistSql> {
        match value.to_ascii_lowercase().as_str() {
            "off" => Some(DistSql::Off),
            "auto" => Some(DistSql::Auto),
            "on" | "always" => Some(DistSql::On),
            _ => None,
        }
    }

    /// Whether a query whose scans read `scanned` bytes of data files is
    /// distributed, with `min_bytes` the threshold of `auto`.
    pub fn distributes(self, scanned: u64, min_bytes: u64) -> bool {
        match self {
            DistSql::Off => false,
            DistSql::Auto => scanned >= min_bytes,
            DistSql::On => true,
        }
    }
}

/// A setting PostgreSQL clients read or write (SET / SHOW).
pub(super) const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    // CockroachDB's name and values (see [`DistSql`]).
    ("distsql", "auto"),
    ("default_transaction_isolation", "repeatable read"),
    // How DELETE and UPDATE change data files: `merge-on-read` (deletion
    // vectors) or `copy-on-write`, Iceberg's values of write.delete.mode
    // (docs/DATA_LAYOUT.md, "Row-level changes").
    ("dml_mode", "merge-on-read"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("lc_messages", "C"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    // Whether alike subplans (a CTE read more than once) are computed once
    // (exec/src/shared.rs).
    ("share_subplans", "off"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    // BigQuery's useQueryCache (exec/src/result_cache.rs).
    ("use_query_cache", "on"),
];

/// Settings fixed when the server was built (PostgreSQL's `internal`
/// context): SHOW and pg_settings give them, SET refuses them (55P02).
/// JDBC's `getImportedKeys` reads `max_index_keys`.
pub(super) const PRESET_SETTINGS: &[(&str, &str)] = &[
    ("block_size", "8192"),
    ("max_function_args", "100"),
    ("max_index_keys", "32"),
    ("server_version", super::SERVER_VERSION),
    ("server_version_num", "160000"),
];

/// Whether setting `name` is one of [`PRESET_SETTINGS`].
pub fn is_preset_setting(name: &str) -> bool {
    PRESET_SETTINGS.iter().any(|(preset, _)| *preset == name)
}

/// Parses a PostgreSQL Boolean setting (`on`, `off`, `true`, `false`, `1`,
/// `0`, any case).
pub(super) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Some(true),
        "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a PostgreSQL duration setting (`5000`, `5s`, `250ms`, `1min`) to ms.
pub(super) fn parse_duration_ms(value: &str) -> Option<u64> {
    let value = value.trim().trim_matches('\'');
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let number: u64 = value[..digits_end].parse().ok()?;
    let unit = value[digits_end..].trim().to_ascii_lowercase();
    let factor = match unit.as_str() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Session {
    pub(super) async fn set(&mut self, set: ast::Set) -> Result<Output> {
        let (name, value) = match set {
            ast::Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = object_parts(&variable).join(".");
                let value = values
                    .iter()
                    .map(|v| match v {
                        Expr::Value(v) => match &v.value {
                            ast::Value::SingleQuotedString(s)
                            | ast::Value::DoubleQuotedString(s) => s.clone(),
                            other => other.to_string(),
                        },
                        Expr::Identifier(ident) => ident.value.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                (name, value)
            }
            ast::Set::SetTransaction {
                modes,
                session: false,
                ..
            } => {
                let Some(transaction) = &mut self.transaction else {
                    return Err(user_error(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        "SET TRANSACTION can only be used in transaction blocks",
                    ));
                };
                for mode in &modes {
                    if let ast::TransactionMode::IsolationLevel(level) = mode {
                        transaction.isolation = Isolation::from_level(level);
                    }
                }
                return Ok(Output::Command(CommandTag::new("SET")));
            }
            ast::Set::SetTimeZone { value, .. } => (
                "timezone".to_owned(),
                value.to_string().trim_matches('\'').to_owned(),
            ),
            ast::Set::SetNames { charset_name, .. } => (
                "client_encoding".to_owned(),
                charset_name.to_string().trim_matches('\'').to_owned(),
            ),
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("{other} is not supported"),
                ));
            }
        };
        let value = if name.eq_ignore_ascii_case("client_encoding") {
            check_client_encoding(&value)?;
            "UTF8".to_owned()
        } else {
            value
        };
        if is_preset_setting(&name) {
            return Err(user_error(
                SqlState::CANT_CHANGE_RUNTIME_PARAM,
                format!("parameter \"{name}\" cannot be changed"),
            ));
        }
        if name.starts_with("datafusion.") {
            self.ctx
                .sql(&format!("SET {name} = '{}'", value.replace('\'', "''")))
                .await
                .map_err(Error::from_engine)?;
            return Ok(Output::Command(CommandTag::new("SET")));
        }
        match name.as_str() {
            "search_path" => {
                let first = value
                    .split(',')
                    .map(|s| s.trim().trim_matches('"'))
                    .find(|s| !s.is_empty() && *s != "$user" && *s != "pg_catalog")
                    .unwrap_or(DEFAULT_SCHEMA)
                    .to_owned();
                self.configure(|options| options.catalog.default_schema = first);
            }
            "timezone" => {
                let zone = if value.eq_ignore_ascii_case("utc") || value.eq_ignore_ascii_case("gmt")
                {
                    "+00:00".to_owned()
                } else {
                    value.clone()
                };
                self.ctx
                    .sql(&format!(
                        "SET datafusion.execution.time_zone = '{}'",
                        zone.replace('\'', "''")
                    ))
                    .await
                    .map_err(|e| {
                        user_error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"TimeZone\": \"{value}\": {e}"),
                        )
                    })?;
            }
            "distsql" if DistSql::parse(&value).is_none() => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "invalid value for parameter \"distsql\": \"{value}\" (off, auto or on)"
                    ),
                ));
            }
            "dml_mode"
                if !matches!(
                    value.to_ascii_lowercase().as_str(),
                    "merge-on-read" | "copy-on-write"
                ) =>
            {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "invalid value for parameter \"dml_mode\": \"{value}\" \
                         (merge-on-read or copy-on-write)"
                    ),
                ));
            }
            "share_subplans" if parse_bool(&value).is_none() => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "parameter \"share_subplans\" requires a Boolean value, not \"{value}\""
                    ),
                ));
            }
            "use_query_cache" if parse_bool(&value).is_none() => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "parameter \"use_query_cache\" requires a Boolean value, not \"{value}\""
                    ),
                ));
            }
            "statement_timeout" if parse_duration_ms(&value).is_none() => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
                ));
            }
            _ => {}
        }
        self.settings.insert(name, value);
        self.catalog.set_settings(&self.settings);
        Ok(Output::Command(CommandTag::new("SET")))
    }

    pub(super) fn show(&self, variable: &[Ident]) -> Result<Output> {
        let name = variable.iter().map(normalize).collect::<Vec<_>>().join(" ");
        let (column, values): (String, Vec<String>) = if name == "all" {
            (
                "setting".to_owned(),
                self.settings
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect(),
            )
        } else if name == "transaction_isolation" || name == "transaction isolation level" {
            (
                "transaction_isolation".to_owned(),
                vec![self.isolation_name().to_owned()],
            )
        } else {
            let value = self.settings.get(&name).ok_or_else(|| {
                user_error(
                    SqlState::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?;
            (name.clone(), vec![value.clone()])
        };
        text_rows(&column, values)
    }

    /// Carries out the `set_config` calls of `statement` (found by
    /// [`set_config_calls`]) in order, as SETs, and gives `statement` with
    /// each call replaced by the setting's new value, as PostgreSQL answers
    /// it. The calls run before the rest of the select list is evaluated.
    pub(super) async fn set_config(
        &mut self,
        mut statement: Statement,
        calls: Vec<SetConfigCall>,
    ) -> Result<Statement> {
        for call in &calls {
            let set = ast::Set::SingleAssignment {
                scope: None,
                hivevar: false,
                variable: ObjectName::from(vec![Ident::new(call.name.clone())]),
                values: vec![Expr::Value(
                    ast::Value::SingleQuotedString(call.value.clone()).into(),
                )],
            };
            self.set(set).await?;
        }
        let Statement::Query(query) = &mut statement else {
            return Ok(statement);
        };
        let ast::SetExpr::Select(select) = query.body.as_mut() else {
            return Ok(statement);
        };
        for call in calls {
            let value = self
                .settings
                .get(&call.name.to_ascii_lowercase())
                .cloned()
                .unwrap_or(call.value);
            let item = &mut select.projection[call.item];
            let alias = match item {
                ast::SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                _ => Ident::new("set_config"),
            };
            *item = ast::SelectItem::ExprWithAlias {
                expr: Expr::Value(ast::Value::SingleQuotedString(value).into()),
                alias,
            };
        }
        Ok(statement)
    }

    /// The statement timeout in milliseconds; 0 means none.
    pub fn statement_timeout_ms(&self) -> u64 {
        self.settings
            .get("statement_timeout")
            .and_then(|v| parse_duration_ms(v))
            .unwrap_or(0)
    }
}

/// One `set_config('name', 'value', is_local)` call of a select list.
pub(super) struct SetConfigCall {
    /// The select list item it is.
    item: usize,
    name: String,
    value: String,
}

/// The `[pg_catalog.]set_config('name', 'value', is_local)` items, with
/// constant arguments, of a SELECT without FROM (pg_dump's and drivers'
/// way to set `search_path`; asyncpg's to turn `jit` off beside
/// `current_setting('jit')`): SETs in a function's clothes, none for any
/// other statement. `is_local` is taken as SET, as settings are not
/// transactional in Quarry.
pub(super) fn set_config_calls(statement: &Statement) -> Vec<SetConfigCall> {
    let Statement::Query(query) = statement else {
        return Vec::new();
    };
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return Vec::new();
    };
    if !select.from.is_empty() || select.selection.is_some() {
        return Vec::new();
    }
    select
        .projection
        .iter()
        .enumerate()
        .filter_map(|(item, projected)| {
            let (ast::SelectItem::UnnamedExpr(Expr::Function(function))
            | ast::SelectItem::ExprWithAlias {
                expr: Expr::Function(function),
                ..
            }) = projected
            else {
                return None;
            };
            let (name, value) = set_config_arguments(function)?;
            Some(SetConfigCall { item, name, value })
        })
        .collect()
}

/// The setting and value of a `set_config` call with constant arguments.
fn set_config_arguments(function: &ast::Function) -> Option<(String, String)> {
    if crate::unnest::function_name(&function.name)? != "set_config" {
        return None;
    }
    let ast::FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let text = |arg: &ast::FunctionArg| match arg {
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s.clone()),
            ast::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    };
    match list.args.as_slice() {
        [name, value, local] => {
            text(local)?;
            Some((text(name)?, text(value)?))
        }
        _ => None,
    }
}

/// Quarry speaks UTF-8 only: a client encoding that is another character
/// set is refused (0A000, as PostgreSQL refuses a conversion it lacks)
/// rather than accepted and not honoured; an unknown name is 22023.
fn check_client_encoding(value: &str) -> Result<()> {
    if value.eq_ignore_ascii_case("default") {
        return Ok(());
    }
    match crate::charset::Charset::named(value) {
        Ok(crate::charset::Charset::Utf8) => Ok(()),
        Ok(_) => Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "client_encoding \"{value}\" is not supported: Quarry converts only to and from \
                 UTF8 on the wire (COPY's ENCODING option converts data files)"
            ),
        )),
        Err(_) => Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"client_encoding\": \"{value}\""),
        )),
    }
}

/// Rows of one text column `column` holding `values`.
pub(super) fn text_rows(column: &str, values: Vec<String>) -> Result<Output> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
        .map_err(|e| Error::Internal(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok(batch) });
    Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
        schema, stream,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_encoding_is_utf8_only() {
        for utf8 in ["UTF8", "utf-8", "unicode", "SQL_ASCII", "DEFAULT"] {
            check_client_encoding(utf8).expect(utf8);
        }
        let refused = check_client_encoding("LATIN1").unwrap_err();
        assert_eq!(refused.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED);
        let unknown = check_client_encoding("klingon").unwrap_err();
        assert_eq!(unknown.sqlstate(), SqlState::INVALID_PARAMETER_VALUE);
    }

    #[test]
    fn durations_parse_with_postgres_units() {
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("5s"), Some(5000));
        assert_eq!(parse_duration_ms("'2min'"), Some(120_000));
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn distsql_distributes_what_its_mode_and_the_bytes_scanned_say() {
        let mib = 1 << 20;
        // (setting, bytes scanned, distributed with a 64 MiB threshold)
        let cases = [
            ("off", 10 * 1024 * mib, false),
            ("auto", 0, false),
            ("AUTO", 64 * mib - 1, false),
            ("auto", 64 * mib, true),
            ("on", 0, true),
            ("always", 0, true),
        ];
        for (setting, scanned, expected) in cases {
            let mode = DistSql::parse(setting).expect("a mode");
            assert_eq!(
                mode.distributes(scanned, 64 * mib),
                expected,
                "{setting}, {scanned} bytes"
            );
        }
        assert_eq!(DistSql::parse("sometimes"), None);
        assert!(DistSql::Auto.distributes(0, 0), "threshold 0: every query");
    }
}
