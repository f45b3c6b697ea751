//! The MQTT client's transport security: the rustls client configuration for `mqtts://`
//! (the system trust store plus `mqtt.ca_file`, and `mqtt.cert_file` / `mqtt.key_file` for
//! mutual TLS), `mqtt.password_file`, and the one line a failed connection is reported as,
//! naming the key to fix. Pure apart from reading those files. It must never turn off
//! certificate or host-name verification, and never put a password into an error, a log
//! line or a `Debug` output.

use rumqttc::ConnectionError;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file behind a key that cannot be used: the key, and why (never the file's contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FileError {
    pub key: &'static str,
    pub reason: String,
}

impl FileError {
    fn new(key: &'static str, path: &Path, reason: impl fmt::Display) -> FileError {
        FileError {
            key,
            reason: format!("{}: {reason}", path.display()),
        }
    }
}

/// The broker password. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(…)")
    }
}

impl Password {
    pub fn new(password: String) -> Password {
        Password(password)
    }

    /// The password itself, for the CONNECT packet only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Reads `mqtt.password_file`: the password is the whole file without its final newline.
/// A file that group or others can read is refused, as `auth.secret_file` is.
pub fn read_password_file(path: &Path) -> Result<Password, FileError> {
    let error = |reason: String| FileError::new("mqtt.password_file", path, reason);
    let bytes = crate::auth::read_private_file(path).map_err(error)?;
    let text = String::from_utf8(bytes).map_err(|_| error("is not UTF-8 text".into()))?;
    let password = text
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(error("is empty".into()));
    }
    Ok(Password(password.to_owned()))
}

