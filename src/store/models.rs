//! Rows as they are stored. Hashes and ciphertexts stay inside these types; the admin API maps
//! them to its own answer types, which have no field for either.

use diesel::prelude::*;

use super::schema::{api_keys, rules, runtime_tokens, secrets, tenants};
use crate::crypto::Sealed;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An API key without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub key_hash: Vec<u8>,
    pub created_at: i64,
}

impl NewApiKey {
    /// A fresh key for a tenant: the row to store (its hash only) and the key to show once.
    pub fn generate(tenant_id: &str, name: Option<String>) -> (Self, secrecy::SecretString) {
        use secrecy::ExposeSecret;
        let key = crate::crypto::generate_token(crate::crypto::TokenKind::ApiKey);
        let row = Self {
            id: crate::crypto::new_id("key"),
            tenant_id: tenant_id.to_owned(),
            name,
            key_hash: crate::crypto::hash_token(key.expose_secret()).to_vec(),
            created_at: super::now_millis(),
        };
        (row, key)
    }
}

/// A secret with its sealed value. `Debug` shows only the ciphertext's length.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = secrets)]
pub struct SecretRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub cache_ttl_secs: i64,
    pub version: i64,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretRow {
    /// The sealed value, as the crypto module takes it.
    pub fn sealed(&self) -> Sealed {
        Sealed {
            key_id: self.key_id.clone(),
            nonce: self.nonce.clone(),
            ciphertext: self.ciphertext.clone(),
        }
    }
}

/// What an update changes; `None` leaves a column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = secrets)]
pub struct SecretChanges {
    /// `Some(None)` clears the display name.
    pub display_name: Option<Option<String>>,
    pub cache_ttl_secs: Option<i64>,
    pub version: Option<i64>,
    pub key_id: Option<String>,
    pub nonce: Option<Vec<u8>>,
    pub ciphertext: Option<Vec<u8>>,
    pub updated_at: Option<i64>,
}

impl SecretChanges {
    /// Sets a new sealed value at `version`.
    pub fn with_sealed(mut self, sealed: Sealed, version: i64) -> Self {
        self.version = Some(version);
        self.key_id = Some(sealed.key_id);
        self.nonce = Some(sealed.nonce);
        self.ciphertext = Some(sealed.ciphertext);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = rules)]
// NULL for `None` (the columns' default anyway): lets SQLite take many rows in one statement.
#[diesel(treat_none_as_default_value = false)]
pub struct RuleRow {
    pub id: String,
    pub tenant_id: String,
    pub runtime: String,
    pub host_pattern: String,
    pub path_pattern: Option<String>,
    pub credential: String,
    pub header: Option<String>,
    pub param: Option<String>,
    pub value_template: String,
    pub created_at: i64,
}

/// A runtime token without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = runtime_tokens)]
pub struct RuntimeTokenRow {
    pub id: String,
    pub tenant_id: String,
    pub runtime: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = runtime_tokens)]
pub struct NewRuntimeToken {
    pub id: String,
    pub tenant_id: String,
    pub runtime: String,
    pub token_hash: Vec<u8>,
    pub created_at: i64,
}

impl RuleRow {
    /// The row that stores a rule. The target's columns come from its one spelling
    /// ([`TargetFields`](crate::rules::TargetFields)).
    pub fn from_rule(rule: &crate::rules::Rule, created_at: i64) -> Self {
        let spec = &rule.spec;
        let target = spec.target.to_fields();
        Self {
            id: rule.id.clone(),
            tenant_id: rule.tenant_id.clone(),
            runtime: spec.runtime.clone(),
            host_pattern: spec.host.to_string(),
            path_pattern: spec.path.as_ref().map(|p| p.as_str().to_owned()),
            credential: spec.credential.clone(),
            header: target.header,
            param: target.param,
            value_template: spec.template.clone(),
            created_at,
        }
    }

    /// The rule a row stores, validated again as the API validates it: a row that no longer
    /// passes (written by an older version, or edited by hand) is an error, never applied.
    pub fn to_rule(&self) -> Result<crate::rules::Rule, crate::rules::FieldError> {
        use crate::rules::{DraftFields, RuleDraft, RuleSpec, TargetFields};
        let draft = RuleDraft {
            runtime: &self.runtime,
            host: &self.host_pattern,
            path: self.path_pattern.as_deref(),
            credential: &self.credential,
            target: TargetFields {
                header: self.header.clone(),
                param: self.param.clone(),
            },
            value: Some(&self.value_template),
        };
        Ok(crate::rules::Rule {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            spec: RuleSpec::from_draft(&draft, &DraftFields::BATCH)?,
        })
    }
}
