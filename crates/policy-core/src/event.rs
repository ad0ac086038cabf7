//! The domain event: what an agent runtime is about to do or has done.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One hook event, independent of the wire format it arrived in.
///
/// The JSON form (used by conformance cases, `gatehouse replay` and
/// `gatehouse explain`) is flat: the ids, then `"kind"` and the fields of
/// that kind, for example
/// `{"agent_id":"alice","kind":"pre_tool_use","tool_name":"Bash","input":{"command":"ls"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub agent_id: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// An event of `kind` with every id empty (a session fills them in).
    pub fn new(kind: EventKind) -> Self {
        Self {
            event_id: String::new(),
            agent_id: String::new(),
            session_id: String::new(),
            runtime: String::new(),
            metadata: BTreeMap::new(),
            kind,
        }
    }
}

/// Token usage and cost reported by a tool or a model call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Micro-units of the org's currency.
    pub cost_micros: u64,
}

/// What happened, with the fields policies can see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    PreToolUse {
        tool_name: String,
        #[serde(default)]
        input: serde_json::Value,
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        cwd: String,
    },
    PostToolUse {
        tool_name: String,
        #[serde(default)]
        input: serde_json::Value,
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        cwd: String,
        #[serde(default)]
        output: serde_json::Value,
        #[serde(default)]
        is_error: bool,
        #[serde(default)]
        duration_ms: u64,
        #[serde(default)]
        usage: Usage,
    },
    UserPrompt {
        #[serde(default)]
        prompt: String,
    },
    ModelRequest {
        #[serde(default)]
        model: String,
        #[serde(default)]
        provider: String,
        #[serde(default)]
        estimated_input_tokens: u64,
    },
    ModelResponse {
        #[serde(default)]
        model: String,
        #[serde(default)]
        provider: String,
        #[serde(default)]
        usage: Usage,
    },
    MemorySearch {
        #[serde(default)]
        store: String,
        #[serde(default)]
        query: String,
    },
    MemoryIngest {
        #[serde(default)]
        store: String,
        #[serde(default)]
        content: String,
    },
    MemoryCompaction {
        #[serde(default)]
        store: String,
        #[serde(default)]
        trigger: String,
    },
    BackgroundTaskStart {
        #[serde(default)]
        task_id: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        command: String,
    },
    BackgroundTaskFinish {
        #[serde(default)]
        task_id: String,
        #[serde(default)]
        status: String,
    },
    Install {
        name: String,
        #[serde(default)]
        source: String,
        #[serde(default)]
        version: String,
    },
    SessionStart {
        #[serde(default)]
        source: String,
    },
    SessionEnd {
        #[serde(default)]
        reason: String,
    },
    /// A kind this build does not know (a newer client, or a kind left
    /// unset on the wire). Always denied with `unknown_event`.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The stable snake_case name of the kind, as used in the audit.
    pub fn name(&self) -> &'static str {
        match self {
            Self::PreToolUse { .. } => "pre_tool_use",
            Self::PostToolUse { .. } => "post_tool_use",
            Self::UserPrompt { .. } => "user_prompt",
            Self::ModelRequest { .. } => "model_request",
            Self::ModelResponse { .. } => "model_response",
            Self::MemorySearch { .. } => "memory_search",
            Self::MemoryIngest { .. } => "memory_ingest",
            Self::MemoryCompaction { .. } => "memory_compaction",
            Self::BackgroundTaskStart { .. } => "background_task_start",
            Self::BackgroundTaskFinish { .. } => "background_task_finish",
            Self::Install { .. } => "install",
            Self::SessionStart { .. } => "session_start",
            Self::SessionEnd { .. } => "session_end",
            Self::Unknown => "unknown",
        }
    }

    /// The Cedar action the kind maps to, or `None` for an unknown kind.
    pub fn action(&self) -> Option<&'static str> {
        Some(match self {
            Self::PreToolUse { .. } => "call_tool",
            Self::PostToolUse { .. } => "tool_output",
            Self::UserPrompt { .. } => "submit_prompt",
            Self::ModelRequest { .. } => "request_model",
            Self::ModelResponse { .. } => "model_response",
            Self::MemorySearch { .. } => "search_memory",
            Self::MemoryIngest { .. } => "write_memory",
            Self::MemoryCompaction { .. } => "compact_memory",
            Self::BackgroundTaskStart { .. } => "start_background_task",
            Self::BackgroundTaskFinish { .. } => "finish_background_task",
            Self::Install { .. } => "install",
            Self::SessionStart { .. } => "start_session",
            Self::SessionEnd { .. } => "end_session",
            Self::Unknown => return None,
        })
    }

    /// A short description of the resource, for the audit and explanations:
    /// the tool name, `npm:left-pad`, the model, the memory store, or the
    /// session id.
    pub fn resource_label(&self, session_id: &str) -> String {
        match self {
            Self::PreToolUse { tool_name, .. } | Self::PostToolUse { tool_name, .. } => {
                tool_name.clone()
            }
            Self::ModelRequest { model, .. } | Self::ModelResponse { model, .. } => model.clone(),
            Self::MemorySearch { store, .. }
            | Self::MemoryIngest { store, .. }
            | Self::MemoryCompaction { store, .. } => store.clone(),
            Self::Install { name, source, .. } => format!("{source}:{name}"),
            Self::UserPrompt { .. }
            | Self::BackgroundTaskStart { .. }
            | Self::BackgroundTaskFinish { .. }
            | Self::SessionStart { .. }
            | Self::SessionEnd { .. } => session_id.to_owned(),
            Self::Unknown => String::new(),
        }
    }
}

/// Every action of the built-in schema, in a fixed order.
pub const ACTIONS: [&str; 13] = [
    "call_tool",
    "tool_output",
    "submit_prompt",
    "request_model",
    "model_response",
    "search_memory",
    "write_memory",
    "compact_memory",
    "start_background_task",
    "finish_background_task",
    "install",
    "start_session",
    "end_session",
];
