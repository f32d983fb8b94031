//! The decision, as a pure function: `decide(snapshot, sidecar identity, request, policy)`.
//!
//! No I/O, no locks, no clock: given the same inputs it gives the same answer, which is what
//! the table-driven tests below pin down. Secrets are not looked at here; the plumbing around
//! it fetches the values of the rules it picks.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::{Unidentified, UnmatchedConnect};
use crate::crypto;
use crate::rules::request::Destination;
use crate::rules::snapshot::{CompiledRule, Snapshot};

/// The request headers decide looks at (values as Envoy sent them in `raw_value`). `Debug`
/// shows whether proxy credentials are present, never them.
#[derive(Clone, Default)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// `:authority`, else `host`.
    pub authority: &'a str,
    /// `:path`; absent for CONNECT.
    pub path: Option<&'a str>,
    pub proxy_authorization: Option<&'a str>,
    /// Set when the request came through an intercepted HTTPS tunnel.
    pub tunnel: Option<Tunnel<'a>>,
}

/// What Envoy knows about the intercepted tunnel a request came through (from the CONNECT,
/// carried as filter state the client cannot forge, and from the TLS handshake). `Debug` hides
/// the credentials.
#[derive(Clone, Copy, Default)]
pub struct Tunnel<'a> {
    /// The CONNECT's target, `host:port`.
    pub target: &'a str,
    /// The TLS server name (SNI) the client sent.
    pub server_name: &'a str,
    /// The CONNECT's `Proxy-Authorization`: the identity of every request in the tunnel.
    pub proxy_authorization: Option<&'a str>,
}

/// Proxy credentials in `Debug` output: whether there are any, never the token.
fn credentials(value: Option<&str>) -> &'static str {
    if value.is_some() {
        "[REDACTED]"
    } else {
        "none"
    }
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field(
                "proxy_authorization",
                &credentials(self.proxy_authorization),
            )
            .field("tunnel", &self.tunnel)
            .finish()
    }
}

impl std::fmt::Debug for Tunnel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("target", &self.target)
            .field("server_name", &self.server_name)
            .field(
                "proxy_authorization",
                &credentials(self.proxy_authorization),
            )
            .finish()
    }
}

/// The service's policies `decide` applies.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A request nobody is identified for.
    pub unidentified: Unidentified,
    /// A CONNECT to a target no rule of the runtime covers.
    pub unmatched_connect: UnmatchedConnect,
    /// Whether tunnels can be intercepted (a CA is configured).
    pub interception: bool,
}

impl From<Unidentified> for Policy {
    /// The defaults for tunnels, as in tests and benchmarks: intercepted where rules cover the
    /// target (a CA assumed), passed through elsewhere. The server builds its `Policy` from its
    /// configuration, `interception` from whether it has a CA.
    fn from(unidentified: Unidentified) -> Self {
        Self {
            unidentified,
            unmatched_connect: UnmatchedConnect::Tunnel,
            interception: true,
        }
    }
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
    /// CONNECT to a target no rule of the runtime covers: passed through as a TCP tunnel.
    Tunnel,
    /// CONNECT to a target a rule of the runtime covers: Envoy terminates the tunnel and the
    /// client's TLS, and its requests come back here one by one.
    Intercept,
    /// CONNECT passed through elsewhere, refused by `interception.unmatched_connect = "deny"`
    /// (or a target that is not `host:port`): 403.
    TunnelDenied,
    /// A request in an intercepted tunnel whose host, CONNECT target and TLS server name
    /// disagree: 421, never injected.
    Misdirected,
    /// CONNECT to a target a rule covers, but this server has no interception CA: 503.
    InterceptionUnavailable,
    /// Nobody identified, policy `deny`: 403.
    Denied,
    /// A runtime token that is unknown, revoked or malformed: 407.
    BadToken,
    /// A CONNECT without proxy credentials (policy `pass`): 407, asking for the runtime
    /// token.
    CredentialsRequired,
    /// A rule matched but its secret could not be had: 503, never forwarded without it.
    /// (Not produced by `decide`, which does not look at secrets; by the plumbing after it.)
    SecretUnavailable,
}

