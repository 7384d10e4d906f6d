//! `quarry-bench`: benchmarks against a running Quarry node, over the PostgreSQL
//! wire like any client.
//!
//! - `tpch --pg HOST:PORT`: runs the 22 TPC-H queries (tests/tpch/queries) against
//!   schema `tpch` (load it with `quarry load tpch`), one warm-up and `--runs` timed
//!   runs each, and prints the median per query and the total.
//! - `tpch-csv --scale-factor N --out DIR`: writes the TPC-H tables as CSV (the same
//!   rows `quarry load tpch` loads) plus `schema.sql`, for loading into another
//!   engine such as DuckDB.
//! - `cluster --nodes N --scale-factor S`: starts N local nodes, loads TPC-H,
//!   and measures stripe storage overhead, crash detection time and repair
//!   rate.

mod cluster;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quarry-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time the 22 TPC-H queries on a running node.
    Tpch {
        /// The node's PostgreSQL address.
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg: String,
        /// Timed runs per query (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Directory of q01.sql … q22.sql.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tpch/queries"))]
        queries: PathBuf,
    },
    /// Write the TPC-H tables as CSV files and their DDL as schema.sql.
    TpchCsv {
        /// TPC-H scale factor.
        #[arg(long)]
        scale_factor: f64,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
    },
    /// Storage overhead, crash detection and repair rate on a local cluster.
    Cluster {
        /// Number of nodes (node i on 127.0.0.<first + i − 1>).
        #[arg(long, default_value_t = 6)]
        nodes: usize,
        /// TPC-H scale factor of the data loaded.
        #[arg(long, default_value_t = 0.1)]
        scale_factor: f64,
        /// A fresh directory for the nodes' data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address of node 1.
        #[arg(long, default_value = "127.0.70.1")]
        first_address: std::net::Ipv4Addr,
        /// The nodes' down_after_ms.
        #[arg(long, default_value_t = 3000)]
        down_after_ms: u64,
        /// The nodes' repair_after_secs.
        #[arg(long, default_value_t = 5)]
        repair_after_secs: u64,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
    },
}

fn write_csv(scale_factor: f64, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut schema = std::fs::File::create(out.join("schema.sql"))?;
    for (table, columns) in quarry_client::tpch::TABLES {
        writeln!(schema, "CREATE TABLE {table} ({columns});")?;
        let path = out.join(format!("{table}.csv"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut result = Ok(());
        quarry_client::tpch::generate_csv(table, scale_factor, 1, 1, |chunk| {
            result = file.write_all(&chunk);
            result.is_ok()
        });
        result.with_context(|| format!("writing {}", path.display()))?;
        file.flush()?;
    }
    Ok(())
}

async fn run_tpch(pg: &str, runs: usize, queries: &Path) -> anyhow::Result<()> {
    let (host, port) = pg.rsplit_once(':').context("--pg must be HOST:PORT")?;
    let (client, connection) = tokio_postgres::connect(
        &format!("host={host} port={port} user=bench dbname=quarry"),
        tokio_postgres::NoTls,
    )
    .await
    .with_context(|| format!("cannot connect to {pg}"))?;
    tokio::spawn(connection);
    client.batch_execute("SET search_path = tpch").await?;
    println!("TPC-H on Quarry at {pg}: median of {runs} runs after one warm-up");
    println!("{:>5} {:>10} {:>6}", "query", "median_ms", "rows");
    let mut total = Duration::ZERO;
    for q in 1..=22 {
        let sql = std::fs::read_to_string(queries.join(format!("q{q:02}.sql")))?;
        let mut rows = 0;
        let mut times = Vec::with_capacity(runs);
        for run in 0..=runs {
            let started = Instant::now();
            let messages = client
                .simple_query(&sql)
                .await
                .with_context(|| format!("q{q:02}"))?;
            let elapsed = started.elapsed();
            rows = messages
                .iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                .count();
            if run > 0 {
                times.push(elapsed);
            }
        }
        times.sort();
        let median = times[times.len() / 2];
        total += median;
        println!(
            "{:>5} {:>10.1} {:>6}",
            format!("q{q:02}"),
            median.as_secs_f64() * 1000.0,
            rows
        );
    }
    println!("{:>5} {:>10.1}", "total", total.as_secs_f64() * 1000.0);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tpch { pg, runs, queries } => run_tpch(&pg, runs.max(1), &queries).await,
        Command::TpchCsv { scale_factor, out } => write_csv(scale_factor, &out),
        Command::Cluster {
            nodes,
            scale_factor,
            data_dir,
            first_address,
            down_after_ms,
            repair_after_secs,
            quarry,
        } => {
            cluster::run(cluster::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                nodes,
                scale_factor,
                dir: data_dir,
                first_address,
                down_after_ms,
                repair_after_secs,
            })
            .await
        }
    }
}
