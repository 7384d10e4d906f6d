//! Logins and privileges on real nodes: SCRAM-SHA-256 against the roles of
//! the Raft catalog (wrong password, unknown user and expired role refused
//! alike; failed logins counted and rate-limited per address), channel
//! binding over TLS, `--insecure` and the refusal to serve beyond loopback
//! in the clear, PostgreSQL's GRANT / REVOKE checked on every way a
//! statement reaches a relation, REVOKE reaching an open connection on
//! another node, and no password in the logs, the Raft log or snapshots.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::cluster::FAST;
use support::node::{TestNode, quarry_cert, sqlstate};
use tokio_postgres::{Client, NoTls};

const SUPERUSER_PASSWORD: &str = "Bootstrap-Secret-81";

/// A client of `node` logged in as `user` with `password`, or the error.
async fn login(
    node: &TestNode,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let conn = format!(
        "host={} port={} user={user} password={password} dbname=quarry connect_timeout=10",
        node.ip, node.pg_port
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The same, from source address `source` (a loopback address of its own).
async fn login_from(
    node: &TestNode,
    source: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind a loopback source address");
    let stream = socket
        .connect(
            format!("{}:{}", node.ip, node.pg_port)
                .parse()
                .expect("address"),
        )
        .await
        .expect("tcp connect");
    let mut config = tokio_postgres::Config::new();
    config.user(user).password(password).dbname("quarry");
    let (client, connection) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn refused(result: Result<Client, tokio_postgres::Error>) -> (String, String) {
    let Err(e) = result else {
        panic!("the login is refused");
    };
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string());
    (sqlstate(&e), message)
}

async fn denied(client: &Client, sql: &str) -> String {
    let e = client
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql} should be refused"));
    assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    e.as_db_error()
        .expect("a server error")
        .message()
        .to_owned()
}

#[tokio::test]
async fn wrong_password_unknown_user_and_expired_role_are_refused_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, &[]).await;
    let admin = node.client().await;
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'alice-pw';
             CREATE USER old PASSWORD 'old-pw' VALID UNTIL '2001-01-01';
             CREATE ROLE nologin PASSWORD 'nl-pw';",
        )
        .await
        .expect("roles");

    login(&node, "alice", "alice-pw")
        .await
        .expect("alice logs in");
    let wrong = refused(login(&node, "alice", "nope").await);
    let unknown = refused(login(&node, "mallory", "nope").await);
    let expired = refused(login(&node, "old", "old-pw").await);
    for (user, (state, message)) in [("alice", &wrong), ("mallory", &unknown), ("old", &expired)] {
        assert_eq!(state, "28P01");
        assert_eq!(
            *message,
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // LOGIN is checked after the password, as PostgreSQL does.
    let (state, message) = refused(login(&node, "nologin", "nl-pw").await);
    assert_eq!(state, "28000");
    assert!(message.contains("not permitted to log in"), "{message}");
    assert!(
        node.metric("quarry_node_login_failures_total").await >= Some(4.0),
        "failed logins are counted"
    );
    let failed = admin
        .query(
            "SELECT user_name FROM quarry_system.audit WHERE event = 'login_failed' ORDER BY at",
            &[],
        )
        .await
        .expect("audit");
    let failed: Vec<String> = failed.iter().map(|r| r.get(0)).collect();
    assert_eq!(failed, ["alice", "mallory", "old", "nologin"]);

    // Past ten failures a minute from one address, that address is turned
    // away before any exchange; other addresses are not.
    for _ in 0..10 {
        let _ = login_from(&node, "127.0.0.7", "alice", "guess").await;
    }
    let (state, message) = refused(login_from(&node, "127.0.0.7", "alice", "alice-pw").await);
    assert_eq!(state, "28000", "{message}");
    assert!(message.contains("too many failed logins"), "{message}");
    login_from(&node, "127.0.0.8", "alice", "alice-pw")
        .await
        .expect("another address logs in");

    // ALTER ROLE changes a password at once; a role may change its own.
    let alice = login(&node, "alice", "alice-pw").await.expect("alice");
    alice
        .batch_execute("ALTER ROLE alice PASSWORD 'new-pw'")
        .await
        .expect("own password");
    refused(login(&node, "alice", "alice-pw").await);
    login(&node, "alice", "new-pw").await.expect("new password");
    let e = alice
        .batch_execute("ALTER ROLE alice SUPERUSER")
        .await
        .expect_err("no self-promotion");
    assert_eq!(sqlstate(&e), "42501");
}

#[tokio::test]
async fn privileges_are_checked_wherever_a_statement_reaches_a_relation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, &[]).await;
    let admin = node.client().await;
    admin
        .batch_execute(
            "CREATE TABLE t1 (a int); CREATE TABLE t2 (a int);
             INSERT INTO t1 VALUES (1); INSERT INTO t2 VALUES (2);
             CREATE VIEW v2 AS SELECT a FROM t2;
             CREATE VIEW v1 AS SELECT a FROM t1;
             CREATE ROLE readers;
             CREATE ROLE alice LOGIN PASSWORD 'pw' IN ROLE readers;
             GRANT SELECT ON t1 TO readers;
             GRANT SELECT ON v1 TO alice;",
        )
        .await
        .expect("setup");
    let alice = login(&node, "alice", "pw").await.expect("alice");
    // What alice may do, through her group.
    let rows = alice.query("SELECT a FROM t1", &[]).await.expect("t1");
    assert_eq!(rows.len(), 1);
    alice.query("SELECT a FROM v1", &[]).await.expect("v1");
    for sql in [
        "SELECT * FROM t2",
        "SELECT * FROM t1 WHERE a IN (SELECT a FROM t2)",
        "WITH x AS (SELECT * FROM t2) SELECT * FROM x",
        "SELECT * FROM t1 JOIN t2 ON true",
        "SELECT * FROM t1, (SELECT a FROM t2) AS sub",
        "EXPLAIN ANALYZE SELECT * FROM t2",
        "COPY t2 TO STDOUT",
        "COPY (SELECT * FROM t2) TO STDOUT",
        "SELECT * FROM t2 AS v1",
    ] {
        assert_eq!(
            denied(&alice, sql).await,
            "permission denied for table t2",
            "{sql}"
        );
    }
    assert_eq!(
        denied(&alice, "SELECT * FROM v2").await,
        "permission denied for view v2"
    );
    for (sql, message) in [
        (
            "INSERT INTO t1 VALUES (5)",
            "permission denied for table t1",
        ),
        ("UPDATE t1 SET a = 3", "permission denied for table t1"),
        ("DELETE FROM t1", "permission denied for table t1"),
        ("TRUNCATE t1", "permission denied for table t1"),
        ("DROP TABLE t1", "must be owner of table t1"),
        (
            "ALTER TABLE t1 ADD COLUMN b int",
            "must be owner of table t1",
        ),
        ("GRANT SELECT ON t2 TO alice", "must be owner of table t2"),
        ("ALTER TABLE t2 OWNER TO alice", "must be owner of table t2"),
        ("ALTER VIEW v2 OWNER TO alice", "must be owner of view v2"),
        (
            "CREATE TABLE mine (a int)",
            "permission denied for schema public",
        ),
        ("CREATE ROLE eve", "permission denied to create role"),
        (
            "LOAD DATA INTO t1 FROM FILES (format = 'CSV', uris = ['/etc/hostname'])",
            "must be superuser to LOAD DATA from files on the server",
        ),
        (
            "CREATE EXTERNAL TABLE e OPTIONS (format = 'CSV', uris = ['/etc/hostname'])",
            "must be superuser to create an external table over files on the server",
        ),
    ] {
        assert_eq!(denied(&alice, sql).await, message, "{sql}");
    }
    // A view reads with its owner's privileges: alice reads t2 through a
    // view she may read, owned by one who may read t2.
    admin
        .batch_execute("GRANT SELECT ON v2 TO alice")
        .await
        .expect("grant");
    let rows = alice.query("SELECT a FROM v2", &[]).await.expect("v2");
    assert_eq!(rows[0].get::<_, i32>(0), 2);
    // Privileges granted take effect on the next statement; so does REVOKE.
    admin
        .batch_execute(
            "GRANT INSERT, DELETE ON t1 TO alice; GRANT CREATE ON SCHEMA public TO alice",
        )
        .await
        .expect("grant");
    alice
        .batch_execute("INSERT INTO t1 VALUES (7)")
        .await
        .expect("insert");
    alice
        .batch_execute("DELETE FROM t1 WHERE a = 7")
        .await
        .expect("delete");
    alice
        .batch_execute("CREATE TABLE mine (a int); INSERT INTO mine VALUES (1); DROP TABLE mine")
        .await
        .expect("her own table is hers");
    admin
        .batch_execute("REVOKE SELECT ON t1 FROM readers")
        .await
        .expect("revoke");
    assert_eq!(
        denied(&alice, "SELECT * FROM t1").await,
        "permission denied for table t1"
    );

    // ALTER ... OWNER TO: the owner (or a superuser) gives an object to a
    // role they are a member of, and the new owner has the owner's rights.
    alice
        .batch_execute("CREATE TABLE hers (a int)")
        .await
        .expect("create");
    assert_eq!(
        denied(&alice, "ALTER TABLE hers OWNER TO quarry").await,
        "must be able to SET ROLE \"quarry\""
    );
    alice
        .batch_execute("ALTER TABLE hers OWNER TO readers")
        .await
        .expect("to her group");
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'hers'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, "readers");
    alice
        .batch_execute("DROP TABLE hers")
        .await
        .expect("a member of the owning role drops it");
    admin
        .batch_execute(
            "CREATE SCHEMA theirs; ALTER SCHEMA theirs OWNER TO alice; \
             ALTER TABLE t2 OWNER TO alice; ALTER VIEW v1 OWNER TO CURRENT_USER",
        )
        .await
        .expect("owners");
    alice
        .batch_execute("CREATE TABLE theirs.x (a int); SELECT * FROM t2; DROP TABLE theirs.x")
        .await
        .expect("an owner's rights");
    admin
        .batch_execute("ALTER TABLE t2 OWNER TO quarry")
        .await
        .expect("back");
    assert_eq!(
        denied(&alice, "SELECT * FROM t2").await,
        "permission denied for table t2"
    );
    let e = admin
        .batch_execute("ALTER TABLE nosuch OWNER TO alice")
        .await
        .expect_err("no table");
    assert_eq!(sqlstate(&e), "42P01");
    let e = admin
        .batch_execute("ALTER TABLE t2 OWNER TO nobody")
        .await
        .expect_err("no role");
    assert_eq!(sqlstate(&e), "42704");

    // The catalogs psql's \du and \dp read, and the privilege functions.
    let row = admin
        .query_one(
            "SELECT has_table_privilege('alice', 't2', 'SELECT'), has_table_privilege('alice', 't1', 'INSERT'), pg_has_role('alice', 'readers', 'MEMBER')",
            &[],
        )
        .await
        .expect("functions");
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        (false, true, true)
    );
    let roles = admin
        .query(
            "SELECT rolname, rolcanlogin, rolpassword FROM pg_roles ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_roles");
    let roles: Vec<(String, bool, Option<String>)> = roles
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        roles,
        [
            ("alice".to_owned(), true, Some("********".to_owned())),
            // PostgreSQL's predefined roles, listed as PostgreSQL lists them.
            ("pg_read_all_stats".to_owned(), false, None),
            ("pg_signal_backend".to_owned(), false, None),
            ("quarry".to_owned(), true, Some("********".to_owned())),
            ("readers".to_owned(), false, None),
        ]
    );
    // Owners and grants as pg_class and pg_namespace show them (psql's \dn+).
    let row = admin
        .query_one(
            "SELECT pg_get_userbyid(c.relowner), array_to_string(c.relacl, ',') \
             FROM pg_catalog.pg_class c WHERE c.relname = 't1'",
            &[],
        )
        .await
        .expect("pg_class");
    assert_eq!(row.get::<_, String>(0), "quarry");
    assert_eq!(
        row.get::<_, String>(1),
        "quarry=arwdD/quarry,alice=ad/quarry"
    );
    let acl: String = admin
        .query_one(
            "SELECT array_to_string(nspacl, ',') FROM pg_catalog.pg_namespace WHERE nspname = 'public'",
            &[],
        )
        .await
        .expect("pg_namespace")
        .get(0);
    assert_eq!(acl, "quarry=UC/quarry,=U/quarry,alice=C/quarry");
    let row = alice
        .query_one(
            "SELECT current_user, session_user, user, current_role, current_schema",
            &[],
        )
        .await
        .expect("user");
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "current_user",
            "session_user",
            "user",
            "current_role",
            "current_schema"
        ]
    );
    let values: Vec<String> = (0..5).map(|i| row.get(i)).collect();
    assert_eq!(values, ["alice", "alice", "alice", "alice", "public"]);
    // DROP ROLE waits for its privileges to go.
    let e = admin
        .batch_execute("DROP ROLE alice")
        .await
        .expect_err("in use");
    assert_eq!(sqlstate(&e), "2BP01");

    // The audit trail: logins, role and privilege changes, DDL; superusers
    // alone read it.
    let events = admin
        .query(
            "SELECT event, user_name, address IS NOT NULL, detail FROM quarry_system.audit",
            &[],
        )
        .await
        .expect("audit");
    let events: Vec<(String, String, bool, String)> = events
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    for expected in [
        ("login", "alice", true, "authenticated"),
        ("role", "quarry", false, "CREATE ROLE alice (with password)"),
        ("ddl", "quarry", false, "CREATE TABLE public.t1"),
        ("ddl", "alice", false, "DROP TABLE public.mine"),
        ("privilege", "quarry", false, "REVOKE r ON table id"),
    ] {
        assert!(
            events
                .iter()
                .any(|(event, user, address, detail)| event == expected.0
                    && user == expected.1
                    && *address == expected.2
                    && detail.starts_with(expected.3)),
            "{expected:?} not in {events:#?}"
        );
    }
    assert_eq!(
        denied(&alice, "SELECT * FROM quarry_system.audit").await,
        "permission denied for schema quarry_system"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reaches_an_open_connection_on_another_node_and_no_password_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, FAST).await;
    let mut flags = FAST.to_vec();
    let seed = first.listen();
    flags.extend(["--join", seed.as_str()]);
    let second = TestNode::start_secure(&dir.path().join("n2"), SUPERUSER_PASSWORD, &flags).await;
    let admin = first.client().await;
    let secret = "Rosebud-Password-4417";
    admin
        .batch_execute(&format!(
            "CREATE TABLE t (a int); INSERT INTO t VALUES (1);
             CREATE ROLE bob LOGIN PASSWORD '{secret}'; GRANT SELECT ON t TO bob;"
        ))
        .await
        .expect("setup");
    // Node 2 learns of bob when it applies the commit.
    let started = std::time::Instant::now();
    let bob = loop {
        match login(&second, "bob", secret).await {
            Ok(client) => break client,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "bob cannot log in on node 2: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bob.query("SELECT a FROM t", &[]).await.expect("granted");
    admin
        .batch_execute("REVOKE SELECT ON t FROM bob")
        .await
        .expect("revoke");
    let e = bob
        .query("SELECT a FROM t", &[])
        .await
        .expect_err("revoked");
    assert_eq!(sqlstate(&e), "42501");
    drop(bob);
    drop(admin);

    // The password is nowhere: not in either node's log, Raft log or
    // snapshots, nor in what the system tables show.
    let superuser = first.client().await;
    for table in ["nodes", "snapshots", "stripes", "tables"] {
        let rows = superuser
            .simple_query(&format!("SELECT * FROM quarry_system.{table}"))
            .await
            .expect("system table");
        assert!(!format!("{rows:?}").contains(secret));
    }
    drop(superuser);
    for node in [first, second] {
        let log = node.log();
        let data_dir = node.data_dir.clone();
        drop(node);
        assert!(!log.contains(secret), "the log holds the password");
        assert!(
            !contains_bytes(&data_dir, secret.as_bytes()),
            "the data dir holds the password"
        );
    }
}

fn contains_bytes(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return contains_bytes(&path, needle);
        }
        std::fs::read(&path)
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn channel_binding_works_over_tls_and_a_node_beyond_loopback_needs_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    quarry_cert(&certs, &["create-ca"]);
    quarry_cert(
        &certs,
        &["create-node", "--host", "localhost", "--host", "127.0.0.1"],
    );
    let node = TestNode::start_secure(
        &dir.path().join("n1"),
        SUPERUSER_PASSWORD,
        &[
            "--tls-cert",
            certs.join("node.crt").to_str().expect("utf-8"),
            "--tls-key",
            certs.join("node.key").to_str().expect("utf-8"),
        ],
    )
    .await;
    let psql = |options: &str| {
        Command::new("psql")
            .arg(format!(
                "host=localhost port={} user=quarry dbname=quarry connect_timeout=10 sslmode=verify-full sslrootcert={} {options}",
                node.pg_port,
                certs.join("ca.crt").display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT session_user"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .expect("psql runs")
    };
    // libpq picks SCRAM-SHA-256-PLUS over TLS; channel_binding=require
    // fails unless the exchange was bound to the node's certificate.
    let bound = psql("channel_binding=require");
    assert!(
        bound.status.success(),
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&bound.stdout).trim(), "quarry");
    let wrong = Command::new("psql")
        .arg(format!(
            "host=localhost port={} user=quarry dbname=quarry sslmode=require channel_binding=require",
            node.pg_port
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "not-it")
        .output()
        .expect("psql runs");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    // Beyond loopback in the clear: refused unless --insecure.
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", "--data-dir"])
        .arg(dir.path().join("open"))
        .args(["--pg-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .output()
        .expect("quarry runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure"));
    // A new cluster needs its first superuser's password.
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", "--data-dir"])
        .arg(dir.path().join("nopassword"))
        .args(["--pg-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", support::node::free_port()),
        ])
        .env_remove("QUARRY_INITIAL_PASSWORD")
        .output()
        .expect("quarry runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--initial-password-file"));
}

/// Runs `quarry start` with `args` until it exits (at most `limit`); its
/// status and stderr.
fn start_until_exit(args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("start")
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("quarry runs");
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child
                .stderr
                .take()
                .expect("piped")
                .read_to_string(&mut stderr);
            return (status.success(), stderr);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("quarry start {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_mutual_tls_client_certificates_log_in_and_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster_certs = dir.path().join("certs");
    let foreign_certs = dir.path().join("foreign");
    for certs in [&cluster_certs, &foreign_certs] {
        quarry_cert(certs, &["create-ca"]);
        quarry_cert(
            certs,
            &["create-node", "--host", "127.0.0.1", "--host", "localhost"],
        );
    }
    let tls = |certs: &Path| -> Vec<String> {
        ["node.crt", "node.key", "ca.crt"]
            .iter()
            .zip(["--tls-cert", "--tls-key", "--tls-ca"])
            .flat_map(|(file, flag)| [flag.to_owned(), certs.join(file).display().to_string()])
            .collect()
    };
    let mut flags: Vec<String> = tls(&cluster_certs);
    flags.extend(FAST.iter().map(|s| (*s).to_owned()));
    let flags_ref: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first =
        TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, &flags_ref).await;
    let seed = first.listen();
    let mut joining = flags_ref.clone();
    joining.extend(["--join", seed.as_str()]);
    let second = TestNode::start_secure(&dir.path().join("n2"), SUPERUSER_PASSWORD, &joining).await;
    assert!(first.log().contains("nodes talk over mutual TLS"));
    // Writes on one node are read on the other: Raft and the chunk store
    // run over the mutual TLS connections.
    first
        .client()
        .await
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    loop {
        if let Ok(rows) = second.client().await.query("SELECT a FROM t", &[]).await {
            assert_eq!(rows.len(), 2);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 2 reads t"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Client certificates of the cluster CA log in without a password as
    // the user they name; another user's name falls back to SCRAM.
    first
        .client()
        .await
        .batch_execute("CREATE ROLE alice LOGIN")
        .await
        .expect("alice");
    quarry_cert(&cluster_certs, &["create-client", "alice"]);
    quarry_cert(&foreign_certs, &["create-client", "alice"]);
    let psql_as = |user: &str, certs: &Path| {
        Command::new("psql")
            .arg(format!(
                "host=localhost port={} user={user} dbname=quarry connect_timeout=10 sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                first.pg_port,
                cluster_certs.join("ca.crt").display(),
                certs.join("client.alice.crt").display(),
                certs.join("client.alice.key").display(),
            ))
            .args(["-X", "-w", "-A", "-t", "-c", "SELECT session_user"])
            .output()
            .expect("psql runs")
    };
    let alice = psql_as("alice", &cluster_certs);
    assert!(
        alice.status.success(),
        "{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&alice.stdout).trim(), "alice");
    let not_quarry = psql_as("quarry", &cluster_certs);
    assert!(
        !not_quarry.status.success(),
        "alice's certificate is not quarry's"
    );
    let foreign = psql_as("alice", &foreign_certs);
    assert!(
        !foreign.status.success(),
        "another CA's client certificate is refused"
    );

    // A node with another CA's certificate, and one without TLS, cannot
    // join; the seed says why.
    for (name, extra) in [
        ("foreign", tls(&foreign_certs)),
        ("plain", vec!["--insecure".to_owned()]),
    ] {
        let data = dir.path().join(name).display().to_string();
        let listen = format!("127.0.0.1:{}", support::node::free_port());
        let mut args: Vec<&str> = vec![
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--pg-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--join",
            &seed,
            "--join-timeout-secs",
            "3",
        ];
        args.extend(extra.iter().map(String::as_str));
        let (joined, stderr) = start_until_exit(&args, Duration::from_secs(60));
        assert!(!joined, "the {name} node joined: {stderr}");
        assert!(
            stderr.contains("join"),
            "the {name} node failed otherwise: {stderr}"
        );
    }
    assert!(
        first.log().contains("refused a node connection"),
        "{}",
        first.log()
    );
    // Gossip carries the cluster key's tag: the members know each other,
    // and a datagram without the tag (what a stranger can send) is dropped.
    let rows = support::cluster::node_rows(&first).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.state == "alive"), "{rows:?}");
    assert!(first.log().contains("gossip is authenticated"));
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut forged = vec![11u8];
    forged.extend([0u8; 32]);
    forged.extend(b"not from a member");
    stranger.send_to(&forged, &seed).expect("send");
    // The HTTP listener speaks HTTPS here: Python's urllib reads /metrics.
    let rejected = || {
        let script = format!(
            "import ssl, urllib.request\n\
             context = ssl.create_default_context(cafile={ca:?})\n\
             body = urllib.request.urlopen('https://localhost:{port}/metrics', context=context, timeout=10).read().decode()\n\
             print(sum(float(l.split()[1]) for l in body.splitlines() if l.startswith('quarry_node_gossip_rejected_total ')))\n",
            ca = cluster_certs.join("ca.crt").display().to_string(),
            port = first.http_port,
        );
        let output = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0)
    };
    let started = std::time::Instant::now();
    while rejected() < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the forged datagram is dropped and counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of GET `https://localhost:PORT/PATH` with `authorization`
/// (Python's urllib, trusting `ca`).
fn https_status(port: u16, path: &str, ca: &Path, authorization: Option<&str>) -> u16 {
    https_request(port, path, ca, authorization, None)
}

/// The status of a request to `https://localhost:PORT/PATH` with
/// `authorization`: a GET, or a POST of `body` (content type, bytes).
fn https_request(
    port: u16,
    path: &str,
    ca: &Path,
    authorization: Option<&str>,
    body: Option<(&str, &str)>,
) -> u16 {
    let header = authorization
        .map(|a| format!("request.add_header('Authorization', {a:?})\n"))
        .unwrap_or_default();
    let data = match body {
        Some((content_type, data)) => format!(
            "request.data = {data:?}.encode()\nrequest.add_header('Content-Type', {content_type:?})\n"
        ),
        None => String::new(),
    };
    let script = format!(
        "import ssl, urllib.request, urllib.error\n\
         context = ssl.create_default_context(cafile={ca:?})\n\
         request = urllib.request.Request('https://localhost:{port}{path}')\n\
         {header}{data}\
         try:\n    print(urllib.request.urlopen(request, context=context, timeout=10).status)\n\
         except urllib.error.HTTPError as e:\n    print(e.code)\n",
        ca = ca.display().to_string()
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test]
async fn metrics_take_http_basic_or_an_access_token_that_drop_revokes() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    quarry_cert(&certs, &["create-ca"]);
    quarry_cert(&certs, &["create-node", "--host", "localhost"]);
    let node = TestNode::start_secure(
        &dir.path().join("n1"),
        SUPERUSER_PASSWORD,
        &[
            "--tls-cert",
            certs.join("node.crt").to_str().expect("utf-8"),
            "--tls-key",
            certs.join("node.key").to_str().expect("utf-8"),
            "--metrics-require-login",
        ],
    )
    .await;
    let ca = certs.join("ca.crt");
    let port = node.http_port;
    assert_eq!(https_status(port, "/health", &ca, None), 200);
    assert_eq!(https_status(port, "/metrics", &ca, None), 401);
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    assert_eq!(
        https_status(
            port,
            "/metrics",
            &ca,
            Some(&basic("quarry", SUPERUSER_PASSWORD))
        ),
        200
    );
    assert_eq!(
        https_status(port, "/metrics", &ca, Some(&basic("quarry", "wrong"))),
        401
    );
    let admin = node.client().await;
    let token: String = admin
        .query_one("CREATE ACCESS TOKEN scraper", &[])
        .await
        .expect("token")
        .get(0);
    assert!(token.starts_with("qat_"));
    let bearer = format!("Bearer {token}");
    assert_eq!(https_status(port, "/metrics", &ca, Some(&bearer)), 200);
    let listed = admin
        .query_one(
            "SELECT token_id, name, role_name, valid_until IS NULL FROM quarry_system.access_tokens",
            &[],
        )
        .await
        .expect("tokens");
    let id: String = listed.get(0);
    assert!(token.starts_with(&format!("qat_{id}_")), "{id} of {token}");
    assert_eq!(
        (
            listed.get::<_, String>(1),
            listed.get::<_, String>(2),
            listed.get::<_, bool>(3)
        ),
        ("scraper".to_owned(), "quarry".to_owned(), true)
    );
    let e = admin
        .batch_execute("CREATE ACCESS TOKEN scraper")
        .await
        .expect_err("a second token of that name");
    assert_eq!(sqlstate(&e), "42710");
    admin
        .batch_execute("DROP ACCESS TOKEN scraper")
        .await
        .expect("drop");
    assert_eq!(https_status(port, "/metrics", &ca, Some(&bearer)), 401);
    // The token's secret is in no log. (The secret is base64url, whose
    // alphabet has `_`: it is what follows the id, not the last `_`.)
    let secret = token.strip_prefix(&format!("qat_{id}_")).expect("secret");
    assert!(!node.log().contains(secret));
    // The streaming API takes the same logins, and the role needs INSERT.
    admin
        .batch_execute("CREATE TABLE feed (id bigint); CREATE ROLE bob LOGIN PASSWORD 'pw'")
        .await
        .expect("setup");
    let rows = Some(("application/x-ndjson", "{\"id\": 1}\n"));
    let path = "/v1/tables/public.feed/channels/c/rows?offset=0";
    assert_eq!(https_request(port, path, &ca, None, rows), 401);
    assert_eq!(
        https_request(port, path, &ca, Some(&basic("bob", "pw")), rows),
        403
    );
    admin
        .batch_execute("GRANT INSERT ON feed TO bob")
        .await
        .expect("grant");
    assert_eq!(
        https_request(port, path, &ca, Some(&basic("bob", "pw")), rows),
        200
    );
    let count: i64 = admin
        .query_one("SELECT count(*) FROM feed", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
    // HTTP logins are audited, with the caller's address, and count toward
    // the per-address limit of failed logins (2 so far): past 10, even the
    // right password gets 429 until the window ends.
    for _ in 0..8 {
        assert_eq!(
            https_status(port, "/metrics", &ca, Some(&basic("quarry", "wrong"))),
            401
        );
    }
    assert_eq!(
        https_status(
            port,
            "/metrics",
            &ca,
            Some(&basic("quarry", SUPERUSER_PASSWORD))
        ),
        429
    );
    let events = admin
        .query(
            "SELECT event, user_name, detail FROM quarry_system.audit \
             WHERE address LIKE '127.0.0.1:%' AND detail LIKE '%HTTP%'",
            &[],
        )
        .await
        .expect("audit");
    let events: Vec<(String, String, String)> = events
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for expected in [
        ("login", "quarry", "authenticated (HTTP Basic)"),
        ("login", "quarry", "authenticated (HTTP bearer token)"),
        ("login_failed", "quarry", "HTTP Basic: invalid credentials"),
    ] {
        assert!(
            events
                .iter()
                .any(|(e, u, d)| (e.as_str(), u.as_str(), d.as_str()) == expected),
            "{expected:?} not in {events:#?}"
        );
    }
}

#[tokio::test]
async fn a_cached_result_is_served_only_after_the_privileges_are_checked_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, &[]).await;
    let admin = node.client().await;
    admin
        .batch_execute(
            "CREATE TABLE secrets (a int); INSERT INTO secrets VALUES (7);
             CREATE ROLE alice LOGIN PASSWORD 'pw';
             GRANT USAGE ON SCHEMA public TO alice;
             GRANT SELECT ON secrets TO alice;",
        )
        .await
        .expect("setup");
    let alice = login(&node, "alice", "pw").await.expect("alice");
    let query = "SELECT sum(a) FROM secrets";
    let hits = || async {
        node.metric("quarry_result_cache_hits_total")
            .await
            .unwrap_or(0.0)
    };
    alice.query(query, &[]).await.expect("a miss, cached");
    let before = hits().await;
    alice.query(query, &[]).await.expect("a hit");
    assert_eq!(hits().await, before + 1.0);
    // Revoked: the cached rows are there, and still refused.
    admin
        .batch_execute("REVOKE SELECT ON secrets FROM alice")
        .await
        .expect("revoke");
    assert_eq!(
        denied(&alice, query).await,
        "permission denied for table secrets"
    );
    assert_eq!(hits().await, before + 1.0);
}

async fn alices_jobs(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM quarry_system.jobs WHERE query = 'SELECT ''alice was here'''",
            &[],
        )
        .await
        .expect("jobs")
        .get(0)
}

