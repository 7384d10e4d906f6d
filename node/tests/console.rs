//! The web console in a real browser: tests/console/browser_test.py drives
//! Debian's chromium (headless, through chromedriver) against three real
//! nodes. Screenshots of each page are left in
//! `target/console-screenshots/`.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::path::PathBuf;
use std::process::Command;

use support::cluster::start_cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_queries_pages_a_million_rows_and_shows_history_explorer_and_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = start_cluster(dir.path(), 3, &[]).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/console-screenshots");
    let script = root.join("tests/console/browser_test.py");
    let base = format!("http://127.0.0.1:{}", nodes[0].http_port);
    let victim = nodes[2].pid().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["300", "python3"])
            .arg(&script)
            .args([&base, &victim])
            .arg(&shots)
            .output()
            .expect("python3 runs (.ci/run installs selenium, chromium and chromium-driver)")
    })
    .await
    .expect("task");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the console's browser test failed:\n{text}"
    );
    assert!(text.contains("console: ok"), "{text}");
    // How long the killed node took to show as down, for `--no-capture`.
    println!("{text}");
    for page in [
        "query",
        "million-rows",
        "history",
        "explorer",
        "cluster",
        "cluster-node-down",
    ] {
        let shot = root.join(format!("target/console-screenshots/{page}.png"));
        assert!(shot.exists(), "no screenshot {}", shot.display());
    }
}
