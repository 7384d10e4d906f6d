//! A table's data layout: partitions, and the order and indexes within
//! each data file (clustering, bloom filters).
//!
//! Partitioned tables, as BigQuery has them
//! (<https://cloud.google.com/bigquery/docs/partitioned-tables>): a table's
//! rows are divided by one column into partitions (a day, hour, month or
//! year of a DATE or timestamp column, or a bucket of an integer range),
//! no data file holds rows of two partitions, and so a file's partition is
//! known from its zone map alone: scans skip whole partitions from
//! metadata, a partition can be deleted without reading it, and old ones
//! expire.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::catalog::{ColumnType, DataFile, Datum, FieldId};

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// How rows are laid out within each of a table's data files (CREATE TABLE
/// ... CLUSTER BY, `WITH (bloom_filter_columns = '...')`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLayout {
    /// Columns each data file's rows are sorted by, at most
    /// [`MAX_CLUSTER_COLUMNS`] (BigQuery's clustering columns).
    pub cluster_by: Vec<FieldId>,
    /// Columns whose Parquet column chunks carry a split-block bloom filter.
    pub bloom_filters: Vec<FieldId>,
}

/// Most clustering columns a table has (BigQuery's limit).
pub const MAX_CLUSTER_COLUMNS: usize = 4;

/// How a table is partitioned (CREATE TABLE ... PARTITION BY).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitioning {
    /// The partitioning column.
    pub field_id: FieldId,
    /// Its type (DATE, TIMESTAMP, TIMESTAMPTZ or an integer type).
    pub column_type: ColumnType,
    /// How its values map to partitions.
    pub scheme: PartitionScheme,
    /// Time partitions whose end is older than this many microseconds are
    /// deleted (BigQuery's `partition_expiration_days`).
    pub expiration_micros: Option<i64>,
    /// Whether queries must filter on the column so that partitions can be
    /// skipped (BigQuery's `require_partition_filter`).
    pub require_filter: bool,
}

/// How values of the partitioning column map to partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionScheme {
    /// Time-unit partitioning: `PARTITION BY date_col` (days) or
    /// `PARTITION BY DATE_TRUNC(col, unit)`.
    Time(TimeUnit),
    /// Integer-range partitioning:
    /// `PARTITION BY RANGE_BUCKET(col, GENERATE_ARRAY(start, end, interval))`;
    /// values outside `start..end` go to the `__UNPARTITIONED__` partition.
    IntegerRange {
        /// First value of the first bucket.
        start: i64,
        /// End of the last bucket (exclusive).
        end: i64,
        /// Width of a bucket.
        interval: i64,
    },
}

/// The units of time partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeUnit {
    /// An hour (timestamp columns only).
    Hour,
    /// A day.
    Day,
    /// A calendar month.
    Month,
    /// A calendar year.
    Year,
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeUnit::Hour => "HOUR",
            TimeUnit::Day => "DAY",
            TimeUnit::Month => "MONTH",
            TimeUnit::Year => "YEAR",
        })
    }
}

/// One partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PartitionKey {
    /// Rows whose partitioning column is NULL (`__NULL__`).
    Null,
    /// Integer values outside the range (`__UNPARTITIONED__`).
    Unpartitioned,
    /// The partition starting at this value of the column, in the column's
    /// unit: days for DATE, microseconds for timestamps, the bucket's first
    /// value for integer ranges.
    Start(i64),
}

impl Partitioning {
    /// The partition of a non-NULL value of the column, given as days (DATE),
    /// microseconds (timestamps) or the integer.
    pub fn key_of(&self, value: i64) -> PartitionKey {
        match self.scheme {
            PartitionScheme::IntegerRange {
                start,
                end,
                interval,
            } => {
                if value < start || value >= end {
                    PartitionKey::Unpartitioned
                } else {
                    PartitionKey::Start(start + (value - start) / interval * interval)
                }
            }
            PartitionScheme::Time(unit) => {
                PartitionKey::Start(truncate(value, &self.column_type, unit))
            }
        }
    }

    /// The first and last values (inclusive) of partition `Start(start)`.
    pub fn bounds(&self, start: i64) -> (i64, i64) {
        let next = match self.scheme {
            PartitionScheme::IntegerRange { interval, end, .. } => {
                start.saturating_add(interval).min(end)
            }
            PartitionScheme::Time(unit) => next_start(start, &self.column_type, unit),
        };
        (start, next.saturating_sub(1))
    }

