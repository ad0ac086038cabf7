//! gatehouse-icount: fixed workloads for instruction counting. `cargo xtask
//! bench` runs each under `valgrind --tool=callgrind` twice, with N and 2N
//! iterations, so that set-up cancels out: (I(2N) - I(N)) / N is the cost of
//! one iteration. It must stay deterministic (no clocks in the loop, no
//! randomness) and must never print figures of its own.
//!
//! usage: gatehouse-icount <pre|post|audit> <iterations>

use std::path::Path;

use gatehouse_icount::{audit_record, post_event, pre_event};
use policy_core::{Bundle, Event};

fn quickstart() -> Result<Bundle, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let snapshot = bundle_dir::read_snapshot(&dir).map_err(|e| e.to_string())?;
    Bundle::load(snapshot.files).map_err(|e| e.to_string())
}

fn audit(n: usize) -> Result<(), String> {
    use audit_store::AuditStore as _;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let path = dir.path().join("icount-audit.db");
    // Checkpoint signing runs once a second, so how often it runs depends on
    // how fast valgrind is: it is left out to keep the count repeatable.
    // The writer thread's path, every time: whether an append commits on
    // its caller's thread depends on timing, which must not move a count.
    let options = audit_store::AuditOptions {
        durability: audit_store::Durability::ProcessCrashSafe,
        key: None,
        inline_commits: false,
        // Nor the background checkpointer's passes, whose number depends on
        // how long valgrind takes: an append's own work is what is counted.
        checkpoint_every: std::time::Duration::from_secs(3600),
        ..audit_store::AuditOptions::new(&path)
    };
    let store = audit_store::SqliteAudit::open_with(&path, options).map_err(|e| e.to_string())?;
    for i in 0..n {
        let record = audit_record(format!("a{i:08}"));
        rt.block_on(store.append(record))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        return Err("usage: gatehouse-icount <pre|post|audit> <iterations>".into());
    };
    match what.as_str() {
        "pre" => {
            let bundle = quickstart()?;
            // Five events, cycled: building them is set-up, not iteration.
            let events: Vec<Event> = (0..5).map(pre_event).collect();
            for i in 0..n {
                std::hint::black_box(bundle.evaluate(&events[i % 5]));
            }
        }
        "post" => {
            let bundle = quickstart()?;
            let event = post_event(0, 4096);
            for _ in 0..n {
                std::hint::black_box(bundle.evaluate(&event));
            }
        }
        "audit" => audit(n)?,
        other => return Err(format!("unknown workload `{other}`")),
    }
    Ok(())
}
