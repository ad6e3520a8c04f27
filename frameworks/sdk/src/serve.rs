//! Serving a framework's own HTTP API (what the master relays
//! `/{name}/…` to): plaintext, or TLS when the framework has a certificate
//! (each connection's handshake in its own task, with a timeout, so a client
//! that stalls it holds up no one). Ends when `stop` turns true.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// A framework API's TLS configuration, loaded (with
/// `agora_proto::tls::ServerTlsFiles::config`) before the framework starts.
pub type ServerTls = std::sync::Arc<tokio_rustls::rustls::ServerConfig>;

/// Where the master should reach a framework's API: `advertise` if given,
/// else the address it listens on, https when it serves TLS.
pub fn advertised_url(
    advertise: Option<&str>,
    addr: std::net::SocketAddr,
    tls: Option<&ServerTls>,
) -> String {
    match advertise {
        Some(url) => url.to_string(),
        None if tls.is_some() => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` is true.
pub async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<ServerTls>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("HTTP API: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    _ => {
                        tracing::debug!(%peer, "HTTP API: TLS handshake failed");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
            {
                tracing::debug!(%peer, "HTTP API: connection ended: {e}");
            }
        });
    }
}
