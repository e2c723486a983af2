//! The QEMU VM fleet end to end: one aarch64 and one armv7 board boot Debian's kernel with
//! our out-of-tree `tpm_tis`, each guest agent attests with its swtpm's EK through the
//! host's mosquitto against `ekattest-server`, and gets the SPIFFE ID the policy gives that
//! EK (checked in the console marker, the server's log and its metrics). Then the image
//! builder runs again and must download nothing.
//!
//! Needs qemu-system-arm, swtpm, mosquitto, the ARM cross compilers, make and network
//! access to deb.debian.org on the first run (bash .ci/install). Each run's folder
//! (consoles, swtpm and server logs, report.json) is kept under target/vm-test/ and printed
//! on failure, for CI to keep as output.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ekattest_fleet::boards;
use ekattest_fleet::daemons::{json_lines, metric_value};
use ekattest_fleet::vm::boot::Outcome;
use ekattest_fleet::vm::{VmOptions, image, run};

const RUNS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/vm-test");

fn boot_one(board: &str) -> (f64, u64) {
    let dir = PathBuf::from(RUNS).join(board);
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = VmOptions::new(board, 1);
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
    eprintln!("{board}: {spiffe_id} in {secs:.2} s from QEMU start, agent peak RSS {rss_kb:?} kB");
    (secs, rss_kb.unwrap_or(0))
}

#[test]
fn one_aarch64_and_one_armv7_board_attest_and_the_image_cache_downloads_nothing() {
    let (a64, _) = boot_one("qemu-virt-aarch64");
    let (a32, _) = boot_one("qemu-virt-armv7");
    assert!(a64 > 0.0 && a32 > 0.0);
    // Second run of the builder: everything from the cache, no apt at all.
    let cache = PathBuf::from(image::DEFAULT_CACHE);
    for name in ["qemu-virt-aarch64", "qemu-virt-armv7"] {
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
