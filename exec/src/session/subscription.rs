//! `CREATE | ALTER | DROP SUBSCRIPTION` (PostgreSQL's statements of a
//! logical replication subscriber): the subscription in the Raft catalog
//! (`quarry_common::subscription`); the Raft leader's applier
//! (`quarry_node::subscription`) copies and streams.

use super::*;
use crate::source::SourceConfig;
use quarry_common::subscription::Subscription;

/// `conninfo` without its password, and the password.
fn split_password(conninfo: &str) -> Result<(String, Option<String>)> {
    let bad = |why: String| user_error(SqlState::SYNTAX_ERROR, why);
    let pairs = crate::source::conninfo_pairs(conninfo).map_err(bad)?;
    let password = pairs
        .iter()
        .find(|(key, _)| key == "password")
        .map(|(_, value)| value.clone());
    let rest: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "password").collect();
    let rest = crate::source::conninfo_text(&rest);
    // What the applier connects with must parse (sslmode too).
    SourceConfig::parse(&rest, password.as_deref()).map_err(bad)?;
    Ok((rest, password))
}

/// A boolean option's value (`true`, `false`, `on`, `off`, `1`, `0`).
fn boolean_option(name: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(user_error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("{name} requires a Boolean value"),
        )),
    }
}

impl Session {
    /// 42501 unless the session's role is a superuser (PostgreSQL 16 also
    /// lets members of pg_create_subscription create them).
    async fn require_superuser(&self, what: &str) -> Result<()> {
        // Checked against the catalog this statement reads.
        self.begin_statement().await?;
        if self.access().await?.is_superuser() {
            return Ok(());
        }
        Err(user_error(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!("must be superuser to {what}"),
        ))
    }

    /// CREATE SUBSCRIPTION: the subscription, enabled unless `enabled =
    /// false`; the leader's applier makes the slot and copies.
    ///
    /// # Errors
    /// 42501 for a role that is not a superuser; 42601 for a bad connection
    /// string; 22023 for an unknown or bad option; 42710 for a name in use.
    pub(super) async fn create_subscription(
        &mut self,
        name: &Ident,
        connection: &str,
        publications: &[Ident],
        options: &[(String, String)],
    ) -> Result<Output> {
        self.require_superuser("create subscriptions").await?;
        let name = normalize(name);
        let (connection, password) = split_password(connection)?;
        let mut subscription = Subscription::new(
            &name,
            &self.user().name,
            connection,
            password,
            publications.iter().map(|p| p.value.clone()).collect(),
        );
        for (option, value) in options {
            match option.as_str() {
                "copy_data" => subscription.copy_data = boolean_option(option, value)?,
                "create_slot" => subscription.create_slot = boolean_option(option, value)?,
                "enabled" => subscription.enabled = boolean_option(option, value)?,
                "slot_name" => subscription.slot_name = value.clone(),
                other => {
                    return Err(user_error(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("unrecognized subscription parameter: \"{other}\""),
                    ));
                }
            }
        }
        self.engine
            .meta
            .write(Command::CreateSubscription(subscription))
            .await?;
        Ok(Output::Command(CommandTag::new("CREATE SUBSCRIPTION")))
    }