    /// The partition of `file`, from its zone map of the partitioning
    /// column (its rows all share one partition); None if the zone map
    /// does not say (no statistics for the column).
    pub fn key_of_file(&self, file: &DataFile) -> Option<PartitionKey> {
        let stats = file
            .column_stats
            .iter()
            .find(|s| s.field_id == self.field_id)?;
        if stats.null_count == file.row_count {
            return Some(PartitionKey::Null);
        }
        let min = match stats.min.as_ref()? {
            Datum::Int(v) | Datum::Timestamp(v) => *v,
            Datum::Date(d) => i64::from(*d),
            _ => return None,
        };
        Some(self.key_of(min))
    }

    /// When partition `key` ends, in microseconds since the epoch (time
    /// partitioning only): what expiration counts from.
    pub fn end_micros(&self, key: PartitionKey) -> Option<i64> {
        let (PartitionScheme::Time(_), PartitionKey::Start(start)) = (self.scheme, key) else {
            return None;
        };
        let (_, last) = self.bounds(start);
        Some(match self.column_type {
            ColumnType::Date => (last + 1).saturating_mul(MICROS_PER_DAY),
            _ => last + 1,
        })
    }

    /// BigQuery's partition id: `20240131` (day), `2024013113` (hour),
    /// `202401` (month), `2024` (year), the bucket's start for integer
    /// ranges, `__NULL__` and `__UNPARTITIONED__`.
    pub fn partition_id(&self, key: PartitionKey) -> String {
        let start = match key {
            PartitionKey::Null => return "__NULL__".to_owned(),
            PartitionKey::Unpartitioned => return "__UNPARTITIONED__".to_owned(),
            PartitionKey::Start(start) => start,
        };
        let PartitionScheme::Time(unit) = self.scheme else {
            return start.to_string();
        };
        let micros = match self.column_type {
            ColumnType::Date => start.saturating_mul(MICROS_PER_DAY),
            _ => start,
        };
        let Some(time) = DateTime::from_timestamp_micros(micros) else {
            return start.to_string();
        };
        let format = match unit {
            TimeUnit::Hour => "%Y%m%d%H",
            TimeUnit::Day => "%Y%m%d",
            TimeUnit::Month => "%Y%m",
            TimeUnit::Year => "%Y",
        };
        time.format(format).to_string()
    }
}

/// The start of the `unit` holding `value` (days for DATE, microseconds
/// for timestamps).
fn truncate(value: i64, column_type: &ColumnType, unit: TimeUnit) -> i64 {
    if *column_type == ColumnType::Date {
        let Some(date) = date_of_days(value) else {
            return value;
        };
        return match unit {
            TimeUnit::Hour | TimeUnit::Day => value,
            TimeUnit::Month => days_of(date.with_day(1).unwrap_or(date)),
            TimeUnit::Year => days_of(date.with_ordinal(1).unwrap_or(date)),
        };
    }
    match unit {
        TimeUnit::Hour => value.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR,
        TimeUnit::Day => value.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY,
        TimeUnit::Month | TimeUnit::Year => {
            let days = value.div_euclid(MICROS_PER_DAY);
            truncate(days, &ColumnType::Date, unit) * MICROS_PER_DAY
        }
    }
}

/// The start of the `unit` after the one starting at `start`.
fn next_start(start: i64, column_type: &ColumnType, unit: TimeUnit) -> i64 {
    if *column_type == ColumnType::Date {
        let Some(date) = date_of_days(start) else {
            return start.saturating_add(1);
        };
        return match unit {
            TimeUnit::Hour | TimeUnit::Day => start + 1,
            TimeUnit::Month => days_of(
                date.checked_add_months(chrono::Months::new(1))
                    .unwrap_or(date),
            ),
            TimeUnit::Year => days_of(
                date.checked_add_months(chrono::Months::new(12))
                    .unwrap_or(date),
            ),
        };
    }
    match unit {
        TimeUnit::Hour => start.saturating_add(MICROS_PER_HOUR),
        TimeUnit::Day => start.saturating_add(MICROS_PER_DAY),
        TimeUnit::Month | TimeUnit::Year => {
            next_start(start.div_euclid(MICROS_PER_DAY), &ColumnType::Date, unit)
                .saturating_mul(MICROS_PER_DAY)
        }
    }
}

fn date_of_days(days: i64) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::TimeDelta::try_days(days)?)
}

