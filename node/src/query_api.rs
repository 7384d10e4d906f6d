//! The HTTP query API (JSON), after BigQuery's `jobs.query`,
//! `jobs.get`, `jobs.getQueryResults` and `jobs.cancel`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs>):
//!
//! - `POST /v1/queries` `{"sql", "timeout_ms"?, "max_rows"?}` runs one
//!   statement as a job of the caller's role. It answers within `timeout_ms`
//!   (default 10,000): 200 with the job, its schema, its first page of rows
//!   (`max_rows`, default 1,000) and its statistics once it is done, or 202
//!   with the job still RUNNING; the job goes on either way.
//! - `GET /v1/jobs/{id}`: the job from whichever node ran it (state, rows so
//!   far, statistics, error).
//! - `GET /v1/jobs/{id}/results?page_token=&max_rows=`: a page of its rows, on
//!   the node that ran it; `page_token` is the row to start at (the previous
//!   page's `next_page_token`). With `Accept: application/vnd.apache.arrow.stream`
//!   the page is an Arrow IPC stream, else JSON with every value as text (as
//!   PostgreSQL's text format and BigQuery's REST rows give them; null as
//!   null).
//! - `DELETE /v1/jobs/{id}`: cancels it, on whichever node runs it.
//!
//! Errors are `{"error": {"code": SQLSTATE, "message", "detail"}}` with the
//! HTTP status of the SQLSTATE's class (400, 403, 404, 409, 503, 500). A
//! job's rows are written as they come to an Arrow IPC file under
//! `<data_dir>/results/`, kept for 24 hours, so a large result is paged from
//! disk and never held whole in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, StreamWriter};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use quarry_common::SqlState;
use quarry_exec::jobs::{JobRecord, JobSource, Viewer};
use quarry_exec::{Output, QuarryStatement};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{HttpState, Peer};
use crate::jobs::{ClusterJobs, JobStart, Jobs};
use crate::stream_api::{engine_error, error, user_of};

/// How long results are kept.
pub const RESULTS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
/// Rows of a page when the caller does not say.
const PAGE_ROWS_DEFAULT: usize = 1000;
/// Most rows of one page.
const PAGE_ROWS_MAX: usize = 100_000;

/// The query API's state on this node.
pub struct QueryApi {
    jobs: Arc<Jobs>,
    cluster: Arc<ClusterJobs>,
    dir: PathBuf,
    slots: Arc<tokio::sync::Semaphore>,
    /// Jobs run through the API here: their owner and where their rows are.
    results: Mutex<HashMap<String, Arc<JobResult>>>,
    /// When results were last pruned.
    pruned: Mutex<std::time::Instant>,
}

/// The rows of one API job.
struct JobResult {
    user: String,
    /// When the job was created; its entry goes after [`RESULTS_KEPT`].
    created: std::time::Instant,
    /// Set once the job has ended: the schema and cumulative rows per batch
    /// (None: a statement without rows), or its error.
    done: tokio::sync::watch::Sender<Option<Result<Option<Written>, Failure>>>,
}

/// Why a job failed, as the API reports it.
#[derive(Clone)]
struct Failure {
    state: SqlState,
    message: String,
    detail: Option<String>,
}

impl From<&quarry_exec::Error> for Failure {
    fn from(e: &quarry_exec::Error) -> Self {
        Failure {
            state: e.sqlstate(),
            message: e.to_string(),
            detail: match e {
                quarry_exec::Error::User { detail, .. } => detail.clone(),
                _ => None,
            },
        }
    }
}

#[derive(Clone)]
struct Written {
    schema: SchemaRef,
    /// Rows before each batch, and the total at the end.
    offsets: Vec<u64>,
}

impl QueryApi {
    /// The API over this node's `jobs`, results under `dir`, running at most
    /// as many statements at once as the node's query `slots`.
    ///
    /// # Errors
    /// If `dir` cannot be created.
    pub fn new(
        jobs: Arc<Jobs>,
        cluster: Arc<ClusterJobs>,
        dir: PathBuf,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let api = QueryApi {
            jobs,
            cluster,
            dir,
            slots,
            results: Mutex::default(),
            pruned: Mutex::new(std::time::Instant::now()),
        };
        api.prune();
        Ok(Arc::new(api))
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.arrow"))
    }

