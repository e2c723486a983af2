//! Board profiles (`boards/*.toml`): every shipped profile parses, validates and renders an
//! agent configuration the agent's own parser accepts; `.cargo/config.toml` agrees with
//! the profiles; malformed profiles are refused with the key named. Behind the `it`
//! feature: the aarch64 agent cross-built with `--profile agent`, checked with `file` and
//! run under QEMU user mode.
use std::path::PathBuf;

use ekattest_agent::daemon::config::Config;
use ekattest_agent::spec::TpmSpec;
use ekattest_fleet::boards::{self, Board, Error, StaticBy, Transport};

mod transports;

fn boards_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards"))
}

fn all() -> Vec<Board> {
    match boards::load_all(&boards_dir()) {
        Ok(b) => b,
        Err(e) => panic!("boards/ does not load: {e}"),
    }
}

fn board(name: &str) -> Board {
    match boards::find(&boards_dir(), name) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_profile_loads_and_renders_a_config_the_agent_accepts() {
    let boards = all();
    let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    for required in [
        "generic-aarch64",
        "qemu-virt-aarch64",
        "qemu-virt-armv7",
        "rpi4-slb9670",
        "qemu-virt-aarch64-tis",
        "rpi4-slb9670-spi",
    ] {
        assert!(
            names.contains(&required),
            "boards/{required}.toml missing: {names:?}"
        );
    }
    for b in &boards {
        let yaml = b
            .render_agent_config("c-test01")
            .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        let cfg = Config::parse(&yaml).unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", b.name));
        assert_eq!(cfg.cluster_id, "c-test01", "{}", b.name);
        assert_eq!(
            cfg.tpm,
            TpmSpec::parse(&b.tpm.device).unwrap_or_else(|e| panic!("{e}")),
            "{}: the rendered tpm key must be [tpm] device",
            b.name
        );
        assert!(
            yaml.starts_with("# ekattest-agent configuration for board"),
            "{yaml}"
        );
        // Every [agent] key reaches the YAML under its own name.
        for key in b.agent.keys() {
            assert!(
                yaml.contains(&format!("\n{key}:")),
                "{}: {key} not rendered:\n{yaml}",
                b.name
            );
        }
        let target = b.target().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.build.linker, target.linker, "{}: linker", b.name);
    }
}

#[test]
fn qemu_boards_reach_the_host_broker_and_fit_their_emulator() {
    for (name, system, flavour, triple) in [
        (
            "qemu-virt-aarch64",
            "qemu-system-aarch64",
            "arm64",
            "aarch64-unknown-linux-musl",
        ),
        (
            "qemu-virt-armv7",
            "qemu-system-arm",
            "armmp",
            "armv7-unknown-linux-gnueabihf",
        ),
    ] {
        let b = board(name);
        let q = b
            .qemu
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no [qemu]"));
        let t = b.target().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.triple, triple);
        assert_eq!(t.qemu_system, system);
        assert_eq!(q.kernel_flavour, flavour);
        assert_eq!(q.tpm_device, "tpm-tis-device");
        assert_eq!(b.tpm.driver.as_deref(), Some("tpm_tis"));
        assert_eq!(b.tpm.ek_handle, Some(0x8101_0001));
        let cfg = Config::parse(
            &b.render_agent_config("c-vm")
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (cfg.broker.host.as_str(), cfg.broker.port),
            ("10.0.2.2", 1883),
            "{name}"
        );
    }
    // The VM fleet points the guest at its run's broker port.
    let b = board("qemu-virt-aarch64");
    let mut port = toml::Table::new();
    port.insert("broker".into(), "mqtt://10.0.2.2:41883".into());
    let yaml = b
        .render_agent_config_with("c-vm", &port)
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.broker.port, 41883);
    assert_eq!(
        cfg.retry.max,
        std::time::Duration::from_secs(30),
        "profile keys kept"
    );
    port.insert("tpm".into(), "/dev/tpm0".into());
    assert!(
        b.render_agent_config_with("c-vm", &port).is_err(),
        "tpm comes from [tpm]"
    );
    for hardware in ["rpi4-slb9670", "rpi4-slb9670-spi", "generic-aarch64"] {
        assert!(board(hardware).qemu.is_none(), "{hardware} is not a VM");
    }
}

