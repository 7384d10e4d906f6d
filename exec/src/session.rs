//! [`Session`]: one client's SQL session. Runs statements against a pinned catalog
//! version, sends DDL and commits through the metadata layer, and returns rows,
//! command tags or COPY streams.
//!
//! Statement flow:
//!
//! ```text
//!  SQL ─parse─► Statement ─┬─ DDL ───────────────► Metadata::write (Raft)
//!                          ├─ INSERT / CTAS / COPY ► DataFusion ─► data files
//!                          │                         (WriteSet) ─► Metadata::write
//!                          └─ query ──────────────► DataFusion ─► record batches
//! ```
//!
//! Every statement pins the catalog with a linearizable read first, so it sees every
//! commit acknowledged before it started. A statement that fails commits nothing,
//! and the chunks it wrote are deleted.
//!
//! This file holds the engine, the session and statement dispatch; each kind of
//! statement has a module of its own: `transaction` (BEGIN/COMMIT, isolation,
//! committing a write set), `ddl`, `dml` (INSERT/UPDATE/DELETE/MERGE),
//! `copy_statement` (COPY TO and [`CopyIn`]), `settings` (SET/SHOW),
//! `time_travel` (`FOR SYSTEM_TIME AS OF` pinning) and `dispatch` (local or
//! distributed execution of a query).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::chunks::DataFileStore;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider};
use datafusion::common::ParamValues;
use datafusion::common::config::ConfigOptions;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{MemoryPool, TrackConsumersPool, UnboundedMemoryPool};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self, CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, Ident,
    ObjectName, ObjectType, SchemaName, Statement, TableFactor, VisitorMut,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use quarry_common::SqlState;
use quarry_common::catalog::{Catalog, DEFAULT_SCHEMA, StripeLayout, Table, TableSnapshot};
use quarry_common::roles::{Privileges, Securable};
use quarry_raft::command::columns_from_defs;
use quarry_raft::{Applied, ColumnDef, Command, SchemaChange};

use crate::catalog::{CATALOG_NAME, CatalogView, QuarryCatalog};
use crate::copy::{COPY_BATCH_ROWS, CopyFormat, RecordParser, RowBuffer, RowFormatter};
use crate::data_file::{DataFileWriter, WriteSet};
use crate::distributed::{Cluster, DistributedPlan, Peers};
use crate::error::{Error, Result, user_error};
use crate::parser::{self, QuarryStatement};
use crate::privileges::{Access, SessionUser};
use crate::table::SnapshotTable;
use crate::types::column_type_of;

mod backup;
mod compact;
mod copy_statement;
mod cursor;
mod ddl;
mod dispatch;
mod dml;
mod external;
mod jobs;
mod load;
mod prepared;
mod roles;
use roles::OwnedKind;
mod settings;
mod stream;
mod subscription;
mod time_travel;
mod transaction;

pub use compact::{
    COMPACT_MIN_FILES, Compacted, Compaction, CompactionKind, FLUSH_MIN_ROWS, SMALL_FILE_ROWS,
    compaction_candidates, compaction_due,
};
pub use copy_statement::CopyIn;
use dispatch::Dispatch;
pub use settings::DistSql;
pub use settings::is_preset_setting;
use settings::{DEFAULT_SETTINGS, PRESET_SETTINGS};
pub use stream::{AppendMode, Appended, ChannelState, StreamRows};
use time_travel::AS_OF_SCHEMA;
use transaction::{Isolation, Transaction, commit_changes, refused};

/// The metadata layer as execution needs it. The node implements it over Raft
/// (forwarding to the leader where needed); tests may use a single local replica.
#[async_trait]
pub trait Metadata: Send + Sync + 'static {
    /// The catalog with every acknowledged commit applied (linearizable read).
    async fn read(&self) -> quarry_raft::Result<Arc<Catalog>>;
    /// Commits `command`; returns once applied on a majority.
    async fn write(&self, command: Command) -> quarry_raft::Result<Applied>;
    /// The catalog as this node has applied it, without asking the leader
    /// (may lag behind the cluster); None where there is no local copy.
    fn read_local(&self) -> Option<Arc<Catalog>> {
        None
    }
}

#[async_trait]
impl Metadata for quarry_raft::Meta {
    async fn read(&self) -> quarry_raft::Result<Arc<Catalog>> {
        quarry_raft::Meta::read(self).await
    }

    async fn write(&self, command: Command) -> quarry_raft::Result<Applied> {
        quarry_raft::Meta::write(self, command).await
    }

    fn read_local(&self) -> Option<Arc<Catalog>> {
        Some(quarry_raft::Meta::read_local(self))
    }
}

/// What every session of a node shares.
pub struct Engine {
    meta: Arc<dyn Metadata>,
    chunks: Arc<dyn DataFileStore>,
    target_partitions: usize,
    resources: QueryResources,
    /// The other nodes queries are distributed over (None: this node alone).
    cluster: Option<Arc<Cluster>>,
    /// Where audit events go (set once by the node).
    audit: std::sync::OnceLock<Arc<dyn crate::audit::AuditLog>>,
    /// The memory pools of the queries made so far (dropped ones are
    /// pruned as the pools are summed).
    pools: std::sync::Mutex<Vec<std::sync::Weak<dyn MemoryPool>>>,
    /// Results of recent queries, for repeats.
    result_cache: Arc<crate::result_cache::ResultCache>,
    /// The cluster's jobs and connections (set once by the node).
    jobs: std::sync::OnceLock<Arc<dyn crate::jobs::JobSource>>,
}

