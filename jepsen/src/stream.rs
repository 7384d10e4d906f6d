//! The stream workload: each client is a writer of its own channel of the
//! streaming API (`POST /v1/tables/public.jepsen_stream/channels/{c}/rows
//! ?offset=N`, docs/INGESTION.md), sending batches of rows `(channel, seq)`
//! with `seq` = the channel offset of the row, each request to a random
//! node, retrying a batch whose answer was lost at the same offset; now and
//! then it reads every channel's rows with SQL through a random node.
//!
//! The checker proves, per channel:
//! - *duplicate*: no read sees a row twice (count = distinct count);
//! - *gap*: every read sees a prefix `0..count` (min 0, max count - 1);
//! - *lost*: a read sees at least every row acknowledged (200, or 409 for a
//!   retry whose first attempt committed) before the read began — the
//!   final reads, after healing, included;
//! - *went back*: a read sees no fewer rows than a read that ended before it
//!   began (no row visible and later invisible);
//! - *unexpected*: no read sees a row no writer sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::Rng;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::cluster::connect;
use crate::history::{Op, OpType};

/// The table, in schema `public`.
pub const TABLE: &str = "jepsen_stream";

/// Its definition.
pub const DDL: &str = "create table jepsen_stream (channel text not null, seq bigint not null)";

/// The SQL of one read: per channel, rows, distinct offsets, first and last.
pub const READ: &str = "select channel, count(*), count(distinct seq), min(seq), max(seq) \
                        from jepsen_stream group by channel";

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTPS client that trusts the cluster's CA (`ca`, PEM): the nodes'
/// HTTP listeners serve HTTPS only once they have a certificate.
fn https_client(ca: &std::path::Path) -> anyhow::Result<HttpClient> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector),
    )
}

/// One node as the workload reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Its PostgreSQL address.
    pub pg: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// Records an event of the history.
pub type Record<'a> = &'a (dyn Fn(u64, OpType, &str, Value) + Send + Sync);

/// The rows `offset .. offset + rows` of `channel`, as NDJSON.
fn batch(channel: &str, offset: u64, rows: u64) -> Bytes {
    let mut body = String::new();
    for seq in offset..offset + rows {
        body.push_str(&json!({"channel": channel, "seq": seq}).to_string());
        body.push('\n');
    }
    Bytes::from(body)
}

/// A read's answer: per channel, `[count, distinct, min, max]`.
pub async fn read(client: &Client) -> anyhow::Result<Value> {
    let rows = client.query(READ, &[]).await?;
    let mut channels = serde_json::Map::new();
    for row in rows {
        channels.insert(
            row.get::<_, String>(0),
            json!([
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3),
                row.get::<_, i64>(4)
            ]),
        );
    }
    Ok(Value::Object(channels))
}

