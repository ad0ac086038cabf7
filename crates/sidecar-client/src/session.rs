//! A session: one stream, many concurrent `decide` calls, local fallback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hook_proto::v1::{
    self, ClientFrame, Hello, LocalDecisionReport, ServerFrame, client_frame, server_frame,
};
use policy_core::proto::{bundle_files_from_proto, event_to_proto, verdict_from_proto};
use policy_core::{Bundle, Decision, Event, ReasonCode, Verdict};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::decision::{ClientDecision, DecidedBy, FallbackCause};
use crate::spool::{Entry, SpooledDecision};
use crate::{ClientInner, FailMode, Stats};

/// Who the session speaks for.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub agent_id: String,
    pub session_id: String,
    /// The runtime, e.g. `claude-code`, `codex`, `my-agent`.
    pub runtime: String,
    /// Adapter metadata: `channel_id`, `sender_id`, `sender_name`,
    /// `conversation_id`.
    pub metadata: BTreeMap<String, String>,
}

enum Reply {
    Decision(Box<v1::Decision>),
    Rejected,
}

#[derive(Debug)]
struct Shared {
    client: Arc<ClientInner>,
    info: SessionInfo,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    outbound: Mutex<Option<mpsc::Sender<ClientFrame>>>,
    acks: Mutex<Option<mpsc::UnboundedSender<String>>>,
    connected: watch::Sender<bool>,
    /// True until the first connection attempt has finished: events that
    /// arrive meanwhile wait for it (within their deadline) instead of
    /// falling back before the stream had a chance.
    first_attempt: std::sync::atomic::AtomicBool,
    in_flight: Semaphore,
    next_corr: AtomicU64,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decision(_) => "Decision",
            Self::Rejected => "Rejected",
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One agent session. `decide` may be called concurrently; all calls share
/// one stream. Dropping the session closes its stream.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    close: watch::Sender<bool>,
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    pub(crate) fn open(client: Arc<ClientInner>, info: SessionInfo) -> Self {
        let max = client.config.max_in_flight.max(1);
        let has_server = !client.channels.is_empty();
        let shared = Arc::new(Shared {
            client,
            info,
            pending: Mutex::default(),
            outbound: Mutex::default(),
            acks: Mutex::default(),
            connected: watch::Sender::new(false),
            first_attempt: std::sync::atomic::AtomicBool::new(has_server),
            in_flight: Semaphore::new(max),
            next_corr: AtomicU64::new(1),
        });
        let (close, closed) = watch::channel(false);
        let driver = has_server.then(|| tokio::spawn(drive(shared.clone(), closed)));
        Self {
            shared,
            close,
            driver,
        }
    }

    pub fn info(&self) -> &SessionInfo {
        &self.shared.info
    }

