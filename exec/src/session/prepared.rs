//! DEALLOCATE [PREPARE] { name | ALL }: drops statements prepared with the
//! extended protocol's Parse message (PostgreSQL's prepared statements,
//! which psycopg and others prepare by name and deallocate with SQL).
//!
//! The statements themselves live in the connection's portal store; the
//! session knows their names, as the connection reports each Parse and
//! Close, so DEALLOCATE can refuse an unknown name (26000) as PostgreSQL
//! does. The names it removed wait in `deallocated` until the connection
//! takes them and drops those statements.

use super::*;
use std::collections::BTreeSet;

/// The named statements a connection has prepared.
#[derive(Debug, Default)]
pub(super) struct PreparedNames {
    names: BTreeSet<String>,
    deallocated: Vec<String>,
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
            return Ok(Output::Command(CommandTag::new("DEALLOCATE ALL")));
        }
        let name = normalize(name);
        if !self.prepared.names.remove(&name) {
            return Err(user_error(
                SqlState::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{name}\" does not exist"),
            ));
        }
        self.prepared.deallocated.push(name);
        Ok(Output::Command(CommandTag::new("DEALLOCATE")))
    }
}
