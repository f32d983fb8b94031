//! Host and path patterns: parsed, validated and normalised once, when a rule is created, so
//! that what is stored is canonical and matching never meets a pattern it cannot handle.
//!
//! Host: exact (`api.openai.com`) or a leading wildcard (`*.example.com`: any name below
//! `example.com`, not `example.com` itself), case-insensitive, with an optional `:port`; the URL
//! form (`https://api.openai.com`) is accepted and reduced to the host (and port, if given).
//! Path: a glob on the path without its query in which `*` matches any run of characters
//! (`/` included) and everything else is literal; stored in the same normal form as request
//! paths are brought to before matching.

use std::fmt;
use std::net::Ipv6Addr;

use super::request::{BadEscape, normalise_escapes};

/// The name part of a host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    /// Matches this name exactly (lowercase).
    Exact(String),
    /// `*.example.com`: holds `example.com`; matches names ending in `.example.com`.
    Wildcard(String),
}

/// A validated, normalised host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub name: HostName,
    /// `None` matches every port.
    pub port: Option<u16>,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            HostName::Exact(name) => f.write_str(name)?,
            HostName::Wildcard(suffix) => write!(f, "*.{suffix}")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl HostPattern {
    /// Parses a host pattern or a URL naming one.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() {
            return Err("must not be empty".into());
        }
        if !input.is_ascii() {
            return Err(format!(
                "'{}' must be ASCII; write an internationalised name in its punycode (xn--) form",
                input.escape_default()
            ));
        }
        if let Some(c) = input
            .chars()
            .find(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(format!(
                "'{}' must not contain white space or control characters (found '{}')",
                input.escape_default(),
                c.escape_default()
            ));
        }
        let authority = strip_url(input)?;
        let lower = authority.to_ascii_lowercase();
        let (host, port) = split_port(&lower)?;
        let name = if let Some(suffix) = host.strip_prefix("*.") {
            validate_dns_name(suffix)?;
            if !suffix.contains('.') {
                return Err(format!(
                    "'{input}': a wildcard needs at least two labels after it, as in *.example.com"
                ));
            }
            HostName::Wildcard(suffix.to_owned())
        } else if host.contains('*') {
            return Err(format!(
                "'{input}': the only wildcard allowed is a leading '*.' (as in *.example.com)"
            ));
        } else if host.starts_with('[') {
            HostName::Exact(host.to_owned())
        } else {
            validate_dns_name(host)?;
            HostName::Exact(host.to_owned())
        };
        Ok(Self { name, port })
    }
}

/// Reduces `scheme://authority[/]` to the authority; anything that is not a host is refused.
fn strip_url(input: &str) -> Result<&str, String> {
    let Some((scheme, rest)) = input.split_once("://") else {
        if input.contains('/') {
            return Err(format!(
                "'{input}' is not a host: put the path in the rule's path, not in its host"
            ));
        }
        return Ok(input);
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "'{input}': only http:// and https:// URLs are accepted as a host"
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "'{input}': a URL given as host may not carry a path or query; put the path in the rule's path"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "'{input}': a URL given as host may not carry user information"
        ));
    }
    Ok(authority)
}

fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("'{authority}': unterminated IPv6 literal"))?;
        let literal = &rest[..end];
        literal
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("'{authority}': '{literal}' is not an IPv6 address"))?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("'{authority}': expected ':port' after the IPv6 literal")
            })?),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!(
                    "'{authority}': write an IPv6 address in brackets, as in [2001:db8::1]:443"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(text) => Some(
            text.parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && !text.starts_with('+'))
                .ok_or_else(|| {
                    format!("'{authority}': port '{text}' is not a number from 1 to 65535")
                })?,
        ),
    };
    Ok((host, port))
}

