//! TLS: the certificates of a cluster (`quarry cert`, as `cockroach cert`
//! makes them, with rcgen), the PostgreSQL port's TLS (rustls), which
//! clients reach by SSLRequest or by PostgreSQL 17's direct TLS with ALPN
//! `postgresql` (PostgreSQL documentation, 55.2.10 "SSL Session
//! Encryption"), and HTTPS on the HTTP listener. The certificate and key are
//! read again on SIGHUP.
//!
//! Files (PEM), in one certificates directory:
//! - `ca.crt`, `ca.key`: the cluster's certificate authority;
//! - `node.crt`, `node.key`: a node's certificate, for the names and
//!   addresses clients and other nodes reach it by (server and client use);
//! - `client.<user>.crt`, `client.<user>.key`: a user's client certificate
//!   (common name = the user).
//!
//! Private keys are written with mode 0600 and never overwritten.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol name of direct TLS connections (PostgreSQL 17).
const POSTGRESQL_ALPN: &[u8] = b"postgresql";
/// The ALPN protocol name of HTTP/1.1 (RFC 7301), what the HTTP listener
/// speaks.
const HTTP1_ALPN: &[u8] = b"http/1.1";

/// The certificate files a node serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate (PEM): with it, node-to-node RPC runs
    /// over mutual TLS, each end showing a certificate the CA signed.
    pub ca: Option<PathBuf>,
}

/// The rustls server configuration for `files` (no ALPN protocol yet):
/// with the CA, clients may show certificates it signed.
///
/// # Errors
/// If a file cannot be read or holds no certificate or key.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read private key {}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    // With the cluster CA, a client may show a certificate it signed (a
    // client-certificate login); one that shows another is refused in the
    // handshake; one that shows none logs in with a password.
    let builder = match &files.ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                ca_roots(ca)?,
                ring_provider(),
            )
            .allow_unauthenticated()
            .build()
            .context("the CA cannot verify client certificates")?,
        ),
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "certificate {} does not match key {}",
            files.cert.display(),
            files.key.display()
        )
    })
}

/// The TLS acceptors of the PostgreSQL port and the HTTP listener (one
/// certificate, each with its ALPN protocol), replaced when the files are
/// read again (SIGHUP).
pub struct ReloadableTls {
    files: TlsFiles,
    acceptors: RwLock<Acceptors>,
}

#[derive(Clone)]
struct Acceptors {
    pg: tokio_rustls::TlsAcceptor,
    http: tokio_rustls::TlsAcceptor,
    /// The certificate's `tls-server-end-point` channel binding data.
    end_point: Option<Vec<u8>>,
    /// Node-to-node mutual TLS, when the CA is given.
    rpc: Option<RpcTls>,
}

/// Both ends of node-to-node mutual TLS.
#[derive(Clone)]
pub struct RpcTls {
    /// Accepts a node's connection showing a certificate the CA signed.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Dials a node, showing this node's certificate and checking the
    /// peer's against the CA.
    pub connector: tokio_rustls::TlsConnector,
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificate {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn ca_roots(ca: &Path) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Checks a node's server certificate against the cluster CA, not against
/// the address it was dialled by: nodes are reached by whatever address
/// gossip learnt, and membership of the cluster is what the CA's signature
/// says.
#[derive(Debug)]
struct ClusterServerVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Node-to-node mutual TLS for `files` (which name the CA).
///
/// # Errors
/// If a file cannot be read or does not fit.
pub fn rpc_tls(files: &TlsFiles, ca: &Path) -> anyhow::Result<RpcTls> {
    let roots = ca_roots(ca)?;
    let certs = read_certs(&files.cert)?;
    let key = || {
        PrivateKeyDer::from_pem_file(&files.key)
            .with_context(|| format!("cannot read private key {}", files.key.display()))
    };
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), ring_provider())
            .build()
            .context("the CA cannot verify node certificates")?;
    let server = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs.clone(), key()?)
        .context("the node certificate does not match its key")?;
    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, ring_provider())
            .build()
            .context("the CA cannot verify node certificates")?;
    let client = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier(servers)))
        .with_client_auth_cert(certs, key()?)
        .context("the node certificate does not match its key")?;
    Ok(RpcTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// RFC 5929 §4.1 `tls-server-end-point`: the hash of the certificate (DER)
/// with the hash of its signature algorithm, SHA-256 for MD5, SHA-1 and
/// SHA-256 alike; None for a certificate that does not parse.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    let algorithm = match oid.as_str() {
        // ecdsa-with-SHA384, sha384WithRSAEncryption
        "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => &ring::digest::SHA384,
        // ecdsa-with-SHA512, sha512WithRSAEncryption
        "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => &ring::digest::SHA512,
        // Ed25519 has no hash of its own; PostgreSQL refuses binding then.
        "1.3.101.112" => return None,
        _ => &ring::digest::SHA256,
    };
    Some(ring::digest::digest(algorithm, cert).as_ref().to_vec())
}

impl Acceptors {
    fn read(files: &TlsFiles) -> anyhow::Result<Acceptors> {
        let config = server_config(files)?;
        let end_point = CertificateDer::pem_file_iter(&files.cert)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(|cert| cert.ok())
            .and_then(|cert| tls_server_end_point(&cert));
        let with_alpn = |alpn: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        };
        let rpc = match &files.ca {
            Some(ca) => Some(rpc_tls(files, ca)?),
            None => None,
        };
        Ok(Acceptors {
            pg: with_alpn(POSTGRESQL_ALPN),
            http: with_alpn(HTTP1_ALPN),
            end_point,
            rpc,
        })
    }
}

