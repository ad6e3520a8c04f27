//! The agent's own HTTP API: its running containers and the files of task
//! sandboxes (Mesos's `/files/read` shape: `{"data": …, "offset": …}`, and
//! `/files/browse` for a directory's entries).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::AgentRequest;

/// Longest read one request may ask for.
const MAX_READ: u64 = 1 << 20;

#[derive(Clone)]
struct AgentApi {
    requests: mpsc::Sender<AgentRequest>,
    sandboxes: PathBuf,
}

/// The agent's routes. Everything but `/health` answers only the master
/// that registered the agent (with the token it gave then), or anyone when
/// that master runs without authentication.
pub(crate) fn router(
    requests: mpsc::Sender<AgentRequest>,
    sandboxes: PathBuf,
    http_token: watch::Receiver<Option<String>>,
) -> Router {
    let guarded = Router::new()
        .route("/api/v1/containers", get(containers))
        .route("/files/read", get(read_file))
        .route("/files/browse", get(browse))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
        })
        .with_state(AgentApi {
            requests,
            sandboxes,
        })
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let expected = http_token.borrow().clone();
                async move {
                    match admitted(expected.as_deref(), request.headers()) {
                        Ok(()) => next.run(request).await,
                        Err(refusal) => refusal,
                    }
                }
            },
        ));
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .merge(guarded)
}

/// Whether a request carries the master's token (`expected`: `None`
/// before the agent first registered, empty without authentication).
// The refusal is a ready response for the middleware to return.
#[allow(clippy::result_large_err)]
fn admitted(expected: Option<&str>, headers: &axum::http::HeaderMap) -> Result<(), Response> {
    let Some(expected) = expected else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not registered with a master yet",
        ));
    };
    if expected.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if agora_proto::auth::tokens_match(presented, expected) {
        Ok(())
    } else {
        tracing::warn!("HTTP API: refused a request without the master's token");
        Err(error(
            StatusCode::UNAUTHORIZED,
            "this agent's API answers its master only; read sandboxes through the master's /api/v1/tasks/ID/files",
        ))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn containers(State(api): State<AgentApi>) -> Response {
    let (reply, answer) = oneshot::channel();
    if api
        .requests
        .send(AgentRequest::Containers(reply))
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        );
    }
    match answer.await {
        Ok(list) => Json(list).into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    path: String,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    length: Option<u64>,
}

/// Why a sandbox path was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PathError {
    #[error("no such file in the sandboxes: {0}")]
    NotFound(String),
    #[error("path {0} is not under the sandboxes")]
    NotUnder(String),
    #[error("path {0} may not contain `..` or `.`")]
    DotComponent(String),
    #[error("path {0} leads out of the sandboxes")]
    LeadsOut(String),
    #[error("sandbox root {0}: {1}")]
    Root(String, String),
}

impl PathError {
    fn status(&self) -> StatusCode {
        match self {
            PathError::NotFound(_) => StatusCode::NOT_FOUND,
            PathError::Root(..) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Resolves `requested` (relative to the sandbox root, or absolute under it)
/// to a file inside the sandboxes; `..` and symlinks leading out are refused.
pub(crate) fn confine(root: &Path, requested: &str) -> Result<PathBuf, PathError> {
    let requested = Path::new(requested);
    let relative = if requested.is_absolute() {
        requested
            .strip_prefix(root)
            .map_err(|_| PathError::NotUnder(requested.display().to_string()))?
    } else {
        requested
    };
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(PathError::DotComponent(relative.display().to_string()));
    }
    let root = root
        .canonicalize()
        .map_err(|e| PathError::Root(root.display().to_string(), e.to_string()))?;
    let full = root
        .join(relative)
        .canonicalize()
        .map_err(|_| PathError::NotFound(relative.display().to_string()))?;
    if !full.starts_with(&root) {
        return Err(PathError::LeadsOut(relative.display().to_string()));
    }
    Ok(full)
}

/// A query the handler cannot read: 400 in JSON, naming the problem.
fn bad_query(rejection: QueryRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("query: {}", rejection.body_text()),
    )
}

#[derive(Deserialize)]
struct BrowseQuery {
    path: String,
}

/// The entries of a sandbox directory.
async fn browse(
    State(api): State<AgentApi>,
    q: Result<Query<BrowseQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let dir = match confine(&api.sandboxes, &q.path) {
        Ok(p) if p.is_dir() => p,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{} is not a directory", q.path),
            );
        }
        Err(e) => return error(e.status(), e.to_string()),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("listing {}: {e}", q.path),
            );
        }
    };
    let mut files: Vec<serde_json::Value> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some(json!({
                "name": e.file_name().to_string_lossy(),
                "size": meta.len(),
                "is_dir": meta.is_dir(),
            }))
        })
        .collect();
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({ "path": q.path, "files": files })).into_response()
}

