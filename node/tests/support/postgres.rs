//! A throwaway PostgreSQL server for tests that need a real one (a
//! replication source): Debian's `postgresql` (installed by .ci/run),
//! started by `initdb` and `pg_ctl` in a temporary directory, listening on
//! 127.0.0.1 at a free port with trust authentication. As root it runs as
//! the `postgres` user, since PostgreSQL refuses to run as root. Dropping
//! it stops the server (`pg_ctl stop -m immediate`) and removes the
//! directory.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_postgres::{Client, NoTls};

/// A running PostgreSQL server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl PgServer {
    /// Starts a server with `settings` (`name=value`) added to its
    /// configuration, e.g. `wal_level=logical`.
    pub fn start(settings: &[&str]) -> PgServer {
        let bin =
            newest_bin().expect("no PostgreSQL server: install Debian's postgresql (.ci/run does)");
        let dir = tempfile::Builder::new()
            .prefix("quarry-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let root = is_root();
        if root {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        let port = super::node::free_port();
        let pg = |program: &str| -> Command {
            let path = bin.join(program);
            if root {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(path);
                command
            } else {
                Command::new(path)
            }
        };
        run(pg("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let mut options = format!(
            "-k {} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        run(pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(dir.path().join("log"))
            .args(["-o", &options, "start"]));
        PgServer { dir, bin, port }
    }

    /// The directory of its Unix socket (a libpq `host` for it).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection to database `dbname` as `postgres`.
    pub async fn client(&self, dbname: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={dbname}",
                self.port
            ),
            NoTls,
        )
        .await
        .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
    }

    /// Copies `files` into the server's directory, owned by the server's
    /// user and readable by it alone (as PostgreSQL wants of a key file);
    /// returns where they are.
    pub fn install_files(&self, files: &[&Path]) -> Vec<PathBuf> {
        files
            .iter()
            .map(|file| {
                let to = self.dir.path().join(file.file_name().expect("a file name"));
                std::fs::copy(file, &to).expect("copy");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if is_root() {
                    run(Command::new("chown").args(["postgres:postgres"]).arg(&to));
                }
                to
            })
            .collect()
    }

    /// Replaces the server's pg_hba.conf with `lines` (applied at the next
    /// configuration reload).
    pub fn set_hba(&self, lines: &str) {
        std::fs::write(self.dir.path().join("data").join("pg_hba.conf"), lines)
            .expect("pg_hba.conf");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            command
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

/// The bin directory of the newest installed PostgreSQL server.
fn newest_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_str()?.parse().ok()?;
            let bin = path.join("bin");
            Path::new(&bin.join("initdb"))
                .exists()
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root (its effective user id, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
