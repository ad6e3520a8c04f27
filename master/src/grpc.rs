//! The gRPC face of the master: the scheduler API for frameworks and the
//! session stream for agents. Each handler turns a request into a message for
//! the core and waits for its answer; streams are tied to the core by drop
//! guards, so a vanished peer is noticed at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use agora_proto::v1::{
    self, AgentMessage, Event, MasterMessage, agent_message, agent_service_server::AgentService,
    master_message, scheduler_server::Scheduler,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, Authority, Caller};
use crate::core::{AgentTx, Call, CoreMsg, HeartbeatTerms, InboxSender};
use crate::outbound::{AGENT_STREAM_CAPACITY, FRAMEWORK_STREAM_CAPACITY, Heard, Outbound};

/// A handle for sending messages to the core. Its queue is bounded: a
/// sender waits while the core is behind.
#[derive(Clone)]
pub struct CoreHandle {
    tx: InboxSender,
    next_conn: Arc<AtomicU64>,
    auth: Arc<Authority>,
    /// What agents' heartbeats are answered with, kept by the core.
    heartbeat_terms: Arc<HeartbeatTerms>,
    /// The term this master leads in, `None` while it stands by: an agent's
    /// session belongs to the term it opened in, and ends with it.
    term: watch::Receiver<Option<u64>>,
}

/// Who made a gRPC request, as the port's authentication found it.
fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}

impl CoreHandle {
    pub(crate) fn new(
        tx: InboxSender,
        auth: Arc<Authority>,
        heartbeat_terms: Arc<HeartbeatTerms>,
        term: watch::Receiver<Option<u64>>,
    ) -> Self {
        CoreHandle {
            tx,
            next_conn: Arc::new(AtomicU64::new(1)),
            auth,
            heartbeat_terms,
            term,
        }
    }

    /// The policy in force now.
    pub(crate) fn policy(&self) -> Arc<crate::auth::Policy> {
        self.auth.policy()
    }

    pub(crate) async fn send(&self, msg: CoreMsg) -> Result<(), Status> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| Status::unavailable("the master is shutting down"))
    }

    /// Sends a peer's message; while the core's queue has no room, the
    /// peer's connection reads nothing more, and the peer counts as heard
    /// ([`Heard::hold`]).
    async fn send_holding(&self, msg: CoreMsg, heard: &Heard) -> Result<(), Status> {
        match self.tx.try_send(msg).map_err(|e| *e) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let _holding = heard.hold();
                self.send(msg).await
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Status::unavailable("the master is shutting down"))
            }
        }
    }

    /// For drop guards, which cannot wait: straight in if there is room,
    /// else from a task of its own.
    fn send_from_drop(&self, msg: CoreMsg) {
        match self.tx.try_send(msg).map_err(|e| *e) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let core = self.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = core.send(msg).await;
                    });
                }
            }
        }
    }

    async fn call(
        &self,
        header: Option<v1::CallHeader>,
        caller: Caller,
        call: Call,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let (reply, answer) = oneshot::channel();
        self.send(CoreMsg::Call {
            header,
            caller,
            call,
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| Status::unavailable("the master is shutting down"))??;
        Ok(Response::new(v1::CallResponse {}))
    }
}

