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

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::chunks::DataFileStore;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemorySchemaProvider;
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
use quarry_raft::command::columns_from_defs;
use quarry_raft::{Applied, ColumnDef, Command, SchemaChange};

use crate::catalog::{CATALOG_NAME, CatalogView, QuarryCatalog};
use crate::copy::{COPY_BATCH_ROWS, CopyFormat, RecordParser, RowBuffer, RowFormatter};
use crate::data_file::{DataFileWriter, WriteSet};
use crate::distributed::{Cluster, DistributedPlan, Peers};
use crate::error::{Error, Result, user_error};
use crate::parser::{self, QuarryStatement};
use crate::table::SnapshotTable;
use crate::types::{column_type_from_sql, column_type_of};

/// The metadata layer as execution needs it. The node implements it over Raft
/// (forwarding to the leader where needed); tests may use a single local replica.
#[async_trait]
pub trait Metadata: Send + Sync + 'static {
    /// The catalog with every acknowledged commit applied (linearizable read).
    async fn read(&self) -> quarry_raft::Result<Arc<Catalog>>;
    /// Commits `command`; returns once applied on a majority.
    async fn write(&self, command: Command) -> quarry_raft::Result<Applied>;
}

#[async_trait]
impl Metadata for quarry_raft::Meta {
    async fn read(&self) -> quarry_raft::Result<Arc<Catalog>> {
        quarry_raft::Meta::read(self).await
    }

    async fn write(&self, command: Command) -> quarry_raft::Result<Applied> {
        quarry_raft::Meta::write(self, command).await
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
}

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
        Arc::new(Engine {
            meta,
            chunks,
            target_partitions: partitions_within(target_partitions, resources.memory_bytes),
            resources,
            cluster: peers.map(|peers| Arc::new(Cluster::new(peers))),
        })
    }

    /// The catalog as of now (for fragments started by other nodes).
    ///
    /// # Errors
    /// If the metadata cannot be read.
    pub async fn catalog(&self) -> Result<Arc<Catalog>> {
        Ok(self.meta.read().await?)
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
        match self.resources.memory_bytes {
            // The error of a statement that runs out names its largest consumers.
            Some(bytes) => Arc::new(TrackConsumersPool::new(
                crate::memory::QueryPool::new(bytes),
                std::num::NonZeroUsize::new(5).expect("non-zero"),
            )),
            None => Arc::new(UnboundedMemoryPool::default()),
        }
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
    /// A command's completion tag.
    Command(CommandTag),
    /// COPY FROM STDIN: feed the client's data to this, then finish it.
    CopyIn(Box<CopyIn>),
    /// COPY TO STDOUT: the formatted data.
    CopyOut {
        /// Number of columns.
        columns: usize,
        /// Whether the format is CSV (else text).
        csv: bool,
        /// Chunks of formatted rows.
        data: BoxStream<'static, Result<Bytes>>,
    },
}

/// A setting PostgreSQL clients read or write (SET / SHOW).
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    // CockroachDB's name and values (see [`DistSql`]).
    ("distsql", "auto"),
    ("default_transaction_isolation", "repeatable read"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("lc_messages", "C"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
];

/// The server version reported to clients: the PostgreSQL protocol version Quarry
/// follows, then Quarry's own.
pub const SERVER_VERSION: &str = concat!("16.0 (Quarry ", env!("CARGO_PKG_VERSION"), ")");

/// Schema holding a statement's time-travel tables.
const AS_OF_SCHEMA: &str = "__quarry_as_of";

/// One client's session.
pub struct Session {
    engine: Arc<Engine>,
    ctx: SessionContext,
    catalog: Arc<QuarryCatalog>,
    settings: BTreeMap<String, String>,
    /// The open transaction block, if any.
    transaction: Option<Transaction>,
}

/// Isolation levels. READ COMMITTED and REPEATABLE READ both run as snapshot
/// isolation (the SQL standard allows a stronger level than asked for);
/// SERIALIZABLE adds validation at commit that nothing the transaction read
/// changed meanwhile, which rules out write skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Snapshot,
    Serializable,
}

