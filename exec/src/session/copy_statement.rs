//! COPY: its options, COPY TO STDOUT, and [`CopyIn`], a COPY FROM STDIN in
//! progress.

use super::*;
use crate::charset::Charset;
use datafusion::common::TableReference;

/// How COPY's rows are written: text or CSV lines, or PostgreSQL's binary
/// format ([`crate::copy_binary`]).
pub(super) enum CopyEncoding {
    Lines(CopyFormat),
    Binary,
}

/// CSV's FORCE_QUOTE, FORCE_NOT_NULL and FORCE_NULL column lists, by name.
#[derive(Default)]
pub(super) struct Force {
    quote: Vec<String>,
    /// FORCE_QUOTE *: every column.
    quote_all: bool,
    not_null: Vec<String>,
    null: Vec<String>,
}

impl Force {
    fn is_empty(&self) -> bool {
        !self.quote_all && self.quote.is_empty() && self.not_null.is_empty() && self.null.is_empty()
    }

    /// Sets FORCE_QUOTE's columns, or all of them for `*` (which the
    /// parser hands over as [`crate::parser::ALL_COLUMNS`]).
    fn set_quote(&mut self, columns: &[Ident]) {
        match columns {
            [all] if all.value == crate::parser::ALL_COLUMNS => self.quote_all = true,
            columns => self.quote = force_names(columns),
        }
    }

    /// The positions of `names` among `columns`; 42P10 for a name that is
    /// not one of them.
    fn positions(option: &str, names: &[String], columns: &[String]) -> Result<Vec<usize>> {
        names
            .iter()
            .map(|name| {
                columns.iter().position(|c| c == name).ok_or_else(|| {
                    user_error(
                        SqlState::INVALID_COLUMN_REFERENCE,
                        format!("{option} column \"{name}\" not referenced by COPY"),
                    )
                })
            })
            .collect()
    }
}

fn force_names(columns: &[Ident]) -> Vec<String> {
    columns.iter().map(normalize).collect()
}

/// COPY's options: the format, CSV's forced columns and the character set
/// of the data (ENCODING).
pub(super) fn copy_format(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<(CopyEncoding, Force, Charset)> {
    let mut force = Force::default();
    let mut charset = Charset::Utf8;
    let mut csv = false;
    let mut binary = false;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => (csv, binary) = (true, false),
                "text" => (csv, binary) = (false, false),
                "binary" => (csv, binary) = (false, true),
                other => {
                    return Err(user_error(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("COPY format \"{other}\" not recognized"),
                    ));
                }
            },
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::Encoding(name) => charset = Charset::named(name)?,
            CopyOption::ForceQuote(columns) => force.set_quote(columns),
            CopyOption::ForceNotNull(columns) => force.not_null = force_names(columns),
            CopyOption::ForceNull(columns) => force.null = force_names(columns),
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ));
            }
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(*c),
                        CopyLegacyCsvOption::Escape(c) => escape = Some(*c),
                        CopyLegacyCsvOption::ForceQuote(columns) => force.set_quote(columns),
                        CopyLegacyCsvOption::ForceNotNull(columns) => {
                            force.not_null = force_names(columns)
                        }
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Binary => binary = true,
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ));
            }
        }
    }
    if !csv && !force.is_empty() {
        return Err(user_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "COPY FORCE_QUOTE, FORCE_NOT_NULL and FORCE_NULL are available only in CSV mode",
        ));
    }
    if binary {
        if delimiter.is_some() || null.is_some() || header || quote.is_some() || escape.is_some() {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "cannot specify DELIMITER, NULL, HEADER, QUOTE or ESCAPE in BINARY mode",
            ));
        }
        // PostgreSQL ignores ENCODING in binary mode.
        return Ok((CopyEncoding::Binary, force, Charset::Utf8));
    }
    let byte = |c: char, what: &str| -> Result<u8> {
        if c.is_ascii() {
            Ok(c as u8)
        } else {
            Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("COPY {what} must be a single one-byte character"),
            ))
        }
    };
    if csv {
        let quote = byte(quote.unwrap_or('"'), "quote")?;
        Ok((
            CopyEncoding::Lines(CopyFormat::Csv {
                delimiter: byte(delimiter.unwrap_or(','), "delimiter")?,
                quote,
                escape: escape
                    .map(|c| byte(c, "escape"))
                    .transpose()?
                    .unwrap_or(quote),
                null: null.unwrap_or_default(),
                header,
            }),
            force,
            charset,
        ))
    } else {
        if header || quote.is_some() || escape.is_some() {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "COPY HEADER, QUOTE and ESCAPE are available only in CSV mode",
            ));
        }
        Ok((
            CopyEncoding::Lines(CopyFormat::Text {
                delimiter: byte(delimiter.unwrap_or('\t'), "delimiter")?,
                null: null.unwrap_or_else(|| "\\N".to_owned()),
            }),
            force,
            charset,
        ))
    }
}