/// What one query may use on this node.
#[derive(Debug, Clone, Default)]
pub struct QueryResources {
    /// Memory for a statement's sorts, aggregates and joins, in bytes; past
    /// it they spill to disk (DataFusion's fair spill pool). None: unbounded.
    pub memory_bytes: Option<usize>,
    /// Directory for spill files (None: the system temp dir).
    pub spill_dir: Option<std::path::PathBuf>,
    /// The runtime statements' operators run on, apart from the one serving
    /// the network (None: the caller's); see [`crate::runtime`].
    pub runtime: Option<tokio::runtime::Handle>,
    /// Bytes of data files a query's scans must read for it to be
    /// distributed with `distsql = auto` ([`DistSql`]); 0: every query.
    pub distribute_min_bytes: u64,
    /// A statement's data files with fewer rows go to the ingest buffer
    /// ([`WriteSet::holding`]); 0: none do. None: [`SMALL_FILE_ROWS`].
    pub buffer_file_rows: Option<u64>,
    /// Bytes of query results kept for repeats
    /// ([`crate::result_cache::ResultCache`]); None: 256 MiB, 0: none.
    pub result_cache_bytes: Option<u64>,
}

impl Engine {
    /// An engine over `meta` and the local chunk store, running each query with
    /// `target_partitions` parallel partitions per node (fewer when the
    /// query memory leaves under 16 MiB each); with `peers`, queries
    /// are distributed over the live nodes (docs/ARCHITECTURE.md §4).
    pub fn new(
        meta: Arc<dyn Metadata>,
        chunks: Arc<dyn DataFileStore>,
        target_partitions: usize,
        resources: QueryResources,
        peers: Option<Arc<dyn Peers>>,
    ) -> Arc<Self> {
        let result_cache = Arc::new(crate::result_cache::ResultCache::new(
            resources.result_cache_bytes.unwrap_or(256 << 20),
        ));
        Arc::new(Engine {
            meta,
            chunks,
            target_partitions: partitions_within(target_partitions, resources.memory_bytes),
            resources,
            cluster: peers.map(|peers| Arc::new(Cluster::new(peers))),
            audit: std::sync::OnceLock::new(),
            pools: std::sync::Mutex::default(),
            result_cache,
            jobs: std::sync::OnceLock::new(),
        })
    }

    /// Bytes the queries running on this node hold in their memory pools.
    pub fn memory_reserved(&self) -> usize {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut reserved = 0;
        pools.retain(|pool| match pool.upgrade() {
            Some(pool) => {
                reserved += pool.reserved();
                true
            }
            None => false,
        });
        reserved
    }

    /// Sends audit events to `audit` from now on (once; later calls are
    /// ignored).
    pub fn set_audit_log(&self, audit: Arc<dyn crate::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// Reads the cluster's jobs and connections from `jobs` from now on
    /// (once; later calls are ignored), for `quarry_system.jobs`,
    /// `pg_stat_activity`, `pg_cancel_backend` and `CANCEL JOB`.
    pub fn set_job_source(&self, jobs: Arc<dyn crate::jobs::JobSource>) {
        let _ = self.jobs.set(jobs);
    }

    /// Records `event` in the audit log, if the node keeps one.
    pub fn audit(&self, event: crate::audit::AuditEvent) {
        if let Some(audit) = self.audit.get() {
            audit.record(event);
        }
    }

    /// Records that `user` ran `command`, if it is audited.
    pub(crate) fn audit_command(&self, user: &str, command: &Command) {
        if let Some((event, detail)) = crate::audit::describe(command) {
            self.audit(crate::audit::AuditEvent {
                at_micros: quarry_raft::now_micros(),
                event: event.to_owned(),
                user: user.to_owned(),
                address: None,
                detail,
            });
        }
    }

    /// The catalog as of now (for fragments started by other nodes).
    ///
    /// # Errors
    /// If the metadata cannot be read.
    pub async fn catalog(&self) -> Result<Arc<Catalog>> {
        Ok(self.meta.read().await?)
    }

    /// The catalog as this node has applied it, without a round trip to the
    /// Raft leader (logins use it, so a node cut off from the leader still
    /// admits clients; every statement then reads the newest catalog).
    ///
    /// # Errors
    /// As [`Self::catalog`] where there is no local copy.
    pub async fn local_catalog(&self) -> Result<Arc<Catalog>> {
        match self.meta.read_local() {
            Some(catalog) => Ok(catalog),
            None => self.catalog().await,
        }
    }

    /// The cluster queries are distributed over (None: this node alone).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The runtime statements' operators run on (None: the caller's).
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.resources.runtime.as_ref()
    }

    /// The data file store.
    pub fn chunks(&self) -> &Arc<dyn DataFileStore> {
        &self.chunks
    }

    /// A new session.
    ///
    /// # Errors
    /// Internal if the engine's system schemas cannot be registered.
    pub fn session(self: &Arc<Self>) -> Result<Session> {
        Session::new(self.clone(), None)
    }

