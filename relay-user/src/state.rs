//! Files of a hitless restart (`--state-dir`, `--bpf-pin-dir`): the allocation state, the
//! nonce key, and the check that a pin directory is on bpffs.
//!
//! The state file is input: a file that does not parse, or holds nonsense, is refused as a
//! whole (the caller starts fresh), and [`turn::Server::restore`] checks every allocation.
use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use turn_proto::server::Snapshot;

/// The allocation state file in a state directory.
pub const STATE_FILE: &str = "state.json";
/// The nonce key file in a state directory: nonces handed out before a restart stay valid.
pub const NONCE_KEY_FILE: &str = "nonce.key";
/// The largest state file read (about 1 KiB per allocation: far more than any quota).
const MAX_STATE_BYTES: u64 = 1 << 30;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors reading the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: larger than {MAX_STATE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a directory on a bpffs mount (mount one with `mount -t bpf bpf {path}`)")]
    NotBpffs { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `dir/state.json`: `Ok(None)` when there is none (a fresh start).
pub fn load(dir: &Path) -> Result<Option<Snapshot>, StateError> {
    let path = dir.join(STATE_FILE);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let len = file.metadata().map_err(io_error(&path))?.len();
    if len > MAX_STATE_BYTES {
        return Err(StateError::TooLarge { path });
    }
    serde_json::from_reader(io::BufReader::new(file))
        .map(Some)
        .map_err(|source| StateError::Parse { path, source })
}

/// Writes `dir/state.json` atomically: a temporary file, synced, renamed over the old one, and
/// the directory synced, so a crash leaves the old state or the new one, never a mix.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let temporary = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec(snapshot).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    write_synced(&temporary, &bytes)?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// The nonce key kept in `dir` (created there, mode 0600, from `fresh` when there is none or
/// it is not 32 bytes long). Creates `dir` if needed.
pub fn nonce_key(dir: &Path, fresh: [u8; 32]) -> Result<[u8; 32], StateError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(NONCE_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(key);
            }
            tracing::warn!(path = %path.display(), "nonce key file is not 32 bytes: replaced");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    let temporary = dir.join(format!("{NONCE_KEY_FILE}.tmp"));
    write_synced(&temporary, &fresh)?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    Ok(fresh)
}

/// Checks that `dir` is a directory on a bpffs mount.
pub fn check_bpffs(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::ffi::OsStrExt as _;
    let not_bpffs = || StateError::NotBpffs {
        path: dir.to_path_buf(),
    };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| not_bpffs())?;
    // SAFETY: statfs with a NUL-terminated path and a pointer to a zeroed statfs struct.
    let (rc, magic) = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        let rc = libc::statfs(c_path.as_ptr(), &raw mut buf);
        (rc, buf.f_type)
    };
    if rc != 0 {
        return Err(io_error(dir)(io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    if i64::from(magic) != BPF_FS_MAGIC {
        return Err(not_bpffs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xturn-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn state_round_trips_and_garbage_is_an_error() {
        let dir = temp_dir("roundtrip");
        assert!(load(&dir).unwrap().is_none());
        let snapshot = Snapshot {
            version: turn_proto::server::SNAPSHOT_VERSION,
            taken_unix_ms: 5,
            allocations: Vec::new(),
        };
        save(&dir, &snapshot).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(snapshot));
        fs::write(dir.join(STATE_FILE), b"{\"version\": 1, \"allocations\": [").unwrap();
        assert!(matches!(load(&dir), Err(StateError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nonce_key_is_kept() {
        let dir = temp_dir("nonce");
        assert_eq!(nonce_key(&dir, [1; 32]).unwrap(), [1; 32]);
        assert_eq!(nonce_key(&dir, [2; 32]).unwrap(), [1; 32]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(matches!(
            check_bpffs(&std::env::temp_dir()),
            Err(StateError::NotBpffs { .. })
        ));
    }
}
