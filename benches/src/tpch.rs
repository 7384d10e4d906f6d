//! `quarry-bench tpch`: the 22 TPC-H queries on a running node, or on a local
//! cluster of `--nodes K` real `quarry` processes that it starts and loads
//! (each large table in K parts, so every node holds a share); with the Python
//! `duckdb` package installed, DuckDB runs the same queries over Parquet files
//! of the same rows in the same run, and the table shows the ratio per query
//! and the geometric means. On a local cluster it also shows, per query, the
//! bytes the nodes' chunk stores read during its warm-up run (the sum over
//! the nodes of `quarry_storage_chunk_read_bytes_total`, from `/metrics`);
//! with `--data-cache-mb 0` that is every byte the query needs from disk.
//! With `--tls` (and `--nodes`) the nodes serve TLS with certificates from
//! `quarry cert` (and talk to each other over mutual TLS), and every query
//! runs over a plain connection and over a TLS one in turn, side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Settings of one run.
pub struct Settings {
    /// A running node's PostgreSQL address (when `nodes` is None).
    pub pg: String,
    /// Start a local cluster of this many nodes instead.
    pub nodes: Option<usize>,
    /// TPC-H scale factor to load (with `nodes`) and to give DuckDB.
    pub scale_factor: f64,
    /// A fresh directory for the nodes' data and the CSV/Parquet files.
    pub dir: PathBuf,
    /// Address of node 1 (with `nodes`).
    pub first_address: std::net::Ipv4Addr,
    /// Timed runs per query after one warm-up.
    pub runs: usize,
    /// q01.sql … q22.sql.
    pub queries: PathBuf,
    /// The quarry binary.
    pub quarry: PathBuf,
    /// Skip DuckDB even if installed.
    pub no_duckdb: bool,
    /// Session settings (name, value) set before the queries, e.g. `distsql`.
    pub set: Vec<(String, String)>,
    /// Each node's data cache in MiB (with `nodes`); None: the default.
    pub data_cache_mb: Option<u64>,
    /// Serve TLS (with `nodes`) and time each query over a plain and a TLS
    /// connection.
    pub tls: bool,
}

/// One query's figures.
struct Timing {
    name: String,
    /// Median of the timed runs.
    median: Duration,
    rows: usize,
    /// Bytes read by the chunk stores of all nodes during the warm-up run
    /// (None: not measured).
    bytes_read: Option<u64>,
}

/// Every query's figures, in order.
type Timings = Vec<Timing>;

/// The counter of bytes a node's chunk store read.
const READ_BYTES_METRIC: &str = "quarry_storage_chunk_read_bytes_total";

/// Reads the nodes' `/metrics` over HTTP.
struct MetricsReader {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    urls: Vec<hyper::Uri>,
}

impl MetricsReader {
    fn new(http_addresses: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let urls = http_addresses
            .into_iter()
            .map(|a| format!("http://{a}/metrics").parse())
            .collect::<Result<_, _>>()?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(MetricsReader { client, urls })
    }

    /// The sum over the nodes of counter `name` (0 where not yet counted).
    async fn sum(&self, name: &str) -> anyhow::Result<u64> {
        use http_body_util::BodyExt;
        let mut total = 0u64;
        for url in &self.urls {
            let response = self
                .client
                .get(url.clone())
                .await
                .with_context(|| format!("GET {url}"))?;
            let body = response.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&body);
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map_or(Ok(0.0), |v| v.trim().parse::<f64>())
                .with_context(|| format!("{name} from {url}"))?;
            total += value as u64;
        }
        Ok(total)
    }
}

