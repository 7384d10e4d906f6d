//! The PostgreSQL wire front end (pgwire): one [`Connection`] per client socket,
//! each with its own [`Session`].
//!
//! Simple and extended query protocols, COPY FROM STDIN / TO STDOUT, cancel
//! requests (through pgwire's connection manager) and `statement_timeout`.
//! Errors carry the SQLSTATE that [`quarry_exec::Error::sqlstate`] assigns.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::sql::sqlparser::ast::Statement;
use std::collections::HashMap;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::stream::BoxStream;
use futures::{FutureExt, Sink, SinkExt, StreamExt, stream};
use pgwire::api::DEFAULT_NAME;
use pgwire::api::PgWireConnectionState;
use pgwire::api::auth::{
    DefaultServerParameterProvider, ServerParameterProvider, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::messages::startup::Authentication;
use quarry_common::roles::Role;
use quarry_exec::privileges::SessionUser;

use crate::auth::{AuthMode, Authenticator};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_describe_response};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::QueryParser;
use pgwire::api::stmt::StoredStatement;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{
    Close, CloseComplete, Describe, Execute, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{CommandComplete, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use quarry_common::SqlState;
use quarry_exec::QuarryStatement;
use quarry_exec::session::SERVER_VERSION;
use quarry_exec::{CommandTag, CopyIn, Engine, Output, Session};

use crate::jobs::{JobHandle, JobStart, Jobs};
use tokio::sync::Mutex;
use tokio::sync::watch;

/// Database names a client may connect to: Quarry's one database, and `postgres`,
/// which many tools assume exists.
pub const DATABASE_NAMES: &[&str] = &["quarry", "postgres"];

/// What all connections of a node share.
pub struct Frontend {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    cancels: Arc<Cancels>,
    running: Arc<RunningStatements>,
    slots: Arc<tokio::sync::Semaphore>,
    jobs: Arc<Jobs>,
    drain: Arc<crate::drain::Drain>,
}

/// Cancel signals of the open connections, by the (process id, secret key) each
/// was given at startup. A cancel request bumps the connection's generation;
/// the statement running then stops, whether it is planning, executing or
/// streaming rows.
#[derive(Debug, Default)]
pub struct Cancels {
    connections: std::sync::Mutex<HashMap<(i32, Bytes), watch::Sender<u64>>>,
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, Bytes), watch::Sender<u64>>> {
        self.connections
            .lock()
            .expect("cancel registry lock is never held across a panic")
    }
}

/// Routes PostgreSQL CancelRequest messages to connections.
pub struct CancelRouter(Arc<Cancels>);

#[async_trait]
impl CancelHandler for CancelRouter {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        if let Some(signal) = self.0.lock().get(&key) {
            signal.send_modify(|generation| *generation += 1);
        }
    }
}

/// Why a statement stopped early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    TimedOut,
}

impl Stop {
    fn error(self) -> PgWireError {
        let message = match self {
            Stop::Cancelled => "canceling statement due to user request",
            Stop::TimedOut => "canceling statement due to statement timeout",
        };
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            SqlState::QUERY_CANCELED.code().to_owned(),
            message.to_owned(),
        )))
    }
}

type StopSignal = Shared<BoxFuture<'static, Stop>>;

/// Ends `rows` with a 57014 error as soon as `stop` fires; dropping the rows
/// stream stops the query's execution.
fn until_stopped<T: Send + 'static>(
    rows: BoxStream<'static, PgWireResult<T>>,
    stop: StopSignal,
) -> impl futures::Stream<Item = PgWireResult<T>> + Send + 'static {
    stream::unfold(
        (rows, stop, false),
        |(mut rows, mut stop, stopped)| async move {
            if stopped {
                return None;
            }
            tokio::select! {
                biased;
                reason = &mut stop => Some((Err(reason.error()), (rows, stop, true))),
                item = rows.next() => item.map(|item| (item, (rows, stop, false))),
            }
        },
    )
}

/// Statements executing now, and transaction blocks open, across
/// connections: shutdown waits for the statements, a drain for both.
///
/// A drain first closes the gate ([`Self::close`]), then waits for the
/// counts to reach zero. A statement outside a transaction block counts
/// itself first and then looks at the gate (both sequentially consistent),
/// so either the drain sees it running or it sees the gate closed and does
/// not run: none starts once a drain has found the node idle.
#[derive(Debug, Default)]
pub struct RunningStatements {
    count: std::sync::atomic::AtomicUsize,
    transactions: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    idle: tokio::sync::Notify,
}

impl RunningStatements {
    /// Counts a statement in; `None` (not counted) when the gate is closed
    /// and the statement does not continue an open transaction block.
    fn enter(self: &Arc<Self>, in_transaction: bool) -> Option<RunningGuard> {
        use std::sync::atomic::Ordering::SeqCst;
        self.count.fetch_add(1, SeqCst);
        let guard = RunningGuard(self.clone());
        (in_transaction || !self.closed.load(SeqCst)).then_some(guard)
    }

