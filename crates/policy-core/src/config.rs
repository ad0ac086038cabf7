//! The bundle's own configuration, `bundle.toml`: metadata matchers, rate
//! limits and budgets. Parsed and validated at load; every problem is
//! located in the file.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Diagnostic, line_col};
use crate::event::ACTIONS;

pub(crate) const CONFIG_FILE: &str = "bundle.toml";

/// Largest compiled regex program, in bytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Longest regex pattern accepted, in bytes.
const REGEX_MAX_LEN: usize = 4096;

/// Metadata fields a matcher can test.
pub(crate) const MATCHER_FIELDS: [&str; 5] = [
    "channel_id",
    "sender_id",
    "sender_name",
    "conversation_id",
    "agent_id",
];

/// Actions whose events are attributed to a chat sender by adapters.
const SENDER_ACTIONS: [&str; 4] = ["call_tool", "tool_output", "submit_prompt", "request_model"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    matchers: BTreeMap<String, RawMatcher>,
    #[serde(default)]
    rate_limits: Vec<RawRate>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    guards: Vec<RawGuard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    name: Option<String>,
    on_match: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
    replacement: Option<String>,
    message: Option<String>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    max_limit_keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatcher {
    field: Spanned<String>,
    op: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    name: Spanned<String>,
    actions: Spanned<Vec<String>>,
    #[serde(default)]
    tools: Vec<String>,
    key: Spanned<Vec<String>>,
    limit: u64,
    window: Spanned<String>,
    #[serde(default)]
    when: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    name: Spanned<String>,
    key: Spanned<Vec<String>>,
    metric: Spanned<String>,
    limit: u64,
    window: Spanned<String>,
    #[serde(default)]
    estimate: u64,
    #[serde(default = "default_reserve_on")]
    reserve_on: Spanned<Vec<String>>,
    #[serde(default)]
    reservation_ttl: Option<Spanned<String>>,
}

fn default_reserve_on() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["call_tool".into(), "request_model".into()])
}

/// How a matcher compares.
#[derive(Debug, Clone)]
pub(crate) enum MatchOp {
    Eq(String),
    Neq(String),
    Contains(String),
    Regex(regex::Regex),
}

/// A named boolean over one metadata field, exposed as
/// `context.matchers.<name>`.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    pub(crate) name: String,
    pub(crate) field: String,
    pub(crate) op: MatchOp,
}

impl Matcher {
    /// Evaluates the matcher on an event: `agent_id` comes from the
    /// principal, every other field from the event's metadata.
    pub(crate) fn matches_event(&self, event: &crate::Event) -> bool {
        let value = if self.field == "agent_id" {
            Some(event.agent_id.as_str())
        } else {
            event.metadata.get(&self.field).map(String::as_str)
        };
        self.matches(value)
    }

    /// A missing field matches nothing (so `neq` on a missing field is
    /// false: absence is not evidence).
    pub(crate) fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else { return false };
        match &self.op {
            MatchOp::Eq(x) => v == x,
            MatchOp::Neq(x) => v != x,
            MatchOp::Contains(x) => v.contains(x.as_str()),
            MatchOp::Regex(r) => r.is_match(v),
        }
    }
}

/// Parts of a limit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    Agent,
    Sender,
    Tool,
    Session,
}

impl KeyPart {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "agent" => Self::Agent,
            "sender" => Self::Sender,
            "tool" => Self::Tool,
            "session" => Self::Session,
            _ => return None,
        })
    }
}

/// A rate limit: at most `limit` requests per `window_ms`, per key (GCRA,
/// burst equal to the limit).
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    pub(crate) name: String,
    pub(crate) actions: Vec<String>,
    pub(crate) tools: Vec<String>,
    pub(crate) key: Vec<KeyPart>,
    pub(crate) limit: u64,
    pub(crate) window_ms: u64,
    /// Only when this matcher is true (optional).
    pub(crate) when: Option<String>,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    CostMicros,
    Tokens,
}

/// A spend or token budget per key and window, reserved at pre events and
/// committed at post events.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    pub(crate) name: String,
    pub(crate) key: Vec<KeyPart>,
    pub(crate) metric: Metric,
    pub(crate) limit: u64,
    pub(crate) window_ms: u64,
    pub(crate) estimate: u64,
    pub(crate) reserve_on: Vec<String>,
    pub(crate) reservation_ttl_ms: u64,
}

