//! `cargo xtask`: every multi-step job of the project, in Rust.
mod bench;
mod demo;
mod fuzz;
mod image;
mod oci;
mod setup;
mod sh;
mod topology;

use std::{path::PathBuf, time::Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xturn's task runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and the tests need (idempotent; quick when done).
    Setup,
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Setup, lint, then every test: unit, eBPF (BPF_PROG_TEST_RUN), network-namespace and
    /// container-image tests (it builds the images first), then a bounded fuzzing run.
    Test {
        /// Skip the lint step.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Setup, build, then run the relay on a test topology of network namespaces and show traffic.
    Demo,
    /// Minutes of churn (allocations made, deleted and left to expire) next to live flows, with
    /// the kernel path and in userspace; checks that the live flows lose nothing, the relay's
    /// memory and descriptors stay flat and nothing is left at the end; writes
    /// bench/results/soak.md.
    Soak {
        /// Minutes in all (half per data plane; 4 to 9).
        #[arg(long, default_value_t = 6)]
        minutes: u64,
    },
    /// Fuzz the parsers and the protocol core (cargo-fuzz, libFuzzer with AddressSanitizer,
    /// nightly toolchain) from seeds recorded from a real exchange; fails on a crash or a hang.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only these targets (default: all: server, stream_framer, messages, config, kernel_parser).
        targets: Vec<String>,
    },
    /// Setup, build, then benchmark xturnd (XDP and userspace), coturn and an XDP ceiling on one
    /// namespace topology with the same traffic; writes bench/results/ and docs/benchmarks.md.
    Bench {
        /// A short run (under 2 minutes): 16 allocations, 100-byte payloads, 1.5 s phases.
        #[arg(long)]
        quick: bool,
        /// Only these contenders (comma-separated: generator, ceiling, xdp, userspace, coturn).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Build the container images of xturnd and xturn-operator as OCI archives
    /// (target/images/*.oci.tar): release binaries, their shared libraries, no base image;
    /// reproducible. Prints each image's name:tag, digest and size.
    Image {
        /// Write the archives here instead of target/images.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pack the binaries already in target/release; do not build them.
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    match cli.command {
        Command::Setup => setup::run()?,
        Command::Lint => lint()?,
        Command::Test { no_lint, test_args } => test(no_lint, &test_args)?,
        Command::Demo => demo::run()?,
        Command::Soak { minutes } => bench::soak::run(&bench::soak::Options { minutes })?,
        Command::Fuzz { seconds, targets } => {
            setup::run()?;
            fuzz::run(&fuzz::Options { seconds, targets })?;
        }
        Command::Bench { quick, only } => bench::run(&bench::Options { quick, only })?,
        Command::Image { out, no_build } => {
            image::run(&image::Options { out, no_build })?;
        }
    }
    eprintln!("xtask: done in {:.1?}", started.elapsed());
    Ok(())
}

fn lint() -> Result<()> {
    sh::step("lint: cargo fmt --check");
    sh::run(sh::cargo(&["fmt", "--all", "--", "--check"]))?;
    sh::step("lint: cargo clippy --all-targets -D warnings");
    sh::run(sh::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz targets are a workspace of their own (cargo-fuzz builds them with nightly).
    sh::step("lint: the fuzz targets (fmt, clippy)");
    let manifest = sh::root().join("fuzz/Cargo.toml");
    let mut fmt = sh::cargo(&["fmt", "--manifest-path"]);
    fmt.arg(&manifest).args(["--", "--check"]);
    sh::run(fmt)?;
    let mut clippy = sh::cargo(&["clippy", "--all-targets", "--manifest-path"]);
    clippy.arg(&manifest).args(["--", "-D", "warnings"]);
    sh::run(clippy)?;
    Ok(())
}

fn test(no_lint: bool, test_args: &[String]) -> Result<()> {
    setup::run()?;
    if !no_lint {
        lint()?;
    }
    // The end-to-end tests start the real binaries (xturnd, xturnctl) from target/debug.
    sh::step("test: cargo build --workspace --bins");
    sh::run(sh::cargo(&["build", "--workspace", "--bins"]))?;
    // tests/tests/images.rs loads and runs the container images.
    sh::step("test: cargo xtask image");
    image::run(&image::Options {
        out: None,
        no_build: false,
    })?;
    sh::step("test: cargo test --workspace");
    let mut args = vec!["test", "--workspace", "--all-targets"];
    if !test_args.is_empty() {
        args.push("--");
        args.extend(test_args.iter().map(String::as_str));
    }
    sh::run(sh::cargo(&args))?;
    // A bounded fuzzing run of every target (about a minute in all).
    if test_args.is_empty() {
        fuzz::run(&fuzz::Options {
            seconds: fuzz::TEST_SECONDS,
            targets: Vec::new(),
        })?;
    }
    Ok(())
}
