//! The `gatehouse.v1.HookService` implementation.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use audit_store::{AuditError, AuditRecord, AuditStore};
use futures::Stream;
use hook_proto::v1::{
    self, ClientFrame, DecidedBy, EventError, HookEvent, ServerFrame, Welcome, client_frame,
    server_frame,
};
use policy_core::proto::{bundle_to_proto, decision_to_proto, event_from_proto};
use policy_core::{Bundle, Decision, Event, EventKind, ReasonCode};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::PolicyHandle;
use crate::status::{inbound_error, status};
use crate::tls::{AgentTokens, Caller, PeerIdentity};
use control_store::ControlStore;

pub(crate) const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub(crate) struct HookSvc {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) control: Arc<dyn ControlStore>,
    pub(crate) policy: PolicyHandle,
    pub(crate) audit: Arc<dyn AuditStore>,
    pub(crate) metrics: Arc<crate::Metrics>,
    pub(crate) auth: Auth,
    max_in_flight: usize,
    /// The configured message cap; frames above it are refused with
    /// `message_too_large` (the transport's own limit sits above it).
    pub(crate) max_message_bytes: usize,
    audit_deadline: std::time::Duration,
    shutdown: watch::Receiver<bool>,
}

/// How callers of the hook service are identified: by their client
/// certificate (mTLS), else by an agent bearer token when a tokens file is
/// configured, else not at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    pub(crate) tokens: Option<Arc<AgentTokens>>,
}

impl Auth {
    /// What the caller of `req` may speak for; UNAUTHENTICATED when a
    /// token is required and missing or unknown.
    pub(crate) fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
        {
            return match crate::tls::identity_of(leaf) {
                Some(PeerIdentity::Agent(a)) => Ok(Caller::Agents([a].into())),
                Some(PeerIdentity::Admin(n)) => Ok(Caller::Admin(n)),
                None => Err(status(
                    Code::Unauthenticated,
                    "unauthenticated",
                    "the client certificate names no agent (URI SAN spiffe://<domain>/agent/<id> or CN)",
                )),
            };
        }
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given.and_then(|t| tokens.agents(t)) {
            Some(agents) => Ok(Caller::Agents(agents)),
            None => Err(status(
                Code::Unauthenticated,
                "unauthenticated",
                "a valid agent token is required (authorization: Bearer <token>)",
            )),
        }
    }
}

/// The per-server bounds a stream works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_in_flight: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) audit_deadline: std::time::Duration,
}

/// Who is on the other end of a stream, from its hello.
#[derive(Debug, Clone)]
struct Peer {
    agent_id: String,
    session_id: String,
    runtime: String,
    metadata: BTreeMap<String, String>,
    /// What the connection's certificate or token allows.
    caller: Caller,
}

