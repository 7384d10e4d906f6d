//! A replication connection to a subscription's source: PostgreSQL's
//! streaming replication protocol (PostgreSQL manual, section 55.4,
//! "Streaming Replication Protocol"), in its logical form (section 55.5).
//!
//! - [`ReplicationConnection::connect`] logs in with `replication=database`
//!   (password, MD5 or SCRAM-SHA-256), over TLS as the source's `sslmode`
//!   says ([`SourceConfig::transport`]), with the session settings
//!   PostgreSQL's own subscriber uses, so values arrive as its output
//!   functions write them under `DateStyle = ISO`.
//! - [`ReplicationConnection::simple_query`] runs replication commands
//!   (`CREATE_REPLICATION_SLOT`, `IDENTIFY_SYSTEM`) before streaming.
//! - [`ReplicationConnection::start`] sends `START_REPLICATION SLOT ...
//!   LOGICAL` with pgoutput's options: protocol version 1, or 2 with
//!   `streaming 'on'` (the source sends a large transaction in blocks while
//!   it is still in progress; server 14 and later). The returned
//!   [`ReplicationStream`] yields the XLogData and keepalive messages and
//!   answers the source with standby status updates: every second, at once
//!   when the applied position moves, and when a keepalive asks for one.
//!
//! The framing, the messages and SCRAM are `postgres-protocol`'s (the
//! library tokio-postgres is built on); this module holds only the
//! replication sub-protocol, which tokio-postgres does not speak.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use crate::pgoutput::Lsn;
use crate::source::{SourceConfig, SourceError, Transport};

/// How often the source is told the positions when nothing else prompts it.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Messages read ahead of the applier, at most.
const READ_AHEAD: usize = 1024;

/// The session settings PostgreSQL's subscriber gives its walsender
/// (`libpqrcv_connect`), so that values are sent as it reads them.
const SESSION_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3";

/// A logged-in replication connection, not yet streaming.
pub struct ReplicationConnection {
    stream: Box<dyn Transport>,
    buf: BytesMut,
    /// The source's version as `server_version_num` gives it (150018).
    server_version: u32,
}

/// A message the source sent on a replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// WAL data: for logical replication, one output plugin message.
    XLogData {
        /// The WAL position of its start.
        start: Lsn,
        /// The end of WAL the sender had reached.
        wal_end: Lsn,
        /// The plugin's message.
        data: Bytes,
    },
    /// A primary keepalive message.
    KeepAlive {
        /// The end of WAL the sender had reached: with nothing pending,
        /// everything before it has been sent.
        wal_end: Lsn,
    },
}

/// The pgoutput options of a `START_REPLICATION`.
#[derive(Debug, Clone)]
pub struct LogicalOptions {
    /// The publications.
    pub publications: Vec<String>,
    /// Protocol version 2 with `streaming 'on'`: in-progress transactions
    /// are streamed in blocks (needs a server of version 14 or later).
    pub streaming: bool,
}

