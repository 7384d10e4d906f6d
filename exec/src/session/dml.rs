//! DML: INSERT / UPDATE / DELETE through DataFusion, and MERGE.

use super::*;
use datafusion::common::TableReference;

/// The count DataFusion's DML plans return (one row, one UInt64 column).
pub(super) fn count_of(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.value(0))
        })
        .sum()
}

impl Session {
    /// Evaluates the constant expression `expr` cast to `data_type` (as SQL's
    /// `CAST(expr AS data_type)`): planned from the parsed expression, run
    /// over a single empty row.
    pub(super) async fn eval_constant(
        &self,
        expr: &Expr,
        data_type: &ast::DataType,
    ) -> Result<datafusion::common::ScalarValue> {
        let cast = Expr::Cast {
            kind: ast::CastKind::Cast,
            expr: Box::new(Expr::Nested(Box::new(expr.clone()))),
            data_type: data_type.clone(),
            array: false,
            format: None,
        };
        self.eval(cast).await
    }

    /// Evaluates the constant expression `expr` over a single empty row.
    pub(super) async fn eval(&self, expr: Expr) -> Result<datafusion::common::ScalarValue> {
        let state = self.ctx.state();
        let value = state
            .create_logical_expr_from_sql_expr(
                ast::ExprWithAlias { expr, alias: None },
                &datafusion::common::DFSchema::empty(),
            )
            .map_err(Error::from_engine)?;
        let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(true)
            .project([value])
            .and_then(|builder| builder.build())
            .map_err(Error::from_engine)?;
        let batches = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(Error::from_engine)?
            .collect()
            .await
            .map_err(Error::from_engine)?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::Internal("a constant expression gave no rows".to_owned()))?;
        datafusion::common::ScalarValue::try_from_array(batch.column(0), 0)
            .map_err(Error::from_engine)
    }

    /// Runs an INSERT, DELETE or UPDATE planned by DataFusion (whose plan yields
    /// the affected-row count) and commits it unless a transaction block is open.
    pub(super) async fn execute_dml(
        &mut self,
        command: &str,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let view = self.begin_statement().await?;
        let mut statement = statement;
        if let Statement::Insert(insert) = &mut statement
            && let ast::TableObject::TableName(name) = &insert.table
            && let Ok(table) = self.table(&view.catalog, name)
        {
            // (A name that is no table is planning's error to give.)
            crate::composite::row_values_as_structs(insert, table)?;
        }
        if let Statement::Update(update) = &mut statement
            && let TableFactor::Table { name, .. } = &update.table.relation
            && let Ok(table) = self.table(&view.catalog, name)
        {
            crate::composite::row_values_in_update(update, table)?;
        }
        let plan = self.plan_with_params(statement, params).await?;
        let batches: Vec<RecordBatch> = self
            .stream(plan)
            .await?
            .try_collect()
            .await
            .map_err(Error::from_engine)?;
        let rows = count_of(&batches);
        self.commit_statement(&view.writes).await?;
        Ok(Output::Command(CommandTag::with_rows(command, rows)))
    }

    /// A logical plan scanning table `name` as this session resolves it.
    pub(super) async fn scan_plan(&self, name: TableReference) -> Result<LogicalPlan> {
        let provider = self
            .ctx
            .table_provider(name.clone())
            .await
            .map_err(Error::from_engine)?;
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            name,
            datafusion::datasource::provider_as_source(provider),
            None,
        )
        .and_then(|b| b.build())
        .map_err(Error::from_engine)?;
        self.access().await?.check_plan(&plan)?;
        Ok(plan)
    }

    pub(super) async fn merge(&mut self, merge: &ast::Merge) -> Result<Output> {
        let view = self.begin_statement().await?;
        let TableFactor::Table { name, .. } = &merge.table else {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "MERGE INTO needs a table",
            ));
        };
        let table = self.table(&view.catalog, name)?.clone();
        // MERGE reads its target (SELECT, checked on the scan) and needs
        // the privilege of each kind of action it has.
        let access = self.access().await?;
        for clause in &merge.clauses {
            let wanted = match &clause.action {
                ast::MergeAction::Insert(_) => Privileges::INSERT,
                ast::MergeAction::Update(_) => Privileges::UPDATE,
                ast::MergeAction::Delete { .. } => Privileges::DELETE,
            };
            access.require(&Securable::Table(table.id), wanted)?;
        }
        // The privilege checks of a scan of the target ...
        self.scan_plan(TableReference::partial(
            table.schema.as_str(),
            table.name.as_str(),
        ))
        .await?;
        // ... which is read with each row's data file and position.
        let row_ids = Arc::new(crate::row_id::RowIdTable::new(SnapshotTable::new(
            table.clone(),
            table.current_snapshot().id,
            self.engine.chunks.clone(),
            Some(view.writes.clone()),
        )));
        let target = datafusion::logical_expr::LogicalPlanBuilder::scan(
            TableReference::partial(table.schema.as_str(), table.name.as_str()),
            datafusion::datasource::provider_as_source(row_ids.clone()),
            None,
        )
        .and_then(|b| b.build())
        .map_err(Error::from_engine)?;
        let source = match &merge.source {
            TableFactor::Table { name, .. } => {
                let (schema, name) = self.resolve(name)?;
                self.scan_plan(TableReference::partial(schema, name))
                    .await?
            }
            TableFactor::Derived { subquery, .. } => {
                self.plan(Statement::Query(subquery.clone())).await?
            }
            _ => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "MERGE needs a table or an aliased subquery as its source",
                ));
            }
        };
        let plan = crate::merge::plan(&self.ctx.state(), merge, &table, target, source)?;
        let current = row_ids.source();
        crate::partition::check_merge_filter(current, &plan.on_target, &self.ctx.state())?;
        // The rows clauses write stream into new data files, a batch at a
        // time; the target rows they update or delete are gathered by file.
        let query = plan.plan;
        let mut batches = self.stream(query).await?;
        let columns = table.columns.len();
        let mut writer = DataFileWriter::new(table.clone(), view.writes.clone());
        let mut affected = 0u64;
        // Target rows joined with a source row so far.
        let mut matched = std::collections::HashSet::new();
        let mut changed: std::collections::BTreeMap<usize, roaring::RoaringBitmap> =
            Default::default();
        let internal = |what: &str| Error::Internal(format!("MERGE {what}"));
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(Error::from_engine)?;
            let clause = datafusion::arrow::compute::cast(batch.column(columns), &DataType::Int64)
                .map_err(|e| Error::Internal(format!("MERGE clause column: {e}")))?;
            let clause = clause
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .ok_or_else(|| internal("clause column is not an integer"))?;
            let matched_rows = batch
                .column(columns + 2)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .ok_or_else(|| internal("row id is not a UInt64"))?;
            let target_rows = batch
                .column(columns + 3)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .ok_or_else(|| internal("target row id is not a UInt64"))?;
            for row in matched_rows.iter().flatten() {
                if !matched.insert(row) {
                    return Err(user_error(
                        SqlState::CARDINALITY_VIOLATION,
                        "MERGE command cannot affect row a second time",
                    ));
                }
            }
            let keep: datafusion::arrow::array::BooleanArray = (0..batch.num_rows())
                .map(|row| {
                    let number = clause.value(row);
                    if number == 0 {
                        // No clause applies: a target row stays where it
                        // is, a source row is dropped.
                        return Some(false);
                    }
                    affected += 1;
                    if target_rows.is_valid(row) {
                        let (file, position) = crate::row_id::split_row_id(target_rows.value(row));
                        changed.entry(file).or_default().insert(position);
                    }
                    Some(!plan.delete_clauses.contains(&(number as usize)))
                })
                .collect();
            let rows = batch
                .project(&(0..columns).collect::<Vec<_>>())
                .map_err(|e| Error::Internal(e.to_string()))?;
            let kept = datafusion::arrow::compute::filter_record_batch(&rows, &keep)
                .map_err(|e| Error::Internal(e.to_string()))?;
            writer.write(kept).await?;
        }
        let context = self.ctx.task_ctx();
        for (index, positions) in changed {
            let file = row_ids
                .files()
                .get(index)
                .ok_or_else(|| internal("row id names no data file"))?;
            crate::rewrite::delete_positions(
                current,
                &view.writes,
                file,
                &positions,
                &mut writer,
                context.clone(),
            )
            .await
            .map_err(Error::from_engine)?;
        }
        writer.finish().await?;
        self.commit_statement(&view.writes).await?;
        Ok(Output::Command(CommandTag::with_rows("MERGE", affected)))
    }
}
