//! The Agora master: owns the cluster's authoritative state — admitted
//! agents, subscribed frameworks, outstanding offers and tasks — drives the
//! allocator, relays status updates, and serves gRPC (agents, frameworks) and
//! the operator HTTP API on one port.

pub mod allocator;
pub mod audit;
pub mod auth;
pub mod config;
mod core;
pub mod events;
mod gate;
mod grpc;
mod http;
pub mod leadership;
pub mod metrics;
pub mod offer_book;
pub mod outbound;
mod priority;
pub mod registry;
mod serve;
pub mod snapshot;
pub mod state;
mod ui;

use std::future::Future;

use agora_proto::v1::{
    agent_service_server::AgentServiceServer, scheduler_server::SchedulerServer,
};
use std::sync::Arc;
use tokio::net::TcpListener;

use agora_store::election::Election;
use agora_store::etcd::Etcd;
use agora_store::{Store, StoreError};
use tokio::sync::watch;
use tower::ServiceExt;

use auth::Caller;
pub use config::MasterConfig;
pub use leadership::{Backing, HaConfig, Role};
pub use registry::{Registry, RegistryError};
pub use serve::{ClientCertificate, PeerAddr, ServeLimits};

/// Why the master stopped.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting a thread of the master: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Tls(#[from] agora_proto::tls::TlsError),
    #[error("opening the audit log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Events an event-stream client may fall behind by before it is told it
/// lagged (and how many it missed): about a second of a launch burst's. A
/// busy cluster makes tens of thousands a second, and a client's task on
/// a busy machine may wait tens of milliseconds for a core. The ring holds
/// a pointer per event (about 2.5 MB in all); an event itself is kept only
/// until every client has read it.
const EVENTS_BEHIND: usize = 65_536;

