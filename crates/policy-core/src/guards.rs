//! The post-invocation pipeline: guards that inspect a tool's output before
//! the model sees it, in registration order. Each may allow, block (the
//! pipeline stops), redact (later guards see the redacted value) or
//! escalate (collected; the pipeline goes on), and attach evidence: where
//! and what kind of thing matched, never the matched text itself.

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The outcome of the pipeline for one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputVerdict {
    Allow,
    Block,
    Redact,
    Escalate,
}

impl OutputVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Redact => "redact",
            Self::Escalate => "escalate",
        }
    }
}

/// What a guard found and where. Never holds the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub guard: String,
    /// The detector rule, e.g. `aws_access_key`, or the regex rule's name.
    pub rule: String,
    /// JSON path of the value, e.g. `$.stdout` or `$.content[0].text`.
    pub path: String,
    /// `pattern`, `assignment`, `entropy`, `size` or `policy`.
    pub kind: String,
}

/// The post-event part of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputDecision {
    pub verdict: OutputVerdict,
    /// For REDACT: the output to hand the model instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Value>,
    pub escalations: Vec<String>,
    pub evidence: Vec<Evidence>,
    /// Hex SHA-256 of the original output's JSON text (for the audit).
    pub output_sha256: String,
}

/// What a guard does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMatch {
    Redact,
    Block,
    Escalate,
}

/// A configured guard.
#[derive(Debug, Clone)]
pub(crate) enum Guard {
    Credentials {
        name: String,
        on_match: OnMatch,
    },
    Regex {
        name: String,
        rule: String,
        regex: Regex,
        on_match: OnMatch,
        replacement: String,
        message: String,
    },
    Size {
        name: String,
        max_bytes: u64,
        on_match: OnMatch,
    },
    /// The bundle's `tool_output` Cedar policies, at this position.
    Cedar {
        name: String,
    },
}

impl Guard {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Credentials { name, .. }
            | Self::Regex { name, .. }
            | Self::Size { name, .. }
            | Self::Cedar { name } => name,
        }
    }
}

/// One detector of the credential guard.
struct Detector {
    rule: &'static str,
    regex: Regex,
    /// The capture group holding the secret (0: the whole match).
    group: usize,
    kind: &'static str,
}

/// All detector patterns in one set: a single pass over the text tells
/// which detectors need to run at all.
fn detector_set() -> &'static regex::RegexSet {
    static S: OnceLock<regex::RegexSet> = OnceLock::new();
    S.get_or_init(|| {
        regex::RegexSet::new(detectors().iter().map(|d| d.regex.as_str()))
            .unwrap_or_else(|_| regex::RegexSet::empty())
    })
}

fn detectors() -> &'static [Detector] {
    static D: OnceLock<Vec<Detector>> = OnceLock::new();
    D.get_or_init(|| {
        let d = |rule, pattern: &str, group, kind| {
            Regex::new(pattern).ok().map(|regex| Detector {
                rule,
                regex,
                group,
                kind,
            })
        };
        [
            d("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", 0, "pattern"),
            // A word boundary before the prefix (so a key-shaped run inside
            // base64 data is left alone), none after it: a key with
            // characters appended is still a key.
            d("aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}", 0, "pattern"),
            d("aws_secret_key", r#"(?i)aws_?secret_?access_?key["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})\b"#, 1, "assignment"),
            d("github_token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b", 0, "pattern"),
            d("github_token", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b", 0, "pattern"),
            d("gitlab_token", r"\bgl(?:pat|dt|rt|cbt|ptt|oas)-[A-Za-z0-9_\-]{20,}", 0, "pattern"),
            d("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", 0, "pattern"),
            d("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,}", 0, "pattern"),
            d("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b", 0, "pattern"),
            d("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{24,}\b", 0, "pattern"),
            d("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}", 0, "pattern"),
            d("openai_api_key", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{32,}", 0, "pattern"),
            d("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", 0, "pattern"),
            d("password_assignment", r#"(?i)\b(?:password|passwd|pwd|secret|api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token|client[_\-]?secret|private[_\-]?key)["']?\s*[:=]\s*["']?([^\s"',;&]{6,})"#, 1, "assignment"),
            d("url_credentials", r"\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:([^\s@/]{3,})@", 1, "assignment"),
        ]
        .into_iter()
        .flatten()
        .collect()
    })
}

fn credential_field() -> &'static Regex {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"(?i)(secret|token|passw|api_?key|apikey|credential|^auth$|auth_?token|authorization|private_?key|access_?key|signing_?key)",
        )
        .ok()
    })
    .as_ref()
    .unwrap_or_else(|| unreachable!("the credential field pattern is valid"))
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

