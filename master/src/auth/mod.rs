//! Who is calling and what they may do. Every caller presents a bearer
//! token (an `Authorization: Bearer …` header, gRPC metadata alike, or the
//! web UI's `agora_token` cookie); the auth file maps tokens to principals
//! and holds the ACLs. The master reloads the file on SIGHUP: a bad file is
//! logged and the old one kept.
//!
//! ```toml
//! [[principals]]
//! name = "ops"
//! token_sha256 = "…"     # hex SHA-256 of the token (or `token = "…"`)
//!
//! [acls]                 # absent: every principal may do everything
//! drain_agents = [{ principals = ["ops"] }]
//! ```

pub mod acl;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use serde::Deserialize;

pub use acl::{Acls, Action};

/// An authenticated identity: a framework, an agent's join credential, an
/// operator or a tool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// The master runs without authentication (`--no-auth`): anyone may do
    /// anything.
    Anyone,
    /// No credential was presented (allowed only where an identity's own
    /// secret stands in, as for an agent re-registering).
    Anonymous,
    Principal(Principal),
}

impl Caller {
    /// The principal's name, or what stands for the caller in logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anyone => "(no auth)",
            Caller::Anonymous => "(anonymous)",
            Caller::Principal(p) => p.as_str(),
        }
    }

    /// The principal to record with what the caller creates (a framework).
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Principal(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a credential was not accepted, or an auth file not loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the credential is not valid")]
    BadCredential,
    #[error("reading the auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the auth file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Shortest token the master accepts in its file: shorter ones can be guessed.
pub const MIN_TOKEN_LENGTH: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    principals: Vec<PrincipalEntry>,
    acls: Option<Acls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    /// The SHA-256 (hex) of a client certificate that stands for this
    /// principal (mutual TLS), instead of or beside a token.
    certificate_sha256: Option<String>,
}

/// One version of the auth file, as loaded.
#[derive(Debug, Default)]
pub struct Policy {
    enabled: bool,
    principals: HashMap<[u8; 32], Principal>,
    /// By client certificate (SHA-256, lower-case hex).
    certificates: HashMap<String, Principal>,
    acls: Option<Acls>,
}

fn sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn parse_hex_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of a token, as `token_sha256` in the auth file wants it.
pub fn token_sha256_hex(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

impl Policy {
    /// No authentication: every caller is [`Caller::Anyone`].
    pub fn disabled() -> Policy {
        Policy::default()
    }

    /// Parses an auth file's text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Policy, AuthError> {
        let invalid = |message: String| AuthError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: AuthFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut principals = HashMap::new();
        let mut certificates = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for entry in file.principals {
            let name = entry.name.trim();
            if name.is_empty()
                || name.len() > 128
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(format!(
                    "principal name `{}`: 1 to 128 characters, no spaces",
                    entry.name.escape_debug()
                )));
            }
            if !names.insert(name.to_string()) {
                return Err(invalid(format!("principal `{name}` is listed twice")));
            }
            let principal = Principal(Arc::from(name));
            if let Some(hex) = &entry.certificate_sha256 {
                let hex = hex.trim().to_ascii_lowercase();
                if parse_hex_sha256(&hex).is_none() {
                    return Err(invalid(format!(
                        "principal `{name}`: certificate_sha256 must be 64 hex digits"
                    )));
                }
                if certificates.insert(hex, principal.clone()).is_some() {
                    return Err(invalid(format!(
                        "principal `{name}` shares its certificate with another principal"
                    )));
                }
                if entry.token.is_none() && entry.token_sha256.is_none() {
                    continue;
                }
            }
            let hash = match (&entry.token, &entry.token_sha256) {
                (Some(token), None) if token.len() >= MIN_TOKEN_LENGTH => sha256(token),
                (Some(_), None) => {
                    return Err(invalid(format!(
                        "principal `{name}`: a token must be at least {MIN_TOKEN_LENGTH} characters"
                    )));
                }
                (None, Some(hex)) => parse_hex_sha256(hex).ok_or_else(|| {
                    invalid(format!(
                        "principal `{name}`: token_sha256 must be 64 hex digits"
                    ))
                })?,
                _ => {
                    return Err(invalid(format!(
                        "principal `{name}`: give one of `token` and `token_sha256` (or a `certificate_sha256`)"
                    )));
                }
            };
            if principals.insert(hash, principal).is_some() {
                return Err(invalid(format!(
                    "principal `{name}` shares its token with another principal"
                )));
            }
        }
        if principals.is_empty() && certificates.is_empty() {
            return Err(invalid(
                "no principals: nobody could reach the master".into(),
            ));
        }
        Ok(Policy {
            enabled: true,
            principals,
            certificates,
            acls: file.acls,
        })
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who presented `headers`: a wrong token is an error, no token is
    /// [`Caller::Anonymous`].
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        self.authenticate_with(headers, None)
    }

    /// [`Policy::authenticate`], where the connection's client
    /// certificate (its SHA-256, verified by TLS) names a principal when no
    /// token is presented. A certificate no principal has is no credential.
    pub fn authenticate_with(
        &self,
        headers: &HeaderMap,
        certificate: Option<&str>,
    ) -> Result<Caller, AuthError> {
        if !self.enabled {
            return Ok(Caller::Anyone);
        }
        let Some(token) = presented_token(headers) else {
            return Ok(certificate
                .and_then(|c| self.certificates.get(c))
                .map_or(Caller::Anonymous, |p| Caller::Principal(p.clone())));
        };
        self.principals
            .get(&sha256(token))
            .map(|p| Caller::Principal(p.clone()))
            .ok_or(AuthError::BadCredential)
    }

    /// Whether `caller` may do `action`.
    pub fn allows(&self, caller: &Caller, action: Action<'_>) -> bool {
        self.decide(caller, |acls, principal| acls.allows(principal, action))
    }

    /// Whether `caller` may view every framework and task.
    pub fn views_everything(&self, caller: &Caller) -> bool {
        self.decide(caller, Acls::views_everything)
    }

    /// Anyone may without authentication, no one anonymously, a principal
    /// when there are no ACLs or they say so.
    fn decide(&self, caller: &Caller, acls_say: impl FnOnce(&Acls, &str) -> bool) -> bool {
        match caller {
            Caller::Anyone => true,
            Caller::Anonymous => false,
            Caller::Principal(p) => self
                .acls
                .as_ref()
                .is_none_or(|acls| acls_say(acls, p.as_str())),
        }
    }
}