impl Outcome {
    /// Every outcome, for metrics that expose each one from the start.
    pub const ALL: [Self; 12] = [
        Self::Inject,
        Self::NoMatch,
        Self::Unidentified,
        Self::Tunnel,
        Self::Intercept,
        Self::TunnelDenied,
        Self::Misdirected,
        Self::InterceptionUnavailable,
        Self::Denied,
        Self::BadToken,
        Self::CredentialsRequired,
        Self::SecretUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::NoMatch => "no_match",
            Self::Unidentified => "unidentified",
            Self::Tunnel => "tunnel",
            Self::Intercept => "intercept",
            Self::TunnelDenied => "tunnel_denied",
            Self::Misdirected => "misdirected",
            Self::InterceptionUnavailable => "interception_unavailable",
            Self::Denied => "denied",
            Self::BadToken => "bad_token",
            Self::CredentialsRequired => "credentials_required",
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
    policy: impl Into<Policy>,
) -> Decision<'a> {
    let policy = policy.into();
    let strip_proxy_authorization = request.proxy_authorization.is_some();
    // Inside a tunnel the request left TLS: its port is the tunnel's (https), whatever
    // `:scheme` the client wrote.
    let scheme = if request.tunnel.is_some() {
        "https"
    } else {
        request.scheme
    };
    let dest = Destination::parse(request.authority, scheme, request.path.unwrap_or(""));
    let mut decision = Decision {
        outcome: Outcome::NoMatch,
        identity: None,
        rules: Vec::new(),
        strip_proxy_authorization,
        host: dest.host.clone(),
        path: dest.path.clone(),
    };
    let is_connect = request.method.eq_ignore_ascii_case("CONNECT");
    // A tunnel carries requests for its own host only, whoever sends them.
    if let Some(tunnel) = &request.tunnel
        && !tunnel_agrees(tunnel, &dest)
    {
        decision.outcome = Outcome::Misdirected;
        return decision;
    }
    // Inside a tunnel, the CONNECT's credentials speak for every request.
    let credentials = match &request.tunnel {
        Some(tunnel) => tunnel.proxy_authorization,
        None => request.proxy_authorization,
    };
    let identity = match identify(snapshot, sidecar, credentials) {
        Identified::Yes(identity) => identity,
        Identified::BadToken => {
            decision.outcome = Outcome::BadToken;
            return decision;
        }
        Identified::No => {
            decision.outcome = match policy.unidentified {
                Unidentified::Deny => Outcome::Denied,
                // A tunnel nobody is identified for could never be intercepted: challenge the
                // client for its runtime token (some send credentials only when asked) rather
                // than lose its injections without a word.
                Unidentified::Pass if is_connect => Outcome::CredentialsRequired,
                Unidentified::Pass => Outcome::Unidentified,
            };
            return decision;
        }
    };
    decision.identity = Some(identity);
    if is_connect {
        decision.outcome = connect_outcome(snapshot, &identity, &dest, policy);
        return decision;
    }
    if request.path.is_none() {
        // Nothing to match a rule's path against (not a request Envoy forwards as HTTP).
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

/// A CONNECT of an identified runtime: intercepted where one of its rules is for the target
/// `host:port`, passed through (or refused) elsewhere.
fn connect_outcome(
    snapshot: &Snapshot,
    identity: &Identity<'_>,
    target: &Destination<'_>,
    policy: Policy,
) -> Outcome {
    // CONNECT names host:port; anything else is no target runta reads as Envoy does.
    let Some(port) = target.port.filter(|_| target.well_formed) else {
        return Outcome::TunnelDenied;
    };
    let covered = snapshot
        .runtime_rules(identity.tenant_id, identity.runtime)
        .is_some_and(|rules| rules.covers(&target.host, Some(port)));
    match (covered, policy.interception, policy.unmatched_connect) {
        (true, true, _) => Outcome::Intercept,
        (true, false, _) => Outcome::InterceptionUnavailable,
        (false, _, UnmatchedConnect::Tunnel) => Outcome::Tunnel,
        (false, _, UnmatchedConnect::Deny) => Outcome::TunnelDenied,
    }
}

/// Inside an intercepted tunnel the request's host, the CONNECT target and the TLS server name
/// must name the same place: Envoy forwards on the request's host, so a tunnel opened for one
/// host must not carry requests for another.
fn tunnel_agrees(tunnel: &Tunnel<'_>, request: &Destination<'_>) -> bool {
    let target = Destination::parse(tunnel.target, "", "");
    let server_name = tunnel
        .server_name
        .strip_suffix('.')
        .unwrap_or(tunnel.server_name);
    request.well_formed
        && target.well_formed
        && target.port.is_some()
        && request.host == target.host
        && request.port == target.port
        && server_name.eq_ignore_ascii_case(&target.host)
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

/// The runtime token in a `Proxy-Authorization` value: `Basic base64(user:password)` with the
/// token as the user name (`http://<token>:x@gateway`, `http://<token>@gateway`) or as the
/// password (`http://runta:<token>@gateway`), or `Bearer <token>`. In Basic, a part that looks
/// like a runtime token (`runta_rt_...`) is taken first; otherwise the user name, if any.
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
    let looks_like_token = |part: &str| part.starts_with(crypto::RUNTIME_TOKEN_PREFIX);
    let token = if looks_like_token(user) || (!user.is_empty() && !looks_like_token(password)) {
        user
    } else {
        password
    };
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
            tunnel: None,
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
        (
            d.rules.iter().map(|r| r.id.to_string()).collect(),
            d.outcome,
        )
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
    fn debug_output_never_holds_proxy_credentials() {
        let view = RequestView {
            proxy_authorization: Some("Bearer runta_rt_SECRET"),
            tunnel: Some(Tunnel {
                target: "api.openai.com:443",
                server_name: "api.openai.com",
                proxy_authorization: Some("Basic cnVudGFfcnRfU0VDUkVUOng="),
            }),
            ..request("api.openai.com", "/")
        };
        let text = format!("{view:?}");
        assert!(
            !text.contains("SECRET") && !text.contains("cnVudGFf"),
            "{text}"
        );
        assert!(text.contains("[REDACTED]"));
    }

    #[test]
    fn an_identities_change_keeps_the_rule_index() {
        let before = snapshot();
        let mut edit = before.edit();
        edit.set_tenants([tenant(A, "acme"), tenant(B, "umbrella")]);
        edit.set_tokens(vec![token(A, "worker", "runta_rt_new", false)]);
        let after = edit.finish();
        assert!(after.shares_rules_with(&before));
        assert_eq!(after.rule_count(), before.rule_count());
        let with = |token: &str| {
            let header = format!("Basic {}", BASE64.encode(format!("{token}:x")));
            let req = RequestView {
                proxy_authorization: Some(&header),
                tunnel: None,
                ..request("api.openai.com", "/v1/x")
            };
            decide(&after, None, &req, Unidentified::Pass).outcome
        };
        assert_eq!(with("runta_rt_new"), Outcome::Inject);
        assert_eq!(with("runta_rt_good"), Outcome::BadToken);
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
            (basic("runta_rt_good", "x"), Outcome::Inject),
            (basic("x", "runta_rt_good"), Outcome::Inject),
            (basic("runta", "runta_rt_good"), Outcome::Inject),
            (basic("runta_rt_good", "runta_rt_unknown"), Outcome::Inject),
            ("Bearer runta_rt_good".to_owned(), Outcome::Inject),
            (basic("runta_rt_revoked", ""), Outcome::BadToken),
            (basic("runta_rt_unknown", ""), Outcome::BadToken),
            ("Basic !!!".to_owned(), Outcome::BadToken),
            ("Digest x".to_owned(), Outcome::BadToken),
        ];
        for (header, outcome) in cases {
            let req = RequestView {
                proxy_authorization: Some(&header),
                tunnel: None,
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
                assert_eq!(d.rules[0].id.to_string(), "r01");
            }
        }
        // Sidecar identity first; the runtime's own proxy credentials are still removed.
        let header = basic("runta_rt_unknown", "");
        let req = RequestView {
            proxy_authorization: Some(&header),
            tunnel: None,
            ..request("api.openai.com", "/v1/x")
        };
        let d = decide(&snap, WORKER, &req, Unidentified::Pass);
        assert_eq!(
            (d.outcome, d.strip_proxy_authorization),
            (Outcome::Inject, true)
        );
    }

    fn connect(target: &str) -> RequestView<'_> {
        RequestView {
            method: "CONNECT",
            scheme: "",
            path: None,
            ..request(target, "")
        }
    }

