//! Explanations in words a policy author understands.

use crate::bundle::Bundle;
use crate::decision::ReasonCode;
use crate::engine::Explanation;
use crate::event::Event;

/// A plain-language account of an explanation, one sentence per line.
pub fn explain_text(bundle: &Bundle, event: &Event, x: &Explanation) -> String {
    let mut lines = Vec::new();
    let d = &x.decision;
    match &x.action {
        Some(a) => lines.push(format!(
            "Event `{}` by agent `{}` is action `{a}` on `{}`.",
            event.kind.name(),
            event.agent_id,
            event.kind.resource_label(&event.session_id)
        )),
        None => lines.push(format!(
            "Event kind `{}` is not one Gatehouse knows.",
            event.kind.name()
        )),
    }
    if x.considered.is_empty() {
        lines.push("No policy was evaluated.".into());
    } else {
        lines.push(format!(
            "{} of the bundle's {} policies apply to this action and resource: {}.",
            x.considered.len(),
            bundle.policy_count(),
            x.considered.join(", ")
        ));
    }
    let describe = |ids: &[String]| {
        ids.iter()
            .map(|id| {
                let file = bundle.policy_file(id).unwrap_or("?");
                match bundle.policy_reason(id) {
                    Some(r) => format!("`{id}` ({file}: \"{r}\")"),
                    None => format!("`{id}` ({file})"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !x.matched_permits.is_empty() {
        lines.push(format!(
            "Permits that matched: {}.",
            describe(&x.matched_permits)
        ));
    }
    if !x.matched_forbids.is_empty() {
        lines.push(format!(
            "Forbids that matched: {}.",
            describe(&x.matched_forbids)
        ));
    }
    if !x.matched_asks.is_empty() {
        lines.push(format!(
            "Ask forbids that matched: {}.",
            describe(&x.matched_asks)
        ));
    }
    for (id, e) in &x.errored {
        lines.push(format!("Policy `{id}` failed to evaluate: {e}."));
    }
    let why = match d.reason_code {
        ReasonCode::PolicyForbid => "an un-annotated forbid matched, and a forbid always wins",
        ReasonCode::PolicyAsk => "only @ask forbids matched, so a human must approve",
        ReasonCode::PolicyPermit => "a permit matched and no forbid did",
        ReasonCode::NoPermit => "no permit matched, and Gatehouse denies by default",
        ReasonCode::PolicyError => "a policy failed to evaluate, and an error never allows",
        _ => "of the rule named by the reason code",
    };
    lines.push(format!(
        "Decision: {} ({}), because {why}. Determined by: {}.",
        d.verdict.as_str().to_uppercase(),
        d.reason_code,
        if d.policies.is_empty() {
            "no policy".to_owned()
        } else {
            d.policies.join(", ")
        }
    ));
    if !d.reason.is_empty() {
        lines.push(format!("Reason: {}", d.reason));
    }
    lines.join("\n")
}
