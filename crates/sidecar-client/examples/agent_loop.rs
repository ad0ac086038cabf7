//! A Rust agent loop that asks Gatehouse before and after every tool call.
//!
//! Run against a server:
//!     cargo run -p sidecar-client --example agent_loop -- http://127.0.0.1:7468
//! or with only the local quickstart bundle (no server):
//!     cargo run -p sidecar-client --example agent_loop
//!
//! The loop below stands for any agent runtime with pre/post tool hooks:
//! a `HookChain` runs each registered hook in order, the first deny wins,
//! and Gatehouse is one hook among others.

use std::time::Duration;

use sidecar_client::{
    Client, ClientConfig, GatehouseHook, HookChain, HookOutcome, SessionInfo, ToolCall, ToolHook,
    ToolResult,
};

/// A local hook of the runtime's own, registered before Gatehouse.
struct NoNetworkInCi;

impl ToolHook for NoNetworkInCi {
    fn before_tool<'a>(
        &'a self,
        call: &'a ToolCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = HookOutcome> + Send + 'a>> {
        Box::pin(async move {
            let cmd = call
                .input
                .get("command")
                .and_then(|c| c.as_str())
                .unwrap_or("");
            if std::env::var_os("CI").is_some() && cmd.starts_with("curl") {
                HookOutcome::Deny {
                    reason: "no network in CI".into(),
                }
            } else {
                HookOutcome::Continue
            }
        })
    }

    fn after_tool<'a>(
        &'a self,
        _call: &'a ToolCall,
        _result: &'a ToolResult,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = HookOutcome> + Send + 'a>> {
        Box::pin(async { HookOutcome::Continue })
    }
}

/// Stands in for the runtime's tool execution.
fn run_tool(call: &ToolCall) -> ToolResult {
    ToolResult {
        output: serde_json::json!({ "stdout": format!("ran {}", call.tool_name) }),
        is_error: false,
        duration_ms: 3,
        usage: Default::default(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args().nth(1);
    let quickstart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let client = Client::new(ClientConfig {
        server,
        // A bundle to decide with before (or without) the server.
        bootstrap: Some(sidecar_client::read_bundle_dir(&quickstart)?),
        default_deadline: Duration::from_millis(8),
        ..ClientConfig::default()
    })?;
    let session = client.open_session(SessionInfo {
        agent_id: "example-agent".into(),
        session_id: "example-session".into(),
        runtime: "agent-loop-example".into(),
        metadata: Default::default(),
    });
    session.wait_connected(Duration::from_millis(500)).await;
    let hooks = HookChain::new()
        .with(NoNetworkInCi)
        .with(GatehouseHook::new(session));

    let plan = [
        ("Bash", serde_json::json!({ "command": "cargo test" })),
        ("Read", serde_json::json!({ "file_path": "/repo/.env" })),
        (
            "Bash",
            serde_json::json!({ "command": "git push origin main" }),
        ),
        ("Bash", serde_json::json!({ "command": "rm -rf /" })),
    ];
    for (i, (tool, input)) in plan.into_iter().enumerate() {
        let call = ToolCall {
            tool_name: tool.into(),
            input,
            tool_use_id: format!("call-{i}"),
            cwd: "/repo".into(),
        };
        match hooks.before_tool(&call).await {
            HookOutcome::Deny { reason } => println!("{tool}: blocked: {reason}"),
            HookOutcome::Ask { reason } => println!("{tool}: needs approval: {reason}"),
            HookOutcome::Continue => {
                let result = run_tool(&call);
                match hooks.after_tool(&call, &result).await {
                    HookOutcome::Continue => println!("{tool}: ran, output passed to the model"),
                    other => println!("{tool}: ran, output withheld: {other:?}"),
                }
            }
        }
    }
    Ok(())
}
