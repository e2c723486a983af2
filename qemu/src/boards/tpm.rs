//! The `[tpm]` section of a board profile: how the agent reaches the board's TPM, and the
//! checks that keep the transport, the agent's `--tpm` device string and the wiring
//! coherent.
//!
//! Three transports: `kernel` (a kernel driver such as `tpm_tis` or `tpm_tis_spi` binds the
//! TPM and the agent opens `/dev/tpmrm0`), `spi` (the agent's own TIS-over-SPI driver on
//! `/dev/spidevB.C`, no kernel TPM driver) and `tis-mmio` (the agent's own TIS driver on
//! memory-mapped registers through `/dev/mem`, no `tpm_tis`). The device string is parsed
//! with the agent's own [`TpmSpec::parse`], so a profile that validates is one the agent
//! accepts. Pure data and checks: nothing here opens a device or runs a program.

use ekattest_agent::spec::TpmSpec;
use ekattest_agent::tpm::ek::PERSISTENT_EK_RANGE;
use serde::Deserialize;

use super::{Result, invalid, plain};

/// `[tpm] transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A kernel driver binds the TPM and the agent opens its character device
    /// (`device = "/dev/tpmrm0"`, `driver` names the module).
    Kernel,
    /// The agent drives a SPI TPM itself through spidev (`device =
    /// "spi:/dev/spidevB.C@HZ"`, agreeing with `[tpm.spi]`); no kernel TPM driver may bind
    /// the chip, or `/dev/spidevB.C` does not exist.
    Spi,
    /// The agent drives memory-mapped TIS registers itself through `/dev/mem` (`device =
    /// "tis-mmio:0xADDR"`); `tpm_tis` must not be loaded. Boards with `[qemu]` take the
    /// address from the guest's device tree at boot; others say where it comes from in
    /// `address-from`.
    TisMmio,
}

impl Transport {
    /// The profile's spelling (`kernel`, `spi`, `tis-mmio`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Spi => "spi",
            Self::TisMmio => "tis-mmio",
        }
    }
}

/// `[tpm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tpm {
    /// How the agent reaches the TPM.
    pub transport: Transport,
    /// The agent's `--tpm` SPEC and its config's `tpm`: a `/dev` path with the kernel
    /// transport, `spi:/dev/spidevB.C@HZ` with `spi`, `tis-mmio:0xADDR` with `tis-mmio`.
    pub device: String,
    /// The kernel module that binds the TPM (`tpm_tis`, `tpm_tis_spi`): required with the
    /// kernel transport, refused with the others (the agent is the driver there).
    pub driver: Option<String>,
    /// The TPM part, for people (`Infineon SLB9670`).
    pub chip: Option<String>,
    /// Raspberry Pi `config.txt` device-tree overlay (`dtoverlay=tpm-slb9670`); with the
    /// `spi` transport a `tpm-*` overlay is refused (it hands the chip to `tpm_tis_spi`).
    pub dtoverlay: Option<String>,
    /// Persistent EK handle made by the board's provisioning (within the range the agent
    /// searches, 0x81010000..=0x810100FF).
    pub ek_handle: Option<u32>,
    /// `tis-mmio` only: where the register address comes from, for people and installers
    /// (`ACPI TPM2 table`, `device tree node tpm@fed40000`). Required on boards without
    /// `[qemu]`; the VM fleet reads the address from the guest's device tree.
    pub address_from: Option<String>,
    /// `[tpm.spi]`: SPI wiring. Required with the `spi` transport (it must agree with
    /// `device`); with the kernel transport it documents the overlay's wiring.
    pub spi: Option<Spi>,
}

/// `[tpm.spi]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spi {
    /// SPI controller (`/dev/spidevBUS.CS`).
    pub bus: u8,
    /// Chip select.
    pub cs: u8,
    /// Clock in Hz.
    pub hz: u32,
}

impl Spi {
    /// The spidev node of this wiring (`/dev/spidev0.1`).
    #[must_use]
    pub fn spidev(&self) -> String {
        format!("/dev/spidev{}.{}", self.bus, self.cs)
    }
}

