//! The guest's `/init`: `init.sh` rendered for the board's TPM transport.
//!
//! `init.sh` is a template: `@TPM_SETUP@` becomes `init-kernel.sh` (wait for the device the
//! kernel's `tpm_tis` creates) or `init-tis-mmio.sh` (load no TPM module, find the TIS
//! registers in the guest's device tree, pass them to the agent as `--tpm tis-mmio:ADDR`),
//! and `@AGENT_ARGS@` the agent's extra arguments. Lines starting with `#@` are notes for
//! people and are dropped, so a kernel board's `/init` is byte for byte what it was before
//! the tis-mmio transport existed, and so is its image cache key. Pure text: nothing here
//! runs a program or touches a file; it must never put anything but checked characters of a
//! profile into the script.

use crate::boards::{Board, Transport};
use crate::error::{Error, Result};

/// The template.
const TEMPLATE: &str = include_str!("init.sh");
/// `@TPM_SETUP@` for the kernel transport (`@TPM@`: the board's device).
const KERNEL: &str = include_str!("init-kernel.sh");
/// `@TPM_SETUP@` for the tis-mmio transport (sets `$tis_addr`).
const TIS_MMIO: &str = include_str!("init-tis-mmio.sh");

/// Whether the board's image carries the TPM modules (`tpm_tis_core` and our `tpm_tis`):
/// only the kernel transport uses them; with tis-mmio the agent is the driver.
#[must_use]
pub fn needs_tpm_modules(board: &Board) -> bool {
    board.tpm.transport == Transport::Kernel
}