    /// A new pool of one query's memory on this node
    /// ([`QueryResources::memory_bytes`]; unbounded without it).
    pub(crate) fn query_pool(&self) -> Arc<dyn MemoryPool> {
        let pool: Arc<dyn MemoryPool> = match self.resources.memory_bytes {
            // The error of a statement that runs out names its largest consumers.
            Some(bytes) => Arc::new(TrackConsumersPool::new(
                crate::memory::QueryPool::new(bytes),
                std::num::NonZeroUsize::new(5).expect("non-zero"),
            )),
            None => Arc::new(UnboundedMemoryPool::default()),
        };
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pools.len() >= 1024 {
            pools.retain(|pool| pool.strong_count() > 0);
        }
        pools.push(Arc::downgrade(&pool));
        drop(pools);
        pool
    }

    /// A session whose statements take their memory from `pool`, shared with
    /// whatever else uses it (the fragments of one distributed query on this
    /// node, the coordinator's session among them).
    ///
    /// # Errors
    /// As [`Engine::session`].
    pub fn session_in(self: &Arc<Self>, pool: Arc<dyn MemoryPool>) -> Result<Session> {
        Session::new(self.clone(), Some(pool))
    }
}

/// A PostgreSQL command tag, as sent in CommandComplete (`INSERT 0 5`, `CREATE TABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    /// The command word(s), e.g. `INSERT`, `CREATE TABLE`.
    pub command: String,
    /// Rows affected, for commands that report them.
    pub rows: Option<u64>,
}

impl CommandTag {
    fn new(command: &str) -> Self {
        CommandTag {
            command: command.to_owned(),
            rows: None,
        }
    }

    fn with_rows(command: &str, rows: u64) -> Self {
        CommandTag {
            command: command.to_owned(),
            rows: Some(rows),
        }
    }
}

/// What a statement produced.
pub enum Output {
    /// Rows, streamed.
    Rows(SendableRecordBatchStream),
    /// Rows of a BINARY cursor: in binary format where the client did not
    /// choose one (the simple query protocol); the extended protocol's Bind
    /// chooses, as in PostgreSQL.
    BinaryRows(SendableRecordBatchStream),
    /// A command's completion tag.
    Command(CommandTag),
    /// COPY FROM STDIN: feed the client's data to this, then finish it.
    CopyIn(Box<CopyIn>),
    /// COPY TO STDOUT: the formatted data.
    CopyOut {
        /// Number of columns.
        columns: usize,
        /// Whether the format is CSV (else text or binary).
        csv: bool,
        /// Whether the format is binary (the protocol layer ends it with
        /// the trailer).
        binary: bool,
        /// Chunks of formatted rows.
        data: BoxStream<'static, Result<Bytes>>,
    },
}

/// The server version reported to clients: the PostgreSQL protocol version Quarry
/// follows, then Quarry's own.
pub const SERVER_VERSION: &str = concat!("16.0 (Quarry ", env!("CARGO_PKG_VERSION"), ")");

/// One client's session.
pub struct Session {
    /// Whether alike subplans are computed once (`share_subplans`).
    share_subplans: Arc<std::sync::atomic::AtomicBool>,
    engine: Arc<Engine>,
    ctx: SessionContext,
    catalog: Arc<QuarryCatalog>,
    settings: BTreeMap<String, String>,
    /// The open transaction block, if any.
    transaction: Option<Transaction>,
    /// Open cursors by name.
    cursors: BTreeMap<String, cursor::Cursor>,
    /// Named statements of the extended protocol and the ones DEALLOCATE
    /// removed since the connection last asked.
    prepared: prepared::PreparedNames,
    /// Who the session is; its privileges are checked on every statement.
    user: SessionUser,
    /// NOTICEs of the statement run last, for the client, in order.
    notices: Vec<Notice>,
    /// The session's memory pool, measured for each statement's peak.
    pool: Arc<crate::jobs::MeasuredPool>,
    /// What the statement running (or run last) measured.
    stats: Arc<crate::jobs::StatementStats>,
}

/// A message for the client that is not an error (PostgreSQL's NOTICE,
/// SQLSTATE 00000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The message.
    pub message: String,
    /// Its detail.
    pub detail: Option<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Frees the session's DataFusion context (and the write set its catalog
        // view holds, deleting files of an unfinished statement): without this,
        // pg_catalog's provider keeps the catalog alive through the catalog list.
        self.catalog.clear_system_schemas();
    }
}

/// The value of `ident` as PostgreSQL resolves it: unquoted names fold to lower case.
pub fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn object_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => normalize(ident),
            None => part.to_string(),
        })
        .collect()
}

/// Memory below which one more partition is not worth it: a partition's
/// sort, aggregate or join needs a few batches in memory to make progress,
/// and merging P sorted partitions holds batches of all P at once.
const PARTITION_MEMORY_MIN: usize = 16 << 20;

/// `target` partitions, fewer if the statement's memory is too small for each
/// to have `PARTITION_MEMORY_MIN` (at least one).
fn partitions_within(target: usize, memory_bytes: Option<usize>) -> usize {
    let target = target.max(1);
    match memory_bytes {
        Some(bytes) => target.min(bytes / PARTITION_MEMORY_MIN).max(1),
        None => target,
    }
}

/// Bytes each partition's sort sets aside up front to merge what it spilled:
/// DataFusion's 10 MiB, but never more than a quarter of the query's memory
/// spread over its partitions. The set-aside memory cannot spill, so at the
/// default a small limit with many partitions (8 × 10 MiB of 96 MiB) would
/// leave the sorts almost nothing to buffer before spilling.
fn sort_merge_reserve(memory_bytes: usize, partitions: usize) -> usize {
    const DEFAULT: usize = 10 << 20;
    (memory_bytes / (4 * partitions.max(1))).clamp(256 << 10, DEFAULT)
}

