//! The guest image of a QEMU board: Debian's kernel, a `tpm_tis.ko` built out of tree for
//! it, and a small initramfs (busybox, the modules, `/init`), all cached by version under
//! the cache folder (default `target/vm-cache`).
//!
//! Debian's arm64 and armmp kernels lack `tpm_tis.ko` (the driver of QEMU's
//! `tpm-tis-device`): [`prepare`] builds it from `linux-source` against the matching
//! headers and kbuild; for 32-bit ARM it first builds a `modpost` whose device-table offsets
//! come from the ARM cross compiler (Debian's amd64 one has 64-bit offsets baked in and
//! aborts). Boards with the tis-mmio transport need none of that: their initramfs has no TPM
//! module at all (the agent drives the TIS registers), so only the kernel image and busybox
//! are fetched for them. The base initramfs is named by a hash of its `/init`
//! ([`super::init::render`]) and busybox version, so boards of both transports share one
//! kernel folder and keep separate base archives. The per-run part (the agent, its
//! configuration, the trust bundle) is a second cpio archive from [`run_archive`], appended
//! to the cached base. This module runs dpkg-deb, tar, xz, make, gcc and the cross
//! compilers, writes only under the cache folder, and never changes the process's working
//! directory or environment.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::apt::{self, Apt, Resolved};
use super::cpio::Archive;
use super::init;
use crate::boards::{Board, Target};
use crate::error::{Error, Result};

/// Default cache folder, relative to the workspace root.
pub const DEFAULT_CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/vm-cache");

/// Kernel modules from the Debian image that the guest loads (with our `tpm_tis`), as paths
/// under `lib/modules/<release>/kernel/`. They are loaded in dependency order (from their
/// `.modinfo depends=`), not in this order. Those under [`TPM_MODULES`] go only into
/// kernel-transport images.
const IMAGE_MODULES: &[&str] = &[
    "drivers/char/tpm/tpm_tis_core.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// The folder of the TPM modules in [`IMAGE_MODULES`].
const TPM_MODULES: &str = "drivers/char/tpm/";

/// Files of `linux-source` the module build uses.
const SOURCE_FILES: &[&str] = &[
    "drivers/char/tpm/tpm_tis.c",
    "drivers/char/tpm/tpm.h",
    "drivers/char/tpm/tpm_tis_core.h",
    "scripts/mod",
    "include/linux/mod_devicetable.h",
    "include/linux/license.h",
];

/// A board's prepared image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The base initramfs (busybox, modules, `/init`): a newc archive, uncompressed.
    pub base_initrd: PathBuf,
    /// Versions used.
    pub resolved: Resolved,
    /// Files downloaded by this call (0 when everything came from the cache).
    pub downloaded: usize,
    /// Whether the kernel, module and base initramfs were all reused from the cache.
    pub cached: bool,
    /// How long [`prepare`] took.
    pub elapsed: Duration,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Image(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Error::Image(format!(
        "{what} failed ({}):\n{}",
        out.status,
        tail.join("\n")
    )))
}

fn sh(script: &str, what: &str) -> Result<()> {
    run(Command::new("sh").args(["-euc", script]), what)
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(Error::io("create", &p))
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(Error::io("read", &p))
}

/// A short stable hash (FNV-1a 64) for cache names.
fn fnv(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
    }
    format!("{h:016x}")
}

/// Extracts `members` (tar paths) of a `.deb`'s data into `dest` (all of it when empty).
fn extract_deb(deb: &Path, dest: &Path, members: &[String]) -> Result<()> {
    mkdir(dest)?;
    let mut script = format!(
        "dpkg-deb --fsys-tarfile {} | tar -x -C {}",
        quote(deb),
        quote(dest)
    );
    for m in members {
        script.push_str(&format!(" '{m}'"));
    }
    sh(&script, &format!("extracting {}", deb.display()))
}

