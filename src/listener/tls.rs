//! rustls server configuration: PEM loading, TLS 1.2/1.3 only, ALPN h2 and
//! http/1.1, and certificate choice by SNI (first certificate = default).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::CertificatePaths;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("tls setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// The process-wide crypto provider: ring (no cmake, no C toolchain quirks).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config for all HTTPS listeners.
pub fn server_config(certs: &[CertificatePaths]) -> Result<Arc<rustls::ServerConfig>, Error> {
    server_config_with(Arc::new(Certificates::new(load_all(certs)?)))
}

/// A server config whose certificates are `certs`, swappable on reload.
pub fn server_config_with(certs: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads every certificate and key (all or nothing).
pub fn load_all(certs: &[CertificatePaths]) -> Result<LoadedCertificates, Error> {
    let provider = provider();
    let mut keys = Vec::with_capacity(certs.len());
    for c in certs {
        keys.push(Arc::new(load(c, &provider)?));
    }
    Ok(LoadedCertificates(SniResolver {
        keys,
        by_name: Mutex::new(HashMap::new()),
    }))
}

/// Certificates loaded from disk, not yet serving.
#[derive(Debug)]
pub struct LoadedCertificates(SniResolver);

/// The certificates every HTTPS listener serves; a reload swaps them
/// atomically, and handshakes after the swap get the new ones.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<SniResolver>,
}

impl Certificates {
    pub fn new(loaded: LoadedCertificates) -> Self {
        Self {
            current: ArcSwap::from_pointee(loaded.0),
        }
    }

    pub fn replace(&self, loaded: LoadedCertificates) {
        self.current.store(Arc::new(loaded.0));
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

fn load(paths: &CertificatePaths, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let cert_err = |path: &Path, message: String| Error::Certificate {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| cert_err(&paths.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(&paths.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err(&paths.cert, "no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| cert_err(&paths.key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| cert_err(&paths.key, e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Picks the first certificate valid for the client's SNI name, else the
/// first one. Answers are cached per name (bounded).
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    by_name: Mutex<HashMap<String, usize>>,
}

const SNI_CACHE_LIMIT: usize = 4096;

impl SniResolver {
    fn index_for(&self, name: &str) -> usize {
        let mut cache = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = cache.get(name) {
            return i;
        }
        let index = ServerName::try_from(name)
            .ok()
            .and_then(|server_name| {
                self.keys.iter().position(|key| {
                    key.end_entity_cert().is_ok_and(|der| {
                        webpki::EndEntityCert::try_from(der).is_ok_and(|ee| {
                            ee.verify_is_valid_for_subject_name(&server_name).is_ok()
                        })
                    })
                })
            })
            .unwrap_or(0);
        if cache.len() >= SNI_CACHE_LIMIT {
            // Client-chosen names: never let them grow the cache unbounded.
            cache.clear();
        }
        cache.insert(name.to_owned(), index);
        index
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = hello.server_name().map_or(0, |name| self.index_for(name));
        self.keys.get(index).cloned()
    }
}