impl Session {
    fn new(engine: Arc<Engine>, memory: Option<Arc<dyn MemoryPool>>) -> Result<Session> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(engine.target_partitions);
        {
            let options = config.options_mut();
            // Each scan's filters go into the Parquet reader or after
            // decoding as `filter_placement` decides; `true` puts them all
            // in the reader.
            options.execution.parquet.pushdown_filters = false;
            options.execution.parquet.reorder_filters = true;
            options.execution.parquet.schema_force_view_types = false;
            options.sql_parser.map_string_types_to_utf8view = false;
            // PostgreSQL reads `12.50` as NUMERIC, not as a binary float.
            options.sql_parser.parse_float_as_decimal = true;
            options.execution.time_zone = Some("+00:00".to_owned());
            if let Some(bytes) = engine.resources.memory_bytes {
                options.execution.sort_spill_reservation_bytes =
                    sort_merge_reserve(bytes, engine.target_partitions);
                options.execution.spill_compression =
                    datafusion::common::config::SpillCompression::Lz4Frame;
            }
        }
        // A session runs one statement at a time, so its pool is the
        // statement's memory.
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        // A session of its own pool measures its statements' peak; one
        // sharing another's (a fragment's) leaves that to the owner.
        let (shared, pool) = match memory {
            Some(shared) => (shared.clone(), crate::jobs::MeasuredPool::new(shared)),
            None => {
                let pool = crate::jobs::MeasuredPool::new(engine.query_pool());
                (pool.clone() as Arc<dyn MemoryPool>, pool)
            }
        };
        runtime = runtime.with_memory_pool(shared);
        if let Some(dir) = &engine.resources.spill_dir {
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        let runtime = runtime
            .build_arc()
            .map_err(|e| Error::Internal(format!("cannot set up the query runtime: {e}")))?;
        // The setting `share_subplans`, read by its optimizer rule
        // (exec/src/shared.rs); set from the session's settings per statement.
        let share_subplans = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rules(crate::optimizer::rules(share_subplans.clone()))
            .with_physical_optimizer_rules(crate::filter_placement::physical_rules(vec![
                Arc::new(crate::runtime::JoinYieldPoints),
                Arc::new(crate::shared::ShareSubplans),
            ]))
            .with_query_planner(Arc::new(crate::shared::QuarryQueryPlanner));
        if let Some(planners) = builder.expr_planners() {
            planners.insert(0, Arc::new(crate::pg_functions::VectorSubscript));
            planners.insert(0, Arc::new(crate::array_text::ArrayTextLiterals));
            crate::json::add_planner(planners);
        }
        let state = builder.build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(crate::array_text::ArrayTextCasts));
        let view = CatalogView {
            catalog: Arc::new(Catalog::default()),
            writes: Arc::new(WriteSet::new(engine.chunks.clone())),
        };
        let catalog = Arc::new(QuarryCatalog::new(engine.chunks.clone(), view));
        catalog.set_audit_log(engine.audit.get().cloned());
        catalog.set_jobs(engine.jobs.get().cloned());
        let state = ctx.state_weak_ref();
        catalog.set_state_source(Arc::new(move || {
            state.upgrade().map(|state| state.read().clone())
        }));
        ctx.register_catalog(CATALOG_NAME, catalog.clone());
        datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            CATALOG_NAME,
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| Error::Internal(format!("cannot set up pg_catalog: {e}")))?;
        // After pg_catalog's own, so Quarry's answer for the objects it has
        // replaces the crate's (pg_relation_size).
        crate::pg_functions::register(&ctx, catalog.clone());
        crate::pg_signatures::register(&ctx, catalog.clone());
        crate::json::register(&ctx);
        // The relation tables of pg_catalog are Quarry's own (stable oids).
        if let Some(inner) = catalog.schema("pg_catalog") {
            catalog
                .register_schema(
                    "pg_catalog",
                    Arc::new(crate::pg_catalog::PgCatalogSchema::new(inner, &catalog)),
                )
                .map_err(|e| Error::Internal(format!("cannot set up pg_catalog: {e}")))?;
        }
        // Drivers (SQLAlchemy's among them) parse `version()` as PostgreSQL's.
        ctx.register_udf(datafusion::logical_expr::create_udf(
            "version",
            vec![],
            DataType::Utf8,
            datafusion::logical_expr::Volatility::Stable,
            Arc::new(|_| {
                Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::Utf8(Some(format!(
                        "PostgreSQL {SERVER_VERSION} on {}-{}, 64-bit",
                        std::env::consts::ARCH,
                        std::env::consts::OS
                    ))),
                ))
            }),
        ));
        let settings: BTreeMap<String, String> = DEFAULT_SETTINGS
            .iter()
            .chain(PRESET_SETTINGS)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        catalog.set_settings(&settings);
        let user = SessionUser::new(quarry_common::roles::BOOTSTRAP_SUPERUSER, None);
        crate::pg_roles::register(&ctx, &catalog, &user);
        crate::pg_activity::register(&ctx, &catalog, user.role);
        Ok(Session {
            engine,
            ctx,
            catalog,
            settings,
            transaction: None,
            cursors: BTreeMap::new(),
            prepared: prepared::PreparedNames::default(),
            user,
            notices: Vec::new(),
            stats: crate::jobs::StatementStats::new(None),
            pool,
            share_subplans,
        })
    }

    /// The NOTICEs statements raised since the last call, in order.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Sets who the session is (after the connection authenticated).
    pub fn set_user(&mut self, user: SessionUser) {
        crate::pg_roles::register(&self.ctx, &self.catalog, &user);
        crate::pg_activity::register(&self.ctx, &self.catalog, user.role);
        self.user = user;
    }

    /// What the statement running (or run last) measured so far; its rows'
    /// stream adds its operators' cost when it ends.
    pub fn statement_stats(&self) -> Arc<crate::jobs::StatementStats> {
        self.stats.clone()
    }

    /// Who the session is.
    pub fn user(&self) -> &SessionUser {
        &self.user
    }

    /// The privilege checks of the statement being run: those
    /// [`Self::begin_statement`] made, or new ones for a session without a
    /// role (which read no other catalog).
    pub(crate) async fn access(&self) -> Result<Arc<Access>> {
        match self.catalog.access() {
            Some(access) => Ok(access),
            None => self.fresh_access().await.map(Arc::new),
        }
    }

    /// Privilege checks against the catalog [`Self::begin_statement`]
    /// pinned and the newest one (read again inside a transaction block).
    pub(crate) async fn fresh_access(&self) -> Result<Access> {
        let pinned = self.catalog.view().catalog;
        let latest = if self.transaction.is_some() && self.user.role.is_some() {
            self.engine.meta.read().await?
        } else {
            pinned.clone()
        };
        Ok(
            Access::new(latest, pinned, self.user.role, self.default_schema())
                .with_checked_scans(self.catalog.checked_scans()),
        )
    }

    /// The value of setting `name` (lower case), if it exists.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(String::as_str)
    }

    /// Parses `sql` into statements.
    ///
    /// # Errors
    /// 42601.
    pub fn parse(&self, sql: &str) -> Result<Vec<QuarryStatement>> {
        parser::parse(sql)
    }

    fn default_schema(&self) -> String {
        self.ctx
            .state()
            .config_options()
            .catalog
            .default_schema
            .clone()
    }

    /// Resolves `name` to (schema, table).
    fn resolve(&self, name: &ObjectName) -> Result<(String, String)> {
        let parts = object_parts(name);
        match parts.as_slice() {
            [table] => Ok((self.default_schema(), table.clone())),
            [schema, table] => Ok((schema.clone(), table.clone())),
            [catalog, schema, table] if catalog == CATALOG_NAME || catalog == "postgres" => {
                Ok((schema.clone(), table.clone()))
            }
            _ => Err(user_error(
                SqlState::UNDEFINED_TABLE,
                format!("relation \"{name}\" does not exist"),
            )),
        }
    }

    fn table<'a>(&self, catalog: &'a Catalog, name: &ObjectName) -> Result<&'a Arc<Table>> {
        let (schema, table) = self.resolve(name)?;
        catalog.table(&schema, &table).ok_or_else(|| {
            user_error(
                SqlState::UNDEFINED_TABLE,
                format!("relation \"{name}\" does not exist"),
            )
        })
    }

    /// Describes `statement` for the extended protocol: its parameter types and the
    /// schema of its rows (None for statements that return no rows).
    ///
    /// # Errors
    /// As planning the statement fails.
    pub async fn describe(
        &mut self,
        statement: &QuarryStatement,
    ) -> Result<(Vec<Option<DataType>>, Option<SchemaRef>)> {
        if let QuarryStatement::CreateAccessToken { .. } = statement {
            let token = Field::new("token", DataType::Utf8, false);
            return Ok((Vec::new(), Some(Arc::new(Schema::new(vec![token])))));
        }
        let QuarryStatement::Sql(statement) = statement else {
            return Ok((Vec::new(), None));
        };
        if let Statement::Fetch { name, .. } = statement {
            return Ok((Vec::new(), self.cursor_schema(name)));
        }
        // DECLARE ... CURSOR FOR query takes the query's parameters and
        // returns no rows itself.
        let (statement, rows) = match statement {
            Statement::Declare { stmts } => match stmts.as_slice() {
                [
                    ast::Declare {
                        for_query: Some(query),
                        ..
                    },
                ] => (&Statement::Query(query.clone()), false),
                _ => return Ok((Vec::new(), None)),
            },
            other => (other, true),
        };
        if !returns_planned_rows(statement) {
            return Ok((Vec::new(), None));
        }
        self.begin_statement().await?;
        let plan = self.plan(statement.clone()).await?;
        let types = plan.get_parameter_types().map_err(Error::from_engine)?;
        let mut ordered: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(name, t)| {
                name.trim_start_matches('$')
                    .parse::<usize>()
                    .ok()
                    .map(|i| (i, t))
            })
            .collect();
        ordered.sort_by_key(|(i, _)| *i);
        let count = ordered.last().map(|(i, _)| *i).unwrap_or(0);
        let mut params = vec![None; count];
        for (i, t) in ordered {
            params[i - 1] = t;
        }
        if params.iter().any(Option::is_none) {
            for (i, data_type) in inferred_parameters(&plan) {
                if let Some(slot @ None) = params.get_mut(i - 1) {
                    *slot = Some(data_type);
                }
            }
        }
        // A parameter compared with an `oid` column (`WHERE t.oid = $1`) is
        // an oid, as PostgreSQL types it: described as `oid` (UInt32 here),
        // which clients bind oids to (tokio-postgres's type lookup does).
        if let Ok(fields) = plan.get_parameter_fields() {
            for (name, field) in fields {
                let is_oid = field.is_some_and(|f| {
                    f.data_type() == &DataType::Int32
                        && f.metadata()
                            .get(datafusion_pg_catalog::pg_catalog::oid_field::OID_ALIAS_KEY)
                            .is_some_and(|kind| kind == "oid")
                });
                if is_oid
                    && let Ok(i) = name.trim_start_matches('$').parse::<usize>()
                    && let Some(slot) = params.get_mut(i.wrapping_sub(1))
                {
                    *slot = Some(DataType::UInt32);
                }
            }
        }
        let schema = match statement {
            Statement::Query(_) | Statement::Explain { .. } | Statement::ShowVariable { .. }
                if rows =>
            {
                Some(Arc::new(plan.schema().as_arrow().clone()))
            }
            _ => None,
        };
        Ok((params, schema))
    }

    /// Executes one statement with `params` bound to `$1, $2, ...`.
    ///
    /// Inside a transaction block, a failed statement aborts the transaction:
    /// later statements fail with 25P02 until ROLLBACK (or COMMIT, which then
    /// rolls back), as in PostgreSQL.
    ///
    /// # Errors
    /// Any [`Error`]; the statement then committed nothing.
    pub async fn execute(
        &mut self,
        statement: QuarryStatement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        self.stats = crate::jobs::StatementStats::new(Some(self.pool.clone()));
        let ends_transaction = matches!(
            statement,
            QuarryStatement::Sql(Statement::Commit { .. } | Statement::Rollback { .. })
        );
        if let Some(transaction) = &self.transaction
            && transaction.failed
            && !ends_transaction
        {
            return Err(user_error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let result = match statement {
            QuarryStatement::Sql(statement) => self.execute_statement(statement, params).await,
            QuarryStatement::CreateSubscription {
                name,
                connection,
                publications,
                options,
            } => {
                self.create_subscription(&name, &connection, &publications, &options)
                    .await
            }
            QuarryStatement::AlterSubscription {
                name,
                enabled,
                connection,
                refresh,
            } => {
                self.alter_subscription(&name, enabled, connection.as_deref(), refresh.as_deref())
                    .await
            }
            QuarryStatement::DropSubscription { name, if_exists } => {
                self.drop_subscription(&name, if_exists).await
            }
            QuarryStatement::Undrop(name) => {
                let (schema, name) = self.resolve(&name)?;
                self.write_ddl(Command::UndropTable { schema, name })
                    .await?;
                Ok(Output::Command(CommandTag::new("UNDROP TABLE")))
            }
            QuarryStatement::CloneAsOf { create, instant } => {
                self.create_table(*create, Some(instant)).await
            }
            QuarryStatement::RenameView {
                name,
                to,
                if_exists,
            } => self.rename_view(&name, &to, if_exists).await,
            QuarryStatement::ViewOwner {
                name,
                owner,
                if_exists,
            } => {
                self.set_owner(&name, OwnedKind::View, &owner, if_exists)
                    .await
            }
            QuarryStatement::LoadData {
                table,
                overwrite,
                format,
                uris,
                skip_leading_rows,
                max_bad_records,
            } => {
                self.load_data(
                    &table,
                    overwrite,
                    format,
                    &uris,
                    skip_leading_rows,
                    max_bad_records,
                )
                .await
            }
            QuarryStatement::CreateExternalTable {
                name,
                if_not_exists,
                columns,
                source,
            } => {
                self.create_external_table(&name, if_not_exists, &columns, source)
                    .await
            }
            QuarryStatement::Move { name, direction } => self.move_cursor(&name, &direction).await,
            QuarryStatement::CancelJob { job_id } => self.cancel_job(&job_id).await,
            QuarryStatement::AlterNode {
                node,
                drain_deadline_secs,
            } => self.alter_node(node, drain_deadline_secs).await,
            QuarryStatement::DecommissionNode { node } => self.decommission_node(node).await,
            QuarryStatement::Backup { dir } => self.backup(&dir).await,
            QuarryStatement::Restore { dir } => self.restore(&dir).await,
            QuarryStatement::CreateUser(create) => self.create_role(*create, true).await,
            QuarryStatement::CreateAccessToken { name, valid_until } => {
                self.create_access_token(&name, valid_until.as_ref()).await
            }
            QuarryStatement::DropAccessToken { name, if_exists } => {
                self.drop_access_token(&name, if_exists).await
            }
            QuarryStatement::GrantRole {
                roles,
                members,
                granted,
            } => self.grant_roles(&roles, &members, granted).await,
        };
        if result.is_err()
            && let Some(transaction) = &mut self.transaction
        {
            transaction.failed = true;
        }
        result
    }

    async fn execute_statement(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let calls = settings::set_config_calls(&statement);
        let statement = if calls.is_empty() {
            statement
        } else {
            self.set_config(statement, calls).await?
        };
        match statement {
            Statement::StartTransaction { modes, .. } => self.begin(&modes).await,
            Statement::Commit { .. } => self.end(true).await,
            Statement::Rollback {
                savepoint: None, ..
            } => self.end(false).await,
            Statement::Rollback {
                savepoint: Some(name),
                ..
            } => self.rollback_to_savepoint(&name),
            Statement::Savepoint { name } => self.savepoint(&name),
            Statement::Declare { stmts } => match <[ast::Declare; 1]>::try_from(stmts) {
                Ok([declare]) => self.declare(declare, params).await,
                Err(_) => Err(user_error(
                    SqlState::SYNTAX_ERROR,
                    "DECLARE declares one cursor at a time",
                )),
            },
            Statement::Fetch {
                name,
                direction,
                into: None,
                ..
            } => self.fetch(&name, &direction).await,
            Statement::Close { cursor } => self.close(&cursor),
            Statement::Deallocate { name, .. } => self.deallocate(&name),
            Statement::Prepare {
                name,
                data_types,
                statement,
            } => self.prepare(&name, data_types, *statement).await,
            Statement::Execute {
                name: Some(name),
                parameters,
                immediate: false,
                into,
                using,
                ..
            } if into.is_empty() && using.is_empty() => {
                self.execute_prepared(&name, &parameters).await
            }
            Statement::ReleaseSavepoint { name } => self.release_savepoint(&name),
            Statement::Set(set) => self.set(set).await,
            Statement::ShowVariable { variable } => self.show(&variable),
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => {
                let name = match &schema_name {
                    SchemaName::Simple(name) => object_parts(name).join("."),
                    other => {
                        return Err(user_error(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            format!("CREATE SCHEMA {other} is not supported"),
                        ));
                    }
                };
                self.write_ddl(Command::CreateSchema {
                    name,
                    if_not_exists,
                })
                .await?;
                Ok(Output::Command(CommandTag::new("CREATE SCHEMA")))
            }
            Statement::AlterTable(alter) => match alter.operations.as_slice() {
                [ast::AlterTableOperation::OwnerTo { new_owner }] => {
                    self.set_owner(&alter.name, OwnedKind::Table, new_owner, alter.if_exists)
                        .await
                }
                _ => self.alter_table(&alter.name, alter.operations).await,
            },
            Statement::AlterSchema(alter) => match alter.operations.as_slice() {
                [ast::AlterSchemaOperation::OwnerTo { owner }] => {
                    self.set_owner(&alter.name, OwnedKind::Schema, owner, alter.if_exists)
                        .await
                }
                _ => Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("{} is not supported", Statement::AlterSchema(alter)),
                )),
            },
            Statement::CreateRole(create) => self.create_role(create, false).await,
            Statement::AlterRole { name, operation } => self.alter_role(&name, operation).await,
            Statement::Drop {
                object_type: ObjectType::Role | ObjectType::User,
                if_exists,
                names,
                ..
            } => self.drop_roles(&names, if_exists).await,
            Statement::Grant(grant) => self.grant(grant).await,
            Statement::Revoke(revoke) => self.revoke(revoke).await,
            Statement::CreateView(create) => self.create_view(create).await,
            Statement::CreateType {
                name,
                representation,
            } => self.create_type(&name, representation).await,
            Statement::Comment {
                object_type,
                object_name,
                comment,
                ..
            } => self.comment(object_type, &object_name, comment).await,
            Statement::CreateTable(create) => self.create_table(create, None).await,
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => self.drop(object_type, if_exists, &names, cascade).await,
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                self.copy(source, to, target, &options, &legacy_options)
                    .await
            }
            Statement::Truncate(truncate) => {
                let view = self.begin_statement().await?;
                let access = self.access().await?;
                for target in &truncate.table_names {
                    let table = self.table(&view.catalog, &target.name)?.clone();
                    access.require(&Securable::Schema(table.schema.clone()), Privileges::USAGE)?;
                    access.require(&Securable::Table(table.id), Privileges::TRUNCATE)?;
                    if view.catalog.external_source(table.id).is_some() {
                        return Err(
                            quarry_raft::CatalogError::ExternalTable(table.name.clone()).into()
                        );
                    }
                    let source = SnapshotTable::new(
                        table.clone(),
                        table.current_snapshot().id,
                        self.engine.chunks.clone(),
                        Some(view.writes.clone()),
                    );
                    for file in source.visible_files() {
                        view.writes.remove(table.id, file.chunk);
                    }
                }
                self.commit_statement(&view.writes).await?;
                Ok(Output::Command(CommandTag::new("TRUNCATE TABLE")))
            }
            Statement::Merge(merge) => self.merge(&merge).await,
            Statement::Insert(_) | Statement::Delete(_) | Statement::Update { .. } => {
                let command = match statement {
                    Statement::Insert(_) => "INSERT",
                    Statement::Delete(_) => "DELETE",
                    _ => "UPDATE",
                };
                self.execute_dml(command, statement, params).await
            }
            other => {
                // Queries write nothing; the scans take the files of the pinned
                // snapshots when planned, so the stream needs no view.
                let view = self.begin_statement().await?;
                let plan = self.plan_with_params(other, params).await?;
                if let LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) = &plan {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("{} is not supported yet", plan.display()),
                    ));
                }
                // A transaction's own new data files live on this node only.
                if !view.writes.writes_nothing() {
                    return Ok(Output::Rows(self.stream(plan).await?));
                }
                self.stats.reads(&plan);
                let cache_key = self.result_cache_key(&plan);
                if let Some(key) = &cache_key {
                    if let Some(rows) = self.engine.result_cache.get(key) {
                        self.stats.cache_hit();
                        metrics::counter!("quarry_result_cache_hits_total").increment(1);
                        return Ok(Output::Rows(rows));
                    }
                    metrics::counter!("quarry_result_cache_misses_total").increment(1);
                }
                let output = match self.run_distributed(&plan).await? {
                    Dispatch::Distributed(output) => output,
                    Dispatch::Local(Some(physical)) => {
                        Output::Rows(self.execute_physical(physical)?)
                    }
                    Dispatch::Local(None) => Output::Rows(self.stream(plan).await?),
                };
                Ok(match (cache_key, output) {
                    (Some(key), Output::Rows(rows)) => {
                        Output::Rows(self.engine.result_cache.store_after(key, rows))
                    }
                    (_, output) => output,
                })
            }
        }
    }

    /// The result cache's key of query `plan` run by this session, or None
    /// when it is not to be cached (`use_query_cache` off, or see
    /// [`crate::result_cache::key_of`]).
    fn result_cache_key(&self, plan: &LogicalPlan) -> Option<String> {
        let on = self
            .setting("use_query_cache")
            .and_then(settings::parse_bool)
            .unwrap_or(true);
        if !on {
            return None;
        }
        crate::result_cache::key_of(plan, &self.user().name, &self.settings)
    }

    /// The memory pool of this session's statements.
    pub(crate) fn memory_pool(&self) -> Arc<dyn MemoryPool> {
        self.ctx.runtime_env().memory_pool.clone()
    }

    /// The task context of this session (its functions, settings and memory).
    pub(crate) fn task_ctx(&self) -> Arc<datafusion::execution::TaskContext> {
        self.ctx.task_ctx()
    }

    /// Changes this session's DataFusion options, for what it plans and runs
    /// from now on.
    pub(crate) fn configure(&self, change: impl FnOnce(&mut ConfigOptions)) {
        change(self.ctx.state_ref().write().config_mut().options_mut());
    }

    /// Plans `statement` against the pinned catalog, resolving time travel.
    async fn plan(&mut self, mut statement: Statement) -> Result<LogicalPlan> {
        let share = self
            .setting("share_subplans")
            .and_then(settings::parse_bool)
            .unwrap_or(false);
        self.share_subplans
            .store(share, std::sync::atomic::Ordering::Relaxed);
        self.pin_time_travel(&mut statement).await?;
        let catalog = self.ddl_catalog().await?;
        if !catalog.types.is_empty() {
            let named = |name: &ObjectName| {
                let key = self.resolve(name).ok()?;
                catalog.types.get(&key).cloned()
            };
            crate::composite::casts_to_composite_types(&mut statement, &named)?;
        }
        parser::filter_information_schema_views(&mut statement);
        parser::rewrite_postgres_forms(&mut statement);
        let query = matches!(statement, Statement::Query(_));
        if let Statement::Query(query) = &mut statement {
            parser::name_result_columns(query);
        }
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(Error::from_engine)?;
        self.access().await?.check_plan(&plan)?;
        crate::partition::check_required_filters(&plan, &self.ctx.state())?;
        let plan = if query {
            crate::types::int4_result_literals(plan).map_err(Error::from_engine)?
        } else {
            plan
        };
        crate::bytea::rewrite_text_to_bytea_casts(plan).map_err(Error::from_engine)
    }

    async fn plan_with_params(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<LogicalPlan> {
        let plan = self.plan(statement).await?;
        match params {
            Some(params) => plan.with_param_values(params).map_err(Error::from_engine),
            None => Ok(plan),
        }
    }
}

