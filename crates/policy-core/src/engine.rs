//! Evaluation: one event against one bundle, with Gatehouse's ask and
//! error semantics on top of Cedar.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityUid, PolicyId,
    Request, RestrictedExpression,
};

use crate::bundle::{Bundle, FieldType, Slice, StoredEntity, uid};
use crate::decision::{Decision, ReasonCode, Verdict};
use crate::event::{Event, EventKind, Usage};
use crate::tools::{Target, targets_with, tool_groups};

/// Metadata keys that clients may not set: Gatehouse derives them.
pub const RESERVED_METADATA_KEYS: [&str; 1] = ["agent_id"];

/// Most metadata entries an event (or hello) may carry.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Most bytes of metadata keys and values, in total.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Why metadata is refused, if it is.
pub fn metadata_problem<'a>(
    mut entries: impl Iterator<Item = (&'a String, &'a String)>,
) -> Option<(ReasonCode, String)> {
    let mut count = 0usize;
    let mut bytes = 0usize;
    let found = entries.try_for_each(|(k, v)| {
        if RESERVED_METADATA_KEYS.contains(&k.as_str()) {
            return Err((
                ReasonCode::ReservedMetadataKey,
                format!("metadata key `{k}` is reserved: Gatehouse takes it from the principal"),
            ));
        }
        count += 1;
        bytes += k.len() + v.len();
        Ok(())
    });
    if let Err(problem) = found {
        return Some(problem);
    }
    (count > MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES).then(|| {
        (
            ReasonCode::MetadataTooLarge,
            format!(
                "metadata has {count} entries and {bytes} bytes; the limits are {MAX_METADATA_ENTRIES} and {MAX_METADATA_BYTES}"
            ),
        )
    })
}

/// A full account of one evaluation, for `explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The Cedar action, or `None` when the event never reached Cedar.
    pub action: Option<String>,
    /// Every policy handed to Cedar for this event (the index's slice for
    /// its action and resource), in id order.
    pub considered: Vec<String>,
    /// Permits whose conditions held (even when a forbid won).
    pub matched_permits: Vec<String>,
    /// Un-annotated forbids whose conditions held.
    pub matched_forbids: Vec<String>,
    /// `@ask` forbids whose conditions held.
    pub matched_asks: Vec<String>,
    /// Policies that failed to evaluate, with the error.
    pub errored: Vec<(String, String)>,
    pub decision: Decision,
}

/// What happened before Cedar answered: either a decision already, or the
/// request and the policies to hand it.
#[expect(
    clippy::large_enum_variant,
    reason = "built and consumed once per decision; boxing would allocate on the hot path"
)]
enum Prepared<'a> {
    Decided(Box<Decision>),
    Ready {
        slice: Slice<'a>,
        req: Request,
        entities: Arc<Entities>,
    },
}

/// Every top-level field `Bundle::context` can build.
const CONTEXT_FIELDS: [&str; 21] = [
    "session_id",
    "runtime",
    "metadata",
    "matchers",
    "tool_use_id",
    "output",
    "usage",
    "prompt",
    "query",
    "trigger",
    "task_id",
    "description",
    "status",
    "source",
    "reason",
    "cwd",
    "command",
    "file_path",
    "url",
    "shell",
    "input",
];

/// Which top-level `context` fields a bundle's policies can read. Cedar has
/// no computed attribute names: `context.f`, `context["f"]` and `context has
/// f` all spell `f` in the source, unless a string escape spells it, so any
/// backslash in a policy file makes every field count. A comment or a string
/// that contains a field's name only builds it needlessly, never leaves it
/// out where it matters.
#[derive(Debug, Clone)]
pub(crate) struct ContextReads {
    fields: HashSet<&'static str>,
}

impl ContextReads {
    pub(crate) fn from_sources(sources: &[&str]) -> Self {
        let escaped = sources.iter().any(|s| s.contains('\\'));
        let fields = CONTEXT_FIELDS
            .into_iter()
            .filter(|f| escaped || sources.iter().any(|s| s.contains(f)))
            .collect();
        Self { fields }
    }

    fn reads(&self, field: &str) -> bool {
        self.fields.contains(field)
    }
}

/// What a request's entity set is built from: the principal, the resource
/// and its synthesized attributes (every one a function of the event's
/// resource fields), and the resource's built-in groups. Two events with
/// the same key get the same set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EntityKey {
    principal: EntityUid,
    resource: EntityUid,
    /// The strings the synthesized attributes were made of, in the fixed
    /// order `Bundle::resource` makes them.
    attrs: Vec<String>,
    groups: Vec<EntityUid>,
}

impl Bundle {
    /// Decides one event with Cedar and Gatehouse's ask and error
    /// semantics (no revocations, grants or limits: see `decide`). Never
    /// panics and never returns an error: every failure is a DENY with a
    /// reason code.
    pub fn evaluate(&self, event: &Event) -> Decision {
        if let EventKind::PostToolUse { output, .. } = &event.kind {
            return self.post_pipeline(event, output);
        }
        self.cedar(event, &[])
    }

    /// Cedar alone, with `findings` exposed as `context.output.findings`.
    /// A tool call that touches several files (or URLs) is decided once per
    /// file: any DENY denies the call, else any ASK asks.
    pub(crate) fn cedar(&self, event: &Event, findings: &[String]) -> Decision {
        self.cedar_over(event, findings, None)
    }

    /// `cedar`, over `all` instead of the index's slice when given (the
    /// index's property test compares the two).
    fn cedar_over(
        &self,
        event: &Event,
        findings: &[String],
        all: Option<&cedar_policy::PolicySet>,
    ) -> Decision {
        let targets = match event_targets(event, self.context_reads.reads("shell")) {
            Ok(t) => t,
            Err(why) => return Decision::deny(ReasonCode::MalformedEvent, why, &self.hash),
        };
        let decide = |target: &Target| match self.prepare(event, findings, target, all) {
            Prepared::Decided(d) => *d,
            Prepared::Ready {
                slice,
                req,
                entities,
            } => self.interpret(&Authorizer::new().is_authorized(&req, &slice, &entities)),
        };
        most_severe(&targets, decide, |d| d.verdict).unwrap_or_else(|| {
            Decision::deny(ReasonCode::PolicyError, "nothing to decide", &self.hash)
        })
    }

