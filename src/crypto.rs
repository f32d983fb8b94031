//! Encryption at rest, bearer tokens and ids.
//!
//! Secret values are sealed with AES-256-SIV under a keyring: every ciphertext records the id of
//! the key that sealed it, and its associated data binds it to the tenant id, the secret id and
//! the secret version, so a ciphertext copied into another row (or another tenant's) does not
//! open. Exactly one key is active for new writes; the others only open what they sealed until
//! `runta keys rotate` re-seals everything under the active key.
//!
//! Bearer tokens (API keys, runtime tokens) are random, shown once, and stored only as SHA-256
//! hashes; they have high entropy, so a fast hash is the right tool (nothing to brute-force).

use std::collections::BTreeMap;
use std::fmt;

use aes_siv::aead::{Aead, KeyInit, Payload};
use aes_siv::{Aes256SivAead, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::{Rng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Length of an AES-256-SIV key: two AES-256 keys (MAC and CTR).
pub const KEY_LEN: usize = 64;
/// Length of the random nonce stored beside every ciphertext.
pub const NONCE_LEN: usize = 16;

/// Why a keyring could not be built or a value not sealed or opened. Never carries key or
/// plaintext material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key '{id}': {reason}")]
    BadKey { id: String, reason: String },
    #[error("no encryption key with id '{0}' is configured")]
    UnknownKey(String),
    #[error("the ciphertext does not open with key '{0}' (wrong key, or moved to another row)")]
    Open(String),
    #[error("sealing failed")]
    Seal,
}

/// One AES-256-SIV key. The raw bytes are zeroized on drop and never printed.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self { bytes }
    }

    /// Parses the base64 text form (surrounding white space ignored).
    pub fn from_base64(id: &str, text: &str) -> Result<Self, CryptoError> {
        let bad = |reason: String| CryptoError::BadKey {
            id: id.to_owned(),
            reason,
        };
        let mut decoded = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| bad("is not valid base64".into()))?,
        );
        if decoded.len() != KEY_LEN {
            let len = decoded.len();
            decoded.zeroize();
            return Err(bad(format!(
                "must be {KEY_LEN} bytes (base64 of 64 random bytes), got {len}"
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Self { bytes })
    }

    /// The base64 text form, for writing a generated key to a file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.bytes.as_ref()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// What a ciphertext is bound to: opening it under any other context fails.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub tenant_id: &'a str,
    pub secret_id: &'a str,
    pub version: i64,
}

impl SealContext<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // Length-prefixed fields: no two different contexts share an encoding.
        let mut ad = Vec::with_capacity(64);
        ad.extend_from_slice(b"runta.secret.v1");
        for field in [self.tenant_id.as_bytes(), self.secret_id.as_bytes()] {
            ad.extend_from_slice(&(field.len() as u32).to_be_bytes());
            ad.extend_from_slice(field);
        }
        ad.extend_from_slice(&self.version.to_be_bytes());
        ad
    }
}

/// A sealed value as it is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// The configured keys, by id, and the one new values are sealed with.
pub struct Keyring {
    keys: BTreeMap<String, Aes256SivAead>,
    active: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl Keyring {
    /// Builds a keyring; `active` must be one of the ids.
    pub fn new(
        keys: impl IntoIterator<Item = (String, MasterKey)>,
        active: &str,
    ) -> Result<Self, CryptoError> {
        let keys: BTreeMap<String, Aes256SivAead> = keys
            .into_iter()
            .map(|(id, key)| {
                let cipher = Aes256SivAead::new_from_slice(key.bytes.as_ref())
                    .expect("a MasterKey is always KEY_LEN bytes");
                (id, cipher)
            })
            .collect();
        if !keys.contains_key(active) {
            return Err(CryptoError::UnknownKey(active.to_owned()));
        }
        Ok(Self {
            keys,
            active: active.to_owned(),
        })
    }

    /// The id of the key new values are sealed with.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` under the active key, bound to `ctx`.
    pub fn seal(&self, plaintext: &[u8], ctx: SealContext<'_>) -> Result<Sealed, CryptoError> {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ad = ctx.associated_data();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(Sealed {
            key_id: self.active.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed value; fails unless the key, nonce and context are exactly those it was
    /// sealed with.
    pub fn open(
        &self,
        sealed: &Sealed,
        ctx: SealContext<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce = <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice())
            .map_err(|_| CryptoError::Open(sealed.key_id.clone()))?;
        let ad = ctx.associated_data();
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open(sealed.key_id.clone()))
    }

