//! Conversions between the `gatehouse.v1` wire types and policy-core's
//! domain types. The only module of this crate that knows protobuf.

use hook_proto::v1;

use crate::{Bundle, BundleFile, Decision, Event, EventKind, ReasonCode, Usage, Verdict};

/// A wire event that cannot become a domain event.
#[derive(Debug, Clone, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct InvalidEvent {
    pub field: &'static str,
    pub message: String,
}

impl InvalidEvent {
    /// The reason code a decision for this event carries.
    pub fn reason_code(&self) -> ReasonCode {
        ReasonCode::MalformedEvent
    }
}

fn json(field: &'static str, text: &str) -> Result<serde_json::Value, InvalidEvent> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text).map_err(|e| InvalidEvent {
        field,
        message: format!("not valid JSON: {e}"),
    })
}

fn usage(u: Option<&v1::Usage>) -> Usage {
    u.map(|u| Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost_micros: u.cost_micros,
    })
    .unwrap_or_default()
}

fn usage_to(u: &Usage) -> v1::Usage {
    v1::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost_micros: u.cost_micros,
    }
}

/// The stable name of a wire event's kind (`unknown` when unset), without
/// converting its payload.
pub fn kind_name(e: &v1::HookEvent) -> &'static str {
    use v1::hook_event::Kind;
    match &e.kind {
        None => "unknown",
        Some(Kind::PreToolUse(_)) => "pre_tool_use",
        Some(Kind::PostToolUse(_)) => "post_tool_use",
        Some(Kind::UserPrompt(_)) => "user_prompt",
        Some(Kind::ModelRequest(_)) => "model_request",
        Some(Kind::ModelResponse(_)) => "model_response",
        Some(Kind::MemorySearch(_)) => "memory_search",
        Some(Kind::MemoryIngest(_)) => "memory_ingest",
        Some(Kind::MemoryCompaction(_)) => "memory_compaction",
        Some(Kind::BackgroundTaskStart(_)) => "background_task_start",
        Some(Kind::BackgroundTaskFinish(_)) => "background_task_finish",
        Some(Kind::Install(_)) => "install",
        Some(Kind::SessionStart(_)) => "session_start",
        Some(Kind::SessionEnd(_)) => "session_end",
    }
}

/// Converts a wire event. A kind that is unset (or unknown to this build)
/// becomes [`EventKind::Unknown`], which evaluation denies.
pub fn event_from_proto(e: &v1::HookEvent) -> Result<Event, InvalidEvent> {
    use v1::hook_event::Kind;
    let kind = match &e.kind {
        None => EventKind::Unknown,
        Some(Kind::PreToolUse(k)) => EventKind::PreToolUse {
            tool_name: k.tool_name.clone(),
            input: json("input_json", &k.input_json)?,
            tool_use_id: k.tool_use_id.clone(),
            cwd: k.cwd.clone(),
        },
        Some(Kind::PostToolUse(k)) => EventKind::PostToolUse {
            tool_name: k.tool_name.clone(),
            input: json("input_json", &k.input_json)?,
            tool_use_id: k.tool_use_id.clone(),
            cwd: k.cwd.clone(),
            output: json("output_json", &k.output_json)?,
            is_error: k.is_error,
            duration_ms: k.duration_ms,
            usage: usage(k.usage.as_ref()),
        },
        Some(Kind::UserPrompt(k)) => EventKind::UserPrompt {
            prompt: k.prompt.clone(),
        },
        Some(Kind::ModelRequest(k)) => EventKind::ModelRequest {
            model: k.model.clone(),
            provider: k.provider.clone(),
            estimated_input_tokens: k.estimated_input_tokens,
        },
        Some(Kind::ModelResponse(k)) => EventKind::ModelResponse {
            model: k.model.clone(),
            provider: k.provider.clone(),
            usage: usage(k.usage.as_ref()),
        },
        Some(Kind::MemorySearch(k)) => EventKind::MemorySearch {
            store: k.store.clone(),
            query: k.query.clone(),
        },
        Some(Kind::MemoryIngest(k)) => EventKind::MemoryIngest {
            store: k.store.clone(),
            content: k.content.clone(),
        },
        Some(Kind::MemoryCompaction(k)) => EventKind::MemoryCompaction {
            store: k.store.clone(),
            trigger: k.trigger.clone(),
        },
        Some(Kind::BackgroundTaskStart(k)) => EventKind::BackgroundTaskStart {
            task_id: k.task_id.clone(),
            description: k.description.clone(),
            command: k.command.clone(),
        },
        Some(Kind::BackgroundTaskFinish(k)) => EventKind::BackgroundTaskFinish {
            task_id: k.task_id.clone(),
            status: k.status.clone(),
        },
        Some(Kind::Install(k)) => EventKind::Install {
            name: k.name.clone(),
            source: k.source.clone(),
            version: k.version.clone(),
        },
        Some(Kind::SessionStart(k)) => EventKind::SessionStart {
            source: k.source.clone(),
        },
        Some(Kind::SessionEnd(k)) => EventKind::SessionEnd {
            reason: k.reason.clone(),
        },
    };
    Ok(Event {
        event_id: e.event_id.clone(),
        agent_id: e.agent_id.clone(),
        session_id: e.session_id.clone(),
        runtime: e.runtime.clone(),
        metadata: e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        kind,
    })
}

