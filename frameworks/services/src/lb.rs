//! The L4 (TCP) load balancer: one listener per app with a `[service]`
//! port, spreading connections over the app's serving instances (fewest
//! open connections first) and following endpoint changes live.
//!
//! An instance that leaves the rotation takes no new connections; its open
//! ones are closed as soon as they are idle between exchanges (the last
//! bytes went to the client, so no request is half-answered), and the
//! services engine only stops the instance once it has no connections left
//! — so no request is cut by a rolling upgrade, without sleep hooks in the
//! app. A connect that fails is retried on another instance.
//!
//! The same balancer runs inside the services framework and, following the
//! framework's event stream, as `agora lb` on edge machines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::Endpoint;

/// How long a connect to an instance may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A leaving instance's connection counts as idle after this long without
/// traffic following a reply.
const IDLE_AFTER_REPLY: Duration = Duration::from_millis(50);

/// One instance behind the balancer.
struct Backend {
    task_id: String,
    addr: String,
    active: AtomicUsize,
    /// Set once it leaves the rotation (a watch: no wake-up is missed).
    leaving: watch::Sender<bool>,
}

impl Backend {
    fn is_leaving(&self) -> bool {
        *self.leaving.borrow()
    }
}

/// One balanced app.
struct Service {
    port: u16,
    backends: watch::Sender<Vec<Arc<Backend>>>,
    stop: watch::Sender<bool>,
}

/// Counters, for metrics.
#[derive(Default)]
pub struct LbStats {
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    pub no_backend: AtomicU64,
}

/// Listens on each app's service port and proxies to its instances.
pub struct LoadBalancer {
    ip: IpAddr,
    services: Mutex<HashMap<String, Service>>,
    /// Every backend by task id, leaving ones included while they have
    /// connections.
    backends: Mutex<HashMap<String, Arc<Backend>>>,
    pub stats: LbStats,
}

