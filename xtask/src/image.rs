//! `cargo xtask image`: the container images of `xturnd` and `xturn-operator`, as OCI archives
//! in `target/images/`, built from nothing but this workspace and the host's C library.
//!
//! Each image is one layer: the release binary (stripped) at `/usr/local/bin/`, the shared
//! libraries `ldd` names and the dynamic loader at their paths, `/etc/passwd`, `/etc/group` and
//! `/etc/nsswitch.conf` for a non-root user `xturn` (65532:65532), and `/tmp`. No base image and
//! no registry. The archives are reproducible (see `oci`): packing the same binaries again gives
//! the same bytes. See docs/images.md.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    oci::{self, ImageSpec, Node},
    sh,
};

/// The user the images run as (distroless' "nonroot" uid/gid).
const UID: u32 = 65532;

pub struct Options {
    /// Where the archives go (default `target/images`).
    pub out: Option<PathBuf>,
    /// Pack the binaries already in `target/release` instead of building them.
    pub no_build: bool,
}

/// One image: which package's binary, and what it is.
struct Image {
    package: &'static str,
    binary: &'static str,
}

const IMAGES: [Image; 2] = [
    Image {
        package: "relay-user",
        binary: "xturnd",
    },
    Image {
        package: "operator",
        binary: "xturn-operator",
    },
];

/// What `cargo xtask image` wrote for one image.
pub struct Built {
    pub reference: String,
    pub path: PathBuf,
    pub archive: oci::Archive,
}

pub fn run(opts: &Options) -> Result<Vec<Built>> {
    let started = Instant::now();
    let bin = if opts.no_build {
        sh::root().join("target/release")
    } else {
        sh::step("image: building the release binaries");
        sh::build_release(&IMAGES.map(|i| i.package))?
    };
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| sh::root().join("target/images"));
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let epoch = source_date_epoch()?;
    let metadata = cargo_metadata()?;
    let architecture = oci_architecture(std::env::consts::ARCH)?;

    sh::step(&format!("image: packing into {}", out.display()));
    let mut built = Vec::new();
    for image in &IMAGES {
        let package = metadata
            .get(image.package)
            .with_context(|| format!("package {} not in `cargo metadata`", image.package))?;
        let binary = bin.join(image.binary);
        let spec = ImageSpec {
            name: format!("localhost/{}", image.binary),
            tag: package.version.clone(),
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            entrypoint: vec![format!("/usr/local/bin/{}", image.binary)],
            user: format!("{UID}:{UID}"),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()],
            labels: labels(image.binary, package),
            epoch,
        };
        let files = root_fs(&binary, image.binary, &out)?;
        let archive = oci::write_archive(&spec, &files)?;
        let path = out.join(format!("{}.oci.tar", image.binary));
        // Written beside and renamed: a reader sees the old archive or the new one, never half.
        let partial = out.join(format!(".{}.oci.tar.partial", image.binary));
        fs::write(&partial, &archive.bytes)
            .with_context(|| format!("write {}", partial.display()))?;
        fs::rename(&partial, &path).with_context(|| format!("rename to {}", path.display()))?;
        built.push(Built {
            reference: format!("{}:{}", image.binary, spec.tag),
            path,
            archive,
        });
    }
    for b in &built {
        println!(
            "{}  digest {}  id {}  {} bytes ({:.1} MiB; layer {:.1} MiB)  {}",
            b.reference,
            b.archive.manifest_digest,
            b.archive.config_digest.get(..19).unwrap_or_default(),
            b.archive.bytes.len(),
            mib(b.archive.bytes.len() as u64),
            mib(b.archive.layer_size),
            b.path.display()
        );
    }
    eprintln!("image: packed in {:.1?}", started.elapsed());
    Ok(built)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention) if set, else 0.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")),
        _ => Ok(0),
    }
}

/// What the labels say about a package, from `cargo metadata` (the version and license are the
/// workspace's, which every package inherits; the source is the workspace's repository, which
/// xtask inherits).
struct Package {
    version: String,
    description: String,
    license: String,
}