fn looks_like_secret_value(s: &str) -> bool {
    let s = s.trim();
    s.len() >= 16
        && s.len() <= 512
        && !s.contains(char::is_whitespace)
        && !s.starts_with("[REDACTED:")
        && !s.starts_with("http://")
        && !s.starts_with("https://")
        && entropy(s) >= 3.5
}

/// Placeholder text for a redacted value.
fn placeholder(rule: &str) -> String {
    format!("[REDACTED:{rule}]")
}

/// Redacts `text` with one detector set; returns the new text and the
/// rules that matched.
fn redact_text(text: &str) -> (String, Vec<(&'static str, &'static str)>) {
    let mut out = text.to_owned();
    let mut hits = Vec::new();
    let candidates = detector_set().matches(text);
    if !candidates.matched_any() {
        return (out, hits);
    }
    for (i, d) in detectors().iter().enumerate() {
        if !candidates.matched(i) || !d.regex.is_match(&out) {
            continue;
        }
        let mut result = String::with_capacity(out.len());
        let mut last = 0;
        let mut matched = false;
        for caps in d.regex.captures_iter(&out) {
            let Some(m) = caps.get(d.group) else { continue };
            if m.as_str().starts_with("[REDACTED:") {
                continue;
            }
            result.push_str(&out[last..m.start()]);
            result.push_str(&placeholder(d.rule));
            last = m.end();
            matched = true;
        }
        if matched {
            result.push_str(&out[last..]);
            out = result;
            hits.push((d.rule, d.kind));
        }
    }
    (out, hits)
}

/// Is this string the payload of a binary content block (an MCP image or
/// audio item, or a data URI)? Those are never scanned.
fn is_binary_payload(
    key: Option<&str>,
    parent: Option<&serde_json::Map<String, Value>>,
    s: &str,
) -> bool {
    s.starts_with("data:") && s.contains(";base64,")
        || key == Some("data") && parent.is_some_and(|p| p.contains_key("mimeType"))
        || key == Some("blob")
}

/// A visitor over string leaves: (path, key, parent object, text) to an
/// optional replacement.
type StringVisitor<'a> = dyn FnMut(&str, Option<&str>, Option<&serde_json::Map<String, Value>>, &str) -> Option<String>
    + 'a;

