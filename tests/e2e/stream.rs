//! The bidi stream: pipelining, correlation, errors, and the audit.

use std::collections::HashSet;
use std::sync::Arc;

use audit_store::{AuditError, AuditRecord, AuditStore, BoxFuture, Query, VerifyReport};
use gatehouse_tests::TestServer;
use hook_proto::v1::{self, ClientFrame, HookEvent, client_frame, server_frame};
use sidecar_server::reason_code_of;

use crate::helpers::{bash, ev, hello, open, quickstart};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_pipelined_events_get_one_decision_each_and_are_audited() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut s = open(&server, hello("alice", "s-1000", "")).await?;
    // Send all 1,000 before reading any decision.
    for i in 0..1000_usize {
        let cmd = if i.is_multiple_of(10) {
            "rm -rf /"
        } else {
            "ls"
        };
        s.tx.send(ev(bash(&format!("c{i}"), &format!("evt-{i}"), cmd)))
            .await?;
    }
    let mut seen = HashSet::new();
    let mut seqs = HashSet::new();
    while seen.len() < 1000 {
        let d = s.decision().await?;
        let i: usize = d.correlation_id.trim_start_matches('c').parse()?;
        assert_eq!(d.event_id, format!("evt-{i}"));
        assert!(seen.insert(i), "two decisions for correlation id c{i}");
        let want = if i.is_multiple_of(10) {
            v1::Verdict::Deny
        } else {
            v1::Verdict::Allow
        };
        assert_eq!(d.verdict(), want, "event {i}");
        assert_eq!(d.decided_by(), v1::DecidedBy::Server);
        assert!(d.audit_seq > 0);
        assert!(seqs.insert(d.audit_seq), "audit seq reused");
    }
    let crate::helpers::Open { tx, mut rx } = s;
    drop(tx);
    // The stream ends cleanly with no extra decision.
    assert!(rx.message().await?.is_none());

    let records = audit_store::query(&server.audit_path, &Query::default())?;
    assert_eq!(records.len(), 1000);
    let ids: HashSet<String> = records.iter().map(|r| r.record.event_id.clone()).collect();
    assert_eq!(ids.len(), 1000);
    for r in &records {
        assert!(seqs.contains(&r.seq));
        assert_eq!(r.record.agent_id, "alice");
        assert_eq!(r.record.session_id, "s-1000");
        assert_eq!(r.record.decided_by, "server");
    }
    assert_eq!(
        audit_store::verify(&server.audit_path)?,
        VerifyReport::Intact { records: 1000 }
    );
    server.stop().await
}

#[tokio::test]
async fn welcome_carries_the_bundle_only_when_the_client_is_stale() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let hash = server.policy.current().hash().to_owned();
    let mut stale = open(&server, hello("a", "s", "")).await?;
    let Some(server_frame::Frame::Welcome(w)) = stale.next().await?.and_then(|f| f.frame) else {
        anyhow::bail!("first server frame must be a welcome");
    };
    assert_eq!(w.bundle_hash, hash);
    let bundle = w.bundle.expect("a stale client gets the bundle");
    assert_eq!(bundle.hash, hash);
    assert!(bundle.files.iter().any(|f| f.path.ends_with(".cedar")));

    let mut fresh = open(&server, hello("a", "s", &hash)).await?;
    let Some(server_frame::Frame::Welcome(w)) = fresh.next().await?.and_then(|f| f.frame) else {
        anyhow::bail!("first server frame must be a welcome");
    };
    assert!(w.bundle.is_none());
    Ok(())
}

