//! `quarry load PATH... --table schema.table`: files on the client's
//! machine (Parquet, CSV with a header line, NDJSON; directories are read
//! whole) sent to a node through the streaming API (`docs/INGESTION.md`) as
//! Arrow IPC batches with offsets. The channel is named after the files
//! (paths, sizes, modification times), so a load that was interrupted and
//! is run again resumes at the channel's next offset: each row once. The
//! channel is pending: its rows become visible together when the load
//! commits it at the end, and a load the node refuses (a bad row past
//! `--max-bad-rows`) discards it, so nothing of a failed load is seen.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use http_body_util::{BodyExt, Full};

/// The files' format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header line naming the columns.
    Csv,
    /// Newline-delimited JSON objects.
    Ndjson,
}

impl LoadFormat {
    /// The format of `path` by its extension (the one before `.gz` or
    /// `.zst` for a compressed file).
    fn of(path: &Path) -> Option<LoadFormat> {
        let path = match Compression::of(path) {
            Compression::None => path,
            _ => Path::new(path.file_stem()?),
        };
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(LoadFormat::Parquet),
            "csv" => Some(LoadFormat::Csv),
            "ndjson" | "jsonl" | "json" => Some(LoadFormat::Ndjson),
            _ => None,
        }
    }
}

/// How a CSV or NDJSON file is compressed, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    /// `.gz` (RFC 1952; concatenated members read as one stream).
    Gzip,
    /// `.zst` (RFC 8878).
    Zstd,
}

impl Compression {
    fn of(path: &Path) -> Compression {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("gz" | "gzip") => Compression::Gzip,
            Some("zst" | "zstd") => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The decompressed bytes of `file`.
    fn reader(self, file: std::fs::File) -> anyhow::Result<Box<dyn std::io::Read>> {
        Ok(match self {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        })
    }
}

/// What `quarry load` is asked to do.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// Files and directories.
    pub paths: Vec<PathBuf>,
    /// `schema.table`.
    pub table: String,
    /// The format; by each file's extension when None.
    pub format: Option<LoadFormat>,
    /// Create the table from the first file's schema if it does not exist.
    pub create: bool,
    /// The node's HTTP address, `http://host:port`.
    pub url: String,
    /// The node's PostgreSQL address (for `create`).
    pub pg: String,
    /// Rows per request.
    pub batch_rows: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Most rows that do not fit the table to skip (each listed in the
    /// summary) before the load fails (BigQuery's `max_bad_records`).
    pub max_bad_rows: u64,
    /// Channels sent at once, each with every n-th file.
    pub parallel: usize,
    /// How to log in.
    pub login: Login,
}

/// How `quarry load` logs in to a node that asks for it (not `--insecure`):
/// over HTTPS, HTTP Basic with `user` and `password`, or a bearer `token`;
/// the PostgreSQL connection of `--create` as `user` with `password`.
#[derive(Debug, Clone, Default)]
pub struct Login {
    /// The role [default: quarry].
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// An access token (CREATE ACCESS TOKEN), instead of the password.
    pub token: Option<String>,
    /// A PEM file of the CA certificates to trust for HTTPS and TLS.
    pub ca: Option<PathBuf>,
}

impl Login {
    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("quarry")
    }