/// Types of parameters DataFusion leaves untyped, as PostgreSQL types them:
/// a parameter cast to a type (`$1::oid[]`) has that type (with the field
/// metadata the type planner gave it: an `oid` element keeps its alias),
/// and one compared with an array's elements (`$1 = ANY(a)`, planned as
/// `array_has(a, $1)`) has their type. Their numbers and types.
fn inferred_parameters(plan: &LogicalPlan) -> Vec<(usize, DataType)> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Cast, Expr as DfExpr, ExprSchemable, expr::Placeholder};
    let number = |e: &DfExpr| match e {
        DfExpr::Placeholder(Placeholder { id, .. }) => id
            .trim_start_matches('$')
            .parse::<usize>()
            .ok()
            .filter(|i| *i > 0),
        _ => None,
    };
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        let schema = match node.inputs().as_slice() {
            [input] => input.schema().clone(),
            _ => node.schema().clone(),
        };
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                match e {
                    DfExpr::Cast(Cast { expr, field }) => {
                        if let Some(i) = number(expr) {
                            found.push((i, field.data_type().clone()));
                        }
                    }
                    DfExpr::ScalarFunction(call) if call.name() == "array_has" => {
                        if let [array, element] = call.args.as_slice()
                            && let Some(i) = number(element)
                            && let Ok(DataType::List(item) | DataType::LargeList(item)) =
                                array.get_type(&schema)
                        {
                            found.push((i, item.data_type().clone()));
                        }
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

/// Whether DataFusion plans `statement` into rows whose shape `describe` reports.
fn returns_planned_rows(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Query(_)
            | Statement::Explain { .. }
            | Statement::Insert(_)
            | Statement::Delete(_)
            | Statement::Update { .. }
    )
}