/// What went wrong setting up a listener.
#[derive(Debug, thiserror::Error)]
#[error("load balancer for `{app}` on {addr}: {source}")]
pub struct LbError {
    pub app: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl LoadBalancer {
    /// A balancer whose listeners bind `ip`.
    pub fn new(ip: IpAddr) -> Arc<LoadBalancer> {
        Arc::new(LoadBalancer {
            ip,
            services: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            stats: LbStats::default(),
        })
    }

    /// Open connections to a task's instance.
    pub fn connections(&self, task_id: &str) -> usize {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .map_or(0, |b| b.active.load(Ordering::SeqCst))
    }

    /// The ports being served, by app.
    pub fn ports(&self) -> Vec<(String, u16)> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u16)> =
            services.iter().map(|(a, s)| (a.clone(), s.port)).collect();
        out.sort();
        out
    }

    /// Sets `app`'s instances (`port` None: the app is not balanced any
    /// more). Instances that left stop taking connections at once.
    pub async fn update(
        self: &Arc<Self>,
        app: &str,
        port: Option<u16>,
        endpoints: &[Endpoint],
    ) -> Result<(), LbError> {
        let backends: Vec<Arc<Backend>> = {
            let mut all = self.backends.lock().unwrap_or_else(|p| p.into_inner());
            let wanted: Vec<Arc<Backend>> = endpoints
                .iter()
                .map(|e| {
                    all.entry(e.task_id.clone())
                        .or_insert_with(|| {
                            Arc::new(Backend {
                                task_id: e.task_id.clone(),
                                addr: format!("{}:{}", e.host, e.port),
                                active: AtomicUsize::new(0),
                                leaving: watch::channel(false).0,
                            })
                        })
                        .clone()
                })
                .collect();
            wanted
        };
        let (previous, restart) = {
            let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
            let existing = services.get(app).map(|s| s.port);
            match (existing, port) {
                (Some(old), Some(new)) if old == new => {
                    let s = &services[app];
                    let previous = s.backends.send_replace(backends.clone());
                    (previous, false)
                }
                (Some(_), _) => {
                    let s = services.remove(app);
                    let previous = s
                        .map(|s| {
                            s.stop.send_replace(true);
                            s.backends.borrow().clone()
                        })
                        .unwrap_or_default();
                    (previous, port.is_some())
                }
                (None, Some(_)) => (Vec::new(), true),
                (None, None) => (Vec::new(), false),
            }
        };
        // Those no longer wanted leave: no new connections, idle ones close.
        for b in previous {
            if !backends.iter().any(|n| n.task_id == b.task_id) {
                self.retire(&b);
            }
        }
        if restart && let Some(port) = port {
            self.listen(app, port, backends).await?;
        }
        Ok(())
    }

    fn retire(&self, backend: &Arc<Backend>) {
        if !backend.leaving.send_replace(true) {
            debug!(task = %backend.task_id, "instance leaves the rotation");
        }
        self.forget_if_done(backend);
    }

    fn forget_if_done(&self, backend: &Arc<Backend>) {
        if backend.is_leaving() && backend.active.load(Ordering::SeqCst) == 0 {
            let mut all = self.backends.lock().unwrap_or_else(|p| p.into_inner());
            if all
                .get(&backend.task_id)
                .is_some_and(|b| Arc::ptr_eq(b, backend))
            {
                all.remove(&backend.task_id);
            }
        }
    }

    async fn listen(
        self: &Arc<Self>,
        app: &str,
        port: u16,
        backends: Vec<Arc<Backend>>,
    ) -> Result<(), LbError> {
        let addr = SocketAddr::new(self.ip, port);
        let listener = TcpListener::bind(addr).await.map_err(|source| LbError {
            app: app.to_string(),
            addr,
            source,
        })?;
        info!(app, %addr, "load balancing");
        let (backends_tx, backends_rx) = watch::channel(backends);
        let (stop_tx, stop_rx) = watch::channel(false);
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                app.to_string(),
                Service {
                    port,
                    backends: backends_tx,
                    stop: stop_tx,
                },
            );
        tokio::spawn(self.clone().accept_loop(listener, backends_rx, stop_rx));
        Ok(())
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        backends: watch::Receiver<Vec<Arc<Backend>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let next = Arc::new(AtomicUsize::new(0));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (client, _) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!("accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = client.set_nodelay(true);
            let candidates = backends.borrow().clone();
            let lb = self.clone();
            let next = next.clone();
            tokio::spawn(async move { lb.serve(client, candidates, &next).await });
        }
    }

    async fn serve(&self, client: TcpStream, candidates: Vec<Arc<Backend>>, next: &AtomicUsize) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        // Fewest connections first; ties in turn.
        let start = next.fetch_add(1, Ordering::Relaxed);
        let n = candidates.len();
        let mut order: Vec<Arc<Backend>> = (0..n)
            .map(|k| candidates[(start + k) % n.max(1)].clone())
            .filter(|b| !b.is_leaving())
            .collect();
        order.sort_by_key(|b| b.active.load(Ordering::SeqCst));
        for backend in order {
            backend.active.fetch_add(1, Ordering::SeqCst);
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&backend.addr)).await;
            match connected {
                Ok(Ok(server)) => {
                    let _ = server.set_nodelay(true);
                    proxy(client, server, &backend).await;
                    backend.active.fetch_sub(1, Ordering::SeqCst);
                    self.forget_if_done(&backend);
                    return;
                }
                Ok(Err(e)) => debug!(task = %backend.task_id, addr = %backend.addr, "connect: {e}"),
                Err(_) => debug!(task = %backend.task_id, "connect timed out"),
            }
            backend.active.fetch_sub(1, Ordering::SeqCst);
            self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            self.forget_if_done(&backend);
        }
        self.stats.no_backend.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies both ways until both sides are done, or — once the backend is
/// leaving — until the connection is idle after a reply.
async fn proxy(mut client: TcpStream, mut server: TcpStream, backend: &Backend) {
    let mut to_server = vec![0u8; 16 * 1024];
    let mut to_client = vec![0u8; 16 * 1024];
    let mut client_open = true;
    // True when the last bytes went to the client (a reply, not a request).
    let mut replied = false;
    let mut last = tokio::time::Instant::now();
    let mut left = backend.leaving.subscribe();
    loop {
        let leaving = *left.borrow_and_update();
        if leaving && replied && last.elapsed() >= IDLE_AFTER_REPLY {
            debug!(task = %backend.task_id, "closing an idle connection to a leaving instance");
            break;
        }
        let tick = async {
            if leaving {
                tokio::time::sleep(IDLE_AFTER_REPLY).await
            } else {
                let _ = left.changed().await;
            }
        };
        tokio::select! {
            n = client.read(&mut to_server), if client_open => match n {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = server.shutdown().await;
                }
                Ok(n) => {
                    if server.write_all(&to_server[..n]).await.is_err() {
                        break;
                    }
                    replied = false;
                    last = tokio::time::Instant::now();
                }
            },
            n = server.read(&mut to_client) => match n {
                Ok(0) | Err(_) => {
                    // The server is done; nothing more can be answered.
                    let _ = client.shutdown().await;
                    break;
                }
                Ok(n) => {
                    if client.write_all(&to_client[..n]).await.is_err() {
                        break;
                    }
                    replied = true;
                    last = tokio::time::Instant::now();
                }
            },
            () = tick => {}
        }
    }
}

