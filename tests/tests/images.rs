//! The container images `cargo xtask image` writes (`target/images/*.oci.tar`; `cargo xtask
//! test` builds them first), loaded into podman and run: what podman reads from them, the
//! binaries' versions, a TURN session through `xturnd` in a container on a test topology, and
//! that packing the same binaries again gives the same archives. Needs root and podman
//! (`cargo xtask setup` installs it).
//!
//! Images load as `localhost/xturnd:<version>` and `localhost/xturn-operator:<version>`; every
//! test that loads one removes it (and its containers) when it ends, also on failure. Tests of
//! the same image take turns.
use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use serde_json::Value;
use xturn_tests::{
    clients::{block_on, xturnd_args},
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology, binary},
};
use xturnctl::{AllocateOptions, ClientCredentials, TurnClient, Via};

/// The workspace's version: every binary's `--version` and both images' tag.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Limits at or below the test machine's own (podman cannot raise them here).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `target/images/NAME.oci.tar`; fails saying how to build it if it is not there.
fn archive(name: &str) -> PathBuf {
    let path = workspace().join(format!("target/images/{name}.oci.tar"));
    assert!(
        path.is_file(),
        "{} not found: build the images first with `cargo xtask image` (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Runs `timeout SECS podman --runtime runc ARGS` (runc: Debian's default runtime, crun,
/// refuses this machine's cgroup layout).
fn podman(secs: u64, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .args(["podman", "--runtime", "runc"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (`cargo xtask setup` installs it): {e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs podman and returns its stdout; panics with its output if it fails.
fn podman_ok(secs: u64, args: &[&str]) -> String {
    let out = podman(secs, args);
    assert!(
        out.status.success(),
        "`podman {}` failed ({}): {}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The file `path` inside the tar `archive`.
fn tar_member(archive: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(path)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "{path} not in {}: {}",
        archive.display(),
        text(&out)
    );
    out.stdout
}

/// The manifest digest (the image digest) and the config digest (the image ID) the archive's
/// `index.json` leads to, and the tag it names.
struct Layout {
    manifest_digest: String,
    config_digest: String,
    tag: String,
}

fn layout(archive: &Path) -> Layout {
    let index: Value =
        serde_json::from_slice(&tar_member(archive, "index.json")).expect("index.json is JSON");
    let manifests = index["manifests"].as_array().expect("index.json manifests");
    assert_eq!(manifests.len(), 1, "one image per archive: {index}");
    let descriptor = &manifests[0];
    let manifest_digest = descriptor["digest"].as_str().expect("digest").to_owned();
    let hex = manifest_digest
        .strip_prefix("sha256:")
        .expect("sha256 digest");
    let manifest: Value =
        serde_json::from_slice(&tar_member(archive, &format!("blobs/sha256/{hex}")))
            .expect("manifest is JSON");
    Layout {
        config_digest: manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_owned(),
        tag: descriptor["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("ref.name annotation")
            .to_owned(),
        manifest_digest,
    }
}

static XTURND: Mutex<()> = Mutex::new(());
static OPERATOR: Mutex<()> = Mutex::new(());

/// An image loaded from its archive into podman, removed on drop. Holds its image's turn.
struct LoadedImage {
    reference: String,
    layout: Layout,
    _turn: MutexGuard<'static, ()>,
}

impl LoadedImage {
    /// `podman load -i target/images/NAME.oci.tar`, which names the image
    /// `localhost/NAME:<version>`.
    fn load(name: &str) -> LoadedImage {
        let lock = if name == "xturnd" { &XTURND } else { &OPERATOR };
        let turn = lock.lock().unwrap_or_else(|e| e.into_inner());
        let archive = archive(name);
        let layout = layout(&archive);
        let image = LoadedImage {
            reference: format!("localhost/{name}:{VERSION}"),
            layout,
            _turn: turn,
        };
        let loaded = podman_ok(300, &["load", "-i", &archive.to_string_lossy()]);
        assert!(
            loaded.contains(&image.reference),
            "podman load did not name the image {}: {loaded}",
            image.reference
        );
        image
    }

    /// `podman image inspect` of the loaded image.
    fn inspect(&self) -> Value {
        let out = podman_ok(60, &["image", "inspect", &self.reference]);
        let all: Value = serde_json::from_str(&out).expect("podman image inspect gives JSON");
        all[0].clone()
    }
}

impl Drop for LoadedImage {
    fn drop(&mut self) {
        let out = podman(120, &["rmi", &self.reference]);
        if !out.status.success() {
            eprintln!("podman rmi {} failed: {}", self.reference, text(&out));
        }
    }
}

/// A container by name, removed (killed first if it runs) on drop.
struct Container {
    name: String,
}

impl Container {
    fn named(what: &str) -> Container {
        Container {
            name: format!("xt-{}-{what}", std::process::id()),
        }
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(60, &["inspect", "--format", format, &self.name])
            .trim()
            .to_owned()
    }

    fn logs(&self) -> String {
        text(&podman(60, &["logs", &self.name]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(120, &["rm", "--force", "--time", "0", &self.name]);
    }
}

/// What the image's config says, as podman reads it; the image is the archive's.
fn assert_image_config(image: &LoadedImage, binary: &str) {
    let inspect = image.inspect();
    assert_eq!(image.layout.tag, VERSION, "the archive's tag");
    assert_eq!(
        inspect["Id"].as_str().map(|id| format!("sha256:{id}")),
        Some(image.layout.config_digest.clone()),
        "podman's image ID is the archive's config digest"
    );
    assert_eq!(
        inspect["Digest"].as_str(),
        Some(image.layout.manifest_digest.as_str()),
        "podman's digest is the archive's manifest digest"
    );
    let config = &inspect["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([format!("/usr/local/bin/{binary}")])
    );
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], binary);
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    for label in ["description", "source", "licenses"] {
        let value = labels[format!("org.opencontainers.image.{label}")]
            .as_str()
            .unwrap_or_default();
        assert!(!value.is_empty(), "label {label} is set: {labels}");
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(inspect["Architecture"], arch);
    assert_eq!(inspect["Os"], "linux");
}

/// `BINARY --version` in a container of its image prints the workspace's version.
fn assert_version(image: &LoadedImage, binary: &str) {
    let container = Container::named(&format!("{binary}-version"));
    let mut args = vec!["run", "--name", &container.name, "--network", "none"];
    args.extend(ULIMITS);
    args.extend([image.reference.as_str(), "--version"]);
    let out = podman_ok(120, &args);
    assert_eq!(out.trim(), format!("{binary} {VERSION}"));
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0");
}

#[test]
fn xturnd_image_is_what_the_archive_says_and_prints_its_version() {
    let image = LoadedImage::load("xturnd");
    assert_image_config(&image, "xturnd");
    assert_version(&image, "xturnd");
}

#[test]
fn operator_image_is_what_the_archive_says_and_prints_its_version() {
    let image = LoadedImage::load("xturn-operator");
    assert_image_config(&image, "xturn-operator");
    assert_version(&image, "xturn-operator");
}

/// `xturnd` in a container that joins the relay namespace, as its image's user (65532), with
/// the userspace data plane: a client allocates, sends to a peer by Send indication after a
/// permission, then over a bound channel, and the peer answers both ways.
#[test]
fn xturnd_in_a_container_relays_a_turn_session() {
    let topology = Topology::new();
    let image = LoadedImage::load("xturnd");
    let container = Container::named("xturnd-relay");
    let netns = format!("ns:/run/netns/{}", topology.relay.name());
    let xturnd = xturnd_args(
        &[&format!("{LISTENER_V4}:3478")],
        &[RELAY_V4],
        &["--dataplane", "userspace"],
    );
    let mut args = vec!["run", "--detach", "--name", &container.name];
    args.extend(["--network", &netns]);
    args.extend(ULIMITS);
    args.push(&image.reference);
    args.extend(xturnd.iter().map(String::as_str));
    podman_ok(120, &args);

    let listener = Topology::listener(false);
    assert!(
        topology.wait_for_stun(listener, Duration::from_secs(20)),
        "xturnd in its container did not answer STUN within 20 s; its logs:\n{}",
        container.logs()
    );
    // The process runs as the image's user, not root.
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "xturnd's user ids in its container"
    );

    let peer_addr: SocketAddr = format!("{PEER_V4}:3480").parse().expect("peer address");
    let peer = topology.peer.within(|| {
        let socket = UdpSocket::bind(peer_addr).expect("bind the peer");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket
    });
    let peer_recv = || {
        let mut buf = [0u8; 1500];
        let (n, from) = peer
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the peer got nothing: {e}; xturnd:\n{}", container.logs()));
        (buf[..n].to_vec(), from)
    };

    topology.client.within(|| {
        block_on(async {
            let mut client =
                TurnClient::connect(listener, ClientCredentials::new("alice", "wonderland"))
                    .await
                    .expect("connect");
            let allocation = client
                .allocate(AllocateOptions::default())
                .await
                .expect("allocate");
            let relayed = allocation.relayed;
            assert_eq!(relayed.ip().to_string(), RELAY_V4, "the --relay-ip flag");
            assert!(
                (50000..=50999).contains(&relayed.port()),
                "relayed port {relayed} in --min-port..--max-port"
            );

            // A permission, then a Send indication; the answer comes as a Data indication.
            client
                .create_permission(&[peer_addr.ip()])
                .await
                .expect("create permission");
            client
                .send_indication(peer_addr, b"send indication")
                .await
                .expect("send indication");
            assert_eq!(peer_recv(), (b"send indication".to_vec(), relayed));
            peer.send_to(b"data indication", relayed)
                .expect("peer send");
            let got = client
                .recv_timeout(Duration::from_secs(5))
                .await
                .expect("the peer's answer");
            assert_eq!(
                (got.peer, got.via, got.data.as_slice()),
                (peer_addr, Via::DataIndication, &b"data indication"[..])
            );

            // A channel, and ChannelData both ways.
            client
                .channel_bind(peer_addr, 0x4000)
                .await
                .expect("channel bind");
            for i in 0..5u8 {
                let data = [i; 200];
                client.send_channel(0x4000, &data).await.expect("send");
                assert_eq!(peer_recv(), (data.to_vec(), relayed), "round {i}");
                peer.send_to(&[i; 100], relayed).expect("peer send");
                let got = client
                    .recv_timeout(Duration::from_secs(5))
                    .await
                    .expect("the peer's answer over the channel");
                assert_eq!(
                    (got.peer, got.via, got.data),
                    (peer_addr, Via::Channel(0x4000), vec![i; 100]),
                    "round {i}"
                );
            }
            client.delete().await.expect("delete the allocation");
        });
    });

    assert_eq!(
        container.inspect("{{.State.Running}}"),
        "true",
        "xturnd is still running; its logs:\n{}",
        container.logs()
    );
    podman_ok(60, &["stop", "--time", "10", &container.name]);
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "xturnd stopped cleanly on SIGTERM; its logs:\n{}",
        container.logs()
    );
}

/// Packing the binaries in target/release again (`xtask image --no-build`, into a directory of
/// its own) gives archives identical to the ones in target/images, byte for byte.
#[test]
fn packing_the_same_binaries_again_gives_the_same_archives() {
    let archives = ["xturnd", "xturn-operator"].map(archive);
    let out_dir = std::env::temp_dir().join(format!("xturn-{}-images", std::process::id()));
    let out = Command::new("timeout")
        .arg("300")
        .arg(binary("xtask"))
        .args(["image", "--no-build", "--out"])
        .arg(&out_dir)
        .output()
        .expect("run xtask image");
    let result = std::panic::catch_unwind(|| {
        assert!(
            out.status.success(),
            "xtask image --no-build failed: {}",
            text(&out)
        );
        for original in &archives {
            let name = original.file_name().expect("file name");
            let again = out_dir.join(name);
            let (a, b) = (
                std::fs::read(original).expect("read the archive"),
                std::fs::read(&again).expect("read the second archive"),
            );
            assert!(
                a == b,
                "{} and {} differ ({} vs {} bytes; image digests {} vs {}): packing is not \
                 reproducible, or target/release was rebuilt (or SOURCE_DATE_EPOCH changed) after \
                 `cargo xtask image`",
                original.display(),
                again.display(),
                a.len(),
                b.len(),
                layout(original).manifest_digest,
                layout(&again).manifest_digest,
            );
        }
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
