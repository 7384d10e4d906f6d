//! Where a query runs: on this node, or cut into stages across the cluster
//! (`distsql`).

use super::*;
use datafusion::physical_plan::ExecutionPlan;

/// Where a query runs, as [`Session::run_distributed`] decided.
pub(super) enum Dispatch {
    /// It runs over the cluster: its rows (or its EXPLAIN).
    Distributed(Output),
    /// It runs here alone, with the physical plan already made for the
    /// decision (None: not planned yet, as for EXPLAIN).
    Local(Option<Arc<dyn ExecutionPlan>>),
}

impl Session {
    /// Runs a query (or EXPLAIN [ANALYZE] of one) over the cluster's live
    /// nodes, or says it is better run here alone (see
    /// [`DistributedPlan::new`]); a query is planned once either way.
    pub(super) async fn run_distributed(&self, plan: &LogicalPlan) -> Result<Dispatch> {
        let Some(cluster) = &self.engine.cluster else {
            return Ok(Dispatch::Local(None));
        };
        let mode = self
            .setting("distsql")
            .and_then(DistSql::parse)
            .unwrap_or(DistSql::Auto);
        if mode == DistSql::Off {
            return Ok(Dispatch::Local(None));
        }
        let (query, explain) = match plan {
            LogicalPlan::Explain(e) => (e.plan.clone(), Some(false)),
            LogicalPlan::Analyze(a) => (a.input.clone(), Some(true)),
            other => (Arc::new(other.clone()), None),
        };
        if let LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) = query.as_ref() {
            return Ok(Dispatch::Local(None));
        }
        let state = self.ctx.state();
        let physical = state
            .create_physical_plan(&query)
            .await
            .map_err(Error::from_engine)?;
        let scanned =
            crate::distributed::stages::scanned_bytes(&physical).map_err(Error::from_engine)?;
        // The physical plan of a plain query runs here if it is not cut.
        let here = || Dispatch::Local(explain.is_none().then(|| physical.clone()));
        if !mode.distributes(scanned, self.engine.resources.distribute_min_bytes) {
            return Ok(here());
        }
        let distributed = DistributedPlan::new(
            cluster,
            crate::shared::unshared(physical.clone()).map_err(Error::from_engine)?,
            self.engine.target_partitions,
        )
        .map_err(Error::from_engine)?;
        let Some(distributed) = distributed else {
            return Ok(here());
        };
        let ctx = self.ctx.task_ctx();
        // This node's fragments of the query take their memory from this
        // session's pool, as the root stage does.
        cluster
            .memory()
            .pool(distributed.query(), || self.memory_pool());
        let start = || async {
            distributed.start().await.map_err(|e| {
                // Nothing ran yet: this node reads around the missing one.
                tracing::info!(error = %e, "a node could not start its part of the query; running it here");
            })
        };
        let rows = match explain {
            None => {
                let Ok(started) = start().await else {
                    return Ok(here());
                };
                self.stats.scans(&physical);
                let stream = distributed
                    .execute(started, ctx, self.engine.runtime(), self.stats.clone())
                    .map_err(Error::from_engine)?;
                return Ok(Dispatch::Distributed(Output::Rows(stream)));
            }
            Some(false) => vec![
                ("logical_plan", query.display_indent().to_string()),
                ("distributed_plan", distributed.display(None)),
            ],
            Some(true) => {
                let started = std::time::Instant::now();
                let Ok(fragments) = start().await else {
                    return Ok(here());
                };
                self.stats.scans(&physical);
                let (count, reports) = distributed
                    .analyze(fragments, ctx, self.engine.runtime())
                    .await
                    .map_err(Error::from_engine)?;
                for report in &reports {
                    self.stats.add_cost(report.cost);
                }
                vec![(
                    "Plan with Metrics",
                    format!(
                        "{}rows={count}, elapsed={} ms\n",
                        distributed.display(Some(&reports)),
                        started.elapsed().as_millis()
                    ),
                )]
            }
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.1.as_str()),
                )),
            ],
        )
        .map_err(|e| Error::Internal(format!("cannot build the plan text: {e}")))?;
        let stream = futures::stream::iter([Ok(batch)]);
        Ok(Dispatch::Distributed(Output::Rows(Box::pin(
            RecordBatchStreamAdapter::new(schema, stream),
        ))))
    }

    /// The rows of a physical plan made by this session, its operators run
    /// on the engine's execution runtime.
    pub(super) fn execute_physical(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<SendableRecordBatchStream> {
        self.stats.scans(&plan);
        let stream = crate::runtime::execute_stream(
            self.engine.runtime(),
            plan.clone(),
            self.ctx.task_ctx(),
        )
        .map_err(Error::from_engine)?;
        Ok(crate::jobs::costed(stream, plan, self.stats.clone()))
    }

    /// `plan`'s rows, its operators run on the engine's execution runtime.
    pub(super) async fn stream(&self, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(Error::from_engine)?;
        let context = Arc::new(frame.task_ctx());
        let plan = frame
            .create_physical_plan()
            .await
            .map_err(Error::from_engine)?;
        self.stats.scans(&plan);
        let stream = crate::runtime::execute_stream(self.engine.runtime(), plan.clone(), context)
            .map_err(Error::from_engine)?;
        Ok(crate::jobs::costed(stream, plan, self.stats.clone()))
    }
}
