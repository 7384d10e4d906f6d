//! The HTTP listener: `/health` (process is up), `/ready` (metadata readable), and
//! `/metrics` in Prometheus' text exposition format.

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
