//! The README's quickstart, executed: every `sh` block of its "Quickstart" section runs in
//! bash against a real `oris serve`, with the built `oris` binary where the README says it
//! is (`$PWD/target/debug`) and the server's URL and token in `ORIS_URL` / `ORIS_TOKEN`.
//! A README command that stops working fails this test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Oris, TOKEN, token_file};

/// The fenced `sh` blocks of the README section whose heading starts with `heading`.
fn sh_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}` section"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + "```sh\n".len()..];
        let end = body.find("\n```").expect("a closed code block");
        blocks.push(body[..end].to_owned());
        rest = &body[end + 4..];
    }
    blocks
}

/// A directory whose `target/debug` holds the `oris` under test (the README puts
/// `$PWD/target/debug` on the PATH).
fn workdir(tmp: &Path) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_oris"));
    let dir = tmp.join("checkout");
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::os::unix::fs::symlink(bin.parent().unwrap(), dir.join("target/debug")).unwrap();
    dir
}

fn run_block(block: &str, dir: &Path, oris: &Oris) -> String {
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir)
        .env("ORIS_URL", &oris.base)
        .env("ORIS_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .env_remove("ORIS_DB")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README block failed ({:?}):\n{block}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let blocks = sh_blocks(&readme, "## Quickstart");
    assert_eq!(blocks.len(), 2, "the CLI walkthrough and the curl call");
    let tmp = tempfile::tempdir().unwrap();
    let tf = token_file(tmp.path());
    let oris = Oris::start(
        &tmp.path().join("oris.db"),
        &["--admin-token-file", tf.to_str().unwrap()],
    );
    oris.ready().await;
    let dir = workdir(tmp.path());

    let walkthrough = run_block(&blocks[0], &dir, &oris);
    for expected in ["interrupted", "escalate", "run_completed", "notify_manager"] {
        assert!(
            walkthrough.contains(expected),
            "`{expected}` in the walkthrough's output:\n{walkthrough}"
        );
    }
    let (_, job) = oris.get("/v1/jobs/expense-1").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["decision"], "approved", "{job}");

    let created = run_block(&blocks[1], &dir, &oris);
    assert!(created.contains("\"expense-2\""), "{created}");
    let (_, job) = oris.get("/v1/jobs/expense-2").await;
    assert_eq!(job["graph"], "expense-approval", "{job}");
}
