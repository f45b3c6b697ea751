//! The agent's TLS server identity: the one certificate and key (`[tls]`) that the page's
//! HTTPS listener and the embedded broker's WSS and MQTT-over-TLS listeners all present,
//! swapped in place on SIGHUP; and the self-signed certificates `peercam cert` writes.
//! It must never log or hand out key material, and a file that fails to load on reload must
//! never replace the certificate in use.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A certificate or key file that cannot be used, naming the `[tls]` key to fix.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {path}: {reason}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

fn error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError {
        key,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The one crypto provider of our TLS (rumqttc builds rustls with it too).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(key, path, format!("cannot read it: {e}")))
}

/// Parses a PEM certificate chain and the PEM private key that goes with its first
/// certificate.
pub fn parse_identity(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error("tls.cert_file", cert_file, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            "tls.cert_file",
            cert_file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        error(
            "tls.key_file",
            key_file,
            format!("holds no PEM private key: {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        error(
            "tls.key_file",
            key_file,
            format!("is not a key for the certificate in tls.cert_file: {e}"),
        )
    })
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert = read("tls.cert_file", cert_file)?;
    let key = read("tls.key_file", key_file)?;
    parse_identity(&cert, &key, cert_file, key_file)
}

/// Hands every handshake the certificate in use at that moment.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// The server side of TLS for every listener; clones share one certificate.
#[derive(Clone)]
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    /// Loads `cert_file` and `key_file` (PEM); the error names the key at fault.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(cert_file, key_file)?))));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("tls.cert_file", cert_file, e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        Ok(ServerTls {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Re-reads both files; new handshakes get the new certificate, open connections keep
    /// theirs. On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.cert_file, &self.key_file)?);
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// A self-signed certificate and its key, both PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate (DER), as browsers show it: `AB:CD:…`.
    pub fingerprint: String,
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses), for LAN use.
pub fn self_signed(hosts: &[String]) -> Result<SelfSigned, String> {
    use sha2::Digest;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(hosts.to_vec()).map_err(|e| e.to_string())?;
    let digest = sha2::Sha256::digest(cert.der());
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cert: &str, key: &str) -> Result<CertifiedKey, TlsError> {
        parse_identity(
            cert.as_bytes(),
            key.as_bytes(),
            Path::new("cert.pem"),
            Path::new("key.pem"),
        )
    }

    #[test]
    fn a_self_signed_pair_loads_and_mismatches_name_the_key_file() {
        let one = self_signed(&["camera.lan".into(), "192.168.1.20".into()]).unwrap();
        parse(&one.cert_pem, &one.key_pem).unwrap();
        assert_eq!(one.fingerprint.len(), 32 * 3 - 1);
        let other = self_signed(&["other.lan".into()]).unwrap();
        let e = parse(&one.cert_pem, &other.key_pem).unwrap_err();
        assert_eq!(e.key, "tls.key_file", "{e}");
        assert!(
            e.to_string().contains("not a key for the certificate"),
            "{e}"
        );
    }

    #[test]
    fn files_that_are_not_pem_name_their_key() {
        let pair = self_signed(&["camera.lan".into()]).unwrap();
        assert_eq!(parse("", &pair.key_pem).unwrap_err().key, "tls.cert_file");
        assert_eq!(
            parse(&pair.cert_pem, "not a key").unwrap_err().key,
            "tls.key_file"
        );
        // The key in the certificate file and vice versa.
        assert_eq!(
            parse(&pair.key_pem, &pair.cert_pem).unwrap_err().key,
            "tls.cert_file"
        );
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
        let dir = std::env::temp_dir().join(format!("peercam-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let write = |pair: &SelfSigned| {
            std::fs::write(&cert, &pair.cert_pem).unwrap();
            std::fs::write(&key, &pair.key_pem).unwrap();
        };
        let in_use = |tls: &ServerTls| tls.current.0.read().unwrap().cert[0].to_vec();
        let first = self_signed(&["a.lan".into()]).unwrap();
        write(&first);
        let tls = ServerTls::load(&cert, &key).unwrap();
        let before = in_use(&tls);
        write(&self_signed(&["b.lan".into()]).unwrap());
        tls.reload().unwrap();
        let after = in_use(&tls);
        assert_ne!(before, after);
        std::fs::write(&key, "garbage").unwrap();
        assert_eq!(tls.reload().unwrap_err().key, "tls.key_file");
        assert_eq!(in_use(&tls), after, "a bad file never replaces a good one");
        std::fs::remove_dir_all(&dir).ok();
    }
}