    /// ALTER SUBSCRIPTION ... ENABLE | DISABLE | CONNECTION | REFRESH
    /// PUBLICATION [WITH (copy_data = ...)]: a refresh is done by the
    /// subscription's applier, which copies the tables added to the
    /// publications (as of a snapshot of its own) and applies their later
    /// changes.
    ///
    /// # Errors
    /// 42501 for a role that is not a superuser; 42704 for an unknown
    /// subscription; 55000 for a refresh of a disabled subscription (as
    /// PostgreSQL); 22023 for an unknown or bad option.
    pub(super) async fn alter_subscription(
        &mut self,
        name: &Ident,
        enabled: Option<bool>,
        connection: Option<&str>,
        refresh: Option<&[(String, String)]>,
    ) -> Result<Output> {
        self.require_superuser("alter subscriptions").await?;
        let name = normalize(name);
        let connection = connection.map(split_password).transpose()?;
        let refresh = match refresh {
            None => None,
            Some(options) => {
                let mut copy_data = true;
                for (option, value) in options {
                    match option.as_str() {
                        "copy_data" => copy_data = boolean_option(option, value)?,
                        other => {
                            return Err(user_error(
                                SqlState::INVALID_PARAMETER_VALUE,
                                format!("unrecognized subscription parameter: \"{other}\""),
                            ));
                        }
                    }
                }
                let catalog = self.engine.meta.read().await?;
                match catalog.subscriptions.get(&name) {
                    Some(subscription) if !subscription.enabled => {
                        return Err(user_error(
                            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                            "ALTER SUBSCRIPTION ... REFRESH is not allowed for disabled subscriptions",
                        ));
                    }
                    _ => Some(copy_data),
                }
            }
        };
        self.engine
            .meta
            .write(Command::AlterSubscription {
                name,
                enabled,
                connection,
                refresh,
            })
            .await?;
        Ok(Output::Command(CommandTag::new("ALTER SUBSCRIPTION")))
    }

    /// DROP SUBSCRIPTION: disables it (its applier stops within a second),
    /// drops its slot on the source, then the subscription. A source that
    /// cannot be reached leaves its slot, with a warning naming it (as
    /// PostgreSQL's `slot_name = NONE` does).
    pub(super) async fn drop_subscription(
        &mut self,
        name: &Ident,
        if_exists: bool,
    ) -> Result<Output> {
        self.require_superuser("drop subscriptions").await?;
        let name = normalize(name);
        let catalog = self.engine.meta.read().await?;
        let Some(subscription) = catalog.subscriptions.get(&name).cloned() else {
            if if_exists {
                return Ok(Output::Command(CommandTag::new("DROP SUBSCRIPTION")));
            }
            return Err(quarry_raft::CatalogError::SubscriptionNotFound(name).into());
        };
        self.engine
            .meta
            .write(Command::AlterSubscription {
                name: name.clone(),
                enabled: Some(false),
                connection: None,
                refresh: None,
            })
            .await?;
        // Made by the subscription or not, as PostgreSQL's DROP SUBSCRIPTION.
        if let Err(e) = drop_slot(&subscription).await {
            self.notices.push(Notice {
                message: format!(
                    "could not drop replication slot \"{}\" on the publisher: {e}",
                    subscription.slot_name
                ),
                detail: Some("drop it there by hand (pg_drop_replication_slot)".to_owned()),
            });
        }
        self.engine
            .meta
            .write(Command::DropSubscription {
                name,
                if_exists: true,
            })
            .await?;
        Ok(Output::Command(CommandTag::new("DROP SUBSCRIPTION")))
    }
}

/// Drops `subscription`'s slot on its source once no applier holds it
/// (waiting up to ten seconds for the disabled applier to let go).
async fn drop_slot(subscription: &Subscription) -> std::result::Result<(), String> {
    let client = SourceConfig::parse(&subscription.connection, subscription.password.as_deref())?
        .connect("quarry drop subscription")
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&subscription.slot_name],
            )
            .await
            .map_err(|e| e.to_string())?;
        match row {
            None => return Ok(()),
            Some(row) if !row.get::<_, bool>(0) => {
                client
                    .execute(
                        "SELECT pg_drop_replication_slot($1)",
                        &[&subscription.slot_name],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Some(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Some(_) => return Err("the slot is still in use".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_taken_out_of_the_connection_string() {
        let (rest, password) =
            split_password("host=127.0.0.1 port=5432 password='it\\'s' dbname = shop")
                .expect("parses");
        assert_eq!(password.as_deref(), Some("it's"));
        assert!(!rest.contains("password"), "{rest}");
        let (rest, password) = split_password("host=h password='a b\\\\c' user=u").expect("parses");
        assert_eq!(password.as_deref(), Some("a b\\c"));
        assert_eq!(rest, "host='h' user='u'");
        assert!(split_password("host").is_err());
        assert!(split_password("host='unterminated").is_err());
        assert!(split_password("host=h sslmode=sometimes").is_err());
    }
}
