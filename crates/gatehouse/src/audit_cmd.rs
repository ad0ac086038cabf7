//! `gatehouse audit verify|query`.

use std::process::ExitCode;

use audit_store::{Query, VerifyReport};

use crate::config::DEFAULT_AUDIT;
use crate::timefmt;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the hash chain; exit 0 when intact, 1 naming the first broken
    /// record otherwise.
    Verify {
        /// Audit log location: sqlite:PATH (its sealed segments
        /// `<log>.seg-*` are verified with it) or postgres://…
        /// [default: sqlite:gatehouse-audit.db].
        #[arg(long, default_value = DEFAULT_AUDIT)]
        audit: String,
        /// The public key the checkpoints must be signed with (hex, or a
        /// file holding it) [default: `<log>.pub` when present]. Pin it
        /// for a check the log's host cannot subvert.
        #[arg(long)]
        pubkey: Option<String>,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { audit, pubkey } => {
            let v = runtime()?.block_on(audit_store::verify_location(
                &audit,
                &audit_store::VerifyOptions { pubkey },
            ))?;
            for note in &v.notes {
                eprintln!("note: {note}");
            }
            match v.report {
                VerifyReport::Intact { records } => {
                    let mut extra = Vec::new();
                    if v.segments > 0 {
                        extra.push(format!("{} sealed segments", v.segments));
                    }
                    if v.retired > 0 {
                        extra.push(format!("{} earlier records retired", v.retired));
                    }
                    if let Some(a) = v.anchored {
                        extra.push(format!("signed through record {a}"));
                    }
                    let extra = if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", extra.join(", "))
                    };
                    println!("ok: {records} records, chain intact{extra}");
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
            for r in runtime()?.block_on(audit_store::query_location(&audit, &q))? {
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
