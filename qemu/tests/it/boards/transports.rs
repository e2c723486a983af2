//! The `[tpm]` transports of board profiles: `spi` (the agent's own TIS-over-SPI driver on
//! spidev) and `tis-mmio` (its own TIS driver on memory-mapped registers) next to `kernel`:
//! the shipped variants, good profiles of each, and every rejection with its key and advice.

use std::path::PathBuf;

use ekattest_agent::daemon::config::Config;
use ekattest_agent::spec::TpmSpec;
use ekattest_fleet::boards::{Board, Transport};

use super::{BASE, board, refused};

/// A hardware board (no `[qemu]`) driving an SLB9670 on /dev/spidev0.1 itself.
const SPI: &str = r#"
name = "spi-board"
description = "a SPI test board"
[build]
target = "aarch64-unknown-linux-musl"
linker = "aarch64-linux-gnu-gcc"
[tpm]
transport = "spi"
device = "spi:/dev/spidev0.1@10000000"
chip = "Infineon SLB9670"
[tpm.spi]
bus = 0
cs = 1
hz = 10000000
[agent]
broker = "mqtt://10.0.2.2:1883"
insecure-plaintext = true
"#;

/// A hardware board whose TIS registers are memory-mapped at a documented address.
const MMIO: &str = r#"
name = "mmio-board"
description = "a memory-mapped TIS test board"
[build]
target = "aarch64-unknown-linux-musl"
linker = "aarch64-linux-gnu-gcc"
[tpm]
transport = "tis-mmio"
device = "tis-mmio:0xfed40000"
address-from = "ACPI TPM2 table"
[agent]
broker = "mqtt://10.0.2.2:1883"
insecure-plaintext = true
"#;

fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in the profile");
    base.replacen(from, to, 1)
}

fn accepted(text: &str) -> Board {
    Board::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Refused with `key` named and every one of `words` in the message.
fn refused_with(text: &str, key: &str, words: &[&str]) {
    let msg = refused(text);
    assert!(
        msg.contains(&format!(": {key}: ")),
        "expected key {key}: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "expected {w:?} in: {msg}");
    }
}

#[test]
fn rpi4_spi_variant_drives_spidev0_1_itself_at_a_conservative_clock() {
    let b = board("rpi4-slb9670-spi");
    let kernel = board("rpi4-slb9670");
    assert_eq!(b.tpm.transport, Transport::Spi);
    assert_eq!(b.tpm.driver, None, "no kernel driver may bind the chip");
    assert_eq!(
        b.tpm.dtoverlay, None,
        "the tpm-slb9670 overlay would hide spidev0.1"
    );
    assert!(b.qemu.is_none());
    let spi = b.tpm.spi.unwrap_or_else(|| panic!("no [tpm.spi]"));
    assert_eq!((spi.bus, spi.cs), (0, 1), "SPI0 CS1, as the kernel variant");
    assert_eq!(kernel.tpm.spi.map(|s| (s.bus, s.cs)), Some((0, 1)));
    assert!(
        spi.hz <= 43_000_000 && spi.hz < kernel.tpm.spi.map_or(0, |s| s.hz),
        "conservative: below the overlay's clock and the SLB9670's 43 MHz: {}",
        spi.hz
    );
    assert_eq!(
        TpmSpec::parse(&b.tpm.device).unwrap_or_else(|e| panic!("{e}")),
        TpmSpec::Spi {
            path: PathBuf::from("/dev/spidev0.1"),
            hz: spi.hz
        }
    );
    // Same hardware, same build and agent defaults as the kernel variant, but the SVID key:
    // through /dev/tpmrm0 workloads can use a TPM-resident key; with the agent's own SPI
    // driver nothing else can reach the TPM, so the key stays software (the default).
    let mut kernel_agent = kernel.agent.clone();
    assert_eq!(
        kernel_agent
            .remove("svid-key")
            .and_then(|v| v.as_str().map(str::to_owned)),
        Some("tpm".to_owned())
    );
    assert!(!b.agent.contains_key("svid-key"), "{:?}", b.agent);
    assert_eq!(
        (&b.build, &b.agent, b.tpm.ek_handle),
        (&kernel.build, &kernel_agent, None)
    );
    assert_eq!(b.tpm.chip, kernel.tpm.chip);
    let cfg = Config::parse(
        &b.render_agent_config("c-x")
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(cfg.tpm, TpmSpec::Spi { .. }), "{:?}", cfg.tpm);
}

#[test]
fn qemu_virt_aarch64_tis_is_the_aarch64_board_without_tpm_tis() {
    let b = board("qemu-virt-aarch64-tis");
    let k = board("qemu-virt-aarch64");
    assert_eq!(b.tpm.transport, Transport::TisMmio);
    assert_eq!(b.tpm.driver, None);
    assert_eq!(
        TpmSpec::parse(&b.tpm.device).unwrap_or_else(|e| panic!("{e}")),
        TpmSpec::TisMmio { addr: 0x0c00_0000 },
        "QEMU virt's platform bus"
    );
    assert!(
        b.tpm
            .address_from
            .as_deref()
            .unwrap_or("")
            .contains("tcg,tpm-tis-mmio"),
        "{:?}",
        b.tpm.address_from
    );
    // Everything else is the kernel-driver board's: one machine, one kernel, one cache.
    assert_eq!(b.qemu, k.qemu);
    assert_eq!(b.build, k.build);
    assert_eq!(b.agent, k.agent);
    assert_eq!(b.tpm.ek_handle, k.tpm.ek_handle);
    let cfg = Config::parse(
        &b.render_agent_config("c-vm")
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.tpm, TpmSpec::TisMmio { addr: 0x0c00_0000 });
    assert_eq!(
        (cfg.broker.host.as_str(), cfg.broker.port),
        ("10.0.2.2", 1883)
    );
}

#[test]
fn spi_profiles_must_agree_with_their_wiring() {
    let b = accepted(SPI);
    assert_eq!(b.tpm.transport, Transport::Spi);
    // Other buses, chip selects and clocks, as long as device and [tpm.spi] agree.
    accepted(
        &SPI.replace("spidev0.1@10000000", "spidev1.0@25000000")
            .replace(
                "bus = 0\ncs = 1\nhz = 10000000",
                "bus = 1\ncs = 0\nhz = 25000000",
            ),
    );
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "spi:/dev/spidev0.1@10000000",
            "/dev/tpmrm0",
            "tpm.device",
            &["spi:/dev/spidevBUS.CS@HZ"],
        ),
        (
            "spi:/dev/spidev0.1@10000000",
            "tis-mmio:0xfed40000",
            "tpm.device",
            &["transport = \"tis-mmio\""],
        ),
        (
            "spidev0.1@10000000",
            "spidev0.0@10000000",
            "tpm.device",
            &["/dev/spidev0.0 is not /dev/spidev0.1", "bus 0 cs 1"],
        ),
        (
            "spidev0.1@10000000",
            "spidev0.1@20000000",
            "tpm.spi.hz",
            &["10000000 Hz", "20000000 Hz", "spi:/dev/spidev0.1@10000000"],
        ),
        (
            "chip =",
            "driver = \"tpm_tis_spi\"\nchip =",
            "tpm.driver",
            &["spidev", "remove driver"],
        ),
        (
            "chip =",
            "dtoverlay = \"tpm-slb9670\"\nchip =",
            "tpm.dtoverlay",
            &["dtparam=spi=on", "/dev/spidev0.1 does not exist"],
        ),
        (
            "chip =",
            "address-from = \"ACPI\"\nchip =",
            "tpm.address-from",
            &["only for transport = \"tis-mmio\""],
        ),
        ("hz = 10000000", "hz = 99", "tpm.spi.hz", &[]),
    ];
    for (from, to, key, words) in cases {
        refused_with(&edit(SPI, from, to), key, words);
    }
    // The hz check may reach either key first; both clocks out of range are refused.
    let slow = edit(SPI, "@10000000", "@99").replace("hz = 10000000", "hz = 99");
    refused_with(&slow, "tpm.spi.hz", &["0.1-66 MHz"]);
    let no_wiring = edit(SPI, "[tpm.spi]\nbus = 0\ncs = 1\nhz = 10000000\n", "");
    refused_with(&no_wiring, "tpm.spi", &["missing", "bus, cs and hz"]);
    // A virtual board cannot have it: QEMU has no SPI TPM model.
    let qemu_spi = edit(BASE, "transport = \"kernel\"", "transport = \"spi\"");
    refused_with(&qemu_spi, "tpm.transport", &["QEMU has no SPI TPM model"]);
}

