//! SCRAM-SHA-256 on the server side (RFC 5802, RFC 7677), as PostgreSQL speaks
//! it (<https://www.postgresql.org/docs/current/sasl-authentication.html>):
//! making a password's verifier, and checking one login exchange against it.
//! Pure: no I/O; the PostgreSQL front end carries the messages.
//!
//! ```text
//! client-first  gs2-header n=,r=<client nonce>
//! server-first  r=<client nonce><server nonce>,s=<salt>,i=<iterations>
//! client-final  c=<base64(gs2-header + channel binding data)>,r=<nonce>,p=<ClientProof>
//! server-final  v=<ServerSignature>
//! ```
//!
//! The server keeps only [`ScramVerifier`]: the proof is checked as
//! `H(ClientProof XOR HMAC(StoredKey, AuthMessage)) == StoredKey`. Channel
//! binding (SCRAM-SHA-256-PLUS) is `tls-server-end-point` (RFC 5929 §4.1): the
//! hash of the server's certificate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quarry_common::roles::ScramVerifier;
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// The SASL mechanism without channel binding.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// PBKDF2 iterations of a new verifier: PostgreSQL's default
/// `scram_iterations`.
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// Salt bytes of a new verifier (PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`).
pub const SALT_BYTES: usize = 16;
/// Largest SCRAM message accepted (PostgreSQL's messages are a few hundred
/// bytes; this bounds what a client can make the server parse).
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// Why an exchange failed. Each ends the login with 28P01 (a malformed
/// message with 08P01); the client is not told more than PostgreSQL tells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not SCRAM's grammar (the caller's fault).
    #[error("malformed SCRAM message ({0})")]
    Malformed(&'static str),
    /// Channel binding was asked for, refused, or does not match.
    #[error("SCRAM channel binding check failed: {0}")]
    ChannelBinding(&'static str),
    /// The proof does not match the verifier (wrong password, unknown user).
    #[error("password authentication failed")]
    Failed,
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    // PostgreSQL prepares the password with SASLprep and, should that fail
    // (a password that is not valid UTF-8 or holds prohibited characters),
    // uses the bytes as they are.
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_owned());
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations.max(1)).expect("at least 1"),
        salt,
        prepared.as_bytes(),
        &mut out,
    );
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, message);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

fn sha256(message: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, message)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The verifier of `password` with `salt` and `iterations`.
pub fn verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    ScramVerifier {
        iterations,
        salt: salt.to_vec(),
        stored_key: sha256(&client_key),
        server_key: hmac_sha256(&salted, b"Server Key"),
    }
}

/// A new verifier of `password` with a random salt.
pub fn verifier(password: &str) -> ScramVerifier {
    let salt: [u8; SALT_BYTES] = rand::random();
    verifier_with_salt(password, &salt, ITERATIONS_DEFAULT)
}

/// PostgreSQL's text form of a verifier,
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn verifier_text(verifier: &ScramVerifier) -> String {
    format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        verifier.iterations,
        STANDARD.encode(&verifier.salt),
        STANDARD.encode(verifier.stored_key),
        STANDARD.encode(verifier.server_key)
    )
}

/// Reads PostgreSQL's text form of a verifier (what `CREATE ROLE ... PASSWORD
/// 'SCRAM-SHA-256$...'` passes when a client hashed the password itself, as
/// psql's `\password` does); None if `text` is not one.
pub fn parse_verifier(text: &str) -> Option<ScramVerifier> {
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
    let salt = STANDARD.decode(salt).ok()?;
    let stored_key = STANDARD.decode(stored).ok()?.try_into().ok()?;
    let server_key = STANDARD.decode(server).ok()?.try_into().ok()?;
    Some(ScramVerifier {
        iterations,
        salt,
        stored_key,
        server_key,
    })
}