impl Isolation {
    fn from_level(level: &ast::TransactionIsolationLevel) -> Isolation {
        match level {
            ast::TransactionIsolationLevel::Serializable => Isolation::Serializable,
            _ => Isolation::Snapshot,
        }
    }

    fn from_setting(value: Option<&str>) -> Isolation {
        match value {
            Some(v) if v.eq_ignore_ascii_case("serializable") => Isolation::Serializable,
            _ => Isolation::Snapshot,
        }
    }

    /// PostgreSQL's name for the level actually provided.
    fn name(self) -> &'static str {
        match self {
            Isolation::Snapshot => "repeatable read",
            Isolation::Serializable => "serializable",
        }
    }
}

/// An open BEGIN ... COMMIT block: one pinned catalog (its snapshot) and one
/// write set for all its statements.
struct Transaction {
    view: CatalogView,
    isolation: Isolation,
    /// A statement failed: only ROLLBACK (or COMMIT, which rolls back) is accepted.
    failed: bool,
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
            options.execution.parquet.pushdown_filters = true;
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
        runtime = runtime.with_memory_pool(memory.unwrap_or_else(|| engine.query_pool()));
        if let Some(dir) = &engine.resources.spill_dir {
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        let runtime = runtime
            .build_arc()
            .map_err(|e| Error::Internal(format!("cannot set up the query runtime: {e}")))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(crate::runtime::JoinYieldPoints))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let view = CatalogView {
            catalog: Arc::new(Catalog::default()),
            writes: Arc::new(WriteSet::new(engine.chunks.clone())),
        };
        let catalog = Arc::new(QuarryCatalog::new(engine.chunks.clone(), view));
        ctx.register_catalog(CATALOG_NAME, catalog.clone());
        datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            CATALOG_NAME,
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| Error::Internal(format!("cannot set up pg_catalog: {e}")))?;
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
        let settings = DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("server_version".to_owned(), SERVER_VERSION.to_owned())])
            .collect();
        Ok(Session {
            engine,
            ctx,
            catalog,
            settings,
            transaction: None,
        })
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

    /// Pins the catalog and write set the next statement runs against: the open
    /// transaction's, or else the newest catalog and a fresh write set.
    async fn begin_statement(&self) -> Result<CatalogView> {
        let view = match &self.transaction {
            Some(transaction) => transaction.view.clone(),
            None => self.fresh_view().await?,
        };
        self.catalog.set_view(view.clone());
        self.catalog.remove_system_schema(AS_OF_SCHEMA);
        Ok(view)
    }

    async fn fresh_view(&self) -> Result<CatalogView> {
        Ok(CatalogView {
            catalog: self.engine.meta.read().await?,
            writes: Arc::new(WriteSet::new(self.engine.chunks.clone())),
        })
    }

    /// Whether a transaction block (BEGIN ... COMMIT) is open.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// Commits what an autocommit statement wrote; inside a transaction block the
    /// writes wait for COMMIT.
    async fn commit_statement(&self, writes: &WriteSet) -> Result<()> {
        if self.transaction.is_some() {
            return Ok(());
        }
        commit_changes(self.engine.meta.as_ref(), writes, false).await
    }

    /// Refuses statements a transaction block cannot hold yet.
    fn outside_transaction(&self, what: &str) -> Result<()> {
        if self.transaction.is_some() {
            return Err(user_error(
                SqlState::ACTIVE_SQL_TRANSACTION,
                format!("{what} cannot run inside a transaction block"),
            ));
        }
        Ok(())
    }

    async fn begin(&mut self, modes: &[ast::TransactionMode]) -> Result<Output> {
        if self.transaction.is_some() {
            tracing::debug!("BEGIN inside a transaction block is ignored, as in PostgreSQL");
            return Ok(Output::Command(CommandTag::new("BEGIN")));
        }
        let mut isolation = Isolation::from_setting(self.setting("default_transaction_isolation"));
        for mode in modes {
            match mode {
                ast::TransactionMode::IsolationLevel(level) => {
                    isolation = Isolation::from_level(level)
                }
                ast::TransactionMode::AccessMode(_) => {}
            }
        }
        self.transaction = Some(Transaction {
            view: self.fresh_view().await?,
            isolation,
            failed: false,
        });
        Ok(Output::Command(CommandTag::new("BEGIN")))
    }

    async fn end(&mut self, commit: bool) -> Result<Output> {
        let Some(transaction) = self.transaction.take() else {
            // PostgreSQL warns "there is no transaction in progress" and goes on.
            return Ok(Output::Command(CommandTag::new(if commit {
                "COMMIT"
            } else {
                "ROLLBACK"
            })));
        };
        if !commit || transaction.failed {
            transaction.view.writes.discard();
            return Ok(Output::Command(CommandTag::new("ROLLBACK")));
        }
        let serializable = transaction.isolation == Isolation::Serializable;
        commit_changes(
            self.engine.meta.as_ref(),
            &transaction.view.writes,
            serializable,
        )
        .await?;
        Ok(Output::Command(CommandTag::new("COMMIT")))
    }

    /// The isolation level of the open transaction, or the default for new ones.
    fn isolation_name(&self) -> &'static str {
        match &self.transaction {
            Some(t) => t.isolation.name(),
            None => Isolation::from_setting(self.setting("default_transaction_isolation")).name(),
        }
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
        let QuarryStatement::Sql(statement) = statement else {
            return Ok((Vec::new(), None));
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
        let schema = match statement {
            Statement::Query(_) | Statement::Explain { .. } | Statement::ShowVariable { .. } => {
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
            QuarryStatement::Undrop(name) => {
                self.outside_transaction("UNDROP TABLE")?;
                let (schema, name) = self.resolve(&name)?;
                self.engine
                    .meta
                    .write(Command::UndropTable { schema, name })
                    .await?;
                Ok(Output::Command(CommandTag::new("UNDROP TABLE")))
            }
            QuarryStatement::CloneAsOf { create, instant } => {
                self.outside_transaction("CREATE TABLE")?;
                self.create_table(*create, Some(instant)).await
            }
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
        match statement {
            Statement::StartTransaction { modes, .. } => self.begin(&modes).await,
            Statement::Commit { .. } => self.end(true).await,
            Statement::Rollback {
                savepoint: None, ..
            } => self.end(false).await,
            Statement::Rollback { .. } => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "savepoints are not supported yet",
            )),
            Statement::Set(set) => self.set(set).await,
            Statement::ShowVariable { variable } => self.show(&variable),
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => {
                self.outside_transaction("CREATE SCHEMA")?;
                let name = match &schema_name {
                    SchemaName::Simple(name) => object_parts(name).join("."),
                    other => {
                        return Err(user_error(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            format!("CREATE SCHEMA {other} is not supported"),
                        ));
                    }
                };
                self.engine
                    .meta
                    .write(Command::CreateSchema {
                        name,
                        if_not_exists,
                    })
                    .await?;
                Ok(Output::Command(CommandTag::new("CREATE SCHEMA")))
            }
            Statement::AlterTable(alter) => self.alter_table(&alter.name, alter.operations).await,
            Statement::CreateTable(create) => {
                self.outside_transaction("CREATE TABLE")?;
                self.create_table(create, None).await
            }
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => {
                self.outside_transaction("DROP")?;
                self.drop(object_type, if_exists, &names, cascade).await
            }
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
                for target in &truncate.table_names {
                    let table = self.table(&view.catalog, &target.name)?.clone();
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
                if view.writes.writes_nothing()
                    && let Some(output) = self.run_distributed(&plan).await?
                {
                    return Ok(output);
                }
                Ok(Output::Rows(self.stream(plan).await?))
            }
        }
    }

    /// Runs a query (or EXPLAIN [ANALYZE] of one) over the cluster's live
    /// nodes; None when it is better run here alone (see
    /// [`DistributedPlan::new`]).
    async fn run_distributed(&self, plan: &LogicalPlan) -> Result<Option<Output>> {
        let Some(cluster) = &self.engine.cluster else {
            return Ok(None);
        };
        let mode = self
            .setting("distsql")
            .and_then(DistSql::parse)
            .unwrap_or(DistSql::Auto);
        if mode == DistSql::Off {
            return Ok(None);
        }
        let (query, explain) = match plan {
            LogicalPlan::Explain(e) => (e.plan.clone(), Some(false)),
            LogicalPlan::Analyze(a) => (a.input.clone(), Some(true)),
            other => (Arc::new(other.clone()), None),
        };
        if let LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) = query.as_ref() {
            return Ok(None);
        }
        let state = self.ctx.state();
        let physical = state
            .create_physical_plan(&query)
            .await
            .map_err(Error::from_engine)?;
        let scanned =
            crate::distributed::stages::scanned_bytes(&physical).map_err(Error::from_engine)?;
        if !mode.distributes(scanned, self.engine.resources.distribute_min_bytes) {
            return Ok(None);
        }
        let distributed = DistributedPlan::new(cluster, physical, self.engine.target_partitions)
            .map_err(Error::from_engine)?;
        let Some(distributed) = distributed else {
            return Ok(None);
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
                    return Ok(None);
                };
                let stream = distributed
                    .execute(started, ctx, self.engine.runtime())
                    .map_err(Error::from_engine)?;
                return Ok(Some(Output::Rows(stream)));
            }
            Some(false) => vec![
                ("logical_plan", query.display_indent().to_string()),
                ("distributed_plan", distributed.display(None)),
            ],
            Some(true) => {
                let started = std::time::Instant::now();
                let Ok(fragments) = start().await else {
                    return Ok(None);
                };
                let (count, reports) = distributed
                    .analyze(fragments, ctx, self.engine.runtime())
                    .await
                    .map_err(Error::from_engine)?;
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
        Ok(Some(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
            schema, stream,
        )))))
    }

    /// `plan`'s rows, its operators run on the engine's execution runtime.
    async fn stream(&self, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
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
        crate::runtime::execute_stream(self.engine.runtime(), plan, context)
            .map_err(Error::from_engine)
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
        self.pin_time_travel(&mut statement).await?;
        if let Statement::Query(query) = &mut statement {
            parser::name_result_columns(query);
        }
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(Error::from_engine)?;
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

    /// Replaces each `t FOR SYSTEM_TIME AS OF <expr>` with a table of the statement's
    /// time-travel schema that reads the snapshot current at that instant.
    async fn pin_time_travel(&mut self, statement: &mut Statement) -> Result<()> {
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
    async fn snapshot_at<'a>(
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
    async fn eval_timestamp(&self, expr: &Expr) -> Result<i64> {
        let value = self
            .eval_constant(&format!("CAST(({expr}) AS TIMESTAMP)"))
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

    /// A column definition of CREATE TABLE or ALTER TABLE ADD COLUMN.
    async fn column_def(&self, column: &ast::ColumnDef) -> Result<ColumnDef> {
        let column_type = column_type_from_sql(&column.data_type)?;
        let mut nullable = true;
        let mut default = None;
        for option in &column.options {
            match &option.option {
                ast::ColumnOption::NotNull => nullable = false,
                ast::ColumnOption::Null => nullable = true,
                ast::ColumnOption::Default(expr) => {
                    let value = self
                        .eval_constant(&format!("CAST(({expr}) AS {})", column.data_type))
                        .await?;
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

    /// Evaluates a constant SQL expression.
    async fn eval_constant(&self, sql: &str) -> Result<datafusion::common::ScalarValue> {
        let batches = self.run_query(&format!("SELECT {sql}")).await?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::Internal("a constant expression gave no rows".to_owned()))?;
        datafusion::common::ScalarValue::try_from_array(batch.column(0), 0)
            .map_err(Error::from_engine)
    }

    /// Runs an INSERT, DELETE or UPDATE planned by DataFusion (whose plan yields
    /// the affected-row count) and commits it unless a transaction block is open.
    async fn execute_dml(
        &mut self,
        command: &str,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let view = self.begin_statement().await?;
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

    async fn run_query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.ctx
            .sql(sql)
            .await
            .map_err(Error::from_engine)?
            .collect()
            .await
            .map_err(Error::from_engine)
    }

    async fn merge(&mut self, merge: &ast::Merge) -> Result<Output> {
        let view = self.begin_statement().await?;
        let TableFactor::Table { name, .. } = &merge.table else {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "MERGE INTO needs a table",
            ));
        };
        let table = self.table(&view.catalog, name)?.clone();
        let target_sql = format!("\"{}\".\"{}\"", table.schema, table.name);
        let plan = crate::merge::plan(merge, &table, &target_sql)?;
        let duplicates = self.run_query(&plan.duplicate_check).await?;
        let duplicated = duplicates
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
            })
            .map(|a| a.value(0))
            .unwrap_or(0);
        if duplicated > 0 {
            return Err(user_error(
                SqlState::CARDINALITY_VIOLATION,
                "MERGE command cannot affect row a second time",
            ));
        }
        let current = SnapshotTable::new(
            table.clone(),
            table.current_snapshot().id,
            self.engine.chunks.clone(),
            Some(view.writes.clone()),
        );
        let old_files = current.visible_files();
        let batches = self.run_query(&plan.query).await?;
        let columns = table.columns.len();
        let mut writer = DataFileWriter::new(table.clone(), view.writes.clone());
        let mut affected = 0u64;
        for batch in batches {
            let clause = datafusion::arrow::compute::cast(batch.column(columns), &DataType::Int64)
                .map_err(|e| Error::Internal(format!("MERGE clause column: {e}")))?;
            let clause = clause
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .ok_or_else(|| {
                    Error::Internal("MERGE clause column is not an integer".to_owned())
                })?;
            let source_only = batch
                .column(columns + 1)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                .ok_or_else(|| Error::Internal("MERGE source flag is not a boolean".to_owned()))?;
            let keep: datafusion::arrow::array::BooleanArray = (0..batch.num_rows())
                .map(|row| {
                    let number = clause.value(row);
                    if number != 0 {
                        affected += 1;
                    }
                    let deleted = plan.delete_clauses.contains(&(number as usize));
                    let unmatched_source = source_only.value(row) && number == 0;
                    Some(!deleted && !unmatched_source)
                })
                .collect();
            let rows = batch
                .project(&(0..columns).collect::<Vec<_>>())
                .map_err(|e| Error::Internal(e.to_string()))?;
            let kept = datafusion::arrow::compute::filter_record_batch(&rows, &keep)
                .map_err(|e| Error::Internal(e.to_string()))?;
            writer.write(kept).await?;
        }
        writer.finish().await?;
        for file in old_files {
            view.writes.remove(table.id, file.chunk);
        }
        self.commit_statement(&view.writes).await?;
        Ok(Output::Command(CommandTag::with_rows("MERGE", affected)))
    }

    async fn alter_table(
        &mut self,
        name: &ObjectName,
        operations: Vec<ast::AlterTableOperation>,
    ) -> Result<Output> {
        self.outside_transaction("ALTER TABLE")?;
        let view = self.begin_statement().await?;
        let table = self.table(&view.catalog, name)?.clone();
        let mut changes = Vec::with_capacity(operations.len());
        for operation in operations {
            let change = match operation {
                ast::AlterTableOperation::AddColumn { column_def, .. } => {
                    SchemaChange::AddColumn(self.column_def(&column_def).await?)
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
                } => SchemaChange::SetType {
                    column: normalize(&column_name),
                    column_type: column_type_from_sql(&data_type)?,
                },
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("ALTER TABLE {other} is not supported yet"),
                    ));
                }
            };
            changes.push(change);
        }
        for change in changes {
            self.engine
                .meta
                .write(Command::AlterTable {
                    table: table.id,
                    change,
                })
                .await?;
        }
        Ok(Output::Command(CommandTag::new("ALTER TABLE")))
    }

    /// CREATE TABLE: empty, a clone of `create.clone` (at `clone_as_of`, or
    /// its current snapshot), or AS a query.
    async fn create_table(
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
        if !create.constraints.is_empty() {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "table constraints (PRIMARY KEY, UNIQUE, FOREIGN KEY, CHECK) are not supported",
            ));
        }
        let view = self.begin_statement().await?;
        let (schema, name) = self.resolve(&create.name)?;
        let TableOptions {
            retention_micros,
            layout,
        } = table_options(&create.table_options)?;
        if create.clone.is_some() || create.query.is_none() {
            // A zero-copy clone (BigQuery's table clone) starts with the source's
            // data files at its current snapshot (or the one current at FOR
            // SYSTEM_TIME AS OF), keeping their field ids; each table's later
            // changes write new files, so neither sees the other's. A plain
            // CREATE TABLE starts empty.
            let (columns, files, field_ids) = match &create.clone {
                Some(source_name) => {
                    let source = self.table(&view.catalog, source_name)?;
                    let snapshot = match &clone_as_of {
                        Some(expr) => self.snapshot_at(source, source_name, expr).await?,
                        None => source.current_snapshot(),
                    };
                    let source_columns = source.columns_at(snapshot);
                    let columns = source_columns
                        .iter()
                        .map(|c| ColumnDef {
                            name: c.name.clone(),
                            column_type: c.column_type,
                            nullable: c.nullable,
                            default: c.default.clone(),
                        })
                        .collect();
                    let field_ids = source_columns.iter().map(|c| c.field_id).collect();
                    (
                        columns,
                        source.files_at(snapshot.id).cloned().collect(),
                        field_ids,
                    )
                }
                None => {
                    let mut columns = Vec::with_capacity(create.columns.len());
                    for column in &create.columns {
                        columns.push(self.column_def(column).await?);
                    }
                    (columns, Vec::new(), Vec::new())
                }
            };
            self.engine
                .meta
                .write(Command::CreateTable {
                    schema,
                    name,
                    columns,
                    if_not_exists: create.if_not_exists,
                    files,
                    retention_micros,
                    field_ids,
                    layout,
                    stripes: Vec::new(),
                })
                .await?;
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
        let plan = self.plan(Statement::Query(query)).await?;
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
            retention_micros,
            layout,
        });
        let mut stream = self.stream(plan).await?;
        let mut writer = DataFileWriter::new(provisional, view.writes.clone());
        while let Some(batch) = stream.next().await {
            writer.write(batch.map_err(Error::from_engine)?).await?;
        }
        let rows = writer.finish().await?;
        let (changes, _) = view.writes.take().await?;
        let mut files = Vec::new();
        let mut stripes = Vec::new();
        for change in changes {
            files.extend(change.added);
            stripes.extend(change.stripes);
        }
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
        match self.engine.meta.write(command).await {
            Ok(_) => Ok(Output::Command(CommandTag::with_rows("SELECT", rows))),
            Err(e) => {
                if refused(&e) {
                    view.writes.discard_files(files);
                }
                Err(e.into())
            }
        }
    }

    async fn drop(
        &mut self,
        object_type: ObjectType,
        if_exists: bool,
        names: &[ObjectName],
        cascade: bool,
    ) -> Result<Output> {
        let tag = match object_type {
            ObjectType::Table => "DROP TABLE",
            ObjectType::Schema => "DROP SCHEMA",
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("DROP {other} is not supported"),
                ));
            }
        };
        for name in names {
            let command = match object_type {
                ObjectType::Table => {
                    let (schema, name) = self.resolve(name)?;
                    Command::DropTable {
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
            self.engine.meta.write(command).await?;
        }
        Ok(Output::Command(CommandTag::new(tag)))
    }

    async fn set(&mut self, set: ast::Set) -> Result<Output> {
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
            ast::Set::SetNames { charset_name, .. } => {
                ("client_encoding".to_owned(), charset_name.to_string())
            }
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("{other} is not supported"),
                ));
            }
        };
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
            "statement_timeout" if parse_duration_ms(&value).is_none() => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
                ));
            }
            _ => {}
        }
        self.settings.insert(name, value);
        Ok(Output::Command(CommandTag::new("SET")))
    }

    fn show(&self, variable: &[Ident]) -> Result<Output> {
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
        let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .map_err(|e| Error::Internal(e.to_string()))?;
        let stream = futures::stream::once(async move { Ok(batch) });
        Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
            schema, stream,
        ))))
    }

    /// The statement timeout in milliseconds; 0 means none.
    pub fn statement_timeout_ms(&self) -> u64 {
        self.settings
            .get("statement_timeout")
            .and_then(|v| parse_duration_ms(v))
            .unwrap_or(0)
    }

    async fn copy(
        &mut self,
        source: CopySource,
        to: bool,
        target: CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<Output> {
        let format = copy_format(options, legacy)?;
        let view = self.begin_statement().await?;
        match (to, target) {
            (false, CopyTarget::Stdin) => {
                let CopySource::Table {
                    table_name,
                    columns,
                } = source
                else {
                    return Err(user_error(
                        SqlState::SYNTAX_ERROR,
                        "COPY FROM needs a table",
                    ));
                };
                let table = self.table(&view.catalog, &table_name)?.clone();
                let columns: Vec<String> = columns.iter().map(normalize).collect();
                let rows = RowBuffer::new(table.clone(), &columns)?;
                let column_count = if columns.is_empty() {
                    table.columns.len()
                } else {
                    columns.len()
                };
                Ok(Output::CopyIn(Box::new(CopyIn {
                    meta: self.engine.meta.clone(),
                    commit: self.transaction.is_none(),
                    writer: DataFileWriter::new(table.clone(), view.writes.clone()),
                    parser: RecordParser::new(format.clone()),
                    rows,
                    writes: view.writes,
                    error: None,
                    columns: column_count,
                    csv: matches!(format, CopyFormat::Csv { .. }),
                })))
            }
            (true, CopyTarget::Stdout) => {
                let query = match source {
                    CopySource::Query(query) => Statement::Query(query),
                    CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        let projection = if columns.is_empty() {
                            "*".to_owned()
                        } else {
                            columns
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        parser::parse_postgres(&format!("SELECT {projection} FROM {table_name}"))?
                            .pop()
                            .ok_or_else(|| {
                                Error::Internal("COPY TO query did not parse".to_owned())
                            })?
                    }
                };
                let plan = self.plan(query).await?;
                let columns = plan.schema().fields().len();
                let stream = self.stream(plan).await?;
                let csv = matches!(format, CopyFormat::Csv { .. });
                let mut formatter = RowFormatter::new(format);
                let data = stream
                    .map_err(Error::from_engine)
                    .and_then(move |batch| {
                        futures::future::ready(formatter.format(&batch).map(Bytes::from))
                    })
                    .boxed();
                Ok(Output::CopyOut { columns, csv, data })
            }
            (false, other) | (true, other) => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("COPY with {other} is not supported; use STDIN or STDOUT"),
            )),
        }
    }
}

