//! The HTTP listener: `/health` (process is up), `/ready` (metadata readable), and
//! `/metrics` in Prometheus' text exposition format.
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
    /// The metadata replica, for readiness.
    pub meta: Arc<Meta>,
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
/// runtime of its own.
///
/// # Errors
/// If the listener cannot be moved or the thread or runtime cannot start.
pub fn serve_apart(listener: tokio::net::TcpListener, router: Router) -> anyhow::Result<Apart> {
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

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.meta.read().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(state): State<HttpState>) -> String {
    state.metrics.render()
}
