//! Cursors (PostgreSQL's DECLARE / FETCH / MOVE / CLOSE): a query's rows,
//! read a few at a time by name. The query runs as a stream; FETCH takes the
//! next rows from it, so a large result is never held whole.
//!
//! A cursor has PostgreSQL's position: before the first row (0), on row k
//! (1-based), or after the last row. FETCH and MOVE take every direction of
//! PostgreSQL's grammar (NEXT, PRIOR, FIRST, LAST, ABSOLUTE n, RELATIVE n, n,
//! ALL, FORWARD [n | ALL], BACKWARD [n | ALL]). A BINARY cursor's rows go
//! out in binary format unless the client chose a format (the extended
//! protocol's Bind), as PostgreSQL does. A NO SCROLL cursor (the
//! default) keeps only its current row and refuses a move back with 55000; a
//! SCROLL cursor keeps every row it has read, in memory, so it can go back.
//! Without WITH HOLD a cursor belongs to its transaction block and closes
//! when it ends; with it, the cursor outlives COMMIT (ROLLBACK of the block
//! that declared it closes it).

use super::*;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::physical_plan::memory::MemoryStream;

/// An open cursor.
pub(super) struct Cursor {
    schema: SchemaRef,
    /// The query's rows. Only FETCH reads them, through `&mut` (`get_mut`,
    /// no locking); the mutex makes the session `Sync`.
    rows: tokio::sync::Mutex<SendableRecordBatchStream>,
    /// Rows read from `rows` and kept, from row `first` on: all of them for
    /// a SCROLL cursor, from the current row on for a NO SCROLL one.
    kept: Vec<RecordBatch>,
    /// The number (1-based) of the first kept row.
    first: u64,
    /// Rows read from `rows` so far.
    read: u64,
    /// `rows` has ended: the result has `read` rows.
    ended: bool,
    /// 0 before the first row, k on row k, `read + 1` after the last.
    position: u64,
    /// SCROLL: it may move back.
    scroll: bool,
    /// BINARY: its rows are sent in binary format by default.
    binary: bool,
    /// WITH HOLD: it outlives the transaction block.
    hold: bool,
    /// Declared in the open transaction block (ROLLBACK closes it).
    in_transaction: bool,
}

/// A FETCH or MOVE direction, as counts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// The next n rows (u64::MAX: all).
    Forward(u64),
    /// The previous n rows, last first (u64::MAX: all).
    Backward(u64),
    /// Row n (negative: counted from the end; 0: before the first).
    Absolute(i64),
    /// The row n rows away (0: the current row again).
    Relative(i64),
}

impl Cursor {
    /// Reads rows until row `row` is read or the result ends; returns how
    /// many rows have been read.
    async fn read_to(&mut self, row: u64) -> Result<u64> {
        while self.read < row && !self.ended {
            match self.rows.get_mut().next().await {
                Some(batch) => {
                    let batch = batch.map_err(Error::from_engine)?;
                    self.read += batch.num_rows() as u64;
                    if batch.num_rows() > 0 {
                        self.kept.push(batch);
                    }
                }
                None => self.ended = true,
            }
        }
        Ok(self.read)
    }

    /// Kept rows `from..=to` (1-based), in order.
    fn take(&self, from: u64, to: u64) -> Vec<RecordBatch> {
        let mut batches = Vec::new();
        let mut start = self.first;
        for batch in &self.kept {
            let rows = batch.num_rows() as u64;
            let (lo, hi) = (from.max(start), to.min(start + rows - 1));
            if lo <= hi {
                batches.push(batch.slice((lo - start) as usize, (hi - lo + 1) as usize));
            }
            start += rows;
        }
        batches
    }

    /// A NO SCROLL cursor forgets the rows before its current one.
    fn forget_passed(&mut self) {
        if self.scroll {
            return;
        }
        let keep_from = self.position.max(1);
        while let Some(batch) = self.kept.first() {
            let rows = batch.num_rows() as u64;
            if self.first + rows > keep_from {
                let skip = keep_from.saturating_sub(self.first);
                if skip > 0 {
                    self.kept[0] = batch.slice(skip as usize, (rows - skip) as usize);
                    self.first += skip;
                }
                return;
            }
            // All passed: `first` becomes `read + 1`, the next row read.
            self.kept.remove(0);
            self.first += rows;
        }
    }

    fn refuse_back(&self) -> Result<()> {
        if self.scroll {
            return Ok(());
        }
        Err(user_error(
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cursor can only scan forward; declare it SCROLL to enable backward scan",
        ))
    }

