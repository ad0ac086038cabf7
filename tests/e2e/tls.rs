//! TLS and mTLS through a client built only from `proto/`: a certificate
//! for `alice-bot` speaks only for `alice-bot`, on the stream, on unary and
//! in local-decision reports; clients without a certificate from the CA
//! are refused; agent certificates cannot administer.

use std::path::Path;

use gatehouse_tests::TestServer;
use hook_proto::v1::{
    self, ClientFrame, admin_service_client::AdminServiceClient, client_frame,
    hook_service_client::HookServiceClient,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use sidecar_server::{TlsFiles, reason_code_of};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{bash, ev, hello, quickstart};

struct Pki {
    ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let ca_cert = p.self_signed(&ca_key)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
        })
    }

    /// (cert PEM, key PEM) for `dns` names and SANs, with a CN.
    fn issue(&self, cn: &str, dns: &[&str], uri: Option<&str>) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        if dns.contains(&"localhost") {
            p.subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        }
        if let Some(u) = uri {
            p.subject_alt_names.push(SanType::URI(u.try_into()?));
        }
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

async fn channel(
    server: &TestServer,
    ca: &str,
    client: Option<&(String, String)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Channel::from_shared(format!("https://{}", server.addr))?
        .tls_config(tls)?
        .connect()
        .await?)
}

async fn stream_decision(
    ch: Channel,
    agent: &str,
    frames: Vec<ClientFrame>,
) -> anyhow::Result<Vec<v1::ServerFrame>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(hello(agent, "s-tls", "")).await?;
    for f in frames {
        tx.send(f).await?;
    }
    let mut s = HookServiceClient::new(ch)
        .process_hook_event(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(f) =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.message()).await??
    {
        let done = matches!(
            f.frame,
            Some(v1::server_frame::Frame::Decision(_) | v1::server_frame::Frame::ReportAck(_))
        );
        out.push(f);
        if done {
            break;
        }
    }
    Ok(out)
}