    /// Statements executing now.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Transaction blocks open now (BEGIN without its COMMIT or ROLLBACK).
    pub fn open_transactions(&self) -> usize {
        self.transactions.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Refuses new statements outside transaction blocks (a drain).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes new statements again (a resume).
    pub fn open(&self) {
        self.closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until no statement is executing.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct RunningGuard(Arc<RunningStatements>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// A connection's open transaction block, counted while it lasts.
struct TransactionGuard(Arc<RunningStatements>);

impl TransactionGuard {
    fn new(running: &Arc<RunningStatements>) -> TransactionGuard {
        running
            .transactions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TransactionGuard(running.clone())
    }
}

impl Drop for TransactionGuard {
    fn drop(&mut self) {
        self.0
            .transactions
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a statement holds until its output is sent (or dropped): its query
/// slot, if it takes one, and its place among the running statements, which
/// a drain and a shutdown wait for.
struct Held {
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    _running: RunningGuard,
}

impl Frontend {
    /// A front end over `engine`.
    /// A front end over `engine` running at most `query_slots` statements at
    /// once; the others wait for a slot, in arrival order (a cancel request or
    /// the statement timeout ends the wait).
    pub fn new(
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
        query_slots: usize,
        jobs: Arc<Jobs>,
        drain: Arc<crate::drain::Drain>,
    ) -> Arc<Self> {
        Arc::new(Frontend {
            jobs,
            drain,
            engine,
            auth,
            cancels: Arc::new(Cancels::default()),
            running: Arc::new(RunningStatements::default()),
            slots: Arc::new(tokio::sync::Semaphore::new(query_slots.max(1))),
        })
    }

    /// The node's query slots, which the HTTP query API's statements take
    /// too.
    pub fn slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.slots.clone()
    }

    /// Statements executing now.
    pub fn running(&self) -> &RunningStatements {
        &self.running
    }

    /// Cancels the running statement of every client connection, as a
    /// cancel request would (57014); how many connections were signalled.
    pub fn cancel_all(&self) -> usize {
        let connections = self.cancels.lock();
        for signal in connections.values() {
            signal.send_modify(|generation| *generation += 1);
        }
        connections.len()
    }

    /// The handlers of one new client connection.
    ///
    /// # Errors
    /// Internal if a session cannot be set up.
    pub fn connection(self: &Arc<Self>) -> quarry_exec::Result<Handlers> {
        let connection = Arc::new(Connection {
            state: Arc::new(ConnectionState {
                session: Mutex::new(self.engine.session()?),
                copy: Mutex::new(None),
                copy_job: Mutex::new(None),
                transaction: std::sync::Mutex::new(None),
                copy_held: std::sync::Mutex::new(None),
                jobs: self.jobs.clone(),
                pid: std::sync::atomic::AtomicI32::new(0),
            }),
            jobs: self.jobs.clone(),
            backend: std::sync::Mutex::new(None),
            cancels: self.cancels.clone(),
            cancel: watch::channel(0).0,
            cancel_key: std::sync::Mutex::new(None),
            running: self.running.clone(),
            slots: self.slots.clone(),
            engine: self.engine.clone(),
            auth: self.auth.clone(),
            drain: self.drain.clone(),
            login: std::sync::Mutex::new(Login::Initial),
        });
        Ok(Handlers {
            connection,
            cancel: Arc::new(CancelRouter(self.cancels.clone())),
        })
    }
}

/// One client connection.
pub struct Connection {
    state: Arc<ConnectionState>,
    cancels: Arc<Cancels>,
    /// Bumped by a cancel request for this connection.
    cancel: watch::Sender<u64>,
    /// This connection's key in `cancels`, once started up.
    cancel_key: std::sync::Mutex<Option<(i32, Bytes)>>,
    running: Arc<RunningStatements>,
    /// The node's query slots.
    slots: Arc<tokio::sync::Semaphore>,
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    /// Refuses new clients while the node drains.
    drain: Arc<crate::drain::Drain>,
    login: std::sync::Mutex<Login>,
    /// The node's jobs; this connection's backend record once logged in.
    jobs: Arc<Jobs>,
    backend: std::sync::Mutex<Option<crate::jobs::BackendGuard>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let key = self
            .cancel_key
            .lock()
            .expect("cancel key lock is never held across a panic")
            .take();
        if let Some(key) = key {
            self.cancels.lock().remove(&key);
        }
    }
}

/// A connection's session, shared with its statement parser.
pub struct ConnectionState {
    session: Mutex<Session>,
    /// The COPY FROM STDIN in progress, if any.
    copy: Mutex<Option<Box<CopyIn>>>,
    /// Its job.
    copy_job: Mutex<Option<JobHandle>>,
    /// Held while the session's transaction block is open: a drain waits
    /// for it to end.
    transaction: std::sync::Mutex<Option<TransactionGuard>>,
    /// What a COPY FROM STDIN holds (its slot, its running mark) until its
    /// data ends: a drain waits for it as for any running statement.
    copy_held: std::sync::Mutex<Option<Held>>,
    /// The node's jobs (a statement that fails to parse is one too).
    jobs: Arc<Jobs>,
    /// The connection's process id (0 before login).
    pid: std::sync::atomic::AtomicI32,
}

impl ConnectionState {
    /// Records `text`, which failed before it could run, as an ended job.
    fn failed_job(&self, session: &Session, text: &str, error: &PgWireError) {
        let job = self.jobs.begin(
            JobStart {
                pid: self.pid.load(std::sync::atomic::Ordering::Relaxed),
                user: session.user().name.clone(),
                client: "pgwire",
                query: text.to_owned(),
                kind: ("UNKNOWN".to_owned(), None),
            },
            Arc::new(|| {}),
        );
        job.finish(Default::default(), None, Some(job_error(error)));
    }

    /// Parses and describes `sql` for the extended protocol.
    async fn prepare(&self, session: &mut Session, sql: &str) -> PgWireResult<Option<Prepared>> {
        let mut statements = session.parse(sql).map_err(|e| to_pg_error(&e))?;
        if statements.len() > 1 {
            return Err(to_pg_error(&quarry_exec::error::user_error(
                SqlState::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(Some(Prepared {
                statement: None,
                text: String::new(),
                params: Vec::new(),
                schema: None,
            }));
        };
        let (params, schema) = session
            .describe(&statement)
            .await
            .map_err(|e| to_pg_error(&e))?;
        Ok(Some(Prepared {
            statement: Some(statement),
            text: sql.trim().trim_end_matches(';').to_owned(),
            params,
            schema,
        }))
    }
}

/// pgwire's view of a [`Connection`].
pub struct Handlers {
    connection: Arc<Connection>,
    cancel: Arc<CancelRouter>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.connection.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.connection.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.connection.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.connection.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!(error = %error, "statement failed");
    }
}

/// The client-facing error for `e`.
pub fn to_pg_error(e: &quarry_exec::Error) -> PgWireError {
    let state = e.sqlstate();
    tracing::debug!(error = ?e, %state, "statement error");
    if state == SqlState::INTERNAL_ERROR {
        tracing::warn!(error = %e, "internal error");
    }
    let mut info = ErrorInfo::new("ERROR".to_owned(), state.code().to_owned(), e.to_string());
    info.detail = e.detail();
    PgWireError::UserError(Box::new(info))
}

fn tag_of(tag: &CommandTag) -> Tag {
    let t = Tag::new(&tag.command);
    let t = if tag.command == "INSERT" {
        t.with_oid(0)
    } else {
        t
    };
    match tag.rows {
        Some(rows) => t.with_rows(rows as usize),
        None => t,
    }
}

fn fields_of(schema: &SchemaRef, format: &Format) -> PgWireResult<Arc<Vec<FieldInfo>>> {
    Ok(Arc::new(pg_fields(schema, format)?))
}

/// The row description of `schema` in `format`: arrow-pg's types, and
/// `json` for JSON values (text with the `arrow.json` extension), whose
/// text and binary forms are both the document's text.
fn pg_fields(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let fields = arrow_schema_to_pg_fields(&client_schema(schema), format, None)?;
    Ok(fields
        .into_iter()
        .zip(schema.fields())
        .map(|(info, field)| {
            if quarry_exec::types::is_json(field) {
                retyped(&info, Type::JSON)
            } else if let Some(oid) = quarry_exec::types::pg_type_oid(field) {
                // A column of a named composite type (CREATE TYPE), or an
                // array of one: described by the type's oid.
                let kind = match field.data_type() {
                    DataType::List(_) => postgres_types::Kind::Array(Type::RECORD),
                    _ => postgres_types::Kind::Composite(Vec::new()),
                };
                let wire_type = Type::new(String::new(), oid, kind, String::new());
                retyped(&info, wire_type)
            } else if let Some(oids) = oid_array(field.data_type()) {
                retyped(&info, oids)
            } else {
                info
            }
        })
        .collect())
}

/// `info` with the wire type `wire_type`.
fn retyped(info: &FieldInfo, wire_type: Type) -> FieldInfo {
    FieldInfo::new(
        info.name().to_owned(),
        info.table_id(),
        info.column_id(),
        wire_type,
        info.format(),
    )
    .with_format_options(info.format_options().clone())
}

/// Whether values of `data_type` are sent as bigint: DataFusion answers
/// some counts unsigned (`cardinality`, `array_length`,
/// `jsonb_array_length`), PostgreSQL has no unsigned type, and arrow-pg
/// would send them as numeric. [`client_schema`] describes them so and
/// [`wire_batch`] converts them.
fn sent_as_bigint(data_type: &DataType) -> bool {
    *data_type == DataType::UInt64
}

/// `oid[]` for a list of `oid`s (int4 elements carrying
/// datafusion-pg-catalog's `oid` alias, as `$1::oid[]` plans), which
/// arrow-pg reports as `int4[]`: its binary and text forms are int4[]'s,
/// with the element type `oid`. asyncpg decodes `oid[]` without looking
/// the type up; `int4[]` it looks up first.
fn oid_array(data_type: &DataType) -> Option<Type> {
    match data_type {
        DataType::List(element)
            if element.data_type() == &DataType::Int32
                && element
                    .metadata()
                    .get(arrow_pg::datatypes::PG_OID_ALIAS_KEY)
                    .is_some_and(|kind| kind == "oid") =>
        {
            Some(Type::OID_ARRAY)
        }
        _ => None,
    }
}

/// `schema` with its fields named as the client sees them: a repeated
/// result column name without its mark
/// (`quarry_exec::parser::REPEATED_NAME_MARK`).
fn client_schema(schema: &SchemaRef) -> SchemaRef {
    use arrow_pg::datatypes::PG_OID_ALIAS_KEY;
    use quarry_exec::parser::{REPEATED_NAME_MARK, client_column_name};
    // An oid alias (`oid`, `regtype`) kept by a value cast to another type
    // (`elemtype::text`): the value is no longer an oid.
    let stray_alias = |f: &datafusion::arrow::datatypes::Field| {
        f.data_type() != &DataType::Int32 && f.metadata().contains_key(PG_OID_ALIAS_KEY)
    };
    if !schema.fields().iter().any(|f| {
        f.name().contains(REPEATED_NAME_MARK) || stray_alias(f) || sent_as_bigint(f.data_type())
    }) {
        return schema.clone();
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut field = f.as_ref().clone().with_name(client_column_name(f.name()));
            if stray_alias(&field) {
                let mut metadata = field.metadata().clone();
                metadata.remove(PG_OID_ALIAS_KEY);
                field = field.with_metadata(metadata);
            }
            if sent_as_bigint(field.data_type()) {
                field = field.with_data_type(DataType::Int64);
            }
            field
        })
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// Encodes a stream of batches as data rows; an error mid-stream keeps its SQLSTATE.
/// Whether `statement` waits for a query slot: queries, DML, COPY, CREATE
/// TABLE AS and EXPLAIN do; session and catalog commands do not.
fn takes_slot(statement: &QuarryStatement) -> bool {
    let QuarryStatement::Sql(statement) = statement else {
        return false;
    };
    match statement {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Copy { .. }
        | Statement::Explain { .. } => true,
        Statement::CreateTable(create) => create.query.is_some(),
        _ => false,
    }
}

/// Whether a column of `data_type` holds structs (itself, or as an array's
/// elements at any depth), whose text Quarry writes ([`wire_batch`]).
fn record_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(_) => true,
        DataType::List(element) | DataType::LargeList(element) => record_text(element.data_type()),
        _ => false,
    }
}

/// The fields `batch`es of `schema` are encoded with: a column of structs
/// in text format ([`record_text`]) as text, because [`wire_batch`]
/// turns it into its text and arrow-pg would quote the text of an array
/// type; the row description keeps its type (`record`, `record[]`).
fn encoding_fields(schema: &SchemaRef, fields: &[FieldInfo]) -> Vec<FieldInfo> {
    fields
        .iter()
        .zip(schema.fields())
        .map(|(info, field)| {
            if record_text(field.data_type())
                && info.format() == pgwire::api::results::FieldFormat::Text
            {
                retyped(info, Type::TEXT)
            } else {
                info.clone()
            }
        })
        .collect()
}

/// `batch` as the wire sends it:
/// - its columns of structs (and of arrays of structs) sent in text format
///   replaced by their text (`record_out`, `array_out`): arrow-pg's record
///   encoder writes a NULL field as `""`, which reads back as an empty
///   string. The row description keeps their type (`record`, `record[]`).
/// - its columns [`sent_as_bigint`] as bigint; a value past bigint's range
///   is 22003.
fn wire_batch(
    batch: datafusion::arrow::record_batch::RecordBatch,
    fields: &[FieldInfo],
) -> datafusion::error::Result<datafusion::arrow::record_batch::RecordBatch> {
    let nested_text = |i: usize| {
        record_text(batch.column(i).data_type())
            && fields
                .get(i)
                .is_some_and(|f| f.format() == pgwire::api::results::FieldFormat::Text)
    };
    let unsigned = |i: usize| sent_as_bigint(batch.column(i).data_type());
    if !(0..batch.num_columns()).any(|i| nested_text(i) || unsigned(i)) {
        return Ok(batch);
    }
    let mut schema_fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (i, (field, column)) in batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .enumerate()
    {
        if unsigned(i) {
            let signed = datafusion::arrow::compute::cast_with_options(
                column,
                &DataType::Int64,
                &datafusion::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .map_err(|e| {
                quarry_exec::error::to_engine(quarry_exec::error::user_error(
                    SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
                    format!("bigint out of range: {e}"),
                ))
            })?;
            schema_fields.push(Arc::new(
                field.as_ref().clone().with_data_type(DataType::Int64),
            ));
            columns.push(signed);
            continue;
        }
        if !nested_text(i) {
            schema_fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let texts = (0..column.len())
            .map(|row| {
                (!column.is_null(row))
                    .then(|| quarry_exec::copy::nested_value_text(column.as_ref(), row))
                    .transpose()
            })
            .collect::<quarry_exec::Result<datafusion::arrow::array::StringArray>>()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        schema_fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            field.name(),
            DataType::Utf8,
            true,
        )));
        columns.push(Arc::new(texts) as datafusion::arrow::array::ArrayRef);
    }
    datafusion::arrow::record_batch::RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(schema_fields)),
        columns,
    )
    .map_err(Into::into)
}

fn rows_response(
    stream: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
    stop: StopSignal,
    held: Held,
    job: Option<JobHandle>,
) -> PgWireResult<Response> {
    let fields = fields_of(&stream.schema(), format)?;
    let row_fields = Arc::new(encoding_fields(&stream.schema(), &fields));
    let stream = match job {
        Some(job) => tracked(stream, job),
        None => stream,
    };
    // The stream owns what the statement holds (its query slot, its running
    // mark): freed when the last row is sent or the stream is dropped
    // (cancel, timeout, client gone).
    let rows = stream
        .map(move |batch| {
            let _held = &held;
            batch
        })
        .map(
            move |batch| match batch.and_then(|b| wire_batch(b, &row_fields)) {
                Ok(batch) => {
                    stream::iter(encode_recordbatch(row_fields.clone(), batch)).left_stream()
                }
                Err(e) => stream::once(futures::future::ready(Err(to_pg_error(
                    &quarry_exec::Error::from_engine(e),
                ))))
                .right_stream(),
            },
        )
        .flatten()
        .boxed();
    Ok(Response::Query(QueryResponse::new(
        fields,
        until_stopped(rows, stop),
    )))
}

/// `stream`, counting its rows into `job`, which ends with the stream (with
/// its error, if it fails).
fn tracked(
    stream: datafusion::execution::SendableRecordBatchStream,
    job: JobHandle,
) -> datafusion::execution::SendableRecordBatchStream {
    let schema = stream.schema();
    let rows = stream::unfold(Some((stream, job)), |state| async move {
        let (mut stream, job) = state?;
        match stream.next().await {
            Some(Ok(batch)) => {
                job.rows(batch.num_rows() as u64);
                Some((Ok(batch), Some((stream, job))))
            }
            Some(Err(e)) => {
                let error = quarry_exec::Error::from_engine(e);
                job.end(
                    None,
                    Some((error.sqlstate().code().to_owned(), error.to_string())),
                );
                Some((
                    Err(datafusion::error::DataFusionError::External(Box::new(
                        error,
                    ))),
                    None,
                ))
            }
            None => {
                job.end(None, None);
                None
            }
        }
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, rows))
}

/// `stream`, ending `job` when it ends (with its first error, if any).
fn ended_with<T: Send + 'static>(
    stream: BoxStream<'static, PgWireResult<T>>,
    job: JobHandle,
) -> impl futures::Stream<Item = PgWireResult<T>> + Send + 'static {
    stream::unfold(Some((stream, job)), |state| async move {
        let (mut stream, job) = state?;
        match stream.next().await {
            Some(Ok(item)) => Some((Ok(item), Some((stream, job)))),
            Some(Err(e)) => {
                job.end(None, Some(job_error(&e)));
                Some((Err(e), None))
            }
            None => {
                job.end(None, None);
                None
            }
        }
    })
}