    /// Deletes results older than [`RESULTS_KEPT`]: the entries of jobs
    /// (with rows or not) and the files (those of a run before a restart
    /// too).
    fn prune(&self) {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, result| result.created.elapsed() <= RESULTS_KEPT);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > RESULTS_KEPT);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// [`Self::prune`], at most once every ten minutes (it reads the
    /// results directory).
    fn prune_when_due(&self) {
        let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if pruned.elapsed() >= Duration::from_secs(600) {
            *pruned = std::time::Instant::now();
            drop(pruned);
            self.prune();
        }
    }
}

/// `POST /v1/queries`'s body.
#[derive(Debug, Deserialize)]
pub struct QueryRequest {
    sql: String,
    timeout_ms: Option<u64>,
    max_rows: Option<usize>,
}

/// `?page_token=&max_rows=`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    page_token: Option<String>,
    max_rows: Option<usize>,
}

#[allow(clippy::result_large_err)]
fn api(state: &HttpState) -> Result<&Arc<QueryApi>, Response> {
    state.queries.as_ref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "55000",
            "this node serves no query API",
            None,
            None,
        )
    })
}

/// The API and whose jobs the request's login may see, or the refusal.
#[allow(clippy::result_large_err)]
fn caller(
    state: &HttpState,
    peer: Option<axum::Extension<Peer>>,
    headers: &HeaderMap,
    predefined: &str,
) -> Result<(Arc<QueryApi>, Viewer), Response> {
    let api = api(state)?.clone();
    let user = user_of(state, peer.map(|p| p.0.0), headers)?;
    let viewer = quarry_exec::jobs::viewer(&state.meta.read_local(), user.role, predefined);
    Ok((api, viewer))
}

/// `POST /v1/queries`.
pub async fn post_query(
    State(state): State<HttpState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let api = match api(&state) {
        Ok(api) => api.clone(),
        Err(refusal) => return refusal,
    };
    let user = match user_of(&state, peer.map(|p| p.0.0), &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "22P02",
                format!("the body is not a query request ({{\"sql\": ...}}): {e}"),
                None,
                None,
            );
        }
    };
    let statement = match quarry_exec::parser::parse_with_text(&request.sql) {
        Ok(mut statements) if statements.len() == 1 => statements.pop().expect("one"),
        Ok(statements) => {
            return error(
                StatusCode::BAD_REQUEST,
                "42601",
                format!(
                    "a job runs one statement; the text has {}",
                    statements.len()
                ),
                None,
                None,
            );
        }
        Err(e) => return engine_error(&e),
    };
    api.prune_when_due();
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let job = api.jobs.begin(
        JobStart {
            pid: 0,
            user: user.name.clone(),
            client: "http",
            query: statement.0.clone(),
            kind: quarry_exec::jobs::statement_type(&statement.1),
        },
        Arc::new(move || {
            let _ = cancel.send(true);
        }),
    );
    let job_id = job.id().to_owned();
    let result = Arc::new(JobResult {
        user: user.name.clone(),
        created: std::time::Instant::now(),
        done: tokio::sync::watch::channel(None).0,
    });
    api.results
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job_id.clone(), result.clone());
    let mut done = result.done.subscribe();
    let path = api.path(&job_id);
    let engine = state.engine.clone();
    let slots = api.slots.clone();
    state.network.spawn(async move {
        let outcome = run(engine, user, statement.1, path, slots, cancelled, job).await;
        result
            .done
            .send_replace(Some(outcome.map_err(|e| Failure::from(&e))));
    });
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(10_000));
    let _ = tokio::time::timeout(timeout, done.wait_for(Option::is_some)).await;
    let max_rows = request.max_rows.unwrap_or(PAGE_ROWS_DEFAULT);
    answer_job(&api, &job_id, 0, max_rows, &None).await
}