    /// The `Authorization` header's value, if there are credentials.
    fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        if let Some(token) = &self.token {
            return Some(format!("Bearer {token}"));
        }
        let password = self.password.as_ref()?;
        let pair = format!("{}:{password}", self.user());
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    }

    /// A TLS client configuration trusting the CA certificates of `ca`
    /// (none without it: an https:// URL then fails its certificate check).
    fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("the CA certificates in {}", ca.display()))?
            {
                roots.add(cert?)?;
            }
        }
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
    }

    /// A PostgreSQL connection to `pg` (HOST:PORT) as this login: over TLS
    /// when a CA is given.
    pub(crate) async fn connect(&self, pg: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (host, port) = pg
            .rsplit_once(':')
            .with_context(|| format!("{pg} is not HOST:PORT"))?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(
                port.parse()
                    .with_context(|| format!("{pg} is not HOST:PORT"))?,
            )
            .user(self.user())
            .dbname("quarry")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let client = match &self.ca {
            Some(_) => {
                let tls = self.client_config()?;
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .await
                    .with_context(|| format!("cannot connect to the node at {pg}"))?;
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .with_context(|| format!("cannot connect to the node at {pg}"))?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }

    /// An HTTP client: HTTPS trusting the CA when one is given, plain
    /// HTTP otherwise.
    fn http(&self) -> anyhow::Result<HttpClient> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.client_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        )
    }
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSummary {
    /// Files (or generated parts) read.
    pub files: usize,
    /// Rows the channel held when the load started (an earlier, interrupted
    /// run's).
    pub resumed_at: u64,
    /// Rows sent by this run.
    pub rows_sent: u64,
    /// The channel's next offset at the end (every row of the files).
    pub next_offset: u64,
    /// The load's channels' common name (each is `<name>-<k>of<n>`).
    pub channel: String,
    /// The rows skipped as bad, each as `file F, row N: message (detail)`;
    /// counted in `rows_sent` (they took their offsets).
    pub skipped: Vec<String>,
}

/// Where a load's rows come from: a file, or a part of a generated TPC-H
/// table.
#[derive(Debug, Clone)]
enum Source {
    /// A file and its format.
    File(PathBuf, LoadFormat),
    /// Part `part` (1-based) of `parts` of TPC-H table `table` at
    /// `scale_factor`, generated by tpchgen-arrow.
    Tpch {
        table: &'static str,
        scale_factor: f64,
        part: i32,
        parts: i32,
    },
}

impl Source {
    /// How the summary and errors name it.
    fn name(&self) -> String {
        match self {
            Source::File(path, _) => format!("file {}", path.display()),
            Source::Tpch {
                table, part, parts, ..
            } => format!("TPC-H {table} part {part} of {parts}"),
        }
    }

    /// Its batches, `batch_rows` rows at most each.
    fn batches(&self, batch_rows: usize) -> anyhow::Result<(SchemaRef, Batches)> {
        match self {
            Source::File(path, format) => read_file(path, *format, batch_rows),
            Source::Tpch {
                table,
                scale_factor,
                part,
                parts,
            } => Ok(tpch_batches(
                table,
                *scale_factor,
                *part,
                *parts,
                batch_rows,
            )),
        }
    }
}

/// The generated rows of part `part` of `parts` of TPC-H table `table`.
fn tpch_batches(
    table: &str,
    scale_factor: f64,
    part: i32,
    parts: i32,
    batch_rows: usize,
) -> (SchemaRef, Batches) {
    use datafusion::arrow::record_batch::RecordBatchReader;
    use tpchgen::generators::{
        CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
        PartSuppGenerator, RegionGenerator, SupplierGenerator,
    };
    use tpchgen_arrow::{
        CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow,
        RegionArrow, SupplierArrow,
    };
    fn boxed(batches: impl RecordBatchReader + 'static) -> (SchemaRef, Batches) {
        let schema = batches.schema();
        (
            schema,
            Box::new(batches.map(|b| b.map_err(anyhow::Error::from))),
        )
    }
    let (sf, n) = (scale_factor, batch_rows);
    match table {
        "region" => {
            boxed(RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(n))
        }
        "nation" => {
            boxed(NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(n))
        }
        "supplier" => {
            boxed(SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(n))
        }
        "customer" => {
            boxed(CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(n))
        }
        "part" => boxed(PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(n)),
        "partsupp" => {
            boxed(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(n))
        }
        "orders" => boxed(OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(n)),
        _ => boxed(LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(n)),
    }
}