/// What splits a COPY FROM's data into records.
enum Parser {
    Lines(RecordParser),
    Binary(crate::copy_binary::BinaryRecordParser),
}

/// A COPY FROM STDIN in progress: parses the client's data into data files and
/// commits them as one snapshot when the client ends the copy. Dropped without
/// [`CopyIn::finish`] (client failure or disconnect), it deletes what it wrote.
pub struct CopyIn {
    meta: Arc<dyn Metadata>,
    /// Whether finishing commits (autocommit), or leaves the rows to the
    /// transaction block's COMMIT.
    commit: bool,
    parser: Parser,
    /// The data's character set, decoded into UTF-8 before parsing.
    decoding: crate::charset::Decoding,
    rows: RowBuffer,
    writer: DataFileWriter,
    writes: Arc<WriteSet>,
    /// The first error; later data is ignored and `finish` reports it.
    error: Option<Error>,
    /// Number of columns copied.
    pub columns: usize,
    /// Whether the format is CSV (else text or binary).
    pub csv: bool,
    /// Whether the format is binary.
    pub binary: bool,
}

impl CopyIn {
    /// Consumes a piece of the client's data. Errors are kept and reported by
    /// [`CopyIn::finish`], as the client only reads the server's answer then.
    pub async fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let rows = &mut self.rows;
        let emit = &mut |line, record| rows.push(line, record);
        let parsed = match &mut self.parser {
            Parser::Lines(parser) => match self.decoding.decode(data, false) {
                Ok(text) => parser.feed(&text, emit),
                Err(e) => Err(e),
            },
            Parser::Binary(parser) => parser.feed(data, emit),
        };
        if let Err(e) = parsed {
            self.error = Some(e);
            return;
        }
        if self.rows.len() >= COPY_BATCH_ROWS
            && let Err(e) = self.flush().await
        {
            self.error = Some(e);
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.take_batch()?;
        self.writer.write(batch).await
    }

    /// Ends the copy: the rows commit as one new snapshot of the table.
    ///
    /// # Errors
    /// The first error met while parsing, converting or writing, or the commit's;
    /// then nothing is committed.
    pub async fn finish(mut self) -> Result<CommandTag> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let rows = &mut self.rows;
        match &mut self.parser {
            Parser::Lines(parser) => {
                let rest = self.decoding.decode(&[], true)?;
                let emit = &mut |line, record| rows.push(line, record);
                parser.feed(&rest, emit)?;
                parser.finish(emit)?
            }
            Parser::Binary(parser) => parser.finish()?,
        }
        self.flush().await?;
        let CopyIn {
            meta,
            writer,
            writes,
            commit,
            ..
        } = self;
        let count = writer.finish().await?;
        if commit {
            commit_changes(meta.as_ref(), &writes, false).await?;
        }
        Ok(CommandTag::with_rows("COPY", count))
    }
}

impl Session {
    /// The plan of `COPY table [(columns)] TO`: a scan of the table's current
    /// snapshot, projected to `columns` (all, in table order, when empty).
    async fn table_scan_plan(
        &self,
        view: &CatalogView,
        table_name: &ObjectName,
        columns: &[Ident],
    ) -> Result<LogicalPlan> {
        self.table(&view.catalog, table_name)?;
        let (schema, name) = self.resolve(table_name)?;
        let scan = self
            .ctx
            .table(TableReference::partial(schema, name))
            .await
            .map_err(Error::from_engine)?;
        let scan = if columns.is_empty() {
            scan
        } else {
            let names: Vec<String> = columns.iter().map(normalize).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            scan.select_columns(&names).map_err(Error::from_engine)?
        };
        let plan = scan.into_unoptimized_plan();
        self.access().await?.check_plan(&plan)?;
        Ok(plan)
    }