/// The PEM files a TLS connection to the broker uses, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `mqtt.ca_file`: CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// `mqtt.cert_file` and `mqtt.key_file`: the client certificate (chain) and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| FileError::new(key, path, pem_reason(&err)))?;
    if certs.is_empty() {
        return Err(FileError::new(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn pem_reason(err: &pem::Error) -> String {
    match err {
        pem::Error::Io(err) => format!("cannot read it: {err}"),
        pem::Error::NoItemsFound => "holds no PEM item of the expected kind".into(),
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// The trust anchors: the system's store (what it holds; an unreadable one is simply
/// empty) and every certificate in `ca_file`.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(
        certificates = added,
        errors = system.errors.len(),
        "system trust store loaded"
    );
    if let Some(path) = ca_file {
        for cert in read_certificates("mqtt.ca_file", path)? {
            roots.add(cert).map_err(|err| {
                FileError::new(
                    "mqtt.ca_file",
                    path,
                    format!("holds a certificate rustls cannot use as a CA: {err}"),
                )
            })?;
        }
    }
    Ok(roots)
}

/// The client configuration for `mqtts://`: system roots plus `ca_file`, the client
/// certificate when given, TLS 1.2 and 1.3 with the ring provider, and rustls' standard
/// verification (chain, validity dates, host name), which nothing here can turn off.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, FileError> {
    let roots = root_store(files.ca_file.as_deref())?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| FileError {
        key: "mqtt.broker",
        reason: format!("no TLS version available: {err}"),
    })?
    .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = read_certificates("mqtt.cert_file", cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|err| match err {
                pem::Error::NoItemsFound => FileError::new(
                    "mqtt.key_file",
                    key_file,
                    "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ),
                other => FileError::new("mqtt.key_file", key_file, pem_reason(&other)),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                FileError::new(
                    "mqtt.key_file",
                    key_file,
                    format!("cannot be used with mqtt.cert_file: {err}"),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// What the connection was set up with, so a failure can name the key that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureContext {
    /// `host:port`, as the log names the broker.
    pub broker: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: bool,
    pub username: Option<String>,
    /// `mqtt.password_file` or `mqtt.password`, whichever holds the password.
    pub password_key: &'static str,
}

/// The rustls error behind a connection error, wherever in the chain it is (I/O errors
/// carry it as their inner error, which `source()` skips).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        current = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Alerts a broker sends about the client's certificate (or its absence).
fn is_client_certificate_alert(alert: &AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// The one line a failed connection attempt is logged as. It starts with the key to fix
/// (the broker's own certificate problems name `mqtt.broker`, the broker in question) and
/// never contains a password. Unrecognised failures keep the client's own wording.
pub fn describe_failure(err: &ConnectionError, ctx: &FailureContext) -> String {
    let broker = &ctx.broker;
    if let Some(tls) = rustls_error(err) {
        return describe_tls_failure(tls, ctx);
    }
    match err {
        ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized,
        ) => match &ctx.username {
            Some(username) => format!(
                "{}: the broker at {broker} refused the username {username:?} or its password",
                ctx.password_key
            ),
            None => format!(
                "mqtt.username: the broker at {broker} refused an anonymous connection; set mqtt.username and mqtt.password_file"
            ),
        },
        ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadClientId) => {
            format!("mqtt.client_id: the broker at {broker} refused the client id")
        }
        ConnectionError::ConnectionRefused(code) => {
            format!("mqtt.broker: the broker at {broker} refused the connection ({code:?})")
        }
        other => format!("mqtt.broker: cannot connect to {broker}: {other}"),
    }
}

fn describe_tls_failure(err: &rustls::Error, ctx: &FailureContext) -> String {
    let broker = &ctx.broker;
    let host = broker
        .rsplit_once(':')
        .map_or(broker.as_str(), |(host, _)| host);
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => match &ctx.ca_file {
                Some(path) => format!(
                    "mqtt.ca_file: the broker's certificate is signed by an unknown CA (neither in {} nor in the system trust store)",
                    path.display()
                ),
                None => "mqtt.ca_file: the broker's certificate is signed by an unknown CA (not in the system trust store); set mqtt.ca_file to the PEM file of the CA that signed it".to_owned(),
            },
            CertificateError::NotValidForName => format!(
                "mqtt.broker: the broker's certificate is not valid for the host name {host:?}"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "mqtt.broker: the broker's certificate is not valid for the host name {host:?} (it names {})",
                presented.iter().map(|name| presented_name(name)).collect::<Vec<_>>().join(", ")
            ),
            CertificateError::Expired => format!(
                "mqtt.broker: the certificate of the broker at {broker} has expired; renew it on the broker (or check this machine's clock)"
            ),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "mqtt.broker: the certificate of the broker at {broker} expired {} ago; renew it on the broker (or check this machine's clock)",
                ago(time.as_secs().saturating_sub(not_after.as_secs()))
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "mqtt.broker: the certificate of the broker at {broker} is not valid yet; check this machine's clock"
            ),
            other => format!(
                "mqtt.ca_file: the broker's certificate was refused: {other}"
            ),
        },
        rustls::Error::AlertReceived(alert) if is_client_certificate_alert(alert) => {
            if ctx.client_cert {
                format!("mqtt.cert_file: the broker at {broker} rejected the client certificate (TLS alert {alert:?})")
            } else {
                format!("mqtt.cert_file: the broker at {broker} requires a client certificate; set mqtt.cert_file and mqtt.key_file (TLS alert {alert:?})")
            }
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "mqtt.broker: {broker} does not speak TLS as expected (a plain mqtt:// listener?): {err}"
        ),
        other => format!("mqtt.broker: TLS with {broker} failed: {other}"),
    }
}

/// A name a certificate presents, as rustls words it (`DnsName("broker.lan")`,
/// `IpAddress(10.0.0.2)`), without the wrapping: `broker.lan`, `10.0.0.2`.
fn presented_name(name: &str) -> &str {
    name.split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(|inner| inner.trim_matches('"'))
        .unwrap_or(name)
}

/// "3 days", "5 hours", "42 seconds".
fn ago(seconds: u64) -> String {
    let (value, unit) = match seconds {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3600 => (s / 3600, "hours"),
        s if s >= 2 * 60 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    format!("{value} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn ctx() -> FailureContext {
        FailureContext {
            broker: "broker.example.net:8883".into(),
            ca_file: Some("/etc/peercam/ca.pem".into()),
            client_cert: true,
            username: Some("camera".into()),
            password_key: "mqtt.password_file",
        }
    }

    /// A TLS failure as rumqttc reports one from the handshake.
    fn handshake(err: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            err,
        )))
    }

    fn certificate(err: CertificateError) -> ConnectionError {
        handshake(rustls::Error::InvalidCertificate(err))
    }

    #[test]
    fn an_unknown_ca_names_the_ca_file() {
        let line = describe_failure(&certificate(CertificateError::UnknownIssuer), &ctx());
        assert_eq!(line, "mqtt.ca_file: the broker's certificate is signed by an unknown CA (neither in /etc/peercam/ca.pem nor in the system trust store)");
        let without = FailureContext {
            ca_file: None,
            ..ctx()
        };
        let line = describe_failure(&certificate(CertificateError::UnknownIssuer), &without);
        assert!(line.starts_with("mqtt.ca_file: the broker's certificate is signed by an unknown CA (not in the system trust store); set mqtt.ca_file"), "{line}");
    }

    #[test]
    fn a_host_name_mismatch_names_the_broker_and_what_the_certificate_names() {
        let ctx = FailureContext {
            broker: "127.0.0.1:8883".into(),
            ..ctx()
        };
        let err = certificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(10.0.0.2)".into(),
            ],
        });
        assert_eq!(
            describe_failure(&err, &ctx),
            "mqtt.broker: the broker's certificate is not valid for the host name \"127.0.0.1\" (it names localhost, 10.0.0.2)"
        );
        let bare = describe_failure(&certificate(CertificateError::NotValidForName), &ctx);
        assert!(bare.starts_with("mqtt.broker: the broker's certificate is not valid for the host name \"127.0.0.1\""), "{bare}");
    }

    #[test]
    fn an_expired_certificate_says_how_long_ago() {
        let now = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
        let then = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000 - 3 * 86_400));
        let err = certificate(CertificateError::ExpiredContext {
            time: now,
            not_after: then,
        });
        assert_eq!(
            describe_failure(&err, &ctx()),
            "mqtt.broker: the certificate of the broker at broker.example.net:8883 expired 3 days ago; renew it on the broker (or check this machine's clock)"
        );
        let bare = describe_failure(&certificate(CertificateError::Expired), &ctx());
        assert!(bare.contains("has expired"), "{bare}");
        let early = describe_failure(&certificate(CertificateError::NotValidYet), &ctx());
        assert!(
            early.starts_with("mqtt.broker:") && early.contains("not valid yet"),
            "{early}"
        );
    }

    #[test]
    fn a_rejected_client_certificate_names_the_cert_file_whether_given_or_missing() {
        // TLS 1.3 brokers reject the certificate after the handshake: on the first read.
        let after_handshake = |alert| {
            ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert),
            ))
        };
        let line = describe_failure(&after_handshake(AlertDescription::UnknownCA), &ctx());
        assert_eq!(line, "mqtt.cert_file: the broker at broker.example.net:8883 rejected the client certificate (TLS alert UnknownCA)");
        let none = FailureContext {
            client_cert: false,
            ..ctx()
        };
        let line = describe_failure(
            &after_handshake(AlertDescription::CertificateRequired),
            &none,
        );
        assert!(line.starts_with("mqtt.cert_file: the broker at broker.example.net:8883 requires a client certificate; set mqtt.cert_file and mqtt.key_file"), "{line}");
        let other = describe_failure(
            &handshake(rustls::Error::AlertReceived(
                AlertDescription::ProtocolVersion,
            )),
            &ctx(),
        );
        assert!(
            other.starts_with("mqtt.broker: TLS with broker.example.net:8883 failed"),
            "{other}"
        );
    }

    #[test]
    fn bad_credentials_name_where_the_password_comes_from_and_never_show_it() {
        for code in [
            rumqttc::ConnectReturnCode::NotAuthorized,
            rumqttc::ConnectReturnCode::BadUserNamePassword,
        ] {
            let err = ConnectionError::ConnectionRefused(code);
            assert_eq!(
                describe_failure(&err, &ctx()),
                "mqtt.password_file: the broker at broker.example.net:8883 refused the username \"camera\" or its password"
            );
            let inline = FailureContext {
                password_key: "mqtt.password",
                ..ctx()
            };
            assert!(describe_failure(&err, &inline).starts_with("mqtt.password: "));
            let anonymous = FailureContext {
                username: None,
                ..ctx()
            };
            assert!(describe_failure(&err, &anonymous).starts_with("mqtt.username: "));
        }
    }

    #[test]
    fn other_failures_name_the_broker_and_keep_the_client_wording() {
        let refused =
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let line = describe_failure(&refused, &ctx());
        assert!(
            line.starts_with("mqtt.broker: cannot connect to broker.example.net:8883: I/O:"),
            "{line}"
        );
        let plain = handshake(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(describe_failure(&plain, &ctx()).contains("does not speak TLS"));
        assert!(describe_failure(
            &ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadClientId),
            &ctx()
        )
        .starts_with("mqtt.client_id: "));
    }

    fn temp_file(name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "peercam-mqtt-security-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_password_file_is_private_and_its_final_newline_is_not_part_of_the_password() {
        let path = temp_file("password", b"s3cret\n", 0o600);
        assert_eq!(read_password_file(&path).unwrap().expose(), "s3cret");
        assert_eq!(
            format!("{:?}", read_password_file(&path).unwrap()),
            "Password(…)"
        );
        let crlf = temp_file("crlf", b"s3cret\r\n", 0o400);
        assert_eq!(read_password_file(&crlf).unwrap().expose(), "s3cret");
        let open = temp_file("open", b"s3cret\n", 0o644);
        let err = read_password_file(&open).unwrap_err();
        assert_eq!(err.key, "mqtt.password_file");
        assert!(err.to_string().starts_with("mqtt.password_file: "), "{err}");
        assert!(
            err.reason.contains("mode 644") && err.reason.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"));
        let empty = temp_file("empty", b"\n", 0o600);
        assert!(read_password_file(&empty)
            .unwrap_err()
            .reason
            .ends_with("is empty"));
        let missing = read_password_file(Path::new("/nonexistent/password")).unwrap_err();
        assert!(missing.reason.contains("cannot read it"), "{missing}");
    }

    #[test]
    fn tls_files_that_do_not_parse_name_their_key() {
        let not_pem = temp_file("ca.pem", b"not a certificate\n", 0o644);
        let err = client_config(&TlsFiles {
            ca_file: Some(not_pem.clone()),
            client: None,
        })
        .unwrap_err();
        assert_eq!(err.key, "mqtt.ca_file", "{err}");
        assert!(err.reason.contains("holds no PEM certificate"), "{err}");
        let missing = client_config(&TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            client: None,
        })
        .unwrap_err();
        assert!(missing.reason.contains("cannot read it"), "{missing}");
        let err = client_config(&TlsFiles {
            ca_file: None,
            client: Some((not_pem.clone(), not_pem)),
        })
        .unwrap_err();
        assert_eq!(err.key, "mqtt.cert_file", "{err}");
        // No files: the system trust store alone.
        client_config(&TlsFiles::default()).unwrap();
    }
}
