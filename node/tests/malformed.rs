//! Malformed input at the node's ports: random bytes, truncated frames,
//! absurd lengths and bad protocol codes at the PostgreSQL port (plain and
//! with TLS, whose handshake then gets them) and at the node-to-node RPC
//! port. The node must answer or end each connection within a deadline
//! (unless the input is a valid prefix it may wait on), stay up, and serve
//! other clients throughout, including while a client that never finishes
//! its startup holds a connection open.

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use rand10::{RngExt, SeedableRng};
use support::TestNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the node may take to end a connection it cannot make sense of.
const DEADLINE: Duration = Duration::from_secs(10);

/// A PostgreSQL startup-phase packet: length (including itself), then the
/// code and body.
fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    out.extend(code.to_be_bytes());
    out.extend(body);
    out
}

/// The inputs for the PostgreSQL port, each sent on a connection of its own.
fn pg_inputs(rng: &mut rand10::rngs::StdRng) -> Vec<(String, Vec<u8>)> {
    let startup = |params: &[u8]| packet(196_608, params);
    // A valid startup, then `message`.
    let after_startup = |message: &[u8]| {
        let mut bytes = startup(b"user\0quarry\0database\0quarry\0\0");
        bytes.extend(message);
        bytes
    };
    let mut inputs = vec![
        ("empty length".to_owned(), vec![0, 0, 0, 0]),
        (
            "length below a header".to_owned(),
            vec![0, 0, 0, 3, 1, 2, 3],
        ),
        (
            "huge startup length".to_owned(),
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        ),
        (
            "negative startup length".to_owned(),
            vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
        ),
        (
            "protocol version 9.9".to_owned(),
            packet(0x0009_0009, b"user\0x\0\0"),
        ),
        ("GSSENCRequest".to_owned(), packet(80_877_104, b"")),
        (
            "CancelRequest of nobody".to_owned(),
            packet(80_877_102, &[0, 0, 0, 1, 0, 0, 0, 2]),
        ),
        (
            "startup without terminator".to_owned(),
            startup(b"user\0quarry"),
        ),
        (
            "startup cut short".to_owned(),
            startup(b"user\0quarry\0\0")[..10].to_vec(),
        ),
        (
            "startup with odd parameters".to_owned(),
            startup(b"user\0\0\0\0\0"),
        ),
        ("SSLRequest then garbage".to_owned(), {
            let mut bytes = packet(80_877_103, b"");
            bytes.extend(b"\x16\x03\x01\xff\xffnot a client hello at all");
            bytes
        }),
        (
            "startup then a huge message".to_owned(),
            after_startup(b"Q\x7f\xff\xff\xffSELECT 1"),
        ),
        (
            "startup then an unknown message".to_owned(),
            after_startup(b"\xee\0\0\0\x08abcd"),
        ),
        (
            "startup then a short Parse".to_owned(),
            after_startup(b"P\0\0\0\x06s"),
        ),
    ];
    for round in 0..24 {
        let len = rng.random_range(1..4096);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        inputs.push((format!("random bytes #{round} ({len})"), bytes));
    }
    inputs
}

/// The inputs for the RPC port (length-delimited postcard frames).
fn rpc_inputs(rng: &mut rand10::rngs::StdRng) -> Vec<(String, Vec<u8>)> {
    let mut inputs = vec![
        (
            "frame over the limit".to_owned(),
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        ("frame cut short".to_owned(), vec![0, 0, 0, 100, 1, 2, 3]),
        ("empty frame".to_owned(), vec![0, 0, 0, 0]),
        (
            "wrong wire version".to_owned(),
            vec![0, 0, 0, 3, 0xee, 0, 0],
        ),
    ];
    for round in 0..16 {
        let len = rng.random_range(1..2048);
        let mut frame = (len as u32).to_be_bytes().to_vec();
        let mut body = vec![0u8; len];
        rng.fill(&mut body[..]);
        frame.extend(body);
        inputs.push((format!("random frame #{round} ({len})"), frame));
    }
    inputs
}

/// Sends `bytes` to `port`; returns `what` when the node neither answers
/// nor ends the connection within [`DEADLINE`] and the input is not a valid
/// prefix it may wait on for more (`may_wait`).
async fn send(port: u16, what: &str, bytes: &[u8], may_wait: bool) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot connect: {e}"));
    // The node may close before reading everything: a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let mut sink = vec![0u8; 64 * 1024];
    // The node answers (an error, a refusal, the next protocol step) or
    // ends the connection.
    let answered = tokio::time::timeout(DEADLINE, stream.read(&mut sink)).await;
    (answered.is_err() && !may_wait).then(|| what.to_owned())
}

async fn still_serves(node: &TestNode, after: &str) {
    let client = tokio::time::timeout(DEADLINE, node.client())
        .await
        .unwrap_or_else(|_| panic!("no connection within {DEADLINE:?} after {after}"));
    let row = client.query_one("SELECT 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i64>(0), 42, "after {after}");
}

/// Inputs the node may rightly wait on for more bytes (a valid prefix), up
/// to pgwire's startup timeout.
fn may_wait(what: &str) -> bool {
    what.starts_with("startup cut short")
        || what.starts_with("startup without terminator")
        || what.starts_with("frame cut short")
        || what.starts_with("random")
}

#[tokio::test]
async fn malformed_input_at_the_ports_ends_those_connections_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let mut node = support::start_with_tls(&dir.path().join("data"), &certs, &["localhost"]).await;
    // A client that connects and says nothing holds its connection while
    // everything else goes on.
    let silent = TcpStream::connect(("127.0.0.1", node.pg_port))
        .await
        .expect("connect");
    let mut rng = rand10::rngs::StdRng::seed_from_u64(0x5eed_0017);
    let pg = pg_inputs(&mut rng);
    let rpc = rpc_inputs(&mut rng);
    let mut sends = Vec::new();
    for (what, bytes) in &pg {
        sends.push(send(node.pg_port, what, bytes, may_wait(what)));
    }
    for (what, bytes) in &rpc {
        sends.push(send(node.listen_port, what, bytes, may_wait(what)));
    }
    // All at once, as a flood would come.
    let held: Vec<String> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        held.is_empty(),
        "the node kept these connections open past {DEADLINE:?}: {held:?}"
    );
    still_serves(&node, "the malformed inputs").await;
    drop(silent);
    // It still shuts down cleanly and starts again.
    assert!(node.terminate().success(), "{}", node.log());
    node.restart().await;
    still_serves(&node, "a restart").await;
}
