//! The decision, as a pure function: `decide(snapshot, sidecar identity, request, policy)`.
//!
//! No I/O, no locks, no clock: given the same inputs it gives the same answer, which is what
//! the table-driven tests below pin down. Secrets are not looked at here; the plumbing around
//! it fetches the values of the rules it picks.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::Unidentified;
use crate::crypto;
use crate::rules::request::Destination;
use crate::rules::snapshot::{CompiledRule, Snapshot};

/// The request headers decide looks at (values as Envoy sent them in `raw_value`).
#[derive(Debug, Clone, Default)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// `:authority`, else `host`.
    pub authority: &'a str,
    /// `:path`; absent for CONNECT.
    pub path: Option<&'a str>,
    pub proxy_authorization: Option<&'a str>,
}

/// The identity a sidecar's Envoy put in the stream's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Sidecar<'a> {
    pub tenant: &'a str,
    pub runtime: &'a str,
}

/// How the runtime was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    Sidecar,
    Token,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Token => "token",
        }
    }
}

/// Who sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub tenant_id: &'a str,
    pub runtime: &'a str,
    pub source: IdentitySource,
}

/// What happened, for the log line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one rule matched.
    Inject,
    /// Identified, nothing matched: forwarded unchanged (but for proxy credentials).
    NoMatch,
    /// Nobody identified, policy `pass`: forwarded unchanged.
    Unidentified,
    /// CONNECT: a tunnel cannot be injected into; forwarded.
    Tunnel,
    /// Nobody identified, policy `deny`: 403.
    Denied,
    /// A runtime token that is unknown, revoked or malformed: 407.
    BadToken,
    /// A rule matched but its secret could not be had: 503, never forwarded without it.
    /// (Not produced by `decide`, which does not look at secrets; by the plumbing after it.)
    SecretUnavailable,
}

impl Outcome {
    /// Every outcome, for metrics that expose each one from the start.
    pub const ALL: [Self; 7] = [
        Self::Inject,
        Self::NoMatch,
        Self::Unidentified,
        Self::Tunnel,
        Self::Denied,
        Self::BadToken,
        Self::SecretUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::NoMatch => "no_match",
            Self::Unidentified => "unidentified",
            Self::Tunnel => "tunnel",
            Self::Denied => "denied",
            Self::BadToken => "bad_token",
            Self::SecretUnavailable => "secret_unavailable",
        }
    }
}

/// The answer for one request.
#[derive(Debug)]
pub struct Decision<'a> {
    pub outcome: Outcome,
    pub identity: Option<Identity<'a>>,
    /// The rules to apply: one per target, the most specific.
    pub rules: Vec<&'a CompiledRule>,
    /// Remove `proxy-authorization` before the request goes upstream.
    pub strip_proxy_authorization: bool,
    /// The destination as matched (for the log line): host and path without query.
    pub host: Cow<'a, str>,
    pub path: Cow<'a, str>,
}

/// Decides what to do with a request.
pub fn decide<'a>(
    snapshot: &'a Snapshot,
    sidecar: Option<Sidecar<'a>>,
    request: &RequestView<'a>,
    unidentified: Unidentified,
) -> Decision<'a> {
    let strip_proxy_authorization = request.proxy_authorization.is_some();
    let dest = Destination::parse(
        request.authority,
        request.scheme,
        request.path.unwrap_or(""),
    );
    let mut decision = Decision {
        outcome: Outcome::NoMatch,
        identity: None,
        rules: Vec::new(),
        strip_proxy_authorization,
        host: dest.host.clone(),
        path: dest.path.clone(),
    };
    let identity = match identify(snapshot, sidecar, request.proxy_authorization) {
        Identified::Yes(identity) => identity,
        Identified::BadToken => {
            decision.outcome = Outcome::BadToken;
            return decision;
        }
        Identified::No => {
            decision.outcome = match unidentified {
                Unidentified::Pass => Outcome::Unidentified,
                Unidentified::Deny => Outcome::Denied,
            };
            return decision;
        }
    };
    decision.identity = Some(identity);
    if request.method.eq_ignore_ascii_case("CONNECT") || request.path.is_none() {
        decision.outcome = Outcome::Tunnel;
        return decision;
    }
    // A destination runta cannot read exactly as Envoy does, and methods that echo the
    // request back to the client (TRACE, TRACK), never carry a credential.
    let reflects = request.method.eq_ignore_ascii_case("TRACE")
        || request.method.eq_ignore_ascii_case("TRACK");
    if dest.well_formed
        && !reflects
        && let Some(rules) = snapshot.runtime_rules(identity.tenant_id, identity.runtime)
    {
        rules.matching(&dest, &mut decision.rules);
    }
    if !decision.rules.is_empty() {
        decision.rules.sort_by(|a, b| a.id.cmp(&b.id));
        decision.outcome = Outcome::Inject;
    }
    decision
}