    /// Opens a value as UTF-8 text (values are validated as text when stored).
    pub fn open_string(
        &self,
        sealed: &Sealed,
        ctx: SealContext<'_>,
    ) -> Result<SecretString, CryptoError> {
        let bytes = self.open(sealed, ctx)?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| CryptoError::Open(sealed.key_id.clone()))?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// The kinds of bearer token the service issues; the prefix makes a leaked token recognisable
/// (and greppable by secret scanners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ApiKey,
    RuntimeToken,
    OperatorToken,
    GatewayToken,
}

/// How every runtime token begins.
pub const RUNTIME_TOKEN_PREFIX: &str = "runta_rt_";

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => "runta_ak_",
            Self::RuntimeToken => RUNTIME_TOKEN_PREFIX,
            Self::OperatorToken => "runta_op_",
            Self::GatewayToken => "runta_gw_",
        }
    }
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new random token: its prefix and 40 alphanumeric characters (about 238 bits). Only
/// characters that are safe unescaped in a URL's user-info, so a runtime token can be the user
/// name of `HTTP_PROXY=http://<token>@gateway:10000`.
pub fn generate_token(kind: TokenKind) -> SecretString {
    let mut rng = rand::rng();
    let mut token = String::with_capacity(kind.prefix().len() + 40);
    token.push_str(kind.prefix());
    for _ in 0..40 {
        token.push(ALPHANUMERIC[rng.random_range(0..ALPHANUMERIC.len())] as char);
    }
    SecretString::from(token)
}

/// The stored form of a token: its SHA-256.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of a token: what is stored and compared, never the token.
pub type TokenHash = [u8; 32];

/// Tells whether a secret value changed without keeping the value: SHA-256 over a random key
/// and the value. The key belongs to this instance (one per sidecar stream), so a fingerprint
/// means nothing anywhere else and cannot be tested against guesses without the key.
pub struct Fingerprints {
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl Fingerprints {
    pub fn new() -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        Self { key }
    }

    /// The fingerprint of a value.
    pub fn of(&self, value: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key.as_ref());
        hasher.update(value.as_bytes());
        hasher.finalize().into()
    }
}

impl Default for Fingerprints {
    fn default() -> Self {
        Self::new()
    }
}

/// Constant-time equality of two tokens (compares their hashes, so lengths leak nothing).
pub fn tokens_equal(a: &str, b: &SecretString) -> bool {
    use subtle::ConstantTimeEq;
    hash_token(a).ct_eq(&hash_token(b.expose_secret())).into()
}

const CROCKFORD: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The last id value handed out in this process: ids made in the same millisecond count up
/// from it, so they still sort in creation order.
static LAST_ID: std::sync::Mutex<u128> = std::sync::Mutex::new(0);

/// A new id: `prefix_` and 26 Crockford base32 characters, 48 bits of milliseconds then 80
/// random bits, so ids sort by creation time (lists and cursors rely on that ordering).
pub fn new_id(prefix: &str) -> String {
    let millis = chrono::Utc::now().timestamp_millis().max(0) as u128;
    // Random bits with the top one clear, so counting up within a millisecond cannot carry
    // into the time bits.
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 79) - 1);
    let mut value = (millis << 80) | random;
    {
        let mut last = LAST_ID
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    id_text(prefix, value)
}

