//! Injection rules: what a rule is once validated (`RuleSpec`), a stored rule (`Rule`), and the
//! parts they are made of (host and path patterns, injection target, value template). Every
//! check of the matching rules (README, "Matching rules") happens when a rule is built here; the
//! store only ever holds valid rules, and the snapshot is built from `Rule`s, not from rows.

pub mod injection;
pub mod pattern;
pub mod request;
pub mod snapshot;
pub mod target;

pub use injection::PLACEHOLDER;
pub use pattern::{HostName, HostPattern, PathPattern};
pub use target::{CompiledTarget, Target, TargetFields};

use crate::names::validate_name;

/// A validation failure: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error under a parent field (`rules[2]` + `host` = `rules[2].host`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A rule as submitted, before validation. Field names are those of the JSON the API takes.
#[derive(Debug, Clone, Default)]
pub struct RuleDraft<'a> {
    pub runtime: &'a str,
    pub host: &'a str,
    pub path: Option<&'a str>,
    pub credential: &'a str,
    pub target: TargetFields,
    pub value: Option<&'a str>,
}

/// Field names under which a draft's parts were submitted, so errors name what the caller sent.
pub struct DraftFields {
    pub runtime: &'static str,
    pub credential: &'static str,
    pub header: &'static str,
    pub param: &'static str,
    pub value: &'static str,
    pub injection: &'static str,
}

impl DraftFields {
    /// A single rule: `{host, path, injection: {credential, header, param, value}}`.
    pub const SINGLE: Self = Self {
        runtime: "runtime",
        credential: "injection.credential",
        header: "injection.header",
        param: "injection.param",
        value: "injection.value",
        injection: "injection",
    };

    /// A rule of a batch or rule file: `{runtime, host, path, credential, inject: {...}}`.
    pub const BATCH: Self = Self {
        runtime: "runtime",
        credential: "credential",
        header: "inject.header",
        param: "inject.param",
        value: "inject.value",
        injection: "inject",
    };
}

/// A valid rule, normalised, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub runtime: String,
    pub host: HostPattern,
    pub path: Option<PathPattern>,
    pub credential: String,
    pub target: Target,
    pub template: String,
}

impl RuleSpec {
    /// Validates a draft; the first problem found is reported with its field.
    pub fn from_draft(draft: &RuleDraft<'_>, fields: &DraftFields) -> Result<Self, FieldError> {
        validate_name(draft.runtime).map_err(|m| FieldError::new(fields.runtime, m))?;
        let host = HostPattern::parse(draft.host).map_err(|m| FieldError::new("host", m))?;
        let path = draft
            .path
            .map(PathPattern::parse)
            .transpose()
            .map_err(|m| FieldError::new("path", m))?;
        validate_name(draft.credential).map_err(|m| FieldError::new(fields.credential, m))?;
        let target = Target::from_fields(&draft.target, fields)?;
        let template = draft.value.unwrap_or(PLACEHOLDER);
        injection::validate_template(template).map_err(|m| FieldError::new(fields.value, m))?;
        Ok(Self {
            runtime: draft.runtime.to_owned(),
            host,
            path,
            credential: draft.credential.to_owned(),
            target,
            template: template.to_owned(),
        })
    }
}

/// A stored rule: its identity, its tenant, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub tenant_id: String,
    pub spec: RuleSpec,
}

/// A rule id's share of its runtime's digest: the first 8 bytes of SHA-256 over the id's
/// UTF-8 bytes, big-endian. A runtime's digest is the wrapping sum of its rules' shares, so
/// the store computes it with an aggregate (`store::rules`: SQL on PostgreSQL, a function of
/// ours on SQLite) and the snapshot from its ids, and the periodic safety net compares the two
/// instead of reading every rule. Rules never change once stored (an id is never reused), so
/// the ids alone say whether a runtime holds the store's rules.
pub fn rule_id_digest(id: &str) -> u64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(id.as_bytes());
    u64::from_be_bytes(hash[..8].try_into().expect("a SHA-256 hash has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: DraftFields = DraftFields::SINGLE;

    fn header(name: &str) -> TargetFields {
        TargetFields {
            header: Some(name.into()),
            param: None,
        }
    }

    fn draft() -> RuleDraft<'static> {
        RuleDraft {
            runtime: "worker",
            host: "https://api.openai.com",
            path: Some("/v1/*"),
            credential: "openai-api-key",
            target: header("Authorization"),
            value: Some("Bearer ${credential}"),
        }
    }

    #[test]
    fn the_seed_rule_is_valid_and_normalised() {
        let spec = RuleSpec::from_draft(&draft(), &FIELDS).unwrap();
        assert_eq!(spec.host.to_string(), "api.openai.com");
        assert_eq!(spec.path.unwrap().as_str(), "/v1/*");
        assert_eq!(spec.target, Target::Header("Authorization".into()));
    }

    #[test]
    fn value_defaults_to_the_placeholder() {
        let spec = RuleSpec::from_draft(
            &RuleDraft {
                value: None,
                ..draft()
            },
            &FIELDS,
        )
        .unwrap();
        assert_eq!(spec.template, "${credential}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                RuleDraft {
                    host: "*",
                    ..draft()
                },
                "host",
            ),
            (
                RuleDraft {
                    path: Some("v1"),
                    ..draft()
                },
                "path",
            ),
            (
                RuleDraft {
                    runtime: "Bad",
                    ..draft()
                },
                "runtime",
            ),
            (
                RuleDraft {
                    credential: "",
                    ..draft()
                },
                "injection.credential",
            ),
            (
                RuleDraft {
                    target: header("host"),
                    ..draft()
                },
                "injection.header",
            ),
            (
                RuleDraft {
                    target: TargetFields {
                        header: Some("Authorization".into()),
                        param: Some("k".into()),
                    },
                    ..draft()
                },
                "injection",
            ),
            (
                RuleDraft {
                    target: TargetFields::default(),
                    ..draft()
                },
                "injection",
            ),
            (
                RuleDraft {
                    target: TargetFields {
                        header: None,
                        param: Some("a&b".into()),
                    },
                    ..draft()
                },
                "injection.param",
            ),
            (
                RuleDraft {
                    value: Some("${x}"),
                    ..draft()
                },
                "injection.value",
            ),
        ];
        for (draft, field) in cases {
            let err = RuleSpec::from_draft(&draft, &FIELDS).unwrap_err();
            assert_eq!(err.field, field, "{draft:?}: {err}");
        }
    }
}
