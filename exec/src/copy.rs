//! COPY's text and CSV formats (PostgreSQL documentation, "COPY": File Formats).
//!
//! Input arrives in arbitrary pieces; [`RecordParser`] splits it into records of
//! fields (NULL or text) incrementally, and [`RowBuffer`] turns runs of records into
//! typed Arrow batches, naming the line and column of the first value that does not
//! convert.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, RecordBatch, StringArray, StringBuilder, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use quarry_common::SqlState;
use quarry_common::catalog::{ColumnType, Table};

use crate::bad_rows::{BadRows, Misfit, fit_skipping};
use crate::error::{Error, Result, user_error};
use crate::types::{arrow_type, table_schema};

/// Rows per batch built from COPY input.
pub const COPY_BATCH_ROWS: usize = 8192;
/// Longest record accepted, in bytes; bounds the memory of one unterminated line.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A COPY data format and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// Text format: one line per row, fields separated by `delimiter`, backslash
    /// escapes, NULL written as `null`.
    Text {
        /// Field separator (default tab).
        delimiter: u8,
        /// The string that means NULL (default `\N`).
        null: String,
    },
    /// CSV (RFC 4180 with PostgreSQL's NULL rules: an unquoted `null` string is NULL).
    Csv {
        /// Field separator (default comma).
        delimiter: u8,
        /// Quote character (default `"`).
        quote: u8,
        /// Escape character inside quotes (default: the quote).
        escape: u8,
        /// The unquoted string that means NULL (default empty).
        null: String,
        /// Whether the first line is a header (skipped on input, written on output).
        header: bool,
    },
}

impl CopyFormat {
    /// Text format with PostgreSQL's defaults.
    pub fn text() -> Self {
        CopyFormat::Text {
            delimiter: b'\t',
            null: "\\N".to_owned(),
        }
    }

    /// CSV with PostgreSQL's defaults.
    pub fn csv() -> Self {
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: String::new(),
            header: false,
        }
    }
}

/// One parsed field: None is NULL.
type Field = Option<String>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    /// Saw the quote (or escape) character inside quotes; the next byte decides.
    QuoteInQuoted,
}

/// Splits COPY input into records, incrementally.
pub struct RecordParser {
    format: CopyFormat,
    /// Bytes of the current field.
    field: Vec<u8>,
    field_quoted: bool,
    record: Vec<Field>,
    record_bytes: usize,
    state: CsvState,
    /// Text format: bytes of the current line.
    line: Vec<u8>,
    /// Line number (1-based) of the record being parsed.
    pub line_number: u64,
    /// Lines still to skip (the CSV header).
    skip_lines: u64,
    /// Text format: saw the `\.` end-of-data marker.
    ended: bool,
    /// CSV: positions of the fields FORCE_NOT_NULL never reads as NULL.
    force_not_null: Vec<usize>,
    /// CSV: positions of the fields FORCE_NULL reads as NULL when quoted too.
    force_null: Vec<usize>,
}

impl RecordParser {
    /// A parser for `format`.
    pub fn new(format: CopyFormat) -> Self {
        let skip_lines = matches!(format, CopyFormat::Csv { header: true, .. }) as u64;
        RecordParser {
            format,
            field: Vec::new(),
            field_quoted: false,
            record: Vec::new(),
            record_bytes: 0,
            state: CsvState::FieldStart,
            line: Vec::new(),
            line_number: 1,
            skip_lines,
            ended: false,
            force_not_null: Vec::new(),
            force_null: Vec::new(),
        }
    }

    /// CSV's FORCE_NOT_NULL and FORCE_NULL: the positions (among the COPY's
    /// columns) of the fields whose null string is never NULL, and of those
    /// where it is NULL even quoted.
    pub fn with_force(mut self, not_null: Vec<usize>, null: Vec<usize>) -> Self {
        self.force_not_null = not_null;
        self.force_null = null;
        self
    }