/// The id `prefix_` + the 26 characters that encode `value` (what `new_id` makes).
pub fn id_text(prefix: &str, mut value: u128) -> String {
    let mut chars = [0u8; 26];
    for slot in chars.iter_mut().rev() {
        *slot = CROCKFORD[(value & 31) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(prefix.len() + 27);
    id.push_str(prefix);
    id.push('_');
    id.push_str(std::str::from_utf8(&chars).expect("alphabet is ASCII"));
    id
}

/// The value an id of the form `new_id` makes encodes, if `id` is exactly that form (so that
/// `id_text(prefix, value) == id`).
pub fn id_value(prefix: &str, id: &str) -> Option<u128> {
    let chars = id.strip_prefix(prefix)?.strip_prefix('_')?.as_bytes();
    if chars.len() != 26 || !matches!(chars[0], b'0'..=b'7') {
        return None;
    }
    chars.iter().try_fold(0u128, |value, c| {
        let digit = CROCKFORD.iter().position(|a| a == c)? as u128;
        Some((value << 5) | digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str], active: &str) -> Keyring {
        Keyring::new(
            ids.iter().map(|id| (id.to_string(), MasterKey::generate())),
            active,
        )
        .unwrap()
    }

    const CTX: SealContext<'static> = SealContext {
        tenant_id: "ten_a",
        secret_id: "sec_1",
        version: 1,
    };

    #[test]
    fn seal_and_open_round_trip() {
        let ring = ring(&["k1"], "k1");
        let sealed = ring.seal(b"sk-test-value", CTX).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.ciphertext.windows(13).any(|w| w == b"sk-test-value"));
        assert_eq!(
            ring.open(&sealed, CTX).unwrap().as_slice(),
            b"sk-test-value"
        );
    }

    #[test]
    fn same_value_sealed_twice_differs() {
        let ring = ring(&["k1"], "k1");
        let a = ring.seal(b"v", CTX).unwrap();
        let b = ring.seal(b"v", CTX).unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn other_context_does_not_open() {
        let ring = ring(&["k1"], "k1");
        let sealed = ring.seal(b"v", CTX).unwrap();
        for ctx in [
            SealContext {
                tenant_id: "ten_b",
                ..CTX
            },
            SealContext {
                secret_id: "sec_2",
                ..CTX
            },
            SealContext { version: 2, ..CTX },
        ] {
            assert!(matches!(ring.open(&sealed, ctx), Err(CryptoError::Open(_))));
        }
    }

    #[test]
    fn wrong_key_does_not_open() {
        let sealed = ring(&["k1"], "k1").seal(b"v", CTX).unwrap();
        let other = ring(&["k1"], "k1");
        assert!(matches!(
            other.open(&sealed, CTX),
            Err(CryptoError::Open(_))
        ));
        let missing = ring(&["k2"], "k2");
        assert!(matches!(
            missing.open(&sealed, CTX),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn key_text_form_is_validated_and_redacted() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        assert!(MasterKey::from_base64("k", &text).is_ok());
        let err = MasterKey::from_base64("k", "c2hvcnQ=").unwrap_err();
        assert!(err.to_string().contains("64 bytes"), "{err}");
        assert!(MasterKey::from_base64("k", "not base64!").is_err());
        assert_eq!(format!("{key:?}"), "MasterKey([REDACTED])");
        assert!(!format!("{:?}", ring(&["k1"], "k1")).contains(text.as_str()));
    }

    #[test]
    fn tokens_and_ids_have_their_shape() {
        let token = generate_token(TokenKind::RuntimeToken);
        let token = token.expose_secret();
        assert!(token.starts_with("runta_rt_") && token.len() == 49);
        assert!(tokens_equal(token, &SecretString::from(token.to_owned())));
        assert!(!tokens_equal(
            "runta_rt_x",
            &SecretString::from(token.to_owned())
        ));
        let a = new_id("sec");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("sec");
        assert!(a.starts_with("sec_") && a.len() == 30);
        assert!(a < b, "ids sort by creation time");
    }
}
