//! Roles, their passwords (as SCRAM verifiers only) and privileges on schemas,
//! tables and views: PostgreSQL's model (<https://www.postgresql.org/docs/current/user-manag.html>,
//! <https://www.postgresql.org/docs/current/ddl-priv.html>), replicated in the Raft
//! catalog like everything else.
//!
//! A role may log in (a user) or only hold privileges (a group); roles are members
//! of other roles and, with INHERIT, use their privileges. Every schema, table and
//! view has an owner (its creator), who holds every privilege on it and alone (with
//! superusers and members of the owning role) may ALTER, DROP or GRANT on it.
//! Objects created before roles existed have no [`Acl`]: the bootstrap superuser
//! owns them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, TableId, TimestampMicros};

/// Id of a role: taken from the catalog's id sequence, so a renamed role keeps
/// its grants and memberships.
pub type RoleId = u64;

/// The grantee id that stands for PUBLIC (every role).
pub const PUBLIC: RoleId = 0;

/// The first superuser, created when a cluster is bootstrapped.
pub const BOOTSTRAP_SUPERUSER: &str = "quarry";

/// PostgreSQL's predefined role whose members see every role's jobs and
/// statements (`quarry_system.jobs`, `pg_stat_activity`).
pub const READ_ALL_STATS: &str = "pg_read_all_stats";
/// PostgreSQL's predefined role whose members may cancel every role's
/// statements (`pg_cancel_backend`, `CANCEL JOB`).
pub const SIGNAL_BACKEND: &str = "pg_signal_backend";
/// The predefined roles Quarry has, created with the cluster; they can be
/// granted, not altered, renamed or dropped.
pub const PREDEFINED_ROLES: [&str; 2] = [READ_ALL_STATS, SIGNAL_BACKEND];

/// What a server keeps of a password for SCRAM-SHA-256 (RFC 5802 §3, RFC 7677):
/// never the password nor the SaltedPassword.
///
/// ```text
/// SaltedPassword := PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
/// StoredKey      := SHA-256(HMAC(SaltedPassword, "Client Key"))
/// ServerKey      := HMAC(SaltedPassword, "Server Key")
/// ```
///
/// PostgreSQL stores the same four values as
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramVerifier {
    /// PBKDF2 iterations (PostgreSQL's default `scram_iterations` is 4096).
    pub iterations: u32,
    /// Random salt, 16 bytes when Quarry makes it.
    pub salt: Vec<u8>,
    /// SHA-256 of the ClientKey.
    pub stored_key: [u8; 32],
    /// HMAC of the SaltedPassword with "Server Key".
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are not the password, but a log has no use for them.
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A role (CREATE ROLE / CREATE USER).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its id.
    pub id: RoleId,
    /// Its name (unique).
    pub name: String,
    /// SUPERUSER: passes every privilege check.
    pub superuser: bool,
    /// CREATEROLE: may create, alter and drop non-superuser roles and grant
    /// membership in them.
    pub create_role: bool,
    /// LOGIN: may open a session.
    pub login: bool,
    /// INHERIT: uses the privileges of the roles it is a member of.
    pub inherit: bool,
    /// PASSWORD, as a SCRAM verifier; None: no password login.
    pub password: Option<ScramVerifier>,
    /// VALID UNTIL: after this instant the password no longer logs in.
    pub valid_until: Option<TimestampMicros>,
    /// The roles it is a member of (GRANT role TO this).
    pub member_of: BTreeSet<RoleId>,
}