/// Reads CREATE TABLE's `WITH (...)` options: `retention_seconds`, the time
/// travel window (BigQuery's max_time_travel_hours, in seconds).
fn table_options(options: &ast::CreateTableOptions) -> Result<TableOptions> {
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
            other => {
                return Err(user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "unrecognized table option {other} \
                         (known: retention_seconds, data_chunks, parity_chunks)"
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
struct TableOptions {
    /// Time travel window.
    retention_micros: Option<i64>,
    /// `data_chunks` and `parity_chunks`: the table's stripe layout.
    layout: Option<StripeLayout>,
}

/// Whether a failed metadata write certainly did not commit, so the data files it
/// named are garbage now. An unknown outcome (`Unavailable`) keeps them; garbage
/// collection decides later.
fn refused(e: &quarry_raft::Error) -> bool {
    matches!(
        e,
        quarry_raft::Error::Catalog(_) | quarry_raft::Error::NotLeader { .. }
    )
}

/// Commits everything `writes` holds as one Raft command; on a definite refusal
/// deletes the files it wrote. With `serializable`, the commit also fails if any
/// table the transaction read changed meanwhile.
async fn commit_changes(meta: &dyn Metadata, writes: &WriteSet, serializable: bool) -> Result<()> {
    let (changes, reads) = writes.take().await?;
    if changes.is_empty() {
        return Ok(());
    }
    let command = Command::Commit {
        changes: changes.clone(),
        read_set: if serializable { reads } else { Vec::new() },
    };
    if let Err(e) = meta.write(command).await {
        if refused(&e) {
            writes.discard_changes(changes);
        }
        return Err(e.into());
    }
    Ok(())
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

/// The count DataFusion's DML plans return (one row, one UInt64 column).
fn count_of(batches: &[RecordBatch]) -> u64 {
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

/// Parses a PostgreSQL duration setting (`5000`, `5s`, `250ms`, `1min`) to ms.
fn parse_duration_ms(value: &str) -> Option<u64> {
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

fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat> {
    let mut csv = false;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("COPY format \"{other}\" is not supported; use text or csv"),
                    ));
                }
            },
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ));
            }
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(*c),
                        CopyLegacyCsvOption::Escape(c) => escape = Some(*c),
                        other => {
                            return Err(user_error(
                                SqlState::FEATURE_NOT_SUPPORTED,
                                format!("COPY option {other} is not supported"),
                            ));
                        }
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            CopyLegacyOption::Header => header = true,
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ));
            }
        }
    }
    let byte = |c: char, what: &str| -> Result<u8> {
        if c.is_ascii() {
            Ok(c as u8)
        } else {
            Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("COPY {what} must be a single one-byte character"),
            ))
        }
    };
    if csv {
        let quote = byte(quote.unwrap_or('"'), "quote")?;
        Ok(CopyFormat::Csv {
            delimiter: byte(delimiter.unwrap_or(','), "delimiter")?,
            quote,
            escape: escape
                .map(|c| byte(c, "escape"))
                .transpose()?
                .unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        })
    } else {
        if header || quote.is_some() || escape.is_some() {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "COPY HEADER, QUOTE and ESCAPE are available only in CSV mode",
            ));
        }
        Ok(CopyFormat::Text {
            delimiter: byte(delimiter.unwrap_or('\t'), "delimiter")?,
            null: null.unwrap_or_else(|| "\\N".to_owned()),
        })
    }
}