    /// Waits up to `timeout` for the stream to come up; false if it did
    /// not (decisions still work, locally).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        if self.driver.is_none() {
            return false;
        }
        let mut rx = self.shared.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// True while the session's stream is up.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.outbound).is_some()
    }

    /// Decides one event: the server's decision if it comes within the
    /// event's deadline, else a local one. The session's agent is always
    /// the principal; empty session id and runtime are filled in, and an
    /// empty event id is generated.
    pub async fn decide(&self, mut event: Event) -> ClientDecision {
        let s = &self.shared;
        let info = &s.info;
        event.agent_id.clone_from(&info.agent_id);
        if event.session_id.is_empty() {
            event.session_id.clone_from(&info.session_id);
        }
        if event.runtime.is_empty() {
            event.runtime.clone_from(&info.runtime);
        }
        for (k, v) in &info.metadata {
            event.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if event.event_id.is_empty() {
            event.event_id = crate::unique_id("evt");
        }
        let deadline = Instant::now() + s.client.config.deadline_for(event.kind.name());
        // Bounded in-flight events: waiting here is the backpressure.
        let Ok(_permit) = tokio::time::timeout_at(deadline, s.in_flight.acquire()).await else {
            return s.local(&event, FallbackCause::Timeout, "").await;
        };
        if s.first_attempt.load(Ordering::Acquire) && lock(&s.outbound).is_none() {
            let mut rx = s.connected.subscribe();
            let first = &s.first_attempt;
            let _ = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|up| *up || !first.load(Ordering::Acquire)),
            )
            .await;
        }
        let tx = lock(&s.outbound).clone();
        let Some(tx) = tx else {
            return s.local(&event, FallbackCause::Disconnected, "").await;
        };
        let corr = s.next_corr.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&s.pending).insert(corr, reply_tx);
        let mut wire = event_to_proto(&event);
        wire.correlation_id = corr.to_string();
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Event(wire)),
        };
        let cause = match tokio::time::timeout_at(deadline, tx.send(frame)).await {
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, reply_rx).await {
                Ok(Ok(Reply::Decision(d))) => return s.server_decision(*d),
                Ok(Ok(Reply::Rejected)) => FallbackCause::Rejected,
                Ok(Err(_)) => FallbackCause::Disconnected,
                Err(_) => FallbackCause::Timeout,
            },
            Ok(Err(_)) => FallbackCause::Disconnected,
            Err(_) => FallbackCause::Timeout,
        };
        lock(&s.pending).remove(&corr);
        s.local(&event, cause, &corr.to_string()).await
    }

    /// Closes the stream and waits for the background task to finish.
    pub async fn close(mut self) {
        let _ = self.close.send(true);
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.close.send(true);
    }
}

impl Shared {
    fn server_decision(&self, d: v1::Decision) -> ClientDecision {
        Stats::bump(&self.client.stats.server_decisions);
        self.client.confirm_bundle(&d.bundle_hash);
        ClientDecision {
            verdict: verdict_from_proto(d.verdict).unwrap_or(Verdict::Deny),
            event_id: d.event_id,
            reason: d.reason,
            reason_code: d.reason_code,
            policies: d.policies,
            decided_by: DecidedBy::Server,
            fallback_cause: None,
            bundle_hash: d.bundle_hash,
            audit_seq: d.audit_seq,
            retry_after_ms: (d.retry_after_ms > 0).then_some(d.retry_after_ms),
            approval_id: (!d.approval_id.is_empty()).then_some(d.approval_id),
            output: d.output.as_ref().map(|o| {
                policy_core::proto::output_from_proto(o).unwrap_or_else(|_| {
                    // A redacted output we cannot read must not reach the model.
                    policy_core::OutputDecision {
                        verdict: policy_core::OutputVerdict::Block,
                        redacted: None,
                        escalations: Vec::new(),
                        evidence: Vec::new(),
                        output_sha256: o.output_sha256.clone(),
                    }
                })
            }),
        }
    }

