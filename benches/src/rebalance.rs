//! `quarry-bench rebalance`: how fast rebalancing fills a node that joins a
//! loaded cluster, against its rate limit and the disk's own write speed,
//! and what it does to query latency meanwhile (docs/ARCHITECTURE.md,
//! "Rebalancing").
//!
//! For each rate limit: a fresh local cluster of `nodes` processes started
//! with `--rebalance-mb-per-sec LIMIT`, TPC-H loaded and its stripes
//! settled; TPC-H Q6 timed `queries` times; then one more node joins, Q6
//! runs in a loop on node 1 until every node holds within ±10% of the mean
//! bytes (or, when whole chunks do not allow that, until no move is pending
//! and the bytes have not changed for 30 s), and the bytes the new node
//! received over that time give the rate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Settings of one run.
pub struct Settings {
    pub quarry: PathBuf,
    pub nodes: usize,
    pub scale_factor: f64,
    pub limits_mb: Vec<u64>,
    pub queries: usize,
    pub dir: PathBuf,
    pub first_address: std::net::Ipv4Addr,
}

/// One limit's figures.
struct Figures {
    limit_mb: u64,
    moved_bytes: i64,
    /// Largest distance of a node's bytes from the mean, in % of it.
    deviation: f64,
    seconds: f64,
    before: (f64, f64),
    during: (f64, f64, usize),
}

/// Sequential write speed of the disk under `dir`: 256 MiB written in 4 MiB
/// blocks, then fsynced, in MB/s.
fn disk_write_mb_per_s(dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("disk-speed.tmp");
    let block = vec![0x5au8; 4 << 20];
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    for _ in 0..64 {
        file.write_all(&block)?;
    }
    file.sync_all()?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(256.0 * 1.048_576 / seconds)
}

/// Q6's latency in milliseconds.
async fn q6_ms(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    client.simple_query(sql).await.context("Q6")?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// (p50, p99) of `latencies`.
fn p50_p99(mut latencies: Vec<f64>) -> (f64, f64) {
    latencies.sort_by(f64::total_cmp);
    (
        crate::write::percentile(&latencies, 50.0),
        crate::write::percentile(&latencies, 99.0),
    )
}

/// Chunk bytes by node, from `quarry_system.nodes`.
async fn chunk_bytes(client: &tokio_postgres::Client) -> anyhow::Result<Vec<i64>> {
    Ok(client
        .query(
            "select chunk_bytes::bigint from quarry_system.nodes order by node_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Moves of the plan under way not yet made.
async fn pending_moves(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "select count(*) from quarry_system.rebalance where state = 'pending'",
            &[],
        )
        .await?
        .get(0))
}

fn balanced(bytes: &[i64]) -> bool {
    let mean = bytes.iter().sum::<i64>() as f64 / bytes.len().max(1) as f64;
    bytes
        .iter()
        .all(|b| (*b as f64 - mean).abs() <= mean * 0.10)
}

async fn one_limit(settings: &Settings, limit_mb: u64, q6: &str) -> anyhow::Result<Figures> {
    let dir = settings.dir.join(format!("limit-{limit_mb}"));
    let local = crate::local_cluster(
        &settings.quarry,
        settings.nodes,
        &dir,
        settings.first_address,
        vec!["--rebalance-mb-per-sec".into(), limit_mb.to_string()],
    );
    let mut nodes = local.start().await?;
    let result = async {
        let first = nodes[0].pg.to_string();
        quarry_client::tpch::load(&first, settings.scale_factor, 1, "tpch", false).await?;
        let client = quarry_client::cluster::connect(&first).await?;
        // Every Q6 runs: none is answered from the result cache.
        client.batch_execute("set use_query_cache = off").await?;
        // `quarry load tpch` streams into the ingest buffers: wait until the
        // compactor has moved them into data files, so the join meets the
        // data's final layout.
        crate::cluster::wait_for_empty_buffers(&client, "tpch").await?;
        crate::cluster::settle_stripes(&client).await;
        let mut before = Vec::with_capacity(settings.queries);
        for _ in 0..settings.queries {
            before.push(q6_ms(&client, q6).await?);
        }
        let joined_at = Instant::now();
        nodes.push(local.join_node(settings.nodes).await?);
        let mut during = Vec::new();
        // Ends when every node is within ±10%, or when no move is pending
        // and the bytes have not changed for 30 s: whole chunks may not
        // allow ±10% (the table reports the spread reached).
        let mut last: (Vec<i64>, Instant) = (Vec::new(), Instant::now());
        let (finished_at, bytes) = loop {
            during.push(q6_ms(&client, q6).await?);
            let bytes = chunk_bytes(&client).await?;
            if bytes.len() == settings.nodes + 1 && balanced(&bytes) {
                break (joined_at.elapsed(), bytes);
            }
            if bytes != last.0 {
                last = (bytes, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30)
                && pending_moves(&client).await? == 0
            {
                // The last change is when the rebalance ended.
                break (joined_at.elapsed() - last.1.elapsed(), bytes);
            }
            if joined_at.elapsed() > Duration::from_secs(3600) {
                bail!("not balanced after an hour: {:?}", last.0);
            }
        };
        let mean = bytes.iter().sum::<i64>() as f64 / bytes.len() as f64;
        let deviation = bytes
            .iter()
            .map(|b| (*b as f64 - mean).abs() / mean * 100.0)
            .fold(0.0, f64::max);
        Ok(Figures {
            limit_mb,
            moved_bytes: bytes[settings.nodes],
            deviation,
            seconds: finished_at.as_secs_f64(),
            before: p50_p99(before),
            during: {
                let n = during.len();
                let (p50, p99) = p50_p99(during);
                (p50, p99, n)
            },
        })
    }
    .await;
    quarry_client::cluster::stop(&mut nodes, Duration::from_secs(30)).await;
    result
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::require_fresh(&settings.dir)?;
    let q6 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tpch/queries/q06.sql"),
    )
    .context("reading Q6")?
    .replace("lineitem", "tpch.lineitem");
    let disk = disk_write_mb_per_s(&settings.dir)?;
    let mut rows = Vec::new();
    for &limit in &settings.limits_mb {
        rows.push(one_limit(&settings, limit, &q6).await?);
    }
    println!("{}", crate::tpch::machine());
    println!(
        "Rebalancing onto node {} joining {} loaded nodes (TPC-H SF {}), one machine; \
         disk: {disk:.0} MB/s sequential write with fsync",
        settings.nodes + 1,
        settings.nodes,
        settings.scale_factor
    );
    println!(
        "Q6 timed {} times before the join, then in a loop until every node is within ±10% of the mean bytes \
         (or no move is pending and the bytes have not changed for 30 s)\n",
        settings.queries
    );
    println!(
        "| limit MiB/s | bytes into the new node | join → rebalanced s | MB/s into the new node | \
         largest deviation from the mean % | Q6 p50 ms before | Q6 p99 ms before | Q6 p50 ms during | Q6 p99 ms during | Q6 runs during |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            f.limit_mb,
            f.moved_bytes,
            f.seconds,
            f.moved_bytes as f64 / 1e6 / f.seconds.max(1e-3),
            f.deviation,
            f.before.0,
            f.before.1,
            f.during.0,
            f.during.1,
            f.during.2,
        );
    }
    Ok(())
}
