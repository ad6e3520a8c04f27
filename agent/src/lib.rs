//! The Agora agent: offers this machine's resources to a master, launches the
//! tasks the master sends through a [`Containerizer`], supervises them, and
//! delivers their status updates at least once and in order.

mod agent;
pub mod cgroups;
pub mod checkpoint;
pub mod confine;
pub mod containerizer;
pub mod detect;
pub mod disk;
pub mod health;
mod http;
pub mod image;
pub mod init;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use agora_proto::Resources;

pub use containerizer::{Containerizer, LinuxContainerizer, ProcessContainerizer};

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The master's URL, e.g. `http://127.0.0.1:5050`.
    pub master: String,
    /// Resources to offer; `None` detects this machine's.
    pub resources: Option<Resources>,
    /// Attributes (`rack:r1;zone:a`) as name/value pairs.
    pub attributes: Vec<(String, String)>,
    pub hostname: String,
    /// Where sandboxes and the agent id live.
    pub data_dir: PathBuf,
    /// How long an unacknowledged status update waits before it is resent.
    pub status_retry_interval: Duration,
    /// SIGTERM-to-SIGKILL wait for tasks that do not set their own.
    pub kill_grace_period: Duration,
    /// Kill the tasks a previous run left (`--recover=cleanup`) instead of
    /// re-attaching to them.
    pub recover_cleanup: bool,
    /// How long an ended task's sandbox is kept.
    pub sandbox_gc: Duration,
    /// Where the agent's HTTP API answers (set by [`run`]).
    pub endpoint: String,
    /// Who a task runs as when neither it nor its framework names a user.
    pub default_task_user: String,
    /// Whether tasks may run as root (uid 0) at all.
    pub allow_root_tasks: bool,
    /// The join token presented to the master (needed to be admitted as a
    /// new agent; a known one re-registers with its own secret).
    pub token: Option<String>,
    /// What the agent trusts of an `https://` master.
    pub tls: agora_proto::tls::ClientTls,
    /// The certificate and key of the agent's HTTP API: with them it
    /// serves https.
    pub http_tls: Option<agora_proto::tls::ServerTlsFiles>,
    /// How often running tasks' disk use is measured against their `disk`
    /// resource (a task over it is killed); `None` does not enforce it.
    pub disk_watch_interval: Option<Duration>,
}

impl AgentConfig {
    /// Defaults for an agent of `master` keeping its data in `data_dir`.
    pub fn new(master: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            master: master.into(),
            resources: None,
            attributes: Vec::new(),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
            data_dir: data_dir.into(),
            status_retry_interval: Duration::from_secs(10),
            kill_grace_period: Duration::from_secs(3),
            recover_cleanup: false,
            sandbox_gc: Duration::from_secs(3600),
            endpoint: String::new(),
            default_task_user: "nobody".into(),
            allow_root_tasks: false,
            token: None,
            tls: Default::default(),
            http_tls: None,
            disk_watch_interval: Some(Duration::from_secs(15)),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--attributes: `{0}` is not `name:value`")]
    BadAttribute(String),
    #[error("the join token: {0}")]
    BadToken(#[from] agora_proto::auth::InvalidToken),
    #[error(transparent)]
    Tls(#[from] agora_proto::tls::TlsError),
}

/// Parses `--attributes 'rack:r1;zone:a'`.
pub fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, AgentError> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, value) = item
                .split_once(':')
                .ok_or_else(|| AgentError::BadAttribute(item.to_string()))?;
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                return Err(AgentError::BadAttribute(item.to_string()));
            }
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Runs an agent until `shutdown` resolves, serving its HTTP API on `http`
/// if given. Tasks outlive the agent when the containerizer can re-attach to
/// them; otherwise they are killed on the way out.
pub async fn run<C: Containerizer>(
    mut config: AgentConfig,
    containerizer: C,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let data_dir_error = |source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    agora_proto::auth::BearerToken::new(config.token.as_deref())?;
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
    // Containers start in their sandboxes: every path handed on is absolute.
    let data_dir = config.data_dir.canonicalize().map_err(data_dir_error)?;
    config.data_dir = data_dir;
    let resources = config
        .resources
        .clone()
        .unwrap_or_else(|| detect::detect(&config.data_dir));
    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(agent::REQUESTS_CAPACITY);
    // Who may call the HTTP API: the master, with the token it gave at
    // registration; no one before the first registration.
    let (http_token_tx, http_token) = tokio::sync::watch::channel(None);
    let mut endpoint = String::new();
    let http_tls = config
        .http_tls
        .as_ref()
        .map(agora_proto::tls::ServerTlsFiles::config)
        .transpose()?;
    if let Some(listener) = http {
        if let Ok(addr) = listener.local_addr() {
            let host = if addr.ip().is_unspecified() {
                config.hostname.clone()
            } else {
                addr.ip().to_string()
            };
            let scheme = if http_tls.is_some() { "https" } else { "http" };
            endpoint = format!("{scheme}://{host}:{}", addr.port());
        }
        let app = http::router(
            requests_tx.clone(),
            config.data_dir.join("sandboxes"),
            http_token,
        );
        match http_tls {
            Some(tls) => {
                tokio::spawn(http::serve_tls(listener, app, tls));
            }
            None => {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::warn!("agent HTTP API stopped: {e}");
                    }
                });
            }
        }
    }
    config.endpoint = endpoint;
    tracing::info!(master = %config.master, resources = %resources, endpoint = %config.endpoint, "agent starting");
    let (agent, events) = agent::Agent::new(config, resources, containerizer, http_token_tx);
    agent.run(events, requests_rx, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_and_refuse_nonsense() {
        let a = parse_attributes("rack:r1; zone:a").expect("valid");
        assert_eq!(
            a,
            vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())]
        );
        assert!(matches!(
            parse_attributes("rack"),
            Err(AgentError::BadAttribute(_))
        ));
    }
}