impl HookSvc {
    pub(crate) fn new(
        control: Arc<dyn ControlStore>,
        policy: PolicyHandle,
        audit: Arc<dyn AuditStore>,
        metrics: Arc<crate::Metrics>,
        auth: Auth,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                control,
                policy,
                audit,
                metrics,
                auth,
                max_in_flight: limits.max_in_flight.max(1),
                max_message_bytes: limits.max_message_bytes,
                audit_deadline: limits.audit_deadline,
                shutdown,
            }),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Inner {
    /// Appends `record` and waits at most the audit deadline for it.
    async fn record(&self, record: AuditRecord, once: bool) -> Result<u64, AuditError> {
        let append = if once {
            self.audit.append_once(record)
        } else {
            self.audit.append(record)
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.audit_deadline, append).await {
            Ok(r) => r,
            Err(_) => Err(AuditError::Commit(format!(
                "not committed within the audit deadline ({} ms)",
                self.audit_deadline.as_millis()
            ))),
        };
        self.metrics.audit_append(started.elapsed(), result.is_ok());
        result
    }

    /// Decides one wire event against `bundle` and records it; the returned
    /// decision is in the audit, or is a DENY saying why it is not. The one
    /// decision function of the stream and the unary RPC; it runs inside
    /// one span per event, carrying the event id, agent, verdict and who
    /// decided.
    async fn decide(
        &self,
        bundle: &Bundle,
        wire: &HookEvent,
        peer: Option<&Peer>,
        caller: &Caller,
    ) -> v1::Decision {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "event",
            event_id = %wire.event_id,
            agent = %peer.map_or(wire.agent_id.as_str(), |p| p.agent_id.as_str()),
            kind = policy_core::proto::kind_name(wire),
            verdict = tracing::field::Empty,
            reason_code = tracing::field::Empty,
            decided_by = "server",
            audit_seq = tracing::field::Empty,
        );
        let d = self
            .decide_event(bundle, wire, peer, caller)
            .instrument(span.clone())
            .await;
        span.record(
            "verdict",
            policy_core::proto::verdict_from_proto(d.verdict).map_or("deny", |v| v.as_str()),
        );
        span.record("reason_code", d.reason_code.as_str());
        span.record("audit_seq", d.audit_seq);
        d
    }

    async fn decide_event(
        &self,
        bundle: &Bundle,
        wire: &HookEvent,
        peer: Option<&Peer>,
        caller: &Caller,
    ) -> v1::Decision {
        let started = std::time::Instant::now();
        let mut reserved = Vec::new();
        let (event, decision) = match event_from_proto(wire) {
            // Every decision is recorded and matched by its event id: an
            // event without one cannot be attributed or replayed safely.
            Ok(mut event) if wire.event_id.trim().is_empty() => {
                if let Some(p) = peer {
                    fill_from_peer(&mut event, p);
                }
                let d = Decision::deny(
                    ReasonCode::MalformedEvent,
                    "the event has no event_id",
                    bundle.hash(),
                );
                (event, d)
            }
            Ok(mut event) => {
                let mismatch = match peer {
                    Some(p) => {
                        let agent = !event.agent_id.is_empty() && event.agent_id != p.agent_id;
                        // An event may not name another session than its
                        // stream: that would step around a revocation of
                        // the stream's session.
                        let session = !event.session_id.is_empty()
                            && !p.session_id.is_empty()
                            && event.session_id != p.session_id;
                        fill_from_peer(&mut event, p);
                        if agent {
                            Some((
                                ReasonCode::PrincipalMismatch,
                                "the event names another agent than the stream's hello",
                            ))
                        } else if session {
                            Some((
                                ReasonCode::SessionMismatch,
                                "the event names another session than the stream's hello",
                            ))
                        } else {
                            None
                        }
                    }
                    None => None,
                };
                // The caller's certificate or token says which agents it
                // may speak for; any other is denied, whatever the policy.
                let decision = if !caller.may_speak_for(&event.agent_id) {
                    Decision::deny(
                        ReasonCode::IdentityMismatch,
                        format!(
                            "this caller may speak for {}, not for agent `{}`",
                            caller.describe(),
                            event.agent_id
                        ),
                        bundle.hash(),
                    )
                } else {
                    match mismatch {
                        Some((code, why)) => Decision::deny(code, why, bundle.hash()),
                        None => {
                            let decided =
                                control_store::decide(bundle, &event, self.control.as_ref()).await;
                            reserved = decided.reserved;
                            decided.decision
                        }
                    }
                };
                (event, decision)
            }
            Err(e) => {
                let mut event = Event {
                    event_id: wire.event_id.clone(),
                    agent_id: wire.agent_id.clone(),
                    session_id: wire.session_id.clone(),
                    runtime: wire.runtime.clone(),
                    metadata: BTreeMap::new(),
                    kind: EventKind::Unknown,
                };
                if let Some(p) = peer {
                    fill_from_peer(&mut event, p);
                }
                let d = Decision::deny(e.reason_code(), e.to_string(), bundle.hash());
                (event, d)
            }
        };
        let kind_name = policy_core::proto::kind_name(wire);
        // A denied install is an install scan finding, with its own kind.
        let install_denied = matches!(event.kind, EventKind::Install { .. })
            && decision.verdict == policy_core::Verdict::Deny;
        let record = AuditRecord {
            time_ms: now_ms(),
            record_kind: if install_denied {
                "install_scan"
            } else {
                "decision"
            }
            .into(),
            session_id: event.session_id.clone(),
            agent_id: event.agent_id.clone(),
            runtime: event.runtime.clone(),
            event_kind: kind_name.into(),
            event_id: wire.event_id.clone(),
            correlation_id: wire.correlation_id.clone(),
            resource: event.kind.resource_label(&event.session_id),
            verdict: decision.verdict.as_str().into(),
            reason_code: decision.reason_code.as_str().into(),
            policies: decision.policies.clone(),
            decided_by: "server".into(),
            bundle_hash: decision.bundle_hash.clone(),
            detail: serde_json_detail(&decision, install_denied),
        };
        let (decision, seq) = match self.record(record, false).await {
            Ok(seq) => (decision, seq),
            Err(e) => {
                tracing::error!(error = %e, event_id = %wire.event_id, "audit append failed; denying");
                // What the undelivered decision reserved goes back.
                if !reserved.is_empty()
                    && let Err(e) = self.control.release(reserved).await
                {
                    tracing::warn!(error = %e, "cannot release reservations");
                }
                let d = Decision::deny(
                    ReasonCode::AuditUnavailable,
                    format!("the decision could not be recorded: {e}"),
                    bundle.hash(),
                );
                (d, 0)
            }
        };
        self.metrics.decision(&decision, started.elapsed());
        tracing::debug!(
            event_id = %wire.event_id,
            agent = %event.agent_id,
            verdict = decision.verdict.as_str(),
            reason_code = decision.reason_code.as_str(),
            decided_by = "server",
            audit_seq = seq,
            "decided"
        );
        decision_to_proto(
            &decision,
            &wire.correlation_id,
            &wire.event_id,
            DecidedBy::Server,
            seq,
        )
    }
}

