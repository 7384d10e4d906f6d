//! Errors of query execution, each with the SQLSTATE a client sees.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;
use quarry_common::SqlState;
use quarry_common::catalog::ChunkId;

/// Result of execution.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong executing a statement. Whatever the variant, a failed statement
/// commits nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement is wrong (caller's fault): bad syntax, unknown object, bad
    /// value. Retrying the same statement fails the same way.
    #[error("{message}")]
    User {
        /// The SQLSTATE.
        state: SqlState,
        /// What is wrong, in PostgreSQL's phrasing where there is one.
        message: String,
        /// Where to look (line of a COPY, column), if known.
        detail: Option<String>,
    },
    /// A data file of the table failed its checksum or is missing (XX001). Nothing
    /// was returned from it.
    #[error("data file {chunk} of table {table} is corrupt or missing: {source}")]
    DataCorrupted {
        /// The table, as `schema.name`.
        table: String,
        /// The file's chunk.
        chunk: ChunkId,
        /// What the chunk store found.
        source: quarry_storage::Error,
    },
    /// Metadata could not be read or written (transient when the cause is
    /// leadership or quorum; the client may retry).
    #[error(transparent)]
    Meta(#[from] quarry_raft::Error),
    /// The local disk failed while writing (environment's fault).
    #[error(transparent)]
    Storage(quarry_storage::Error),
    /// The query engine failed; classified into a SQLSTATE by [`Error::sqlstate`].
    #[error("{}", engine_message(.0))]
    Engine(#[from] DataFusionError),
    /// The statement was cancelled by the client or a timeout.
    #[error("canceling statement due to user request")]
    Cancelled,
    /// A broken invariant in Quarry (a bug). The statement failed; the node goes on.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<quarry_raft::CatalogError> for Error {
    fn from(e: quarry_raft::CatalogError) -> Self {
        Error::Meta(quarry_raft::Error::Catalog(e))
    }
}

/// Shorthand for a caller-fault error.
pub fn user_error(state: SqlState, message: impl Into<String>) -> Error {
    Error::User {
        state,
        message: message.into(),
        detail: None,
    }
}

impl Error {
    /// The SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::User { state, .. } => *state,
            Error::DataCorrupted { .. } => SqlState::DATA_CORRUPTED,
            Error::Meta(quarry_raft::Error::Catalog(e)) => e.sqlstate(),
            // Nothing was written and another attempt may find a leader: retry.
            Error::Meta(quarry_raft::Error::NotLeader { .. }) => SqlState::SERIALIZATION_FAILURE,
            Error::Meta(quarry_raft::Error::Unavailable(_)) => {
                SqlState::STATEMENT_COMPLETION_UNKNOWN
            }
            Error::Meta(_) => SqlState::IO_ERROR,
            Error::Storage(e) if e.is_data_corruption() => SqlState::DATA_CORRUPTED,
            Error::Storage(_) => SqlState::IO_ERROR,
            Error::Engine(e) => engine_sqlstate(e),
            Error::Cancelled => SqlState::QUERY_CANCELED,
            Error::Internal(_) => SqlState::INTERNAL_ERROR,
        }
    }

    /// Extra detail for the client's DETAIL field, if any.
    pub fn detail(&self) -> Option<String> {
        match self {
            Error::User { detail, .. } => detail.clone(),
            Error::Engine(e) => quarry_error_in(e).and_then(|e| e.detail()),
            _ => None,
        }
    }

    /// Unwraps an error that went through DataFusion and back (e.g. raised in a
    /// table scan) into the original Quarry error.
    pub fn from_engine(e: DataFusionError) -> Error {
        match into_quarry_error(e) {
            Ok(quarry) => quarry,
            Err(e) => Error::Engine(e),
        }
    }
}