    /// Parses `input`, calling `emit(line_number, record)` for each complete record.
    ///
    /// # Errors
    /// 22P04 for malformed input (a record over [`RECORD_BYTES_MAX`], a bad escape),
    /// or whatever `emit` returns.
    pub fn feed(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(u64, Vec<Field>) -> Result<()>,
    ) -> Result<()> {
        match self.format.clone() {
            CopyFormat::Text { delimiter, null } => {
                for &byte in input {
                    if byte == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        self.text_line(&line, delimiter, &null, emit)?;
                    } else {
                        self.line.push(byte);
                        if self.line.len() > RECORD_BYTES_MAX {
                            return Err(self.bad_format("line is too long"));
                        }
                    }
                }
                Ok(())
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                for &byte in input {
                    self.csv_byte(byte, delimiter, quote, escape, &null, emit)?;
                }
                Ok(())
            }
        }
    }

    /// Ends the input: a last record without a trailing newline is emitted.
    ///
    /// # Errors
    /// 22P04 for an unterminated quoted field.
    pub fn finish(&mut self, emit: &mut dyn FnMut(u64, Vec<Field>) -> Result<()>) -> Result<()> {
        match self.format.clone() {
            CopyFormat::Text { delimiter, null } => {
                if !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.text_line(&line, delimiter, &null, emit)?;
                }
                Ok(())
            }
            CopyFormat::Csv { null, quote, .. } => match self.state {
                CsvState::Quoted => Err(self.bad_format("unterminated CSV quoted field")),
                CsvState::QuoteInQuoted => {
                    if self.field.pop() != Some(quote) {
                        return Err(self.bad_format("unterminated CSV quoted field"));
                    }
                    self.end_field(&null);
                    self.end_record(emit)
                }
                CsvState::FieldStart if self.record.is_empty() => Ok(()),
                _ => {
                    self.end_field(&null);
                    self.end_record(emit)
                }
            },
        }
    }

    fn bad_format(&self, message: &str) -> Error {
        Error::User {
            state: SqlState::BAD_COPY_FILE_FORMAT,
            message: message.to_owned(),
            detail: Some(format!("COPY line {}", self.line_number)),
        }
    }

    fn text_line(
        &mut self,
        line: &[u8],
        delimiter: u8,
        null: &str,
        emit: &mut dyn FnMut(u64, Vec<Field>) -> Result<()>,
    ) -> Result<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.ended {
            self.line_number += 1;
            return Ok(());
        }
        if line == b"\\." {
            self.ended = true;
            self.line_number += 1;
            return Ok(());
        }
        let mut fields = Vec::new();
        let mut raws = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'\\' {
                i += 2;
                continue;
            }
            if line[i] == delimiter {
                raws.push(&line[start..i]);
                start = i + 1;
            }
            i += 1;
        }
        raws.push(&line[start.min(line.len())..]);
        for raw in raws {
            if raw == null.as_bytes() {
                fields.push(None);
            } else {
                fields.push(Some(self.unescape_text(raw)?));
            }
        }
        let number = self.line_number;
        self.line_number += 1;
        emit(number, fields)
    }

    fn unescape_text(&self, raw: &[u8]) -> Result<String> {
        if !raw.contains(&b'\\') {
            return String::from_utf8(raw.to_vec()).map_err(|_| self.bad_format("invalid UTF-8"));
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let byte = raw[i];
            i += 1;
            if byte != b'\\' || i == raw.len() {
                out.push(byte);
                continue;
            }
            let next = raw[i];
            i += 1;
            match next {
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(0x0b),
                b'0'..=b'7' => {
                    let mut value = (next - b'0') as u32;
                    let mut digits = 1;
                    while digits < 3 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                        value = value * 8 + (raw[i] - b'0') as u32;
                        i += 1;
                        digits += 1;
                    }
                    out.push(value as u8);
                }
                b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                    let mut value = 0u32;
                    let mut digits = 0;
                    while digits < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                        value =
                            value * 16 + (raw[i] as char).to_digit(16).expect("checked hex digit");
                        i += 1;
                        digits += 1;
                    }
                    out.push(value as u8);
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| self.bad_format("invalid UTF-8"))
    }

    fn end_field(&mut self, null: &str) {
        let bytes = std::mem::take(&mut self.field);
        let position = self.record.len();
        let is_null = bytes == null.as_bytes()
            && !self.force_not_null.contains(&position)
            && (!self.field_quoted || self.force_null.contains(&position));
        let value = if is_null {
            None
        } else {
            Some(String::from_utf8_lossy(&bytes).into_owned())
        };
        self.record.push(value);
        self.field_quoted = false;
        self.state = CsvState::FieldStart;
    }

    fn end_record(&mut self, emit: &mut dyn FnMut(u64, Vec<Field>) -> Result<()>) -> Result<()> {
        let record = std::mem::take(&mut self.record);
        self.record_bytes = 0;
        let number = self.line_number;
        self.line_number += 1;
        if self.skip_lines > 0 {
            self.skip_lines -= 1;
            return Ok(());
        }
        emit(number, record)
    }

    fn csv_byte(
        &mut self,
        byte: u8,
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: &str,
        emit: &mut dyn FnMut(u64, Vec<Field>) -> Result<()>,
    ) -> Result<()> {
        self.record_bytes += 1;
        if self.record_bytes > RECORD_BYTES_MAX {
            return Err(self.bad_format("record is too long"));
        }
        match self.state {
            CsvState::FieldStart | CsvState::Unquoted => {
                if byte == quote {
                    self.state = CsvState::Quoted;
                    self.field_quoted = true;
                } else if byte == delimiter {
                    self.end_field(null);
                } else if byte == b'\n' {
                    if self.field.last() == Some(&b'\r') {
                        self.field.pop();
                    }
                    self.end_field(null);
                    self.end_record(emit)?;
                } else {
                    self.field.push(byte);
                    self.state = CsvState::Unquoted;
                }
            }
            CsvState::Quoted => {
                if byte == escape || byte == quote {
                    self.state = CsvState::QuoteInQuoted;
                    // Remember which byte opened the pair by pushing it; popped below.
                    self.field.push(byte);
                } else {
                    self.field.push(byte);
                }
            }
            CsvState::QuoteInQuoted => {
                let previous = self.field.pop().expect("pushed when entering the state");
                if byte == quote {
                    // An escaped quote ("" or \" with escape '\').
                    self.field.push(quote);
                    self.state = CsvState::Quoted;
                } else if previous == escape && escape != quote && byte == escape {
                    self.field.push(escape);
                    self.state = CsvState::Quoted;
                } else if previous == quote {
                    // The closing quote; `byte` continues the field unquoted.
                    self.state = CsvState::Unquoted;
                    self.record_bytes -= 1;
                    return self.csv_byte(byte, delimiter, quote, escape, null, emit);
                } else {
                    // A lone escape character is literal.
                    self.field.push(previous);
                    self.field.push(byte);
                    self.state = CsvState::Quoted;
                }
            }
        }
        Ok(())
    }
}