fn days_of(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch"))
        .num_days()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(column_type: ColumnType, unit: TimeUnit) -> Partitioning {
        Partitioning {
            field_id: 1,
            column_type,
            scheme: PartitionScheme::Time(unit),
            expiration_micros: None,
            require_filter: false,
        }
    }

    fn days(y: i32, m: u32, d: u32) -> i64 {
        days_of(NaiveDate::from_ymd_opt(y, m, d).expect("a date"))
    }

    #[test]
    fn dates_fall_in_their_day_month_and_year() {
        let feb_29 = days(2024, 2, 29);
        let day = time(ColumnType::Date, TimeUnit::Day);
        assert_eq!(day.key_of(feb_29), PartitionKey::Start(feb_29));
        assert_eq!(day.bounds(feb_29), (feb_29, feb_29));
        assert_eq!(day.partition_id(PartitionKey::Start(feb_29)), "20240229");
        let month = time(ColumnType::Date, TimeUnit::Month);
        let start = days(2024, 2, 1);
        assert_eq!(month.key_of(feb_29), PartitionKey::Start(start));
        assert_eq!(month.bounds(start), (start, feb_29));
        assert_eq!(month.partition_id(PartitionKey::Start(start)), "202402");
        let year = time(ColumnType::Date, TimeUnit::Year);
        let jan_1 = days(2024, 1, 1);
        assert_eq!(year.key_of(feb_29), PartitionKey::Start(jan_1));
        assert_eq!(year.bounds(jan_1), (jan_1, days(2024, 12, 31)));
        // Before the epoch too.
        assert_eq!(
            month.key_of(days(1969, 12, 31)),
            PartitionKey::Start(days(1969, 12, 1))
        );
    }

    #[test]
    fn timestamps_fall_in_their_hour_and_day_in_utc() {
        let at = days(2026, 5, 1) * MICROS_PER_DAY + 10 * MICROS_PER_HOUR + 1_234;
        let hour = time(ColumnType::TimestampTz, TimeUnit::Hour);
        let start = days(2026, 5, 1) * MICROS_PER_DAY + 10 * MICROS_PER_HOUR;
        assert_eq!(hour.key_of(at), PartitionKey::Start(start));
        assert_eq!(hour.bounds(start), (start, start + MICROS_PER_HOUR - 1));
        assert_eq!(hour.partition_id(PartitionKey::Start(start)), "2026050110");
        let month = time(ColumnType::Timestamp, TimeUnit::Month);
        let may = days(2026, 5, 1) * MICROS_PER_DAY;
        assert_eq!(month.key_of(at), PartitionKey::Start(may));
        assert_eq!(month.bounds(may).1, days(2026, 6, 1) * MICROS_PER_DAY - 1);
        assert_eq!(
            month.end_micros(PartitionKey::Start(may)),
            Some(days(2026, 6, 1) * MICROS_PER_DAY)
        );
        // A minute before the epoch is in 1969-12-31.
        let day = time(ColumnType::Timestamp, TimeUnit::Day);
        assert_eq!(
            day.key_of(-60_000_000),
            PartitionKey::Start(-MICROS_PER_DAY)
        );
    }

    #[test]
    fn integers_fall_in_their_bucket_or_outside() {
        let range = Partitioning {
            field_id: 1,
            column_type: ColumnType::Int64,
            scheme: PartitionScheme::IntegerRange {
                start: -10,
                end: 25,
                interval: 10,
            },
            expiration_micros: None,
            require_filter: false,
        };
        assert_eq!(range.key_of(-10), PartitionKey::Start(-10));
        assert_eq!(range.key_of(-1), PartitionKey::Start(-10));
        assert_eq!(range.key_of(0), PartitionKey::Start(0));
        assert_eq!(range.key_of(24), PartitionKey::Start(20));
        assert_eq!(range.key_of(25), PartitionKey::Unpartitioned);
        assert_eq!(range.key_of(-11), PartitionKey::Unpartitioned);
        // The last bucket ends with the range.
        assert_eq!(range.bounds(20), (20, 24));
        assert_eq!(range.partition_id(PartitionKey::Start(-10)), "-10");
        assert_eq!(
            range.partition_id(PartitionKey::Unpartitioned),
            "__UNPARTITIONED__"
        );
        assert_eq!(range.end_micros(PartitionKey::Start(0)), None);
    }
}