/// Prepares the board's image: resolves and downloads what is missing, then builds what
/// is not cached. Progress goes to stderr.
///
/// # Errors
/// A message naming the step, the command and its output.
pub fn prepare(board: &Board, cache: &Path) -> Result<Image> {
    let started = Instant::now();
    let target = board.target()?;
    let qemu = board.qemu.as_ref().ok_or_else(|| {
        Error::Image(format!(
            "board {} has no [qemu] section: it is not a virtual board",
            board.name
        ))
    })?;
    mkdir(cache)?;
    let cache = fs::canonicalize(cache).map_err(Error::io("resolve", &cache))?;
    let flavour = qemu.kernel_flavour.as_str();
    let mut apt = Apt::new(&cache)?;
    let resolved = apt.resolve(&cache, target.debian_arch, flavour)?;
    let release = format!("{}-{flavour}", resolved.abi);
    let out = cache.join("build").join(&release);
    let init = init::render(board)?;
    let with_tpm = init::needs_tpm_modules(board);
    let base_name = format!(
        "base-{}.cpio",
        fnv(&[init.as_bytes(), resolved.busybox_version.as_bytes()])
    );
    let kernel = out.join("vmlinuz");
    let base_initrd = out.join(&base_name);
    if kernel.is_file() && base_initrd.is_file() {
        return Ok(Image {
            kernel,
            base_initrd,
            resolved,
            downloaded: 0,
            cached: true,
            elapsed: started.elapsed(),
        });
    }
    let mut wanted = apt::packages(&resolved, target.debian_arch, flavour);
    if !with_tpm {
        // No tpm_tis to build: skip the headers, kbuild and the 139 MB linux-source.
        wanted.retain(|p| p.name.starts_with("linux-image-") || p.name == "busybox-static");
    }
    let (debs, downloaded) = apt.fetch(&cache, &wanted)?;
    let deb = |prefix: &str| {
        wanted
            .iter()
            .zip(&debs)
            .find(|(p, _)| p.name.starts_with(prefix))
            .map(|(_, d)| d)
            .ok_or_else(|| Error::Image(format!("internal: no {prefix} package in the list")))
    };
    let image_deb = deb("linux-image-")?;
    let busybox_deb = deb("busybox-static")?;
    mkdir(&out)?;
    // Kernel and the image's modules.
    let modules = out.join("modules");
    let tpm_tis = out.join("tpm_tis.ko");
    if !kernel.is_file() || !modules.join("virtio_net.ko").is_file() {
        eprintln!("ekattest-fleet vm: extracting the {release} kernel and modules");
        let x = out.join("image");
        let mut members = vec![format!("./boot/vmlinuz-{release}")];
        members.extend(
            IMAGE_MODULES
                .iter()
                .map(|m| format!("./lib/modules/{release}/kernel/{m}")),
        );
        extract_deb(image_deb, &x, &members)?;
        mkdir(&modules)?;
        for m in IMAGE_MODULES {
            let from = x.join(format!("lib/modules/{release}/kernel/{m}"));
            let name = Path::new(m).file_name().unwrap_or_default();
            fs::copy(&from, modules.join(name)).map_err(Error::io("copy", &from))?;
        }
        fs::copy(x.join(format!("boot/vmlinuz-{release}")), &kernel)
            .map_err(|e| Error::Image(format!("cannot copy the kernel: {e}")))?;
        let _ = fs::remove_dir_all(&x);
    }
    if with_tpm && !tpm_tis.is_file() {
        let headers_deb = deb(&format!("linux-headers-{}-{flavour}", resolved.abi))?;
        let common_deb = deb(&format!("linux-headers-{}-common", resolved.abi))?;
        let kbuild_deb = deb("linux-kbuild-")?;
        let source_deb = deb("linux-source-")?;
        build_tpm_tis(
            &cache,
            &out,
            &resolved,
            target,
            [headers_deb, common_deb, kbuild_deb, source_deb],
            flavour,
        )?;
    }
    // busybox.
    let bb_dir = out.join("busybox");
    extract_deb(busybox_deb, &bb_dir, &["./bin/busybox".to_owned()])?;
    let busybox = read(&bb_dir.join("bin/busybox"))?;
    let base = base_archive(
        &init,
        &busybox,
        &modules,
        with_tpm.then_some(tpm_tis.as_path()),
    )?;
    let tmp = base_initrd.with_extension("tmp");
    fs::write(&tmp, base).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, &base_initrd).map_err(Error::io("write", &base_initrd))?;
    Ok(Image {
        kernel,
        base_initrd,
        resolved,
        downloaded,
        cached: false,
        elapsed: started.elapsed(),
    })
}

