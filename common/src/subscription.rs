//! Subscriptions to PostgreSQL publications (`CREATE SUBSCRIPTION`,
//! PostgreSQL's statement for a logical replication subscriber; its manual's
//! chapter 31, "Logical Replication"): which source, publications and slot,
//! the Quarry tables the published tables are replicated into, and how far
//! the source's write-ahead log has been applied.
//!
//! Exactly once: each source transaction is applied by one Raft command
//! that holds both its rows and the move of `applied_lsn` from the position
//! the applier read to the transaction's end LSN
//! ([`Subscription::advance`]). A second applier, or a replay after a crash,
//! moves from a position that is no longer current and is refused, so no
//! transaction is applied twice; the source is told a position only after
//! the command that reached it committed, so none is lost.

use serde::{Deserialize, Serialize};

use crate::catalog::{TableId, TimestampMicros};

/// A position in the source's write-ahead log (PostgreSQL's `pg_lsn`).
pub type Lsn = u64;

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its name (unique in the cluster, as PostgreSQL's are per database).
    pub name: String,
    /// The role that created it.
    pub owner: String,
    /// The source's connection string (libpq's `key=value` form) without
    /// its password.
    pub connection: String,
    /// The connection's password, kept in the Raft catalog only: no system
    /// table, log line or error shows it.
    pub password: Option<String>,
    /// The source's publications.
    pub publications: Vec<String>,
    /// The source's logical replication slot.
    pub slot_name: String,
    /// Whether an applier runs (ALTER SUBSCRIPTION ... ENABLE | DISABLE).
    pub enabled: bool,
    /// Whether the published tables' rows are copied before streaming
    /// (`copy_data`); without it only later changes arrive.
    pub copy_data: bool,
    /// Whether the subscription makes its slot (`create_slot`); else the
    /// slot must exist on the source. DROP SUBSCRIPTION drops it either
    /// way, as PostgreSQL's does.
    pub create_slot: bool,
    /// Where it stands.
    pub phase: SubscriptionPhase,
    /// The published tables and the Quarry tables they fill.
    pub tables: Vec<SubscribedTable>,
    /// The end LSN of the last source transaction applied (after the
    /// initial copy: the slot's consistent point); 0 before any.
    pub applied_lsn: Lsn,
    /// The end of the source's write-ahead log as the source last reported
    /// it to the applier (in its WAL data and keepalive messages) when the
    /// applier committed; lag in bytes is its distance from `applied_lsn`.
    pub source_wal_end: Lsn,
    /// Rows inserted, updated or deleted by applied transactions and the
    /// copy.
    pub rows_applied: u64,
    /// When `applied_lsn` last moved (Quarry's commit time).
    pub applied_at: TimestampMicros,
    /// The source commit time of the last transaction applied (microseconds
    /// since the Unix epoch), for lag in seconds; 0 before any.
    pub source_commit_at: TimestampMicros,
    /// The last error that stopped the applier, until it applies again.
    pub last_error: Option<String>,
    /// ALTER SUBSCRIPTION ... REFRESH PUBLICATION was asked, with its
    /// `copy_data`, and the applier has not yet done it (added the tables
    /// added to the publications, copied if `copy_data`).
    pub refresh: Option<bool>,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionPhase {
    /// Its slot and initial copy are not yet committed: an applier (re)makes
    /// the slot and copies the tables at its exported snapshot.
    Copying,
    /// The copy is committed: an applier streams from `applied_lsn`.
    Streaming,
}

impl SubscriptionPhase {
    /// Its name in `quarry_system.subscriptions`.
    pub fn name(self) -> &'static str {
        match self {
            SubscriptionPhase::Copying => "copying",
            SubscriptionPhase::Streaming => "streaming",
        }
    }
}

/// A published table and the Quarry table it is replicated into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTable {
    /// The source table's schema.
    pub source_schema: String,
    /// The source table's name.
    pub source_name: String,
    /// The Quarry table.
    pub table: TableId,
    /// The source position its copy was taken at (the exported snapshot's
    /// consistent point): changes of transactions the source committed
    /// before it are in the copy and are not applied again.
    pub copied_at: Lsn,
    /// The source table's columns as followed so far: a Relation message
    /// that gives one of them another type stops the applier.
    pub columns: Vec<SourceColumn>,
}

impl SubscribedTable {
    /// Whether it is source table `schema`.`name`.
    pub fn is(&self, schema: &str, name: &str) -> bool {
        self.source_schema == schema && self.source_name == name
    }
}

/// A column of a source table as the source declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceColumn {
    /// Its name.
    pub name: String,
    /// Its type's oid on the source (`atttypid`).
    pub type_oid: u32,
    /// Its type modifier (`atttypmod`; -1 for none).
    pub type_modifier: i32,
}

/// A move of a subscription's applied position ([`Subscription::advance`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The subscription.
    pub subscription: String,
    /// The `applied_lsn` the applier read: the move is refused unless it
    /// is still current.
    pub from_lsn: Lsn,
    /// The end LSN of the transaction applied (or the consistent point of
    /// the copy).
    pub to_lsn: Lsn,
    /// Rows the transaction changed.
    pub rows: u64,
    /// The transaction's commit time on the source (microseconds since the
    /// Unix epoch); 0 when unknown.
    pub source_commit_at: TimestampMicros,
    /// The end of the source's write-ahead log as last reported to the
    /// applier; 0 when unknown.
    pub source_wal_end: Lsn,
    /// The phase after the move (`Streaming` once the copy commits).
    pub phase: SubscriptionPhase,
    /// The tables replicated from then on (the copy's, after a REFRESH
    /// PUBLICATION, or with their source columns changed), if they change.
    pub tables: Option<Vec<SubscribedTable>>,
    /// It ends a REFRESH PUBLICATION (or the copy, which also answers one).
    pub refreshed: bool,
}

