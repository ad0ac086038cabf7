//! Agent hook formats: how each agent's hook JSON maps to a Gatehouse
//! event (and, for the hook commands, how a decision maps back).

pub(crate) mod claude;

use policy_core::Event;

/// What an agent's hook input means for policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mapped {
    /// An event to decide.
    Event(Box<Event>),
    /// A hook event that carries no decision (notifications, stops).
    NoDecision { hook_event: String },
}

/// A hook input that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadInput(pub(crate) String);

pub(crate) fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}