    /// Decides with the local bundle, or by the fail mode when there is no
    /// usable bundle, and spools the decision for the audit.
    async fn local(
        &self,
        event: &Event,
        cause: FallbackCause,
        correlation_id: &str,
    ) -> ClientDecision {
        let c = &self.client;
        Stats::bump(&c.stats.local_decisions);
        let usable = c.current_bundle().map(|b| {
            let age = c
                .elapsed_ms()
                .saturating_sub(b.fresh_at.load(Ordering::Relaxed));
            let fresh = c
                .config
                .max_bundle_age
                .is_none_or(|max| Duration::from_millis(age) <= max);
            (b, fresh)
        });
        let revocations = c.state.current_revocations();
        let revoked = policy_core::Bundle::revoked(&revocations, event);
        let (decision, decided_by) = match usable {
            Some((b, true)) => {
                // The one decision function, over the fallback's own state.
                let d = control_store::decide(&b.bundle, event, &c.state)
                    .await
                    .decision;
                (d, DecidedBy::LocalFallback)
            }
            other if revoked.is_some() => {
                let hash = other
                    .map(|(b, _)| b.bundle.hash().to_owned())
                    .unwrap_or_default();
                (
                    fail_decision(
                        Verdict::Deny,
                        ReasonCode::Revoked,
                        revoked.unwrap_or_default(),
                        hash,
                    ),
                    DecidedBy::LocalFallback,
                )
            }
            other => {
                let (code, why) = match &other {
                    Some(_) => (
                        ReasonCode::StaleBundle,
                        "the local policy bundle is older than its maximum age",
                    ),
                    None => (
                        ReasonCode::NoBundle,
                        "no policy bundle is available locally",
                    ),
                };
                let hash = other
                    .map(|(b, _)| b.bundle.hash().to_owned())
                    .unwrap_or_default();
                match c.config.fail_mode {
                    FailMode::Closed => (
                        fail_decision(Verdict::Deny, code, format!("{why}; failing closed"), hash),
                        DecidedBy::FailClosed,
                    ),
                    FailMode::Open => (
                        fail_decision(Verdict::Allow, code, format!("{why}; failing open"), hash),
                        DecidedBy::FailOpen,
                    ),
                }
            }
        };
        if let Some(spool) = &c.spool {
            let entry = Entry::Report {
                event: Box::new(spoolable(event)),
                correlation_id: correlation_id.to_owned(),
                decision: SpooledDecision {
                    verdict: decision.verdict,
                    reason: decision.reason.clone(),
                    reason_code: decision.reason_code.as_str().to_owned(),
                    policies: decision.policies.clone(),
                    decided_by: decided_by.as_str().to_owned(),
                    bundle_hash: decision.bundle_hash.clone(),
                },
                cause: cause.as_str().to_owned(),
                decided_at_ms: crate::now_ms(),
            };
            match spool.append(&entry) {
                Ok(_) => c.spool_dirty.notify_waiters(),
                Err(e) => tracing::error!(error = %e, "cannot write the audit spool"),
            }
        }
        ClientDecision {
            event_id: event.event_id.clone(),
            verdict: decision.verdict,
            reason: decision.reason,
            reason_code: decision.reason_code.as_str().to_owned(),
            policies: decision.policies,
            decided_by,
            fallback_cause: Some(cause),
            bundle_hash: decision.bundle_hash,
            audit_seq: 0,
            retry_after_ms: decision.retry_after_ms,
            approval_id: decision.approval_id,
            output: decision.output,
        }
    }
}

fn fail_decision(
    verdict: Verdict,
    code: ReasonCode,
    reason: String,
    bundle_hash: String,
) -> Decision {
    Decision {
        verdict,
        reason,
        reason_code: code,
        policies: Vec::new(),
        errors: Vec::new(),
        bundle_hash,
        retry_after_ms: None,
        approval_id: None,
        output: None,
    }
}

fn backoff(cfg: &crate::Backoff) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(cfg.min_delay)
        .with_max_delay(cfg.max_delay)
        .with_factor(cfg.factor)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The session's background task: connect, run the stream until it ends,
/// wait a jittered, growing delay, reconnect; until the session closes.
async fn drive(shared: Arc<Shared>, mut closed: watch::Receiver<bool>) {
    let channels = shared.client.channels.clone();
    if channels.is_empty() {
        return;
    }
    let cfg = shared.client.config.backoff;
    let mut delays = backoff(&cfg);
    // The replica tried next, and how many were tried in a row without a
    // stream: a stream that ends moves the session to the next replica at
    // once; only a full round of failures waits.
    let mut next = 0usize;
    let mut failed_in_row = 0usize;
    let mut first = true;
    loop {
        if *closed.borrow() {
            break;
        }
        if !first && failed_in_row >= channels.len() {
            // Even the first reconnect waits a jittered delay, so that many
            // clients that lost the same server do not return in lockstep.
            let delay = delays.next().unwrap_or(cfg.max_delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = closed.changed() => break,
            }
            failed_in_row = 0;
        }
        first = false;
        Stats::bump(&shared.client.stats.connect_attempts);
        let channel = channels[next % channels.len()].clone();
        next = next.wrapping_add(1);
        let attempt = shared.connect(channel).await;
        if attempt.is_err() {
            shared.first_attempt.store(false, Ordering::Release);
            // Wake anyone waiting for this first attempt.
            shared.connected.send_replace(false);
        }
        match attempt {
            Ok((tx, inbound)) => {
                delays = backoff(&cfg);
                Stats::bump(&shared.client.stats.streams_opened);
                shared.run(tx, inbound, &mut closed).await;
                // With one replica, reconnecting to it waits as before.
                failed_in_row = usize::from(channels.len() == 1);
            }
            Err(e) => {
                failed_in_row += 1;
                tracing::debug!(error = %e, "gatehouse stream did not open");
            }
        }
    }
    shared.disconnect();
}

