//! Roles and privileges in SQL: CREATE / ALTER / DROP ROLE (and USER), GRANT
//! and REVOKE of privileges and of role membership, ALTER ... OWNER TO
//! (<https://www.postgresql.org/docs/current/sql-createrole.html>,
//! <https://www.postgresql.org/docs/current/sql-grant.html>).
//!
//! A password is turned into its SCRAM verifier here, before anything is
//! proposed: the Raft log, its snapshots and every node's catalog hold only
//! the verifier.

use super::*;
use datafusion::sql::sqlparser::ast::{
    Action, AlterRoleOperation, CreateRole, Grant, GrantObjects, GranteeName, GranteesType,
    Password, Privileges as AstPrivileges, Revoke, RoleOption,
};
use quarry_raft::RoleOptions;

/// The password text of `PASSWORD 'x'` as its verifier (a verifier in
/// PostgreSQL's text form is kept as it is).
fn password_verifier(password: &Password) -> Result<Option<quarry_common::roles::ScramVerifier>> {
    let expr = match password {
        Password::NullPassword => return Ok(None),
        Password::Password(expr) => expr,
    };
    let text = match expr {
        Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => s.clone(),
            ast::Value::Null => return Ok(None),
            _ => {
                return Err(user_error(
                    SqlState::SYNTAX_ERROR,
                    "PASSWORD takes a string literal",
                ));
            }
        },
        _ => {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                "PASSWORD takes a string literal",
            ));
        }
    };
    if let Some(verifier) = crate::scram::parse_verifier(&text) {
        return Ok(Some(verifier));
    }
    if text.starts_with("md5") && text.len() == 35 {
        return Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            "MD5 password hashes are not accepted: give the password or its SCRAM-SHA-256 verifier",
        ));
    }
    if text.is_empty() {
        // PostgreSQL: an empty password can never log in.
        return Ok(None);
    }
    Ok(Some(crate::scram::verifier(&text)))
}

/// What an `ALTER ... OWNER TO` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnedKind {
    /// ALTER TABLE (a table or a view).
    Table,
    /// ALTER VIEW.
    View,
    /// ALTER SCHEMA.
    Schema,
}

fn role_name(name: &ObjectName) -> Result<String> {
    match object_parts(name).as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(user_error(
            SqlState::SYNTAX_ERROR,
            format!("role name \"{name}\" is qualified"),
        )),
    }
}

fn grantee_names(grantees: &[ast::Grantee]) -> Result<Vec<String>> {
    grantees
        .iter()
        .map(|g| match (&g.grantee_type, &g.name) {
            (GranteesType::Public, _) => Ok(quarry_raft::PUBLIC_NAME.to_owned()),
            (_, Some(GranteeName::ObjectName(name))) => role_name(name),
            _ => Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("grantee {g} is not supported"),
            )),
        })
        .collect()
}

/// The privileges an action list names, for objects of `kind` (table or
/// schema).
fn privileges_of(privileges: &AstPrivileges, schema: bool) -> Result<Privileges> {
    let all = if schema {
        Privileges::ALL_SCHEMA
    } else {
        Privileges::ALL_TABLE
    };
    let AstPrivileges::Actions(actions) = privileges else {
        return Ok(all);
    };
    let mut set = Privileges::NONE;
    for action in actions {
        let one = match action {
            Action::Select { columns: None } => Privileges::SELECT,
            Action::Insert { columns: None } => Privileges::INSERT,
            Action::Update { columns: None } => Privileges::UPDATE,
            Action::Delete => Privileges::DELETE,
            Action::Truncate => Privileges::TRUNCATE,
            Action::Usage => Privileges::USAGE,
            Action::Create { obj_type: None } => Privileges::CREATE,
            Action::Select { .. } | Action::Insert { .. } | Action::Update { .. } => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "column privileges are not supported: grant on the whole table",
                ));
            }
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("privilege {other} is not supported"),
                ));
            }
        };
        if !all.contains(one) {
            return Err(user_error(
                SqlState::INVALID_GRANT_OPERATION,
                format!(
                    "invalid privilege type {} for {}",
                    one.keyword(),
                    if schema { "schema" } else { "relation" }
                ),
            ));
        }
        set = set.union(one);
    }
    Ok(set)
}

