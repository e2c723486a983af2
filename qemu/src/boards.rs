//! Board profiles (`boards/*.toml`): what a device needs to run the agent. One TOML file per
//! board gives the Rust target triple and linker of its cross build, its TPM ([`tpm`]:
//! transport `kernel`, `spi` or `tis-mmio`, device, kernel driver, SPI wiring, persistent EK
//! handle), the QEMU machine for virtual boards (the VM fleet boots these), and the default
//! agent configuration, rendered to the agent's YAML keys (deploy/agent.yaml).
//!
//! Parsing is strict: unknown keys are errors at every level, triples must be in
//! [`targets::TARGETS`], and [`Board::validate`] renders the agent configuration and runs it
//! through the agent's own parser ([`ekattest_agent::daemon::config::Config::parse`]), so a
//! profile that loads is one the agent accepts. Parsing never panics, reads at most
//! [`PROFILE_MAX`] bytes per file and never touches anything but the files named;
//! [`build`] is the only part that runs programs (cargo, rustc, `file`, QEMU user mode).

pub mod build;
pub mod targets;
pub mod tpm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ekattest_agent::daemon::config::Config;
use serde::Deserialize;

pub use build::{BuildOptions, Built, build_agent};
pub use targets::{StaticBy, TARGETS, Target};
pub use tpm::{Spi, Tpm, Transport};

/// Largest profile file read.
pub const PROFILE_MAX: u64 = 64 * 1024;

/// The `boards/` folder of this source tree (the default of `--boards`).
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../boards");

/// The cluster id filled in when a profile's agent configuration is checked.
const CHECK_CLUSTER: &str = "c-board-check";

/// What went wrong with a board profile or a board's cross build. Each message names the
/// file, key or program, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a missing key or a value of the wrong type.
    #[error("board profile {file}: {message}")]
    Toml {
        /// The file (or `<text>`).
        file: String,
        /// The TOML parser's message (line and column included).
        message: String,
    },
    /// A key whose value is not acceptable.
    #[error("board {board}: {key}: {reason}")]
    Invalid {
        /// The board.
        board: String,
        /// The key (`tpm.spi.hz`).
        key: &'static str,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// No profile of that name.
    #[error("no board {name:?} in {dir} (boards: {known})")]
    UnknownBoard {
        /// The name asked for.
        name: String,
        /// The folder searched.
        dir: PathBuf,
        /// The boards found there.
        known: String,
    },
    /// The Rust standard library for the target is not installed.
    #[error(
        "the Rust target {triple} is not installed: run `rustup target add {triple}` (or bash .ci/install)"
    )]
    MissingTarget {
        /// The target triple.
        triple: String,
    },
    /// A program the build needs is not on PATH.
    #[error("{program} is not on PATH: {fix}")]
    MissingTool {
        /// The program.
        program: String,
        /// What to do (the `apt-get install` command when the package is known).
        fix: String,
    },
    /// A program could not be run or failed.
    #[error("{program}: {reason}")]
    Command {
        /// The program (with its main arguments).
        program: String,
        /// What happened.
        reason: String,
    },
}

/// Shorthand for this module's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One board profile (`boards/NAME.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Board {
    /// The board's name: the file's stem, `[a-z0-9-]`.
    pub name: String,
    /// One line for people.
    pub description: String,
    /// `[build]`: the cross build.
    pub build: Build,
    /// `[tpm]`: how the agent reaches the TPM.
    pub tpm: Tpm,
    /// `[qemu]`: the virtual machine, for boards the VM fleet boots (absent on hardware).
    pub qemu: Option<Qemu>,
    /// `[agent]`: default agent configuration keys (deploy/agent.yaml), rendered to YAML by
    /// [`Board::render_agent_config`]. `cluster-id` (per deployment) and `tpm` (from
    /// `[tpm] device`) are not allowed here.
    #[serde(default)]
    pub agent: toml::Table,
}

/// `[build]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Build {
    /// Rust target triple, one of [`TARGETS`].
    pub target: String,
    /// Linker program (normally the target's entry in `.cargo/config.toml`).
    pub linker: String,
}

