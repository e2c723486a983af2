//! The QEMU VM fleet end to end: one aarch64 and one armv7 board boot Debian's kernel with
//! our out-of-tree `tpm_tis`, and a third board (`qemu-virt-aarch64-tis`) boots the same
//! aarch64 kernel with no TPM module at all, its agent driving QEMU's TIS registers itself
//! through /dev/mem (`--tpm tis-mmio:ADDR`, the address from the guest's device tree): our
//! TIS state machine against QEMU's TIS model, an implementation we did not write. Each guest
//! agent attests with its swtpm's EK through the host's mosquitto against
//! `ekattest-server`, and gets the SPIFFE ID the policy gives that EK (checked in the console
//! marker, the server's log and its metrics). Then the image builder runs again and must
//! download nothing.
//!
//! Needs qemu-system-arm, swtpm, mosquitto, the ARM cross compilers, make and network
//! access to deb.debian.org on the first run (bash .ci/install). Each run's folder
//! (consoles, swtpm and server logs, report.json) is kept under target/vm-test/ and printed
//! on failure, for CI to keep as output.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ekattest_fleet::boards;
use ekattest_fleet::daemons::{json_lines, metric_value};
use ekattest_fleet::vm::boot::Outcome;
use ekattest_fleet::vm::{VmOptions, image, run};

const RUNS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/vm-test");

/// What one boot left for the caller to check.
struct Booted {
    /// Host-measured QEMU start to identity, seconds.
    secs: f64,
    /// The serial console.
    console: String,
    /// The run folder (for messages).
    keep: String,
}

impl Booted {
    /// The agent's own log, as /init printed it between its markers.
    fn agent_log(&self) -> &str {
        let from = self
            .console
            .split_once("EKATTEST-AGENT-LOG-BEGIN")
            .map_or("", |(_, rest)| rest);
        from.split_once("EKATTEST-AGENT-LOG-END")
            .map_or(from, |(log, _)| log)
    }
}

fn boot_one(board: &str) -> Booted {
    boot_with(board, None)
}

/// Boots one `board`, its agent with `svid_key` (`None`: the profile's).
fn boot_with(board: &str, svid_key: Option<&str>) -> Booted {
    let dir = PathBuf::from(RUNS).join(match svid_key {
        Some(k) => format!("{board}-svid-key-{k}"),
        None => board.to_owned(),
    });
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = VmOptions::new(board, 1);
    opts.svid_key = svid_key.map(str::to_owned);
    opts.run_dir = Some(dir.clone());
    opts.bin_dir = Some(common::bin_dir_with(&["ekattest-server"]));
    let stop = AtomicBool::new(false);
    let r = run(&opts, &stop).unwrap_or_else(|e| {
        panic!(
            "{board}: the VM run failed: {e}\nrun folder (logs): {}",
            dir.display()
        )
    });
    let keep = format!(
        "run folder (console, swtpm, server logs, report.json): {}",
        dir.display()
    );
    let b = &r.boards[0];
    let console = std::fs::read_to_string(&b.console).unwrap_or_default();
    assert!(
        b.attested(),
        "{board}: no identity: {:?}\n{keep}\nconsole:\n{console}",
        b.outcome
    );
    let Some(Outcome::Ok {
        spiffe_id, rss_kb, ..
    }) = &b.outcome
    else {
        unreachable!()
    };
    // The guest saw the TPM through the kernel driver and the agent ran on it.
    assert!(console.contains("EKATTEST-STEP agent"), "{keep}");
    assert!(
        console.contains(&format!("EKATTEST-RESULT ok {spiffe_id}")),
        "{keep}"
    );
    // The server agrees: one successful proof, and it connected the agent under that ID.
    let success = metric_value(&r.server_metrics, common::SUCCESS);
    assert_eq!(success, Some(1.0), "{board}: server proofs\n{keep}");
    let connected: Vec<_> = json_lines(&r.server_log)
        .into_iter()
        .filter(|l| l["msg"] == "Connected to agent")
        .collect();
    assert_eq!(connected.len(), 1, "{board}: server log\n{keep}");
    assert_eq!(connected[0]["spiffeId"], spiffe_id.as_str(), "{keep}");
    assert_eq!(r.summary.attested, 1, "{keep}");
    assert!(
        dir.join("report.json").is_file(),
        "{board}: no report.json\n{keep}"
    );
    let secs = b.boot_to_identity.unwrap().as_secs_f64();
    // Where the SVID key lives, by the server's count.
    let in_tpm = metric_value(
        &r.server_metrics,
        "attestation_svids_issued_total{key=\"tpm\"}",
    );
    let expect_tpm = svid_key == Some("tpm");
    assert_eq!(
        in_tpm,
        Some(if expect_tpm { 1.0 } else { 0.0 }),
        "{board}: SVIDs for TPM keys\n{keep}"
    );
    eprintln!(
        "{board} (svid-key {}): {spiffe_id} in {secs:.2} s from QEMU start, agent peak RSS \
         {rss_kb:?} kB",
        svid_key.unwrap_or("software")
    );
    Booted {
        secs,
        console,
        keep,
    }
}

