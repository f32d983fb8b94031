//! HTTPS interception: runta's certificate authority and the per-name leaf certificates Envoy
//! terminates intercepted tunnels with (served over Delta SDS by [`sds`]).
//!
//! Invariants:
//! - A leaf is minted only for a name a caller's rules cover (the SDS service checks that
//!   before asking here), for that exact name (never a wildcard certificate), ECDSA P-256,
//!   valid for `interception.leaf_ttl_secs` and re-minted when a third of that is left.
//! - The CA key and leaf keys never leave this module but in the SDS answer to an
//!   authenticated Envoy: `Debug` prints no key, no log line holds one.
//! - The leaf cache is bounded: past [`MAX_CACHED_LEAVES`] expired leaves are dropped, then the
//!   oldest; the SDS service bounds its open streams the same way (a wildcard rule covers unboundedly many names).

pub mod sds;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use zeroize::Zeroizing;

/// File names of the generated CA in the embedded default's data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// How many leaves the cache keeps at most.
pub const MAX_CACHED_LEAVES: usize = 10_000;

/// Leaves start being valid this long before they are minted (clocks disagree a little).
const BACKDATE: Duration = Duration::from_secs(300);

/// Why the CA could not be loaded or a leaf minted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `key` is the configuration key naming the file (`interception.ca_cert_file` or
    /// `interception.ca_key_file`).
    #[error("{path}: {message}")]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("'{0}' is not a DNS name a leaf certificate can be minted for")]
    BadName(String),
    #[error("minting a certificate failed: {0}")]
    Mint(String),
}

const CERT_KEY: &str = "interception.ca_cert_file";
const KEY_KEY: &str = "interception.ca_key_file";

