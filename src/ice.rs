//! ICE servers as the camera uses them and as it tells viewers about them: STUN entries,
//! TURN entries with a static password (the camera's own, never published), and TURN
//! entries with a shared secret, for which the camera mints short-lived credentials (the
//! TURN REST API scheme coturn implements as `use-auth-secret`). Pure: the caller gives the
//! time. It must never put a long-term TURN password in anything a viewer receives.

use crate::config::IceServer;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::fmt;

/// The credential lifetime when an entry names none: one day.
pub const DEFAULT_CREDENTIAL_TTL_S: u64 = 86_400;

/// How one entry authenticates.
#[derive(Clone, PartialEq, Eq)]
enum Credentials {
    None,
    Static {
        username: String,
        credential: String,
    },
    Minted {
        secret: Vec<u8>,
        ttl_s: u64,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Static { username, .. } => write!(f, "Static({username}, …)"),
            Credentials::Minted { ttl_s, .. } => write!(f, "Minted(ttl {ttl_s} s, …)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    urls: Vec<String>,
    credentials: Credentials,
}

/// The configured ICE servers, secrets loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServers {
    device: String,
    entries: Vec<Entry>,
}

/// TURN REST credentials: `username = "<expiry>:<device>"`, `credential =
/// base64(HMAC-SHA1(secret, username))`, as coturn's `use-auth-secret` checks them.
pub fn minted_credential(secret: &[u8], device: &str, expiry_unix_s: u64) -> (String, String) {
    let username = format!("{expiry_unix_s}:{device}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

impl IceServers {
    /// The entries of `webrtc.ice_servers`, with `read_secret` giving the shared secret of
    /// each entry that names a `secret_file` (an error there names the entry's key).
    pub fn load(
        device: &str,
        servers: &[IceServer],
        read_secret: impl Fn(usize, &IceServer) -> Result<Vec<u8>, String>,
    ) -> Result<IceServers, String> {
        let entries = servers
            .iter()
            .enumerate()
            .map(|(i, server)| {
                let credentials = match (&server.secret_file, &server.username, &server.credential)
                {
                    (Some(_), _, _) => Credentials::Minted {
                        secret: read_secret(i, server)?,
                        ttl_s: server.credential_ttl_s.unwrap_or(DEFAULT_CREDENTIAL_TTL_S),
                    },
                    (None, Some(username), Some(credential)) => Credentials::Static {
                        username: username.clone(),
                        credential: credential.clone(),
                    },
                    _ => Credentials::None,
                };
                Ok(Entry {
                    urls: server.urls.clone(),
                    credentials,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(IceServers {
            device: device.to_owned(),
            entries,
        })
    }

    /// What the camera's own peer connections use at `unix_now`: every entry, static
    /// passwords included, minted credentials fresh.
    pub fn for_camera(&self, unix_now: u64) -> Vec<IceServer> {
        self.resolve(unix_now, true)
    }

    /// What viewers are told at `unix_now` (the retained status, WHEP Link headers): minted
    /// credentials only. A TURN entry with a static password is left out entirely: a
    /// browser refuses a TURN URL without credentials, and the password stays the camera's.
    pub fn for_viewers(&self, unix_now: u64) -> Vec<IceServer> {
        self.resolve(unix_now, false)
    }

    /// Entries whose static password `for_viewers` leaves out (for a warning at start).
    pub fn unpublished(&self) -> Vec<&[String]> {
        self.entries
            .iter()
            .filter(|e| matches!(e.credentials, Credentials::Static { .. }))
            .map(|e| e.urls.as_slice())
            .collect()
    }

    /// How often published credentials must be renewed: at half the shortest lifetime, so
    /// a viewer holding the previous status still has half a lifetime left.
    pub fn renewal_interval_s(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter_map(|e| match e.credentials {
                Credentials::Minted { ttl_s, .. } => Some((ttl_s / 2).max(1)),
                _ => None,
            })
            .min()
    }

    fn resolve(&self, unix_now: u64, with_static: bool) -> Vec<IceServer> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let (username, credential) = match &entry.credentials {
                    Credentials::None => (None, None),
                    Credentials::Static { .. } if !with_static => return None,
                    Credentials::Static {
                        username,
                        credential,
                    } => (Some(username.clone()), Some(credential.clone())),
                    Credentials::Minted { secret, ttl_s } => {
                        let (u, c) = minted_credential(secret, &self.device, unix_now + ttl_s);
                        (Some(u), Some(c))
                    }
                };
                Some(IceServer {
                    urls: entry.urls.clone(),
                    username,
                    credential,
                    ..IceServer::default()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn server(urls: &str, username: Option<&str>, secret: bool, ttl: Option<u64>) -> IceServer {
        IceServer {
            urls: vec![urls.to_owned()],
            username: username.map(str::to_owned),
            credential: username.map(|_| "static-password".to_owned()),
            secret_file: secret.then(|| "/etc/peercam/turn-secret".into()),
            credential_ttl_s: ttl,
        }
    }

    fn servers() -> IceServers {
        IceServers::load(
            "cam1",
            &[
                server("stun:stun.example.lan:3478", None, false, None),
                server("turn:turn.example.lan:3478", Some("cam"), false, None),
                server("turn:rest.example.lan:3478", None, true, Some(600)),
            ],
            |_, _| Ok(b"north".to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn minted_credentials_are_the_turn_rest_scheme() {
        // coturn computes the same: base64(HMAC-SHA1(static-auth-secret, username)); this
        // vector was checked with `openssl dgst -sha1 -hmac north -binary | base64`.
        let (username, credential) = minted_credential(b"north", "cam1", 1_800_000_600);
        assert_eq!(username, "1800000600:cam1");
        assert_eq!(credential, "hS21jHSUdcS1ogrChHEi1AdGdrc=");
    }

    #[test]
    fn viewers_get_minted_credentials_and_never_a_static_password() {
        let ice = servers();
        let viewers = ice.for_viewers(NOW);
        assert_eq!(viewers.len(), 2, "{viewers:?}");
        assert_eq!(viewers[0].urls, ["stun:stun.example.lan:3478"]);
        assert_eq!(viewers[0].username, None);
        assert_eq!(viewers[1].urls, ["turn:rest.example.lan:3478"]);
        assert_eq!(viewers[1].username.as_deref(), Some("1800000600:cam1"));
        let json = serde_json::to_string(&viewers).unwrap();
        assert!(!json.contains("static-password"), "{json}");
        assert!(!json.contains("north"), "{json}");
        assert!(!json.contains("secret_file"), "{json}");
        assert_eq!(ice.unpublished(), [["turn:turn.example.lan:3478"]]);
    }

    #[test]
    fn the_camera_uses_every_entry_with_fresh_credentials() {
        let ice = servers();
        let camera = ice.for_camera(NOW + 1000);
        assert_eq!(camera.len(), 3);
        assert_eq!(camera[1].credential.as_deref(), Some("static-password"));
        assert_eq!(camera[2].username.as_deref(), Some("1800001600:cam1"));
        assert_eq!(ice.renewal_interval_s(), Some(300));
        assert_eq!(IceServers::default().renewal_interval_s(), None);
    }

    #[test]
    fn an_unreadable_secret_is_the_loaders_error() {
        let err = IceServers::load(
            "cam1",
            &[server("turn:rest.example.lan", None, true, None)],
            |i, _| {
                Err(format!(
                    "webrtc.ice_servers[{i}].secret_file: cannot read it"
                ))
            },
        )
        .unwrap_err();
        assert_eq!(err, "webrtc.ice_servers[0].secret_file: cannot read it");
    }
}
