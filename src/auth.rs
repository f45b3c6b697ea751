//! Access keys: the camera's secret, the viewer keys derived from it (never stored), the
//! macs that bind signaling messages to a key holder, the WHEP bearer token and the access
//! link an admin sends a viewer. Pure apart from reading or creating the secret file.
//! It must never log, print (except the access link on request), store or send a secret or
//! a key, and never compare macs in variable time.

pub use crate::signaling::protocol::OfferAuth;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the camera's secret.
pub const SECRET_BYTES: usize = 32;
/// Domain separation for viewer keys, so a key is never a mac of anything else.
const VIEWER_KEY_CONTEXT: &str = "peercam-viewer-key-v1";

fn hmac(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for part in message {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Constant-time equality of a computed mac and a base64url one from the wire.
fn mac_matches(expected: &[u8; 32], given_b64: &str) -> bool {
    let Ok(given) = URL_SAFE_NO_PAD.decode(given_b64) else {
        return false;
    };
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Why the secret file cannot be used; the text names the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("auth.secret_file: {path}: {reason}")]
pub struct SecretFileError {
    pub path: String,
    pub reason: String,
}

/// Why a file holding a secret is not trusted, if group or others can read it.
pub(crate) fn readable_by_others(metadata: &std::fs::Metadata) -> Option<String> {
    let mode = metadata.permissions().mode() & 0o777;
    (mode & 0o077 != 0)
        .then(|| format!("is readable by group or others (mode {mode:03o}); run chmod 600 on it"))
}

/// The camera's 32 random bytes. Its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct CameraSecret([u8; SECRET_BYTES]);

impl fmt::Debug for CameraSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CameraSecret(…)")
    }
}

impl CameraSecret {
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> CameraSecret {
        CameraSecret(bytes)
    }

    /// Reads the secret, creating it (mode 0600) on first use. A file that group or others
    /// can read, or of the wrong size, is refused rather than trusted or overwritten.
    pub fn load_or_create(path: &Path) -> Result<CameraSecret, SecretFileError> {
        let error = |reason: String| SecretFileError {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(_) => {
                let bytes = read_private_file(path).map_err(error)?;
                let bytes: [u8; SECRET_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                    error(format!(
                        "holds {} bytes, a secret is {SECRET_BYTES}; remove it to make a new one (this revokes every viewer)",
                        bytes.len()
                    ))
                })?;
                Ok(CameraSecret(bytes))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; SECRET_BYTES] = rand::random();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|err| match err.kind() {
                        std::io::ErrorKind::NotFound => error(format!(
                            "cannot create it: {err} (the service creates its state directory when it starts; start it once, or make the directory)"
                        )),
                        _ => error(format!("cannot create it: {err}")),
                    })?;
                give_to_directory_owner(&file, path);
                file.write_all(&secret)
                    .and_then(|()| file.sync_all())
                    .map_err(|err| error(format!("cannot write it: {err}")))?;
                Ok(CameraSecret(secret))
            }
            Err(err) => Err(error(format!("cannot read it: {err}"))),
        }
    }

    /// The key of `viewer` on `device` until `exp` (Unix seconds).
    pub fn viewer_key(&self, device: &str, viewer: &str, exp: u64) -> ViewerKey {
        let exp = exp.to_string();
        ViewerKey(hmac(
            &self.0,
            &[
                VIEWER_KEY_CONTEXT.as_bytes(),
                b"\n",
                device.as_bytes(),
                b"\n",
                viewer.as_bytes(),
                b"\n",
                exp.as_bytes(),
            ],
        ))
    }
}

/// The contents of a file holding a secret, refused when group or others may read it; the
/// error says why, for the caller to prefix with the configuration key naming the file.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read it: {err}"))?;
    if let Some(reason) = readable_by_others(&metadata) {
        return Err(reason);
    }
    std::fs::read(path).map_err(|err| format!("cannot read it: {err}"))
}

/// A secret made by root (`sudo peercam access` before the service's first start) must
/// still be readable by the service: it goes to whoever owns the directory it is in (the
/// unit's `StateDirectory`). Best effort: only root can give files away, and only root needs to.
fn give_to_directory_owner(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty());
    let Some(owner) = directory.and_then(|dir| std::fs::metadata(dir).ok()) else {
        return;
    };
    let created = file.metadata().map(|m| (m.uid(), m.gid())).ok();
    if created.is_some_and(|ids| ids != (owner.uid(), owner.gid())) {
        let _ = std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()));
    }
}

