//! Bearer tokens with scopes, from a file an operator edits (`-auth_tokens`).
//!
//! One token per line, `#` starts a comment:
//!
//! ```text
//! # name   scopes                          token                             expires (optional)
//! ci       execute,cache-read,cache-write  3f9c2d7e5b1a4c8e9d0f6a2b7c4e1d05  2027-06-30T00:00:00Z
//! readers  cache-read                      8a1e6c3b9d2f4a7e0c5b8d1f3a6e9c27
//! ```
//!
//! The file is re-read when it changes, so adding, removing or expiring a token takes effect
//! without a restart.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::SecurityError;
use crate::reload::Reloading;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read the CAS and the action cache.
    CacheRead,
    /// Write the CAS and the action cache.
    CacheWrite,
    /// Run actions and watch their operations.
    Execute,
    /// Change the cluster: take workers offline, reinstate them, change settings.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::CacheRead,
        Scope::CacheWrite,
        Scope::Execute,
        Scope::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::CacheRead => "cache-read",
            Scope::CacheWrite => "cache-write",
            Scope::Execute => "execute",
            Scope::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    name: String,
    scopes: Vec<Scope>,
    expires: Option<SystemTime>,
}

/// The tokens of one version of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenTable {
    // Looked up by the token itself: the map's keyed hash makes the time a lookup takes say
    // nothing useful about how close a guess was.
    grants: HashMap<String, Grant>,
}

impl TokenTable {
    pub fn parse(text: &str) -> Result<TokenTable, String> {
        let mut grants = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, scopes, token, expires) = match fields.as_slice() {
                [name, scopes, token] => (name, scopes, token, None),
                [name, scopes, token, expires] => (name, scopes, token, Some(*expires)),
                _ => {
                    return Err(at(format!(
                        "expected `NAME SCOPES TOKEN [EXPIRES]`, found {} fields",
                        fields.len()
                    )));
                }
            };
            let scopes = scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        at(format!(
                            "unknown scope {s:?} (scopes: cache-read, cache-write, execute, admin)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if token.len() < 16 {
                return Err(at(format!(
                    "the token of {name:?} is shorter than 16 characters"
                )));
            }
            let expires = expires
                .map(|e| {
                    humantime::parse_rfc3339_weak(e)
                        .map_err(|err| at(format!("expiry {e:?} is not an RFC 3339 time: {err}")))
                })
                .transpose()?;
            let grant = Grant {
                name: name.to_string(),
                scopes,
                expires,
            };
            if grants.insert(token.to_string(), grant).is_some() {
                return Err(at(format!("the token of {name:?} is listed twice")));
            }
        }
        Ok(TokenTable { grants })
    }

    fn authorize(
        &self,
        header: Option<&[u8]>,
        needed: Option<Scope>,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::NotBearer)?;
        let grant = self.grants.get(token).ok_or(AuthError::Unknown)?;
        if grant.expires.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired {
                name: grant.name.clone(),
            });
        }
        match needed {
            Some(scope) if !grant.scopes.contains(&scope) => Err(AuthError::Denied {
                name: grant.name.clone(),
                needed: scope,
            }),
            _ => Ok(grant.name.clone()),
        }
    }
}

/// Why a request was refused. The first four are UNAUTHENTICATED (who is asking is unknown),
/// the last PERMISSION_DENIED; none says anything about what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("unknown token")]
    Unknown,
    #[error("the token of {name:?} has expired")]
    Expired { name: String },
    #[error("the token of {name:?} lacks the {needed} scope")]
    Denied { name: String, needed: Scope },
}

impl AuthError {
    pub fn is_denied(&self) -> bool {
        matches!(self, AuthError::Denied { .. })
    }

    pub fn to_status(&self) -> tonic::Status {
        if self.is_denied() {
            tonic::Status::permission_denied(self.to_string())
        } else {
            tonic::Status::unauthenticated(self.to_string())
        }
    }
}