impl ReplicationConnection {
    /// Connects to `source` as `application_name` with `replication=database`.
    ///
    /// # Errors
    /// The source cannot be reached, refuses the login, or fails TLS as
    /// `sslmode` asks.
    pub async fn connect(
        source: &SourceConfig,
        application_name: &str,
    ) -> Result<ReplicationConnection, SourceError> {
        let stream = source.transport().await?;
        let mut connection = ReplicationConnection {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            server_version: 0,
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", source.user.as_str()),
                ("database", source.dbname.as_str()),
                ("replication", "database"),
                ("application_name", application_name),
                ("client_encoding", "UTF8"),
                ("options", SESSION_OPTIONS),
            ],
            &mut out,
        )
        .map_err(io_error)?;
        connection.send(&out).await?;
        connection.authenticate(source).await?;
        loop {
            match connection.read().await? {
                Frame::Message(backend::Message::ParameterStatus(body))
                    if body.name().map_err(io_error)? == "server_version" =>
                {
                    connection.server_version = version_number(body.value().map_err(io_error)?);
                }
                Frame::Message(backend::Message::ReadyForQuery(_)) => return Ok(connection),
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    return Err(format!(
                        "the source refused the connection: {}",
                        error_text(&body)
                    ));
                }
                _ => {}
            }
        }
    }

    /// The source's version, as `server_version_num` gives it (150018 for
    /// 15.18; 0 if it did not say).
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// Answers the source's authentication request with `source`'s
    /// password, until it accepts or refuses.
    async fn authenticate(&mut self, source: &SourceConfig) -> Result<(), SourceError> {
        let password = source.password.as_bytes();
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut out = BytesMut::new();
        loop {
            out.clear();
            match self.read().await? {
                Frame::Message(backend::Message::AuthenticationOk) => return Ok(()),
                Frame::Message(backend::Message::AuthenticationCleartextPassword) => {
                    frontend::password_message(password, &mut out).map_err(io_error)?;
                }
                Frame::Message(backend::Message::AuthenticationMd5Password(body)) => {
                    let hash = md5_hash(source.user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(io_error)?;
                }
                Frame::Message(backend::Message::AuthenticationSasl(body)) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(mechanism) =
                        fallible_iterator::FallibleIterator::next(&mut mechanisms)
                            .map_err(io_error)?
                    {
                        offered |= mechanism == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err("the source offers no SASL mechanism Quarry speaks".to_owned());
                    }
                    let started =
                        sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        started.message(),
                        &mut out,
                    )
                    .map_err(io_error)?;
                    scram = Some(started);
                }
                Frame::Message(backend::Message::AuthenticationSaslContinue(body)) => {
                    let scram = scram
                        .as_mut()
                        .ok_or("the source continued a SASL exchange never begun")?;
                    scram
                        .update(body.data())
                        .map_err(|e| format!("SCRAM with the source failed: {e}"))?;
                    frontend::sasl_response(scram.message(), &mut out).map_err(io_error)?;
                }
                Frame::Message(backend::Message::AuthenticationSaslFinal(body)) => {
                    scram
                        .as_mut()
                        .ok_or("the source ended a SASL exchange never begun")?
                        .finish(body.data())
                        .map_err(|e| format!("SCRAM with the source failed: {e}"))?;
                    continue;
                }
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    return Err(format!(
                        "the source refused the login: {}",
                        error_text(&body)
                    ));
                }
                Frame::Message(backend::Message::NoticeResponse(_)) => continue,
                _ => {
                    return Err(
                        "the source asks for an authentication method Quarry does not speak \
                         (password, md5 and scram-sha-256 are spoken)"
                            .to_owned(),
                    );
                }
            }
            self.send(&out).await?;
        }
    }

    /// Runs `sql` (a replication command) and returns the rows it answered,
    /// each value as text.
    ///
    /// # Errors
    /// The source's error for the command, or a broken connection.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(io_error)?;
        self.send(&out).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            match self.read().await? {
                Frame::Message(backend::Message::DataRow(body)) => {
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) =
                        fallible_iterator::FallibleIterator::next(&mut ranges).map_err(io_error)?
                    {
                        row.push(range.map(|range| {
                            String::from_utf8_lossy(&body.buffer()[range]).into_owned()
                        }));
                    }
                    rows.push(row);
                }
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    failed = Some(error_text(&body));
                }
                Frame::Message(backend::Message::ReadyForQuery(_)) => {
                    return match failed {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Starts streaming slot `slot` from `start` (0: from the slot's
    /// confirmed position) with pgoutput's `options`; `applied` is the
    /// position reported as applied until [`ReplicationStream::update_applied`]
    /// says more.
    ///
    /// # Errors
    /// The source refuses `START_REPLICATION` (no such slot, the slot in
    /// use, an unknown publication...), or the connection breaks.
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        options: &LogicalOptions,
        applied: Lsn,
    ) -> Result<ReplicationStream, SourceError> {
        let publications = options
            .publications
            .iter()
            .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(",");
        let plugin_options = if options.streaming {
            "proto_version '2', streaming 'on'"
        } else {
            "proto_version '1'"
        };
        let sql = format!(
            "START_REPLICATION SLOT \"{}\" LOGICAL {} ({plugin_options}, publication_names '{}')",
            slot.replace('"', "\"\""),
            crate::pgoutput::lsn_text(start),
            publications.replace('\'', "''"),
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(io_error)?;
        self.send(&out).await?;
        loop {
            match self.read().await? {
                Frame::CopyBothResponse => break,
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    return Err(format!("cannot start replication: {}", error_text(&body)));
                }
                _ => {}
            }
        }
        let applied = Arc::new(AtomicU64::new(applied));
        let moved = Arc::new(Notify::new());
        let (events, receiver) = mpsc::channel(READ_AHEAD);
        let pump = Pump {
            stream: self.stream,
            buf: self.buf,
            events,
            applied: applied.clone(),
            moved: moved.clone(),
            received: 0,
        };
        let task = tokio::spawn(pump.run());
        Ok(ReplicationStream {
            receiver,
            applied,
            moved,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SourceError> {
        self.stream.write_all(bytes).await.map_err(io_error)?;
        self.stream.flush().await.map_err(io_error)
    }

    async fn read(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(frame) = next_frame(&mut self.buf).map_err(io_error)? {
                return Ok(frame);
            }
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(io_error)?
                == 0
            {
                return Err("the source closed the connection".to_owned());
            }
        }
    }
}

/// A streaming replication connection: the source's messages, read ahead
/// by a task that also sends the standby status updates. Dropping it
/// closes the connection.
pub struct ReplicationStream {
    receiver: mpsc::Receiver<Result<ReplicationEvent, SourceError>>,
    applied: Arc<AtomicU64>,
    moved: Arc<Notify>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl ReplicationStream {
    /// The next message. Cancel-safe: a message is lost only if this
    /// future completed.
    ///
    /// # Errors
    /// The source's error, or a broken or ended connection.
    pub async fn recv(&mut self) -> Result<ReplicationEvent, SourceError> {
        match self.receiver.recv().await {
            Some(event) => event,
            None => Err("the replication connection ended".to_owned()),
        }
    }

    /// Reports everything up to `lsn` as flushed and applied: the source's
    /// slot may confirm it (`confirmed_flush_lsn`) and free WAL before it.
    /// Never moves back.
    pub fn update_applied(&self, lsn: Lsn) {
        if self.applied.fetch_max(lsn, Ordering::Relaxed) < lsn {
            self.moved.notify_one();
        }
    }
}

/// The reading and answering half of a streaming connection.
struct Pump {
    stream: Box<dyn Transport>,
    buf: BytesMut,
    events: mpsc::Sender<Result<ReplicationEvent, SourceError>>,
    applied: Arc<AtomicU64>,
    moved: Arc<Notify>,
    /// The furthest WAL end received.
    received: Lsn,
}

impl Pump {
    async fn run(mut self) {
        if let Err(error) = self.pump().await {
            let _ = self.events.send(Err(error)).await;
        }
    }

    /// Reads until the applier goes away or the connection fails.
    async fn pump(&mut self) -> Result<(), SourceError> {
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let moved = self.moved.clone();
        // Held apart from `self`, which the status updates borrow.
        let events = self.events.clone();
        loop {
            while let Some(frame) = next_frame(&mut self.buf).map_err(io_error)? {
                let Some(event) = self.event(frame).await? else {
                    continue;
                };
                // While the applier is behind, the source still hears
                // from this end.
                let permit = loop {
                    tokio::select! {
                        permit = events.reserve() => match permit {
                            Ok(permit) => break permit,
                            Err(_) => return Ok(()),
                        },
                        _ = ticker.tick() => self.status().await?,
                        () = moved.notified() => self.status().await?,
                    }
                };
                permit.send(Ok(event));
            }
            tokio::select! {
                read = self.stream.read_buf(&mut self.buf) => {
                    if read.map_err(io_error)? == 0 {
                        return Err("the source closed the replication connection".to_owned());
                    }
                }
                _ = ticker.tick() => self.status().await?,
                () = moved.notified() => self.status().await?,
                () = events.closed() => return Ok(()),
            }
        }
    }

    /// The event of `frame`, answering a keepalive that asks for a reply.
    async fn event(&mut self, frame: Frame) -> Result<Option<ReplicationEvent>, SourceError> {
        let body = match frame {
            Frame::Message(backend::Message::CopyData(body)) => body.into_bytes(),
            Frame::Message(backend::Message::ErrorResponse(body)) => {
                return Err(format!(
                    "the source ended replication: {}",
                    error_text(&body)
                ));
            }
            Frame::Message(backend::Message::CopyDone) => {
                return Err("the source ended replication".to_owned());
            }
            _ => return Ok(None),
        };
        let (event, reply) = parse_copy_data(body)?;
        let (ReplicationEvent::XLogData { wal_end, .. } | ReplicationEvent::KeepAlive { wal_end }) =
            &event;
        self.received = self.received.max(*wal_end);
        if reply {
            self.status().await?;
        }
        Ok(Some(event))
    }

    /// Sends a standby status update (section 55.4, "Standby status
    /// update"): written is what was received, flushed and applied what
    /// the applier committed.
    async fn status(&mut self) -> Result<(), SourceError> {
        let applied = self.applied.load(Ordering::Relaxed);
        let mut message = Vec::with_capacity(34);
        message.push(b'r');
        message.extend_from_slice(&self.received.max(applied).to_be_bytes());
        message.extend_from_slice(&applied.to_be_bytes());
        message.extend_from_slice(&applied.to_be_bytes());
        message.extend_from_slice(&postgres_now().to_be_bytes());
        message.push(0);
        let mut out = BytesMut::new();
        frontend::CopyData::new(&message[..])
            .map_err(io_error)?
            .write(&mut out);
        self.stream.write_all(&out).await.map_err(io_error)?;
        self.stream.flush().await.map_err(io_error)
    }
}

/// The replication message of a CopyData's `body`, XLogData (`w`) or a
/// primary keepalive (`k`), and whether the source asks for a status
/// update at once (a keepalive's flag).
///
/// # Errors
/// Another message type, or one cut short.
pub fn parse_copy_data(mut body: Bytes) -> Result<(ReplicationEvent, bool), SourceError> {
    let short = || "a replication message cut short".to_owned();
    if body.is_empty() {
        return Err(short());
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short());
            }
            let start = body.get_u64();
            let wal_end = body.get_u64();
            let _sent_at = body.get_i64();
            Ok((
                ReplicationEvent::XLogData {
                    start,
                    wal_end,
                    data: body,
                },
                false,
            ))
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short());
            }
            let wal_end = body.get_u64();
            let _sent_at = body.get_i64();
            Ok((ReplicationEvent::KeepAlive { wal_end }, body.get_u8() == 1))
        }
        other => Err(format!(
            "unknown replication message type {:?}",
            char::from(other)
        )),
    }
}

