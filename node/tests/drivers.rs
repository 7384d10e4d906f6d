//! Client drivers other than tokio-postgres, run as their users run them.

#[path = "support/node.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

use support::TestNode;

#[tokio::test]
async fn psycopg_works_against_a_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/drivers/psycopg_smoke.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(node.pg_port.to_string())
        .output()
        .expect("python3 runs (.ci/run installs psycopg)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "psycopg smoke test failed:\n{text}"
    );
    assert!(text.contains("psycopg: ok"), "{text}");
}

/// tests/drivers/suite.py: every case runs against a real PostgreSQL and
/// against the node, and must pass on both.
#[tokio::test]
async fn the_driver_suite_passes_on_postgresql_and_quarry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/drivers/suite.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(node.pg_port.to_string())
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs (.ci/run installs psycopg)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "driver suite failed:\n{text}");
    assert!(
        text.contains("cases pass on PostgreSQL and Quarry"),
        "{text}"
    );
    println!("{text}");
}