#[test]
fn tis_mmio_profiles_name_an_aligned_address_and_its_source() {
    let b = accepted(MMIO);
    assert_eq!(b.tpm.transport, Transport::TisMmio);
    // A [qemu] board needs no address-from: the VM fleet reads the device tree.
    let qemu = edit(
        &edit(BASE, "transport = \"kernel\"", "transport = \"tis-mmio\""),
        "device = \"/dev/tpmrm0\"\ndriver = \"tpm_tis\"",
        "device = \"tis-mmio:0xc000000\"",
    );
    assert_eq!(accepted(&qemu).tpm.address_from, None);
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "tis-mmio:0xfed40000",
            "/dev/tpmrm0",
            "tpm.device",
            &["tis-mmio:0xADDR"],
        ),
        (
            "tis-mmio:0xfed40000",
            "spi:/dev/spidev0.1@10000000",
            "tpm.device",
            &["transport = \"spi\""],
        ),
        (
            "0xfed40000",
            "0xfed40010",
            "tpm.device",
            &["4 KiB page", "0xfed40010"],
        ),
        (
            "address-from",
            "driver = \"tpm_tis\"\naddress-from",
            "tpm.driver",
            &["tpm_tis must not be loaded", "remove driver"],
        ),
        (
            "[agent]",
            "[tpm.spi]\nbus = 0\ncs = 1\nhz = 10000000\n[agent]",
            "tpm.spi",
            &["memory-mapped"],
        ),
        (
            "address-from = \"ACPI TPM2 table\"\n",
            "",
            "tpm.address-from",
            &["missing", "0xfed40000"],
        ),
        (
            "\"ACPI TPM2 table\"",
            "\"  \"",
            "tpm.address-from",
            &["one line"],
        ),
        (
            "\"ACPI TPM2 table\"",
            "\"ACPI\\nTPM2\"",
            "tpm.address-from",
            &["one line"],
        ),
    ];
    for (from, to, key, words) in cases {
        refused_with(&edit(MMIO, from, to), key, words);
    }
    // The kernel transport refuses an agent-driver SPEC, saying which transport fits it.
    refused_with(
        &edit(
            BASE,
            "device = \"/dev/tpmrm0\"",
            "device = \"tis-mmio:0xc000000\"",
        ),
        "tpm.device",
        &["transport = \"tis-mmio\""],
    );
    refused_with(
        &edit(
            BASE,
            "driver = \"tpm_tis\"",
            "driver = \"tpm_tis\"\naddress-from = \"DT\"",
        ),
        "tpm.address-from",
        &["only for"],
    );
    assert!(refused(&edit(MMIO, "tis-mmio", "tis-mmi0")).contains("tis-mmi0"));
}
