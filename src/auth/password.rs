//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes),
//! on the blocking pool: a hash takes tens of milliseconds of CPU, which must not hold
//! up a tokio worker that also carries heartbeats.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::OnceLock;

use argon2::Argon2;

use crate::error::{Error, Result};

pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(password.as_bytes()))
        .await
        .map_err(Error::internal)?
}

/// Whether `password` matches `hash`; `None` (no such user) checks against a hash of
/// a random password, so that a wrong user name takes as long as a wrong password.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known_user = hash.is_some();
        let stored = match hash {
            Some(h) => h,
            None => dummy_hash().to_string(),
        };
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known_user
    })
    .await
    .unwrap_or(false)
}

fn hash_blocking(password: &[u8]) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::internal(format!("random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(Error::internal)?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(Error::internal)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        let _ = getrandom::fill(&mut secret);
        hash_blocking(&secret).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let h = super::hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse".into(), Some(h.clone())).await);
        assert!(!super::verify("wrong horse".into(), Some(h)).await);
        assert!(!super::verify("correct horse".into(), None).await);
    }
}
