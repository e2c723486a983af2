//! Debian packages for the guest images, fetched with a private apt configuration.
//!
//! `APT_CONFIG` points apt at a configuration under the cache folder with its own state,
//! lists, archives and sources (bookworm main for amd64, arm64 and armhf) and an empty
//! `apt.conf.d`, so the host's dpkg architectures, package lists and configuration are
//! never changed or read. Versions are resolved once (kernel ABI from the
//! `linux-image-<flavour>` metapackage, so arm64 and armhf kernels match) and written to
//! `resolved-<flavour>.txt`; later runs use that file and the `.deb` files already in
//! `debs/`, and run no apt command at all when everything is there. This module must never
//! run apt without `APT_CONFIG`, and never install anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The Debian suite the kernels come from.
pub const SUITE: &str = "bookworm";
/// The Debian mirror.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The archive keyring (package `debian-archive-keyring`).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Versions resolved for one kernel flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Kernel ABI (`6.1.0-50`).
    pub abi: String,
    /// Kernel package version (`6.1.176-1`).
    pub kernel_version: String,
    /// Series of linux-source and linux-kbuild (`6.1`).
    pub series: String,
    /// busybox-static version.
    pub busybox_version: String,
}

impl Resolved {
    fn to_text(&self) -> String {
        format!(
            "abi={}\nkernel-version={}\nseries={}\nbusybox-version={}\n",
            self.abi, self.kernel_version, self.series, self.busybox_version
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic()))
        };
        Some(Self {
            abi: get("abi")?,
            kernel_version: get("kernel-version")?,
            series: get("series")?,
            busybox_version: get("busybox-version")?,
        })
    }
}

/// One package to fetch: `name:arch=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Debian architecture (`arm64`, `armhf`, `amd64`, `all`).
    pub arch: String,
    /// Version.
    pub version: String,
}

impl Package {
    /// The file name `apt-get download` gives it.
    #[must_use]
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }

    fn spec(&self) -> String {
        if self.arch == "all" {
            format!("{}={}", self.name, self.version)
        } else {
            format!("{}:{}={}", self.name, self.arch, self.version)
        }
    }
}

/// The packages a board of this Debian architecture and kernel flavour needs.
#[must_use]
pub fn packages(r: &Resolved, debian_arch: &str, flavour: &str) -> Vec<Package> {
    let p = |name: String, arch: &str, version: &str| Package {
        name,
        arch: arch.to_owned(),
        version: version.to_owned(),
    };
    let k = r.kernel_version.as_str();
    vec![
        p(format!("linux-image-{}-{flavour}", r.abi), debian_arch, k),
        p(format!("linux-headers-{}-{flavour}", r.abi), debian_arch, k),
        p(format!("linux-headers-{}-common", r.abi), "all", k),
        p(format!("linux-kbuild-{}", r.series), "amd64", k),
        p(format!("linux-source-{}", r.series), "all", k),
        p("busybox-static".into(), debian_arch, &r.busybox_version),
    ]
}

/// The private apt configuration under `cache/apt`.
#[derive(Debug)]
pub struct Apt {
    root: PathBuf,
    updated: bool,
}

