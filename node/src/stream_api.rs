//! The streaming API on the HTTP listener (`docs/INGESTION.md`):
//!
//! - `POST /v1/tables/{schema.table}/channels/{channel}/rows?offset=N` with
//!   NDJSON (`application/x-ndjson`) or an Arrow IPC stream
//!   (`application/vnd.apache.arrow.stream`): `200 {"next_offset": M}` once
//!   the rows are committed; `409 {"next_offset": M, "error": ...}` when
//!   `N < M` (written before: nothing is written twice); `400` for a gap
//!   (`N > M`) or rows that do not fit the table (naming the row and
//!   column); `404` for an unknown table; `413` past the body limit; `415`
//!   for another content type.
//!   With `pending=true` the channel is pending (BigQuery's PENDING write
//!   stream): its rows are durable but invisible until
//!   `POST .../channels/{channel}/commit` commits them all in one snapshot
//!   (`200 {"next_offset": M}`, again on a retry) — or `POST
//!   /v1/tables/{schema.table}/commit` with `{"channels": [...]}` several
//!   channels in one snapshot — or `DELETE
//!   .../channels/{channel}` discards them; `409` for rows sent to a
//!   channel of the other kind. With `max_bad_rows=K` up to K rows that do
//!   not fit are skipped (they keep their offsets) and listed as
//!   `"skipped_rows": [{"row", "code", "message", "detail"}]`.
//! - `GET /v1/tables/{schema.table}/channels/{channel}` → `{"next_offset":
//!   M, "pending": bool}`, `404` for a channel never written.
//!
//! Errors are `{"error": {"code": SQLSTATE or a word, "message", "detail"}}`.
//! Requests log in as `/metrics` does (HTTP Basic or a bearer token over
//! HTTPS) unless the node runs `--insecure`; the role needs INSERT (SELECT
//! or INSERT to read an offset).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_common::SqlState;
use quarry_exec::privileges::SessionUser;
use quarry_exec::{AppendMode, Appended, StreamRows};
use serde::Deserialize;
use serde_json::json;

use crate::http::{HttpState, Peer};

/// `?offset=N[&pending=true][&max_bad_rows=K]`.
#[derive(Debug, Deserialize)]
pub struct OffsetQuery {
    offset: Option<String>,
    pending: Option<String>,
    max_bad_rows: Option<String>,
}

/// A JSON error answer; `next_offset` added when known.
pub(crate) fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    detail: Option<String>,
    next_offset: Option<u64>,
) -> Response {
    let mut body = json!({
        "error": {"code": code, "message": message.into(), "detail": detail}
    });
    if let Some(next_offset) = next_offset {
        body["next_offset"] = json!(next_offset);
    }
    (status, axum::Json(body)).into_response()
}

