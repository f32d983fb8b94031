//! PostgreSQL connections, with TLS as the database URL asks: one `PgConnector` per URL, read
//! once, makes every connection of the pool and the change follower's `LISTEN` connection.
//!
//! The URL's `sslmode` and `sslrootcert` are read here, the rest goes to tokio-postgres
//! (which knows only `disable`, `prefer` and `require`). The modes mean what they mean to
//! libpq:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked, or its chain when `sslrootcert` is given |
//! | `require` | always | not checked, or its chain when `sslrootcert` is given |
//! | `verify-ca` | always | chain up to `sslrootcert` or the platform's roots |
//! | `verify-full` | always | chain, and the host name of the URL |
//!
//! `sslrootcert=system` names the platform's roots explicitly and, as in libpq, allows only
//! `verify-full` (its default). `prefer` falls back to plain TCP only when the server answers
//! that it has no TLS; a failed handshake is a failure.
//!
//! Invariant: no error or log line built here carries the URL or its password; errors name
//! the host and port and the step that failed.

use std::path::PathBuf;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as WireSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values (`allow` excepted: plain first is never what we want).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, PgConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(PgConfigError::Url(format!(
                    "sslmode must be disable, prefer, require, verify-ca or verify-full, not '{other}'"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is optional, required, or off.
    fn wire(self) -> WireSslMode {
        match self {
            Self::Disable => WireSslMode::Disable,
            Self::Prefer => WireSslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => WireSslMode::Require,
        }
    }
}

/// Which certificates a server's chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The platform's store (`rustls-native-certs`; `SSL_CERT_FILE` / `SSL_CERT_DIR` override).
    Platform,
    /// `sslrootcert=FILE`: PEM certificates.
    File(PathBuf),
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Platform => f.write_str("the platform's root certificates"),
            Self::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// Why a PostgreSQL URL's connection settings cannot work: configuration errors, found before
/// any connection is tried.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    #[error("{0}")]
    Url(String),
    #[error("reading sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("no platform root certificates could be loaded ({0}); name a CA file with sslrootcert")]
    NoPlatformRoots(String),
}

/// Makes connections to one PostgreSQL database: the URL's settings and the TLS client built
/// from them. Cheap to clone.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// Whom the server's certificate chain was checked against, when it is.
    roots: Option<Roots>,
    /// `host:port` of every host the URL names, for messages.
    endpoints: String,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("endpoints", &self.endpoints)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// Reads a `postgres://` URL, its `sslmode` and `sslrootcert` included, and loads the root
    /// certificates it needs.
    pub fn from_url(url: &str) -> Result<Self, PgConfigError> {
        let (rest, mode, root_cert) = split_tls_params(url)?;
        // tokio-postgres's parse errors name the parameter, never its value.
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|err| PgConfigError::Url(with_causes(&err)))?;
        let system_roots = root_cert.as_deref() == Some("system");
        let mode = match (mode, system_roots) {
            (Some(mode), false) => mode,
            (None, false) => SslMode::Prefer,
            (None | Some(SslMode::VerifyFull), true) => SslMode::VerifyFull,
            (Some(weak), true) => {
                return Err(PgConfigError::Url(format!(
                    "sslrootcert=system needs sslmode=verify-full, not {}",
                    weak.as_str()
                )));
            }
        };
        config.ssl_mode(mode.wire());
        let root_file = root_cert.filter(|_| !system_roots).map(PathBuf::from);
        // libpq: with a root certificate file, `require` (and `prefer`) check the chain too.
        let roots = match (mode, root_file) {
            (SslMode::Disable, _) => None,
            (_, Some(file)) => Some(Roots::File(file)),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(Roots::Platform),
            (SslMode::Prefer | SslMode::Require, None) => None,
        };
        let tls = client_config(mode, roots.as_ref())?;
        Ok(Self {
            endpoints: endpoints(&config),
            config,
            tls: MakeRustlsConnect::new(tls),
            roots,
        })
    }

    /// Opens one connection, TLS as configured. The error names the host and the step that
    /// failed (TCP, TLS handshake, the server's refusal).
    pub async fn connect(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|err| ConnectionError::BadConnection(self.describe(&err)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }

    fn describe(&self, err: &tokio_postgres::Error) -> String {
        let step = if let Some(tls) = rustls_cause(err) {
            match tls {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!("TLS handshake: host name mismatch: {tls}"),
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => {
                    let roots = self
                        .roots
                        .as_ref()
                        .map_or_else(|| "the roots".to_owned(), Roots::to_string);
                    format!("TLS handshake: certificate not trusted by {roots}: {tls}")
                }
                other => format!("TLS handshake: {other}"),
            }
        } else if let Some(db) = err.as_db_error() {
            format!("refused by the server: {}", db.message())
        } else {
            let text = with_causes(err);
            match text.strip_prefix("error performing TLS handshake: ") {
                Some(cause) => format!("TLS handshake: {cause}"),
                None => text,
            }
        };
        format!("connecting to PostgreSQL at {}: {step}", self.endpoints)
    }
}

