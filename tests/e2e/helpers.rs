//! Frame builders shared by the end-to-end tests.

use std::path::PathBuf;
use std::time::Duration;

use hook_proto::v1::{self, ClientFrame, Hello, HookEvent, ServerFrame, client_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub(crate) fn quickstart() -> PathBuf {
    gatehouse_tests::workspace_root().join("examples/quickstart")
}

pub(crate) fn hello(agent: &str, session: &str, bundle_hash: &str) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Hello(Hello {
            protocol_version: 1,
            agent_id: agent.into(),
            session_id: session.into(),
            runtime: "e2e".into(),
            metadata: Default::default(),
            bundle_hash: bundle_hash.into(),
        })),
    }
}

pub(crate) fn bash(correlation: &str, event_id: &str, command: &str) -> HookEvent {
    HookEvent {
        correlation_id: correlation.into(),
        event_id: event_id.into(),
        kind: Some(v1::hook_event::Kind::PreToolUse(v1::PreToolUse {
            tool_name: "Bash".into(),
            input_json: serde_json::json!({ "command": command }).to_string(),
            tool_use_id: String::new(),
            cwd: "/repo".into(),
        })),
        ..HookEvent::default()
    }
}

pub(crate) fn ev(e: HookEvent) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Event(e)),
    }
}

/// An open stream: a sender for client frames and the server's frames.
pub(crate) struct Open {
    pub(crate) tx: mpsc::Sender<ClientFrame>,
    pub(crate) rx: Streaming<ServerFrame>,
}

pub(crate) async fn open(
    server: &gatehouse_tests::TestServer,
    first: ClientFrame,
) -> anyhow::Result<Open> {
    let (tx, rx) = mpsc::channel(4096);
    tx.send(first).await?;
    let mut client = server.client().await?;
    let rx = client
        .process_hook_event(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Open { tx, rx })
}

impl Open {
    /// The next frame, failing after 10 s.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        Ok(tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await??)
    }

    /// The next frame that is a decision.
    pub(crate) async fn decision(&mut self) -> anyhow::Result<v1::Decision> {
        loop {
            match self.next().await?.and_then(|f| f.frame) {
                Some(v1::server_frame::Frame::Decision(d)) => return Ok(d),
                Some(_) => {}
                None => anyhow::bail!("stream ended before a decision"),
            }
        }
    }
}
