//! Roles as PostgreSQL's catalogs and functions show them: `pg_roles`,
//! `pg_user`, `pg_auth_members`, `current_user` / `session_user`,
//! `has_table_privilege`, `has_schema_privilege` and `pg_has_role`
//! (<https://www.postgresql.org/docs/current/functions-info.html>), answered
//! from the session's catalog and its role. Passwords show as `********`,
//! as in PostgreSQL's pg_roles.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::DFSchema;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use quarry_common::SqlState;
use quarry_common::catalog::Catalog;
use quarry_common::roles::{Privileges, Role, RoleId, Securable};

use crate::catalog::QuarryCatalog;
use crate::error::user_error;
use crate::pg_catalog::{id_oid, namespace_oid, table_oid};
use crate::privileges::SessionUser;

/// The oid of role `id` (roles take ids from the catalog's one sequence).
pub fn role_oid(id: RoleId) -> i32 {
    id_oid(id)
}

fn role_rows(meta: &Catalog) -> Vec<&Arc<Role>> {
    meta.roles.values().collect()
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// `pg_roles` (and `pg_user`, `pg_auth_members`) of `meta`; None for another
/// name.
pub fn table(meta: &Catalog, name: &str) -> Option<DfResult<Arc<dyn TableProvider>>> {
    let roles = role_rows(meta);
    let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let flag = |f: fn(&Role) -> bool| {
        Arc::new(BooleanArray::from(
            roles.iter().map(|r| Some(f(r))).collect::<Vec<_>>(),
        )) as ArrayRef
    };
    let oids = |v: Vec<i32>| Arc::new(datafusion::arrow::array::Int32Array::from(v)) as ArrayRef;
    let password = || {
        text(
            roles
                .iter()
                .map(|r| r.password.as_ref().map(|_| "********".to_owned()))
                .collect(),
        )
    };
    let valid_until = || -> ArrayRef {
        Arc::new(
            datafusion::arrow::array::TimestampMicrosecondArray::from(
                roles.iter().map(|r| r.valid_until).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let no = || flag(|_| false);
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match name {
        "pg_roles" => (
            vec![
                Field::new("rolname", DataType::Utf8, false),
                Field::new("rolsuper", DataType::Boolean, false),
                Field::new("rolinherit", DataType::Boolean, false),
                Field::new("rolcreaterole", DataType::Boolean, false),
                Field::new("rolcreatedb", DataType::Boolean, false),
                Field::new("rolcanlogin", DataType::Boolean, false),
                Field::new("rolreplication", DataType::Boolean, false),
                Field::new("rolconnlimit", DataType::Int32, false),
                Field::new("rolpassword", DataType::Utf8, true),
                Field::new("rolvaliduntil", timestamp_type(), true),
                Field::new("rolbypassrls", DataType::Boolean, false),
                Field::new("rolconfig", DataType::Utf8, true),
                Field::new("oid", DataType::Int32, false),
            ],
            vec![
                text(roles.iter().map(|r| Some(r.name.clone())).collect()),
                flag(|r| r.superuser),
                flag(|r| r.inherit),
                flag(|r| r.create_role),
                flag(|r| r.superuser),
                flag(|r| r.login),
                no(),
                oids(vec![-1; roles.len()]),
                password(),
                valid_until(),
                no(),
                text(vec![None; roles.len()]),
                oids(roles.iter().map(|r| role_oid(r.id)).collect()),
            ],
        ),
        "pg_user" => {
            let logins: Vec<&Arc<Role>> = roles.iter().copied().filter(|r| r.login).collect();
            let flag = |f: fn(&Role) -> bool| {
                Arc::new(BooleanArray::from(
                    logins.iter().map(|r| Some(f(r))).collect::<Vec<_>>(),
                )) as ArrayRef
            };
            (
                vec![
                    Field::new("usename", DataType::Utf8, false),
                    Field::new("usesysid", DataType::Int32, false),
                    Field::new("usecreatedb", DataType::Boolean, false),
                    Field::new("usesuper", DataType::Boolean, false),
                    Field::new("userepl", DataType::Boolean, false),
                    Field::new("usebypassrls", DataType::Boolean, false),
                    Field::new("passwd", DataType::Utf8, true),
                    Field::new("valuntil", timestamp_type(), true),
                    Field::new("useconfig", DataType::Utf8, true),
                ],
                vec![
                    text(logins.iter().map(|r| Some(r.name.clone())).collect()),
                    oids(logins.iter().map(|r| role_oid(r.id)).collect()),
                    flag(|r| r.superuser),
                    flag(|r| r.superuser),
                    flag(|_| false),
                    flag(|_| false),
                    text(
                        logins
                            .iter()
                            .map(|r| r.password.as_ref().map(|_| "********".to_owned()))
                            .collect(),
                    ),
                    Arc::new(
                        datafusion::arrow::array::TimestampMicrosecondArray::from(
                            logins.iter().map(|r| r.valid_until).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    text(vec![None; logins.len()]),
                ],
            )
        }
        "pg_auth_members" => {
            let pairs: Vec<(RoleId, RoleId)> = roles
                .iter()
                .flat_map(|r| r.member_of.iter().map(move |g| (*g, r.id)))
                .collect();
            let grantor = meta.bootstrap_superuser().map_or(10, role_oid);
            let flags = |v: bool| Arc::new(BooleanArray::from(vec![v; pairs.len()])) as ArrayRef;
            (
                vec![
                    Field::new("oid", DataType::Int32, false),
                    Field::new("roleid", DataType::Int32, false),
                    Field::new("member", DataType::Int32, false),
                    Field::new("grantor", DataType::Int32, false),
                    Field::new("admin_option", DataType::Boolean, false),
                    Field::new("inherit_option", DataType::Boolean, false),
                    Field::new("set_option", DataType::Boolean, false),
                ],
                vec![
                    oids(
                        pairs
                            .iter()
                            .map(|(g, m)| {
                                crate::pg_catalog::named_oid(&g.to_string(), &m.to_string())
                            })
                            .collect(),
                    ),
                    oids(pairs.iter().map(|(g, _)| role_oid(*g)).collect()),
                    oids(pairs.iter().map(|(_, m)| role_oid(*m)).collect()),
                    oids(vec![grantor; pairs.len()]),
                    flags(false),
                    Arc::new(BooleanArray::from(
                        pairs
                            .iter()
                            .map(|(_, m)| Some(meta.role_by_id(*m).is_some_and(|r| r.inherit)))
                            .collect::<Vec<_>>(),
                    )) as ArrayRef,
                    flags(true),
                ],
            )
        }
        // Quarry has no row security policies: PostgreSQL's columns, no
        // rows, as an empty relation the optimizer removes, with whatever
        // subquery reads it (psql's \dp looks each policy's roles up by
        // `oid = ANY (polroles)`, a correlation DataFusion cannot decorrelate).
        "pg_policy" => {
            let schema = Schema::new(vec![
                Field::new("oid", DataType::Int32, false),
                Field::new("polname", DataType::Utf8, false),
                Field::new("polrelid", DataType::Int32, false),
                Field::new("polcmd", DataType::Utf8, false),
                Field::new("polpermissive", DataType::Boolean, false),
                Field::new("polroles", DataType::new_list(DataType::Int32, true), false),
                Field::new("polqual", DataType::Utf8, true),
                Field::new("polwithcheck", DataType::Utf8, true),
            ]);
            let empty = DFSchema::try_from(schema).map(|schema| {
                Arc::new(ViewTable::new(
                    LogicalPlan::EmptyRelation(EmptyRelation {
                        produce_one_row: false,
                        schema: Arc::new(schema),
                    }),
                    None,
                )) as Arc<dyn TableProvider>
            });
            return Some(empty);
        }
        _ => return None,
    };
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Some(
        datafusion::arrow::array::RecordBatch::try_new(schema.clone(), columns)
            .map_err(DataFusionError::from)
            .and_then(|batch| MemTable::try_new(schema, vec![vec![batch]]))
            .map(|table| Arc::new(table) as Arc<dyn TableProvider>),
    )
}

/// Registers the session's identity functions and privilege functions for
/// `user` on `ctx`, whose catalog is `catalog`.
pub fn register(ctx: &SessionContext, catalog: &Arc<QuarryCatalog>, user: &SessionUser) {
    for name in ["current_user", "session_user", "current_role"] {
        ctx.register_udf(ScalarUDF::new_from_impl(Identity {
            name,
            user: user.name.clone(),
            signature: Signature::exact(vec![], Volatility::Stable),
        }));
    }
    let names = catalog.clone();
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_get_userbyid",
        vec![DataType::Int32],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = datafusion::common::cast::as_int32_array(&arrays[0])?;
            let view = names.view();
            let meta = &view.catalog;
            let out: StringArray = oids
                .iter()
                .map(|oid| {
                    let oid = oid?;
                    let role = meta.roles.values().find(|r| role_oid(r.id) == oid);
                    Some(match role {
                        Some(role) => role.name.clone(),
                        // PostgreSQL's bootstrap superuser (owner of what
                        // predates roles).
                        None if oid == 10 => meta
                            .role(quarry_common::roles::BOOTSTRAP_SUPERUSER)
                            .map_or_else(|| "postgres".to_owned(), |r| r.name.clone()),
                        None => format!("unknown (OID={oid})"),
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
    for (name, kind) in [
        ("has_table_privilege", Kind::Table),
        ("has_schema_privilege", Kind::Schema),
        ("pg_has_role", Kind::Role),
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(HasPrivilege {
            name,
            kind,
            catalog: catalog.clone(),
            role: user.role,
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
}

/// `current_user`, `session_user`, `current_role`: the session's user.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Identity {
    name: &'static str,
    user: String,
    signature: Signature,
}

impl ScalarUDFImpl for Identity {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.user.clone(),
        ))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Table,
    Schema,
    Role,
}

/// `has_table_privilege([user,] table, privilege)` and its schema and role
/// siblings: true when the role holds any of the comma-separated privileges.
struct HasPrivilege {
    name: &'static str,
    kind: Kind,
    catalog: Arc<QuarryCatalog>,
    role: Option<RoleId>,
    signature: Signature,
}

impl std::fmt::Debug for HasPrivilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HasPrivilege")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for HasPrivilege {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.role == other.role
            && Arc::ptr_eq(&self.catalog, &other.catalog)
    }
}

impl Eq for HasPrivilege {}

impl std::hash::Hash for HasPrivilege {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.role.hash(state);
    }
}

fn failed(state: SqlState, message: String) -> DataFusionError {
    DataFusionError::External(Box::new(user_error(state, message)))
}

/// A role named by name or by oid (as text).
fn role_of(meta: &Catalog, value: &str) -> DfResult<RoleId> {
    if let Some(role) = meta.role(value) {
        return Ok(role.id);
    }
    if let Ok(oid) = value.parse::<i32>()
        && let Some(role) = meta.roles.values().find(|r| role_oid(r.id) == oid)
    {
        return Ok(role.id);
    }
    Err(failed(
        SqlState::UNDEFINED_OBJECT,
        format!("role \"{value}\" does not exist"),
    ))
}

fn table_of(meta: &Catalog, value: &str, numeric: bool) -> DfResult<Option<Securable>> {
    if numeric && let Ok(oid) = value.parse::<i32>() {
        if let Some(t) = meta.tables.values().find(|t| table_oid(t.id) == oid) {
            return Ok(Some(Securable::Table(t.id)));
        }
        let view = meta
            .views
            .values()
            .find(|v| crate::pg_catalog::named_oid(&v.schema, &v.name) == oid);
        // PostgreSQL answers NULL for an oid that names nothing.
        return Ok(view.map(|v| Securable::View(v.schema.clone(), v.name.clone())));
    }
    let (schema, name) = match value.split_once('.') {
        Some((schema, name)) => (schema.to_owned(), name.to_owned()),
        None => (
            quarry_common::catalog::DEFAULT_SCHEMA.to_owned(),
            value.to_owned(),
        ),
    };
    let (schema, name) = (schema.trim_matches('"'), name.trim_matches('"'));
    if let Some(t) = meta.table(schema, name) {
        return Ok(Some(Securable::Table(t.id)));
    }
    if meta.view(schema, name).is_some() {
        return Ok(Some(Securable::View(schema.to_owned(), name.to_owned())));
    }
    // System relations are everyone's to read.
    if crate::pg_catalog::is_system_namespace(schema) {
        return Ok(None);
    }
    Err(failed(
        SqlState::UNDEFINED_TABLE,
        format!("relation \"{value}\" does not exist"),
    ))
}

fn privilege_list(text: &str, kind: Kind) -> DfResult<Vec<Privileges>> {
    text.split(',')
        .map(|p| {
            let p = p.trim().to_ascii_uppercase();
            let p = p.trim_end_matches(" WITH GRANT OPTION").trim();
            Ok(match (kind, p) {
                (Kind::Table, "SELECT") => Privileges::SELECT,
                (Kind::Table, "INSERT") => Privileges::INSERT,
                (Kind::Table, "UPDATE") => Privileges::UPDATE,
                (Kind::Table, "DELETE") => Privileges::DELETE,
                (Kind::Table, "TRUNCATE") => Privileges::TRUNCATE,
                // Quarry has no foreign-key checks, triggers or MAINTAIN: a
                // role has them with SELECT's footing, never more than none.
                (Kind::Table, "REFERENCES" | "TRIGGER" | "MAINTAIN") => Privileges::NONE,
                (Kind::Schema, "USAGE") => Privileges::USAGE,
                (Kind::Schema, "CREATE") => Privileges::CREATE,
                (Kind::Role, "MEMBER") => Privileges::SELECT,
                (Kind::Role, "USAGE") => Privileges::USAGE,
                (Kind::Role, "SET") => Privileges::SELECT,
                _ => {
                    return Err(failed(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("unrecognized privilege type: \"{p}\""),
                    ));
                }
            })
        })
        .collect()
}

impl HasPrivilege {
    fn answer(
        &self,
        meta: &Catalog,
        args: &[Option<String>],
        numeric: &[bool],
    ) -> DfResult<Option<bool>> {
        let (user, object, privilege) = match args {
            [object, privilege] => (None, object, privilege),
            [user, object, privilege] => (Some(user), object, privilege),
            _ => {
                return Err(failed(
                    SqlState::UNDEFINED_FUNCTION,
                    format!("function {} takes 2 or 3 arguments", self.name),
                ));
            }
        };
        let (Some(object), Some(privilege)) = (object, privilege) else {
            return Ok(None);
        };
        let role = match user {
            Some(Some(user)) => Some(role_of(meta, user)?),
            Some(None) => return Ok(None),
            None => self.role,
        };
        let wanted = privilege_list(privilege, self.kind)?;
        let Some(role) = role else {
            return Ok(Some(true));
        };
        let object_numeric = numeric[args.len() - 2];
        Ok(Some(match self.kind {
            Kind::Table => match table_of(meta, object, object_numeric)? {
                Some(object) => wanted
                    .iter()
                    .any(|p| !p.is_empty() && meta.has_privilege(role, &object, *p)),
                None => !object_numeric || wanted.contains(&Privileges::SELECT),
            },
            Kind::Schema => {
                let name = if object_numeric {
                    meta.schemas
                        .keys()
                        .find(|s| namespace_oid(meta, s).to_string() == *object)
                        .cloned()
                } else {
                    Some(object.clone())
                };
                match name {
                    Some(name) if meta.schemas.contains_key(&name) => wanted
                        .iter()
                        .any(|p| meta.has_privilege(role, &Securable::Schema(name.clone()), *p)),
                    Some(name) if crate::pg_catalog::is_system_namespace(&name) => {
                        wanted.contains(&Privileges::USAGE)
                    }
                    Some(name) => {
                        return Err(failed(
                            SqlState::INVALID_SCHEMA_NAME,
                            format!("schema \"{name}\" does not exist"),
                        ));
                    }
                    None => return Ok(None),
                }
            }
            Kind::Role => {
                let target = role_of(meta, object)?;
                meta.is_superuser(role)
                    || wanted.iter().any(|p| {
                        if *p == Privileges::USAGE {
                            meta.privilege_roles(role).contains(&target)
                        } else {
                            meta.member_closure(role).contains(&target)
                        }
                    })
            }
        }))
    }
}

impl ScalarUDFImpl for HasPrivilege {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let numeric: Vec<bool> = args
            .args
            .iter()
            .map(|a| a.data_type().is_integer())
            .collect();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays
            .iter()
            .map(|a| datafusion::arrow::compute::cast(a, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&StringArray> = texts
            .iter()
            .map(|a| datafusion::common::cast::as_string_array(a))
            .collect::<DfResult<_>>()?;
        let view = self.catalog.view();
        let mut out = Vec::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            let values: Vec<Option<String>> = texts
                .iter()
                .map(|a| a.is_valid(row).then(|| a.value(row).to_owned()))
                .collect();
            out.push(self.answer(&view.catalog, &values, &numeric)?);
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}