/// Checks `[tpm]` of board `name`; `has_qemu` says whether the board has a `[qemu]` section.
pub(super) fn validate(name: &str, t: &Tpm, has_qemu: bool) -> Result<()> {
    let bad = |key, reason: String| Err(invalid(name, key, reason));
    let spec = TpmSpec::parse(&t.device);
    match t.transport {
        Transport::Kernel => kernel(name, t, &spec)?,
        Transport::Spi => spi(name, t, &spec, has_qemu)?,
        Transport::TisMmio => tis_mmio(name, t, &spec, has_qemu)?,
    }
    if t.address_from.is_some() && t.transport != Transport::TisMmio {
        return bad(
            "tpm.address-from",
            format!(
                "only for transport = \"tis-mmio\" (this board's is {:?}): remove it",
                t.transport.as_str()
            ),
        );
    }
    if let Some(o) = &t.dtoverlay
        && !plain(o)
    {
        return bad("tpm.dtoverlay", format!("{o:?}"));
    }
    if let Some(h) = t.ek_handle {
        let (lo, hi) = PERSISTENT_EK_RANGE;
        if !(lo..=hi).contains(&h) {
            return bad(
                "tpm.ek-handle",
                format!(
                    "{h:#010x} is outside {lo:#010x}..={hi:#010x}, the persistent EK handles \
                     the agent searches"
                ),
            );
        }
    }
    if let Some(spi) = &t.spi {
        if spi.bus > 15 || spi.cs > 7 {
            return bad(
                "tpm.spi",
                format!(
                    "bus {} cs {}: expected bus 0-15, cs 0-7 (/dev/spidevBUS.CS)",
                    spi.bus, spi.cs
                ),
            );
        }
        if !(100_000..=66_000_000).contains(&spi.hz) {
            return bad(
                "tpm.spi.hz",
                format!(
                    "{} Hz: a TPM's SPI clock is 0.1-66 MHz (e.g. 10000000)",
                    spi.hz
                ),
            );
        }
    }
    Ok(())
}

/// What to write for `transport`, for messages.
fn device_hint(transport: Transport) -> &'static str {
    match transport {
        Transport::Kernel => "a /dev path such as /dev/tpmrm0",
        Transport::Spi => "spi:/dev/spidevBUS.CS@HZ, e.g. spi:/dev/spidev0.1@10000000",
        Transport::TisMmio => "tis-mmio:0xADDR, e.g. tis-mmio:0xfed40000",
    }
}

/// The device string names another transport's SPEC: say which `transport` fits it.
fn other_transport(spec: &TpmSpec) -> Option<Transport> {
    match spec {
        TpmSpec::Spi { .. } => Some(Transport::Spi),
        TpmSpec::TisMmio { .. } => Some(Transport::TisMmio),
        _ => None,
    }
}

fn wrong_device<E: std::fmt::Display>(
    name: &str,
    t: &Tpm,
    spec: &Result<TpmSpec, E>,
) -> super::Error {
    let want = device_hint(t.transport);
    let reason = match spec {
        Err(e) => format!("{e}: transport {:?} needs {want}", t.transport.as_str()),
        Ok(s) => match other_transport(s) {
            Some(fits) => format!(
                "{:?} is a SPEC of transport {:?}: write transport = {:?}, or device = {want}",
                t.device,
                fits.as_str(),
                fits.as_str()
            ),
            None => format!(
                "{:?}: transport {:?} needs {want}",
                t.device,
                t.transport.as_str()
            ),
        },
    };
    invalid(name, "tpm.device", reason)
}

fn kernel<E: std::fmt::Display>(name: &str, t: &Tpm, spec: &Result<TpmSpec, E>) -> Result<()> {
    let bad = |key, reason: String| Err(invalid(name, key, reason));
    match spec {
        Ok(TpmSpec::Device(_) | TpmSpec::Default) if t.device.starts_with("/dev/") => {}
        _ => return Err(wrong_device(name, t, spec)),
    }
    let Some(driver) = &t.driver else {
        return bad(
            "tpm.driver",
            "missing: name the kernel module that binds the TPM (tpm_tis, tpm_tis_spi)".into(),
        );
    };
    if !plain(driver) {
        return bad("tpm.driver", format!("{driver:?}"));
    }
    if t.spi.is_some() && driver != "tpm_tis_spi" {
        return bad(
            "tpm.driver",
            format!("{driver:?} with [tpm.spi]: a SPI TPM is bound by tpm_tis_spi"),
        );
    }
    Ok(())
}