/// Runs `statement` for `user` as `job`, its rows written to `path`.
async fn run(
    engine: Arc<quarry_exec::Engine>,
    user: quarry_exec::privileges::SessionUser,
    statement: QuarryStatement,
    path: PathBuf,
    slots: Arc<tokio::sync::Semaphore>,
    mut cancelled: tokio::sync::watch::Receiver<bool>,
    job: crate::jobs::JobHandle,
) -> Result<Option<Written>, quarry_exec::Error> {
    let mut job = job;
    let stop = async move {
        let _ = cancelled.wait_for(|c| *c).await;
    };
    tokio::pin!(stop);
    let slot = tokio::select! {
        slot = slots.acquire_owned() => slot.map_err(|_| quarry_exec::Error::Internal("query slots closed".into()))?,
        () = &mut stop => {
            job.finish(Default::default(), None, Some(cancelled_error()));
            return Err(quarry_exec::Error::Cancelled);
        }
    };
    job.started();
    let mut session = engine.session()?;
    session.set_user(user);
    let work = async {
        let output = session.execute(statement, None).await?;
        job.measure(session.statement_stats());
        match output {
            Output::Rows(stream) | Output::BinaryRows(stream) => {
                write_rows(stream, &path, &job).await.map(Some)
            }
            Output::Command(tag) => {
                if let Some(rows) = tag.rows {
                    job.rows(rows);
                }
                Ok(None)
            }
            Output::CopyIn(_) | Output::CopyOut { .. } => Err(quarry_exec::error::user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "COPY FROM STDIN and COPY TO STDOUT need a PostgreSQL connection; the \
                 streaming API loads rows over HTTP",
            )),
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = &mut stop => Err(quarry_exec::Error::Cancelled),
    };
    drop(slot);
    // What it measured, whether it failed before or after its rows.
    job.measure(session.statement_stats());
    match &outcome {
        Ok(_) => job.end(None, None),
        Err(quarry_exec::Error::Cancelled) => job.end(None, Some(cancelled_error())),
        Err(e) => job.end(None, Some((e.sqlstate().code().to_owned(), e.to_string()))),
    }
    outcome
}

fn cancelled_error() -> (String, String) {
    (
        SqlState::QUERY_CANCELED.code().to_owned(),
        "canceling statement due to user request".to_owned(),
    )
}

/// Writes `stream` to an Arrow IPC file at `path`.
async fn write_rows(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    path: &std::path::Path,
    job: &crate::jobs::JobHandle,
) -> Result<Written, quarry_exec::Error> {
    let io =
        |e: std::io::Error| quarry_exec::Error::Internal(format!("cannot write the result: {e}"));
    let schema = stream.schema();
    let file = std::fs::File::create(path).map_err(io)?;
    let mut writer = FileWriter::try_new(std::io::BufWriter::new(file), &schema)
        .map_err(|e| quarry_exec::Error::Internal(format!("cannot write the result: {e}")))?;
    let mut offsets = vec![0u64];
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(quarry_exec::Error::from_engine)?;
        if batch.num_rows() == 0 {
            continue;
        }
        writer
            .write(&batch)
            .map_err(|e| quarry_exec::Error::Internal(format!("cannot write the result: {e}")))?;
        let rows = batch.num_rows() as u64;
        job.rows(rows);
        offsets.push(offsets.last().copied().unwrap_or(0) + rows);
    }
    writer
        .finish()
        .map_err(|e| quarry_exec::Error::Internal(format!("cannot write the result: {e}")))?;
    Ok(Written { schema, offsets })
}

/// The rows `from..from + max_rows` of the result at `path`.
fn read_page(
    path: &std::path::Path,
    written: &Written,
    from: u64,
    max_rows: usize,
) -> Result<Vec<RecordBatch>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("the result is gone: {e}"))?;
    let mut reader = FileReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| format!("cannot read the result: {e}"))?;
    let end = from + max_rows as u64;
    let mut page = Vec::new();
    // The batch holding row `from`.
    let first = written
        .offsets
        .partition_point(|&start| start <= from)
        .saturating_sub(1);
    for index in first..written.offsets.len().saturating_sub(1) {
        let start = written.offsets[index];
        if start >= end {
            break;
        }
        reader
            .set_index(index)
            .map_err(|e| format!("cannot read the result: {e}"))?;
        let Some(batch) = reader.next() else { break };
        let batch = batch.map_err(|e| format!("cannot read the result: {e}"))?;
        let skip = from.saturating_sub(start) as usize;
        let take = ((end - start) as usize).min(batch.num_rows()) - skip.min(batch.num_rows());
        page.push(batch.slice(skip.min(batch.num_rows()), take));
    }
    Ok(page)
}

