//! `quarry_system`: read-only tables about the database itself, built from the
//! catalog version the statement runs against.
//!
//! - `quarry_system.tables`: one row per table (id, current snapshot, rows,
//!   data files in stripes and their bytes, the files, rows and bytes of
//!   its replicated ingest buffer, and its `PARTITION BY` and `CLUSTER BY`
//!   as SQL, NULL when it has none).
//! - `quarry_system.snapshots`: one row per table snapshot: when it committed,
//!   the operation (create, append, rewrite), the table's rows after it, and the
//!   rows and data files it added and removed. Rows count whole data files: a
//!   rewrite (DELETE/UPDATE) removes each touched file's rows and adds the rows of
//!   its replacement.
//! - `quarry_system.nodes`: one row per node: id, addresses, failure domain,
//!   gossip state (alive/suspect/down), Raft role (leader/voter/learner), and
//!   the chunks (and their bytes) the stripe catalog places on it, and
//!   whether it is in maintenance or being decommissioned.
//! - `quarry_system.rebalance`: one row per chunk move of the newest
//!   rebalance: when and why it was planned, the chunk, from and to which
//!   node, its bytes, its state (pending, moved, given up) and when it was
//!   moved; when the rebalance finished.
//! - `quarry_system.partitions`: one row per partition of each
//!   partitioned table's current snapshot (BigQuery's
//!   `INFORMATION_SCHEMA.PARTITIONS`): its partition id (`20240131`,
//!   `__NULL__`, ...), rows, data files, bytes, and when a commit last
//!   added a file to it.
//! - `quarry_system.stripes`: one row per stripe: its layout, the nodes of its
//!   chunks, how many chunks are on available nodes, and its health: healthy
//!   (all), degraded (at least k: readable by rebuilding) or lost (fewer).
//! - `quarry_system.audit`: this node's most recent audit events (logins,
//!   role and privilege changes, DDL; [`crate::audit`]), oldest first.
//! - `quarry_system.jobs`: one row per statement run on any live node in the
//!   job history window (BigQuery's `INFORMATION_SCHEMA.JOBS`,
//!   [`crate::jobs`]), running ones included; a role that is not a superuser
//!   sees its own.
//! - `quarry_system.access_tokens`: one row per access token of the HTTP API:
//!   its id (the token's first part, never its secret), name, role, when it
//!   was created and until when it is accepted.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use quarry_common::catalog::{Catalog, DataFile, Stripe};

use crate::audit::AuditLog;
use crate::chunks::DataFileStore;
use crate::jobs::{JobRecord, JobSource, Viewer};

/// Name of the system schema.
pub const SYSTEM_SCHEMA: &str = "quarry_system";

const TABLES: &str = "tables";
const SNAPSHOTS: &str = "snapshots";
const NODES: &str = "nodes";
const STRIPES: &str = "stripes";
const AUDIT: &str = "audit";
const ACCESS_TOKENS: &str = "access_tokens";
const REBALANCE: &str = "rebalance";
const PARTITIONS: &str = "partitions";
const SUBSCRIPTIONS: &str = "subscriptions";
/// `quarry_system.jobs`, the one system table every role may read (its own rows).
pub const JOBS: &str = "jobs";
/// The tables of the system schema.
pub const NAMES: [&str; 10] = [
    ACCESS_TOKENS,
    AUDIT,
    JOBS,
    NODES,
    PARTITIONS,
    REBALANCE,
    SNAPSHOTS,
    STRIPES,
    SUBSCRIPTIONS,
    TABLES,
];

/// The system schema over one catalog version.
#[derive(Debug)]
pub struct SystemSchema {
    catalog: Arc<Catalog>,
    cluster: Arc<dyn DataFileStore>,
    audit: Option<Arc<dyn AuditLog>>,
    jobs: Option<Arc<dyn JobSource>>,
    viewer: Viewer,
}

impl SystemSchema {
    /// The system tables of `catalog`, and of the cluster `cluster` sees.
    pub fn new(catalog: Arc<Catalog>, cluster: Arc<dyn DataFileStore>) -> Self {
        SystemSchema {
            catalog,
            cluster,
            audit: None,
            jobs: None,
            viewer: None,
        }
    }

    /// The same, with this node's audit log.
    pub fn with_audit(mut self, audit: Option<Arc<dyn AuditLog>>) -> Self {
        self.audit = audit;
        self
    }

