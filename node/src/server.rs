//! The node supervisor: opens the data directory, starts Raft, the chunk store, the
//! PostgreSQL and HTTP listeners, and shuts them down in order on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use quarry_exec::Engine;
use quarry_raft::network::Unconnected;
use quarry_raft::{Meta, MetaConfig, NodeAddr};
use quarry_storage::ChunkStore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::http::{self, HttpState};
use crate::pg::Frontend;

/// Node id of the first node of a new cluster.
const FIRST_NODE_ID: u64 = 1;

/// Runs a node until SIGTERM or SIGINT; returns after a clean shutdown.
///
/// # Errors
/// Startup failures (data directory locked or unreadable, ports in use, metadata
/// store unreadable), each with what to fix.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = DataDir::open(&config.data_dir, FIRST_NODE_ID)?;
    let node_id = data_dir.node_id();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let chunks = ChunkStore::open(data_dir.path().join("chunks"))?;
    let pg_listener = TcpListener::bind(config.pg_listen).await.with_context(|| {
        format!(
            "cannot listen for PostgreSQL clients on {}",
            config.pg_listen
        )
    })?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let addr = NodeAddr {
        rpc: String::new(),
        pg: config.pg_listen.to_string(),
    };
    let meta = Meta::open(
        &data_dir.path().join("meta.redb"),
        MetaConfig::new(node_id, addr),
        Unconnected,
    )
    .await?;
    meta.bootstrap().await?;
    let meta = Arc::new(meta);
    collect_garbage(&meta, &chunks).await?;
    let chunks_for_collector = chunks.clone();
    let engine = Engine::new(meta.clone(), chunks, config.target_partitions);
    let frontend = Frontend::new(engine);
    tracing::info!(
        node_id,
        pg = %config.pg_listen,
        http = %config.http_listen,
        data_dir = %config.data_dir.display(),
        "quarry node ready"
    );

    let http = tokio::spawn({
        let router = http::router(HttpState {
            metrics,
            meta: meta.clone(),
        });
        async move { axum::serve(http_listener, router).await }
    });

    let collector = tokio::spawn(collect_expired_snapshots(
        meta.clone(),
        chunks_for_collector,
        config.retention_check,
    ));

    let mut connections = JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = pg_listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handlers = match frontend.connection() {
                    Ok(handlers) => handlers,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set up a session");
                        continue;
                    }
                };
                connections.spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections"
    );
    drop(pg_listener);
    // Running statements may finish (their commits complete or fail cleanly);
    // idle connections are closed at once.
    if tokio::time::timeout(config.shutdown_grace, frontend.running().wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("statements still running after the grace period are cancelled");
    }
    connections.shutdown().await;
    http.abort();
    collector.abort();
    meta.shutdown().await;
    tracing::info!("quarry node stopped");
    Ok(())
}

/// Deletes chunks that no table references: data files of statements that a
/// crash interrupted before their commit (dropped tables keep theirs until
/// their window passes). Runs before the
/// node accepts clients, so no statement is writing.
///
/// # Errors
/// If the catalog cannot be read or the chunk directory listed.
async fn collect_garbage(meta: &Meta, chunks: &ChunkStore) -> anyhow::Result<()> {
    // A linearizable read first, so the local catalog has every commit applied.
    meta.read().await?;
    let deleted = delete_unreferenced(meta, chunks, chunks.list()?)?;
    if deleted > 0 {
        tracing::info!(deleted, "deleted chunks no table references");
    }
    Ok(())
}

/// Deletes those of `candidates` that no table (live or dropped) of the locally
/// applied catalog lists; returns how many.
fn delete_unreferenced(
    meta: &Meta,
    chunks: &ChunkStore,
    candidates: impl IntoIterator<Item = quarry_common::catalog::ChunkId>,
) -> anyhow::Result<usize> {
    let referenced = meta.read_local().referenced_chunks();
    let mut deleted = 0;
    for chunk in candidates.into_iter().filter(|c| !referenced.contains(c)) {
        chunks.delete(chunk)?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Every `interval`, expires each table's snapshots older than its retention
/// window (keeping the one current when the window began) and deletes the data
/// files only they used, unless a clone still references them.
async fn collect_expired_snapshots(
    meta: Arc<Meta>,
    chunks: ChunkStore,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if let Err(e) = expire_once(&meta, &chunks).await {
            tracing::warn!(error = %e, "snapshot retention collection failed; retrying later");
        }
    }
}

async fn expire_once(meta: &Meta, chunks: &ChunkStore) -> anyhow::Result<()> {
    let catalog = meta.read().await?;
    let now = quarry_raft::now_micros();
    for table in catalog.tables.values() {
        let keep_from = table.retention_boundary(now).id;
        if table.snapshots[0].id < keep_from {
            let command = quarry_raft::Command::ExpireSnapshots {
                table: table.id,
                keep_from,
            };
            let deleted = expire(meta, chunks, command).await?;
            tracing::info!(table = %table.name, keep_from, deleted, "expired snapshots");
        }
    }
    for dropped in &catalog.dropped {
        if dropped.dropped_at < now - dropped.table.retention() {
            let command = quarry_raft::Command::PurgeDropped {
                table: dropped.table.id,
            };
            let deleted = expire(meta, chunks, command).await?;
            tracing::info!(table = %dropped.table.name, deleted, "purged a dropped table past its window");
        }
    }
    Ok(())
}

/// Commits an expiry command and deletes the chunks it released that nothing
/// else lists (a clone may share them); returns how many were deleted.
async fn expire(
    meta: &Meta,
    chunks: &ChunkStore,
    command: quarry_raft::Command,
) -> anyhow::Result<usize> {
    match meta.write(command).await? {
        quarry_raft::Applied::Expired { chunks: released } => {
            delete_unreferenced(meta, chunks, released)
        }
        _ => Ok(0),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
