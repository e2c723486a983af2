//! The `--version` convention every workspace binary follows, checked from the tests of the
//! crate that builds each binary: one line `NAME VERSION (git COMMIT)` on stdout, exit 0.
//! COMMIT is what `build/git_commit.rs` saw: `$EKATTEST_GIT_COMMIT`, else
//! `git rev-parse --short=12 HEAD`, else `unknown`.

use std::path::Path;
use std::process::Command;

/// The commit a binary built from this checkout should report.
#[must_use]
pub fn expected_commit() -> String {
    if let Ok(c) = std::env::var("EKATTEST_GIT_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_owned();
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Runs `bin --version` and checks its output is exactly
/// `{name} {version} (git {expected_commit()})` and its status 0; returns the line.
///
/// # Errors
/// What differs, with the binary's output.
pub fn check_version_flag(bin: &Path, name: &str, version: &str) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{name} --version exited {:?}; stdout {stdout:?}, stderr {stderr:?}",
            out.status.code()
        ));
    }
    let want = format!("{name} {version} (git {})\n", expected_commit());
    if stdout != want {
        return Err(format!(
            "{name} --version printed {stdout:?}, expected {want:?}"
        ));
    }
    Ok(stdout.trim_end().to_owned())
}
