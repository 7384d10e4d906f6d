//! `pg_catalog.pg_stat_activity`: one row per client connection of every live
//! node (PostgreSQL 16's columns,
//! <https://www.postgresql.org/docs/16/monitoring-stats.html#MONITORING-PG-STAT-ACTIVITY-VIEW>),
//! with Quarry's `node_id` and `job_id` after them. As in PostgreSQL, a role
//! that is not a superuser sees the other roles' connections with
//! `<insufficient privilege>` in place of their query.

use std::sync::{Arc, Weak};

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Array, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use quarry_common::SqlState;
use quarry_common::roles::RoleId;

use crate::catalog::QuarryCatalog;
use crate::error::user_error;
use crate::jobs::{Backend, JobSource, Viewer};

/// The table's name.
pub const NAME: &str = "pg_stat_activity";

fn schema() -> SchemaRef {
    let timestamp = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("datid", DataType::Int32, true),
        text("datname"),
        Field::new("pid", DataType::Int32, false),
        Field::new("leader_pid", DataType::Int32, true),
        Field::new("usesysid", DataType::Int32, true),
        text("usename"),
        text("application_name"),
        text("client_addr"),
        text("client_hostname"),
        Field::new("client_port", DataType::Int32, true),
        Field::new("backend_start", timestamp(), true),
        Field::new("xact_start", timestamp(), true),
        Field::new("query_start", timestamp(), true),
        Field::new("state_change", timestamp(), true),
        text("wait_event_type"),
        text("wait_event"),
        text("state"),
        text("backend_xid"),
        text("backend_xmin"),
        Field::new("query_id", DataType::Int32, true),
        text("query"),
        text("backend_type"),
        Field::new("node_id", DataType::UInt64, false),
        text("job_id"),
    ]))
}

/// The table for `viewer`, read from every live node through `source`.
///
/// # Errors
/// If a node's connections cannot be read.
pub async fn table(
    source: Option<&Arc<dyn JobSource>>,
    viewer: &Viewer,
) -> DfResult<Arc<dyn TableProvider>> {
    let mut backends = match source {
        Some(source) => source
            .backends()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?,
        None => Vec::new(),
    };
    backends.sort_by_key(|b| (b.node, b.pid));
    let n = backends.len();
    let visible = |b: &Backend| viewer.as_ref().is_none_or(|v| *v == b.user);
    let texts = |f: &dyn Fn(&Backend) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            backends.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    let times = |f: &dyn Fn(&Backend) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(backends.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let nulls = |t: DataType| datafusion::arrow::array::new_null_array(&t, n);
    let columns: Vec<ArrayRef> = vec![
        nulls(DataType::Int32),
        texts(&|_| Some("quarry".to_owned())),
        Arc::new(Int32Array::from(
            backends.iter().map(|b| b.pid).collect::<Vec<_>>(),
        )),
        nulls(DataType::Int32),
        nulls(DataType::Int32),
        texts(&|b| Some(b.user.clone())),
        texts(&|b| Some(b.application_name.clone())),
        texts(&|b| b.client_addr.clone()),
        nulls(DataType::Utf8),
        Arc::new(Int32Array::from(
            backends.iter().map(|b| b.client_port).collect::<Vec<_>>(),
        )),
        times(&|b| Some(b.backend_start_micros)),
        nulls(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        times(&|b| b.query_start_micros),
        times(&|b| b.state_change_micros),
        texts(&|b| b.waiting.then(|| "Lock".to_owned())),
        texts(&|b| b.waiting.then(|| "query_slot".to_owned())),
        texts(&|b| visible(b).then(|| b.state.clone())),
        nulls(DataType::Utf8),
        nulls(DataType::Utf8),
        nulls(DataType::Int32),
        texts(&|b| {
            Some(if visible(b) {
                b.query.clone()
            } else {
                "<insufficient privilege>".to_owned()
            })
        }),
        texts(&|_| Some("client backend".to_owned())),
        Arc::new(UInt64Array::from(
            backends.iter().map(|b| b.node).collect::<Vec<_>>(),
        )),
        texts(&|b| b.job_id.clone()),
    ];
    let schema = schema();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// `pg_cancel_backend(pid)`: cancels the statement running on backend `pid`
/// of any node; false (with a warning in PostgreSQL, here just false) when
/// no such backend runs one. A role may cancel its own backends' statements;
/// a superuser anyone's (PostgreSQL's rule without `pg_signal_backend`).
struct CancelBackend {
    catalog: Weak<QuarryCatalog>,
    role: Option<RoleId>,
    signature: Signature,
}

impl std::fmt::Debug for CancelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelBackend")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CancelBackend {
    fn eq(&self, other: &Self) -> bool {
        self.role == other.role && Weak::ptr_eq(&self.catalog, &other.catalog)
    }
}

impl Eq for CancelBackend {}

impl std::hash::Hash for CancelBackend {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.role.hash(state);
    }
}

impl ScalarUDFImpl for CancelBackend {
    fn name(&self) -> &str {
        "pg_cancel_backend"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Internal(
            "pg_cancel_backend runs asynchronously".to_owned(),
        ))
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for CancelBackend {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let catalog = self
            .catalog
            .upgrade()
            .ok_or_else(|| DataFusionError::Plan("the session has ended".to_owned()))?;
        let source = catalog.jobs().ok_or_else(|| {
            DataFusionError::External(Box::new(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "this node keeps no record of its backends",
            )))
        })?;
        let viewer = crate::jobs::viewer(
            &catalog.view().catalog,
            self.role,
            quarry_common::roles::SIGNAL_BACKEND,
        );
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let pids = datafusion::arrow::compute::cast(&arrays[0], &DataType::Int64)?;
        let pids = datafusion::common::cast::as_int64_array(&pids)?;
        let mut out = BooleanBuilder::with_capacity(pids.len());
        for pid in pids {
            match pid.and_then(|pid| i32::try_from(pid).ok()) {
                Some(pid) => out.append_value(
                    source
                        .cancel_backend(pid, &viewer)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?,
                ),
                None if pid.is_none() => out.append_null(),
                // Not a process id PostgreSQL could have given.
                None => out.append_value(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Registers `pg_cancel_backend` for a session of `role`.
pub fn register(ctx: &SessionContext, catalog: &Arc<QuarryCatalog>, role: Option<RoleId>) {
    let cancel = CancelBackend {
        catalog: Arc::downgrade(catalog),
        role,
        signature: Signature::uniform(1, vec![DataType::Int64], Volatility::Volatile),
    };
    ctx.register_udf(AsyncScalarUDF::new(Arc::new(cancel)).into_scalar_udf());
}