/// `[qemu]`: what the VM fleet boots. The emulator, Debian architecture and kernel `ARCH=`
/// come from the target ([`Board::target`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Qemu {
    /// `-M` (`virt`, `virt,highmem=off`).
    pub machine: String,
    /// `-cpu` (`cortex-a53`; not `max`, whose pointer-authentication emulation costs seconds).
    pub cpu: String,
    /// `-smp`.
    pub smp: u8,
    /// `-m`, MiB.
    pub memory_mib: u32,
    /// Serial console device of the guest kernel (`ttyAMA0`).
    pub console: String,
    /// The TPM device model (`tpm-tis-device`: bound by the guest's `tpm_tis` with the
    /// kernel transport, driven by the agent itself through `/dev/mem` with `tis-mmio`).
    pub tpm_device: String,
    /// The network device model (`virtio-net-pci`).
    pub net_device: String,
    /// Debian kernel flavour (`linux-image-<ABI>-<flavour>`: `arm64`, `armmp`).
    pub kernel_flavour: String,
    /// How long a boot may take to reach the agent before the board counts as failed.
    pub boot_timeout_secs: u32,
}

fn invalid(board: &str, key: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        board: board.to_owned(),
        key,
        reason: reason.into(),
    }
}

fn plain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic())
}

impl Board {
    /// Parses and validates profile text; `file` names it in errors.
    ///
    /// # Errors
    /// [`Error::Toml`] for syntax, unknown or missing keys; [`Error::Invalid`] from
    /// [`Board::validate`].
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let board: Self = toml::from_str(text).map_err(|e| Error::Toml {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        board.validate()?;
        Ok(board)
    }

    /// Reads, parses and validates `path`; the board's `name` must be the file's stem.
    ///
    /// # Errors
    /// [`Error::Read`], or those of [`Board::parse`], or [`Error::Invalid`] for a name that
    /// is not the file's.
    pub fn load(path: &Path) -> Result<Self> {
        let read = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > PROFILE_MAX {
            return Err(read(std::io::Error::other("larger than 64 KiB")));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let board = Self::parse(&text, &path.display().to_string())?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if board.name != stem {
            return Err(invalid(
                &board.name,
                "name",
                format!("must be the file's name without .toml ({stem:?})"),
            ));
        }
        Ok(board)
    }

    /// The board's target (the triple was checked by [`Board::validate`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] if the triple is not supported (a hand-built [`Board`]).
    pub fn target(&self) -> Result<&'static Target> {
        targets::find(&self.build.target).ok_or_else(|| {
            invalid(
                &self.name,
                "build.target",
                format!(
                    "{:?} is not a supported target (supported: {})",
                    self.build.target,
                    targets::supported()
                ),
            )
        })
    }

    /// Checks every key: the target is supported, the TPM section is coherent, the QEMU
    /// section fits the target, and the rendered agent configuration passes the agent's own
    /// parser.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        let name = self.name.as_str();
        let bad = |key, reason: String| Err(invalid(name, key, reason));
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad("name", format!("{name:?}: use 1-64 of a-z, 0-9 and -"));
        }
        if self.description.trim().is_empty() {
            return bad("description", "must not be empty".into());
        }
        let target = self.target()?;
        if !plain(&self.build.linker) {
            return bad(
                "build.linker",
                format!(
                    "{:?} is not a program name (the default for {} is {})",
                    self.build.linker, target.triple, target.linker
                ),
            );
        }
        tpm::validate(name, &self.tpm, self.qemu.is_some())?;
        if let Some(q) = &self.qemu {
            validate_qemu(name, q, target)?;
        }
        self.render_agent_config(CHECK_CLUSTER).map(drop)
    }

    /// The agent's YAML configuration for this board: `cluster-id`, `agent-attestors`
    /// (`[{type: tpm_ek}]` unless the profile sets it), `tpm` from `[tpm] device`, then the
    /// `[agent]` keys. The result is checked with the agent's own parser.
    ///
    /// # Errors
    /// [`Error::Invalid`] (key `agent`) for a key the profile must not set, a value YAML
    /// cannot carry, or anything the agent's parser refuses.
    pub fn render_agent_config(&self, cluster_id: &str) -> Result<String> {
        self.render_agent_config_with(cluster_id, &toml::Table::new())
    }

    /// [`Board::render_agent_config`] with `overrides` replacing or adding `[agent]` keys
    /// (the VM fleet sets `broker = "mqtt://10.0.2.2:PORT"` for its run's broker port).
    ///
    /// # Errors
    /// As [`Board::render_agent_config`], for the merged keys.
    pub fn render_agent_config_with(
        &self,
        cluster_id: &str,
        overrides: &toml::Table,
    ) -> Result<String> {
        let name = self.name.as_str();
        let bad = |reason: String| invalid(name, "agent", reason);
        let mut agent = self.agent.clone();
        agent.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        for key in ["cluster-id", "tpm"] {
            if agent.contains_key(key) {
                return Err(bad(format!(
                    "{key} is not a board default (cluster-id is given per deployment, the \
                     TPM comes from [tpm] device)"
                )));
            }
        }
        let mut map: BTreeMap<String, serde_norway::Value> = BTreeMap::new();
        map.insert("cluster-id".into(), cluster_id.into());
        let mut attestor = serde_norway::Mapping::new();
        attestor.insert("type".into(), "tpm_ek".into());
        map.insert(
            "agent-attestors".into(),
            serde_norway::Value::Sequence(vec![attestor.into()]),
        );
        map.insert("tpm".into(), self.tpm.device.as_str().into());
        for (key, value) in &agent {
            if has_datetime(value) {
                return Err(bad(format!(
                    "{key}: TOML dates and times have no agent key (write durations as \
                     strings, e.g. \"30s\")"
                )));
            }
            let value = serde_norway::to_value(value).map_err(|e| bad(format!("{key}: {e}")))?;
            map.insert(key.clone(), value);
        }
        let body = serde_norway::to_string(&map).map_err(|e| bad(e.to_string()))?;
        let yaml = format!(
            "# ekattest-agent configuration for board {name} (rendered from boards/{name}.toml)\n\
             {body}"
        );
        Config::parse(&yaml).map_err(|e| bad(format!("the agent refuses it: {e}")))?;
        Ok(yaml)
    }
}

