//! What a rule injects: the value template in which `${credential}` stands for the secret's
//! value, and the checks on secret values themselves (they end up in headers). Where the value
//! goes is `target`. Everything Envoy would refuse is rejected here, when the rule or secret is
//! created, rather than failing on live traffic.

/// The only placeholder a template may hold.
pub const PLACEHOLDER: &str = "${credential}";

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

/// Characters a secret value may not hold: every control character but horizontal tab (C0,
/// DEL and the C1 range U+0080–U+009F), and the line and paragraph separators U+2028/U+2029.
/// Values are injected into headers and query strings, where these either break the message or
/// are read as line breaks by some parsers and log viewers.
fn is_forbidden_in_value(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Checks a secret value before it is stored: it must be usable in a header, so CR, LF, NUL
/// and other control characters (C0, DEL, C1) and U+2028/U+2029 are refused. The message never
/// quotes the value.
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!("must be at most {MAX_SECRET_BYTES} bytes"));
    }
    if let Some((at, c)) = value
        .char_indices()
        .find(|(_, c)| is_forbidden_in_value(*c))
    {
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
            ("sk-a\u{85}b", "U+0085"),
            ("sk-a\u{9f}b", "U+009F"),
            ("sk-a\u{2028}b", "U+2028"),
            ("sk-a\u{2029}b", "U+2029"),
            ("sk-a\u{7f}b", "U+007F"),
        ] {
            let err = validate_secret_value(bad).unwrap_err();
            assert!(err.contains(what), "{err}");
            assert!(!err.contains("sk-a"), "{err}");
        }
        assert!(validate_secret_value(&"x".repeat(MAX_SECRET_BYTES + 1)).is_err());
    }
}
