//! The short Jepsen-style runs CI makes: the set, bank, list-append and
//! stream workloads against five real nodes in network namespaces under kill -9 and
//! partitions, each judged by its checker (quarry-jepsen's own tests check the
//! checkers on histories with known anomalies).

use std::time::Duration;

use quarry_jepsen::nemesis::Nemesis;
use quarry_jepsen::runner::{Settings, Workload, run};

async fn short_run(workload: Workload) {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        quarry: env!("CARGO_BIN_EXE_quarry").into(),
        nodes: 5,
        workload,
        nemeses: vec![Nemesis::Kill, Nemesis::Partition],
        time: Duration::from_secs(45),
        interval: Duration::from_secs(8),
        clients: 6,
        dir: dir.path().join("run"),
        op_timeout: Duration::from_secs(5),
    };
    let outcome = tokio::time::timeout(Duration::from_secs(240), run(&settings))
        .await
        .expect("the run ends in time")
        .expect("the run completes");
    let summary = serde_json::to_string_pretty(&outcome.summary).expect("json");
    assert!(outcome.valid, "anomaly:\n{summary}");
    let nemesis = std::fs::read_to_string(dir.path().join("run/nemesis.jsonl")).expect("log");
    assert!(
        nemesis.lines().filter(|l| !l.contains("\"heal\"")).count() >= 3,
        "faults were injected:\n{nemesis}"
    );
    let ok = |f: &str| outcome.summary["ops"][f]["ok"].as_u64().unwrap_or(0);
    match workload {
        Workload::Set => assert!(ok("add") > 100, "{summary}"),
        Workload::Bank => assert!(ok("transfer") > 10 && ok("read") > 10, "{summary}"),
        Workload::Append => assert!(ok("txn") > 50, "{summary}"),
        Workload::Stream => assert!(ok("append") > 100 && ok("read") > 10, "{summary}"),
        other => panic!("not one of CI's workloads: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_under_kills_and_partitions() {
    short_run(Workload::Set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_under_kills_and_partitions() {
    short_run(Workload::Bank).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_under_kills_and_partitions() {
    short_run(Workload::Append).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_under_kills_and_partitions() {
    short_run(Workload::Stream).await;
}
