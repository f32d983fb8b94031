//! What a write changed, as one type: handed to this process's engine with the write's result
//! (`Committed`), announced to the other replicas in the write's own transaction (PostgreSQL
//! `NOTIFY`, delivered at commit, so an announcement never precedes the data it names and a
//! committed change is never left unannounced), and read back from them (`ChangeFeed`, the
//! `LISTEN` side).
//!
//! The payload format (`Change::encode` / `Change::decode`, the only two places that know it):
//! `<replica> <what>`, where `<what>` is one of
//! - `rules created <tenant id> <rule id>...`: read those rules and add them;
//! - `rules deleted <tenant id>/<runtime> <rule id>...`;
//! - `tokens <token id>...`: runtime tokens created or revoked; read them;
//! - `tenants`: re-read the tenants;
//! - `secret <tenant id>/<name>`: a secret's value changed or it was deleted;
//! - `rules`: everything (a full reload);
//! - from the previous version, still read: `rules identities` (tenants and every token) and
//!   `rules runtimes <tenant id>/<runtime>...` (re-read those runtimes' rules).
//!
//! An unknown `rules ...` payload is read as a full reload, so a later kind of rule change is
//! never missed; any other unknown payload is ignored (the periodic reload catches up). Ids,
//! tenant ids and runtime names hold no space or `/`. One payload holds at most
//! `MAX_PAYLOAD` bytes; a bigger change is announced in several.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};

use super::RuleRow;

/// The PostgreSQL channel replicas announce changes on.
pub const CHANGES_CHANNEL: &str = "runta_changes";

/// PostgreSQL refuses payloads of 8,000 bytes or more; this leaves room for the replica id.
const MAX_PAYLOAD: usize = 7_000;

/// What a write through the admin API changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Rules, anywhere: the snapshot is rebuilt from the store.
    Rules,
    /// Rules created in one tenant: the rows themselves (made here) or their ids (announced
    /// by another replica, which reads them).
    RulesCreated { tenant_id: String, rules: Created },
    /// Rules of one runtime deleted.
    RulesDeleted {
        tenant_id: String,
        runtime: String,
        ids: Vec<String>,
    },
    /// These runtimes' rules are re-read (the previous version's announcement).
    Runtimes(Vec<(String, String)>),
    /// Runtime tokens created or revoked, by id: re-read.
    Tokens(Vec<String>),
    /// A tenant was created: the tenants are re-read.
    Tenants,
    /// Tenants and every runtime token are re-read (the previous version's announcement).
    Identities,
    /// A secret's value changed or it was deleted: its cached value is dropped.
    Secret { tenant_id: String, name: String },
}

/// The rules a `RulesCreated` change carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Rows(Vec<RuleRow>),
    Ids(Vec<String>),
}

impl Created {
    pub fn ids(&self) -> Vec<&str> {
        match self {
            Self::Rows(rows) => rows.iter().map(|r| r.id.as_str()).collect(),
            Self::Ids(ids) => ids.iter().map(String::as_str).collect(),
        }
    }
}

