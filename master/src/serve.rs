//! Accepting connections with bounds, so that no client can starve the
//! others of the master's port: at most so many connections in all and per
//! client address (over the bound, a connection is closed at once), and a
//! request's headers must arrive within a timeout (idle half-sent requests
//! are dropped). gRPC and HTTP/1 alike are served by hyper.
//!
//! Connections are served where their traffic belongs ([`Traffic`]): the
//! cluster's own (agents and frameworks, gRPC) on the process's runtime,
//! operators' (dashboards, the web UI, the CLI, scripts) on a thread of
//! their own ([`OperatorThread`]), so a page or `/health` answers while ten
//! thousand agent sessions keep the process's workers busy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
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
/// Operators' connections go to `operators` when given, the rest stay on
/// the calling runtime.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    operators: Option<tokio::runtime::Handle>,
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
        let operators = operators.clone();
        tokio::spawn(async move {
            let traffic = match operators {
                Some(_) => traffic_of_connection(&stream, acceptor.is_some(), timeout).await,
                None => Traffic::Cluster,
            };
            let served_here = match (traffic, operators) {
                (Traffic::Operator, Some(elsewhere)) => match stream.into_std() {
                    Ok(stream) => {
                        elsewhere.spawn(async move {
                            // Registered with the operators' reactor, so its
                            // readiness does not wait for a busy worker here.
                            match TcpStream::from_std(stream) {
                                Ok(stream) => {
                                    serve_stream(stream, app, timeout, acceptor, peer).await
                                }
                                Err(e) => tracing::debug!(%peer, "moving a connection: {e}"),
                            }
                            drop(slot);
                            drop(permit);
                        });
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "moving a connection: {e}");
                        return;
                    }
                },
                _ => stream,
            };
            serve_stream(served_here, app, timeout, acceptor, peer).await;
            drop(slot);
            drop(permit);
        });
    }
}

/// Serves one accepted connection, over TLS when `acceptor` is given (the
/// handshake must end within the header timeout too).
async fn serve_stream(
    stream: TcpStream,
    app: axum::Router,
    timeout: Duration,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    peer: std::net::SocketAddr,
) {
    let Some(acceptor) = acceptor else {
        return serve_connection(TokioIo::new(stream), app, timeout, peer).await;
    };
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
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

/// Whose a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Agents and frameworks: gRPC, which speaks HTTP/2 only.
    Cluster,
    /// Dashboards, the web UI, the CLI and scripts: HTTP/1.1, or over TLS
    /// a client that offers it.
    Operator,
}

/// The HTTP/2 connection preface's first bytes (RFC 9113, 3.4); no
/// HTTP/1 request starts so.
const HTTP2_PREFACE_START: &[u8] = b"PRI";

/// Tells a connection's traffic from the bytes it sent first (`None`: not
/// enough of them yet). In the clear, an HTTP/2 preface is the cluster's;
/// over TLS, a ClientHello offering only `h2` (gRPC clients) is, and one
/// offering `http/1.1` or nothing (browsers, curl, the CLI) is an
/// operator's. Anything unreadable stays with the cluster's runtime, where
/// the handshake will fail as it would have.
pub fn traffic_of(first: &[u8], tls: bool) -> Option<Traffic> {
    if !tls {
        if first.len() < HTTP2_PREFACE_START.len() && HTTP2_PREFACE_START.starts_with(first) {
            return None;
        }
        return Some(if first.starts_with(HTTP2_PREFACE_START) {
            Traffic::Cluster
        } else {
            Traffic::Operator
        });
    }
    let mut hello = rustls::server::Acceptor::default();
    if hello.read_tls(&mut &first[..]).is_err() {
        return Some(Traffic::Cluster);
    }
    match hello.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let h2_only = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.all(|p| p == b"h2"));
            Some(if h2_only {
                Traffic::Cluster
            } else {
                Traffic::Operator
            })
        }
        Err(_) => Some(Traffic::Cluster),
    }
}

/// The largest first flight looked at: a ClientHello (with post-quantum key
/// shares about 2 KB) fits well within it.
const FIRST_BYTES_MAX: usize = 16 * 1024;

