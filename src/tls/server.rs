//! The listeners' TLS configuration, built from the PEM files in `[server.tls]` and rebuilt
//! when they change: connections made before a rotation keep their session, new ones get the
//! new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// Which listener a configuration is for: they differ in the protocols they offer (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// OTLP/gRPC: HTTP/2 only.
    Grpc,
    /// OTLP/HTTP and the API: HTTP/2 or HTTP/1.1.
    Http,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Pem { file: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

struct Loaded {
    /// Digest of the files' contents, to notice a change.
    digest: [u8; 32],
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The current TLS configuration of every listener.
pub struct ServerTls {
    files: TlsConfig,
    loaded: RwLock<Arc<Loaded>>,
}

impl ServerTls {
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let (digest, pems) = read_all(files)?;
        let loaded = build(files, digest, &pems)?;
        Ok(Self {
            files: files.clone(),
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    pub fn config(&self, kind: ListenerKind) -> Arc<ServerConfig> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            ListenerKind::Grpc => loaded.grpc.clone(),
            ListenerKind::Http => loaded.http.clone(),
        }
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// Re-reads the files; when they changed and make a valid configuration, new connections
    /// get it. Returns whether it changed. A half-rotated pair (a new certificate beside the
    /// old key) is an error and the last good configuration stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (digest, pems) = read_all(&self.files)?;
        if digest == self.loaded.read().unwrap_or_else(|p| p.into_inner()).digest {
            return Ok(false);
        }
        let loaded = build(&self.files, digest, &pems)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }
}

struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file: path.to_owned(),
        source,
    })
}

fn read_all(files: &TlsConfig) -> Result<([u8; 32], Pems), TlsError> {
    let pems = Pems {
        cert: read(&files.cert_file)?,
        key: read(&files.key_file)?,
        client_ca: files.client_ca_file.as_deref().map(read).transpose()?,
    };
    let mut hasher = Sha256::new();
    for part in [&pems.cert, &pems.key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    if let Some(ca) = &pems.client_ca {
        hasher.update(ca);
    }
    Ok((hasher.finalize().into(), pems))
}

fn certs(file: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            file: file.to_owned(),
            message: "no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn build(files: &TlsConfig, digest: [u8; 32], pems: &Pems) -> Result<Loaded, TlsError> {
    let chain = certs(&files.cert_file, &pems.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| TlsError::Pem {
        file: files.key_file.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (&files.client_ca_file, &pems.client_ca) {
        (Some(file), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certs(file, pem)? {
                roots.add(ca).map_err(|e| TlsError::Pem {
                    file: file.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let base = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("certificate and key: {e}")))?;
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Loaded {
        digest,
        grpc: with_alpn(&[b"h2"]),
        http: with_alpn(&[b"h2", b"http/1.1"]),
    })
}
