//! TLS on the PostgreSQL port and HTTPS on the HTTP listener: certificates
//! from `quarry cert`, clients verifying the node (`sslmode=verify-full` of
//! psql, psycopg and JDBC; Python's urllib), plain PostgreSQL connections
//! still taken, and a certificate replaced on SIGHUP.

#[path = "support/node.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::quarry_cert as cert;

/// The body of `https://localhost:PORT/PATH`, trusting the CA `ca`, or the
/// error (Python's urllib, verifying the certificate and its host name).
fn https_get(port: u16, path: &str, ca: &Path) -> Result<String, String> {
    let script = format!(
        "import ssl, urllib.request\n\
         context = ssl.create_default_context(cafile={ca:?})\n\
         print(urllib.request.urlopen('https://localhost:{port}{path}', context=context, \
         timeout=10).read().decode(), end='')\n",
        ca = ca.display().to_string()
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// psql's `\conninfo` over a connection with `options` (libpq keywords), or
/// its error.
fn psql(port: u16, options: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .arg(format!(
            "host=localhost port={port} user=quarry dbname=quarry connect_timeout=10 {options}"
        ))
        .args(["-X", "-c", "\\conninfo", "-c", "SELECT 41 + 1"])
        .output()
        .expect("psql runs (.ci/run installs postgresql-client)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[tokio::test]
async fn clients_verify_the_node_certificate_and_sighup_replaces_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let node = support::start_with_tls(
        &dir.path().join("data"),
        &certs,
        &["localhost", "127.0.0.1"],
    )
    .await;
    let node_cert = certs.join("node.crt");
    let node_key = certs.join("node.key");
    let ca = certs.join("ca.crt");
    let verify = |ca: &Path| format!("sslmode=verify-full sslrootcert={}", ca.display());

    let secured = psql(node.pg_port, &verify(&ca)).expect("verify-full connects");
    assert!(
        secured.contains("SSL connection (protocol: TLSv1.3"),
        "{secured}"
    );
    assert!(secured.contains("42"), "{secured}");
    // The HTTP listener speaks HTTPS with the same certificate, only.
    assert_eq!(
        https_get(node.http_port, "/health", &ca).expect("https"),
        "ok\n"
    );
    let plain_http = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request\n\
                 urllib.request.urlopen('http://localhost:{}/health', timeout=10)",
                node.http_port
            ),
        ])
        .output()
        .expect("python3 runs");
    assert!(!plain_http.status.success(), "plain HTTP was answered");
    // JDBC (Java's TLS) and psycopg verify the node too.
    let jdbc = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/drivers/jdbc/JdbcTls.java"),
        )
        .arg(format!(
            "jdbc:postgresql://localhost:{}/quarry?sslmode=verify-full&sslrootcert={}",
            node.pg_port,
            ca.display()
        ))
        .arg("quarry")
        .output()
        .expect("java runs (.ci/run installs the JDK and libpostgresql-jdbc-java)");
    let jdbc_out = format!(
        "{}{}",
        String::from_utf8_lossy(&jdbc.stdout),
        String::from_utf8_lossy(&jdbc.stderr)
    );
    assert!(
        jdbc.status.success() && jdbc_out.contains("jdbc tls: ok"),
        "{jdbc_out}"
    );
    let psycopg = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import psycopg\n\
                 with psycopg.connect('host=localhost port={} user=quarry dbname=quarry \
                 sslmode=verify-full sslrootcert={}') as conn:\n\
                 \x20   assert conn.pgconn.ssl_in_use\n\
                 \x20   print(conn.execute('SELECT 42').fetchone()[0])\n",
                node.pg_port,
                ca.display()
            ),
        ])
        .output()
        .expect("python3 runs (.ci/run installs psycopg)");
    assert_eq!(
        String::from_utf8_lossy(&psycopg.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&psycopg.stderr)
    );
    let plain = psql(node.pg_port, "sslmode=disable").expect("a plain connection is taken");
    assert!(!plain.contains("SSL connection"), "{plain}");
    // A CA that did not sign the node's certificate is not trusted.
    let other = dir.path().join("other");
    cert(&other, &["create-ca"]);
    let refused = psql(node.pg_port, &verify(&other.join("ca.crt")))
        .expect_err("a certificate from another CA");
    assert!(refused.contains("certificate verify failed"), "{refused}");

    // Replace the node's certificate by one of the other CA and send SIGHUP:
    // new connections get the new certificate.
    cert(&other, &["create-node", "--host", "localhost"]);
    std::fs::copy(other.join("node.crt"), &node_cert).expect("copy cert");
    std::fs::copy(other.join("node.key"), &node_key).expect("copy key");
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut reloaded = Err(String::new());
    for _ in 0..50 {
        reloaded = psql(node.pg_port, &verify(&other.join("ca.crt")));
        if reloaded.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reloaded = reloaded.expect("the reloaded certificate is served");
    assert!(reloaded.contains("SSL connection"), "{reloaded}");
    assert!(
        psql(node.pg_port, &verify(&ca)).is_err(),
        "the old certificate is no longer served"
    );
    assert!(node.log().contains("TLS certificate reloaded"));
    assert_eq!(
        https_get(node.http_port, "/ready", &other.join("ca.crt")).expect("https after reload"),
        "ready\n"
    );
    assert!(https_get(node.http_port, "/health", &ca).is_err());
}

#[tokio::test]
async fn a_node_with_an_unreadable_certificate_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.crt");
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--pg-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .expect("quarry runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read certificate"), "{stderr}");
    // Nothing was left behind for a later start to trip on.
    assert!(!dir.path().join("data").exists());
}