/// The job's JSON, and its page of rows from `from` when it is done here.
async fn answer_job(
    api: &Arc<QueryApi>,
    job_id: &str,
    from: u64,
    max_rows: usize,
    viewer: &Viewer,
) -> Response {
    let record = match api.cluster.job(job_id, viewer).await {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(job_id),
        Err(e) => return engine_error(&e),
    };
    let mut body = job_json(&record);
    let result = api
        .results
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(job_id)
        .cloned();
    let outcome = result.as_ref().and_then(|r| r.done.borrow().clone());
    match outcome {
        Some(Err(failure)) => {
            body["error"] = json!({
                "code": failure.state.code(),
                "message": failure.message,
                "detail": failure.detail,
            });
            let status = crate::stream_api::status_of(failure.state);
            (status, axum::Json(body)).into_response()
        }
        Some(Ok(written)) => {
            if let Some(written) = written {
                let path = api.path(job_id);
                match read_page(&path, &written, from, max_rows.min(PAGE_ROWS_MAX)) {
                    Ok(page) => add_page(&mut body, &written, &page, from),
                    Err(message) => {
                        return error(StatusCode::GONE, "55000", message, None, None);
                    }
                }
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        None if record.state == quarry_exec::jobs::JobState::Done => {
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        None => (StatusCode::ACCEPTED, axum::Json(body)).into_response(),
    }
}

fn not_found(job_id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "42704",
        format!("job \"{job_id}\" does not exist"),
        None,
        None,
    )
}

fn micros_text(micros: Option<i64>) -> Value {
    micros.and_then(rfc3339).map_or(Value::Null, Value::String)
}

/// RFC 3339 text of `micros` since the epoch.
fn rfc3339(micros: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A job as JSON.
pub fn job_json(record: &JobRecord) -> Value {
    let elapsed_ms = match (record.start_micros, record.end_micros) {
        (Some(start), Some(end)) => Some((end - start) / 1000),
        (Some(start), None) => Some((quarry_raft::now_micros() - start) / 1000),
        _ => None,
    };
    json!({
        "job_id": record.job_id,
        "node_id": record.node,
        "user_name": record.user,
        "client": record.client,
        "statement_type": record.statement_type,
        "query": record.query,
        "state": record.state.name(),
        "creation_time": micros_text(Some(record.creation_micros)),
        "start_time": micros_text(record.start_micros),
        "end_time": micros_text(record.end_micros),
        "statistics": {
            "elapsed_ms": elapsed_ms,
            "total_bytes_processed": record.total_bytes_processed,
            "row_count": record.rows,
            "total_slot_ms": record.total_slot_ms,
            "peak_memory_bytes": record.peak_memory_bytes,
            "spilled_bytes": record.spilled_bytes,
            "cache_hit": record.cache_hit,
            "referenced_tables": record.referenced_tables,
            "destination_table": record.destination_table,
        },
        "error": record.error_sqlstate.as_ref().map(|code| json!({
            "code": code,
            "message": record.error_message,
        })),
    })
}

/// Adds the schema, `page` as rows of text values, and the paging fields.
fn add_page(body: &mut Value, written: &Written, page: &[RecordBatch], from: u64) {
    let total = written.offsets.last().copied().unwrap_or(0);
    let schema: Vec<Value> = written
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let options = FormatOptions::default().with_null("\u{0}");
    let mut rows = Vec::new();
    for batch in page {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        for row in 0..batch.num_rows() {
            let values: Vec<Value> = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| {
                    if column.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(formatter.value(row).to_string())
                    }
                })
                .collect();
            rows.push(Value::Array(values));
        }
    }
    let next = from + rows.len() as u64;
    body["schema"] = Value::Array(schema);
    body["total_rows"] = json!(total);
    body["rows"] = Value::Array(rows);
    body["next_page_token"] = if next < total {
        json!(next.to_string())
    } else {
        Value::Null
    };
}

/// `GET /v1/jobs/{id}`.
pub async fn get_job(
    State(state): State<HttpState>,
    Path(job_id): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let (api, viewer) = match caller(&state, peer, &headers, quarry_common::roles::READ_ALL_STATS) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    match api.cluster.job(&job_id, &viewer).await {
        Ok(Some(record)) => (StatusCode::OK, axum::Json(job_json(&record))).into_response(),
        Ok(None) => not_found(&job_id),
        Err(e) => engine_error(&e),
    }
}

/// `GET /v1/jobs/{id}/results`.
pub async fn get_results(
    State(state): State<HttpState>,
    Path(job_id): Path<String>,
    Query(page): Query<PageQuery>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let (api, viewer) = match caller(&state, peer, &headers, quarry_common::roles::READ_ALL_STATS) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let from = match page.page_token.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(from)) => from,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "22023",
                "page_token is the next_page_token of a previous page",
                None,
                None,
            );
        }
    };
    let max_rows = page.max_rows.unwrap_or(PAGE_ROWS_DEFAULT);
    let result = api
        .results
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&job_id)
        .cloned();
    let Some(result) = result else {
        return match api.cluster.job(&job_id, &viewer).await {
            Ok(Some(record)) if record.node != api.jobs.node() => error(
                StatusCode::MISDIRECTED_REQUEST,
                "55000",
                format!(
                    "job \"{job_id}\" ran on node {}: its rows are there",
                    record.node
                ),
                None,
                None,
            ),
            Ok(Some(_)) => error(
                StatusCode::GONE,
                "55000",
                format!("the rows of job \"{job_id}\" are no longer kept"),
                None,
                None,
            ),
            Ok(None) => not_found(&job_id),
            Err(e) => engine_error(&e),
        };
    };
    if viewer.as_ref().is_some_and(|v| *v != result.user) {
        return not_found(&job_id);
    }
    let arrow = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    if !arrow {
        return answer_job(&api, &job_id, from, max_rows, &viewer).await;
    }
    let outcome = result.done.borrow().clone();
    match outcome {
        Some(Ok(Some(written))) => {
            let page = match read_page(
                &api.path(&job_id),
                &written,
                from,
                max_rows.min(PAGE_ROWS_MAX),
            ) {
                Ok(page) => page,
                Err(message) => return error(StatusCode::GONE, "55000", message, None, None),
            };
            let mut bytes = Vec::new();
            let written_ok = (|| {
                let mut writer = StreamWriter::try_new(&mut bytes, &written.schema)?;
                for batch in &page {
                    writer.write(batch)?;
                }
                writer.finish()
            })();
            if let Err(e) = written_ok {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "XX000",
                    format!("cannot encode the page: {e}"),
                    None,
                    None,
                );
            }
            let next = from + page.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            let total = written.offsets.last().copied().unwrap_or(0);
            let mut response = (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, ARROW_STREAM)],
                bytes,
            )
                .into_response();
            if next < total
                && let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string())
            {
                response.headers_mut().insert("x-next-page-token", value);
            }
            response
        }
        _ => answer_job(&api, &job_id, from, max_rows, &viewer).await,
    }
}

/// `DELETE /v1/jobs/{id}`.
pub async fn cancel_job(
    State(state): State<HttpState>,
    Path(job_id): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let (api, viewer) = match caller(&state, peer, &headers, quarry_common::roles::SIGNAL_BACKEND) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    match api.cluster.cancel_job(&job_id, &viewer).await {
        Ok(true) => (
            StatusCode::OK,
            axum::Json(json!({"job_id": job_id, "cancelled": true})),
        )
            .into_response(),
        Ok(false) => error(
            StatusCode::CONFLICT,
            "55000",
            format!("job \"{job_id}\" is not running"),
            None,
            None,
        ),
        Err(e) => engine_error(&e),
    }
}
