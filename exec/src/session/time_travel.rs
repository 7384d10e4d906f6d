//! Time travel: `FOR SYSTEM_TIME AS OF` (BigQuery) and `VERSION AS OF`
//! resolved to table snapshots, pinned for the statement.

use super::*;

/// Schema holding a statement's time-travel tables.
pub(super) const AS_OF_SCHEMA: &str = "__quarry_as_of";

impl Session {
    /// Replaces each `t FOR SYSTEM_TIME AS OF <expr>` with a table of the statement's
    /// time-travel schema that reads the snapshot current at that instant.
    pub(super) async fn pin_time_travel(&mut self, statement: &mut Statement) -> Result<()> {
        struct Collect {
            found: Vec<(String, ObjectName, ast::TableVersion)>,
        }
        impl VisitorMut for Collect {
            type Break = ();
            fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
                if let TableFactor::Table { name, version, .. } = factor
                    && let Some(
                        ast::TableVersion::ForSystemTimeAsOf(_)
                        | ast::TableVersion::TimestampAsOf(_)
                        | ast::TableVersion::VersionAsOf(_),
                    ) = version
                    && let Some(version) = version.take()
                {
                    let alias = format!("t{}", self.found.len());
                    let original = std::mem::replace(
                        name,
                        ObjectName::from(vec![Ident::new(AS_OF_SCHEMA), Ident::new(alias.clone())]),
                    );
                    self.found.push((alias, original, version));
                }
                ControlFlow::Continue(())
            }
        }
        let mut collect = Collect { found: Vec::new() };
        let _ = ast::VisitMut::visit(statement, &mut collect);
        if collect.found.is_empty() {
            return Ok(());
        }
        let view = self.catalog.view();
        let schema = Arc::new(MemorySchemaProvider::new());
        for (alias, name, version) in collect.found {
            let table = self.table(&view.catalog, &name)?;
            if view.catalog.external_source(table.id).is_some() {
                return Err(user_error(
                    SqlState::WRONG_OBJECT_TYPE,
                    format!("\"{name}\" is an external table: it has no history to travel in"),
                ));
            }
            let snapshot = match version {
                ast::TableVersion::VersionAsOf(id) => {
                    let id: u64 = id.to_string().parse().map_err(|_| {
                        user_error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!("snapshot id {id} is not a number"),
                        )
                    })?;
                    table.snapshots.iter().find(|s| s.id == id).ok_or_else(|| {
                        user_error(
                            SqlState::UNDEFINED_OBJECT,
                            format!("relation \"{name}\" has no snapshot {id} (see quarry_system.snapshots)"),
                        )
                    })?
                }
                ast::TableVersion::ForSystemTimeAsOf(expr)
                | ast::TableVersion::TimestampAsOf(expr) => {
                    self.snapshot_at(table, &name, &expr).await?
                }
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("{other} is not supported; use FOR SYSTEM_TIME AS OF"),
                    ));
                }
            };
            let provider =
                SnapshotTable::new(table.clone(), snapshot.id, self.engine.chunks.clone(), None);
            datafusion::catalog::SchemaProvider::register_table(
                schema.as_ref(),
                alias,
                Arc::new(provider),
            )
            .map_err(Error::from_engine)?;
        }
        datafusion::catalog::CatalogProvider::register_schema(
            self.catalog.as_ref(),
            AS_OF_SCHEMA,
            schema,
        )
        .map_err(Error::from_engine)?;
        Ok(())
    }

    /// The snapshot of `table` (called `name`) current at the instant `expr`.
    ///
    /// # Errors
    /// 22023 beyond the table's time travel window; 42P01 before it existed.
    pub(super) async fn snapshot_at<'a>(
        &self,
        table: &'a Table,
        name: &ObjectName,
        expr: &Expr,
    ) -> Result<&'a TableSnapshot> {
        let at = self.eval_timestamp(expr).await?;
        let shown = chrono::DateTime::from_timestamp_micros(at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| at.to_string());
        let window = table.retention();
        let existed = table.snapshot_as_of(at).is_some()
            || table.snapshots[0].operation != quarry_common::catalog::Operation::Create;
        if existed && at < quarry_raft::now_micros() - window {
            return Err(user_error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!(
                    "{shown} is beyond the time travel window of \"{name}\" ({} s)",
                    window / 1_000_000
                ),
            ));
        }
        table.snapshot_as_of(at).ok_or_else(|| {
            user_error(
                SqlState::UNDEFINED_TABLE,
                format!("relation \"{name}\" did not exist at {shown}"),
            )
        })
    }

    /// Evaluates a constant timestamp expression to microseconds since the epoch (UTC).
    pub(super) async fn eval_timestamp(&self, expr: &Expr) -> Result<i64> {
        let value = self
            .eval_constant(
                expr,
                &ast::DataType::Timestamp(None, ast::TimezoneInfo::None),
            )
            .await?
            .cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))
            .map_err(Error::from_engine)?;
        match value {
            datafusion::common::ScalarValue::TimestampMicrosecond(Some(micros), _) => Ok(micros),
            datafusion::common::ScalarValue::TimestampMicrosecond(None, _) => Err(user_error(
                SqlState::INVALID_PARAMETER_VALUE,
                "FOR SYSTEM_TIME AS OF needs a non-null timestamp",
            )),
            other => Err(Error::Internal(format!("a timestamp cast gave {other:?}"))),
        }
    }
}
