//! A subscription's source (`CREATE SUBSCRIPTION ... CONNECTION '...'`):
//! its libpq connection string (PostgreSQL manual, section 34.1.1,
//! "Keyword/Value Connection Strings") and connections to it, over TLS as
//! its `sslmode` says (section 34.19, "SSL Support"):
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `allow`, `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | signed by a CA of `sslrootcert`, for the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates on the applying node.
//! Ordinary connections use tokio-postgres with rustls; the replication
//! connection (`crate::replication`) runs over [`SourceConfig::transport`],
//! TLS negotiated here (PostgreSQL's SSLRequest, then a rustls handshake).
//! Every TLS connection uses Quarry's one crypto provider (ring).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a source cannot be reached (never holding the password).
pub type SourceError = String;

/// A libpq connection string's `key=value` pairs, values unquoted (a value
/// with spaces is in single quotes, with `\'` and `\\` inside).
///
/// # Errors
/// A string that is not of that form, saying why.
pub fn conninfo_pairs(conninfo: &str) -> Result<Vec<(String, String)>, SourceError> {
    let bad = |why: &str| format!("invalid connection string syntax: {why}");
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("missing \"=\" after \"{key}\"")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad("unterminated quoted string")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `pairs` as a connection string, each value quoted.
pub fn conninfo_text(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: never TLS.
    Disable,
    /// `allow`: TLS when the server offers it (libpq tries without first).
    Allow,
    /// `prefer`: TLS when the server offers it.
    Prefer,
    /// `require`: TLS always.
    Require,
    /// `verify-ca`: TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and for the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a server that does not offer TLS is used without it.
    fn plain_allowed(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
    }
}

/// Where a source is and how to reach it.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Host name, IP address, or a Unix socket directory (no TLS there).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The role logged in as.
    pub user: String,
    /// Its password (empty for none).
    pub password: String,
    /// The database.
    pub dbname: String,
    /// `sslmode`.
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a PEM file of the CA certificates to trust.
    pub root_cert: Option<PathBuf>,
}

impl SourceConfig {
    /// The source of connection string `connection` (without its password)
    /// and `password`.
    ///
    /// # Errors
    /// A bad connection string, an unknown `sslmode`, or `verify-ca` or
    /// `verify-full` without `sslrootcert`.
    pub fn parse(connection: &str, password: Option<&str>) -> Result<SourceConfig, SourceError> {
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for (key, value) in conninfo_pairs(connection)? {
            match key.as_str() {
                "sslmode" => {
                    ssl_mode = SslMode::parse(&value)
                        .ok_or_else(|| format!("invalid sslmode value: \"{value}\""))?;
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                _ => rest.push((key, value)),
            }
        }
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(
                "sslmode verify-ca and verify-full need sslrootcert: a file of the CA certificates to trust"
                    .to_owned(),
            );
        }
        let config = tokio_postgres::Config::from_str(&conninfo_text(&rest))
            .map_err(|e| format!("invalid connection string: {e}"))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        Ok(SourceConfig {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: password.unwrap_or_default().to_owned(),
            dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
            ssl_mode,
            root_cert,
        })
    }

    /// Whether connections to it may use TLS.
    fn tls_wanted(&self) -> bool {
        self.ssl_mode != SslMode::Disable && !self.host.starts_with('/')
    }

