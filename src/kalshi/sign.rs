//! Request signing: RSA-PSS / SHA-256 over `<ts_ms><METHOD><path>`, for the WebSocket
//! handshake (`GET/trade-api/ws/v2`) and REST requests (`GET/trade-api/v2/markets`: the path
//! from the API root, without host or query).
//!
//! In: the API key id and the private key PEM Kalshi issued (PKCS#1 or PKCS#8). Out: the three
//! `KALSHI-ACCESS-*` headers of one request. Sign afresh for every connect and every request:
//! the timestamp is part of the signed text. The private key never appears in `Debug` output
//! or in errors.
//!
//! A feed's `key_id` and `key_file` name a Kalshi API key: the settings load it through the
//! [`VenueKey`] implemented here, once, when they are validated, and the feed's connections
//! sign with that key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::pss::BlindedSigningKey;
use rsa::rand_core::OsRng;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, sha2::Sha256};

use super::WS_PATH;
use crate::config::{FeedSettings, VenueKey};

/// Smallest accepted modulus. Kalshi issues 2048-bit keys; anything shorter is refused at load,
/// which also guarantees that PSS with a 32-byte salt fits (it needs 521 bits), so signing
/// cannot fail later.
const MIN_KEY_BITS: usize = 2048;

/// An API key: its id and the RSA private key that signs handshakes.
pub struct Credentials {
    key_id: String,
    /// PSS with SHA-256, MGF1-SHA-256 and a salt as long as the digest (32 bytes); blinded, so
    /// signing time does not depend on the key.
    signer: BlindedSigningKey<Sha256>,
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file could not be read (missing, no permission...).
    #[error("private key file {path} is unreadable: {source}")]
    Unreadable {
        /// The file named in the settings.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but holds no usable RSA private key. Carries no key material.
    #[error("private key file {path} holds an invalid key: {reason}")]
    InvalidKey {
        /// The file named in the settings.
        path: PathBuf,
        /// What is wrong, in words.
        reason: &'static str,
    },
}

impl SignError {
    /// Whether the error is about the key file's content, as opposed to reaching the file.
    pub fn is_invalid_key(&self) -> bool {
        matches!(self, SignError::InvalidKey { .. })
    }
}

impl Credentials {
    /// Loads the private key from a PEM file: PKCS#1 (`BEGIN RSA PRIVATE KEY`) or unencrypted
    /// PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn load(key_id: &str, pem_path: &Path) -> Result<Credentials, SignError> {
        let invalid = |reason| SignError::InvalidKey { path: pem_path.to_owned(), reason };
        let bytes = std::fs::read(pem_path)
            .map_err(|source| SignError::Unreadable { path: pem_path.to_owned(), source })?;
        let pem = std::str::from_utf8(&bytes).map_err(|_| invalid("not a PEM text file"))?;
        // The decoders' own errors are dropped on purpose: they are generic, and nothing
        // derived from the file's content should reach a log.
        let key = if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| invalid("malformed PKCS#1 PEM"))?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|_| invalid("malformed PKCS#8 PEM, or not an RSA key"))?
        } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(invalid("encrypted PEM keys are not supported"));
        } else {
            return Err(invalid("no PKCS#1 or PKCS#8 private key PEM block"));
        };
        key.validate().map_err(|_| invalid("inconsistent RSA key"))?;
        if key.size() * 8 < MIN_KEY_BITS {
            return Err(invalid("RSA key shorter than 2048 bits"));
        }
        Ok(Credentials { key_id: key_id.to_owned(), signer: BlindedSigningKey::new(key) })
    }

    /// The API key id, sent as `KALSHI-ACCESS-KEY`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `KALSHI-ACCESS-SIGNATURE` value for a handshake at `timestamp_ms`: standard padded
    /// base64 of RSA-PSS over `"{timestamp_ms}GET/trade-api/ws/v2"`.
    pub fn sign(&self, timestamp_ms: i64) -> String {
        self.sign_request(timestamp_ms, "GET", WS_PATH)
    }

    /// The `KALSHI-ACCESS-SIGNATURE` value for a request at `timestamp_ms`: standard padded
    /// base64 of RSA-PSS over `"{timestamp_ms}{method}{path}"`, where `path` is the request's
    /// path from the API root (`/trade-api/v2/markets`), without host or query.
    pub fn sign_request(&self, timestamp_ms: i64, method: &str, path: &str) -> String {
        let message = format!("{timestamp_ms}{method}{path}");
        // Cannot fail: the key size is checked at load, and OsRng only fails if the operating
        // system has no randomness to give, which nothing could sign through anyway.
        let signature = self.signer.sign_with_rng(&mut OsRng, message.as_bytes());
        STANDARD.encode(signature.to_bytes())
    }

    /// The three handshake headers for a connection attempt at `now_ms` (Unix ms).
    pub fn headers(&self, now_ms: i64) -> [(&'static str, String); 3] {
        self.request_headers(now_ms, "GET", WS_PATH)
    }

    /// The three headers of a request to `path` at `now_ms` (Unix ms).
    pub fn request_headers(&self, now_ms: i64, method: &str, path: &str) -> [(&'static str, String); 3] {
        [
            ("KALSHI-ACCESS-KEY", self.key_id.clone()),
            ("KALSHI-ACCESS-TIMESTAMP", now_ms.to_string()),
            ("KALSHI-ACCESS-SIGNATURE", self.sign_request(now_ms, method, path)),
        ]
    }
}

/// A feed's signing key is a Kalshi API key: checked by `Settings::validate`, which names the
/// feed's `key_file` in any error, and kept for the feed's connections.
impl VenueKey for FeedSettings {
    type Key = Credentials;

    fn load_key(key_id: &str, path: &Path) -> Result<Credentials, String> {
        Credentials::load(key_id, path).map_err(|e| e.to_string())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use rsa::pkcs1::{EncodeRsaPrivateKey as _, LineEnding};
    use rsa::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _};
    use rsa::pss::{Signature, VerifyingKey};
    use rsa::signature::Verifier as _;
    use rsa::{RsaPublicKey, rand_core::OsRng};

    use super::*;

    const KEY_ID: &str = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c";

    /// One 2048-bit key per test binary: generating it is slow in debug builds.
    fn generated_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).expect("key generation"))
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi").join(name)
    }

    fn public_test_key() -> RsaPublicKey {
        let pem = std::fs::read_to_string(fixture("test_key_pub.pem")).expect("public test key");
        RsaPublicKey::from_public_key_pem(&pem).expect("public test key")
    }

    /// Verifies like the exchange does: PSS, SHA-256, MGF1-SHA-256, 32-byte salt.
    fn verifies(public: &RsaPublicKey, timestamp: &str, signature_b64: &str) -> bool {
        verifies_path(public, timestamp, "GET/trade-api/ws/v2", signature_b64)
    }

    fn verifies_path(public: &RsaPublicKey, timestamp: &str, method_path: &str, signature_b64: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(signature_b64) else {
            return false;
        };
        let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
            return false;
        };
        let message = format!("{timestamp}{method_path}");
        VerifyingKey::<Sha256>::new_with_salt_len(public.clone(), 32)
            .verify(message.as_bytes(), &signature)
            .is_ok()
    }

    #[test]
    fn both_pem_flavours_load_and_sign_verifiably() {
        let key = generated_key();
        let dir = tempfile::tempdir().expect("tempdir");
        let pkcs1 = dir.path().join("pkcs1.pem");
        let pkcs8 = dir.path().join("pkcs8.pem");
        std::fs::write(&pkcs1, key.to_pkcs1_pem(LineEnding::LF).expect("pkcs1").as_bytes()).expect("write");
        std::fs::write(&pkcs8, key.to_pkcs8_pem(LineEnding::CRLF).expect("pkcs8").as_bytes()).expect("write");

        for path in [&pkcs1, &pkcs8] {
            let credentials = Credentials::load(KEY_ID, path).expect("loads");
            let signature = credentials.sign(1703123456789);
            assert!(verifies(&key.to_public_key(), "1703123456789", &signature), "{path:?}");
            // The timestamp is part of what is signed.
            assert!(!verifies(&key.to_public_key(), "1703123456790", &signature), "{path:?}");
            // Standard, padded alphabet: a 2048-bit signature is 256 bytes, 344 characters.
            assert_eq!(signature.len(), 344);
            assert!(signature.ends_with('='));
        }
    }

    #[test]
    fn committed_test_keys_are_one_pair() {
        let public = public_test_key();
        for file in ["test_key_pkcs1.pem", "test_key_pkcs8.pem"] {
            let credentials = Credentials::load(KEY_ID, &fixture(file)).expect(file);
            let [key, ts, sig] = credentials.headers(1703123456789);
            assert_eq!(key, ("KALSHI-ACCESS-KEY", KEY_ID.to_owned()));
            assert_eq!(ts, ("KALSHI-ACCESS-TIMESTAMP", "1703123456789".to_owned()));
            assert_eq!(sig.0, "KALSHI-ACCESS-SIGNATURE");
            assert!(verifies(&public, &ts.1, &sig.1), "{file}");
        }
    }

    #[test]
    fn rest_requests_sign_their_own_method_and_path() {
        let credentials = Credentials::load(KEY_ID, &fixture("test_key_pkcs8.pem")).expect("key");
        let public = public_test_key();
        let [key, ts, sig] =
            credentials.request_headers(1703123456789, "GET", "/trade-api/v2/markets/trades");
        assert_eq!(key.1, KEY_ID);
        assert!(verifies_path(&public, &ts.1, "GET/trade-api/v2/markets/trades", &sig.1));
        assert!(!verifies_path(&public, &ts.1, "GET/trade-api/ws/v2", &sig.1), "the path is signed");
    }

    #[test]
    fn signatures_are_randomized_but_all_verify() {
        let credentials = Credentials::load(KEY_ID, &fixture("test_key_pkcs8.pem")).expect("key");
        let public = public_test_key();
        let (a, b) = (credentials.sign(5), credentials.sign(5));
        assert_ne!(a, b, "PSS uses a fresh salt per signature");
        assert!(verifies(&public, "5", &a) && verifies(&public, "5", &b));
    }

    #[test]
    fn a_missing_file_is_unreadable_and_names_the_path() {
        let path = Path::new("/nonexistent/tickd/kalshi.pem");
        let err = Credentials::load(KEY_ID, path).expect_err("no such file");
        assert!(matches!(err, SignError::Unreadable { .. }), "{err:?}");
        assert!(!err.is_invalid_key());
        assert!(err.to_string().contains("/nonexistent/tickd/kalshi.pem"), "{err}");
    }

    #[test]
    fn garbage_is_an_invalid_key_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_looking = "MIIEowIBAAKCAQEAsecretSECRETsecret";
        let cases: [(&str, Vec<u8>); 5] = [
            ("no pem", b"hello".to_vec()),
            ("not utf-8", vec![0xff, 0xfe, 0x00]),
            (
                "corrupt pkcs1",
                format!("-----BEGIN RSA PRIVATE KEY-----\n{secret_looking}\n-----END RSA PRIVATE KEY-----\n")
                    .into_bytes(),
            ),
            (
                "corrupt pkcs8",
                format!("-----BEGIN PRIVATE KEY-----\n{secret_looking}\n-----END PRIVATE KEY-----\n")
                    .into_bytes(),
            ),
            (
                "encrypted",
                format!(
                    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{secret_looking}\n-----END ENCRYPTED PRIVATE KEY-----\n"
                )
                .into_bytes(),
            ),
        ];
        for (name, content) in cases {
            let path = dir.path().join("key.pem");
            std::fs::write(&path, content).expect("write");
            let err = Credentials::load(KEY_ID, &path).expect_err(name);
            assert!(err.is_invalid_key(), "{name}: {err:?}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("key.pem"), "{name}: {shown}");
            assert!(!shown.contains("secret"), "{name}: key bytes leaked: {shown}");
        }
        // A public key is not a private key.
        let err = Credentials::load(KEY_ID, &fixture("test_key_pub.pem")).expect_err("public");
        assert!(err.is_invalid_key(), "{err:?}");
    }

    #[test]
    fn short_keys_are_refused() {
        let short = RsaPrivateKey::new(&mut OsRng, 1024).expect("key generation");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("short.pem");
        std::fs::write(&path, short.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes()).expect("write");
        let err = Credentials::load(KEY_ID, &path).expect_err("1024 bits");
        assert!(err.is_invalid_key(), "{err:?}");
    }

    #[test]
    fn debug_never_prints_the_key() {
        let credentials = Credentials::load(KEY_ID, &fixture("test_key_pkcs1.pem")).expect("key");
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(shown.contains(KEY_ID));
        assert!(shown.contains("<redacted>"));
        let pem = std::fs::read_to_string(fixture("test_key_pkcs1.pem")).expect("pem");
        let body_line = pem.lines().nth(1).expect("pem body");
        assert!(!shown.contains(body_line), "{shown}");
        assert!(!shown.to_lowercase().contains("biguint"), "{shown}");
    }
}