/// A job's error: its SQLSTATE and message.
fn job_error(e: &PgWireError) -> (String, String) {
    match e {
        PgWireError::UserError(info) => (info.code.clone(), info.message.clone()),
        other => (
            SqlState::INTERNAL_ERROR.code().to_owned(),
            other.to_string(),
        ),
    }
}

impl Connection {
    /// Stops this connection's running statement, as a cancel request does.
    fn canceller(&self) -> crate::jobs::Canceller {
        let cancel = self.cancel.clone();
        Arc::new(move || cancel.send_modify(|generation| *generation += 1))
    }

    /// A signal that fires when this connection gets a cancel request, or after
    /// `timeout_ms` (0: never).
    fn stop_signal(&self, timeout_ms: u64) -> StopSignal {
        let mut cancelled = self.cancel.subscribe();
        cancelled.borrow_and_update();
        async move {
            let timeout = async {
                if timeout_ms == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
            };
            tokio::select! {
                changed = cancelled.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    Stop::Cancelled
                }
                () = timeout => Stop::TimedOut,
            }
        }
        .boxed()
        .shared()
    }

    /// Runs `statement` under the session's statement timeout and the client's
    /// cancel request.
    async fn run(
        &self,
        statement: QuarryStatement,
        text: &str,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let session = self.state.session.lock().await;
        // A draining node runs no new work; a transaction block already
        // open may finish.
        let Some(running) = self.running.enter(session.in_transaction()) else {
            return Err(to_pg_error(&quarry_exec::Error::User {
                state: SqlState::ADMIN_SHUTDOWN,
                message: "this node is draining for maintenance: the statement was not run; \
                          connect to another node"
                    .to_owned(),
                detail: None,
            }));
        };
        let stop = self.stop_signal(session.statement_timeout_ms());
        let job = self.jobs.begin(
            JobStart {
                pid: self.state.pid.load(std::sync::atomic::Ordering::Relaxed),
                user: session.user().name.clone(),
                client: "pgwire",
                query: text.to_owned(),
                kind: quarry_exec::jobs::statement_type(&statement),
            },
            self.canceller(),
        );
        // Wait for a query slot; it is held until the statement's rows have
        // been sent (or it fails, or is cancelled). Session commands (SET,
        // SHOW, BEGIN, COMMIT, DDL) run without one, so they never queue
        // behind long queries.
        if !takes_slot(&statement) {
            job.started();
            let held = Held {
                _slot: None,
                _running: running,
            };
            return self
                .execute(session, statement, params, format, stop, held, job)
                .await;
        }
        metrics::gauge!("quarry_statements_waiting_for_slot").increment(1.0);
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot,
            reason = stop.clone() => {
                metrics::gauge!("quarry_statements_waiting_for_slot").decrement(1.0);
                let error = reason.error();
                job.finish(Default::default(), None, Some(job_error(&error)));
                return Err(error);
            }
        };
        job.started();
        metrics::gauge!("quarry_statements_waiting_for_slot").decrement(1.0);
        let slot = slot.map_err(|_| {
            to_pg_error(&quarry_exec::Error::Internal(
                "query slots closed".to_owned(),
            ))
        })?;
        let held = Held {
            _slot: Some(slot),
            _running: running,
        };
        self.execute(session, statement, params, format, stop, held, job)
            .await
    }

    /// Runs `statement` as `job`, holding `held` until its output
    /// is done; the job ends with the output.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        session: tokio::sync::MutexGuard<'_, Session>,
        statement: QuarryStatement,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
        stop: StopSignal,
        held: Held,
        job: JobHandle,
    ) -> PgWireResult<Response> {
        let mut job = Some(job);
        // Counted as running until its transaction block (if it opened one)
        // is counted, so a drain never finds the node idle in between.
        let _counted = self.running.enter(true);
        // Boxed: the statement's future is large, and a deep one on the
        // stack of a debug build overflows it.
        let response = Box::pin(
            self.execute_statement(session, statement, params, format, stop, held, &mut job),
        )
        .await;
        // Count the session's transaction block while it is open.
        let in_transaction = self.state.session.lock().await.in_transaction();
        {
            let mut open = self
                .state
                .transaction
                .lock()
                .expect("transaction lock is never held across a panic");
            match (in_transaction, open.is_some()) {
                (true, false) => *open = Some(TransactionGuard::new(&self.running)),
                (false, true) => *open = None,
                _ => {}
            }
        }
        // A streamed output took the job: its stream ends it.
        let Some(job) = job else {
            return response;
        };
        match &response {
            Err(e) => job.end(None, Some(job_error(e))),
            Ok(Response::CopyIn(_)) => *self.state.copy_job.lock().await = Some(job),
            Ok(_) => job.end(None, None),
        }
        response
    }

    /// Runs `statement`; a streamed output takes `job` along.
    #[allow(clippy::too_many_arguments)]
    async fn execute_statement(
        &self,
        mut session: tokio::sync::MutexGuard<'_, Session>,
        statement: QuarryStatement,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
        stop: StopSignal,
        held: Held,
        job: &mut Option<JobHandle>,
    ) -> PgWireResult<Response> {
        // A panic in one statement fails that statement (XX000), not the node or
        // the connection.
        // Only the extended protocol passes parameters (possibly none), and
        // its Bind chose the result format.
        let simple_protocol = params.is_none();
        let execution =
            std::panic::AssertUnwindSafe(session.execute(statement, params)).catch_unwind();
        let output = tokio::select! {
            output = execution => output.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(quarry_exec::Error::Internal(format!("statement panicked: {what}")))
            }),
            reason = stop.clone() => return Err(reason.error()),
        };
        let in_transaction = session.in_transaction();
        if let Some(job) = job.as_mut() {
            job.set_in_transaction(in_transaction);
            job.measure(session.statement_stats());
        }
        let output = output.map_err(|e| to_pg_error(&e))?;
        let streamed = matches!(
            output,
            Output::Rows(_) | Output::BinaryRows(_) | Output::CopyOut { .. }
        );
        if let (Output::Command(tag), Some(job)) = (&output, job.as_ref())
            && let Some(rows) = tag.rows
        {
            job.rows(rows);
        }
        let job = if streamed { job.take() } else { None };
        match output {
            Output::Rows(stream) => rows_response(stream, format, stop, held, job),
            Output::BinaryRows(stream) if simple_protocol => {
                rows_response(stream, &Format::UnifiedBinary, stop, held, job)
            }
            Output::BinaryRows(stream) => rows_response(stream, format, stop, held, job),
            // ROLLBACK TO SAVEPOINT is tagged ROLLBACK too, and the
            // transaction goes on.
            Output::Command(tag) => Ok(match tag.command.as_str() {
                "BEGIN" => Response::TransactionStart(tag_of(&tag)),
                "COMMIT" | "ROLLBACK" if !in_transaction => Response::TransactionEnd(tag_of(&tag)),
                _ => Response::Execution(tag_of(&tag)),
            }),
            Output::CopyIn(copy) => {
                let columns = copy.columns;
                // Format 0: textual (text or CSV) rows, as PostgreSQL reports
                // both; 1: binary.
                let format = i8::from(copy.binary);
                *self.state.copy.lock().await = Some(copy);
                *self
                    .state
                    .copy_held
                    .lock()
                    .expect("copy lock is never held across a panic") = Some(held);
                Ok(Response::CopyIn(CopyResponse::new(
                    format,
                    columns,
                    stream::empty(),
                )))
            }
            Output::CopyOut {
                columns,
                binary,
                mut data,
                ..
            } => {
                // pgwire reports an error met after CopyOutResponse with a
                // CopyFail message, which only clients may send (PostgreSQL
                // sends ErrorResponse). An error in the first record (a
                // failed query, a character the ENCODING lacks) is the
                // statement's error instead, before the copy starts.
                let first = tokio::select! {
                    first = data.next() => first,
                    reason = stop.clone() => return Err(reason.error()),
                };
                if let Some(Err(e)) = &first {
                    return Err(to_pg_error(e));
                }
                let data = stream::iter(first)
                    .chain(data)
                    .map(move |chunk| {
                        let _held = &held;
                        match chunk {
                            Ok(bytes) => Ok(CopyData::new(bytes)),
                            Err(e) => Err(to_pg_error(&e)),
                        }
                    })
                    .boxed();
                let data = match job {
                    Some(job) => ended_with(data, job).boxed(),
                    None => data,
                };
                // Cancel and statement_timeout stop a COPY TO as they stop
                // a query.
                let data = until_stopped(data, stop);
                // pgwire ends binary data with its trailer.
                Ok(Response::CopyOut(CopyResponse::new(
                    i8::from(binary),
                    columns,
                    data,
                )))
            }
        }
    }
}

