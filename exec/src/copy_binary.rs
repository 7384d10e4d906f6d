//! COPY's binary format (PostgreSQL's "PGCOPY", `COPY ... (FORMAT binary)`):
//! a signature and header, then per row a 16-bit field count and each field
//! as a 32-bit length (-1: NULL) and its value in the type's binary send
//! format, then a -1 trailer. Source: PostgreSQL's documentation of COPY,
//! "Binary Format" (https://www.postgresql.org/docs/15/sql-copy.html).
//!
//! Input fields are decoded by the column's type (`postgres-types`) into
//! their text form, which [`crate::copy::RowBuffer`] converts as it converts
//! text and CSV; output values are encoded from Arrow arrays.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType,
};
use postgres_types::{FromSql, IsNull, ToSql, Type};
use quarry_common::SqlState;
use quarry_common::catalog::ColumnType;
use rust_decimal::Decimal;

use crate::error::{Error, Result, user_error};

/// The 11-byte signature that starts binary COPY data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Largest tuple accepted, in bytes; bounds the memory of one row.
const TUPLE_BYTES_MAX: usize = crate::copy::RECORD_BYTES_MAX;

fn bad(message: impl Into<String>) -> Error {
    user_error(SqlState::BAD_COPY_FILE_FORMAT, message)
}

/// The text form of a binary field of `column_type`, as the text format
/// would carry it.
fn field_text(column_type: &ColumnType, raw: &[u8]) -> std::result::Result<String, String> {
    let ty = crate::pg_catalog::pg_type(column_type);
    let text = match column_type {
        ColumnType::Boolean => if bool::from_sql(&ty, raw).map_err(|e| e.to_string())? {
            "t"
        } else {
            "f"
        }
        .to_owned(),
        ColumnType::Int16 => i16::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Int32 => i32::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Int64 => i64::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Float32 => f32::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Float64 => f64::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Decimal { .. } => Decimal::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .to_string(),
        ColumnType::Text => String::from_sql(&ty, raw).map_err(|e| e.to_string())?,
        // json's binary form is its text (jsonb's would start with a version
        // byte; the column's type on the wire is json).
        ColumnType::Json => std::str::from_utf8(raw)
            .map_err(|e| e.to_string())?
            .to_owned(),
        ColumnType::Array(_) | ColumnType::Struct(_) => {
            return Err(format!(
                "binary COPY of {column_type} columns is not supported; use the text or CSV format"
            ));
        }
        ColumnType::Date => NaiveDate::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .format("%Y-%m-%d")
            .to_string(),
        ColumnType::Timestamp => NaiveDateTime::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
        ColumnType::TimestampTz => DateTime::<Utc>::from_sql(&ty, raw)
            .map_err(|e| e.to_string())?
            .format("%Y-%m-%d %H:%M:%S%.6f+00:00")
            .to_string(),
        ColumnType::Bytea => {
            let mut text = String::with_capacity(2 + raw.len() * 2);
            text.push_str("\\x");
            for byte in raw {
                text.push_str(&format!("{byte:02x}"));
            }
            text
        }
    };
    Ok(text)
}

/// Splits binary COPY input into records of text fields, incrementally.
pub struct BinaryRecordParser {
    /// The types of the COPY's columns, in order.
    types: Vec<ColumnType>,
    /// Input not parsed yet.
    buffer: Vec<u8>,
    header_done: bool,
    ended: bool,
    /// Number (1-based) of the next tuple.
    row: u64,
}

impl BinaryRecordParser {
    /// A parser of rows whose fields have `types`.
    pub fn new(types: Vec<ColumnType>) -> Self {
        BinaryRecordParser {
            types,
            buffer: Vec::new(),
            header_done: false,
            ended: false,
            row: 1,
        }
    }