/// Walks every string of `value`, calling `f(path, key, parent, string)`
/// which may return a replacement.
fn walk_strings(
    value: &mut Value,
    path: &mut String,
    key: Option<&str>,
    parent: Option<&serde_json::Map<String, Value>>,
    f: &mut StringVisitor<'_>,
) {
    match value {
        Value::String(s) => {
            if let Some(new) = f(path, key, parent, s) {
                *s = new;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(item, path, None, None, f);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let snapshot = map.clone();
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty() {
                    path.push('.');
                    path.push_str(k);
                } else {
                    path.push_str(&format!("[{}]", Value::String(k.clone())));
                }
                walk_strings(v, path, Some(k), Some(&snapshot), f);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Runs the credential detector over `value`. Returns evidence; redacts in
/// place when `redact` is true.
pub(crate) fn scan_credentials(guard: &str, value: &mut Value, redact: bool) -> Vec<Evidence> {
    let mut evidence = Vec::new();
    let mut path = String::from("$");
    walk_strings(value, &mut path, None, None, &mut |path, key, parent, s| {
        if is_binary_payload(key, parent, s) {
            return None;
        }
        let (mut new, hits) = redact_text(s);
        for (rule, kind) in &hits {
            evidence.push(Evidence {
                guard: guard.to_owned(),
                rule: (*rule).to_owned(),
                path: path.to_owned(),
                kind: (*kind).to_owned(),
            });
        }
        // A credential-looking field whose whole value looks random.
        if hits.is_empty()
            && key.is_some_and(|k| credential_field().is_match(k))
            && looks_like_secret_value(s)
        {
            evidence.push(Evidence {
                guard: guard.to_owned(),
                rule: "high_entropy_secret".into(),
                path: path.to_owned(),
                kind: "entropy".into(),
            });
            new = placeholder("high_entropy_secret");
        }
        (redact && new != s).then_some(new)
    });
    evidence
}

/// Runs a regex rule over `value`.
pub(crate) fn scan_regex(
    guard: &str,
    rule: &str,
    regex: &Regex,
    replacement: &str,
    value: &mut Value,
    redact: bool,
) -> Vec<Evidence> {
    let mut evidence = Vec::new();
    let mut path = String::from("$");
    walk_strings(value, &mut path, None, None, &mut |path, key, parent, s| {
        if is_binary_payload(key, parent, s) || !regex.is_match(s) {
            return None;
        }
        evidence.push(Evidence {
            guard: guard.to_owned(),
            rule: rule.to_owned(),
            path: path.to_owned(),
            kind: "pattern".into(),
        });
        redact.then(|| {
            regex
                .replace_all(s, regex::NoExpand(replacement))
                .into_owned()
        })
    });
    evidence
}

/// The serialized size of an output: its text for a string, else its JSON.
pub(crate) fn output_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Null => 0,
        other => other.to_string().len(),
    }
}

impl crate::bundle::Bundle {
    /// Post tool use: the guard pipeline, with the bundle's `tool_output`
    /// Cedar policies at their configured place (last by default).
    pub(crate) fn post_pipeline(&self, event: &crate::Event, original: &Value) -> crate::Decision {
        use crate::decision::{Decision, ReasonCode, Verdict};
        let implicit = Guard::Cedar {
            name: "policy".into(),
        };
        let has_cedar = self
            .config
            .guards
            .iter()
            .any(|g| matches!(g, Guard::Cedar { .. }));
        let guards = self
            .config
            .guards
            .iter()
            .chain((!has_cedar).then_some(&implicit));
        let mut value = original.clone();
        let mut evidence: Vec<Evidence> = Vec::new();
        let mut escalations: Vec<String> = Vec::new();
        let mut findings: Vec<String> = Vec::new();
        let mut acted: Vec<String> = Vec::new();
        let mut cedar: Option<Decision> = None;
        // (guard, reason, the Cedar decision when Cedar blocked)
        let mut blocked: Option<(String, String, Option<Decision>)> = None;
        for g in guards {
            let (found, on_match, message) = match g {
                Guard::Credentials { name, on_match } => {
                    let mut candidate = value.clone();
                    let ev = scan_credentials(name, &mut candidate, *on_match == OnMatch::Redact);
                    if !ev.is_empty() && *on_match == OnMatch::Redact {
                        value = candidate;
                    }
                    let msg = format!("{name}: {} credential finding(s)", ev.len());
                    (ev, *on_match, msg)
                }
                Guard::Regex {
                    name,
                    rule,
                    regex,
                    on_match,
                    replacement,
                    message,
                } => {
                    let mut candidate = value.clone();
                    let ev = scan_regex(
                        name,
                        rule,
                        regex,
                        replacement,
                        &mut candidate,
                        *on_match == OnMatch::Redact,
                    );
                    if !ev.is_empty() && *on_match == OnMatch::Redact {
                        value = candidate;
                    }
                    (ev, *on_match, format!("{name}: {message}"))
                }
                Guard::Size {
                    name,
                    max_bytes,
                    on_match,
                } => {
                    let size = output_size(original) as u64;
                    let ev = if size > *max_bytes {
                        vec![Evidence {
                            guard: name.clone(),
                            rule: format!("max_bytes={max_bytes}"),
                            path: "$".into(),
                            kind: "size".into(),
                        }]
                    } else {
                        Vec::new()
                    };
                    (
                        ev,
                        *on_match,
                        format!("{name}: output of {size} bytes exceeds {max_bytes}"),
                    )
                }
                Guard::Cedar { name } => {
                    let d = self.cedar(event, &findings);
                    let verdict = d.verdict;
                    let reason = d.reason.clone();
                    if verdict != Verdict::Allow {
                        evidence.push(Evidence {
                            guard: name.clone(),
                            rule: d.policies.join(","),
                            path: "$".into(),
                            kind: "policy".into(),
                        });
                    }
                    match verdict {
                        Verdict::Allow => cedar = Some(d),
                        Verdict::Ask => {
                            escalations.push(format!("{name}: {reason}"));
                            acted.extend(d.policies.iter().cloned());
                            cedar = Some(d);
                        }
                        Verdict::Deny => {
                            blocked = Some((name.clone(), reason, Some(d)));
                            break;
                        }
                    }
                    continue;
                }
            };
            if found.is_empty() {
                continue;
            }
            for e in &found {
                if !findings.contains(&e.rule) {
                    findings.push(e.rule.clone());
                }
            }
            evidence.extend(found);
            acted.push(g.name().to_owned());
            match on_match {
                OnMatch::Redact => {}
                OnMatch::Escalate => escalations.push(message),
                OnMatch::Block => {
                    blocked = Some((g.name().to_owned(), message, None));
                    break;
                }
            }
        }
        acted.dedup();
        let output_sha256 = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(original.to_string().as_bytes()))
        };
        let mut out = OutputDecision {
            verdict: OutputVerdict::Allow,
            redacted: None,
            escalations: escalations.clone(),
            evidence,
            output_sha256,
        };
        let mut d = if let Some((guard, reason, cedar_block)) = blocked {
            out.verdict = OutputVerdict::Block;
            match cedar_block {
                Some(d) => d,
                None => Decision::new(
                    Verdict::Deny,
                    ReasonCode::OutputBlocked,
                    reason,
                    vec![guard],
                    &self.hash,
                ),
            }
        } else if value != *original {
            out.verdict = OutputVerdict::Redact;
            out.redacted = Some(value);
            let reason = format!("the output was redacted by {}", acted.join(", "));
            let mut d = Decision::new(
                Verdict::Allow,
                ReasonCode::OutputRedacted,
                reason,
                acted,
                &self.hash,
            );
            if !escalations.is_empty() {
                d.reason
                    .push_str(&format!("; escalated: {}", escalations.join("; ")));
            }
            d
        } else if !escalations.is_empty() {
            out.verdict = OutputVerdict::Escalate;
            Decision::new(
                Verdict::Allow,
                ReasonCode::OutputEscalated,
                escalations.join("; "),
                acted,
                &self.hash,
            )
        } else {
            cedar.unwrap_or_else(|| {
                Decision::deny(
                    ReasonCode::NoPermit,
                    "no policy permits this output",
                    &self.hash,
                )
            })
        };
        d.output = Some(out);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(v: Value) -> (Value, Vec<String>) {
        let mut v = v;
        let ev = scan_credentials("creds", &mut v, true);
        (
            v,
            ev.into_iter()
                .map(|e| format!("{}@{}", e.rule, e.path))
                .collect(),
        )
    }

    #[test]
    fn detects_and_redacts_common_credentials() {
        let (v, ev) = scan(Value::String(
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nok".into(),
        ));
        assert_eq!(
            v,
            Value::String("AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key]\nok".into())
        );
        assert_eq!(ev, vec!["aws_access_key@$"]);
        let key =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let (v, _) = scan(serde_json::json!({"stdout": format!("x\n{key}\ny")}));
        assert_eq!(v["stdout"], "x\n[REDACTED:private_key]\ny");
        let (v, ev) = scan(
            serde_json::json!({"content":[{"type":"text","text":"token ghp_0123456789abcdefghijABCDEFGHIJ012345"}]}),
        );
        assert_eq!(v["content"][0]["text"], "token [REDACTED:github_token]");
        assert_eq!(ev, vec!["github_token@$.content[0].text"]);
        let (v, _) = scan(Value::String("password=hunter2secret and more".into()));
        assert_eq!(
            v,
            Value::String("password=[REDACTED:password_assignment] and more".into())
        );
        let (v, ev) = scan(serde_json::json!({"client_token": "q8Zr3LmX0pV7wKa2Ns9Yd4Tf"}));
        assert_eq!(v["client_token"], "[REDACTED:high_entropy_secret]");
        assert_eq!(ev, vec!["high_entropy_secret@$.client_token"]);
    }

    /// Found by the detector fuzz target: a key followed by more letters
    /// slipped through.
    #[test]
    fn a_key_with_characters_appended_is_still_redacted() {
        let (v, ev) = scan(Value::String("ID=AKIAIOSFODNN7EXAMPLEE\n".into()));
        assert!(!v.to_string().contains("AKIAIOSFODNN7EXAMPLE"), "{v}");
        assert_eq!(ev.len(), 1, "{ev:?}");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for text in [
            "commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: a",
            "id 123e4567-e89b-12d3-a456-426614174000 created",
            "the password field must be at least 8 characters",
            "see https://docs.rs/regex for details",
        ] {
            let (v, ev) = scan(Value::String(text.into()));
            assert_eq!(v, Value::String(text.into()), "{text}");
            assert!(ev.is_empty(), "{text}: {ev:?}");
        }
        let image = serde_json::json!({"content":[{"type":"image","mimeType":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAKIAIOSFODNN7EXAMPLEAAAA"}]});
        let (v, ev) = scan(image.clone());
        assert_eq!(v, image);
        assert!(ev.is_empty());
        let (v, ev) = scan(
            serde_json::json!({"commit_sha": "3f786850e387550fdab836ed7e6dc881de23001b", "request_id": "123e4567-e89b-12d3-a456-426614174000"}),
        );
        assert!(ev.is_empty(), "{ev:?} {v}");
    }
}