/// Accumulates parsed records for a table and converts them to typed batches.
pub struct RowBuffer {
    table: Arc<Table>,
    schema: SchemaRef,
    /// For each table column, its position among the COPY's columns (None: NULL).
    positions: Vec<Option<usize>>,
    copy_columns: usize,
    builders: Vec<StringBuilder>,
    lines: Vec<u64>,
    origin: RowOrigin,
}

/// Where a [`RowBuffer`]'s rows come from, as its errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowOrigin {
    /// Lines of a COPY FROM.
    Copy,
    /// Rows of a streaming API request, counted from 1.
    Request,
}

impl RowOrigin {
    fn place(self, table: &str, line: u64) -> String {
        match self {
            RowOrigin::Copy => format!("COPY {table}, line {line}"),
            RowOrigin::Request => format!("row {line}"),
        }
    }
}

impl RowBuffer {
    /// A buffer for rows of `table` whose fields are `columns` (all, in order, when
    /// empty).
    ///
    /// # Errors
    /// 42703 for a column the table does not have.
    pub fn new(table: Arc<Table>, columns: &[String]) -> Result<Self> {
        let positions = if columns.is_empty() {
            (0..table.columns.len()).map(Some).collect()
        } else {
            for name in columns {
                if table.column(name).is_none() {
                    return Err(user_error(
                        SqlState::UNDEFINED_COLUMN,
                        format!(
                            "column \"{name}\" of relation \"{}\" does not exist",
                            table.name
                        ),
                    ));
                }
            }
            table
                .columns
                .iter()
                .map(|c| columns.iter().position(|n| *n == c.name))
                .collect()
        };
        let copy_columns = if columns.is_empty() {
            table.columns.len()
        } else {
            columns.len()
        };
        Ok(RowBuffer {
            schema: table_schema(&table),
            table,
            positions,
            copy_columns,
            builders: (0..copy_columns).map(|_| StringBuilder::new()).collect(),
            lines: Vec::new(),
            origin: RowOrigin::Copy,
        })
    }

