//! The `--tpm SPEC` argument: which TPM transport to open.
//!
//! `SPEC` is a character device path (`/dev/tpmrm0`, the default, falling back to
//! `/dev/tpm0`), `swtpm:HOST:PORT` (swtpm's TCP server port), `swtpm-unix:PATH`, or one of
//! the agent's own TIS driver's forms for a TPM without a kernel driver:
//! `spi:/dev/spidevB.C[@HZ]` (TIS over SPI through spidev) and `tis-mmio:0xADDR` (a
//! memory-mapped TIS through `/dev/mem`). Parsing is pure; [`TpmSpec::open`] is the only
//! place that touches a device.

use std::fmt;
use std::path::PathBuf;

use crate::tpm::chardev::{self, CharDev};
use crate::tpm::stream::Stream;
use crate::tpm::{Transport, TransportError, tis};

/// SPI clock of `spi:PATH` without `@HZ`: 10 MHz, which every TPM on SPI we know supports
/// (the SLB9670 runs up to 43 MHz).
pub const DEFAULT_SPI_HZ: u32 = 10_000_000;
/// Highest SPI clock `spi:PATH@HZ` accepts.
pub const MAX_SPI_HZ: u32 = 100_000_000;

/// A parsed TPM transport specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSpec {
    /// `/dev/tpmrm0`, falling back to `/dev/tpm0` when it does not exist.
    Default,
    /// A specific character device.
    Device(PathBuf),
    /// swtpm over TCP.
    Swtpm {
        /// Host name or address.
        host: String,
        /// Server (not control) port.
        port: u16,
    },
    /// swtpm over a unix socket.
    SwtpmUnix(PathBuf),
    /// A TPM on SPI through a spidev node, driven by the agent's own TIS driver.
    Spi {
        /// The spidev node (`/dev/spidevB.C`).
        path: PathBuf,
        /// SPI clock in Hz.
        hz: u32,
    },
    /// A memory-mapped TIS (QEMU's `tpm-tis-device`) at a physical address, through
    /// `/dev/mem`, driven by the agent's own TIS driver.
    TisMmio {
        /// Physical address of locality 0's registers (4-byte aligned).
        addr: u64,
    },
}

/// A `SPEC` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid TPM spec {spec:?}: {reason} (expected /dev/tpmrm0, swtpm:HOST:PORT, \
     swtpm-unix:PATH, spi:/dev/spidevB.C[@HZ] or tis-mmio:0xADDR)"
)]
pub struct SpecError {
    /// The input.
    pub spec: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl TpmSpec {
    /// Parses a `SPEC`.
    ///
    /// # Errors
    /// [`SpecError`] for an unknown form, a missing host/path, a bad port, SPI clock or
    /// address.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let err = |reason| SpecError {
            spec: spec.to_owned(),
            reason,
        };
        if let Some(rest) = spec.strip_prefix("spi:") {
            return parse_spi(rest).map_err(err);
        }
        if let Some(rest) = spec.strip_prefix("tis-mmio:") {
            return parse_mmio(rest).map_err(err);
        }
        if let Some(rest) = spec.strip_prefix("swtpm-unix:") {
            if rest.is_empty() {
                return Err(err("missing socket path"));
            }
            return Ok(Self::SwtpmUnix(PathBuf::from(rest)));
        }
        if let Some(rest) = spec.strip_prefix("swtpm:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(err("missing host"));
            }
            let port = port
                .parse::<u16>()
                .map_err(|_| err("port is not a number 1-65535"))?;
            if port == 0 {
                return Err(err("port is not a number 1-65535"));
            }
            return Ok(Self::Swtpm {
                host: host.to_owned(),
                port,
            });
        }
        if spec == chardev::TPMRM0 {
            return Ok(Self::Default);
        }
        if spec.starts_with('/') {
            return Ok(Self::Device(PathBuf::from(spec)));
        }
        Err(err("unknown form"))
    }

    /// Opens the transport.
    ///
    /// # Errors
    /// [`TransportError`] naming the device and what to do.
    pub fn open(&self) -> Result<Box<dyn Transport>, TransportError> {
        Ok(match self {
            Self::Default => Box::new(CharDev::open_default()?),
            Self::Device(p) => Box::new(CharDev::open(p)?),
            Self::Swtpm { host, port } => Box::new(Stream::connect_tcp(host, *port)?),
            Self::SwtpmUnix(p) => Box::new(Stream::connect_unix(p)?),
            Self::Spi { path, hz } => Box::new(tis::open_spi(path, *hz, self.to_string())?),
            Self::TisMmio { addr } => Box::new(tis::open_mmio(*addr, self.to_string())?),
        })
    }

    /// Whether the TPM behind this spec lacks a resource manager, so leftover handles from
    /// earlier clients must be flushed before use (swtpm, raw `/dev/tpm0`, the agent's own
    /// TIS driver).
    #[must_use]
    pub fn needs_flush(&self) -> bool {
        match self {
            Self::Default => false,
            Self::Device(p) => !p.to_string_lossy().contains("tpmrm"),
            Self::Swtpm { .. } | Self::SwtpmUnix(_) | Self::Spi { .. } | Self::TisMmio { .. } => {
                true
            }
        }
    }
}

