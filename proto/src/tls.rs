//! TLS for the master's port, the agent's HTTP API and every client
//! (rustls, with ring as the one crypto provider). Certificates and keys
//! are PEM files; a client trusts the CA bundle it is given (a cluster has
//! its own CA; `agora certs` makes one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it")]
    NoKey { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificates: {0}")]
    ClientVerifier(String),
}

/// The crypto provider every TLS configuration here uses.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, for libraries (the HTTP
/// client) that take the default. Harmless when already done.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates in a PEM file (a chain, or a CA bundle).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// The private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        path: path.to_path_buf(),
    })
}

/// What a server presents: its certificate chain and key, and optionally
/// the CA whose client certificates it accepts (they are optional: callers
/// may use a bearer token instead).
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// A rustls configuration offering HTTP/2 (gRPC) and HTTP/1.1.
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = load_certificates(&self.certificate)?;
        let key = load_private_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in load_certificates(ca)? {
                    roots.add(certificate)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    crypto_provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a client trusts, and the certificate it presents if any.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM of the CA bundle that signed the servers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of a client certificate and its key (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trust the CA bundle at `ca` (checked to hold certificates), and
    /// present the certificate and key at `identity` if given.
    pub fn load(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<ClientTls, TlsError> {
        let ca_pem = match ca {
            Some(path) => {
                load_certificates(path)?;
                Some(read(path)?)
            }
            None => None,
        };
        let identity = match identity {
            Some((certificate, key)) => {
                load_certificates(certificate)?;
                load_private_key(key)?;
                Some((read(certificate)?, read(key)?))
            }
            None => None,
        };
        Ok(ClientTls { ca_pem, identity })
    }

    /// Settings for a gRPC client of an `https://` URL.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(pem) = &self.ca_pem {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let Some((certificate, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(certificate, key));
        }
        config
    }
}

/// A gRPC endpoint for `url`, with TLS when it is `https://`.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<tonic::transport::Endpoint, String> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if url.starts_with("https://") {
        if tls.ca_pem.is_none() {
            return Err(
                "an https:// master needs the CA that signed its certificate (--tls-ca or AGORA_TLS_CA)"
                    .into(),
            );
        }
        endpoint.tls_config(tls.tonic()).map_err(|e| e.to_string())
    } else {
        Ok(endpoint)
    }
}

/// The SHA-256 of a DER certificate, as hex: how an auth file names a
/// client certificate.
pub fn certificate_sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
