//! Remote rows: every server runs in its own process, and so does the load
//! generator, as users run them. Two floors run beside `gatehouse serve` in
//! the same run, on the same wire contract and driven by the same load
//! generator: a bare tonic echo (each event answered ALLOW at once, no
//! policy, no audit) and a plain tonic+Cedar server (the bundle evaluated
//! in the stream's own task, no audit, no controls).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use hook_proto::v1;
use policy_core::Bundle;
use tonic::{Request, Response, Status, Streaming};

use crate::Row;

/// What a floor server does with each event.
#[derive(Clone)]
enum Floor {
    Echo,
    Cedar(Arc<Bundle>),
}

impl Floor {
    fn answer(&self, e: &v1::HookEvent) -> v1::Decision {
        match self {
            Self::Echo => v1::Decision {
                correlation_id: e.correlation_id.clone(),
                event_id: e.event_id.clone(),
                verdict: v1::Verdict::Allow.into(),
                decided_by: v1::DecidedBy::Server.into(),
                ..Default::default()
            },
            Self::Cedar(bundle) => {
                let d = match policy_core::proto::event_from_proto(e) {
                    Ok(event) => bundle.evaluate(&event),
                    Err(_) => policy_core::Decision::deny(
                        policy_core::ReasonCode::MalformedEvent,
                        "malformed",
                        bundle.hash(),
                    ),
                };
                policy_core::proto::decision_to_proto(
                    &d,
                    &e.correlation_id,
                    &e.event_id,
                    v1::DecidedBy::Server,
                    0,
                )
            }
        }
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<v1::ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl v1::hook_service_server::HookService for Floor {
    type ProcessHookEventStream = Frames;

    async fn process_hook_event(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let mut inbound = request.into_inner();
        let floor = self.clone();
        let out = async_stream::try_stream! {
            while let Some(frame) = inbound.message().await? {
                match frame.frame {
                    Some(v1::client_frame::Frame::Hello(h)) => {
                        yield v1::ServerFrame {
                            frame: Some(v1::server_frame::Frame::Welcome(v1::Welcome {
                                server_version: "floor".into(),
                                protocol_version: 1,
                                bundle_hash: h.bundle_hash,
                                ..Default::default()
                            })),
                        };
                    }
                    Some(v1::client_frame::Frame::Event(e)) => {
                        yield v1::ServerFrame {
                            frame: Some(v1::server_frame::Frame::Decision(floor.answer(&e))),
                        };
                    }
                    _ => {}
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn evaluate(
        &self,
        request: Request<v1::HookEvent>,
    ) -> Result<Response<v1::Decision>, Status> {
        Ok(Response::new(self.answer(request.get_ref())))
    }
}

/// `gatehouse-bench --floor echo|cedar PORT [BUNDLE_DIR]`: serves a floor
/// until killed.
pub(crate) fn serve_floor(args: &[String]) -> anyhow::Result<()> {
    let kind = args.first().map(String::as_str).unwrap_or_default();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let floor = match kind {
        "echo" => Floor::Echo,
        "cedar" => {
            let dir = PathBuf::from(args.get(2).cloned().unwrap_or_default());
            let files = bundle_dir::read_snapshot(&dir)?.files;
            Floor::Cedar(Arc::new(Bundle::load(files)?))
        }
        other => anyhow::bail!("unknown floor `{other}`"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        tonic::transport::Server::builder()
            .add_service(v1::hook_service_server::HookServiceServer::new(floor))
            .serve(addr)
            .await?;
        anyhow::Ok(())
    })
}

/// One load run, as `gatehouse-bench --load ...` runs it in its own
/// process: `URL stream STREAMS IN_FLIGHT N`, `URL unary CONCURRENCY N` or
/// `URL post SIZE N`. Prints one JSON line: latencies (ns), wall (ns), and
/// how many were decided locally.
pub(crate) fn run_load(args: &[String]) -> anyhow::Result<()> {
    let num = |i: usize| -> anyhow::Result<usize> {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--load: argument {i} must be a number"))
    };
    let url = args.first().cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let row = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("stream") => crate::stream_bench("", &url, num(2)?, num(3)?, num(4)?).await,
            Some("unary") => crate::unary_bench("", &url, num(2)?, num(3)?).await,
            Some("post") => crate::post_stream("", &url, num(2)?, num(3)?).await,
            _ => anyhow::bail!("--load URL stream|unary|post ..."),
        }
    })?;
    let lat: Vec<u128> = row.lat.iter().map(Duration::as_nanos).collect();
    println!(
        "{}",
        serde_json::json!({"lat_ns": lat, "wall_ns": row.wall.as_nanos(), "note": row.note})
    );
    Ok(())
}

/// Runs one load in a child process and reads its row back.
fn load(name: &str, url: &str, args: &[String], note: &str) -> anyhow::Result<Row> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--load")
        .arg(url)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "load generator for `{name}` failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let lat: Vec<Duration> = v["lat_ns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_u64)
                .map(Duration::from_nanos)
                .collect()
        })
        .unwrap_or_default();
    let child_note = v["note"].as_str().unwrap_or_default();
    Ok(Row {
        name: name.into(),
        n: lat.len(),
        lat,
        wall: Duration::from_nanos(v["wall_ns"].as_u64().unwrap_or(1)),
        note: [note, child_note]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("; "),
    })
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nothing listened on port {port} within 30 s")
}

