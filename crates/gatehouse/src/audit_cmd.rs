//! `gatehouse audit verify|query`.

use std::process::ExitCode;

use audit_store::{Query, SqliteAudit, VerifyReport};

use crate::config::DEFAULT_AUDIT;
use crate::timefmt;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the hash chain; exit 0 when intact, 1 naming the first broken
    /// record otherwise.
    Verify {
        /// Audit log location [default: sqlite:gatehouse-audit.db].
        #[arg(long, default_value = DEFAULT_AUDIT)]
        audit: String,
    },
    /// List audit records, oldest first.
    Query {
        #[arg(long, default_value = DEFAULT_AUDIT)]
        audit: String,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// allow, deny or ask.
        #[arg(long)]
        verdict: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// RFC 3339 time, date, epoch ms, or an age such as 15m or 2h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { audit } => {
            let path = SqliteAudit::location(&audit)?;
            anyhow::ensure!(path.exists(), "no audit log at {}", path.display());
            match SqliteAudit::verify(&path)? {
                VerifyReport::Intact { records } => {
                    println!("ok: {records} records, chain intact");
                    Ok(ExitCode::SUCCESS)
                }
                VerifyReport::Broken { seq, problem } => {
                    println!("broken at record {seq}: {problem}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Query {
            audit,
            agent,
            session,
            verdict,
            event,
            since,
            limit,
            json,
        } => {
            let path = SqliteAudit::location(&audit)?;
            anyhow::ensure!(path.exists(), "no audit log at {}", path.display());
            let since_ms = since
                .map(|s| timefmt::parse_since(&s, timefmt::now_ms()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let q = Query {
                agent_id: agent,
                session_id: session,
                verdict: verdict.map(|v| v.to_ascii_lowercase()),
                event_id: event,
                since_ms,
                limit,
            };
            for r in SqliteAudit::query(&path, &q)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let rec = &r.record;
                    println!(
                        "{:>6} {} {} agent={} session={} {} {} {} [{}] by={}",
                        r.seq,
                        timefmt::format_ms(rec.time_ms),
                        rec.record_kind,
                        rec.agent_id,
                        rec.session_id,
                        rec.event_kind,
                        rec.resource,
                        rec.verdict.to_uppercase(),
                        if rec.policies.is_empty() {
                            rec.reason_code.clone()
                        } else {
                            format!("{}: {}", rec.reason_code, rec.policies.join(","))
                        },
                        rec.decided_by,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
