//! Atomic policy reload and bundle push to connected streams.

use std::path::Path;

use gatehouse_tests::TestServer;
use hook_proto::v1::{self, server_frame};

use crate::helpers::{bash, ev, hello, open};

fn write_bundle(dir: &Path, forbid_ls: bool) -> anyhow::Result<()> {
    let mut text = String::from(
        "@id(\"allow\") permit(principal, action == Gatehouse::Action::\"call_tool\", resource);\n",
    );
    if forbid_ls {
        text.push_str(
            "@id(\"no-ls\") forbid(principal, action == Gatehouse::Action::\"call_tool\", resource) \
             when { context.input has command && context.input.command == \"ls\" };\n",
        );
    }
    std::fs::write(dir.join("p.cedar"), text)?;
    Ok(())
}

#[tokio::test]
async fn reload_swaps_valid_bundles_rejects_bad_ones_and_pushes_to_streams() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_bundle(dir.path(), false)?;
    let server = TestServer::start(dir.path(), |_| {}).await?;
    let first_hash = server.policy.current().hash().to_owned();
    let mut s = open(&server, hello("alice", "s", &first_hash)).await?;
    s.tx.send(ev(bash("c1", "e1", "ls"))).await?;
    let d = s.decision().await?;
    assert_eq!(
        (d.verdict(), d.bundle_hash.as_str()),
        (v1::Verdict::Allow, first_hash.as_str())
    );

    // A bad bundle is rejected and the old one stays.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit(principal, action, resource) when { ) };",
    )?;
    assert!(server.policy.reload().is_err());
    assert_eq!(server.policy.current().hash(), first_hash);
    std::fs::remove_file(dir.path().join("broken.cedar"))?;

    // A good one is swapped in and pushed.
    write_bundle(dir.path(), true)?;
    assert!(server.policy.reload()?);
    let new_hash = server.policy.current().hash().to_owned();
    assert_ne!(new_hash, first_hash);
    loop {
        match s.next().await?.and_then(|f| f.frame) {
            Some(server_frame::Frame::Bundle(b)) => {
                assert_eq!(b.hash, new_hash);
                break;
            }
            Some(_) => {}
            None => anyhow::bail!("stream ended before the bundle push"),
        }
    }
    s.tx.send(ev(bash("c2", "e2", "ls"))).await?;
    let d = s.decision().await?;
    assert_eq!(d.verdict(), v1::Verdict::Deny);
    assert_eq!(d.policies, vec!["no-ls"]);
    assert_eq!(d.bundle_hash, new_hash);
    Ok(())
}
