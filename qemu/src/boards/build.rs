//! `ekattest-fleet build-agent --board NAME [--profile agent]`: cross-builds the agent for a
//! board and reports the binary's path, size and `file` output.
//!
//! Before cargo runs, the target's standard library and the board's linker and C compiler
//! are checked, so a missing one fails with the exact `rustup`/`apt-get` command instead of
//! a linker error. Cargo gets the board's linker (`CARGO_TARGET_<TRIPLE>_LINKER`) and ring's
//! cross compiler (`CC_<triple>`, `AR_<triple>`, unless already set); the `+crt-static` flag
//! of the gnu targets comes from `.cargo/config.toml`. A result that `file` does not call a
//! static executable of the target's machine is an error. This module never changes the
//! process's working directory or environment (only the children's).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::{Board, Error, Result, Target};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The board.
    pub board: Board,
    /// The workspace root (where `cargo build` runs: `.cargo/config.toml` is read from it).
    pub workspace: PathBuf,
    /// Cargo profile (`agent`: size first).
    pub profile: String,
    /// `--target-dir` (default: cargo's).
    pub target_dir: Option<PathBuf>,
}

/// A built agent.
#[derive(Debug, Clone)]
pub struct Built {
    /// The executable.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// `file -b` output (`None` when `file` is not installed).
    pub file: Option<String>,
    /// How long cargo took.
    pub elapsed: Duration,
    /// `--help` under the target's QEMU user-mode emulator: `Some(true)` ran and exited 0,
    /// `Some(false)` failed, `None` when the emulator is not installed.
    pub runs_under_qemu: Option<bool>,
}

/// Finds `program` on PATH (or checks a path).
fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|c| c.is_file())
}

fn command_error(program: &str, reason: impl Into<String>) -> Error {
    Error::Command {
        program: program.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that the target's standard library is installed and that the board's linker and
/// the target's C compiler and archiver are on PATH.
///
/// # Errors
/// [`Error::MissingTarget`] with the `rustup` command, [`Error::MissingTool`] with the
/// `apt-get` command, [`Error::Command`] if rustc cannot be run.
pub fn preflight(board: &Board, workspace: &Path) -> Result<&'static Target> {
    let target = board.target()?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", target.triple])
        .current_dir(workspace)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| command_error("rustc --print target-libdir", e.to_string()))?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has_std = out.status.success()
        && std::fs::read_dir(&libdir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("libstd-") && n.ends_with(".rlib"))
            })
        });
    if !has_std {
        return Err(Error::MissingTarget {
            triple: target.triple.to_owned(),
        });
    }
    for program in [board.build.linker.as_str(), target.cc, target.ar] {
        if on_path(program).is_none() {
            // The cross gcc package pulls in the matching binutils (the archiver).
            let fix = if [target.linker, target.cc, target.ar].contains(&program) {
                format!(
                    "run `apt-get install {}` (or bash .ci/install)",
                    target.apt_package
                )
            } else {
                format!(
                    "install it, or set [build] linker in boards/{}.toml (the default for {} \
                     is {})",
                    board.name, target.triple, target.linker
                )
            };
            return Err(Error::MissingTool {
                program: program.to_owned(),
                fix,
            });
        }
    }
    Ok(target)
}