/// The HTTP status of an engine error, by its SQLSTATE's class.
pub(crate) fn status_of(state: SqlState) -> StatusCode {
    let code = state.code();
    match code {
        "42P01" | "3F000" | "42704" => StatusCode::NOT_FOUND,
        "55000" => StatusCode::CONFLICT,
        "42501" => StatusCode::FORBIDDEN,
        "40001" | "57P01" | "08006" => StatusCode::SERVICE_UNAVAILABLE,
        _ if code.starts_with("22") || code.starts_with("23") || code.starts_with("42") => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn engine_error(e: &quarry_exec::Error) -> Response {
    let state = e.sqlstate();
    let detail = match e {
        quarry_exec::Error::User { detail, .. } => detail.clone(),
        _ => None,
    };
    error(status_of(state), state.code(), e.to_string(), detail, None)
}

/// The session user of a request: its login, or `quarry` (every check
/// passes) on an `--insecure` node.
#[allow(clippy::result_large_err)]
pub(crate) fn user_of(
    state: &HttpState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> Result<SessionUser, Response> {
    if state.login.insecure {
        return Ok(SessionUser::new("quarry", None));
    }
    let role = crate::http::authenticate(state, peer, headers)?;
    let name = state.meta.read_local().role_name(role);
    Ok(SessionUser::new(name, Some(role)))
}

/// Runs `work` with a session of `user` on the node's network runtime (the
/// HTTP listener's own thread only serves requests).
async fn with_session<T, F, Fut>(
    state: &HttpState,
    user: SessionUser,
    work: F,
) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce(quarry_exec::Session) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = quarry_exec::Result<T>> + Send + 'static,
{
    let engine = state.engine.clone();
    let task = state.network.spawn(async move {
        let mut session = engine.session()?;
        session.set_user(user);
        work(session).await
    });
    match task.await {
        Ok(result) => result.map_err(|e| engine_error(&e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "XX000",
            format!("the request's task ended: {e}"),
            None,
            None,
        )),
    }
}

/// Runs `work` with a session of the request's user ([`user_of`]): its
/// result, or the answer refusing the request.
async fn as_user<T, F, Fut>(
    state: &HttpState,
    peer: Option<axum::Extension<Peer>>,
    headers: &HeaderMap,
    work: F,
) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce(quarry_exec::Session) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = quarry_exec::Result<T>> + Send + 'static,
{
    let user = user_of(state, peer.map(|p| p.0.0), headers)?;
    with_session(state, user, work).await
}

/// `GET /v1/tables/{table}/channels/{channel}`.
pub async fn channel(
    State(state): State<HttpState>,
    Path((table, channel)): Path<(String, String)>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let name = channel.clone();
    let offset = as_user(&state, peer, &headers, async move |mut session| {
        session.channel_offset(&table, &name).await
    })
    .await;
    match offset {
        Ok(Some(channel)) => axum::Json(json!({
            "next_offset": channel.next_offset,
            "pending": channel.pending,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("channel \"{channel}\" has never been written"),
            None,
            None,
        ),
        Err(answer) => answer,
    }
}

/// `POST /v1/tables/{table}/channels/{channel}/rows?offset=N`.
pub async fn append(
    State(state): State<HttpState>,
    Path((table, channel)): Path<(String, String)>,
    Query(query): Query<OffsetQuery>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let user = match user_of(&state, peer.map(|p| p.0.0), &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let Some(offset) = query.offset.as_deref().and_then(|o| o.parse::<u64>().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "22023",
            "offset=N (the channel's row offset of the first row, 0 or more) is required",
            None,
            None,
        );
    };
    let pending = match query.pending.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "22023",
                format!("pending={other}: true or false"),
                None,
                None,
            );
        }
    };
    let max_bad_rows = match query.max_bad_rows.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(k)) => k,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "22023",
                "max_bad_rows=K takes a count, 0 or more",
                None,
                None,
            );
        }
    };
    let mode = AppendMode {
        pending,
        max_bad_rows,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let arrow = match content_type.as_str() {
        "application/x-ndjson" | "application/jsonl" => false,
        "application/vnd.apache.arrow.stream" => true,
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content type \"{other}\": send application/x-ndjson or application/vnd.apache.arrow.stream"
                ),
                None,
                None,
            );
        }
    };
    let limit = state.stream_body_limit;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds {limit} bytes (stream_body_limit_mb) or was cut: {e}"),
                None,
                None,
            );
        }
    };
    let appended = with_session(&state, user, async move |mut session| {
        let rows = if arrow {
            StreamRows::ArrowIpc(&bytes)
        } else {
            StreamRows::NdJson(&bytes)
        };
        session
            .append_rows(&table, &channel, offset, rows, mode)
            .await
    })
    .await;
    match appended {
        Ok(Appended::Committed {
            next_offset,
            skipped,
        }) => {
            let mut body = json!({"next_offset": next_offset});
            if !skipped.is_empty() {
                body["skipped_rows"] = skipped
                    .iter()
                    .map(|bad| {
                        json!({
                            "row": bad.row,
                            "code": bad.state.code(),
                            "message": bad.message,
                            "detail": bad.detail,
                        })
                    })
                    .collect();
            }
            axum::Json(body).into_response()
        }
        Ok(Appended::AlreadyWritten { next_offset }) => error(
            StatusCode::CONFLICT,
            "already_written",
            format!(
                "offset {offset} is before the channel's next offset {next_offset}: these rows were written before"
            ),
            None,
            Some(next_offset),
        ),
        Ok(Appended::Gap { next_offset }) => error(
            StatusCode::BAD_REQUEST,
            "offset_gap",
            format!(
                "offset {offset} is past the channel's next offset {next_offset}: rows {next_offset}..{offset} are missing"
            ),
            None,
            Some(next_offset),
        ),
        Err(answer) => answer,
    }
}

/// `POST /v1/tables/{table}/channels/{channel}/commit`: commits a pending
/// channel's rows in one snapshot.
pub async fn commit(
    State(state): State<HttpState>,
    Path((table, channel)): Path<(String, String)>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let committed = as_user(&state, peer, &headers, async move |mut session| {
        session.commit_channels(&table, &[channel]).await
    })
    .await;
    match committed {
        Ok(offsets) => axum::Json(json!({"next_offset": offsets.first()})).into_response(),
        Err(answer) => answer,
    }
}

/// The body of a batch commit.
#[derive(Debug, Deserialize)]
pub struct BatchCommit {
    channels: Vec<String>,
}

/// `POST /v1/tables/{table}/commit` with `{"channels": [...]}`: commits
/// pending channels' rows together in one snapshot (BigQuery's
/// BatchCommitWriteStreams): `{"next_offsets": {"channel": M, ...}}`.
pub async fn commit_batch(
    State(state): State<HttpState>,
    Path(table): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: BatchCommit = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "22P02",
                format!("the body is not {{\"channels\": [\"name\", ...]}}: {e}"),
                None,
                None,
            );
        }
    };
    let channels = request.channels.clone();
    let committed = as_user(&state, peer, &headers, async move |mut session| {
        session.commit_channels(&table, &request.channels).await
    })
    .await;
    match committed {
        Ok(offsets) => {
            let offsets: serde_json::Map<String, serde_json::Value> = channels
                .into_iter()
                .zip(offsets)
                .map(|(channel, offset)| (channel, json!(offset)))
                .collect();
            axum::Json(json!({"next_offsets": offsets})).into_response()
        }
        Err(answer) => answer,
    }
}

/// `DELETE /v1/tables/{table}/channels/{channel}`: discards a pending
/// channel's rows.
pub async fn discard(
    State(state): State<HttpState>,
    Path((table, channel)): Path<(String, String)>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let discarded = as_user(&state, peer, &headers, async move |mut session| {
        session.discard_channel(&table, &channel).await
    })
    .await;
    match discarded {
        Ok(next_offset) => axum::Json(json!({"next_offset": next_offset})).into_response(),
        Err(answer) => answer,
    }
}
