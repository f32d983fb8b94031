//! Synthetic answers on the data path: every way runta refuses a request, as one type that
//! knows its status, its body, the details Envoy logs, and the outcome it counts as. The
//! service turns a refusal into Envoy's immediate response in exactly one place.
//!
//! Bodies name what went wrong (a rule id, never a value) so a runtime's developer can act.

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;

use super::decide::Outcome;
use super::mutation;

/// Why a request does not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// Proxy credentials that are not a valid runtime token: 407, so the client may retry
    /// with others.
    BadToken,
    /// Nobody identified and the policy is `deny`: 403.
    Unidentified,
    /// A CONNECT without proxy credentials: 407, asking for the runtime token.
    CredentialsRequired,
    /// A rule matched but its secret cannot be had: 503 naming the rule. Failing closed: the
    /// request is never forwarded without its credential.
    SecretUnavailable {
        rule: Option<&'a crate::rules::snapshot::RuleId>,
    },
    /// A tunnel runta will not pass through (`interception.unmatched_connect = "deny"`, or a
    /// target that is not `host:port`): 403.
    TunnelDenied,
    /// A request in an intercepted tunnel for another host than the tunnel's: 421.
    Misdirected,
    /// A tunnel to a host a rule covers, on a server without an interception CA: 503, rather
    /// than a tunnel whose requests would leave without their credential.
    InterceptionUnavailable,
}

impl Refusal<'_> {
    /// The outcome the refusal counts as.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::BadToken => Outcome::BadToken,
            Self::Unidentified => Outcome::Denied,
            Self::CredentialsRequired => Outcome::CredentialsRequired,
            Self::SecretUnavailable { .. } => Outcome::SecretUnavailable,
            Self::TunnelDenied => Outcome::TunnelDenied,
            Self::Misdirected => Outcome::Misdirected,
            Self::InterceptionUnavailable => Outcome::InterceptionUnavailable,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::BadToken | Self::CredentialsRequired => 407,
            Self::Unidentified => 403,
            Self::SecretUnavailable { .. } | Self::InterceptionUnavailable => 503,
            Self::TunnelDenied => 403,
            Self::Misdirected => 421,
        }
    }

    /// What the runtime reads.
    pub fn body(self) -> String {
        match self {
            Self::BadToken => {
                "runta: the proxy credentials are not a valid runtime token\n".to_owned()
            }
            Self::Unidentified => {
                "runta: this request does not come from an identified runtime\n".to_owned()
            }
            Self::CredentialsRequired => "runta: HTTPS tunnels need the runtime token as proxy \
                                          credentials (HTTPS_PROXY=http://<token>:x@gateway)\n"
                .to_owned(),
            Self::SecretUnavailable { rule: Some(rule) } => {
                format!("runta: the credential for rule {rule} is unavailable\n")
            }
            Self::SecretUnavailable { rule: None } => {
                "runta: the credential for a matching rule is unavailable\n".to_owned()
            }
            Self::TunnelDenied => "runta: this tunnel is refused: no rule of this runtime is \
                                   for its target (interception.unmatched_connect = \"deny\"), \
                                   or the target is not host:port\n"
                .to_owned(),
            Self::Misdirected => "runta: this request names another host than the tunnel it \
                                  came through (CONNECT target and TLS server name)\n"
                .to_owned(),
            Self::InterceptionUnavailable => "runta: a rule is for this host, but HTTPS \
                                              interception is not configured on this server \
                                              (interception.ca_cert_file); send plain HTTP\n"
                .to_owned(),
        }
    }

    /// Envoy's response-code details (its access log's `%RESPONSE_CODE_DETAILS%`).
    pub fn details(self) -> &'static str {
        match self {
            Self::BadToken => "runta_bad_runtime_token",
            Self::Unidentified => "runta_unidentified",
            Self::CredentialsRequired => "runta_credentials_required",
            Self::SecretUnavailable { .. } => "runta_secret_unavailable",
            Self::TunnelDenied => "runta_tunnel_denied",
            Self::Misdirected => "runta_misdirected",
            Self::InterceptionUnavailable => "runta_interception_unavailable",
        }
    }

    /// Envoy's immediate response for this refusal.
    pub fn response(self) -> ProcessingResponse {
        let headers = match self {
            Self::BadToken | Self::CredentialsRequired => vec![mutation::set_header(
                "proxy-authenticate",
                b"Basic realm=\"runta\"".to_vec(),
            )],
            Self::Unidentified
            | Self::SecretUnavailable { .. }
            | Self::TunnelDenied
            | Self::Misdirected
            | Self::InterceptionUnavailable => Vec::new(),
        };
        mutation::immediate(self.status(), headers, self.body(), self.details())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;

    #[test]
    fn each_refusal_answers_with_its_status_body_and_outcome() {
        let rule = crate::rules::snapshot::RuleId::from("rule_1");
        for (refusal, status, outcome, body) in [
            (
                Refusal::BadToken,
                407_u16,
                Outcome::BadToken,
                "not a valid runtime token",
            ),
            (
                Refusal::Unidentified,
                403,
                Outcome::Denied,
                "identified runtime",
            ),
            (
                Refusal::SecretUnavailable { rule: Some(&rule) },
                503,
                Outcome::SecretUnavailable,
                "rule rule_1 is unavailable",
            ),
            (
                Refusal::CredentialsRequired,
                407,
                Outcome::CredentialsRequired,
                "need the runtime token",
            ),
            (
                Refusal::TunnelDenied,
                403,
                Outcome::TunnelDenied,
                "tunnel is refused",
            ),
            (
                Refusal::Misdirected,
                421,
                Outcome::Misdirected,
                "another host than the tunnel",
            ),
            (
                Refusal::InterceptionUnavailable,
                503,
                Outcome::InterceptionUnavailable,
                "interception is not configured",
            ),
        ] {
            assert_eq!(refusal.outcome(), outcome);
            let Some(Response::ImmediateResponse(answer)) = refusal.response().response else {
                panic!("{refusal:?} is not an immediate response");
            };
            assert_eq!(refusal.status(), status);
            assert_eq!(answer.status.unwrap().code, i32::from(status));
            let text = String::from_utf8(answer.body).unwrap();
            assert!(text.contains(body), "{refusal:?}: {text}");
            let challenge = answer
                .headers
                .iter()
                .flat_map(|h| &h.set_headers)
                .any(|h| h.header.as_ref().unwrap().key == "proxy-authenticate");
            assert_eq!(challenge, status == 407, "{refusal:?}");
        }
    }
}
