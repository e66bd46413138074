//! Builds the XDP program (`relay-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR/relay-ebpf`, where `src/ebpf.rs` embeds it.
//!
//! The eBPF build runs `rustup run xturn-bpf cargo build -Z build-std=core ...` (aya-build): the
//! `xturn-bpf` toolchain is Debian's rustc linked into rustup by `cargo xtask setup`, because it
//! ships the library source that `build-std` needs and its LLVM matches `bpf-linker`.
//!
//! `XTURN_SKIP_EBPF=1` skips the eBPF build and embeds an empty object instead (for editors and
//! machines without the toolchain); the agent then refuses `--dataplane xdp` with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

const TOOLCHAIN: &str = "xturn-bpf";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=XTURN_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("relay-ebpf");

    let skip =
        env::var("XTURN_SKIP_EBPF").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:warning=XTURN_SKIP_EBPF is set: embedding an empty eBPF object");
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        // The benchmark's programs (relay-ebpf/src/bin/), empty likewise.
        for name in ["ceiling", "reflector"] {
            let path = out_dir.join(name);
            fs::write(&path, []).with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }

    // Unstable `-Z build-std` on Debian's stable compiler; set only for the child build.
    // SAFETY: build scripts are single-threaded here; nothing else reads the environment.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("../relay-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "relay-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
    .context(
        "building the eBPF program failed; run `cargo xtask setup` to install the eBPF toolchain, \
         or set XTURN_SKIP_EBPF=1 to build without it",
    )
}
