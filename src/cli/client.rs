//! The admin API client the CLI commands use, and the CLI's error classification: exit code 1
//! for usage and API errors (with the server's message), 2 when the server cannot be reached.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

use crate::admin::views::List;
use crate::bootstrap::{API_KEY_FILE, OPERATOR_TOKEN_FILE};

/// A CLI failure; `Display` is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Wrong use of the command (or a local problem such as an unreadable file).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The server could not be reached.
    #[error("cannot reach the runta server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with JSON that is not the view this CLI knows (another version of
    /// the API, or not a runta server).
    #[error("unexpected answer from the server: {0}")]
    Answer(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Api { .. } | Self::Answer(_) => 1,
            Self::Unreachable { .. } => 2,
        }
    }
}

/// Which credential a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Tenant,
    Operator,
}

/// Where the server is and how to authenticate, from flags, environment, or the data
/// directory `runta serve` wrote its generated credentials into.
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<SecretString>,
    operator_token: Option<SecretString>,
    data_dir: PathBuf,
}

impl Client {
    pub fn new(
        api_url: &str,
        api_key: Option<String>,
        operator_token: Option<String>,
        data_dir: Option<PathBuf>,
    ) -> Result<Self, CliError> {
        let base = api_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--api-url '{api_url}' must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("runta-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(Self {
            http,
            base,
            api_key: api_key.filter(|k| !k.is_empty()).map(SecretString::from),
            operator_token: operator_token
                .filter(|k| !k.is_empty())
                .map(SecretString::from),
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from("./runta-data")),
        })
    }

    fn credential(&self, caller: Caller) -> Result<SecretString, CliError> {
        let (given, file, flag, env) = match caller {
            Caller::Tenant => (&self.api_key, API_KEY_FILE, "--api-key", "RUNTA_API_KEY"),
            Caller::Operator => (
                &self.operator_token,
                OPERATOR_TOKEN_FILE,
                "--operator-token",
                "RUNTA_OPERATOR_TOKEN",
            ),
        };
        if let Some(given) = given {
            return Ok(given.clone());
        }
        let path = self.data_dir.join(file);
        read_token_file(&path).ok_or_else(|| {
            CliError::Usage(format!(
                "no credential: pass {flag}, set {env}, or run this where `runta serve` keeps its data directory ({} not found)",
                path.display()
            ))
        })
    }

    /// Sends a request; answers the JSON body (`Null` for 204).
    pub async fn call(
        &self,
        caller: Caller,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Value, CliError> {
        let credential = self.credential(caller)?;
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(credential.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json.ok_or_else(|| CliError::Api {
                status: status.as_u16(),
                message: "the server answered with something that is not JSON".into(),
            });
        }
        Err(api_error(status, json))
    }

    /// GETs a document the server serves to anyone (`/v1/ca.pem`): its text.
    pub async fn get_public_text(&self, path: &str) -> Result<String, CliError> {
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        };
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(text);
        }
        Err(api_error(status, serde_json::from_str(&text).ok()))
    }

    /// Follows `next_cursor` until the list is complete; answers the items as the server sent
    /// them. `path` may carry a query of its own.
    pub async fn list_all(&self, caller: Caller, path: &str) -> Result<Vec<Value>, CliError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let separator = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}{separator}limit=1000&cursor={}", segment(c)),
                None => format!("{path}{separator}limit=1000"),
            };
            let page = self.call(caller, Method::GET, &url, None::<&()>).await?;
            let page: List<Value> = super::output::view(&page)?;
            items.extend(page.data);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }
}

/// The error of an answer that is not a success: the server's message when it sent one.
fn api_error(status: StatusCode, json: Option<Value>) -> CliError {
    let message = json
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
        });
    CliError::Api {
        status: status.as_u16(),
        message,
    }
}

/// A path segment, percent-encoded (names are validated by the server; this keeps a bad one
/// from changing the path).
pub fn segment(text: &str) -> String {
    crate::percent::encode(text)
}

fn read_token_file(path: &Path) -> Option<SecretString> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| SecretString::from(token.to_owned()))
}

fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}
