//! Login tokens: `nacosd1.<claims>.<mac>`, the claims JSON and an HMAC-SHA256 over
//! `nacosd1.<claims>` with the cluster's signing key, both base64url without padding.
//!
//! Deliberately not a general JWT: one algorithm, fixed by the prefix, so there is no
//! `alg` header to downgrade (the classic JWT `alg: none` mistake), and the key is the
//! cluster's own random one, never a default (Nacos's `token.secret.key`).
//! The MAC is checked, in constant time, before the claims are parsed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "nacosd1.";

/// Length of a signing key in bytes.
pub const KEY_BYTES: usize = 32;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// The user's [`crate::auth::model::UserRecord::generation`] when the token was
    /// issued.
    pub generation: u64,
    /// Expiry, milliseconds since the Unix epoch.
    pub exp_ms: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this format, or not signed with this key.
    Invalid,
    Expired,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

pub fn sign(key: &[u8], claims: &Claims) -> String {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{PREFIX}{body}");
    let mut m = mac(key);
    m.update(signed.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signed}.{tag}")
}

pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Result<Claims, TokenError> {
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let body = signed.strip_prefix(PREFIX).ok_or(TokenError::Invalid)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Invalid)?;
    let mut m = mac(key);
    m.update(signed.as_bytes());
    m.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
    let json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
    if claims.exp_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// A new random signing key.
pub fn new_key() -> std::io::Result<Vec<u8>> {
    let mut key = vec![0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_ms: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            generation: 7,
            exp_ms,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = new_key().unwrap();
        let t = sign(&key, &claims(2_000));
        assert_eq!(verify(&key, &t, 1_999), Ok(claims(2_000)));
        assert_eq!(verify(&key, &t, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_and_foreign_tokens_are_invalid() {
        let key = new_key().unwrap();
        let other = new_key().unwrap();
        assert_ne!(key, other);
        let t = sign(&key, &claims(u64::MAX));
        assert_eq!(verify(&other, &t, 0), Err(TokenError::Invalid));
        // Changed claims with the original MAC.
        let (_, tag) = t.rsplit_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sub: "admin".into(),
                ..claims(u64::MAX)
            })
            .unwrap(),
        );
        let forged = format!("{PREFIX}{forged_body}.{tag}");
        assert_eq!(verify(&key, &forged, 0), Err(TokenError::Invalid));
        for junk in ["", "nacosd1.", "a.b.c", "nacosd1.e30.", "Bearer x"] {
            assert_eq!(verify(&key, junk, 0), Err(TokenError::Invalid), "{junk}");
        }
    }
}
