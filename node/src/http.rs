//! The HTTP listener: the web console at `/` (`crate::console`), `/health`
//! (process is up), `/ready` (metadata readable), `/metrics` in Prometheus'
//! text exposition format, the streaming API (`crate::stream_api`) and the
//! query API (`crate::query_api`).
//!
//! Who may call: `/health` and `/ready` are open; `/metrics` is open unless
//! the node was started with `--metrics-require-login`, then it takes the
//! catalog's users by HTTP Basic (user and password, checked against the
//! role's SCRAM verifier) or a bearer token (`CREATE ACCESS TOKEN`), over
//! HTTPS only (on an `--insecure` node, anything goes). A refusal is 401
//! with `{"error": {"code": "unauthenticated", "message": ...}}` and a
//! `WWW-Authenticate` challenge.
//!
//! It runs on a thread and runtime of its own, so a health check or a metrics
//! scrape never waits behind the node's other work: with
//! `execution_threads = 0` query operators share the network's threads, and
//! even apart from them those threads decode exchange batches.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use quarry_raft::Meta;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Renders the metrics registry.
    pub metrics: PrometheusHandle,
    /// The metadata replica, for readiness and logins.
    pub meta: Arc<Meta>,
    /// Who may read `/metrics`.
    pub login: HttpLogin,
    /// Counts failed logins per address and refuses an address over the
    /// limit, with the PostgreSQL port's.
    pub auth: Arc<crate::auth::Authenticator>,
    /// Where logins are audited, and the streaming API's sessions come from.
    pub engine: Arc<quarry_exec::Engine>,
    /// The node's network runtime, where streaming API requests run (the
    /// HTTP listener's thread only serves them).
    pub network: tokio::runtime::Handle,
    /// Largest streaming API request body, in bytes.
    pub stream_body_limit: usize,
    /// The query API (None: not served).
    pub queries: Option<Arc<crate::query_api::QueryApi>>,
    /// Whether the node takes clients (`/ready` fails while it drains).
    pub drain: Arc<crate::drain::Drain>,
}

/// The address an HTTPS request came from (an extension of each request on
/// a connection), for the login limit and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// How the HTTP listener admits callers.
#[derive(Debug, Clone, Copy)]
pub struct HttpLogin {
    /// `/metrics` takes a login (`--metrics-require-login`).
    pub metrics: bool,
    /// The listener speaks HTTPS (credentials are taken only then).
    pub tls: bool,
    /// `--insecure`: no login is asked for.
    pub insecure: bool,
}

/// The HTTP server on its own thread; [`Apart::stop`] ends it.
pub struct Apart {
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Apart {
    /// Stops accepting connections; the thread ends once the open ones
    /// have answered (the process does not wait for it).
    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// Serves `router` on `listener` from a thread with a single-threaded
/// runtime of its own; over TLS (HTTPS only) when `tls` is given.
///
/// # Errors
/// If the listener cannot be moved or the thread or runtime cannot start.
pub fn serve_apart(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<crate::tls::ReloadableTls>>,
) -> anyhow::Result<Apart> {
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("quarry-http".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "the HTTP listener cannot be served");
                        return;
                    }
                };
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Some(tls) = tls {
                    serve_tls(listener, router, tls, shutdown).await;
                    return;
                }
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "the HTTP server stopped");
                }
            });
        })?;
    Ok(Apart { stop })
}

/// Serves `router` over TLS until `shutdown`: each accepted connection is
/// a TLS handshake (its failure ends that connection only), then HTTP/1.1.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<crate::tls::ReloadableTls>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    continue;
                }
            },
        };
        let acceptor = tls.http_acceptor();
        let service = hyper_util::service::TowerToHyperService::new(
            router.clone().layer(axum::Extension(Peer(peer))),
        );
        tokio::spawn(async move {
            let stream = match acceptor.accept(socket).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    let api = state.drain.clone();
    Router::new()
        .route("/", get(crate::console::index))
        .route("/console.js", get(crate::console::script))
        .route("/console.css", get(crate::console::style))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/v1/tables/{table}/channels/{channel}",
            get(crate::stream_api::channel).delete(crate::stream_api::discard),
        )
        .route(
            "/v1/tables/{table}/channels/{channel}/rows",
            axum::routing::post(crate::stream_api::append),
        )
        .route(
            "/v1/tables/{table}/channels/{channel}/commit",
            axum::routing::post(crate::stream_api::commit),
        )
        .route(
            "/v1/tables/{table}/commit",
            axum::routing::post(crate::stream_api::commit_batch),
        )
        .route(
            "/v1/queries",
            axum::routing::post(crate::query_api::post_query),
        )
        .route(
            "/v1/jobs/{job}",
            get(crate::query_api::get_job).delete(crate::query_api::cancel_job),
        )
        .route("/v1/jobs/{job}/results", get(crate::query_api::get_results))
        // While the node drains, new API requests go elsewhere (503, as
        // /ready says).
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let serving = api.is_serving() || !request.uri().path().starts_with("/v1/");
                async move {
                    if serving {
                        next.run(request).await
                    } else {
                        crate::stream_api::error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "57P03",
                            "the node is draining for maintenance; send requests to another node",
                            None,
                            None,
                        )
                    }
                }
            },
        ))
        .with_state(state)
}