    /// The same, with the cluster's jobs as `viewer` may see them.
    pub fn with_jobs(mut self, jobs: Option<Arc<dyn JobSource>>, viewer: Viewer) -> Self {
        self.jobs = jobs;
        self.viewer = viewer;
        self
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn timestamps(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// The columns of `quarry_system.jobs`.
pub fn jobs_schema() -> SchemaRef {
    let list = DataType::new_list(DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Utf8, false),
        Field::new("node_id", DataType::UInt64, false),
        Field::new("pid", DataType::Int32, false),
        Field::new("user_name", DataType::Utf8, false),
        Field::new("client", DataType::Utf8, false),
        Field::new("statement_type", DataType::Utf8, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("creation_time", timestamp_type(), false),
        Field::new("start_time", timestamp_type(), true),
        Field::new("end_time", timestamp_type(), true),
        Field::new("total_bytes_processed", DataType::UInt64, false),
        Field::new("row_count", DataType::UInt64, false),
        Field::new("total_slot_ms", DataType::UInt64, false),
        Field::new("peak_memory_bytes", DataType::UInt64, false),
        Field::new("spilled_bytes", DataType::UInt64, false),
        Field::new("cache_hit", DataType::Boolean, false),
        Field::new("error_sqlstate", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("referenced_tables", list, false),
        Field::new("destination_table", DataType::Utf8, true),
    ]))
}

/// `jobs` as rows of `quarry_system.jobs`, newest first.
///
/// # Errors
/// If the columns do not fit together (a bug).
pub fn jobs_batch(mut jobs: Vec<JobRecord>) -> DfResult<RecordBatch> {
    jobs.sort_by(|a, b| {
        b.creation_micros
            .cmp(&a.creation_micros)
            .then_with(|| b.job_id.cmp(&a.job_id))
    });
    let mut tables = ListBuilder::new(StringBuilder::new());
    for job in &jobs {
        for table in &job.referenced_tables {
            tables.values().append_value(table);
        }
        tables.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        text(jobs.iter().map(|j| j.job_id.clone()).collect()),
        count(jobs.iter().map(|j| j.node).collect()),
        Arc::new(Int32Array::from(
            jobs.iter().map(|j| j.pid).collect::<Vec<_>>(),
        )),
        text(jobs.iter().map(|j| j.user.clone()).collect()),
        text(jobs.iter().map(|j| j.client.clone()).collect()),
        text(jobs.iter().map(|j| j.statement_type.clone()).collect()),
        text(jobs.iter().map(|j| j.query.clone()).collect()),
        text(jobs.iter().map(|j| j.state.name().to_owned()).collect()),
        timestamps(jobs.iter().map(|j| Some(j.creation_micros)).collect()),
        timestamps(jobs.iter().map(|j| j.start_micros).collect()),
        timestamps(jobs.iter().map(|j| j.end_micros).collect()),
        count(jobs.iter().map(|j| j.total_bytes_processed).collect()),
        count(jobs.iter().map(|j| j.rows).collect()),
        count(jobs.iter().map(|j| j.total_slot_ms).collect()),
        count(jobs.iter().map(|j| j.peak_memory_bytes).collect()),
        count(jobs.iter().map(|j| j.spilled_bytes).collect()),
        Arc::new(BooleanArray::from(
            jobs.iter().map(|j| j.cache_hit).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            jobs.iter()
                .map(|j| j.error_sqlstate.clone())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            jobs.iter()
                .map(|j| j.error_message.clone())
                .collect::<Vec<_>>(),
        )),
        Arc::new(tables.finish()),
        Arc::new(StringArray::from(
            jobs.iter()
                .map(|j| j.destination_table.clone())
                .collect::<Vec<_>>(),
        )),
    ];
    Ok(RecordBatch::try_new(jobs_schema(), columns)?)
}

async fn jobs(
    source: Option<&Arc<dyn JobSource>>,
    viewer: &Viewer,
) -> DfResult<Arc<dyn TableProvider>> {
    let jobs = match source {
        Some(source) => source
            .jobs(0, viewer)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?,
        None => Vec::new(),
    };
    let batch = jobs_batch(jobs)?;
    Ok(Arc::new(MemTable::try_new(
        batch.schema(),
        vec![vec![batch]],
    )?))
}

fn audit(log: Option<&Arc<dyn AuditLog>>) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event", DataType::Utf8, false),
        Field::new("user_name", DataType::Utf8, false),
        Field::new("address", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
    ]));
    let events = log.map(|l| l.recent()).unwrap_or_default();
    table(
        schema,
        vec![
            Arc::new(
                TimestampMicrosecondArray::from(
                    events.iter().map(|e| e.at_micros).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            text(events.iter().map(|e| e.event.clone()).collect()),
            text(events.iter().map(|e| e.user.clone()).collect()),
            Arc::new(StringArray::from(
                events.iter().map(|e| e.address.clone()).collect::<Vec<_>>(),
            )),
            text(events.iter().map(|e| e.detail.clone()).collect()),
        ],
    )
}

fn access_tokens(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let timestamp = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("token_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("role_name", DataType::Utf8, false),
        Field::new("created_at", timestamp(), false),
        Field::new("valid_until", timestamp(), true),
    ]));
    let tokens: Vec<_> = catalog.tokens.values().collect();
    table(
        schema,
        vec![
            text(tokens.iter().map(|t| t.id.clone()).collect()),
            text(tokens.iter().map(|t| t.name.clone()).collect()),
            text(tokens.iter().map(|t| catalog.role_name(t.role)).collect()),
            Arc::new(
                TimestampMicrosecondArray::from(
                    tokens.iter().map(|t| t.created_at).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(
                    tokens.iter().map(|t| t.valid_until).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
}

fn nodes(catalog: &Catalog, cluster: &dyn DataFileStore) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("node_id", DataType::UInt64, false),
        Field::new("rpc_address", DataType::Utf8, false),
        Field::new("pg_address", DataType::Utf8, false),
        Field::new("domain", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("raft_role", DataType::Utf8, false),
        Field::new("chunks", DataType::UInt64, false),
        Field::new("chunk_bytes", DataType::UInt64, false),
        Field::new("maintenance", DataType::Boolean, false),
        Field::new("decommissioning", DataType::Boolean, false),
    ]));
    let rows = cluster.nodes();
    // The chunks of stripes the catalog places on each node.
    let mut held: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    for stripe in catalog.stripes.values() {
        for chunk in &stripe.chunks {
            let entry = held.entry(chunk.node).or_default();
            entry.0 += 1;
            entry.1 += chunk.size_bytes;
        }
    }
    let of = |node: u64| held.get(&node).copied().unwrap_or_default();
    table(
        schema,
        vec![
            count(rows.iter().map(|r| r.node_id).collect()),
            text(rows.iter().map(|r| r.rpc_address.clone()).collect()),
            text(rows.iter().map(|r| r.pg_address.clone()).collect()),
            text(rows.iter().map(|r| r.domain.clone()).collect()),
            text(rows.iter().map(|r| r.state.clone()).collect()),
            text(rows.iter().map(|r| r.raft_role.clone()).collect()),
            count(rows.iter().map(|r| of(r.node_id).0).collect()),
            count(rows.iter().map(|r| of(r.node_id).1).collect()),
            Arc::new(BooleanArray::from(
                rows.iter()
                    .map(|r| catalog.maintenance.contains_key(&r.node_id))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                rows.iter()
                    .map(|r| catalog.decommissioning.contains_key(&r.node_id))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
}

/// One row per chunk move of the newest rebalance.
fn rebalance(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("planned_at", timestamp_type(), false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("stripe_id", DataType::Utf8, false),
        Field::new("chunk_index", DataType::Int32, false),
        Field::new("from_node", DataType::UInt64, false),
        Field::new("to_node", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("moved_at", timestamp_type(), true),
        Field::new("finished_at", timestamp_type(), true),
    ]));
    let Some(plan) = catalog.rebalance.as_deref() else {
        return Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?));
    };
    let moves = &plan.moves;
    let state = |m: &quarry_common::catalog::PlannedMove| match (m.moved_at, plan.finished_at) {
        (Some(_), _) => "moved",
        (None, None) => "pending",
        (None, Some(_)) => "given up",
    };
    table(
        schema,
        vec![
            timestamps(moves.iter().map(|_| Some(plan.planned_at)).collect()),
            text(moves.iter().map(|_| plan.reason.clone()).collect()),
            text(moves.iter().map(|m| m.stripe.to_string()).collect()),
            Arc::new(Int32Array::from(
                moves.iter().map(|m| i32::from(m.index)).collect::<Vec<_>>(),
            )),
            count(moves.iter().map(|m| m.from).collect()),
            count(moves.iter().map(|m| m.to).collect()),
            count(moves.iter().map(|m| m.bytes).collect()),
            text(moves.iter().map(|m| state(m).to_owned()).collect()),
            timestamps(moves.iter().map(|m| m.moved_at).collect()),
            timestamps(moves.iter().map(|_| plan.finished_at).collect()),
        ],
    )
}

fn partitions(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_schema", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("total_rows", DataType::UInt64, false),
        Field::new("data_files", DataType::UInt64, false),
        Field::new("total_bytes", DataType::UInt64, false),
        Field::new("last_modified_time", timestamp_type(), false),
    ]));
    #[derive(Default)]
    struct Partition {
        rows: u64,
        files: u64,
        bytes: u64,
        modified: i64,
    }
    let mut rows: Vec<(String, String, String, Partition)> = Vec::new();
    for t in catalog.tables.values() {
        let Some(partitioning) = &t.partitioning else {
            continue;
        };
        let current = t.current_snapshot().id;
        let committed: std::collections::HashMap<u64, i64> =
            t.snapshots.iter().map(|s| (s.id, s.committed_at)).collect();
        let mut by_key: std::collections::BTreeMap<_, Partition> = Default::default();
        for entry in t
            .files
            .iter()
            .filter(|e| e.added_in <= current && e.removed_in.is_none_or(|r| r > current))
        {
            let key = partitioning.key_of_file(&entry.file);
            let partition = by_key.entry(key).or_default();
            let chunk = entry.file.chunk;
            partition.rows += entry.file.row_count - t.deleted_count(chunk, current);
            partition.files += 1;
            partition.bytes += entry.file.size_bytes;
            // Rows deleted by a deletion vector modify the partition too.
            let changed = t.deleted_since(chunk).unwrap_or(0).max(entry.added_in);
            partition.modified = partition
                .modified
                .max(committed.get(&changed).copied().unwrap_or(0));
        }
        for (key, partition) in by_key {
            let id = key.map_or_else(
                || "__UNKNOWN__".to_owned(),
                |k| partitioning.partition_id(k),
            );
            rows.push((t.schema.clone(), t.name.clone(), id, partition));
        }
    }
    table(
        schema,
        vec![
            text(rows.iter().map(|r| r.0.clone()).collect()),
            text(rows.iter().map(|r| r.1.clone()).collect()),
            text(rows.iter().map(|r| r.2.clone()).collect()),
            count(rows.iter().map(|r| r.3.rows).collect()),
            count(rows.iter().map(|r| r.3.files).collect()),
            count(rows.iter().map(|r| r.3.bytes).collect()),
            timestamps(rows.iter().map(|r| Some(r.3.modified)).collect()),
        ],
    )
}

