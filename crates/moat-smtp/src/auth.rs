//! SMTP AUTH (RFC 4954) with the PLAIN and LOGIN mechanisms against a users file.
//!
//! The users file has one `name:hash` per line, where `hash` is an argon2 PHC string
//! (`$argon2id$v=19$...`, as `moat hash-password` prints). Blank lines and `#` comments are
//! ignored. The file is read when the connector is built; a missing or malformed file is a
//! configuration error, never a silent "nobody may log in".

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::Error;

/// The accounts that may authenticate on a connector.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
}

impl Users {
    /// Parses a users file's text; errors name the line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let mut hashes = HashMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::Users(format!("{origin}:{}: {why}", n + 1));
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("expected name:hash"))?;
            if name.is_empty() {
                return Err(bad("empty user name"));
            }
            PasswordHash::new(hash).map_err(|e| bad(&format!("not an argon2 PHC hash ({e})")))?;
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(bad(&format!("user {name} listed twice")));
            }
        }
        Ok(Self {
            hashes: Arc::new(hashes),
        })
    }

    /// Reads and parses a users file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Users(format!("{}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when no account is configured.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a password. Runs argon2 on the blocking pool: it is deliberately slow.
    /// Unknown users cost the same as known ones, so timing does not reveal accounts.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        // A fixed hash of a random password, checked for unknown users to equalise timing.
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$\
            JFPbYq8dhDJ4U3gU8D7+L7p6hW9PRQ1DPoG+3TwO6zw";
        let hash = self.hashes.get(user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        known && ok
    }
}

/// Hashes a password into an argon2id PHC string for the users file.
pub fn hash_password(password: &str) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Users(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Users(e.to_string()))
}

fn getrandom(buf: &mut [u8]) -> Result<(), Error> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::Users(format!("cannot read random bytes: {e}")))
}

/// Decodes an AUTH PLAIN response (`authzid NUL authcid NUL passwd`, base64).
/// Returns (user, password). An authorization identity other than the user is refused.
pub fn decode_plain(b64: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

/// Decodes one base64 line of an AUTH LOGIN exchange.
pub fn decode_line(b64: &str) -> Option<String> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    String::from_utf8(raw).ok()
}

/// base64 of `text`, for 334 challenges.
pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decoding() {
        let enc = |s: &[u8]| STANDARD.encode(s);
        assert_eq!(
            decode_plain(&enc(b"\0alice\0secret")),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(
            decode_plain(&enc(b"alice\0alice\0secret")),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(decode_plain(&enc(b"bob\0alice\0secret")), None);
        assert_eq!(decode_plain(&enc(b"\0\0secret")), None);
        assert_eq!(decode_plain(&enc(b"alice secret")), None);
        assert_eq!(decode_plain("!!!"), None);
    }

    #[tokio::test]
    async fn users_file_round_trip() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# comment\n\nalice:{hash}\n"), "users").unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.verify("alice", "s3cret").await);
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("mallory", "s3cret").await);
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let err = Users::parse("alice:notahash\n", "users.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("users.txt:1"), "{err}");
        let err = Users::parse("\nnocolon\n", "u").unwrap_err().to_string();
        assert!(err.contains("u:2"), "{err}");
    }
}
