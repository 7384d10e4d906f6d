//! Starts real `quarry` processes on temporary data directories for tests, and
//! stops them by pid whatever happens.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use quarry_jepsen::net::Host;
use tokio_postgres::{Client, NoTls};

/// How long a node may take to start accepting clients.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `quarry start` process.
pub struct TestNode {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub http_port: u16,
    /// Port of the node-to-node listener (RPC over TCP, gossip over UDP).
    pub listen_port: u16,
    /// The address every listener binds (127.0.0.1, or the host's address on
    /// a test network).
    pub ip: String,
    /// The network namespace the process runs in, if not the test's own.
    netns: Option<String>,
    /// Flags after the ports, kept for [`TestNode::restart`].
    extra: Vec<String>,
    log: PathBuf,
    /// Launched on ports no run of it has bound yet: if one was taken
    /// between [`free_port`] and the bind (another test's), it may move.
    fresh_ports: bool,
    /// The superuser's password on a node that authenticates; None: the
    /// node runs with --insecure and the tests log in as anyone.
    pub password: Option<String>,
    /// Environment variables of the process, kept for restarts.
    env: Vec<(String, String)>,
}

pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        // The node-to-node port is used for UDP too.
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl TestNode {
    /// The value of metric `name` (a counter or gauge without labels) on the
    /// node's /metrics; None until the node has published it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(&format!("http://{}:{}/metrics", self.ip, self.http_port)).await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Starts a node on `data_dir` and waits until it accepts PostgreSQL clients.
    pub async fn start(data_dir: &Path) -> TestNode {
        let mut node = TestNode::spawn(data_dir, &[]);
        node.wait_ready().await;
        node
    }

    /// Starts a node with `extra` flags and waits until it accepts clients.
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> TestNode {
        let mut node = TestNode::spawn(data_dir, extra);
        node.wait_ready().await;
        node
    }

    /// Spawns a node without waiting; `extra` flags are appended.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> TestNode {
        TestNode::spawn_on(None, data_dir, extra)
    }

    /// Spawns a node on `host` of a test network (or on 127.0.0.1) without
    /// waiting; `extra` flags are appended.
    pub fn spawn_on(host: Option<&Host>, data_dir: &Path, extra: &[&str]) -> TestNode {
        let mut node = TestNode::unlaunched(host, data_dir, extra);
        node.launch();
        node
    }

    fn unlaunched(host: Option<&Host>, data_dir: &Path, extra: &[&str]) -> TestNode {
        TestNode {
            ip: host.map_or_else(|| "127.0.0.1".to_owned(), |h| h.addr.to_string()),
            netns: host.map(|h| h.netns.clone()),
            child: None,
            data_dir: data_dir.to_owned(),
            pg_port: free_port(),
            http_port: free_port(),
            listen_port: free_port(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            log: data_dir.with_extension("log"),
            fresh_ports: true,
            password: None,
            env: Vec::new(),
        }
    }

    /// Starts a node that authenticates logins (no --insecure), its first
    /// superuser `quarry` with `password`; `extra` flags are appended.
    pub async fn start_secure(data_dir: &Path, password: &str, extra: &[&str]) -> TestNode {
        std::fs::create_dir_all(data_dir.parent().expect("data dir has a parent"))
            .expect("parent dir");
        let file = data_dir.with_extension("password");
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        let mut flags = vec![
            "--initial-password-file".to_owned(),
            file.display().to_string(),
        ];
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut node = TestNode::unlaunched(None, data_dir, &flags);
        node.password = Some(password.to_owned());
        node.launch();
        node.wait_ready().await;
        node
    }

    /// This node's node-to-node address.
    pub fn listen(&self) -> String {
        format!("{}:{}", self.ip, self.listen_port)
    }

    fn launch(&mut self) {
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent).expect("log dir");
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // `ip netns exec` execs the program, so the child's pid is quarry's.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_quarry")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_quarry")),
        };
        command
            .args(["start", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--pg-listen", &format!("{}:{}", self.ip, self.pg_port)])
            .args(["--http-listen", &format!("{}:{}", self.ip, self.http_port)])
            .args(["--listen", &self.listen()])
            .args(["--shutdown-grace-secs", "5"])
            .args(&self.extra);
        if self.password.is_none() {
            command.arg("--insecure");
        }
        // Two partitions unless the test's own flags choose.
        if !self.extra.iter().any(|flag| flag == "--target-partitions") {
            command.args(["--target-partitions", "2"]);
        }
        // The tests' tables are small: every query is distributed unless
        // the test's own flags choose.
        if !self.extra.iter().any(|flag| flag == "--distribute-min-mb") {
            command.args(["--distribute-min-mb", "0"]);
        }
        let child = command
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("quarry binary starts");
        self.child = Some(child);
    }

    /// Starts the stopped node again on the same data dir, ports and flags, and
    /// waits until it accepts clients.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "node is still running");
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the stopped node again as [`TestNode::restart`] does, without
    /// waiting for it to take clients (a node in maintenance refuses them).
    pub fn restart_unready(&mut self) {
        assert!(self.child.is_none(), "node is still running");
        self.launch();
    }

    /// Replaces the flags after the ports for the next [`TestNode::restart`].
    pub fn set_flags(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Replaces the environment variables of the next [`TestNode::restart`].
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a client can connect, failing the test after [`START_TIMEOUT`].
    pub async fn wait_ready(&mut self) {
        let started = Instant::now();
        let mut port_retries = 3;
        loop {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&self.conn_string(), NoTls).await
            {
                tokio::spawn(connection);
                // Bounded: a node that takes connections but never answers
                // fails the start below with its log, rather than hanging.
                let answered =
                    tokio::time::timeout(Duration::from_secs(5), client.simple_query("select 1"))
                        .await;
                if matches!(answered, Ok(Ok(_))) {
                    self.fresh_ports = false;
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // free_port releases the port it found; a test running
                // beside this one may bind it first. A node that never ran
                // on its ports takes new ones (later restarts keep them).
                if self.fresh_ports
                    && port_retries > 0
                    && self.log().lines().any(|l| {
                        l.contains("cannot listen") && l.contains("Address already in use")
                    })
                {
                    port_retries -= 1;
                    self.child = None;
                    let _ = std::fs::remove_file(&self.log);
                    self.pg_port = free_port();
                    self.http_port = free_port();
                    self.listen_port = free_port();
                    self.launch();
                    continue;
                }
                panic!(
                    "quarry exited with {status} before accepting clients:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "quarry did not start in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// libpq connection string for this node.
    pub fn conn_string(&self) -> String {
        match &self.password {
            None => format!(
                "host={} port={} user=test dbname=quarry connect_timeout=10",
                self.ip, self.pg_port
            ),
            Some(password) => format!(
                "host={} port={} user=quarry password={password} dbname=quarry connect_timeout=10",
                self.ip, self.pg_port
            ),
        }
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.conn_string(), NoTls)
            .await
            .expect("connect to quarry");
        tokio::spawn(connection);
        client
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// kill -9, and reap the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits (bounded) for a process that exits by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("quarry did not exit in time:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            // Quarry's own lines: openraft repeats its complaints many times.
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("Z  INFO quarry_")
                        || l.contains("Z  WARN quarry_")
                        || l.contains("Z ERROR quarry_")
                })
                .rev()
                .take(25)
                .collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A timestamp literal (UTC, microseconds) strictly after the commits made so
/// far and before those made next: for FOR SYSTEM_TIME AS OF tests.
pub fn instant_between_commits() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let at = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    at
}

/// The whole HTTP/1.1 response (head and body) to a GET of `url`, read
/// until the server closes the connection.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body))
        .await
        .expect("response in time")
        .expect("response");
    body
}

/// (files_added, files_removed, rows_removed) of the newest snapshot of
/// table `table` (quarry_system.snapshots).
pub async fn last_snapshot(client: &Client, table: &str) -> (i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT files_added::bigint, files_removed::bigint, rows_removed::bigint \
             FROM quarry_system.snapshots WHERE table_name = $1 \
             ORDER BY snapshot_id DESC LIMIT 1",
            &[&table],
        )
        .await
        .expect("snapshots");
    (row.get(0), row.get(1), row.get(2))
}

/// The one row `sql` answers on `client`, every column a bigint.
pub async fn bigints(client: &Client, sql: &str) -> Vec<i64> {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    (0..row.len()).map(|i| row.get(i)).collect()
}

/// The status and body of an HTTP/1.1 request (`method` to `url`, with
/// `body` of `content_type`), read until the server closes the connection.
pub async fn http_request(
    method: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    try_http_request(method, url, content_type, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`http_request`], or why no answer came (nothing listening, the
/// connection cut, no status line, 30 s without an answer).
pub async fn try_http_request(
    method: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("request: {e}"))?;
    // A server that refuses a large body may close before reading it all.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "no response in 30 s".to_owned())?
        .map_err(|e| format!("response: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `quarry cert ARGS --certs-dir DIR` (the cluster's TLS files).
pub fn quarry_cert(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("cert")
        .args(args)
        .arg("--certs-dir")
        .arg(dir)
        .output()
        .expect("quarry runs");
    assert!(
        output.status.success(),
        "quarry cert {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a CA and a node certificate for `hosts` in `certs`, then starts a
/// node on `data_dir` serving TLS with them (`certs/node.crt`, `node.key`).
pub async fn start_with_tls(data_dir: &Path, certs: &Path, hosts: &[&str]) -> TestNode {
    quarry_cert(certs, &["create-ca"]);
    let mut node_args = vec!["create-node"];
    for host in hosts {
        node_args.extend(["--host", host]);
    }
    quarry_cert(certs, &node_args);
    let cert = certs.join("node.crt");
    let key = certs.join("node.key");
    TestNode::start_with(
        data_dir,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
        ],
    )
    .await
}

/// The status, head and body of an HTTP/1.1 request with extra `headers`
/// (the server sends a length, as Quarry's API does), read until the
/// server closes the connection.
pub async fn http_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let mut head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("request");
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, response[split + 4..].to_vec())
}

/// The plan EXPLAIN [ANALYZE] gives for `query`, its lines joined.
pub async fn explain(client: &Client, query: &str, analyze: bool) -> String {
    let rows = client
        .simple_query(&format!(
            "EXPLAIN {}{query}",
            if analyze { "ANALYZE " } else { "" }
        ))
        .await
        .expect("explain");
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Data files a query's scan reads (each appears as its 32-hex-digit chunk
/// id, once per byte range the planner cut it into).
pub async fn files_scanned(client: &Client, query: &str) -> usize {
    let plan = explain(client, query, false).await;
    plan.split("file_groups={")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 32)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The rows of `sql` as text, in order, each its columns' text joined
/// by `|` (NULL as `NULL`).
pub async fn texts(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}