#[tokio::test]
async fn unknown_kind_malformed_input_and_principal_mismatch_are_denied_and_the_stream_goes_on()
-> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut s = open(&server, hello("alice", "s", "")).await?;
    s.tx.send(ev(HookEvent {
        correlation_id: "unknown".into(),
        event_id: "e-unknown".into(),
        ..HookEvent::default()
    }))
    .await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "unknown_event")
    );

    let mut bad = bash("bad-json", "e-bad", "ls");
    if let Some(v1::hook_event::Kind::PreToolUse(p)) = &mut bad.kind {
        p.input_json = "{not json".into();
    }
    s.tx.send(ev(bad)).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "malformed_event")
    );

    let mut other = bash("other", "e-other", "ls");
    other.agent_id = "mallory".into();
    s.tx.send(ev(other)).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "principal_mismatch")
    );

    // Naming another session on this stream is denied: otherwise a
    // revoked session could step around its revocation.
    let mut elsewhere = bash("elsewhere", "e-elsewhere", "ls");
    elsewhere.session_id = "another-session".into();
    s.tx.send(ev(elsewhere)).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "session_mismatch")
    );

    s.tx.send(ev(bash("ok", "e-ok", "ls"))).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.correlation_id.as_str(), d.verdict()),
        ("ok", v1::Verdict::Allow)
    );

    // Every one of them is in the audit, the denials included.
    let records = audit_store::query(&server.audit_path, &Query::default())?;
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.record.event_id.as_str(), r.record.reason_code.as_str()))
        .collect();
    assert!(kinds.contains(&("e-unknown", "unknown_event")));
    assert!(kinds.contains(&("e-bad", "malformed_event")));
    assert!(kinds.contains(&("e-other", "principal_mismatch")));
    assert!(kinds.contains(&("e-elsewhere", "session_mismatch")));
    Ok(())
}

#[tokio::test]
async fn a_missing_correlation_id_gets_an_event_error() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut s = open(&server, hello("alice", "s", "")).await?;
    s.tx.send(ev(bash("", "e-none", "ls"))).await?;
    loop {
        match s.next().await?.and_then(|f| f.frame) {
            Some(server_frame::Frame::EventError(e)) => {
                assert_eq!(e.reason_code, "missing_correlation_id");
                assert_eq!(e.event_id, "e-none");
                break;
            }
            Some(server_frame::Frame::Welcome(_)) => {}
            other => anyhow::bail!("unexpected frame {other:?}"),
        }
    }
    Ok(())
}

async fn stream_status(
    server: &TestServer,
    frames: Vec<ClientFrame>,
) -> anyhow::Result<tonic::Status> {
    let mut iter = frames.into_iter();
    let first = iter.next().expect("at least one frame");
    let mut s = open(server, first).await?;
    for f in iter {
        // The server may already have ended the stream.
        let _ = s.tx.send(f).await;
    }
    loop {
        match s.rx.message().await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("stream ended without an error status"),
            Err(status) => return Ok(status),
        }
    }
}

