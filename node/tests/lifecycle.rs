//! Process lifecycle: crash durability, clean shutdown, data-dir locking,
//! corrupted data files, HTTP endpoints.

#[path = "support/node.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{TestNode, http_get, sqlstate};

#[tokio::test]
async fn acknowledged_inserts_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut node = TestNode::start(&data).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE acks (id BIGINT NOT NULL)")
        .await
        .expect("create");

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let client = node.client().await;
        let (acked, attempted) = (acked.clone(), attempted.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000i64 {
                let id = w * 1_000_000 + i;
                attempted.lock().expect("lock").insert(id);
                match client.execute("INSERT INTO acks VALUES ($1)", &[&id]).await {
                    Ok(_) => {
                        acked.lock().expect("lock").insert(id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
    let acked = acked.lock().expect("lock").clone();
    let attempted = attempted.lock().expect("lock").clone();
    assert!(
        acked.len() > 10,
        "too few inserts were acknowledged to test anything: {}",
        acked.len()
    );

    let node = TestNode::start(&data).await;
    let rows = node
        .client()
        .await
        .query("SELECT id FROM acks", &[])
        .await
        .expect("select");
    let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "acknowledged rows lost after kill -9: {lost:?}"
    );
    let unexpected: Vec<_> = present.difference(&attempted).collect();
    assert!(
        unexpected.is_empty(),
        "rows that were never inserted: {unexpected:?}"
    );
    assert_eq!(rows.len(), present.len(), "duplicated rows");
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_data_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut node = TestNode::start(&data).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2)")
        .await
        .expect("setup");
    let status = node.terminate();
    assert!(status.success(), "exit status {status}:\n{}", node.log());
    let node = TestNode::start(&data).await;
    let row = node
        .client()
        .await
        .query_one("SELECT sum(a) FROM t", &[])
        .await
        .expect("sum");
    assert_eq!(row.get::<_, i64>(0), 3);
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let _first = TestNode::start(&data).await;
    let mut second = TestNode::spawn(&data, &[]);
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        second.log().contains("in use by another quarry process"),
        "{}",
        second.log()
    );
}

/// Data files of the node, largest first.
fn data_files(node: &TestNode) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    files
}

#[tokio::test]
async fn a_flipped_byte_in_a_data_file_gives_xx001_never_wrong_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE t AS SELECT CAST(v AS BIGINT) AS v, CAST(v AS TEXT) AS s FROM generate_series(1, 50000) AS g(v)",
        )
        .await
        .expect("ctas");
    let files = data_files(&node);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&files[0], bytes).expect("write");

    let e = client
        .query("SELECT sum(v) FROM t", &[])
        .await
        .expect_err("corrupt");
    assert_eq!(sqlstate(&e), "XX001");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    let chunk = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("public.t"), "{message}");
    assert!(message.contains(&chunk), "{message}");

    // A missing file is reported the same way.
    std::fs::remove_file(&files[0]).expect("remove");
    let e = client
        // (max, not count: a count is answered from the snapshot's statistics)
        .query("SELECT max(s) FROM t", &[])
        .await
        .expect_err("missing");
    assert_eq!(sqlstate(&e), "XX001");
}