/// Makes a CA and one node certificate for the addresses of `nodes` nodes
/// from `first` (`quarry cert`) in `dir`; the nodes' TLS flags.
fn make_certificates(
    quarry: &Path,
    dir: &Path,
    first: std::net::Ipv4Addr,
    nodes: usize,
) -> anyhow::Result<Vec<String>> {
    let certs = dir.join("certs");
    let run = |args: Vec<String>| -> anyhow::Result<()> {
        let output = Command::new(quarry)
            .args(&args)
            .arg("--certs-dir")
            .arg(&certs)
            .output()
            .with_context(|| format!("{} runs", quarry.display()))?;
        if !output.status.success() {
            bail!(
                "quarry {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    run(vec!["cert".into(), "create-ca".into()])?;
    let mut node = vec!["cert".to_owned(), "create-node".to_owned()];
    for i in 0..nodes {
        let ip = std::net::Ipv4Addr::from(u32::from(first) + i as u32);
        node.extend(["--host".to_owned(), ip.to_string()]);
    }
    run(node)?;
    let file = |name: &str| certs.join(name).display().to_string();
    Ok(vec![
        "--tls-cert".to_owned(),
        file("node.crt"),
        "--tls-key".to_owned(),
        file("node.key"),
        "--tls-ca".to_owned(),
        file("ca.crt"),
    ])
}

/// A TLS connection (`sslmode=require`, the node verified against `ca`) to
/// the node at `pg`, HOST:PORT.
async fn connect_tls(pg: &str, ca: &Path) -> anyhow::Result<tokio_postgres::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (host, port) = pg
        .rsplit_once(':')
        .with_context(|| format!("{pg} is not HOST:PORT"))?;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={host} port={port} user=quarry dbname=quarry connect_timeout=10 sslmode=require"
        ),
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )
    .await
    .with_context(|| format!("cannot connect to the node at {pg} over TLS"))?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    println!("{}", machine());
    if settings.tls && settings.nodes.is_none() {
        bail!("--tls needs --nodes (the bench makes the certificates of the nodes it starts)");
    }
    let (quarry, over_tls) = match settings.nodes {
        None => {
            let client = quarry_client::cluster::connect(&settings.pg).await?;
            let mut timings = time_quarry(vec![client], &settings, None).await?;
            (timings.remove(0), None)
        }
        Some(nodes) => {
            if settings.dir.join("n1").exists() {
                bail!(
                    "{} holds a cluster already; use a fresh --dir",
                    settings.dir.display()
                );
            }
            let mut extra = match settings.data_cache_mb {
                Some(mb) => vec!["--data-cache-mb".to_owned(), mb.to_string()],
                None => Vec::new(),
            };
            if settings.tls {
                std::fs::create_dir_all(&settings.dir)?;
                extra.extend(make_certificates(
                    &settings.quarry,
                    &settings.dir,
                    settings.first_address,
                    nodes,
                )?);
            }
            let local = crate::local_cluster(
                &settings.quarry,
                nodes,
                &settings.dir,
                settings.first_address,
                extra,
            );
            let metrics = MetricsReader::new((0..nodes).map(|i| {
                let ip = std::net::Ipv4Addr::from(u32::from(settings.first_address) + i as u32);
                format!("{ip}:{}", local.http_port)
            }))?;
            let mut running = local.start().await?;
            let result = async {
                let pg = running[0].pg.to_string();
                let parts = i32::try_from(nodes).unwrap_or(i32::MAX);
                let load =
                    quarry_client::tpch::load(&pg, settings.scale_factor, parts, "tpch", false)
                        .await?;
                println!(
                    "loaded TPC-H SF {} into {nodes} node(s) ({parts} part(s) per large table): \
                     {} rows in {:.1} s",
                    settings.scale_factor,
                    load.total_rows(),
                    load.elapsed.as_secs_f64()
                );
                if let Some(mb) = settings.data_cache_mb {
                    println!("data cache: {mb} MiB per node");
                }
                let mut clients = vec![quarry_client::cluster::connect(&pg).await?];
                if settings.tls {
                    let ca = settings.dir.join("certs").join("ca.crt");
                    clients.push(connect_tls(&pg, &ca).await?);
                    println!(
                        "TLS: each query runs over a plain and a TLS connection to node 1 in turn"
                    );
                }
                // The nodes serve /metrics over HTTPS with --tls; the bytes
                // read are measured over plain HTTP only.
                let metrics = (!settings.tls).then_some(&metrics);
                let mut timings = time_quarry(clients, &settings, metrics).await?;
                let plain = timings.remove(0);
                Ok::<_, anyhow::Error>((plain, timings.pop()))
            }
            .await;
            quarry_client::cluster::stop(&mut running, Duration::from_secs(30)).await;
            result?
        }
    };
    let duckdb = if settings.no_duckdb || !duckdb_installed() {
        println!("(DuckDB not run: pip install duckdb to compare)");
        None
    } else {
        Some(time_duckdb(&settings)?)
    };
    print_table(&quarry, duckdb.as_ref());
    if let Some(over_tls) = &over_tls {
        print_tls_table(&quarry, over_tls);
    }
    Ok(())
}

/// This machine, as the results table names it.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("machine: {cpus} CPUs ({model}), {memory_gib:.1} GiB RAM")
}

/// The 22 queries' figures over each of `clients` (one Timings per client):
/// each query runs its warm-up and timed runs on every client in turn before
/// the next query. Bytes read are measured on the first client's warm-up.
async fn time_quarry(
    clients: Vec<tokio_postgres::Client>,
    settings: &Settings,
    metrics: Option<&MetricsReader>,
) -> anyhow::Result<Vec<Timings>> {
    let (runs, queries) = (settings.runs, &settings.queries);
    for (i, client) in clients.iter().enumerate() {
        // The result cache would answer every timed run from the warm-up's
        // result; `--set use_query_cache=on` times it instead.
        client
            .batch_execute("SET search_path = tpch; SET use_query_cache = off")
            .await?;
        for (name, value) in &settings.set {
            if i == 0 {
                println!("SET {name} = '{value}'");
            }
            client
                .batch_execute(&format!("SET {name} = '{}'", value.replace('\'', "''")))
                .await
                .with_context(|| format!("SET {name}"))?;
        }
    }
    let mut all: Vec<Timings> = clients.iter().map(|_| Vec::new()).collect();
    for q in 1..=22 {
        let name = format!("q{q:02}");
        let sql = std::fs::read_to_string(queries.join(format!("{name}.sql")))?;
        for (i, client) in clients.iter().enumerate() {
            let metrics = if i == 0 { metrics } else { None };
            all[i].push(time_query(client, &name, &sql, runs, metrics).await?);
        }
    }
    Ok(all)
}

