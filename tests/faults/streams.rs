//! Many streams opened and reset at once (HTTP/2 rapid reset): the server
//! stays responsive to the others.

use std::time::{Duration, Instant};

use hook_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::helpers::{bash, ev, hello};
use crate::process::Served;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_reset_rapidly_leave_the_server_responsive() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let before = served.rss_kib();
    let client = served.client().await?;
    let started = Instant::now();
    let mut resets = 0;
    let mut opened = 0;
    let mut batch = futures::stream::FuturesUnordered::new();
    for n in 0..10_000u32 {
        let mut c = client.clone();
        batch.push(async move {
            let (tx, rx) = mpsc::channel(2);
            let _ = tx.try_send(hello("alice", &format!("rr-{n}"), ""));
            let call = c.process_hook_event(ReceiverStream::new(rx));
            if n.is_multiple_of(2) {
                // Reset once the server has answered the headers.
                let r = call.await;
                drop(tx);
                r.is_ok()
            } else {
                // Reset while the request is in flight.
                tokio::select! {
                    _ = call => true,
                    () = tokio::task::yield_now() => false,
                }
            }
        });
        if batch.len() >= 256
            && let Some(ok) = futures::StreamExt::next(&mut batch).await
        {
            opened += usize::from(ok);
            resets += 1;
        }
    }
    while let Some(ok) = futures::StreamExt::next(&mut batch).await {
        opened += usize::from(ok);
        resets += 1;
    }
    // The transport may shed a connection that resets this much (h2 sends
    // GOAWAY): that is the protection working, not a failure.
    assert_eq!(resets, 10_000);
    eprintln!(
        "{resets} streams reset ({opened} after the server answered) in {:?}",
        started.elapsed()
    );
    // A fresh client is answered promptly.
    let mut fresh = served.client().await?;
    let mut e = bash("after", "after", "rm -rf /");
    e.agent_id = "alice".into();
    let asked = Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(5), fresh.evaluate(e))
        .await??
        .into_inner();
    assert_eq!(d.verdict(), v1::Verdict::Deny);
    eprintln!("a decision after the resets took {:?}", asked.elapsed());
    // And a stream still works end to end.
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("alice", "after-stream", "")).await?;
    tx.send(ev(bash("s1", "s1", "ls"))).await?;
    let mut s = fresh
        .process_hook_event(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut decided = false;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(5), s.message()).await?? {
        if let Some(v1::server_frame::Frame::Decision(d)) = f.frame {
            assert_eq!(d.verdict(), v1::Verdict::Allow);
            decided = true;
            break;
        }
    }
    assert!(decided);
    let after = served.rss_kib();
    eprintln!("resident memory {before} KiB before, {after} KiB after");
    assert!(after < before + 64 * 1024, "{before} -> {after} KiB");
    Ok(())
}