/// The bearer token in `Authorization`, else in the UI's cookie.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("agora_token="))
}

/// The policy in force, replaced whole on reload.
pub struct Authority {
    file: Option<PathBuf>,
    policy: RwLock<Arc<Policy>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens' hashes.
        f.debug_struct("Authority")
            .field("file", &self.file)
            .field("enabled", &self.policy().enabled())
            .finish()
    }
}

impl Authority {
    /// Anyone may do anything (`--no-auth`).
    pub fn disabled() -> Arc<Authority> {
        Arc::new(Authority {
            file: None,
            policy: RwLock::new(Arc::new(Policy::disabled())),
        })
    }

    /// Loads the auth file at `path`.
    pub fn load(path: &Path) -> Result<Arc<Authority>, AuthError> {
        let policy = read_policy(path)?;
        Ok(Arc::new(Authority {
            file: Some(path.to_path_buf()),
            policy: RwLock::new(Arc::new(policy)),
        }))
    }

    /// A fixed policy (tests).
    pub fn with_policy(policy: Policy) -> Arc<Authority> {
        Arc::new(Authority {
            file: None,
            policy: RwLock::new(Arc::new(policy)),
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again; on error the policy in force stays.
    pub fn reload(&self) -> Result<(), AuthError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let policy = read_policy(path)?;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(())
    }

    /// Reloads the file whenever the process gets SIGHUP.
    pub fn reload_on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let authority = Arc::downgrade(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(authority) = authority.upgrade() else {
                    return;
                };
                match authority.reload() {
                    Ok(()) => tracing::info!("SIGHUP: auth file reloaded"),
                    Err(e) => tracing::error!("SIGHUP: {e}; keeping the auth file loaded before"),
                }
            }
        });
        Ok(())
    }
}