    /// Moves by `step`; returns the rows passed over (in the order FETCH
    /// returns them) and their number.
    async fn step(&mut self, step: Step) -> Result<(Vec<RecordBatch>, u64)> {
        let position = self.position;
        let (batches, count) = match step {
            Step::Forward(n) => {
                let end = position.saturating_add(n);
                let read = self.read_to(end).await?;
                let to = end.min(read);
                self.position = if to < end { read + 1 } else { end };
                if to > position {
                    (self.take(position + 1, to), to - position)
                } else {
                    (Vec::new(), 0)
                }
            }
            Step::Backward(n) => {
                self.refuse_back()?;
                self.position = position.saturating_sub(n);
                let from = self.position.max(1);
                if position > from {
                    let rows = self.take(from, position - 1);
                    (reversed(&self.schema, rows)?, position - from)
                } else {
                    (Vec::new(), 0)
                }
            }
            Step::Absolute(n) => {
                let row = if n >= 0 {
                    n.unsigned_abs()
                } else {
                    let total = self.read_to(u64::MAX).await?;
                    (total + 1).saturating_sub(n.unsigned_abs())
                };
                self.go_to(row).await?
            }
            Step::Relative(n) => {
                // Reading the current row again goes back too.
                if n <= 0 {
                    self.refuse_back()?;
                }
                let row = position.saturating_add_signed(n);
                if n == 0 && (position == 0 || position > self.read) {
                    (Vec::new(), 0)
                } else if n < 0 && position <= n.unsigned_abs() {
                    self.position = 0;
                    (Vec::new(), 0)
                } else {
                    self.go_to(row).await?
                }
            }
        };
        self.forget_passed();
        Ok((batches, count))
    }

    /// Moves onto row `row` (0: before the first row) and returns it.
    async fn go_to(&mut self, row: u64) -> Result<(Vec<RecordBatch>, u64)> {
        if row < self.position {
            self.refuse_back()?;
        }
        if row == 0 {
            self.position = 0;
            return Ok((Vec::new(), 0));
        }
        let read = self.read_to(row).await?;
        if row > read {
            self.position = read + 1;
            return Ok((Vec::new(), 0));
        }
        self.position = row;
        Ok((self.take(row, row), 1))
    }
}

/// `batches`' rows in reverse order, as one batch.
fn reversed(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let engine = |e| Error::from_engine(datafusion::error::DataFusionError::from(e));
    let all = concat_batches(schema, &batches).map_err(engine)?;
    let rows = all.num_rows() as u32;
    let indices = UInt32Array::from_iter_values((0..rows).rev());
    Ok(vec![take_record_batch(&all, &indices).map_err(engine)?])
}

/// The step a FETCH or MOVE direction asks for.
fn step_of(direction: &ast::FetchDirection) -> Result<Step> {
    let count = |limit: &ast::ValueWithSpan| -> Result<i64> {
        match &limit.value {
            ast::Value::Number(n, _) => n.parse::<i64>().map_err(|_| {
                user_error(
                    SqlState::SYNTAX_ERROR,
                    format!("FETCH count {n} is not a whole number"),
                )
            }),
            other => Err(user_error(
                SqlState::SYNTAX_ERROR,
                format!("FETCH count {other} is not a number"),
            )),
        }
    };
    // A negative count goes the other way, as in PostgreSQL; 0 is the
    // current row again.
    let forward = |n: i64| match n {
        0 => Step::Relative(0),
        n if n < 0 => Step::Backward(n.unsigned_abs()),
        n => Step::Forward(n.unsigned_abs()),
    };
    Ok(match direction {
        ast::FetchDirection::Next | ast::FetchDirection::Forward { limit: None } => {
            Step::Forward(1)
        }
        ast::FetchDirection::Prior | ast::FetchDirection::Backward { limit: None } => {
            Step::Backward(1)
        }
        ast::FetchDirection::Forward { limit: Some(limit) }
        | ast::FetchDirection::Count { limit } => forward(count(limit)?),
        ast::FetchDirection::Backward { limit: Some(limit) } => {
            forward(count(limit)?.saturating_neg())
        }
        ast::FetchDirection::All | ast::FetchDirection::ForwardAll => Step::Forward(u64::MAX),
        ast::FetchDirection::BackwardAll => Step::Backward(u64::MAX),
        ast::FetchDirection::First => Step::Absolute(1),
        ast::FetchDirection::Last => Step::Absolute(-1),
        ast::FetchDirection::Absolute { limit } => Step::Absolute(count(limit)?),
        ast::FetchDirection::Relative { limit } => Step::Relative(count(limit)?),
    })
}