/// A COPY FROM STDIN in progress: parses the client's data into data files and
/// commits them as one snapshot when the client ends the copy. Dropped without
/// [`CopyIn::finish`] (client failure or disconnect), it deletes what it wrote.
pub struct CopyIn {
    meta: Arc<dyn Metadata>,
    /// Whether finishing commits (autocommit), or leaves the rows to the
    /// transaction block's COMMIT.
    commit: bool,
    parser: RecordParser,
    rows: RowBuffer,
    writer: DataFileWriter,
    writes: Arc<WriteSet>,
    /// The first error; later data is ignored and `finish` reports it.
    error: Option<Error>,
    /// Number of columns copied.
    pub columns: usize,
    /// Whether the format is CSV (else text).
    pub csv: bool,
}

impl CopyIn {
    /// Consumes a piece of the client's data. Errors are kept and reported by
    /// [`CopyIn::finish`], as the client only reads the server's answer then.
    pub async fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let rows = &mut self.rows;
        if let Err(e) = self
            .parser
            .feed(data, &mut |line, record| rows.push(line, record))
        {
            self.error = Some(e);
            return;
        }
        if self.rows.len() >= COPY_BATCH_ROWS
            && let Err(e) = self.flush().await
        {
            self.error = Some(e);
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.take_batch()?;
        self.writer.write(batch).await
    }

    /// Ends the copy: the rows commit as one new snapshot of the table.
    ///
    /// # Errors
    /// The first error met while parsing, converting or writing, or the commit's;
    /// then nothing is committed.
    pub async fn finish(mut self) -> Result<CommandTag> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let rows = &mut self.rows;
        self.parser
            .finish(&mut |line, record| rows.push(line, record))?;
        self.flush().await?;
        let CopyIn {
            meta,
            writer,
            writes,
            commit,
            ..
        } = self;
        let count = writer.finish().await?;
        if commit {
            commit_changes(meta.as_ref(), &writes, false).await?;
        }
        Ok(CommandTag::with_rows("COPY", count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
