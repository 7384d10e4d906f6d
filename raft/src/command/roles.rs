//! Applying the role and privilege commands: CREATE / ALTER / DROP ROLE, role
//! membership, GRANT / REVOKE on objects, and the owner of what a CREATE makes.
//!
//! Who may run each is checked by the proposer against the catalog it planned
//! on (PostgreSQL's rules, `exec`'s `privileges` module); here the commands
//! keep the catalog consistent: names unique, grantees existing, no membership
//! cycles, no role dropped while it owns or holds anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use quarry_common::catalog::{Catalog, TimestampMicros};
use quarry_common::roles::{
    Acl, PREDEFINED_ROLES, PUBLIC, Privileges, Role, RoleId, ScramVerifier, Securable,
};
use serde::{Deserialize, Serialize};

use super::{Applied, CatalogError, Command, next_id};

/// The grantee name that stands for every role; no role may take it.
pub const PUBLIC_NAME: &str = "public";

/// The attributes CREATE ROLE or ALTER ROLE sets; None leaves one as it is
/// (for CREATE ROLE: PostgreSQL's default, NOSUPERUSER NOCREATEROLE INHERIT,
/// and NOLOGIN unless the statement was CREATE USER).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleOptions {
    /// SUPERUSER / NOSUPERUSER.
    pub superuser: Option<bool>,
    /// CREATEROLE / NOCREATEROLE.
    pub create_role: Option<bool>,
    /// LOGIN / NOLOGIN.
    pub login: Option<bool>,
    /// INHERIT / NOINHERIT.
    pub inherit: Option<bool>,
    /// PASSWORD (as a verifier) or PASSWORD NULL.
    pub password: Option<Option<ScramVerifier>>,
    /// VALID UNTIL (an instant, or `'infinity'` as None).
    pub valid_until: Option<Option<TimestampMicros>>,
    /// IN ROLE: roles the new role becomes a member of.
    pub in_role: Vec<String>,
}

impl RoleOptions {
    fn set(&self, role: &mut Role) {
        let RoleOptions {
            superuser,
            create_role,
            login,
            inherit,
            password,
            valid_until,
            in_role: _,
        } = self;
        if let Some(v) = superuser {
            role.superuser = *v;
        }
        if let Some(v) = create_role {
            role.create_role = *v;
        }
        if let Some(v) = login {
            role.login = *v;
        }
        if let Some(v) = inherit {
            role.inherit = *v;
        }
        if let Some(v) = password {
            role.password = v.clone();
        }
        if let Some(v) = valid_until {
            role.valid_until = *v;
        }
    }
}

fn role_id(catalog: &Catalog, name: &str) -> Result<RoleId, CatalogError> {
    catalog
        .role(name)
        .map(|r| r.id)
        .ok_or_else(|| CatalogError::RoleNotFound(name.to_owned()))
}

fn grantee_id(catalog: &Catalog, name: &str) -> Result<RoleId, CatalogError> {
    if name == PUBLIC_NAME {
        return Ok(PUBLIC);
    }
    role_id(catalog, name)
}

fn put_role(catalog: &mut Catalog, role: Role) {
    catalog.roles.insert(role.name.clone(), Arc::new(role));
}