    /// The same buffer, its errors naming rows of a streaming API request
    /// (`row 3`) rather than COPY lines.
    pub fn from_request(mut self) -> Self {
        self.origin = RowOrigin::Request;
        self
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Adds one record read from input line `line`.
    ///
    /// # Errors
    /// 22P04 if it has the wrong number of fields.
    pub fn push(&mut self, line: u64, record: Vec<Field>) -> Result<()> {
        if record.len() != self.copy_columns {
            let problem = if record.len() < self.copy_columns {
                "missing data for a column"
            } else {
                "extra data after last expected column"
            };
            return Err(Error::User {
                state: SqlState::BAD_COPY_FILE_FORMAT,
                message: format!(
                    "{problem}: expected {} fields, found {}",
                    self.copy_columns,
                    record.len()
                ),
                detail: Some(self.origin.place(&self.table.name, line)),
            });
        }
        for (builder, field) in self.builders.iter_mut().zip(record) {
            builder.append_option(field);
        }
        self.lines.push(line);
        Ok(())
    }

    /// Converts the buffered rows into a batch of the table's schema and empties
    /// the buffer.
    ///
    /// # Errors
    /// 22P02 / 22003 / 22007 naming the line, column and value that does not
    /// convert; 23502 for a NULL in a NOT NULL column.
    pub fn take_batch(&mut self) -> Result<RecordBatch> {
        self.take_batch_skipping(&mut BadRows::default())
    }

    /// As [`Self::take_batch`], skipping rows that do not convert while
    /// `bad` allows.
    pub fn take_batch_skipping(&mut self, bad: &mut BadRows) -> Result<RecordBatch> {
        let texts: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let lines = std::mem::take(&mut self.lines);
        let texts = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(
                (0..texts.len())
                    .map(|i| ArrowField::new(format!("f{i}"), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            )),
            texts,
            &RecordBatchOptions::new().with_row_count(Some(lines.len())),
        )
        .map_err(|e| Error::Internal(format!("COPY rows: {e}")))?;
        fit_skipping(&texts, &|i| lines[i], bad, &|texts, line| {
            self.convert_rows(texts, line)
        })
    }

    /// The rows of `texts` (one text column per COPY column) as a batch of
    /// the table; `line` gives a row's line by its index.
    fn convert_rows(
        &self,
        texts: &RecordBatch,
        line: &dyn Fn(usize) -> u64,
    ) -> std::result::Result<RecordBatch, Misfit> {
        let rows = texts.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.table.columns.len());
        for (column, position) in self.table.columns.iter().zip(&self.positions) {
            let Some(position) = position else {
                columns.push(new_null_array(&arrow_type(&column.column_type), rows));
                continue;
            };
            let text = texts
                .column(*position)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("text columns");
            if !column.nullable
                && text.null_count() > 0
                && let Some(row) = (0..rows).find(|r| text.is_null(*r))
            {
                return Err(Misfit::new(
                    Some(row),
                    Error::User {
                        state: SqlState::NOT_NULL_VIOLATION,
                        message: format!(
                            "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                            column.name, self.table.name
                        ),
                        detail: Some(self.origin.place(&self.table.name, line(row))),
                    },
                ));
            }
            let locate = |row| {
                format!(
                    "{}, column {}",
                    self.origin.place(&self.table.name, line(row)),
                    column.name
                )
            };
            columns.push(
                if self.origin == RowOrigin::Request
                    && matches!(
                        column.column_type,
                        ColumnType::Array(_) | ColumnType::Struct(_)
                    )
                {
                    nested_from_json(text, &column.column_type, locate)?
                } else {
                    convert(text, &column.column_type, locate)?
                },
            );
        }
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| {
            Misfit::new(
                None,
                Error::Internal(format!("COPY batch does not fit its table: {e}")),
            )
        })
    }
}