/// The token file of a server, re-read when it changes; cloning shares it.
#[derive(Clone)]
pub struct Tokens {
    table: Arc<Reloading<TokenTable>>,
    /// Calls without a token act with the last token their connection presented
    /// (`-auth_connection_tokens`, for Bazel before 3.0; see [`crate::session`]).
    pub connection_tokens: bool,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    pub fn from_file(path: &Path) -> Result<Tokens, SecurityError> {
        let file = path.to_path_buf();
        let table = Reloading::new("token file", vec![file.clone()], move || {
            let text = std::fs::read_to_string(&file).map_err(|e| SecurityError::File {
                what: "token file",
                path: file.clone(),
                reason: e.to_string(),
            })?;
            TokenTable::parse(&text)
                .map_err(|e| SecurityError::Invalid(format!("{}: {e}", file.display())))
        })?;
        Ok(Tokens {
            table: Arc::new(table),
            connection_tokens: false,
        })
    }

    /// Checks an `Authorization` header's value; `needed: None` asks only for a valid token.
    /// Returns the token's name.
    pub fn authorize(
        &self,
        header: Option<&[u8]>,
        needed: Option<Scope>,
    ) -> Result<String, AuthError> {
        self.table
            .current()
            .authorize(header, needed, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FILE: &str = "# who  scopes  token\n\
        ci execute,cache-read,cache-write 0123456789abcdef0123\n\
        reader cache-read fedcba9876543210fedc   # read only\n\
        old admin aaaaaaaaaaaaaaaaaaaa 2020-01-01T00:00:00Z\n";

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn grants_by_scope_and_refuses_the_rest() {
        let table = TokenTable::parse(FILE).unwrap();
        let now = SystemTime::now();
        let ci = bearer("0123456789abcdef0123");
        let reader = bearer("fedcba9876543210fedc");
        assert_eq!(
            table.authorize(Some(&ci), Some(Scope::Execute), now),
            Ok("ci".to_string())
        );
        assert_eq!(
            table.authorize(Some(&reader), None, now),
            Ok("reader".to_string())
        );
        assert_eq!(
            table.authorize(Some(&reader), Some(Scope::CacheWrite), now),
            Err(AuthError::Denied {
                name: "reader".into(),
                needed: Scope::CacheWrite
            })
        );
        assert_eq!(table.authorize(None, None, now), Err(AuthError::Missing));
        assert_eq!(
            table.authorize(Some(b"Basic abc"), None, now),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            table.authorize(Some(&bearer("0123456789abcdef0124")), None, now),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            table.authorize(Some(&bearer("aaaaaaaaaaaaaaaaaaaa")), None, now),
            Err(AuthError::Expired { name: "old".into() })
        );
        assert_eq!(
            table
                .authorize(Some(&ci), Some(Scope::Admin), now)
                .unwrap_err()
                .to_status()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            AuthError::Unknown.to_status().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_token_expires_at_its_time() {
        let table =
            TokenTable::parse("soon execute bbbbbbbbbbbbbbbbbbbb 2030-01-01T00:00:00Z").unwrap();
        let expiry = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let token = bearer("bbbbbbbbbbbbbbbbbbbb");
        assert!(
            table
                .authorize(Some(&token), None, expiry - Duration::from_secs(1))
                .is_ok()
        );
        assert!(table.authorize(Some(&token), None, expiry).is_err());
    }

    #[test]
    fn bad_files_say_which_line() {
        for (text, wanted) in [
            ("ci execute", "line 1: expected"),
            (
                "\nci exec 0123456789abcdef0123",
                "line 2: unknown scope \"exec\"",
            ),
            ("ci execute short", "shorter than 16"),
            (
                "ci execute 0123456789abcdef0123 tomorrow",
                "not an RFC 3339",
            ),
            (
                "a execute 0123456789abcdef0123\nb admin 0123456789abcdef0123",
                "line 2: the token of \"b\" is listed twice",
            ),
        ] {
            let error = TokenTable::parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_removed_token_stops_working_after_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, FILE).unwrap();
        let tokens = Tokens::from_file(&path).unwrap();
        let reader = bearer("fedcba9876543210fedc");
        assert!(tokens.authorize(Some(&reader), None).is_ok());
        std::fs::write(&path, "ci execute 0123456789abcdef0123\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokens.authorize(Some(&reader), None).is_ok() {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            tokens.authorize(Some(&reader), None),
            Err(AuthError::Unknown)
        );
    }
}
