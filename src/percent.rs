//! Percent-encoding (RFC 3986), in one place for everyone: the query rewrite of parameter
//! injection, path normalisation, and the CLI's URL path segments.
//!
//! Encoding keeps exactly the unreserved characters (`A-Z a-z 0-9 - . _ ~`) and escapes every
//! other byte with upper-case hex digits. Decoding is lenient: a `%` not followed by two hex
//! digits stays a literal `%` (callers that must refuse those check with [`hex_pair`]).

use std::borrow::Cow;

/// RFC 3986's unreserved characters: never escaped, and their escapes mean the same.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `value` percent-encoded.
pub fn encode_into(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if is_unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', hex_digit(b >> 4), hex_digit(b & 15)]);
        }
    }
}

/// `text` percent-encoded.
pub fn encode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    encode_into(&mut out, text.as_bytes());
    String::from_utf8(out).expect("percent-encoding is ASCII")
}

/// `raw` with its escapes decoded; borrowed when it holds none.
pub fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(v) = hex_pair(&raw[i + 1..])
        {
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(raw[i]);
            i += 1;
        }
    }
    Cow::Owned(decoded)
}

/// The byte two hex digits at the start of `bytes` stand for.
pub fn hex_pair(bytes: &[u8]) -> Option<u8> {
    let high = char::from(*bytes.first()?).to_digit(16)?;
    let low = char::from(*bytes.get(1)?).to_digit(16)?;
    Some((high * 16 + low) as u8)
}

/// The upper-case hex digit of a nibble.
pub fn hex_digit(nibble: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(nibble & 15)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(encode("a b&c=d/é~-._"), "a%20b%26c%3Dd%2F%C3%A9~-._");
    }

    #[test]
    fn decodes_leniently() {
        assert_eq!(&*decode(b"k%65y"), b"key");
        assert_eq!(&*decode(b"100%"), b"100%");
        assert_eq!(&*decode(b"%zz%4"), b"%zz%4");
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn round_trip() {
        for text in ["", "x", "a b", "%", "ünï/cödé?&=#"] {
            assert_eq!(&*decode(encode(text).as_bytes()), text.as_bytes(), "{text}");
        }
    }
}