/// How one POST ended: the status and the JSON answer.
async fn post(
    http: &HttpClient,
    node: SocketAddr,
    channel: &str,
    offset: u64,
    body: Bytes,
) -> anyhow::Result<(u16, Value)> {
    let request = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(format!(
            "https://{node}/v1/tables/public.{TABLE}/channels/{channel}/rows?offset={offset}"
        ))
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Full::new(body))?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// One client: the writer of channel `w{process}` (and an occasional
/// reader) until `until`; `ca` is the cluster's CA certificate.
///
/// # Errors
/// A CA file that cannot be read.
pub async fn client_loop(
    process: u64,
    nodes: Vec<Endpoint>,
    ca: &std::path::Path,
    timeout: Duration,
    until: Instant,
    record: Record<'_>,
) -> anyhow::Result<()> {
    let channel = format!("w{process}");
    let http = https_client(ca)?;
    let mut readers: Vec<Option<Client>> = nodes.iter().map(|_| None).collect();
    // The next offset, and the size of the batch to send there (kept for
    // a retry: the same rows at the same offset).
    let mut offset = 0u64;
    let mut pending: Option<u64> = None;
    while Instant::now() < until {
        let (node, reading) = {
            let mut rng = rand::rng();
            (rng.random_range(0..nodes.len()), rng.random_bool(0.2))
        };
        if reading {
            record(process, OpType::Invoke, "read", Value::Null);
            let attempt = async {
                if readers[node].is_none() {
                    readers[node] = Some(connect(nodes[node].pg, timeout).await?);
                }
                read(readers[node].as_ref().expect("connected above")).await
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(v)) => record(process, OpType::Ok, "read", v),
                _ => {
                    // A read changes nothing: a failed one is a `fail`.
                    readers[node] = None;
                    record(process, OpType::Fail, "read", Value::Null);
                }
            }
            continue;
        }
        let rows = *pending.get_or_insert_with(|| rand::rng().random_range(1..=50));
        let value = json!({"channel": channel, "offset": offset, "rows": rows});
        record(process, OpType::Invoke, "append", value.clone());
        let body = batch(&channel, offset, rows);
        let answer = tokio::time::timeout(
            timeout,
            post(&http, nodes[node].http, &channel, offset, body),
        )
        .await;
        let mut done = value.clone();
        done["node"] = json!(node);
        match answer {
            // Written now (200), or by an earlier attempt whose answer was
            // lost (409 with the channel past this batch).
            Ok(Ok((status @ (200 | 409), answer)))
                if answer["next_offset"].as_u64() >= Some(offset + rows) =>
            {
                done["status"] = json!(status);
                done["next_offset"] = answer["next_offset"].clone();
                record(process, OpType::Ok, "append", done);
                offset += rows;
                pending = None;
            }
            // Refused: nothing written. A gap here means the channel lost
            // acknowledged rows; the reads will show it. Resume where the
            // node says.
            Ok(Ok((status @ (400..=499), answer))) => {
                done["status"] = json!(status);
                done["error"] = answer.clone();
                record(process, OpType::Fail, "append", done);
                if let Some(next) = answer["next_offset"].as_u64() {
                    offset = next;
                }
                pending = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Unknown: a timeout, a lost connection, a 5xx. Retry the same
            // rows at the same offset.
            other => {
                done["error"] = json!(match other {
                    Ok(Ok((status, answer))) => format!("{status} {answer}"),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "timed out".to_owned(),
                });
                record(process, OpType::Info, "append", done);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// What the stream checker found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReport {
    /// Appends acknowledged, and their rows.
    pub acknowledged: u64,
    /// Rows acknowledged.
    pub rows_acknowledged: u64,
    /// Appends of unknown outcome.
    pub unknown: u64,
    /// Successful reads.
    pub reads: u64,
    /// Anomalies, each described, by kind (duplicate, gap, lost, went
    /// back, unexpected).
    pub anomalies: BTreeMap<&'static str, Vec<String>>,
}

impl StreamReport {
    /// No anomaly, and at least one read to judge by.
    pub fn valid(&self) -> bool {
        self.reads > 0 && self.anomalies.is_empty()
    }
}

/// A read's per-channel `(count, distinct, min, max)`.
fn counts_of(value: &Value) -> BTreeMap<String, [i64; 4]> {
    value
        .as_object()
        .map(|channels| {
            channels
                .iter()
                .filter_map(|(c, v)| {
                    let n = |i: usize| v.get(i).and_then(Value::as_i64);
                    Some((c.clone(), [n(0)?, n(1)?, n(2)?, n(3)?]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a stream history (see the module's documentation).
pub fn check(history: &[Op]) -> StreamReport {
    let mut report = StreamReport::default();
    // The end of the rows any writer sent, per channel.
    let mut attempted: BTreeMap<String, i64> = BTreeMap::new();
    for op in history {
        if op.f == "append" && op.op_type == OpType::Invoke {
            let channel = op.value["channel"].as_str().unwrap_or_default().to_owned();
            let end =
                op.value["offset"].as_i64().unwrap_or(0) + op.value["rows"].as_i64().unwrap_or(0);
            let e = attempted.entry(channel).or_default();
            *e = (*e).max(end);
        }
    }
    // What was acknowledged, and the most any read has shown, so far; at a
    // read's invocation, copies of both to judge it by when it completes.
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut shown: BTreeMap<String, i64> = BTreeMap::new();
    type Bounds = (BTreeMap<String, i64>, BTreeMap<String, i64>);
    let mut open_reads: BTreeMap<u64, Bounds> = BTreeMap::new();
    let add = |report: &mut StreamReport, kind: &'static str, text: String| {
        let list = report.anomalies.entry(kind).or_default();
        if list.len() < 20 {
            list.push(text);
        }
    };
    for (index, op) in history.iter().enumerate() {
        match (op.f.as_str(), op.op_type) {
            ("append", OpType::Ok) => {
                report.acknowledged += 1;
                let rows = op.value["rows"].as_i64().unwrap_or(0);
                report.rows_acknowledged += rows as u64;
                let channel = op.value["channel"].as_str().unwrap_or_default().to_owned();
                let end = op.value["offset"].as_i64().unwrap_or(0) + rows;
                let e = acked.entry(channel).or_default();
                *e = (*e).max(end);
            }
            ("append", OpType::Info) => report.unknown += 1,
            ("read", OpType::Invoke) => {
                open_reads.insert(op.process, (acked.clone(), shown.clone()));
            }
            ("read", OpType::Fail | OpType::Info) => {
                open_reads.remove(&op.process);
            }
            ("read", OpType::Ok) => {
                report.reads += 1;
                let (acked_before, shown_before) =
                    open_reads.remove(&op.process).unwrap_or_default();
                let counts = counts_of(&op.value);
                for (channel, [count, distinct, min, max]) in &counts {
                    if count != distinct {
                        add(
                            &mut report,
                            "duplicate",
                            format!(
                                "read at event {index}: channel {channel} has {count} rows, {distinct} distinct"
                            ),
                        );
                    }
                    if *min != 0 || *max + 1 != *distinct {
                        add(
                            &mut report,
                            "gap",
                            format!(
                                "read at event {index}: channel {channel} holds offsets {min}..={max} in {distinct} rows"
                            ),
                        );
                    }
                    if *count > attempted.get(channel).copied().unwrap_or(0) {
                        add(
                            &mut report,
                            "unexpected",
                            format!(
                                "read at event {index}: channel {channel} has {count} rows, no writer sent past {}",
                                attempted.get(channel).copied().unwrap_or(0)
                            ),
                        );
                    }
                }
                let seen = |c: &str| counts.get(c).map(|v| v[1]).unwrap_or(0);
                for (channel, end) in &acked_before {
                    if seen(channel) < *end {
                        add(
                            &mut report,
                            "lost",
                            format!(
                                "read at event {index}: channel {channel} shows {} rows, {end} were acknowledged before the read began",
                                seen(channel)
                            ),
                        );
                    }
                }
                for (channel, before) in &shown_before {
                    if seen(channel) < *before {
                        add(
                            &mut report,
                            "went back",
                            format!(
                                "read at event {index}: channel {channel} shows {} rows, an earlier read showed {before}",
                                seen(channel)
                            ),
                        );
                    }
                }
                for channel in counts.keys() {
                    let e = shown.entry(channel.clone()).or_default();
                    *e = (*e).max(seen(channel));
                }
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history of JSON events, timed by their order.
    fn history<S: AsRef<str>>(events: &[S]) -> Vec<Op> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut event: Value = serde_json::from_str(e.as_ref()).expect("an event");
                event["time"] = json!(i);
                serde_json::from_value(event).expect("an op")
            })
            .collect()
    }

    #[test]
    fn a_correct_history_is_valid() {
        let report = check(&history(&[
            r#"{"process":0,"type":"invoke","f":"append","value":{"channel":"w0","offset":0,"rows":3}}"#,
            r#"{"process":0,"type":"info","f":"append","value":{"channel":"w0","offset":0,"rows":3}}"#,
            r#"{"process":0,"type":"invoke","f":"append","value":{"channel":"w0","offset":0,"rows":3}}"#,
            r#"{"process":0,"type":"ok","f":"append","value":{"channel":"w0","offset":0,"rows":3,"status":409}}"#,
            r#"{"process":1,"type":"invoke","f":"read","value":null}"#,
            r#"{"process":1,"type":"ok","f":"read","value":{"w0":[3,3,0,2]}}"#,
            r#"{"process":0,"type":"invoke","f":"append","value":{"channel":"w0","offset":3,"rows":2}}"#,
            r#"{"process":1,"type":"invoke","f":"read","value":null}"#,
            r#"{"process":1,"type":"ok","f":"read","value":{"w0":[5,5,0,4]}}"#,
            r#"{"process":0,"type":"ok","f":"append","value":{"channel":"w0","offset":3,"rows":2}}"#,
        ]));
        assert!(report.valid(), "{report:?}");
        assert_eq!(
            (
                report.acknowledged,
                report.rows_acknowledged,
                report.unknown
            ),
            (2, 5, 1)
        );
    }

    #[test]
    fn each_anomaly_is_found() {
        let cases: [(&str, &[&str]); 5] = [
            ("duplicate", &[r#"{"w0":[4,3,0,2]}"#]),
            ("gap", &[r#"{"w0":[2,2,0,2]}"#]),
            ("lost", &[r#"{"w0":[2,2,0,1]}"#]),
            ("went back", &[r#"{"w0":[3,3,0,2]}"#, r#"{"w0":[3,3,0,2]}"#]),
            ("unexpected", &[r#"{"w0":[9,9,0,8]}"#]),
        ];
        for (kind, reads) in cases {
            let mut events = vec![
                r#"{"process":0,"type":"invoke","f":"append","value":{"channel":"w0","offset":0,"rows":3}}"#.to_owned(),
                r#"{"process":0,"type":"ok","f":"append","value":{"channel":"w0","offset":0,"rows":3}}"#.to_owned(),
                r#"{"process":0,"type":"invoke","f":"append","value":{"channel":"w0","offset":3,"rows":1}}"#.to_owned(),
                r#"{"process":0,"type":"info","f":"append","value":{"channel":"w0","offset":3,"rows":1}}"#.to_owned(),
            ];
            if kind == "went back" {
                events.push(r#"{"process":1,"type":"invoke","f":"read","value":null}"#.to_owned());
                events.push(
                    r#"{"process":1,"type":"ok","f":"read","value":{"w0":[4,4,0,3]}}"#.to_owned(),
                );
            }
            for read in reads {
                events.push(r#"{"process":1,"type":"invoke","f":"read","value":null}"#.to_owned());
                events.push(format!(
                    r#"{{"process":1,"type":"ok","f":"read","value":{read}}}"#
                ));
            }
            let report = check(&history(&events));
            assert!(!report.valid(), "{kind}");
            assert!(report.anomalies.contains_key(kind), "{kind}: {report:?}");
        }
    }
}