/// Why a move of the applied position was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressRefused {
    /// The position moved meanwhile (another applier, or a replay).
    Moved {
        /// Where it is.
        current: Lsn,
    },
    /// Backwards.
    Backwards,
}

impl Subscription {
    /// A new subscription `name` of `owner` to `publications` at
    /// `connection` (without its password), with PostgreSQL's defaults:
    /// enabled, its slot named as it, made by it, and the tables copied.
    pub fn new(
        name: &str,
        owner: &str,
        connection: String,
        password: Option<String>,
        publications: Vec<String>,
    ) -> Subscription {
        Subscription {
            name: name.to_owned(),
            owner: owner.to_owned(),
            connection,
            password,
            publications,
            slot_name: name.to_owned(),
            enabled: true,
            copy_data: true,
            create_slot: true,
            phase: SubscriptionPhase::Copying,
            tables: Vec::new(),
            applied_lsn: 0,
            source_wal_end: 0,
            rows_applied: 0,
            applied_at: 0,
            source_commit_at: 0,
            last_error: None,
            refresh: None,
        }
    }

    /// Applies `progress` at commit time `now`: the position moves from
    /// `from_lsn` to `to_lsn` only if `from_lsn` is still current and
    /// `to_lsn` is not behind it.
    ///
    /// # Errors
    /// [`ProgressRefused`], the subscription unchanged.
    pub fn advance(
        &mut self,
        progress: &Progress,
        now: TimestampMicros,
    ) -> Result<(), ProgressRefused> {
        if progress.from_lsn != self.applied_lsn {
            return Err(ProgressRefused::Moved {
                current: self.applied_lsn,
            });
        }
        if progress.to_lsn < progress.from_lsn {
            return Err(ProgressRefused::Backwards);
        }
        self.applied_lsn = progress.to_lsn;
        self.rows_applied += progress.rows;
        self.applied_at = now;
        if progress.source_commit_at != 0 {
            self.source_commit_at = progress.source_commit_at;
        }
        self.source_wal_end = self
            .source_wal_end
            .max(progress.source_wal_end)
            .max(progress.to_lsn);
        self.phase = progress.phase;
        if let Some(tables) = &progress.tables {
            self.tables = tables.clone();
        }
        if progress.refreshed {
            self.refresh = None;
        }
        self.last_error = None;
        Ok(())
    }

    /// Seconds from the source's commit of the last transaction applied to
    /// Quarry's commit of it; None before any.
    pub fn lag_seconds(&self) -> Option<f64> {
        (self.source_commit_at != 0)
            .then(|| (self.applied_at - self.source_commit_at).max(0) as f64 / 1e6)
    }

    /// Bytes of the source's write-ahead log not yet applied, as of the
    /// applier's last commit.
    pub fn lag_bytes(&self) -> u64 {
        self.source_wal_end.saturating_sub(self.applied_lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription() -> Subscription {
        let mut s = Subscription::new(
            "s",
            "quarry",
            "host=127.0.0.1".into(),
            None,
            vec!["p".into()],
        );
        s.last_error = Some("an earlier failure".into());
        s
    }

    fn progress(from_lsn: Lsn, to_lsn: Lsn) -> Progress {
        Progress {
            subscription: "s".into(),
            from_lsn,
            to_lsn,
            rows: 2,
            source_commit_at: 7,
            source_wal_end: to_lsn + 50,
            phase: SubscriptionPhase::Streaming,
            tables: None,
            refreshed: false,
        }
    }

    #[test]
    fn the_position_moves_once_from_where_it_was() {
        let mut s = subscription();
        s.advance(&progress(0, 100), 5).expect("from the start");
        assert_eq!(
            (
                s.applied_lsn,
                s.rows_applied,
                s.applied_at,
                s.source_commit_at
            ),
            (100, 2, 5, 7)
        );
        assert_eq!(s.phase, SubscriptionPhase::Streaming);
        assert_eq!(s.last_error, None, "applying clears the last error");
        assert_eq!(
            s.lag_bytes(),
            50,
            "the source's WAL end beyond the position"
        );
        // The same transaction again (a replay, or a second applier).
        assert_eq!(
            s.advance(&progress(0, 100), 6),
            Err(ProgressRefused::Moved { current: 100 })
        );
        assert_eq!(
            s.advance(&progress(100, 90), 6),
            Err(ProgressRefused::Backwards)
        );
        assert_eq!(
            (s.applied_lsn, s.rows_applied),
            (100, 2),
            "unchanged by refusals"
        );
        s.advance(&progress(100, 180), 8).expect("the next one");
        assert_eq!((s.applied_lsn, s.rows_applied), (180, 4));
        // A WAL end reported earlier than the position: no lag.
        let mut caught_up = progress(180, 300);
        caught_up.source_wal_end = 250;
        s.advance(&caught_up, 9).expect("caught up");
        assert_eq!(s.lag_bytes(), 0);
        // A refresh asked stays asked until a move says it is done.
        s.refresh = Some(true);
        let mut reshaped = progress(300, 300);
        reshaped.tables = Some(Vec::new());
        s.advance(&reshaped, 10).expect("tables changed");
        assert_eq!(s.refresh, Some(true));
        let mut refreshed = progress(300, 300);
        refreshed.refreshed = true;
        s.advance(&refreshed, 11).expect("refreshed");
        assert_eq!(s.refresh, None);
    }
}
