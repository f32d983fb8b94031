//! What a rule injects, and where: a header or a query parameter, and the value template in
//! which `${credential}` stands for the secret's value. Everything Envoy would refuse, or that
//! would let a rule rewrite routing or proxy state, is rejected here, when the rule is created,
//! rather than failing on live traffic.

/// The only placeholder a template may hold.
pub const PLACEHOLDER: &str = "${credential}";

/// Where the value goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A request header, overwriting whatever the runtime sent.
    Header(String),
    /// A query parameter, replacing every occurrence.
    Param(String),
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

/// Checks a value template: printable text holding `${credential}` and no other `${...}`.
pub fn validate_template(template: &str) -> Result<(), String> {
    if template.len() > 4096 {
        return Err("must be at most 4096 bytes".into());
    }
    if let Some(c) = template.chars().find(|c| is_forbidden_control(*c)) {
        return Err(format!(
            "must not contain control characters (found '{}')",
            c.escape_default()
        ));
    }
    let mut rest = template;
    let mut placeholders = 0;
    while let Some(start) = rest.find("${") {
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "'{template}' has an unterminated placeholder; the only placeholder is {PLACEHOLDER}"
            ));
        };
        let placeholder = &after[..=end];
        if placeholder != PLACEHOLDER {
            return Err(format!(
                "unknown placeholder {placeholder}; the only placeholder is {PLACEHOLDER}"
            ));
        }
        placeholders += 1;
        rest = &after[end + 1..];
    }
    if placeholders == 0 {
        return Err(format!(
            "'{template}' does not use the secret: it must contain {PLACEHOLDER}"
        ));
    }
    Ok(())
}

/// Control characters that can never be part of a header field value (RFC 9110 section 5.5):
/// everything below space except horizontal tab, and DEL.
fn is_forbidden_control(c: char) -> bool {
    (c.is_ascii_control() && c != '\t') || c == '\u{7f}'
}

/// The largest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Checks a secret value before it is stored: it must be usable in a header, so CR, LF, NUL
/// and other control characters are refused. The message never quotes the value.
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!("must be at most {MAX_SECRET_BYTES} bytes"));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| is_forbidden_control(*c)) {
        let what = match c {
            '\r' => "CR".to_owned(),
            '\n' => "LF".to_owned(),
            '\0' => "NUL".to_owned(),
            c => format!("U+{:04X}", c as u32),
        };
        return Err(format!(
            "must not contain control characters such as CR, LF or NUL (found {what} at byte {at})"
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
    fn templates() {
        for ok in [
            "${credential}",
            "Bearer ${credential}",
            "${credential}:${credential}",
            "$ ${credential}",
        ] {
            assert!(validate_template(ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("Bearer ${token}", "unknown placeholder ${token}"),
            ("${credential} ${CREDENTIAL}", "unknown placeholder"),
            ("Bearer ${credential", "unterminated"),
            ("Bearer static", "must contain"),
            ("Bearer ${credential}\r\nX: y", "control"),
        ] {
            let err = validate_template(bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn secret_values_never_quoted() {
        assert!(validate_secret_value("sk-test\tx").is_ok());
        for (bad, what) in [
            ("sk-a\r\nb", "CR"),
            ("sk-a\nb", "LF"),
            ("sk-a\0b", "NUL"),
            ("", "empty"),
        ] {
            let err = validate_secret_value(bad).unwrap_err();
            assert!(err.contains(what), "{err}");
            assert!(!err.contains("sk-a"), "{err}");
        }
        assert!(validate_secret_value(&"x".repeat(MAX_SECRET_BYTES + 1)).is_err());
    }
}