/// Converts a domain event to the wire (the correlation id is left empty).
/// [`EventKind::Unknown`] becomes an event with no kind set.
pub fn event_to_proto(e: &Event) -> v1::HookEvent {
    use v1::hook_event::Kind;
    let js = |v: &serde_json::Value| {
        if v.is_null() {
            String::new()
        } else {
            v.to_string()
        }
    };
    let kind = match &e.kind {
        EventKind::Unknown => None,
        EventKind::PreToolUse {
            tool_name,
            input,
            tool_use_id,
            cwd,
        } => Some(Kind::PreToolUse(v1::PreToolUse {
            tool_name: tool_name.clone(),
            input_json: js(input),
            tool_use_id: tool_use_id.clone(),
            cwd: cwd.clone(),
        })),
        EventKind::PostToolUse {
            tool_name,
            input,
            tool_use_id,
            cwd,
            output,
            is_error,
            duration_ms,
            usage,
        } => Some(Kind::PostToolUse(v1::PostToolUse {
            tool_name: tool_name.clone(),
            input_json: js(input),
            tool_use_id: tool_use_id.clone(),
            cwd: cwd.clone(),
            output_json: js(output),
            is_error: *is_error,
            duration_ms: *duration_ms,
            usage: Some(usage_to(usage)),
        })),
        EventKind::UserPrompt { prompt } => Some(Kind::UserPrompt(v1::UserPrompt {
            prompt: prompt.clone(),
        })),
        EventKind::ModelRequest {
            model,
            provider,
            estimated_input_tokens,
        } => Some(Kind::ModelRequest(v1::ModelRequest {
            model: model.clone(),
            provider: provider.clone(),
            estimated_input_tokens: *estimated_input_tokens,
        })),
        EventKind::ModelResponse {
            model,
            provider,
            usage,
        } => Some(Kind::ModelResponse(v1::ModelResponse {
            model: model.clone(),
            provider: provider.clone(),
            usage: Some(usage_to(usage)),
        })),
        EventKind::MemorySearch { store, query } => Some(Kind::MemorySearch(v1::MemorySearch {
            store: store.clone(),
            query: query.clone(),
        })),
        EventKind::MemoryIngest { store, content } => Some(Kind::MemoryIngest(v1::MemoryIngest {
            store: store.clone(),
            content: content.clone(),
        })),
        EventKind::MemoryCompaction { store, trigger } => {
            Some(Kind::MemoryCompaction(v1::MemoryCompaction {
                store: store.clone(),
                trigger: trigger.clone(),
            }))
        }
        EventKind::BackgroundTaskStart {
            task_id,
            description,
            command,
        } => Some(Kind::BackgroundTaskStart(v1::BackgroundTaskStart {
            task_id: task_id.clone(),
            description: description.clone(),
            command: command.clone(),
        })),
        EventKind::BackgroundTaskFinish { task_id, status } => {
            Some(Kind::BackgroundTaskFinish(v1::BackgroundTaskFinish {
                task_id: task_id.clone(),
                status: status.clone(),
            }))
        }
        EventKind::Install {
            name,
            source,
            version,
        } => Some(Kind::Install(v1::Install {
            name: name.clone(),
            source: source.clone(),
            version: version.clone(),
        })),
        EventKind::SessionStart { source } => Some(Kind::SessionStart(v1::SessionStart {
            source: source.clone(),
        })),
        EventKind::SessionEnd { reason } => Some(Kind::SessionEnd(v1::SessionEnd {
            reason: reason.clone(),
        })),
    };
    v1::HookEvent {
        correlation_id: String::new(),
        event_id: e.event_id.clone(),
        agent_id: e.agent_id.clone(),
        session_id: e.session_id.clone(),
        runtime: e.runtime.clone(),
        metadata: e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timestamp_ms: 0,
        kind,
    }
}

pub fn verdict_to_proto(v: Verdict) -> v1::Verdict {
    match v {
        Verdict::Allow => v1::Verdict::Allow,
        Verdict::Deny => v1::Verdict::Deny,
        Verdict::Ask => v1::Verdict::Ask,
    }
}

/// `None` for VERDICT_UNSPECIFIED or an unknown value.
pub fn verdict_from_proto(v: i32) -> Option<Verdict> {
    match v1::Verdict::try_from(v).ok()? {
        v1::Verdict::Allow => Some(Verdict::Allow),
        v1::Verdict::Deny => Some(Verdict::Deny),
        v1::Verdict::Ask => Some(Verdict::Ask),
        v1::Verdict::Unspecified => None,
    }
}

