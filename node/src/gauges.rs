//! The node's gauges of cluster state, for Prometheus (`/metrics`) and the
//! alert rules and dashboard in `deploy/prometheus/` and `deploy/grafana/`:
//! sampled every few seconds, since they are states rather than events.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `quarry_cluster_nodes` | `state`: alive, suspect, down | nodes of the cluster as this node's gossip sees them |
//! | `quarry_raft_leader` | | 1 while this node is the Raft leader |
//! | `quarry_storage_stripes` | `health`: healthy, degraded, lost | stripes by the nodes of their chunks that can be read (as `quarry_system.stripes`) |
//! | `quarry_query_memory_reserved_bytes` | | bytes the running statements hold in their memory pools |
//! | `quarry_query_memory_limit_bytes` | | what they may hold in all: query slots × memory per statement |
//! | `quarry_storage_disk_available_bytes`, `quarry_storage_disk_size_bytes` | | the data directory's file system (statvfs) |
//! | `quarry_subscription_lag_bytes` | `subscription` | the source's WAL not yet applied, as of the applier's last commit (`quarry_system.subscriptions.lag_bytes`) |
//! | `quarry_subscription_lag_seconds` | `subscription` | from the source's commit of the last transaction applied to Quarry's (`lag_seconds`) |
//! | `quarry_subscription_rows_applied_total` | `subscription` | rows copied and changed by applied transactions |
//! | `quarry_subscription_failing` | `subscription` | 1 while the applier's last attempt stopped with an error (`last_error`) |
//!
//! The subscription metrics come from the Raft catalog, so every node
//! exports the same values (aggregate them with `max by (subscription)`);
//! a dropped subscription's go to zero.
//!
//! The node's counters, and the gauges set as events happen, are registered
//! at zero when it starts, so that a rule or panel on them sees them before
//! their first event (`node/tests/lifecycle.rs` checks that every metric
//! the alert rules and the dashboard name is exported).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quarry_exec::chunks::DataFileStore;
use quarry_raft::Meta;

/// Counters incremented where their events happen, exported from the start.
pub const COUNTERS: &[&str] = &[
    "quarry_buffer_files_spilled_total",
    "quarry_buffer_rows_moved_total",
    "quarry_compaction_files_removed_total",
    "quarry_data_cache_hits_total",
    "quarry_data_cache_misses_total",
    "quarry_fragment_fetches_total",
    "quarry_node_login_failures_total",
    "quarry_result_cache_hits_total",
    "quarry_result_cache_misses_total",
    "quarry_storage_chunk_corruptions_total",
    "quarry_storage_chunk_read_bytes_total",
    "quarry_storage_chunk_written_bytes_total",
    "quarry_storage_chunks_repaired_total",
    "quarry_storage_degraded_reads_total",
    "quarry_storage_repaired_bytes_total",
];

/// Gauges set where their events happen, exported (at zero) from the start.
pub const EVENT_GAUGES: &[&str] = &[
    "quarry_statements_waiting_for_slot",
    "quarry_fragments_running",
];

/// What the sampler reads.
pub struct Sources {
    /// The engine (its queries' memory pools).
    pub engine: Arc<quarry_exec::Engine>,
    /// The Raft catalog (stripes) and metrics (leadership).
    pub meta: Arc<Meta>,
    /// The cluster's nodes and which can be read.
    pub cluster: Arc<dyn DataFileStore>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Query slots × memory per statement, in bytes.
    pub memory_limit_bytes: u64,
}

/// Samples the gauges every `interval`, forever.
pub async fn publish(sources: Sources, interval: Duration) {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for name in EVENT_GAUGES {
        metrics::gauge!(*name).increment(0.0);
    }
    metrics::gauge!("quarry_query_memory_limit_bytes").set(sources.memory_limit_bytes as f64);
    let mut ticker = tokio::time::interval(interval);
    let mut subscriptions = BTreeSet::new();
    loop {
        ticker.tick().await;
        sample(&sources, &mut subscriptions);
    }
}

/// Samples the gauges; `subscriptions` are the subscriptions exported so
/// far (those dropped since are set to zero).
fn sample(sources: &Sources, subscriptions: &mut BTreeSet<String>) {
    let nodes = sources.cluster.nodes();
    for state in ["alive", "suspect", "down"] {
        let count = nodes.iter().filter(|n| n.state == state).count();
        metrics::gauge!("quarry_cluster_nodes", "state" => state).set(count as f64);
    }
    let leads = {
        let metrics = sources.meta.raft().metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id)
    };
    metrics::gauge!("quarry_raft_leader").set(if leads { 1.0 } else { 0.0 });
    let catalog = sources.meta.read_local();
    for (health, count) in
        quarry_exec::system::stripes_by_health(&catalog, sources.cluster.as_ref())
    {
        metrics::gauge!("quarry_storage_stripes", "health" => health).set(count as f64);
    }
    let now = BTreeSet::from_iter(catalog.subscriptions.keys().cloned());
    for gone in subscriptions.difference(&now) {
        let label = [("subscription", gone.clone())];
        metrics::gauge!("quarry_subscription_lag_bytes", &label).set(0.0);
        metrics::gauge!("quarry_subscription_lag_seconds", &label).set(0.0);
        metrics::gauge!("quarry_subscription_failing", &label).set(0.0);
    }
    *subscriptions = now;
    for subscription in catalog.subscriptions.values() {
        let label = [("subscription", subscription.name.clone())];
        metrics::gauge!("quarry_subscription_lag_bytes", &label)
            .set(subscription.lag_bytes() as f64);
        metrics::gauge!("quarry_subscription_lag_seconds", &label)
            .set(subscription.lag_seconds().unwrap_or(0.0));
        metrics::counter!("quarry_subscription_rows_applied_total", &label)
            .absolute(subscription.rows_applied);
        metrics::gauge!("quarry_subscription_failing", &label).set(
            if subscription.last_error.is_some() {
                1.0
            } else {
                0.0
            },
        );
    }
    metrics::gauge!("quarry_query_memory_reserved_bytes")
        .set(sources.engine.memory_reserved() as f64);
    match nix::sys::statvfs::statvfs(&sources.data_dir) {
        Ok(stat) => {
            let block = stat.fragment_size() as f64;
            metrics::gauge!("quarry_storage_disk_available_bytes")
                .set(stat.blocks_available() as f64 * block);
            metrics::gauge!("quarry_storage_disk_size_bytes").set(stat.blocks() as f64 * block);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the data directory's file system size"),
    }
}
