//! Jobs: every statement a node runs is one, recorded as BigQuery records
//! its jobs (`INFORMATION_SCHEMA.JOBS`,
//! <https://cloud.google.com/bigquery/docs/information-schema-jobs>).
//!
//! The engine measures a statement ([`StatementStats`]): the bytes of the data
//! files its scans read after pruning (BigQuery's `total_bytes_processed`; 0
//! for a result served from the cache), the operator time of every task of it
//! on every node (`total_slot_ms`, DataFusion's `elapsed_compute` summed), the
//! peak of its memory pool on the node that ran it, the bytes its operators
//! spilled, and the tables it read. The node keeps the records ([`JobRecord`])
//! and answers for the cluster through [`JobSource`]: `quarry_system.jobs` and
//! `pg_stat_activity` read every live node's, and cancels reach the node that
//! runs the statement.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::Statement;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::parser::QuarryStatement;

/// What the engine measured of one statement; shared by the session that
/// runs it, the streams of its rows, and the node that records the job.
#[derive(Debug, Default)]
pub struct StatementStats {
    bytes_processed: AtomicU64,
    compute_ns: AtomicU64,
    spilled_bytes: AtomicU64,
    cache_hit: AtomicBool,
    tables: Mutex<BTreeSet<String>>,
    pool: Mutex<Option<Arc<MeasuredPool>>>,
}

/// [`StatementStats`] as plain numbers, once the statement has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    /// Bytes of the data files its scans read (after pruning).
    pub bytes_processed: u64,
    /// Operator time of all its tasks on all nodes, in milliseconds.
    pub slot_ms: u64,
    /// The most its memory pool on the coordinating node held, in bytes.
    pub peak_memory_bytes: u64,
    /// Bytes its operators spilled to disk.
    pub spilled_bytes: u64,
    /// Whether its rows came from the result cache.
    pub cache_hit: bool,
    /// The tables it read, `schema.table`.
    pub referenced_tables: Vec<String>,
}

/// What a plan's operators did: time and spilled bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// DataFusion's `elapsed_compute` of every operator, summed, in ns.
    pub compute_ns: u64,
    /// Bytes spilled by its operators.
    pub spilled_bytes: u64,
}

