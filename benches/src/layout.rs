//! `quarry-bench layout`: bytes read and time per query over TPC-H lineitem
//! laid out three ways on one node (docs/DATA_LAYOUT.md): as loaded (files
//! in `l_orderkey` order), partitioned by month of `l_shipdate`, and
//! partitioned by month and clustered by `l_partkey`.
//!
//! One fresh node, `quarry load tpch` at the scale factor, the ingest
//! buffers compacted; then the three tables by CREATE TABLE AS from
//! `tpch.lineitem`, and the compactor given time to merge the small files
//! a write spread over many partitions leaves. Each query runs once to warm
//! up and `runs` times timed (result cache off); bytes are the job's
//! `total_bytes_processed` (data files opened after pruning) and the
//! Parquet reader's `bytes_scanned` (after row-group and page pruning).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Settings of one run.
pub struct Settings {
    pub quarry: PathBuf,
    pub scale_factor: f64,
    pub runs: usize,
    pub dir: PathBuf,
    pub first_address: std::net::Ipv4Addr,
}

/// The three layouts: table name and CREATE TABLE AS clauses.
const LAYOUTS: [(&str, &str); 3] = [
    ("lineitem_loaded", ""),
    (
        "lineitem_by_month",
        "PARTITION BY DATE_TRUNC(l_shipdate, MONTH)",
    ),
    (
        "lineitem_by_month_part",
        "PARTITION BY DATE_TRUNC(l_shipdate, MONTH) CLUSTER BY l_partkey",
    ),
];

/// The queries, over `{t}`.
const QUERIES: [(&str, &str); 4] = [
    (
        "Q6 (a year of l_shipdate)",
        "SELECT sum(l_extendedprice * l_discount) FROM {t} \
         WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
         AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
    ),
    (
        "one month of l_shipdate",
        "SELECT count(*), sum(l_extendedprice) FROM {t} \
         WHERE l_shipdate >= DATE '1995-03-01' AND l_shipdate < DATE '1995-04-01'",
    ),
    (
        "one l_partkey",
        "SELECT count(*), sum(l_quantity) FROM {t} WHERE l_partkey = 12345",
    ),
    (
        "one l_partkey in one year",
        "SELECT count(*), sum(l_quantity) FROM {t} WHERE l_partkey = 12345 \
         AND l_shipdate >= DATE '1996-01-01' AND l_shipdate < DATE '1997-01-01'",
    ),
];