#[test]
fn rpi4_uses_the_kernel_spi_driver_on_spi0_cs1() {
    let b = board("rpi4-slb9670");
    assert_eq!(b.tpm.transport, Transport::Kernel);
    assert_eq!(b.tpm.device, "/dev/tpmrm0");
    assert_eq!(b.tpm.driver.as_deref(), Some("tpm_tis_spi"));
    assert_eq!(b.tpm.dtoverlay.as_deref(), Some("tpm-slb9670"));
    let spi = b.tpm.spi.unwrap_or_else(|| panic!("no [tpm.spi]"));
    assert_eq!((spi.bus, spi.cs), (0, 1));
    assert!(
        spi.hz > 0 && spi.hz <= 43_000_000,
        "SLB9670 max is 43 MHz: {}",
        spi.hz
    );
}

/// `.cargo/config.toml` must link each board's target with the board's linker, give ring
/// the cross C compiler, and link the gnu targets statically.
#[test]
fn cargo_config_agrees_with_the_profiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cargo/config.toml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cfg: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let get = |t: &toml::Table, k: &str| t.get(k).cloned();
    for b in all() {
        let t = b.target().unwrap_or_else(|e| panic!("{e}"));
        let section = cfg
            .get("target")
            .and_then(|v| v.get(t.triple))
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("{path}: no [target.{}] for board {}", t.triple, b.name));
        assert_eq!(
            get(section, "linker").and_then(|v| v.as_str().map(str::to_owned)),
            Some(b.build.linker.clone()),
            "{path}: [target.{}] linker vs boards/{}.toml",
            t.triple,
            b.name
        );
        let flags: Vec<String> = get(section, "rustflags")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let flags = flags.join(" ");
        assert_eq!(
            flags.contains("+crt-static"),
            t.static_by == StaticBy::CrtStatic,
            "{path}: [target.{}] rustflags {flags:?}",
            t.triple
        );
        let env = cfg.get("env").and_then(toml::Value::as_table);
        for (var, want) in [("CC_", t.cc), ("AR_", t.ar)] {
            let var = format!("{var}{}", t.env_suffix());
            let have = env.and_then(|e| e.get(&var)).and_then(toml::Value::as_str);
            assert_eq!(have, Some(want), "{path}: [env] {var}");
        }
    }
}

const BASE: &str = r#"
name = "test-board"
description = "a test board"
[build]
target = "aarch64-unknown-linux-musl"
linker = "aarch64-linux-gnu-gcc"
[tpm]
transport = "kernel"
device = "/dev/tpmrm0"
driver = "tpm_tis"
ek-handle = 0x81010001
[qemu]
machine = "virt"
cpu = "cortex-a53"
smp = 1
memory-mib = 256
console = "ttyAMA0"
tpm-device = "tpm-tis-device"
net-device = "virtio-net-pci"
kernel-flavour = "arm64"
boot-timeout-secs = 60
[agent]
broker = "mqtt://10.0.2.2:1883"
insecure-plaintext = true
retry = { initial = "1s", max = "30s" }
"#;