async fn read_file(
    State(api): State<AgentApi>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let path = match confine(&api.sandboxes, &q.path) {
        Ok(p) if p.is_file() => p,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("{} is not a file", q.path)),
        Err(e) => return error(e.status(), e.to_string()),
    };
    let length = q.length.unwrap_or(64 * 1024);
    if length > MAX_READ {
        return error(
            StatusCode::BAD_REQUEST,
            format!("length {length} exceeds the maximum of {MAX_READ}"),
        );
    }
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        let mut file = std::fs::File::open(&path)?;
        let size = file.metadata()?.len();
        // Mesos's convention: offset -1 asks for the size only.
        let offset = match q.offset {
            Some(o) if o < 0 => return Ok((String::new(), size)),
            Some(o) => (o as u64).min(size),
            None => 0,
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(length.min(size - offset) as usize);
        file.take(length).read_to_end(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf).into_owned(), offset))
    })
    .await;
    match result {
        Ok(Ok((data, offset))) => Json(json!({ "data": data, "offset": offset })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {}: {e}", q.path),
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the read was cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_sandboxes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("sandboxes");
        std::fs::create_dir_all(root.join("f/t")).expect("mkdir");
        std::fs::write(root.join("f/t/stdout"), b"hello").expect("write");
        std::fs::write(dir.path().join("secret"), b"no").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("f/t/escape"))
            .expect("symlink");

        assert_eq!(
            confine(&root, "f/t/stdout").expect("inside"),
            root.join("f/t/stdout").canonicalize().expect("canonical")
        );
        let absolute = root.join("f/t/stdout");
        assert!(confine(&root, absolute.to_str().expect("utf-8")).is_ok());
        assert!(matches!(
            confine(&root, "f/t/../../../secret"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            confine(&root, "f/t/escape"),
            Err(PathError::LeadsOut(_))
        ));
        assert!(matches!(
            confine(&root, "/etc/passwd"),
            Err(PathError::NotUnder(_))
        ));
        assert!(matches!(
            confine(&root, "f/t/nope"),
            Err(PathError::NotFound(_))
        ));
        assert!(confine(&root, "f/t").expect("a directory").is_dir());
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    fn bearer(token: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        h
    }

    #[test]
    fn only_the_master_s_token_opens_the_api() {
        let none = axum::http::HeaderMap::new();
        let status = |r: Result<(), Response>| r.err().map(|r| r.status());
        assert_eq!(
            status(admitted(None, &bearer("x"))),
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "closed until the first registration"
        );
        assert_eq!(status(admitted(Some(""), &none)), None, "open without auth");
        assert_eq!(
            status(admitted(Some("secret-1"), &bearer("secret-1"))),
            None
        );
        assert_eq!(
            status(admitted(Some("secret-1"), &bearer("secret-2"))),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(admitted(Some("secret-1"), &none)),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
}

/// Serves `app` over TLS: each connection's handshake runs in its own task
/// (bounded by a timeout), so a client that stalls it holds up no one.
pub(crate) async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: std::sync::Arc<rustls::ServerConfig>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("agent HTTP API: accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let handshake = acceptor.accept(stream);
            let stream =
                match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                    Ok(Ok(stream)) => stream,
                    _ => {
                        tracing::debug!(%peer, "agent HTTP API: TLS handshake failed");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "agent HTTP API: connection ended: {e}");
            }
        });
    }
}