/// The kernel-driver board: the guest's tpm_tis bound the TPM, the agent used /dev/tpmrm0.
fn check_kernel_driver(board: &str, b: &Booted) {
    let keep = &b.keep;
    assert!(
        !b.console.contains("EKATTEST-STEP tis-mmio"),
        "{board}: a kernel-driver board ran the tis-mmio setup\n{keep}"
    );
    assert!(
        !b.console.contains("EKATTEST-STEP insmod tpm_tis"),
        "{board}: a TPM module did not load\n{keep}\n{}",
        b.console
    );
}

/// The tis-mmio board: no TPM module, the address from the device tree, and the agent's
/// own TIS driver logged QEMU's TIS identity (vendor 0x1014, IBM) at that address.
fn check_tis_mmio(board: &str, b: &Booted) {
    let keep = &b.keep;
    let console = &b.console;
    assert!(
        console.contains("EKATTEST-STEP tpm_tis loaded=no"),
        "{board}: tpm_tis was loaded or not checked\n{keep}\n{console}"
    );
    let addr = console
        .lines()
        .find_map(|l| {
            l.trim_end_matches('\r')
                .split_once("EKATTEST-STEP tis-mmio address=")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("{board}: no tis-mmio address marker\n{keep}\n{console}"));
    let value = addr
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("{board}: address {addr:?} is not hex\n{keep}"));
    assert!(
        value != 0 && value.is_multiple_of(0x1000),
        "{board}: {addr} is not a page-aligned register window\n{keep}"
    );
    let log = b.agent_log();
    let vendor = log
        .lines()
        .find(|l| l.contains("TIS") && l.contains("0x1014"))
        .unwrap_or_else(|| {
            panic!("{board}: the agent did not log the TIS vendor 0x1014 (QEMU's TIS model)\n{keep}\nagent log:\n{log}")
        });
    assert!(
        vendor.contains(&addr),
        "{board}: the vendor line names another address than {addr}: {vendor}\n{keep}"
    );
    eprintln!("{board}: TIS at {addr}: {}", vendor.trim());
    // No TPM module in the image: nothing to insmod, no kernel TPM device appeared.
    assert!(
        !console.contains("insmod tpm_tis") && !console.contains("no /dev/tpmrm0"),
        "{board}\n{keep}"
    );
}

#[test]
fn aarch64_armv7_and_tis_mmio_boards_attest_and_the_image_cache_downloads_nothing() {
    let a64 = boot_one("qemu-virt-aarch64");
    check_kernel_driver("qemu-virt-aarch64", &a64);
    // The agent's own TIS driver carries the TPM-resident SVID key's commands too.
    let tis = boot_with("qemu-virt-aarch64-tis", Some("tpm"));
    check_tis_mmio("qemu-virt-aarch64-tis", &tis);
    let a32 = boot_one("qemu-virt-armv7");
    check_kernel_driver("qemu-virt-armv7", &a32);
    // The SVID key in the guest's TPM (issue 14): created, certified by the AK and used for
    // the proof of possession through the kernel's /dev/tpmrm0.
    let a64_tpm_key = boot_with("qemu-virt-aarch64", Some("tpm"));
    check_kernel_driver("qemu-virt-aarch64", &a64_tpm_key);
    assert!(
        a64_tpm_key.agent_log().contains("svid-key tpm"),
        "the guest agent did not run with svid-key tpm\n{}",
        a64_tpm_key.keep
    );
    assert!(a64.secs > 0.0 && tis.secs > 0.0 && a32.secs > 0.0);
    eprintln!(
        "boot to identity: qemu-virt-aarch64 (kernel tpm_tis) {:.2} s, with svid-key tpm \
         {:.2} s, qemu-virt-aarch64-tis (agent's TIS driver over /dev/mem, svid-key tpm) {:.2} s, \
         qemu-virt-armv7 {:.2} s",
        a64.secs, a64_tpm_key.secs, tis.secs, a32.secs
    );
    // Second run of the builder: everything from the cache, no apt at all.
    let cache = PathBuf::from(image::DEFAULT_CACHE);
    for name in [
        "qemu-virt-aarch64",
        "qemu-virt-aarch64-tis",
        "qemu-virt-armv7",
    ] {
        let board = boards::find(std::path::Path::new(boards::DEFAULT_DIR), name).unwrap();
        let lists = cache.join("apt/state/lists");
        let before = std::fs::metadata(&lists).and_then(|m| m.modified()).ok();
        let img = image::prepare(&board, &cache).unwrap();
        assert_eq!(img.downloaded, 0, "{name}: the second run downloaded files");
        assert!(img.cached, "{name}: the second run rebuilt the image");
        let after = std::fs::metadata(&lists).and_then(|m| m.modified()).ok();
        assert_eq!(before, after, "{name}: apt-get update ran again");
        assert!(img.kernel.is_file() && img.base_initrd.is_file());
    }
}