/// Builds `out/tpm_tis.ko` against the flavour's headers.
fn build_tpm_tis(
    cache: &Path,
    out: &Path,
    r: &Resolved,
    target: &Target,
    [headers_deb, common_deb, kbuild_deb, source_deb]: [&PathBuf; 4],
    flavour: &str,
) -> Result<()> {
    // The source files, shared by every flavour of the version.
    let src_root = cache
        .join("build")
        .join(format!("source-{}", r.kernel_version));
    let src = src_root.join(format!("linux-source-{}", r.series));
    if !src.join("scripts/mod/modpost.c").is_file() {
        eprintln!(
            "ekattest-fleet vm: extracting tpm_tis and modpost sources from linux-source-{}",
            r.series
        );
        mkdir(&src_root)?;
        let members: Vec<String> = SOURCE_FILES
            .iter()
            .map(|f| format!("'linux-source-{}/{f}'", r.series))
            .collect();
        sh(
            &format!(
                "dpkg-deb --fsys-tarfile {} | tar -xO ./usr/src/linux-source-{}.tar.xz | xz -dc | tar -x -C {} {}",
                quote(source_deb),
                r.series,
                quote(&src_root),
                members.join(" ")
            ),
            "extracting linux-source",
        )?;
    }
    eprintln!(
        "ekattest-fleet vm: building tpm_tis.ko for {}-{flavour}",
        r.abi
    );
    let root = out.join("headers");
    let _ = fs::remove_dir_all(&root);
    for deb in [headers_deb, common_deb, kbuild_deb] {
        extract_deb(deb, &root, &[])?;
    }
    let headers = root.join(format!("usr/src/linux-headers-{}-{flavour}", r.abi));
    let common = root.join(format!("usr/src/linux-headers-{}-common", r.abi));
    // The flavour Makefile includes the common headers by absolute path.
    let makefile = headers.join("Makefile");
    let text = String::from_utf8_lossy(&read(&makefile)?).into_owned();
    let system = format!("/usr/src/linux-headers-{}-common", r.abi);
    fs::write(
        &makefile,
        text.replace(&system, &common.display().to_string()),
    )
    .map_err(Error::io("write", &makefile))?;
    let arch = target.kernel_arch;
    let cross = target.cross_compile;
    let make = |dir: &Path, goals: &str| {
        run(
            Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(&headers)
                .arg(format!("M={}", dir.display()))
                .arg(format!("ARCH={arch}"))
                .arg(format!("CROSS_COMPILE={cross}"))
                .args(goals.split(' ')),
            &format!("make {goals} for {arch} ({})", dir.display()),
        )
    };
    if target.debian_arch != "arm64" {
        // Debian's modpost has amd64 device-table offsets: build one with the target's.
        let mp = out.join("modpost-build");
        let _ = fs::remove_dir_all(&mp);
        mkdir(&mp)?;
        let smod = src.join("scripts/mod");
        for f in ["devicetable-offsets.c", "empty.c"] {
            fs::copy(smod.join(f), mp.join(f))
                .map_err(|e| Error::Image(format!("cannot copy {f}: {e}")))?;
        }
        fs::write(mp.join("Kbuild"), "obj-m :=\n")
            .map_err(|e| Error::Image(format!("cannot write Kbuild: {e}")))?;
        make(&mp, "devicetable-offsets.s empty.o")?;
        let kbuild_mod = root.join(format!("usr/lib/linux-kbuild-{}/scripts/mod", r.series));
        sh(
            &format!(
                "cd {mp}\n\
                 sed -ne 's:^[[:space:]]*\\.ascii[[:space:]]*\"\\(.*\\)\".*:\\1:; /^->/{{s:->#\\(.*\\):/* \\1 */:; s:^->\\([^ ]*\\) [\\$#]*\\([^ ]*\\) \\(.*\\):#define \\1 \\2 /* \\3 */:; s:->::; p;}}' devicetable-offsets.s > {smod}/devicetable-offsets.h\n\
                 grep -q '^#define SIZE_of_device_id' {smod}/devicetable-offsets.h\n\
                 gcc -o mk_elfconfig {smod}/mk_elfconfig.c\n\
                 ./mk_elfconfig < empty.o > {smod}/elfconfig.h\n\
                 gcc -O2 -I{smod} -o modpost {smod}/modpost.c {smod}/file2alias.c {smod}/sumversion.c\n\
                 rm -f {kmod}/modpost\n\
                 cp modpost {kmod}/modpost",
                mp = quote(&mp),
                smod = quote(&smod),
                kmod = quote(&kbuild_mod),
            ),
            "building modpost for a 32-bit target",
        )?;
    }
    let m = out.join("tpm_tis-build");
    let _ = fs::remove_dir_all(&m);
    mkdir(&m)?;
    for f in ["tpm_tis.c", "tpm.h", "tpm_tis_core.h"] {
        fs::copy(src.join("drivers/char/tpm").join(f), m.join(f))
            .map_err(|e| Error::Image(format!("cannot copy {f}: {e}")))?;
    }
    fs::write(m.join("Kbuild"), "obj-m := tpm_tis.o\n")
        .map_err(|e| Error::Image(format!("cannot write Kbuild: {e}")))?;
    make(&m, "modules")?;
    fs::copy(m.join("tpm_tis.ko"), out.join("tpm_tis.ko"))
        .map_err(|e| Error::Image(format!("cannot copy tpm_tis.ko: {e}")))?;
    let _ = fs::remove_dir_all(&root);
    Ok(())
}

