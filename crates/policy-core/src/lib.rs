//! policy-core is Gatehouse's pure decision logic: it loads and validates a
//! policy bundle (Cedar policies, schema, entities), evaluates hook events
//! against it with Gatehouse's ask and error semantics, and explains the
//! result. The server and the client's local fallback run this same code,
//! so the same bundle and event give the same decision everywhere.
//!
//! It must never do IO (no files, sockets, clocks or threads: callers hand it
//! file contents), never panic on input, and never let an error become an
//! allow: every failure is a DENY with a stable reason code.

mod bundle;
mod config;
mod controls;
mod decision;
mod engine;
mod error;
mod event;
mod explain;
mod guards;
mod limits;
mod mcp;
#[cfg(feature = "proto")]
pub mod proto;
mod shell;
mod tools;

pub use self::bundle::{
    BUILTIN_SCHEMA, Bundle, BundleFile, COMPILED_FORMAT, CompiledBundle, NAMESPACE, content_hash,
};
pub use self::config::{DEFAULT_MAX_LIMIT_KEYS, KeyPart};
pub use self::controls::{Controls, Grant, Grants, Revocations, approval_id};
pub use self::decision::{Decision, ReasonCode, Verdict};
pub use self::engine::{
    Explanation, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, RESERVED_METADATA_KEYS,
    metadata_problem, parse_mcp_name,
};
pub use self::error::{BundleError, Diagnostic};
pub use self::event::{ACTIONS, Event, EventKind, Usage};
pub use self::explain::explain_text;
pub use self::guards::{Evidence, OutputDecision, OutputVerdict};
pub use self::limits::{
    BudgetEntry, CommitStep, LimitOutcome, LimitPlan, LimitState, RateStep, ReservationMatch,
    ReserveStep,
};
pub use self::mcp::mcp_declarations;
pub use self::shell::{
    MAX_COMMAND_BYTES, MAX_DEPTH, ShellFacts, analyze as analyze_shell,
    analyze_argv as analyze_shell_argv,
};
pub use self::tools::{
    MAX_TARGETS, Target, ToolGroup, is_mcp_tool, resolve, shell_quote, targets, tool_groups,
};