#[tokio::test]
async fn health_and_metrics_are_served_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The INSERT's file goes to a stripe, counted by the storage metrics.
    let node = TestNode::start_with(&dir.path().join("data"), &["--buffer-file-rows", "0"]).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .expect("setup");
    let health = http_get(&format!("http://127.0.0.1:{}/health", node.http_port)).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http_get(&format!("http://127.0.0.1:{}/ready", node.http_port)).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = http_get(&format!("http://127.0.0.1:{}/metrics", node.http_port)).await;
    assert!(
        metrics.contains("quarry_storage_chunk_written_bytes_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn chunks_of_a_copy_cut_by_kill_9_are_deleted_at_restart() {
    use bytes::Bytes;
    use futures::SinkExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Files in stripes: the COPY's chunks are on disk before its commit.
    let stripes_only = ["--buffer-file-rows", "0"];
    let mut node = TestNode::start_with(&data, &stripes_only).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE big (id BIGINT NOT NULL); INSERT INTO big VALUES (-1)")
        .await
        .expect("setup");
    let sink = client
        .copy_in::<_, Bytes>("COPY big FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    // More than one data file's worth of rows: whole files are written before the end.
    let rows: String = (0..1_100_000).map(|i| format!("{i}\n")).collect();
    sink.send(Bytes::from(rows)).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(data.join("chunks"))
        .expect("chunks")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the COPY wrote no data file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill9();

    let node = TestNode::start_with(&data, &stripes_only).await;
    let count: i64 = node
        .client()
        .await
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
    let chunks = std::fs::read_dir(data.join("chunks"))
        .expect("chunks")
        .count();
    assert_eq!(chunks, 1, "only the committed data file remains");
}

#[tokio::test]
async fn a_config_file_sets_what_flags_do_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = dir.path().join("quarry.toml");
    std::fs::write(
        &config,
        format!("pg_listen = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 1\ninsecure = true\n"),
    )
    .expect("config");
    // The harness passes --pg-listen; here the file must set it, so start by hand.
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-listen", "127.0.0.1:0"])
        .stderr(log)
        .spawn()
        .expect("spawn");
    let conn = format!("host=127.0.0.1 port={port} user=t dbname=postgres connect_timeout=5");
    let mut connected = None;
    for _ in 0..300 {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&conn, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            connected = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = connected.expect("the node listens where the config file says");
    let row = client.query_one("SELECT 41 + 1", &[]).await.expect("query");
    assert_eq!(row.get::<_, i64>(0), 42);
    let _ = child.kill();
    let _ = child.wait();

    // A config file with an unknown key is refused at startup.
    std::fs::write(&config, "pg_port = 1\n").expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field"));
}

#[tokio::test]
async fn expired_snapshots_lose_their_files_unless_a_clone_uses_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::spawn(
        &dir.path().join("data"),
        &["--retention-check-secs", "1", "--buffer-file-rows", "0"],
    );
    let mut node = node;
    node.wait_ready().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE kept (v INT) WITH (retention_seconds = 1);
             INSERT INTO kept VALUES (1);
             CREATE TABLE kept_clone CLONE kept;
             DELETE FROM kept;
             CREATE TABLE gone (v INT) WITH (retention_seconds = 1);
             INSERT INTO gone VALUES (2);",
        )
        .await
        .expect("setup");
    let chunk_files = || -> BTreeSet<String> {
        std::fs::read_dir(node.data_dir.join("chunks"))
            .expect("chunks")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = chunk_files();
    assert_eq!(before.len(), 2, "{before:?}");
    client
        .batch_execute("DELETE FROM gone")
        .await
        .expect("delete");
    let cutoff = support::instant_between_commits();

    // The file of `gone` goes once its snapshots expire; the file of `kept`
    // stays for the clone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = chunk_files();
        if now.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired data files were not deleted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let clone_rows: i64 = client
        .query_one("SELECT count(*) FROM kept_clone", &[])
        .await
        .expect("clone still readable")
        .get(0);
    assert_eq!(clone_rows, 1);
    let snapshots: i64 = client
        .query_one(
            "SELECT count(*) FROM quarry_system.snapshots WHERE table_name = 'gone'",
            &[],
        )
        .await
        .expect("history")
        .get(0);
    assert_eq!(
        snapshots, 1,
        "only the snapshot current at the window's start is kept"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = client
        .query(
            &format!("SELECT * FROM gone FOR SYSTEM_TIME AS OF TIMESTAMP '{cutoff}'"),
            &[],
        )
        .await
        .expect_err("beyond the window");
    assert_eq!(sqlstate(&e), "22023");
}

#[tokio::test]
async fn a_dropped_table_survives_a_restart_and_can_be_undropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut node = TestNode::start(&data).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE d (v INT); INSERT INTO d VALUES (1), (2); DROP TABLE d")
        .await
        .expect("setup");
    assert!(node.terminate().success());
    let node = TestNode::start(&data).await;
    let client = node.client().await;
    client
        .batch_execute("UNDROP TABLE d")
        .await
        .expect("undrop");
    let sum: i64 = client
        .query_one("SELECT sum(v) FROM d", &[])
        .await
        .expect("the restored table reads its data files")
        .get(0);
    assert_eq!(sum, 3);
}

#[tokio::test]
async fn a_dropped_table_is_purged_once_its_window_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = TestNode::spawn(
        &dir.path().join("data"),
        &["--retention-check-secs", "1", "--buffer-file-rows", "0"],
    );
    node.wait_ready().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE brief (v INT) WITH (retention_seconds = 1); INSERT INTO brief VALUES (1); DROP TABLE brief")
        .await
        .expect("setup");
    let chunks = || {
        std::fs::read_dir(node.data_dir.join("chunks"))
            .expect("chunks")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while chunks() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped table's data file was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = client
        .batch_execute("UNDROP TABLE brief")
        .await
        .expect_err("purged");
    assert_eq!(sqlstate(&e), "42P01");
}

/// The `quarry_*` metric names `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("quarry_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_name_only_metrics_a_node_exports() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let rules =
        std::fs::read_to_string(deploy.join("prometheus/quarry-alerts.yml")).expect("alert rules");
    let dashboard =
        std::fs::read_to_string(deploy.join("grafana/quarry-dashboard.json")).expect("dashboard");
    // The dashboard is Grafana JSON whose every panel queries something.
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        assert!(
            panel["targets"][0]["expr"].as_str().is_some(),
            "panel {} has a query",
            panel["title"]
        );
    }
    // promtool (Debian's prometheus package) checks the rules and runs
    // their unit tests (deploy/prometheus/quarry-alerts.test.yml).
    for args in [
        ["check", "rules", "quarry-alerts.yml"],
        ["test", "rules", "quarry-alerts.test.yml"],
    ] {
        let run = std::process::Command::new("promtool")
            .args(args)
            .current_dir(deploy.join("prometheus"))
            .output()
            .expect("promtool runs (apt-get install prometheus)");
        assert!(
            run.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    // Every metric they name is on a fresh node's /metrics.
    let mut named = metric_names(&rules);
    named.extend(metric_names(&dashboard));
    assert!(named.len() >= 15, "{named:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let url = format!("http://127.0.0.1:{}/metrics", node.http_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exported = loop {
        let body = http_get(&url).await;
        if body.contains("quarry_storage_disk_size_bytes") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no gauges published: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = named.iter().filter(|n| !lines.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{exported}");
    assert!(
        exported.contains("quarry_cluster_nodes{state=\"alive\"} 1"),
        "{exported}"
    );
    assert!(exported.contains("quarry_raft_leader 1"), "{exported}");
}

/// The datagrams a fake service manager got on `socket` so far.
fn notifications(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buffer) {
        got.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    got
}

#[tokio::test]
async fn systemd_hears_ready_once_the_node_serves_the_watchdog_while_alive_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("a notify socket");
    socket.set_nonblocking(true).expect("non-blocking");
    let mut node = TestNode::start(&dir.path().join("data")).await;
    assert!(node.terminate().success());
    assert!(
        notifications(&socket).is_empty(),
        "nothing without NOTIFY_SOCKET"
    );
    // As systemd starts a unit of Type=notify with WatchdogSec=0.4s.
    node.set_env(&[
        ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
        ("WATCHDOG_USEC", "400000"),
    ]);
    node.restart().await;
    // The node answered a query: READY=1 was sent before it accepted one.
    let first = notifications(&socket);
    assert!(
        first
            .first()
            .is_some_and(|m| m.contains("READY=1") && m.contains("STATUS=node 1 serving")),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fed = notifications(&socket)
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!(fed >= 3, "the watchdog is fed every 200 ms: {fed} in 1.2 s");
    assert!(node.terminate().success());
    let last = notifications(&socket);
    assert!(
        last.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 on SIGTERM: {last:?}"
    );
}

#[test]
fn the_systemd_unit_verifies_and_its_exposure_stays_low() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/quarry.service"
    ))
    .expect("the unit");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    // The unit as installed, but running this build as root (verify checks
    // that the binary and the user exist).
    let local = unit
        .replace("/usr/bin/quarry", env!("CARGO_BIN_EXE_quarry"))
        .replace("User=quarry", "User=root")
        .replace("Group=quarry", "Group=root");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("quarry.service");
    std::fs::write(&path, local).expect("write the unit");
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd; .ci/run installs it)");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for quarry.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}