fn decision(frames: &[v1::ServerFrame]) -> Option<v1::Decision> {
    frames.iter().find_map(|f| match &f.frame {
        Some(v1::server_frame::Frame::Decision(d)) => Some(d.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_binds_each_client_to_the_agent_its_certificate_names() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("gatehouse test ca")?;
    let server_cert = pki.issue("gatehouse", &["localhost"], None)?;
    let alice = pki.issue(
        "alice-cn",
        &[],
        Some("spiffe://example.org/agent/alice-bot"),
    )?;
    let admin = pki.issue("ops", &[], Some("spiffe://example.org/admin/ops"))?;
    let rogue = Pki::new("rogue ca")?.issue(
        "alice-bot",
        &[],
        Some("spiffe://example.org/agent/alice-bot"),
    )?;
    let files = TlsFiles {
        cert: write(dir.path(), "server.pem", &server_cert.0)?,
        key: write(dir.path(), "server.key", &server_cert.1)?,
        client_ca: Some(write(dir.path(), "ca.pem", &pki.ca_pem)?),
    };
    let server = TestServer::start(&quickstart(), |c| c.tls = Some(files)).await?;

    // alice-bot as alice-bot: decided by policy, recorded as alice-bot.
    let ch = channel(&server, &pki.ca_pem, Some(&alice)).await?;
    let d = decision(
        &stream_decision(
            ch.clone(),
            "alice-bot",
            vec![ev(bash("c1", "e-alice", "ls"))],
        )
        .await?,
    )
    .expect("a decision");
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Allow, "policy_permit")
    );

    // The same client claiming bob-bot never gets ALLOW, on the stream...
    let d = decision(
        &stream_decision(ch.clone(), "bob-bot", vec![ev(bash("c2", "e-bob", "ls"))]).await?,
    )
    .expect("a decision");
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "identity_mismatch")
    );
    assert!(d.audit_seq > 0, "the attempt is audited");
    // ...on unary...
    let mut e = bash("u", "e-bob-unary", "ls");
    e.agent_id = "bob-bot".into();
    let d = HookServiceClient::new(ch.clone())
        .evaluate(e)
        .await?
        .into_inner();
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "identity_mismatch")
    );
    // ...and in a local-decision report, which is kept as an attempt, never
    // as bob-bot's decision.
    let mut reported = bash("r", "e-bob-report", "rm -rf /");
    reported.agent_id = "bob-bot".into();
    let report = ClientFrame {
        frame: Some(client_frame::Frame::LocalDecision(
            v1::LocalDecisionReport {
                event: Some(reported),
                decision: Some(v1::Decision {
                    event_id: "e-bob-report".into(),
                    verdict: v1::Verdict::Allow.into(),
                    decided_by: v1::DecidedBy::FailOpen.into(),
                    ..Default::default()
                }),
                cause: "disconnected".into(),
                decided_at_ms: 1,
            },
        )),
    };
    stream_decision(ch.clone(), "alice-bot", vec![report]).await?;
    let records = audit_store::query(&server.audit_path, &audit_store::Query::default())?;
    let by_event = |id: &str| records.iter().find(|r| r.record.event_id == id).cloned();
    assert_eq!(by_event("e-alice").unwrap().record.agent_id, "alice-bot");
    assert_eq!(
        by_event("e-bob").unwrap().record.reason_code,
        "identity_mismatch"
    );
    let r = by_event("e-bob-report").expect("the report attempt is audited");
    assert_eq!(
        (r.record.record_kind.as_str(), r.record.verdict.as_str()),
        ("identity_mismatch", "deny")
    );
    assert!(
        !records
            .iter()
            .any(|r| r.record.record_kind == "local_decision")
    );
    assert!(
        !records
            .iter()
            .any(|r| r.record.agent_id == "bob-bot" && r.record.verdict == "allow")
    );

    // An agent certificate cannot administer; an admin certificate can.
    let err = AdminServiceClient::new(ch)
        .revoke(v1::RevokeRequest {
            target: v1::revoke_request::Target::Agent.into(),
            id: "alice-bot".into(),
            restore: true,
            reason: String::new(),
        })
        .await
        .expect_err("an agent administered");
    assert_eq!(
        reason_code_of(&err).as_deref(),
        Some("agent_cannot_administer")
    );
    let ops = channel(&server, &pki.ca_pem, Some(&admin)).await?;
    AdminServiceClient::new(ops)
        .revoke(v1::RevokeRequest {
            target: v1::revoke_request::Target::Agent.into(),
            id: "mallory-bot".into(),
            restore: false,
            reason: "test".into(),
        })
        .await?;

    // No certificate, or one from another CA: refused.
    for who in [None, Some(&rogue)] {
        let refused = match channel(&server, &pki.ca_pem, who).await {
            Err(_) => true,
            Ok(ch) => {
                let mut e = bash("x", "e-x", "ls");
                e.agent_id = "alice-bot".into();
                HookServiceClient::new(ch).evaluate(e).await.is_err()
            }
        };
        assert!(refused, "a client without a valid certificate was served");
    }
    Ok(())
}

/// Agent bearer tokens bind agents without mTLS; the token itself is
/// never audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_bind_agents_without_mtls() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let dir = tempfile::tempdir()?;
    let token = "tok-alice-0123456789";
    let tokens = write(
        dir.path(),
        "tokens.toml",
        &format!(
            "[[token]]\nsha256 = \"{}\"\nagents = [\"alice-bot\"]\n",
            hex::encode(sha2::Sha256::digest(token))
        ),
    )?;
    let server = TestServer::start(&quickstart(), |c| c.agent_tokens = Some(tokens)).await?;
    let mut client = server.client().await?;
    let call = |agent: &str, t: Option<&str>| {
        let mut e = bash("u", &format!("e-{agent}-{}", t.is_some()), "ls");
        e.agent_id = agent.into();
        let mut req = tonic::Request::new(e);
        if let Some(t) = t {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let err = client
        .evaluate(call("alice-bot", None))
        .await
        .expect_err("no token");
    assert_eq!(reason_code_of(&err).as_deref(), Some("unauthenticated"));
    let err = client
        .evaluate(call("alice-bot", Some("wrong")))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let d = client
        .evaluate(call("alice-bot", Some(token)))
        .await?
        .into_inner();
    assert_eq!(d.verdict(), v1::Verdict::Allow);
    let d = client
        .evaluate(call("bob-bot", Some(token)))
        .await?
        .into_inner();
    assert_eq!(
        (d.verdict(), d.reason_code.as_str()),
        (v1::Verdict::Deny, "identity_mismatch")
    );
    for suffix in ["", "-wal"] {
        let audit =
            std::fs::read(format!("{}{suffix}", server.audit_path.display())).unwrap_or_default();
        assert!(
            !audit.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token reached the audit"
        );
    }
    Ok(())
}