#[tokio::test]
async fn a_role_sees_and_cancels_its_own_jobs_and_a_superuser_everyone_s() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_secure(&dir.path().join("n1"), SUPERUSER_PASSWORD, &[]).await;
    let admin = node.client().await;
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'pw'; CREATE ROLE bob LOGIN PASSWORD 'pw';",
        )
        .await
        .expect("setup");
    let alice = login(&node, "alice", "pw").await.expect("alice");
    let bob = login(&node, "bob", "pw").await.expect("bob");
    alice
        .simple_query("SELECT 'alice was here'")
        .await
        .expect("alice's query");
    assert_eq!(alices_jobs(&alice).await, 1);
    assert_eq!(alices_jobs(&bob).await, 0, "bob does not see alice's jobs");
    assert_eq!(alices_jobs(&admin).await, 1, "a superuser sees every job");
    // Bob sees alice's backend without its query, and may not cancel it.
    let (pid, query): (i32, String) = {
        let row = bob
            .query_one(
                "SELECT pid, query FROM pg_stat_activity WHERE usename = 'alice'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        (row.get(0), row.get(1))
    };
    assert_eq!(query, "<insufficient privilege>");
    let job_id: String = admin
        .query_one(
            "SELECT job_id FROM quarry_system.jobs WHERE user_name = 'alice' LIMIT 1",
            &[],
        )
        .await
        .expect("alice's job")
        .get(0);
    let error = bob
        .batch_execute(&format!("CANCEL JOB '{job_id}'"))
        .await
        .expect_err("not bob's");
    assert_eq!(sqlstate(&error), "42501", "{error:?}");
    // Alice is idle: there is nothing to cancel, which is not an error.
    let cancelled: bool = admin
        .query_one(&format!("SELECT pg_cancel_backend({pid})"), &[])
        .await
        .expect("cancel idle")
        .get(0);
    assert!(!cancelled);
    // PostgreSQL's predefined roles: pg_read_all_stats sees every job and
    // statement, pg_signal_backend may cancel every role's.
    admin
        .batch_execute("GRANT pg_read_all_stats, pg_signal_backend TO bob")
        .await
        .expect("grant predefined roles");
    assert_eq!(
        alices_jobs(&bob).await,
        1,
        "pg_read_all_stats sees alice's jobs"
    );
    let query: String = bob
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE usename = 'alice'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_ne!(query, "<insufficient privilege>");
    let error = bob
        .batch_execute(&format!("CANCEL JOB '{job_id}'"))
        .await
        .expect_err("ended");
    assert_eq!(
        sqlstate(&error),
        "55000",
        "allowed, and not running: {error:?}"
    );
    for statement in [
        "DROP ROLE pg_read_all_stats",
        "ALTER ROLE pg_signal_backend LOGIN",
        "CREATE ROLE pg_mine",
    ] {
        let error = admin.batch_execute(statement).await.expect_err(statement);
        assert_eq!(sqlstate(&error), "42939", "{statement}: {error:?}");
    }
}
