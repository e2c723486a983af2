//! The `--tpm SPEC` argument: which TPM transport to open.
//!
//! `SPEC` is a character device path (`/dev/tpmrm0`, the default, falling back to
//! `/dev/tpm0`), `swtpm:HOST:PORT` (swtpm's TCP server port) or `swtpm-unix:PATH`. Parsing
//! is pure; [`TpmSpec::open`] is the only place that touches a device.

use std::fmt;
use std::path::PathBuf;

use crate::tpm::chardev::{self, CharDev};
use crate::tpm::stream::Stream;
use crate::tpm::{Transport, TransportError};

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
}

/// A `SPEC` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid TPM spec {spec:?}: {reason} (expected /dev/tpmrm0, swtpm:HOST:PORT or \
     swtpm-unix:PATH)"
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
    /// [`SpecError`] for an unknown form, a missing host/path or a bad port.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let err = |reason| SpecError {
            spec: spec.to_owned(),
            reason,
        };
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
        })
    }

    /// Whether the TPM behind this spec lacks a resource manager, so leftover handles from
    /// earlier clients must be flushed before use (swtpm, raw `/dev/tpm0`).
    #[must_use]
    pub fn needs_flush(&self) -> bool {
        match self {
            Self::Default => false,
            Self::Device(p) => !p.to_string_lossy().contains("tpmrm"),
            Self::Swtpm { .. } | Self::SwtpmUnix(_) => true,
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
        }
    }
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