/// Stops the accept loop when `run` returns, however it returns.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the master on an already-bound listener until `shutdown` resolves.
/// With an embedded registry it leads at once; on etcd it stands by until
/// elected, then leads until `shutdown` (it resigns) or until it loses the
/// lease: then it stops acting at once, ends its sessions and stands by
/// again, campaigning like any standby.
pub async fn run(
    listener: TcpListener,
    config: MasterConfig,
    backing: Backing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let me = match &backing {
        Backing::Etcd(ha) => ha.advertise.clone(),
        Backing::Embedded(_) if config.tls.is_some() => format!("https://{addr}"),
        Backing::Embedded(_) => format!("http://{addr}"),
    };
    let tls = config
        .tls
        .as_ref()
        .map(agora_proto::tls::ServerTlsFiles::config)
        .transpose()?;
    let (tx, rx) = core::inbox(outbound::CORE_INBOX_CAPACITY);
    let auth = config.auth.clone();
    auth.reload_on_sighup()
        .map_err(|source| MasterError::Serve {
            addr: addr.clone(),
            source,
        })?;
    let audit = match &config.audit_log {
        Some(path) => Some(Arc::new(audit::AuditLog::open(path).map_err(|source| {
            MasterError::Audit {
                path: path.clone(),
                source,
            }
        })?)),
        None => None,
    };
    // The master's key to its agents' HTTP APIs (sandboxes): given to each
    // agent as it registers, presented on every read through the master.
    let agent_http_token = if auth.policy().enabled() {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    } else {
        String::new()
    };
    let heartbeat_terms = Arc::new(core::HeartbeatTerms::default());
    let (term_tx, term) = watch::channel(None);
    let handle = grpc::CoreHandle::new(tx, auth.clone(), heartbeat_terms.clone(), term);
    // Slow event readers lag and are told so; the core never waits on them.
    let events = events::EventSender::new(EVENTS_BEHIND);
    let (role_tx, role) = watch::channel(match backing {
        Backing::Embedded(_) => Role::Leading,
        Backing::Etcd(_) => Role::Standby { leader: None },
    });
    // Every master there is (on etcd: as they list themselves), for
    // clients that lost theirs — the web UI among them.
    let (members_tx, members) = watch::channel(vec![me.clone()]);

    use agora_proto::limits::MAX_MESSAGE_BYTES;
    let grpc = tonic::service::Routes::new(
        SchedulerServer::new(handle.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        AgentServiceServer::new(handle.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .into_axum_router();
    let (publisher, reader) = snapshot::channel();
    let operator = http::router(
        handle,
        reader,
        events.clone(),
        agent_http_token.clone(),
        &config.client_tls,
        config.relay_timeout,
    );
    // gRPC and HTTP share the port; both routers have their own fallback, so
    // requests are steered by content type rather than merged by path.
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let is_grpc = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let now = role.borrow().clone();
        let router = if is_grpc {
            grpc.clone()
        } else {
            operator.clone()
        };
        let me = me.clone();
        let masters = members.borrow().clone();
        let policy = auth.policy();
        let audit = audit.clone();
        async move {
            if !is_grpc && path == "/api/v1/leader" {
                return leadership::leader_answer(&now, &me);
            }
            if !is_grpc && path == "/api/v1/masters" {
                return leadership::masters_answer(&now, &me, masters);
            }
            if let Role::Standby { leader } = &now {
                return leadership::standby_answer(leader.as_deref(), is_grpc, &path);
            }
            let mut request = request;
            let peer = request
                .extensions()
                .get::<PeerAddr>()
                .map_or_else(|| "?".to_string(), |p| p.0.to_string());
            let caller = match gate::authenticate(&policy, &request, is_grpc, &peer) {
                Ok(caller) => caller,
                Err(refusal) => {
                    if !is_grpc && let Some(audit) = &audit {
                        gate::record(audit, &Caller::Anonymous, &peer, &request, refusal.status());
                    }
                    return refusal;
                }
            };
            let method = request.method().clone();
            let uri_path = request.uri().path().to_string();
            request.extensions_mut().insert(caller.clone());
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if !is_grpc
                && audit::is_mutating(&method)
                && let Some(audit) = &audit
            {
                audit.record(&audit::AuditEntry {
                    time: chrono::Utc::now().to_rfc3339(),
                    principal: caller.name(),
                    peer,
                    method: method.as_str(),
                    path: &uri_path,
                    status: response.status().as_u16(),
                });
            }
            response
        }
    });
    tracing::info!(%addr, "master listening (gRPC and HTTP)");
    let operators = serve::OperatorThread::start().map_err(MasterError::Thread)?;
    let server = tokio::spawn(serve::serve(
        listener,
        app,
        config.serve.clone(),
        tls,
        Some(operators.handle()),
    ));
    let _stop_serving = AbortOnDrop(server.abort_handle());
    let served = async move {
        match server.await {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    };
    tokio::pin!(served);
    tokio::pin!(shutdown);

    let mut inbox = rx;
    let election = match &backing {
        Backing::Etcd(ha) => {
            let etcd = Arc::new(
                Etcd::new(&ha.etcd)
                    .map_err(StoreError::from)
                    .map_err(RegistryError::from)?,
            );
            let election = Arc::new(Election::new(
                etcd,
                leadership::LEADER_KEY,
                &ha.advertise,
                ha.lease_ttl,
            ));
            tokio::spawn(leadership::follow_members(election.clone(), members_tx));
            Some((election, ha.clone()))
        }
        Backing::Embedded(_) => None,
    };
    let mut embedded = match backing {
        Backing::Embedded(registry) => Some(registry),
        Backing::Etcd(_) => None,
    };
    let mut terms = 0;
    // Each turn of this loop is a term as leader: an embedded registry's
    // one term, or on etcd a campaign, a term, and — deposed (the process
    // froze past its lease, or lost etcd) — standing by again.
    loop {
        let (registry, fence) = match (&election, embedded.take()) {
            (Some((election, ha)), _) => {
                role_tx.send_replace(Role::Standby { leader: None });
                let (observed_tx, observed) = watch::channel(None);
                let mirror = tokio::spawn(leadership::follow_observed(
                    observed,
                    role_tx.clone(),
                    ha.advertise.clone(),
                ));
                tracing::info!(etcd = %ha.etcd, "standing by: campaigning for leadership");
                let leadership = tokio::select! {
                    l = election.campaign(&observed_tx) => l,
                    () = &mut shutdown => return Ok(()),
                    served = &mut served => return served.map_err(|source| MasterError::Serve { addr, source }),
                };
                mirror.abort();
                tracing::info!(me = %ha.advertise, "elected leader; recovering the registry");
                let store = Store::etcd(
                    &ha.etcd,
                    leadership::REGISTRY_PREFIX,
                    Some(leadership.clone()),
                )
                .map_err(RegistryError::from)?;
                (Registry::on(store), Some(leadership))
            }
            (None, Some(registry)) => (registry, None),
            // An embedded registry leads once: its term ends the process.
            (None, None) => return Ok(()),
        };
        let mut core = core::Core::recover(config.clone(), events.clone(), registry)?;
        core.set_agent_http_token(agent_http_token.clone());
        core.share_heartbeat_terms(heartbeat_terms.clone());
        core.publish_to(publisher.clone());
        terms += 1;
        term_tx.send_replace(Some(terms));
        role_tx.send_replace(Role::Leading);
        let (stop_core_tx, stop_core_rx) = tokio::sync::oneshot::channel::<()>();
        let mut core = run_core_on_its_own_thread(core, inbox, stop_core_rx, fence.clone())?;
        let lost = async {
            match &fence {
                Some(f) => f.lost().await,
                None => std::future::pending().await,
            }
        };
        // How the term ended, and the inbox if the core has handed it back.
        let (ended, returned) = tokio::select! {
            served = &mut served => (Term::Ended(served.map_err(|source| MasterError::Serve { addr: addr.clone(), source })), None),
            () = &mut shutdown => (Term::Ended(Ok(())), None),
            () = lost => (Term::Deposed, None),
            exit = &mut core => match exit {
                Ok((core::CoreExit::Deposed, returned)) => (Term::Deposed, Some(returned)),
                Ok((core::CoreExit::Stopped, _)) | Err(_) => return Ok(()),
            },
        };
        if let Term::Deposed = ended {
            // Requests for the term that ended answer nothing now; agents'
            // sessions opened in it end.
            role_tx.send_replace(Role::Standby { leader: None });
            term_tx.send_replace(None);
        }
        inbox = match returned {
            Some(inbox) => inbox,
            None => {
                let _ = stop_core_tx.send(());
                match core.await {
                    Ok((_, inbox)) => inbox,
                    Err(_) => return Ok(()),
                }
            }
        };
        let Some(fence) = fence else {
            return match ended {
                Term::Ended(outcome) => outcome,
                Term::Deposed => Ok(()),
            };
        };
        match ended {
            Term::Ended(outcome) => {
                if outcome.is_ok() {
                    // A graceful stop hands over at once.
                    fence.resign().await;
                }
                return outcome;
            }
            Term::Deposed => {
                let dropped = inbox.discard_queued();
                // Let go of the key at once if the lease still holds it (the
                // clock said it may have expired; etcd may not agree), so
                // the next leader need not wait out the lease.
                fence.resign().await;
                tracing::warn!(dropped, "deposed: standing by again");
            }
        }
    }
}

/// How a term as leader ended.
enum Term {
    /// The master stops (asked to, or its server failed).
    Ended(Result<(), MasterError>),
    /// The lease was lost, or a write refused: another master may lead.
    Deposed,
}

/// Runs the core on a thread of its own (a single-threaded runtime): a
/// burst of thousands of messages keeps it busy for a while, and connection
/// tasks (reads, agent sessions) must not wait behind it on a shared worker.
/// Resolves with how the core ended, and hands the inbox back.
fn run_core_on_its_own_thread(
    core: core::Core,
    mut inbox: core::Inbox,
    stop: tokio::sync::oneshot::Receiver<()>,
    fence: Option<agora_store::election::Leadership>,
) -> Result<tokio::sync::oneshot::Receiver<(core::CoreExit, core::Inbox)>, MasterError> {
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MasterError::Thread)?;
    std::thread::Builder::new()
        .name("master-core".into())
        .spawn(move || {
            priority::raise_this_thread(priority::CORE_NICE);
            let stopped = async move {
                let _ = stop.await;
            };
            let exit = runtime.block_on(core.run(&mut inbox, stopped, fence));
            let _ = exit_tx.send((exit, inbox));
        })
        .map_err(MasterError::Thread)?;
    Ok(exit_rx)
}