/// A DNS name (or IPv4 address): dot-separated labels of letters, digits, `-` and `_`.
fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the host name is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("'{name}' is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "'{name}' has an empty label (two dots, or a dot at an end)"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "'{name}': the label '{label}' is longer than 63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if c == '*' {
                format!(
                    "'{name}': the only wildcard allowed is a leading '*.' (as in *.example.com)"
                )
            } else {
                format!("'{name}': '{c}' is not allowed in a host name")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "'{name}': the label '{label}' starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

/// A validated path glob, in normal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern(String);

impl PathPattern {
    pub const MAX_LEN: usize = 1024;

    /// Parses and normalises a path pattern.
    pub fn parse(input: &str) -> Result<Self, String> {
        if !input.starts_with('/') {
            return Err(format!("'{}' must start with '/'", input.escape_default()));
        }
        if input.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} bytes", Self::MAX_LEN));
        }
        if let Some(c) = input.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "'{}' may only hold visible ASCII characters (found '{}'); percent-encode others",
                input.escape_default(),
                c.escape_default()
            ));
        }
        if input.contains(['?', '#']) {
            return Err(format!(
                "'{input}': a path pattern matches the path without its query; remove '?' and '#'"
            ));
        }
        if input.contains('\\') {
            return Err(format!("'{input}': '\\' is not allowed in a path"));
        }
        let (normal, encoded_separator) =
            normalise_escapes(input, BadEscape::Reject).map_err(|e| format!("'{input}': {e}"))?;
        if encoded_separator {
            return Err(format!(
                "'{input}': an encoded '/' or '\\' (%2F, %5C) never matches"
            ));
        }
        for segment in normal.split('/').skip(1) {
            if segment == "." || segment == ".." {
                return Err(format!(
                    "'{input}': '.' and '..' segments never match (request paths are normalised first)"
                ));
            }
        }
        if normal.contains("//") {
            return Err(format!(
                "'{input}': '//' never matches (request paths have repeated slashes merged)"
            ));
        }
        Ok(Self(normal))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_normalise() {
        for (input, want) in [
            ("api.openai.com", "api.openai.com"),
            ("API.OpenAI.com", "api.openai.com"),
            ("https://api.openai.com", "api.openai.com"),
            ("https://api.openai.com/", "api.openai.com"),
            ("HTTP://api.example.com:8443", "api.example.com:8443"),
            ("*.example.com", "*.example.com"),
            ("*.Example.com:443", "*.example.com:443"),
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("my_host.internal.example", "my_host.internal.example"),
        ] {
            assert_eq!(
                HostPattern::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn host_patterns_rejected_with_reason() {
        for (input, reason) in [
            ("*", "wildcard"),
            ("*.com", "two labels"),
            ("a.*.com", "leading '*.'"),
            ("api*.example.com", "leading '*.'"),
            ("**.example.com", "leading '*.'"),
            ("api .example.com", "white space"),
            (" api.example.com", "white space"),
            ("bücher.example", "punycode"),
            ("", "empty"),
            ("api.example.com:0", "port"),
            ("api.example.com:70000", "port"),
            ("api.example.com:x", "port"),
            ("api..example.com", "empty label"),
            ("-api.example.com", "'-'"),
            ("ftp://api.example.com", "http://"),
            ("https://api.example.com/v1", "path"),
            ("api.example.com/v1", "path"),
            ("https://user@api.example.com", "user"),
            ("a:b:c", "IPv6"),
            ("[zz]:1", "IPv6"),
        ] {
            let err = HostPattern::parse(input).unwrap_err();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn path_patterns_normalise() {
        for (input, want) in [
            ("/v1/*", "/v1/*"),
            ("/", "/"),
            ("/%7euser/%2a", "/~user/%2A"),
            ("/a%2db", "/a-b"),
            ("/*/x/*", "/*/x/*"),
        ] {
            assert_eq!(PathPattern::parse(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn path_patterns_rejected_with_reason() {
        for (input, reason) in [
            ("v1/*", "start with '/'"),
            ("", "start with '/'"),
            ("/v1 /x", "visible ASCII"),
            ("/v1/é", "visible ASCII"),
            ("/v1/*?x=1", "query"),
            ("/v1/../x", "'..'"),
            ("/v1/./x", "'..'"),
            ("/v1//x", "'//'"),
            ("/v1%2Fx", "encoded"),
            ("/v1%5cx", "encoded"),
            ("/v1\\x", "'\\'"),
            ("/v1/%zz", "hex"),
            ("/v1/%4", "hex"),
        ] {
            let err = PathPattern::parse(input).unwrap_err();
            assert!(err.contains(reason), "{input}: {err}");
        }
        assert!(PathPattern::parse(&format!("/{}", "a".repeat(1024))).is_err());
    }
}
