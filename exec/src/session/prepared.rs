//! Prepared statements: SQL's PREPARE / EXECUTE / DEALLOCATE, and
//! DEALLOCATE [PREPARE] { name | ALL } of statements prepared with the
//! extended protocol's Parse message (psycopg and others prepare by name
//! and deallocate with SQL). Both kinds share one namespace, as in
//! PostgreSQL.
//!
//! Protocol statements live in the connection's portal store; the session
//! knows their names, as the connection reports each Parse and Close, so
//! DEALLOCATE can refuse an unknown name (26000) as PostgreSQL does. The
//! names it removed wait in `deallocated` until the connection takes them
//! and drops those statements. SQL-prepared statements live here.

use super::*;
use std::collections::BTreeSet;

/// The named statements a connection has prepared.
#[derive(Debug, Default)]
pub(super) struct PreparedNames {
    /// Prepared by the protocol.
    names: BTreeSet<String>,
    deallocated: Vec<String>,
    /// Prepared by SQL's PREPARE.
    sql: BTreeMap<String, SqlPrepared>,
}

/// A statement SQL's PREPARE prepared.
#[derive(Clone, Debug)]
struct SqlPrepared {
    statement: Statement,
    /// The parameter types PREPARE declared (arguments are cast to them).
    declared: Vec<ast::DataType>,
    /// The parameter types planning inferred, where it did.
    planned: Vec<Option<DataType>>,
}

impl Session {
    /// A Parse message prepared statement `name` (not the unnamed one).
    pub fn statement_prepared(&mut self, name: &str) {
        self.prepared.names.insert(name.to_owned());
    }

    /// A Close message closed statement `name`.
    pub fn statement_closed(&mut self, name: &str) {
        self.prepared.names.remove(name);
    }

    /// The statements DEALLOCATE dropped since the last call, for the
    /// connection to remove from its portal store.
    pub fn take_deallocated(&mut self) -> Vec<String> {
        std::mem::take(&mut self.prepared.deallocated)
    }

    pub(super) fn deallocate(&mut self, name: &Ident) -> Result<Output> {
        if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
            let all = std::mem::take(&mut self.prepared.names);
            self.prepared.deallocated.extend(all);
            self.prepared.sql.clear();
            return Ok(Output::Command(CommandTag::new("DEALLOCATE ALL")));
        }
        let name = normalize(name);
        if self.prepared.sql.remove(&name).is_some() {
            return Ok(Output::Command(CommandTag::new("DEALLOCATE")));
        }
        if !self.prepared.names.remove(&name) {
            return Err(user_error(
                SqlState::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{name}\" does not exist"),
            ));
        }
        self.prepared.deallocated.push(name);
        Ok(Output::Command(CommandTag::new("DEALLOCATE")))
    }

    /// PREPARE name [(types)] AS statement: plans the statement once (so an
    /// error in it is PREPARE's, as in PostgreSQL) and keeps it by name.
    pub(super) async fn prepare(
        &mut self,
        name: &Ident,
        declared: Vec<ast::DataType>,
        statement: Statement,
    ) -> Result<Output> {
        let name = normalize(name);
        if self.prepared.names.contains(&name) || self.prepared.sql.contains_key(&name) {
            return Err(user_error(
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" already exists"),
            ));
        }
        let (planned, _) = self
            .describe(&QuarryStatement::Sql(statement.clone()))
            .await?;
        self.prepared.sql.insert(
            name,
            SqlPrepared {
                statement,
                declared,
                planned,
            },
        );
        Ok(Output::Command(CommandTag::new("PREPARE")))
    }

    /// EXECUTE name [(arguments)]: runs a statement PREPARE kept, its
    /// parameters bound to the arguments' values.
    pub(super) async fn execute_prepared(
        &mut self,
        name: &ObjectName,
        arguments: &[Expr],
    ) -> Result<Output> {
        let name = object_parts(name).join(".");
        let prepared = self.prepared.sql.get(&name).cloned().ok_or_else(|| {
            user_error(
                SqlState::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{name}\" does not exist"),
            )
        })?;
        let expected = prepared.declared.len().max(prepared.planned.len());
        if arguments.len() != expected {
            return Err(user_error(
                SqlState::SYNTAX_ERROR,
                format!(
                    "wrong number of parameters for prepared statement \"{name}\": expected \
                     {expected}, got {}",
                    arguments.len()
                ),
            ));
        }
        let mut values = Vec::with_capacity(arguments.len());
        for (i, argument) in arguments.iter().enumerate() {
            let value = match prepared.declared.get(i) {
                Some(declared) => self.eval_constant(argument, declared).await?,
                None => {
                    let value = self.eval(argument.clone()).await?;
                    match prepared.planned.get(i) {
                        Some(Some(planned)) if value.data_type() != *planned => {
                            value.cast_to(planned).map_err(|e| {
                                user_error(
                                    SqlState::INVALID_TEXT_REPRESENTATION,
                                    format!(
                                        "parameter ${} does not convert to {planned}: {e}",
                                        i + 1
                                    ),
                                )
                            })?
                        }
                        _ => value,
                    }
                }
            };
            values.push(value.into());
        }
        Box::pin(self.execute_statement(prepared.statement, Some(ParamValues::List(values)))).await
    }
}