async fn ready(State(state): State<HttpState>) -> (StatusCode, String) {
    if !state.drain.is_serving() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining for maintenance\n".to_owned(),
        );
    }
    match state.meta.read().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(
    State(state): State<HttpState>,
    peer: Option<axum::Extension<Peer>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.login.metrics
        && !state.login.insecure
        && let Err(refusal) = authenticate(&state, peer.map(|p| p.0.0), &headers)
    {
        return refusal;
    }
    state.metrics.render().into_response()
}

/// A 401 answer with `message`.
fn unauthenticated(message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({
        "error": {"code": "unauthenticated", "message": message}
    });
    (
        StatusCode::UNAUTHORIZED,
        [(
            axum::http::header::WWW_AUTHENTICATE,
            "Basic realm=\"quarry\", Bearer realm=\"quarry\"",
        )],
        axum::Json(body),
    )
        .into_response()
}

/// The role `headers` log in as (HTTP Basic or a bearer token), from
/// `peer`.
///
/// # Errors
/// A 401 answer: no credentials, credentials over plain HTTP, or ones that
/// do not check out (counted with failed PostgreSQL logins, per address,
/// and audited); 429 while `peer` is over the failed-login limit.
#[allow(clippy::result_large_err)]
pub(crate) fn authenticate(
    state: &HttpState,
    peer: Option<std::net::SocketAddr>,
    headers: &axum::http::HeaderMap,
) -> Result<quarry_common::roles::RoleId, axum::response::Response> {
    use base64::Engine as _;
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthenticated(
            "log in with HTTP Basic or a bearer token (CREATE ACCESS TOKEN), over HTTPS",
        ));
    };
    if !state.login.tls {
        return Err(unauthenticated(
            "credentials are taken over HTTPS only: start the node with --tls-cert and --tls-key",
        ));
    }
    if let Some(peer) = peer
        && let Err(refusal) = state.auth.admit(peer.ip())
    {
        return Err(too_many_logins(&refusal.message));
    }
    let catalog = state.meta.read_local();
    let now = quarry_raft::now_micros();
    // The user a failure is audited for: Basic's user name, or the token's
    // id (its first part, `qat_<id>`).
    let (user, role, how) = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            let role = quarry_exec::credentials::token_role(&catalog, token, now);
            let shown = token.rsplit_once('_').map_or("", |(id, _)| id);
            let user = role.map_or_else(|| shown.to_owned(), |r| catalog.role_name(r));
            (user, role, "HTTP bearer token")
        }
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
            let pair = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|decoded| String::from_utf8(decoded).ok());
            match pair.as_deref().and_then(|p| p.split_once(':')) {
                Some((user, password)) => (
                    user.to_owned(),
                    quarry_exec::credentials::password_role(&catalog, user, password, now),
                    "HTTP Basic",
                ),
                None => (String::new(), None, "HTTP Basic"),
            }
        }
        _ => (String::new(), None, "HTTP"),
    };
    let failure = role
        .is_none()
        .then(|| format!("{how}: invalid credentials"));
    if let Some(peer) = peer {
        state.engine.audit(quarry_exec::audit::AuditEvent {
            at_micros: now,
            event: if failure.is_some() {
                "login_failed"
            } else {
                "login"
            }
            .to_owned(),
            user: user.clone(),
            address: Some(peer.to_string()),
            detail: failure
                .clone()
                .unwrap_or_else(|| format!("authenticated ({how})")),
        });
    }
    match (role, peer) {
        (Some(role), _) => Ok(role),
        (None, Some(peer)) => {
            state.auth.failed(peer.ip(), &user, how);
            Err(unauthenticated("invalid credentials"))
        }
        (None, None) => {
            metrics::counter!("quarry_node_login_failures_total").increment(1);
            Err(unauthenticated("invalid credentials"))
        }
    }
}

/// A 429 answer: the caller's address failed to log in too often lately.
fn too_many_logins(message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({
        "error": {"code": "too_many_failed_logins", "message": message}
    });
    (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response()
}