/// One viewer's key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ViewerKey([u8; 32]);

impl fmt::Debug for ViewerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ViewerKey(…)")
    }
}

impl ViewerKey {
    /// The key as it appears in an access link: base64url without padding.
    pub fn to_base64(&self) -> String {
        b64(&self.0)
    }

    fn message_mac(&self, kind: &str, sid: &str, sdp: Option<&str>) -> [u8; 32] {
        let mut parts: Vec<&[u8]> = vec![kind.as_bytes(), b"\n", sid.as_bytes()];
        if let Some(sdp) = sdp {
            parts.push(b"\n");
            parts.push(sdp.as_bytes());
        }
        hmac(&self.0, &parts)
    }

    /// `mac` of an offer: HMAC(K, "offer\n" + sid + "\n" + sdp).
    pub fn offer_mac(&self, sid: &str, sdp: &str) -> String {
        b64(&self.message_mac("offer", sid, Some(sdp)))
    }

    /// `mac` of the camera's answer: HMAC(K, "answer\n" + sid + "\n" + sdp).
    pub fn answer_mac(&self, sid: &str, sdp: &str) -> String {
        b64(&self.message_mac("answer", sid, Some(sdp)))
    }

    /// `mac` of a hangup in either direction: HMAC(K, "hangup\n" + sid).
    pub fn hangup_mac(&self, sid: &str) -> String {
        b64(&self.message_mac("hangup", sid, None))
    }

    pub fn verify_offer(&self, sid: &str, sdp: &str, mac: &str) -> bool {
        mac_matches(&self.message_mac("offer", sid, Some(sdp)), mac)
    }

    pub fn verify_hangup(&self, sid: &str, mac: &str) -> bool {
        mac_matches(&self.message_mac("hangup", sid, None), mac)
    }

    /// The WHEP mac: HMAC(K, "whep").
    fn whep_mac(&self) -> [u8; 32] {
        hmac(&self.0, &[b"whep"])
    }
}

/// True if `name` may name a viewer: `[A-Za-z0-9_.-]{1,64}`.
pub fn is_valid_viewer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Why a viewer is refused; its text is the `unauthorized` error's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("missing auth: this camera admits only viewers with an access key")]
    MissingAuth,
    #[error("unknown viewer: the access key names no valid viewer")]
    UnknownViewer,
    #[error("expired: the access key has expired; ask the camera's admin for a new link")]
    Expired,
    #[error("bad mac: the message is not signed with a valid access key for this camera")]
    BadMac,
    #[error("revoked: this viewer's access has been revoked")]
    Revoked,
}

/// An admitted viewer's name and key.
pub type Admitted = (String, ViewerKey);

/// Who may watch: the secret, this camera's id and the revoked viewers.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    secret: CameraSecret,
    device: String,
    revoked: BTreeSet<String>,
}

impl AccessPolicy {
    pub fn new(secret: CameraSecret, device: &str, revoked: &[String]) -> AccessPolicy {
        AccessPolicy {
            secret,
            device: device.to_owned(),
            revoked: revoked.iter().cloned().collect(),
        }
    }

    /// Replaces the revoked list (configuration reload).
    pub fn set_revoked(&mut self, revoked: &[String]) {
        self.revoked = revoked.iter().cloned().collect();
    }

    /// The key a grant to `viewer` until `exp` stands for, if it is still good at `unix_now`.
    fn grant(&self, viewer: &str, exp: u64, unix_now: u64) -> Result<Admitted, Denial> {
        if !is_valid_viewer_name(viewer) {
            return Err(Denial::UnknownViewer);
        }
        if exp <= unix_now {
            return Err(Denial::Expired);
        }
        if self.revoked.contains(viewer) {
            return Err(Denial::Revoked);
        }
        Ok((
            viewer.to_owned(),
            self.secret.viewer_key(&self.device, viewer, exp),
        ))
    }

    /// Checks an offer's `auth` for session `sid`; the key, for signing what follows.
    pub fn check_offer(
        &self,
        sid: &str,
        sdp: &str,
        auth: Option<&OfferAuth>,
        unix_now: u64,
    ) -> Result<Admitted, Denial> {
        let auth = auth.ok_or(Denial::MissingAuth)?;
        let admitted = self.grant(&auth.viewer, auth.exp, unix_now)?;
        if admitted.1.verify_offer(sid, sdp, &auth.mac) {
            Ok(admitted)
        } else {
            Err(Denial::BadMac)
        }
    }