    fn prepare<'a>(
        &'a self,
        event: &Event,
        findings: &[String],
        target: &Target,
        all: Option<&'a cedar_policy::PolicySet>,
    ) -> Prepared<'a> {
        let deny = |code, reason: String| {
            Prepared::Decided(Box::new(Decision::deny(code, reason, &self.hash)))
        };
        let Some(action) = event.kind.action() else {
            return deny(
                ReasonCode::UnknownEvent,
                "unknown event kind: this server does not know how to decide it".into(),
            );
        };
        if event.agent_id.trim().is_empty() {
            return deny(
                ReasonCode::MissingPrincipal,
                "the event names no agent".into(),
            );
        }
        if let Some((code, why)) = metadata_problem(event.metadata.iter()) {
            return deny(code, why);
        }
        let Some(index) = self.by_action.get(action) else {
            return deny(
                ReasonCode::UnknownEvent,
                format!("no such action `{action}`"),
            );
        };
        match self.request(event, action, findings, target) {
            Ok((req, entities)) => {
                let principal = req.principal();
                let ancestors = principal
                    .and_then(|p| self.entities.get(p))
                    .map(|e| &e.ancestors);
                let slice = match all {
                    Some(all) => Slice::Static(all),
                    None => index.slice(principal, ancestors, req.resource()),
                };
                Prepared::Ready {
                    slice,
                    req,
                    entities,
                }
            }
            Err(reason) => deny(ReasonCode::MalformedEvent, reason),
        }
    }

    /// Decides one event and reports what was considered and what matched.
    pub fn explain(&self, event: &Event) -> Explanation {
        let targets = match event_targets(event, self.context_reads.reads("shell")) {
            Ok(t) => t,
            Err(why) => {
                let mut out = self.explain_target(event, &Target::default());
                out.decision = Decision::deny(ReasonCode::MalformedEvent, why, &self.hash);
                return out;
            }
        };
        // The target that decides the call, as in `cedar`.
        most_severe(
            &targets,
            |t| self.explain_target(event, t),
            |e| e.decision.verdict,
        )
        .unwrap_or_else(|| self.explain_target(event, &Target::default()))
    }

    fn explain_target(&self, event: &Event, target: &Target) -> Explanation {
        let mut out = Explanation {
            action: event.kind.action().map(str::to_owned),
            considered: Vec::new(),
            matched_permits: Vec::new(),
            matched_forbids: Vec::new(),
            matched_asks: Vec::new(),
            errored: Vec::new(),
            decision: Decision::deny(ReasonCode::PolicyError, "", &self.hash),
        };
        let (slice, req, entities) = match self.prepare(event, &[], target, None) {
            Prepared::Decided(d) => {
                out.decision = *d;
                return out;
            }
            Prepared::Ready {
                slice,
                req,
                entities,
            } => (slice, req, entities),
        };
        out.considered = slice.policies().map(|p| p.id().to_string()).collect();
        out.considered.sort();
        let response = Authorizer::new().is_authorized(&req, &slice, &entities);
        out.decision = self.interpret(&response);
        // Each policy alone: which held, which errored (Cedar reports only
        // the policies of the winning effect).
        for p in slice.policies() {
            let mut one = cedar_policy::PolicySet::new();
            if one.add(p.clone()).is_err() {
                continue;
            }
            let r = Authorizer::new().is_authorized(&req, &one, &entities);
            let id = p.id().to_string();
            if let Some(e) = r.diagnostics().errors().next() {
                out.errored.push((id, e.to_string()));
                continue;
            }
            if r.diagnostics().reason().next().is_none() {
                continue;
            }
            match self.policies.get(p.id()) {
                Some(i) if i.effect == Effect::Permit => out.matched_permits.push(id),
                Some(i) if i.ask => out.matched_asks.push(id),
                _ => out.matched_forbids.push(id),
            }
        }
        for v in [
            &mut out.matched_permits,
            &mut out.matched_forbids,
            &mut out.matched_asks,
        ] {
            v.sort();
        }
        out.errored.sort();
        out
    }

    /// The `@reason` of a policy, if it has one.
    pub fn policy_reason(&self, id: &str) -> Option<&str> {
        self.policies
            .get(&PolicyId::new(id))
            .and_then(|i| i.reason.as_deref())
    }

    /// The file a policy comes from.
    pub fn policy_file(&self, id: &str) -> Option<&str> {
        self.policies
            .get(&PolicyId::new(id))
            .map(|i| i.file.as_str())
    }

    fn interpret(&self, response: &cedar_policy::Response) -> Decision {
        let diags = response.diagnostics();
        let mut errors: Vec<(String, String)> = diags
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => {
                    (pe.policy_id().to_string(), e.to_string())
                }
            })
            .collect();
        if !errors.is_empty() {
            errors.sort();
            let ids: Vec<String> = errors.iter().map(|(id, _)| id.clone()).collect();
            return Decision {
                verdict: Verdict::Deny,
                reason: format!(
                    "policy {} failed to evaluate, so the event is denied",
                    ids.join(", ")
                ),
                reason_code: ReasonCode::PolicyError,
                policies: ids,
                errors: errors.into_iter().map(|(_, msg)| msg).collect(),
                bundle_hash: self.hash.clone(),
                retry_after_ms: None,
                approval_id: None,
                output: None,
            };
        }
        let mut reasons: Vec<&PolicyId> = diags.reason().collect();
        reasons.sort_by_key(|id| id.to_string());
        let decided = |verdict, code, ids: Vec<&PolicyId>, fallback: &str| {
            let reason = ids
                .iter()
                .find_map(|id| self.policies.get(*id).and_then(|i| i.reason.clone()))
                .unwrap_or_else(|| {
                    format!(
                        "{fallback} {}",
                        ids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
            Decision {
                verdict,
                reason,
                reason_code: code,
                policies: ids.iter().map(ToString::to_string).collect(),
                errors: Vec::new(),
                bundle_hash: self.hash.clone(),
                retry_after_ms: None,
                approval_id: None,
                output: None,
            }
        };
        match response.decision() {
            CedarDecision::Allow => decided(
                Verdict::Allow,
                ReasonCode::PolicyPermit,
                reasons,
                "permitted by",
            ),
            CedarDecision::Deny if reasons.is_empty() => Decision::deny(
                ReasonCode::NoPermit,
                "no policy permits this event",
                &self.hash,
            ),
            CedarDecision::Deny => {
                let hard: Vec<&PolicyId> = reasons
                    .iter()
                    .copied()
                    .filter(|id| {
                        self.policies
                            .get(*id)
                            .is_none_or(|i| i.effect == Effect::Forbid && !i.ask)
                    })
                    .collect();
                if hard.is_empty() {
                    decided(
                        Verdict::Ask,
                        ReasonCode::PolicyAsk,
                        reasons,
                        "approval required by",
                    )
                } else {
                    decided(
                        Verdict::Deny,
                        ReasonCode::PolicyForbid,
                        hard,
                        "forbidden by",
                    )
                }
            }
        }
    }

    fn request(
        &self,
        event: &Event,
        action: &str,
        findings: &[String],
        target: &Target,
    ) -> Result<(Request, Arc<Entities>), String> {
        let t = &self.types;
        let principal = uid(&t.agent, &event.agent_id);
        let action_uid = uid(&t.action, action);
        let (resource, synthesized, raw) = self.resource(event);
        let context = self
            .context(event, findings, target)
            .map_err(|e| format!("context: {e}"))?;

        let groups: Vec<EntityUid> = match &event.kind {
            // Group membership only costs when the bundle can ask about it.
            EventKind::PreToolUse { tool_name, .. } | EventKind::PostToolUse { tool_name, .. }
                if self.uses_tool_groups =>
            {
                tool_groups(tool_name)
                    .into_iter()
                    .map(|g| uid(&t.tool_group, g.name()))
                    .collect()
            }
            _ => Vec::new(),
        };
        let key = EntityKey {
            principal: principal.clone(),
            resource: resource.clone(),
            attrs: raw,
            groups: groups.clone(),
        };
        let cached = self
            .entity_sets
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let entities = match cached {
            Some(hit) => hit,
            None => {
                let mut wanted: Vec<Entity> = Vec::with_capacity(4);
                let mut included: HashSet<EntityUid> = HashSet::new();
                self.push_entity(&principal, HashMap::new(), &[], &mut wanted, &mut included)?;
                self.push_entity(&resource, synthesized, &groups, &mut wanted, &mut included)?;
                let built = Arc::new(
                    Entities::from_entities(wanted, None).map_err(|e| format!("entities: {e}"))?,
                );
                if let Ok(mut m) = self.entity_sets.write()
                    && m.len() < crate::bundle::ENTITY_SETS_CAP
                {
                    m.insert(key, Arc::clone(&built));
                }
                built
            }
        };
        let req = Request::new(principal, action_uid, resource, context, None)
            .map_err(|e| format!("request: {e}"))?;
        Ok((req, entities))
    }

    /// Adds `uid` (bundle attributes merged over `extra`) and the bundle
    /// entities of its ancestors, each once.
    /// `builtin_parents` are built-in groups `uid` is in besides what
    /// `entities.json` says (a tool's tool groups), with their own
    /// ancestors from the bundle.
    fn push_entity(
        &self,
        uid: &EntityUid,
        extra: HashMap<String, RestrictedExpression>,
        builtin_parents: &[EntityUid],
        out: &mut Vec<Entity>,
        included: &mut HashSet<EntityUid>,
    ) -> Result<(), String> {
        if !included.insert(uid.clone()) {
            return Ok(());
        }
        let stored = self.entities.get(uid);
        let mut attrs = extra;
        let mut ancestors = HashSet::new();
        if let Some(StoredEntity {
            attrs: a,
            ancestors: anc,
        }) = stored
        {
            for (k, v) in a {
                attrs.insert(k.clone(), v.clone());
            }
            ancestors.clone_from(anc);
        }
        for parent in builtin_parents {
            ancestors.insert(parent.clone());
            if let Some(s) = self.entities.get(parent) {
                ancestors.extend(s.ancestors.iter().cloned());
            }
        }
        for anc in &ancestors {
            if let Some(s) = self.entities.get(anc)
                && included.insert(anc.clone())
            {
                let e = Entity::new(anc.clone(), s.attrs.clone(), s.ancestors.clone())
                    .map_err(|e| e.to_string())?;
                out.push(e);
            }
        }
        out.push(Entity::new(uid.clone(), attrs, ancestors).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// The event's resource, its synthesized attributes, and every string
    /// those attributes were made of (in a fixed order: with the uid they
    /// determine the attributes, for [`EntityKey`]).
    fn resource(
        &self,
        event: &Event,
    ) -> (
        EntityUid,
        HashMap<String, RestrictedExpression>,
        Vec<String>,
    ) {
        let t = &self.types;
        let raw = std::cell::RefCell::new(Vec::new());
        let s = |v: &str| {
            raw.borrow_mut().push(v.to_owned());
            RestrictedExpression::new_string(v.to_owned())
        };
        let mut attrs = HashMap::new();
        let uid = match &event.kind {
            EventKind::PreToolUse { tool_name, .. } | EventKind::PostToolUse { tool_name, .. } => {
                attrs.insert("name".into(), s(tool_name));
                let mcp = parse_mcp_name(tool_name);
                attrs.insert(
                    "is_mcp".into(),
                    RestrictedExpression::new_bool(crate::tools::is_mcp_tool(tool_name)),
                );
                if let Some((server, tool)) = mcp {
                    attrs.insert("server".into(), s(server));
                    attrs.insert("mcp_tool".into(), s(tool));
                } else if let Some(tool) = tool_name
                    .get(4..)
                    .filter(|_| crate::tools::is_mcp_tool(tool_name))
                {
                    // Cursor's `MCP:<tool>`: the server is not known.
                    attrs.insert("mcp_tool".into(), s(tool));
                }
                uid(&t.tool, tool_name)
            }
            EventKind::ModelRequest {
                model, provider, ..
            }
            | EventKind::ModelResponse {
                model, provider, ..
            } => {
                attrs.insert("name".into(), s(model));
                attrs.insert("provider".into(), s(provider));
                uid(&t.model, model)
            }
            EventKind::MemorySearch { store, .. }
            | EventKind::MemoryIngest { store, .. }
            | EventKind::MemoryCompaction { store, .. } => {
                attrs.insert("store".into(), s(store));
                uid(&t.memory, store)
            }
            EventKind::Install {
                name,
                source,
                version,
            } => {
                attrs.insert("name".into(), s(name));
                attrs.insert("source".into(), s(source));
                attrs.insert("version".into(), s(version));
                uid(&t.package, &format!("{source}:{name}"))
            }
            EventKind::UserPrompt { .. }
            | EventKind::BackgroundTaskStart { .. }
            | EventKind::BackgroundTaskFinish { .. }
            | EventKind::SessionStart { .. }
            | EventKind::SessionEnd { .. }
            | EventKind::Unknown => uid(&t.session, &event.session_id),
        };
        (uid, attrs, raw.into_inner())
    }

    fn context(
        &self,
        event: &Event,
        findings: &[String],
        target: &Target,
    ) -> Result<Context, String> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let long = |v: u64| RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX));
        let mut pairs: Vec<(String, RestrictedExpression)> = vec![
            ("session_id".into(), s(&event.session_id)),
            ("runtime".into(), s(&event.runtime)),
        ];
        if self.context_reads.reads("metadata") {
            let metadata = serde_json::Value::Object(
                event
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            );
            pairs.push(("metadata".into(), record(&self.metadata_fields, &metadata)?));
        }
        if self.context_reads.reads("matchers") {
            let matchers = self.config.matchers.iter().map(|m| {
                let value = if m.field == "agent_id" {
                    Some(event.agent_id.as_str())
                } else {
                    event.metadata.get(&m.field).map(String::as_str)
                };
                (
                    m.name.clone(),
                    RestrictedExpression::new_bool(m.matches(value)),
                )
            });
            pairs.push((
                "matchers".into(),
                RestrictedExpression::new_record(matchers).map_err(|e| e.to_string())?,
            ));
        }
        let empty = serde_json::Value::Null;
        let mut cwd = "";
        let mut input = &empty;
        let usage_expr = |u: &Usage| {
            RestrictedExpression::new_record([
                ("input_tokens".to_owned(), long(u.input_tokens)),
                ("output_tokens".to_owned(), long(u.output_tokens)),
                ("cost_micros".to_owned(), long(u.cost_micros)),
            ])
            .map_err(|e| e.to_string())
        };
        match &event.kind {
            EventKind::PreToolUse {
                input: i,
                tool_use_id,
                cwd: c,
                ..
            } => {
                input = i;
                cwd = c;
                pairs.push(("tool_use_id".into(), s(tool_use_id)));
            }
            EventKind::PostToolUse {
                input: i,
                tool_use_id,
                cwd: c,
                output,
                is_error,
                duration_ms,
                usage,
                ..
            } => {
                input = i;
                cwd = c;
                pairs.push(("tool_use_id".into(), s(tool_use_id)));
                let size = match output {
                    serde_json::Value::String(text) => text.len(),
                    serde_json::Value::Null => 0,
                    other => other.to_string().len(),
                };
                pairs.push((
                    "output".into(),
                    RestrictedExpression::new_record([
                        ("size".to_owned(), long(size as u64)),
                        (
                            "is_error".to_owned(),
                            RestrictedExpression::new_bool(*is_error),
                        ),
                        ("duration_ms".to_owned(), long(*duration_ms)),
                        (
                            "findings".to_owned(),
                            RestrictedExpression::new_set(
                                findings
                                    .iter()
                                    .map(|f| RestrictedExpression::new_string(f.clone())),
                            ),
                        ),
                    ])
                    .map_err(|e| e.to_string())?,
                ));
                pairs.push(("usage".into(), usage_expr(usage)?));
            }
            EventKind::UserPrompt { prompt } => pairs.push(("prompt".into(), s(prompt))),
            EventKind::ModelRequest {
                estimated_input_tokens,
                ..
            } => pairs.push((
                "usage".into(),
                usage_expr(&Usage {
                    input_tokens: *estimated_input_tokens,
                    ..Usage::default()
                })?,
            )),
            EventKind::ModelResponse { usage, .. } => {
                pairs.push(("usage".into(), usage_expr(usage)?))
            }
            EventKind::MemorySearch { query, .. } => pairs.push(("query".into(), s(query))),
            EventKind::MemoryIngest { .. } | EventKind::Install { .. } | EventKind::Unknown => {}
            EventKind::MemoryCompaction { trigger, .. } => {
                pairs.push(("trigger".into(), s(trigger)));
            }
            EventKind::BackgroundTaskStart {
                task_id,
                description,
                ..
            } => {
                pairs.push(("task_id".into(), s(task_id)));
                pairs.push(("description".into(), s(description)));
            }
            EventKind::BackgroundTaskFinish { task_id, status } => {
                pairs.push(("task_id".into(), s(task_id)));
                pairs.push(("status".into(), s(status)));
            }
            EventKind::SessionStart { source } => pairs.push(("source".into(), s(source))),
            EventKind::SessionEnd { reason } => pairs.push(("reason".into(), s(reason))),
        }
        pairs.push(("cwd".into(), s(cwd)));
        for (name, value) in [
            ("command", &target.command),
            ("file_path", &target.file_path),
            ("url", &target.url),
        ] {
            if let Some(v) = value {
                pairs.push((name.into(), s(v)));
            }
        }
        if let Some(sh) = &target.shell {
            pairs.push(("shell".into(), shell_record(sh)?));
        }
        if self.context_reads.reads("input") {
            pairs.push(("input".into(), record(&self.input_fields, input)?));
        }
        debug_assert!(
            pairs
                .iter()
                .all(|(k, _)| CONTEXT_FIELDS.contains(&k.as_str()))
        );
        pairs.retain(|(k, _)| self.context_reads.reads(k));
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }
}