/// The parameters a client is told at the end of its login (PostgreSQL's
/// ParameterStatus set), with Quarry's version and the role's superuser flag.
struct LoginParameters {
    superuser: bool,
}

impl ServerParameterProvider for LoginParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.time_zone = "UTC".to_owned();
        parameters.is_superuser = self.superuser;
        parameters.server_parameters(client)
    }
}

/// Where a connection's login stands.
#[derive(Default)]
enum Login {
    /// Before the startup message.
    #[default]
    Initial,
    /// Mechanisms offered to `user`.
    Offered {
        /// The startup message's user.
        user: String,
    },
    /// Server-first sent; waiting for the client-final message.
    Exchanging {
        /// The startup message's user.
        user: String,
        /// The exchange.
        exchange: Box<quarry_exec::scram::Exchange>,
    },
    /// Logged in (or refused).
    Done,
}

fn fatal(state: SqlState, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        state.code().to_owned(),
        message,
    )))
}

fn refused(refusal: crate::auth::Refusal) -> PgWireError {
    fatal(refusal.state, refusal.message)
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let state = std::mem::take(&mut *self.login());
        match (state, message) {
            (Login::Initial, PgWireFrontendMessage::Startup(startup)) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let database = client
                    .metadata()
                    .get("database")
                    .cloned()
                    .unwrap_or_default();
                if !self.drain.is_serving() {
                    return Err(fatal(
                        SqlState::CANNOT_CONNECT_NOW,
                        "the node is draining for maintenance (ALTER NODE ... RESUME ends it); \
                         connect to another node"
                            .to_owned(),
                    ));
                }
                if user.is_empty() {
                    return Err(fatal(
                        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                        "no PostgreSQL user name specified in startup packet".to_owned(),
                    ));
                }
                if !database.is_empty() && !DATABASE_NAMES.contains(&database.as_str()) {
                    return Err(fatal(
                        SqlState::from_code("3D000"),
                        format!(
                            "database \"{database}\" does not exist (Quarry serves \"quarry\", also reachable as \"postgres\")"
                        ),
                    ));
                }
                if let Err(refusal) = self.auth.admit(client.socket_addr().ip()) {
                    self.audit_login(client.socket_addr(), &user, Some(&refusal.message));
                    return Err(refused(refusal));
                }
                if self.auth.mode() == AuthMode::Insecure {
                    let catalog = self
                        .engine
                        .local_catalog()
                        .await
                        .map_err(|e| to_pg_error(&e))?;
                    let role = catalog.role(&user).cloned();
                    return self.logged_in(client, &user, role.as_deref()).await;
                }
                // A client certificate the cluster CA signed (checked in the
                // TLS handshake) whose common name is the user logs in
                // without a password, as PostgreSQL's `cert` method.
                let certificate_user = client
                    .client_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| crate::tls::common_name(leaf));
                if certificate_user.as_deref() == Some(user.as_str()) {
                    let role = self
                        .role_to_log_in(client.socket_addr(), &user)
                        .await?
                        .map_err(|_| {
                            fatal(
                                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                                format!("certificate authentication failed for user \"{user}\""),
                            )
                        })?;
                    return self.logged_in(client, &user, role.as_deref()).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let mechanisms = self.auth.mechanisms(client.is_secure());
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        mechanisms,
                    )))
                    .await?;
                *self.login() = Login::Offered { user };
                Ok(())
            }
            (Login::Offered { user }, PgWireFrontendMessage::PasswordMessageFamily(message)) => {
                let initial = message.into_sasl_initial_response()?;
                let catalog = self
                    .engine
                    .local_catalog()
                    .await
                    .map_err(|e| to_pg_error(&e))?;
                let data = initial.data.unwrap_or_default();
                let started = self.auth.start(
                    &catalog,
                    &user,
                    &initial.auth_method,
                    &data,
                    client.is_secure(),
                    quarry_raft::now_micros(),
                );
                let (exchange, server_first) = match started {
                    Ok(started) => started,
                    Err(refusal) => {
                        self.login_failed(client.socket_addr(), &user, &refusal.message);
                        return Err(refused(refusal));
                    }
                };
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(Bytes::from(server_first)),
                    ))
                    .await?;
                *self.login() = Login::Exchanging {
                    user,
                    exchange: Box::new(exchange),
                };
                Ok(())
            }
            (
                Login::Exchanging { user, exchange },
                PgWireFrontendMessage::PasswordMessageFamily(message),
            ) => {
                let response = message.into_sasl_response()?;
                let server_final = match exchange.finish(&response.data) {
                    Ok(server_final) => server_final,
                    Err(e) => {
                        let refusal = crate::auth::refusal(&user, &e);
                        self.login_failed(client.socket_addr(), &user, &e.to_string());
                        return Err(refused(refusal));
                    }
                };
                let role = self
                    .role_to_log_in(client.socket_addr(), &user)
                    .await?
                    .map_err(refused)?;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLFinal(Bytes::from(server_final)),
                    ))
                    .await?;
                self.logged_in(client, &user, role.as_deref()).await
            }
            (_, PgWireFrontendMessage::PasswordMessageFamily(_)) => Err(fatal(
                SqlState::PROTOCOL_VIOLATION,
                "unexpected password message".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

impl Connection {
    /// Counts, logs and audits a failed login.
    fn login_failed(&self, address: std::net::SocketAddr, user: &str, reason: &str) {
        self.auth.failed(address.ip(), user, reason);
        self.audit_login(address, user, Some(reason));
    }

    /// Audits a login (`failure`: why it failed).
    fn audit_login(&self, address: std::net::SocketAddr, user: &str, failure: Option<&str>) {
        self.engine.audit(quarry_exec::audit::AuditEvent {
            at_micros: quarry_raft::now_micros(),
            event: if failure.is_some() {
                "login_failed"
            } else {
                "login"
            }
            .to_owned(),
            user: user.to_owned(),
            address: Some(address.to_string()),
            detail: failure.unwrap_or("authenticated").to_owned(),
        });
    }

    /// The role `user` logs in as once authenticated, from this node's
    /// catalog; a refusal (no such role, or no LOGIN) is counted and
    /// audited.
    async fn role_to_log_in(
        &self,
        address: std::net::SocketAddr,
        user: &str,
    ) -> PgWireResult<Result<Option<Arc<Role>>, crate::auth::Refusal>> {
        let catalog = self
            .engine
            .local_catalog()
            .await
            .map_err(|e| to_pg_error(&e))?;
        let role = catalog.role(user).cloned();
        Ok(match crate::auth::may_log_in(role.as_deref(), user) {
            Ok(()) => Ok(role),
            Err(refusal) => {
                self.login_failed(address, user, &refusal.message);
                Err(refusal)
            }
        })
    }

    fn login(&self) -> std::sync::MutexGuard<'_, Login> {
        self.login
            .lock()
            .expect("login lock is never held across a panic")
    }

    /// Ends a successful login: the session takes `user` (and its role), the
    /// client gets its parameters, cancel key and ReadyForQuery.
    async fn logged_in<C>(
        &self,
        client: &mut C,
        user: &str,
        role: Option<&Role>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.state
            .session
            .lock()
            .await
            .set_user(SessionUser::new(user, role.map(|r| r.id)));
        tracing::info!(address = %client.socket_addr(), user, "login");
        self.audit_login(client.socket_addr(), user, None);
        let (pid, secret) = self.jobs.new_pid(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        self.state
            .pid
            .store(pid, std::sync::atomic::Ordering::Relaxed);
        let now = quarry_raft::now_micros();
        let address = client.socket_addr();
        let backend = quarry_exec::jobs::Backend {
            pid,
            node: self.jobs.node(),
            user: user.to_owned(),
            application_name: client
                .metadata()
                .get("application_name")
                .cloned()
                .unwrap_or_default(),
            client_addr: Some(address.ip().to_string()),
            client_port: Some(i32::from(address.port())),
            backend_start_micros: now,
            state: "idle".to_owned(),
            query: String::new(),
            query_start_micros: None,
            state_change_micros: Some(now),
            job_id: None,
            waiting: false,
        };
        *self
            .backend
            .lock()
            .expect("backend lock is never held across a panic") =
            Some(self.jobs.connect(backend, self.canceller()));
        let key = (pid, secret.to_bytes());
        self.cancels.lock().insert(key.clone(), self.cancel.clone());
        *self
            .cancel_key
            .lock()
            .expect("cancel key lock is never held across a panic") = Some(key);
        *self.login() = Login::Done;
        let parameters = LoginParameters {
            superuser: role.is_none_or(|r| r.superuser),
        };
        finish_authentication(client, &parameters).await
    }
}

impl Connection {
    /// Tells pgwire whether a transaction block is open before a statement
    /// runs. pgwire derives the status it reports after the statement
    /// (ReadyForQuery's I/T/E) from this and the kind of the answer, and on
    /// its own can never leave the failed state (E) but by the end of the
    /// transaction; PostgreSQL leaves it by ROLLBACK TO SAVEPOINT too. Starting
    /// from T for any open transaction gives PostgreSQL's answers: in a
    /// failed transaction every statement but COMMIT, ROLLBACK and ROLLBACK TO
    /// fails (E again), and a successful ROLLBACK TO leaves T.
    /// Removes from the portal store the statements DEALLOCATE dropped.
    async fn drop_deallocated<C>(&self, client: &mut C)
    where
        C: ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        for name in self.state.session.lock().await.take_deallocated() {
            client.portal_store().rm_statement(&name);
        }
    }

    /// Sends the NOTICEs the session's last statement raised.
    async fn send_notices<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let notices = self.state.session.lock().await.take_notices();
        for notice in notices {
            let mut info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), notice.message);
            info.detail = notice.detail;
            client
                .send(PgWireBackendMessage::NoticeResponse(info.into()))
                .await?;
        }
        Ok(())
    }

    async fn sync_transaction_status<C: ClientInfo>(&self, client: &mut C) {
        let open = self.state.session.lock().await.in_transaction();
        client.set_transaction_status(if open {
            TransactionStatus::Transaction
        } else {
            TransactionStatus::Idle
        });
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sync_transaction_status(client).await;
        let result = self._on_query(client, query).await;
        self.drop_deallocated(client).await;
        result
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match quarry_exec::parser::parse_with_text(query) {
            Ok(statements) => statements,
            Err(e) => {
                let error = to_pg_error(&e);
                let session = self.state.session.lock().await;
                self.state.failed_job(&session, query.trim(), &error);
                return Err(error);
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for (text, statement) in statements {
            let response = self.run(statement, &text, None, &Format::UnifiedText).await;
            // NOTICEs go out as the statement ends, before the query's
            // responses (pgwire sends those after the last statement).
            self.send_notices(client).await?;
            match response {
                Ok(response) => {
                    let copy_in = matches!(response, Response::CopyIn(_));
                    responses.push(response);
                    if copy_in {
                        break;
                    }
                }
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(responses)
    }
}

/// A statement prepared with the extended protocol.
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: Option<QuarryStatement>,
    /// Its text, for the job history.
    text: String,
    params: Vec<Option<DataType>>,
    schema: Option<SchemaRef>,
}

#[async_trait]
impl QueryParser for ConnectionState {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut session = self.session.lock().await;
        let result = self.prepare(&mut session, sql).await;
        if let Err(e) = &result {
            self.failed_job(&session, sql.trim(), e);
        }
        result
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        stmt.params
            .iter()
            .map(|t| match t {
                // An oid (a parameter compared with an `oid` column).
                Some(DataType::UInt32) => Ok(Type::OID),
                Some(t) => match oid_array(t) {
                    Some(oids) => Ok(oids),
                    None => into_pg_type(t),
                },
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => pg_fields(schema, column_format.unwrap_or(&Format::UnifiedBinary)),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Prepared;
    type QueryParser = ConnectionState;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.state.clone()
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sync_transaction_status(client).await;
        let result = self._on_execute(client, message).await;
        self.drop_deallocated(client).await;
        result
    }

    /// As pgwire's Parse, and the session learns the statement's name (for
    /// DEALLOCATE).
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if name != DEFAULT_NAME {
            self.state.session.lock().await.statement_prepared(&name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// As pgwire's Close, and a closed statement is forgotten by the session.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                self.state.session.lock().await.statement_closed(name);
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client
            .send(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }

    /// A cursor made by DECLARE is a portal too (PostgreSQL's): psycopg's
    /// named cursors describe it by name before their first FETCH.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_PORTAL
            && let Some(name) = message.name.as_deref()
            && client.portal_store().get_portal(name).is_none()
        {
            let cursor = self.state.session.lock().await.open_cursor(name);
            if let Some(schema) = cursor {
                let fields = fields_of(&schema, &Format::UnifiedText)?;
                send_describe_response(client, &DescribePortalResponse::new((*fields).clone()))
                    .await?;
                return Ok(());
            }
        }
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let Some(statement) = &prepared.statement else {
            return Ok(Response::EmptyQuery);
        };
        let params = bind_parameters(portal, &prepared.params)?;
        let response = self
            .run(
                statement.clone(),
                &prepared.text,
                Some(params),
                &portal.result_column_format,
            )
            .await;
        self.send_notices(client).await?;
        response
    }
}

/// Decodes a portal's parameters. A parameter the client typed itself (Parse
/// carried its OID) is decoded as that type and then cast to the type the
/// statement needs, as PostgreSQL casts a typed parameter (psycopg sends Python
/// ints as int8 for a NUMERIC comparison, say).
fn bind_parameters(
    portal: &Portal<Prepared>,
    needed: &[Option<DataType>],
) -> PgWireResult<datafusion::common::ParamValues> {
    let client_typed = |i: usize| {
        portal
            .statement
            .parameter_types
            .get(i)
            .is_some_and(|t| t.as_ref().is_some_and(|t| *t != Type::UNKNOWN))
    };
    // A NULL neither the client nor the plan types (psycopg's None bound to
    // `$1::timestamp`) is a text NULL, as PostgreSQL takes an unknown-typed
    // value; the SQL around it converts it. (arrow-pg would drop it from
    // the list, shifting the parameters after it.)
    let decode_as: Vec<Option<&DataType>> = (0..portal.parameter_len())
        .map(|i| match needed.get(i) {
            _ if client_typed(i) => None,
            // An oid's forms are int4's (`decodable`).
            Some(Some(DataType::UInt32)) => Some(&DataType::Int32),
            Some(Some(t)) => Some(t),
            _ if portal.parameters[i].is_none() => Some(&DataType::Utf8),
            _ => None,
        })
        .collect();
    let params = match decodable(portal)? {
        Some(portal) => arrow_pg::datatypes::df::deserialize_parameters(&portal, &decode_as)?,
        None => arrow_pg::datatypes::df::deserialize_parameters(portal, &decode_as)?,
    };
    let datafusion::common::ParamValues::List(values) = params else {
        return Ok(params);
    };
    let mut cast = Vec::with_capacity(values.len());
    for (i, mut value) in values.into_iter().enumerate() {
        if let Some(Some(target)) = needed.get(i)
            && value.value.data_type() != *target
        {
            value.value = value.value.cast_to(target).map_err(|e| {
                to_pg_error(&quarry_exec::error::user_error(
                    SqlState::INVALID_TEXT_REPRESENTATION,
                    format!("parameter ${} does not convert to {target}: {e}", i + 1),
                ))
            })?;
        }
        cast.push(value);
    }
    Ok(datafusion::common::ParamValues::List(cast))
}

/// `portal` with the parameter types arrow-pg does not decode as ones it
/// does, or None without any: `json` and `jsonb` as `text` (a `json`
/// value's text and binary forms are both its text, as `text`'s are;
/// binary `jsonb` is a version byte, 1, before the text: PostgreSQL's
/// `jsonb_recv`), and `oid[]` as `int4[]` (the same forms; the element type
/// in a binary array's header is not checked).
///
/// # Errors
/// 22P03 for binary `jsonb` of another version.
fn decodable(portal: &Portal<Prepared>) -> PgWireResult<Option<Portal<()>>> {
    let types = &portal.statement.parameter_types;
    let is_json = |t: &Option<Type>| {
        t.as_ref()
            .is_some_and(|t| *t == Type::JSON || *t == Type::JSONB)
    };
    let is_oids = |t: &Option<Type>| t.as_ref() == Some(&Type::OID_ARRAY);
    let is_oid = |t: &Option<Type>| t.as_ref() == Some(&Type::OID);
    if !types.iter().any(|t| is_json(t) || is_oids(t) || is_oid(t)) {
        return Ok(None);
    }
    let mut parameters = portal.parameters.clone();
    let mut decodable_types = types.clone();
    for (i, t) in decodable_types.iter_mut().enumerate() {
        if is_oids(t) {
            *t = Some(Type::INT4_ARRAY);
            continue;
        }
        if is_oid(t) {
            // The same text; binary, four bytes as int4's. (Quarry's oids
            // are below 2^31; one past it reads negative and fails to
            // convert to the oid the statement needs.)
            *t = Some(Type::INT4);
            continue;
        }
        if !is_json(t) {
            continue;
        }
        if *t == Some(Type::JSONB)
            && portal.parameter_format.is_binary(i)
            && let Some(Some(bytes)) = parameters.get_mut(i)
        {
            if bytes.first() != Some(&1) {
                return Err(to_pg_error(&quarry_exec::error::user_error(
                    SqlState::INVALID_BINARY_REPRESENTATION,
                    format!("parameter ${}: unsupported jsonb version number", i + 1),
                )));
            }
            *bytes = bytes.slice(1..);
        }
        *t = Some(Type::TEXT);
    }
    let mut decodable = Portal::<()>::default();
    decodable.name = portal.name.clone();
    decodable.statement = Arc::new(StoredStatement::new(
        portal.statement.id.clone(),
        (),
        decodable_types,
    ));
    decodable.parameter_format = portal.parameter_format.clone();
    decodable.parameters = parameters;
    Ok(Some(decodable))
}

#[async_trait]
impl CopyHandler for Connection {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(copy) = self.state.copy.lock().await.as_mut() {
            copy.feed(&copy_data.data).await;
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Running until its answer is sent.
        let _held = self
            .state
            .copy_held
            .lock()
            .expect("copy lock is never held across a panic")
            .take();
        let copy = self.state.copy.lock().await.take();
        let Some(copy) = copy else {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_owned(),
                SqlState::PROTOCOL_VIOLATION.code().to_owned(),
                "CopyDone without COPY in progress".to_owned(),
            ))));
        };
        let job = self.state.copy_job.lock().await.take();
        let tag = copy.finish().await;
        if let Some(job) = job {
            match &tag {
                Ok(tag) => job.end(tag.rows, None),
                Err(e) => job.end(None, Some((e.sqlstate().code().to_owned(), e.to_string()))),
            }
        }
        let tag = tag.map_err(|e| to_pg_error(&e))?;
        client
            .send(PgWireBackendMessage::CommandComplete(CommandComplete::new(
                format!("COPY {}", tag.rows.unwrap_or(0)),
            )))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Dropping the copy deletes the data files it wrote.
        drop(self.state.copy.lock().await.take());
        drop(
            self.state
                .copy_held
                .lock()
                .expect("copy lock is never held across a panic")
                .take(),
        );
        if let Some(job) = self.state.copy_job.lock().await.take() {
            job.end(
                None,
                Some((
                    SqlState::QUERY_CANCELED.code().to_owned(),
                    format!("COPY from stdin failed: {}", fail.message),
                )),
            );
        }
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            SqlState::QUERY_CANCELED.code().to_owned(),
            format!("COPY from stdin failed: {}", fail.message),
        )))
    }
}
