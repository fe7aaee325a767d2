//! TLS on `https://` client URLs (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`, as etcd names them), with rustls and the ring provider.
//!
//! The files are read once, when the member starts; a missing or malformed file stops it with
//! the flag and the reason. ALPN offers `h2` (gRPC) and `http/1.1` (`/health`, `/metrics`,
//! `/version`), so both keep sharing the port as they do without TLS. Traffic between members
//! stays plain TCP (docs/cli.md).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::config::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(flag, path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(flag, path, error))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The acceptor for the member's `https` client listeners.
pub fn acceptor(settings: &ClientTls) -> Result<TlsAcceptor, TlsError> {
    // ring, not rustls's aws-lc-rs default: that one needs cmake to build, which the machines
    // Ballot is built on lack. rustls 0.23.48 marks ring's provider deprecated because it has
    // no post-quantum key exchange; the classical ones (X25519, P-256, P-384) remain.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("--cert-file", &settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|error| file_error("--key-file", &settings.key_file, error))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Setup(error.to_string()))?;
    let builder = match &settings.trusted_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("--trusted-ca-file", path)? {
                roots
                    .add(ca)
                    .map_err(|error| file_error("--trusted-ca-file", path, error))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            // Without --client-cert-auth a certificate is checked when one is presented, as
            // etcd does with a trusted CA file alone.
            let verifier = if settings.client_cert_auth {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|error| TlsError::Setup(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|error| file_error("--key-file", &settings.key_file, error))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
