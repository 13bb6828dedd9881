//! Tokens of `API.md` §2: the claims a node accepts and HS256 minting with the node's secret.
//!
//! The node verifies these claims and the operator mints short-lived admin tokens with them, so
//! the two sides share one definition instead of two that could drift apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// Caller's role, from the token's `role` claim (`"user"` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// Claims of a KalamDB token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Claims for `sub` issued now and valid for `ttl`.
    pub fn new(sub: impl Into<String>, role: Role, ttl: Duration) -> Result<Self, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TokenError::Clock)?
            .as_secs();
        Ok(Claims {
            sub: sub.into(),
            role,
            iat: Some(now),
            exp: Some(now.saturating_add(ttl.as_secs())),
        })
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the system clock is set before 1970")]
    Clock,
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> Result<String, TokenError> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// A token for `sub` with `role`, valid for `ttl`, signed with the node's `secret`.
pub fn mint(secret: &[u8], sub: &str, role: Role, ttl: Duration) -> Result<String, TokenError> {
    sign(secret, &Claims::new(sub, role, ttl)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_carry_the_claims_and_verify_with_the_secret() {
        let secret = b"0123456789abcdef0123";
        let token = mint(
            secret,
            "kalam-operator",
            Role::Admin,
            Duration::from_secs(300),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["sub", "exp"]);
        let data =
            jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(secret), &validation)
                .unwrap();
        assert_eq!(data.claims.sub, "kalam-operator");
        assert_eq!(data.claims.role, Role::Admin);
        let (iat, exp) = (data.claims.iat.unwrap(), data.claims.exp.unwrap());
        assert_eq!(exp - iat, 300);
        assert!(jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"another-secret-of-16+"),
            &validation
        )
        .is_err());
    }

    #[test]
    fn role_defaults_to_user_and_is_lowercase_on_the_wire() {
        let c: Claims = serde_json::from_str(r#"{"sub":"alice"}"#).unwrap();
        assert_eq!(c.role, Role::User);
        assert_eq!(serde_json::to_value(Role::Admin).unwrap(), "admin");
        assert_eq!(Role::Admin.as_str(), "admin");
    }
}