impl Shared {
    async fn connect(
        &self,
        channel: tonic::transport::Channel,
    ) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), String> {
        let cap = self.client.config.max_in_flight.max(1) + 256;
        let (tx, rx) = mpsc::channel(cap);
        let hello = ClientFrame {
            frame: Some(client_frame::Frame::Hello(Hello {
                protocol_version: 1,
                agent_id: self.info.agent_id.clone(),
                session_id: self.info.session_id.clone(),
                runtime: self.info.runtime.clone(),
                metadata: self.info.metadata.clone().into_iter().collect(),
                bundle_hash: self.client.bundle_hash(),
            })),
        };
        tx.send(hello).await.map_err(|e| e.to_string())?;
        let open = async {
            let mut client = v1::hook_service_client::HookServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            if let Some(token) = &self.client.config.token {
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the agent token is not a valid header value".to_owned())?;
                request.metadata_mut().insert("authorization", value);
            }
            let mut inbound = client
                .process_hook_event(request)
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            match inbound.message().await {
                Ok(Some(ServerFrame {
                    frame: Some(server_frame::Frame::Welcome(w)),
                })) => Ok((inbound, w)),
                Ok(_) => Err("the server did not send a welcome".to_owned()),
                Err(s) => Err(s.to_string()),
            }
        };
        let (inbound, welcome) = tokio::time::timeout(self.client.config.connect_timeout, open)
            .await
            .map_err(|_| "timed out waiting for the welcome".to_owned())??;
        match welcome.bundle {
            Some(b) => self.install(&b),
            None => self.client.confirm_bundle(&welcome.bundle_hash),
        }
        if let Some(r) = &welcome.revocations {
            self.client
                .set_revocations(policy_core::proto::revocations_from_proto(r));
        }
        Ok((tx, inbound))
    }

    fn install(&self, b: &v1::PolicyBundle) {
        match Bundle::load(bundle_files_from_proto(b)) {
            Ok(bundle) => {
                tracing::info!(
                    hash = bundle.hash(),
                    "installed the policy bundle pushed by the server"
                );
                self.client.install_bundle(bundle);
            }
            Err(e) => {
                tracing::error!(error = %e, "the server pushed a bundle this client cannot load; keeping the old one")
            }
        }
    }

    async fn run(
        self: &Arc<Self>,
        tx: mpsc::Sender<ClientFrame>,
        mut inbound: Streaming<ServerFrame>,
        closed: &mut watch::Receiver<bool>,
    ) {
        *lock(&self.outbound) = Some(tx.clone());
        self.first_attempt.store(false, Ordering::Release);
        self.connected.send_replace(true);
        self.spawn_flush(tx.clone());
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(frame)) => self.on_frame(frame),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "gatehouse stream ended");
                        break;
                    }
                },
                () = self.client.spool_dirty.notified() => self.spawn_flush(tx.clone()),
                _ = closed.changed() => break,
            }
        }
        self.disconnect();
    }

    fn on_frame(&self, frame: ServerFrame) {
        match frame.frame {
            Some(server_frame::Frame::Decision(d)) => {
                let waiter = d
                    .correlation_id
                    .parse::<u64>()
                    .ok()
                    .and_then(|c| lock(&self.pending).remove(&c));
                match waiter {
                    Some(w) => {
                        let _ = w.send(Reply::Decision(Box::new(d)));
                    }
                    None => Stats::bump(&self.client.stats.late_decisions),
                }
            }
            Some(server_frame::Frame::Bundle(b)) => self.install(&b),
            Some(server_frame::Frame::EventError(e)) => {
                tracing::warn!(code = %e.reason_code, message = %e.message, "the server refused an event");
                if let Some(w) = e
                    .correlation_id
                    .parse::<u64>()
                    .ok()
                    .and_then(|c| lock(&self.pending).remove(&c))
                {
                    let _ = w.send(Reply::Rejected);
                }
            }
            Some(server_frame::Frame::ReportAck(a)) => {
                if let Some(acks) = lock(&self.acks).as_ref() {
                    let _ = acks.send(a.id);
                }
            }
            Some(server_frame::Frame::Revocations(r)) => {
                self.client
                    .set_revocations(policy_core::proto::revocations_from_proto(&r));
            }
            Some(server_frame::Frame::Welcome(_)) | None => {}
        }
    }

    /// Marks the stream down and wakes every waiter, which then decides
    /// locally at once.
    fn disconnect(&self) {
        *lock(&self.outbound) = None;
        self.connected.send_replace(false);
        *lock(&self.acks) = None;
        lock(&self.pending).clear();
    }

    /// Sends every spooled entry and removes those the server acknowledges.
    /// One flush at a time per client; the server de-duplicates by id.
    fn spawn_flush(self: &Arc<Self>, tx: mpsc::Sender<ClientFrame>) {
        let c = &self.client;
        if c.spool.is_none() || c.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.flush(tx).await {
                tracing::warn!(error = %e, "audit spool replay incomplete; will retry");
            }
            me.client.flushing.store(false, Ordering::Release);
        });
    }

    async fn flush(&self, tx: mpsc::Sender<ClientFrame>) -> Result<(), String> {
        let Some(spool) = &self.client.spool else {
            return Ok(());
        };
        // Entries spooled while a round was in flight go in the next one.
        for _round in 0..8 {
            self.flush_round(spool, &tx).await?;
            if spool.pending().map_err(|e| e.to_string())?.is_empty() {
                break;
            }
        }
        Ok(())
    }

    async fn flush_round(
        &self,
        spool: &crate::spool::Spool,
        tx: &mpsc::Sender<ClientFrame>,
    ) -> Result<(), String> {
        let entries = spool.pending().map_err(|e| e.to_string())?;
        if entries.is_empty() {
            return Ok(());
        }
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        *lock(&self.acks) = Some(ack_tx);
        let mut waiting: HashSet<String> = HashSet::new();
        for entry in entries {
            waiting.insert(entry.id().to_owned());
            let frame = match entry {
                Entry::Report {
                    event,
                    correlation_id,
                    decision,
                    cause,
                    decided_at_ms,
                } => {
                    let mut wire = event_to_proto(&event);
                    wire.correlation_id = correlation_id;
                    shrink_for_report(&mut wire);
                    let decided_by = match decision.decided_by.as_str() {
                        "fail_open" => v1::DecidedBy::FailOpen,
                        "fail_closed" => v1::DecidedBy::FailClosed,
                        _ => v1::DecidedBy::LocalFallback,
                    };
                    client_frame::Frame::LocalDecision(LocalDecisionReport {
                        decision: Some(v1::Decision {
                            correlation_id: wire.correlation_id.clone(),
                            event_id: event.event_id.clone(),
                            verdict: policy_core::proto::verdict_to_proto(decision.verdict).into(),
                            reason: decision.reason,
                            reason_code: decision.reason_code,
                            policies: decision.policies,
                            decided_by: decided_by.into(),
                            bundle_hash: decision.bundle_hash,
                            audit_seq: 0,
                            retry_after_ms: 0,
                            approval_id: String::new(),
                            output: None,
                        }),
                        event: Some(wire),
                        cause,
                        decided_at_ms,
                    })
                }
                Entry::Gap {
                    gap_id,
                    lost,
                    first_lost_ms,
                    last_lost_ms,
                    agent_id,
                } => client_frame::Frame::SpoolGap(v1::SpoolGap {
                    gap_id,
                    lost,
                    first_lost_ms,
                    last_lost_ms,
                    agent_id,
                }),
            };
            tx.send(ClientFrame { frame: Some(frame) })
                .await
                .map_err(|_| "the stream closed during replay".to_owned())?;
        }
        let mut acked = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < waiting.len() {
            match tokio::time::timeout_at(deadline, ack_rx.recv()).await {
                Ok(Some(id)) => {
                    if waiting.contains(&id) && acked.insert(id) {
                        Stats::bump(&self.client.stats.spool_acked);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        *lock(&self.acks) = None;
        spool.remove(&acked).map_err(|e| e.to_string())?;
        if acked.len() < waiting.len() {
            return Err(format!(
                "{} of {} entries unacknowledged",
                waiting.len() - acked.len(),
                waiting.len()
            ));
        }
        Ok(())
    }
}

/// The event as spooled: payloads that may hold secrets (tool inputs and
/// outputs, prompts, memory content) are replaced by their SHA-256, so that
/// nothing sensitive is written to disk or reported; the audit needs only
/// the event's identity.
fn spoolable(event: &Event) -> Event {
    use policy_core::EventKind as K;
    fn digest(v: &serde_json::Value) -> serde_json::Value {
        use sha2::Digest;
        serde_json::json!({ "sha256": hex::encode(sha2::Sha256::digest(v.to_string().as_bytes())) })
    }
    fn digest_str(s: &str) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
    }
    let mut e = event.clone();
    match &mut e.kind {
        K::PreToolUse { input, .. } => *input = digest(input),
        K::PostToolUse { input, output, .. } => {
            *input = digest(input);
            *output = digest(output);
        }
        K::UserPrompt { prompt } => *prompt = digest_str(prompt),
        K::MemoryIngest { content, .. } => *content = digest_str(content),
        K::MemorySearch { query, .. } => *query = digest_str(query),
        _ => {}
    }
    e
}

/// An event larger than this is reported with its bulky text fields elided.
const REPORT_EVENT_CAP: usize = 256 * 1024;

/// A report carries the event it reports, and must fit in one frame: the
/// event was likely decided locally *because* it was too large for the
/// server. Its bulky text fields (over 1 KiB) are then replaced by their
/// size and SHA-256, which the audit keeps as evidence.
pub(crate) fn shrink_for_report(wire: &mut v1::HookEvent) {
    use sha2::Digest as _;
    use v1::hook_event::Kind;
    if prost::Message::encoded_len(wire) <= REPORT_EVENT_CAP {
        return;
    }
    let elide = |s: &mut String| {
        if s.len() > 1024 {
            *s = serde_json::json!({
                "gatehouse_elided": {
                    "bytes": s.len(),
                    "sha256": hex::encode(sha2::Sha256::digest(s.as_bytes())),
                }
            })
            .to_string();
        }
    };
    match &mut wire.kind {
        Some(Kind::PreToolUse(p)) => elide(&mut p.input_json),
        Some(Kind::PostToolUse(p)) => {
            elide(&mut p.input_json);
            elide(&mut p.output_json);
        }
        Some(Kind::UserPrompt(p)) => elide(&mut p.prompt),
        Some(Kind::MemorySearch(m)) => elide(&mut m.query),
        Some(Kind::MemoryIngest(m)) => elide(&mut m.content),
        Some(Kind::BackgroundTaskStart(t)) => {
            elide(&mut t.description);
            elide(&mut t.command);
        }
        _ => {}
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;

    #[test]
    fn an_oversized_event_is_reported_with_its_bulk_elided() {
        let mut wire = v1::HookEvent {
            event_id: "e1".into(),
            kind: Some(v1::hook_event::Kind::PostToolUse(v1::PostToolUse {
                tool_name: "Bash".into(),
                input_json: r#"{"command":"cat big"}"#.into(),
                output_json: "x".repeat(2 * 1024 * 1024),
                ..Default::default()
            })),
            ..Default::default()
        };
        shrink_for_report(&mut wire);
        assert!(prost::Message::encoded_len(&wire) < 4096);
        let Some(v1::hook_event::Kind::PostToolUse(p)) = &wire.kind else {
            panic!("kind changed");
        };
        assert_eq!(p.input_json, r#"{"command":"cat big"}"#);
        assert!(
            p.output_json.contains("\"bytes\":2097152"),
            "{}",
            p.output_json
        );
    }
}
