//! The post-invocation pipeline through the server: redacted outputs come
//! back on the wire, and no secret reaches the audit store.

use std::time::Duration;

use gatehouse_tests::TestServer;
use policy_core::{Event, EventKind, OutputVerdict};
use sidecar_client::{Client, ClientConfig, SessionInfo, SpoolConfig};

use crate::helpers::quickstart;

const SECRETS: [&str; 8] = [
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "xoxb-1234567890-abcdefghijklmnop",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
    "hunter2hunter2",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
];

fn output_event(i: usize, output: serde_json::Value) -> Event {
    Event {
        event_id: format!("out-{i}"),
        agent_id: String::new(),
        session_id: String::new(),
        runtime: String::new(),
        metadata: Default::default(),
        kind: EventKind::PostToolUse {
            tool_name: "Bash".into(),
            input: serde_json::json!({ "command": format!("echo {}", SECRETS[i % SECRETS.len()]) }),
            tool_use_id: format!("t{i}"),
            cwd: "/repo".into(),
            output,
            is_error: false,
            duration_ms: 3,
            usage: Default::default(),
        },
    }
}

fn outputs() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!(format!(
            "AWS_ACCESS_KEY_ID={}\naws_secret_access_key = {}",
            SECRETS[0], SECRETS[1]
        )),
        serde_json::json!({ "body": { "token": SECRETS[2] } }),
        serde_json::json!({ "stdout": format!("SLACK={}", SECRETS[3]) }),
        serde_json::json!(format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----",
            SECRETS[4]
        )),
        serde_json::json!(format!(
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.{}.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            SECRETS[5]
        )),
        serde_json::json!(format!("password: {}", SECRETS[6])),
        serde_json::json!(format!("key = '{}'", SECRETS[7])),
    ]
}

fn assert_no_secret_in(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in SECRETS {
            assert!(!text.contains(s), "secret {s} found in {}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_outputs_come_back_and_no_secret_reaches_the_audit() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let spool_dir = tempfile::tempdir()?;
    let client = Client::new(ClientConfig {
        server: Some(server.url()),
        default_deadline: Duration::from_secs(2),
        spool: Some(SpoolConfig {
            path: spool_dir.path().join("spool.jsonl"),
            max_bytes: 1 << 20,
        }),
        ..ClientConfig::default()
    })?;
    let session = client.open_session(SessionInfo {
        agent_id: "dev".into(),
        session_id: "s-secrets".into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    });
    assert!(session.wait_connected(Duration::from_secs(5)).await);
    for (i, out) in outputs().into_iter().enumerate() {
        let d = session.decide(output_event(i, out)).await;
        let o = d.output.expect("a post event carries an output decision");
        assert_eq!(o.verdict, OutputVerdict::Redact, "output {i}: {:?}", o);
        let redacted = o.redacted.expect("redacted output").to_string();
        assert!(redacted.contains("[REDACTED:"), "{redacted}");
        for s in SECRETS {
            assert!(!redacted.contains(s), "output {i} still holds {s}");
        }
        assert!(!o.evidence.is_empty());
        assert_eq!(o.output_sha256.len(), 64);
    }
    // Local decisions too: the fallback redacts, and the spool and its
    // report hold a hash of the output, not the output.
    drop(session);
    let offline = Client::new(ClientConfig {
        server: None,
        bootstrap: Some(sidecar_server::read_bundle_dir(&quickstart())?),
        spool: Some(SpoolConfig {
            path: spool_dir.path().join("offline.jsonl"),
            max_bytes: 1 << 20,
        }),
        ..ClientConfig::default()
    })?;
    let s = offline.open_session(SessionInfo {
        agent_id: "dev".into(),
        session_id: "s-offline".into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    });
    for (i, out) in outputs().into_iter().enumerate() {
        let d = s.decide(output_event(100 + i, out)).await;
        assert_eq!(d.output.map(|o| o.verdict), Some(OutputVerdict::Redact));
    }
    let records = audit_store::query(&server.audit_path, &audit_store::Query::default())?;
    assert_eq!(records.len(), 7);
    assert!(
        records
            .iter()
            .all(|r| r.record.detail.contains("output_sha256"))
    );
    // The audit database (and its WAL) holds none of the secrets.
    let audit_dir = server.audit_path.parent().expect("audit dir").to_path_buf();
    assert_no_secret_in(&audit_dir);
    assert_no_secret_in(spool_dir.path());
    server.stop().await?;
    Ok(())
}