/// Opens one connection to the database `url` names (the change follower's `LISTEN`
/// connection); the pool keeps a `PgConnector` instead.
pub async fn establish(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    PgConnector::from_url(url)
        .map_err(|err| ConnectionError::InvalidConnectionUrl(err.to_string()))?
        .connect()
        .await
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query: answers the URL without them,
/// the mode and the root certificate setting (percent-decoded).
fn split_tls_params(url: &str) -> Result<(String, Option<SslMode>, Option<String>), PgConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(SslMode::parse(&percent_decode(value)?)?),
            "sslrootcert" => root_cert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

fn percent_decode(value: &str) -> Result<String, PgConfigError> {
    let invalid =
        || PgConfigError::Url("a query parameter is not valid percent-encoded UTF-8".into());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or_else(invalid)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// An error and its causes, `: `-separated (tokio-postgres's own `Display` omits the cause).
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

/// `host:port` for each host of the configuration, comma-separated.
fn endpoints(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(ToString::to_string)
            .collect()
    } else {
        config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    };
    let ports = config.get_ports();
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            if host.contains(':') && !host.starts_with('/') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rustls client for a mode: which verifier, over which roots.
fn client_config(mode: SslMode, roots: Option<&Roots>) -> Result<ClientConfig, PgConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }),
        Some(roots) => {
            let store = Arc::new(load_roots(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|err| PgConfigError::Url(format!("building the TLS verifier: {err}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| PgConfigError::Url(format!("TLS protocol versions: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; lets `sslnegotiation=direct` work, and older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, PgConfigError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Platform => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
                let why = if errors.is_empty() {
                    "none found".to_owned()
                } else {
                    errors.join("; ")
                };
                return Err(PgConfigError::NoPlatformRoots(why));
            }
        }
        Roots::File(path) => {
            let failed = |reason: String| PgConfigError::RootCert {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|err| failed(err.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|err| failed(format!("not PEM certificates: {err}")))?;
                store
                    .add(cert)
                    .map_err(|err| failed(format!("a certificate is not usable: {err}")))?;
            }
            if store.is_empty() {
                return Err(failed("no certificate in it".into()));
            }
        }
    }
    Ok(store)
}

/// The rustls error at the bottom of a failed handshake, if that is what failed.
fn rustls_cause(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls wraps rustls's error in an io::Error, whose `source` skips it.
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead to the roots; the
/// name is not checked. webpki checks the chain before the name, so a name mismatch means the
/// chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encryption without authentication of
/// the server, as in libpq. The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/etc/ca x.pem"));
        let (rest, mode, root) = split_tls_params("postgres://db/x?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/x", Some(SslMode::Disable), None)
        );
    }

    #[test]
    fn modes_and_their_verification() {
        let cases = [
            ("postgres://db/x", WireSslMode::Prefer, None),
            (
                "postgres://db/x?sslmode=disable",
                WireSslMode::Disable,
                None,
            ),
            (
                "postgres://db/x?sslmode=require",
                WireSslMode::Require,
                None,
            ),
            (
                "postgres://db/x?sslmode=verify-ca",
                WireSslMode::Require,
                Some(Roots::Platform),
            ),
            (
                "postgres://db/x?sslmode=verify-full",
                WireSslMode::Require,
                Some(Roots::Platform),
            ),
            (
                "postgres://db/x?sslrootcert=system",
                WireSslMode::Require,
                Some(Roots::Platform),
            ),
        ];
        for (url, wire, roots) in cases {
            let Ok(connector) = PgConnector::from_url(url) else {
                // A machine without any platform roots cannot build the verifying modes.
                assert!(roots.is_some(), "{url}");
                continue;
            };
            assert_eq!(connector.config.get_ssl_mode(), wire, "{url}");
            assert_eq!(connector.roots, roots, "{url}");
        }
    }

    #[test]
    fn bad_settings_are_named_without_the_password() {
        for (url, words) in [
            ("postgres://u:hunter2@db/x?sslmode=allow", "sslmode must be"),
            (
                "postgres://u:hunter2@db/x?sslmode=require&sslrootcert=system",
                "verify-full",
            ),
            (
                "postgres://u:hunter2@db/x?sslrootcert=/nonexistent/ca.pem",
                "reading sslrootcert /nonexistent/ca.pem",
            ),
            ("postgres://u:hunter2@db/x?sslnope=1", "sslnope"),
        ] {
            let message = PgConnector::from_url(url).unwrap_err().to_string();
            assert!(message.contains(words), "{url}: {message}");
            assert!(!message.contains("hunter2"), "{url}: {message}");
        }
    }

    #[test]
    fn endpoints_name_every_host() {
        let config: tokio_postgres::Config = "postgres://u:p@a:1,b:2,[::1]:3/x".parse().unwrap();
        assert_eq!(endpoints(&config), "a:1, b:2, [::1]:3");
        let config: tokio_postgres::Config = "postgres://u:p@db/x".parse().unwrap();
        assert_eq!(endpoints(&config), "db:5432");
    }
}