    /// Parses `input`, calling `emit(row_number, record)` for each complete row.
    ///
    /// # Errors
    /// 22P04 for a bad signature or header, a row with another number of
    /// fields than the COPY's columns, a field that does not decode as its
    /// column's type, or data after the trailer; whatever `emit` returns.
    pub fn feed(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(u64, Vec<Option<String>>) -> Result<()>,
    ) -> Result<()> {
        self.buffer.extend_from_slice(input);
        let mut pos = 0;
        if !self.header_done {
            // Signature, flags (i32), header extension length (i32) and extension.
            if self.buffer.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buffer[..SIGNATURE.len()] != SIGNATURE {
                return Err(bad("COPY file signature not recognized"));
            }
            let flags = i32::from_be_bytes(self.buffer[11..15].try_into().expect("4 bytes"));
            if flags & (1 << 16) != 0 {
                return Err(bad("COPY file has OIDs, which are not supported"));
            }
            let extension =
                i32::from_be_bytes(self.buffer[15..19].try_into().expect("4 bytes")).max(0);
            let end = 19 + extension as usize;
            if self.buffer.len() < end {
                return Ok(());
            }
            pos = end;
            self.header_done = true;
        }
        loop {
            if self.ended {
                if self.buffer[pos..].is_empty() {
                    break;
                }
                return Err(bad("data after the COPY binary trailer"));
            }
            let Some(count) = self.buffer.get(pos..pos + 2) else {
                break;
            };
            let count = i16::from_be_bytes(count.try_into().expect("2 bytes"));
            if count == -1 {
                self.ended = true;
                pos += 2;
                continue;
            }
            if count as usize != self.types.len() {
                return Err(bad(format!(
                    "row {} has {count} fields, the COPY has {} columns",
                    self.row,
                    self.types.len()
                )));
            }
            // Find the tuple's end before decoding any field of it.
            let mut end = pos + 2;
            let mut fields = Vec::with_capacity(self.types.len());
            let mut complete = true;
            for _ in 0..count {
                let Some(length) = self.buffer.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let length = i32::from_be_bytes(length.try_into().expect("4 bytes"));
                end += 4;
                if length < 0 {
                    fields.push(None);
                    continue;
                }
                let length = length as usize;
                if end + length - pos > TUPLE_BYTES_MAX {
                    return Err(bad(format!("row {} is too long", self.row)));
                }
                if self.buffer.len() < end + length {
                    complete = false;
                    break;
                }
                fields.push(Some(end..end + length));
                end += length;
            }
            if !complete {
                break;
            }
            let mut record = Vec::with_capacity(fields.len());
            for (column, (field, column_type)) in fields.into_iter().zip(&self.types).enumerate() {
                record.push(match field {
                    None => None,
                    Some(range) => {
                        Some(field_text(column_type, &self.buffer[range]).map_err(|e| {
                            user_error(
                                SqlState::INVALID_BINARY_REPRESENTATION,
                                format!(
                                    "row {}, column {}: not a binary {}: {e}",
                                    self.row,
                                    column + 1,
                                    crate::pg_catalog::pg_type(column_type)
                                ),
                            )
                        })?)
                    }
                });
            }
            emit(self.row, record)?;
            self.row += 1;
            pos = end;
        }
        self.buffer.drain(..pos);
        Ok(())
    }

    /// Ends the input.
    ///
    /// # Errors
    /// 22P04 if the data stopped inside the header or a row.
    pub fn finish(&mut self) -> Result<()> {
        if !self.header_done && !self.buffer.is_empty() {
            return Err(bad("COPY binary data ends inside its header"));
        }
        if !self.buffer.is_empty() {
            return Err(bad(format!(
                "COPY binary data ends inside row {}",
                self.row
            )));
        }
        Ok(())
    }
}

/// Formats rows as binary COPY data: the header before the first row, one
/// message's bytes per row. The trailer is the caller's (the protocol layer
/// appends it).
#[derive(Default)]
pub struct BinaryRowFormatter {
    header_written: bool,
}

impl BinaryRowFormatter {
    /// Each of `batch`'s rows in binary COPY format (the first also carries
    /// the header).
    ///
    /// # Errors
    /// 0A000 for a column type binary COPY does not send.
    pub fn format_records(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>> {
        let mut records = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let mut out = BytesMut::new();
            if !self.header_written {
                self.header_written = true;
                out.put_slice(SIGNATURE);
                out.put_i32(0);
                out.put_i32(0);
            }
            out.put_i16(batch.num_columns() as i16);
            for column in batch.columns() {
                write_field(column.as_ref(), row, &mut out)?;
            }
            records.push(out.freeze());
        }
        Ok(records)
    }
}