/// The cost of `plan` so far, from its operators' metrics.
pub fn plan_cost(plan: &Arc<dyn ExecutionPlan>) -> Cost {
    let mut cost = Cost::default();
    let _ = plan.apply(|node| {
        if let Some(metrics) = node.metrics() {
            cost.compute_ns += metrics.elapsed_compute().unwrap_or(0) as u64;
            cost.spilled_bytes += metrics.spilled_bytes().unwrap_or(0) as u64;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    cost
}

impl StatementStats {
    /// New stats whose peak memory is `pool`'s (reset now).
    pub fn new(pool: Option<Arc<MeasuredPool>>) -> Arc<Self> {
        if let Some(pool) = &pool {
            pool.reset_peak();
        }
        Arc::new(StatementStats {
            pool: Mutex::new(pool),
            ..StatementStats::default()
        })
    }

    /// Counts the data files `plan`'s scans read.
    pub fn scans(&self, plan: &Arc<dyn ExecutionPlan>) {
        let bytes = crate::distributed::stages::scanned_bytes(plan).unwrap_or(0);
        self.bytes_processed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records the tables `plan` reads.
    pub fn reads(&self, plan: &LogicalPlan) {
        let mut names = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                names.push(scan.table_name.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names);
    }

    /// Adds what operators did.
    pub fn add_cost(&self, cost: Cost) {
        self.compute_ns
            .fetch_add(cost.compute_ns, Ordering::Relaxed);
        self.spilled_bytes
            .fetch_add(cost.spilled_bytes, Ordering::Relaxed);
    }

    /// Marks the rows as served from the result cache: nothing was read.
    pub fn cache_hit(&self) {
        self.cache_hit.store(true, Ordering::Relaxed);
        self.bytes_processed.store(0, Ordering::Relaxed);
    }

    /// The numbers so far.
    pub fn measured(&self) -> Measured {
        let peak = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |pool| pool.peak());
        Measured {
            bytes_processed: self.bytes_processed.load(Ordering::Relaxed),
            slot_ms: self.compute_ns.load(Ordering::Relaxed) / 1_000_000,
            peak_memory_bytes: peak as u64,
            spilled_bytes: self.spilled_bytes.load(Ordering::Relaxed),
            cache_hit: self.cache_hit.load(Ordering::Relaxed),
            referenced_tables: self
                .tables
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// `stream` of `plan`'s rows, adding `plan`'s cost to `stats` when it ends
/// (or is dropped: a cancelled statement's work counts too).
pub fn costed(
    stream: SendableRecordBatchStream,
    plan: Arc<dyn ExecutionPlan>,
    stats: Arc<StatementStats>,
) -> SendableRecordBatchStream {
    Box::pin(Costed {
        inner: stream,
        plan: Some(plan),
        stats,
    })
}

struct Costed {
    inner: SendableRecordBatchStream,
    plan: Option<Arc<dyn ExecutionPlan>>,
    stats: Arc<StatementStats>,
}

impl Costed {
    fn settle(&mut self) {
        if let Some(plan) = self.plan.take() {
            self.stats.add_cost(plan_cost(&plan));
        }
    }
}

impl Stream for Costed {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = polled {
            self.settle();
        }
        polled
    }
}

impl RecordBatchStream for Costed {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for Costed {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A memory pool that remembers the most it held since its peak was last
/// reset (a session's pool: one statement at a time).
#[derive(Debug)]
pub struct MeasuredPool {
    inner: Arc<dyn MemoryPool>,
    peak: std::sync::atomic::AtomicUsize,
}

impl MeasuredPool {
    /// `inner`, measured.
    pub fn new(inner: Arc<dyn MemoryPool>) -> Arc<Self> {
        Arc::new(MeasuredPool {
            inner,
            peak: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The most held since the last reset, in bytes.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn reset_peak(&self) {
        self.peak.store(self.inner.reserved(), Ordering::Relaxed);
    }

    fn note(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }
}

impl MemoryPool for MeasuredPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

impl std::fmt::Display for MeasuredPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner.name())
    }
}

/// A job's state, as BigQuery names them: PENDING (waiting for a query
/// slot), RUNNING, DONE (with or without an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a query slot.
    Pending,
    /// Running.
    Running,
    /// Ended, successfully or not.
    Done,
}

impl JobState {
    /// Its name in `quarry_system.jobs`.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Done => "DONE",
        }
    }
}

/// One job: a statement one node ran (or runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `<node>-<hex>`: unique in the cluster, naming the node that runs it.
    pub job_id: String,
    /// The node that ran it.
    pub node: u64,
    /// The backend (connection) that ran it; 0 for the HTTP API.
    pub pid: i32,
    /// The role that ran it.
    pub user: String,
    /// Where it came from: `pgwire` or `http`.
    pub client: String,
    /// SELECT, INSERT, CREATE_TABLE, ... ([`statement_type`]).
    pub statement_type: String,
    /// Its text.
    pub query: String,
    /// Where it is.
    pub state: JobState,
    /// When it arrived, µs since the Unix epoch.
    pub creation_micros: i64,
    /// When it got a query slot and started.
    pub start_micros: Option<i64>,
    /// When it ended.
    pub end_micros: Option<i64>,
    /// Bytes of the data files its scans read.
    pub total_bytes_processed: u64,
    /// Rows it returned or changed (so far, while running).
    pub rows: u64,
    /// Operator time of all its tasks, ms.
    pub total_slot_ms: u64,
    /// Peak memory on the coordinating node, bytes.
    pub peak_memory_bytes: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Whether the result cache answered it.
    pub cache_hit: bool,
    /// The SQLSTATE it failed with.
    pub error_sqlstate: Option<String>,
    /// Its error message.
    pub error_message: Option<String>,
    /// The tables it read.
    pub referenced_tables: Vec<String>,
    /// The table it wrote (INSERT, UPDATE, DELETE, MERGE, COPY FROM, CREATE
    /// TABLE).
    pub destination_table: Option<String>,
}

impl JobRecord {
    /// Takes the statistics of an ended statement.
    pub fn measured(&mut self, measured: Measured) {
        self.total_bytes_processed = measured.bytes_processed;
        self.total_slot_ms = measured.slot_ms;
        self.peak_memory_bytes = measured.peak_memory_bytes;
        self.spilled_bytes = measured.spilled_bytes;
        self.cache_hit = measured.cache_hit;
        self.referenced_tables = measured.referenced_tables;
    }
}

/// One client connection of a node, as `pg_stat_activity` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// Its process id (unique in the cluster).
    pub pid: i32,
    /// The node it is connected to.
    pub node: u64,
    /// Its role.
    pub user: String,
    /// The client's `application_name`.
    pub application_name: String,
    /// The client's address and port.
    pub client_addr: Option<String>,
    /// The client's port.
    pub client_port: Option<i32>,
    /// When it connected, µs since the epoch.
    pub backend_start_micros: i64,
    /// active (a statement running), idle, or idle in transaction.
    pub state: String,
    /// The statement running, or the one run last.
    pub query: String,
    /// When that statement started.
    pub query_start_micros: Option<i64>,
    /// When the state last changed.
    pub state_change_micros: Option<i64>,
    /// The running statement's job.
    pub job_id: Option<String>,
    /// Whether it waits for a query slot.
    pub waiting: bool,
}

/// Who asks to see or stop jobs: None sees and stops every job (a
/// superuser), `Some(user)` only its own.
pub type Viewer = Option<String>;

/// Whose jobs `role` may see (with `predefined`
/// [`quarry_common::roles::READ_ALL_STATS`]) or cancel (with
/// [`quarry_common::roles::SIGNAL_BACKEND`]) by `catalog`: everyone's for a
/// superuser, a member of that predefined role, or a session without a role
/// (`--insecure`); else its own.
pub fn viewer(
    catalog: &quarry_common::catalog::Catalog,
    role: Option<quarry_common::roles::RoleId>,
    predefined: &str,
) -> Viewer {
    let role = role?;
    let privileged = catalog.is_superuser(role)
        || catalog
            .role(predefined)
            .is_some_and(|p| catalog.member_closure(role).contains(&p.id));
    (!privileged).then(|| catalog.role_name(role))
}

/// The jobs and connections of the cluster, and how to stop them
/// (implemented by the node over its RPC).
#[async_trait]
pub trait JobSource: std::fmt::Debug + Send + Sync {
    /// The jobs of every live node created since `since_micros` (running
    /// ones included), for `viewer`.
    async fn jobs(&self, since_micros: i64, viewer: &Viewer) -> crate::Result<Vec<JobRecord>>;

    /// The connections of every live node.
    async fn backends(&self) -> crate::Result<Vec<Backend>>;

    /// Cancels the statement running on backend `pid`, wherever it is
    /// connected: whether there was one to cancel.
    ///
    /// # Errors
    /// 42501 when `viewer` may not cancel it.
    async fn cancel_backend(&self, pid: i32, viewer: &Viewer) -> crate::Result<bool>;

    /// Cancels job `job_id` on the node that runs it: whether it was
    /// running.
    ///
    /// # Errors
    /// 42501 when `viewer` may not cancel it; 42704 for an id that names no
    /// node.
    async fn cancel_job(&self, job_id: &str, viewer: &Viewer) -> crate::Result<bool>;
}

/// `text` with the string after every PASSWORD keyword replaced by
/// `'********'`, so no password (nor SCRAM verifier) of CREATE ROLE, ALTER
/// ROLE or CREATE USER reaches the job history or `pg_stat_activity`,
/// whether the statement parsed or not.
pub fn redact_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find("password") {
        let keyword_end = at + found + "password".len();
        out.push_str(&text[at..keyword_end]);
        at = keyword_end;
        let rest = &text[at..];
        let spaces = rest.len() - rest.trim_start().len();
        if !rest[spaces..].starts_with('\'') {
            continue;
        }
        // The quoted string: '' inside it is a quote.
        let body = &rest[spaces + 1..];
        let mut end = None;
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().is_some_and(|(_, next)| *next == '\'') {
                    chars.next();
                    continue;
                }
                end = Some(i);
                break;
            }
        }
        out.push_str(&rest[..spaces]);
        out.push_str("'********'");
        at += match end {
            Some(end) => spaces + 1 + end + 1,
            None => rest.len(),
        };
    }
    out.push_str(&text[at..]);
    out
}

