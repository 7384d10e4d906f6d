//! Logins on the PostgreSQL port: SCRAM-SHA-256 and, over TLS,
//! SCRAM-SHA-256-PLUS (<https://www.postgresql.org/docs/current/sasl-authentication.html>),
//! against the roles of the Raft catalog; or, on a node started with
//! `--insecure`, no authentication at all.
//!
//! A wrong password, an unknown user, a role without a password and a role
//! past its VALID UNTIL all get the same answer (28P01, `password
//! authentication failed for user "x"`) after the same exchange: an unknown
//! user is given a stable made-up salt and the exchange runs to the end.
//! Failed logins are counted (`quarry_node_login_failures_total`) and, past
//! [`LOGIN_FAILURES_MAX`] within [`LOGIN_FAILURE_WINDOW`] from one address,
//! refused at once until the window passes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_common::SqlState;
use quarry_common::catalog::Catalog;
use quarry_common::roles::{Role, ScramVerifier};
use quarry_exec::scram::{self, Exchange, ScramError};

use crate::tls::ReloadableTls;

/// Failed logins from one address within [`LOGIN_FAILURE_WINDOW`] after which
/// its logins are refused until the window ends.
pub const LOGIN_FAILURES_MAX: u32 = 10;
/// The window [`LOGIN_FAILURES_MAX`] counts over.
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at once; past it the oldest
/// window is forgotten (bounds the memory a scan of many addresses takes).
pub const FAILED_LOGIN_ADDRESSES_MAX: usize = 10_000;

/// How the PostgreSQL port admits clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `--insecure`: any user name, no password. A name with a role gets the
    /// role's privileges; any other acts as a superuser.
    Insecure,
    /// SCRAM against the catalog's roles.
    Scram,
}

/// What every connection's login shares.
pub struct Authenticator {
    mode: AuthMode,
    tls: Option<Arc<ReloadableTls>>,
    /// Key of the made-up verifiers of unknown users (random per process).
    mock_key: [u8; 32],
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// A login refused: the SQLSTATE and message the client gets (FATAL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 28P01, 28000 or 08P01.
    pub state: SqlState,
    /// PostgreSQL's wording.
    pub message: String,
}

impl Refusal {
    fn password(user: &str) -> Refusal {
        Refusal {
            state: SqlState::INVALID_PASSWORD,
            message: format!("password authentication failed for user \"{user}\""),
        }
    }
}