impl ReloadableTls {
    /// Reads `files`.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn new(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let acceptors = Acceptors::read(&files)?;
        Ok(Arc::new(ReloadableTls {
            files,
            acceptors: RwLock::new(acceptors),
        }))
    }

    fn current(&self) -> Acceptors {
        self.acceptors
            .read()
            .expect("the acceptor lock is never held across a panic")
            .clone()
    }

    /// The acceptor for a new PostgreSQL connection.
    pub fn pg_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current().pg
    }

    /// The channel binding data of the certificate being served.
    pub fn end_point(&self) -> Option<Vec<u8>> {
        self.current().end_point
    }

    /// Node-to-node mutual TLS, when the node has the cluster CA.
    pub fn rpc(&self) -> Option<RpcTls> {
        self.current().rpc
    }

    /// The acceptor for a new HTTP connection.
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current().http
    }

    /// Reads the files again; on an error the current ones stay in use.
    pub fn reload(&self) {
        match Acceptors::read(&self.files) {
            Ok(acceptors) => {
                *self
                    .acceptors
                    .write()
                    .expect("the acceptor lock is never held across a panic") = acceptors;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "TLS certificate not reloaded; the previous one stays in use");
            }
        }
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tls.reload();
            }
        });
        Ok(())
    }
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// How long the certificates `quarry cert` makes are valid.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// The CA's, in days.
    pub ca_days: u32,
    /// Node and client certificates', in days.
    pub cert_days: u32,
}

impl Default for Lifetimes {
    /// Ten years for the CA, five for the certificates it signs
    /// (CockroachDB's defaults).
    fn default() -> Self {
        Lifetimes {
            ca_days: 3650,
            cert_days: 1825,
        }
    }
}

fn params_valid_for(days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(params)
}

/// Writes `contents` to a new file `path` (never over an existing one) with
/// `mode`.
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `quarry cert create-ca`: a new CA in `dir` (`ca.crt`, `ca.key`).
///
/// # Errors
/// If either file exists or cannot be written.
pub fn create_ca(dir: &Path, lifetimes: Lifetimes) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let mut params = params_valid_for(lifetimes.ca_days)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Quarry");
    // Each CA's name is its own (bytes of its public key), so a client
    // that trusts one CA does not mistake another's certificates for its
    // (clients find a certificate's issuer by name).
    let id: String = key.public_key_raw()[1..7]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    name.push(DnType::CommonName, format!("Quarry CA {id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.crt"), &cert.pem(), 0o644)?;
    Ok(())
}

/// The CA of `dir`, to sign with.
fn load_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (run `quarry cert create-ca` first)",
                path.display()
            )
        })
    };
    let key = KeyPair::from_pem(&read("ca.key")?).context("ca.key is not a private key")?;
    Issuer::from_ca_cert_pem(&read("ca.crt")?, key).context("ca.crt is not a certificate")
}

/// `quarry cert create-node`: `node.crt` / `node.key` in `dir`, signed by
/// its CA, for `hosts` (DNS names or IP addresses), usable as a server's and
/// as a client's certificate (node-to-node TLS is mutual).
///
/// # Errors
/// If there is no CA in `dir`, no host, or a file exists.
pub fn create_node(dir: &Path, hosts: &[String], lifetimes: Lifetimes) -> anyhow::Result<()> {
    if hosts.is_empty() {
        bail!("a node certificate needs at least one --host");
    }
    let issuer = load_ca(dir)?;
    let mut params = params_valid_for(lifetimes.cert_days)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Quarry");
    name.push(DnType::CommonName, "node");
    params.distinguished_name = name;
    params.subject_alt_names = hosts
        .iter()
        .map(|host| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(host.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&dir.join("node.key"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("node.crt"), &cert.pem(), 0o644)?;
    Ok(())
}

/// `quarry cert create-client`: `client.<user>.crt` / `.key` in `dir`,
/// signed by its CA, with common name `user`.
///
/// # Errors
/// If there is no CA in `dir`, the user name is empty or holds a path
/// separator, or a file exists.
pub fn create_client(dir: &Path, user: &str, lifetimes: Lifetimes) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(['/', '\0']) {
        bail!("{user:?} is not a user name");
    }
    let issuer = load_ca(dir)?;
    let mut params = params_valid_for(lifetimes.cert_days)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Quarry");
    name.push(DnType::CommonName, user);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(
        &dir.join(format!("client.{user}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    write_new(&dir.join(format!("client.{user}.crt")), &cert.pem(), 0o644)?;
    Ok(())
}

/// The common name of certificate `cert` (DER), the user a client
/// certificate names (`quarry cert create-client USER`).
pub fn common_name(cert: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_from_its_ca_serves_tls() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), Lifetimes::default()).unwrap();
        create_node(
            dir.path(),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            Lifetimes::default(),
        )
        .unwrap();
        create_client(dir.path(), "alice", Lifetimes::default()).unwrap();
        let files = TlsFiles {
            ca: None,
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
        };
        let tls = ReloadableTls::new(files).unwrap();
        let alpn = |acceptor: tokio_rustls::TlsAcceptor| acceptor.config().alpn_protocols.clone();
        assert_eq!(alpn(tls.pg_acceptor()), vec![b"postgresql".to_vec()]);
        assert_eq!(alpn(tls.http_acceptor()), vec![b"http/1.1".to_vec()]);
        // Keys are private; nothing is overwritten.
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(create_ca(dir.path(), Lifetimes::default()).is_err());
        assert!(create_client(dir.path(), "alice", Lifetimes::default()).is_err());
        // A key that is not the certificate's is refused.
        let mismatched = TlsFiles {
            ca: None,
            cert: dir.path().join("node.crt"),
            key: dir.path().join("client.alice.key"),
        };
        assert!(server_config(&mismatched).is_err());
    }
}
