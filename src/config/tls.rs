//! TLS server certificates: a PEM certificate chain and its private key, read and checked
//! together.
//!
//! In: the paths of `[dashboard] tls_cert_file` and `tls_key_file` (`credential:` already
//! resolved). Out: a [`ServerCertificate`] rustls can serve, with the leaf's expiry, or a
//! [`CertificateError`] naming the file at fault. Validation reads them so that `check-config`
//! and a start refuse files that cannot be served; the dashboard reads them again at start and
//! on every SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode as _;

/// A certificate chain and its key, checked to belong together.
#[derive(Clone, Debug)]
pub struct ServerCertificate {
    /// What a handshake presents: the chain as the file gives it, leaf first, and the key.
    pub certified: Arc<CertifiedKey>,
    /// When the leaf certificate expires, in seconds since the Unix epoch (its `notAfter`).
    pub not_after: u64,
    /// The leaf's subject (`CN=tickd.example.com`), for log lines.
    pub subject: String,
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The certificate file cannot be read, holds no certificate, or its first one cannot be
    /// parsed.
    #[error("{}: {reason}", .path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read or holds no private key rustls can sign with.
    #[error("{}: {reason}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Both read, but the key is not the one of the first certificate.
    #[error("the private key in {} is not the key of the first certificate in {}", .key.display(), .cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl CertificateError {
    /// The setting at fault, under its table: `tls_cert_file` or `tls_key_file`.
    pub fn setting(&self) -> &'static str {
        match self {
            CertificateError::Certificate { .. } => "tls_cert_file",
            CertificateError::Key { .. } | CertificateError::Mismatch { .. } => "tls_key_file",
        }
    }
}

/// Reads the chain in `cert` (leaf first, then any intermediates, each a PEM `CERTIFICATE`
/// block) and the private key in `key` (PKCS#8, PKCS#1 or SEC1 PEM), and checks that the key
/// is the leaf's. Blocking file I/O.
pub fn load_server_certificate(cert: &Path, key: &Path) -> Result<ServerCertificate, CertificateError> {
    let bad_cert = |reason: String| CertificateError::Certificate { path: cert.to_owned(), reason };
    let bad_key = |reason: String| CertificateError::Key { path: key.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|blocks| blocks.collect())
        .map_err(|e| bad_cert(pem_reason(e, "PEM `CERTIFICATE` block")))?;
    let Some(leaf) = chain.first() else {
        return Err(bad_cert("holds no PEM `CERTIFICATE` block".into()));
    };
    let parsed = x509_cert::Certificate::from_der(leaf)
        .map_err(|e| bad_cert(format!("its first certificate cannot be parsed: {e}")))?;
    let not_after = parsed.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    let subject = parsed.tbs_certificate.subject.to_string();
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad_key(pem_reason(e, "PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"))
    })?;
    let signer = ring::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad_key(format!("the private key cannot be used: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // `Unknown`: the key type cannot say its public key; the handshake would still work.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertificateError::Mismatch { cert: cert.to_owned(), key: key.to_owned() });
        }
        Err(e) => return Err(bad_cert(format!("its first certificate cannot be used: {e}"))),
    }
    Ok(ServerCertificate { certified: Arc::new(certified), not_after, subject })
}

/// A PEM reading error in a user's words; `wanted` names the block that was looked for.
fn pem_reason(e: pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot be read: {e}"),
        pem::Error::NoItemsFound => format!("holds no {wanted}"),
        e => format!("is not valid PEM: {e}"),
    }
}
