//! Who is calling: JWT verification (HS256), roles, and token minting for local development.
//!
//! The secret comes from configuration or, when none is configured, from
//! `<data_dir>/jwt_secret`, generated on first start with mode 0600. It is never logged.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::RngCore;

use crate::error::{KalamError, Result};
use crate::ids::{Role, UserId};

const SECRET_FILE: &str = "jwt_secret";
/// Seconds a token is still accepted after its `exp` (clock skew between issuer and node).
const LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered at most; when full the memory starts afresh (a token then
/// costs one full verification again).
const MAX_VERIFIED: usize = 4096;

/// Claims of a KalamDB token: defined once in `kalam-client`, which tools that mint tokens
/// (the operator) share with the node.
pub use kalam_client::token::Claims;

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Where the secret came from, so start-up can tell the operator what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    GeneratedNow,
    DataDirFile,
}

/// Verifies and mints tokens with the node's secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    /// Tokens whose signature checked out, with who they name and their `exp`. A client
    /// sends the same token with every request, and verifying it again (base64, HMAC-SHA256,
    /// JSON) was about 7 µs of a 130 µs single-row INSERT on the node. Expiry is checked on
    /// every use, so a remembered token stops working when a fresh verification would.
    verified: Arc<Mutex<HashMap<Box<str>, (Principal, Option<u64>)>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            verified: Arc::default(),
        }
    }

    /// Checks signature, expiry and claims; every failure is the same 401 to the client.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(KalamError::internal)?
            .as_secs();
        self.verify_at(token, now)
    }

    /// [`Self::verify`] at `now` (seconds since the epoch) for a token verified before; a new
    /// token gets the full verification, against the real clock.
    fn verify_at(&self, token: &str, now: u64) -> Result<Principal> {
        let known = self.verified.lock().get(token).cloned();
        if let Some((principal, exp)) = known {
            if exp.is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) < now) {
                self.verified.lock().remove(token);
                return Err(KalamError::Unauthorized("token has expired".into()));
            }
            return Ok(principal);
        }
        let principal_and_exp = self.decode(token)?;
        let principal = principal_and_exp.0.clone();
        let mut verified = self.verified.lock();
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(token.into(), principal_and_exp);
        Ok(principal)
    }

    fn decode(&self, token: &str) -> Result<(Principal, Option<u64>)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token has expired",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "token algorithm is not HS256",
                    ErrorKind::MissingRequiredClaim(_) => "token has no 'sub' claim",
                    _ => "token is malformed",
                };
                KalamError::Unauthorized(why.to_string())
            })?;
        let user_id = UserId::new(data.claims.sub)?;
        let principal = Principal {
            user_id,
            role: data.claims.role,
        };
        Ok((principal, data.claims.exp))
    }

    /// Signs a token for `user` valid for `ttl`.
    pub fn mint(&self, user: &UserId, role: Role, ttl: Duration) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(KalamError::internal)?
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            role,
            iat: Some(now),
            exp: Some(now + ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(KalamError::internal)
    }
}

/// Returns the configured secret, or the one in the data dir, generating it when absent.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
    create: bool,
) -> Result<(Vec<u8>, SecretSource)> {
    if let Some(s) = configured {
        return Ok((s.as_bytes().to_vec(), SecretSource::Configured));
    }
    let path = data_dir.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            return Ok((s.trim().as_bytes().to_vec(), SecretSource::DataDirFile))
        }
        Ok(_) => return Err(KalamError::Internal(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KalamError::InvalidRequest(format!(
                "no jwt_secret configured and no {} yet: start the node once, or set KALAMDB_JWT_SECRET",
                path.display()
            )))
        }
        Err(e) => return Err(KalamError::CatalogIo(e.to_string())),
    }
    fs::create_dir_all(data_dir).map_err(|e| KalamError::CatalogIo(e.to_string()))?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private_file(&path, secret.as_bytes())?;
    Ok((secret.into_bytes(), SecretSource::GeneratedNow))
}

/// Creates `path` with mode 0600 from the start (never world-readable, even briefly).
fn write_private_file(path: &Path, content: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| KalamError::CatalogIo(e.to_string()))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(|e| KalamError::CatalogIo(e.to_string()))
}

/// Parses a duration such as `30s`, `5m`, `1h`, `7d`, `5 minutes`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => return Some(Duration::from_millis(n)),
        "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n.checked_mul(60)?,
        "h" | "hour" | "hours" => n.checked_mul(3600)?,
        "d" | "day" | "days" => n.checked_mul(86_400)?,
        "w" | "week" | "weeks" => n.checked_mul(604_800)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify_and_reject_tampering() {
        let a = Authenticator::new(b"0123456789abcdef0123");
        let alice = UserId::new("alice").unwrap();
        let t = a
            .mint(&alice, Role::Admin, Duration::from_secs(60))
            .unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!(p.user_id, alice);
        assert!(p.is_admin());
        let other = Authenticator::new(b"another-secret-of-16+");
        assert!(matches!(other.verify(&t), Err(KalamError::Unauthorized(_))));
        assert!(a.verify("garbage").is_err());
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_never_remembered() {
        let a = Authenticator::new(b"0123456789abcdef0123");
        let bob = UserId::new("bob").unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // exp is now + 60, or now + 61 when a second passed meanwhile.
        let t = a.mint(&bob, Role::User, Duration::from_secs(60)).unwrap();
        assert_eq!(a.verify(&t).unwrap().user_id, bob);
        // Remembered now: the same answer within exp + leeway, a 401 after it.
        assert_eq!(
            a.verify_at(&t, now + 60 + LEEWAY_SECS).unwrap().user_id,
            bob
        );
        let late = a.verify_at(&t, now + 62 + LEEWAY_SECS);
        assert!(matches!(late, Err(KalamError::Unauthorized(m)) if m.contains("expired")));
        // A changed signature is not the remembered token: it gets the full verification.
        let fresh = a.mint(&bob, Role::Admin, Duration::from_secs(60)).unwrap();
        assert!(a.verify(&fresh).unwrap().is_admin());
        // The signature's first character carries six bits of the MAC.
        let cut = fresh.rfind('.').unwrap() + 1;
        let flipped = if fresh[cut..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        let tampered = format!("{}{flipped}{}", &fresh[..cut], &fresh[cut + 1..]);
        assert!(a.verify(&tampered).is_err());
        assert!(a.verify(&fresh).unwrap().is_admin());
    }

    #[test]
    fn secret_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, src1) = load_or_create_secret(None, dir.path(), true).unwrap();
        assert_eq!(src1, SecretSource::GeneratedNow);
        let (s2, src2) = load_or_create_secret(None, dir.path(), true).unwrap();
        assert_eq!((s1, src2), (s2, SecretSource::DataDirFile));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5 minutes"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
    }
}