/// A backend message, or CopyBothResponse (which postgres-protocol does not
/// parse: only the replication protocol sends it).
enum Frame {
    Message(backend::Message),
    CopyBothResponse,
}

/// The next whole message in `buf`, taken out of it.
fn next_frame(buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
    let Some(header) = backend::Header::parse(buf)? else {
        return Ok(None);
    };
    if header.tag() == b'W' {
        let length = header.len() as usize + 1;
        if buf.len() < length {
            return Ok(None);
        }
        buf.advance(length);
        return Ok(Some(Frame::CopyBothResponse));
    }
    Ok(backend::Message::parse(buf)?.map(Frame::Message))
}

/// An ErrorResponse as `message (SQLSTATE)`.
fn error_text(body: &backend::ErrorResponseBody) -> String {
    let (mut message, mut code) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'M' => message = value,
            b'C' => code = value,
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

/// `server_version`'s text (`15.18 (Debian 15.18-0+deb12u1)`, `9.6.24`)
/// as `server_version_num` would give it.
fn version_number(text: &str) -> u32 {
    let numbers: Vec<u32> = text
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect();
    match numbers.as_slice() {
        [major, minor, patch, ..] if *major < 10 => major * 10000 + minor * 100 + patch,
        [major, minor, ..] => major * 10000 + minor,
        [major] => major * 10000,
        [] => 0,
    }
}

/// Now, in microseconds since 2000-01-01 UTC (the protocol's clock).
fn postgres_now() -> i64 {
    const UNIX_TO_POSTGRES_MICROS: i64 = 946_684_800_000_000;
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64 - UNIX_TO_POSTGRES_MICROS)
}

fn io_error(e: std::io::Error) -> SourceError {
    format!("the connection to the source failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_read_as_server_version_num() {
        assert_eq!(version_number("15.18 (Debian 15.18-0+deb12u1)"), 150018);
        assert_eq!(version_number("14.0"), 140000);
        assert_eq!(version_number("9.6.24"), 90624);
        assert_eq!(version_number("17devel"), 170000);
        assert_eq!(version_number(""), 0);
    }

    #[test]
    fn xlogdata_and_keepalives_parse_with_their_positions() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x10u64.to_be_bytes());
        w.extend_from_slice(&0x20u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"B...");
        assert_eq!(
            parse_copy_data(Bytes::from(w)).unwrap(),
            (
                ReplicationEvent::XLogData {
                    start: 0x10,
                    wal_end: 0x20,
                    data: Bytes::from_static(b"B...")
                },
                false
            )
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x30u64.to_be_bytes());
        k.extend_from_slice(&7i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            (ReplicationEvent::KeepAlive { wal_end: 0x30 }, true)
        );
        assert!(parse_copy_data(Bytes::from_static(b"w\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
    }
}
