//! Conformance: every case in `tests/conformance/` must get the same
//! decision in-process (policy-core), over the bidi stream and over the
//! unary RPC of a real server on an ephemeral loopback port, and from the
//! client's local fallback deciding with the bundle the server pushed.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_tests::conformance::{CaseFile, Outcome, corpus_root, load_corpus};
use gatehouse_tests::{FaultProxy, TestServer};
use hook_proto::v1::{self, ClientFrame, Hello, client_frame, server_frame};

use policy_core::proto::{event_to_proto, verdict_from_proto};
use policy_core::{Bundle, Verdict};
use sidecar_client::{Client, ClientConfig, DecidedBy, SessionInfo};

fn outcome_of(d: &v1::Decision) -> Outcome {
    Outcome::new(
        verdict_from_proto(d.verdict).unwrap_or(Verdict::Deny),
        d.reason_code.clone(),
        d.policies.clone(),
        d.output
            .as_ref()
            .and_then(|o| policy_core::proto::output_from_proto(o).ok()),
    )
}

fn in_process(file: &CaseFile) -> anyhow::Result<Vec<Outcome>> {
    let bundle = Bundle::load(sidecar_server::read_bundle_dir(&file.bundle_dir())?)?;
    let revocations = file.setup.revocations();
    let grants = policy_core::Grants::new();
    let mut limits = policy_core::LimitState::new();
    (0..file.cases.len())
        .map(|i| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let d = bundle.decide(
                &file.event(i)?,
                policy_core::Controls {
                    now_ms: now,
                    revocations: Some(&revocations),
                    grants: Some(&grants),
                    limits: Some(&mut limits),
                },
            );
            Ok(Outcome::new(
                d.verdict,
                d.reason_code.as_str().to_owned(),
                d.policies,
                d.output,
            ))
        })
        .collect()
}

async fn unary(server: &TestServer, file: &CaseFile) -> anyhow::Result<Vec<Outcome>> {
    let mut client = server.client().await?;
    let mut out = Vec::new();
    for i in 0..file.cases.len() {
        let mut wire = event_to_proto(&file.event(i)?);
        wire.correlation_id = format!("u{i}");
        let d = client.evaluate(wire).await?.into_inner();
        anyhow::ensure!(
            d.correlation_id == format!("u{i}"),
            "correlation id not echoed"
        );
        out.push(outcome_of(&d));
    }
    Ok(out)
}