/// Wraps a Quarry error to pass it through DataFusion or Parquet interfaces.
pub fn to_engine(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn into_quarry_error(e: DataFusionError) -> Result<Error, DataFusionError> {
    match e {
        DataFusionError::External(boxed) => match boxed.downcast::<Error>() {
            Ok(quarry) => Ok(*quarry),
            Err(other) => Err(DataFusionError::External(other)),
        },
        DataFusionError::ParquetError(p) => match *p {
            ParquetError::External(boxed) => match boxed.downcast::<Error>() {
                Ok(quarry) => Ok(*quarry),
                Err(other) => Err(DataFusionError::ParquetError(Box::new(
                    ParquetError::External(other),
                ))),
            },
            other => Err(DataFusionError::ParquetError(Box::new(other))),
        },
        DataFusionError::ArrowError(a, context) => match *a {
            ArrowError::ExternalError(boxed) => match boxed.downcast::<Error>() {
                Ok(quarry) => Ok(*quarry),
                Err(other) => Err(DataFusionError::ArrowError(
                    Box::new(ArrowError::ExternalError(other)),
                    context,
                )),
            },
            other => Err(DataFusionError::ArrowError(Box::new(other), context)),
        },
        DataFusionError::Context(context, inner) => into_quarry_error(*inner)
            .map_err(|inner| DataFusionError::Context(context, Box::new(inner))),
        DataFusionError::Diagnostic(diagnostic, inner) => into_quarry_error(*inner)
            .map_err(|inner| DataFusionError::Diagnostic(diagnostic, Box::new(inner))),
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(inner) => into_quarry_error(inner),
            Err(shared) => Err(DataFusionError::Shared(shared)),
        },
        other => Err(other),
    }
}

/// The Quarry error inside `e`, if it carries one.
fn quarry_error_in(e: &DataFusionError) -> Option<&Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = source {
        if let Some(quarry) = current.downcast_ref::<Error>() {
            return Some(quarry);
        }
        source = current.source();
    }
    None
}

/// The innermost DataFusion error, past contexts and diagnostics.
fn root(e: &DataFusionError) -> &DataFusionError {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => root(inner),
        DataFusionError::Shared(inner) => root(inner),
        DataFusionError::Collection(errors) => errors.first().map(root).unwrap_or(e),
        other => other,
    }
}

pub(crate) fn engine_message(e: &DataFusionError) -> String {
    if let Some(quarry) = quarry_error_in(e) {
        return quarry.to_string();
    }
    match root(e) {
        DataFusionError::SQL(p, _) => p.to_string(),
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m) => m.clone(),
        DataFusionError::SchemaError(s, _) => s.to_string(),
        DataFusionError::ArrowError(a, _) => arrow_message(a),
        other => other.to_string(),
    }
}

fn arrow_message(e: &ArrowError) -> String {
    match e {
        ArrowError::CastError(m) | ArrowError::ParseError(m) | ArrowError::ComputeError(m) => {
            m.clone()
        }
        ArrowError::DivideByZero => "division by zero".to_owned(),
        other => other.to_string(),
    }
}

fn arrow_sqlstate(e: &ArrowError) -> SqlState {
    match e {
        ArrowError::CastError(m) | ArrowError::ParseError(m)
            if m.contains("overflow") || m.contains("too large") =>
        {
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE
        }
        ArrowError::CastError(_) | ArrowError::ParseError(_) => {
            SqlState::INVALID_TEXT_REPRESENTATION
        }
        ArrowError::DivideByZero => SqlState::DIVISION_BY_ZERO,
        ArrowError::ArithmeticOverflow(_) => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ArrowError::InvalidArgumentError(m) if m.contains("non-nullable") => {
            SqlState::NOT_NULL_VIOLATION
        }
        ArrowError::InvalidArgumentError(_) => SqlState::INVALID_PARAMETER_VALUE,
        ArrowError::MemoryError(_) => SqlState::OUT_OF_MEMORY,
        _ => SqlState::INTERNAL_ERROR,
    }
}