/// Cross-builds `ekattest-agent` for the board (`cargo build -p ekattest-agent --target
/// TRIPLE --profile PROFILE`), then checks and describes the result. Cargo's progress goes
/// to this process's stderr.
///
/// # Errors
/// Those of [`preflight`]; [`Error::Command`] when cargo fails, reports no executable, or
/// the result is not a static executable for the target.
pub fn build_agent(opts: &BuildOptions) -> Result<Built> {
    let target = preflight(&opts.board, &opts.workspace)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "ekattest-agent", "--target"])
        .arg(target.triple)
        .arg("--profile")
        .arg(&opts.profile)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(&opts.workspace)
        .env(target.cargo_linker_var(), &opts.board.build.linker)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = &opts.target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    for (var, value) in [("CC_", target.cc), ("AR_", target.ar)] {
        let var = format!("{var}{}", target.env_suffix());
        if std::env::var_os(&var).is_none() {
            cmd.env(var, value);
        }
    }
    let shown = format!(
        "cargo build -p ekattest-agent --target {} --profile {}",
        target.triple, opts.profile
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| command_error(&shown, format!("cannot start {cargo:?}: {e}")))?;
    let mut executable = None;
    if let Some(stdout) = child.stdout.take() {
        // One JSON message per line (cargo's own output: trusted, not bounded here).
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(path) = artifact_executable(&line) {
                executable = Some(path);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| command_error(&shown, e.to_string()))?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(command_error(
            &shown,
            format!("failed ({status}); cargo's messages are above"),
        ));
    }
    let path =
        executable.ok_or_else(|| command_error(&shown, "reported no ekattest-agent executable"))?;
    let size = std::fs::metadata(&path)
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?
        .len();
    let file = describe(&path)?;
    if let Some(text) = &file {
        check_file_output(text, target)
            .map_err(|reason| command_error(&shown, format!("{}: {reason}", path.display())))?;
    }
    let runs_under_qemu = on_path(target.qemu_user).map(|emu| {
        Command::new(emu)
            .arg(&path)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    Ok(Built {
        path,
        size,
        file,
        elapsed,
        runs_under_qemu,
    })
}

/// The `executable` of a cargo `compiler-artifact` message for the agent binary.
fn artifact_executable(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact"
        || msg.get("target")?.get("name")?.as_str()? != "ekattest-agent"
    {
        return None;
    }
    msg.get("executable")?.as_str().map(PathBuf::from)
}

/// `file -b PATH`, or `None` when `file` is not installed.
fn describe(path: &Path) -> Result<Option<String>> {
    let Some(file) = on_path("file") else {
        return Ok(None);
    };
    let out = Command::new(file)
        .arg("-b")
        .arg(path)
        .output()
        .map_err(|e| command_error("file", e.to_string()))?;
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Checks `file -b` output: an executable for the target's machine, statically linked.
///
/// # Errors
/// What is wrong and the likely cause.
pub fn check_file_output(text: &str, target: &Target) -> std::result::Result<(), String> {
    if !text.contains(target.file_machine) {
        return Err(format!(
            "`file` says {text:?}: not an {} executable",
            target.file_machine
        ));
    }
    if !(text.contains("statically linked") || text.contains("static-pie linked")) {
        return Err(format!(
            "`file` says {text:?}: not statically linked (is .cargo/config.toml's \
             +crt-static in effect? a RUSTFLAGS environment variable replaces it)"
        ));
    }
    Ok(())
}

const USAGE: &str = "\
usage: ekattest-fleet build-agent --board NAME [--profile agent] [--boards DIR] [--target-dir DIR]

Cross-builds ekattest-agent for boards/NAME.toml and prints the binary's path, size and
`file` output. --boards: the profiles folder (default: this source tree's boards/; the
workspace built is its parent). Needs the target's rustup component and cross gcc
(bash .ci/install installs both).";

/// `ekattest-fleet build-agent ...`: 0 built, 1 failed, 2 usage.
#[must_use]
pub fn cli(args: Vec<OsString>) -> ExitCode {
    match parse_args(args) {
        Ok(Some((opts_dir, board_name, profile, target_dir))) => {
            run_cli(&opts_dir, &board_name, profile, target_dir)
        }
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ekattest-fleet build-agent: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

type Args = (PathBuf, String, String, Option<PathBuf>);

fn parse_args(args: Vec<OsString>) -> std::result::Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut board = None;
    let mut profile = "agent".to_owned();
    let mut dir = PathBuf::from(super::DEFAULT_DIR);
    let mut target_dir = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("board") => board = Some(parser.value()?.string()?),
            Long("profile") => profile = parser.value()?.string()?,
            Long("boards") => dir = parser.value()?.into(),
            Long("target-dir") => target_dir = Some(parser.value()?.into()),
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    let board = board.ok_or_else(|| lexopt::Error::from("missing --board NAME"))?;
    Ok(Some((dir, board, profile, target_dir)))
}

fn run_cli(dir: &Path, name: &str, profile: String, target_dir: Option<PathBuf>) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("ekattest-fleet build-agent: {e}");
        ExitCode::FAILURE
    };
    let board = match super::find(dir, name) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let workspace = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let opts = BuildOptions {
        board,
        workspace,
        profile,
        target_dir,
    };
    match build_agent(&opts) {
        Ok(built) => {
            println!("{}", summary(&opts.board, &built));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The report `build-agent` prints.
#[must_use]
pub fn summary(board: &Board, built: &Built) -> String {
    let emulator = board.target().map(|t| t.qemu_user).unwrap_or("qemu-user");
    let runs = match built.runs_under_qemu {
        Some(true) => format!("yes ({emulator} ... --help exited 0)"),
        Some(false) => format!("NO ({emulator} ... --help failed)"),
        None => format!("not checked ({emulator} not installed: apt-get install qemu-user-static)"),
    };
    format!(
        "board:   {}\ntarget:  {}\nbinary:  {}\nsize:    {} bytes ({:.2} MiB, {:.2} MB)\nfile:    {}\nruns:    {runs}\nbuild:   {:.1} s",
        board.name,
        board.build.target,
        built.path.display(),
        built.size,
        built.size as f64 / (1024.0 * 1024.0),
        built.size as f64 / 1e6,
        built
            .file
            .as_deref()
            .unwrap_or("(file not installed: apt-get install file)"),
        built.elapsed.as_secs_f64(),
    )
}