impl Session {
    /// The attributes of a CREATE ROLE or ALTER ROLE option list.
    async fn role_options(&self, options: &[RoleOption]) -> Result<RoleOptions> {
        let mut out = RoleOptions::default();
        for option in options {
            match option {
                RoleOption::SuperUser(v) => out.superuser = Some(*v),
                RoleOption::CreateRole(v) => out.create_role = Some(*v),
                RoleOption::Login(v) => out.login = Some(*v),
                RoleOption::Inherit(v) => out.inherit = Some(*v),
                RoleOption::Password(p) => out.password = Some(password_verifier(p)?),
                RoleOption::ValidUntil(expr) => {
                    out.valid_until = Some(self.valid_until(expr).await?)
                }
                // Quarry has one database and no replication roles; these
                // grant nothing here, as PostgreSQL's defaults.
                RoleOption::CreateDB(_)
                | RoleOption::Replication(false)
                | RoleOption::BypassRLS(false)
                | RoleOption::ConnectionLimit(_) => {}
                other => {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("role option {other} is not supported"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// VALID UNTIL's instant; None for `'infinity'`.
    async fn valid_until(&self, expr: &Expr) -> Result<Option<i64>> {
        if let Expr::Value(value) = expr
            && let ast::Value::SingleQuotedString(s) = &value.value
            && s.eq_ignore_ascii_case("infinity")
        {
            return Ok(None);
        }
        self.eval_timestamp(expr).await.map(Some)
    }

    pub(super) async fn create_role(&mut self, create: CreateRole, user: bool) -> Result<Output> {
        let options = RoleOptions {
            superuser: create.superuser,
            create_role: create.create_role,
            login: create.login.or(user.then_some(true)),
            inherit: create.inherit,
            password: match &create.password {
                Some(p) => Some(password_verifier(p)?),
                None => None,
            },
            valid_until: match &create.valid_until {
                Some(expr) => Some(self.valid_until(expr).await?),
                None => None,
            },
            in_role: create
                .in_role
                .iter()
                .chain(&create.in_group)
                .map(normalize)
                .collect(),
        };
        if create.replication == Some(true) || create.bypassrls == Some(true) {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "REPLICATION and BYPASSRLS roles are not supported",
            ));
        }
        let members: Vec<String> = create
            .role
            .iter()
            .chain(&create.user)
            .map(normalize)
            .collect();
        let mut commands = Vec::new();
        for name in &create.names {
            let name = role_name(name)?;
            if create.if_not_exists && self.ddl_catalog().await?.role(&name).is_some() {
                continue;
            }
            commands.push(Command::CreateRole {
                name: name.clone(),
                options: options.clone(),
            });
            // ROLE / USER: these become members of the new role.
            for member in &members {
                commands.push(Command::SetMembership {
                    role: name.clone(),
                    member: member.clone(),
                    granted: true,
                });
            }
        }
        match commands.len() {
            0 => {}
            1 => self.write_ddl(commands.remove(0)).await?,
            _ => self.write_ddl(Command::Batch(commands)).await?,
        }
        Ok(Output::Command(CommandTag::new("CREATE ROLE")))
    }

    pub(super) async fn alter_role(
        &mut self,
        name: &Ident,
        operation: AlterRoleOperation,
    ) -> Result<Output> {
        let name = normalize(name);
        let command = match operation {
            AlterRoleOperation::RenameRole { role_name } => Command::RenameRole {
                name,
                to: normalize(&role_name),
            },
            AlterRoleOperation::WithOptions { options } => Command::AlterRole {
                name,
                options: self.role_options(&options).await?,
            },
            other => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("ALTER ROLE ... {other} is not supported"),
                ));
            }
        };
        self.write_ddl(command).await?;
        Ok(Output::Command(CommandTag::new("ALTER ROLE")))
    }

