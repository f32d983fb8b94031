//! The destination of a request as matching sees it: host (lowercase, no port), effective
//! port, and the path without its query, normalised the way rule patterns are (dot segments
//! removed, `//` merged, unreserved percent-escapes decoded). A path holding an encoded `/` or
//! `\` is flagged: it never matches a rule that has a path pattern.
//!
//! Normalisation allocates only when the path needs changing.

use std::borrow::Cow;

use crate::percent;

/// A request's destination, ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    /// Lowercase host name without port or trailing dot (IPv6 literals keep their brackets).
    pub host: Cow<'a, str>,
    /// The explicit port, else the scheme's default (80 for http, 443 for https).
    pub port: Option<u16>,
    /// The normalised path, without query.
    pub path: Cow<'a, str>,
    /// The path held `%2F` or `%5C`: no path pattern may match it.
    pub encoded_separator: bool,
    /// The authority was `host[:port]` as Envoy reads it: a DNS name or IP literal, and a
    /// port of digits only. Anything else (userinfo, a signed or named port, stray
    /// characters) matches no rule, so a name runta reads one way and Envoy another can never
    /// receive a credential.
    pub well_formed: bool,
}

impl<'a> Destination<'a> {
    /// Builds the destination from `:authority` (or `host`), `:scheme` and `:path`.
    pub fn parse(authority: &'a str, scheme: &str, raw_path: &'a str) -> Self {
        let (host, port, well_formed) = split_authority(authority);
        let port = port.or(match scheme {
            s if s.eq_ignore_ascii_case("https") => Some(443),
            s if s.eq_ignore_ascii_case("http") => Some(80),
            _ => None,
        });
        let host = host.strip_suffix('.').unwrap_or(host);
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let without_query = raw_path.split(['?', '#']).next().unwrap_or("");
        let (path, encoded_separator) = normalise_path(without_query);
        Self {
            host,
            port,
            path,
            encoded_separator,
            well_formed,
        }
    }
}

/// Splits `host[:port]`: the host, the port, and whether both are well formed.
fn split_authority(authority: &str) -> (&str, Option<u16>, bool) {
    let (host, port_text) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let rest = &authority[end + 1..];
                match rest.strip_prefix(':') {
                    Some(port) => (&authority[..=end], Some(port)),
                    None if rest.is_empty() => (&authority[..=end], None),
                    None => return (authority, None, false),
                }
            }
            None => return (authority, None, false),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => {
            !literal.is_empty()
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    let port = match port_text {
        None => Ok(None),
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().map(Some).map_err(|_| ())
        }
        Some(_) => Err(()),
    };
    match port {
        Ok(port) => (host, port, host_ok),
        Err(()) => (host, None, false),
    }
}

/// Normalises a path (no query). Answers the path and whether it held an encoded separator.
pub fn normalise_path(path: &str) -> (Cow<'_, str>, bool) {
    // One pass over the bytes: is anything to decode, merge or remove? (Five substring
    // searches here were a fifth of `decide`'s instructions in a profile.)
    let bytes = path.as_bytes();
    let needs_work = !path.starts_with('/')
        || bytes.iter().enumerate().any(|(i, &b)| {
            b == b'%' || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/') | Some(b'.')))
        });
    if !needs_work {
        return (Cow::Borrowed(path), false);
    }
    let (mut decoded, encoded_separator) =
        normalise_escapes(path, BadEscape::Keep).expect("kept, not rejected");
    if !decoded.starts_with('/') {
        decoded.insert(0, '/');
    }
    // Remove dot segments and merge slashes (RFC 3986 5.2.4, with empty segments dropped).
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    (Cow::Owned(out), encoded_separator)
}

/// What to do with a `%` that is not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEscape {
    /// Read it as a literal `%`, which the normal form writes `%25` (a request path: Envoy
    /// forwards it as it is).
    Keep,
    /// Refuse the text (a rule's pattern).
    Reject,
}

/// A `%` not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidEscape;

impl std::fmt::Display for InvalidEscape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("'%' must be followed by two hex digits")
    }
}

/// Percent-escapes in normal form (RFC 3986 section 6.2.2): escapes of unreserved characters
/// decoded, the others kept with upper-case hex digits. Answers the text and whether it held
/// an encoded `/` or `\`; `Err` only for a bad escape under `BadEscape::Reject`. Rule patterns
/// and request paths both go through here, so they cannot disagree on the normal form.
pub fn normalise_escapes(text: &str, bad: BadEscape) -> Result<(String, bool), InvalidEscape> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 1);
    let mut encoded_separator = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match percent::hex_pair(&bytes[i + 1..]) {
                Some(value) => {
                    encoded_separator |= value == b'/' || value == b'\\';
                    if percent::is_unreserved(value) {
                        out.push(value as char);
                    } else {
                        out.push('%');
                        out.push(char::from(percent::hex_digit(value >> 4)));
                        out.push(char::from(percent::hex_digit(value & 15)));
                    }
                    i += 3;
                    continue;
                }
                None if bad == BadEscape::Reject => return Err(InvalidEscape),
                // A literal `%`, in its escaped form: kept bare, it could start an escape with
                // what decoding brings next to it (`%%36A` would become `%6A`, then `j`), and
                // the normal form would not be one.
                None => {
                    out.push_str("%25");
                    i += 1;
                    continue;
                }
            }
        }
        // Everything else is kept as it is (the text is valid UTF-8).
        let ch_len = utf8_len(bytes[i]);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    Ok((out, encoded_separator))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        for (input, want, encoded) in [
            ("/v1/chat", "/v1/chat", false),
            ("/v1//chat", "/v1/chat", false),
            ("/v1/./chat", "/v1/chat", false),
            ("/v1/x/../chat", "/v1/chat", false),
            ("/../../v1", "/v1", false),
            ("/v1/", "/v1/", false),
            ("/v1/x/..", "/v1/", false),
            ("/%76%31/chat", "/v1/chat", false),
            ("/v1/%2e%2e/admin", "/admin", false),
            ("/a%2fb", "/a%2Fb", true),
            ("/a%5Cb", "/a%5Cb", true),
            ("/a%20b", "/a%20b", false),
            // A `%` that starts no escape is a literal one, written as its escape.
            ("/a%zz", "/a%25zz", false),
            ("/%%36A", "/%256A", false),
            ("/a%", "/a%25", false),
            ("", "/", false),
            ("/", "/", false),
        ] {
            let (path, flag) = normalise_path(input);
            assert_eq!((path.as_ref(), flag), (want, encoded), "{input}");
        }
    }

    #[test]
    fn destinations() {
        let d = Destination::parse("API.OpenAI.com", "https", "/v1/x?key=1");
        assert_eq!(
            (d.host.as_ref(), d.port, d.path.as_ref()),
            ("api.openai.com", Some(443), "/v1/x")
        );
        let d = Destination::parse("api.example.com:8443", "http", "/");
        assert_eq!((d.host.as_ref(), d.port), ("api.example.com", Some(8443)));
        let d = Destination::parse("api.example.com.", "http", "/");
        assert_eq!((d.host.as_ref(), d.port), ("api.example.com", Some(80)));
        let d = Destination::parse("[::1]:8080", "http", "/");
        assert_eq!((d.host.as_ref(), d.port), ("[::1]", Some(8080)));
    }
}
