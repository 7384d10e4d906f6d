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
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
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
