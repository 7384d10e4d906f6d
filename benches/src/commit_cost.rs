//! `commit-cost`: what one commit costs the Raft state machine as history
//! grows. In-process, no network or disk: a catalog with `tables` tables, one
//! of which has `history` snapshots (each commit adding one data file in one
//! stripe, as a one-row INSERT does), then `commits` more one-file commits to
//! that table, each applied as the state machine applies a batch (clone the
//! current catalog, apply, publish) while the previous version is still held,
//! as a running statement holds the version it pinned. Prints per case the
//! apply time (p50, p99, µs) and the size of a state-machine snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_common::catalog::{
    Catalog, ChunkId, ColumnStats, ColumnType, DataFile, Datum, Stripe, StripeChunk, TableId,
};
use quarry_raft::{ColumnDef, Command, Proposal, TableChange};

/// Settings of a run.
pub struct Settings {
    /// Numbers of tables in the catalog.
    pub tables: Vec<usize>,
    /// Numbers of snapshots of the committed table's history.
    pub history: Vec<usize>,
    /// Commits timed per case.
    pub commits: usize,
}

fn propose(catalog: &mut Catalog, command: Command) {
    let proposal = Proposal {
        command,
        proposed_at: quarry_raft::now_micros(),
    };
    quarry_raft::command::apply(catalog, &proposal).expect("the benchmark's commands are valid");
}

/// A one-file, one-stripe commit to `table`, as a one-row INSERT on one node.
fn one_row_commit(table: TableId, n: u128) -> Command {
    let chunk = ChunkId(n << 1);
    let file = DataFile {
        chunk,
        size_bytes: 1_000,
        checksum_crc32c: 0,
        row_count: 1,
        column_stats: vec![ColumnStats {
            field_id: 1,
            null_count: 0,
            min: Some(Datum::Int(n as i64)),
            max: Some(Datum::Int(n as i64)),
        }],
    };
    Command::Commit {
        changes: vec![TableChange {
            table,
            added: vec![file],
            removed: Vec::new(),
            stripes: vec![Stripe {
                id: ChunkId((n << 1) | 1),
                data_chunks: 1,
                chunks: vec![StripeChunk {
                    chunk,
                    node: 1,
                    size_bytes: 1_000,
                    checksum_crc32c: 0,
                }],
            }],
        }],
        read_set: Vec::new(),
    }
}

/// The catalog of one case: `tables` tables, the first with `history` snapshots.
fn catalog(tables: usize, history: usize) -> (Catalog, TableId) {
    let mut catalog = Catalog::default();
    propose(
        &mut catalog,
        Command::CreateSchema {
            name: "public".into(),
            if_not_exists: false,
        },
    );
    for i in 0..tables {
        propose(
            &mut catalog,
            Command::CreateTable {
                schema: "public".into(),
                name: format!("t{i}"),
                columns: vec![ColumnDef {
                    name: "v".into(),
                    column_type: ColumnType::Int64,
                    nullable: true,
                    default: None,
                }],
                if_not_exists: false,
                files: Vec::new(),
                retention_micros: None,
                field_ids: Vec::new(),
                layout: None,
                stripes: Vec::new(),
            },
        );
    }
    let table = catalog.table("public", "t0").expect("created above").id;
    // The creation snapshot is the first of the history.
    for n in 1..history {
        propose(&mut catalog, one_row_commit(table, n as u128));
    }
    (catalog, table)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Runs every case and prints the table.
pub fn run(settings: Settings) {
    println!(
        "| tables | snapshots of history | apply p50 µs | apply p99 µs | state-machine snapshot bytes |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &tables in &settings.tables {
        for &history in &settings.history {
            let (catalog, table) = catalog(tables.max(1), history.max(1));
            let mut current = Arc::new(catalog);
            let mut times = Vec::with_capacity(settings.commits);
            for i in 0..settings.commits {
                let command = one_row_commit(table, (1 << 40) + i as u128);
                let proposal = Proposal {
                    command,
                    proposed_at: quarry_raft::now_micros(),
                };
                // A statement still holds the version it pinned.
                let pinned = current.clone();
                let began = Instant::now();
                let mut next = (*current).clone();
                quarry_raft::command::apply(&mut next, &proposal).expect("valid commit");
                current = Arc::new(next);
                times.push(began.elapsed());
                drop(pinned);
            }
            times.sort();
            let snapshot_bytes = postcard::to_allocvec(current.as_ref())
                .expect("encoding to a Vec cannot fail")
                .len();
            println!(
                "| {tables} | {history} | {:.1} | {:.1} | {snapshot_bytes} |",
                percentile(&times, 0.5),
                percentile(&times, 0.99),
            );
        }
    }
}