enum Identified<'a> {
    Yes(Identity<'a>),
    No,
    BadToken,
}

fn identify<'a>(
    snapshot: &'a Snapshot,
    sidecar: Option<Sidecar<'a>>,
    proxy_authorization: Option<&str>,
) -> Identified<'a> {
    if let Some(sidecar) = sidecar {
        return match snapshot.tenant_id(sidecar.tenant) {
            Some(tenant_id) => Identified::Yes(Identity {
                tenant_id,
                runtime: sidecar.runtime,
                source: IdentitySource::Sidecar,
            }),
            // A sidecar naming a tenant that does not exist identifies nobody.
            None => Identified::No,
        };
    }
    let Some(header) = proxy_authorization else {
        return Identified::No;
    };
    let Some(token) = proxy_token(header) else {
        return Identified::BadToken;
    };
    match snapshot.token(&crypto::hash_token(&token)) {
        Some(entry) if !entry.revoked => Identified::Yes(Identity {
            tenant_id: &entry.tenant_id,
            runtime: &entry.runtime,
            source: IdentitySource::Token,
        }),
        _ => Identified::BadToken,
    }
}

/// The runtime token in a `Proxy-Authorization` value: `Basic base64(token:)` (the token as
/// user name, as `http://<token>@gateway` makes clients send; a token as the password is
/// accepted too) or `Bearer <token>`.
pub fn proxy_token(header: &str) -> Option<zeroize::Zeroizing<String>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| zeroize::Zeroizing::new(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = zeroize::Zeroizing::new(BASE64.decode(rest).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((text, ""));
    let token = if user.is_empty() { password } else { user };
    (!token.is_empty()).then(|| zeroize::Zeroizing::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenHash;
    use crate::rules::snapshot::TokenEntry;
    use crate::rules::{CompiledTarget, DraftFields, Rule, RuleDraft, RuleSpec, TargetFields};

    const A: &str = "ten_a";
    const B: &str = "ten_b";

    fn tenant(id: &str, name: &str) -> (String, String) {
        (id.into(), name.into())
    }

    /// A rule: header target unless `target` starts with `?` (a query parameter).
    fn rule(
        id: &str,
        tenant: &str,
        runtime: &str,
        host: &str,
        path: Option<&str>,
        target: &str,
    ) -> Rule {
        let target = match target.strip_prefix('?') {
            Some(p) => TargetFields {
                header: None,
                param: Some(p.to_owned()),
            },
            None => TargetFields {
                header: Some(target.to_owned()),
                param: None,
            },
        };
        let credential = format!("cred-{id}");
        let draft = RuleDraft {
            runtime,
            host,
            path,
            credential: &credential,
            target,
            value: Some("Bearer ${credential}"),
        };
        Rule {
            id: id.into(),
            tenant_id: tenant.into(),
            spec: RuleSpec::from_draft(&draft, &DraftFields::BATCH).unwrap(),
        }
    }

    fn token(tenant: &str, runtime: &str, secret: &str, revoked: bool) -> (TokenHash, TokenEntry) {
        (
            crypto::hash_token(secret),
            TokenEntry {
                tenant_id: tenant.into(),
                runtime: runtime.into(),
                revoked,
            },
        )
    }

    fn snapshot() -> Snapshot {
        Snapshot::build(
            [tenant(A, "acme"), tenant(B, "umbrella")],
            &[
                rule(
                    "r01",
                    A,
                    "worker",
                    "api.openai.com",
                    Some("/v1/*"),
                    "Authorization",
                ),
                rule("r02", A, "worker", "*.example.com", None, "x-api-key"),
                rule("r03", A, "worker", "api.example.com", None, "x-api-key"),
                rule("r04", A, "worker", "*.svc.example.com", None, "x-api-key"),
                rule(
                    "r05",
                    A,
                    "worker",
                    "api.example.com:8443",
                    None,
                    "x-api-key",
                ),
                rule("r06", A, "worker", "maps.example.org", None, "?key"),
                rule(
                    "r07",
                    A,
                    "worker",
                    "multi.example.org",
                    Some("/v1/*"),
                    "X-One",
                ),
                rule(
                    "r08",
                    A,
                    "worker",
                    "multi.example.org",
                    Some("/v1/chat/*"),
                    "x-one",
                ),
                rule("r09", A, "worker", "multi.example.org", None, "x-two"),
                rule("r10", A, "worker", "multi.example.org", None, "x-two"),
                rule("r11", A, "other", "api.openai.com", None, "Authorization"),
                rule("r12", B, "worker", "api.openai.com", None, "Authorization"),
                rule(
                    "r13",
                    A,
                    "worker",
                    "exact.example.net",
                    Some("/v1"),
                    "x-exact",
                ),
            ],
            vec![
                token(A, "worker", "runta_rt_good", false),
                token(A, "worker", "runta_rt_revoked", true),
            ],
        )
    }

    fn request<'a>(authority: &'a str, path: &'a str) -> RequestView<'a> {
        RequestView {
            method: "GET",
            scheme: "http",
            authority,
            path: Some(path),
            proxy_authorization: None,
        }
    }

    const WORKER: Option<Sidecar<'static>> = Some(Sidecar {
        tenant: "acme",
        runtime: "worker",
    });

    /// The ids of the rules applied, and the outcome.
    fn run(sidecar: Option<Sidecar<'_>>, req: &RequestView<'_>) -> (Vec<String>, Outcome) {
        let snap = snapshot();
        let d = decide(&snap, sidecar, req, Unidentified::Pass);
        (d.rules.iter().map(|r| r.id.clone()).collect(), d.outcome)
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, &[&str])] = &[
            // exact host + path glob
            ("api.openai.com", "/v1/chat/completions", &["r01"]),
            ("API.OPENAI.COM", "/v1/", &["r01"]),
            ("api.openai.com:443", "/v1/models?x=1", &["r01"]),
            ("api.openai.com", "/v1", &[]),
            ("api.openai.com", "/v10/x", &[]),
            ("api.openai.com", "/v2/x", &[]),
            ("other.openai.com", "/v1/x", &[]),
            // normalisation and encoded separators
            ("api.openai.com", "/v1//chat", &["r01"]),
            ("api.openai.com", "/x/../v1/chat", &["r01"]),
            ("api.openai.com", "/v1/../admin", &[]),
            ("api.openai.com", "/%76%31/chat", &["r01"]),
            ("api.openai.com", "/v1/a%2Fb", &[]),
            ("api.openai.com", "/v1%2Fchat", &[]),
            ("exact.example.net", "/v1", &["r13"]),
            ("exact.example.net", "/v1/", &[]),
            // wildcard: below the suffix, never the suffix itself; longer suffix wins
            ("foo.example.com", "/", &["r02"]),
            ("a.b.example.com", "/", &["r02"]),
            ("example.com", "/", &[]),
            ("x.svc.example.com", "/", &["r04"]),
            // exact beats wildcard; a port beats no port
            ("api.example.com", "/", &["r03"]),
            ("api.example.com:8443", "/", &["r05"]),
            ("api.example.com:9443", "/", &["r03"]),
            // several targets on one request; longer path prefix wins; older wins a tie
            ("multi.example.org", "/v1/chat/x", &["r08", "r09"]),
            ("multi.example.org", "/v1/models", &["r07", "r09"]),
            ("multi.example.org", "/v2", &["r09"]),
            // query parameter rule
            ("maps.example.org", "/geo?q=1", &["r06"]),
            // authorities Envoy would read differently match nothing: userinfo, a port that is
            // not plain digits, stray characters, an unterminated IPv6 literal
            ("api.openai.com:x@evil.test", "/v1/x", &[]),
            ("api.openai.com@evil.test", "/v1/x", &[]),
            ("evil.test@api.openai.com", "/v1/x", &[]),
            ("api.openai.com:+443", "/v1/x", &[]),
            ("api.openai.com:-1", "/v1/x", &[]),
            ("api.openai.com:", "/v1/x", &[]),
            ("api.openai.com:443x", "/v1/x", &[]),
            ("api.openai.com:99999", "/v1/x", &[]),
            ("api.openai.com/x", "/v1/x", &[]),
            ("api.openai.com x", "/v1/x", &[]),
            ("[::1", "/v1/x", &[]),
            ("", "/v1/x", &[]),
        ];
        for (authority, path, want) in cases {
            let (ids, outcome) = run(WORKER, &request(authority, path));
            assert_eq!(ids, *want, "{authority}{path}");
            let expected = if want.is_empty() {
                Outcome::NoMatch
            } else {
                Outcome::Inject
            };
            assert_eq!(outcome, expected, "{authority}{path}");
        }
    }

    #[test]
    fn reflecting_methods_never_carry_a_credential() {
        for method in ["TRACE", "trace", "TRACK"] {
            let req = RequestView {
                method,
                ..request("api.openai.com", "/v1/x")
            };
            assert_eq!(run(WORKER, &req), (vec![], Outcome::NoMatch), "{method}");
        }
        let get = request("api.openai.com", "/v1/x");
        assert_eq!(run(WORKER, &get).0, ["r01"]);
    }

    #[test]
    fn identities() {
        let req = request("api.openai.com", "/v1/x");
        // Another runtime of the same tenant, and another tenant's runtime of the same name.
        assert_eq!(
            run(
                Some(Sidecar {
                    tenant: "acme",
                    runtime: "other"
                }),
                &req
            )
            .0,
            ["r11"]
        );
        assert_eq!(
            run(
                Some(Sidecar {
                    tenant: "umbrella",
                    runtime: "worker"
                }),
                &req
            )
            .0,
            ["r12"]
        );
        // A runtime without rules, an unknown tenant.
        assert_eq!(
            run(
                Some(Sidecar {
                    tenant: "acme",
                    runtime: "nobody"
                }),
                &req
            ),
            (vec![], Outcome::NoMatch)
        );
        assert_eq!(
            run(
                Some(Sidecar {
                    tenant: "nope",
                    runtime: "worker"
                }),
                &req
            ),
            (vec![], Outcome::Unidentified)
        );
        // Nobody: pass or deny by policy.
        assert_eq!(run(None, &req), (vec![], Outcome::Unidentified));
        let snap = snapshot();
        assert_eq!(
            decide(&snap, None, &req, Unidentified::Deny).outcome,
            Outcome::Denied
        );
    }

    #[test]
    fn runtime_tokens() {
        let basic = |user: &str, password: &str| {
            format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
        };
        let snap = snapshot();
        let cases = [
            (basic("runta_rt_good", ""), Outcome::Inject),
            (basic("", "runta_rt_good"), Outcome::Inject),
            ("Bearer runta_rt_good".to_owned(), Outcome::Inject),
            (basic("runta_rt_revoked", ""), Outcome::BadToken),
            (basic("runta_rt_unknown", ""), Outcome::BadToken),
            ("Basic !!!".to_owned(), Outcome::BadToken),
            ("Digest x".to_owned(), Outcome::BadToken),
        ];
        for (header, outcome) in cases {
            let req = RequestView {
                proxy_authorization: Some(&header),
                ..request("api.openai.com", "/v1/x")
            };
            let d = decide(&snap, None, &req, Unidentified::Pass);
            assert_eq!(d.outcome, outcome, "{header}");
            assert!(
                d.strip_proxy_authorization,
                "proxy credentials never go upstream"
            );
            if outcome == Outcome::Inject {
                assert_eq!(d.identity.unwrap().source, IdentitySource::Token);
                assert_eq!(d.rules[0].id, "r01");
            }
        }
        // Sidecar identity first; the runtime's own proxy credentials are still removed.
        let header = basic("runta_rt_unknown", "");
        let req = RequestView {
            proxy_authorization: Some(&header),
            ..request("api.openai.com", "/v1/x")
        };
        let d = decide(&snap, WORKER, &req, Unidentified::Pass);
        assert_eq!(
            (d.outcome, d.strip_proxy_authorization),
            (Outcome::Inject, true)
        );
    }

    #[test]
    fn connect_is_a_tunnel() {
        let snap = snapshot();
        let req = RequestView {
            method: "CONNECT",
            path: None,
            ..request("api.openai.com:443", "")
        };
        let d = decide(&snap, WORKER, &req, Unidentified::Pass);
        assert_eq!((d.outcome, d.rules.len()), (Outcome::Tunnel, 0));
    }

    #[test]
    fn targets_keep_their_case_and_kind() {
        let snap = snapshot();
        let d = decide(
            &snap,
            WORKER,
            &request("maps.example.org", "/"),
            Unidentified::Pass,
        );
        assert_eq!(d.rules[0].target, CompiledTarget::Param("key".into()));
        let d = decide(
            &snap,
            WORKER,
            &request("multi.example.org", "/v1/x"),
            Unidentified::Pass,
        );
        assert_eq!(d.rules[0].target, CompiledTarget::Header("x-one".into()));
    }
}
