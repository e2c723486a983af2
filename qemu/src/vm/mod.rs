//! `ekattest-fleet vm`: the QEMU VM fleet. N virtual ARM boards of one board profile
//! (`boards/qemu-virt-*.toml`), each with its own swtpm provisioned with EK certificates
//! from the run's CA behind QEMU's `tpm-tis-device`; the guest kernel's `tpm_tis` binds it
//! (transport `kernel`), or on `tis-mmio` boards (`qemu-virt-aarch64-tis`) no TPM module is
//! loaded and the agent drives the TIS registers itself through `/dev/mem` at the address
//! the guest's device tree gives. The cross-built agent in the initramfs attests through the
//! host's mosquitto (seen from the guest as 10.0.2.2) against one `ekattest-server`: the
//! run's [`Stage`](crate::stage::Stage); the boards and their swtpm stay here.
//!
//! - [`image`]: the guest image (Debian kernel, out-of-tree `tpm_tis.ko`, busybox
//!   initramfs), fetched with a private apt configuration ([`apt`]) and cached by version.
//! - [`init`]: the guest's `/init`, rendered for the board's TPM transport.
//! - [`boot`]: one board (swtpm on a unix control socket, QEMU, the serial console in a file).
//! - [`cpio`]: the newc archive writer for the initramfs.
//!
//! Boots are staggered: at most `--parallel` boards (default two per core) are booting at
//! once, since an oversubscribed boot storm starves guests until the kernel's TPM probe
//! times out. The run's folder keeps each board's console and swtpm logs, the server log and
//! the report. Nothing here changes the host's package state, binds a fixed port, or leaves
//! a process running. Two runs must not prepare images in the same cache folder at the same
//! time (apt and the module build share its folders).

pub mod apt;
pub mod boot;
pub mod cli;
pub mod cpio;
pub mod image;
pub mod init;

use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::boards::{self, Board, BuildOptions};
use crate::daemons::metric_value;
use crate::error::{self, Error, Result};
use crate::report::Summary;
use crate::stage::{Policy, Stage, StageConfig, bin_beside};
use crate::swtpm::{Ca, Device, EkKind, ProvisionOptions, openssl_public_hash};
use boot::{BootFiles, Outcome, Vm};

/// The cluster id of a VM run.
pub const CLUSTER: &str = "vm";
/// The trust domain of a VM run.
pub const TRUST_DOMAIN: &str = "vm.ekattest.test";

/// Options of `ekattest-fleet vm`.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The board profile's name.
    pub board: String,
    /// Number of boards.
    pub count: usize,
    /// The image cache.
    pub cache: PathBuf,
    /// Where the boards' profiles are.
    pub boards_dir: PathBuf,
    /// Write the JSON report here too.
    pub report: Option<PathBuf>,
    /// The run's folder (default: a new temporary folder).
    pub run_dir: Option<PathBuf>,
    /// Keep the temporary run folder.
    pub keep: bool,
    /// Boards booting at once (default two per core).
    pub parallel: usize,
    /// Folder of `ekattest-server` (default: beside this program).
    pub bin_dir: Option<PathBuf>,
    /// The agent for the guest (default: cross-built with `build-agent`).
    pub agent: Option<PathBuf>,
    /// The agents' `svid-key` (`software` or `tpm`; default: the board profile's, else
    /// software).
    pub svid_key: Option<String>,
}

impl VmOptions {
    /// Defaults for `count` boards of `board`.
    #[must_use]
    pub fn new(board: &str, count: usize) -> Self {
        Self {
            board: board.to_owned(),
            count,
            cache: PathBuf::from(image::DEFAULT_CACHE),
            boards_dir: PathBuf::from(boards::DEFAULT_DIR),
            report: None,
            run_dir: None,
            keep: false,
            parallel: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .saturating_mul(2),
            bin_dir: None,
            agent: None,
            svid_key: None,
        }
    }
}