fn no_cursor(name: &str) -> Error {
    user_error(
        SqlState::INVALID_CURSOR_NAME,
        format!("cursor \"{name}\" does not exist"),
    )
}

impl Session {
    /// DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH[OUT] HOLD] FOR query.
    pub(super) async fn declare(
        &mut self,
        declare: ast::Declare,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        if declare.declare_type != Some(ast::DeclareType::Cursor) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "DECLARE declares cursors only",
            ));
        }
        let [name] = declare.names.as_slice() else {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "DECLARE names one cursor",
            ));
        };
        let Some(query) = declare.for_query else {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "DECLARE CURSOR needs FOR query",
            ));
        };
        let hold = declare.hold == Some(true);
        if !hold && self.transaction.is_none() {
            return Err(user_error(
                SqlState::NO_ACTIVE_SQL_TRANSACTION,
                "DECLARE CURSOR can only be used in transaction blocks",
            ));
        }
        let name = normalize(name);
        if self.cursors.contains_key(&name) {
            return Err(user_error(
                SqlState::DUPLICATE_CURSOR,
                format!("cursor \"{name}\" already exists"),
            ));
        }
        self.begin_statement().await?;
        let plan = self
            .plan_with_params(Statement::Query(query), params)
            .await?;
        let rows = self.stream(plan).await?;
        self.cursors.insert(
            name,
            Cursor {
                schema: rows.schema(),
                rows: tokio::sync::Mutex::new(rows),
                kept: Vec::new(),
                first: 1,
                read: 0,
                ended: false,
                position: 0,
                scroll: declare.scroll == Some(true),
                binary: declare.binary == Some(true),
                hold,
                in_transaction: self.transaction.is_some(),
            },
        );
        Ok(Output::Command(CommandTag::new("DECLARE CURSOR")))
    }

    /// FETCH [direction] [FROM | IN] name: the cursor's rows in that
    /// direction.
    pub(super) async fn fetch(
        &mut self,
        name: &Ident,
        direction: &ast::FetchDirection,
    ) -> Result<Output> {
        let step = step_of(direction)?;
        let cursor = self.cursor(name)?;
        let (batches, _) = cursor.step(step).await?;
        let stream = Box::pin(
            MemoryStream::try_new(batches, cursor.schema.clone(), None)
                .map_err(Error::from_engine)?,
        );
        Ok(if cursor.binary {
            Output::BinaryRows(stream)
        } else {
            Output::Rows(stream)
        })
    }

    /// MOVE [direction] [FROM | IN] name: FETCH without the rows; the tag
    /// counts them.
    pub(super) async fn move_cursor(
        &mut self,
        name: &Ident,
        direction: &ast::FetchDirection,
    ) -> Result<Output> {
        let step = step_of(direction)?;
        let (_, count) = self.cursor(name)?.step(step).await?;
        Ok(Output::Command(CommandTag::with_rows("MOVE", count)))
    }

    fn cursor(&mut self, name: &Ident) -> Result<&mut Cursor> {
        let name = normalize(name);
        self.cursors.get_mut(&name).ok_or_else(|| no_cursor(&name))
    }

    /// CLOSE name | ALL.
    pub(super) fn close(&mut self, cursor: &ast::CloseCursor) -> Result<Output> {
        match cursor {
            ast::CloseCursor::All => self.cursors.clear(),
            ast::CloseCursor::Specific { name } => {
                let name = normalize(name);
                self.cursors.remove(&name).ok_or_else(|| no_cursor(&name))?;
            }
        }
        Ok(Output::Command(CommandTag::new("CLOSE CURSOR")))
    }

    /// The schema of the rows FETCH from cursor `name` gives, if it is open.
    pub(super) fn cursor_schema(&self, name: &Ident) -> Option<SchemaRef> {
        self.open_cursor(&normalize(name))
    }

    /// The schema of the rows of the open cursor called exactly `name` (as
    /// the protocol's Describe of a portal names it: a cursor is a portal).
    pub fn open_cursor(&self, name: &str) -> Option<SchemaRef> {
        self.cursors.get(name).map(|c| c.schema.clone())
    }

    /// Closes the cursors the end of a transaction block closes: those
    /// without WITH HOLD, and after a rollback those the block declared.
    pub(super) fn close_transaction_cursors(&mut self, committed: bool) {
        self.cursors
            .retain(|_, c| c.hold && (committed || !c.in_transaction));
        for cursor in self.cursors.values_mut() {
            cursor.in_transaction = false;
        }
    }
}