fn has_datetime(v: &toml::Value) -> bool {
    match v {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(a) => a.iter().any(has_datetime),
        toml::Value::Table(t) => t.values().any(has_datetime),
        _ => false,
    }
}

fn validate_qemu(name: &str, q: &Qemu, target: &Target) -> Result<()> {
    let bad = |key, reason: String| Err(invalid(name, key, reason));
    if !q.machine.starts_with("virt") || !plain(&q.machine) {
        return bad(
            "qemu.machine",
            format!(
                "{:?}: the VM fleet boots the virt machine (virt, virt,highmem=off)",
                q.machine
            ),
        );
    }
    if !plain(&q.cpu) || q.cpu == "max" {
        return bad(
            "qemu.cpu",
            format!(
                "{:?}: name a concrete CPU (cortex-a53, cortex-a15); max emulates pointer \
                 authentication and boots several times slower",
                q.cpu
            ),
        );
    }
    if !(1..=8).contains(&q.smp) {
        return bad("qemu.smp", format!("{}: expected 1-8", q.smp));
    }
    if !(64..=4096).contains(&q.memory_mib) {
        return bad(
            "qemu.memory-mib",
            format!("{}: expected 64-4096", q.memory_mib),
        );
    }
    if !plain(&q.console) {
        return bad("qemu.console", format!("{:?}", q.console));
    }
    if q.tpm_device != "tpm-tis-device" {
        return bad(
            "qemu.tpm-device",
            format!(
                "{:?}: ARM virt boards have only tpm-tis-device (QEMU has no SPI TPM model)",
                q.tpm_device
            ),
        );
    }
    if !plain(&q.net_device) {
        return bad("qemu.net-device", format!("{:?}", q.net_device));
    }
    let flavours: &[&str] = match target.debian_arch {
        "arm64" => &["arm64"],
        _ => &["armmp", "armmp-lpae"],
    };
    if !flavours.contains(&q.kernel_flavour.as_str()) {
        return bad(
            "qemu.kernel-flavour",
            format!(
                "{:?}: Debian {} kernels come as {}",
                q.kernel_flavour,
                target.debian_arch,
                flavours.join(", ")
            ),
        );
    }
    if !(1..=600).contains(&q.boot_timeout_secs) {
        return bad(
            "qemu.boot-timeout-secs",
            format!("{}: expected 1-600", q.boot_timeout_secs),
        );
    }
    Ok(())
}

/// Loads every `*.toml` in `dir`, sorted by name.
///
/// # Errors
/// [`Error::Read`] for the folder, or the first profile's error.
pub fn load_all(dir: &Path) -> Result<Vec<Board>> {
    let read = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|p| Board::load(p)).collect()
}

/// Loads `dir/NAME.toml`.
///
/// # Errors
/// [`Error::UnknownBoard`] (listing the boards in `dir`) when there is no such file, or
/// the profile's error.
pub fn find(dir: &Path, name: &str) -> Result<Board> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let path = dir.join(format!("{name}.toml"));
    if valid_name && path.is_file() {
        return Board::load(&path);
    }
    let mut known: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    known.sort();
    Err(Error::UnknownBoard {
        name: name.to_owned(),
        dir: dir.to_owned(),
        known: known.join(", "),
    })
}