/// The files `paths` name, in order: directories' files sorted by name, a
/// glob pattern's matches (`*`, `?`, `[...]`, `**`) sorted by name.
fn files_of(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let text = path.to_string_lossy();
        if !path.exists() && text.contains(['*', '?', '[']) {
            let mut matched: Vec<PathBuf> = glob::glob(&text)
                .with_context(|| format!("the pattern {text}"))?
                .collect::<Result<_, _>>()?;
            matched.retain(|p| p.is_file());
            if matched.is_empty() {
                bail!("no file matches {text}");
            }
            matched.sort();
            files.extend(matched);
            continue;
        }
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && LoadFormat::of(p).is_some())
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        bail!("no files to load in {paths:?}");
    }
    Ok(files)
}

/// The channel of a load of `files` into `table`: the same files (paths,
/// sizes and modification times) give the same channel.
fn channel_of(table: &str, files: &[PathBuf]) -> anyhow::Result<String> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(table.as_bytes());
    for file in files {
        let meta = std::fs::metadata(file)?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let canonical = std::fs::canonicalize(file)?;
        digest.update(canonical.to_string_lossy().as_bytes());
        digest.update(&meta.len().to_le_bytes());
        digest.update(&modified.as_nanos().to_le_bytes());
    }
    let hash = digest.finish();
    let hex: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("quarry-load-{hex}"))
}

/// A file's batches, as they are read.
type Batches = Box<dyn Iterator<Item = anyhow::Result<RecordBatch>>>;

/// The batches of one file, `batch_rows` rows at most each.
fn read_file(
    path: &Path,
    format: LoadFormat,
    batch_rows: usize,
) -> anyhow::Result<(SchemaRef, Batches)> {
    let compression = Compression::of(path);
    let open = || -> anyhow::Result<Box<dyn std::io::Read>> {
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        compression.reader(file)
    };
    match format {
        LoadFormat::Parquet if compression != Compression::None => bail!(
            "{} is a compressed Parquet file; Parquet compresses its own pages, load it \
             uncompressed",
            path.display()
        ),
        LoadFormat::Parquet => {
            let builder =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(path).with_context(|| format!("{}", path.display()))?,
                )
                .with_context(|| format!("{} is not a Parquet file", path.display()))?;
            let reader = builder.with_batch_size(batch_rows).build()?;
            let schema = datafusion::arrow::record_batch::RecordBatchReader::schema(&reader);
            Ok((
                schema,
                Box::new(reader.map(|b| b.map_err(anyhow::Error::from))),
            ))
        }
        LoadFormat::Csv => {
            use datafusion::arrow::csv::reader::Format;
            let (schema, _) = Format::default()
                .with_header(true)
                .infer_schema(BufReader::new(open()?), Some(10_000))
                .with_context(|| format!("the columns of {}", path.display()))?;
            let schema = Arc::new(schema);
            let reader = datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(BufReader::new(open()?))?;
            Ok((
                schema,
                Box::new(reader.map(|b| b.map_err(anyhow::Error::from))),
            ))
        }
        LoadFormat::Ndjson => {
            let (schema, _) = datafusion::arrow::json::reader::infer_json_schema(
                BufReader::new(open()?),
                Some(10_000),
            )
            .with_context(|| format!("the keys of {}", path.display()))?;
            let schema = Arc::new(schema);
            let reader = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                .build(BufReader::new(open()?))?;
            Ok((
                schema,
                Box::new(reader.map(|b| b.map_err(anyhow::Error::from))),
            ))
        }
    }
}

/// The SQL type of an Arrow type, for `--create`.
fn sql_type(data_type: &DataType) -> Option<String> {
    Some(match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Decimal128(p, s) => format!("numeric({p}, {s})"),
        // NDJSON's arrays and objects, Parquet's LIST and groups, in
        // BigQuery's spelling (docs/NESTED.md); an array directly of
        // arrays has no Quarry type.
        DataType::List(element) | DataType::LargeList(element)
            if !matches!(
                element.data_type(),
                DataType::List(_) | DataType::LargeList(_)
            ) =>
        {
            format!("ARRAY<{}>", sql_type(element.data_type())?)
        }
        DataType::Struct(fields) if !fields.is_empty() => {
            let fields = fields
                .iter()
                .map(|f| {
                    let name = f.name().replace('"', "\"\"");
                    Some(format!("\"{name}\" {}", sql_type(f.data_type())?))
                })
                .collect::<Option<Vec<_>>>()?;
            format!("STRUCT<{}>", fields.join(", "))
        }
        _ => return None,
    })
}