    /// The TLS client configuration its `sslmode` asks for.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, SourceError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.root_cert, self.ssl_mode) {
            (None, _) => Arc::new(AnyCertificate(provider)),
            (Some(path), mode) => {
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?
                {
                    let cert = cert
                        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
                    roots.add(cert).map_err(|e| {
                        format!("a certificate of sslrootcert {}: {e}", path.display())
                    })?;
                }
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                if mode == SslMode::VerifyFull {
                    chain
                } else {
                    Arc::new(ChainOnly(chain))
                }
            }
        };
        Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        ))
    }

    /// An ordinary connection named `application_name`.
    ///
    /// # Errors
    /// The source cannot be reached, refuses the login, or fails TLS as
    /// `sslmode` asks.
    pub async fn connect(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, SourceError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(30));
        let failed = |e: tokio_postgres::Error| {
            // With its causes: a TLS failure says why (rustls's error).
            let mut text = format!("cannot connect to the source: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            text
        };
        if !self.tls_wanted() {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            tokio::spawn(connection);
            return Ok(client);
        }
        config.ssl_mode(if self.ssl_mode.plain_allowed() {
            tokio_postgres::config::SslMode::Prefer
        } else {
            tokio_postgres::config::SslMode::Require
        });
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*self.tls_config()?).clone());
        let (client, connection) = config.connect(tls).await.map_err(failed)?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A byte stream to the source for a connection of its own protocol
    /// (the replication connection, `crate::replication`): TCP or a Unix
    /// socket, over TLS as `sslmode` says, negotiated here (PostgreSQL's
    /// SSLRequest, section 55.2.10, then the rustls handshake), so that a
    /// refused certificate is this call's error.
    ///
    /// # Errors
    /// The source cannot be reached, or fails TLS as `sslmode` asks.
    pub async fn transport(&self) -> Result<Box<dyn Transport>, SourceError> {
        let failed = |e: std::io::Error| format!("cannot connect to the source: {e}");
        let timed_out = |_| "cannot connect to the source: timed out".to_owned();
        if self.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            let socket = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::net::UnixStream::connect(&path),
            )
            .await
            .map_err(timed_out)?
            .map_err(failed)?;
            return Ok(Box::new(socket));
        }
        let mut upstream = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(timed_out)?
        .map_err(failed)?;
        let _ = upstream.set_nodelay(true);
        if !self.tls_wanted() {
            return Ok(Box::new(upstream));
        }
        let mut request = bytes::BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut request);
        upstream.write_all(&request).await.map_err(failed)?;
        let mut answer = [0u8; 1];
        upstream.read_exact(&mut answer).await.map_err(failed)?;
        match answer[0] {
            b'S' => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("host {}: {e}", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls_config()?)
                    .connect(name, upstream)
                    .await
                    .map_err(|e| format!("TLS with the source failed: {e}"))?;
                Ok(Box::new(tls))
            }
            b'N' if self.ssl_mode.plain_allowed() => Ok(Box::new(upstream)),
            b'N' => Err(format!(
                "the source does not offer TLS, and sslmode is {:?}",
                self.ssl_mode
            )),
            other => Err(format!(
                "the source answered the TLS request with {other:#x}"
            )),
        }
    }
}

/// A connection's byte stream: TCP, a Unix socket, or TLS over TCP.
pub trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Transport for T {}

/// `sslmode` require (without `sslrootcert`), allow and prefer: any
/// certificate, its handshake signatures still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode` verify-ca: the chain to a trusted CA, not the host name.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_as_libpq_reads_them() {
        assert_eq!(
            conninfo_pairs("host=127.0.0.1 port=5432 password='it\\'s' dbname = shop")
                .expect("parses"),
            [
                ("host".to_owned(), "127.0.0.1".to_owned()),
                ("port".to_owned(), "5432".to_owned()),
                ("password".to_owned(), "it's".to_owned()),
                ("dbname".to_owned(), "shop".to_owned()),
            ]
        );
        assert!(conninfo_pairs("host").is_err());
        assert!(conninfo_pairs("host='unterminated").is_err());
        let text = conninfo_text(&[("password".to_owned(), "a b\\c'".to_owned())]);
        assert_eq!(
            conninfo_pairs(&text).expect("parses")[0].1,
            "a b\\c'",
            "{text}"
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_apart() {
        let source = SourceConfig::parse(
            "host=db.example port=6432 user=u dbname=d sslmode=verify-full sslrootcert=/etc/ca.pem",
            Some("pw"),
        )
        .expect("parses");
        assert_eq!(
            (
                source.host.as_str(),
                source.port,
                source.user.as_str(),
                source.dbname.as_str(),
                source.password.as_str(),
                source.ssl_mode,
                source.root_cert.as_deref()
            ),
            (
                "db.example",
                6432,
                "u",
                "d",
                "pw",
                SslMode::VerifyFull,
                Some(std::path::Path::new("/etc/ca.pem"))
            )
        );
        assert_eq!(
            SourceConfig::parse("host=h", None)
                .expect("default")
                .ssl_mode,
            SslMode::Prefer,
            "libpq's default"
        );
        assert!(SourceConfig::parse("host=h sslmode=always", None).is_err());
        assert!(
            SourceConfig::parse("host=h sslmode=verify-ca", None).is_err(),
            "verify-ca needs a CA file"
        );
    }
}
