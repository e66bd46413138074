//! The files a rendered relay pod sees: each Secret volume its container mounts, projected as
//! the kubelet does (one file per key under the mount path). A rendered agent configuration
//! names its credentials by such paths (`/etc/xturn/auth/secret`); tests that run or resolve it
//! outside a pod read them from here.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde_json::Value;

pub struct PodFiles {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl PodFiles {
    /// The files of `pod_spec`'s first container's Secret volumes, from `secrets` (rendered
    /// Secret objects as JSON: `data` in base64, or `stringData`). A volume whose Secret is not
    /// among them has no files, as a pod whose Secret is missing would not start.
    pub fn of(pod_spec: &Value, secrets: &[Value]) -> PodFiles {
        let mut files = BTreeMap::new();
        let volumes = pod_spec["volumes"].as_array().cloned().unwrap_or_default();
        let mounts = pod_spec["containers"][0]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for mount in &mounts {
            let Some(volume) = volumes.iter().find(|v| v["name"] == mount["name"]) else {
                continue;
            };
            let Some(name) = volume["secret"]["secretName"].as_str() else {
                continue;
            };
            let Some(secret) = secrets.iter().find(|s| s["metadata"]["name"] == name) else {
                continue;
            };
            let root = PathBuf::from(mount["mountPath"].as_str().unwrap_or_default());
            for (key, value) in secret["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("Secret {name} key {key}: not base64: {e}"));
                files.insert(root.join(key), bytes);
            }
            for (key, value) in secret["stringData"].as_object().into_iter().flatten() {
                let text = value.as_str().unwrap_or_default().as_bytes().to_vec();
                files.insert(root.join(key), text);
            }
        }
        PodFiles { files }
    }

    /// What the pod reads at `path`.
    pub fn read(&self, path: &Path) -> io::Result<String> {
        let bytes = self.files.get(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not a file of the pod's Secret volumes",
                    path.display()
                ),
            )
        })?;
        String::from_utf8(bytes.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Every file's path.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// Writes the files under `root` (`/etc/xturn/auth/secret` as `ROOT/etc/xturn/auth/secret`),
    /// for an agent run outside a pod; its configuration's paths get the same prefix.
    pub fn write_under(&self, root: &Path) -> io::Result<()> {
        for (path, bytes) in &self.files {
            let target = root.join(path.strip_prefix("/").unwrap_or(path));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(target, bytes)?;
        }
        Ok(())
    }
}