/// `CREATE TABLE IF NOT EXISTS table (...)` for `schema`.
fn create_statement(table: &str, schema: &SchemaRef) -> anyhow::Result<String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let sql = sql_type(f.data_type()).with_context(|| {
                format!(
                    "column \"{}\" is of type {}, which Quarry cannot hold yet",
                    f.name(),
                    f.data_type()
                )
            })?;
            Ok(format!("\"{}\" {sql}", f.name().replace('"', "\"\"")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {table} ({})",
        columns.join(", ")
    ))
}

/// `batch` as an Arrow IPC stream.
fn ipc(batch: &RecordBatch) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A request's status and JSON answer.
async fn request(
    client: &HttpClient,
    authorization: Option<&str>,
    method: hyper::Method,
    uri: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::CONTENT_TYPE, content_type);
    if let Some(authorization) = authorization {
        request = request.header(hyper::header::AUTHORIZATION, authorization);
    }
    let request = request.body(Full::new(body))?;
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .context("no answer in 120 s")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Why rows were not sent.
#[derive(Debug)]
enum SendError {
    /// The node refused them (a bad row, a table that does not fit): the
    /// load cannot go on.
    Refused(String),
    /// No node answered, or not in time: a rerun resumes.
    Unanswered(String),
    /// The body is past the node's limit (413): send fewer rows.
    TooLarge(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(why) | SendError::Unanswered(why) | SendError::TooLarge(why) => {
                f.write_str(why)
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Sends `body` at `offset` to the pending channel at `uri`, skipping up
/// to `max_bad_rows` bad rows, until it is held (or was): the channel's
/// next offset and the node's `skipped_rows`. A lost answer or a 503 is
/// retried with the same offset.
async fn send(
    client: &HttpClient,
    authorization: Option<&str>,
    uri: &str,
    offset: u64,
    max_bad_rows: u64,
    body: Bytes,
) -> Result<(u64, Vec<serde_json::Value>), SendError> {
    let uri = format!("{uri}/rows?offset={offset}&pending=true&max_bad_rows={max_bad_rows}");
    let mut last = String::new();
    for attempt in 0..20u32 {
        match request(
            client,
            authorization,
            hyper::Method::POST,
            &uri,
            "application/vnd.apache.arrow.stream",
            body.clone(),
        )
        .await
        {
            Ok((status @ (200 | 409), answer)) if answer["next_offset"].is_u64() => {
                let skipped = match (status, answer["skipped_rows"].as_array()) {
                    (200, Some(rows)) => rows.clone(),
                    _ => Vec::new(),
                };
                return Ok((answer["next_offset"].as_u64().unwrap_or(offset), skipped));
            }
            Ok((413, answer)) => {
                return Err(SendError::TooLarge(format!(
                    "rows {offset}..: 413 {answer}"
                )));
            }
            Ok((status @ (429 | 503 | 500..), answer)) => last = format!("{status} {answer}"),
            Ok((status, answer)) => {
                return Err(SendError::Refused(format!(
                    "rows {offset}..: {status} {answer}"
                )));
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
    }
    Err(SendError::Unanswered(format!(
        "rows {offset}..: no answer after 20 attempts ({last})"
    )))
}

/// Posts `body` (JSON) to `uri` (a commit, or a DELETE discarding a
/// channel) until a node answers: its status and answer.
async fn end_channel(
    client: &HttpClient,
    authorization: Option<&str>,
    method: hyper::Method,
    uri: &str,
    body: Option<Bytes>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut last = String::new();
    for attempt in 0..20u32 {
        match request(
            client,
            authorization,
            method.clone(),
            uri,
            "application/json",
            body.clone().unwrap_or_default(),
        )
        .await
        {
            Ok((status @ (429 | 503 | 500..), answer)) => last = format!("{status} {answer}"),
            Ok(answer) => return Ok(answer),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
    }
    bail!("{method} {uri}: no answer after 20 attempts ({last})")
}

/// The rows of the node's `skipped_rows` for a request whose first row is
/// row `first_row` of `source` (as [`Source::name`] names it), as the
/// summary lists them.
fn skipped_lines(source: &str, first_row: u64, skipped: &[serde_json::Value]) -> Vec<String> {
    skipped
        .iter()
        .map(|bad| {
            let row = first_row + bad["row"].as_u64().unwrap_or(1) - 1;
            let message = bad["message"].as_str().unwrap_or("a bad row");
            match bad["detail"].as_str() {
                Some(detail) => {
                    format!("{source}, row {row}: {message} ({detail} of the request)")
                }
                None => format!("{source}, row {row}: {message}"),
            }
        })
        .collect()
}

/// Runs a load.
///
/// # Errors
/// A file that cannot be read, a table that does not exist (without
/// `create`), a row the node refuses (400, with the node's message), or a
/// node that does not answer.
pub async fn load(request_: &LoadRequest) -> anyhow::Result<LoadSummary> {
    let files = files_of(&request_.paths)?;
    let channel = channel_of(&request_.table, &files)?;
    let files = files
        .into_iter()
        .map(|path| {
            let format = request_
                .format
                .or_else(|| LoadFormat::of(&path))
                .with_context(|| format!("the format of {} (give --format)", path.display()))?;
            Ok((path, format))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if request_.create {
        let (schema, _) = read_file(&files[0].0, files[0].1, 1)?;
        let statement = create_statement(&request_.table, &schema)?;
        let client = request_.login.connect(&request_.pg).await?;
        client
            .batch_execute(&statement)
            .await
            .with_context(|| statement.clone())?;
    }
    let sources = files
        .into_iter()
        .map(|(path, format)| Source::File(path, format))
        .collect();
    send_sources(request_, channel, sources).await
}

/// Sends the rows of `sources` to `request_.table` through pending
/// channels named `<channel>-<k>of<n>` (resuming each where it stands), and
/// commits them all in one snapshot; discards them when the node refuses
/// the load.
async fn send_sources(
    request_: &LoadRequest,
    channel: String,
    sources: Vec<Source>,
) -> anyhow::Result<LoadSummary> {
    let files = sources;
    let client = request_.login.http()?;
    let authorization = request_.login.authorization();
    let authorization = authorization.as_deref();
    let table_url = format!(
        "{}/v1/tables/{}",
        request_.url.trim_end_matches('/'),
        request_.table
    );
    // One pending channel per worker, each sending every `workers`-th
    // file; named with their number, so a rerun with as many workers
    // resumes each where it stands.
    let workers = request_.parallel.clamp(1, files.len());
    let channels: Vec<String> = (0..workers)
        .map(|k| format!("{channel}-{k}of{workers}"))
        .collect();
    let mut resumed = Vec::with_capacity(workers);
    for name in &channels {
        let uri = format!("{table_url}/channels/{name}");
        resumed.push(
            match request(
                &client,
                authorization,
                hyper::Method::GET,
                &uri,
                "text/plain",
                Bytes::new(),
            )
            .await?
            {
                (200, answer) => answer["next_offset"].as_u64().unwrap_or(0),
                (404, answer) if answer["error"]["code"] == "not_found" => 0,
                (status, answer) => bail!("{uri}: {status} {answer}"),
            },
        );
    }
    let resumed_at: u64 = resumed.iter().sum();
    eprintln!(
        "loading {} source(s) into {} through pending channels {}, from {resumed_at} rows sent before",
        files.len(),
        request_.table,
        channels.join(", ")
    );
    let bar = if request_.progress {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {human_pos} rows  {per_sec}  {elapsed}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_position(resumed_at);
    let budget = std::sync::atomic::AtomicU64::new(request_.max_bad_rows);
    let sent = futures::future::try_join_all(channels.iter().zip(&resumed).enumerate().map(
        |(k, (name, &from))| {
            let mine: Vec<Source> = files.iter().skip(k).step_by(workers).cloned().collect();
            let worker = Worker {
                client: &client,
                authorization,
                uri: format!("{table_url}/channels/{name}"),
                batch_rows: request_.batch_rows,
                budget: &budget,
                bar: &bar,
            };
            async move { worker.send_files(mine, from).await }
        },
    ))
    .await;
    bar.finish_and_clear();
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => {
            // A load that cannot go on is discarded, rows and all; one a
            // node did not answer stays pending for a rerun to resume.
            if !matches!(
                e.downcast_ref::<SendError>(),
                Some(SendError::Unanswered(_))
            ) {
                let mut discarded = true;
                for name in &channels {
                    let uri = format!("{table_url}/channels/{name}");
                    let answer =
                        end_channel(&client, authorization, hyper::Method::DELETE, &uri, None)
                            .await;
                    discarded &= matches!(answer, Ok((200 | 404, _)));
                }
                if discarded {
                    return Err(e.context("nothing was loaded (the rows sent were discarded)"));
                }
            }
            return Err(e.context(format!(
                "the rows sent wait in pending channels {}: run the same load again to resume",
                channels.join(", ")
            )));
        }
    };
    let written: Vec<String> = channels
        .iter()
        .zip(&sent)
        .filter(|(_, (next_offset, _, _))| *next_offset > 0)
        .map(|(name, _)| name.clone())
        .collect();
    if !written.is_empty() {
        let body = serde_json::json!({"channels": written}).to_string();
        match end_channel(
            &client,
            authorization,
            hyper::Method::POST,
            &format!("{table_url}/commit"),
            Some(Bytes::from(body)),
        )
        .await?
        {
            (200, _) => {}
            (status, answer) => bail!("committing channels {written:?}: {status} {answer}"),
        }
    }
    Ok(LoadSummary {
        files: files.len(),
        resumed_at,
        rows_sent: sent.iter().map(|s| s.1).sum(),
        next_offset: sent.iter().map(|s| s.0).sum(),
        channel,
        skipped: sent.into_iter().flat_map(|s| s.2).collect(),
    })
}

/// `quarry load tpch --via stream`: creates schema `schema` and the eight
/// TPC-H tables (`quarry_client::tpch::TABLES`) on the node, and sends each
/// table's rows, generated as Arrow batches by tpchgen-arrow in `parts`
/// parts (dbgen's `-C`), through pending channels committed at once per
/// table (named `quarry-load-tpch-sf<sf>-<parts>p-<k>of<n>`). A table that
/// exists with no pending channel of the load is left as it is; one a
/// load was interrupted in resumes. The tables loaded, each with its
/// summary and time.
///
/// # Errors
/// As [`load`], and DDL the node refuses.
pub async fn load_tpch(
    request_: &LoadRequest,
    schema: &str,
    scale_factor: f64,
    parts: i32,
) -> anyhow::Result<Vec<(String, LoadSummary, Duration)>> {
    anyhow::ensure!(scale_factor > 0.0, "the scale factor must be positive");
    let pg = request_.login.connect(&request_.pg).await?;
    pg.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .context("CREATE SCHEMA failed")?;
    let http = request_.login.http()?;
    let authorization = request_.login.authorization();
    let mut loaded = Vec::new();
    for (table, columns) in quarry_client::tpch::TABLES {
        let channel = format!("quarry-load-tpch-sf{scale_factor}-{parts}p");
        let parts = quarry_client::tpch::parts_of(table, parts);
        if !quarry_client::tpch::table_exists(&pg, schema, table).await? {
            pg.batch_execute(&format!("CREATE TABLE {schema}.{table} ({columns})"))
                .await
                .with_context(|| format!("CREATE TABLE {schema}.{table} failed"))?;
        } else {
            let workers = request_.parallel.clamp(1, parts as usize);
            let mut pending = false;
            for k in 0..workers {
                let uri = format!(
                    "{}/v1/tables/{schema}.{table}/channels/{channel}-{k}of{workers}",
                    request_.url.trim_end_matches('/')
                );
                let (status, answer) = request(
                    &http,
                    authorization.as_deref(),
                    hyper::Method::GET,
                    &uri,
                    "text/plain",
                    Bytes::new(),
                )
                .await?;
                pending |= status == 200 && answer["pending"] == true;
            }
            if !pending {
                eprintln!("{schema}.{table} is present; not loaded again");
                continue;
            }
        }
        let sources = (1..=parts)
            .map(|part| Source::Tpch {
                table,
                scale_factor,
                part,
                parts,
            })
            .collect();
        let started = std::time::Instant::now();
        let table_request = LoadRequest {
            table: format!("{schema}.{table}"),
            ..request_.clone()
        };
        let summary = send_sources(&table_request, channel, sources).await?;
        loaded.push((table.to_string(), summary, started.elapsed()));
    }
    Ok(loaded)
}

/// Most bytes of one request's Arrow body; a batch past it is split.
const REQUEST_BYTES_MAX: usize = 32 << 20;

/// One sender of a load: its files to one pending channel.
struct Worker<'a> {
    client: &'a HttpClient,
    authorization: Option<&'a str>,
    /// The channel's URI.
    uri: String,
    batch_rows: usize,
    /// Bad rows the load may still skip, shared by its workers.
    budget: &'a std::sync::atomic::AtomicU64,
    bar: &'a indicatif::ProgressBar,
}

/// A batch read, where it starts in its source, and the source's name.
type ReadBatch = (String, u64, RecordBatch);

impl Worker<'_> {
    /// Sends the rows of `sources` past `resumed_at` (rows sent before) to
    /// the channel: its next offset, the rows this run sent and the bad
    /// rows skipped. Sources are read on a thread of their own, a batch
    /// ahead of the requests.
    async fn send_files(
        &self,
        sources: Vec<Source>,
        resumed_at: u64,
    ) -> anyhow::Result<(u64, u64, Vec<String>)> {
        let (out, mut next) = tokio::sync::mpsc::channel::<anyhow::Result<ReadBatch>>(2);
        let batch_rows = self.batch_rows;
        // Ends when the receiver goes (a failed request).
        tokio::task::spawn_blocking(move || {
            let mut position = 0u64;
            for source in sources {
                let name = source.name();
                let read = source.batches(batch_rows).and_then(|(_, batches)| {
                    let mut in_source = 0u64;
                    for batch in batches {
                        let batch = batch.with_context(|| format!("reading {name}"))?;
                        let rows = batch.num_rows() as u64;
                        let (start, first) = (position, in_source);
                        position += rows;
                        in_source += rows;
                        if position <= resumed_at {
                            continue;
                        }
                        // Part of the batch may be in the channel already.
                        let skip = resumed_at.saturating_sub(start);
                        let batch = batch.slice(skip as usize, (rows - skip) as usize);
                        let read = (name.clone(), first + skip + 1, batch);
                        if out.blocking_send(Ok(read)).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(())
                });
                if let Err(e) = read {
                    let _ = out.blocking_send(Err(e));
                    return;
                }
            }
        });
        let mut next_offset = resumed_at;
        let mut rows_sent = 0u64;
        let mut skipped = Vec::new();
        while let Some(read) = next.recv().await {
            let (file, first_row, batch) = read?;
            // A batch too large for the node goes as halves.
            let mut parts = vec![(first_row, batch)];
            while let Some((first_row, batch)) = parts.pop() {
                let body = ipc(&batch)?;
                let rows = batch.num_rows();
                if body.len() > REQUEST_BYTES_MAX && rows > 1 {
                    let half = rows / 2;
                    parts.push((first_row + half as u64, batch.slice(half, rows - half)));
                    parts.push((first_row, batch.slice(0, half)));
                    continue;
                }
                let budget = self.budget.load(std::sync::atomic::Ordering::Relaxed);
                let sent = next_offset;
                let answer = send(
                    self.client,
                    self.authorization,
                    &self.uri,
                    next_offset,
                    budget,
                    Bytes::from(body),
                )
                .await;
                let (next, bad) = match answer {
                    Err(SendError::TooLarge(_)) if rows > 1 => {
                        let half = rows / 2;
                        parts.push((first_row + half as u64, batch.slice(half, rows - half)));
                        parts.push((first_row, batch.slice(0, half)));
                        continue;
                    }
                    other => other.with_context(|| format!("loading {file}"))?,
                };
                if next != sent + rows as u64 {
                    bail!(
                        "channel {} moved from {sent} to {next}, not past the {rows} rows sent: \
                         is another load writing it?",
                        self.uri
                    );
                }
                next_offset = next;
                self.budget
                    .fetch_sub(bad.len() as u64, std::sync::atomic::Ordering::Relaxed);
                skipped.extend(skipped_lines(&file, first_row, &bad));
                rows_sent += rows as u64;
                self.bar.inc(rows as u64);
            }
        }
        Ok((next_offset, rows_sent, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn create_maps_arrow_types_and_names_what_it_cannot() {
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("id", DataType::Int64, false),
            datafusion::arrow::datatypes::Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            datafusion::arrow::datatypes::Field::new("price", DataType::Decimal128(12, 2), true),
        ]));
        assert_eq!(
            create_statement("s.t", &schema).unwrap(),
            "CREATE TABLE IF NOT EXISTS s.t (\"id\" bigint, \"at\" timestamptz, \"price\" numeric(12, 2))"
        );
        // NDJSON's arrays and objects: ARRAY and STRUCT columns.
        let nested = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "tags",
                DataType::new_list(DataType::Utf8, true),
                true,
            ),
            datafusion::arrow::datatypes::Field::new(
                "actor",
                DataType::Struct(
                    vec![
                        datafusion::arrow::datatypes::Field::new("login", DataType::Utf8, true),
                        datafusion::arrow::datatypes::Field::new("id", DataType::Int64, true),
                    ]
                    .into(),
                ),
                true,
            ),
        ]));
        assert_eq!(
            create_statement("t", &nested).unwrap(),
            "CREATE TABLE IF NOT EXISTS t (\"tags\" ARRAY<text>, \"actor\" STRUCT<\"login\" text, \"id\" bigint>)"
        );
        // An array directly of arrays has no Quarry type.
        let grid = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "cells",
                DataType::new_list(DataType::new_list(DataType::Int64, true), true),
                true,
            ),
        ]));
        let error = create_statement("t", &grid).unwrap_err().to_string();
        assert!(error.contains("column \"cells\""), "{error}");
    }

    #[test]
    fn compressed_files_are_known_by_their_two_extensions() {
        let of = |name: &str| {
            (
                LoadFormat::of(Path::new(name)),
                Compression::of(Path::new(name)),
            )
        };
        assert_eq!(of("a.csv.gz"), (Some(LoadFormat::Csv), Compression::Gzip));
        assert_eq!(
            of("a.JSONL.zst"),
            (Some(LoadFormat::Ndjson), Compression::Zstd)
        );
        assert_eq!(
            of("a.parquet"),
            (Some(LoadFormat::Parquet), Compression::None)
        );
        assert_eq!(of("a.gz"), (None, Compression::Gzip));
        assert_eq!(of("a.txt"), (None, Compression::None));
    }

    #[test]
    fn the_same_files_make_the_same_channel() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        std::fs::write(&a, "x\n1\n").unwrap();
        let one = channel_of("t", std::slice::from_ref(&a)).unwrap();
        assert_eq!(one, channel_of("t", std::slice::from_ref(&a)).unwrap());
        assert_ne!(one, channel_of("u", std::slice::from_ref(&a)).unwrap());
        std::fs::write(&a, "x\n1\n2\n").unwrap();
        assert_ne!(one, channel_of("t", &[a]).unwrap());
    }
}