impl fmt::Display for TpmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str(chardev::TPMRM0),
            Self::Device(p) => write!(f, "{}", p.display()),
            Self::Swtpm { host, port } => write!(f, "swtpm:{host}:{port}"),
            Self::SwtpmUnix(p) => write!(f, "swtpm-unix:{}", p.display()),
            Self::Spi { path, hz } if *hz == DEFAULT_SPI_HZ => {
                write!(f, "spi:{}", path.display())
            }
            Self::Spi { path, hz } => write!(f, "spi:{}@{hz}", path.display()),
            Self::TisMmio { addr } => write!(f, "tis-mmio:{addr:#x}"),
        }
    }
}

/// `PATH[@HZ]` after `spi:`.
fn parse_spi(rest: &str) -> Result<TpmSpec, &'static str> {
    let (path, hz) = match rest.rsplit_once('@') {
        Some((path, hz)) => {
            let hz = hz
                .parse::<u32>()
                .map_err(|_| "SPI clock @HZ is not a positive integer (Hz)")?;
            if hz == 0 {
                return Err("SPI clock @HZ must be above 0 Hz");
            }
            if hz > MAX_SPI_HZ {
                return Err("SPI clock @HZ above 100 MHz (100000000); TPMs run at 43 MHz or less");
            }
            (path, hz)
        }
        None => (rest, DEFAULT_SPI_HZ),
    };
    if path.is_empty() {
        return Err("missing spidev path");
    }
    if !path.starts_with('/') {
        return Err("spidev path must be absolute (/dev/spidevB.C)");
    }
    Ok(TpmSpec::Spi {
        path: PathBuf::from(path),
        hz,
    })
}

