//! Running commands: each one is printed before it runs, and a failure names the command.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Prints a step header.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo ARGS` in the workspace root, with the cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    cmd
}

/// A command from `program` and `args`.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, inheriting stdio; fails if it exits non-zero.
pub fn run(mut cmd: Command) -> Result<()> {
    let what = describe(&cmd);
    eprintln!("$ {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns whether it succeeded (false if it cannot start).
pub fn succeeds(mut cmd: Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` quietly and returns its stdout, or None if it fails or cannot start.
pub fn output(mut cmd: Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo build --release --bins` of `packages`; returns the directory the binaries are in.
pub fn build_release(packages: &[&str]) -> Result<PathBuf> {
    let mut args = vec!["build", "--release", "--bins"];
    for package in packages {
        args.extend(["-p", package]);
    }
    run(cargo(&args))?;
    Ok(root().join("target/release"))
}
