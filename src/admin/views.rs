//! What the admin API answers with. These types have no field that could hold a secret value,
//! a ciphertext or a token hash: rows are mapped into them, never serialised directly.

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use crate::rules::TargetFields;
use crate::store::{ApiKeyRow, Paged, RuleRow, RuntimeTokenRow, SecretRow, TenantRow};

/// RFC 3339 in UTC with milliseconds, from stored Unix milliseconds.
pub fn timestamp(millis: i64) -> String {
    DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A page of a list: `{data: [...], next_cursor}`.
#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct Rule {
    pub id: String,
    pub runtime: String,
    pub host_pattern: String,
    pub path_pattern: Option<String>,
    pub injection: Injection,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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