    #[test]
    fn connect_is_intercepted_where_a_rule_covers_the_target() {
        let snap = snapshot();
        let deny = Policy {
            unidentified: Unidentified::Pass,
            unmatched_connect: UnmatchedConnect::Deny,
            interception: true,
        };
        let no_ca = Policy {
            interception: false,
            ..Policy::from(Unidentified::Pass)
        };
        for (target, sidecar, policy, outcome) in [
            // exact host, rule without port: any port
            (
                "api.openai.com:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Intercept,
            ),
            (
                "API.OpenAI.com:8443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Intercept,
            ),
            // wildcard covers names below it only
            (
                "x.y.example.com:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Intercept,
            ),
            (
                "example.com:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Tunnel,
            ),
            // a rule with a port covers that port only (api.example.com has one without)
            (
                "exact.example.net:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Intercept,
            ),
            // no rule of this runtime: passed through, or refused by policy
            (
                "pinned.example.org:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::Tunnel,
            ),
            (
                "pinned.example.org:443",
                WORKER,
                deny,
                Outcome::TunnelDenied,
            ),
            // another tenant's rule for the host does not count
            (
                "api.openai.com:443",
                Some(Sidecar {
                    tenant: "umbrella",
                    runtime: "other",
                }),
                Policy::from(Unidentified::Pass),
                Outcome::Tunnel,
            ),
            // covered, but no CA here: refused, never a tunnel that would leave uninjected
            (
                "api.openai.com:443",
                WORKER,
                no_ca,
                Outcome::InterceptionUnavailable,
            ),
            // a target that is not host:port
            (
                "api.openai.com",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::TunnelDenied,
            ),
            (
                "evil@api.openai.com:443",
                WORKER,
                Policy::from(Unidentified::Pass),
                Outcome::TunnelDenied,
            ),
            // nobody identified: asked for credentials (407), or refused by policy `deny`
            (
                "api.openai.com:443",
                None,
                Policy::from(Unidentified::Pass),
                Outcome::CredentialsRequired,
            ),
            (
                "pinned.example.org:443",
                None,
                deny,
                Outcome::CredentialsRequired,
            ),
            (
                "api.openai.com:443",
                None,
                Policy {
                    unidentified: Unidentified::Deny,
                    ..deny
                },
                Outcome::Denied,
            ),
        ] {
            let d = decide(&snap, sidecar, &connect(target), policy);
            assert_eq!(
                d.outcome, outcome,
                "CONNECT {target} ({sidecar:?}, {policy:?})"
            );
            assert!(
                d.rules.is_empty(),
                "a CONNECT itself is never injected into"
            );
        }
        // A port-specific rule: r05 is api.example.com:8443, r03 api.example.com (any port).
        let only_port = Snapshot::build(
            [tenant(A, "acme")],
            &[rule(
                "p1",
                A,
                "worker",
                "ported.example.org:8443",
                None,
                "x-k",
            )],
            vec![],
        );
        let run = |target| decide(&only_port, WORKER, &connect(target), Unidentified::Pass).outcome;
        assert_eq!(run("ported.example.org:8443"), Outcome::Intercept);
        assert_eq!(run("ported.example.org:443"), Outcome::Tunnel);
    }

