//! Who may connect to the embedded broker: the users of `[broker.users]` (argon2 PHC
//! hashes, as `peercam passwd` prints them) and the agent itself, with an internal
//! credential drawn at each start. The decisions are plain functions; the broker calls them
//! through its auth hook. It must never log a password, a hash or the internal credential,
//! and must never run argon2 on the broker's own runtime thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// The user name of the agent's own connection; `[broker.users]` cannot take it.
pub const INTERNAL_USER: &str = "peercam-internal";
/// Verified (user, password) pairs remembered, so a client that reconnects does not pay
/// argon2 again. Cleared when full.
const VERIFIED_CACHE: usize = 256;
/// argon2 verifications running at once: failed logins cost CPU, so an attacker gets at
/// most this many cores.
const CONCURRENT_VERIFICATIONS: usize = 2;

/// A user name and password; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

impl Credential {
    /// The agent's internal credential: 32 random bytes, new at every start.
    pub fn internal() -> Credential {
        let bytes: [u8; 32] = rand::random();
        Credential {
            username: INTERNAL_USER.to_owned(),
            password: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        }
    }
}

/// Whether a `[broker.users]` name is usable: 1 to 64 of A-Z a-z 0-9 _ . - and not the
/// internal user's.
pub fn is_valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != INTERNAL_USER
}

/// Checks that `hash` is an argon2 PHC string such as `$argon2id$v=19$m=…`; the reason
/// otherwise.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("is not a PHC hash string (paste the line `peercam passwd` prints): {e}")
    })?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(format!(
            "uses {other}; only argon2 hashes are accepted (peercam passwd)"
        )),
    }
}

/// The `[broker.users]` line for `user` with `password`, argon2id with a fresh salt.
pub fn hash_line(user: &str, password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{user} = \"{hash}\""))
}

/// The embedded broker's gate: configured users and the agent's internal credential.
pub struct Gate {
    users: BTreeMap<String, String>,
    internal: Credential,
    /// Digests of (user, stored hash, password) already verified.
    verified: Mutex<HashSet<[u8; 32]>>,
    verifications: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    pub fn new(users: BTreeMap<String, String>, internal: Credential) -> Gate {
        Gate {
            users,
            internal,
            verified: Mutex::new(HashSet::new()),
            verifications: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS)),
        }
    }

    /// The credential the agent's own connection uses.
    pub fn internal(&self) -> &Credential {
        &self.internal
    }

    /// Whether `username` may connect with `password`. Blocking: argon2 is slow by design.
    pub fn check(&self, username: &str, password: &str) -> bool {
        if username == INTERNAL_USER {
            return bool::from(password.as_bytes().ct_eq(self.internal.password.as_bytes()));
        }
        let Some(stored) = self.users.get(username) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(username)
            .chain_update([0])
            .chain_update(stored)
            .chain_update([0])
            .chain_update(password)
            .finalize()
            .into();
        if self.cache().contains(&digest) {
            return true;
        }
        let valid = PasswordHash::new(stored).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
        if valid {
            let mut cache = self.cache();
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(digest);
        }
        valid
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Gate::check`] off the caller's runtime thread, a few at a time.
    pub async fn check_async(self: Arc<Self>, username: String, password: String) -> bool {
        let Ok(_permit) = Arc::clone(&self.verifications).acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || self.check(&username, &password))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        let line = hash_line("alice", password).unwrap();
        let (_, quoted) = line.split_once(" = ").unwrap();
        quoted.trim_matches('"').to_owned()
    }

    #[test]
    fn users_get_in_with_their_password_only_and_the_agent_with_its_own() {
        let alice = hash("correct horse");
        check_hash(&alice).unwrap();
        let gate = Gate::new(
            BTreeMap::from([("alice".to_owned(), alice)]),
            Credential::internal(),
        );
        assert!(gate.check("alice", "correct horse"));
        assert!(gate.check("alice", "correct horse"), "from the cache");
        assert!(!gate.check("alice", "wrong"));
        assert!(!gate.check("bob", "correct horse"));
        assert!(!gate.check("", ""));
        let internal = gate.internal().clone();
        assert!(gate.check(INTERNAL_USER, &internal.password));
        assert!(!gate.check(INTERNAL_USER, "correct horse"));
        assert!(!gate.check("alice", &internal.password));
        assert!(!format!("{internal:?}").contains(&internal.password));
        assert_ne!(Credential::internal(), internal, "new at every start");
    }

    #[test]
    fn only_argon2_phc_strings_and_plain_names_are_accepted() {
        assert!(check_hash("secret").is_err());
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
        assert!(check_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(is_valid_user_name("alice.cam-2_b"));
        for bad in ["", "a b", "ä", INTERNAL_USER, &"x".repeat(65)] {
            assert!(!is_valid_user_name(bad), "{bad}");
        }
    }
}