    pub(super) async fn copy(
        &mut self,
        source: CopySource,
        to: bool,
        target: CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<Output> {
        let (format, force, charset) = copy_format(options, legacy)?;
        if to && !(force.not_null.is_empty() && force.null.is_empty()) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "COPY FORCE_NOT_NULL and FORCE_NULL cannot be used with COPY TO",
            ));
        }
        if !to && (force.quote_all || !force.quote.is_empty()) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "COPY FORCE_QUOTE cannot be used with COPY FROM",
            ));
        }
        let view = self.begin_statement().await?;
        match (to, target) {
            (false, CopyTarget::Stdin) => {
                let CopySource::Table {
                    table_name,
                    columns,
                } = source
                else {
                    return Err(user_error(
                        SqlState::SYNTAX_ERROR,
                        "COPY FROM needs a table",
                    ));
                };
                let table = self.table(&view.catalog, &table_name)?.clone();
                let access = self.access().await?;
                access.require(&Securable::Schema(table.schema.clone()), Privileges::USAGE)?;
                access.require(&Securable::Table(table.id), Privileges::INSERT)?;
                let columns: Vec<String> = columns.iter().map(normalize).collect();
                let rows = RowBuffer::new(table.clone(), &columns)?;
                let types: Vec<quarry_common::catalog::ColumnType> = if columns.is_empty() {
                    table
                        .columns
                        .iter()
                        .map(|c| c.column_type.clone())
                        .collect()
                } else {
                    columns
                        .iter()
                        .filter_map(|name| table.column(name).map(|c| c.column_type.clone()))
                        .collect()
                };
                let column_count = types.len();
                let names: Vec<String> = if columns.is_empty() {
                    table.columns.iter().map(|c| c.name.clone()).collect()
                } else {
                    columns.clone()
                };
                if let Some(missing) = force
                    .not_null
                    .iter()
                    .chain(&force.null)
                    .find(|name| table.column(name).is_none())
                {
                    return Err(user_error(
                        SqlState::UNDEFINED_COLUMN,
                        format!(
                            "column \"{missing}\" of relation \"{}\" does not exist",
                            table.name
                        ),
                    ));
                }
                let not_null = Force::positions("FORCE_NOT_NULL", &force.not_null, &names)?;
                let null = Force::positions("FORCE_NULL", &force.null, &names)?;
                let (parser, csv, binary) = match format {
                    CopyEncoding::Lines(format) => {
                        let csv = matches!(format, CopyFormat::Csv { .. });
                        let parser = RecordParser::new(format).with_force(not_null, null);
                        (Parser::Lines(parser), csv, false)
                    }
                    CopyEncoding::Binary => (
                        Parser::Binary(crate::copy_binary::BinaryRecordParser::new(types)),
                        false,
                        true,
                    ),
                };
                Ok(Output::CopyIn(Box::new(CopyIn {
                    meta: self.engine.meta.clone(),
                    commit: self.transaction.is_none(),
                    writer: DataFileWriter::new(table.clone(), view.writes.clone()),
                    parser,
                    decoding: charset.decoder(),
                    rows,
                    writes: view.writes,
                    error: None,
                    columns: column_count,
                    csv,
                    binary,
                })))
            }
            (true, CopyTarget::Stdout) => {
                let plan = match source {
                    CopySource::Query(query) => self.plan(Statement::Query(query)).await?,
                    CopySource::Table {
                        table_name,
                        columns,
                    } => self.table_scan_plan(&view, &table_name, &columns).await?,
                };
                let columns = plan.schema().fields().len();
                let names: Vec<String> = plan
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                let force_quote = if force.quote_all {
                    (0..names.len()).collect()
                } else {
                    Force::positions("FORCE_QUOTE", &force.quote, &names)?
                };
                let stream = self.stream(plan).await?;
                let (csv, binary) = match &format {
                    CopyEncoding::Lines(format) => {
                        (matches!(format, CopyFormat::Csv { .. }), false)
                    }
                    CopyEncoding::Binary => (false, true),
                };
                enum Formatter {
                    Lines(RowFormatter),
                    Binary(crate::copy_binary::BinaryRowFormatter),
                }
                let mut formatter = match format {
                    CopyEncoding::Lines(format) => {
                        Formatter::Lines(RowFormatter::new(format).with_force_quote(force_quote))
                    }
                    CopyEncoding::Binary => Formatter::Binary(Default::default()),
                };
                // One message per row, as PostgreSQL sends them.
                let data = stream
                    .map_err(Error::from_engine)
                    .and_then(move |batch| {
                        let records = match &mut formatter {
                            Formatter::Lines(f) => f.format_records(&batch),
                            Formatter::Binary(f) => f.format_records(&batch),
                        };
                        let encoded = records.and_then(|records| match charset {
                            Charset::Utf8 => Ok(records),
                            charset => records
                                .into_iter()
                                .map(|record| charset.encode(&record).map(Bytes::from))
                                .collect(),
                        });
                        futures::future::ready(encoded.map(|records| {
                            futures::stream::iter(records.into_iter().map(Ok::<Bytes, Error>))
                        }))
                    })
                    .try_flatten()
                    .boxed();
                Ok(Output::CopyOut {
                    columns,
                    csv,
                    binary,
                    data,
                })
            }
            (false, other) | (true, other) => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("COPY with {other} is not supported; use STDIN or STDOUT"),
            )),
        }
    }
}
