//! Names of tenants, runtimes and secrets: 1–63 characters of lowercase letters, digits, `-`,
//! `_` and `.`, starting with a letter or digit. They appear in URLs, gRPC metadata and log
//! lines, so the alphabet is deliberately small.

/// Checks a name; the error says what is wrong with it (the caller adds which field).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("must be at most 63 characters, got {}", name.len()));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "'{}' must start with a lowercase letter or a digit",
            name.escape_default()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "'{}' may only hold lowercase letters, digits, '-', '_' and '.' (found '{}')",
            name.escape_default(),
            bad.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["worker", "openai-api-key", "a", "0.x_y-z", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Worker", "-x", ".x", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