    /// Checks a WHEP bearer token `VIEWER.EXP.MAC`.
    pub fn check_whep_token(&self, token: &str, unix_now: u64) -> Result<Admitted, Denial> {
        // Viewer names may contain dots; the exp and the mac never do.
        let mut parts = token.rsplitn(3, '.');
        let (Some(mac), Some(exp), Some(viewer)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Denial::BadMac);
        };
        let exp: u64 = exp.parse().map_err(|_| Denial::BadMac)?;
        let admitted = self.grant(viewer, exp, unix_now)?;
        if mac_matches(&admitted.1.whep_mac(), mac) {
            Ok(admitted)
        } else {
            Err(Denial::BadMac)
        }
    }
}

/// What `peercam access` prints for one viewer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessGrant {
    pub device: String,
    pub viewer: String,
    pub exp: u64,
    /// The viewer key, base64url without padding.
    pub key: String,
    /// The page URL with the access fields in its fragment (never sent to a server).
    pub url: String,
    /// `Authorization: Bearer` token for WHEP players.
    pub whep_token: String,
}

impl AccessGrant {
    pub fn new(
        secret: &CameraSecret,
        device: &str,
        viewer: &str,
        exp: u64,
        page_url: &str,
    ) -> AccessGrant {
        let key = secret.viewer_key(device, viewer, exp);
        let whep_token = format!("{viewer}.{exp}.{}", b64(&key.whep_mac()));
        let base = page_url.split('#').next().unwrap_or(page_url);
        let url = format!(
            "{base}#device={device}&viewer={viewer}&exp={exp}&key={}",
            key.to_base64()
        );
        AccessGrant {
            device: device.to_owned(),
            viewer: viewer.to_owned(),
            exp,
            key: key.to_base64(),
            url,
            whep_token,
        }
    }
}

