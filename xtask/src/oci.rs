//! OCI image layouts written into a tar (what `skopeo` calls an `oci-archive`), reproducibly.
//!
//! One image, one layer: the files given (and the directories above them) as a gzip'd tar, an
//! image config, a manifest, and the layout's `index.json` and `oci-layout`. Nothing depends on
//! the clock, the file system or the order the files come in: every tar entry has the same
//! mtime (the `epoch` given) and owner 0:0, entries are sorted by path, gzip carries no
//! timestamp or file name, and the JSON documents are typed structs (fixed field order) and
//! sorted maps. Same inputs, same bytes, same digests.
use std::{collections::BTreeMap, io::Write as _};

use anyhow::{Context as _, Result, bail};
use flate2::{Compression, GzBuilder};
use serde::Serialize;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The index annotation that names a manifest's tag (OCI image layout).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The index annotation containerd and podman read a full image name from.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// What goes at a path in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
}

/// The image's metadata: its name and tag, platform and run-time configuration.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The repository part of the name, e.g. `localhost/xturnd`.
    pub name: String,
    pub tag: String,
    /// OCI architecture names (`amd64`, `arm64`), not Rust's.
    pub architecture: String,
    pub os: String,
    pub entrypoint: Vec<String>,
    pub user: String,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Seconds since 1970: every file's mtime and the config's `created`.
    pub epoch: u64,
}

/// A written archive and the digests that identify what is in it.
#[derive(Clone, Debug)]
pub struct Archive {
    pub bytes: Vec<u8>,
    /// The manifest's digest: the image digest a registry shows (`sha256:…`).
    pub manifest_digest: String,
    /// The config's digest: the image ID podman and docker show (`sha256:…`).
    pub config_digest: String,
    /// The compressed layer's size in bytes.
    pub layer_size: u64,
}

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'a str,
}

#[derive(Serialize)]
struct Config<'a> {
    created: String,
    architecture: &'a str,
    os: &'a str,
    config: RunConfig<'a>,
    rootfs: RootFs,
    history: [History; 1],
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "User")]
    user: &'a str,
    #[serde(rename = "Env")]
    env: &'a [String],
    #[serde(rename = "Entrypoint")]
    entrypoint: &'a [String],
    #[serde(rename = "WorkingDir")]
    working_dir: &'a str,
    #[serde(rename = "Labels")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: [String; 1],
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: &'static str,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: [Descriptor<'a>; 1],
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: [Descriptor<'a>; 1],
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The image's root file system as one tar layer (uncompressed): `files` (absolute paths) and
/// every directory above them, sorted, owned by 0:0, all with mtime `epoch`.
pub fn layer_tar(files: &BTreeMap<String, Node>, epoch: u64) -> Result<Vec<u8>> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for (path, node) in files {
        let rel = relative(path)?;
        // Every parent directory, unless given explicitly.
        let mut parent = rel.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            tree.entry(dir.to_owned())
                .or_insert(Node::Dir { mode: 0o755 });
            parent = dir;
        }
        tree.insert(rel, node.clone());
    }
    for (path, node) in &tree {
        if let Node::File { .. } = node
            && tree.keys().any(|p| p.starts_with(&format!("{path}/")))
        {
            bail!("/{path} is a file with files below it");
        }
    }
    let entries = tree.iter().map(|(path, node)| match node {
        Node::File { data, mode } => (path.clone(), Some(data.as_slice()), *mode),
        Node::Dir { mode } => (format!("{path}/"), None, *mode),
    });
    tar(entries, epoch)
}

/// A path in the image without its leading `/`; no `.`, `..` or empty components.
fn relative(path: &str) -> Result<String> {
    let Some(rel) = path.strip_prefix('/') else {
        bail!("image paths are absolute: {path:?}");
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("not a plain absolute path: {path:?}");
    }
    Ok(rel.to_owned())
}

/// A tar of `entries` (path, contents or None for a directory, mode) in the order given: ustar
/// headers, owner 0:0 without names, mtime `epoch`.
fn tar<'a>(
    entries: impl IntoIterator<Item = (String, Option<&'a [u8]>, u32)>,
    epoch: u64,
) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(&path)
            .with_context(|| format!("tar path {path}"))?;
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(epoch);
        let contents: &[u8] = match data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                &[]
            }
        };
        header.set_size(contents.len() as u64);
        header.set_cksum();
        builder
            .append(&header, contents)
            .with_context(|| format!("tar entry {path}"))?;
    }
    Ok(builder.into_inner()?)
}