/// The job's statement type (BigQuery's `statement_type`) and the table it
/// writes, from its parsed form.
pub fn statement_type(statement: &QuarryStatement) -> (String, Option<String>) {
    let sql = match statement {
        QuarryStatement::Sql(sql) => sql,
        QuarryStatement::Undrop(name) => return ("UNDROP_TABLE".into(), Some(name.to_string())),
        QuarryStatement::CloneAsOf { .. } => return ("CREATE_TABLE".into(), None),
        QuarryStatement::LoadData { table, .. } => {
            return ("LOAD_DATA".into(), Some(table.to_string()));
        }
        QuarryStatement::CreateExternalTable { name, .. } => {
            return ("CREATE_EXTERNAL_TABLE".into(), Some(name.to_string()));
        }
        QuarryStatement::Move { .. } => return ("MOVE".into(), None),
        QuarryStatement::CreateUser(_) => return ("CREATE_ROLE".into(), None),
        QuarryStatement::GrantRole { .. } => return ("GRANT".into(), None),
        QuarryStatement::CancelJob { .. } => return ("CANCEL_JOB".into(), None),
        QuarryStatement::Backup { .. } => return ("BACKUP".into(), None),
        QuarryStatement::Restore { .. } => return ("RESTORE".into(), None),
        QuarryStatement::AlterNode { .. } | QuarryStatement::DecommissionNode { .. } => {
            return ("ALTER_NODE".into(), None);
        }
        _ => return ("OTHER".into(), None),
    };
    let (kind, destination) = match sql {
        Statement::Query(_) => ("SELECT", None),
        Statement::Insert(insert) => ("INSERT", Some(insert.table.to_string())),
        Statement::Update(update) => ("UPDATE", Some(update.table.relation.to_string())),
        Statement::Delete(delete) => {
            let from = match &delete.from {
                datafusion::sql::sqlparser::ast::FromTable::WithFromKeyword(t)
                | datafusion::sql::sqlparser::ast::FromTable::WithoutKeyword(t) => {
                    t.first().map(|t| t.relation.to_string())
                }
            };
            ("DELETE", from)
        }
        Statement::Merge(merge) => ("MERGE", Some(merge.table.to_string())),
        Statement::CreateTable(create) if create.query.is_some() => {
            ("CREATE_TABLE_AS_SELECT", Some(create.name.to_string()))
        }
        Statement::CreateTable(create) => ("CREATE_TABLE", Some(create.name.to_string())),
        Statement::CreateView { .. } => ("CREATE_VIEW", None),
        Statement::Drop { .. } => ("DROP", None),
        Statement::AlterTable(alter) => ("ALTER_TABLE", Some(alter.name.to_string())),
        Statement::Truncate(truncate) => (
            "TRUNCATE_TABLE",
            truncate.table_names.first().map(|t| t.name.to_string()),
        ),
        Statement::Copy {
            source: datafusion::sql::sqlparser::ast::CopySource::Table { table_name, .. },
            to: false,
            ..
        } => ("COPY", Some(table_name.to_string())),
        Statement::Copy { .. } => ("COPY", None),
        Statement::Explain { .. } => ("EXPLAIN", None),
        Statement::StartTransaction { .. } => ("BEGIN", None),
        Statement::Commit { .. } => ("COMMIT", None),
        Statement::Rollback { .. } => ("ROLLBACK", None),
        Statement::Set(_) => ("SET", None),
        Statement::ShowVariable { .. } => ("SHOW", None),
        Statement::Grant { .. } => ("GRANT", None),
        Statement::Revoke { .. } => ("REVOKE", None),
        Statement::CreateSchema { .. } => ("CREATE_SCHEMA", None),
        Statement::CreateRole { .. } => ("CREATE_ROLE", None),
        Statement::Declare { .. } => ("DECLARE", None),
        Statement::Fetch { .. } => ("FETCH", None),
        other => {
            let text = other.to_string();
            let word = text.split_whitespace().next().unwrap_or("OTHER");
            return (word.to_ascii_uppercase(), None);
        }
    };
    (kind.to_owned(), destination)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::UnboundedMemoryPool;

    #[test]
    fn a_measured_pool_keeps_its_peak_until_reset() {
        let pool = MeasuredPool::new(Arc::new(UnboundedMemoryPool::default()));
        let shared: Arc<dyn MemoryPool> = pool.clone();
        let reservation = MemoryConsumer::new("sort").register(&shared);
        reservation.grow(1000);
        reservation.shrink(600);
        reservation.try_grow(100).unwrap();
        assert_eq!(pool.peak(), 1000);
        let stats = StatementStats::new(Some(pool.clone()));
        assert_eq!(stats.measured().peak_memory_bytes, 500);
    }

    #[test]
    fn passwords_never_reach_a_job_s_text() {
        assert_eq!(
            redact_passwords("CREATE ROLE a LOGIN PASSWORD 'it''s secret' VALID UNTIL 'x'"),
            "CREATE ROLE a LOGIN PASSWORD '********' VALID UNTIL 'x'"
        );
        assert_eq!(
            redact_passwords("alter user b with encrypted password  'SCRAM-SHA-256$4096:x'"),
            "alter user b with encrypted password  '********'"
        );
        assert_eq!(
            redact_passwords("CREATE USER c PASSWORD 'open"),
            "CREATE USER c PASSWORD '********'"
        );
        assert_eq!(
            redact_passwords("SELECT password FROM t"),
            "SELECT password FROM t"
        );
    }

    #[test]
    fn statement_types_and_destinations_follow_bigquery_s_names() {
        let kind = |sql: &str| statement_type(&crate::parser::parse(sql).unwrap()[0]);
        assert_eq!(kind("SELECT 1"), ("SELECT".into(), None));
        assert_eq!(
            kind("INSERT INTO s.t VALUES (1)"),
            ("INSERT".into(), Some("s.t".into()))
        );
        assert_eq!(
            kind("DELETE FROM t WHERE a = 1"),
            ("DELETE".into(), Some("t".into()))
        );
        assert_eq!(
            kind("CREATE TABLE t AS SELECT 1 AS a"),
            ("CREATE_TABLE_AS_SELECT".into(), Some("t".into()))
        );
        assert_eq!(kind("VACUUM").0, "VACUUM");
    }
}