fn cargo_metadata() -> Result<BTreeMap<String, Package>> {
    let mut cmd = sh::cargo(&["metadata", "--no-deps", "--format-version", "1"]);
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("cannot run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed: {}", out.status);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` output")?;
    let text = |p: &serde_json::Value, key: &str| p[key].as_str().unwrap_or_default().to_owned();
    Ok(json["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                text(p, "name"),
                Package {
                    version: text(p, "version"),
                    description: text(p, "description"),
                    license: text(p, "license"),
                },
            )
        })
        .collect())
}

fn labels(binary: &str, package: &Package) -> BTreeMap<String, String> {
    [
        ("title", binary),
        ("description", &package.description),
        ("version", &package.version),
        ("source", env!("CARGO_PKG_REPOSITORY")),
        ("licenses", &package.license),
    ]
    .into_iter()
    .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v.to_owned()))
    .collect()
}

/// OCI's (Go's) name for a Rust target architecture.
fn oci_architecture(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => bail!("no OCI architecture name known for {other}"),
    })
}

/// The image's files: `binary` stripped at `/usr/local/bin/NAME`, its shared libraries and
/// loader, the user and group files, `/tmp`.
fn root_fs(binary: &Path, name: &str, scratch: &Path) -> Result<BTreeMap<String, Node>> {
    if !binary.is_file() {
        bail!(
            "{} not found: build it with `cargo xtask image` (without --no-build)",
            binary.display()
        );
    }
    let mut files = BTreeMap::new();
    let stripped = scratch.join(format!(".{name}.stripped"));
    sh::run(sh::cmd(
        "strip",
        &[
            "--strip-all",
            "-o",
            &stripped.to_string_lossy(),
            &binary.to_string_lossy(),
        ],
    ))?;
    let data = fs::read(&stripped).with_context(|| format!("read {}", stripped.display()))?;
    fs::remove_file(&stripped).with_context(|| format!("remove {}", stripped.display()))?;
    files.insert(
        format!("/usr/local/bin/{name}"),
        Node::File { data, mode: 0o755 },
    );
    for library in shared_libraries(binary)? {
        // The file's contents at the path the loader looks for it (a symlink's target is copied).
        let data = fs::read(&library).with_context(|| format!("read {library}"))?;
        files.insert(library, Node::File { data, mode: 0o755 });
    }
    let text = |s: &str| Node::File {
        data: s.as_bytes().to_vec(),
        mode: 0o644,
    };
    files.insert(
        "/etc/passwd".to_owned(),
        text(&format!(
            "root:x:0:0:root:/root:/sbin/nologin\nxturn:x:{UID}:{UID}:xturn:/nonexistent:/sbin/nologin\n"
        )),
    );
    files.insert(
        "/etc/group".to_owned(),
        text(&format!("root:x:0:\nxturn:x:{UID}:\n")),
    );
    // glibc without this file asks DNS before /etc/hosts; a pod's /etc/hosts should come first.
    files.insert(
        "/etc/nsswitch.conf".to_owned(),
        text("passwd: files\ngroup: files\nhosts: files dns\n"),
    );
    files.insert("/tmp".to_owned(), Node::Dir { mode: 0o1777 });
    Ok(files)
}

/// The absolute paths of the shared libraries and dynamic loader `binary` needs, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let out = sh::cmd("ldd", &[&binary.to_string_lossy()])
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "`ldd {}` failed: {}{}",
            binary.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text).with_context(|| format!("`ldd {}`", binary.display()))
}

/// The paths in `ldd`'s output: `name => /path (addr)` and `/loader (addr)` lines; the vDSO
/// (no path) is the kernel's.
fn parse_ldd(text: &str) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("a library is missing: {line}");
        }
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(path.to_owned());
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            bail!("cannot read this ldd line: {line}");
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1a3f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f6b1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6b2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f6b3)\n";
        assert_eq!(
            parse_ldd(text).expect("parse"),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn architectures_have_oci_names() {
        assert_eq!(oci_architecture("x86_64").expect("amd64"), "amd64");
        assert_eq!(oci_architecture("aarch64").expect("arm64"), "arm64");
        assert!(oci_architecture("m68k").is_err());
    }
}
