//! Test certificates, made with rcgen into a temp dir: one CA for the cluster, a certificate
//! per node naming its loopback IP (127.0.0.i), used both for the client listener and for
//! mutual TLS between peers, and a second, unrelated CA with a node certificate of its own,
//! for an impostor that must be refused.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::ports::node_ip;
use crate::NodeId;

/// A CA and its leaf certificates as PEM files.
pub struct TestPki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    /// A new CA; leaf certificates are made on demand ([`TestPki::node_files`]).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("test-pki-")
            .tempdir()
            .expect("pki temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aggregator test CA");
        let ca = params.self_signed(&ca_key).expect("self-signed CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Self { dir, ca, ca_key }
    }

    /// The CA bundle every node and client trusts.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Node `id`'s certificate and key (for 127.0.0.`id` and localhost), written once.
    pub fn node_files(&self, id: NodeId) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("node{id}.pem"));
        let key = self.dir.path().join(format!("node{id}.key"));
        if !cert.exists() {
            self.write_leaf(IpAddr::V4(node_ip(id)), &cert, &key);
        }
        (cert, key)
    }

    fn write_leaf(&self, ip: IpAddr, cert_path: &Path, key_path: &Path) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("aggregator {ip}"));
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        std::fs::write(cert_path, cert.pem()).expect("write leaf");
        std::fs::write(key_path, key.serialize_pem()).expect("write key");
    }

    /// The flags that give node `id` HTTPS for clients and mutual TLS for peers.
    pub fn node_args(&self, id: NodeId) -> Vec<String> {
        let (cert, key) = self.node_files(id);
        let (cert, key, ca) = (
            cert.display().to_string(),
            key.display().to_string(),
            self.ca_path().display().to_string(),
        );
        vec![
            "--tls-cert".into(),
            cert.clone(),
            "--tls-key".into(),
            key.clone(),
            "--peer-tls-cert".into(),
            cert,
            "--peer-tls-key".into(),
            key,
            "--peer-tls-ca".into(),
            ca,
        ]
    }
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Makes node `id`'s certificate one of another authority (a well-formed certificate for
    /// the right address that this cluster's CA never signed), as an impostor would have;
    /// returns that authority, whose CA a client needs to talk to the impostor.
    pub fn install_impostor(&self, id: NodeId) -> TestPki {
        let other = TestPki::new();
        let (cert, key) = other.node_files(id);
        let (to_cert, to_key) = (
            self.dir.path().join(format!("node{id}.pem")),
            self.dir.path().join(format!("node{id}.key")),
        );
        std::fs::copy(cert, to_cert).expect("copy impostor certificate");
        std::fs::copy(key, to_key).expect("copy impostor key");
        other
    }
}
