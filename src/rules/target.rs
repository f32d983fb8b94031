//! Where a rule's value goes: the injection target, one type end to end.
//!
//! The admin API, rule files, the stored columns and the answers all spell a target as a set
//! of optional fields (`header`, `param`) of which exactly one is set: [`TargetFields`] is that
//! spelling, converted to and from [`Target`] here and nowhere else. The ext_proc hot path uses
//! [`CompiledTarget`], the form that compares and applies cheaply.
//!
//! Adding a target kind: a variant of `Target` and `CompiledTarget`, a field of `TargetFields`
//! (and its column), its validation below, and how the ext_proc mutation applies it.

use serde::{Deserialize, Serialize};

use super::{DraftFields, FieldError};

/// Where the value goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A request header, overwriting whatever the runtime sent (name as the rule spells it).
    Header(String),
    /// A query parameter, replacing every occurrence.
    Param(String),
}

/// A target as the API, rule files and the database spell it: exactly one field set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFields {
    pub header: Option<String>,
    pub param: Option<String>,
}

impl Target {
    /// Validates a spelled-out target; errors name the fields as the caller sent them.
    pub fn from_fields(fields: &TargetFields, names: &DraftFields) -> Result<Self, FieldError> {
        match (&fields.header, &fields.param) {
            (Some(header), None) => {
                validate_header_name(header).map_err(|m| FieldError::new(names.header, m))?;
                Ok(Self::Header(header.clone()))
            }
            (None, Some(param)) => {
                validate_param_name(param).map_err(|m| FieldError::new(names.param, m))?;
                Ok(Self::Param(param.clone()))
            }
            (Some(_), Some(_)) => Err(FieldError::new(
                names.injection,
                "set exactly one of header and param, not both",
            )),
            (None, None) => Err(FieldError::new(
                names.injection,
                "set exactly one of header and param",
            )),
        }
    }

    /// The target spelled out.
    pub fn to_fields(&self) -> TargetFields {
        match self {
            Self::Header(name) => TargetFields {
                header: Some(name.clone()),
                param: None,
            },
            Self::Param(name) => TargetFields {
                header: None,
                param: Some(name.clone()),
            },
        }
    }
}

/// A target ready for the hot path. Two rules conflict exactly when their compiled targets are
/// equal, and the compiled form is what the mutation writes: header names lowercased once here
/// (HTTP/2 and Envoy's header maps are lowercase), parameter names as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompiledTarget {
    Header(Box<str>),
    Param(Box<str>),
}

impl From<&Target> for CompiledTarget {
    fn from(target: &Target) -> Self {
        match target {
            Target::Header(name) => Self::Header(name.to_ascii_lowercase().into()),
            Target::Param(name) => Self::Param(name.as_str().into()),
        }
    }
}

/// Headers a rule may never set: pseudo headers and routing (`:*`, `host`), framing and
/// hop-by-hop headers, the proxy's own credentials, and Envoy's internal headers.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Checks a header name: an RFC 9110 token that is not on the forbidden list.
pub fn validate_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 256 {
        return Err("must be at most 256 characters".into());
    }
    if name.starts_with(':') {
        return Err(format!(
            "'{name}' is a pseudo header; rules may not set pseudo headers"
        ));
    }
    if let Some(c) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(format!(
            "'{}' is not a valid header name: '{}' is not allowed (RFC 9110 token characters only)",
            name.escape_default(),
            c.escape_default()
        ));
    }
    let lower = name.to_ascii_lowercase();
    if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "'{name}' is a routing, framing or proxy header; rules may not set it"
        ));
    }
    if lower.starts_with("x-envoy-") {
        return Err(format!("'{name}': x-envoy-* headers belong to Envoy"));
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Checks a query parameter name: unreserved URL characters (and `[]`), so it never needs
/// encoding and never splits the query.
pub fn validate_param_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~[]".contains(*c)))
    {
        return Err(format!(
            "'{}' is not a valid query parameter name: '{}' is not allowed (letters, digits, '-', '.', '_', '~', '[' and ']')",
            name.escape_default(),
            c.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        for ok in ["Authorization", "x-api-key", "X-Custom_1", "api-key"] {
            assert!(validate_header_name(ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            (":path", "pseudo"),
            (":authority", "pseudo"),
            ("host", "routing"),
            ("Host", "routing"),
            ("content-length", "framing"),
            ("Proxy-Authorization", "proxy"),
            ("transfer-encoding", "framing"),
            ("connection", "framing"),
            ("x-envoy-original-path", "Envoy"),
            ("bad header", "not allowed"),
            ("bad:header", "not allowed"),
            ("", "empty"),
            ("x\r\ny", "not allowed"),
        ] {
            let err = validate_header_name(bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn param_names() {
        assert!(validate_param_name("api_key").is_ok());
        assert!(validate_param_name("key[]").is_ok());
        for bad in ["", "a&b", "a=b", "a b", "a%20", "a#"] {
            assert!(validate_param_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_round_trip_and_exactly_one_is_set() {
        let names = DraftFields::SINGLE;
        for target in [Target::Header("X-Key".into()), Target::Param("key".into())] {
            assert_eq!(
                Target::from_fields(&target.to_fields(), &names).unwrap(),
                target
            );
        }
        let both = TargetFields {
            header: Some("a".into()),
            param: Some("b".into()),
        };
        assert_eq!(
            Target::from_fields(&both, &names).unwrap_err().field,
            "injection"
        );
        assert_eq!(
            Target::from_fields(&TargetFields::default(), &names)
                .unwrap_err()
                .field,
            "injection"
        );
    }

    #[test]
    fn compiled_headers_compare_case_insensitively() {
        assert_eq!(
            CompiledTarget::from(&Target::Header("X-Key".into())),
            CompiledTarget::from(&Target::Header("x-key".into()))
        );
        assert_ne!(
            CompiledTarget::from(&Target::Param("Key".into())),
            CompiledTarget::from(&Target::Param("key".into()))
        );
    }
}
