//! Certificates for TURN over TLS and DTLS: loaded from PEM files, and loaded again when the
//! files change ([`CertStore::reload_if_changed`], polled by the server). A new certificate is
//! used by new handshakes only; sessions already open keep theirs.
//!
//! TLS is rustls with the ring provider, TLS 1.2 and 1.3, no client certificates.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {}: {message}", path.display())]
    Cert { path: PathBuf, message: String },
    #[error("key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("certificate {} and key {} do not go together: {message}", files.cert.display(), files.key.display())]
    Mismatch { files: TlsFiles, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The PEM files as read: the chain and the key, in DER.
pub struct Pem {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Reads and checks a certificate chain and its key.
pub fn read_pem(files: &TlsFiles) -> Result<Pem, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: files.cert.clone(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Pem { chain, key })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both files' modification times and sizes: a change to either means "read them again".
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let one =
        |path: &Path| std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [one(&files.cert), one(&files.key)]
}

/// A listener's certificate, reloadable.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Stamp>,
    /// How many times a changed certificate was loaded.
    reloads: std::sync::atomic::AtomicU64,
}

impl CertStore {
    pub fn load(files: &TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        let seen = stamp(files);
        let key = certified_key(files)?;
        Ok(Arc::new(CertStore {
            files: files.clone(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
            reloads: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Loads the files again if they changed since the last look. `Ok(true)`: a new
    /// certificate is in use. An unreadable or inconsistent pair (half-written, say) leaves
    /// the current certificate in use and is reported; it is tried again on the next change.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let key = certified_key(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// A rustls server configuration whose certificate follows this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        Ok(Arc::new(config))
    }
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let pem = read_pem(files)?;
    CertifiedKey::from_der(pem.chain, pem.key, &provider()).map_err(|e| TlsError::Mismatch {
        files: files.clone(),
        message: e.to_string(),
    })
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a fresh self-signed certificate and key for `name` under `dir`, with
    /// openssl(1) (P-256, PKCS#8).
    pub(crate) fn self_signed(dir: &Path, name: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&files.cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        files
    }

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xturn-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_and_reloads_only_on_change() {
        let dir = tempdir("reload");
        let files = self_signed(&dir, "a");
        let store = CertStore::load(&files).unwrap();
        let first = store.current();
        assert!(!store.reload_if_changed().unwrap());
        // Replace both files with another certificate (as a Secret update would).
        let other = self_signed(&dir, "b");
        std::fs::rename(&other.cert, &files.cert).unwrap();
        std::fs::rename(&other.key, &files.key).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_ne!(store.current().cert, first.cert);
        assert_eq!(store.reloads(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_and_the_old_certificate_stays() {
        let dir = tempdir("bad");
        let files = self_signed(&dir, "a");
        let store = CertStore::load(&files).unwrap();
        let before = store.current();
        std::fs::write(&files.cert, "not a certificate").unwrap();
        assert!(store.reload_if_changed().is_err());
        assert_eq!(store.current().cert, before.cert);
        // A key of another certificate does not go with this one.
        let other = self_signed(&dir, "b");
        let mixed = TlsFiles {
            cert: other.cert,
            key: files.key.clone(),
        };
        assert!(matches!(
            CertStore::load(&mixed),
            Err(TlsError::Mismatch { .. })
        ));
        assert!(matches!(
            CertStore::load(&TlsFiles {
                cert: dir.join("missing.crt"),
                key: files.key
            }),
            Err(TlsError::Cert { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
