//! Accepting connections with bounds, so that no client can starve the
//! others of the master's port: at most so many connections in all and per
//! client address (over the bound, a connection is closed at once), and a
//! request's headers must arrive within a timeout (idle half-sent requests
//! are dropped). gRPC and HTTP/1 alike are served by hyper.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The address a request came from, in its extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The SHA-256 (hex) of the certificate the client presented over TLS,
/// verified against the client CA, in a request's extensions.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub String);

/// How much of the master one client, and all of them, may hold.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_connections_per_ip: usize,
    /// From a connection's request start to its headers' end.
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 10_000,
            max_connections_per_ip: 2_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts a client's connections; the count drops with the guard.
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until the task is dropped; over TLS when
/// `tls` is given (the handshake must end within the header timeout too).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let all = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp {
        counts: Mutex::new(HashMap::new()),
        max: limits.max_connections_per_ip,
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = all.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "too many connections; closing a new one");
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip()) else {
            tracing::warn!(%peer, max = limits.max_connections_per_ip, "too many connections from one address; closing a new one");
            continue;
        };
        // Small gRPC messages (updates, acknowledgements) must not wait for
        // Nagle's algorithm and the peer's delayed ACK (~40 ms a round trip).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let app = app.clone().layer(axum::Extension(PeerAddr(peer)));
        let timeout = limits.header_read_timeout;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(TokioIo::new(stream), app, timeout, peer).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| agora_proto::tls::certificate_sha256_hex(c.as_ref()));
                    let app = match certificate {
                        Some(sha256) => app.layer(axum::Extension(ClientCertificate(sha256))),
                        None => app,
                    };
                    serve_connection(TokioIo::new(stream), app, timeout, peer).await;
                }
            }
            drop(slot);
            drop(permit);
        });
    }
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    app: axum::Router,
    header_timeout: Duration,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(io, TowerToHyperService::new(app))
        .await
    {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}
