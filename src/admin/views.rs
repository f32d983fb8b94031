//! What the admin API answers with: the contract of its JSON, shared by the server (which
//! serialises them) and the CLI (which reads the answers back into them), so a renamed field
//! breaks the build on both sides rather than the CLI's output at run time.
//!
//! No type here has a field that could hold a secret value, a ciphertext or a token hash: rows
//! are mapped into them, never serialised directly. The `Created*` answers carry a new API key
//! or runtime token, the one time it is shown, and derive no `Debug` that could print it.

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::rules::TargetFields;
use crate::store::{
    ApiKeyRow, AuditEventRow, Paged, RuleRow, RuntimeTokenRow, SecretRow, TenantRow,
};

/// RFC 3339 in UTC with milliseconds, from stored Unix milliseconds.
pub fn timestamp(millis: i64) -> String {
    DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A page of a list: `{data: [...], next_cursor}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn from_page<R>(page: Paged<R>, view: impl Fn(R) -> T) -> Self {
        Self {
            data: page.items.into_iter().map(view).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            created_at: timestamp(row.created_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: Option<String>,
    pub created_at: String,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            created_at: timestamp(row.created_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub cache_ttl_secs: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SecretRow> for Secret {
    fn from(row: SecretRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            display_name: row.display_name,
            cache_ttl_secs: row.cache_ttl_secs,
            version: row.version,
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub runtime: String,
    pub host_pattern: String,
    pub path_pattern: Option<String>,
    pub injection: Injection,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injection {
    pub credential: String,
    /// `header` and `param`, exactly one of them set.
    #[serde(flatten)]
    pub target: TargetFields,
    pub value: String,
}

impl From<RuleRow> for Rule {
    fn from(row: RuleRow) -> Self {
        Self {
            id: row.id,
            runtime: row.runtime,
            host_pattern: row.host_pattern,
            path_pattern: row.path_pattern,
            injection: Injection {
                credential: row.credential,
                target: TargetFields {
                    header: row.header,
                    param: row.param,
                },
                value: row.value_template,
            },
            created_at: timestamp(row.created_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeToken {
    pub id: String,
    pub runtime: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<RuntimeTokenRow> for RuntimeToken {
    fn from(row: RuntimeTokenRow) -> Self {
        Self {
            id: row.id,
            runtime: row.runtime,
            created_at: timestamp(row.created_at),
            revoked_at: row.revoked_at.map(timestamp),
        }
    }
}

/// One event of the audit trail (`GET /v1/audit-events`, and each line of the JSON-lines
/// stream): who did what to what, when, for which request, how it ended, and its place in
/// the hash chain. Never a value or a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub seq: i64,
    pub time: String,
    /// `null` for a change of no tenant (a key rotation).
    pub tenant_id: Option<String>,
    /// `key_…` (an API key), `operator`, `cli` or `server`.
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEventRow> for AuditEvent {
    fn from(row: AuditEventRow) -> Self {
        Self {
            id: row.id,
            seq: row.seq,
            time: timestamp(row.occurred_at),
            tenant_id: row.tenant_id,
            actor: row.actor,
            action: row.action,
            target_kind: row.target_kind,
            target_id: row.target_id,
            target_name: row.target_name,
            request_id: row.request_id,
            outcome: row.outcome,
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

/// A new tenant and its first API key (`POST /v1/tenants`).
#[derive(Serialize, Deserialize)]
pub struct CreatedTenant {
    pub tenant: Tenant,
    /// The key itself: shown this once.
    pub api_key: String,
}

/// A new API key (`POST /v1/api-keys`): its metadata and the key.
#[derive(Serialize, Deserialize)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key itself: shown this once.
    pub key: String,
}

/// A new runtime token (`POST /v1/runtimes/{runtime}/tokens`): its metadata and the token.
#[derive(Serialize, Deserialize)]
pub struct CreatedRuntimeToken {
    #[serde(flatten)]
    pub runtime_token: RuntimeToken,
    /// The token itself: shown this once.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    /// The JSON a view serialises to reads back into the same view, field for field.
    fn round_trip<T: Serialize + DeserializeOwned>(view: &T) -> (Value, Value) {
        let sent = serde_json::to_value(view).unwrap();
        let read: T = serde_json::from_value(sent.clone()).unwrap();
        (sent, serde_json::to_value(read).unwrap())
    }

    #[test]
    fn views_read_back_what_they_write() {
        let rule = Rule::from(RuleRow {
            id: "rule_1".into(),
            tenant_id: "ten_1".into(),
            runtime: "worker".into(),
            host_pattern: "api.example.com".into(),
            path_pattern: None,
            credential: "cred".into(),
            header: None,
            param: Some("key".into()),
            value_template: "${credential}".into(),
            created_at: 0,
        });
        let (sent, read) = round_trip(&rule);
        assert_eq!(sent, read);
        assert_eq!(
            sent["injection"],
            json!({"credential": "cred", "header": null, "param": "key", "value": "${credential}"}),
            "the target's fields sit beside the credential"
        );
        let token = RuntimeToken {
            id: "rtk_1".into(),
            runtime: "worker".into(),
            created_at: timestamp(0),
            revoked_at: None,
        };
        let (sent, read) = round_trip(&CreatedRuntimeToken {
            runtime_token: token,
            token: "runta_rt_x".into(),
        });
        assert_eq!(sent, read);
        assert_eq!(sent["token"], "runta_rt_x");
        assert_eq!(sent["id"], "rtk_1", "the token's fields are flattened");
        let key = ApiKey {
            id: "key_1".into(),
            name: None,
            created_at: timestamp(0),
        };
        let (sent, read) = round_trip(&CreatedApiKey {
            api_key: key,
            key: "runta_ak_x".into(),
        });
        assert_eq!(sent, read);
        assert_eq!(sent["id"], "key_1");
        let tenant = Tenant {
            id: "ten_1".into(),
            name: "acme".into(),
            created_at: timestamp(0),
        };
        let (sent, read) = round_trip(&CreatedTenant {
            tenant,
            api_key: "runta_ak_y".into(),
        });
        assert_eq!(sent, read);
        let list = List {
            data: vec![rule],
            next_cursor: Some("c".into()),
        };
        let (sent, read) = round_trip(&list);
        assert_eq!(sent, read);
    }
}