/// The targets a tool event is decided for (see [`crate::tools::targets`]);
/// every other event has one empty target.
fn event_targets(event: &Event, parse_shell: bool) -> Result<Vec<Target>, String> {
    match &event.kind {
        EventKind::PreToolUse {
            tool_name,
            input,
            cwd,
            ..
        }
        | EventKind::PostToolUse {
            tool_name,
            input,
            cwd,
            ..
        } => targets_with(tool_name, input, cwd, parse_shell),
        _ => Ok(vec![Target::default()]),
    }
}

/// `context.shell`.
fn shell_record(f: &crate::shell::ShellFacts) -> Result<RestrictedExpression, String> {
    let set = |items: &std::collections::BTreeSet<String>| {
        RestrictedExpression::new_set(
            items
                .iter()
                .map(|i| RestrictedExpression::new_string(i.clone())),
        )
    };
    let b = RestrictedExpression::new_bool;
    RestrictedExpression::new_record([
        ("programs".to_owned(), set(&f.programs)),
        ("flags".to_owned(), set(&f.flags)),
        ("args".to_owned(), set(&f.args)),
        ("pipes_to_interpreter".to_owned(), b(f.pipes_to_interpreter)),
        ("dynamic".to_owned(), b(f.dynamic)),
        ("parsed".to_owned(), b(f.parsed)),
        ("redirects_to".to_owned(), set(&f.redirects_to)),
        ("git_subcommands".to_owned(), set(&f.git_subcommands)),
        ("git_force_push".to_owned(), b(f.git_force_push)),
    ])
    .map_err(|e| e.to_string())
}