/// Peeks at a connection's first bytes (leaving them to be read) until
/// [`traffic_of`] can tell, within `deadline`.
async fn traffic_of_connection(stream: &TcpStream, tls: bool, deadline: Duration) -> Traffic {
    let mut first = vec![
        0u8;
        if tls {
            FIRST_BYTES_MAX
        } else {
            HTTP2_PREFACE_START.len()
        }
    ];
    let told = tokio::time::timeout(deadline, async {
        loop {
            let n = match stream.peek(&mut first).await {
                Ok(0) | Err(_) => return Traffic::Cluster,
                Ok(n) => n,
            };
            if let Some(traffic) = traffic_of(&first[..n], tls) {
                return traffic;
            }
            if n == first.len() {
                return Traffic::Cluster;
            }
            // Part of it has arrived (a ClientHello split across segments,
            // say): a peek returns at once while anything is waiting, so
            // give the rest a moment instead of spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    told.unwrap_or(Traffic::Cluster)
}

/// Operators' connections' runtime: one thread, so however much operators
/// read they take at most one core from the cluster's traffic, at a
/// priority above the process's (below the core's), so a woken reader does
/// not queue behind agent sessions for a CPU. Stops when dropped.
pub struct OperatorThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OperatorThread {
    pub fn start() -> std::io::Result<OperatorThread> {
        // Blocking threads (a streamed `/api/v1/state`) share the priority;
        // their name (for `top -H` and the reads benchmark) tells them from
        // the thread that serves the connections.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("master-op-block")
            .on_thread_start(|| crate::priority::raise_this_thread(crate::priority::OPERATOR_NICE))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("master-operators".into())
            .spawn(move || {
                crate::priority::raise_this_thread(crate::priority::OPERATOR_NICE);
                let _ = runtime.block_on(stop_rx);
                // Connections end with the runtime; a `/state` being written
                // ends at its next piece, its client gone.
                runtime.shutdown_background();
            })?;
        Ok(OperatorThread {
            handle,
            _stop: stop_tx,
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first flight of a TLS client offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config =
            rustls::ClientConfig::builder_with_provider(agora_proto::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut client = rustls::ClientConnection::new(
            Arc::new(config),
            "master.example".try_into().expect("name"),
        )
        .expect("client");
        let mut first = Vec::new();
        client.write_tls(&mut first).expect("hello");
        first
    }

    #[test]
    fn in_the_clear_an_http2_preface_is_the_clusters_and_http1_an_operators() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(traffic_of(preface, false), Some(Traffic::Cluster));
        for request in [
            &b"GET /api/v1/tasks HTTP/1.1\r\n"[..],
            b"POST /api/v1/apps HTTP/1.1\r\n",
            b"PUT /x HTTP/1.1\r\n",
            b"PATCH /x HTTP/1.1\r\n",
        ] {
            assert_eq!(traffic_of(request, false), Some(Traffic::Operator));
        }
        // Until three bytes are in, "P" and "PR" could be either.
        assert_eq!(traffic_of(b"P", false), None);
        assert_eq!(traffic_of(b"PR", false), None);
        assert_eq!(traffic_of(b"PO", false), Some(Traffic::Operator));
        assert_eq!(traffic_of(b"G", false), Some(Traffic::Operator));
    }

    #[test]
    fn over_tls_a_client_offering_only_h2_is_the_clusters() {
        let grpc = client_hello(&[b"h2"]);
        assert_eq!(traffic_of(&grpc, true), Some(Traffic::Cluster));
        let browser = client_hello(&[b"h2", b"http/1.1"]);
        assert_eq!(traffic_of(&browser, true), Some(Traffic::Operator));
        let curl_http1 = client_hello(&[b"http/1.1"]);
        assert_eq!(traffic_of(&curl_http1, true), Some(Traffic::Operator));
        let no_alpn = client_hello(&[]);
        assert_eq!(traffic_of(&no_alpn, true), Some(Traffic::Operator));
    }

    #[test]
    fn over_tls_a_partial_hello_waits_and_garbage_stays_with_the_cluster() {
        let hello = client_hello(&[b"h2"]);
        assert_eq!(traffic_of(&hello[..hello.len() / 2], true), None);
        assert_eq!(traffic_of(&hello[..3], true), None);
        assert_eq!(
            traffic_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            Some(Traffic::Cluster)
        );
    }

    /// The name of the thread a request was served on.
    async fn served_on() -> String {
        std::thread::current().name().unwrap_or("?").to_string()
    }

    /// Serves a route answering with its thread's name; operators'
    /// connections go to `operators` if given.
    async fn serving(
        operators: Option<tokio::runtime::Handle>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/thread", axum::routing::get(served_on));
        let server = tokio::spawn(serve(
            listener,
            app,
            ServeLimits::default(),
            None,
            operators,
        ));
        (addr, server)
    }

    async fn thread_of(client: &reqwest::Client, addr: std::net::SocketAddr) -> String {
        client
            .get(format!("http://{addr}/thread"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_operators_connection_is_served_on_the_operators_thread() {
        agora_proto::tls::install_default_provider();
        let operators = OperatorThread::start().expect("operators' thread");
        let (addr, server) = serving(Some(operators.handle())).await;
        let client = reqwest::Client::new();
        for _ in 0..3 {
            assert_eq!(thread_of(&client, addr).await, "master-operators");
        }
        server.abort();
        // Without an operators' runtime, everything is served here.
        let (addr, server) = serving(None).await;
        assert_ne!(thread_of(&client, addr).await, "master-operators");
        server.abort();
    }

    #[tokio::test]
    async fn a_stopped_operators_thread_closes_its_connections() {
        let operators = OperatorThread::start().expect("operators' thread");
        let (addr, server) = serving(Some(operators.handle())).await;
        let mut connection = TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        connection
            .write_all(b"GET /thread HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut answer = vec![0u8; 4096];
        let n = connection.read(&mut answer).await.expect("answer");
        assert!(String::from_utf8_lossy(&answer[..n]).ends_with("master-operators"));
        drop(operators);
        // The kept-alive connection ends with the thread: a read sees EOF.
        let n = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut answer))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        server.abort();
    }
}