/// gzip at the best compression, with no file name and mtime 0 in its header.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// RFC 3339 UTC for `epoch` seconds since 1970 (proleptic Gregorian calendar).
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01, counting in 400-year eras from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The OCI image layout of `spec` with `files` as its one layer, as a tar.
pub fn write_archive(spec: &ImageSpec, files: &BTreeMap<String, Node>) -> Result<Archive> {
    let layer_tar = layer_tar(files, spec.epoch)?;
    let diff_id = sha256(&layer_tar);
    let layer = gzip(&layer_tar)?;
    let created = rfc3339(spec.epoch);

    let config = serde_json::to_vec(&Config {
        created: created.clone(),
        architecture: &spec.architecture,
        os: &spec.os,
        config: RunConfig {
            user: &spec.user,
            env: &spec.env,
            entrypoint: &spec.entrypoint,
            working_dir: "/",
            labels: &spec.labels,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: [diff_id],
        },
        history: [History {
            created,
            created_by: "cargo xtask image",
        }],
    })?;
    let descriptor = |media_type, bytes: &[u8]| Descriptor {
        media_type,
        digest: sha256(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config: descriptor(MEDIA_CONFIG, &config),
        layers: [descriptor(MEDIA_LAYER_GZIP, &layer)],
    })?;
    let mut manifest_descriptor = descriptor(MEDIA_MANIFEST, &manifest);
    manifest_descriptor.platform = Some(Platform {
        architecture: &spec.architecture,
        os: &spec.os,
    });
    manifest_descriptor.annotations = BTreeMap::from([
        (ANNOTATION_REF_NAME, spec.tag.clone()),
        (ANNOTATION_IMAGE_NAME, format!("{}:{}", spec.name, spec.tag)),
    ]);
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests: [manifest_descriptor],
    })?;
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#;

    let blobs: BTreeMap<String, &[u8]> = [&layer[..], &config, &manifest]
        .into_iter()
        .map(|blob| (format!("blobs/sha256/{}", hex_of(&sha256(blob))), blob))
        .collect();
    let mut entries: Vec<(String, Option<&[u8]>, u32)> = vec![
        ("blobs/".to_owned(), None, 0o755),
        ("blobs/sha256/".to_owned(), None, 0o755),
    ];
    entries.extend(
        blobs
            .into_iter()
            .map(|(path, blob)| (path, Some(blob), 0o644)),
    );
    entries.push(("index.json".to_owned(), Some(&index), 0o644));
    entries.push(("oci-layout".to_owned(), Some(oci_layout), 0o644));
    let bytes = tar(entries, spec.epoch)?;
    Ok(Archive {
        bytes,
        manifest_digest: sha256(&manifest),
        config_digest: sha256(&config),
        layer_size: layer.len() as u64,
    })
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// The entries of a tar: path and contents (empty for directories), in archive order.
    pub fn read_tar(bytes: &[u8]) -> Result<Vec<(tar::Header, String, Vec<u8>)>> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.push((entry.header().clone(), path, data));
        }
        Ok(out)
    }

    fn spec(epoch: u64) -> ImageSpec {
        ImageSpec {
            name: "localhost/demo".to_owned(),
            tag: "1.2.3".to_owned(),
            architecture: "amd64".to_owned(),
            os: "linux".to_owned(),
            entrypoint: vec!["/usr/local/bin/demo".to_owned()],
            user: "65532:65532".to_owned(),
            env: vec!["PATH=/usr/local/bin".to_owned()],
            labels: BTreeMap::from([
                (
                    "org.opencontainers.image.title".to_owned(),
                    "demo".to_owned(),
                ),
                (
                    "org.opencontainers.image.version".to_owned(),
                    "1.2.3".to_owned(),
                ),
            ]),
            epoch,
        }
    }

    fn files(order: &[usize]) -> BTreeMap<String, Node> {
        let all = [
            (
                "/usr/local/bin/demo",
                Node::File {
                    data: b"\x7fELF binary".repeat(100),
                    mode: 0o755,
                },
            ),
            (
                "/etc/passwd",
                Node::File {
                    data: b"xturn:x:65532:65532::/:/sbin/nologin\n".to_vec(),
                    mode: 0o644,
                },
            ),
            ("/tmp", Node::Dir { mode: 0o1777 }),
            (
                "/lib/x86_64-linux-gnu/libc.so.6",
                Node::File {
                    data: vec![7; 5000],
                    mode: 0o755,
                },
            ),
        ];
        order
            .iter()
            .map(|&i| (all[i].0.to_owned(), all[i].1.clone()))
            .collect()
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("JSON")
    }

    #[test]
    fn same_inputs_same_bytes_whatever_the_order() {
        let a = write_archive(&spec(0), &files(&[0, 1, 2, 3])).expect("a");
        let b = write_archive(&spec(0), &files(&[3, 2, 1, 0])).expect("b");
        assert_eq!(sha256(&a.bytes), sha256(&b.bytes));
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        // Any change of input changes the image: the epoch, a file's contents.
        let later = write_archive(&spec(1_700_000_000), &files(&[0, 1, 2, 3])).expect("later");
        assert_ne!(later.manifest_digest, a.manifest_digest);
        let mut changed = files(&[0, 1, 2, 3]);
        changed.insert(
            "/etc/group".to_owned(),
            Node::File {
                data: b"xturn:x:65532:\n".to_vec(),
                mode: 0o644,
            },
        );
        let changed = write_archive(&spec(0), &changed).expect("changed");
        assert_ne!(changed.manifest_digest, a.manifest_digest);
    }

    #[test]
    fn the_layout_is_complete_and_every_blob_matches_its_digest() {
        let archive = write_archive(&spec(42), &files(&[0, 1, 2, 3])).expect("archive");
        let entries = read_tar(&archive.bytes).expect("outer tar");
        let paths: Vec<&str> = entries.iter().map(|(_, p, _)| p.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted, "entries are sorted");
        assert_eq!(paths.len(), 2 + 3 + 2, "{paths:?}");
        let file = |name: &str| {
            entries
                .iter()
                .find(|(_, p, _)| p == name)
                .map(|(_, _, d)| d.as_slice())
                .unwrap_or_else(|| panic!("{name} missing from {paths:?}"))
        };
        for (header, path, data) in &entries {
            assert_eq!(header.mtime().expect("mtime"), 42, "{path}");
            assert_eq!(
                (header.uid().expect("uid"), header.gid().expect("gid")),
                (0, 0)
            );
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{path}");
            }
        }
        assert_eq!(json(file("oci-layout"))["imageLayoutVersion"], "1.0.0");

        let index = json(file("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let m = &index["manifests"][0];
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "1.2.3");
        assert_eq!(
            m["annotations"][ANNOTATION_IMAGE_NAME],
            "localhost/demo:1.2.3"
        );
        assert_eq!(m["platform"]["architecture"], "amd64");
        assert_eq!(m["digest"], archive.manifest_digest.as_str());
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().expect("digest");
            file(&format!("blobs/sha256/{}", hex_of(digest)))
        };
        let manifest_bytes = blob(&m["digest"]);
        assert_eq!(m["size"], manifest_bytes.len());
        let manifest = json(manifest_bytes);
        assert_eq!(manifest["config"]["digest"], archive.config_digest.as_str());
        let config = json(blob(&manifest["config"]["digest"]));
        assert_eq!(config["created"], "1970-01-01T00:00:42Z");
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/demo");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "1.2.3"
        );

        // The layer: gzip without a name or timestamp, its tar's digest the config's diff_id.
        let layer_gz = blob(&manifest["layers"][0]["digest"]);
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_LAYER_GZIP);
        assert_eq!(layer_gz[..2], [0x1f, 0x8b]);
        assert_eq!(layer_gz[3], 0, "no FNAME/FCOMMENT/FEXTRA flags");
        assert_eq!(layer_gz[4..8], [0; 4], "no mtime");
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(layer_gz)
            .read_to_end(&mut layer)
            .expect("gunzip");
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&layer).as_str());
        let layer = read_tar(&layer).expect("layer tar");
        let listing: Vec<(String, u32, u64)> = layer
            .iter()
            .map(|(h, p, d)| (p.clone(), h.mode().expect("mode"), d.len() as u64))
            .collect();
        assert_eq!(
            listing,
            [
                ("etc/".to_owned(), 0o755, 0),
                ("etc/passwd".to_owned(), 0o644, 37),
                ("lib/".to_owned(), 0o755, 0),
                ("lib/x86_64-linux-gnu/".to_owned(), 0o755, 0),
                ("lib/x86_64-linux-gnu/libc.so.6".to_owned(), 0o755, 5000),
                ("tmp/".to_owned(), 0o1777, 0),
                ("usr/".to_owned(), 0o755, 0),
                ("usr/local/".to_owned(), 0o755, 0),
                ("usr/local/bin/".to_owned(), 0o755, 0),
                ("usr/local/bin/demo".to_owned(), 0o755, 1100),
            ]
        );
        assert!(layer.iter().all(|(h, _, _)| h.mtime().ok() == Some(42)));
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["relative/path", "/a/../b", "/", "/a//b"] {
            let files = BTreeMap::from([(bad.to_owned(), Node::Dir { mode: 0o755 })]);
            assert!(layer_tar(&files, 0).is_err(), "{bad}");
        }
        let clash = BTreeMap::from([
            (
                "/a".to_owned(),
                Node::File {
                    data: vec![],
                    mode: 0o644,
                },
            ),
            (
                "/a/b".to_owned(),
                Node::File {
                    data: vec![],
                    mode: 0o644,
                },
            ),
        ]);
        assert!(layer_tar(&clash, 0).is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
