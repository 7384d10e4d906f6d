//! Credentials checked outside the PostgreSQL port's SCRAM exchange: a
//! password given whole (HTTP Basic), checked against the role's SCRAM
//! verifier, and the HTTP API's bearer tokens (`CREATE ACCESS TOKEN`).
//!
//! A token reads `qat_<id>_<secret>`: `id` (16 hex digits) finds it, the
//! SHA-256 of `secret` (32 random bytes, base64url) must match the hash the
//! catalog keeps. Both checks compare in constant time.

use quarry_common::catalog::{Catalog, TimestampMicros};
use quarry_common::roles::RoleId;
use subtle::ConstantTimeEq;

/// Bytes of an access token's secret.
pub const TOKEN_SECRET_BYTES: usize = 32;

/// The prefix of every access token (so scanners for leaked secrets can
/// recognise them).
pub const TOKEN_PREFIX: &str = "qat_";

/// SHA-256 of an access token's secret.
pub fn token_secret_sha256(secret: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The role `token` acts as, if it is a live token of `catalog` at `now`
/// whose role may log in.
pub fn token_role(catalog: &Catalog, token: &str, now: TimestampMicros) -> Option<RoleId> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let stored = catalog.tokens.get(id)?;
    let matches: bool = token_secret_sha256(secret)
        .ct_eq(&stored.secret_sha256)
        .into();
    if !matches || stored.valid_until.is_some_and(|until| now >= until) {
        return None;
    }
    catalog
        .role_by_id(stored.role)
        .filter(|r| r.login)
        .map(|r| r.id)
}

/// The role `user` is, if `password` is its password at `now` (the role
/// may log in and its VALID UNTIL has not passed).
pub fn password_role(
    catalog: &Catalog,
    user: &str,
    password: &str,
    now: TimestampMicros,
) -> Option<RoleId> {
    let role = catalog.role(user)?;
    let verifier = role.password.as_ref()?;
    if !role.login || role.valid_until.is_some_and(|until| now >= until) {
        return None;
    }
    let computed = crate::scram::verifier_with_salt(password, &verifier.salt, verifier.iterations);
    let matches: bool = computed.stored_key.ct_eq(&verifier.stored_key).into();
    matches.then_some(role.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_common::roles::{AccessToken, Role};
    use std::sync::Arc;

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "alice".into(),
            Arc::new(Role {
                id: 7,
                name: "alice".into(),
                superuser: false,
                create_role: false,
                login: true,
                inherit: true,
                password: Some(crate::scram::verifier("pencil")),
                valid_until: None,
                member_of: Default::default(),
            }),
        );
        catalog.tokens.insert(
            "00ff".into(),
            Arc::new(AccessToken {
                id: "00ff".into(),
                name: "ci".into(),
                role: 7,
                secret_sha256: token_secret_sha256("s3cret"),
                created_at: 0,
                valid_until: Some(100),
            }),
        );
        catalog
    }

    #[test]
    fn a_token_acts_as_its_role_until_it_expires() {
        let c = catalog();
        assert_eq!(token_role(&c, "qat_00ff_s3cret", 50), Some(7));
        assert_eq!(token_role(&c, "qat_00ff_s3cret", 100), None);
        assert_eq!(token_role(&c, "qat_00ff_other", 50), None);
        assert_eq!(token_role(&c, "qat_0000_s3cret", 50), None);
        assert_eq!(token_role(&c, "00ff_s3cret", 50), None);
    }

    #[test]
    fn a_password_is_checked_against_the_verifier() {
        let c = catalog();
        assert_eq!(password_role(&c, "alice", "pencil", 0), Some(7));
        assert_eq!(password_role(&c, "alice", "crayon", 0), None);
        assert_eq!(password_role(&c, "bob", "pencil", 0), None);
    }
}