/// An array or struct column's values from their JSON texts (a streaming
/// request's arrays and objects), decoded by arrow-json: an object's keys
/// name its fields (a key that is no field is an error, a missing one is
/// NULL), numbers in strings are numbers.
///
/// # Errors
/// 22P02 naming the first value that does not decode.
fn nested_from_json(
    text: &StringArray,
    column_type: &ColumnType,
    locate: impl Fn(usize) -> String,
) -> std::result::Result<ArrayRef, Misfit> {
    use datafusion::arrow::json::ReaderBuilder;
    let target = arrow_type(column_type);
    // A NULL is JSON's null to the decoder.
    let json = |row: usize| {
        if text.is_valid(row) {
            text.value(row)
        } else {
            "null"
        }
    };
    let decode = |rows: std::ops::Range<usize>| -> std::result::Result<ArrayRef, String> {
        let mut decoder = ReaderBuilder::new_with_field(ArrowField::new("v", target.clone(), true))
            .with_strict_mode(true)
            .with_batch_size(rows.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        for row in rows.clone() {
            body.extend_from_slice(json(row).as_bytes());
            body.push(b'\n');
        }
        decoder.decode(&body).map_err(|e| e.to_string())?;
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) if batch.num_rows() == rows.len() => Ok(batch.column(0).clone()),
            _ => Err(format!("{} values decoded as fewer rows", rows.len())),
        }
    };
    decode(0..text.len()).map_err(|whole| {
        // Which value: the first that does not decode alone.
        let bad = (0..text.len()).find_map(|row| decode(row..row + 1).err().map(|e| (row, e)));
        let Some((row, problem)) = bad else {
            return Misfit::new(None, Error::Internal(whole));
        };
        let value = json(row);
        Misfit::new(
            Some(row),
            Error::User {
                state: SqlState::INVALID_TEXT_REPRESENTATION,
                message: format!("invalid input for type {column_type}: {problem}"),
                detail: Some(format!("{}: {value}", locate(row))),
            },
        )
    })
}