impl Authenticator {
    /// Logins in `mode`; `tls` offers SCRAM-SHA-256-PLUS over TLS.
    pub fn new(mode: AuthMode, tls: Option<Arc<ReloadableTls>>) -> Arc<Self> {
        Arc::new(Authenticator {
            mode,
            tls,
            mock_key: rand::random(),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The SASL mechanisms offered on a connection (`secure`: over TLS).
    pub fn mechanisms(&self, secure: bool) -> Vec<String> {
        let mut mechanisms = Vec::new();
        if secure && self.end_point().is_some() {
            mechanisms.push(scram::MECHANISM_PLUS.to_owned());
        }
        mechanisms.push(scram::MECHANISM.to_owned());
        mechanisms
    }

    /// The `tls-server-end-point` channel binding data of the certificate
    /// being served.
    fn end_point(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().and_then(|tls| tls.end_point())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.failures
            .lock()
            .expect("failed-login lock is never held across a panic")
    }

    /// Refuses a login from `address` that failed too often lately.
    ///
    /// # Errors
    /// 28000 while the address is over [`LOGIN_FAILURES_MAX`].
    pub fn admit(&self, address: IpAddr) -> Result<(), Refusal> {
        let failures = self.failures();
        match failures.get(&address) {
            Some((since, count))
                if *count >= LOGIN_FAILURES_MAX && since.elapsed() < LOGIN_FAILURE_WINDOW =>
            {
                Err(Refusal {
                    state: SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    message: format!(
                        "too many failed logins from {address}; try again in {} s",
                        LOGIN_FAILURE_WINDOW
                            .saturating_sub(since.elapsed())
                            .as_secs()
                            .max(1)
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `address`.
    pub fn failed(&self, address: IpAddr, user: &str, reason: &str) {
        metrics::counter!("quarry_node_login_failures_total").increment(1);
        tracing::warn!(%address, user, reason, "login failed");
        let mut failures = self.failures();
        if failures.len() >= FAILED_LOGIN_ADDRESSES_MAX && !failures.contains_key(&address) {
            let oldest = failures
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(address).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= LOGIN_FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// Starts the SCRAM exchange of `user` with the client-first message.
    ///
    /// # Errors
    /// A [`Refusal`] for a malformed message or a channel binding mismatch.
    pub fn start(
        &self,
        catalog: &Catalog,
        user: &str,
        mechanism: &str,
        client_first: &[u8],
        secure: bool,
        now_micros: i64,
    ) -> Result<(Exchange, String), Refusal> {
        let verifier = login_verifier(catalog.role(user).map(|r| r.as_ref()), now_micros);
        let mock = scram::mock_verifier(user, &self.mock_key);
        let end_point = if secure { self.end_point() } else { None };
        Exchange::start(mechanism, client_first, verifier, mock, end_point)
            .map_err(|e| refusal(user, &e))
    }
}

/// The verifier a login as `role` is checked against: None (so the login
/// fails like a wrong password) for an unknown role, one without a
/// password, or one past its VALID UNTIL.
fn login_verifier(role: Option<&Role>, now_micros: i64) -> Option<&ScramVerifier> {
    let role = role?;
    if role.valid_until.is_some_and(|until| now_micros >= until) {
        return None;
    }
    role.password.as_ref()
}

/// The client's answer for a failed exchange.
pub fn refusal(user: &str, error: &ScramError) -> Refusal {
    match error {
        ScramError::Malformed(what) => Refusal {
            state: SqlState::PROTOCOL_VIOLATION,
            message: format!("malformed SCRAM message: {what}"),
        },
        ScramError::ChannelBinding(_) | ScramError::Failed => Refusal::password(user),
    }
}

/// Whether `role` may open a session once its password checked out
/// (PostgreSQL checks LOGIN after authentication).
///
/// # Errors
/// 28000 `role "x" is not permitted to log in`.
pub fn may_log_in(role: Option<&Role>, user: &str) -> Result<(), Refusal> {
    match role {
        Some(r) if r.login => Ok(()),
        Some(_) => Err(Refusal {
            state: SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            message: format!("role \"{user}\" is not permitted to log in"),
        }),
        None => Err(Refusal::password(user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(valid_until: Option<i64>) -> Role {
        Role {
            id: 5,
            name: "alice".into(),
            superuser: false,
            create_role: false,
            login: true,
            inherit: true,
            password: Some(scram::verifier("pencil")),
            valid_until,
            member_of: Default::default(),
        }
    }

    #[test]
    fn an_expired_role_has_no_verifier_to_log_in_with() {
        assert!(login_verifier(Some(&role(None)), 10).is_some());
        assert!(login_verifier(Some(&role(Some(11))), 10).is_some());
        assert!(login_verifier(Some(&role(Some(10))), 10).is_none());
        assert!(login_verifier(None, 10).is_none());
    }

    #[test]
    fn an_address_is_refused_after_too_many_failures_and_others_are_not() {
        let auth = Authenticator::new(AuthMode::Scram, None);
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        let good: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_MAX {
            assert!(auth.admit(bad).is_ok());
            auth.failed(bad, "alice", "test");
        }
        let refused = auth.admit(bad).unwrap_err();
        assert_eq!(refused.state, SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
        assert!(auth.admit(good).is_ok());
    }

    #[test]
    fn a_channel_binding_failure_reads_as_a_wrong_password() {
        let r = refusal("bob", &ScramError::ChannelBinding("x"));
        assert_eq!(r, Refusal::password("bob"));
    }
}
