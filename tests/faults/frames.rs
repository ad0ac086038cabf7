//! Malformed, oversized and deep frames: each gets a stable reason code,
//! and nothing else on the server is disturbed.

use std::time::{Duration, Instant};

use bytes::{Buf as _, BufMut as _};
use gatehouse_tests::TestServer;
use hook_proto::v1::{self, server_frame};
use prost::Message as _;
use sidecar_server::reason_code_of;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::helpers::{bash, ev, hello, open, quickstart};

/// Sends bytes as they are: what a broken or hostile client puts on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_client(
    server: &TestServer,
) -> anyhow::Result<tonic::client::Grpc<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(server.url())?
        .connect()
        .await?;
    Ok(tonic::client::Grpc::new(channel))
}

/// Bytes that are not a protobuf message: a field tag with wire type 7.
const GARBAGE: &[u8] = &[0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

/// Reported: a unary decode error was INTERNAL with no reason code.
#[tokio::test]
async fn an_undecodable_unary_event_is_invalid_argument_malformed_frame() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut grpc = raw_client(&server).await?;
    grpc.ready().await?;
    let err = grpc
        .unary(
            tonic::Request::new(GARBAGE.to_vec()),
            http::uri::PathAndQuery::from_static("/gatehouse.v1.HookService/Evaluate"),
            Raw,
        )
        .await
        .expect_err("garbage decoded");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        reason_code_of(&err).as_deref(),
        Some("malformed_frame"),
        "{err:?}"
    );
    assert!(err.message().starts_with("malformed_frame: "), "{err:?}");

    // A well-formed call on the same server still works.
    let mut e = bash("u", "e-ok", "ls");
    e.agent_id = "alice".into();
    let d = server.client().await?.evaluate(e).await?.into_inner();
    assert_eq!(d.verdict(), v1::Verdict::Allow);
    Ok(())
}

/// An undecodable frame in the middle of a stream ends that stream with
/// `malformed_frame`, after the events it accepted were answered.
#[tokio::test]
async fn an_undecodable_stream_frame_ends_its_stream_with_a_reason() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut grpc = raw_client(&server).await?;
    grpc.ready().await?;
    let frames = vec![
        hello("alice", "s-raw", "").encode_to_vec(),
        ev(bash("c1", "e1", "ls")).encode_to_vec(),
        GARBAGE.to_vec(),
    ];
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(frames)),
            http::uri::PathAndQuery::from_static("/gatehouse.v1.HookService/ProcessHookEvent"),
            Raw,
        )
        .await?
        .into_inner();
    let mut decided = false;
    let status = loop {
        match inbound.message().await {
            Ok(Some(bytes)) => {
                if let Some(server_frame::Frame::Decision(d)) =
                    v1::ServerFrame::decode(bytes.as_slice())?.frame
                {
                    assert_eq!(d.correlation_id, "c1");
                    decided = true;
                }
            }
            Ok(None) => anyhow::bail!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert!(decided, "the accepted event was not answered");
    assert_eq!(
        reason_code_of(&status).as_deref(),
        Some("malformed_frame"),
        "{status:?}"
    );
    Ok(())
}

/// Reported: one event over the size limit ended its whole stream, so the
/// relay's session fell back for ~3 s. Now the event alone is refused with
/// `message_too_large` and the stream goes on.
#[tokio::test]
async fn an_oversized_event_is_refused_alone_and_its_stream_goes_on() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |c| c.max_message_bytes = 64 * 1024).await?;
    let mut s = open(&server, hello("alice", "s-big", "")).await?;
    s.tx.send(ev(bash("big", "e-big", &"x".repeat(100 * 1024))))
        .await?;
    s.tx.send(ev(bash("after", "e-after", "rm -rf /"))).await?;
    let mut refused = false;
    loop {
        match s.next().await?.and_then(|f| f.frame) {
            Some(server_frame::Frame::EventError(e)) => {
                assert_eq!(
                    (e.correlation_id.as_str(), e.reason_code.as_str()),
                    ("big", "message_too_large")
                );
                refused = true;
            }
            Some(server_frame::Frame::Decision(d)) => {
                assert_eq!(
                    (d.correlation_id.as_str(), d.verdict()),
                    ("after", v1::Verdict::Deny)
                );
                break;
            }
            Some(_) => {}
            None => anyhow::bail!("the stream ended"),
        }
    }
    assert!(refused);
    Ok(())
}

/// The same through the client library (what the relay uses): the big
/// event is decided locally at once, and the next one by the server on the
/// same stream, with no reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_session_survives_an_oversized_event() -> anyhow::Result<()> {
    use policy_core::{Event, EventKind};
    use sidecar_client::{Client, ClientConfig, DecidedBy, SessionInfo};
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let client = Client::new(ClientConfig {
        server: Some(server.url()),
        default_deadline: Duration::from_secs(5),
        ..ClientConfig::default()
    })?;
    let session = client.open_session(SessionInfo {
        agent_id: "alice".into(),
        session_id: "s-relay".into(),
        runtime: "faults".into(),
        metadata: Default::default(),
    });
    let post = |output: String| {
        Event::new(EventKind::PostToolUse {
            tool_name: "Bash".into(),
            input: serde_json::json!({"command": "cat big.log"}),
            tool_use_id: String::new(),
            cwd: "/repo".into(),
            output: serde_json::Value::String(output),
            is_error: false,
            duration_ms: 0,
            usage: Default::default(),
        })
    };
    let first = session.decide(post("ok".into())).await;
    assert_eq!(first.decided_by, DecidedBy::Server, "{first:?}");
    let started = Instant::now();
    let big = session.decide(post("y".repeat(2 * 1024 * 1024))).await;
    assert_ne!(big.decided_by, DecidedBy::Server, "{big:?}");
    let next = session.decide(post("small".into())).await;
    assert_eq!(next.decided_by, DecidedBy::Server, "{next:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().streams_opened, 1, "the stream was reopened");
    Ok(())
}

/// Deep structure inside a frame (nested JSON, nested shell substitutions)
/// is bounded by the parsers: a decision comes back and the server stays
/// responsive.
#[tokio::test]
async fn deeply_nested_input_is_decided_not_crashed_on() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let mut s = open(&server, hello("alice", "s-deep", "")).await?;
    let deep_shell = format!("{}rm -rf /{}", "echo $(".repeat(5_000), ")".repeat(5_000));
    s.tx.send(ev(bash("shell", "e-shell", &deep_shell))).await?;
    let d = s.decision().await?;
    assert_eq!(d.correlation_id, "shell");
    assert_ne!(d.verdict(), v1::Verdict::Allow, "{d:?}");

    let mut deep_json = bash("json", "e-json", "ls");
    if let Some(v1::hook_event::Kind::PreToolUse(p)) = &mut deep_json.kind {
        p.input_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    }
    s.tx.send(ev(deep_json)).await?;
    let d = s.decision().await?;
    assert_eq!(
        (
            d.correlation_id.as_str(),
            d.verdict(),
            d.reason_code.as_str()
        ),
        ("json", v1::Verdict::Deny, "malformed_event")
    );
    s.tx.send(ev(bash("after", "e-after", "ls"))).await?;
    assert_eq!(s.decision().await?.verdict(), v1::Verdict::Allow);
    Ok(())
}
