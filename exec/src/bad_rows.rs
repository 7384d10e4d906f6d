//! Rows that do not fit a table, skipped up to a limit instead of failing a
//! load: BigQuery's `max_bad_records`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfigurationLoad.FIELDS.max_bad_records>),
//! and PostgreSQL 17's `COPY ... ON_ERROR ignore` in spirit. A row is bad
//! when one of its values does not convert to its column's type, a NOT
//! NULL column gets none, or (NDJSON) its line is no JSON object or names
//! no column. Each skipped row is kept with its error, so it can be listed.

use crate::error::{Error, Result};
use datafusion::arrow::array::{RecordBatch, UInt32Array};
use quarry_common::SqlState;

/// A skipped row and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// Its number in its source (a request's rows or a file's, from 1).
    pub row: u64,
    /// The error that would have failed the load.
    pub state: SqlState,
    /// Its message.
    pub message: String,
    /// Its detail: where (file, row, column).
    pub detail: Option<String>,
}

/// The rows skipped so far, and how many more may be.
#[derive(Debug, Clone, Default)]
pub struct BadRows {
    limit: u64,
    /// The rows skipped, in the order met.
    pub rows: Vec<BadRow>,
}

impl BadRows {
    /// Up to `limit` rows may be skipped (none: every bad row fails).
    pub fn new(limit: u64) -> Self {
        BadRows {
            limit,
            rows: Vec::new(),
        }
    }

    /// Takes row `row`, which `error` refuses, as skipped if the limit
    /// allows and the error is a bad row's (a value, not the request or the
    /// cluster); false if it must fail the load.
    pub fn skip(&mut self, row: u64, error: &Error) -> bool {
        let Error::User {
            state,
            message,
            detail,
        } = error
        else {
            return false;
        };
        if self.rows.len() as u64 >= self.limit || !is_row_error(*state) {
            return false;
        }
        self.rows.push(BadRow {
            row,
            state: *state,
            message: message.clone(),
            detail: detail.clone(),
        });
        true
    }

    /// How many rows were skipped.
    pub fn count(&self) -> u64 {
        self.rows.len() as u64
    }
}

/// Whether an error of `state` is about one row's values.
fn is_row_error(state: SqlState) -> bool {
    [
        SqlState::INVALID_TEXT_REPRESENTATION,
        SqlState::INVALID_DATETIME_FORMAT,
        SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        SqlState::NOT_NULL_VIOLATION,
        SqlState::UNDEFINED_COLUMN,
        SqlState::DATATYPE_MISMATCH,
        SqlState::BAD_COPY_FILE_FORMAT,
        SqlState::CHARACTER_NOT_IN_REPERTOIRE,
    ]
    .contains(&state)
}

/// Why a batch does not fit: the error, and the index in the batch of the
/// row it is about (None when it is about the whole batch).
pub(crate) struct Misfit {
    pub(crate) index: Option<usize>,
    pub(crate) error: Box<Error>,
}

impl Misfit {
    /// Row `index` (None: the batch) does not fit, with `error`.
    pub(crate) fn new(index: Option<usize>, error: Error) -> Self {
        Misfit {
            index,
            error: Box::new(error),
        }
    }
}

/// A batch made rows of a table ([`fit_skipping`]).
pub(crate) type Fit<'a> =
    &'a dyn Fn(&RecordBatch, &dyn Fn(usize) -> u64) -> std::result::Result<RecordBatch, Misfit>;

/// `fit(batch, number)` — a batch made rows of a table, where `number`
/// gives a row's number in the source by its index in the batch given —
/// with the rows it refuses dropped one at a time, while `bad` allows.
///
/// # Errors
/// The first refusal `bad` does not allow.
pub(crate) fn fit_skipping(
    batch: &RecordBatch,
    number: &dyn Fn(usize) -> u64,
    bad: &mut BadRows,
    fit: Fit<'_>,
) -> Result<RecordBatch> {
    // The indexes in `batch` of the rows still in: all until one is bad.
    let mut kept: Option<Vec<u32>> = None;
    let mut current = batch.clone();
    let before = bad.rows.len();
    loop {
        let original = |i: usize| kept.as_ref().map_or(i, |k| k[i] as usize);
        let misfit = match fit(&current, &|i| number(original(i))) {
            Ok(out) => {
                // Found column by column; listed by row.
                bad.rows[before..].sort_by_key(|r| r.row);
                return Ok(out);
            }
            Err(misfit) => misfit,
        };
        let Some(index) = misfit.index else {
            return Err(*misfit.error);
        };
        if !bad.skip(number(original(index)), &misfit.error) {
            return Err(*misfit.error);
        }
        let rows = kept.get_or_insert_with(|| (0..batch.num_rows() as u32).collect());
        rows.remove(index);
        current =
            datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(rows.clone()))
                .map_err(|e| Error::Internal(format!("dropping a bad row: {e}")))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// Refuses negative values, naming the row by its number.
    fn no_negatives(
        batch: &RecordBatch,
        number: &dyn Fn(usize) -> u64,
    ) -> std::result::Result<RecordBatch, Misfit> {
        let values = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int");
        match (0..values.len()).find(|&i| values.value(i) < 0) {
            Some(i) => Err(Misfit::new(
                Some(i),
                Error::User {
                    state: SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
                    message: format!("{} is negative", values.value(i)),
                    detail: Some(format!("row {}", number(i))),
                },
            )),
            None => Ok(batch.clone()),
        }
    }

    fn batch(values: Vec<i32>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(values))],
        )
        .expect("batch")
    }

    #[test]
    fn bad_rows_are_dropped_up_to_the_limit_and_named_by_their_source_row() {
        let input = batch(vec![1, -2, 3, -4, 5]);
        let number = |i: usize| 10 + i as u64;
        let mut bad = BadRows::new(2);
        let out = fit_skipping(&input, &number, &mut bad, &no_negatives).expect("fits");
        assert_eq!(out, batch(vec![1, 3, 5]));
        assert_eq!(bad.rows.iter().map(|r| r.row).collect::<Vec<_>>(), [11, 13]);
        assert_eq!(bad.rows[1].detail.as_deref(), Some("row 13"));
        // One more than allowed fails with the row's own error.
        let mut bad = BadRows::new(1);
        let error = fit_skipping(&input, &number, &mut bad, &no_negatives).expect_err("fails");
        assert!(error.to_string().contains("-4 is negative"), "{error}");
        // None allowed: the first bad row fails.
        let mut bad = BadRows::default();
        let error = fit_skipping(&input, &number, &mut bad, &no_negatives).expect_err("fails");
        assert!(error.to_string().contains("-2"), "{error}");
        assert_eq!(bad.count(), 0);
    }

    #[test]
    fn only_a_row_s_own_errors_are_skipped() {
        let mut bad = BadRows::new(5);
        assert!(!bad.skip(1, &Error::Internal("disk".into())));
        assert!(!bad.skip(
            1,
            &Error::User {
                state: SqlState::INSUFFICIENT_PRIVILEGE,
                message: "no".into(),
                detail: None
            }
        ));
        assert!(bad.skip(
            1,
            &Error::User {
                state: SqlState::NOT_NULL_VIOLATION,
                message: "null".into(),
                detail: None
            }
        ));
    }
}
