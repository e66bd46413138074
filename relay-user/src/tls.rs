//! Certificates for TURN over TLS and DTLS: loaded from PEM files, and loaded again when the
//! files change ([`CertStore::reload_if_changed`], polled by the server), or taken inline from
//! the configuration (STUNner's base64 `cert`/`key`; these never change). A new certificate is
//! used by new handshakes only; sessions already open keep theirs.
//!
//! TLS is rustls with the ring provider, TLS 1.2 and 1.3, no client certificates.
use std::{
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

use crate::config::{PemSource, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {from}: {message}")]
    Cert { from: PemSource, message: String },
    #[error("key {from}: {message}")]
    Key { from: PemSource, message: String },
    #[error("certificate {} and key {} do not go together: {message}", material.cert, material.key)]
    Mismatch {
        material: TlsMaterial,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The PEM files as read: the chain and the key, in DER.
pub struct Pem {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The PEM text of `source`.
fn pem_text(source: &PemSource) -> std::io::Result<Vec<u8>> {
    match source {
        PemSource::File(path) => std::fs::read(path),
        PemSource::Inline(pem) => Ok(pem.as_bytes().to_vec()),
    }
}

/// Reads and checks a certificate chain and its key.
pub fn read_pem(material: &TlsMaterial) -> Result<Pem, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        from: material.cert.clone(),
        message,
    };
    let key_error = |message: String| TlsError::Key {
        from: material.key.clone(),
        message,
    };
    let cert_pem = pem_text(&material.cert).map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block".to_owned()));
    }
    let key_pem = pem_text(&material.key).map_err(|e| key_error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(e.to_string()))?;
    Ok(Pem { chain, key })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both files' modification times and sizes (inline PEM: nothing, it never changes): a
/// change to either means "read them again".
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(material: &TlsMaterial) -> Stamp {
    let one = |source: &PemSource| {
        source.path().map_or((None, 0), |path| {
            std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()))
        })
    };
    [one(&material.cert), one(&material.key)]
}

/// A listener's certificate, reloadable.
#[derive(Debug)]
pub struct CertStore {
    material: TlsMaterial,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Stamp>,
    /// How many times a changed certificate was loaded.
    reloads: std::sync::atomic::AtomicU64,
}

impl CertStore {
    pub fn load(material: &TlsMaterial) -> Result<Arc<CertStore>, TlsError> {
        let seen = stamp(material);
        let key = certified_key(material)?;
        Ok(Arc::new(CertStore {
            material: material.clone(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
            reloads: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Where the certificate and key come from.
    pub fn material(&self) -> &TlsMaterial {
        &self.material
    }

    /// Whether anything of it is a file (watched for changes).
    pub fn has_files(&self) -> bool {
        self.material.cert.path().is_some() || self.material.key.path().is_some()
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
        if !self.has_files() {
            return Ok(false);
        }
        let now = stamp(&self.material);
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
        let key = certified_key(&self.material)?;
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

fn certified_key(material: &TlsMaterial) -> Result<CertifiedKey, TlsError> {
    let pem = read_pem(material)?;
    CertifiedKey::from_der(pem.chain, pem.key, &provider()).map_err(|e| TlsError::Mismatch {
        material: material.clone(),
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
    use std::path::{Path, PathBuf};

    /// Writes a fresh self-signed certificate and key for `name` under `dir`, with
    /// openssl(1) (P-256, PKCS#8).
    pub(crate) fn self_signed(dir: &Path, name: &str) -> TlsMaterial {
        let (cert, key) = self_signed_paths(dir, name);
        TlsMaterial::files(cert, key)
    }

    /// The same, inline: the PEM texts, as a configuration holds them after base64 decoding.
    pub(crate) fn self_signed_inline(dir: &Path, name: &str) -> TlsMaterial {
        let (cert, key) = self_signed_paths(dir, name);
        TlsMaterial {
            cert: PemSource::Inline(std::fs::read_to_string(cert).unwrap()),
            key: PemSource::Inline(std::fs::read_to_string(key).unwrap()),
        }
    }

    fn self_signed_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        struct Files {
            cert: PathBuf,
            key: PathBuf,
        }
        let files = Files {
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
        (files.cert, files.key)
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
        let (other_cert, other_key) = self_signed_paths(&dir, "b");
        std::fs::rename(&other_cert, files.cert.path().unwrap()).unwrap();
        std::fs::rename(&other_key, files.key.path().unwrap()).unwrap();
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
        std::fs::write(files.cert.path().unwrap(), "not a certificate").unwrap();
        assert!(store.reload_if_changed().is_err());
        assert_eq!(store.current().cert, before.cert);
        // A key of another certificate does not go with this one.
        let other = self_signed(&dir, "b");
        let mixed = TlsMaterial {
            cert: other.cert,
            key: files.key.clone(),
        };
        assert!(matches!(
            CertStore::load(&mixed),
            Err(TlsError::Mismatch { .. })
        ));
        assert!(matches!(
            CertStore::load(&TlsMaterial {
                cert: PemSource::File(dir.join("missing.crt")),
                key: files.key
            }),
            Err(TlsError::Cert { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inline_material_loads_and_never_reloads() {
        let dir = tempdir("inline");
        let material = self_signed_inline(&dir, "a");
        std::fs::remove_dir_all(&dir).unwrap();
        let store = CertStore::load(&material).unwrap();
        assert!(!store.has_files());
        assert!(!store.reload_if_changed().unwrap());
        assert_eq!(store.reloads(), 0);
        // Errors name the source without its content.
        let broken = TlsMaterial {
            cert: PemSource::Inline("-----BEGIN CERTIFICATE-----\nAAAA\n".to_owned()),
            key: material.key.clone(),
        };
        let e = CertStore::load(&broken).unwrap_err().to_string();
        assert!(e.starts_with("certificate inline PEM ("), "{e}");
        assert!(!format!("{material:?}").contains("PRIVATE KEY"));
    }
}