/// The bytes the newest job that ran `sql` read.
async fn bytes_processed(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = client
            .query(
                "SELECT total_bytes_processed::bigint FROM quarry_system.jobs \
                 WHERE query = $1 AND state = 'DONE' ORDER BY creation_time DESC LIMIT 1",
                &[&sql],
            )
            .await?;
        if let Some(row) = rows.first() {
            return Ok(row.get(0));
        }
        if Instant::now() > deadline {
            bail!("no job record of {sql}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes the Parquet reader fetched for `sql` (DataFusion's
/// `bytes_scanned`, summed over the scans of its EXPLAIN ANALYZE; after row
/// group and page pruning), as the metric prints it (three digits).
async fn bytes_scanned(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<f64> {
    let rows = client
        .simple_query(&format!("EXPLAIN ANALYZE {sql}"))
        .await?;
    let mut total = 0.0;
    for row in rows {
        let tokio_postgres::SimpleQueryMessage::Row(row) = row else {
            continue;
        };
        let Some(plan) = row.get(1) else {
            continue;
        };
        for part in plan.split("bytes_scanned=").skip(1) {
            let value: String = part
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let rest = &part[value.len()..];
            let scale = match rest.get(..2) {
                Some(" K") => 1e3,
                Some(" M") => 1e6,
                Some(" B") => 1e9,
                Some(" T") => 1e12,
                _ => 1.0,
            };
            total += value.parse::<f64>().unwrap_or(0.0) * scale;
        }
    }
    Ok(total)
}

/// Waits until the data files of `tables` have stopped changing for 30 s
/// (the compactor merges the small files a wide partitioned write leaves),
/// at most 30 minutes; their counts.
async fn settle_files(
    client: &tokio_postgres::Client,
    tables: &[&str],
) -> anyhow::Result<Vec<i64>> {
    let started = Instant::now();
    let mut last: (Vec<i64>, Instant) = (Vec::new(), Instant::now());
    loop {
        let mut files = Vec::with_capacity(tables.len());
        for table in tables {
            files.push(
                client
                    .query_one(
                        "SELECT (data_files + buffered_files)::bigint FROM quarry_system.tables \
                         WHERE table_name = $1",
                        &[table],
                    )
                    .await?
                    .get(0),
            );
        }
        if files != last.0 {
            last = (files, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            return Ok(last.0);
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("data files still changing after 30 minutes: {:?}", last.0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::require_fresh(&settings.dir)?;
    let local = crate::local_cluster(
        &settings.quarry,
        1,
        &settings.dir,
        settings.first_address,
        Vec::new(),
    );
    let mut nodes = local.start().await?;
    let result = async {
        let pg = nodes[0].pg.to_string();
        quarry_client::tpch::load(&pg, settings.scale_factor, 1, "tpch", false).await?;
        let client = quarry_client::cluster::connect(&pg).await?;
        client.batch_execute("set use_query_cache = off").await?;
        crate::cluster::wait_for_empty_buffers(&client, "tpch").await?;
        let mut built = Vec::new();
        for (table, clauses) in LAYOUTS {
            let started = Instant::now();
            client
                .batch_execute(&format!(
                    "CREATE TABLE {table} {clauses} AS SELECT * FROM tpch.lineitem"
                ))
                .await?;
            let files: i64 = client
                .query_one(
                    "SELECT data_files::bigint FROM quarry_system.tables WHERE table_name = $1",
                    &[&table],
                )
                .await?
                .get(0);
            built.push((table, started.elapsed().as_secs_f64(), files, 0));
        }
        let names: Vec<&str> = LAYOUTS.iter().map(|(t, _)| *t).collect();
        for (entry, settled) in built.iter_mut().zip(settle_files(&client, &names).await?) {
            entry.3 = settled;
        }
        let mut rows = Vec::new();
        for (name, query) in QUERIES {
            let mut cells = Vec::new();
            for (table, _) in LAYOUTS {
                let sql = query.replace("{t}", table);
                client.query(&sql, &[]).await?;
                let mut times = Vec::with_capacity(settings.runs);
                for _ in 0..settings.runs {
                    let started = Instant::now();
                    client.query(&sql, &[]).await?;
                    times.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                times.sort_by(f64::total_cmp);
                let bytes = bytes_processed(&client, &sql).await?;
                let scanned = bytes_scanned(&client, &sql).await?;
                cells.push((bytes, scanned, times[times.len() / 2]));
            }
            rows.push((name, cells));
        }
        Ok::<_, anyhow::Error>((built, rows))
    }
    .await;
    quarry_client::cluster::stop(&mut nodes, Duration::from_secs(30)).await;
    let (built, rows) = result?;
    println!("{}", crate::tpch::machine());
    println!(
        "TPC-H SF {} lineitem on one node, three layouts; median of {} runs, result cache off\n",
        settings.scale_factor, settings.runs
    );
    println!("| layout | CREATE TABLE AS s | data files written | data files once compacted |");
    println!("|---|---:|---:|---:|");
    for (table, seconds, files, settled) in built {
        println!("| {table} | {seconds:.1} | {files} | {settled} |");
    }
    println!(
        "\nMB of files opened: the job's total_bytes_processed (files left after partition and \
         zone-map pruning). MB scanned: what the Parquet reader fetched after row-group and page \
         pruning (DataFusion's bytes_scanned).\n"
    );
    println!("| query | layout | MB of files opened | MB scanned | ms |");
    println!("|---|---|---:|---:|---:|");
    for (name, cells) in rows {
        for ((table, _), (opened, scanned, ms)) in LAYOUTS.iter().zip(cells) {
            println!(
                "| {name} | {table} | {:.1} | {:.1} | {ms:.1} |",
                opened as f64 / 1e6,
                scanned / 1e6,
            );
        }
    }
    Ok(())
}