fn put<T: ToSql>(value: T, ty: &Type, out: &mut BytesMut) -> Result<()> {
    let at = out.len();
    out.put_i32(0);
    match value
        .to_sql(ty, out)
        .map_err(|e| Error::Internal(format!("binary COPY of a {ty} value: {e}")))?
    {
        IsNull::Yes => out[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes()),
        IsNull::No => {
            let length = (out.len() - at - 4) as i32;
            out[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
    }
    Ok(())
}

fn write_field(column: &dyn Array, row: usize, out: &mut BytesMut) -> Result<()> {
    if column.is_null(row) {
        out.put_i32(-1);
        return Ok(());
    }
    // Each arm reads the array as the type it just matched.
    match column.data_type() {
        DataType::Boolean => put(column.as_boolean().value(row), &Type::BOOL, out),
        DataType::Int16 => put(
            column.as_primitive::<Int16Type>().value(row),
            &Type::INT2,
            out,
        ),
        DataType::Int32 => put(
            column.as_primitive::<Int32Type>().value(row),
            &Type::INT4,
            out,
        ),
        DataType::Int64 => put(
            column.as_primitive::<Int64Type>().value(row),
            &Type::INT8,
            out,
        ),
        DataType::Float32 => put(
            column.as_primitive::<Float32Type>().value(row),
            &Type::FLOAT4,
            out,
        ),
        DataType::Float64 => put(
            column.as_primitive::<Float64Type>().value(row),
            &Type::FLOAT8,
            out,
        ),
        DataType::Decimal128(_, scale) => {
            let value = column.as_primitive::<Decimal128Type>().value(row);
            let decimal = Decimal::try_from_i128_with_scale(value, (*scale).max(0) as u32)
                .map_err(|e| Error::Internal(format!("binary COPY of a numeric: {e}")))?;
            put(decimal, &Type::NUMERIC, out)
        }
        DataType::Utf8 => put(column.as_string::<i32>().value(row), &Type::TEXT, out),
        DataType::LargeUtf8 => put(column.as_string::<i64>().value(row), &Type::TEXT, out),
        DataType::Utf8View => put(column.as_string_view().value(row), &Type::TEXT, out),
        DataType::Binary => put(column.as_binary::<i32>().value(row), &Type::BYTEA, out),
        DataType::LargeBinary => put(column.as_binary::<i64>().value(row), &Type::BYTEA, out),
        DataType::BinaryView => put(column.as_binary_view().value(row), &Type::BYTEA, out),
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>().value(row);
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days.into())))
                .ok_or_else(|| Error::Internal(format!("binary COPY: date {days} out of range")))?;
            put(date, &Type::DATE, out)
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| {
                Error::Internal(format!("binary COPY: timestamp {micros} out of range"))
            })?;
            match zone {
                Some(_) => put(at, &Type::TIMESTAMPTZ, out),
                None => put(at.naive_utc(), &Type::TIMESTAMP, out),
            }
        }
        other => Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("binary COPY of {other} values is not supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        ArrayRef, Date32Array, Decimal128Array, Int64Array, StringArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn rows_written_in_binary_read_back_as_their_text() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new("day", DataType::Date32, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, -2])),
            Arc::new(StringArray::from(vec![Some("a\tb"), None])),
            Arc::new(
                Decimal128Array::from(vec![Some(150), Some(-5)])
                    .with_precision_and_scale(10, 2)
                    .expect("decimal"),
            ),
            Arc::new(Date32Array::from(vec![Some(20_454), None])),
        ];
        let batch = RecordBatch::try_new(schema, columns).expect("batch");
        let mut bytes: Vec<u8> = BinaryRowFormatter::default()
            .format_records(&batch)
            .expect("format")
            .concat();
        bytes.extend_from_slice(&(-1i16).to_be_bytes());
        let types = vec![
            ColumnType::Int64,
            ColumnType::Text,
            ColumnType::Decimal {
                precision: 10,
                scale: 2,
            },
            ColumnType::Date,
        ];
        let mut parser = BinaryRecordParser::new(types);
        let mut rows = Vec::new();
        // Fed a few bytes at a time, as CopyData messages may cut it anywhere.
        for piece in bytes.chunks(5) {
            parser
                .feed(piece, &mut |row, record| {
                    rows.push((row, record));
                    Ok(())
                })
                .expect("feed");
        }
        parser.finish().expect("finish");
        let text = |s: &str| Some(s.to_owned());
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    vec![text("1"), text("a\tb"), text("1.50"), text("2026-01-01")]
                ),
                (2, vec![text("-2"), None, text("-0.05"), None]),
            ]
        );
    }

    #[test]
    fn a_bad_signature_a_short_row_and_a_cut_row_are_refused() {
        let mut parser = BinaryRecordParser::new(vec![ColumnType::Int32]);
        let error = parser
            .feed(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", &mut |_, _| Ok(()))
            .expect_err("signature");
        assert!(error.to_string().contains("signature"), "{error}");

        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&[0; 8]);
        let mut two_fields = header.clone();
        two_fields.extend_from_slice(&2i16.to_be_bytes());
        let mut parser = BinaryRecordParser::new(vec![ColumnType::Int32]);
        let error = parser
            .feed(&two_fields, &mut |_, _| Ok(()))
            .expect_err("field count");
        assert!(error.to_string().contains("2 fields"), "{error}");

        let mut cut = header;
        cut.extend_from_slice(&1i16.to_be_bytes());
        cut.extend_from_slice(&4i32.to_be_bytes());
        cut.extend_from_slice(&[0, 0]);
        let mut parser = BinaryRecordParser::new(vec![ColumnType::Int32]);
        parser
            .feed(&cut, &mut |_, _| Ok(()))
            .expect("waits for more");
        assert!(parser.finish().is_err(), "a row cut short");
    }
}