/// Parses a lifetime such as `30d`, `12h`, `90m`, `3600s` or `3600` (seconds).
pub fn parse_lifetime(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a lifetime such as 30d, 12h, 90m or 3600s"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    number
        .checked_mul(unit_seconds)
        .filter(|&seconds| seconds > 0)
        .ok_or_else(|| format!("{text:?} must be a positive lifetime"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> CameraSecret {
        CameraSecret::from_bytes([7; SECRET_BYTES])
    }

    fn policy(revoked: &[&str]) -> AccessPolicy {
        let revoked: Vec<String> = revoked.iter().map(|s| s.to_string()).collect();
        AccessPolicy::new(secret(), "cam1", &revoked)
    }

    fn signed_offer(viewer: &str, exp: u64, sid: &str, sdp: &str) -> OfferAuth {
        let key = secret().viewer_key("cam1", viewer, exp);
        OfferAuth {
            viewer: viewer.into(),
            exp,
            mac: key.offer_mac(sid, sdp),
        }
    }

    #[test]
    fn the_viewer_key_is_the_documented_hmac() {
        // K = HMAC-SHA256(secret, "peercam-viewer-key-v1\ncam1\nalice\n1800000600")
        let by_hand = hmac(
            &[7; 32],
            &[b"peercam-viewer-key-v1\ncam1\nalice\n1800000600"],
        );
        assert_eq!(secret().viewer_key("cam1", "alice", NOW + 600).0, by_hand);
        let mac = secret()
            .viewer_key("cam1", "alice", NOW + 600)
            .hangup_mac("sid12345");
        assert_eq!(mac, b64(&hmac(&by_hand, &[b"hangup\nsid12345"])));
        assert_eq!(mac.len(), 43, "base64url without padding");
    }

    #[test]
    fn a_signed_offer_is_admitted_and_every_fault_has_its_reason() {
        let p = policy(&["mallory"]);
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n";
        let good = signed_offer("alice", NOW + 60, "sid12345", sdp);
        assert!(p.check_offer("sid12345", sdp, Some(&good), NOW).is_ok());
        assert_eq!(
            p.check_offer("sid12345", sdp, None, NOW),
            Err(Denial::MissingAuth)
        );
        let changed = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(
            p.check_offer("sid12345", changed, Some(&good), NOW),
            Err(Denial::BadMac),
            "an SDP changed after signing"
        );
        assert_eq!(
            p.check_offer("other-sid", sdp, Some(&good), NOW),
            Err(Denial::BadMac),
            "auth replayed on another session"
        );
        let expired = signed_offer("alice", NOW, "sid12345", sdp);
        assert_eq!(
            p.check_offer("sid12345", sdp, Some(&expired), NOW),
            Err(Denial::Expired)
        );
        let revoked = signed_offer("mallory", NOW + 60, "sid12345", sdp);
        assert_eq!(
            p.check_offer("sid12345", sdp, Some(&revoked), NOW),
            Err(Denial::Revoked)
        );
        let other_camera = AccessPolicy::new(secret(), "cam2", &[]);
        assert_eq!(
            other_camera.check_offer("sid12345", sdp, Some(&good), NOW),
            Err(Denial::BadMac),
            "a key for another device"
        );
        let mut forged = good.clone();
        forged.exp += 1;
        assert_eq!(
            p.check_offer("sid12345", sdp, Some(&forged), NOW),
            Err(Denial::BadMac),
            "a stretched expiry"
        );
        let mut bad_name = good;
        bad_name.viewer = "al ice".into();
        assert_eq!(
            p.check_offer("sid12345", sdp, Some(&bad_name), NOW),
            Err(Denial::UnknownViewer)
        );
    }

    #[test]
    fn macs_from_the_wire_never_panic() {
        let key = secret().viewer_key("cam1", "alice", NOW);
        for junk in ["", "!!!", "AAAA", &"A".repeat(10_000), "é"] {
            assert!(!key.verify_hangup("sid12345", junk));
        }
        assert!(key.verify_hangup("sid12345", &key.hangup_mac("sid12345")));
    }

    #[test]
    fn whep_tokens_carry_viewer_expiry_and_mac() {
        let grant = AccessGrant::new(
            &secret(),
            "cam1",
            "kitchen.tablet",
            NOW + 60,
            "http://cam:8080/",
        );
        let p = policy(&[]);
        assert!(p.check_whep_token(&grant.whep_token, NOW).is_ok());
        assert_eq!(
            p.check_whep_token(&grant.whep_token, NOW + 60),
            Err(Denial::Expired)
        );
        let tampered = grant
            .whep_token
            .replace("kitchen.tablet", "kitchen.tablet2");
        assert_eq!(p.check_whep_token(&tampered, NOW), Err(Denial::BadMac));
        for junk in ["", "a", "a.b", "a.b.c", "..", "alice.notanumber.mac"] {
            assert!(p.check_whep_token(junk, NOW).is_err(), "{junk}");
        }
        assert_eq!(
            policy(&["kitchen.tablet"]).check_whep_token(&grant.whep_token, NOW),
            Err(Denial::Revoked)
        );
    }

    #[test]
    fn the_access_link_keeps_its_fields_in_the_fragment() {
        let grant = AccessGrant::new(&secret(), "cam1", "alice", NOW + 60, "http://cam:8080/#old");
        let key = secret().viewer_key("cam1", "alice", NOW + 60).to_base64();
        assert_eq!(
            grant.url,
            format!(
                "http://cam:8080/#device=cam1&viewer=alice&exp={}&key={key}",
                NOW + 60
            )
        );
        assert_eq!(grant.key, key);
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3600));
        assert_eq!(parse_lifetime("90m"), Ok(5400));
        assert_eq!(parse_lifetime("3600"), Ok(3600));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        for bad in ["", "0d", "d", "10y", "-5m", "99999999999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_file_is_made_private_and_a_readable_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("peercam-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        let made = CameraSecret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), SECRET_BYTES);
        assert_eq!(
            CameraSecret::load_or_create(&path).unwrap(),
            made,
            "read back"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = CameraSecret::load_or_create(&path).unwrap_err().to_string();
        assert!(err.starts_with("auth.secret_file: "), "{err}");
        assert!(err.contains("readable by group or others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let err = CameraSecret::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes"), "{err}");
        assert_eq!(
            format!("{made:?}"),
            "CameraSecret(…)",
            "Debug hides the secret"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_made_by_root_belongs_to_the_owner_of_its_directory() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("peercam-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        // The unit's StateDirectory belongs to the service user; `nobody` stands in for it.
        let service_user = (65534, 65534);
        let given = std::os::unix::fs::chown(&dir, Some(service_user.0), Some(service_user.1));
        CameraSecret::load_or_create(&path).unwrap();
        let created = std::fs::metadata(&path).unwrap();
        if given.is_ok() {
            assert_eq!((created.uid(), created.gid()), service_user);
        } else {
            // Not root: nothing to give away, and the creator keeps it.
            assert_eq!(created.uid(), std::fs::metadata(&dir).unwrap().uid());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = dir.join("none").join("secret");
        let err = CameraSecret::load_or_create(&missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("start it once"), "{err}");
    }
}