/// Applies a role or privilege command; None if `command` is not one.
pub(super) fn apply(
    catalog: &mut Catalog,
    command: &Command,
) -> Option<Result<Applied, CatalogError>> {
    Some(match command {
        Command::CreateRole { name, options } => create_role(catalog, name, options),
        Command::AlterRole { name, .. } | Command::RenameRole { name, .. }
            if PREDEFINED_ROLES.contains(&name.as_str()) =>
        {
            Err(CatalogError::ReservedRoleName(name.clone()))
        }
        Command::AlterRole { name, options } => alter_role(catalog, name, options),
        Command::RenameRole { name, to } => rename_role(catalog, name, to),
        Command::DropRole { name, if_exists } => {
            if PREDEFINED_ROLES.contains(&name.as_str()) {
                return Some(Err(CatalogError::ReservedRoleName(name.clone())));
            }
            drop_role(catalog, name, *if_exists)
        }
        Command::CreatePredefinedRoles => {
            for name in PREDEFINED_ROLES {
                if catalog.role(name).is_none() {
                    let role = new_role(catalog, name, Default::default());
                    put_role(catalog, role);
                }
            }
            Ok(Applied::Nothing)
        }
        Command::SetMembership {
            role,
            member,
            granted,
        } => set_membership(catalog, role, member, *granted),
        Command::SetPrivileges {
            objects,
            grantees,
            privileges,
            granted,
        } => set_privileges(catalog, objects, grantees, *privileges, *granted),
        Command::CreateToken { token } => {
            if catalog.role_by_id(token.role).is_none() {
                return Some(Err(CatalogError::RoleNotFound(token.role.to_string())));
            }
            let taken = catalog
                .tokens
                .values()
                .any(|t| t.role == token.role && t.name == token.name)
                || catalog.tokens.contains_key(&token.id);
            if taken {
                return Some(Err(CatalogError::TokenExists(token.name.clone())));
            }
            catalog
                .tokens
                .insert(token.id.clone(), Arc::new(token.clone()));
            Ok(Applied::Nothing)
        }
        Command::DropToken {
            role,
            name,
            if_exists,
        } => {
            let id = catalog
                .tokens
                .values()
                .find(|t| t.role == *role && t.name == *name)
                .map(|t| t.id.clone());
            match id {
                Some(id) => {
                    catalog.tokens.remove(&id);
                    Ok(Applied::Nothing)
                }
                None if *if_exists => Ok(Applied::Nothing),
                None => Err(CatalogError::TokenNotFound(name.clone())),
            }
        }
        Command::SetOwner { object, owner } => role_id(catalog, owner).map(|owner| {
            let mut acl = catalog
                .acls
                .get(object)
                .map(|a| (**a).clone())
                .unwrap_or_default();
            acl.owner = owner;
            catalog.acls.insert(object.clone(), Arc::new(acl));
            Applied::Nothing
        }),
        _ => return None,
    })
}

/// A new role of PostgreSQL's defaults (NOSUPERUSER NOCREATEROLE NOLOGIN
/// INHERIT, no password), with the next id.
fn new_role(catalog: &mut Catalog, name: &str, member_of: BTreeSet<RoleId>) -> Role {
    Role {
        id: next_id(catalog),
        name: name.to_owned(),
        superuser: false,
        create_role: false,
        login: false,
        inherit: true,
        password: None,
        valid_until: None,
        member_of,
    }
}

fn create_role(
    catalog: &mut Catalog,
    name: &str,
    options: &RoleOptions,
) -> Result<Applied, CatalogError> {
    if name == PUBLIC_NAME || name.starts_with("pg_") {
        return Err(CatalogError::ReservedRoleName(name.to_owned()));
    }
    if catalog.role(name).is_some() {
        return Err(CatalogError::RoleExists(name.to_owned()));
    }
    let member_of = options
        .in_role
        .iter()
        .map(|r| role_id(catalog, r))
        .collect::<Result<_, _>>()?;
    let mut role = new_role(catalog, name, member_of);
    options.set(&mut role);
    put_role(catalog, role);
    Ok(Applied::Nothing)
}

fn alter_role(
    catalog: &mut Catalog,
    name: &str,
    options: &RoleOptions,
) -> Result<Applied, CatalogError> {
    let mut role = (**catalog
        .role(name)
        .ok_or_else(|| CatalogError::RoleNotFound(name.to_owned()))?)
    .clone();
    options.set(&mut role);
    put_role(catalog, role);
    Ok(Applied::Nothing)
}

fn rename_role(catalog: &mut Catalog, name: &str, to: &str) -> Result<Applied, CatalogError> {
    if to == PUBLIC_NAME || to.starts_with("pg_") {
        return Err(CatalogError::ReservedRoleName(to.to_owned()));
    }
    if catalog.role(to).is_some() {
        return Err(CatalogError::RoleExists(to.to_owned()));
    }
    let role = catalog
        .roles
        .remove(name)
        .ok_or_else(|| CatalogError::RoleNotFound(name.to_owned()))?;
    let mut role = (*role).clone();
    role.name = to.to_owned();
    put_role(catalog, role);
    Ok(Applied::Nothing)
}

fn drop_role(catalog: &mut Catalog, name: &str, if_exists: bool) -> Result<Applied, CatalogError> {
    let Some(role) = catalog.role(name).cloned() else {
        return if if_exists {
            Ok(Applied::Nothing)
        } else {
            Err(CatalogError::RoleNotFound(name.to_owned()))
        };
    };
    let owned = catalog.owned_by(role.id).len();
    let granted = catalog.granted_to(role.id).len();
    if owned + granted > 0 {
        return Err(CatalogError::RoleInUse {
            role: name.to_owned(),
            owned,
            granted,
        });
    }
    catalog.roles.remove(name);
    // Its access tokens go with it.
    let tokens: Vec<String> = catalog
        .tokens
        .values()
        .filter(|t| t.role == role.id)
        .map(|t| t.id.clone())
        .collect();
    for id in tokens {
        catalog.tokens.remove(&id);
    }
    // Its members stop being members of it.
    let members: Vec<Arc<Role>> = catalog
        .roles
        .values()
        .filter(|r| r.member_of.contains(&role.id))
        .cloned()
        .collect();
    for member in members {
        let mut member = (*member).clone();
        member.member_of.remove(&role.id);
        put_role(catalog, member);
    }
    Ok(Applied::Nothing)
}

