//! Cursors (PostgreSQL's DECLARE / FETCH / CLOSE): a query's rows, read a
//! few at a time by name. The query runs as a stream; FETCH takes the next
//! rows from it, so a large result is never held whole.
//!
//! Cursors are NO SCROLL: FETCH moves forward only (55000 otherwise). Without
//! WITH HOLD a cursor belongs to its transaction block and closes when it ends;
//! with it, the cursor outlives COMMIT (ROLLBACK of the block that declared
//! it closes it).

use super::*;
use datafusion::physical_plan::memory::MemoryStream;

/// An open cursor.
pub(super) struct Cursor {
    schema: SchemaRef,
    /// The query's rows. Only FETCH reads them, through `&mut` (`get_mut`,
    /// no locking); the mutex makes the session `Sync`.
    rows: tokio::sync::Mutex<SendableRecordBatchStream>,
    /// Rows read from `rows` and not fetched yet.
    pending: Option<RecordBatch>,
    /// WITH HOLD: it outlives the transaction block.
    hold: bool,
    /// Declared in the open transaction block (ROLLBACK closes it).
    in_transaction: bool,
}

impl Cursor {
    /// Up to `count` next rows (all that are left for None).
    async fn fetch(&mut self, count: Option<usize>) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut wanted = count.unwrap_or(usize::MAX);
        while wanted > 0 {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.rows.get_mut().next().await {
                    Some(batch) => batch.map_err(Error::from_engine)?,
                    None => break,
                },
            };
            if batch.num_rows() > wanted {
                self.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                batches.push(batch.slice(0, wanted));
                break;
            }
            wanted -= batch.num_rows();
            batches.push(batch);
        }
        Ok(batches)
    }
}

/// The number of rows a FETCH asks for (None: all), or 55000 for a direction
/// a NO SCROLL cursor cannot go.
fn fetch_count(direction: &ast::FetchDirection) -> Result<Option<usize>> {
    let count = |limit: &ast::ValueWithSpan| -> Result<usize> {
        match &limit.value {
            ast::Value::Number(n, _) => n.parse::<usize>().map_err(|_| {
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
    match direction {
        ast::FetchDirection::Next => Ok(Some(1)),
        ast::FetchDirection::Forward { limit: None } => Ok(Some(1)),
        ast::FetchDirection::Forward { limit: Some(limit) }
        | ast::FetchDirection::Count { limit } => count(limit).map(Some),
        ast::FetchDirection::All | ast::FetchDirection::ForwardAll => Ok(None),
        _ => Err(user_error(
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cursor can only scan forward; declare it SCROLL to enable backward scan \
             (Quarry's cursors are NO SCROLL)",
        )),
    }
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
        if declare.scroll == Some(true) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "SCROLL cursors are not supported; declare it NO SCROLL",
            ));
        }
        if declare.binary == Some(true) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "BINARY cursors are not supported; ask for binary results in the \
                 extended protocol instead",
            ));
        }
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
                pending: None,
                hold,
                in_transaction: self.transaction.is_some(),
            },
        );
        Ok(Output::Command(CommandTag::new("DECLARE CURSOR")))
    }

    /// FETCH [direction] [FROM | IN] name: the cursor's next rows.
    pub(super) async fn fetch(
        &mut self,
        name: &Ident,
        direction: &ast::FetchDirection,
    ) -> Result<Output> {
        let count = fetch_count(direction)?;
        let name = normalize(name);
        let cursor = self
            .cursors
            .get_mut(&name)
            .ok_or_else(|| no_cursor(&name))?;
        let batches = cursor.fetch(count).await?;
        let stream = MemoryStream::try_new(batches, cursor.schema.clone(), None)
            .map_err(Error::from_engine)?;
        Ok(Output::Rows(Box::pin(stream)))
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
