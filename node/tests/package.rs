//! The Debian package (`cargo deb -p quarry-node`): built from this test's
//! binary, checked by lintian, then installed, run, upgraded and purged in a
//! Debian chroot made by debootstrap (Debian's own tools, no container).

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Runs `cmd`, failing the test with its output unless it succeeds; stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo deb` of the binary under test, as version `version`, into `out`.
/// cargo-deb packages what it finds under `<target dir>/release`, so the
/// test binary is put there in a target dir of its own (`--no-build`).
fn build_deb(version: &str, out: &Path) -> PathBuf {
    let target = out.join(format!("target-{version}"));
    std::fs::create_dir_all(target.join("release")).expect("target dir");
    std::fs::copy(env!("CARGO_BIN_EXE_quarry"), target.join("release/quarry")).expect("binary");
    let deb = out.join(format!("quarry_{version}_amd64.deb"));
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args([
                "deb",
                "-p",
                "quarry-node",
                "--no-build",
                "--strip",
                "--fast",
                "--deb-version",
                version,
                "-o",
            ])
            .arg(&deb)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(WORKSPACE),
    );
    deb
}

/// A minimal Debian (the host's release, bookworm) made once by debootstrap
/// and kept under the target dir; each run copies it.
fn pristine_root() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-bookworm-minbase");
    if root.join("usr/bin/dpkg").exists() {
        return root;
    }
    let partial = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=adduser", "bookworm"])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"));
    std::fs::rename(&partial, &root).expect("keep the chroot");
    root
}

/// A command run inside the chroot.
fn in_root(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root).args(args);
    cmd
}

/// The packaged node started in the chroot the way the unit starts it (as
/// user quarry, with /etc/quarry/quarry.toml), on free ports; killed on drop.
struct ChrootNode {
    child: Child,
    pg_port: u16,
    log: PathBuf,
}

impl ChrootNode {
    async fn start(root: &Path, log: PathBuf) -> ChrootNode {
        let (pg_port, http_port, listen_port) = (free_port(), free_port(), free_port());
        let child = Command::new("chroot")
            .arg("--userspec=quarry:quarry")
            .arg(root)
            .args(["/usr/bin/quarry", "start"])
            .args(["--config", "/etc/quarry/quarry.toml"])
            .arg(format!("--pg-listen=127.0.0.1:{pg_port}"))
            .arg(format!("--http-listen=127.0.0.1:{http_port}"))
            .arg(format!("--listen=127.0.0.1:{listen_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the packaged node");
        let mut node = ChrootNode {
            child,
            pg_port,
            log,
        };
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", node.pg_port)).is_ok() {
                return node;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("the packaged node exited with {status}:\n{}", node.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the packaged node did not start:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self, password: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=quarry password={password} dbname=quarry \
                 connect_timeout=10",
                self.pg_port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("log in with the generated password: {e}\n{}", self.log()));
        tokio::spawn(connection);
        client
    }

    /// SIGTERM, as systemd stops it; the node exits 0.
    fn stop(mut self) {
        signal(self.child.id(), "TERM");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{status}:\n{}", self.log());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChrootNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill(1) `-signal pid`.
fn signal(pid: u32, signal: &str) {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string()));
}

/// `stat -c FORMAT path` inside the chroot.
fn stat(root: &Path, format: &str, path: &str) -> String {
    run(&mut in_root(root, &["stat", "-c", format, path]))
        .trim()
        .to_owned()
}

#[test]
fn the_packaged_manual_page_is_the_binarys() {
    let page = run(Command::new(env!("CARGO_BIN_EXE_quarry")).arg("man"));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/debian/quarry.1"
    ))
    .expect("deploy/debian/quarry.1");
    assert!(
        page.contains(".TH quarry 1") && page.contains("drain"),
        "{page}"
    );
    assert!(
        committed == page,
        "deploy/debian/quarry.1 is stale: cargo run -p quarry-node --bin quarry -- man > deploy/debian/quarry.1"
    );
}

#[test]
fn the_package_is_clean_under_lintian_and_holds_the_unit_and_a_conffile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deb = build_deb("0.1.0-1", dir.path());
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian runs (Debian's lintian; .ci/run installs it)");
    let said = String::from_utf8_lossy(&lintian.stdout).into_owned();
    assert!(
        lintian.status.success()
            && !said
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{said}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: quarry"), "{info}");
    assert!(info.contains("Section: database"), "{info}");
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/quarry",
        "./etc/quarry/quarry.toml",
        "quarry.service",
        "./usr/share/man/man1/quarry.1.gz",
    ] {
        assert!(
            listing.contains(path),
            "{path} not in the package:\n{listing}"
        );
    }
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/quarry/quarry.toml"),
        "{conffiles}"
    );
}

#[tokio::test]
async fn install_run_upgrade_and_purge_in_a_debian_chroot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old = build_deb("0.1.0-1", dir.path());
    let new = build_deb("0.1.1-1", dir.path());
    let root = dir.path().join("root");
    run(Command::new("cp").arg("-a").arg(pristine_root()).arg(&root));
    for deb in [&old, &new] {
        std::fs::copy(deb, root.join("tmp").join(deb.file_name().expect("name"))).expect("copy");
    }

    // Install: a system user with no login, its data dir readable only by
    // it, the binary, the unit, a random first password only quarry reads.
    run(&mut in_root(
        &root,
        &["dpkg", "-i", "/tmp/quarry_0.1.0-1_amd64.deb"],
    ));
    let passwd = run(&mut in_root(&root, &["getent", "passwd", "quarry"]));
    assert!(
        passwd
            .trim_end()
            .ends_with(":/var/lib/quarry:/usr/sbin/nologin"),
        "{passwd}"
    );
    assert_eq!(
        stat(&root, "%U:%G %a", "/var/lib/quarry"),
        "quarry:quarry 700"
    );
    assert_eq!(
        stat(&root, "%U:%G %a", "/etc/quarry/initial-password"),
        "root:quarry 640"
    );
    let password = std::fs::read_to_string(root.join("etc/quarry/initial-password"))
        .expect("password")
        .trim()
        .to_owned();
    assert!(password.len() >= 20, "{password}");
    let version = run(&mut in_root(&root, &["/usr/bin/quarry", "--version"]));
    assert!(version.starts_with("quarry 0.1.0"), "{version}");
    assert!(
        root.join("lib/systemd/system/quarry.service").exists()
            || root.join("usr/lib/systemd/system/quarry.service").exists()
    );

    // The packaged configuration runs a node that keeps its data in
    // /var/lib/quarry; its superuser logs in with the generated password.
    let node = ChrootNode::start(&root, dir.path().join("node1.log")).await;
    node.client(&password)
        .await
        .batch_execute(
            "CREATE TABLE kept (id bigint, note text); \
             INSERT INTO kept VALUES (1, 'before the upgrade')",
        )
        .await
        .expect("write");
    node.stop();
    assert!(root.join("var/lib/quarry/meta.redb").exists());

    // Upgrade: the operator's change to the conffile and the data stay.
    let config = root.join("etc/quarry/quarry.toml");
    let mut edited = std::fs::read_to_string(&config).expect("config");
    edited.push_str("\n# changed by the operator\nshutdown_grace_secs = 5\n");
    std::fs::write(&config, &edited).expect("edit the conffile");
    run(&mut in_root(
        &root,
        &["dpkg", "-i", "/tmp/quarry_0.1.1-1_amd64.deb"],
    ));
    let status = run(&mut in_root(&root, &["dpkg-query", "-W", "quarry"]));
    assert_eq!(status.trim(), "quarry\t0.1.1-1");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);
    let node = ChrootNode::start(&root, dir.path().join("node2.log")).await;
    let rows = node
        .client(&password)
        .await
        .query("SELECT note FROM kept", &[])
        .await
        .expect("read after the upgrade");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "before the upgrade");
    node.stop();

    // Remove keeps configuration and data; purge removes them.
    run(&mut in_root(&root, &["dpkg", "--remove", "quarry"]));
    assert!(!root.join("usr/bin/quarry").exists());
    assert!(config.exists() && root.join("var/lib/quarry/meta.redb").exists());
    run(&mut in_root(&root, &["dpkg", "--purge", "quarry"]));
    assert!(!root.join("etc/quarry").exists());
    assert!(!root.join("var/lib/quarry").exists());
    // dpkg forgets a purged package.
    let left = in_root(&root, &["dpkg-query", "-W", "quarry"])
        .output()
        .expect("dpkg-query");
    assert!(!left.status.success(), "{left:?}");
}
