//! `quarry-bench cluster`: storage overhead of erasure-coded stripes, time to
//! declare a crashed node down, and repair rate, on a local cluster of real
//! `quarry` processes (`quarry cluster local`'s code) loaded with TPC-H.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quarry_client::cluster::status_at;

/// Settings of one run.
pub struct Settings {
    pub quarry: PathBuf,
    pub nodes: usize,
    pub scale_factor: f64,
    pub dir: PathBuf,
    pub first_address: std::net::Ipv4Addr,
    pub down_after_ms: u64,
    pub repair_after_secs: u64,
}

/// Bytes of the files under `dir` (recursively); 0 if it does not exist.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Polls `check` every 20 ms for up to `limit`; returns when it first held.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Ok(Instant::now());
        }
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::require_fresh(&settings.dir)?;
    let local = crate::local_cluster(
        &settings.quarry,
        settings.nodes,
        &settings.dir,
        settings.first_address,
        vec![
            "--down-after-ms".into(),
            settings.down_after_ms.to_string(),
            "--repair-after-secs".into(),
            settings.repair_after_secs.to_string(),
        ],
    );
    let mut nodes = local.start().await?;
    let result = measure(&settings, &mut nodes).await;
    quarry_client::cluster::stop(&mut nodes, Duration::from_secs(30)).await;
    result
}

async fn measure(
    settings: &Settings,
    nodes: &mut [quarry_client::cluster::LocalNode],
) -> anyhow::Result<()> {
    let first = nodes[0].pg.to_string();
    let load = quarry_client::tpch::load(&first, settings.scale_factor, 1, "tpch", false).await?;
    let client = quarry_client::cluster::connect(&first).await?;
    let (loaded_stripes, regroup_seconds) = settle_stripes(&client).await;
    let logical: i64 = client
        .query_one(
            "select sum(size_bytes)::bigint from quarry_system.tables where table_schema = 'tpch'",
            &[],
        )
        .await?
        .get(0);
    let layout = client
        .query_one(
            "select min(data_chunks)::bigint, max(data_chunks)::bigint, \
                    min(parity_chunks)::bigint, max(parity_chunks)::bigint, \
                    sum(size_bytes)::bigint, count(*)::bigint from quarry_system.stripes",
            &[],
        )
        .await?;
    let (k_min, k_max, m_min, m_max, placed, stripes): (i64, i64, i64, i64, i64, i64) = (
        layout.get(0),
        layout.get(1),
        layout.get(2),
        layout.get(3),
        layout.get(4),
        layout.get(5),
    );
    let by_layout: Vec<(i64, i64, i64, i64)> = client
        .query(
            "select data_chunks::bigint, parity_chunks::bigint, count(*)::bigint, \
                    sum(size_bytes)::bigint from quarry_system.stripes group by 1, 2 order by 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let on_disk: Vec<u64> = (1..=nodes.len())
        .map(|i| bytes_under(&settings.dir.join(format!("n{i}/chunks"))))
        .collect();
    let disk: u64 = on_disk.iter().sum();

    // Crash the last node (node 1 answers the questions).
    let victim = nodes.len() - 1;
    let victim_bytes = on_disk[victim];
    let victim_addr = nodes[victim].listen.to_string();
    let killed = Instant::now();
    nodes[victim].kill9().await;
    let down = until(
        Duration::from_secs(120),
        "the crash to be noticed",
        || async {
            status_at(&first).await.is_ok_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.rpc_address == victim_addr && n.state == "down")
            })
        },
    )
    .await?;
    let healthy = until(
        Duration::from_secs(1800),
        "every stripe healthy again",
        || async {
            status_at(&first)
                .await
                .is_ok_and(|s| s.unhealthy.is_empty() && s.stripes == stripes)
        },
    )
    .await?;
    let detection = down - killed;
    let repair = (healthy - down).saturating_sub(Duration::from_secs(settings.repair_after_secs));

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Quarry cluster: {} nodes on one machine ({machine}, {cores} cores), TPC-H SF {} ({} rows)",
        nodes.len(),
        settings.scale_factor,
        load.total_rows()
    );
    println!(
        "stripes: {loaded_stripes} after loading, {stripes} after regrouping ({regroup_seconds:.1} s); \
         k = {k_min}..{k_max}, m = {m_min}..{m_max}"
    );
    println!("| stripe layout k+m | stripes | placed bytes | (k+m)/k |");
    println!("|---|---:|---:|---:|");
    for (k, m, count, bytes) in &by_layout {
        println!(
            "| {k}+{m} | {count} | {bytes} | {:.3} |",
            (k + m) as f64 / *k as f64
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| logical bytes (data files) | {logical} ({:.1} MiB) |",
        mib(logical as u64)
    );
    println!(
        "| placed bytes (data + parity chunks) | {placed} ({:.1} MiB) |",
        mib(placed as u64)
    );
    println!(
        "| bytes on disk (every node's chunks/) | {disk} ({:.1} MiB) |",
        mib(disk)
    );
    println!(
        "| placed / logical | {:.3} |",
        placed as f64 / logical as f64
    );
    println!(
        "| on disk / logical | {:.3} |",
        disk as f64 / logical as f64
    );
    println!(
        "| time to declare the crashed node down (down_after_ms = {}) | {:.2} s |",
        settings.down_after_ms,
        detection.as_secs_f64()
    );
    println!(
        "| chunk bytes on the crashed node | {victim_bytes} ({:.1} MiB) |",
        mib(victim_bytes)
    );
    println!(
        "| repair time after repair_after_secs = {} (down → all stripes healthy, minus the wait) | {:.2} s |",
        settings.repair_after_secs,
        repair.as_secs_f64()
    );
    println!(
        "| repair rate | {:.1} MB/s |",
        victim_bytes as f64 / 1e6 / repair.as_secs_f64().max(1e-3)
    );
    Ok(())
}

/// Small statements leave narrow stripes that the leader regroups in the
/// background: waits (up to 10 minutes) until the stripe count has been
/// still for 10 s. Returns the count when called and the seconds until it
/// last changed.
/// Waits until the compactor has moved `schema`'s ingest buffers into data
/// files (`quarry load tpch` streams into them), at most 30 minutes.
pub(crate) async fn wait_for_empty_buffers(
    client: &tokio_postgres::Client,
    schema: &str,
) -> anyhow::Result<()> {
    let waited = Instant::now();
    loop {
        let buffered: i64 = client
            .query_one(
                "select coalesce(sum(buffered_files), 0)::bigint from quarry_system.tables \
                 where table_schema = $1",
                &[&schema],
            )
            .await?
            .get(0);
        if buffered == 0 {
            return Ok(());
        }
        if waited.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("{buffered} files still in the ingest buffers after 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) async fn settle_stripes(client: &tokio_postgres::Client) -> (i64, f64) {
    let stripe_count = || async {
        client
            .query_one("select count(*)::bigint from quarry_system.stripes", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    let loaded_stripes = stripe_count().await;
    let settle_started = Instant::now();
    let mut last = (loaded_stripes, Instant::now());
    while last.1.elapsed() < Duration::from_secs(10)
        && settle_started.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = stripe_count().await;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    (loaded_stripes, (last.1 - settle_started).as_secs_f64())
}

/// The `quarry` binary next to this one (cargo puts both in target/<profile>).
pub fn default_quarry() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    Ok(me.with_file_name("quarry"))
}
