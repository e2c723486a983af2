//! Build script shared by the crates with binaries (agent, server, fleet; `build = ` in their
//! Cargo.toml): sets `EKATTEST_GIT_COMMIT` for `--version` (`ekattest_protocol::version_line!`).
//!
//! The commit is `$EKATTEST_GIT_COMMIT` when set (packaging from a tarball), else
//! `git rev-parse --short=12 HEAD` in the crate's folder, else `unknown`. It never fails the
//! build: no git, no commit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned())
}

/// Reruns this script when `git_path` (a path inside the git folder) changes, if it exists
/// (a missing file would rerun it on every build).
fn watch(git_path: &str) {
    if let Some(p) = git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-path",
        git_path,
    ]) && std::path::Path::new(&p).exists()
    {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=EKATTEST_GIT_COMMIT");
    let commit = match std::env::var("EKATTEST_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // HEAD moves on checkout; the branch it names moves on commit.
            watch("HEAD");
            watch("packed-refs");
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(&branch);
            }
            git(&["rev-parse", "--short=12", "HEAD"])
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=EKATTEST_GIT_COMMIT={commit}");
}
