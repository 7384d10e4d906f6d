//! Backup and restore (`quarry backup create|verify`, `quarry restore`) on
//! clusters of real processes: a restored cluster gives TPC-H's answers and
//! the same time-travel history.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;

    #[path = "tpch.rs"]
    pub mod tpch;
}

use std::path::Path;
use std::process::{Command, Output};

use support::cluster::{start_cluster, unhealthy_stripes};
use support::node::{TestNode, instant_between_commits, sqlstate};
use support::tpch;

fn quarry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .expect("quarry runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn host(node: &TestNode) -> String {
    format!("127.0.0.1:{}", node.pg_port)
}

/// `quarry backup create`: (files, files copied now).
fn backup(node: &TestNode, dir: &Path) -> (u64, u64) {
    let out = quarry(&[
        "backup",
        "create",
        "--to",
        dir.to_str().expect("utf-8"),
        "--host",
        &host(node),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // "backup-…: N data files, M copied now (…)"
    let numbers: Vec<u64> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .skip(1)
        .take(2)
        .map(|s| s.parse().expect("a number"))
        .collect();
    (numbers[0], numbers[1])
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_cluster_gives_the_same_answers_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(&dir.path().join("a"), 3, &[]).await;
    let load = quarry(&[
        "load",
        "tpch",
        "--scale-factor",
        "0.01",
        "--pg",
        &host(&nodes[0]),
        "--url",
        &format!("http://127.0.0.1:{}", nodes[0].http_port),
    ]);
    assert!(load.status.success(), "{}", text(&load));
    let client = nodes[0].client().await;
    let backups = dir.path().join("backups");

    // A first backup copies every data file.
    let (files, copied) = backup(&nodes[0], &backups);
    assert!(
        files > 0 && copied == files,
        "{files} files, {copied} copied"
    );

    // History: 200,000 rows (a data file in stripes, not the ingest
    // buffer), then one deleted.
    client
        .batch_execute(
            "create table extra (x bigint); \
             insert into extra select i from generate_series(1, 200000) as g(i)",
        )
        .await
        .expect("extra");
    let before_delete = instant_between_commits();
    client
        .batch_execute("delete from extra where x = 2")
        .await
        .expect("delete");

    // A second backup copies only what is new.
    let (files_2, copied_2) = backup(&nodes[0], &backups);
    assert!(files_2 > files, "{files_2} files after {files}");
    assert!(
        copied_2 < files && copied_2 <= files_2 - files + 2,
        "an incremental backup copies only the new files: {copied_2} of {files_2}"
    );
    let verified = quarry(&["backup", "verify", backups.to_str().expect("utf-8")]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("verified"), "{}", text(&verified));

    // A damaged copy of the backup fails verification, naming the file.
    let damaged = dir.path().join("damaged");
    let copy = Command::new("cp")
        .args(["-r"])
        .arg(&backups)
        .arg(&damaged)
        .status()
        .expect("cp");
    assert!(copy.success());
    let victim = std::fs::read_dir(damaged.join("chunks"))
        .expect("chunks")
        .next()
        .expect("a chunk")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write");
    let refused = quarry(&["backup", "verify", damaged.to_str().expect("utf-8")]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("does not match its checksums"),
        "{}",
        text(&refused)
    );

    // Restore into a new, empty three-node cluster.
    let restored = start_cluster(&dir.path().join("b"), 3, &[]).await;
    let out = quarry(&[
        "restore",
        "--from",
        backups.to_str().expect("utf-8"),
        "--host",
        &host(&restored[1]),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for (i, node) in restored.iter().enumerate() {
        let client = node.client().await;
        client
            .batch_execute("SET search_path = tpch")
            .await
            .expect("search_path");
        let failures = tpch::mismatches(&client).await;
        assert!(failures.is_empty(), "node {i}: {}", failures.join("\n"));
        assert_eq!(
            count(&client, "select count(*) from public.extra").await,
            199_999
        );
        assert_eq!(
            count(
                &client,
                &format!(
                    "select count(*) from public.extra \
                     FOR SYSTEM_TIME AS OF TIMESTAMP '{before_delete}'"
                ),
            )
            .await,
            200_000,
            "node {i}: time travel into the backup's history"
        );
        assert_eq!(unhealthy_stripes(&client).await, 0, "node {i}");
    }
    // The restored cluster writes as any other.
    let client = restored[0].client().await;
    client
        .batch_execute("insert into extra values (2)")
        .await
        .expect("insert after restore");
    assert_eq!(count(&client, "select count(*) from extra").await, 200_000);
    // A second restore into a cluster that holds tables is refused.
    let again = client
        .batch_execute(&format!("RESTORE FROM '{}'", backups.display()))
        .await
        .expect_err("not empty");
    assert_eq!(sqlstate(&again), "55000", "{again:?}");
    let relative = client
        .batch_execute("BACKUP TO 'relative/dir'")
        .await
        .expect_err("relative");
    assert_eq!(sqlstate(&relative), "22023", "{relative:?}");
}