/// What the client said about channel binding in its gs2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// `n`: the client does not support it.
    None,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=tls-server-end-point`.
    ServerEndPoint,
}

/// One login exchange after the server-first message, waiting for the
/// client-final message.
pub struct Exchange {
    verifier: ScramVerifier,
    /// False for an unknown user: the exchange runs to the end and fails.
    real: bool,
    gs2_header: String,
    binding: Binding,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The `tls-server-end-point` data of this connection's certificate.
    end_point: Option<Vec<u8>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").finish_non_exhaustive()
    }
}

/// A verifier for a user that does not exist, the same for the same name (so
/// a client cannot tell it from a real one by asking twice): derived from
/// the name and a secret of this node, as PostgreSQL's `scram_mock_salt`.
pub fn mock_verifier(user: &str, node_secret: &[u8]) -> ScramVerifier {
    let salt = hmac_sha256(node_secret, user.as_bytes());
    ScramVerifier {
        iterations: ITERATIONS_DEFAULT,
        salt: salt[..SALT_BYTES].to_vec(),
        stored_key: hmac_sha256(node_secret, b"stored"),
        server_key: hmac_sha256(node_secret, b"server"),
    }
}

fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

impl Exchange {
    /// Reads the client-first message of `mechanism` ([`MECHANISM`] or
    /// [`MECHANISM_PLUS`]) and answers with the server-first message.
    ///
    /// `verifier` is the user's (None: the user does not exist or has no
    /// password; `mock` stands in and the exchange fails at the end, after
    /// the same work). `end_point` is this connection's `tls-server-end-point`
    /// data (None without TLS: only SCRAM-SHA-256 is offered then).
    ///
    /// # Errors
    /// [`ScramError::Malformed`] or [`ScramError::ChannelBinding`].
    pub fn start(
        mechanism: &str,
        client_first: &[u8],
        verifier: Option<&ScramVerifier>,
        mock: ScramVerifier,
        end_point: Option<Vec<u8>>,
    ) -> Result<(Exchange, String), ScramError> {
        if client_first.len() > MESSAGE_BYTES_MAX {
            return Err(ScramError::Malformed("message too long"));
        }
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed("empty"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let binding = match flag {
            "n" => Binding::None,
            "y" => Binding::ClientOnly,
            "p=tls-server-end-point" => Binding::ServerEndPoint,
            _ if flag.starts_with("p=") => {
                return Err(ScramError::ChannelBinding(
                    "only tls-server-end-point is supported",
                ));
            }
            _ => return Err(ScramError::Malformed("bad gs2 channel binding flag")),
        };
        let plus = mechanism == MECHANISM_PLUS;
        match (&binding, plus, end_point.is_some()) {
            (Binding::ServerEndPoint, true, true) => {}
            (Binding::ServerEndPoint, _, _) => {
                return Err(ScramError::ChannelBinding(
                    "channel binding asked for without SCRAM-SHA-256-PLUS over TLS",
                ));
            }
            (_, true, _) => {
                return Err(ScramError::ChannelBinding(
                    "SCRAM-SHA-256-PLUS selected without channel binding",
                ));
            }
            // RFC 5802 §6: a client that could bind but thinks the server
            // cannot, talking to one that can, may be under a downgrade.
            (Binding::ClientOnly, false, true) => {
                return Err(ScramError::ChannelBinding(
                    "the client supports channel binding but thinks this server does not",
                ));
            }
            _ => {}
        }
        let mut attributes = bare.split(',');
        let first = attributes.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        // PostgreSQL ignores the name here; the startup message named the user.
        attribute(first, 'n')?;
        let client_nonce = attribute(attributes.next(), 'r')?;
        if client_nonce.is_empty()
            || !client_nonce
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let (verifier, real) = match verifier {
            Some(v) => (v.clone(), true),
            None => (mock, false),
        };
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        let gs2_header = format!("{flag},{authzid},");
        Ok((
            Exchange {
                verifier,
                real,
                gs2_header,
                binding,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
                end_point,
            },
            server_first,
        ))
    }

    /// Checks the client-final message; on success, the server-final message.
    ///
    /// # Errors
    /// [`ScramError::Failed`] for a wrong proof (or an unknown user),
    /// [`ScramError::ChannelBinding`] when the binding data differ,
    /// [`ScramError::Malformed`] otherwise.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        if client_final.len() > MESSAGE_BYTES_MAX {
            return Err(ScramError::Malformed("message too long"));
        }
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attribute(attributes.next(), 'c')?;
        let nonce = attribute(attributes.next(), 'r')?;
        let mut expected = self.gs2_header.as_bytes().to_vec();
        if self.binding == Binding::ServerEndPoint {
            expected.extend(self.end_point.as_deref().unwrap_or_default());
        }
        if STANDARD.decode(binding).ok() != Some(expected) {
            return Err(ScramError::ChannelBinding("binding data do not match"));
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof is not 32 bytes"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(&sha256(&client_key)[..], &self.verifier.stored_key[..])
                .into();
        if !(matches && self.real) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side of the exchange (RFC 5802 §3), for the tests.
    fn client_final(
        password: &str,
        gs2: &str,
        binding_data: &[u8],
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = &fields[0][2..];
        let salt = STANDARD.decode(&fields[1][2..]).unwrap();
        let iterations: u32 = fields[2][2..].parse().unwrap();
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let mut c = gs2.as_bytes().to_vec();
        c.extend(binding_data);
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(c));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    fn run(
        stored: Option<&ScramVerifier>,
        password: &str,
        mechanism: &str,
        gs2: &str,
        end_point: Option<Vec<u8>>,
        client_binding: &[u8],
    ) -> Result<String, ScramError> {
        let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
        let (exchange, server_first) = Exchange::start(
            mechanism,
            format!("{gs2}{bare}").as_bytes(),
            stored,
            mock_verifier("someone", b"secret"),
            end_point,
        )?;
        let last = client_final(password, gs2, client_binding, bare, &server_first);
        exchange.finish(last.as_bytes())
    }

    #[test]
    fn the_right_password_logs_in_and_the_server_proves_it_knows_the_verifier() {
        let v = verifier("pencil");
        let server_final = run(Some(&v), "pencil", MECHANISM, "n,,", None, b"").unwrap();
        assert!(server_final.starts_with("v="));
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike() {
        let v = verifier("pencil");
        assert_eq!(
            run(Some(&v), "crayon", MECHANISM, "n,,", None, b""),
            Err(ScramError::Failed)
        );
        assert_eq!(
            run(None, "pencil", MECHANISM, "n,,", None, b""),
            Err(ScramError::Failed)
        );
    }

    #[test]
    fn channel_binding_must_match_this_connections_certificate() {
        let v = verifier("pencil");
        let end_point = vec![7u8; 32];
        let gs2 = "p=tls-server-end-point,,";
        assert!(
            run(
                Some(&v),
                "pencil",
                MECHANISM_PLUS,
                gs2,
                Some(end_point.clone()),
                &end_point
            )
            .is_ok()
        );
        assert_eq!(
            run(
                Some(&v),
                "pencil",
                MECHANISM_PLUS,
                gs2,
                Some(end_point),
                &[8u8; 32]
            ),
            Err(ScramError::ChannelBinding("binding data do not match"))
        );
        // A downgrade: the client could bind, the server can, yet the
        // client was made to think it cannot.
        assert!(matches!(
            run(
                Some(&v),
                "pencil",
                MECHANISM,
                "y,,",
                Some(vec![7u8; 32]),
                b""
            ),
            Err(ScramError::ChannelBinding(_))
        ));
        assert!(matches!(
            run(
                Some(&v),
                "pencil",
                MECHANISM_PLUS,
                "n,,",
                Some(vec![7u8; 32]),
                b""
            ),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn verifiers_read_back_from_postgres_text_form() {
        let v = verifier_with_salt("pencil", b"0123456789abcdef", 4096);
        let text = verifier_text(&v);
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(parse_verifier(&text), Some(v));
        assert_eq!(parse_verifier("md5abc"), None);
        assert_eq!(parse_verifier("SCRAM-SHA-256$0:AA==$AA==:AA=="), None);
    }

    #[test]
    fn the_mock_verifier_of_a_name_is_stable_and_differs_between_names() {
        let a = mock_verifier("alice", b"k");
        assert_eq!(a, mock_verifier("alice", b"k"));
        assert_ne!(a.salt, mock_verifier("bob", b"k").salt);
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let mock = || mock_verifier("x", b"k");
        for input in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=,r=abc",
            b"n,a=someone,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"\xff\xfe",
        ] {
            assert!(
                Exchange::start(MECHANISM, input, None, mock(), None).is_err(),
                "{input:?}"
            );
        }
        let (exchange, _) = Exchange::start(MECHANISM, b"n,,n=,r=abc", None, mock(), None).unwrap();
        for input in [
            &b""[..],
            b"c=biws",
            b"c=biws,r=abc,p=",
            b"c=biws,r=abc,p=!!",
            b"p=",
        ] {
            assert!(exchange.finish(input).is_err(), "{input:?}");
        }
    }
}