/// How strongly a verdict stops a call: DENY over ASK over ALLOW.
fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Ask => 1,
        Verdict::Deny => 2,
    }
}

/// Runs `run` on each target in order and keeps the first result with the
/// most severe verdict, stopping at the first DENY (nothing is stronger).
fn most_severe<T>(
    targets: &[Target],
    mut run: impl FnMut(&Target) -> T,
    verdict: impl Fn(&T) -> Verdict,
) -> Option<T> {
    let mut best: Option<T> = None;
    for target in targets {
        let r = run(target);
        let v = verdict(&r);
        if best
            .as_ref()
            .is_none_or(|b| severity(verdict(b)) < severity(v))
        {
            best = Some(r);
        }
        if v == Verdict::Deny {
            break;
        }
    }
    best
}

/// Builds a record of the declared fields whose JSON value has the declared
/// type; everything else is left out.
fn record(
    fields: &[(String, FieldType)],
    value: &serde_json::Value,
) -> Result<RestrictedExpression, String> {
    let mut out: Vec<(String, RestrictedExpression)> = Vec::new();
    if let Some(obj) = value.as_object() {
        for (name, ty) in fields {
            let Some(v) = obj.get(name) else { continue };
            let expr = match (ty, v) {
                (FieldType::String, serde_json::Value::String(s)) => {
                    RestrictedExpression::new_string(s.clone())
                }
                (FieldType::Long, serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => RestrictedExpression::new_long(i),
                    None => continue,
                },
                (FieldType::Bool, serde_json::Value::Bool(b)) => RestrictedExpression::new_bool(*b),
                (FieldType::SetOfString, serde_json::Value::Array(items)) => {
                    let strings: Option<Vec<_>> = items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(|s| RestrictedExpression::new_string(s.to_owned()))
                        })
                        .collect();
                    match strings {
                        Some(s) => RestrictedExpression::new_set(s),
                        None => continue,
                    }
                }
                _ => continue,
            };
            out.push((name.clone(), expr));
        }
    }
    RestrictedExpression::new_record(out).map_err(|e| e.to_string())
}