impl Apt {
    /// Writes the configuration (idempotent); runs nothing.
    ///
    /// # Errors
    /// When a folder or file cannot be written.
    pub fn new(cache: &Path) -> Result<Self> {
        let root = cache.join("apt");
        for d in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
        ] {
            let d = root.join(d);
            fs::create_dir_all(&d).map_err(Error::io("create", &d))?;
        }
        let r = root.display();
        let write = |name: &str, text: String| {
            let path = root.join(name);
            fs::write(&path, text).map_err(Error::io("write", &path))
        };
        let status = root.join("state/status");
        if !status.exists() {
            write("state/status", String::new())?;
        }
        write(
            "etc/sources.list",
            format!("deb [arch=amd64,arm64,armhf signed-by={KEYRING}] {MIRROR} {SUITE} main\n"),
        )?;
        write(
            "apt.conf",
            format!(
                "Dir::State \"{r}/state\";\nDir::State::status \"{r}/state/status\";\n\
                 Dir::Cache \"{r}/cache\";\nDir::Etc::SourceList \"{r}/etc/sources.list\";\n\
                 Dir::Etc::SourceParts \"{r}/etc/sources.list.d\";\n\
                 Dir::Etc::Parts \"{r}/etc/apt.conf.d\";\n\
                 Dir::Etc::Preferences \"{r}/etc/preferences\";\n\
                 Dir::Etc::PreferencesParts \"{r}/etc/preferences.d\";\n\
                 APT::Architecture \"amd64\";\n\
                 APT::Architectures {{ \"amd64\"; \"arm64\"; \"armhf\"; }};\n\
                 Acquire::Languages \"none\";\nAPT::Sandbox::User \"root\";\n"
            ),
        )?;
        Ok(Self {
            root,
            updated: false,
        })
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("APT_CONFIG", self.root.join("apt.conf"))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let shown = format!("{program} {}", args.join(" "));
        let out = cmd.output().map_err(|e| {
            Error::Image(format!(
                "cannot run {shown}: {e} (apt is part of Debian; this builder needs a Debian host)"
            ))
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(6).collect::<Vec<_>>().join(" | ");
            return Err(Error::Image(format!(
                "{shown} failed ({}): {tail}",
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!(
                "ekattest-fleet vm: apt-get update ({MIRROR} {SUITE}, private configuration)"
            );
            self.run("apt-get", &["update", "-qq"], None)?;
            self.updated = true;
        }
        Ok(())
    }

    fn field(&self, package: &str, field: &str) -> Result<String> {
        let text = self.run("apt-cache", &["show", "--no-all-versions", package], None)?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| Error::Image(format!("apt-cache show {package}: no {field} field")))
    }

    /// The versions for `flavour`: from `cache/resolved-<flavour>.txt` if present, else
    /// resolved from the mirror (apt-get update, apt-cache) and written there.
    ///
    /// # Errors
    /// When apt fails or the mirror has no such kernel.
    pub fn resolve(&mut self, cache: &Path, debian_arch: &str, flavour: &str) -> Result<Resolved> {
        let file = cache.join(format!("resolved-{flavour}.txt"));
        if let Ok(text) = fs::read_to_string(&file) {
            return Resolved::parse(&text).ok_or_else(|| {
                Error::Image(format!(
                    "{} is damaged: delete it to resolve the versions again",
                    file.display()
                ))
            });
        }
        self.update()?;
        let meta = format!("linux-image-{flavour}:{debian_arch}");
        let depends = self.field(&meta, "Depends")?;
        let prefix = "linux-image-";
        let suffix = format!("-{flavour}");
        let abi = depends
            .split([',', ' ', '('])
            .find_map(|d| {
                d.split(':')
                    .next()?
                    .strip_prefix(prefix)?
                    .strip_suffix(&suffix)
            })
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::Image(format!(
                    "{meta} on {MIRROR} {SUITE}: no kernel in Depends: {depends}"
                ))
            })?;
        let image = format!("linux-image-{abi}-{flavour}:{debian_arch}");
        let kernel_version = self.field(&image, "Version")?;
        // linux-source and linux-kbuild are named by major.minor (`6.1` of `6.1.0-50`).
        let series = abi.split(['-', '.']).take(2).collect::<Vec<_>>().join(".");
        let busybox_version = self.field(&format!("busybox-static:{debian_arch}"), "Version")?;
        let r = Resolved {
            abi,
            kernel_version,
            series,
            busybox_version,
        };
        fs::write(&file, r.to_text()).map_err(Error::io("write", &file))?;
        Ok(r)
    }

    /// Makes sure every package is in `cache/debs`; downloads the missing ones. Returns the
    /// paths (in the order given) and how many files were downloaded.
    ///
    /// # Errors
    /// When apt fails; a version the mirror no longer has gets a message saying so.
    pub fn fetch(&mut self, cache: &Path, wanted: &[Package]) -> Result<(Vec<PathBuf>, usize)> {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).map_err(Error::io("create", &debs))?;
        let missing: Vec<&Package> = wanted
            .iter()
            .filter(|p| !debs.join(p.file_name()).is_file())
            .collect();
        if !missing.is_empty() {
            self.update()?;
            let mut args = vec!["download".to_owned(), "-qq".to_owned()];
            args.extend(missing.iter().map(|p| p.spec()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            eprintln!("ekattest-fleet vm: downloading {} packages", missing.len());
            self.run("apt-get", &args, Some(&debs)).map_err(|e| {
                let names: Vec<String> = missing.iter().map(|p| p.spec()).collect();
                Error::Image(format!(
                    "the mirror {MIRROR} {SUITE} does not serve {} ({e}). Debian removes old \
                     kernel point releases: delete {}/resolved-*.txt to use the current ones",
                    names.join(" "),
                    cache.display()
                ))
            })?;
            for p in &missing {
                let path = debs.join(p.file_name());
                if !path.is_file() {
                    return Err(Error::Image(format!(
                        "apt-get download {} left no {}",
                        p.spec(),
                        path.display()
                    )));
                }
            }
        }
        Ok((
            wanted.iter().map(|p| debs.join(p.file_name())).collect(),
            missing.len(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_round_trips_and_rejects_damage() {
        let r = Resolved {
            abi: "6.1.0-50".into(),
            kernel_version: "6.1.176-1".into(),
            series: "6.1".into(),
            busybox_version: "1:1.35.0-4+deb12u1+b1".into(),
        };
        assert_eq!(Resolved::parse(&r.to_text()), Some(r.clone()));
        assert_eq!(Resolved::parse("abi=6.1.0-50\n"), None);
        let files: Vec<String> = packages(&r, "armhf", "armmp")
            .iter()
            .map(Package::file_name)
            .collect();
        assert!(files.contains(&"busybox-static_1%3a1.35.0-4+deb12u1+b1_armhf.deb".to_owned()));
        assert!(files.contains(&"linux-image-6.1.0-50-armmp_6.1.176-1_armhf.deb".to_owned()));
        assert!(files.contains(&"linux-kbuild-6.1_6.1.176-1_amd64.deb".to_owned()));
    }
}