fn floor_server(kind: &str, bundle: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let child = Command::new(std::env::current_exe()?)
        .args(["--floor", kind, &port.to_string()])
        .arg(bundle)
        .spawn()?;
    wait_listening(port)?;
    Ok(Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

fn gatehouse_server(exe: &Path, bundle: &Path, audit_dir: &Path) -> anyhow::Result<Server> {
    gatehouse_server_on(
        exe,
        bundle,
        &format!("sqlite:{}", audit_dir.join("audit.db").display()),
        &audit_dir.join("state.db").display().to_string(),
    )
}

fn gatehouse_server_on(
    exe: &Path,
    bundle: &Path,
    audit: &str,
    state: &str,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let work = std::env::temp_dir();
    let child = Command::new(exe)
        .arg("serve")
        .arg("--policies")
        .arg(bundle)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--audit", audit, "--state", state])
        .current_dir(work)
        // Load generators exit without closing their streams: not news.
        .env("RUST_LOG", "error")
        .spawn()?;
    wait_listening(port)?;
    // The first stream also waits for the bundle and the audit to be ready.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// What the remote section measured, for the summary lines.
pub(crate) struct Remote {
    pub(crate) rows: Vec<Row>,
    /// Audit bytes on disk per decision the Gatehouse servers made.
    pub(crate) audit_bytes_per_decision: f64,
}

/// The shapes every server is driven with: (label, load arguments).
fn shapes(n: usize) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[usize]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let with = |mode: &str, v: &[usize]| {
        let mut a = vec![mode.to_owned()];
        a.extend(s(v));
        a
    };
    vec![
        (
            "stream, 1 stream, sequential",
            with("stream", &[1, 1, n / 2]),
        ),
        (
            "stream, 1 stream, 64 in flight",
            with("stream", &[1, 64, n * 2]),
        ),
        ("stream, 100 streams", with("stream", &[100, 1, n * 2])),
    ]
}

pub(crate) fn rows(scale: usize, org50: &Path) -> anyhow::Result<Remote> {
    let exe = crate::workspace_root().join("target/release/gatehouse");
    anyhow::ensure!(
        exe.exists(),
        "build the release binary first (cargo xtask bench does)"
    );
    let quickstart = crate::workspace_root().join("examples/quickstart");
    let n = 20_000 / scale;
    let mut rows = Vec::new();
    for (kind, label) in [
        ("echo", "floor: bare tonic echo"),
        ("cedar", "floor: plain tonic+Cedar"),
    ] {
        let server = floor_server(kind, &quickstart)?;
        for (shape, args) in shapes(n) {
            rows.push(load(
                &format!("{label}, {shape}"),
                &server.url,
                &args,
                "quickstart",
            )?);
        }
        rows.push(load(
            &format!("{label}, unary, 100 concurrent"),
            &server.url,
            &["unary".into(), "100".into(), (n * 2).to_string()],
            "quickstart",
        )?);
    }
    let mut decisions = 0usize;
    let mut bytes = 0u64;
    for (bundle, bundle_label) in [
        (&quickstart, "quickstart"),
        (&org50.to_path_buf(), "50 policies"),
    ] {
        let audit = tempfile::tempdir()?;
        let server = gatehouse_server(&exe, bundle, audit.path())?;
        for (shape, args) in shapes(n) {
            let row = load(
                &format!("gatehouse, {shape}"),
                &server.url,
                &args,
                bundle_label,
            )?;
            decisions += row.n;
            rows.push(row);
        }
        if bundle_label == "quickstart" {
            for (name, args) in [
                (
                    "gatehouse, unary, sequential",
                    vec!["unary".to_owned(), "1".into(), (n / 2).to_string()],
                ),
                (
                    "gatehouse, unary, 64 concurrent",
                    vec!["unary".into(), "64".into(), (n * 2).to_string()],
                ),
                (
                    "gatehouse, unary, 100 concurrent",
                    vec!["unary".into(), "100".into(), (n * 2).to_string()],
                ),
                (
                    "gatehouse, post event via stream, 4 KiB",
                    vec!["post".into(), "4096".into(), (2_000 / scale).to_string()],
                ),
                (
                    "gatehouse, post event via stream, 256 KiB",
                    vec!["post".into(), "262144".into(), (300 / scale).to_string()],
                ),
            ] {
                let row = load(name, &server.url, &args, bundle_label)?;
                decisions += row.n;
                rows.push(row);
            }
        }
        drop(server);
        bytes += crate::audit_bytes(audit.path());
    }
    rows.extend(scale_rows(&exe, &quickstart, n)?);
    Ok(Remote {
        rows,
        audit_bytes_per_decision: bytes as f64 / decisions.max(1) as f64,
    })
}

/// The quickstart with one rate limit every event consumes (so that the
/// state store is on the path of every decision).
fn limited_bundle(quickstart: &Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(quickstart)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
        }
    }
    let toml = dir.path().join("bundle.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap_or_default();
    text.push_str(
        "\n[[rate_limits]]\nname = \"bench\"\nactions = [\"call_tool\"]\nkey = [\"agent\"]\nlimit = 100000000\nwindow = \"1h\"\n",
    );
    std::fs::write(toml, text)?;
    Ok(dir)
}

/// The same server and load with each state store and audit backend:
/// SQLite for both (the embedded default), Redis state, and Redis state
/// with the PostgreSQL audit (real services on loopback, started here).
fn scale_rows(exe: &Path, quickstart: &Path, n: usize) -> anyhow::Result<Vec<Row>> {
    let bundle = limited_bundle(quickstart)?;
    let redis = gatehouse_tests::services::Redis::start()?;
    let pg = gatehouse_tests::services::Postgres::start()?;
    let local = tempfile::tempdir()?;
    let sqlite_audit = format!("sqlite:{}", local.path().join("audit.db").display());
    let sqlite_state = local.path().join("state.db").display().to_string();
    let mut rows = Vec::new();
    for (label, audit, state) in [
        ("sqlite state + sqlite audit", &sqlite_audit, &sqlite_state),
        ("redis state + sqlite audit", &sqlite_audit, &redis.url),
        ("redis state + postgres audit", &pg.url, &redis.url),
    ] {
        let server = gatehouse_server_on(exe, bundle.path(), audit, state)?;
        for (shape, args) in [
            (
                "stream, 1 stream, sequential",
                vec![
                    "stream".to_owned(),
                    "1".into(),
                    "1".into(),
                    (n / 4).to_string(),
                ],
            ),
            (
                "stream, 100 streams",
                vec!["stream".into(), "100".into(), "1".into(), n.to_string()],
            ),
        ] {
            rows.push(load(
                &format!("gatehouse, {label}, {shape}"),
                &server.url,
                &args,
                "quickstart + 1 rate limit",
            )?);
        }
    }
    Ok(rows)
}
