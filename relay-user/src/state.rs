//! Files of a hitless restart (`--state-dir`, `--bpf-pin-dir`): the allocation state, the
//! nonce key, and the check that a pin directory is on bpffs.
//!
//! Per-user usage totals are in `usage.json` ([`save_usage`]), written every few seconds and
//! at shutdown, so billing counters survive a restart.
//!
//! The allocation state is a whole [`Snapshot`] (`state.json`) and a journal of the changes
//! since it (`journal.jsonl`, [`Journal`]): while allocations change, only the changed ones are
//! appended, and a whole snapshot is written again once the journal outgrows it. The journal's
//! first line names the snapshot it continues (its `generation`); a journal of another snapshot
//! is ignored, so a crash between writing a snapshot and starting its journal loses nothing.
//!
//! Both files are input: a state file that does not parse, or holds nonsense, is refused as a
//! whole (the caller starts fresh); journal records are read up to the first that does not
//! parse (a crash can tear the last one); and [`turn::Server::restore`] checks every allocation.
use std::{
    fs, io,
    io::{BufRead as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use turn_proto::server::{AllocationChange, Snapshot, UserUsage};

/// The allocation state file in a state directory.
pub const STATE_FILE: &str = "state.json";
/// The journal of changes since the state file's snapshot.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The per-user usage file in a state directory ([`save_usage`]).
pub const USAGE_FILE: &str = "usage.json";
/// The nonce key file in a state directory: nonces handed out before a restart stay valid.
pub const NONCE_KEY_FILE: &str = "nonce.key";
/// The largest state file read (about 1 KiB per allocation: far more than any quota).
const MAX_STATE_BYTES: u64 = 1 << 30;

/// Held while a state file is written: the state writer and the shutdown's last write never
/// write at once.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn writing() -> std::sync::MutexGuard<'static, ()> {
    WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// Opens `path` for reading, refusing files larger than [`MAX_STATE_BYTES`]; `Ok(None)` when
/// there is none.
fn open_bounded(path: &Path) -> Result<Option<fs::File>, StateError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    if len > MAX_STATE_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(file))
}

/// Reads `dir/state.json` with the changes its journal holds applied: `Ok(None)` when there is
/// no state file (a fresh start).
pub fn load(dir: &Path) -> Result<Option<Snapshot>, StateError> {
    let path = dir.join(STATE_FILE);
    let Some(file) = open_bounded(&path)? else {
        return Ok(None);
    };
    let snapshot: Snapshot = serde_json::from_reader(io::BufReader::new(file))
        .map_err(|source| StateError::Parse { path, source })?;
    let changes = read_journal(dir, snapshot.generation)?;
    Ok(Some(snapshot.with_changes(changes)))
}

/// The first line of a journal.
#[derive(Serialize, Deserialize)]
struct JournalHeader {
    /// The [`Snapshot::generation`] it continues.
    generation: u64,
}

/// The changes of `dir`'s journal if it continues the snapshot of `generation` (none for
/// generation 0, a snapshot without journal), up to the first record that does not parse.
fn read_journal(dir: &Path, generation: u64) -> Result<Vec<AllocationChange>, StateError> {
    let path = dir.join(JOURNAL_FILE);
    if generation == 0 {
        return Ok(Vec::new());
    }
    let Some(file) = open_bounded(&path)? else {
        return Ok(Vec::new());
    };
    let mut lines = io::BufReader::new(file).lines();
    let header = lines
        .next()
        .transpose()
        .map_err(io_error(&path))?
        .and_then(|line| serde_json::from_str::<JournalHeader>(&line).ok());
    if header.is_none_or(|h| h.generation != generation) {
        tracing::info!(path = %path.display(), "journal of another state file: ignored");
        return Ok(Vec::new());
    }
    let mut changes = Vec::new();
    for (number, line) in lines.enumerate() {
        let line = line.map_err(io_error(&path))?;
        match serde_json::from_str(&line) {
            Ok(change) => changes.push(change),
            Err(e) => {
                // A crash while appending leaves a torn last record.
                tracing::warn!(
                    path = %path.display(),
                    record = number + 1,
                    error = %e,
                    "journal record unreadable: it and any after it are ignored"
                );
                break;
            }
        }
    }
    Ok(changes)
}

/// Writes `dir/state.json` atomically: a temporary file, synced, renamed over the old one, and
/// the directory synced, so a crash leaves the old state or the new one, never a mix. Returns
/// its size.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<u64, StateError> {
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(snapshot).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    replace_synced(dir, STATE_FILE, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Writes `dir/usage.json` atomically: every user's usage totals (its allocations now are
/// not kept: adoption counts them again).
pub fn save_usage(dir: &Path, usage: &[UserUsage]) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(usage).map_err(|source| StateError::Parse {
        path: dir.join(USAGE_FILE),
        source,
    })?;
    replace_synced(dir, USAGE_FILE, &bytes)
}

/// Reads `dir/usage.json`: empty when there is none.
pub fn load_usage(dir: &Path) -> Result<Vec<UserUsage>, StateError> {
    let path = dir.join(USAGE_FILE);
    let Some(file) = open_bounded(&path)? else {
        return Ok(Vec::new());
    };
    serde_json::from_reader(io::BufReader::new(file))
        .map_err(|source| StateError::Parse { path, source })
}