    #[test]
    fn requests_in_a_tunnel_take_its_identity_and_must_name_its_host() {
        let snap = snapshot();
        let good = format!("Basic {}", BASE64.encode("runta_rt_good:x"));
        let revoked = format!("Basic {}", BASE64.encode("runta_rt_revoked:x"));
        let inner = |authority, target, sni, credentials| RequestView {
            scheme: "https",
            tunnel: Some(Tunnel {
                target,
                server_name: sni,
                proxy_authorization: credentials,
            }),
            ..request(authority, "/v1/models")
        };
        for (authority, target, sni, credentials, outcome) in [
            (
                "api.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                Some(good.as_str()),
                Outcome::Inject,
            ),
            (
                "API.openai.com:443",
                "api.openai.com:443",
                "api.openai.com.",
                Some(good.as_str()),
                Outcome::Inject,
            ),
            // the host, the CONNECT target and the server name must agree
            (
                "other.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            (
                "api.openai.com",
                "api.openai.com:443",
                "other.openai.com",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            (
                "api.openai.com",
                "api.openai.com:443",
                "",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            (
                "api.openai.com:8443",
                "api.openai.com:443",
                "api.openai.com",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            (
                "api.openai.com",
                "api.openai.com:8443",
                "api.openai.com",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            // the tunnel's identity, re-checked on every request
            (
                "api.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                Some(revoked.as_str()),
                Outcome::BadToken,
            ),
            // the host check comes first: no identity does not let another host through
            (
                "other.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                None,
                Outcome::Misdirected,
            ),
            // attributes that did not arrive: fail closed
            (
                "api.openai.com",
                "",
                "",
                Some(good.as_str()),
                Outcome::Misdirected,
            ),
            (
                "api.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                None,
                Outcome::Unidentified,
            ),
        ] {
            let d = decide(
                &snap,
                None,
                &inner(authority, target, sni, credentials),
                Unidentified::Pass,
            );
            assert_eq!(
                d.outcome, outcome,
                "{authority} in a tunnel to {target} (SNI {sni:?})"
            );
        }
        // A proxy-authorization header inside the tunnel identifies nobody (the CONNECT's
        // does), and is still removed.
        let req = RequestView {
            proxy_authorization: Some(&good),
            ..inner(
                "api.openai.com",
                "api.openai.com:443",
                "api.openai.com",
                None,
            )
        };
        let d = decide(&snap, None, &req, Unidentified::Pass);
        assert_eq!(
            (d.outcome, d.strip_proxy_authorization),
            (Outcome::Unidentified, true)
        );
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
        assert_eq!(*d.rules[0].target, CompiledTarget::Param("key".into()));
        let d = decide(
            &snap,
            WORKER,
            &request("multi.example.org", "/v1/x"),
            Unidentified::Pass,
        );
        assert_eq!(*d.rules[0].target, CompiledTarget::Header("x-one".into()));
    }
}