/// Converts text values to `column_type`, naming the first bad value.
fn convert(
    text: &StringArray,
    column_type: &ColumnType,
    locate: impl Fn(usize) -> String,
) -> std::result::Result<ArrayRef, Misfit> {
    let target = arrow_type(column_type);
    if *column_type == ColumnType::Bytea {
        let bad_row = std::cell::Cell::new(None);
        return decode_bytea(text, |row| {
            bad_row.set(Some(row));
            bad_value(&locate(row), column_type, text.value(row))
        })
        .map_err(|e| Misfit::new(bad_row.get(), e));
    }
    if let DataType::List(element) = &target {
        // PostgreSQL's array text, element by element (array_in).
        let mut values = Vec::with_capacity(text.len());
        for row in 0..text.len() {
            values.push(if text.is_null(row) {
                ScalarValue::try_from(&target)
                    .map_err(|e| Misfit::new(None, Error::from_engine(e)))?
            } else {
                crate::array_text::parse(text.value(row), element).map_err(|e| {
                    let detail = format!("{}: \"{}\"", locate(row), text.value(row));
                    let error = Error::User {
                        state: e.sqlstate(),
                        message: e.to_string(),
                        detail: Some(detail),
                    };
                    Misfit::new(Some(row), error)
                })?
            });
        }
        return ScalarValue::iter_to_array(values)
            .map_err(|e| Misfit::new(None, Error::from_engine(e)));
    }
    if column_type.is_nested() {
        return Err(Misfit::new(
            None,
            crate::error::user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("COPY of {column_type} values as text is not supported yet"),
            ),
        ));
    }
    let trimmed;
    let source: &StringArray = if matches!(column_type, ColumnType::Text) {
        text
    } else {
        trimmed = StringArray::from_iter(text.iter().map(|v| v.map(str::trim)));
        &trimmed
    };
    let converted = cast_with_options(
        source,
        &target,
        &CastOptions {
            safe: true,
            ..Default::default()
        },
    )
    .map_err(|e| {
        Misfit::new(
            None,
            Error::Internal(format!("no conversion from text to {target}: {e}")),
        )
    })?;
    if converted.null_count() > source.null_count()
        && let Some(row) = (0..source.len()).find(|r| source.is_valid(*r) && converted.is_null(*r))
    {
        return Err(Misfit::new(
            Some(row),
            bad_value(&locate(row), column_type, text.value(row)),
        ));
    }
    Ok(converted)
}

/// How COPY writes scalar values as text (PostgreSQL's output forms).
fn text_format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_null("")
        .with_date_format(Some("%Y-%m-%d"))
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
}

/// PostgreSQL's text of the non-null list or struct at `row` of `column`
/// (`array_out`, `record_out`), its scalars as COPY writes them.
///
/// # Errors
/// Internal if a value cannot be formatted.
pub fn nested_value_text(column: &dyn Array, row: usize) -> Result<String> {
    let options = text_format_options();
    let scalar = |array: &dyn Array, row: usize| -> Result<String> {
        let formatter = ArrayFormatter::try_new(array, &options)
            .map_err(|e| Error::Internal(format!("cannot format a value: {e}")))?;
        Ok(scalar_text(array, row, &formatter))
    };
    crate::array_text::nested_text(column, row, &scalar)
}