fn set_membership(
    catalog: &mut Catalog,
    role: &str,
    member: &str,
    granted: bool,
) -> Result<Applied, CatalogError> {
    let role_id = role_id(catalog, role)?;
    let mut target = (**catalog
        .role(member)
        .ok_or_else(|| CatalogError::RoleNotFound(member.to_owned()))?)
    .clone();
    if granted {
        // PostgreSQL refuses a grant that would make a role a member of itself.
        if catalog.member_closure(role_id).contains(&target.id) {
            return Err(CatalogError::MembershipCycle {
                role: role.to_owned(),
                member: member.to_owned(),
            });
        }
        target.member_of.insert(role_id);
    } else {
        target.member_of.remove(&role_id);
    }
    put_role(catalog, target);
    Ok(Applied::Nothing)
}

fn set_privileges(
    catalog: &mut Catalog,
    objects: &[Securable],
    grantees: &[String],
    privileges: Privileges,
    granted: bool,
) -> Result<Applied, CatalogError> {
    let ids: Vec<RoleId> = grantees
        .iter()
        .map(|g| grantee_id(catalog, g))
        .collect::<Result<_, _>>()?;
    for object in objects {
        check_exists(catalog, object)?;
        let mut acl = match catalog.acls.get(object) {
            Some(acl) => (**acl).clone(),
            None => Acl {
                owner: catalog.owner_of(object).unwrap_or(PUBLIC),
                // The implicit grants of an object nobody granted on yet.
                grants: [PUBLIC]
                    .into_iter()
                    .map(|r| (r, catalog.granted(object, r)))
                    .filter(|(_, p)| !p.is_empty())
                    .collect::<BTreeMap<_, _>>(),
            },
        };
        for id in &ids {
            let held = acl.grants.get(id).copied().unwrap_or_default();
            let now = if granted {
                held.union(privileges)
            } else {
                held.without(privileges)
            };
            if now.is_empty() {
                acl.grants.remove(id);
            } else {
                acl.grants.insert(*id, now);
            }
        }
        catalog.acls.insert(object.clone(), Arc::new(acl));
    }
    Ok(Applied::Nothing)
}

fn check_exists(catalog: &Catalog, object: &Securable) -> Result<(), CatalogError> {
    let exists = match object {
        Securable::Schema(name) => catalog.schemas.contains_key(name),
        Securable::Table(id) => catalog.table_by_id(*id).is_some(),
        Securable::View(schema, name) => catalog.view(schema, name).is_some(),
    };
    if exists {
        Ok(())
    } else {
        Err(CatalogError::TableNotFound(match object {
            Securable::Schema(name) => name.clone(),
            Securable::Table(id) => format!("table id {id}"),
            Securable::View(_, name) => name.clone(),
        }))
    }
}

/// The object a CREATE made, from what it did: for [`Command::Owned`].
pub(super) fn created_object(command: &Command, applied: &Applied) -> Option<Securable> {
    match (command, applied) {
        (Command::CreateSchema { name, .. }, Applied::Schema) => {
            Some(Securable::Schema(name.clone()))
        }
        (Command::CreateTable { .. }, Applied::Snapshot { table, .. }) => {
            Some(Securable::Table(*table))
        }
        (Command::CreateView { view, .. }, _) => {
            Some(Securable::View(view.schema.clone(), view.name.clone()))
        }
        _ => None,
    }
}

/// Records `owner` as the owner of what `command` created, unless it already
/// had one (CREATE OR REPLACE VIEW keeps its owner, as in PostgreSQL).
pub(super) fn record_owner(
    catalog: &mut Catalog,
    owner: RoleId,
    command: &Command,
    applied: &Applied,
) {
    if let Some(object) = created_object(command, applied)
        && !catalog.acls.contains_key(&object)
    {
        catalog.acls.insert(
            object,
            Arc::new(Acl {
                owner,
                grants: BTreeMap::new(),
            }),
        );
    }
}