/// One board's result.
#[derive(Debug, Clone)]
pub struct BoardResult {
    /// Index.
    pub index: usize,
    /// The SPIFFE ID the policy gives this board's EK.
    pub expected_id: String,
    /// What the guest said (None: no result marker before exit or timeout).
    pub outcome: Option<Outcome>,
    /// Host-measured time from QEMU start to the result marker.
    pub boot_to_identity: Option<Duration>,
    /// The console log.
    pub console: PathBuf,
}

impl BoardResult {
    /// Whether the board got the expected identity.
    #[must_use]
    pub fn attested(&self) -> bool {
        matches!(&self.outcome, Some(Outcome::Ok { spiffe_id, .. }) if *spiffe_id == self.expected_id)
    }
}

/// A finished run.
#[derive(Debug)]
pub struct VmRun {
    /// The summary (mode `vm`).
    pub summary: Summary,
    /// Per board.
    pub boards: Vec<BoardResult>,
    /// The run's folder.
    pub dir: PathBuf,
    /// The image as prepared.
    pub image: image::Image,
    /// The server's log (JSON lines).
    pub server_log: String,
    /// The server's metrics at the end.
    pub server_metrics: String,
}

/// Provisions board `i`'s TPM state into `dir/tpm`; returns its expected SPIFFE ID.
fn provision(ca: &Ca, dir: &Path) -> Result<String> {
    let device = Device::provision(
        ca,
        &ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: false,
        },
    )
    .map_err(|source| Error::Tpm {
        what: "cannot provision a swtpm".into(),
        source,
    })?;
    let hash = openssl_public_hash(&device.certs_dir().join(EkKind::Rsa2048.cert_file_name()))
        .map_err(|source| Error::Tpm {
            what: "cannot hash the EK certificate".into(),
            source,
        })?;
    let tpm = dir.join("tpm");
    error::create_dir_all(&tpm)?;
    let from = device.state_dir().join("tpm2-00.permall");
    std::fs::copy(&from, tpm.join("tpm2-00.permall")).map_err(Error::io("copy", &from))?;
    Ok(format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}"))
}

/// Runs the VM fleet. Returns the run (also when boards failed); an error when the run
/// could not be set up or was interrupted.
///
/// # Errors
/// An [`Error`] naming the step that failed.
pub fn run(opts: &VmOptions, stop: &AtomicBool) -> Result<VmRun> {
    let started = Instant::now();
    if opts.count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    let board = boards::find(&opts.boards_dir, &opts.board)?;
    let q = board.qemu.clone().ok_or_else(|| {
        Error::Config(format!(
            "board {} has no [qemu] section: the VM fleet boots only virtual boards",
            board.name
        ))
    })?;
    let target = board.target()?;
    let emulator = crate::process::find_program(target.qemu_system, "qemu-system-arm")?;
    let server = bin_beside(
        opts.bin_dir.as_deref(),
        "ekattest-server",
        "cargo build -p ekattest-server",
    )?;
    // 1. Image and agent.
    let image = image::prepare(&board, &opts.cache)?;
    eprintln!(
        "ekattest-fleet vm: image {} {} ({}): downloaded {} files, {} in {:.1} s",
        board.name,
        image.resolved.abi,
        image.resolved.kernel_version,
        image.downloaded,
        if image.cached { "all cached" } else { "built" },
        image.elapsed.as_secs_f64()
    );
    let agent = match &opts.agent {
        Some(p) => p.clone(),
        None => agent_for(&board)?,
    };
    // 2. Run folder.
    let (tmp, dir) = match &opts.run_dir {
        Some(d) => {
            error::create_dir_all(d)?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ekattest-vm.")
                .tempdir()
                .map_err(|source| Error::TempDir {
                    what: "the run folder",
                    source,
                })?;
            let d = t.path().to_owned();
            (Some(t), d)
        }
    };
    eprintln!("ekattest-fleet vm: run folder {}", dir.display());
    let result = run_in(
        opts, stop, &board, &q, &dir, &emulator, &server, &agent, image, started,
    );
    if let Some(t) = tmp
        && (opts.keep
            || result
                .as_ref()
                .map_or(true, |r| r.summary.attested < opts.count))
    {
        let kept = t.keep();
        eprintln!("ekattest-fleet vm: run folder kept: {}", kept.display());
    }
    result
}