/// Follows a services framework's event stream (through the master) and
/// balances what it announces: `agora lb`. Returns when `shutdown` resolves.
pub async fn follow(
    master: &str,
    token: Option<&str>,
    tls: &agora_sdk::ClientTls,
    lb: Arc<LoadBalancer>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let url = format!("{}/services/v1/events", master.trim_end_matches('/'));
    // No overall timeout: the event stream stays open.
    let client = agora_sdk::operator::streaming_client(token, tls);
    let mut backoff = Duration::from_millis(200);
    tokio::pin!(shutdown);
    loop {
        let session = async {
            let mut response = client.get(&url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("{url} answered {}", response.status()));
            }
            info!(%url, "following the services event stream");
            let mut buffer = String::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    apply_event(&lb, &event).await;
                }
            }
            Err::<(), String>("the event stream ended".into())
        };
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    warn!("{e}; reconnecting in {backoff:?}");
                }
            }
            () = &mut shutdown => return,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut shutdown => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn apply_event(lb: &Arc<LoadBalancer>, event: &str) {
    let data: String = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() {
        return;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
        return;
    };
    if value["type"] != "endpoints" {
        return;
    }
    let app = value["app"].as_str().unwrap_or_default().to_string();
    let port = value["service_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok());
    let endpoints: Vec<Endpoint> = value["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| Endpoint {
                    task_id: e["task_id"].as_str().unwrap_or_default().to_string(),
                    host: e["host"].as_str().unwrap_or_default().to_string(),
                    port: e["port"].as_u64().unwrap_or(0),
                    ports: Vec::new(),
                    agent_id: e["agent_id"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Err(e) = lb.update(&app, port, &endpoints).await {
        warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers each line with its name.
    async fn echo_server(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(name.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, handle)
    }

    fn endpoint(task: &str, port: u16) -> Endpoint {
        Endpoint {
            task_id: task.into(),
            host: "127.0.0.1".into(),
            port: u64::from(port),
            ports: vec![u64::from(port)],
            agent_id: "a".into(),
        }
    }

    async fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    }

    async fn ask(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn spreads_connections_and_follows_changes() {
        let (a, _ha) = echo_server("a").await;
        let (b, _hb) = echo_server("b").await;
        let lb = LoadBalancer::new("127.0.0.1".parse().expect("ip"));
        let port = free_port().await;
        lb.update("web", Some(port), &[endpoint("t-a", a), endpoint("t-b", b)])
            .await
            .expect("listen");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            seen.insert(ask(port).await);
        }
        assert_eq!(seen.len(), 2, "both instances get connections: {seen:?}");
        lb.update("web", Some(port), &[endpoint("t-b", b)])
            .await
            .expect("update");
        for _ in 0..4 {
            assert_eq!(ask(port).await, "b");
        }
        // A dead instance in the list: its connects fail over to a live one.
        let dead = free_port().await;
        lb.update(
            "web",
            Some(port),
            &[endpoint("t-dead", dead), endpoint("t-b", b)],
        )
        .await
        .expect("update");
        for _ in 0..4 {
            assert_eq!(ask(port).await, "b");
        }
        lb.update("web", None, &[]).await.expect("stop");
        assert!(lb.ports().is_empty());
    }

    #[tokio::test]
    async fn a_leaving_instance_keeps_its_busy_connection_and_closes_it_when_idle() {
        let (a, _ha) = echo_server("a").await;
        let lb = LoadBalancer::new("127.0.0.1".parse().expect("ip"));
        let port = free_port().await;
        lb.update("web", Some(port), &[endpoint("t-a", a)])
            .await
            .expect("listen");
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"a");
        assert_eq!(lb.connections("t-a"), 1);
        lb.update("web", Some(port), &[]).await.expect("leave");
        // Idle after a reply: closed by the balancer, and the count drops.
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the balancer closed the idle connection");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lb.connections("t-a") > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lb.connections("t-a"), 0);
    }
}
