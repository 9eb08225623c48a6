//! TLS configurations, built with rustls on the `ring` provider from PEM files:
//!
//! - the client listener's (`--tls-cert`, `--tls-key`): server authentication only; clients
//!   authenticate with bearer tokens as over plain HTTP;
//! - mutual TLS between peers (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`): the peer
//!   listener accepts only connections that present a certificate signed by the peer CA, and
//!   this node's outbound Raft and forwarding connections present its own certificate and
//!   accept only servers whose certificate the peer CA signed and whose names include the
//!   address dialled (the `--peers` / membership address, an IP or a DNS name).
//!
//! Anything wrong with the files is found at start-up, with the path in the message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// This node's peer certificate and the CA that signs every member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate and key, presented on both sides of peer connections.
    pub own: CertKeyFiles,
    /// PEM bundle of the CA certificate(s) peers' certificates must chain to.
    pub ca: PathBuf,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("{context}: {source}")]
    Rustls {
        /// Which configuration.
        context: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The CA bundle cannot verify client certificates.
    #[error("peer CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// rustls on *ring*. rustls 0.23.48 deprecates this provider because *ring* has no
/// post-quantum key exchange; the provider that has one (aws-lc-rs) is a large C and assembly
/// build on every cold CI machine. Classical ECDHE (X25519, P-256) is what peers and clients
/// negotiate; docs/operations.md ("TLS") says so.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Every certificate in a PEM file; an error when there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// A root store holding every certificate of a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn rustls_error(context: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { context, source }
}

/// HTTP/1.1 only, like the plain listeners (the Raft stream is an HTTP/1.1 upgrade).
fn http1_only(alpn: &mut Vec<Vec<u8>>) {
    *alpn = vec![b"http/1.1".to_vec()];
}

/// The client listener's configuration: this certificate, no client certificates.
pub fn client_listener(files: &CertKeyFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("client TLS"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_error("--tls-cert/--tls-key"))?;
    http1_only(&mut config.alpn_protocols);
    Ok(Arc::new(config))
}

/// The peer listener's configuration: this node's peer certificate, and a client certificate
/// signed by the peer CA required of every connection.
pub fn peer_listener(files: &PeerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let certs = load_certs(&files.own.cert)?;
    let key = load_key(&files.own.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("peer TLS"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(rustls_error("--peer-tls-cert/--peer-tls-key"))?;
    http1_only(&mut config.alpn_protocols);
    Ok(Arc::new(config))
}

/// The configuration of this node's connections to peers: verify the server against the peer
/// CA, present this node's certificate.
pub fn peer_client(files: &PeerTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(&files.ca)?;
    let certs = load_certs(&files.own.cert)?;
    let key = load_key(&files.own.key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("peer TLS"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(rustls_error("--peer-tls-cert/--peer-tls-key"))?;
    http1_only(&mut config.alpn_protocols);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA and one leaf signed by it for 127.0.0.1, written as PEM files.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let leaf_key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&leaf_key, &ca, &ca_key)
                .unwrap();
            let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
            write("ca.pem", ca.pem()).unwrap();
            write("node.pem", leaf.pem()).unwrap();
            write("node.key", leaf_key.serialize_pem()).unwrap();
            write(
                "other.key",
                rcgen::KeyPair::generate().unwrap().serialize_pem(),
            )
            .unwrap();
            write("empty.pem", String::new()).unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn peer_files(&self, key: &str) -> PeerTlsFiles {
            PeerTlsFiles {
                own: CertKeyFiles {
                    cert: self.path("node.pem"),
                    key: self.path(key),
                },
                ca: self.path("ca.pem"),
            }
        }
    }

    #[test]
    fn builds_every_configuration_from_good_files() {
        let pki = Pki::new();
        let files = pki.peer_files("node.key");
        client_listener(&files.own).unwrap();
        peer_listener(&files).unwrap();
        let client = peer_client(&files).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let pki = Pki::new();
        let files = pki.peer_files("other.key");
        let err = client_listener(&files.own).unwrap_err().to_string();
        assert!(err.contains("--tls-cert/--tls-key"), "{err}");
        assert!(peer_listener(&files).is_err());
    }

    #[test]
    fn missing_and_empty_files_name_the_path() {
        let pki = Pki::new();
        let err = load_certs(&pki.path("absent.pem")).unwrap_err().to_string();
        assert!(err.contains("absent.pem"), "{err}");
        let err = load_certs(&pki.path("empty.pem")).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let err = load_key(&pki.path("empty.pem")).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "{err}");
    }
}
