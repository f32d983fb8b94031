//! Gateway authentication: whoever can call the ext_proc port can ask for secrets, so only
//! gateways holding a configured gateway token (`authorization: Bearer ...` metadata) or a
//! client certificate signed by the configured CA (verified by the TLS layer) get answers.
//! Everyone else gets `UNAUTHENTICATED`, before any message is read.

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::crypto::hash_token;

/// How gateways prove who they are.
#[derive(Clone)]
pub struct GatewayAuth {
    /// SHA-256 of each accepted gateway token.
    token_hashes: Vec<Vec<u8>>,
    /// A client certificate verified against the configured CA is enough.
    accept_client_certificates: bool,
    /// Development only: everyone is accepted.
    insecure: bool,
}

impl std::fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAuth")
            .field("tokens", &self.token_hashes.len())
            .field(
                "accept_client_certificates",
                &self.accept_client_certificates,
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl GatewayAuth {
    pub fn new(tokens: &[SecretString], accept_client_certificates: bool) -> Self {
        Self {
            token_hashes: tokens
                .iter()
                .map(|t| hash_token(t.expose_secret()))
                .collect(),
            accept_client_certificates,
            insecure: false,
        }
    }

    /// Accepts every caller. Only for development; `runta serve` says so loudly.
    pub fn insecure() -> Self {
        Self {
            token_hashes: Vec::new(),
            accept_client_certificates: false,
            insecure: true,
        }
    }

    /// `Ok` for an authenticated gateway, `UNAUTHENTICATED` otherwise.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.insecure {
            return Ok(());
        }
        if self.accept_client_certificates
            && request.peer_certs().is_some_and(|certs| !certs.is_empty())
        {
            return Ok(());
        }
        if let Some(token) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
        {
            let presented = hash_token(token);
            // Compare against every configured token, without stopping early.
            let matched = self
                .token_hashes
                .iter()
                .fold(subtle::Choice::from(0), |acc, h| acc | h.ct_eq(&presented));
            if bool::from(matched) {
                return Ok(());
            }
        }
        Err(Status::unauthenticated(
            "runta: gateway not authenticated; send 'authorization: Bearer <gateway token>' or a client certificate",
        ))
    }
}
