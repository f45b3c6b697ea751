//! Certificates made at test time (rcgen) for TLS brokers, and the rustls client
//! configuration the test viewers and observers connect with.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate and its key, in memory and as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A test CA with a broker certificate for `localhost` (and an expired one), client
/// certificates by name, and a second CA nobody trusts.
pub struct TestPki {
    dir: PathBuf,
    pub ca: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    rogue: Issuer<'static, KeyPair>,
    /// The broker's certificate: valid for `localhost` only (not 127.0.0.1).
    pub server: Issued,
    /// The same name, expired since 2020.
    pub expired_server: Issued,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params, KeyPair::generate().unwrap())
}

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        let (ca_params, ca_key) = ca("peercam test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_path = dir.join("ca.pem");
        write(&ca_path, &ca_cert.pem(), 0o644);
        let issuer = Issuer::new(ca_params, ca_key);
        let (rogue_params, rogue_key) = ca("untrusted CA");
        let rogue = Issuer::new(rogue_params, rogue_key);
        let server = issue(dir, &issuer, "server", &["localhost"], false);
        let expired_server = issue(dir, &issuer, "expired-server", &["localhost"], true);
        TestPki {
            dir: dir.to_owned(),
            ca: ca_path,
            ca_der: ca_cert.der().clone(),
            issuer,
            rogue,
            server,
            expired_server,
        }
    }

    /// A client certificate for `name`, signed by the test CA.
    pub fn client(&self, name: &str) -> Issued {
        issue(&self.dir, &self.issuer, name, &[], false)
    }

    /// A client certificate signed by a CA the broker does not trust.
    pub fn untrusted_client(&self, name: &str) -> Issued {
        issue(&self.dir, &self.rogue, name, &[], false)
    }

    /// What a test client connects with: the test CA only, and `client`'s certificate.
    pub fn client_config(&self, client: &Issued) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key_der.clone()));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client.der.clone()], key)
        .unwrap();
        Arc::new(config)
    }
}

/// A certificate for `names` (a client's when empty) signed by `issuer`, written to `dir`.
fn issue(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    names: &[&str],
    expired: bool,
) -> Issued {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write(&cert_path, &cert.pem(), 0o644);
    // Readable by the broker even after it drops root; these are throwaway test keys.
    write(&key_path, &key.serialize_pem(), 0o644);
    Issued {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}
