//! The Agora master: owns the cluster's authoritative state — admitted
//! agents, subscribed frameworks, outstanding offers and tasks — drives the
//! allocator, relays status updates, and serves gRPC (agents, frameworks) and
//! the operator HTTP API on one port.

pub mod allocator;
pub mod config;
mod core;
pub mod events;
mod grpc;
mod http;
pub mod metrics;
pub mod registry;
pub mod state;
mod ui;

use std::future::{Future, IntoFuture};

use agora_proto::v1::{
    agent_service_server::AgentServiceServer, scheduler_server::SchedulerServer,
};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;

pub use config::MasterConfig;
pub use registry::Registry;

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
}

/// Small gRPC messages (updates, acknowledgements) must not wait for Nagle's
/// algorithm and the peer's delayed ACK: that costs ~40 ms a round trip.
fn set_nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
}

/// Serves the master on an already-bound listener until `shutdown` resolves,
/// starting from what `registry` holds.
pub async fn run(
    listener: TcpListener,
    config: MasterConfig,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = grpc::CoreHandle::new(tx);
    // Slow event readers lag and are told so; the core never waits on them.
    let (events, _) = tokio::sync::broadcast::channel(4096);
    let (stop_core_tx, stop_core_rx) = tokio::sync::oneshot::channel::<()>();
    let core = core::Core::recover(config, events.clone(), registry)?;
    let core = tokio::spawn(core.run(rx, async move {
        let _ = stop_core_rx.await;
    }));

    let grpc = tonic::service::Routes::new(SchedulerServer::new(handle.clone()))
        .add_service(AgentServiceServer::new(handle.clone()))
        .into_axum_router();
    let operator = http::router(handle, events);
    // gRPC and HTTP share the port; both routers have their own fallback, so
    // requests are steered by content type rather than merged by path.
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let is_grpc = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let router = if is_grpc {
            grpc.clone()
        } else {
            operator.clone()
        };
        async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    });
    tracing::info!(%addr, "master listening (gRPC and HTTP)");
    // Not a graceful drain: agent and framework streams never end on their
    // own, and they reconnect to whoever serves next.
    let served = tokio::select! {
        served = axum::serve(listener.tap_io(set_nodelay), app).into_future() => served,
        () = shutdown => Ok(()),
    };
    let _ = stop_core_tx.send(());
    let _ = core.await;
    served.map_err(|source| MasterError::Serve { addr, source })
}
