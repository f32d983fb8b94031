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
    /// A rule matched but its secret cannot be had: 503 naming the rule. Failing closed: the
    /// request is never forwarded without its credential.
    SecretUnavailable { rule: &'a str },
}

impl Refusal<'_> {
    /// The outcome the refusal counts as.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::BadToken => Outcome::BadToken,
            Self::Unidentified => Outcome::Denied,
            Self::SecretUnavailable { .. } => Outcome::SecretUnavailable,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::BadToken => 407,
            Self::Unidentified => 403,
            Self::SecretUnavailable { .. } => 503,
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
            Self::SecretUnavailable { rule } => {
                format!("runta: the credential for rule {rule} is unavailable\n")
            }
        }
    }

    /// Envoy's response-code details (its access log's `%RESPONSE_CODE_DETAILS%`).
    pub fn details(self) -> &'static str {
        match self {
            Self::BadToken => "runta_bad_runtime_token",
            Self::Unidentified => "runta_unidentified",
            Self::SecretUnavailable { .. } => "runta_secret_unavailable",
        }
    }

    /// Envoy's immediate response for this refusal.
    pub fn response(self) -> ProcessingResponse {
        let headers = match self {
            Self::BadToken => vec![mutation::set_header(
                "proxy-authenticate",
                b"Basic realm=\"runta\"".to_vec(),
            )],
            Self::Unidentified | Self::SecretUnavailable { .. } => Vec::new(),
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
                Refusal::SecretUnavailable { rule: "rule_1" },
                503,
                Outcome::SecretUnavailable,
                "rule rule_1 is unavailable",
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
            assert_eq!(challenge, refusal == Refusal::BadToken, "{refusal:?}");
        }
    }
}