fn read_policy(path: &Path) -> Result<Policy, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Policy::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const FILE: &str = r#"
        [[principals]]
        name = "ops"
        token = "ops-token-0123456789"

        [[principals]]
        name = "batch"
        token_sha256 = "HASH"

        [acls]
        drain_agents = [{ principals = ["ops"] }]
    "#;

    fn policy() -> Policy {
        let text = FILE.replace("HASH", &token_sha256_hex("batch-token-0123456789"));
        Policy::parse(&text, Path::new("auth.toml")).expect("valid file")
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn tokens_name_their_principals_and_wrong_ones_are_refused() {
        let p = policy();
        let ops = p
            .authenticate(&headers("authorization", "Bearer ops-token-0123456789"))
            .expect("ops");
        assert_eq!(ops.name(), "ops");
        let batch = p
            .authenticate(&headers(
                "cookie",
                "x=1; agora_token=batch-token-0123456789",
            ))
            .expect("batch by cookie");
        assert_eq!(batch.name(), "batch");
        assert!(matches!(
            p.authenticate(&headers("authorization", "Bearer guess-0123456789")),
            Err(AuthError::BadCredential)
        ));
        assert_eq!(
            p.authenticate(&HeaderMap::new()).expect("none"),
            Caller::Anonymous
        );
        assert!(p.allows(&ops, Action::DrainAgent));
        assert!(!p.allows(&batch, Action::DrainAgent));
        assert!(!p.allows(&Caller::Anonymous, Action::DrainAgent));
        assert!(Policy::disabled().allows(&Caller::Anyone, Action::DrainAgent));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            ("", "no principals"),
            (
                "[[principals]]\nname = \"a\"\ntoken = \"short\"",
                "at least 16",
            ),
            (
                "[[principals]]\nname = \"a\"\ntoken_sha256 = \"xyz\"",
                "64 hex digits",
            ),
            (
                "[[principals]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"",
                "no spaces",
            ),
            (
                "[[principals]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n[[principals]]\nname = \"b\"\ntoken = \"0123456789abcdef\"",
                "shares its token",
            ),
            (
                "[[principals]]\nname = \"a\"\ntokn = \"0123456789abcdef\"",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let e = Policy::parse(text, Path::new("auth.toml")).expect_err(text);
            assert!(e.to_string().contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn reload_replaces_the_policy_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.toml");
        std::fs::write(
            &path,
            "[[principals]]\nname = \"a\"\ntoken = \"aaaaaaaaaaaaaaaa\"",
        )
        .expect("write");
        let authority = Authority::load(&path).expect("load");
        let bearer = |t: &str| headers("authorization", &format!("Bearer {t}"));
        assert!(
            authority
                .policy()
                .authenticate(&bearer("aaaaaaaaaaaaaaaa"))
                .is_ok()
        );
        std::fs::write(
            &path,
            "[[principals]]\nname = \"b\"\ntoken = \"bbbbbbbbbbbbbbbb\"",
        )
        .expect("write");
        authority.reload().expect("reload");
        assert!(
            authority
                .policy()
                .authenticate(&bearer("aaaaaaaaaaaaaaaa"))
                .is_err()
        );
        assert!(
            authority
                .policy()
                .authenticate(&bearer("bbbbbbbbbbbbbbbb"))
                .is_ok()
        );
        std::fs::write(&path, "not toml [").expect("write");
        assert!(authority.reload().is_err());
        assert!(
            authority
                .policy()
                .authenticate(&bearer("bbbbbbbbbbbbbbbb"))
                .is_ok(),
            "the old policy stays"
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// An operator's auth file is parsed or refused with a message;
        /// nothing in it makes the master panic.
        #[test]
        fn any_text_is_an_auth_file_or_an_error(text in "\\PC{0,200}") {
            let _ = Policy::parse(&text, Path::new("auth.toml"));
        }

        #[test]
        fn auth_shaped_toml_never_panics(
            name in "[a-z\\- ]{0,12}",
            token in "[ -~]{0,40}",
            hex in "[0-9a-fA-FxyZ]{0,70}",
            principals in prop::sample::select(vec!["\"any\"", "[]", "[\"a\"]", "\"none\"", "3", "[1]"]),
            action in prop::sample::select(vec!["drain_agents", "run_tasks", "view_tasks", "nope"]),
            field in prop::sample::select(vec!["users", "roles", "framework_principals", "names", ""]),
        ) {
            let object = if field.is_empty() { String::new() } else { format!(", {field} = {principals}") };
            let text = format!(
                "[[principals]]\nname = \"{name}\"\ntoken = \"{}\"\n[[principals]]\nname = \"b\"\ntoken_sha256 = \"{hex}\"\n[acls]\n{action} = [{{ principals = {principals}{object} }}]\n",
                token.replace(['"', '\\'], "")
            );
            if let Ok(policy) = Policy::parse(&text, Path::new("auth.toml")) {
                // Whatever parsed answers every question without panicking.
                let caller = Caller::Principal(Principal(Arc::from("b")));
                let _ = policy.allows(&caller, Action::DrainAgent);
                let _ = policy.allows(&caller, Action::RunTask { user: "root" });
                let _ = policy.views_everything(&caller);
            }
        }
    }
}