/// The `depends=` list of a module's `.modinfo`.
#[must_use]
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let Some(at) = ko.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let rest = &ko[at.saturating_add(needle.len())..];
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(rest.len())
        .min(4096);
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Orders modules so each comes after its dependencies among them.
///
/// # Errors
/// A dependency cycle.
pub fn load_order(modules: &[(String, Vec<String>)]) -> Result<Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    while done.len() < modules.len() {
        let before = done.len();
        for (name, deps) in modules {
            if done.contains(name) {
                continue;
            }
            let ready = deps
                .iter()
                .all(|d| done.contains(d) || !modules.iter().any(|(n, _)| n == d));
            if ready {
                done.push(name.clone());
            }
        }
        if done.len() == before {
            return Err(Error::Image(format!(
                "module dependency cycle among {modules:?}"
            )));
        }
    }
    Ok(done)
}

/// The base initramfs; `tpm_tis` is our module for kernel-transport boards, `None` for
/// tis-mmio boards (then no TPM module goes in at all).
fn base_archive(
    init: &str,
    busybox: &[u8],
    modules: &Path,
    tpm_tis: Option<&Path>,
) -> Result<Vec<u8>> {
    let mut a = Archive::new();
    for d in [
        "dev",
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "var",
        "var/lib",
        "root",
    ] {
        a.dir(d);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    a.file("bin/busybox", 0o755, busybox);
    a.symlink("bin/sh", "busybox");
    a.file("init", 0o755, init.as_bytes());
    let mut mods = Vec::new();
    let mut files: Vec<PathBuf> = IMAGE_MODULES
        .iter()
        .filter(|m| tpm_tis.is_some() || !m.starts_with(TPM_MODULES))
        .filter_map(|m| Path::new(m).file_name().map(|n| modules.join(n)))
        .collect();
    files.extend(tpm_tis.map(Path::to_owned));
    for f in &files {
        let bytes = read(f)?;
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| Error::Image(format!("bad module name {}", f.display())))?
            .to_owned();
        // Module names in depends= use underscores.
        let key = name.replace('-', "_");
        mods.push((key.clone(), module_depends(&bytes)));
        a.file(&format!("lib/modules/{key}.ko"), 0o644, &bytes);
    }
    let order = load_order(&mods)?;
    a.file(
        "etc/modules.order",
        0o644,
        format!("{}\n", order.join("\n")).as_bytes(),
    );
    Ok(a.finish())
}

/// The per-run archive: the agent, its configuration and the trust bundle.
#[must_use]
pub fn run_archive(agent: &[u8], config_yaml: &str, bundle_pem: &[u8]) -> Vec<u8> {
    let mut a = Archive::new();
    a.dir("etc/ekattest");
    a.dir("var/lib/ekattest");
    a.file("bin/ekattest-agent", 0o755, agent);
    a.file("etc/ekattest/agent.yaml", 0o644, config_yaml.as_bytes());
    a.file("etc/ekattest/bundle.pem", 0o644, bundle_pem);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let m = |n: &str, d: &[&str]| (n.to_owned(), d.iter().map(|s| (*s).to_owned()).collect());
        let order = load_order(&[
            m("virtio_net", &["net_failover"]),
            m("tpm_tis", &["tpm_tis_core"]),
            m("net_failover", &["failover"]),
            m("failover", &[]),
            m("tpm_tis_core", &["tpm"]), // built in: not among the modules
        ])
        .unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("tpm_tis_core") < pos("tpm_tis"));
        assert!(load_order(&[m("a", &["b"]), m("b", &["a"])]).is_err());
    }

    #[test]
    fn depends_is_read_from_modinfo() {
        let ko = b"\x7fELF....license=GPL\0depends=tpm_tis_core,tpm\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["tpm_tis_core", "tpm"]);
        assert!(module_depends(b"depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }
}