impl Inner {
    /// Records a decision the client made locally, once per event id.
    async fn record_report(
        &self,
        report: &v1::LocalDecisionReport,
        peer: &Peer,
    ) -> Option<v1::ReportAck> {
        let wire = report.event.as_ref()?;
        let d = report.decision.as_ref()?;
        let (event_kind, resource, agent, session, runtime) = match event_from_proto(wire) {
            Ok(mut e) => {
                if e.agent_id.is_empty() {
                    e.agent_id.clone_from(&peer.agent_id);
                }
                (
                    e.kind.name(),
                    e.kind.resource_label(&e.session_id),
                    e.agent_id,
                    e.session_id,
                    e.runtime,
                )
            }
            Err(_) => (
                "unknown",
                String::new(),
                wire.agent_id.clone(),
                wire.session_id.clone(),
                wire.runtime.clone(),
            ),
        };
        let decided_by = match d.decided_by() {
            DecidedBy::FailOpen => "fail_open",
            DecidedBy::FailClosed => "fail_closed",
            _ => "local_fallback",
        };
        let verdict =
            policy_core::proto::verdict_from_proto(d.verdict).map_or("deny", |v| v.as_str());
        // A report for an agent the connection may not speak for is kept
        // as evidence of the attempt, never as that agent's decision.
        let impostor = !peer.caller.may_speak_for(&agent);
        let detail = serde_json::json!({
            "reason": d.reason,
            "cause": report.cause,
            "fail_open": decided_by == "fail_open" && !impostor,
            "decided_at_ms": report.decided_at_ms,
            "reported_by": peer.agent_id,
            "caller": peer.caller.describe(),
        });
        let (record_kind, verdict, decided_by, reason_code) = if impostor {
            tracing::warn!(agent = %agent, caller = %peer.caller.describe(), "a local-decision report for another agent; recorded as identity_mismatch");
            (
                "identity_mismatch",
                "deny",
                "server",
                "identity_mismatch".to_owned(),
            )
        } else {
            ("local_decision", verdict, decided_by, d.reason_code.clone())
        };
        let record = AuditRecord {
            time_ms: now_ms(),
            record_kind: record_kind.into(),
            session_id: session,
            agent_id: agent,
            runtime,
            event_kind: event_kind.into(),
            event_id: wire.event_id.clone(),
            correlation_id: wire.correlation_id.clone(),
            resource,
            verdict: verdict.into(),
            reason_code: reason_code.clone(),
            policies: d.policies.clone(),
            decided_by: decided_by.into(),
            bundle_hash: d.bundle_hash.clone(),
            detail: detail.to_string(),
        };
        match self.record(record, true).await {
            Ok(seq) => {
                if !impostor {
                    self.metrics.report(verdict, decided_by, &reason_code);
                }
                Some(v1::ReportAck {
                    id: wire.event_id.clone(),
                    audit_seq: seq,
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a local decision failed; the client keeps it spooled");
                None
            }
        }
    }

    /// Records that the client lost spooled decisions.
    async fn record_gap(&self, gap: &v1::SpoolGap, peer: &Peer) -> Option<v1::ReportAck> {
        let record = AuditRecord {
            time_ms: now_ms(),
            record_kind: "spool_gap".into(),
            agent_id: if gap.agent_id.is_empty() {
                peer.agent_id.clone()
            } else {
                gap.agent_id.clone()
            },
            session_id: peer.session_id.clone(),
            runtime: peer.runtime.clone(),
            event_kind: "spool_gap".into(),
            event_id: format!("{}:{}", gap.gap_id, gap.lost),
            verdict: "deny".into(),
            reason_code: "spool_full".into(),
            decided_by: "local_fallback".into(),
            detail: serde_json::json!({
                "lost": gap.lost,
                "first_lost_ms": gap.first_lost_ms,
                "last_lost_ms": gap.last_lost_ms,
            })
            .to_string(),
            ..AuditRecord::default()
        };
        match self.record(record, true).await {
            Ok(seq) => Some(v1::ReportAck {
                id: gap.gap_id.clone(),
                audit_seq: seq,
            }),
            Err(e) => {
                tracing::error!(error = %e, "recording a spool gap failed");
                None
            }
        }
    }
}

fn fill_from_peer(event: &mut Event, p: &Peer) {
    event.agent_id.clone_from(&p.agent_id);
    if event.session_id.is_empty() {
        event.session_id.clone_from(&p.session_id);
    }
    if event.runtime.is_empty() {
        event.runtime.clone_from(&p.runtime);
    }
    for (k, v) in &p.metadata {
        event.metadata.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn serde_json_detail(d: &Decision, install_denied: bool) -> String {
    let mut m = serde_json::Map::new();
    m.insert("reason".into(), d.reason.clone().into());
    if install_denied {
        m.insert("block_reason".into(), "install_denied".into());
    }
    if let Some(id) = &d.approval_id {
        m.insert("approval_id".into(), id.clone().into());
    }
    if let Some(ms) = d.retry_after_ms {
        m.insert("retry_after_ms".into(), ms.into());
    }
    // For outputs: the evidence and a hash, never the output itself.
    if let Some(o) = &d.output {
        m.insert("output_verdict".into(), o.verdict.as_str().into());
        m.insert("output_sha256".into(), o.output_sha256.clone().into());
        if let Ok(ev) = serde_json::to_value(&o.evidence) {
            m.insert("evidence".into(), ev);
        }
        if !o.escalations.is_empty() {
            m.insert("escalations".into(), o.escalations.clone().into());
        }
    }
    if !d.errors.is_empty() {
        m.insert("errors".into(), d.errors.clone().into());
    }
    serde_json::Value::Object(m).to_string()
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl v1::hook_service_server::HookService for HookSvc {
    type ProcessHookEventStream = FrameStream;

    async fn process_hook_event(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::ProcessHookEventStream>, Status> {
        let caller = self.inner.auth.caller(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.inner.max_in_flight + 8);
        tokio::spawn(run_stream(self.inner.clone(), inbound, tx, caller));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn evaluate(
        &self,
        request: Request<HookEvent>,
    ) -> Result<Response<v1::Decision>, Status> {
        let caller = self.inner.auth.caller(&request)?;
        let event = request.into_inner();
        let size = prost::Message::encoded_len(&event);
        if size > self.inner.max_message_bytes {
            return Err(status(
                Code::ResourceExhausted,
                "message_too_large",
                format!(
                    "the event is {size} bytes; the limit is {} bytes",
                    self.inner.max_message_bytes
                ),
            ));
        }
        let bundle = self.inner.policy.current();
        Ok(Response::new(
            self.inner.decide(&bundle, &event, None, &caller).await,
        ))
    }
}

type Tx = mpsc::Sender<Result<ServerFrame, Status>>;

fn frame(f: server_frame::Frame) -> Result<ServerFrame, Status> {
    Ok(ServerFrame { frame: Some(f) })
}

async fn run_stream(
    inner: Arc<Inner>,
    mut inbound: Streaming<ClientFrame>,
    tx: Tx,
    caller: Caller,
) {
    // 1. The hello.
    let hello = match inbound.message().await {
        Ok(Some(ClientFrame {
            frame: Some(client_frame::Frame::Hello(h)),
        })) => h,
        Ok(Some(_)) => {
            let _ = tx
                .send(Err(status(
                    Code::FailedPrecondition,
                    "hello_required",
                    "the first frame of a stream must be a hello",
                )))
                .await;
            return;
        }
        Ok(None) => return,
        Err(e) => {
            let _ = tx.send(Err(inbound_error(&e))).await;
            return;
        }
    };
    // Version 0 is a hello that never set the field: not a version.
    if hello.protocol_version == 0 || hello.protocol_version > PROTOCOL_VERSION {
        let _ = tx
            .send(Err(status(
                Code::FailedPrecondition,
                "unsupported_protocol_version",
                format!(
                    "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            )))
            .await;
        return;
    }
    if hello.agent_id.trim().is_empty() {
        let _ = tx
            .send(Err(status(
                Code::InvalidArgument,
                "missing_principal",
                "the hello names no agent",
            )))
            .await;
        return;
    }
    if let Some((code, why)) = policy_core::metadata_problem(hello.metadata.iter()) {
        let _ = tx
            .send(Err(status(Code::InvalidArgument, code.as_str(), why)))
            .await;
        return;
    }
    let peer = Arc::new(Peer {
        agent_id: hello.agent_id,
        session_id: hello.session_id,
        runtime: hello.runtime,
        metadata: hello.metadata.into_iter().collect(),
        caller,
    });
    tracing::debug!(agent = %peer.agent_id, session = %peer.session_id, "stream opened");
    let _open = inner.metrics.stream_opened();

    // 2. The welcome, with the bundle when the client's is stale.
    let mut bundles = inner.policy.subscribe();
    let current = bundles.borrow_and_update().clone();
    let mut revocations = inner.control.subscribe_revocations();
    let welcome = Welcome {
        server_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: PROTOCOL_VERSION,
        bundle_hash: current.hash().into(),
        bundle: (hello.bundle_hash != current.hash()).then(|| bundle_to_proto(&current)),
        revocations: Some(policy_core::proto::revocations_to_proto(
            &revocations.borrow_and_update(),
        )),
    };
    if tx
        .send(frame(server_frame::Frame::Welcome(welcome)))
        .await
        .is_err()
    {
        return;
    }
    drop(current);

    // 3. Events, evaluated concurrently, and bundle pushes.
    let limit = Arc::new(Semaphore::new(inner.max_in_flight));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut shutdown = inner.shutdown.clone();
    let ending: Option<Status> = loop {
        if *shutdown.borrow_and_update() {
            break Some(status(
                Code::Unavailable,
                "server_shutting_down",
                "the server is shutting down; reconnect",
            ));
        }
        tokio::select! {
            _ = shutdown.changed() => continue,
            changed = revocations.changed() => {
                if changed.is_err() { continue; }
                let r = policy_core::proto::revocations_to_proto(&revocations.borrow_and_update());
                if tx.send(frame(server_frame::Frame::Revocations(r))).await.is_err() {
                    break None;
                }
            }
            changed = bundles.changed() => {
                if changed.is_err() { continue; }
                let b = bundles.borrow_and_update().clone();
                if tx.send(frame(server_frame::Frame::Bundle(bundle_to_proto(&b)))).await.is_err() {
                    break None;
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(ClientFrame { frame: Some(client_frame::Frame::Event(event)) }))
                    if prost::Message::encoded_len(&event) > inner.max_message_bytes =>
                {
                    // One oversized event is refused on its own; the stream,
                    // and the events behind it, go on (the client decides
                    // it locally and reports it).
                    let err = EventError {
                        correlation_id: event.correlation_id.clone(),
                        event_id: event.event_id.clone(),
                        reason_code: "message_too_large".into(),
                        message: format!(
                            "the event is {} bytes; the limit is {} bytes",
                            prost::Message::encoded_len(&event),
                            inner.max_message_bytes
                        ),
                    };
                    if tx.send(frame(server_frame::Frame::EventError(err))).await.is_err() {
                        break None;
                    }
                }
                Ok(Some(f)) if prost::Message::encoded_len(&f) > inner.max_message_bytes => {
                    break Some(status(
                        Code::ResourceExhausted,
                        "message_too_large",
                        format!("a frame of {} bytes; the limit is {} bytes", prost::Message::encoded_len(&f), inner.max_message_bytes),
                    ));
                }
                Ok(Some(ClientFrame { frame: Some(client_frame::Frame::Event(event)) })) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break None };
                    if event.correlation_id.is_empty()
                        || !lock(&in_flight).insert(event.correlation_id.clone())
                    {
                        let code = if event.correlation_id.is_empty() {
                            "missing_correlation_id"
                        } else {
                            "duplicate_correlation_id"
                        };
                        let err = EventError {
                            correlation_id: event.correlation_id.clone(),
                            event_id: event.event_id.clone(),
                            reason_code: code.into(),
                            message: "each event needs a correlation id unique among those in flight".into(),
                        };
                        drop(permit);
                        if tx.send(frame(server_frame::Frame::EventError(err))).await.is_err() {
                            break None;
                        }
                        continue;
                    }
                    // Pin the decision to the bundle in force when it arrived.
                    let bundle = inner.policy.current();
                    let (inner, tx, peer, in_flight) = (inner.clone(), tx.clone(), peer.clone(), in_flight.clone());
                    tokio::spawn(async move {
                        let decision = inner.decide(&bundle, &event, Some(&peer), &peer.caller).await;
                        lock(&in_flight).remove(&event.correlation_id);
                        let _ = tx.send(frame(server_frame::Frame::Decision(decision))).await;
                        drop(permit);
                    });
                }
                Ok(Some(ClientFrame { frame: Some(client_frame::Frame::LocalDecision(report)) })) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break None };
                    let (inner, tx, peer) = (inner.clone(), tx.clone(), peer.clone());
                    tokio::spawn(async move {
                        if let Some(ack) = inner.record_report(&report, &peer).await {
                            let _ = tx.send(frame(server_frame::Frame::ReportAck(ack))).await;
                        }
                        drop(permit);
                    });
                }
                Ok(Some(ClientFrame { frame: Some(client_frame::Frame::SpoolGap(gap)) })) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break None };
                    let (inner, tx, peer) = (inner.clone(), tx.clone(), peer.clone());
                    tokio::spawn(async move {
                        if let Some(ack) = inner.record_gap(&gap, &peer).await {
                            let _ = tx.send(frame(server_frame::Frame::ReportAck(ack))).await;
                        }
                        drop(permit);
                    });
                }
                Ok(Some(ClientFrame { frame: Some(client_frame::Frame::Hello(_)) })) => {
                    break Some(status(Code::FailedPrecondition, "duplicate_hello", "a stream takes one hello"));
                }
                Ok(Some(ClientFrame { frame: None })) => {
                    break Some(status(Code::InvalidArgument, "malformed_frame", "a frame with no content"));
                }
                Ok(None) => break None,
                Err(e) => break Some(inbound_error(&e)),
            }
        }
    };
    // Nothing accepted is lost: wait for every event in flight to be
    // decided and sent before ending the stream.
    let _all = limit.acquire_many(inner.max_in_flight as u32).await;
    if let Some(s) = ending {
        tracing::warn!(status = %s.message(), "stream ended with an error");
        let _ = tx.send(Err(s)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