#[tokio::test]
async fn first_frame_must_be_hello() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let status = stream_status(&server, vec![ev(bash("c", "e", "ls"))]).await?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason_code_of(&status).as_deref(), Some("hello_required"));
    assert!(status.message().starts_with("hello_required:"));

    let status = stream_status(&server, vec![hello("", "s", "")]).await?;
    assert_eq!(
        reason_code_of(&status).as_deref(),
        Some("missing_principal")
    );

    let status = stream_status(
        &server,
        vec![hello("a", "s", ""), ClientFrame { frame: None }],
    )
    .await?;
    assert_eq!(reason_code_of(&status).as_deref(), Some("malformed_frame"));

    // A blank agent is no agent; version 0 is a hello that set no version.
    let status = stream_status(&server, vec![hello("  ", "s", "")]).await?;
    assert_eq!(
        reason_code_of(&status).as_deref(),
        Some("missing_principal")
    );
    let mut v0 = hello("a", "s", "");
    if let Some(client_frame::Frame::Hello(h)) = &mut v0.frame {
        h.protocol_version = 0;
    }
    let status = stream_status(&server, vec![v0]).await?;
    assert_eq!(
        reason_code_of(&status).as_deref(),
        Some("unsupported_protocol_version")
    );

    // An event without an id is denied (and audited), on both RPCs.
    let mut s = open(&server, hello("alice", "s", "")).await?;
    s.tx.send(ev(bash("no-id", "", "ls"))).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "malformed_event")
    );
    let mut unary = bash("u", " ", "ls");
    unary.agent_id = "alice".into();
    let d = server.client().await?.evaluate(unary).await?.into_inner();
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "malformed_event")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_ends_only_its_own_stream() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |c| c.max_message_bytes = 64 * 1024).await?;
    let mut healthy = open(&server, hello("alice", "ok", "")).await?;
    healthy.tx.send(ev(bash("h1", "h1", "ls"))).await?;
    assert_eq!(healthy.decision().await?.verdict(), v1::Verdict::Allow);

    // An oversized event is refused alone (tests/faults); any other
    // oversized frame, here a local-decision report, ends its stream.
    let huge = "x".repeat(200 * 1024);
    let report = ClientFrame {
        frame: Some(client_frame::Frame::LocalDecision(
            v1::LocalDecisionReport {
                event: Some(bash("c", "e-big", &huge)),
                decision: Some(v1::Decision::default()),
                ..Default::default()
            },
        )),
    };
    let status = stream_status(&server, vec![hello("alice", "big", ""), report]).await?;
    assert_eq!(
        reason_code_of(&status).as_deref(),
        Some("message_too_large"),
        "{status:?}"
    );

    // The unary RPC says the same.
    let mut client = server.client().await?;
    let mut big = bash("u", "e-big-unary", &"y".repeat(100 * 1024));
    big.agent_id = "alice".into();
    let err = client.evaluate(big).await.expect_err("oversized");
    assert_eq!(
        reason_code_of(&err).as_deref(),
        Some("message_too_large"),
        "{err:?}"
    );

    // The other stream is untouched.
    healthy.tx.send(ev(bash("h2", "h2", "rm -rf /"))).await?;
    let d = healthy.decision().await?;
    assert_eq!(
        (d.correlation_id.as_str(), d.verdict()),
        ("h2", v1::Verdict::Deny)
    );
    Ok(())
}

#[tokio::test]
async fn unary_evaluate_matches_and_requires_an_agent() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut client = server.client().await?;
    let mut e = bash("u1", "e-u1", "git push origin main");
    e.agent_id = "alice".into();
    let d = client.evaluate(e).await?.into_inner();
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Ask, "policy_ask")
    );
    assert_eq!(d.policies, vec!["ask-before-push"]);
    assert_eq!(d.correlation_id, "u1");
    assert!(d.audit_seq > 0);

    let d = client
        .evaluate(bash("u2", "e-u2", "ls"))
        .await?
        .into_inner();
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "missing_principal")
    );
    Ok(())
}

/// An audit store that always fails, to show a failed append is a DENY.
#[derive(Debug)]
struct BrokenAudit;

impl AuditStore for BrokenAudit {
    fn append(&self, _: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        Box::pin(async { Err(AuditError::WriterStopped) })
    }

    fn append_once(&self, _: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        Box::pin(async { Err(AuditError::WriterStopped) })
    }

    fn query(
        &self,
        _: audit_store::Query,
    ) -> BoxFuture<'static, Result<Vec<audit_store::StoredRecord>, AuditError>> {
        Box::pin(async { Err(AuditError::WriterStopped) })
    }

    fn verify(&self) -> BoxFuture<'static, Result<audit_store::Verified, AuditError>> {
        Box::pin(async { Err(AuditError::WriterStopped) })
    }
}

#[tokio::test]
async fn an_audit_failure_is_a_deny() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("unused.db");
    let server =
        TestServer::start_with(&quickstart(), Arc::new(BrokenAudit), path, dir, |_| {}).await?;
    let mut s = open(&server, hello("alice", "s", "")).await?;
    s.tx.send(ev(bash("c1", "e1", "ls"))).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "audit_unavailable")
    );
    assert_eq!(d.audit_seq, 0);
    Ok(())
}

#[tokio::test]
async fn health_service_reports_serving() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let channel = tonic::transport::Channel::from_shared(server.url())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gatehouse.v1.HookService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    Ok(())
}

#[tokio::test]
async fn reflection_lists_the_services() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let channel = tonic::transport::Channel::from_shared(server.url())?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let resp = stream.message().await?.expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        anyhow::bail!("unexpected response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"gatehouse.v1.HookService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"gatehouse.v1.AdminService".to_owned()),
        "{names:?}"
    );
    Ok(())
}
