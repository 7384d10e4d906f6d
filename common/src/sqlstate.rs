//! PostgreSQL error codes (SQLSTATE), as listed in the PostgreSQL documentation,
//! Appendix A "PostgreSQL Error Codes".

/// A five-character SQLSTATE error code sent to clients in every error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// 0A000 feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// 08P01 protocol_violation.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 21000 cardinality_violation.
    pub const CARDINALITY_VIOLATION: SqlState = SqlState("21000");
    /// 22000 data_exception.
    pub const DATA_EXCEPTION: SqlState = SqlState("22000");
    /// 22003 numeric_value_out_of_range.
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState("22003");
    /// 22007 invalid_datetime_format.
    pub const INVALID_DATETIME_FORMAT: SqlState = SqlState("22007");
    /// 22012 division_by_zero.
    pub const DIVISION_BY_ZERO: SqlState = SqlState("22012");
    /// 22021 character_not_in_repertoire: bytes that are not valid in their
    /// encoding.
    pub const CHARACTER_NOT_IN_REPERTOIRE: SqlState = SqlState("22021");
    /// 22P05 untranslatable_character: a character the target encoding
    /// cannot represent.
    pub const UNTRANSLATABLE_CHARACTER: SqlState = SqlState("22P05");
    /// 2202E array_subscript_error (BigQuery's `OFFSET` / `ORDINAL` out of
    /// the array).
    pub const ARRAY_SUBSCRIPT_ERROR: SqlState = SqlState("2202E");
    /// 22023 invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 22P02 invalid_text_representation: a value that does not parse as its type.
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState("22P02");
    /// 22P03 invalid_binary_representation: a binary value that does not
    /// decode as its type.
    pub const INVALID_BINARY_REPRESENTATION: SqlState = SqlState("22P03");
    /// 22P04 bad_copy_file_format.
    pub const BAD_COPY_FILE_FORMAT: SqlState = SqlState("22P04");
    /// 23502 not_null_violation.
    pub const NOT_NULL_VIOLATION: SqlState = SqlState("23502");
    /// 25P01 no_active_sql_transaction.
    pub const NO_ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25P01");
    /// 25P02 in_failed_sql_transaction: the transaction block already failed.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    /// 25001 active_sql_transaction.
    pub const ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25001");
    /// 26000 invalid_sql_statement_name: no prepared statement of that name.
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    /// 34000 invalid_cursor_name: no cursor of that name.
    pub const INVALID_CURSOR_NAME: SqlState = SqlState("34000");
    /// 42P05 duplicate_prepared_statement.
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    /// 42P03 duplicate_cursor.
    pub const DUPLICATE_CURSOR: SqlState = SqlState("42P03");
    /// 55000 object_not_in_prerequisite_state (e.g. a backward FETCH of a
    /// NO SCROLL cursor).
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    /// 55P02 cant_change_runtime_param: a setting fixed at build or start.
    pub const CANT_CHANGE_RUNTIME_PARAM: SqlState = SqlState("55P02");
    /// 3B001 invalid_savepoint_specification: no savepoint of that name.
    pub const INVALID_SAVEPOINT_SPECIFICATION: SqlState = SqlState("3B001");
    /// 40001 serialization_failure: retry the transaction.
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    /// statement_completion_unknown: the outcome of a write is not known
    /// (CockroachDB's "result is ambiguous").
    pub const STATEMENT_COMPLETION_UNKNOWN: SqlState = SqlState("40003");
    /// 42000 syntax_error_or_access_rule_violation (class).
    pub const SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION: SqlState = SqlState("42000");
    /// 42601 syntax_error.
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// 42703 undefined_column.
    pub const UNDEFINED_COLUMN: SqlState = SqlState("42703");
    /// 42704 undefined_object (an unknown type, setting or object).
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// 42710 duplicate_object (a constraint name in use).
    pub const DUPLICATE_OBJECT: SqlState = SqlState("42710");
    /// 42830 invalid_foreign_key.
    pub const INVALID_FOREIGN_KEY: SqlState = SqlState("42830");
    /// 42804 datatype_mismatch.
    pub const DATATYPE_MISMATCH: SqlState = SqlState("42804");
    /// 42846 cannot_coerce (a row value that does not fit a struct).
    pub const CANNOT_COERCE: SqlState = SqlState("42846");
    /// 42883 undefined_function.
    pub const UNDEFINED_FUNCTION: SqlState = SqlState("42883");
    /// 42P01 undefined_table.
    pub const UNDEFINED_TABLE: SqlState = SqlState("42P01");
    /// 42P06 duplicate_schema.
    pub const DUPLICATE_SCHEMA: SqlState = SqlState("42P06");
    /// 42P07 duplicate_table.
    pub const DUPLICATE_TABLE: SqlState = SqlState("42P07");
    /// 42809 wrong_object_type: e.g. DROP TABLE of a view.
    pub const WRONG_OBJECT_TYPE: SqlState = SqlState("42809");
    /// 42P16 invalid_table_definition.
    pub const INVALID_TABLE_DEFINITION: SqlState = SqlState("42P16");
    /// 42P10 invalid_column_reference.
    pub const INVALID_COLUMN_REFERENCE: SqlState = SqlState("42P10");
    /// 42701 duplicate_column.
    pub const DUPLICATE_COLUMN: SqlState = SqlState("42701");
    /// 3F000 invalid_schema_name: the schema does not exist.
    pub const INVALID_SCHEMA_NAME: SqlState = SqlState("3F000");
    /// 2BP01 dependent_objects_still_exist.
    pub const DEPENDENT_OBJECTS_STILL_EXIST: SqlState = SqlState("2BP01");
    /// 42501 insufficient_privilege: the role lacks a privilege the
    /// statement needs.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 42939 reserved_name: a role name PostgreSQL reserves.
    pub const RESERVED_NAME: SqlState = SqlState("42939");
    /// 0LP01 invalid_grant_operation: a membership grant that would cycle.
    pub const INVALID_GRANT_OPERATION: SqlState = SqlState("0LP01");
    /// 28000 invalid_authorization_specification: the role may not log in.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    /// 28P01 invalid_password: password authentication failed (also for an
    /// unknown user, so the answer does not tell them apart).
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// 53300 too_many_connections (also: too many failed logins from one
    /// address).
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 55006 object_in_use: e.g. DROP ROLE of the session's own role.
    pub const OBJECT_IN_USE: SqlState = SqlState("55006");
    /// 53200 out_of_memory.
    pub const OUT_OF_MEMORY: SqlState = SqlState("53200");
    /// 57014 query_canceled.
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// 57P01 admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57P03 cannot_connect_now: the node is draining or starting.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// 58030 io_error.
    pub const IO_ERROR: SqlState = SqlState("58030");
    /// 58P01 undefined_file: a file named by a statement does not exist.
    pub const UNDEFINED_FILE: SqlState = SqlState("58P01");
    /// XX000 internal_error: a bug; the message says what broke.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    /// XX001 data_corrupted: stored data failed its checksum or is missing.
    pub const DATA_CORRUPTED: SqlState = SqlState("XX001");

    /// The five-character code.
    pub fn code(self) -> &'static str {
        self.0
    }

    /// The SQLSTATE with code `code` (as sent by another node), or
    /// internal_error (XX000) for a code Quarry does not raise.
    pub fn from_code(code: &str) -> SqlState {
        const KNOWN: &[SqlState] = &[
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::PROTOCOL_VIOLATION,
            SqlState::CARDINALITY_VIOLATION,
            SqlState::DATA_EXCEPTION,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::INVALID_DATETIME_FORMAT,
            SqlState::DIVISION_BY_ZERO,
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::BAD_COPY_FILE_FORMAT,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::NO_ACTIVE_SQL_TRANSACTION,
            SqlState::IN_FAILED_SQL_TRANSACTION,
            SqlState::ACTIVE_SQL_TRANSACTION,
            SqlState::INVALID_SQL_STATEMENT_NAME,
            SqlState::DUPLICATE_PREPARED_STATEMENT,
            SqlState::CANT_CHANGE_RUNTIME_PARAM,
            SqlState::SERIALIZATION_FAILURE,
            SqlState::STATEMENT_COMPLETION_UNKNOWN,
            SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNDEFINED_OBJECT,
            SqlState::DATATYPE_MISMATCH,
            SqlState::UNDEFINED_FUNCTION,
            SqlState::UNDEFINED_TABLE,
            SqlState::DUPLICATE_SCHEMA,
            SqlState::DUPLICATE_TABLE,
            SqlState::DUPLICATE_COLUMN,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::OBJECT_IN_USE,
            SqlState::RESERVED_NAME,
            SqlState::INVALID_GRANT_OPERATION,
            SqlState::DUPLICATE_OBJECT,
            SqlState::OUT_OF_MEMORY,
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::IO_ERROR,
            SqlState::INTERNAL_ERROR,
            SqlState::DATA_CORRUPTED,
        ];
        KNOWN
            .iter()
            .copied()
            .find(|s| s.0 == code)
            .unwrap_or(SqlState::INTERNAL_ERROR)
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_five_characters() {
        for state in [
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::DATA_CORRUPTED,
            SqlState::INVALID_TEXT_REPRESENTATION,
        ] {
            assert_eq!(state.code().len(), 5, "{state}");
        }
    }

    #[test]
    fn codes_read_back_into_their_sqlstate() {
        assert_eq!(
            SqlState::from_code("40001"),
            SqlState::SERIALIZATION_FAILURE
        );
        assert_eq!(SqlState::from_code("22012"), SqlState::DIVISION_BY_ZERO);
        assert_eq!(SqlState::from_code("99999"), SqlState::INTERNAL_ERROR);
    }
}