fn spi<E: std::fmt::Display>(
    name: &str,
    t: &Tpm,
    spec: &Result<TpmSpec, E>,
    has_qemu: bool,
) -> Result<()> {
    let bad = |key, reason: String| Err(invalid(name, key, reason));
    if has_qemu {
        return bad(
            "tpm.transport",
            "\"spi\" on a [qemu] board: QEMU has no SPI TPM model; a virtual board uses \
             \"kernel\" (tpm_tis) or \"tis-mmio\" (the agent's own TIS driver)"
                .into(),
        );
    }
    let Ok(TpmSpec::Spi { path, hz }) = spec else {
        return Err(wrong_device(name, t, spec));
    };
    if let Some(driver) = &t.driver {
        return bad(
            "tpm.driver",
            format!(
                "{driver:?} with transport \"spi\": the agent drives the TPM itself through \
                 spidev, and a kernel driver bound to the chip removes {}; remove driver",
                path.display()
            ),
        );
    }
    if let Some(o) = &t.dtoverlay
        && o.starts_with("tpm")
    {
        return bad(
            "tpm.dtoverlay",
            format!(
                "{o:?} hands the chip to the kernel's tpm_tis_spi, so {} does not exist: with \
                 transport \"spi\" enable the bus only (dtparam=spi=on) and remove dtoverlay",
                path.display()
            ),
        );
    }
    let Some(wiring) = &t.spi else {
        return bad(
            "tpm.spi",
            format!(
                "missing: transport \"spi\" needs [tpm.spi] bus, cs and hz, agreeing with \
                 device {:?}",
                t.device
            ),
        );
    };
    if path.as_os_str() != wiring.spidev().as_str() {
        return bad(
            "tpm.device",
            format!(
                "{} is not {}, the node of [tpm.spi] bus {} cs {}: make them agree",
                path.display(),
                wiring.spidev(),
                wiring.bus,
                wiring.cs
            ),
        );
    }
    if *hz != wiring.hz {
        return bad(
            "tpm.spi.hz",
            format!(
                "{} Hz, but device {:?} runs the bus at {hz} Hz: write the same clock in both \
                 (device = \"spi:{}@{}\")",
                wiring.hz,
                t.device,
                wiring.spidev(),
                wiring.hz
            ),
        );
    }
    Ok(())
}

fn tis_mmio<E: std::fmt::Display>(
    name: &str,
    t: &Tpm,
    spec: &Result<TpmSpec, E>,
    has_qemu: bool,
) -> Result<()> {
    let bad = |key, reason: String| Err(invalid(name, key, reason));
    let Ok(TpmSpec::TisMmio { addr }) = spec else {
        return Err(wrong_device(name, t, spec));
    };
    if *addr == 0 || !addr.is_multiple_of(0x1000) {
        return bad(
            "tpm.device",
            format!(
                "tis-mmio:{addr:#x}: the TIS register window starts on a 4 KiB page boundary \
                 (PC platforms: 0xfed40000; QEMU virt: 0xc000000)"
            ),
        );
    }
    if let Some(driver) = &t.driver {
        return bad(
            "tpm.driver",
            format!(
                "{driver:?} with transport \"tis-mmio\": the agent drives the TIS registers \
                 itself and no kernel driver may own them (tpm_tis must not be loaded); remove \
                 driver"
            ),
        );
    }
    if t.spi.is_some() {
        return bad(
            "tpm.spi",
            "with transport \"tis-mmio\" the registers are memory-mapped: remove [tpm.spi], \
             or use transport = \"spi\""
                .into(),
        );
    }
    match &t.address_from {
        Some(a) if a.trim().is_empty() || a.len() > 256 || a.chars().any(char::is_control) => bad(
            "tpm.address-from",
            format!("{a:?}: one line of text, at most 256 bytes"),
        ),
        None if !has_qemu => bad(
            "tpm.address-from",
            format!(
                "missing: a hardware board with transport \"tis-mmio\" must say where {:#x} \
                 comes from (ACPI TPM2 table, device tree node, vendor manual), so an \
                 installer can check it",
                addr
            ),
        ),
        _ => Ok(()),
    }
}
