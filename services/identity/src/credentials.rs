//! Credentials: staff passwords (Argon2id) and API keys for channel applications and services.
//!
//! An API key reads `omni_<prefix>_<secret>`: the prefix finds the principal's row, the whole
//! key is compared by SHA-256 (keys carry 160 random bits, so a fast hash is enough; passwords
//! are low-entropy and get Argon2id).

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::Rng as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Whether `password` matches the PHC string `hash`. With no hash, a dummy one is checked so
/// that an unknown login takes as long as a wrong password.
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy =
        DUMMY.get_or_init(|| hash_password("dummy password for timing").unwrap_or_default());
    let (stored, real) = match hash {
        Some(h) => (h, true),
        None => (dummy.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
        && real
}

pub struct NewApiKey {
    pub key: String,
    pub prefix: String,
    pub hash: Vec<u8>,
}

const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";

fn random_token(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn new_api_key() -> NewApiKey {
    let prefix = random_token(10);
    let secret = random_token(32);
    let key = format!("omni_{prefix}_{secret}");
    let hash = Sha256::digest(key.as_bytes()).to_vec();
    NewApiKey { key, prefix, hash }
}

/// The prefix of a well-formed key.
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("omni_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 10 && secret.len() == 32).then_some(prefix)
}

pub fn api_key_matches(key: &str, stored_hash: &[u8]) -> bool {
    let hash = Sha256::digest(key.as_bytes());
    hash.len() == stored_hash.len()
        && hash
            .iter()
            .zip(stored_hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(verify_password("correct horse battery", Some(&hash)));
        assert!(!verify_password("correct horse battery!", Some(&hash)));
        assert!(!verify_password("correct horse battery", None));
    }

    #[test]
    fn api_keys_verify_only_themselves() {
        let k = new_api_key();
        assert_eq!(api_key_prefix(&k.key), Some(k.prefix.as_str()));
        assert!(api_key_matches(&k.key, &k.hash));
        let other = new_api_key();
        assert!(!api_key_matches(&other.key, &k.hash));
        assert_eq!(api_key_prefix("omni_short_x"), None);
    }
}