/// Cross-builds (or finds up to date) the board's agent.
fn agent_for(board: &Board) -> Result<PathBuf> {
    let workspace = Path::new(boards::DEFAULT_DIR)
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| Error::Config("cannot find the workspace".into()))?;
    let built = boards::build_agent(&BuildOptions {
        board: board.clone(),
        workspace,
        profile: "agent".into(),
        target_dir: None,
    })?;
    eprintln!(
        "ekattest-fleet vm: agent {} ({} bytes)",
        built.path.display(),
        built.size
    );
    Ok(built.path)
}

/// Provisions the boards' TPMs, starts the stage, boots the boards, reports.
#[allow(clippy::too_many_arguments)]
fn run_in(
    opts: &VmOptions,
    stop: &AtomicBool,
    board: &Board,
    q: &boards::Qemu,
    dir: &Path,
    emulator: &Path,
    server_bin: &Path,
    agent: &Path,
    image: image::Image,
    started: Instant,
) -> Result<VmRun> {
    let mut summary = Summary {
        mode: "vm".into(),
        devices: opts.count,
        servers: 1,
        ..Summary::default()
    };
    // 3. TPMs.
    let t = Instant::now();
    let ca = Ca::create().map_err(|e| Error::Ca {
        what: "cannot create the swtpm CA".into(),
        source: Box::new(e),
    })?;
    let board_dirs: Vec<PathBuf> = (0..opts.count)
        .map(|i| dir.join(format!("board-{i:03}")))
        .collect();
    let expected = provision_all(&ca, &board_dirs, stop)?;
    summary.provisioning = Some(t.elapsed());
    // 4. Stage: mosquitto, SVID CA, a policy trusting the swtpm CA, one server.
    let policy = crate::fleet::policy(
        &String::from_utf8_lossy(&error::read(ca.root_cert_pem())?),
        &String::from_utf8_lossy(&error::read(ca.intermediate_cert_pem())?),
    );
    let mut stage = Stage::start(&stage_config(opts, dir, server_bin, policy))?;
    let broker_port = stage.broker().map_or(0, |b| {
        b.lock().unwrap_or_else(PoisonError::into_inner).port()
    });
    // 5. The run's initramfs: cached base + agent, configuration, bundle.
    let files = initramfs(
        opts,
        board,
        dir,
        emulator,
        agent,
        &image,
        &stage,
        broker_port,
    )?;
    // 6. Boot, staggered.
    let boot_started = Instant::now();
    let results = boot_all(opts, stop, board, q, &board_dirs, &expected, &files)?;
    summary.elapsed = boot_started.elapsed();
    summary.notes.push(format!(
        "whole run (image, agent, provisioning, boots): {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let (metrics, server_log) = stage.server(0).map_or_else(Default::default, |s| {
        (s.metrics().unwrap_or_default(), s.log())
    });
    stage.stop();
    drop(stage);
    error::write(&dir.join("server.log"), &server_log)?;
    error::write(&dir.join("metrics.txt"), &metrics)?;
    tally(&mut summary, &results);
    let proofs = metric_value(&metrics, "attestation_logins_total").unwrap_or(0.0);
    summary.notes.push(setup_note(board, q, &image, proofs));
    let report = dir.join("report.json");
    summary
        .write_json(&report)
        .map_err(Error::io("write", &report))?;
    if let Some(p) = &opts.report {
        summary.write_json(p).map_err(Error::io("write", p))?;
    }
    Ok(VmRun {
        summary,
        boards: results,
        dir: dir.to_owned(),
        image,
        server_log,
        server_metrics: metrics,
    })
}

