//! Building Envoy's answers: header mutations (written to `raw_value`, which is what Envoy
//! reads), the `:path` rewrite of parameter injection, and immediate responses.
//!
//! Parameter injection replaces the value of every occurrence of the parameter (appending it
//! when absent), percent-encodes the value, and leaves every other byte of the path and query
//! as it was.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, TrailersResponse, processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

use crate::percent;
use crate::rules::CompiledTarget;
use crate::rules::snapshot::Template;

/// Whether a raw query key names `param` (comparing the key percent-decoded, so `k%65y` is
/// `key`).
fn key_is(raw_key: &[u8], param: &str) -> bool {
    *percent::decode(raw_key) == *param.as_bytes()
}

/// The path with each `(param, value)` set in its query.
pub fn rewrite_query(raw_path: &str, params: &[(&str, &[u8])]) -> zeroize::Zeroizing<Vec<u8>> {
    let (path, query, fragment) = split_path(raw_path);
    let mut out = Vec::with_capacity(
        raw_path.len()
            + params
                .iter()
                .map(|(k, v)| k.len() + v.len() * 3 + 2)
                .sum::<usize>(),
    );
    out.extend_from_slice(path.as_bytes());
    let mut present = vec![false; params.len()];
    let mut first = true;
    if let Some(query) = query {
        out.push(b'?');
        for (n, pair) in query.as_bytes().split(|b| *b == b'&').enumerate() {
            if n > 0 {
                out.push(b'&');
            }
            let key = pair.split(|b| *b == b'=').next().unwrap_or(pair);
            match params.iter().position(|(param, _)| key_is(key, param)) {
                Some(i) => {
                    present[i] = true;
                    out.extend_from_slice(key);
                    out.push(b'=');
                    percent::encode_into(&mut out, params[i].1);
                }
                None => out.extend_from_slice(pair),
            }
        }
        first = query.is_empty();
    }
    for (i, (param, value)) in params.iter().enumerate() {
        if present[i] {
            continue;
        }
        if query.is_none() {
            out.push(b'?');
        } else if !first {
            out.push(b'&');
        }
        first = false;
        out.extend_from_slice(param.as_bytes());
        out.push(b'=');
        percent::encode_into(&mut out, value);
    }
    if let Some(fragment) = fragment {
        out.push(b'#');
        out.extend_from_slice(fragment.as_bytes());
    }
    zeroize::Zeroizing::new(out)
}

fn split_path(raw: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, fragment) = match raw.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (raw, None),
    };
    match rest.split_once('?') {
        Some((p, q)) => (p, Some(q), fragment),
        None => (rest, None, fragment),
    }
}

/// The changes to one request, collected rule by rule and then turned into Envoy's answer.
/// Values are zeroized when dropped (the header values move into the answer as it is sent).
#[derive(Default)]
pub struct Mutation<'r> {
    set_headers: Vec<HeaderValueOption>,
    params: Vec<(&'r str, zeroize::Zeroizing<Vec<u8>>)>,
    remove_headers: Vec<String>,
}

impl<'r> Mutation<'r> {
    /// Puts a rule's rendered value where its target says.
    pub fn apply(&mut self, target: &'r CompiledTarget, template: &Template, secret: &str) {
        match target {
            CompiledTarget::Header(name) => {
                // Rendered straight into the answer's buffer: it is sent as it is.
                self.set_headers
                    .push(set_header(name, template.render_plain(secret)));
            }
            CompiledTarget::Param(name) => self.params.push((name, template.render(secret))),
        }
    }

    /// Removes a header from the forwarded request.
    pub fn remove(&mut self, name: &str) {
        self.remove_headers.push(name.to_owned());
    }

    /// Envoy's answer: continue with these changes; parameters rewrite `path` (the request's
    /// `:path`, absent for CONNECT).
    pub fn into_response(mut self, path: Option<&str>) -> ProcessingResponse {
        if !self.params.is_empty()
            && let Some(path) = path
        {
            let pairs: Vec<(&str, &[u8])> = self
                .params
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            self.set_headers
                .push(set_header(":path", rewrite_query(path, &pairs).to_vec()));
        }
        let mutation =
            (!self.set_headers.is_empty() || !self.remove_headers.is_empty()).then(|| {
                HeaderMutation {
                    set_headers: std::mem::take(&mut self.set_headers),
                    remove_headers: std::mem::take(&mut self.remove_headers),
                }
            });
        continue_request(mutation)
    }
}

