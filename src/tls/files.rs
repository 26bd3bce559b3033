//! Certificate files and the rustls configurations made from them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// A certificate chain, its private key and, for mutual TLS, the CA that signs the
/// other side's certificates (all PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the other side's certificates. On the peer port, every peer
    /// must present one (mutual TLS). On the client port, a client *may* present one
    /// to log in as the user it names (see [`CertFiles::client_port_config`]).
    /// `None`: the other side presents no certificate.
    pub ca: Option<PathBuf>,
}

/// ring, the provider tonic's `tls-ring` feature builds: rustls 0.23.48 deprecates it
/// for lacking post-quantum key exchange, but the alternative (aws-lc-rs) needs a C
/// and CMake build of its own in every image; its classical suites are sound.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::invalid(format!("certificate file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "certificate file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::invalid(format!("private key file {}: {e}", path.display())))
}

fn read_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::invalid(format!("CA file {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{what}: {e}"))
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientCerts {
    /// Refuse a client without a certificate signed by the CA (the peer port).
    Required,
    /// Check a certificate against the CA if the client presents one; serve a client
    /// without one (the client port, where a token is the other way in).
    Optional,
}

impl CertFiles {
    /// The server side: this certificate, and client certificates required and checked
    /// against the CA when one is given. Offers HTTP/2 (gRPC) and HTTP/1.1.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        self.build_server(ClientCerts::Required)
    }

    /// The client port's server side: with a CA, a client may present a certificate,
    /// which must then be signed by that CA (a bad one fails the handshake); a client
    /// without one is served and authenticates with a token.
    pub fn client_port_config(&self) -> Result<rustls::ServerConfig> {
        self.build_server(ClientCerts::Optional)
    }

    fn build_server(&self, client_certs: ClientCerts) -> Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?;
        let builder = match &self.ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    read_roots(ca)?,
                    provider(),
                );
                let verifier = match client_certs {
                    ClientCerts::Required => verifier,
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                }
                .build()
                .map_err(|e| tls_error(&format!("CA file {}", ca.display()), e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| {
                tls_error(
                    &format!(
                        "certificate {} with key {}",
                        self.cert.display(),
                        self.key.display()
                    ),
                    e,
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The calling side of mutual TLS: trust only the CA, present this certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| Error::invalid("a TLS client configuration needs a CA file"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_root_certificates(read_roots(ca)?)
            .with_client_auth_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| {
                tls_error(
                    &format!(
                        "certificate {} with key {}",
                        self.cert.display(),
                        self.key.display()
                    ),
                    e,
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Whether this CA file and `other`'s hold a certificate in common: then a
    /// certificate one port trusts is trusted by the other too.
    pub fn shares_ca_with(&self, other: &CertFiles) -> bool {
        let (Some(a), Some(b)) = (&self.ca, &other.ca) else {
            return false;
        };
        let (Ok(a), Ok(b)) = (read_certs(a), read_certs(b)) else {
            return false;
        };
        a.iter().any(|c| b.contains(c))
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [Some(&self.cert), Some(&self.key), self.ca.as_ref()]
            .into_iter()
            .flatten()
    }

    /// What the files look like on disk now: size, modification time and inode of
    /// each (a rename onto the path, as Kubernetes does for secrets, changes the inode).
    fn fingerprint(&self) -> Vec<Option<(u64, SystemTime, u64)>> {
        self.paths()
            .map(|p| {
                let meta = std::fs::metadata(p).ok()?;
                Some((meta.len(), meta.modified().ok()?, inode(&meta)))
            })
            .collect()
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

type Fingerprint = Vec<Option<(u64, SystemTime, u64)>>;

struct Loaded<T> {
    fingerprint: Fingerprint,
    config: Arc<T>,
    /// The fingerprint of files that failed to load, so the failure is logged once.
    failed: Option<Fingerprint>,
}

/// A rustls configuration that follows its files on disk.
pub struct Reloading<T> {
    files: CertFiles,
    build: fn(&CertFiles) -> Result<T>,
    /// A std mutex: held for a stat of three files, or (rarely) a rebuild.
    loaded: Mutex<Loaded<T>>,
}

impl<T> Reloading<T> {
    /// Load the files now; a node with unusable certificates does not start.
    pub fn new(files: CertFiles, build: fn(&CertFiles) -> Result<T>) -> Result<Self> {
        let fingerprint = files.fingerprint();
        let config = Arc::new(build(&files)?);
        Ok(Reloading {
            files,
            build,
            loaded: Mutex::new(Loaded {
                fingerprint,
                config,
                failed: None,
            }),
        })
    }

    /// The configuration for a new connection: rebuilt first if the files changed.
    pub fn current(&self) -> Arc<T> {
        let mut loaded = crate::lock(&self.loaded);
        let now = self.files.fingerprint();
        if now != loaded.fingerprint && loaded.failed.as_ref() != Some(&now) {
            match (self.build)(&self.files) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed: reloaded");
                    loaded.config = Arc::new(config);
                    loaded.fingerprint = now;
                    loaded.failed = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate files changed but cannot be loaded; still using the previous ones");
                    loaded.failed = Some(now);
                }
            }
        }
        loaded.config.clone()
    }
}

impl Reloading<rustls::ServerConfig> {
    pub fn server(files: CertFiles) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::new(files, CertFiles::server_config)?))
    }

    /// The client port: client certificates optional (see
    /// [`CertFiles::client_port_config`]).
    pub fn client_port(files: CertFiles) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::new(files, CertFiles::client_port_config)?))
    }
}

impl Reloading<rustls::ClientConfig> {
    pub fn client(files: CertFiles) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::new(files, CertFiles::client_config)?))
    }
}
