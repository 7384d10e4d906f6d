//! `quarry-bench write`: the write path end to end, over the PostgreSQL wire.
//! On local clusters of 1 and 3 real `quarry` processes it measures COPY
//! throughput (rows per second of one `COPY ... FROM STDIN` of CSV, from the
//! first byte sent to the command's completion, so the commit is included)
//! and commit latency (one-row `INSERT` statements in autocommit, one after
//! another, each timed from send to answer: p50 and p99). With `--baseline`,
//! the same runs use a second binary in the same invocation and the table
//! shows both side by side.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::SinkExt;

/// Settings of one run.
pub struct Settings {
    /// The binary measured.
    pub quarry: PathBuf,
    /// A second binary run the same way, for comparison.
    pub baseline: Option<PathBuf>,
    /// Cluster sizes.
    pub nodes: Vec<usize>,
    /// Rows of the COPY.
    pub rows: u64,
    /// Timed one-row commits.
    pub commits: usize,
    /// A fresh directory for the clusters' data.
    pub dir: PathBuf,
    /// Address of node 1.
    pub first_address: std::net::Ipv4Addr,
}

/// What one binary did on one cluster size.
struct Figures {
    copy_rows_per_second: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
}

/// Rows of `copy` as CSV: an id, a float and a short text, sent in pieces of
/// about 1 MiB (as a client streaming a file would).
fn csv_pieces(rows: u64) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut piece = String::with_capacity(1 << 20);
    for id in 0..rows {
        piece.push_str(&format!("{id},{}.25,text {}\n", id % 1000, id % 97));
        if piece.len() >= 1 << 20 {
            pieces.push(Bytes::from(std::mem::take(&mut piece)));
        }
    }
    if !piece.is_empty() {
        pieces.push(Bytes::from(piece));
    }
    pieces
}

pub(crate) fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}

async fn measure(pg: &str, pieces: &[Bytes], rows: u64, commits: usize) -> anyhow::Result<Figures> {
    let client = quarry_client::cluster::connect(pg).await?;
    client
        .batch_execute(
            "CREATE TABLE bench_copy (id BIGINT NOT NULL, v DOUBLE PRECISION, s TEXT); \
             CREATE TABLE bench_commit (id BIGINT NOT NULL)",
        )
        .await
        .context("creating the tables")?;

    let started = Instant::now();
    let sink = client
        .copy_in::<_, Bytes>("COPY bench_copy FROM STDIN (FORMAT csv)")
        .await
        .context("starting the COPY")?;
    futures::pin_mut!(sink);
    for piece in pieces {
        sink.feed(piece.clone())
            .await
            .context("sending COPY data")?;
    }
    let copied = sink.finish().await.context("finishing the COPY")?;
    let copy_seconds = started.elapsed().as_secs_f64();
    if copied != rows {
        bail!("COPY reported {copied} rows, {rows} sent");
    }

    let insert = client
        .prepare("INSERT INTO bench_commit VALUES ($1)")
        .await?;
    let mut latencies_ms = Vec::with_capacity(commits);
    for id in 0..commits as i64 {
        let started = Instant::now();
        client
            .execute(&insert, &[&id])
            .await
            .context("a one-row commit")?;
        latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Figures {
        copy_rows_per_second: rows as f64 / copy_seconds,
        commit_p50_ms: percentile(&latencies_ms, 50.0),
        commit_p99_ms: percentile(&latencies_ms, 99.0),
    })
}

async fn run_one(
    settings: &Settings,
    exe: &Path,
    label: &str,
    nodes: usize,
    pieces: &[Bytes],
) -> anyhow::Result<Figures> {
    let dir = settings.dir.join(format!("{label}-{nodes}"));
    let local = crate::local_cluster(exe, nodes, &dir, settings.first_address, Vec::new());
    let mut running = local.start().await?;
    let pg = running[0].pg.to_string();
    let result = measure(&pg, pieces, settings.rows, settings.commits).await;
    quarry_client::cluster::stop(&mut running, Duration::from_secs(30)).await;
    result
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::require_fresh(&settings.dir)?;
    println!("{}", crate::tpch::machine());
    let pieces = csv_pieces(settings.rows);
    let mut builds = vec![("measured", settings.quarry.clone())];
    if let Some(baseline) = &settings.baseline {
        builds.push(("baseline", baseline.clone()));
    }
    for (label, exe) in &builds {
        println!("{label}: {} ({})", exe.display(), version_of(exe));
    }
    println!(
        "COPY of {} CSV rows (3 columns); {} one-row autocommit INSERTs\n",
        settings.rows, settings.commits
    );
    let mut header = String::from("| nodes |");
    let mut rule = String::from("|---:|");
    for (label, _) in &builds {
        header.push_str(&format!(
            " {label} COPY rows/s | {label} commit p50 ms | {label} commit p99 ms |"
        ));
        rule.push_str("---:|---:|---:|");
    }
    println!("{header}\n{rule}");
    for &nodes in &settings.nodes {
        let mut line = format!("| {nodes} |");
        for (label, exe) in &builds {
            let figures = run_one(&settings, exe, label, nodes, &pieces)
                .await
                .with_context(|| format!("{label} on {nodes} node(s)"))?;
            line.push_str(&format!(
                " {:.0} | {:.2} | {:.2} |",
                figures.copy_rows_per_second, figures.commit_p50_ms, figures.commit_p99_ms
            ));
        }
        println!("{line}");
    }
    Ok(())
}

/// `quarry --version` of `exe`, or why it could not be read.
fn version_of(exe: &Path) -> String {
    match std::process::Command::new(exe).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!("--version failed: {}", out.status),
        Err(e) => format!("cannot run: {e}"),
    }
}