/// `0xADDR` after `tis-mmio:`.
fn parse_mmio(rest: &str) -> Result<TpmSpec, &'static str> {
    if rest.is_empty() {
        return Err("missing address");
    }
    let hex = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))
        .ok_or("address needs the 0x prefix (hexadecimal)")?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("address is not a hexadecimal number");
    }
    let addr = u64::from_str_radix(hex, 16).map_err(|_| "address does not fit 64 bits")?;
    if addr % 4 != 0 {
        return Err("address is not 4-byte aligned");
    }
    Ok(TpmSpec::TisMmio { addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(TpmSpec::parse("/dev/tpmrm0").unwrap(), TpmSpec::Default);
        assert_eq!(
            TpmSpec::parse("/dev/tpm0").unwrap(),
            TpmSpec::Device("/dev/tpm0".into())
        );
        assert_eq!(
            TpmSpec::parse("swtpm:127.0.0.1:2321").unwrap(),
            TpmSpec::Swtpm {
                host: "127.0.0.1".into(),
                port: 2321
            }
        );
        assert_eq!(
            TpmSpec::parse("swtpm:[::1]:2321").unwrap(),
            TpmSpec::Swtpm {
                host: "::1".into(),
                port: 2321
            }
        );
        assert_eq!(
            TpmSpec::parse("swtpm-unix:/run/swtpm.sock").unwrap(),
            TpmSpec::SwtpmUnix("/run/swtpm.sock".into())
        );
        for s in ["/dev/tpmrm0", "swtpm:h:1", "swtpm-unix:/x"] {
            assert_eq!(TpmSpec::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn parses_the_tis_forms() {
        assert_eq!(
            TpmSpec::parse("spi:/dev/spidev0.1").unwrap(),
            TpmSpec::Spi {
                path: "/dev/spidev0.1".into(),
                hz: DEFAULT_SPI_HZ
            }
        );
        assert_eq!(
            TpmSpec::parse("spi:/dev/spidev0.1@32000000").unwrap(),
            TpmSpec::Spi {
                path: "/dev/spidev0.1".into(),
                hz: 32_000_000
            }
        );
        assert_eq!(
            TpmSpec::parse("spi:/dev/spidev1.0@100000000").unwrap(),
            TpmSpec::Spi {
                path: "/dev/spidev1.0".into(),
                hz: MAX_SPI_HZ
            }
        );
        assert_eq!(
            TpmSpec::parse("tis-mmio:0x0c000000").unwrap(),
            TpmSpec::TisMmio { addr: 0x0c00_0000 }
        );
        assert_eq!(
            TpmSpec::parse("tis-mmio:0XFED40004").unwrap(),
            TpmSpec::TisMmio { addr: 0xfed4_0004 }
        );
        for s in [
            "spi:/dev/spidev0.1",
            "spi:/dev/spidev0.1@1000000",
            "tis-mmio:0xc000000",
            "tis-mmio:0xfed40000",
        ] {
            let spec = TpmSpec::parse(s).unwrap();
            assert_eq!(spec.to_string(), s);
            assert!(spec.needs_flush(), "{s}");
        }
        // The default clock is implied, so it displays without @HZ and parses back equal.
        let spec = TpmSpec::parse("spi:/dev/spidev0.0@10000000").unwrap();
        assert_eq!(spec.to_string(), "spi:/dev/spidev0.0");
        assert_eq!(TpmSpec::parse(&spec.to_string()).unwrap(), spec);
        let spec = TpmSpec::parse("tis-mmio:0x0C000000").unwrap();
        assert_eq!(TpmSpec::parse(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn rejects_bad_tis_specs_with_a_reason() {
        for (s, why) in [
            ("spi:", "missing spidev path"),
            ("spi:@1000", "missing spidev path"),
            ("spi:spidev0.1", "absolute"),
            ("spi:/dev/spidev0.1@0", "above 0 Hz"),
            ("spi:/dev/spidev0.1@100000001", "above 100 MHz"),
            ("spi:/dev/spidev0.1@fast", "not a positive integer"),
            ("spi:/dev/spidev0.1@-5", "not a positive integer"),
            ("spi:/dev/spidev0.1@", "not a positive integer"),
            ("spi:/dev/spidev0.1@99999999999", "not a positive integer"),
            ("tis-mmio:", "missing address"),
            ("tis-mmio:0c000000", "0x prefix"),
            ("tis-mmio:0x", "not a hexadecimal number"),
            ("tis-mmio:0xg000", "not a hexadecimal number"),
            ("tis-mmio:0x+c00", "not a hexadecimal number"),
            ("tis-mmio:0x1ffffffffffffffff", "64 bits"),
            ("tis-mmio:0x0c000002", "4-byte aligned"),
        ] {
            let e = TpmSpec::parse(s).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(why), "{s}: {msg}");
            for form in [
                "spi:/dev/spidevB.C[@HZ]",
                "tis-mmio:0xADDR",
                "swtpm:HOST:PORT",
            ] {
                assert!(msg.contains(form), "{s}: {msg}");
            }
        }
    }

    #[test]
    fn missing_spidev_says_how_to_enable_spi() {
        let e = TpmSpec::parse("spi:/dev/ekattest-no-spidev0.1")
            .unwrap()
            .open()
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("spi:/dev/ekattest-no-spidev0.1"), "{msg}");
        assert!(msg.contains("dtparam=spi=on"), "{msg}");
        assert!(msg.contains("tpm_tis_spi"), "{msg}");
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (s, why) in [
            ("swtpm:127.0.0.1", "missing :PORT"),
            ("swtpm::2321", "missing host"),
            ("swtpm:h:99999", "port"),
            ("swtpm:h:0", "port"),
            ("swtpm-unix:", "missing socket path"),
            ("tpm0", "unknown form"),
        ] {
            let e = TpmSpec::parse(s).unwrap_err();
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn missing_device_fails_with_its_path() {
        let e = TpmSpec::parse("/dev/ekattest-missing-tpm")
            .unwrap()
            .open()
            .err()
            .unwrap();
        assert!(e.to_string().contains("/dev/ekattest-missing-tpm"), "{e}");
    }
}
