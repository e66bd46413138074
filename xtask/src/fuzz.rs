//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (libFuzzer with AddressSanitizer, on
//! the nightly toolchain), each from seeds recorded from a real exchange (`fuzz/src/bin/seeds.rs`)
//! plus what earlier runs found (`fuzz/corpus/`, not committed). A crash, a sanitizer report or
//! an input that runs longer than [`INPUT_TIMEOUT_S`] fails the run; libFuzzer leaves the input
//! in `fuzz/artifacts/<target>/`.
use anyhow::{Result, bail};

use crate::sh;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "server",
    "stream_framer",
    "messages",
    "config",
    "kernel_parser",
];
/// The toolchain cargo-fuzz builds with (`-Z sanitizer` needs a nightly compiler).
const TOOLCHAIN: &str = "nightly";
/// An input that takes longer than this is reported as a hang.
const INPUT_TIMEOUT_S: u32 = 10;
/// libFuzzer's memory limit per target.
const RSS_LIMIT_MB: u32 = 2048;
/// Seconds per target in `cargo xtask test` (about a minute for all).
pub const TEST_SECONDS: u32 = 12;

pub struct Options {
    pub seconds: u32,
    pub targets: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "no fuzz target {unknown:?}; there are {}",
            TARGETS.join(", ")
        );
    }
    if !sh::succeeds(sh::cmd("rustup", &["run", TOOLCHAIN, "rustc", "--version"])) {
        bail!(
            "fuzzing needs the rustup toolchain {TOOLCHAIN:?} (cargo-fuzz builds with -Z sanitizer)"
        );
    }
    sh::step("fuzz: seeds");
    let root = sh::root();
    let manifest = root.join("fuzz/Cargo.toml");
    let corpus = root.join("fuzz/corpus");
    let mut seeds = sh::cargo(&["run", "--quiet", "--bin", "seeds", "--manifest-path"]);
    seeds.arg(&manifest).arg("--").arg(&corpus);
    sh::run(seeds)?;
    for target in targets {
        sh::step(&format!("fuzz: {target} for {} s", options.seconds));
        let mut cmd = sh::cmd(
            "rustup",
            &["run", TOOLCHAIN, "cargo", "fuzz", "run", target],
        );
        cmd.current_dir(&root)
            .arg(corpus.join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1");
        sh::run(cmd)?;
    }
    Ok(())
}
