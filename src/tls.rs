//! TLS on every listener (`--tls-cert`, `--tls-key`, and `--tls-client-ca` for mutual TLS), with
//! rustls. The certificate and key are read at start (a file that does not load stops the server
//! with what is wrong) and again on SIGHUP: new connections then use the new ones, connections
//! already open keep theirs, and files that do not load leave the old ones in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

/// Where the certificate, its key and the client CA are read from.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
}

/// The TLS configuration the listeners hand new connections.
pub(crate) struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; the error says which one and what is wrong with it.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, String> {
        let config = server_config(&files)?;
        Ok(Self { files, current: RwLock::new(Arc::new(config)) })
    }

    /// What accepts the next connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().expect("tls lock")))
    }

    /// Whether clients must present a certificate signed by `--tls-client-ca`.
    pub(crate) fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again (SIGHUP); on failure the configuration stays as it was.
    pub(crate) async fn reload(&self) {
        let files = self.files.clone();
        match tokio::task::spawn_blocking(move || server_config(&files)).await {
            Ok(Ok(config)) => {
                *self.current.write().expect("tls lock") = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the TLS files were not reloaded; the certificate read before still serves")
            }
            Err(e) => tracing::error!(error = %e, "reloading the TLS files failed"),
        }
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs = certificates(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: no PEM private key could be read ({e})", files.key.display()))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, "--tls-client-ca")? {
                roots.add(cert).map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert {} and --tls-key {}: {e}", files.cert.display(), files.key.display()))?;
    // gRPC clients ask for HTTP/2 by ALPN; browsers and HTTP/1 clients get what they ask for.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every PEM certificate of a file, at least one.
fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display()));
    }
    Ok(certs)
}