fn stripes(catalog: &Catalog, cluster: &dyn DataFileStore) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("stripe_id", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("data_chunks", DataType::UInt64, false),
        Field::new("parity_chunks", DataType::UInt64, false),
        Field::new("nodes", DataType::Utf8, false),
        Field::new("available_chunks", DataType::UInt64, false),
        Field::new("size_bytes", DataType::UInt64, false),
        Field::new("health", DataType::Utf8, false),
    ]));
    let mut owner = std::collections::HashMap::new();
    for t in catalog.tables.values() {
        for entry in &t.files {
            owner
                .entry(entry.file.chunk)
                .or_insert_with(|| format!("{}.{}", t.schema, t.name));
        }
    }
    let all: Vec<_> = catalog.stripes.values().collect();
    let available: Vec<u64> = all.iter().map(|s| available_chunks(s, cluster)).collect();
    table(
        schema,
        vec![
            text(all.iter().map(|s| s.id.to_string()).collect()),
            text(
                all.iter()
                    .map(|s| {
                        s.data()
                            .iter()
                            .find_map(|c| owner.get(&c.chunk).cloned())
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
            count(all.iter().map(|s| u64::from(s.data_chunks)).collect()),
            count(all.iter().map(|s| s.parity_chunks() as u64).collect()),
            text(
                all.iter()
                    .map(|s| {
                        s.chunks
                            .iter()
                            .map(|c| c.node.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect(),
            ),
            count(available.clone()),
            count(
                all.iter()
                    .map(|s| s.chunks.iter().map(|c| c.size_bytes).sum())
                    .collect(),
            ),
            text(
                all.iter()
                    .zip(&available)
                    .map(|(s, &a)| health(s, a).to_owned())
                    .collect(),
            ),
        ],
    )
}

/// How many of `stripe`'s chunks are on nodes that can be read now.
fn available_chunks(stripe: &Stripe, cluster: &dyn DataFileStore) -> u64 {
    stripe
        .chunks
        .iter()
        .filter(|c| cluster.node_available(c.node))
        .count() as u64
}

/// `healthy` (every chunk readable), `degraded` (enough to read or rebuild
/// every data file) or `lost`, for `stripe` with `available` chunks.
fn health(stripe: &Stripe, available: u64) -> &'static str {
    if available as usize == stripe.chunks.len() {
        "healthy"
    } else if available >= u64::from(stripe.data_chunks) {
        "degraded"
    } else {
        "lost"
    }
}

/// The number of stripes in each health (`healthy`, `degraded`, `lost`), as
/// `quarry_system.stripes` shows it.
pub fn stripes_by_health(
    catalog: &Catalog,
    cluster: &dyn DataFileStore,
) -> [(&'static str, u64); 3] {
    let mut counts = [("healthy", 0), ("degraded", 0), ("lost", 0)];
    for stripe in catalog.stripes.values() {
        let state = health(stripe, available_chunks(stripe, cluster));
        if let Some(entry) = counts.iter_mut().find(|(name, _)| *name == state) {
            entry.1 += 1;
        }
    }
    counts
}

fn text(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn count(values: Vec<u64>) -> ArrayRef {
    Arc::new(UInt64Array::from(values))
}

fn table(schema: SchemaRef, columns: Vec<ArrayRef>) -> DfResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn tables(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_schema", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_id", DataType::UInt64, false),
        Field::new("snapshot_id", DataType::UInt64, false),
        Field::new("row_count", DataType::UInt64, false),
        Field::new("data_files", DataType::UInt64, false),
        Field::new("size_bytes", DataType::UInt64, false),
        Field::new("buffered_files", DataType::UInt64, false),
        Field::new("buffered_rows", DataType::UInt64, false),
        Field::new("buffered_bytes", DataType::UInt64, false),
        Field::new("partitioned_by", DataType::Utf8, true),
        Field::new("clustered_by", DataType::Utf8, true),
        Field::new("deleted_rows", DataType::UInt64, false),
    ]));
    let all: Vec<_> = catalog.tables.values().collect();
    // Rows of current data files their deletion vectors delete.
    let deleted = |t: &quarry_common::catalog::Table| -> u64 {
        let current = t.current_snapshot().id;
        t.deletes
            .keys()
            .filter(|chunk| t.live_file(**chunk).is_some())
            .map(|chunk| t.deleted_count(*chunk, current))
            .sum()
    };
    let buffered = |t: &quarry_common::catalog::Table, of: fn(&DataFile) -> u64| -> u64 {
        t.buffered_files().map(of).sum()
    };
    let current = |t: &quarry_common::catalog::Table| t.current_snapshot().id;
    table(
        schema,
        vec![
            text(all.iter().map(|t| t.schema.clone()).collect()),
            text(all.iter().map(|t| t.name.clone()).collect()),
            count(all.iter().map(|t| t.id).collect()),
            count(all.iter().map(|t| current(t)).collect()),
            count(all.iter().map(|t| t.current_snapshot().row_count).collect()),
            count(
                all.iter()
                    .map(|t| t.live_files.len() as u64 - buffered(t, |_| 1))
                    .collect(),
            ),
            count(
                all.iter()
                    .map(|t| t.current_bytes() - buffered(t, |f| f.size_bytes))
                    .collect(),
            ),
            count(all.iter().map(|t| buffered(t, |_| 1)).collect()),
            count(all.iter().map(|t| buffered(t, |f| f.row_count)).collect()),
            count(all.iter().map(|t| buffered(t, |f| f.size_bytes)).collect()),
            Arc::new(StringArray::from(
                all.iter()
                    .map(|t| crate::partition::describe_partitioning(t))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                all.iter()
                    .map(|t| crate::partition::describe_clustering(t))
                    .collect::<Vec<_>>(),
            )),
            count(all.iter().map(|t| deleted(t)).collect()),
        ],
    )
}

fn snapshots(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_schema", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("snapshot_id", DataType::UInt64, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("row_count", DataType::UInt64, false),
        Field::new("rows_added", DataType::UInt64, false),
        Field::new("rows_removed", DataType::UInt64, false),
        Field::new("files_added", DataType::UInt64, false),
        Field::new("files_removed", DataType::UInt64, false),
    ]));
    let mut rows = Vec::new();
    for t in catalog.tables.values() {
        let mut previous_rows = 0;
        for snapshot in &t.snapshots {
            let files_added = t.files.iter().filter(|e| e.added_in == snapshot.id).count() as u64;
            let files_removed = t
                .files
                .iter()
                .filter(|e| e.removed_in == Some(snapshot.id))
                .count() as u64;
            let rows_removed =
                (previous_rows + snapshot.rows_added).saturating_sub(snapshot.row_count);
            previous_rows = snapshot.row_count;
            rows.push((t, snapshot, rows_removed, files_added, files_removed));
        }
    }
    table(
        schema,
        vec![
            text(rows.iter().map(|r| r.0.schema.clone()).collect()),
            text(rows.iter().map(|r| r.0.name.clone()).collect()),
            count(rows.iter().map(|r| r.1.id).collect()),
            Arc::new(
                TimestampMicrosecondArray::from(
                    rows.iter().map(|r| r.1.committed_at).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            text(rows.iter().map(|r| r.1.operation.to_string()).collect()),
            count(rows.iter().map(|r| r.1.row_count).collect()),
            count(rows.iter().map(|r| r.1.rows_added).collect()),
            count(rows.iter().map(|r| r.2).collect()),
            count(rows.iter().map(|r| r.3).collect()),
            count(rows.iter().map(|r| r.4).collect()),
        ],
    )
}

/// `quarry_system.subscriptions`: each subscription to a PostgreSQL
/// publication, where its applier stands and its last error; the
/// connection string without its password. `lag_bytes` is the source's
/// WAL not yet applied as of the applier's last commit (the WAL end the
/// source last reported, less `applied_lsn`).
fn subscriptions(catalog: &Catalog) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("subscription_name", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("enabled", DataType::Boolean, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("connection", DataType::Utf8, false),
        Field::new("publications", DataType::Utf8, false),
        Field::new("slot_name", DataType::Utf8, false),
        Field::new("tables", DataType::UInt64, false),
        Field::new("applied_lsn", DataType::Utf8, false),
        Field::new("rows_applied", DataType::UInt64, false),
        Field::new("last_applied_time", timestamp_type(), true),
        Field::new("source_commit_time", timestamp_type(), true),
        Field::new("lag_bytes", DataType::UInt64, false),
        Field::new("lag_seconds", DataType::Float64, true),
        Field::new("last_error", DataType::Utf8, true),
    ]));
    let all: Vec<_> = catalog.subscriptions.values().collect();
    let known = |micros: i64| (micros != 0).then_some(micros);
    table(
        schema,
        vec![
            text(all.iter().map(|s| s.name.clone()).collect()),
            text(all.iter().map(|s| s.owner.clone()).collect()),
            Arc::new(BooleanArray::from(
                all.iter().map(|s| s.enabled).collect::<Vec<_>>(),
            )),
            text(all.iter().map(|s| s.phase.name().to_owned()).collect()),
            text(all.iter().map(|s| s.connection.clone()).collect()),
            text(all.iter().map(|s| s.publications.join(",")).collect()),
            text(all.iter().map(|s| s.slot_name.clone()).collect()),
            count(all.iter().map(|s| s.tables.len() as u64).collect()),
            text(
                all.iter()
                    .map(|s| crate::pgoutput::lsn_text(s.applied_lsn))
                    .collect(),
            ),
            count(all.iter().map(|s| s.rows_applied).collect()),
            timestamps(all.iter().map(|s| known(s.applied_at)).collect()),
            timestamps(all.iter().map(|s| known(s.source_commit_at)).collect()),
            count(all.iter().map(|s| s.lag_bytes()).collect()),
            Arc::new(Float64Array::from(
                all.iter().map(|s| s.lag_seconds()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                all.iter().map(|s| s.last_error.clone()).collect::<Vec<_>>(),
            )),
        ],
    )
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        NAMES.iter().map(|n| (*n).to_owned()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            TABLES => tables(&self.catalog).map(Some),
            SNAPSHOTS => snapshots(&self.catalog).map(Some),
            NODES => nodes(&self.catalog, self.cluster.as_ref()).map(Some),
            STRIPES => stripes(&self.catalog, self.cluster.as_ref()).map(Some),
            AUDIT => audit(self.audit.as_ref()).map(Some),
            ACCESS_TOKENS => access_tokens(&self.catalog).map(Some),
            REBALANCE => rebalance(&self.catalog).map(Some),
            PARTITIONS => partitions(&self.catalog).map(Some),
            SUBSCRIPTIONS => subscriptions(&self.catalog).map(Some),
            JOBS => jobs(self.jobs.as_ref(), &self.viewer).await.map(Some),
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        NAMES.contains(&name)
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "{SYSTEM_SCHEMA} is read-only ({name})"
        )))
    }
}