/// Classifies an engine error. DataFusion reports most planning errors as
/// `Plan(String)`; the messages it uses for unknown tables and columns are stable
/// and matched here.
fn engine_sqlstate(e: &DataFusionError) -> SqlState {
    if let Some(quarry) = quarry_error_in(e) {
        return quarry.sqlstate();
    }
    use datafusion::common::SchemaError;
    match root(e) {
        DataFusionError::SQL(_, _) => SqlState::SYNTAX_ERROR,
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => SqlState::UNDEFINED_COLUMN,
            SchemaError::AmbiguousReference { .. } => {
                SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
            }
            _ => SqlState::DUPLICATE_COLUMN,
        },
        DataFusionError::Plan(m) => plan_sqlstate(m),
        DataFusionError::NotImplemented(_) => SqlState::FEATURE_NOT_SUPPORTED,
        DataFusionError::ArrowError(a, _) => arrow_sqlstate(a),
        DataFusionError::ResourcesExhausted(_) => SqlState::OUT_OF_MEMORY,
        DataFusionError::Execution(m) if m.contains("Cast error") || m.contains("Cannot cast") => {
            SqlState::INVALID_TEXT_REPRESENTATION
        }
        DataFusionError::Execution(m)
            if m.contains("Divide by zero") || m.contains("division by zero") =>
        {
            SqlState::DIVISION_BY_ZERO
        }
        DataFusionError::Execution(m) if m.contains("overflow") => {
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE
        }
        DataFusionError::Execution(_) => SqlState::DATA_EXCEPTION,
        DataFusionError::Configuration(_) => SqlState::UNDEFINED_OBJECT,
        _ => SqlState::INTERNAL_ERROR,
    }
}

fn plan_sqlstate(message: &str) -> SqlState {
    let m = message.to_ascii_lowercase();
    if m.contains("table '") && m.contains("not found") {
        SqlState::UNDEFINED_TABLE
    } else if m.contains("no field named") || m.contains("column '") && m.contains("not found") {
        SqlState::UNDEFINED_COLUMN
    } else if m.contains("invalid function") || m.contains("no function matches") {
        SqlState::UNDEFINED_FUNCTION
    } else if m.contains("cannot cast") || m.contains("cast error") {
        SqlState::INVALID_TEXT_REPRESENTATION
    } else if m.contains("does not support") || m.contains("unsupported") {
        SqlState::FEATURE_NOT_SUPPORTED
    } else {
        SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_postgres_codes() {
        let cases: Vec<(DataFusionError, SqlState)> = vec![
            (
                DataFusionError::Plan("table 'quarry.public.nope' not found".into()),
                SqlState::UNDEFINED_TABLE,
            ),
            (
                DataFusionError::ArrowError(
                    Box::new(ArrowError::CastError(
                        "Cannot cast string 'x' to value of Int32 type".into(),
                    )),
                    None,
                ),
                SqlState::INVALID_TEXT_REPRESENTATION,
            ),
            (
                DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
                SqlState::DIVISION_BY_ZERO,
            ),
            (
                DataFusionError::Context(
                    "ctx".into(),
                    Box::new(DataFusionError::NotImplemented("x".into())),
                ),
                SqlState::FEATURE_NOT_SUPPORTED,
            ),
            (
                to_engine(user_error(SqlState::BAD_COPY_FILE_FORMAT, "bad line")),
                SqlState::BAD_COPY_FILE_FORMAT,
            ),
        ];
        for (error, state) in cases {
            let shown = error.to_string();
            assert_eq!(Error::Engine(error).sqlstate(), state, "{shown}");
        }
    }

    #[test]
    fn quarry_errors_come_back_out_of_engine_wrappers() {
        let wrapped = DataFusionError::Context(
            "scan".into(),
            Box::new(DataFusionError::ParquetError(Box::new(
                ParquetError::External(Box::new(user_error(SqlState::DATA_CORRUPTED, "flipped"))),
            ))),
        );
        let e = Error::from_engine(wrapped);
        assert_eq!(e.sqlstate(), SqlState::DATA_CORRUPTED);
        assert_eq!(e.to_string(), "flipped");
    }
}
