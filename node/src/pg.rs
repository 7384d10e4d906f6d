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
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::auth::StartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::CommandComplete;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use quarry_common::SqlState;
use quarry_exec::session::SERVER_VERSION;
use quarry_exec::{CommandTag, CopyIn, Engine, Output, Session};
use tokio::sync::Mutex;

/// Database names a client may connect to: Quarry's one database, and `postgres`,
/// which many tools assume exists.
pub const DATABASE_NAMES: &[&str] = &["quarry", "postgres"];

/// What all connections of a node share.
pub struct Frontend {
    engine: Arc<Engine>,
    connections: Arc<ConnectionManager>,
    running: Arc<RunningStatements>,
}

/// Statements executing now, across connections; shutdown waits for them.
#[derive(Debug, Default)]
pub struct RunningStatements {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl RunningStatements {
    fn enter(self: &Arc<Self>) -> RunningGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RunningGuard(self.clone())
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

impl Frontend {
    /// A front end over `engine`.
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Frontend {
            engine,
            connections: Arc::new(ConnectionManager::new()),
            running: Arc::new(RunningStatements::default()),
        })
    }

    /// Statements executing now.
    pub fn running(&self) -> &RunningStatements {
        &self.running
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
            }),
            connections: self.connections.clone(),
            running: self.running.clone(),
        });
        Ok(Handlers {
            connection,
            cancel: Arc::new(DefaultCancelHandler::new(self.connections.clone())),
        })
    }
}

/// One client connection.
pub struct Connection {
    state: Arc<ConnectionState>,
    connections: Arc<ConnectionManager>,
    running: Arc<RunningStatements>,
}

/// A connection's session, shared with its statement parser.
pub struct ConnectionState {
    session: Mutex<Session>,
    /// The COPY FROM STDIN in progress, if any.
    copy: Mutex<Option<CopyIn>>,
}

/// pgwire's view of a [`Connection`].
pub struct Handlers {
    connection: Arc<Connection>,
    cancel: Arc<DefaultCancelHandler>,
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
    Ok(Arc::new(arrow_schema_to_pg_fields(schema, format, None)?))
}

/// Encodes a stream of batches as data rows; an error mid-stream keeps its SQLSTATE.
fn rows_response(
    stream: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
) -> PgWireResult<Response> {
    let fields = fields_of(&stream.schema(), format)?;
    let row_fields = fields.clone();
    let rows = stream
        .map(move |batch| match batch {
            Ok(batch) => stream::iter(encode_recordbatch(row_fields.clone(), batch)).left_stream(),
            Err(e) => stream::once(futures::future::ready(Err(to_pg_error(
                &quarry_exec::Error::from_engine(e),
            ))))
            .right_stream(),
        })
        .flatten();
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

impl Connection {
    /// Runs `statement` under the session's statement timeout and the client's
    /// cancel request.
    async fn run(
        &self,
        statement: Statement,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let _running = self.running.enter();
        let mut session = self.state.session.lock().await;
        let timeout_ms = session.statement_timeout_ms();
        let execution = session.execute(statement, params);
        let output = if timeout_ms > 0 {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), execution).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(to_pg_error(&quarry_exec::Error::User {
                        state: SqlState::QUERY_CANCELED,
                        message: "canceling statement due to statement timeout".to_owned(),
                        detail: None,
                    }));
                }
            }
        } else {
            execution.await
        };
        match output.map_err(|e| to_pg_error(&e))? {
            Output::Rows(stream) => rows_response(stream, format),
            Output::Command(tag) => Ok(Response::Execution(tag_of(&tag))),
            Output::CopyIn(copy) => {
                let columns = copy.columns;
                *self.state.copy.lock().await = Some(copy);
                // Format 0: textual (text or CSV) rows, as PostgreSQL reports both.
                Ok(Response::CopyIn(CopyResponse::new(
                    0,
                    columns,
                    stream::empty(),
                )))
            }
            Output::CopyOut { columns, data, .. } => {
                let data = data.map(|chunk| match chunk {
                    Ok(bytes) => Ok(CopyData::new(bytes)),
                    Err(e) => Err(to_pg_error(&e)),
                });
                Ok(Response::CopyOut(CopyResponse::new(0, columns, data)))
            }
        }
    }
}

#[async_trait]
impl NoopStartupHandler for Connection {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }

    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let database = client
            .metadata()
            .get("database")
            .cloned()
            .unwrap_or_default();
        if !database.is_empty() && !DATABASE_NAMES.contains(&database.as_str()) {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                "3D000".to_owned(),
                format!(
                    "database \"{database}\" does not exist (Quarry serves \"quarry\", also reachable as \"postgres\")"
                ),
            ))));
        }
        client
            .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                "server_version".to_owned(),
                SERVER_VERSION.to_owned(),
            )))
            .await?;
        client
            .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                "TimeZone".to_owned(),
                "UTC".to_owned(),
            )))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self
            .state
            .session
            .lock()
            .await
            .parse(query)
            .map_err(|e| to_pg_error(&e))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.run(statement, None, &Format::UnifiedText).await {
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
    statement: Option<Statement>,
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
            params,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        stmt.params
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
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
            Some(schema) => Ok(arrow_schema_to_pg_fields(
                schema,
                column_format.unwrap_or(&Format::UnifiedBinary),
                None,
            )?),
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

    async fn do_query<C>(
        &self,
        _client: &mut C,
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
        let types: Vec<Option<&DataType>> = prepared.params.iter().map(Option::as_ref).collect();
        let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &types)?;
        self.run(
            statement.clone(),
            Some(params),
            &portal.result_column_format,
        )
        .await
    }
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
        let copy = self.state.copy.lock().await.take();
        let Some(copy) = copy else {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_owned(),
                SqlState::PROTOCOL_VIOLATION.code().to_owned(),
                "CopyDone without COPY in progress".to_owned(),
            ))));
        };
        let tag = copy.finish().await.map_err(|e| to_pg_error(&e))?;
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
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            SqlState::QUERY_CANCELED.code().to_owned(),
            format!("COPY from stdin failed: {}", fail.message),
        )))
    }
}