/// A stream that tells the core when the peer drops it.
struct Guarded<T> {
    inner: ReceiverStream<Result<T, Status>>,
    on_drop: Option<(CoreHandle, CoreMsg)>,
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        if let Some((core, msg)) = self.on_drop.take() {
            core.send_from_drop(msg);
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
type MasterStream = Pin<Box<dyn Stream<Item = Result<MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for CoreHandle {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let peer = request
            .extensions()
            .get::<crate::PeerAddr>()
            .map(|p| p.0.ip());
        let caller = caller_of(&request);
        let request = request.into_inner();
        let secret = request.secret;
        let info = request
            .framework_info
            .ok_or_else(|| Status::invalid_argument("subscribe: framework_info is required"))?;
        let demand = request
            .demand
            .as_ref()
            .map(agora_proto::Demand::from_proto)
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("subscribe: demand.resources: {e}")))?;
        check_webui_url(&info.webui_url, peer).await?;
        let (tx, rx) = Outbound::channel(FRAMEWORK_STREAM_CAPACITY);
        let (reply, answer) = oneshot::channel();
        self.send(CoreMsg::Subscribe {
            info: Box::new(info),
            secret,
            demand,
            caller,
            tx,
            reply,
        })
        .await?;
        let (framework_id, stream_id) = answer
            .await
            .map_err(|_| Status::unavailable("the master is shutting down"))??;
        let stream = Guarded {
            inner: ReceiverStream::new(rx),
            on_drop: Some((
                self.clone(),
                CoreMsg::FrameworkClosed {
                    framework_id,
                    stream_id,
                },
            )),
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn accept(
        &self,
        r: Request<v1::AcceptRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        self.call(r.header.clone(), caller, Call::Accept(Box::new(r)))
            .await
    }

    async fn decline(
        &self,
        r: Request<v1::DeclineRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        self.call(r.header.clone(), caller, Call::Decline(r)).await
    }

    async fn revive(
        &self,
        r: Request<v1::ReviveRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        self.call(r.into_inner().header, caller, Call::Revive).await
    }

    async fn suppress(
        &self,
        r: Request<v1::SuppressRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        self.call(r.into_inner().header, caller, Call::Suppress)
            .await
    }

    async fn set_demand(
        &self,
        r: Request<v1::DemandRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        let demand = match &r.demand {
            None => None,
            Some(d) => Some(agora_proto::Demand::from_proto(d).map_err(|e| {
                Status::invalid_argument(format!("set_demand: demand.resources: {e}"))
            })?),
        };
        self.call(r.header, caller, Call::SetDemand(demand)).await
    }

    async fn kill(
        &self,
        r: Request<v1::KillRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        let task = r
            .task_id
            .filter(|t| !t.value.is_empty())
            .ok_or_else(|| Status::invalid_argument("kill: task_id is required"))?;
        self.call(
            r.header,
            caller,
            Call::Kill {
                task_id: task,
                grace: r.kill_grace_period,
            },
        )
        .await
    }

    async fn acknowledge(
        &self,
        r: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        self.call(r.header.clone(), caller, Call::Acknowledge(Box::new(r)))
            .await
    }

    async fn reconcile(
        &self,
        r: Request<v1::ReconcileRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        let r = r.into_inner();
        self.call(r.header, caller, Call::Reconcile(r.task_ids))
            .await
    }

    async fn teardown(
        &self,
        r: Request<v1::TeardownRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller_of(&r);
        self.call(r.into_inner().header, caller, Call::Teardown)
            .await
    }
}

#[tonic::async_trait]
impl AgentService for CoreHandle {
    type SessionStream = MasterStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<MasterStream>, Status> {
        // A session opened as a term ends would wait on a core that is
        // gone (its registration dropped with the term's queue): it ends
        // with the term, and none opens while the master stands by.
        let Some(term) = *self.term.borrow() else {
            return Err(Status::unavailable("this master is standing by"));
        };
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // A known agent re-registers with its own secret; only a new one
        // needs a join credential.
        let may_join = self
            .policy()
            .allows(&caller_of(&request), Action::RegisterAgent);
        let (tx, rx) = Outbound::channel(AGENT_STREAM_CAPACITY);
        tokio::spawn(relay_agent_session(
            self.clone(),
            AgentConnection {
                conn,
                may_join,
                out: tx,
                term,
            },
            request.into_inner(),
            self.term.clone(),
        ));
        let stream = Guarded {
            inner: ReceiverStream::new(rx),
            on_drop: Some((self.clone(), CoreMsg::AgentClosed { conn })),
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One agent session's connection, as the core knows it.
struct AgentConnection {
    conn: u64,
    may_join: bool,
    /// The session's stream to the agent.
    out: AgentTx,
    /// The term it opened in.
    term: u64,
}

/// Relays an agent's messages to the core (answering heartbeats itself)
/// until the agent ends the session or the term it opened in ends; then
/// tells the core the session closed.
async fn relay_agent_session(
    core: CoreHandle,
    connection: AgentConnection,
    mut inbound: impl Stream<Item = Result<AgentMessage, Status>> + Unpin,
    mut term_changed: watch::Receiver<Option<u64>>,
) {
    let AgentConnection {
        conn,
        may_join,
        out,
        term,
    } = connection;
    loop {
        let message = tokio::select! {
            message = inbound.next() => message,
            _ = term_changed.wait_for(|now| *now != Some(term)) => {
                out.close(Status::unavailable("this master no longer leads"));
                break;
            }
        };
        let Some(message) = message else { break };
        match message {
            Ok(msg) => {
                // Heard now, however long the core's queue makes the
                // message wait.
                out.heard().now();
                let msg = match answer_heartbeat(msg, &out, &core.heartbeat_terms) {
                    Answered::Fully => continue,
                    Answered::Usage(usage) => CoreMsg::AgentUsage { conn, usage },
                    Answered::No(msg) => CoreMsg::Agent {
                        conn,
                        tx: out.clone(),
                        msg,
                        may_join,
                    },
                };
                if core.send_holding(msg, out.heard()).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                tracing::debug!(conn, %status, "agent stream ended with an error");
                break;
            }
        }
    }
    let _ = core.send(CoreMsg::AgentClosed { conn }).await;
}

/// What the connection did with an agent's message.
enum Answered {
    /// A heartbeat, answered; nothing for the core.
    Fully,
    /// A heartbeat, answered; its usage report is for the core.
    Usage(Vec<v1::TaskUsage>),
    /// For the core (not a heartbeat, a session the core has not
    /// admitted, or no room for the answer).
    No(AgentMessage),
}

/// Answers an admitted session's heartbeat here, with the terms the core
/// keeps current: the agent learns the master hears it (its stream is
/// stamped on arrival, and liveness counts from the stamp) without the
/// core being woken for it.
fn answer_heartbeat(msg: AgentMessage, out: &AgentTx, terms: &HeartbeatTerms) -> Answered {
    let Some(agent_message::Message::Heartbeat(heartbeat)) = msg.message else {
        return Answered::No(msg);
    };
    if !out.heard().is_admitted() || !out.has_room(1) {
        // The core refuses the first and cuts off the second.
        return Answered::No(AgentMessage {
            message: Some(agent_message::Message::Heartbeat(heartbeat)),
        });
    }
    let _ = out.send(MasterMessage {
        message: Some(master_message::Message::HeartbeatAck(terms.ack())),
    });
    if heartbeat.usage.is_empty() {
        Answered::Fully
    } else {
        Answered::Usage(heartbeat.usage)
    }
}

/// The master relays `/{name}/…` to a framework's `webui_url`: it must be
/// the address the framework connects from, or the master would be an open
/// relay to any host and port.
async fn check_webui_url(url: &str, peer: Option<std::net::IpAddr>) -> Result<(), Status> {
    if url.is_empty() {
        return Ok(());
    }
    let bad =
        |why: String| Status::invalid_argument(format!("framework_info.webui_url `{url}`: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be an http(s) URL".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("names no host".into()))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let Some(peer) = peer else {
        return Ok(());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<std::net::IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
        .map(|a| a.ip())
        .collect();
    if addresses.contains(&peer) {
        Ok(())
    } else {
        Err(bad(format!(
            "{host} is not the address this framework connects from ({peer})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(usage: Vec<v1::TaskUsage>) -> AgentMessage {
        AgentMessage {
            message: Some(agent_message::Message::Heartbeat(
                agent_message::Heartbeat { usage },
            )),
        }
    }

    fn terms() -> HeartbeatTerms {
        let terms = HeartbeatTerms::default();
        terms.set(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(50),
        );
        terms
    }

    fn acks(rx: &mut mpsc::Receiver<Result<MasterMessage, Status>>) -> Vec<(f64, f64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.ok()?.message? {
                master_message::Message::HeartbeatAck(a) => {
                    Some((a.heartbeat_interval_seconds, a.agent_timeout_seconds))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_admitted_sessions_heartbeat_is_answered_by_its_connection() {
        let (out, mut rx) = AgentTx::channel(8);
        let terms = terms();
        // Before the core admitted the session: the core's to answer (and
        // refuse).
        assert!(matches!(
            answer_heartbeat(heartbeat(Vec::new()), &out, &terms),
            Answered::No(_)
        ));
        assert!(acks(&mut rx).is_empty());

        out.heard().admit();
        assert!(matches!(
            answer_heartbeat(heartbeat(Vec::new()), &out, &terms),
            Answered::Fully
        ));
        assert_eq!(acks(&mut rx), [(10.0, 50.0)], "with the core's terms");

        // A usage report still reaches the core, answered all the same.
        let usage = v1::TaskUsage {
            task_id: Some(v1::TaskId { value: "t1".into() }),
            ..Default::default()
        };
        match answer_heartbeat(heartbeat(vec![usage]), &out, &terms) {
            Answered::Usage(usage) => assert_eq!(usage.len(), 1),
            _ => panic!("the usage is the core's"),
        }
        assert_eq!(acks(&mut rx).len(), 1);

        // Anything else is the core's.
        let update = AgentMessage {
            message: Some(agent_message::Message::StatusUpdates(
                agent_message::StatusUpdates::default(),
            )),
        };
        assert!(matches!(
            answer_heartbeat(update, &out, &terms),
            Answered::No(_)
        ));

        // Once the core forgets the session, its heartbeats go to the core
        // again.
        out.heard().revoke();
        assert!(matches!(
            answer_heartbeat(heartbeat(Vec::new()), &out, &terms),
            Answered::No(_)
        ));
        assert!(acks(&mut rx).is_empty());
    }

    #[test]
    fn a_session_with_no_room_for_the_answer_is_left_to_the_core() {
        let (out, _rx) = AgentTx::channel(2);
        out.heard().admit();
        out.send(MasterMessage::default()).expect("room for one");
        // Its last slot is kept for the error that ends it: the core cuts
        // the session off.
        assert!(matches!(
            answer_heartbeat(heartbeat(Vec::new()), &out, &terms()),
            Answered::No(_)
        ));
    }

    #[tokio::test]
    async fn an_agent_session_ends_with_the_term_it_opened_in() {
        let (tx, mut inbox) = crate::core::inbox(16);
        let (term_tx, term) = watch::channel(Some(1));
        let core = CoreHandle::new(
            tx,
            Authority::with_policy(crate::auth::Policy::default()),
            Arc::new(terms()),
            term.clone(),
        );
        let (out, mut rx) = AgentTx::channel(8);
        let (agent_tx, agent_rx) = mpsc::channel(8);
        let relay = tokio::spawn(relay_agent_session(
            core,
            AgentConnection {
                conn: 7,
                may_join: true,
                out,
                term: 1,
            },
            ReceiverStream::new(agent_rx),
            term,
        ));
        agent_tx
            .send(Ok(AgentMessage {
                message: Some(agent_message::Message::Register(
                    agent_message::Register::default(),
                )),
            }))
            .await
            .expect("relay listening");
        // The core's queue takes it (the core of a term that is ending may
        // never read it).
        let relayed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if let Some(msg) = inbox.try_next() {
                    break msg;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("relayed to the core");
        assert!(matches!(relayed, CoreMsg::Agent { conn: 7, .. }));

        term_tx.send_replace(None);
        relay.await.expect("the relay ends with its term");
        let ended = std::iter::from_fn(|| rx.try_recv().ok())
            .find_map(Result::err)
            .map(|s| s.code());
        assert_eq!(ended, Some(tonic::Code::Unavailable), "the agent is told");
        assert!(matches!(
            inbox.try_next(),
            Some(CoreMsg::AgentClosed { conn: 7 })
        ));
    }
}
