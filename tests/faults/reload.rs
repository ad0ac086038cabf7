//! A half-written reload: a bundle edited in place, slowly, under load,
//! never serves a decision from an intermediate bundle.

use std::path::Path;

use gatehouse_tests::TestServer;
use hook_proto::v1;

use crate::helpers::bash;

/// A copy of the quickstart the test may rewrite.
fn quickstart_copy() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in bundle_dir::read_bundle_dir(&crate::helpers::quickstart())? {
        let path = dir.path().join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, f.content)?;
    }
    Ok(dir)
}

async fn watched(dir: &Path) -> anyhow::Result<TestServer> {
    TestServer::start(dir, |c| {
        c.watch_interval = Some(std::time::Duration::from_millis(20));
        c.settle = std::time::Duration::from_millis(300);
    })
    .await
}

/// A unary event from `alice`.
fn unary(n: usize, command: &str) -> v1::HookEvent {
    let mut e = bash(&format!("c{n}"), &format!("e{n}"), command);
    e.agent_id = "alice".into();
    e
}

/// Evaluates `rm -rf /` over the unary RPC: (verdict and reason code,
/// bundle hash).
async fn rm_rf(server: &TestServer, n: usize) -> anyhow::Result<(String, String)> {
    let mut client = server.client().await?;
    let d = client.evaluate(unary(n, "rm -rf /")).await?.into_inner();
    Ok((
        format!("{:?} {}", d.verdict(), d.reason_code),
        d.bundle_hash,
    ))
}

/// The reproduction: `{ sleep 4; cat guardrails.cedar; } > B/guardrails.cedar`
/// leaves the file empty for longer than any settle interval. The forbids
/// it held must never stop applying.
#[tokio::test]
async fn an_emptied_policy_file_never_goes_live() -> anyhow::Result<()> {
    let dir = quickstart_copy()?;
    let server = watched(dir.path()).await?;
    let hash = server.policy.current().hash().to_owned();
    let file = dir.path().join("guardrails.cedar");
    let content = std::fs::read_to_string(&file)?;
    std::fs::write(&file, "")?;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut n = 0;
    while std::time::Instant::now() < until {
        n += 1;
        assert_eq!(
            rm_rf(&server, n).await?,
            ("Deny policy_forbid".to_owned(), hash.clone())
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Truncated after the first policy, for longer than the settle
    // interval: refused too.
    let cut = content
        .find("@id(\"no-pipe-to-shell\")")
        .unwrap_or(content.len() / 2);
    std::fs::write(&file, &content[..cut])?;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(server.policy.current().hash(), hash);
    std::fs::write(&file, &content)?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(server.policy.current().hash(), hash);
    assert!(n > 20, "{n} decisions");
    Ok(())
}

/// Every bundle file overwritten in place, byte by byte, while decisions
/// run: no decision comes from an intermediate bundle.
#[tokio::test]
async fn byte_by_byte_rewrites_under_load_never_serve_an_intermediate_bundle() -> anyhow::Result<()>
{
    let dir = quickstart_copy()?;
    let server = watched(dir.path()).await?;
    let hash = server.policy.current().hash().to_owned();
    let files = bundle_dir::read_bundle_dir(dir.path())?;
    let root = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::Write as _;
        for f in files.iter().filter(|f| !f.path.starts_with("tests/")) {
            // `cp` or a shell `>`: truncate, then write, a byte at a time.
            let mut out = std::fs::File::create(root.join(&f.path))?;
            for chunk in f.content.as_bytes().chunks(8) {
                out.write_all(chunk)?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
        }
        Ok(())
    });
    let mut n = 0;
    let mut verdicts = std::collections::BTreeMap::new();
    while !writer.is_finished() {
        n += 1;
        let (verdict, got) = rm_rf(&server, n).await?;
        assert_eq!(got, hash, "decision {n} came from an intermediate bundle");
        *verdicts.entry(verdict).or_insert(0) += 1;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert_eq!(
        verdicts.keys().collect::<Vec<_>>(),
        vec!["Deny policy_forbid"],
        "{verdicts:?}"
    );
    assert!(n > 50, "{n} decisions under load");
    Ok(())
}

/// With a bundle.lock manifest, only the locked file set is activated, how
/// ever slowly a change is written; `gatehouse bundle lock` activates it.
#[tokio::test]
async fn a_manifest_activates_only_the_locked_file_set() -> anyhow::Result<()> {
    let dir = quickstart_copy()?;
    bundle_dir::lock(dir.path())?;
    let server = watched(dir.path()).await?;
    let hash = server.policy.current().hash().to_owned();
    let extra = dir.path().join("extra.cedar");
    let text = "@id(\"no-ls\") forbid(principal, action == Gatehouse::Action::\"call_tool\", resource)\n\
                when { context has command && context.command == \"ls\" };\n";
    // Written with long pauses (each longer than the settle interval).
    for part in [&text[..20], &text[..60], text] {
        std::fs::write(&extra, part)?;
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        assert_eq!(
            server.policy.current().hash(),
            hash,
            "activated unlocked {part:?}"
        );
    }
    bundle_dir::lock(dir.path())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.policy.current().hash() == hash {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "locked bundle not activated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut client = server.client().await?;
    let d = client.evaluate(unary(0, "ls")).await?.into_inner();
    assert_eq!(
        (d.verdict(), d.policies.clone()),
        (v1::Verdict::Deny, vec!["no-ls".to_owned()]),
        "{d:?}"
    );
    Ok(())
}

/// Deleting a file's last forbid looks like a truncation and is refused
/// without a manifest; `gatehouse bundle lock` says the edit is complete.
#[tokio::test]
async fn a_locked_edit_may_remove_a_files_last_forbids() -> anyhow::Result<()> {
    let dir = quickstart_copy()?;
    let server = watched(dir.path()).await?;
    let hash = server.policy.current().hash().to_owned();
    let file = dir.path().join("guardrails.cedar");
    let content = std::fs::read_to_string(&file)?;
    let cut = content
        .rfind("@id(\"no-force-push\")")
        .ok_or_else(|| anyhow::anyhow!("no last forbid"))?;
    std::fs::write(&file, &content[..cut])?;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(server.policy.current().hash(), hash, "refused unlocked");
    bundle_dir::lock(dir.path())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.policy.current().hash() == hash {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "locked edit not activated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        server
            .policy
            .current()
            .policy_file("no-force-push")
            .is_none()
    );
    Ok(())
}