/// A header to set, overwriting what the runtime sent.
pub fn set_header(name: &str, raw_value: Vec<u8>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_ascii_lowercase(),
            value: String::new(),
            raw_value,
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// The answer to a CONNECT runta lets on: the route header that sends it to interception or
/// through as a tunnel, and a cleared route cache so that Envoy routes by it.
pub fn connect_route(intercept: bool, strip_proxy_authorization: bool) -> ProcessingResponse {
    let value = if intercept { "intercept" } else { "tunnel" };
    let mut response = continue_request(Some(HeaderMutation {
        set_headers: vec![set_header(
            super::CONNECT_ROUTE_HEADER,
            value.as_bytes().to_vec(),
        )],
        remove_headers: if strip_proxy_authorization {
            vec!["proxy-authorization".to_owned()]
        } else {
            Vec::new()
        },
    }));
    if let Some(Response::RequestHeaders(HeadersResponse {
        response: Some(common),
    })) = &mut response.response
    {
        common.clear_route_cache = true;
    }
    response
}

/// Continue the request with these header changes.
pub fn continue_request(mutation: Option<HeaderMutation>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: mutation,
                ..CommonResponse::default()
            }),
        })),
        ..ProcessingResponse::default()
    }
}

/// Answer the runtime directly; the request goes nowhere.
pub fn immediate(
    status: u16,
    headers: Vec<HeaderValueOption>,
    body: String,
    details: &str,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: (!headers.is_empty()).then(|| HeaderMutation {
                set_headers: headers,
                remove_headers: Vec::new(),
            }),
            body: body.into_bytes(),
            details: details.to_owned(),
            ..ImmediateResponse::default()
        })),
        ..ProcessingResponse::default()
    }
}

/// The neutral answer to a message runta does not act on (a misconfigured filter that sends
/// bodies, trailers or response headers): let it through unchanged.
pub fn continue_other(
    request: &envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request,
) -> ProcessingResponse {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as R;
    let common = || Some(CommonResponse::default());
    let response = match request {
        R::RequestHeaders(_) => Response::RequestHeaders(HeadersResponse { response: common() }),
        R::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse { response: common() }),
        R::RequestBody(_) => Response::RequestBody(BodyResponse { response: common() }),
        R::ResponseBody(_) => Response::ResponseBody(BodyResponse { response: common() }),
        R::RequestTrailers(_) => Response::RequestTrailers(TrailersResponse::default()),
        R::ResponseTrailers(_) => Response::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(path: &str, params: &[(&str, &str)]) -> String {
        let params: Vec<(&str, &[u8])> = params.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        String::from_utf8(rewrite_query(path, &params).to_vec()).unwrap()
    }

    #[test]
    fn query_parameters() {
        for (path, params, want) in [
            ("/geo", vec![("key", "s3cr3t")], "/geo?key=s3cr3t"),
            ("/geo?", vec![("key", "v")], "/geo?key=v"),
            ("/geo?q=a%20b&x", vec![("key", "v")], "/geo?q=a%20b&x&key=v"),
            (
                "/geo?key=runtime&q=1&key=again",
                vec![("key", "v")],
                "/geo?key=v&q=1&key=v",
            ),
            ("/geo?k%65y=runtime", vec![("key", "v")], "/geo?k%65y=v"),
            ("/geo?key", vec![("key", "v")], "/geo?key=v"),
            (
                "/geo?keys=1&akey=2",
                vec![("key", "v")],
                "/geo?keys=1&akey=2&key=v",
            ),
            (
                "/geo?q=1",
                vec![("key", "a b&c=d/é")],
                "/geo?q=1&key=a%20b%26c%3Dd%2F%C3%A9",
            ),
            (
                "/geo?a=1",
                vec![("k1", "x"), ("k2", "y")],
                "/geo?a=1&k1=x&k2=y",
            ),
            (
                "/geo?a=%zz;;&b=1#frag",
                vec![("b", "v")],
                "/geo?a=%zz;;&b=v#frag",
            ),
        ] {
            assert_eq!(rewrite(path, &params), want, "{path}");
        }
    }

    #[test]
    fn headers_are_raw_values() {
        let h = set_header("Authorization", b"Bearer x".to_vec());
        let header = h.header.unwrap();
        assert_eq!(
            (
                header.key.as_str(),
                header.raw_value.as_slice(),
                header.value.as_str()
            ),
            ("authorization", &b"Bearer x"[..], "")
        );
    }
}