/// The compiled `bundle.toml`.
#[derive(Debug, Clone, Default)]
pub(crate) struct BundleConfig {
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) rate_limits: Vec<RateLimit>,
    pub(crate) budgets: Vec<Budget>,
    pub(crate) max_limit_keys: usize,
    /// The post-invocation pipeline, in order.
    pub(crate) guards: Vec<crate::guards::Guard>,
}

/// Default cap on distinct limit and budget keys.
pub const DEFAULT_MAX_LIMIT_KEYS: usize = 50_000;

/// Parses `10s`, `5m`, `2h`, `1d` or plain milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|ms| *ms > 0)
}

struct Ctx<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: String) -> Diagnostic {
        let (line, column) = if span.is_empty() && span.start == 0 {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        Diagnostic {
            file: CONFIG_FILE.into(),
            line,
            column,
            message,
        }
    }
    fn error(&mut self, span: std::ops::Range<usize>, message: String) {
        let d = self.at(span, message);
        self.diags.push(d);
    }
    fn warn(&mut self, span: std::ops::Range<usize>, message: String) {
        let d = self.at(span, format!("warning: {message}"));
        self.warnings.push(d);
    }
}

/// Parses and validates `bundle.toml`. Returns the config and warnings, or
/// every error found.
pub(crate) fn parse(text: &str) -> Result<(BundleConfig, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut cx = Ctx {
        text,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error(span, format!("invalid bundle.toml: {}", e.message()));
            return Err(cx.diags);
        }
    };
    let mut config = BundleConfig {
        max_limit_keys: raw
            .settings
            .max_limit_keys
            .unwrap_or(DEFAULT_MAX_LIMIT_KEYS),
        ..BundleConfig::default()
    };
    for (name, m) in raw.matchers {
        if !is_identifier(&name) {
            cx.error(
                m.field.span(),
                format!("matcher name `{name}` must be a Cedar identifier (letters, digits, _)"),
            );
            continue;
        }
        let field = m.field.get_ref();
        if !MATCHER_FIELDS.contains(&field.as_str()) {
            cx.error(
                m.field.span(),
                format!(
                    "matcher `{name}`: unknown field `{field}` (expected one of {})",
                    MATCHER_FIELDS.join(", ")
                ),
            );
            continue;
        }
        let value = m.value.get_ref().clone();
        let op = match m.op.get_ref().as_str() {
            "eq" => MatchOp::Eq(value),
            "neq" => MatchOp::Neq(value),
            "contains" => MatchOp::Contains(value),
            "regex" => {
                if value.len() > REGEX_MAX_LEN {
                    cx.error(
                        m.value.span(),
                        format!("matcher `{name}`: regex longer than {REGEX_MAX_LEN} bytes"),
                    );
                    continue;
                }
                match regex::RegexBuilder::new(&value)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(4 * REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(r) => MatchOp::Regex(r),
                    Err(e) => {
                        let msg = e.to_string().replace('\n', " ");
                        cx.error(
                            m.value.span(),
                            format!("matcher `{name}`: invalid or too large regex: {msg}"),
                        );
                        continue;
                    }
                }
            }
            other => {
                cx.error(m.op.span(), format!("matcher `{name}`: unknown op `{other}` (expected eq, neq, contains or regex)"));
                continue;
            }
        };
        config.matchers.push(Matcher {
            name,
            field: field.clone(),
            op,
        });
    }
    let matcher_names: Vec<String> = config.matchers.iter().map(|m| m.name.clone()).collect();
    for r in raw.rate_limits {
        let name = r.name.get_ref().clone();
        let actions = check_actions(&mut cx, &name, &r.actions);
        let key = check_key(&mut cx, &name, &r.key);
        if key.contains(&KeyPart::Sender) {
            for a in actions
                .iter()
                .filter(|a| !SENDER_ACTIONS.contains(&a.as_str()))
            {
                cx.warn(
                    r.key.span(),
                    format!("rate limit `{name}` is keyed on sender, but `{a}` events usually carry no sender metadata: they will share one bucket"),
                );
            }
        }
        let window = duration(&mut cx, &name, &r.window);
        if r.limit == 0 {
            cx.error(
                r.name.span(),
                format!("rate limit `{name}`: limit must be at least 1"),
            );
        }
        if let Some(w) = &r.when
            && !matcher_names.contains(w.get_ref())
        {
            cx.error(
                w.span(),
                format!(
                    "rate limit `{name}` refers to unknown matcher `{}`",
                    w.get_ref()
                ),
            );
        }
        config.rate_limits.push(RateLimit {
            name,
            actions,
            tools: r.tools,
            key,
            limit: r.limit.max(1),
            window_ms: window,
            when: r.when.map(Spanned::into_inner),
        });
    }
    for b in raw.budgets {
        let name = b.name.get_ref().clone();
        let key = check_key(&mut cx, &name, &b.key);
        if key.contains(&KeyPart::Tool) {
            cx.error(
                b.key.span(),
                format!("budget `{name}`: budgets are keyed by agent, sender or session, not tool"),
            );
        }
        let reserve_on = check_actions(&mut cx, &name, &b.reserve_on);
        let metric = match b.metric.get_ref().as_str() {
            "cost_micros" | "cost" => Metric::CostMicros,
            "tokens" => Metric::Tokens,
            other => {
                cx.error(
                    b.metric.span(),
                    format!(
                        "budget `{name}`: unknown metric `{other}` (expected cost_micros or tokens)"
                    ),
                );
                Metric::CostMicros
            }
        };
        let window = duration(&mut cx, &name, &b.window);
        let ttl = match &b.reservation_ttl {
            Some(t) => duration(&mut cx, &name, t),
            None => 10 * 60_000,
        };
        config.budgets.push(Budget {
            name,
            key,
            metric,
            limit: b.limit,
            window_ms: window,
            estimate: b.estimate,
            reserve_on,
            reservation_ttl_ms: ttl,
        });
    }
    for (i, g) in raw.guards.into_iter().enumerate() {
        if let Some(guard) = parse_guard(&mut cx, i, g) {
            config.guards.push(guard);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for n in config
        .rate_limits
        .iter()
        .map(|r| &r.name)
        .chain(config.budgets.iter().map(|b| &b.name))
    {
        if !seen.insert(n.clone()) {
            cx.error(0..0, format!("two limits are named `{n}`"));
        }
    }
    if cx.diags.is_empty() {
        Ok((config, cx.warnings))
    } else {
        Err(cx.diags)
    }
}

fn parse_guard(cx: &mut Ctx<'_>, index: usize, g: RawGuard) -> Option<crate::guards::Guard> {
    use crate::guards::{Guard, OnMatch};
    let kind = g.kind.get_ref().as_str();
    let name = g.name.clone().unwrap_or_else(|| format!("{kind}-{index}"));
    let on_match = match g
        .on_match
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None => None,
        Some(("redact", _)) => Some(OnMatch::Redact),
        Some(("block", _)) => Some(OnMatch::Block),
        Some(("escalate", _)) => Some(OnMatch::Escalate),
        Some((other, span)) => {
            cx.error(span, format!("guard `{name}`: unknown on_match `{other}` (expected redact, block or escalate)"));
            return None;
        }
    };
    match kind {
        "credentials" => Some(Guard::Credentials {
            name,
            on_match: on_match.unwrap_or(OnMatch::Redact),
        }),
        "regex" => {
            let Some(pattern) = g.pattern else {
                cx.error(
                    g.kind.span(),
                    format!("guard `{name}`: a regex guard needs `pattern`"),
                );
                return None;
            };
            if pattern.get_ref().len() > REGEX_MAX_LEN {
                cx.error(
                    pattern.span(),
                    format!("guard `{name}`: regex longer than {REGEX_MAX_LEN} bytes"),
                );
                return None;
            }
            let regex = match regex::RegexBuilder::new(pattern.get_ref())
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(4 * REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let msg = e.to_string().replace('\n', " ");
                    cx.error(
                        pattern.span(),
                        format!("guard `{name}`: invalid or too large regex: {msg}"),
                    );
                    return None;
                }
            };
            Some(Guard::Regex {
                replacement: g
                    .replacement
                    .unwrap_or_else(|| format!("[REDACTED:{name}]")),
                message: g
                    .message
                    .unwrap_or_else(|| format!("output matched `{name}`")),
                rule: name.clone(),
                name,
                regex,
                on_match: on_match.unwrap_or(OnMatch::Redact),
            })
        }
        "size" => {
            let Some(max_bytes) = g.max_bytes else {
                cx.error(
                    g.kind.span(),
                    format!("guard `{name}`: a size guard needs `max_bytes`"),
                );
                return None;
            };
            let on_match = on_match.unwrap_or(OnMatch::Block);
            if on_match == OnMatch::Redact {
                cx.error(
                    g.kind.span(),
                    format!("guard `{name}`: a size guard can block or escalate, not redact"),
                );
                return None;
            }
            Some(Guard::Size {
                name,
                max_bytes,
                on_match,
            })
        }
        "cedar" => Some(Guard::Cedar { name }),
        other => {
            cx.error(
                g.kind.span(),
                format!(
                    "unknown guard type `{other}` (expected credentials, regex, size or cedar)"
                ),
            );
            None
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_actions(cx: &mut Ctx<'_>, name: &str, actions: &Spanned<Vec<String>>) -> Vec<String> {
    for a in actions.get_ref() {
        if !ACTIONS.contains(&a.as_str()) {
            cx.error(actions.span(), format!("`{name}`: unknown action `{a}`"));
        }
    }
    if actions.get_ref().is_empty() {
        cx.error(actions.span(), format!("`{name}`: no actions"));
    }
    actions.get_ref().clone()
}

fn check_key(cx: &mut Ctx<'_>, name: &str, key: &Spanned<Vec<String>>) -> Vec<KeyPart> {
    let mut out = Vec::new();
    for k in key.get_ref() {
        match KeyPart::parse(k) {
            Some(p) => out.push(p),
            None => cx.error(
                key.span(),
                format!(
                    "`{name}`: unknown key part `{k}` (expected agent, sender, tool or session)"
                ),
            ),
        }
    }
    if out.is_empty() {
        cx.error(key.span(), format!("`{name}`: empty key"));
    }
    out.sort();
    out.dedup();
    out
}

fn duration(cx: &mut Ctx<'_>, name: &str, s: &Spanned<String>) -> u64 {
    match parse_duration_ms(s.get_ref()) {
        Some(ms) => ms,
        None => {
            cx.error(
                s.span(),
                format!(
                    "`{name}`: cannot read duration `{}` (use 30s, 5m, 2h, 1d)",
                    s.get_ref()
                ),
            );
            1
        }
    }
}

/// The generated schema fragment declaring `Gatehouse::Matchers`.
pub(crate) fn matchers_schema(config: &BundleConfig) -> String {
    let fields: Vec<String> = config
        .matchers
        .iter()
        .map(|m| format!("{}: Bool", m.name))
        .collect();
    format!(
        "namespace {} {{ type Matchers = {{ {} }}; }}",
        crate::bundle::NAMESPACE,
        fields.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_matchers_limits_and_budgets() {
        let text = r#"
[matchers.ops]
field = "channel_id"
op = "eq"
value = "C-ops"

[matchers.bot]
field = "sender_name"
op = "regex"
value = "(?i)bot$"

[[rate_limits]]
name = "bash"
actions = ["call_tool"]
tools = ["Bash"]
key = ["agent", "sender"]
limit = 3
window = "1m"

[[budgets]]
name = "spend"
key = ["agent"]
metric = "cost_micros"
limit = 1000
window = "1d"
estimate = 100
"#;
        let (c, warnings) = parse(text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.matchers.len(), 2);
        assert!(c.matchers[0].matches(Some("Buildbot")) || c.matchers[1].matches(Some("Buildbot")));
        assert_eq!(c.rate_limits[0].window_ms, 60_000);
        assert_eq!(c.budgets[0].window_ms, 86_400_000);
        assert_eq!(c.max_limit_keys, DEFAULT_MAX_LIMIT_KEYS);
    }

    #[test]
    fn bad_regex_and_unknowns_are_located() {
        let text = "[matchers.m]\nfield = \"sender_id\"\nop = \"regex\"\nvalue = \"(unclosed\"\n\n[[rate_limits]]\nname = \"r\"\nactions = [\"call_tool\"]\nkey = [\"sender\"]\nlimit = 1\nwindow = \"1m\"\nwhen = \"nope\"\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs[0].file, "bundle.toml");
        assert_eq!(errs[0].line, 4, "{}", errs[0]);
        assert!(errs[0].message.contains("regex"));
        assert!(
            errs.iter()
                .any(|e| e.line == 12 && e.message.contains("unknown matcher `nope`")),
            "{errs:?}"
        );

        let huge = format!(
            "[matchers.m]\nfield = \"sender_id\"\nop = \"regex\"\nvalue = \"{}\"\n",
            "(a{1,100}){1,100}".repeat(3)
        );
        assert!(parse(&huge).is_err());
    }

    #[test]
    fn sender_keys_on_senderless_actions_warn() {
        let text = "[[rate_limits]]\nname = \"r\"\nactions = [\"install\"]\nkey = [\"sender\"]\nlimit = 1\nwindow = \"1m\"\n";
        let (_, warnings) = parse(text).unwrap();
        assert!(
            warnings[0].message.contains("no sender metadata"),
            "{warnings:?}"
        );
    }
}