/// One stream per agent in the file; all of its events pipelined.
async fn stream(server: &TestServer, file: &CaseFile) -> anyhow::Result<Vec<Outcome>> {
    let mut by_agent: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for i in 0..file.cases.len() {
        let e = file.event(i)?;
        // Stateful files keep one group so that order is preserved.
        let key = if file.stateful {
            Default::default()
        } else {
            (e.agent_id, e.session_id)
        };
        by_agent.entry(key).or_default().push(i);
    }
    if file.stateful {
        return stream_sequential(server, file).await;
    }
    let mut out: Vec<Option<Outcome>> = vec![None; file.cases.len()];
    for ((agent, session), indices) in by_agent {
        let mut frames = vec![ClientFrame {
            frame: Some(client_frame::Frame::Hello(Hello {
                protocol_version: 1,
                agent_id: agent.clone(),
                session_id: session.clone(),
                runtime: file.runtime.clone(),
                metadata: Default::default(),
                bundle_hash: String::new(),
            })),
        }];
        for &i in &indices {
            let mut wire = event_to_proto(&file.event(i)?);
            wire.correlation_id = format!("c{i}");
            // The stream's hello names the agent; events leave it empty.
            wire.agent_id.clear();
            frames.push(ClientFrame {
                frame: Some(client_frame::Frame::Event(wire)),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(frames.len() + 1);
        for f in frames {
            tx.send(f).await?;
        }
        let mut client = server.client().await?;
        let mut inbound = client
            .process_hook_event(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut pending = indices.len();
        while pending > 0 {
            let msg = tokio::time::timeout(Duration::from_secs(10), inbound.message())
                .await??
                .ok_or_else(|| anyhow::anyhow!("stream ended with {pending} decisions pending"))?;
            match msg.frame {
                Some(server_frame::Frame::Decision(d)) => {
                    let i: usize = d.correlation_id.trim_start_matches('c').parse()?;
                    anyhow::ensure!(out[i].is_none(), "two decisions for case {i}");
                    out[i] = Some(outcome_of(&d));
                    pending -= 1;
                }
                Some(server_frame::Frame::EventError(e)) => anyhow::bail!("event error: {e:?}"),
                _ => {}
            }
        }
        drop(tx);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, o)| o.ok_or_else(|| anyhow::anyhow!("no decision for case {i}")))
        .collect()
}

/// One event at a time, each on a stream of its own agent and session, in
/// file order (state such as rate limits must see the same order on every
/// path).
async fn stream_sequential(server: &TestServer, file: &CaseFile) -> anyhow::Result<Vec<Outcome>> {
    let mut client = server.client().await?;
    let mut streams: BTreeMap<
        (String, String),
        (
            tokio::sync::mpsc::Sender<ClientFrame>,
            tonic::Streaming<v1::ServerFrame>,
        ),
    > = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..file.cases.len() {
        let event = file.event(i)?;
        let key = (event.agent_id.clone(), event.session_id.clone());
        if !streams.contains_key(&key) {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tx.send(ClientFrame {
                frame: Some(client_frame::Frame::Hello(Hello {
                    protocol_version: 1,
                    agent_id: key.0.clone(),
                    session_id: key.1.clone(),
                    runtime: file.runtime.clone(),
                    metadata: Default::default(),
                    bundle_hash: String::new(),
                })),
            })
            .await?;
            let inbound = client
                .process_hook_event(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            streams.insert(key.clone(), (tx, inbound));
        }
        let (tx, inbound) = streams
            .get_mut(&key)
            .ok_or_else(|| anyhow::anyhow!("stream"))?;
        let mut wire = event_to_proto(&event);
        wire.correlation_id = format!("c{i}");
        tx.send(ClientFrame {
            frame: Some(client_frame::Frame::Event(wire)),
        })
        .await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), inbound.message())
                .await??
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            if let Some(server_frame::Frame::Decision(d)) = msg.frame {
                anyhow::ensure!(
                    d.correlation_id == format!("c{i}"),
                    "unexpected correlation id"
                );
                out.push(outcome_of(&d));
                break;
            }
        }
    }
    Ok(out)
}

/// A fresh server for one path, with the file's revocations in force.
async fn fresh_server(file: &CaseFile) -> anyhow::Result<TestServer> {
    let server = TestServer::start(&file.bundle_dir(), |_| {}).await?;
    let mut admin = v1::admin_service_client::AdminServiceClient::connect(server.url()).await?;
    for (agent, ids) in [
        (true, &file.setup.revoked_agents),
        (false, &file.setup.revoked_sessions),
    ] {
        for id in ids {
            let target = if agent {
                v1::revoke_request::Target::Agent
            } else {
                v1::revoke_request::Target::Session
            };
            admin
                .revoke(v1::RevokeRequest {
                    target: target.into(),
                    id: id.clone(),
                    restore: false,
                    reason: "conformance setup".into(),
                })
                .await?;
        }
    }
    Ok(server)
}

/// The client connects (receiving the bundle in the welcome), loses the
/// server, and decides every case locally.
async fn local_fallback(server: &TestServer, file: &CaseFile) -> anyhow::Result<Vec<Outcome>> {
    let proxy = FaultProxy::start(server.addr).await?;
    let client = Client::new(ClientConfig {
        server: Some(proxy.url()),
        default_deadline: Duration::from_secs(2),
        ..ClientConfig::default()
    })?;
    let probe = client.open_session(SessionInfo {
        agent_id: file.agent.clone(),
        session_id: file.session.clone(),
        runtime: file.runtime.clone(),
        metadata: Default::default(),
    });
    let start = std::time::Instant::now();
    while client.bundle_hash().as_deref() != Some(server.policy.current().hash()) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no bundle pushed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set_refusing(true);
    proxy.kill_connections();
    drop(probe);
    let mut out = Vec::new();
    for i in 0..file.cases.len() {
        let event = file.event(i)?;
        let session = client.open_session(SessionInfo {
            agent_id: event.agent_id.clone(),
            session_id: event.session_id.clone(),
            runtime: file.runtime.clone(),
            metadata: Default::default(),
        });
        let d = session.decide(event).await;
        anyhow::ensure!(
            d.decided_by == DecidedBy::LocalFallback,
            "case {i} was not decided locally: {d:?}"
        );
        out.push(Outcome::new(d.verdict, d.reason_code, d.policies, d.output));
    }
    Ok(out)
}

/// The Python interpreter with grpcio (set up by `tests/python/setup.sh`),
/// if there is one.
fn python() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("GATEHOUSE_PYTHON") {
        return Some(p.into());
    }
    let venv = gatehouse_tests::workspace_root().join("tests/python/.venv/bin/python");
    venv.exists().then_some(venv)
}

