//! `gatehouse revoke`, `gatehouse grant` and `gatehouse explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hook_proto::v1;
use policy_core::Event;

use crate::config::DEFAULT_LISTEN;
use agent_adapters::Mapped;

fn default_server() -> String {
    std::env::var("GATEHOUSE_SERVER").unwrap_or_else(|_| format!("http://{DEFAULT_LISTEN}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RevokeTarget {
    Agent,
    Session,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// The server [default: $GATEHOUSE_SERVER or http://127.0.0.1:7468].
    #[arg(long)]
    server: Option<String>,
    /// Admin bearer token [default: $GATEHOUSE_ADMIN_TOKEN].
    #[arg(long)]
    token: Option<String>,
    #[command(flatten)]
    tls: crate::config::TlsArgs,
    /// A file holding the admin token [default: $GATEHOUSE_ADMIN_TOKEN_FILE,
    /// else the file `gatehouse serve` generates by default in this
    /// directory, when present].
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// The token file `gatehouse serve` generates with its default settings.
pub(crate) const DEFAULT_TOKEN_FILE: &str = "gatehouse-audit.db.state.admin-token";

impl Connection {
    fn request<T>(&self, msg: T) -> anyhow::Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        let file = self
            .token_file
            .clone()
            .or_else(|| std::env::var_os("GATEHOUSE_ADMIN_TOKEN_FILE").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from(DEFAULT_TOKEN_FILE);
                p.exists().then_some(p)
            });
        let from_file = match (&self.token, file) {
            (None, Some(path)) if std::env::var_os("GATEHOUSE_ADMIN_TOKEN").is_none() => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the admin token {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("GATEHOUSE_ADMIN_TOKEN").ok())
            .or(from_file);
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().context("bad token")?,
            );
        }
        Ok(req)
    }

    async fn client(
        &self,
    ) -> anyhow::Result<v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>>
    {
        let url = self.server.clone().unwrap_or_else(default_server);
        let channel = sidecar_client::endpoint(&url, self.tls.client_tls().as_ref())?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(v1::admin_service_client::AdminServiceClient::new(channel))
    }
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

pub(crate) fn revoke(
    target: RevokeTarget,
    id: String,
    restore: bool,
    reason: Option<String>,
    conn: &Connection,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut client = conn.client().await?;
        let req = v1::RevokeRequest {
            target: match target {
                RevokeTarget::Agent => v1::revoke_request::Target::Agent,
                RevokeTarget::Session => v1::revoke_request::Target::Session,
            }
            .into(),
            id: id.clone(),
            restore,
            reason: reason.unwrap_or_default(),
        };
        let resp = client
            .revoke(conn.request(req)?)
            .await
            .map_err(status_error)?
            .into_inner();
        let r = resp.revocations.unwrap_or_default();
        println!(
            "{} {} {id} (audit record {}); revoked agents: [{}]; revoked sessions: [{}]",
            if restore { "restored" } else { "revoked" },
            match target {
                RevokeTarget::Agent => "agent",
                RevokeTarget::Session => "session",
            },
            resp.audit_seq,
            r.agents.join(", "),
            r.sessions.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    })?
}

pub(crate) fn grant(approval_id: String, ttl: &str, conn: &Connection) -> anyhow::Result<ExitCode> {
    let ttl_ms = parse_ttl(ttl)?;
    block_on(async {
        let mut client = conn.client().await?;
        let req = v1::GrantRequest {
            approval_id,
            ttl_ms,
            granted_by: std::env::var("USER").unwrap_or_default(),
        };
        let g = client
            .grant(conn.request(req)?)
            .await
            .map_err(status_error)?
            .into_inner();
        println!(
            "granted {}: agent {} may {} on {} in session {} until {} (audit record {})",
            g.approval_id,
            g.agent_id,
            g.action,
            g.resource,
            g.session_id,
            crate::timefmt::format_ms(g.expires_ms),
            g.audit_seq
        );
        Ok(ExitCode::SUCCESS)
    })?
}

fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("bad ttl `{s}`"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("bad ttl unit in `{s}`: use s, m, h or d"),
    };
    Ok(n * mult)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// Explain against this bundle directory (in-process).
    #[arg(long, conflicts_with = "server")]
    policies: Option<PathBuf>,
    /// Explain against a running server's bundle (AdminService.Explain).
    #[arg(long)]
    server: Option<String>,
    /// The event: one JSON object (`-` for stdin).
    #[arg(long)]
    event: PathBuf,
    /// How the event is written: gatehouse, or an agent's hook input.
    #[arg(long, value_parser = crate::replay::format_parser(), default_value = "gatehouse")]
    format: agent_adapters::Format,
    /// The principal, when the event does not name one.
    #[arg(long)]
    agent: Option<String>,
    /// Print JSON instead of sentences.
    #[arg(long)]
    json: bool,
    /// Admin bearer token, for explaining on a server.
    #[arg(long)]
    token: Option<String>,
    /// A file holding the admin token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::config::TlsArgs,
}

pub(crate) fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let text = if args.event.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.event)
            .with_context(|| format!("reading {}", args.event.display()))?
    };
    let event: Event =
        match crate::replay::parse_line(text.trim(), args.format, args.agent.as_deref())? {
            Mapped::Event(e) => *e,
            Mapped::NoDecision { hook_event } => {
                println!("{hook_event} events carry no decision");
                return Ok(ExitCode::SUCCESS);
            }
        };
    let x = match (&args.policies, &args.server) {
        (Some(dir), _) => {
            let bundle = policy_core::Bundle::load(bundle_dir::read_bundle_dir(dir)?)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            policy_core::proto::explanation_to_proto(&bundle, &event, v1::DecidedBy::InProcess)
        }
        (None, server) => {
            let conn = Connection {
                server: server.clone(),
                token: args.token.clone(),
                token_file: args.token_file.clone(),
                tls: args.tls.clone(),
            };
            block_on(async {
                let mut client = conn.client().await?;
                let wire = policy_core::proto::event_to_proto(&event);
                let x = client
                    .explain(conn.request(wire)?)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                anyhow::Ok(x)
            })??
        }
    };
    let d = x.decision.clone().unwrap_or_default();
    let json = serde_json::json!({
        "action": x.action,
        "considered": x.considered,
        "matched_permits": x.matched_permits,
        "matched_forbids": x.matched_forbids,
        "matched_asks": x.matched_asks,
        "errored": x.errored,
        "decision": {
            "verdict": policy_core::proto::verdict_from_proto(d.verdict),
            "reason": d.reason,
            "reason_code": d.reason_code,
            "policies": d.policies,
            "bundle_hash": d.bundle_hash,
        },
        "text": x.text,
    });
    let text = x.text;
    if args.json {
        println!("{json:#}");
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