/// The stage of a VM run: the host's mosquitto (10.0.2.2 to the guests), one server whose
/// policy trusts the boards' swtpm CA.
fn stage_config(opts: &VmOptions, dir: &Path, server_bin: &Path, policy: String) -> StageConfig {
    let mut config = StageConfig::new(
        dir,
        CLUSTER,
        TRUST_DOMAIN,
        server_bin,
        Policy::Document(policy),
    );
    config.server_dir = |_| "server".into();
    config.server.max_sessions = Some(opts.count.saturating_mul(2).max(1024));
    config
}

/// The report's line on the emulated board, the kernel and the image.
fn setup_note(board: &Board, q: &boards::Qemu, image: &image::Image, proofs: f64) -> String {
    format!(
        "{} on QEMU {} -M {} -cpu {} -m {} MiB, kernel {} ({}), image {} ({} files downloaded, {:.1} s); server logins {proofs}",
        board.name,
        board.target().map_or("?", |t| t.qemu_system),
        q.machine,
        q.cpu,
        q.memory_mib,
        image.resolved.abi,
        image.resolved.kernel_version,
        if image.cached { "cached" } else { "built" },
        image.downloaded,
        image.elapsed.as_secs_f64()
    )
}

/// Provisions every board's TPM state, two at a time; returns their expected SPIFFE IDs.
fn provision_all(ca: &Ca, board_dirs: &[PathBuf], stop: &AtomicBool) -> Result<Vec<String>> {
    eprintln!(
        "ekattest-fleet vm: provisioning {} swtpm states",
        board_dirs.len()
    );
    let mut expected = Vec::with_capacity(board_dirs.len());
    for chunk in board_dirs.chunks(2) {
        let ids: Vec<Result<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|d| s.spawn(|| provision(ca, d))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Config("provisioning thread panicked".into()))
                    })
                })
                .collect()
        });
        for id in ids {
            expected.push(id?);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Error::INTERRUPTED);
        }
    }
    Ok(expected)
}

/// Writes the agent's configuration and the run's initramfs (the cached base, the agent,
/// its configuration and the SVID bundle) into `dir`; returns what QEMU boots.
#[allow(clippy::too_many_arguments)]
fn initramfs(
    opts: &VmOptions,
    board: &Board,
    dir: &Path,
    emulator: &Path,
    agent: &Path,
    image: &image::Image,
    stage: &Stage,
    broker_port: u16,
) -> Result<BootFiles> {
    let mut overrides = toml::Table::new();
    overrides.insert(
        "broker".into(),
        format!("mqtt://10.0.2.2:{broker_port}").into(),
    );
    // The host's loopback broker is 10.0.2.2 to the guest, which is not loopback: the VM lab
    // accepts plaintext explicitly (the agent warns about it at start).
    overrides.insert("insecure-plaintext".into(), true.into());
    if let Some(kind) = &opts.svid_key {
        overrides.insert("svid-key".into(), kind.clone().into());
    }
    let config = board.render_agent_config_with(CLUSTER, &overrides)?;
    error::write(&dir.join("agent.yaml"), &config)?;
    let mut initrd = error::read(&image.base_initrd)?;
    initrd.extend(image::run_archive(
        &error::read(agent)?,
        &config,
        &error::read(&stage.svid().bundle)?,
    ));
    let initrd_path = dir.join("initrd.cpio");
    error::write(&initrd_path, &initrd)?;
    Ok(BootFiles {
        emulator: emulator.to_owned(),
        kernel: image.kernel.clone(),
        initrd: initrd_path,
    })
}

