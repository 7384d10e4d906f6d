//! Runs every sqllogictest file in tests/sql/ against a fresh `quarry` process,
//! through the PostgreSQL wire (simple query protocol, text results).
//!
//! Errors show as `SQLSTATE: message`, so a file can pin the code:
//! `statement error 42P01: .*`.

#[path = "support/node.rs"]
mod support;

use std::path::PathBuf;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use support::TestNode;
use tokio_postgres::SimpleQueryMessage;

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct Wire(tokio_postgres::Client);

#[async_trait]
impl AsyncDB for Wire {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let messages = self
            .0
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => SqlError(format!("{}: {}", db.code().code(), db.message())),
                None => SqlError(e.to_string()),
            })?;
        let mut columns = None;
        let mut rows = Vec::new();
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(description) => {
                    columns = Some(description.len())
                }
                SimpleQueryMessage::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| match row.get(i) {
                            None => "NULL".to_owned(),
                            Some("") => "(empty)".to_owned(),
                            Some(value) => value.to_owned(),
                        })
                        .collect(),
                ),
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        Ok(match columns {
            Some(n) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            },
            None => DBOutput::StatementComplete(affected),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "quarry"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[tokio::test]
async fn sqllogictest_files_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/sql")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for file in files {
        let temp = tempfile::tempdir().expect("temp dir");
        let node = TestNode::start(&temp.path().join("data")).await;
        let conn = node.conn_string();
        let mut runner = sqllogictest::Runner::new(move || {
            let conn = conn.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| SqlError(e.to_string()))?;
                tokio::spawn(connection);
                Ok(Wire(client))
            }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {}", file.display(), e.display(true));
        }
    }
}

/// The expected results, errors and SQLSTATEs of these files are checked against
/// a real PostgreSQL server too (Debian's `postgresql`, installed by .ci/run and
/// started by the script), so they pin PostgreSQL's semantics rather than
/// whatever Quarry returns. Records marked `# quarry-only` are Quarry's own
/// extensions and are skipped there.
#[test]
fn sql_expectations_agree_with_postgresql() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = [
        "tests/sql/basics.slt",
        "tests/sql/dml.slt",
        "tests/sql/merge.slt",
        "tests/sql/alter.slt",
        "tests/sql/transactions.slt",
        "tests/sql/errors.slt",
        "tests/sql/views.slt",
        "tests/sql/functions.slt",
        "tests/sql/constraints.slt",
        "tests/sql/nested.slt",
    ];
    let output = std::process::Command::new("python3")
        .current_dir(&root)
        .arg("tests/sql/crosscheck_postgres.py")
        .args(files)
        .output()
        .expect("python3 runs (.ci/run installs psycopg)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(
        text.matches("agree with PostgreSQL").count(),
        files.len(),
        "{text}"
    );
}
