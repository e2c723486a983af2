//! The cross-compilation targets a board profile may name, with what each needs on the
//! build host (rustup target, Debian cross gcc) and what its binaries look like (`file`
//! output, QEMU user-mode emulator). Pure data; nothing here runs a program.

/// One supported Rust target triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The Rust target triple (`cargo build --target`).
    pub triple: &'static str,
    /// The linker (the same as `.cargo/config.toml`'s `[target.TRIPLE] linker`).
    pub linker: &'static str,
    /// The C compiler ring's build script uses (`CC_<triple>`).
    pub cc: &'static str,
    /// The archiver for ring's static library (`AR_<triple>`).
    pub ar: &'static str,
    /// The Debian package that provides `linker`, `cc` and `ar`.
    pub apt_package: &'static str,
    /// How the binary is made static: `musl` (always static) or `+crt-static` (gnu targets,
    /// set in `.cargo/config.toml`).
    pub static_by: StaticBy,
    /// What `file` prints for the machine (e.g. `ARM aarch64`).
    pub file_machine: &'static str,
    /// The QEMU user-mode emulator that runs the binary on the build host.
    pub qemu_user: &'static str,
    /// The QEMU system emulator for virtual boards of this architecture.
    pub qemu_system: &'static str,
    /// The Debian architecture (kernel packages, busybox-static) of a guest.
    pub debian_arch: &'static str,
    /// The kernel's `ARCH=` (out-of-tree modules).
    pub kernel_arch: &'static str,
    /// The kernel's `CROSS_COMPILE=` prefix.
    pub cross_compile: &'static str,
}

/// How a target's binary ends up statically linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticBy {
    /// musl targets link statically by default.
    Musl,
    /// glibc targets with `-C target-feature=+crt-static` (`.cargo/config.toml`).
    CrtStatic,
}

/// Every target a board may name. `armv7-unknown-linux-musleabihf` is absent: this
/// machine's rustup mirror does not serve it (../shared/notes/QEMU-NOTES.md), so armv7
/// uses gnueabihf with `+crt-static`.
pub const TARGETS: &[Target] = &[
    Target {
        triple: "aarch64-unknown-linux-musl",
        linker: "aarch64-linux-gnu-gcc",
        cc: "aarch64-linux-gnu-gcc",
        ar: "aarch64-linux-gnu-ar",
        apt_package: "gcc-aarch64-linux-gnu",
        static_by: StaticBy::Musl,
        file_machine: "ARM aarch64",
        qemu_user: "qemu-aarch64-static",
        qemu_system: "qemu-system-aarch64",
        debian_arch: "arm64",
        kernel_arch: "arm64",
        cross_compile: "aarch64-linux-gnu-",
    },
    Target {
        triple: "aarch64-unknown-linux-gnu",
        linker: "aarch64-linux-gnu-gcc",
        cc: "aarch64-linux-gnu-gcc",
        ar: "aarch64-linux-gnu-ar",
        apt_package: "gcc-aarch64-linux-gnu",
        static_by: StaticBy::CrtStatic,
        file_machine: "ARM aarch64",
        qemu_user: "qemu-aarch64-static",
        qemu_system: "qemu-system-aarch64",
        debian_arch: "arm64",
        kernel_arch: "arm64",
        cross_compile: "aarch64-linux-gnu-",
    },
    Target {
        triple: "armv7-unknown-linux-gnueabihf",
        linker: "arm-linux-gnueabihf-gcc",
        cc: "arm-linux-gnueabihf-gcc",
        ar: "arm-linux-gnueabihf-ar",
        apt_package: "gcc-arm-linux-gnueabihf",
        static_by: StaticBy::CrtStatic,
        file_machine: "ARM, EABI5",
        qemu_user: "qemu-arm-static",
        qemu_system: "qemu-system-arm",
        debian_arch: "armhf",
        kernel_arch: "arm",
        cross_compile: "arm-linux-gnueabihf-",
    },
];

/// The supported target with this triple.
#[must_use]
pub fn find(triple: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.triple == triple)
}

/// The supported triples, comma separated (for error messages).
#[must_use]
pub fn supported() -> String {
    TARGETS
        .iter()
        .map(|t| t.triple)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Target {
    /// `triple` with `-` replaced by `_` (the suffix of `CC_...`/`AR_...` variables).
    #[must_use]
    pub fn env_suffix(&self) -> String {
        self.triple.replace('-', "_")
    }

    /// `CARGO_TARGET_<TRIPLE>_LINKER`.
    #[must_use]
    pub fn cargo_linker_var(&self) -> String {
        format!(
            "CARGO_TARGET_{}_LINKER",
            self.env_suffix().to_ascii_uppercase()
        )
    }
}