/// One query's warm-up run and `runs` timed runs on `client`.
async fn time_query(
    client: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    runs: usize,
    metrics: Option<&MetricsReader>,
) -> anyhow::Result<Timing> {
    let mut rows = 0;
    let mut times = Vec::with_capacity(runs);
    let mut bytes_read = None;
    for run in 0..=runs {
        let read_before = match (run, metrics) {
            (0, Some(metrics)) => Some(metrics.sum(READ_BYTES_METRIC).await?),
            _ => None,
        };
        let started = Instant::now();
        let messages = client
            .simple_query(sql)
            .await
            .with_context(|| name.to_owned())?;
        let elapsed = started.elapsed();
        rows = messages
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        if let (Some(before), Some(metrics)) = (read_before, metrics) {
            bytes_read = Some(metrics.sum(READ_BYTES_METRIC).await?.saturating_sub(before));
        }
        if run > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    Ok(Timing {
        name: name.to_owned(),
        median: times[times.len() / 2],
        rows,
        bytes_read,
    })
}

fn duckdb_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs benches/duckdb_tpch.py over Parquet files of the same rows.
fn time_duckdb(settings: &Settings) -> anyhow::Result<Timings> {
    let data = settings
        .dir
        .join(format!("csv-sf{}", settings.scale_factor));
    if !data.join("schema.sql").exists() {
        crate::write_csv(settings.scale_factor, &data, &[])?;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("duckdb_tpch.py");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let output = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .args(["--runs", &settings.runs.to_string()])
        .args(["--threads", &threads.to_string(), "--parquet"])
        .output()
        .context("python3 runs")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "DuckDB failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(first) = stdout.lines().next() {
        println!("{first}");
    }
    let mut timings = Vec::new();
    for line in stdout.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(name), Some(ms), Some(rows)) = (fields.next(), fields.next(), fields.next())
            && name.starts_with('q')
            && let (Ok(ms), Ok(rows)) = (ms.parse::<f64>(), rows.parse::<usize>())
        {
            timings.push(Timing {
                name: name.to_owned(),
                median: Duration::from_secs_f64(ms / 1000.0),
                rows,
                bytes_read: None,
            });
        }
    }
    Ok(timings)
}

fn geomean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v.max(1e-9).ln(), n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64).exp() }
}

/// Each query's median over a plain and over a TLS connection, and their
/// ratio, with the geometric means.
fn print_tls_table(plain: &Timings, over_tls: &Timings) {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| query | plain ms | TLS ms | TLS / plain |");
    println!("|---|---:|---:|---:|");
    for (p, t) in plain.iter().zip(over_tls) {
        let warn = if p.rows == t.rows {
            ""
        } else {
            " (row counts differ)"
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.2}{warn} |",
            p.name,
            ms(&p.median),
            ms(&t.median),
            ms(&t.median) / ms(&p.median).max(1e-6)
        );
    }
    let plain_geo = geomean(plain.iter().map(|t| ms(&t.median)));
    let tls_geo = geomean(over_tls.iter().map(|t| ms(&t.median)));
    println!(
        "| **geomean** | **{plain_geo:.1}** | **{tls_geo:.1}** | **{:.2}** |",
        tls_geo / plain_geo.max(1e-6)
    );
}

fn print_table(quarry: &Timings, duckdb: Option<&Timings>) {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let mb = |t: &Timing| {
        t.bytes_read
            .map_or_else(String::new, |b| format!("{:.1}", b as f64 / 1e6))
    };
    println!();
    println!("| query | Quarry ms | rows | MB read | DuckDB ms | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, t) in quarry.iter().enumerate() {
        let (name, rows) = (&t.name, t.rows);
        match duckdb.and_then(|d| d.get(i)) {
            Some(duck) => {
                let warn = if duck.rows == rows {
                    ""
                } else {
                    " (row counts differ)"
                };
                println!(
                    "| {name} | {:.1} | {rows} | {} | {:.1} | {:.2}{warn} |",
                    ms(&t.median),
                    mb(t),
                    ms(&duck.median),
                    ms(&t.median) / ms(&duck.median).max(1e-6)
                );
            }
            None => println!("| {name} | {:.1} | {rows} | {} | | |", ms(&t.median), mb(t)),
        }
    }
    let quarry_geo = geomean(quarry.iter().map(|t| ms(&t.median)));
    let total_mb = quarry
        .iter()
        .map(|t| t.bytes_read)
        .sum::<Option<u64>>()
        .map_or_else(String::new, |b| format!("**{:.1}**", b as f64 / 1e6));
    match duckdb {
        Some(duck) => {
            let duck_geo = geomean(duck.iter().map(|t| ms(&t.median)));
            println!(
                "| **geomean** (MB: total) | **{quarry_geo:.1}** | | {total_mb} | **{duck_geo:.1}** | **{:.2}** |",
                quarry_geo / duck_geo.max(1e-6)
            );
        }
        None => println!("| **geomean** (MB: total) | **{quarry_geo:.1}** | | {total_mb} | | |"),
    }
}