    pub(super) async fn drop_roles(
        &mut self,
        names: &[ObjectName],
        if_exists: bool,
    ) -> Result<Output> {
        let commands = names
            .iter()
            .map(|n| {
                Ok(Command::DropRole {
                    name: role_name(n)?,
                    if_exists,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_ddl(Command::Batch(commands)).await?;
        Ok(Output::Command(CommandTag::new("DROP ROLE")))
    }

    /// `ALTER TABLE | VIEW | SCHEMA name OWNER TO owner`: the owner of
    /// `object` (a relation or schema name, as the statement gave it)
    /// becomes `owner`; `tag` is the statement's command tag. The owner or a
    /// superuser may, giving it to a role they are a member of (PostgreSQL's
    /// rule, checked as the command is proposed).
    pub(super) async fn set_owner(
        &mut self,
        object: &ObjectName,
        kind: OwnedKind,
        owner: &ast::Owner,
        if_exists: bool,
    ) -> Result<Output> {
        let tag = match kind {
            OwnedKind::Table => "ALTER TABLE",
            OwnedKind::View => "ALTER VIEW",
            OwnedKind::Schema => "ALTER SCHEMA",
        };
        let owner = match owner {
            ast::Owner::Ident(ident) => normalize(ident),
            ast::Owner::CurrentUser | ast::Owner::CurrentRole | ast::Owner::SessionUser => {
                self.user().name.clone()
            }
        };
        let catalog = self.ddl_catalog().await?;
        let securable = match kind {
            OwnedKind::Schema => {
                let name = object_parts(object).join(".");
                if !catalog.schemas.contains_key(&name) {
                    if if_exists {
                        return Ok(Output::Command(CommandTag::new(tag)));
                    }
                    return Err(user_error(
                        SqlState::INVALID_SCHEMA_NAME,
                        format!("schema \"{name}\" does not exist"),
                    ));
                }
                Securable::Schema(name)
            }
            OwnedKind::Table | OwnedKind::View => {
                let (schema, name) = self.resolve(object)?;
                // ALTER TABLE takes a view too (PostgreSQL's); ALTER VIEW
                // only a view.
                match (catalog.table(&schema, &name), kind) {
                    (Some(_), OwnedKind::View) => {
                        return Err(super::ddl::not_a(&name, "view", "ALTER TABLE"));
                    }
                    (Some(table), _) => Securable::Table(table.id),
                    (None, _) if catalog.view(&schema, &name).is_some() => {
                        Securable::View(schema, name)
                    }
                    (None, _) if if_exists => return Ok(Output::Command(CommandTag::new(tag))),
                    (None, _) => {
                        return Err(user_error(
                            SqlState::UNDEFINED_TABLE,
                            format!("relation \"{name}\" does not exist"),
                        ));
                    }
                }
            }
        };
        if catalog.role(&owner).is_none() {
            return Err(user_error(
                SqlState::UNDEFINED_OBJECT,
                format!("role \"{owner}\" does not exist"),
            ));
        }
        self.write_ddl(Command::SetOwner {
            object: securable,
            owner,
        })
        .await?;
        Ok(Output::Command(CommandTag::new(tag)))
    }

    /// The objects a GRANT or REVOKE names.
    async fn securables(&self, objects: Option<&GrantObjects>) -> Result<(Vec<Securable>, bool)> {
        let catalog = self.ddl_catalog().await?;
        let relation = |name: &ObjectName| -> Result<Securable> {
            let (schema, name) = self.resolve(name)?;
            if let Some(table) = catalog.table(&schema, &name) {
                return Ok(Securable::Table(table.id));
            }
            if catalog.view(&schema, &name).is_some() {
                return Ok(Securable::View(schema, name));
            }
            Err(user_error(
                SqlState::UNDEFINED_TABLE,
                format!("relation \"{name}\" does not exist"),
            ))
        };
        let schema_of = |name: &ObjectName| -> Result<String> {
            let name = object_parts(name).join(".");
            if !catalog.schemas.contains_key(&name) {
                return Err(user_error(
                    SqlState::INVALID_SCHEMA_NAME,
                    format!("schema \"{name}\" does not exist"),
                ));
            }
            Ok(name)
        };
        Ok(match objects {
            Some(GrantObjects::Tables(names)) | Some(GrantObjects::Views(names)) => {
                (names.iter().map(relation).collect::<Result<_>>()?, false)
            }
            Some(GrantObjects::Schemas(names)) => (
                names
                    .iter()
                    .map(|n| schema_of(n).map(Securable::Schema))
                    .collect::<Result<_>>()?,
                true,
            ),
            Some(GrantObjects::AllTablesInSchema { schemas }) => {
                let mut out = Vec::new();
                for schema in schemas {
                    let schema = schema_of(schema)?;
                    // PostgreSQL's ALL TABLES IN SCHEMA includes views.
                    out.extend(catalog.tables_in(&schema).map(|t| Securable::Table(t.id)));
                    out.extend(
                        catalog
                            .views_in(&schema)
                            .map(|v| Securable::View(v.schema.clone(), v.name.clone())),
                    );
                }
                (out, false)
            }
            Some(other) => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("GRANT ON {other} is not supported"),
                ));
            }
            None => {
                return Err(user_error(SqlState::SYNTAX_ERROR, "GRANT needs ON objects"));
            }
        })
    }

    pub(super) async fn grant(&mut self, grant: Grant) -> Result<Output> {
        if grant.with_grant_option {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "WITH GRANT OPTION is not supported: owners and superusers grant",
            ));
        }
        let (objects, schema) = self.securables(grant.objects.as_ref()).await?;
        let privileges = privileges_of(&grant.privileges, schema)?;
        let grantees = grantee_names(&grant.grantees)?;
        self.write_ddl(Command::SetPrivileges {
            objects,
            grantees,
            privileges,
            granted: true,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("GRANT")))
    }

    pub(super) async fn revoke(&mut self, revoke: Revoke) -> Result<Output> {
        let (objects, schema) = self.securables(revoke.objects.as_ref()).await?;
        let privileges = privileges_of(&revoke.privileges, schema)?;
        let grantees = grantee_names(&revoke.grantees)?;
        self.write_ddl(Command::SetPrivileges {
            objects,
            grantees,
            privileges,
            granted: false,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("REVOKE")))
    }

    /// GRANT role, ... TO member, ... (`granted`) or REVOKE ... FROM.
    pub(super) async fn grant_roles(
        &mut self,
        roles: &[Ident],
        members: &[Ident],
        granted: bool,
    ) -> Result<Output> {
        let mut commands = Vec::new();
        for role in roles {
            for member in members {
                commands.push(Command::SetMembership {
                    role: normalize(role),
                    member: normalize(member),
                    granted,
                });
            }
        }
        self.write_ddl(Command::Batch(commands)).await?;
        Ok(Output::Command(CommandTag::new(if granted {
            "GRANT ROLE"
        } else {
            "REVOKE ROLE"
        })))
    }
}