/// A bearer token for the HTTP API (`CREATE ACCESS TOKEN`): it acts as the
/// role that created it. Only a SHA-256 hash of its secret is kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The token's public id (the part of the token before its secret).
    pub id: String,
    /// Its name, unique among its role's tokens.
    pub name: String,
    /// The role it acts as.
    pub role: RoleId,
    /// SHA-256 of its secret.
    pub secret_sha256: [u8; 32],
    /// When it was created.
    pub created_at: TimestampMicros,
    /// After this instant it is refused.
    pub valid_until: Option<TimestampMicros>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A set of privileges (PostgreSQL's ACL letters in [`Privileges::letters`]).
#[derive(Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Privileges(pub u16);

impl Privileges {
    /// SELECT on a table or view (`r`).
    pub const SELECT: Privileges = Privileges(1);
    /// INSERT (`a`).
    pub const INSERT: Privileges = Privileges(1 << 1);
    /// UPDATE (`w`).
    pub const UPDATE: Privileges = Privileges(1 << 2);
    /// DELETE (`d`).
    pub const DELETE: Privileges = Privileges(1 << 3);
    /// TRUNCATE (`D`).
    pub const TRUNCATE: Privileges = Privileges(1 << 4);
    /// USAGE on a schema (`U`).
    pub const USAGE: Privileges = Privileges(1 << 5);
    /// CREATE in a schema (`C`).
    pub const CREATE: Privileges = Privileges(1 << 6);
    /// Nothing.
    pub const NONE: Privileges = Privileges(0);
    /// Every privilege a table or view has (ALL on a table).
    pub const ALL_TABLE: Privileges = Privileges(0b1_1111);
    /// Every privilege a schema has (ALL on a schema).
    pub const ALL_SCHEMA: Privileges = Privileges(0b110_0000);

    const LETTERS: [(Privileges, char); 7] = [
        (Privileges::INSERT, 'a'),
        (Privileges::SELECT, 'r'),
        (Privileges::UPDATE, 'w'),
        (Privileges::DELETE, 'd'),
        (Privileges::TRUNCATE, 'D'),
        (Privileges::USAGE, 'U'),
        (Privileges::CREATE, 'C'),
    ];

    /// Whether every privilege of `other` is in `self`.
    pub fn contains(self, other: Privileges) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self` and `other`.
    pub fn union(self, other: Privileges) -> Privileges {
        Privileges(self.0 | other.0)
    }

    /// `self` without `other`.
    pub fn without(self, other: Privileges) -> Privileges {
        Privileges(self.0 & !other.0)
    }

    /// PostgreSQL's aclitem letters, in its order (`arwdDUC` subset).
    pub fn letters(self) -> String {
        Self::LETTERS
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, c)| *c)
            .collect()
    }

    /// The keyword PostgreSQL's messages use for a single privilege.
    pub fn keyword(self) -> &'static str {
        match self {
            Privileges::SELECT => "SELECT",
            Privileges::INSERT => "INSERT",
            Privileges::UPDATE => "UPDATE",
            Privileges::DELETE => "DELETE",
            Privileges::TRUNCATE => "TRUNCATE",
            Privileges::USAGE => "USAGE",
            Privileges::CREATE => "CREATE",
            _ => "privileges",
        }
    }
}

impl fmt::Debug for Privileges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Privileges({})", self.letters())
    }
}

/// An object privileges are granted on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Securable {
    /// A schema, by name.
    Schema(String),
    /// A table, by id (so grants follow a rename and an UNDROP).
    Table(TableId),
    /// A view, by (schema, name); ALTER VIEW ... RENAME moves its entry.
    View(String, String),
}

/// The owner of an object and what others were granted on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acl {
    /// Its owner.
    pub owner: RoleId,
    /// Privileges by grantee ([`PUBLIC`] for every role).
    pub grants: BTreeMap<RoleId, Privileges>,
}

impl Catalog {
    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&std::sync::Arc<Role>> {
        self.roles.get(name)
    }

    /// The role with id `id`.
    pub fn role_by_id(&self, id: RoleId) -> Option<&std::sync::Arc<Role>> {
        self.roles.values().find(|r| r.id == id)
    }

    /// The name of role `id` (`PUBLIC` for [`PUBLIC`], the id for a role that
    /// no longer exists).
    pub fn role_name(&self, id: RoleId) -> String {
        if id == PUBLIC {
            return "PUBLIC".to_owned();
        }
        self.role_by_id(id)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// The role whose rights stand for "no owner recorded": the bootstrap
    /// superuser (None before any role exists).
    pub fn bootstrap_superuser(&self) -> Option<RoleId> {
        self.role(BOOTSTRAP_SUPERUSER).map(|r| r.id)
    }

    /// `role` and every role it is a member of, directly or through others.
    pub fn member_closure(&self, role: RoleId) -> BTreeSet<RoleId> {
        self.closure(role, false)
    }

    /// The roles whose privileges `role` uses: itself and, while INHERIT
    /// holds along the way, the roles it is a member of.
    pub fn privilege_roles(&self, role: RoleId) -> BTreeSet<RoleId> {
        self.closure(role, true)
    }

    fn closure(&self, role: RoleId, inheriting: bool) -> BTreeSet<RoleId> {
        let mut seen = BTreeSet::from([role]);
        let mut todo = vec![role];
        while let Some(id) = todo.pop() {
            let Some(r) = self.role_by_id(id) else {
                continue;
            };
            if inheriting && !r.inherit {
                continue;
            }
            for &parent in &r.member_of {
                if seen.insert(parent) {
                    todo.push(parent);
                }
            }
        }
        seen
    }

    /// Whether `role` is a superuser.
    pub fn is_superuser(&self, role: RoleId) -> bool {
        self.role_by_id(role).is_some_and(|r| r.superuser)
    }

    /// The owner of `object` (the bootstrap superuser when none is recorded).
    pub fn owner_of(&self, object: &Securable) -> Option<RoleId> {
        self.acls
            .get(object)
            .map(|acl| acl.owner)
            .or_else(|| self.bootstrap_superuser())
    }

    /// Whether `role` may act as `object`'s owner (ALTER, DROP, GRANT): a
    /// superuser, the owner, or a member of the owning role (PostgreSQL's
    /// `pg_class_ownercheck`).
    pub fn owns(&self, role: RoleId, object: &Securable) -> bool {
        if self.is_superuser(role) {
            return true;
        }
        self.owner_of(object)
            .is_some_and(|owner| self.member_closure(role).contains(&owner))
    }

    /// The privileges granted on `object` to `grantee` alone.
    pub fn granted(&self, object: &Securable, grantee: RoleId) -> Privileges {
        let default = match object {
            // PostgreSQL 15 on: every role may use schema public, only its
            // owner may create in it.
            Securable::Schema(name) if name == crate::catalog::DEFAULT_SCHEMA => {
                if grantee == PUBLIC {
                    Privileges::USAGE
                } else {
                    Privileges::NONE
                }
            }
            _ => Privileges::NONE,
        };
        match self.acls.get(object) {
            Some(acl) => acl.grants.get(&grantee).copied().unwrap_or_default(),
            None => default,
        }
    }

    /// Whether `role` holds every privilege of `wanted` on `object`: as a
    /// superuser, as its owner (or through a role it inherits from), or by
    /// grants to it, to a role it inherits from, or to PUBLIC.
    pub fn has_privilege(&self, role: RoleId, object: &Securable, wanted: Privileges) -> bool {
        if self.is_superuser(role) {
            return true;
        }
        let roles = self.privilege_roles(role);
        if self.owner_of(object).is_some_and(|o| roles.contains(&o)) {
            return true;
        }
        let held = roles
            .iter()
            .chain(std::iter::once(&PUBLIC))
            .fold(Privileges::NONE, |held, r| {
                held.union(self.granted(object, *r))
            });
        held.contains(wanted)
    }

    /// The objects `role` owns (DROP ROLE refuses while there are any).
    pub fn owned_by(&self, role: RoleId) -> Vec<Securable> {
        self.acls
            .iter()
            .filter(|(_, acl)| acl.owner == role)
            .map(|(object, _)| object.clone())
            .collect()
    }

    /// The objects `role` holds grants on.
    pub fn granted_to(&self, role: RoleId) -> Vec<Securable> {
        self.acls
            .iter()
            .filter(|(_, acl)| acl.grants.contains_key(&role))
            .map(|(object, _)| object.clone())
            .collect()
    }

    /// PostgreSQL's `aclitem[]` text of `object` (`{alice=r/quarry,...}`), or
    /// None when nothing was ever granted (psql's `\dp` shows it empty).
    pub fn acl_text(&self, object: &Securable) -> Option<Vec<String>> {
        let acl = self.acls.get(object)?;
        if acl.grants.is_empty() {
            return None;
        }
        let owner = self.role_name(acl.owner);
        let all = match object {
            Securable::Schema(_) => Privileges::ALL_SCHEMA,
            _ => Privileges::ALL_TABLE,
        };
        let mut items = vec![format!("{owner}={}/{owner}", all.letters())];
        for (grantee, privileges) in &acl.grants {
            let name = if *grantee == PUBLIC {
                String::new()
            } else {
                self.role_name(*grantee)
            };
            items.push(format!("{name}={}/{owner}", privileges.letters()));
        }
        Some(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn role(id: RoleId, name: &str, member_of: &[RoleId]) -> Role {
        Role {
            id,
            name: name.to_owned(),
            superuser: false,
            create_role: false,
            login: true,
            inherit: true,
            password: None,
            valid_until: None,
            member_of: member_of.iter().copied().collect(),
        }
    }

    fn catalog(roles: Vec<Role>) -> Catalog {
        let mut catalog = Catalog::default();
        for r in roles {
            catalog.roles.insert(r.name.clone(), Arc::new(r));
        }
        catalog
    }

    #[test]
    fn privileges_come_from_grants_to_the_role_its_groups_and_public() {
        let mut c = catalog(vec![
            Role {
                superuser: true,
                ..role(1, "quarry", &[])
            },
            role(2, "readers", &[]),
            role(3, "alice", &[2]),
            role(4, "bob", &[]),
        ]);
        let t = Securable::Table(10);
        c.acls.insert(
            t.clone(),
            Arc::new(Acl {
                owner: 1,
                grants: BTreeMap::from([(2, Privileges::SELECT), (PUBLIC, Privileges::INSERT)]),
            }),
        );
        assert!(c.has_privilege(3, &t, Privileges::SELECT));
        assert!(!c.has_privilege(4, &t, Privileges::SELECT));
        assert!(c.has_privilege(4, &t, Privileges::INSERT));
        assert!(!c.has_privilege(3, &t, Privileges::DELETE));
        assert!(c.has_privilege(1, &t, Privileges::ALL_TABLE));
    }

    #[test]
    fn noinherit_roles_do_not_use_their_groups_privileges_but_stay_members() {
        let mut c = catalog(vec![
            role(2, "readers", &[]),
            Role {
                inherit: false,
                ..role(3, "alice", &[2])
            },
        ]);
        let t = Securable::Table(10);
        c.acls.insert(
            t.clone(),
            Arc::new(Acl {
                owner: 2,
                grants: BTreeMap::new(),
            }),
        );
        assert!(!c.has_privilege(3, &t, Privileges::SELECT));
        assert!(c.owns(3, &t), "membership alone lets a role act as owner");
    }

    #[test]
    fn membership_cycles_end() {
        let c = catalog(vec![role(2, "a", &[3]), role(3, "b", &[2])]);
        assert_eq!(c.member_closure(2), BTreeSet::from([2, 3]));
    }

    #[test]
    fn schema_public_is_usable_by_everyone_until_its_grants_change() {
        let c = catalog(vec![role(3, "alice", &[])]);
        let public = Securable::Schema("public".to_owned());
        assert!(c.has_privilege(3, &public, Privileges::USAGE));
        assert!(!c.has_privilege(3, &public, Privileges::CREATE));
        let other = Securable::Schema("sales".to_owned());
        assert!(!c.has_privilege(3, &other, Privileges::USAGE));
    }

    #[test]
    fn acl_text_is_postgres_aclitem_shape() {
        let mut c = catalog(vec![role(1, "quarry", &[]), role(3, "alice", &[])]);
        let t = Securable::Table(10);
        c.acls.insert(
            t.clone(),
            Arc::new(Acl {
                owner: 1,
                grants: BTreeMap::from([
                    (3, Privileges::SELECT.union(Privileges::INSERT)),
                    (PUBLIC, Privileges::SELECT),
                ]),
            }),
        );
        assert_eq!(
            c.acl_text(&t).expect("grants exist"),
            vec!["quarry=arwdD/quarry", "=r/quarry", "alice=ar/quarry"]
        );
    }
}