/// Splits `mcp__<server>__<tool>` into its server and tool.
pub fn parse_mcp_name(tool_name: &str) -> Option<(&str, &str)> {
    let rest = tool_name.strip_prefix("mcp__")?;
    let (server, tool) = rest.split_once("__")?;
    if server.is_empty() || tool.is_empty() {
        return None;
    }
    Some((server, tool))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BundleFile;

    fn bundle(files: &[(&str, &str)]) -> Bundle {
        Bundle::load(files.iter().map(|(p, c)| BundleFile {
            path: (*p).into(),
            content: (*c).into(),
        }))
        .unwrap_or_else(|e| panic!("bundle should load: {e}"))
    }

    fn bash(agent: &str, command: &str) -> Event {
        Event {
            event_id: "e1".into(),
            agent_id: agent.into(),
            session_id: "s1".into(),
            runtime: "test".into(),
            metadata: Default::default(),
            kind: EventKind::PreToolUse {
                tool_name: "Bash".into(),
                input: serde_json::json!({ "command": command, "unknown_field": {"x": 1} }),
                tool_use_id: "t1".into(),
                cwd: "/repo".into(),
            },
        }
    }

    const BASE: &str = r#"
@id("allow-all-tools")
permit(principal, action == Gatehouse::Action::"call_tool", resource);

@id("no-rm") @reason("rm -rf is never allowed")
forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Bash")
when { context.input has command && context.input.command like "rm -rf *" };

@id("ask-push") @ask
forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Bash")
when { context.input has command && context.input.command like "git push*" };

@id("no-force-push")
forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Bash")
when { context.input has command && context.input.command like "git push --force*" };
"#;

    #[test]
    fn permit_forbid_ask_and_ask_overridden_by_deny() {
        let b = bundle(&[("base.cedar", BASE)]);
        let d = b.evaluate(&bash("alice", "ls"));
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Allow, ReasonCode::PolicyPermit)
        );
        assert_eq!(d.policies, vec!["allow-all-tools"]);

        let d = b.evaluate(&bash("alice", "rm -rf /"));
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::PolicyForbid)
        );
        assert_eq!(d.policies, vec!["no-rm"]);
        assert_eq!(d.reason, "rm -rf is never allowed");

        let d = b.evaluate(&bash("alice", "git push origin"));
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Ask, ReasonCode::PolicyAsk)
        );
        assert_eq!(d.policies, vec!["ask-push"]);

        let d = b.evaluate(&bash("alice", "git push --force origin"));
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::PolicyForbid)
        );
        assert_eq!(d.policies, vec!["no-force-push"]);
    }

    #[test]
    fn default_deny_unknown_kind_and_missing_principal() {
        let b = bundle(&[("base.cedar", BASE)]);
        let mut e = bash("alice", "ls");
        e.kind = EventKind::UserPrompt {
            prompt: "hi".into(),
        };
        assert_eq!(b.evaluate(&e).reason_code, ReasonCode::NoPermit);
        e.kind = EventKind::Unknown;
        let d = b.evaluate(&e);
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::UnknownEvent)
        );
        for blank in ["", "  "] {
            let d = b.evaluate(&bash(blank, "ls"));
            assert_eq!(
                (d.verdict, d.reason_code),
                (Verdict::Deny, ReasonCode::MissingPrincipal)
            );
        }
        let mut e = bash("alice", "ls");
        e.metadata.insert("agent_id".into(), "root".into());
        assert_eq!(b.evaluate(&e).reason_code, ReasonCode::ReservedMetadataKey);
    }

    #[test]
    fn erroring_forbid_denies_and_is_named() {
        // Integer overflow passes validation and errors at evaluation time,
        // so the forbid errors instead of matching.
        let policies = r#"
@id("allow") permit(principal, action, resource);
@id("bad-forbid")
forbid(principal, action == Gatehouse::Action::"call_tool", resource)
when { context.input has timeout && context.input.timeout + 9223372036854775807 > 0 };
"#;
        let b = bundle(&[("p.cedar", policies)]);
        let mut e = bash("alice", "ls");
        e.kind = EventKind::PreToolUse {
            tool_name: "Bash".into(),
            input: serde_json::json!({ "command": "ls", "timeout": 5 }),
            tool_use_id: String::new(),
            cwd: String::new(),
        };
        let d = b.evaluate(&e);
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::PolicyError)
        );
        assert_eq!(d.policies, vec!["bad-forbid"]);
        assert!(!d.errors.is_empty());
    }

    /// A context field is built for every policy that can name it: by
    /// `has`, by index, or through a string escape (which makes every
    /// field count). A bundle that names none of them still decides on the
    /// fields it does name.
    #[test]
    fn context_fields_are_built_for_every_spelling_that_reads_them() {
        let rm = bash("alice", "rm -rf /");
        for (policy, expected) in [
            (
                r#"forbid(principal, action, resource) when { context has "comm\u{61}nd" && context["comm\u{61}nd"] like "rm *" };"#,
                Verdict::Deny,
            ),
            (
                r#"forbid(principal, action, resource) when { context has input && context.input has command };"#,
                Verdict::Deny,
            ),
            (
                r#"forbid(principal, action, resource) unless { context has tool_use_id && context has cwd };"#,
                Verdict::Allow,
            ),
            (
                r#"forbid(principal, action, resource) when { context has metadata && context.metadata has channel_id };"#,
                Verdict::Allow,
            ),
        ] {
            let text =
                format!("@id(\"all\") permit(principal, action, resource);\n@id(\"f\") {policy}");
            let b = bundle(&[("p.cedar", text.as_str())]);
            let d = b.evaluate(&rm);
            assert_eq!(d.verdict, expected, "{policy}: {d:?}");
            assert!(d.errors.is_empty(), "{policy}: {:?}", d.errors);
        }
    }

    /// The entity sets a bundle keeps between requests never change a
    /// decision: events that differ only in what a synthesized attribute
    /// is made of (a package's version, a model's provider, an MCP server)
    /// or in the principal's groups are decided on a warm bundle, in two
    /// orders, exactly as on a fresh bundle each.
    #[test]
    fn kept_entity_sets_decide_as_fresh_ones() {
        let files = [
            (
                "p.cedar",
                r#"
@id("leads-anything") permit(principal in Gatehouse::Group::"leads", action, resource);
@id("pinned") permit(principal, action == Gatehouse::Action::"install", resource)
when { resource.version == "1.0.0" };
@id("openai-only") permit(principal, action == Gatehouse::Action::"request_model", resource)
when { resource.provider == "openai" };
@id("github-mcp") permit(principal, action == Gatehouse::Action::"call_tool", resource)
when { resource has server && resource.server == "github" };
@id("no-rm") forbid(principal, action, resource) when { context has command && context.command like "rm *" };
"#,
            ),
            (
                "entities.json",
                r#"[
 {"uid":{"type":"Gatehouse::Agent","id":"alice"},"attrs":{},"parents":[{"type":"Gatehouse::Group","id":"leads"}]},
 {"uid":{"type":"Gatehouse::Group","id":"leads"},"attrs":{},"parents":[]}
]"#,
            ),
        ];
        let tool = |agent: &str, name: &str, command: &str| {
            let mut e = bash(agent, command);
            if let EventKind::PreToolUse { tool_name, .. } = &mut e.kind {
                *tool_name = name.into();
            }
            e
        };
        let with_kind = |agent: &str, kind: EventKind| Event {
            kind,
            ..bash(agent, "")
        };
        let mut events = Vec::new();
        for agent in ["alice", "bob"] {
            for version in ["1.0.0", "2.0.0"] {
                events.push(with_kind(
                    agent,
                    EventKind::Install {
                        name: "left-pad".into(),
                        source: "npm".into(),
                        version: version.into(),
                    },
                ));
            }
            for provider in ["openai", "other"] {
                events.push(with_kind(
                    agent,
                    EventKind::ModelRequest {
                        model: "m1".into(),
                        provider: provider.into(),
                        estimated_input_tokens: 10,
                    },
                ));
            }
            for name in ["mcp__github__pr", "mcp__gitlab__pr", "Bash"] {
                events.push(tool(agent, name, "ls"));
                events.push(tool(agent, name, "rm -rf /"));
            }
        }
        let fresh: Vec<Decision> = events.iter().map(|e| bundle(&files).evaluate(e)).collect();
        let warm = bundle(&files);
        for order in [false, true] {
            let mut idx: Vec<usize> = (0..events.len()).collect();
            if order {
                idx.reverse();
            }
            for i in idx {
                let d = warm.evaluate(&events[i]);
                assert_eq!(
                    (d.verdict, &d.policies),
                    (fresh[i].verdict, &fresh[i].policies),
                    "event {i}: {:?}",
                    events[i].kind
                );
            }
        }
        // Both verdicts occur, so the comparison can tell them apart.
        assert!(fresh.iter().any(|d| d.verdict == Verdict::Allow));
        assert!(fresh.iter().any(|d| d.verdict == Verdict::Deny));
    }

    #[test]
    fn groups_mcp_attributes_and_entities() {
        let policies = r#"
@id("admins-anything") permit(principal in Gatehouse::Group::"admins", action, resource);
@id("github-mcp")
permit(principal, action == Gatehouse::Action::"call_tool", resource)
when { resource.is_mcp && resource has server && resource.server == "github" };
"#;
        let entities = r#"[
 {"uid":{"type":"Gatehouse::Agent","id":"alice"},"attrs":{},"parents":[{"type":"Gatehouse::Group","id":"leads"}]},
 {"uid":{"type":"Gatehouse::Group","id":"leads"},"attrs":{},"parents":[{"type":"Gatehouse::Group","id":"admins"}]},
 {"uid":{"type":"Gatehouse::Group","id":"admins"},"attrs":{},"parents":[]}
]"#;
        let b = bundle(&[("p.cedar", policies), ("entities.json", entities)]);
        assert_eq!(b.evaluate(&bash("alice", "ls")).verdict, Verdict::Allow);
        assert_eq!(b.evaluate(&bash("bob", "ls")).verdict, Verdict::Deny);
        let mut e = bash("bob", "");
        e.kind = EventKind::PreToolUse {
            tool_name: "mcp__github__create_issue".into(),
            input: serde_json::json!({}),
            tool_use_id: String::new(),
            cwd: String::new(),
        };
        let d = b.evaluate(&e);
        assert_eq!(
            (d.verdict, d.policies),
            (Verdict::Allow, vec!["github-mcp".to_owned()])
        );
    }

    #[test]
    fn slicing_by_action_gives_the_same_decision_as_the_whole_set() {
        let b = bundle(&[("base.cedar", BASE)]);
        for (tool, cmd) in [
            ("Bash", "ls"),
            ("Bash", "rm -rf /"),
            ("Bash", "git push"),
            ("Bash", "git push --force"),
            ("Read", "git push"),
            ("Edit", "rm -rf /"),
        ] {
            let mut e = bash("alice", cmd);
            if let EventKind::PreToolUse { tool_name, .. } = &mut e.kind {
                *tool_name = tool.into();
            }
            let (req, entities) = b
                .request(&e, "call_tool", &[], &Target::default())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut all = cedar_policy::PolicySet::new();
            let sets = b
                .by_action
                .values()
                .flat_map(|i| std::iter::once(&i.general).chain(i.by_resource.values()));
            for set in sets {
                for p in set.policies() {
                    if all.policy(p.id()).is_none() {
                        all.add(p.clone()).unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }
            let whole = b.interpret(&Authorizer::new().is_authorized(&req, &all, &entities));
            assert_eq!(whole, b.evaluate(&e), "command {cmd}");
        }
    }

    fn tool(name: &str, input: serde_json::Value, cwd: &str) -> Event {
        let mut e = bash("alice", "");
        e.kind = EventKind::PreToolUse {
            tool_name: name.into(),
            input,
            tool_use_id: String::new(),
            cwd: cwd.into(),
        };
        e
    }

    #[test]
    fn tool_groups_and_normalised_context_govern_every_agent() {
        let policies = r#"
@id("allow") permit(principal, action, resource);
@id("shell-rm")
forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"shell")
when { context has command && context.command like "*rm -rf*" };
@id("etc-writes")
forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"file_write")
when { context has file_path && context.file_path like "/etc/*" };
@id("risky")
forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"risky");
"#;
        // entities.json still adds groups, and a built-in group may sit
        // inside a bundle's own group.
        let entities = r#"[
 {"uid":{"type":"Gatehouse::ToolGroup","id":"web"},"attrs":{},"parents":[{"type":"Gatehouse::ToolGroup","id":"risky"}]},
 {"uid":{"type":"Gatehouse::ToolGroup","id":"risky"},"attrs":{},"parents":[]}
]"#;
        let b = bundle(&[("p.cedar", policies), ("entities.json", entities)]);
        let verdict = |e: &Event| {
            let d = b.evaluate(e);
            (d.verdict, d.policies.join(","))
        };
        for shell in [
            "Bash",
            "run_shell_command",
            "Shell",
            "bash",
            "execute_command",
        ] {
            let e = tool(shell, serde_json::json!({"command": "rm -rf /"}), "/r");
            assert_eq!(verdict(&e), (Verdict::Deny, "shell-rm".into()), "{shell}");
        }
        let ok = tool(
            "run_shell_command",
            serde_json::json!({"command": "ls"}),
            "/r",
        );
        assert_eq!(verdict(&ok).0, Verdict::Allow);
        let write = tool(
            "write_file",
            serde_json::json!({"file_path": "../etc/x"}),
            "/r",
        );
        assert_eq!(verdict(&write), (Verdict::Deny, "etc-writes".into()));
        let fetch = tool(
            "WebFetch",
            serde_json::json!({"url": "https://e.com"}),
            "/r",
        );
        assert_eq!(verdict(&fetch), (Verdict::Deny, "risky".into()));
        // A read of the same path is not a write.
        let read = tool("Read", serde_json::json!({"file_path": "/etc/x"}), "/r");
        assert_eq!(verdict(&read).0, Verdict::Allow);
        // Explain agrees with the decision on a multi-file call.
        let patch = "*** Begin Patch\n*** Update File: a\n*** Delete File: /etc/b\n*** End Patch";
        let e = tool("apply_patch", serde_json::json!({"command": patch}), "/r");
        assert_eq!(verdict(&e), (Verdict::Deny, "etc-writes".into()));
        assert_eq!(b.explain(&e).decision, b.evaluate(&e));
        assert_eq!(b.explain(&e).matched_forbids, vec!["etc-writes"]);
    }

    #[test]
    fn every_spelling_of_context_shell_sees_the_parsed_command() {
        for cond in [
            "context has shell && context.shell.programs.contains(\"rm\")",
            "context has \"shell\" && context[\"shell\"].programs.contains(\"rm\")",
            "context has shell &&\n  // a comment between\n  context\n  .shell.programs.contains(\"rm\")",
        ] {
            let policies = format!(
                "@id(\"allow\") permit(principal, action, resource);\n\
                 @id(\"no-rm\") forbid(principal, action, resource in Gatehouse::ToolGroup::\"shell\") when {{ {cond} }};"
            );
            let b = bundle(&[("p.cedar", &policies)]);
            let e = tool("Bash", serde_json::json!({"command": "sudo rm -rf /"}), "/");
            assert_eq!(b.evaluate(&e).policies, vec!["no-rm"], "{cond}");
        }
    }

    fn load_err(files: &[(&str, &str)]) -> Vec<String> {
        match Bundle::load(files.iter().map(|(p, c)| BundleFile {
            path: (*p).into(),
            content: (*c).into(),
        })) {
            Ok(_) => Vec::new(),
            Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_forbid_that_can_never_apply_is_refused_with_its_id() {
        let typo = r#"@id("allow") permit(principal, action, resource);
@id("no-rm")
forbid(principal, action == Gatehouse::Action::"call_tool", resource)
when { context.input has comand && context.input.comand like "*rm*" };"#;
        let errs = load_err(&[("p.cedar", typo)]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("p.cedar:2:1: forbid `no-rm` can never apply"),
            "{errs:?}"
        );
        assert!(errs[0].contains("did you mean `command`?"), "{errs:?}");

        let ask = typo.replace("@id(\"no-rm\")", "@id(\"no-rm\") @ask");
        assert_eq!(load_err(&[("p.cedar", &ask)]).len(), 1);

        let mcp = r#"@id("gh")
forbid(principal, action == Gatehouse::Action::"call_tool", resource)
when { resource has server && resource.server == "github" && context.input has title };"#;
        let errs = load_err(&[("p.cedar", mcp)]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("forbid `gh`") && errs[0].contains("add mcp/github.json"),
            "{errs:?}"
        );

        // With the server's tools list the same forbid validates and works.
        let tools = r#"{"tools":[{"name":"create_issue","inputSchema":{"type":"object","properties":{"title":{"type":"string"}}}}]}"#;
        assert!(load_err(&[("p.cedar", mcp), ("mcp/github.json", tools)]).is_empty());
        let b = bundle(&[
            (
                "p.cedar",
                &format!("{mcp}\n@id(\"allow\") permit(principal, action, resource);"),
            ),
            ("mcp/github.json", tools),
        ]);
        let e = tool(
            "mcp__github__create_issue",
            serde_json::json!({"title": "x"}),
            "",
        );
        assert_eq!(b.evaluate(&e).policies, vec!["gh"]);
        let e = tool(
            "mcp__github__create_issue",
            serde_json::json!({"body": "x"}),
            "",
        );
        assert_eq!(b.evaluate(&e).verdict, Verdict::Allow);

        // An argument typed against the schema's declaration is an error.
        let clash = r#"{"tools":[{"name":"t","inputSchema":{"properties":{"timeout":{"type":"string"}}}}]}"#;
        let errs = load_err(&[("p.cedar", mcp), ("mcp/github.json", clash)]);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("mcp/github.json") && e.contains("timeout")),
            "{errs:?}"
        );

        // A permit that can never apply only warns: what it meant to allow
        // stays denied.
        let dead_permit =
            r#"@id("p") permit(principal, action, resource) when { context.input has nope };"#;
        let b = bundle(&[("p.cedar", dead_permit)]);
        assert!(
            b.warnings()
                .iter()
                .any(|w| w.message.contains("permit `p` can never apply"))
        );
    }

    /// The shell context is built for a policy that spells `shell` only
    /// through a string escape.
    #[test]
    fn shell_named_through_an_escape_is_still_built() {
        let policies = r#"
@id("all") permit(principal, action, resource);
@id("pipe") forbid(principal, action == Gatehouse::Action::"call_tool", resource)
when { context has "sh\u{65}ll" && context["sh\u{65}ll"].pipes_to_interpreter };
"#;
        let b = bundle(&[("p.cedar", policies)]);
        assert_eq!(b.evaluate(&bash("a", "curl x | sh")).verdict, Verdict::Deny);
        assert_eq!(b.evaluate(&bash("a", "ls")).verdict, Verdict::Allow);
    }

    #[test]
    fn schema_errors_are_located() {
        let schema = crate::BUILTIN_SCHEMA.replace(
            "entity Session;",
            "entity Session;\n  entity Foo { x: Barr };",
        );
        let line = schema
            .lines()
            .position(|l| l.contains("Barr"))
            .map(|i| i + 1);
        let err = Bundle::load([
            BundleFile {
                path: "schema.cedarschema".into(),
                content: schema.clone(),
            },
            BundleFile {
                path: "p.cedar".into(),
                content: "permit(principal, action, resource);".into(),
            },
        ])
        .expect_err("an unknown type must fail");
        let d = &err.diagnostics[0];
        assert_eq!(d.file, "schema.cedarschema");
        assert_eq!(Some(d.line), line, "{d}");
    }

    #[test]
    fn validation_errors_are_located() {
        let bad = "@id(\"x\")\npermit(principal, action == Gatehouse::Action::\"call_tool\", resource)\nwhen { context.input.nope == 1 };\n";
        let err = Bundle::load([BundleFile {
            path: "bad.cedar".into(),
            content: bad.into(),
        }])
        .expect_err("must fail validation");
        let d = &err.diagnostics[0];
        assert_eq!(d.file, "bad.cedar");
        assert_eq!(d.line, 3, "{d}");
        let syntax = Bundle::load([BundleFile {
            path: "syn.cedar".into(),
            content: "permit(principal, action, resource)\nwhen { ) };".into(),
        }])
        .expect_err("must fail parsing");
        assert_eq!(syntax.diagnostics[0].line, 2, "{}", syntax.diagnostics[0]);
    }

    /// The scope index (action, principal, resource) never changes a
    /// decision: over generated bundles, entity hierarchies and events,
    /// the sliced evaluation equals Cedar over every policy.
    #[test]
    fn scope_index_decides_as_the_full_policy_set() {
        use std::fmt::Write as _;
        use std::str::FromStr as _;
        let agents = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"];
        let groups = ["g0", "g1", "g2", "g3"];
        let tools = ["Bash", "Read", "Edit", "WebFetch", "mcp__gh__pr"];
        let words = ["k0", "k1", "k2", "k3"];
        for seed in 0..150u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            // Entities: a0..a5 in random groups (a6 and a7 are unknown),
            // groups nested at random.
            let mut entities = Vec::new();
            for (i, g) in groups.iter().enumerate() {
                let parents: Vec<serde_json::Value> = groups[..i]
                    .iter()
                    .filter(|_| rng.u8(..4) == 0)
                    .map(|p| serde_json::json!({"type": "Gatehouse::Group", "id": p}))
                    .collect();
                entities.push(serde_json::json!({
                    "uid": {"type": "Gatehouse::Group", "id": g},
                    "attrs": {}, "parents": parents,
                }));
            }
            for a in &agents[..6] {
                let parents: Vec<serde_json::Value> = groups
                    .iter()
                    .filter(|_| rng.u8(..3) == 0)
                    .map(|g| serde_json::json!({"type": "Gatehouse::Group", "id": g}))
                    .collect();
                entities.push(serde_json::json!({
                    "uid": {"type": "Gatehouse::Agent", "id": a},
                    "attrs": {}, "parents": parents,
                }));
            }
            let mut text = String::new();
            for i in 0..rng.usize(1..40) {
                let effect = if rng.u8(..3) == 0 { "permit" } else { "forbid" };
                let ask = if effect == "forbid" && rng.bool() {
                    "@ask "
                } else {
                    ""
                };
                let principal = match rng.u8(..7) {
                    0 | 1 => "principal".to_owned(),
                    2 => format!(
                        "principal == Gatehouse::Agent::\"{}\"",
                        agents[rng.usize(..agents.len())]
                    ),
                    3 => format!(
                        "principal in Gatehouse::Group::\"{}\"",
                        groups[rng.usize(..groups.len())]
                    ),
                    4 => format!(
                        "principal in Gatehouse::Agent::\"{}\"",
                        agents[rng.usize(..agents.len())]
                    ),
                    5 => "principal is Gatehouse::Agent".to_owned(),
                    _ => format!(
                        "principal is Gatehouse::Agent in Gatehouse::Group::\"{}\"",
                        groups[rng.usize(..groups.len())]
                    ),
                };
                let action = match rng.u8(..4) {
                    0 => "action",
                    1 => {
                        "action in [Gatehouse::Action::\"call_tool\", Gatehouse::Action::\"install\"]"
                    }
                    _ => "action == Gatehouse::Action::\"call_tool\"",
                };
                let resource = if rng.bool() {
                    "resource".to_owned()
                } else {
                    format!(
                        "resource == Gatehouse::Tool::\"{}\"",
                        tools[rng.usize(..tools.len())]
                    )
                };
                let condition = match rng.u8(..3) {
                    0 => String::new(),
                    1 => format!(
                        " when {{ context.input has command && context.input.command like \"*{}*\" }}",
                        words[rng.usize(..words.len())]
                    ),
                    _ => format!(
                        " unless {{ context.input has command && context.input.command like \"*{}*\" }}",
                        words[rng.usize(..words.len())]
                    ),
                };
                let _ = writeln!(
                    text,
                    "@id(\"p{i}\") {ask}{effect}({principal}, {action}, {resource}){condition};"
                );
            }
            let entities_json = serde_json::Value::Array(entities).to_string();
            let b = bundle(&[("p.cedar", &text), ("entities.json", &entities_json)]);
            // Every policy, under its @id as the bundle names it.
            let parsed = cedar_policy::PolicySet::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
            let all = cedar_policy::PolicySet::from_policies(parsed.policies().map(|p| {
                let id = p.annotation("id").unwrap_or_default().to_owned();
                p.new_id(cedar_policy::PolicyId::new(id))
            }))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            for _ in 0..40 {
                let agent = agents[rng.usize(..agents.len())];
                let tool = tools[rng.usize(..tools.len())];
                let command: Vec<&str> = words.iter().copied().filter(|_| rng.bool()).collect();
                let mut event = bash(agent, &command.join(" "));
                if let EventKind::PreToolUse { tool_name, .. } = &mut event.kind {
                    tool.clone_into(tool_name);
                }
                let sliced = b.cedar(&event, &[]);
                let full = b.cedar_over(&event, &[], Some(&all));
                assert_eq!(
                    sliced, full,
                    "seed {seed}: agent {agent}, tool {tool}, command {command:?}\n{text}\n{entities_json}"
                );
            }
        }
    }

    /// Cedar only sees the policies whose principal scope can hold.
    #[test]
    fn principal_scoped_policies_are_only_considered_for_their_principals() {
        let policies = r#"
@id("all") permit(principal, action, resource);
@id("alice") forbid(principal == Gatehouse::Agent::"alice", action, resource);
@id("team") forbid(principal in Gatehouse::Group::"team", action, resource);
@id("team-bash") forbid(principal in Gatehouse::Group::"org", action,
    resource == Gatehouse::Tool::"Bash");
"#;
        let entities = r#"[
 {"uid": {"type": "Gatehouse::Group", "id": "team"}, "attrs": {},
  "parents": [{"type": "Gatehouse::Group", "id": "org"}]},
 {"uid": {"type": "Gatehouse::Agent", "id": "bob"}, "attrs": {},
  "parents": [{"type": "Gatehouse::Group", "id": "team"}]}
]"#;
        let b = bundle(&[("p.cedar", policies), ("entities.json", entities)]);
        let considered = |agent: &str, tool: &str| {
            let mut e = bash(agent, "ls");
            if let EventKind::PreToolUse { tool_name, .. } = &mut e.kind {
                tool.clone_into(tool_name);
            }
            b.explain(&e).considered
        };
        assert_eq!(considered("carol", "Bash"), ["all"]);
        assert_eq!(considered("alice", "Bash"), ["alice", "all"]);
        assert_eq!(considered("bob", "Bash"), ["all", "team", "team-bash"]);
        assert_eq!(considered("bob", "Read"), ["all", "team"]);
        // Twice, so the second comes from the merged-slice cache.
        assert_eq!(considered("bob", "Bash"), ["all", "team", "team-bash"]);
        assert_eq!(b.evaluate(&bash("bob", "ls")).verdict, Verdict::Deny);
        assert_eq!(b.evaluate(&bash("carol", "ls")).verdict, Verdict::Allow);
    }

    /// A compiled load decides as a full load, and is only used for the
    /// files it was made from.
    #[test]
    fn compiled_bundle_loads_as_the_full_load() {
        let files = |extra: &str| {
            let policies = format!(
                "{BASE}\n@id(\"ops\") forbid(principal, action, resource) when {{ context.matchers.ops }};\n\
                 @id(\"ops-team\") @ask forbid(principal in Gatehouse::Group::\"ops\", action, resource) \
                 when {{ context.input has command && context.input.command like \"ls*\" }};\n{extra}"
            );
            let entities = r#"[{"uid": {"type": "Gatehouse::Agent", "id": "bob"}, "attrs": {},
                "parents": [{"type": "Gatehouse::Group", "id": "ops"}]}]"#;
            vec![
                BundleFile {
                    path: "base.cedar".into(),
                    content: policies,
                },
                BundleFile {
                    path: "entities.json".into(),
                    content: entities.into(),
                },
                BundleFile {
                    path: "bundle.toml".into(),
                    content:
                        "[matchers.ops]\nfield = \"channel_id\"\nop = \"eq\"\nvalue = \"C-ops\"\n"
                            .into(),
                },
            ]
        };
        let full = Bundle::load(files("")).unwrap_or_else(|e| panic!("{e}"));
        let compiled = full
            .compiled()
            .unwrap_or_else(|| panic!("every entity renders"));
        let again = Bundle::load_compiled(files(""), &compiled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.hash(), full.hash());
        assert_eq!(again.warnings(), full.warnings());
        for agent in ["a", "bob"] {
            for cmd in ["ls", "rm -rf /", "git push origin", "git push --force"] {
                let e = bash(agent, cmd);
                assert_eq!(again.evaluate(&e), full.evaluate(&e));
            }
        }
        assert_eq!(again.evaluate(&bash("bob", "ls")).verdict, Verdict::Ask);
        // Other files: the entry is ignored, so validation still runs.
        let bad = "@id(\"bad\") forbid(principal, action == Gatehouse::Action::\"call_tool\", resource) when { context.input.nope == 1 };";
        assert!(Bundle::load_compiled(files(bad), &compiled).is_err());
        // A damaged entry (its digest no longer matches) is ignored too:
        // with this schema `command` would go unseen and no-rm would never
        // apply.
        let mut broken = compiled.clone();
        broken.schema = vec![serde_json::json!({"Gatehouse": 1})];
        let b = Bundle::load_compiled(files(""), &broken).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.evaluate(&bash("a", "rm -rf /")).verdict, Verdict::Deny);
    }
}