fn refused(text: &str) -> String {
    match Board::parse(text, "test.toml") {
        Ok(b) => panic!("accepted: {b:?}\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_profile_is_valid() {
    let b = Board::parse(BASE, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.name, "test-board");
    assert_eq!(b.tpm.ek_handle, Some(0x8101_0001));
}

#[test]
fn unknown_keys_are_refused_at_every_level() {
    for (from, to, key) in [
        ("name =", "nmae = \"x\"\nname =", "nmae"),
        ("linker =", "link = \"ld\"\nlinker =", "link"),
        ("driver =", "drvier = \"x\"\ndriver =", "drvier"),
        ("smp = 1", "smp = 1\ncores = 2", "cores"),
        ("broker =", "brokr = \"mqtt://x\"\nbroker =", "brokr"),
        (
            "max = \"30s\"",
            "max = \"30s\", maximum = \"1m\"",
            "maximum",
        ),
    ] {
        let msg = refused(&with(from, to));
        assert!(msg.contains(key), "{key}: {msg}");
    }
    let spi = format!("{BASE}\n[tpm.spi]\nbus = 0\ncs = 1\nhz = 1000000\nmode = 0\n");
    let spi = spi.replacen("driver = \"tpm_tis\"", "driver = \"tpm_tis_spi\"", 1);
    let msg = refused(&spi);
    assert!(msg.contains("mode"), "{msg}");
}

#[test]
fn only_supported_triples_are_accepted() {
    for triple in [
        "armv7-unknown-linux-musleabihf",
        "x86_64-unknown-linux-gnu",
        "aarch64-apple-darwin",
        "",
    ] {
        let msg = refused(&with("aarch64-unknown-linux-musl", triple));
        assert!(
            msg.contains("build.target") && msg.contains("armv7-unknown-linux-gnueabihf"),
            "{triple}: {msg}"
        );
    }
    for t in boards::TARGETS {
        let text = with("aarch64-unknown-linux-musl", t.triple);
        let text = text.replacen("aarch64-linux-gnu-gcc", t.linker, 1);
        let text = if t.debian_arch == "armhf" {
            text.replacen("\"arm64\"", "\"armmp\"", 1)
        } else {
            text
        };
        Board::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{}: {e}", t.triple));
    }
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    for (from, to, key) in [
        ("name = \"test-board\"", "name = \"Test Board\"", "name"),
        ("0x81010001", "0x81000001", "tpm.ek-handle"),
        ("0x81010001", "0x81010100", "tpm.ek-handle"),
        (
            "device = \"/dev/tpmrm0\"",
            "device = \"swtpm:127.0.0.1:2321\"",
            "tpm.device",
        ),
        (
            "transport = \"kernel\"",
            "transport = \"spi\"",
            "tpm.transport",
        ),
        ("driver = \"tpm_tis\"\n", "", "tpm.driver"),
        ("cpu = \"cortex-a53\"", "cpu = \"max\"", "qemu.cpu"),
        (
            "kernel-flavour = \"arm64\"",
            "kernel-flavour = \"armmp\"",
            "qemu.kernel-flavour",
        ),
        (
            "tpm-device = \"tpm-tis-device\"",
            "tpm-device = \"tpm-crb\"",
            "qemu.tpm-device",
        ),
        ("memory-mib = 256", "memory-mib = 16", "qemu.memory-mib"),
        (
            "machine = \"virt\"",
            "machine = \"raspi3b\"",
            "qemu.machine",
        ),
        (
            "linker = \"aarch64-linux-gnu-gcc\"",
            "linker = \"\"",
            "build.linker",
        ),
        ("broker =", "tpm = \"/dev/tpm0\"\nbroker =", "agent"),
        ("broker =", "cluster-id = \"c-1\"\nbroker =", "agent"),
        ("broker =", "when = 1979-05-27T07:32:00Z\nbroker =", "agent"),
        // Values the agent's own parser refuses.
        ("mqtt://10.0.2.2:1883", "http://10.0.2.2", "broker"),
        ("max = \"30s\"", "max = \"soon\"", "retry.max"),
        ("broker =", "log-level = \"loud\"\nbroker =", "log-level"),
        ("broker = \"mqtt://", "broker = \"mqtts://", "tls"),
    ] {
        let msg = refused(&with(from, to));
        assert!(
            msg.contains(key),
            "{from} -> {to}: expected {key} in: {msg}"
        );
    }
    let spi = |driver: &str, hz: u32| {
        format!("{BASE}\n[tpm.spi]\nbus = 0\ncs = 1\nhz = {hz}\n").replacen(
            "driver = \"tpm_tis\"",
            &format!("driver = \"{driver}\""),
            1,
        )
    };
    Board::parse(&spi("tpm_tis_spi", 32_000_000), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(refused(&spi("tpm_tis_spi", 0)).contains("tpm.spi.hz"));
    assert!(refused(&spi("tpm_tis_spi", 100_000_000)).contains("tpm.spi.hz"));
    assert!(refused(&spi("tpm_tis", 32_000_000)).contains("tpm_tis_spi"));
    assert!(refused("not toml [").contains("test.toml"));
}

#[test]
fn the_file_name_must_be_the_board_name_and_unknown_boards_are_listed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("other-name.toml");
    std::fs::write(&path, BASE).unwrap_or_else(|e| panic!("{e}"));
    let msg = match Board::load(&path) {
        Ok(_) => panic!("a profile named test-board loaded from other-name.toml"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("name") && msg.contains("other-name"), "{msg}");
    match boards::find(&boards_dir(), "rpi5") {
        Err(Error::UnknownBoard { known, .. }) => {
            assert!(
                known.contains("rpi4-slb9670") && known.contains("qemu-virt-armv7"),
                "{known}"
            );
        }
        other => panic!("expected UnknownBoard, got {other:?}"),
    }
    assert!(boards::find(&boards_dir(), "../qemu/Cargo").is_err());
}

#[test]
fn file_output_checks_machine_and_static_linking() {
    let a64 = boards::targets::find("aarch64-unknown-linux-musl").unwrap_or_else(|| panic!());
    let arm = boards::targets::find("armv7-unknown-linux-gnueabihf").unwrap_or_else(|| panic!());
    let static_a64 =
        "ELF 64-bit LSB executable, ARM aarch64, version 1 (SYSV), statically linked, stripped";
    let static_arm = "ELF 32-bit LSB executable, ARM, EABI5 version 1 (SYSV), statically linked, for GNU/Linux 3.2.0, stripped";
    let dynamic_arm = "ELF 32-bit LSB pie executable, ARM, EABI5 version 1 (SYSV), dynamically linked, interpreter /lib/ld-linux-armhf.so.3";
    assert!(boards::build::check_file_output(static_a64, a64).is_ok());
    assert!(boards::build::check_file_output(static_arm, arm).is_ok());
    assert!(boards::build::check_file_output(static_arm, a64).is_err());
    assert!(boards::build::check_file_output(static_a64, arm).is_err());
    let msg = boards::build::check_file_output(dynamic_arm, arm)
        .err()
        .unwrap_or_default();
    assert!(msg.contains("crt-static"), "{msg}");
}

/// Cross-builds the aarch64 agent (`--profile agent`) into a target folder of its own (a
/// nested cargo must not wait on the outer one's lock), then checks it with `file` and runs
/// `--help` under qemu-aarch64-static. Needs `bash .ci/install` (rustup target, cross gcc,
/// qemu-user-static): a missing one fails with the command to run.
#[cfg(feature = "it")]
#[test]
fn cross_builds_a_static_aarch64_agent_that_runs_under_qemu() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let opts = boards::BuildOptions {
        board: board("qemu-virt-aarch64"),
        workspace,
        profile: "agent".into(),
        target_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cross")),
    };
    let built = boards::build_agent(&opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", boards::build::summary(&opts.board, &built));
    let file = built
        .file
        .as_deref()
        .unwrap_or_else(|| panic!("`file` is not installed: apt-get install file"));
    assert!(
        file.contains("ARM aarch64") && file.contains("statically linked"),
        "{file}"
    );
    assert_eq!(
        built.runs_under_qemu,
        Some(true),
        "qemu-aarch64-static must run the agent's --help (apt-get install qemu-user-static)"
    );
    // Goal: <= 1.5 MB stripped; fail only well above it so a regression is caught.
    assert!(
        built.size < 3_000_000,
        "aarch64 agent is {} bytes",
        built.size
    );
}
