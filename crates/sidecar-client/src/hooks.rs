//! An adapter for agent runtimes built around pre/post tool-execution hook
//! traits: hooks run in order and the first deny wins.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use policy_core::{Event, EventKind, Usage, Verdict};

use crate::{ClientDecision, Session};

/// A tool call the agent is about to make.
#[derive(Debug, Clone, Default)]
pub struct ToolCall {
    pub tool_name: String,
    pub input: serde_json::Value,
    pub tool_use_id: String,
    pub cwd: String,
}

/// What a tool returned.
#[derive(Debug, Clone, Default)]
pub struct ToolResult {
    pub output: serde_json::Value,
    pub is_error: bool,
    pub duration_ms: u64,
    pub usage: Usage,
}

/// What a hook says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// No objection; the next hook runs.
    Continue,
    /// Ask a human before running the tool.
    Ask { reason: String },
    /// Do not run the tool (before) or do not hand its output to the model
    /// (after).
    Deny { reason: String },
}

type HookFuture<'a> = Pin<Box<dyn Future<Output = HookOutcome> + Send + 'a>>;

/// A pre/post tool-execution hook.
pub trait ToolHook: Send + Sync {
    fn before_tool<'a>(&'a self, call: &'a ToolCall) -> HookFuture<'a>;
    fn after_tool<'a>(&'a self, call: &'a ToolCall, result: &'a ToolResult) -> HookFuture<'a>;
}

/// Hooks run in registration order. Before a call: the first `Deny` stops
/// the chain and wins; otherwise the first `Ask` is the outcome. After a
/// call: the same.
#[derive(Default, Clone)]
pub struct HookChain {
    hooks: Vec<Arc<dyn ToolHook>>,
}

impl std::fmt::Debug for HookChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookChain")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl HookChain {
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn with(mut self, hook: impl ToolHook + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    pub async fn before_tool(&self, call: &ToolCall) -> HookOutcome {
        self.run(|h| h.before_tool(call)).await
    }

    pub async fn after_tool(&self, call: &ToolCall, result: &ToolResult) -> HookOutcome {
        self.run(|h| h.after_tool(call, result)).await
    }

    /// Runs each hook in order: the first `Deny` stops the chain and wins;
    /// otherwise the first `Ask`; otherwise `Continue`.
    async fn run<'a>(&'a self, step: impl Fn(&'a dyn ToolHook) -> HookFuture<'a>) -> HookOutcome {
        let mut ask = None;
        for h in &self.hooks {
            match step(h.as_ref()).await {
                HookOutcome::Deny { reason } => return HookOutcome::Deny { reason },
                HookOutcome::Ask { reason } => {
                    ask.get_or_insert(HookOutcome::Ask { reason });
                }
                HookOutcome::Continue => {}
            }
        }
        ask.unwrap_or(HookOutcome::Continue)
    }
}

/// The Gatehouse hook: asks the session for a decision on each call.
#[derive(Debug)]
pub struct GatehouseHook {
    session: Session,
}

impl GatehouseHook {
    pub fn new(session: Session) -> Self {
        Self { session }
    }

    fn outcome(d: &ClientDecision) -> HookOutcome {
        let reason = format!("{} ({})", d.reason, d.reason_code);
        match d.verdict {
            Verdict::Allow => HookOutcome::Continue,
            Verdict::Ask => HookOutcome::Ask { reason },
            Verdict::Deny => HookOutcome::Deny { reason },
        }
    }
}

impl ToolHook for GatehouseHook {
    fn before_tool<'a>(&'a self, call: &'a ToolCall) -> HookFuture<'a> {
        Box::pin(async move {
            let d = self
                .session
                .decide(Event::new(EventKind::PreToolUse {
                    tool_name: call.tool_name.clone(),
                    input: call.input.clone(),
                    tool_use_id: call.tool_use_id.clone(),
                    cwd: call.cwd.clone(),
                }))
                .await;
            Self::outcome(&d)
        })
    }

    fn after_tool<'a>(&'a self, call: &'a ToolCall, result: &'a ToolResult) -> HookFuture<'a> {
        Box::pin(async move {
            let d = self
                .session
                .decide(Event::new(EventKind::PostToolUse {
                    tool_name: call.tool_name.clone(),
                    input: call.input.clone(),
                    tool_use_id: call.tool_use_id.clone(),
                    cwd: call.cwd.clone(),
                    output: result.output.clone(),
                    is_error: result.is_error,
                    duration_ms: result.duration_ms,
                    usage: result.usage,
                }))
                .await;
            Self::outcome(&d)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fixed(HookOutcome, Arc<AtomicUsize>);

    impl ToolHook for Fixed {
        fn before_tool<'a>(&'a self, _: &'a ToolCall) -> HookFuture<'a> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let o = self.0.clone();
            Box::pin(async move { o })
        }
        fn after_tool<'a>(&'a self, _: &'a ToolCall, _: &'a ToolResult) -> HookFuture<'a> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let o = self.0.clone();
            Box::pin(async move { o })
        }
    }

    #[tokio::test]
    async fn first_deny_wins_and_stops_the_chain() {
        let calls = Arc::new(AtomicUsize::new(0));
        let ask = HookOutcome::Ask { reason: "a".into() };
        let deny = HookOutcome::Deny { reason: "d".into() };
        let chain = HookChain::new()
            .with(Fixed(HookOutcome::Continue, calls.clone()))
            .with(Fixed(ask.clone(), calls.clone()))
            .with(Fixed(deny.clone(), calls.clone()))
            .with(Fixed(
                HookOutcome::Deny {
                    reason: "later".into(),
                },
                calls.clone(),
            ));
        let call = ToolCall::default();
        assert_eq!(chain.before_tool(&call).await, deny);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the hook after the deny did not run"
        );
        let chain = HookChain::new()
            .with(Fixed(HookOutcome::Continue, calls.clone()))
            .with(Fixed(ask.clone(), calls.clone()));
        assert_eq!(chain.after_tool(&call, &ToolResult::default()).await, ask);
        assert_eq!(
            HookChain::new().before_tool(&call).await,
            HookOutcome::Continue
        );
    }
}