fn file_error(key: &'static str, path: &Path, message: impl std::fmt::Display) -> CaError {
    CaError::File {
        key,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The first certificate of a PEM text, re-encoded on its own: what runta publishes as its CA.
/// A text that holds a private key is refused, so that a combined key-and-certificate file can
/// never have its key served or exported.
pub fn certificate_pem(text: &str) -> Result<String, String> {
    if text.contains("PRIVATE KEY") {
        return Err(
            "holds a private key; the CA certificate file must hold the certificate \
                    only (the key goes in interception.ca_key_file)"
                .to_owned(),
        );
    }
    let der = pem_block(text, "CERTIFICATE")
        .ok_or("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")?;
    Ok(certificate_from_der(&der))
}

/// A DER certificate as PEM (64-character lines).
pub fn certificate_from_der(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A newly generated CA: the certificate and its private key, both PEM.
pub struct GeneratedCa {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// Generates an ECDSA P-256 CA for the embedded default, valid ten years.
pub fn generate_ca() -> Result<GeneratedCa, CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Mint(e.to_string()))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| CaError::Mint(e.to_string()))?;
    let mut name = DistinguishedName::new();
    let tag: u32 = rand::random();
    name.push(
        DnType::CommonName,
        format!("runta egress interception CA {tag:08x}"),
    );
    name.push(DnType::OrganizationName, "runta egress");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Mint(e.to_string()))?;
    Ok(GeneratedCa {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never with a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A leaf certificate for one name, with its key.
pub struct Leaf {
    pub name: String,
    pub cert_pem: String,
    key_pem: Zeroizing<String>,
    pub not_after: SystemTime,
    /// When a new leaf replaces this one.
    pub renew_at: SystemTime,
    /// Distinguishes successive leaves of one name (the SDS resource version).
    pub version: String,
}

impl Leaf {
    /// The private key, PEM (for the SDS answer only).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// runta's interception CA: signs leaves and keeps them until they need renewing.
pub struct Authority {
    /// The CA certificate alone, re-encoded (never anything else the file held).
    cert_pem: String,
    /// No leaf outlives its CA.
    ca_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    leaf_ttl: Duration,
    leaves: Mutex<HashMap<String, Arc<Leaf>>>,
    minted: prometheus::IntCounter,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("leaf_ttl", &self.leaf_ttl)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl Authority {
    /// The CA from its PEM files: the certificate must be a CA and the key its own.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        leaf_ttl: Duration,
        minted: prometheus::IntCounter,
    ) -> Result<Self, CaError> {
        let cert_pem = Zeroizing::new(
            std::fs::read_to_string(cert_file).map_err(|e| file_error(CERT_KEY, cert_file, e))?,
        );
        let key_pem = Zeroizing::new(
            std::fs::read_to_string(key_file).map_err(|e| file_error(KEY_KEY, key_file, e))?,
        );
        Self::from_pem(&cert_pem, &key_pem, leaf_ttl, minted).map_err(
            |(which, message)| match which {
                Which::Cert => file_error(CERT_KEY, cert_file, message),
                Which::Key => file_error(KEY_KEY, key_file, message),
            },
        )
    }

    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        leaf_ttl: Duration,
        minted: prometheus::IntCounter,
    ) -> Result<Self, (Which, String)> {
        let published = certificate_pem(cert_pem).map_err(|m| (Which::Cert, m))?;
        let der = pem_block(&published, "CERTIFICATE").expect("just encoded");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| (Which::Cert, format!("is not a readable certificate: {e}")))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err((
                Which::Cert,
                "is not a CA certificate (basic constraints CA:TRUE)".to_owned(),
            ));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let ca_not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
        if ca_not_after <= SystemTime::now() + leaf_ttl {
            return Err((
                Which::Cert,
                format!(
                    "expires {} (or within a leaf's lifetime, interception.leaf_ttl_secs): \
                     configure a CA that is valid longer",
                    parsed.validity().not_after
                ),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            (
                Which::Key,
                format!(
                    "is not a private key runta can sign with (PKCS#8 PEM, ECDSA or Ed25519): {e}"
                ),
            )
        })?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err((
                Which::Key,
                "is not the key of interception.ca_cert_file (their public keys differ)".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| (Which::Cert, format!("cannot sign with this CA: {e}")))?;
        Ok(Self {
            cert_pem: published,
            ca_not_after,
            issuer,
            leaf_ttl,
            leaves: Mutex::new(HashMap::new()),
            minted,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The leaf for `name`: the cached one while it is fresh, else a new one.
    pub fn leaf(&self, name: &str) -> Result<Arc<Leaf>, CaError> {
        if !is_dns_name(name) {
            return Err(CaError::BadName(name.to_owned()));
        }
        let now = SystemTime::now();
        if let Some(leaf) = self.leaves.lock().expect("not poisoned").get(name)
            && now < leaf.renew_at
        {
            return Ok(leaf.clone());
        }
        let leaf = Arc::new(self.mint(name, now)?);
        let mut leaves = self.leaves.lock().expect("not poisoned");
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.retain(|_, l| now < l.not_after);
            if leaves.len() >= MAX_CACHED_LEAVES {
                // Still full of valid leaves: drop the half closest to renewal.
                let mut by_age: Vec<(SystemTime, String)> = leaves
                    .iter()
                    .map(|(k, l)| (l.renew_at, k.clone()))
                    .collect();
                by_age.sort();
                for (_, key) in by_age.into_iter().take(MAX_CACHED_LEAVES / 2) {
                    leaves.remove(&key);
                }
            }
        }
        leaves.insert(name.to_owned(), leaf.clone());
        Ok(leaf)
    }

    fn mint(&self, name: &str, now: SystemTime) -> Result<Leaf, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Mint(e.to_string()))?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| CaError::Mint(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let end = (now + self.leaf_ttl).min(self.ca_not_after);
        params.not_before = time::OffsetDateTime::from(now - BACKDATE);
        params.not_after = time::OffsetDateTime::from(end);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        self.minted.inc();
        let version = format!(
            "{}",
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros()
        );
        Ok(Leaf {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            not_after: end,
            renew_at: now + end.duration_since(now).unwrap_or_default() * 2 / 3,
            version,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Which {
    Cert,
    Key,
}

/// The DER bytes of the first PEM block with this label.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// A name a leaf may be minted for: lowercase DNS labels of letters, digits and `-`, at least
/// two labels, at most 253 characters. (IP literals are not: clients send no SNI for them.)
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("minted", "minted").unwrap()
    }

    fn authority() -> Authority {
        let ca = generate_ca().unwrap();
        Authority::from_pem(
            &ca.cert_pem,
            &ca.key_pem,
            Duration::from_secs(3600),
            counter(),
        )
        .unwrap()
    }

    #[test]
    fn leaves_are_for_the_exact_name_signed_by_the_ca_and_cached() {
        let ca = authority();
        let leaf = ca.leaf("api.openai.com").unwrap();
        let der = pem_block(&leaf.cert_pem, "CERTIFICATE").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(api.openai.com)"]);
        assert!(!cert.is_ca());
        let ca_der = pem_block(ca.cert_pem(), "CERTIFICATE").unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity.whole_seconds() <= 3600 && validity.whole_seconds() > 3500);
        // Cached while fresh: the same leaf again.
        let again = ca.leaf("api.openai.com").unwrap();
        assert_eq!(again.version, leaf.version);
        assert!(Arc::ptr_eq(&again, &leaf));
        assert_eq!(ca.minted.get(), 1);
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn dns_names_up_to_their_limits() {
        let label = "a".repeat(63);
        assert!(is_dns_name(&format!("{label}.example.com")));
        assert!(!is_dns_name(&format!("a{label}.example.com")));
        let long = format!("{}.com", ["abcdefghi"; 24].join("."));
        assert!(long.len() <= 253 && is_dns_name(&long));
        let too_long = format!("{}.com", ["abcdefghi"; 26].join("."));
        assert!(too_long.len() > 253 && !is_dns_name(&too_long));
    }

    #[test]
    fn the_leaf_cache_stays_bounded() {
        let ca = authority();
        let seed = ca.leaf("seed.example.com").unwrap();
        // Filled without minting (the bound is about entries, not the cost of making them).
        for i in 0..MAX_CACHED_LEAVES {
            ca.leaves
                .lock()
                .unwrap()
                .insert(format!("n{i}.example.com"), seed.clone());
        }
        ca.leaf("one-more.example.com").unwrap();
        let leaves = ca.leaves.lock().unwrap();
        assert!(leaves.len() <= MAX_CACHED_LEAVES, "{}", leaves.len());
        assert!(leaves.contains_key("one-more.example.com"));
    }

    #[test]
    fn names_that_are_not_dns_names_get_no_leaf() {
        let ca = authority();
        for bad in [
            "",
            "localhost",
            "*.example.com",
            "API.example.com",
            "a..b",
            "-a.example.com",
            "10.0.0.1",
            "a_b.example.com",
            "runta-no-sni",
        ] {
            assert!(matches!(ca.leaf(bad), Err(CaError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let one = generate_ca().unwrap();
        let other = generate_ca().unwrap();
        let err = Authority::from_pem(
            &one.cert_pem,
            &other.key_pem,
            Duration::from_secs(60),
            counter(),
        )
        .unwrap_err();
        assert_eq!(err.0, Which::Key);
        assert!(err.1.contains("public keys differ"), "{}", err.1);
        let err = Authority::from_pem("junk", &one.key_pem, Duration::from_secs(60), counter())
            .unwrap_err();
        assert_eq!(err.0, Which::Cert);
        // A combined file (the key first, as some tools write it) as both: refused, so that
        // the key can never be published as "the CA certificate".
        let combined = format!("{}\n{}", one.key_pem.as_str(), one.cert_pem);
        let err = Authority::from_pem(&combined, &combined, Duration::from_secs(60), counter())
            .unwrap_err();
        assert_eq!(err.0, Which::Cert);
        assert!(err.1.contains("private key"), "{}", err.1);
        // What is published is the certificate alone.
        let loaded = Authority::from_pem(
            &format!("# comment\n{}", one.cert_pem),
            &one.key_pem,
            Duration::from_secs(60),
            counter(),
        )
        .unwrap();
        assert!(
            loaded
                .cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        assert_eq!(loaded.cert_pem().matches("BEGIN").count(), 1);
    }
}