/// Counts the boards' outcomes into `summary`, one note per board.
fn tally(summary: &mut Summary, results: &[BoardResult]) {
    let mut rss_max = None;
    for r in results {
        let line = match &r.outcome {
            Some(Outcome::Ok {
                spiffe_id,
                uptime,
                rss_kb,
            }) => {
                if r.attested() {
                    summary.attested += 1;
                } else {
                    summary.errors += 1;
                }
                if let Some(d) = r.boot_to_identity
                    && r.attested()
                {
                    summary.time_to_identity.push(d);
                }
                rss_max = rss_max.max(*rss_kb);
                format!(
                    "board {}: {} boot-to-identity {:.2} s (guest uptime {} s), agent peak RSS {} kB{}",
                    r.index,
                    spiffe_id,
                    r.boot_to_identity.map_or(0.0, |d| d.as_secs_f64()),
                    uptime.map_or("?".into(), |u| format!("{u:.2}")),
                    rss_kb.map_or("?".into(), |k| k.to_string()),
                    if r.attested() {
                        String::new()
                    } else {
                        format!(" (expected {})", r.expected_id)
                    }
                )
            }
            Some(Outcome::Fail(reason)) => {
                if reason.contains("agent exited with status 1") {
                    summary.rejected += 1;
                } else {
                    summary.errors += 1;
                }
                format!(
                    "board {}: FAILED: {reason} (console {})",
                    r.index,
                    r.console.display()
                )
            }
            None => {
                summary.errors += 1;
                format!(
                    "board {}: no result (console {})",
                    r.index,
                    r.console.display()
                )
            }
        };
        summary.notes.push(line);
    }
    summary.peak_rss_agent_kb = rss_max;
}

/// Boots every board, at most `opts.parallel` booting at once, one start at a time at
/// least [`START_GAP`] apart; waits for each result marker or QEMU's exit.
fn boot_all(
    opts: &VmOptions,
    stop: &AtomicBool,
    board: &Board,
    q: &boards::Qemu,
    dirs: &[PathBuf],
    expected: &[String],
    files: &BootFiles,
) -> Result<Vec<BoardResult>> {
    const START_GAP: Duration = Duration::from_millis(750);
    let limit = Duration::from_secs(u64::from(q.boot_timeout_secs))
        .saturating_add(Duration::from_secs(120));
    let mut results: Vec<Option<BoardResult>> = vec![None; dirs.len()];
    let mut running: Vec<(Vm, bool)> = Vec::new(); // (vm, booted: agent started)
    let mut next = 0;
    let mut last_start: Option<Instant> = None;
    let parallel = opts.parallel.max(1);
    while results.iter().any(Option::is_none) {
        if stop.load(Ordering::Relaxed) {
            for (vm, _) in &mut running {
                vm.stop();
            }
            return Err(Error::INTERRUPTED);
        }
        let booting = running.iter().filter(|(_, booted)| !booted).count();
        if next < dirs.len()
            && booting < parallel
            && last_start.is_none_or(|t| t.elapsed() >= START_GAP)
        {
            match Vm::start(next, &dirs[next], board, files) {
                Ok(vm) => running.push((vm, false)),
                Err(e) => {
                    results[next] = Some(BoardResult {
                        index: next,
                        expected_id: expected[next].clone(),
                        outcome: Some(Outcome::Fail(e.to_string())),
                        boot_to_identity: None,
                        console: dirs[next].join("console.log"),
                    });
                }
            }
            next += 1;
            last_start = Some(Instant::now());
        }
        let mut i = 0;
        while i < running.len() {
            let (vm, booted) = &mut running[i];
            let text = vm.console_text();
            if !*booted && text.contains("EKATTEST-STEP agent") {
                *booted = true;
            }
            let outcome = boot::parse_result(&text);
            let exited = vm.exited();
            let timed_out = vm.age() > limit;
            if outcome.is_some() || exited || timed_out {
                let at = vm.age();
                let mut outcome = outcome;
                if outcome.is_none() {
                    let why = if timed_out {
                        format!("no result within {} s", limit.as_secs())
                    } else {
                        let log = vm.qemu_log();
                        format!(
                            "QEMU exited without a result: {}",
                            log.lines().last().unwrap_or("")
                        )
                    };
                    outcome = Some(Outcome::Fail(why));
                }
                let ok = matches!(outcome, Some(Outcome::Ok { .. }));
                // The guest powers off after its marker; stop whatever is left now.
                vm.stop();
                let index = vm.index;
                results[index] = Some(BoardResult {
                    index,
                    expected_id: expected[index].clone(),
                    outcome,
                    boot_to_identity: ok.then_some(at),
                    console: vm.console.clone(),
                });
                running.swap_remove(i);
                continue;
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(results.into_iter().flatten().collect())
}
