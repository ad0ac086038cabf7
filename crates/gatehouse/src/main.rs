//! The `gatehouse` command: serve the decision API, validate bundles, and
//! inspect or verify the audit log. A thin shell over the library crates;
//! it must never contain decision logic of its own.

mod admin_cmd;
mod audit_cmd;
mod config;
mod hook;
mod init_cmd;
mod relay;
mod replay;
mod test_cmd;
mod timefmt;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: Cedar allocates and frees many small
/// values per decision from both runtime threads, and glibc's allocator
/// (its arena locks, `malloc_consolidate`) was 11% of the server's CPU
/// under 100 streams (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Policy sidecar for AI-agent runtimes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the decision server.
    Serve(config::ServeArgs),
    /// Validate a policy bundle directory; exit 0 when valid.
    Validate {
        /// The bundle directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or verify the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Print the built-in Cedar schema (copy it to extend it in a bundle),
    /// or with --mcp the ToolInput fields an MCP server's tools list adds.
    Schema {
        /// An MCP server's `tools/list` result; the server name is the file
        /// name without `.json` (as in a bundle's `mcp/<server>.json`).
        #[arg(long)]
        mcp: Option<PathBuf>,
    },
    /// Run the bundle's policy tests (DIR/tests/*.jsonl); exit 1 on any
    /// failure.
    Test(test_cmd::TestArgs),
    /// Bundle maintenance: `gatehouse bundle lock DIR` writes DIR/bundle.lock,
    /// the SHA-256 of every file; the server then activates only that file
    /// set.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Decide every event of a recorded session and print one JSON
    /// decision per line.
    Replay(replay::ReplayArgs),
    /// Show which policies were considered, which matched, which errored
    /// and why the event gets its verdict.
    Explain(admin_cmd::ExplainArgs),
    /// Deny every event of an agent or session, on every stream, at once.
    Revoke {
        #[arg(value_enum)]
        target: admin_cmd::RevokeTarget,
        id: String,
        /// Lift the revocation instead.
        #[arg(long)]
        restore: bool,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: admin_cmd::Connection,
    },
    /// Run as an agent's hook command: read the hook JSON on stdin, print
    /// the agent's answer, exit with the code it reads.
    Hook(hook::HookArgs),
    /// Run the local relay: HTTP hooks on 127.0.0.1, a Unix socket for
    /// `gatehouse hook`, one stream per agent session.
    Relay(relay::RelayArgs),
    /// Print (or with --write, merge into the agent's settings) the hook
    /// configuration for an agent.
    Init(init_cmd::InitArgs),
    /// Turn an ASK's approval id into a time-limited allow.
    Grant {
        approval_id: String,
        /// How long the grant lasts (30s, 10m, 2h).
        #[arg(long, default_value = "10m")]
        ttl: String,
        #[command(flatten)]
        conn: admin_cmd::Connection,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCmd {
    /// Validate DIR and write DIR/bundle.lock (atomically) for its files.
    Lock {
        /// The bundle directory.
        dir: PathBuf,
    },
}

/// A diagnostic with its file named under the bundle directory (built-in
/// sources such as `<builtin>/schema.cedarschema` stay as they are).
pub(crate) fn located(
    dir: &std::path::Path,
    d: &policy_core::Diagnostic,
) -> policy_core::Diagnostic {
    let mut d = d.clone();
    if !d.file.starts_with('<') {
        d.file = dir.join(&d.file).display().to_string();
    }
    d
}

fn bundle_lock(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    // Lock exactly the files that were validated.
    let files = bundle_dir::read_bundle_dir(dir)?;
    if let Err(e) = policy_core::Bundle::load(files.clone()) {
        for d in &e.diagnostics {
            println!("{}", located(dir, d));
        }
        eprintln!("not locked: the bundle is invalid");
        return Ok(ExitCode::from(1));
    }
    bundle_dir::write_manifest(dir, &files)?;
    println!(
        "locked {} files in {}",
        files.len(),
        dir.join(bundle_dir::MANIFEST).display()
    );
    // Compile it for `gatehouse hook --policies`, as whoever may write it.
    if let Ok((_, _, bundle_dir::CacheUse::Miss | bundle_dir::CacheUse::Hit)) =
        bundle_dir::load_cached(dir, true)
    {
        println!(
            "compiled into {}",
            dir.join(bundle_dir::CACHE_DIR).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An audit location for logs: a path as given, a URL without its
/// password.
fn audit_label(location: &str) -> String {
    match (location.split_once("://"), location.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &location[at + 1..]),
        _ => location.to_owned(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Validate { dir, json } => validate(&dir, json),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Hook(args) => return hook::run(args),
        Command::Relay(args) => relay::run(args),
        Command::Init(args) => init_cmd::run(args),
        Command::Explain(args) => admin_cmd::explain(args),
        Command::Revoke {
            target,
            id,
            restore,
            reason,
            conn,
        } => admin_cmd::revoke(target, id, restore, reason, &conn),
        Command::Grant {
            approval_id,
            ttl,
            conn,
        } => admin_cmd::grant(approval_id, &ttl, &conn),
        Command::Schema { mcp: None } => {
            print!("{}", policy_core::BUILTIN_SCHEMA);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { mcp: Some(path) } => schema_mcp(&path),
        Command::Test(args) => test_cmd::run(args),
        Command::Bundle(BundleCmd::Lock { dir }) => bundle_lock(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses an agent name (`claude-code`, `codex`, …) for clap.
pub(crate) fn agent_parser() -> impl clap::builder::TypedValueParser<Value = agent_adapters::Agent>
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(agent_adapters::Agent::NAMES).try_map(|name| {
        agent_adapters::Agent::from_name(&name).ok_or_else(|| format!("unknown agent `{name}`"))
    })
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(args: config::ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let settings = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let policy =
            sidecar_server::PolicyHandle::load(&settings.server.policies).with_context(|| {
                format!(
                    "loading policies from {}",
                    settings.server.policies.display()
                )
            })?;
        let audit_label = audit_label(&settings.audit);
        let audit = audit_store::open(&settings.audit, settings.audit_options)
            .await
            .with_context(|| format!("opening audit log {audit_label}"))?;
        if let Err(why) = audit.health() {
            tracing::error!(audit = %audit_label, %why, "the audit log cannot commit: not ready, and every decision is a DENY audit_unavailable until it can");
        }
        let state = control_store::open(&settings.state)
            .await
            .with_context(|| format!("opening the state store {}", settings.state))?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        if let Some(path) = &settings.admin_token_created {
            eprintln!(
                "gatehouse: generated an admin token in {} (mode 0600); revoke and grant need it",
                path.display()
            );
        }
        let bundle = policy.current();
        tracing::info!(
            listen = %listener.local_addr()?,
            policies = %settings.server.policies.display(),
            bundle = bundle.hash(),
            policy_count = bundle.policy_count(),
            audit = %audit_label,
            state = %state.describe(),
            "gatehouse serving"
        );
        drop(bundle);
        // SIGTERM is how systemd, Docker and Kubernetes stop a process;
        // SIGINT is Ctrl-C. Either stops accepting, answers what streams
        // accepted, and returns once the server has drained.
        let shutdown = async {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                let term = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                    () = term => tracing::info!("SIGTERM: shutting down"),
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            }
        };
        let served = sidecar_server::serve(
            settings.server,
            policy,
            audit.clone(),
            state,
            listener,
            shutdown,
        )
        .await;
        // Drained: commit what is queued, sign the head, fold the WAL.
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            audit.flush(),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!("audit flushed and checkpointed"),
            Ok(Err(e)) => tracing::error!(error = %e, "audit flush failed"),
            Err(_) => tracing::error!("audit flush timed out"),
        }
        served?;
        Ok(ExitCode::SUCCESS)
    })
}

fn schema_mcp(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let server = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the file name names the server")?;
    match policy_core::mcp_declarations(server, &text) {
        Ok(decls) => {
            print!("{decls}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(ExitCode::from(1))
        }
    }
}

fn validate(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let files = bundle_dir::read_bundle_dir(dir)?;
    let result = policy_core::Bundle::load(files);
    let (ok, errors, warnings, summary) = match &result {
        Ok(b) => (
            true,
            Vec::new(),
            b.warnings().to_vec(),
            Some((b.hash().to_owned(), b.policy_count())),
        ),
        Err(e) => (false, e.diagnostics.clone(), e.warnings.clone(), None),
    };
    let located = |d: &policy_core::Diagnostic| located(dir, d);
    if json {
        let diag = |d: &policy_core::Diagnostic| {
            let d = located(d);
            serde_json::json!({"file": d.file, "line": d.line, "column": d.column, "message": d.message})
        };
        let out = serde_json::json!({
            "valid": ok,
            "bundle_hash": summary.as_ref().map(|s| s.0.clone()),
            "policies": summary.as_ref().map(|s| s.1),
            "errors": errors.iter().map(diag).collect::<Vec<_>>(),
            "warnings": warnings.iter().map(diag).collect::<Vec<_>>(),
        });
        println!("{out:#}");
    } else {
        for w in &warnings {
            eprintln!("{}", located(w));
        }
        for e in &errors {
            println!("{}", located(e));
        }
        match summary {
            Some((hash, count)) => println!("valid: {count} policies, bundle {hash}"),
            None => eprintln!("invalid: {} error(s)", errors.len()),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
