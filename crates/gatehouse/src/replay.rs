//! `gatehouse replay`: decide every event of a recorded session, through a
//! server or a local bundle, and print one JSON decision per line.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use policy_core::Event;
use sidecar_client::{Client, ClientConfig, Session, SessionInfo};

use agent_adapters::{Format, Mapped};

/// Parses `--format`: `gatehouse` or an agent name.
pub(crate) fn format_parser() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Format::names())
        .try_map(|name| Format::parse(&name).ok_or_else(|| format!("unknown format `{name}`")))
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["server", "local"])))]
pub(crate) struct ReplayArgs {
    /// Decide through this server, e.g. http://127.0.0.1:7468 (or several
    /// replicas as URL1,URL2).
    #[arg(long)]
    server: Option<String>,
    /// Decide in-process with the bundle in this directory.
    #[arg(long)]
    local: Option<PathBuf>,
    /// The principal [default: the event's agent_id, else the runtime name].
    #[arg(long)]
    agent: Option<String>,
    /// How events are written: gatehouse, or an agent's hook input
    /// (claude-code, codex, gemini, cursor, copilot, cline, windsurf).
    #[arg(long, value_parser = format_parser(), default_value = "gatehouse")]
    format: Format,
    #[command(flatten)]
    tls: crate::config::TlsArgs,
    /// Per-event deadline when deciding through a server.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// The recorded events, one JSON object per line (`-` for stdin).
    file: PathBuf,
}

enum Decider {
    Local(Box<policy_core::Bundle>, Box<control_store::LocalStore>),
    Server {
        client: Client,
        sessions: HashMap<(String, String), Session>,
    },
}

pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(replay(args))
}

fn reader(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(f)))
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut decider = match (&args.server, &args.local) {
        (_, Some(dir)) => Decider::Local(
            Box::new(
                policy_core::Bundle::load(bundle_dir::read_bundle_dir(dir)?)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            // Limits, budgets and grants carry across the replayed events.
            Box::new(control_store::LocalStore::memory()),
        ),
        (Some(url), None) => Decider::Server {
            client: Client::new(ClientConfig {
                server: Some(url.clone()),
                default_deadline: Duration::from_millis(args.deadline_ms),
                tls: args.tls.client_tls(),
                token: args.tls.token(),
                ..ClientConfig::default()
            })?,
            sessions: HashMap::new(),
        },
        (None, None) => anyhow::bail!("pass --server URL or --local DIR"),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut failed = 0usize;
    for (n, line) in reader(&args.file)?.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let lineno = n + 1;
        let event = match parse_line(&line, args.format, args.agent.as_deref()) {
            Ok(Mapped::Event(e)) => *e,
            Ok(Mapped::NoDecision { hook_event }) => {
                let v = serde_json::json!({"line": lineno, "skipped": format!("{hook_event} carries no decision")});
                writeln!(out, "{v}")?;
                continue;
            }
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"line": lineno, "error": e.to_string()})
                )?;
                continue;
            }
        };
        let v = decide(&mut decider, event, lineno).await?;
        writeln!(out, "{v}")?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn parse_line(
    line: &str,
    format: Format,
    agent: Option<&str>,
) -> anyhow::Result<Mapped> {
    let value: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    Ok(agent_adapters::map_event(format, value, agent)?)
}

async fn decide(
    decider: &mut Decider,
    mut event: Event,
    line: usize,
) -> anyhow::Result<serde_json::Value> {
    if event.event_id.is_empty() {
        event.event_id = format!("replay-{}-{line}", std::process::id());
    }
    Ok(match decider {
        Decider::Local(bundle, state) => {
            let d = control_store::decide(bundle, &event, state.as_ref())
                .await
                .decision;
            let output = is_post(&event).then(|| agent_adapters::verdict_word(&event, &d));
            serde_json::json!({
                "line": line,
                "event_id": event.event_id,
                "verdict": d.verdict,
                "output_verdict": output,
                "reason_code": d.reason_code,
                "decided_by": "in_process",
                "policies": d.policies,
                "reason": d.reason,
            })
        }
        Decider::Server { client, sessions } => {
            let key = (event.agent_id.clone(), event.session_id.clone());
            if !sessions.contains_key(&key) {
                let s = client.open_session(SessionInfo {
                    agent_id: key.0.clone(),
                    session_id: key.1.clone(),
                    runtime: event.runtime.clone(),
                    metadata: Default::default(),
                });
                anyhow::ensure!(
                    s.wait_connected(Duration::from_secs(5)).await,
                    "cannot reach the server"
                );
                sessions.insert(key.clone(), s);
            }
            let session = sessions.get(&key).context("session")?;
            let post = is_post(&event);
            let d = session.decide(event).await;
            let output = post.then(|| crate::hook::outcome_from_client(d.clone()).output_verdict());
            serde_json::json!({
                "line": line,
                "event_id": d.event_id,
                "verdict": d.verdict,
                "output_verdict": output.map(|o| o.as_str()),
                "reason_code": d.reason_code,
                "decided_by": d.decided_by.as_str(),
                "policies": d.policies,
                "reason": d.reason,
            })
        }
    })
}

fn is_post(event: &Event) -> bool {
    matches!(event.kind, policy_core::EventKind::PostToolUse { .. })
}