impl Session {
    /// The session's role, for statements that act for a role only.
    fn own_role(&self, what: &str) -> Result<quarry_common::roles::RoleId> {
        self.user().role.ok_or_else(|| {
            user_error(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "{what} needs a session logged in as a role (\"{}\" is none)",
                    self.user().name
                ),
            )
        })
    }

    pub(super) async fn create_access_token(
        &mut self,
        name: &Ident,
        valid_until: Option<&Expr>,
    ) -> Result<Output> {
        use base64::Engine as _;
        let role = self.own_role("CREATE ACCESS TOKEN")?;
        let valid_until = match valid_until {
            Some(expr) => self.valid_until(expr).await?,
            None => None,
        };
        let id: [u8; 8] = rand::random();
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let secret: [u8; crate::credentials::TOKEN_SECRET_BYTES] = rand::random();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let token = format!("{}{id}_{secret}", crate::credentials::TOKEN_PREFIX);
        self.write_ddl(Command::CreateToken {
            token: quarry_common::roles::AccessToken {
                id,
                name: normalize(name),
                role,
                secret_sha256: crate::credentials::token_secret_sha256(&secret),
                created_at: quarry_raft::now_micros(),
                valid_until,
            },
        })
        .await?;
        super::settings::text_rows("token", vec![token])
    }

    pub(super) async fn drop_access_token(
        &mut self,
        name: &Ident,
        if_exists: bool,
    ) -> Result<Output> {
        let role = self.own_role("DROP ACCESS TOKEN")?;
        self.write_ddl(Command::DropToken {
            role,
            name: normalize(name),
            if_exists,
        })
        .await?;
        Ok(Output::Command(CommandTag::new("DROP ACCESS TOKEN")))
    }
}
