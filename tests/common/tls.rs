//! Certificates for tests of TLS ports: a private CA made in the test (rcgen), leaf
//! certificates it signs for 127.0.0.1 and `localhost`, written as the PEM files tickd reads,
//! and rustls clients that trust that CA and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate signed by a [`TestCa`], with its key.
pub struct Leaf {
    /// The certificate as served: leaf, then the CA (a chain, as a real file holds one).
    pub chain_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The leaf itself, to compare with what a handshake presents.
    pub der: CertificateDer<'static>,
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after: u64,
}

impl TestCa {
    /// A new CA with its own key.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tickd test CA");
        let key = KeyPair::generate().expect("a CA key");
        TestCa { issuer: CertifiedIssuer::self_signed(params, key).expect("the CA certificate") }
    }

    /// A certificate for 127.0.0.1, ::1 and `localhost`, named `name`, that expires on
    /// January 1st of `expires_in_year`.
    pub fn issue(&self, name: &str, expires_in_year: i32) -> Leaf {
        let sans = vec!["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned()];
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_after = rcgen::date_time_ymd(expires_in_year, 1, 1);
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("the leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            not_after: params.not_after.unix_timestamp() as u64,
        }
    }

    /// A rustls client that trusts this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("the CA as a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Leaf {
    /// Writes the chain and key to `dir/cert.pem` and `dir/key.pem` (replacing what is there,
    /// each in one rename, as a careful operator would); returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        replace(&cert, &self.chain_pem);
        replace(&key, &self.key_pem);
        (cert, key)
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// The leaf certificate the TLS port at `addr` presents to a new connection, verified with
/// `tls`. A full handshake: a resumed session would show the certificate of the session it
/// resumes.
pub async fn served_certificate(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let mut tls = (*tls).clone();
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = Arc::new(tls);
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("a TLS handshake with {addr}: {e}"));
    let (_, session) = stream.get_ref();
    session.peer_certificates().and_then(|c| c.first()).expect("the server presents a certificate").clone()
}