/// The wire form of a decision; ids, `decided_by` and the audit sequence
/// are the transport's to fill.
pub fn decision_to_proto(
    d: &Decision,
    correlation_id: &str,
    event_id: &str,
    decided_by: v1::DecidedBy,
    audit_seq: u64,
) -> v1::Decision {
    v1::Decision {
        correlation_id: correlation_id.to_owned(),
        event_id: event_id.to_owned(),
        verdict: verdict_to_proto(d.verdict).into(),
        reason: d.reason.clone(),
        reason_code: d.reason_code.as_str().to_owned(),
        policies: d.policies.clone(),
        decided_by: decided_by.into(),
        bundle_hash: d.bundle_hash.clone(),
        audit_seq,
        retry_after_ms: d.retry_after_ms.unwrap_or(0),
        approval_id: d.approval_id.clone().unwrap_or_default(),
        output: d.output.as_ref().map(output_to_proto),
    }
}

pub fn output_to_proto(o: &crate::OutputDecision) -> v1::OutputDecision {
    use crate::OutputVerdict as V;
    v1::OutputDecision {
        verdict: match o.verdict {
            V::Allow => v1::OutputVerdict::Allow,
            V::Block => v1::OutputVerdict::Block,
            V::Redact => v1::OutputVerdict::Redact,
            V::Escalate => v1::OutputVerdict::Escalate,
        }
        .into(),
        redacted_output_json: o
            .redacted
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        escalations: o.escalations.clone(),
        evidence: o
            .evidence
            .iter()
            .map(|e| v1::Evidence {
                guard: e.guard.clone(),
                rule: e.rule.clone(),
                path: e.path.clone(),
                kind: e.kind.clone(),
            })
            .collect(),
        output_sha256: o.output_sha256.clone(),
    }
}

/// `None` when the wire value is unset or unknown; a redacted output that
/// is not JSON is an error (the caller must not hand anything over).
pub fn output_from_proto(o: &v1::OutputDecision) -> Result<crate::OutputDecision, InvalidEvent> {
    use crate::OutputVerdict as V;
    let verdict = match v1::OutputVerdict::try_from(o.verdict) {
        Ok(v1::OutputVerdict::Allow) => V::Allow,
        Ok(v1::OutputVerdict::Redact) => V::Redact,
        Ok(v1::OutputVerdict::Escalate) => V::Escalate,
        // Unknown or unset verdicts are treated as the strictest.
        _ => V::Block,
    };
    let redacted = if o.redacted_output_json.is_empty() {
        None
    } else {
        Some(json("redacted_output_json", &o.redacted_output_json)?)
    };
    Ok(crate::OutputDecision {
        verdict,
        redacted,
        escalations: o.escalations.clone(),
        evidence: o
            .evidence
            .iter()
            .map(|e| crate::Evidence {
                guard: e.guard.clone(),
                rule: e.rule.clone(),
                path: e.path.clone(),
                kind: e.kind.clone(),
            })
            .collect(),
        output_sha256: o.output_sha256.clone(),
    })
}

pub fn revocations_to_proto(r: &crate::Revocations) -> v1::Revocations {
    v1::Revocations {
        agents: r.agents.iter().cloned().collect(),
        sessions: r.sessions.iter().cloned().collect(),
    }
}

pub fn revocations_from_proto(r: &v1::Revocations) -> crate::Revocations {
    crate::Revocations {
        agents: r.agents.iter().cloned().collect(),
        sessions: r.sessions.iter().cloned().collect(),
    }
}

pub fn bundle_to_proto(b: &Bundle) -> v1::PolicyBundle {
    v1::PolicyBundle {
        hash: b.hash().to_owned(),
        files: b
            .files()
            .iter()
            .map(|f| v1::BundleFile {
                path: f.path.clone(),
                content: f.content.clone(),
            })
            .collect(),
    }
}

pub fn bundle_files_from_proto(b: &v1::PolicyBundle) -> Vec<BundleFile> {
    b.files
        .iter()
        .map(|f| BundleFile {
            path: f.path.clone(),
            content: f.content.clone(),
        })
        .collect()
}

/// An explanation on the wire, with its plain-language text.
pub fn explanation_to_proto(
    bundle: &Bundle,
    event: &crate::Event,
    decided_by: v1::DecidedBy,
) -> v1::Explanation {
    let x = bundle.explain(event);
    let text = crate::explain_text(bundle, event, &x);
    v1::Explanation {
        decision: Some(decision_to_proto(
            &x.decision,
            "",
            &event.event_id,
            decided_by,
            0,
        )),
        action: x.action.unwrap_or_default(),
        considered: x.considered,
        matched_permits: x.matched_permits,
        matched_forbids: x.matched_forbids,
        matched_asks: x.matched_asks,
        errored: x
            .errored
            .into_iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect(),
        text,
    }
}