/// Renders `/init` for `board`.
///
/// # Errors
/// A board whose transport a QEMU guest cannot have (`spi`: QEMU has no SPI TPM model), or
/// a kernel device path with characters other than `A-Za-z0-9/._-`.
pub fn render(board: &Board) -> Result<String> {
    let (setup, args) = match board.tpm.transport {
        Transport::Kernel => {
            let device = &board.tpm.device;
            let safe = device.starts_with("/dev/")
                && device
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !safe {
                return Err(Error::Image(format!(
                    "board {}: tpm.device {device:?} cannot go into the guest's /init: use a \
                     /dev path of A-Za-z0-9/._- only",
                    board.name
                )));
            }
            (KERNEL.replace("@TPM@", device), String::new())
        }
        Transport::TisMmio => (
            TIS_MMIO.to_owned(),
            " --tpm \"tis-mmio:$tis_addr\"".to_owned(),
        ),
        Transport::Spi => {
            return Err(Error::Image(format!(
                "board {}: transport \"spi\" cannot boot in QEMU (QEMU has no SPI TPM model)",
                board.name
            )));
        }
    };
    let text = TEMPLATE
        .replace("@TPM_SETUP@\n", &setup)
        .replace("@AGENT_ARGS@", &args);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with("#@"))
        .flat_map(|l| [l, "\n"])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn board(name: &str) -> Board {
        crate::boards::find(Path::new(crate::boards::DEFAULT_DIR), name).unwrap()
    }

    #[test]
    fn kernel_boards_keep_their_init_and_tis_mmio_boards_get_their_own() {
        let k = render(&board("qemu-virt-aarch64")).unwrap();
        assert!(!k.contains("@TPM") && !k.contains("#@"), "{k}");
        assert!(!k.contains("AGENT_ARGS"), "{k}");
        assert!(k.contains("tpm=/dev/tpmrm0\n"), "{k}");
        assert!(k.contains("--timeout 90s >/tmp/agent.log"), "{k}");
        assert!(!k.contains("tis-mmio"), "{k}");
        assert!(k.starts_with("#!/bin/sh\n") && k.ends_with("poweroff -f\n"));
        assert!(needs_tpm_modules(&board("qemu-virt-armv7")));

        let t = render(&board("qemu-virt-aarch64-tis")).unwrap();
        assert!(!needs_tpm_modules(&board("qemu-virt-aarch64-tis")));
        assert!(!t.contains("#@") && !t.contains("@TPM"), "{t}");
        assert!(t.contains("--timeout 90s --tpm \"tis-mmio:$tis_addr\" >/tmp/agent.log"));
        assert!(t.contains("EKATTEST-STEP tis-mmio address="), "{t}");
        assert!(t.contains("EKATTEST-STEP tpm_tis loaded="), "{t}");
        assert!(!t.contains("tpm=/dev"), "{t}");
        // The same frame around the TPM part.
        let net = "ip route add default via 10.0.2.2; }; then\n";
        let head = |s: &str| s.split_once(net).map(|(h, _)| h.to_owned());
        let tail = |s: &str| s.split_once("pid=$!\n").map(|(_, t)| t.to_owned());
        assert!(head(&k).is_some() && head(&k) == head(&t));
        assert!(tail(&k).is_some() && tail(&k) == tail(&t));

        let mut bad = board("qemu-virt-aarch64");
        bad.tpm.device = "/dev/tpm$(reboot)".into();
        assert!(render(&bad).unwrap_err().to_string().contains("A-Za-z0-9"));
        let mut spi = board("qemu-virt-aarch64");
        spi.tpm.transport = Transport::Spi;
        assert!(render(&spi).unwrap_err().to_string().contains("SPI"));
    }

    /// A device tree node as the kernel shows it under /proc/device-tree.
    fn prop(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn cells(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    /// Runs the tis-mmio fragment with the host's `sh` on a fake device tree; returns its
    /// output (the `poweroff` of a failure becomes an exit).
    fn find_tis(tree: &Path) -> String {
        let script = format!(
            "poweroff() {{ exit 3; }}\n{}\necho \"ADDR=$tis_addr\"\n",
            TIS_MMIO
                .replace("cd /proc/device-tree", &format!("cd '{}'", tree.display()))
                .replace("/sys/module/tpm_tis", "/nonexistent/tpm_tis")
                .replace("[ ! -c /dev/mem ]", "false")
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh must run (the host's POSIX shell)");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        s
    }

    #[test]
    fn the_tis_address_comes_from_the_device_tree() {
        let compat = b"tcg,tpm-tis-mmio\0";
        // QEMU virt: the TPM on the platform bus (1 address cell, ranges to 0xc000000).
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        prop(root, "#address-cells", &cells(&[2]));
        prop(root, "#size-cells", &cells(&[2]));
        let bus = root.join("platform-bus@c000000");
        prop(&bus, "#address-cells", &cells(&[1]));
        prop(&bus, "#size-cells", &cells(&[1]));
        prop(&bus, "ranges", &cells(&[0, 0, 0x0c00_0000, 0x0200_0000]));
        prop(&bus, "compatible", b"qemu,platform\0simple-bus\0");
        let tpm = bus.join("tpm_tis@1000");
        prop(&tpm, "compatible", compat);
        prop(&tpm, "reg", &cells(&[0x1000, 0x5000]));
        prop(&root.join("pl011@9000000"), "compatible", b"arm,pl011\0");
        let out = find_tis(root);
        assert!(out.contains("ADDR=0xc001000"), "{out}");
        assert!(
            out.contains(
                "EKATTEST-STEP tis-mmio address=0xc001000 node=/platform-bus@c000000/tpm_tis@1000"
            ),
            "{out}"
        );
        assert!(out.contains("EKATTEST-STEP tpm_tis loaded=no"), "{out}");

        // A PC-style node at the root: 2 address cells, no translation.
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        prop(root, "#address-cells", &cells(&[2]));
        let tpm = root.join("tpm@fed40000");
        prop(&tpm, "compatible", b"vendor,x\0tcg,tpm-tis-mmio\0");
        prop(&tpm, "reg", &cells(&[0, 0xfed4_0000, 0, 0x5000]));
        assert!(find_tis(root).contains("ADDR=0xfed40000"));

        // An empty ranges is the identity; a second entry is searched.
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        prop(root, "#address-cells", &cells(&[1]));
        let soc = root.join("soc");
        prop(&soc, "#address-cells", &cells(&[1]));
        prop(&soc, "#size-cells", &cells(&[1]));
        prop(&soc, "ranges", b"");
        let sub = soc.join("bus@2");
        prop(&sub, "#address-cells", &cells(&[1]));
        prop(&sub, "#size-cells", &cells(&[1]));
        prop(
            &sub,
            "ranges",
            &cells(&[0, 0x1000_0000, 0x1000, 0x8000, 0x2000_0000, 0x1_0000]),
        );
        let tpm = sub.join("tpm@8000");
        prop(&tpm, "compatible", compat);
        prop(&tpm, "reg", &cells(&[0x9000, 0x5000]));
        assert!(find_tis(root).contains("ADDR=0x20001000"));
    }

    #[test]
    fn no_node_or_an_untranslatable_reg_fails_without_an_address() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        prop(&root.join("pl011@9000000"), "compatible", b"arm,pl011\0");
        // A compatible that only starts with the name is not the TIS.
        prop(&root.join("x"), "compatible", b"tcg,tpm-tis-mmio-not\0");
        let out = find_tis(root);
        assert!(
            out.contains(
                "EKATTEST-RESULT fail no device tree node compatible with tcg,tpm-tis-mmio"
            ),
            "{out}"
        );
        assert!(!out.contains("ADDR="), "{out}");

        // A parent without ranges: its children are not on the CPU's address map.
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let i2c = root.join("i2c@0");
        prop(&i2c, "#address-cells", &cells(&[1]));
        prop(&i2c, "#size-cells", &cells(&[0]));
        let tpm = i2c.join("tpm@2e");
        prop(&tpm, "compatible", b"tcg,tpm-tis-mmio\0");
        prop(&tpm, "reg", &cells(&[0x2e]));
        let out = find_tis(root);
        assert!(
            out.contains(
                "EKATTEST-RESULT fail cannot translate the reg of device tree node i2c@0/tpm@2e"
            ),
            "{out}"
        );
        assert!(!out.contains("ADDR="), "{out}");

        // A reg outside every range.
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let bus = root.join("bus");
        prop(&bus, "#address-cells", &cells(&[1]));
        prop(&bus, "#size-cells", &cells(&[1]));
        prop(&bus, "ranges", &cells(&[0, 0, 0x0c00_0000, 0x1000]));
        let tpm = bus.join("tpm");
        prop(&tpm, "compatible", b"tcg,tpm-tis-mmio\0");
        prop(&tpm, "reg", &cells(&[0x2000, 0x5000]));
        assert!(find_tis(root).contains("cannot translate"));
    }
}
