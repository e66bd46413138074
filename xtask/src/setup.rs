//! `cargo xtask setup`: makes a fresh Debian 12 machine able to build, load and test xturn.
//! Every step checks first and does nothing when its piece is already there.
//! See docs/development.md for what each piece is for.
use std::path::Path;

use anyhow::{Result, bail};

use crate::sh;

/// Debian packages: the Debian Rust toolchain (rustc with LLVM 22 and the library source that
/// `-Z build-std` needs), LLVM 22 for bpf-linker, and the tools the tests drive (and the container
/// images' tools).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "coturn",
    "tcpdump",
    "iproute2",
    "ethtool",
    "bpftool",
    "iputils-ping",
    "openssl",
    // A real browser's WebRTC through the relay (tests/tests/browser.rs), driven by WebDriver.
    "chromium",
    "chromium-driver",
    // The container images (tests/tests/images.rs): podman loads and runs them; runc is the
    // runtime (Debian's default, crun, refuses a hybrid cgroup layout); binutils' `strip` trims
    // the binaries `cargo xtask image` packs.
    "podman",
    "runc",
    "binutils",
];

/// Python packages used by the tests: a real TURN client (aioice), and Kubernetes' own
/// OpenAPI schemas to validate every manifest and rendered object against (kubernetes-validate).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("aioice", "aioice"),
    ("kubernetes_validate", "kubernetes-validate"),
];

/// The rustup toolchain name under which Debian's compiler is linked; relay-user/build.rs uses it.
pub const BPF_TOOLCHAIN: &str = "xturn-bpf";

pub fn run() -> Result<()> {
    sh::step("setup: checking the machine");
    check_root()?;
    check_kernel()?;
    install_packages()?;
    link_toolchain()?;
    install_bpf_linker()?;
    install_cargo_fuzz()?;
    install_python_packages()?;
    check_bpf_syscall()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn check_root() -> Result<()> {
    let uid = sh::output(sh::cmd("id", &["-u"])).unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "setup needs root (to install Debian packages, load BPF programs and create network \
             namespaces); run it as root, e.g. `sudo -E cargo xtask setup`"
        );
    }
    eprintln!("  root: yes");
    Ok(())
}

fn check_kernel() -> Result<()> {
    let release = sh::output(sh::cmd("uname", &["-r"])).unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 15) {
        bail!(
            "kernel {} is too old: xturn needs Linux >= 5.15",
            release.trim()
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): need CONFIG_DEBUG_INFO_BTF"
        );
    }
    eprintln!("  kernel: {} with BTF", release.trim());
    Ok(())
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            sh::output(sh::cmd("dpkg-query", &["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("  Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    eprintln!("  Debian packages missing: {}", missing.join(" "));
    sh::run(sh::cmd("apt-get", &["update", "-q"]))?;
    let mut cmd = sh::cmd(
        "apt-get",
        &["install", "-y", "-q", "--no-install-recommends"],
    );
    cmd.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
    sh::run(cmd)?;
    Ok(())
}

fn link_toolchain() -> Result<()> {
    let list = sh::output(sh::cmd("rustup", &["toolchain", "list"])).unwrap_or_default();
    if list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(BPF_TOOLCHAIN))
    {
        eprintln!("  rustup toolchain {BPF_TOOLCHAIN}: linked");
        return Ok(());
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library").is_dir() {
        bail!("Debian's rust-web-src is not installed: /usr/lib/rustlib/src/rust/library missing");
    }
    sh::run(sh::cmd(
        "rustup",
        &["toolchain", "link", BPF_TOOLCHAIN, "/usr"],
    ))
}

/// cargo-fuzz, for `cargo xtask fuzz` (and the bounded run in `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn install_cargo_fuzz() -> Result<()> {
    let installed = sh::output(sh::cargo(&["fuzz", "--version"])).unwrap_or_default();
    if installed.contains(CARGO_FUZZ_VERSION) {
        eprintln!("  cargo-fuzz: {CARGO_FUZZ_VERSION}");
        return Ok(());
    }
    eprintln!("  cargo-fuzz: missing; building it (about 30 s)");
    sh::run(sh::cargo(&[
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_uses_llvm22() {
        eprintln!("  bpf-linker: built against LLVM 22");
        return Ok(());
    }
    eprintln!("  bpf-linker: missing or not built against LLVM 22; building it (about a minute)");
    let mut cmd = sh::cargo(&[
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("PATH", format!("/usr/lib/llvm-22/bin:{path}"));
    sh::run(cmd)?;
    if !bpf_linker_uses_llvm22() {
        bail!(
            "bpf-linker was installed but does not link libLLVM 22; check `ldd $(which bpf-linker)`"
        );
    }
    Ok(())
}

fn bpf_linker_uses_llvm22() -> bool {
    let Some(path) = sh::output(sh::cmd("sh", &["-c", "command -v bpf-linker"])) else {
        return false;
    };
    sh::output(sh::cmd("ldd", &[path.trim()])).is_some_and(|out| out.contains("libLLVM.so.22"))
}

fn install_python_packages() -> Result<()> {
    for (module, package) in PYTHON_PACKAGES {
        if sh::succeeds(sh::cmd("python3", &["-c", &format!("import {module}")])) {
            eprintln!("  python3 {package}: present");
            continue;
        }
        sh::run(sh::cmd(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                package,
            ],
        ))?;
    }
    Ok(())
}

fn check_bpf_syscall() -> Result<()> {
    // bpftool needs the bpf() syscall for a program listing; if it fails, nothing will load.
    if !sh::succeeds(sh::cmd("bpftool", &["prog", "list"])) {
        bail!(
            "the bpf() syscall is not usable here (`bpftool prog list` failed): need \
             CONFIG_BPF_SYSCALL and CAP_BPF/CAP_SYS_ADMIN"
        );
    }
    eprintln!("  bpf() syscall: usable");
    Ok(())
}
