//! Where the binary's clients find their bearer token, and the credentials
//! `agora dev` makes for itself.
//!
//! A process's token is, in order: `AGORA_TOKEN`, the file given by
//! `--token-file` or `AGORA_TOKEN_FILE`, and for commands (not daemons)
//! the user's token file (`$XDG_CONFIG_HOME/agora/token`,
//! `~/.config/agora/token`), which `agora dev` writes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The user's token file, if a home or config directory is known.
pub fn user_token_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(config.join("agora").join("token"))
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = agora_proto::auth::read_token_file(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token)
}

/// The token a daemon (agent, batch, services) presents to the master:
/// `AGORA_TOKEN`, else the given file (or `AGORA_TOKEN_FILE`). Unlike a
/// command's, never the user's token file, which may hold an operator's.
pub fn daemon_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("AGORA_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    if let Some(token) = from_env {
        return Ok(Some(token.trim().to_string()));
    }
    let file = std::env::var_os("AGORA_TOKEN_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    token_file
        .map(Path::to_path_buf)
        .or(file)
        .map(|path| read_token(&path))
        .transpose()
}

/// The token a command presents to the master (see the module doc);
/// `None` when there is none (a master without authentication).
pub fn client_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(token) = daemon_token(token_file)? {
        return Ok(Some(token));
    }
    match user_token_path().filter(|p| p.is_file()) {
        Some(path) => read_token(&path).map(Some),
        None => Ok(None),
    }
}

/// What a command trusts of an `https://` master: the CA bundle in
/// `AGORA_TLS_CA`, and the client certificate in `AGORA_TLS_CERT` and
/// `AGORA_TLS_KEY` (mutual TLS) if both are set.
pub fn client_tls() -> anyhow::Result<agora_proto::tls::ClientTls> {
    let path = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let ca = path("AGORA_TLS_CA");
    let identity = path("AGORA_TLS_CERT").zip(path("AGORA_TLS_KEY"));
    Ok(agora_proto::tls::ClientTls::load(
        ca.as_deref(),
        identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?)
}

/// A fresh random token (256 bits, hex).
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes `text` to a new file readable by its owner only; an existing
/// file is left alone (`Ok(false)`).
fn write_new_private(path: &Path, text: &str) -> anyhow::Result<bool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// What `agora dev` runs with: an auth file for its master, and a token
/// for each of its parts and for its user.
pub struct DevCredentials {
    pub auth_file: PathBuf,
    pub user_token: String,
    pub agent_token: String,
    pub batch_token: String,
    pub services_token: String,
}

/// Makes `agora dev`'s credentials in `data_dir`. The user's token is the
/// one in the user's token file (created if there is none), so every
/// `agora dev` of this user takes the same token and the CLI finds it; it
/// is also written to `data_dir/token`. The other parts get new tokens at
/// each start.
pub fn dev_credentials(
    data_dir: &Path,
    user_file: Option<PathBuf>,
) -> anyhow::Result<DevCredentials> {
    let user_token = match &user_file {
        Some(path) => {
            write_new_private(path, &format!("{}\n", new_token()))?;
            let token = read_token(path)?;
            anyhow::ensure!(
                token.len() >= agora_master::auth::MIN_TOKEN_LENGTH,
                "the token in {} is shorter than {} characters; remove the file to get a new one",
                path.display(),
                agora_master::auth::MIN_TOKEN_LENGTH
            );
            token
        }
        None => new_token(),
    };
    let local = data_dir.join("token");
    let _ = std::fs::remove_file(&local);
    write_new_private(&local, &format!("{user_token}\n"))?;
    let (agent_token, batch_token, services_token) = (new_token(), new_token(), new_token());
    // No [acls]: each principal may do everything; the names keep apart
    // who did what in the audit log and who owns which framework.
    let text = format!(
        "# Written by `agora dev` at each start.\n\
         [[principals]]\nname = \"dev\"\ntoken_sha256 = \"{}\"\n\n\
         [[principals]]\nname = \"agent\"\ntoken_sha256 = \"{}\"\n\n\
         [[principals]]\nname = \"batch\"\ntoken_sha256 = \"{}\"\n\n\
         [[principals]]\nname = \"services\"\ntoken_sha256 = \"{}\"\n",
        agora_master::auth::token_sha256_hex(&user_token),
        agora_master::auth::token_sha256_hex(&agent_token),
        agora_master::auth::token_sha256_hex(&batch_token),
        agora_master::auth::token_sha256_hex(&services_token),
    );
    let auth_file = data_dir.join("master").join("auth.toml");
    let _ = std::fs::remove_file(&auth_file);
    write_new_private(&auth_file, &text)?;
    if let Some(path) = &user_file {
        eprintln!(
            "agora dev: your token is in {} (the CLI finds it there; AGORA_TOKEN overrides)",
            path.display()
        );
    }
    Ok(DevCredentials {
        auth_file,
        user_token,
        agent_token,
        batch_token,
        services_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_credentials_keep_the_user_token_and_hash_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user_file = dir.path().join("config/agora/token");
        let data = dir.path().join("data");
        let first = dev_credentials(&data, Some(user_file.clone())).expect("made");
        let second = dev_credentials(&data, Some(user_file.clone())).expect("again");
        assert_eq!(
            first.user_token, second.user_token,
            "the user's token stays"
        );
        assert_ne!(first.agent_token, second.agent_token);
        assert_eq!(
            read_token(&user_file).expect("user file"),
            second.user_token
        );
        let text = std::fs::read_to_string(&second.auth_file).expect("auth file");
        assert!(
            !text.contains(&second.agent_token),
            "only hashes in the file"
        );
        let policy = agora_master::auth::Policy::parse(&text, &second.auth_file).expect("valid");
        assert!(policy.enabled());
        assert_eq!(
            read_token(&data.join("token")).expect("local copy"),
            second.user_token
        );
        use std::os::unix::fs::PermissionsExt;
        for path in [&user_file, &second.auth_file] {
            let mode = std::fs::metadata(path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
}