/// The COPY text of the non-null scalar at `row` of `column`: Booleans as
/// `t`/`f`, bytea in hex, others as `formatter` writes them.
fn scalar_text(column: &dyn Array, row: usize, formatter: &ArrayFormatter) -> String {
    match column.data_type() {
        DataType::Boolean => {
            if formatter.value(row).to_string() == "true" {
                "t".to_owned()
            } else {
                "f".to_owned()
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let binary = datafusion::arrow::compute::cast(column, &DataType::Binary)
                .unwrap_or_else(|_| datafusion::arrow::array::make_array(column.to_data()));
            let bytes = datafusion::arrow::array::as_generic_binary_array::<i32>(&binary)
                .value(row)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            format!("\\x{bytes}")
        }
        _ => formatter.value(row).to_string(),
    }
}

/// 22P02 (22007 for dates and times) for `value`, found at `place` (`COPY
/// t, line 3, column c`).
fn bad_value(place: &str, column_type: &ColumnType, value: &str) -> Error {
    let state = match column_type {
        ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz => {
            SqlState::INVALID_DATETIME_FORMAT
        }
        _ => SqlState::INVALID_TEXT_REPRESENTATION,
    };
    Error::User {
        state,
        message: format!("invalid input syntax for type {column_type}: \"{value}\""),
        detail: Some(format!("{place}: \"{value}\"")),
    }
}

/// Decodes PostgreSQL's bytea hex format (`\x0a0b`); other text is taken as bytes.
pub fn decode_bytea(text: &StringArray, bad: impl Fn(usize) -> Error) -> Result<ArrayRef> {
    let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(text.len());
    for (row, value) in text.iter().enumerate() {
        values.push(match value {
            None => None,
            Some(v) => match v.strip_prefix("\\x") {
                Some(hex) => Some(decode_hex(hex).ok_or_else(|| bad(row))?),
                None => Some(v.as_bytes().to_vec()),
            },
        });
    }
    Ok(Arc::new(BinaryArray::from_iter(values)))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Formats batches as COPY output.
pub struct RowFormatter {
    format: CopyFormat,
    header_pending: bool,
    /// CSV's FORCE_QUOTE: positions of the columns whose values are always
    /// quoted.
    force_quote: Vec<usize>,
}

impl RowFormatter {
    /// A formatter for `format`.
    pub fn new(format: CopyFormat) -> Self {
        let header_pending = matches!(format, CopyFormat::Csv { header: true, .. });
        RowFormatter {
            format,
            header_pending,
            force_quote: Vec::new(),
        }
    }

    /// CSV's FORCE_QUOTE: the positions of the columns whose non-NULL values
    /// are quoted even when they need not be.
    pub fn with_force_quote(mut self, positions: Vec<usize>) -> Self {
        self.force_quote = positions;
        self
    }

    /// The bytes of `batch`'s rows (and the header before the first batch).
    ///
    /// # Errors
    /// Internal if a column cannot be formatted.
    pub fn format(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        Ok(self.format_records(batch)?.concat())
    }

    /// Each of `batch`'s rows (and the header before the first batch) as its
    /// own line, as PostgreSQL sends COPY TO STDOUT: one CopyData message per
    /// row (clients such as psycopg's `Copy.rows()` read one row a message).
    ///
    /// # Errors
    /// Internal if a column cannot be formatted.
    pub fn format_records(&mut self, batch: &RecordBatch) -> Result<Vec<bytes::Bytes>> {
        let mut out = Vec::new();
        let mut ends = Vec::with_capacity(batch.num_rows() + 1);
        let options = text_format_options();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("cannot format COPY output: {e}")))?;
        if self.header_pending {
            self.header_pending = false;
            let names: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            self.write_record(&mut out, names.iter().map(|n| Some(n.clone())), false);
            ends.push(out.len());
        }
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| {
                    if column.is_null(row) {
                        Ok(None)
                    } else if column.data_type().is_nested() {
                        nested_value_text(column.as_ref(), row).map(Some)
                    } else {
                        Ok(Some(scalar_text(column.as_ref(), row, formatter)))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            self.write_record(&mut out, values.into_iter(), true);
            ends.push(out.len());
        }
        let out = bytes::Bytes::from(out);
        let mut start = 0;
        Ok(ends
            .into_iter()
            .map(|end| {
                let record = out.slice(start..end);
                start = end;
                record
            })
            .collect())
    }

    fn write_record(
        &self,
        out: &mut Vec<u8>,
        values: impl Iterator<Item = Option<String>>,
        rows: bool,
    ) {
        match &self.format {
            CopyFormat::Text { delimiter, null } => {
                for (i, value) in values.enumerate() {
                    if i > 0 {
                        out.push(*delimiter);
                    }
                    match value {
                        None => out.extend_from_slice(null.as_bytes()),
                        Some(v) => {
                            for byte in v.bytes() {
                                match byte {
                                    b'\\' => out.extend_from_slice(b"\\\\"),
                                    b'\n' => out.extend_from_slice(b"\\n"),
                                    b'\r' => out.extend_from_slice(b"\\r"),
                                    b'\t' => out.extend_from_slice(b"\\t"),
                                    b if b == *delimiter => {
                                        out.push(b'\\');
                                        out.push(b);
                                    }
                                    b => out.push(b),
                                }
                            }
                        }
                    }
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                for (i, value) in values.enumerate() {
                    if i > 0 {
                        out.push(*delimiter);
                    }
                    match value {
                        None => out.extend_from_slice(null.as_bytes()),
                        Some(v) => {
                            let needs_quotes = rows && self.force_quote.contains(&i)
                                || v.is_empty() && null.is_empty()
                                || v == *null
                                || v.bytes().any(|b| {
                                    b == *delimiter || b == *quote || b == b'\n' || b == b'\r'
                                });
                            if needs_quotes {
                                out.push(*quote);
                                for byte in v.bytes() {
                                    if byte == *quote || byte == *escape {
                                        out.push(*escape);
                                    }
                                    out.push(byte);
                                }
                                out.push(*quote);
                            } else {
                                out.extend_from_slice(v.as_bytes());
                            }
                        }
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(format: CopyFormat, pieces: &[&[u8]]) -> Result<Vec<(u64, Vec<Field>)>> {
        let mut parser = RecordParser::new(format);
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut |line, record| {
                out.push((line, record));
                Ok(())
            })?;
        }
        parser.finish(&mut |line, record| {
            out.push((line, record));
            Ok(())
        })?;
        Ok(out)
    }

    fn s(v: &str) -> Field {
        Some(v.to_owned())
    }

    #[test]
    fn csv_quotes_nulls_and_split_input() {
        let input = b"1,\"a,b\",\n2,\"\",\"say \"\"hi\"\"\"\n3,x,\"multi\nline\"";
        // Feed one byte at a time to cross every boundary.
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        let out = records(CopyFormat::csv(), &pieces).expect("parses");
        assert_eq!(
            out,
            vec![
                (1, vec![s("1"), s("a,b"), None]),
                (2, vec![s("2"), s(""), s("say \"hi\"")]),
                (3, vec![s("3"), s("x"), s("multi\nline")]),
            ]
        );
    }

    #[test]
    fn csv_header_is_skipped_and_crlf_accepted() {
        let format = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: String::new(),
            header: true,
        };
        let out = records(format, &[b"a,b\r\n1,2\r\n"]).expect("parses");
        assert_eq!(out, vec![(2, vec![s("1"), s("2")])]);
    }

    #[test]
    fn unterminated_csv_quote_is_an_error() {
        let e = records(CopyFormat::csv(), &[b"1,\"open"]).expect_err("unterminated");
        assert_eq!(e.sqlstate(), SqlState::BAD_COPY_FILE_FORMAT);
    }

    #[test]
    fn text_format_escapes_and_end_marker() {
        let out = records(
            CopyFormat::text(),
            &[b"1\ta\\tb\t\\N\n2\t\\\\x\t\\101\n\\.\nignored\n"],
        )
        .expect("parses");
        assert_eq!(
            out,
            vec![
                (1, vec![s("1"), s("a\tb"), None]),
                (2, vec![s("2"), s("\\x"), s("A")]),
            ]
        );
    }

    #[test]
    fn formatter_output_parses_back_to_the_same_fields() {
        use datafusion::arrow::array::Int32Array;
        use datafusion::arrow::datatypes::{Field as ArrowField, Schema};
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("n", DataType::Int32, true),
            ArrowField::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a,\"b\"\n"), Some(""), None])),
            ],
        )
        .expect("batch");
        for format in [CopyFormat::csv(), CopyFormat::text()] {
            let bytes = RowFormatter::new(format.clone())
                .format(&batch)
                .expect("formats");
            let out = records(format.clone(), &[&bytes]).expect("parses back");
            let fields: Vec<Vec<Field>> = out.into_iter().map(|(_, r)| r).collect();
            assert_eq!(
                fields,
                vec![
                    vec![s("1"), s("a,\"b\"\n")],
                    vec![None, s("")],
                    vec![s("3"), None]
                ],
                "{format:?}"
            );
        }
    }
}