/// A client in another language, built only from `proto/`: Python grpcio
/// over the bidi stream.
async fn python_path(
    python: &std::path::Path,
    server: &TestServer,
    file: &CaseFile,
) -> anyhow::Result<Vec<Outcome>> {
    let root = gatehouse_tests::workspace_root();
    let out = tokio::process::Command::new(python)
        .arg(root.join("tests/python/conformance_client.py"))
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--cases")
        .arg(&file.path)
        .arg("--proto")
        .arg(root.join("proto"))
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let verdict = match v["verdict"].as_str() {
                Some("allow") => Verdict::Allow,
                Some("ask") => Verdict::Ask,
                _ => Verdict::Deny,
            };
            let output = if v["output"].is_null() {
                None
            } else {
                let o = &v["output"];
                Some(policy_core::OutputDecision {
                    verdict: serde_json::from_value(o["verdict"].clone())?,
                    redacted: (!o["redacted"].is_null()).then(|| o["redacted"].clone()),
                    escalations: Vec::new(),
                    evidence: o["evidence"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.as_str())
                        .filter_map(|e| e.rsplit_once('@'))
                        .map(|(rule, path)| policy_core::Evidence {
                            guard: String::new(),
                            rule: rule.to_owned(),
                            path: path.to_owned(),
                            kind: String::new(),
                        })
                        .collect(),
                    output_sha256: String::new(),
                })
            };
            Ok(Outcome::new(
                verdict,
                v["reason_code"].as_str().unwrap_or_default().to_owned(),
                serde_json::from_value(v["policies"].clone())?,
                output,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_agrees_on_every_path() -> anyhow::Result<()> {
    let files = load_corpus(&corpus_root())?;
    let total: usize = files.iter().map(|f| f.cases.len()).sum();
    assert!(
        total >= 30,
        "the corpus must hold at least 30 cases, has {total}"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    let python = python();
    match &python {
        Some(p) => println!("conformance: python client {}", p.display()),
        None if std::env::var_os("GATEHOUSE_REQUIRE_PYTHON").is_some() => {
            anyhow::bail!(
                "GATEHOUSE_REQUIRE_PYTHON is set but tests/python/.venv is missing: run tests/python/setup.sh"
            )
        }
        None => println!("conformance: python-grpcio path skipped (run tests/python/setup.sh)"),
    }
    for file in &files {
        let mut paths = vec![("in-process", in_process(file)?)];
        let server = fresh_server(file).await?;
        paths.push(("stream", stream(&server, file).await?));
        let server = if file.stateful {
            server.stop().await?;
            fresh_server(file).await?
        } else {
            server
        };
        paths.push(("unary", unary(&server, file).await?));
        paths.push(("local-fallback", local_fallback(&server, file).await?));
        if let Some(py) = &python {
            server.stop().await?;
            let server = fresh_server(file).await?;
            paths.push(("python-grpcio", python_path(py, &server, file).await?));
            server.stop().await?;
        } else {
            server.stop().await?;
        }
        for (path, outcomes) in &paths {
            for (case, got) in file.cases.iter().zip(outcomes) {
                checked += 1;
                if let Some(why) = case.expect.check(got) {
                    failures.push(format!(
                        "{} / {} / {path}: {why}",
                        file.path
                            .file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default(),
                        case.name
                    ));
                }
            }
        }
    }
    let n_paths = if python.is_some() { 5 } else { 4 };
    println!(
        "conformance: {total} cases x {n_paths} paths = {checked} checks, {} mismatches",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "conformance mismatches:\n{}",
        failures.join("\n")
    );
    Ok(())
}