/// Replaces `dir/name` with `bytes` atomically (a synced temporary file renamed over it, the
/// directory synced).
fn replace_synced(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let _writing = writing();
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    write_synced(&temporary, bytes)?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The journal of changes since a snapshot: records appended and synced, a JSON line each.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: fs::File,
    bytes: u64,
}

impl Journal {
    /// Starts `dir`'s journal anew for the snapshot of `generation` (non-zero), replacing the
    /// old one atomically.
    pub fn create(dir: &Path, generation: u64) -> Result<Journal, StateError> {
        let path = dir.join(JOURNAL_FILE);
        let mut header = serde_json::to_vec(&JournalHeader { generation }).map_err(|source| {
            StateError::Parse {
                path: path.clone(),
                source,
            }
        })?;
        header.push(b'\n');
        replace_synced(dir, JOURNAL_FILE, &header)?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(Journal {
            path,
            file,
            bytes: header.len() as u64,
        })
    }

    /// Appends `changes` and syncs them.
    pub fn append(&mut self, changes: &[AllocationChange]) -> Result<(), StateError> {
        let mut buf = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut buf, change).map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            })?;
            buf.push(b'\n');
        }
        let _writing = writing();
        self.file.write_all(&buf).map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
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
        let snapshot = snapshot(0, Vec::new());
        save(&dir, &snapshot).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(snapshot));
        fs::write(dir.join(STATE_FILE), b"{\"version\": 1, \"allocations\": [").unwrap();
        assert!(matches!(load(&dir), Err(StateError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn usage_round_trips_without_allocations_now() {
        let dir = temp_dir("usage");
        assert!(load_usage(&dir).unwrap().is_empty());
        let alice = UserUsage {
            user: "alice".to_owned(),
            allocations: 3,
            allocations_total: 7,
            to_peer_packets: 1,
            to_peer_bytes: 2,
            to_client_packets: 3,
            to_client_bytes: 4,
        };
        save_usage(&dir, std::slice::from_ref(&alice)).unwrap();
        let read = load_usage(&dir).unwrap();
        assert_eq!(
            read,
            [UserUsage {
                allocations: 0,
                ..alice
            }]
        );
        fs::write(dir.join(USAGE_FILE), b"[{\"user\": 1}]").unwrap();
        assert!(matches!(load_usage(&dir), Err(StateError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn allocation(client: &str, expires_unix_ms: u64) -> turn_proto::server::AllocationState {
        turn_proto::server::AllocationState {
            client: client.parse().unwrap(),
            server: "198.18.1.1:3478".parse().unwrap(),
            listener: 0,
            username: "alice".into(),
            relayed: vec!["198.18.2.1:50000".parse().unwrap()],
            expires_unix_ms,
            transaction_id: [7; 12],
            permissions: Vec::new(),
            channels: Vec::new(),
            reservation: None,
        }
    }

    fn snapshot(
        generation: u64,
        allocations: Vec<turn_proto::server::AllocationState>,
    ) -> Snapshot {
        Snapshot {
            version: turn_proto::server::SNAPSHOT_VERSION,
            taken_unix_ms: 5,
            generation,
            allocations,
        }
    }

    #[test]
    fn the_journal_continues_its_snapshot_up_to_a_torn_record() {
        let dir = temp_dir("journal");
        let (a, b, c) = ("198.18.0.2:1000", "198.18.0.3:1000", "198.18.0.4:1000");
        save(
            &dir,
            &snapshot(9, vec![allocation(a, 100), allocation(b, 100)]),
        )
        .unwrap();
        let mut journal = Journal::create(&dir, 9).unwrap();
        journal
            .append(&[
                AllocationChange::Put(allocation(a, 200)),
                AllocationChange::Remove {
                    client: b.parse().unwrap(),
                    server: "198.18.1.1:3478".parse().unwrap(),
                    listener: 0,
                },
            ])
            .unwrap();
        journal
            .append(&[AllocationChange::Put(allocation(c, 300))])
            .unwrap();
        let want = snapshot(9, vec![allocation(a, 200), allocation(c, 300)]);
        assert_eq!(load(&dir).unwrap(), Some(want.clone()));

        // A record torn by a crash, and what follows it, are ignored.
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL_FILE))
            .unwrap();
        file.write_all(b"{\"put\":{\"client\":").unwrap();
        assert_eq!(load(&dir).unwrap(), Some(want));

        // A journal of another snapshot (a crash after the snapshot, before its journal) is
        // not applied; nor is any to a snapshot of generation 0.
        save(&dir, &snapshot(10, vec![allocation(b, 100)])).unwrap();
        assert_eq!(
            load(&dir).unwrap(),
            Some(snapshot(10, vec![allocation(b, 100)]))
        );
        save(&dir, &snapshot(0, vec![allocation(b, 100)])).unwrap();
        assert_eq!(
            load(&dir).unwrap(),
            Some(snapshot(0, vec![allocation(b, 100)]))
        );
        let journal = Journal::create(&dir, 10).unwrap();
        assert!(journal.bytes() > 0);
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