impl Change {
    /// The notification payloads announcing this change (several when it is big).
    pub fn encode(&self, replica: &str) -> Vec<String> {
        let listed = |head: String, items: &[&str]| {
            let mut payloads = Vec::new();
            let mut payload = head.clone();
            for item in items {
                if payload.len() + 1 + item.len() > MAX_PAYLOAD && payload.len() > head.len() {
                    payloads.push(std::mem::replace(&mut payload, head.clone()));
                }
                payload.push(' ');
                payload.push_str(item);
            }
            payloads.push(payload);
            payloads
        };
        match self {
            Self::Rules => vec![format!("{replica} rules")],
            Self::RulesCreated { tenant_id, rules } => {
                listed(format!("{replica} rules created {tenant_id}"), &rules.ids())
            }
            Self::RulesDeleted {
                tenant_id,
                runtime,
                ids,
            } => listed(
                format!("{replica} rules deleted {tenant_id}/{runtime}"),
                &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            Self::Runtimes(runtimes) => {
                let pairs: Vec<String> = runtimes.iter().map(|(t, r)| format!("{t}/{r}")).collect();
                listed(
                    format!("{replica} rules runtimes"),
                    &pairs.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            }
            Self::Tokens(ids) => listed(
                format!("{replica} tokens"),
                &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            Self::Tenants => vec![format!("{replica} tenants")],
            Self::Identities => vec![format!("{replica} rules identities")],
            Self::Secret { tenant_id, name } => {
                vec![format!("{replica} secret {tenant_id}/{name}")]
            }
        }
    }

    /// A payload's replica and change; `None` for a payload this version does not know.
    pub fn decode(payload: &str) -> Option<(&str, Self)> {
        let (replica, rest) = payload.split_once(' ')?;
        let mut words = rest.split(' ');
        let owned = |words: std::str::Split<'_, char>| words.map(str::to_owned).collect::<Vec<_>>();
        let pair = |text: &str| {
            text.split_once('/')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        };
        let change = match words.next()? {
            "rules" => match words.next() {
                None => Self::Rules,
                Some("created") => Self::RulesCreated {
                    tenant_id: words.next()?.to_owned(),
                    rules: Created::Ids(owned(words)),
                },
                Some("deleted") => {
                    let (tenant_id, runtime) = pair(words.next()?)?;
                    Self::RulesDeleted {
                        tenant_id,
                        runtime,
                        ids: owned(words),
                    }
                }
                Some("identities") => Self::Identities,
                Some("runtimes") => Self::Runtimes(words.map(pair).collect::<Option<_>>()?),
                // A kind of rule change this version does not know: reload them all.
                Some(_) => Self::Rules,
            },
            "tokens" => Self::Tokens(owned(words)),
            "tenants" => Self::Tenants,
            "secret" => {
                let (tenant_id, name) = pair(words.next()?)?;
                Self::Secret { tenant_id, name }
            }
            _ => return None,
        };
        Some((replica, change))
    }
}

/// A write's result and the change it made, which must reach the engine (`Engine::applied`):
/// the only way to the result, so no handler can forget to apply its change.
#[must_use = "a committed change must be applied (Engine::applied) before the result is used"]
#[derive(Debug)]
pub struct Committed<T> {
    value: T,
    change: Change,
}

impl<T> Committed<T> {
    pub(crate) fn new(value: T, change: Change) -> Self {
        Self { value, change }
    }

    /// The result and the change (for the engine).
    pub fn into_parts(self) -> (T, Change) {
        (self.value, self.change)
    }
}

/// An audited write (`audited_write!`) whose body answers `(value, Change)`: the change is
/// announced in the transaction (PostgreSQL `NOTIFY`, delivered when and only if it commits;
/// SQLite has one replica and nobody to tell), and the write answers `Committed<value>`.
macro_rules! changed_write {
    ($store:expr, $entry:expr, $conn:ident => $body:expr) => {{
        let replica = $store.replica.clone();
        $crate::store::audit::audited_write!(@announcing $store, $entry, $conn => {
            let made: Result<(_, $crate::store::Change), $crate::store::StoreError> = async { $body }.await;
            let (value, change) = made?;
            // SQLite has one replica and nobody to tell: nothing to encode.
            let payloads = match $store.kind() {
                $crate::store::BackendKind::Postgres => change.encode(&replica),
                $crate::store::BackendKind::Sqlite => Vec::new(),
            };
            Ok(((value, change), payloads))
        })
        .map(|(value, change)| $crate::store::Committed::new(value, change))
    }};
}
pub(crate) use changed_write;

/// What following the other replicas' announcements yields.
#[derive(Debug)]
pub enum Followed {
    /// (Re)connected and listening: whatever was announced before is unknown, so catch up.
    Connected,
    /// The connection failed; reconnecting.
    Lost(String),
    /// Another replica's change.
    Change(Change),
}

/// The `LISTEN` side, on a dedicated connection outside the pool: reconnects with backoff,
/// skips this replica's own announcements, and reads each payload with `Change::decode`.
pub struct ChangeFeed {
    url: SecretString,
    replica: std::sync::Arc<str>,
    backoff: Duration,
    connection: Option<AsyncPgConnection>,
}

impl ChangeFeed {
    pub(crate) fn new(url: SecretString, replica: std::sync::Arc<str>) -> Self {
        Self {
            url,
            replica,
            backoff: Duration::from_millis(250),
            connection: None,
        }
    }

    /// The next event; waits (reconnecting as needed) until there is one.
    pub async fn next(&mut self) -> Followed {
        loop {
            let Some(conn) = &mut self.connection else {
                match self.connect().await {
                    Ok(conn) => {
                        self.connection = Some(conn);
                        self.backoff = Duration::from_millis(250);
                        return Followed::Connected;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot follow change notifications; retrying");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            };
            let next = std::pin::pin!(conn.notifications_stream()).next().await;
            match next {
                Some(Ok(notification)) => match Change::decode(&notification.payload) {
                    Some((replica, _)) if replica == &*self.replica => {}
                    Some((_, change)) => return Followed::Change(change),
                    None => {
                        tracing::debug!(payload = %notification.payload, "ignoring an unknown change notification")
                    }
                },
                Some(Err(err)) => {
                    self.connection = None;
                    return Followed::Lost(err.to_string());
                }
                None => {
                    self.connection = None;
                    return Followed::Lost("the connection ended".into());
                }
            }
        }
    }

    async fn connect(&self) -> Result<AsyncPgConnection, String> {
        use diesel_async::RunQueryDsl;
        let mut conn = super::tls::establish(self.url.expose_secret())
            .await
            .map_err(|e| e.to_string())?;
        diesel::sql_query(format!("LISTEN {CHANGES_CHANNEL}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_encode_and_decode_in_one_place() {
        for change in [
            Change::Rules,
            Change::RulesCreated {
                tenant_id: "ten_1".into(),
                rules: Created::Ids(vec!["rule_a".into(), "rule_b".into()]),
            },
            Change::RulesDeleted {
                tenant_id: "ten_1".into(),
                runtime: "a.b-c_d".into(),
                ids: vec!["rule_a".into()],
            },
            Change::Runtimes(vec![
                ("ten_1".into(), "worker".into()),
                ("ten_2".into(), "a.b-c_d".into()),
            ]),
            Change::Tokens(vec!["rtk_1".into(), "rtk_2".into()]),
            Change::Tenants,
            Change::Identities,
            Change::Secret {
                tenant_id: "ten_1".into(),
                name: "openai-api-key".into(),
            },
        ] {
            let payloads = change.encode("replica_a");
            assert_eq!(payloads.len(), 1);
            assert_eq!(Change::decode(&payloads[0]), Some(("replica_a", change)));
        }
        for unknown in [
            "",
            "r",
            "r widgets",
            "r secret no-slash",
            "r rules deleted no-slash",
        ] {
            assert_eq!(Change::decode(unknown), None, "{unknown:?}");
        }
        // A later kind of rule change is read as a full reload, never ignored.
        assert_eq!(
            Change::decode("r rules renamed x"),
            Some(("r", Change::Rules))
        );
    }

    #[test]
    fn a_big_change_is_announced_in_payloads_postgresql_accepts() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("rule_{i:026}")).collect();
        let change = Change::RulesCreated {
            tenant_id: "ten_1".into(),
            rules: Created::Ids(ids.clone()),
        };
        let payloads = change.encode("replica_0123456789abcdefghjkmnpqrs");
        assert!(payloads.len() > 1);
        let mut decoded = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8_000, "{}", payload.len());
            match Change::decode(payload) {
                Some((
                    _,
                    Change::RulesCreated {
                        tenant_id,
                        rules: Created::Ids(part),
                    },
                )) => {
                    assert_eq!(tenant_id, "ten_1");
                    decoded.extend(part);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(decoded, ids);
    }
}
