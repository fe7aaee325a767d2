//! TLS with rustls and the ring provider, on `https://` client URLs (`--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--client-crl-file`, as etcd names
//! them) and between members whose peer URLs are `https://` (`--peer-cert-file`,
//! `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`, `--peer-crl-file`).
//! A revocation list refuses the certificates it names, and only those.
//!
//! The files are read when the member starts; a missing or malformed file stops it with the
//! flag and the reason. The certificate and key files are read again at a handshake after they
//! change ([`ReloadingIdentity`]), so a certificate is renewed without a restart. On client URLs ALPN offers `h2` (gRPC) and `http/1.1` (`/health`,
//! `/metrics`, `/version`), so both keep sharing the port as they do without TLS. Between
//! members the certificate is both the server's and the client's, and a peer's certificate must
//! be signed by `--peer-trusted-ca-file` and name the host of the peer URL dialled.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use x509_parser::extensions::GeneralName;

use crate::config::{ClientTls, PeerTls, SelfSigned};

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

fn private_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| file_error(flag, path, error))
}

fn roots(flag: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(flag, path)? {
        roots
            .add(ca)
            .map_err(|error| file_error(flag, path, error))?;
    }
    Ok(Arc::new(roots))
}

/// A revocation list file: PEM (one or more `X509 CRL` blocks) or a DER file.
fn revocation_lists(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| file_error(flag, path, error))?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(flag, path, error))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() != Some(&0x30) {
        return Err(file_error(
            flag,
            path,
            "neither a PEM nor a DER revocation list",
        ));
    }
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// The revocation lists of `file`, if given.
fn optional_revocation_lists(
    flag: &'static str,
    file: Option<&Path>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    file.map_or(Ok(Vec::new()), |path| revocation_lists(flag, path))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider())
}

fn ring_provider() -> CryptoProvider {
    // ring, not rustls's aws-lc-rs default: that one needs cmake to build, which the machines
    // Ballot is built on lack. rustls 0.23.48 marks ring's provider deprecated because it has
    // no post-quantum key exchange; the classical ones (X25519, P-256, P-384) remain.
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

/// Go's names for the TLS 1.2 suites Ballot can offer (etcd's `--cipher-suites` takes Go's
/// names), with the older aliases Go still accepts for ChaCha20.
const TLS12_SUITE_ALIASES: [(&str, &str); 2] = [
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The TLS 1.2 suites `names` selects, in the order given (`--cipher-suites`): Go's names, as
/// etcd takes them. An empty list selects every suite. A name Ballot does not offer (the
/// CBC, RC4, 3DES and plain-RSA suites Go still knows, or a typo) is an error naming the ones
/// it does.
pub fn tls12_suites(names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let available: Vec<rustls::SupportedCipherSuite> = ring_provider()
        .cipher_suites
        .into_iter()
        .filter(|suite| suite.tls13().is_none())
        .collect();
    if names.is_empty() {
        return Ok(available);
    }
    let name_of = |suite: &rustls::SupportedCipherSuite| suite.suite().as_str().unwrap_or("");
    let mut chosen = Vec::new();
    for given in names {
        let name = TLS12_SUITE_ALIASES
            .iter()
            .find(|(alias, _)| alias == given)
            .map_or(given.as_str(), |(_, name)| name);
        match available.iter().find(|suite| name_of(suite) == name) {
            Some(suite) if !chosen.contains(suite) => chosen.push(*suite),
            Some(_) => {}
            None => {
                let offered: Vec<&str> = available.iter().map(name_of).collect();
                return Err(format!(
                    "unsupported cipher suite '{given}' (supported: {})",
                    offered.join(", ")
                ));
            }
        }
    }
    Ok(chosen)
}

/// The provider for a member's TLS: every TLS 1.3 suite, and the TLS 1.2 suites of
/// `--cipher-suites` (all when none are named; Go, and so etcd, applies the list to TLS 1.2
/// only).
fn member_provider(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = ring_provider();
    let tls12 = tls12_suites(cipher_suites).map_err(TlsError::Setup)?;
    provider
        .cipher_suites
        .retain(|suite| suite.tls13().is_some());
    provider.cipher_suites.extend(tls12);
    Ok(Arc::new(provider))
}

fn setup_error(error: impl ToString) -> TlsError {
    TlsError::Setup(error.to_string())
}

/// How a server checks client certificates against `roots`: one is required when `required`,
/// else it is checked when presented (as etcd does with a trusted CA file alone). A
/// certificate listed in `crls` is refused; one whose issuer published none of them is not
/// (etcd refuses only what its CRL lists).
fn client_cert_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    required: bool,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status();
    if required {
        verifier.build()
    } else {
        verifier.allow_unauthenticated().build()
    }
    .map_err(setup_error)
}

/// `--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname` and
/// `--client-cert-allowed-hostname`: a peer's or client's certificate, once verified against
/// the CA (and its revocation list), must also carry that common name and be valid for that
/// host name, as etcd checks them.
/// Each required name or host comes with its flag, named in the reason logged with a refusal.
#[derive(Debug)]
struct IdentityCheck {
    verifier: Arc<dyn ClientCertVerifier>,
    allowed_cn: Option<(&'static str, String)>,
    allowed_hostname: Option<(&'static str, ServerName<'static>)>,
    /// What is refused: "a peer connection", "a client connection".
    refused: &'static str,
}

/// `verifier` with an [`IdentityCheck`] when a name or host is required (each given with its
/// flag).
fn with_identity_check(
    verifier: Arc<dyn ClientCertVerifier>,
    allowed_cn: Option<(&'static str, &String)>,
    allowed_hostname: Option<(&'static str, &String)>,
    refused: &'static str,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if allowed_cn.is_none() && allowed_hostname.is_none() {
        return Ok(verifier);
    }
    let allowed_hostname = allowed_hostname
        .map(|(flag, host)| {
            ServerName::try_from(host.clone())
                .map(|name| (flag, name))
                .map_err(|error| TlsError::Setup(format!("{flag} {host:?}: {error}")))
        })
        .transpose()?;
    Ok(Arc::new(IdentityCheck {
        verifier,
        allowed_cn: allowed_cn.map(|(flag, name)| (flag, name.clone())),
        allowed_hostname,
        refused,
    }))
}

impl IdentityCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        if let Some((flag, allowed)) = &self.allowed_cn {
            let (_, certificate) = x509_parser::parse_x509_certificate(end_entity.as_ref())
                .map_err(|error| format!("unreadable certificate: {error}"))?;
            let names: Vec<&str> = certificate
                .subject()
                .iter_common_name()
                .filter_map(|name| name.as_str().ok())
                .collect();
            if !names.iter().any(|name| name == allowed) {
                return Err(format!("common name {names:?} is not {flag} {allowed:?}"));
            }
        }
        if let Some((flag, allowed)) = &self.allowed_hostname {
            webpki::EndEntityCert::try_from(end_entity)
                .map_err(|error| format!("unreadable certificate: {error}"))?
                .verify_is_valid_for_subject_name(allowed)
                .map_err(|_| format!("not valid for {flag} {allowed:?}"))?;
        }
        Ok(())
    }
}

impl ClientCertVerifier for IdentityCheck {
    fn offer_client_auth(&self) -> bool {
        self.verifier.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.verifier.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.verifier.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check(end_entity).map_err(|reason| {
            tracing::warn!(%reason, "refused {}", self.refused);
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// Makes the self-signed certificate of `--auto-tls` or `--peer-auto-tls` (`flag`) unless its
/// files are already there: an ECDSA P-256 key and a certificate for `made.hosts`, valid from
/// now for `made.validity_years`, as etcd makes them. The directory and the key file are for
/// their owner only. Files from an earlier start are kept, so a member's certificate stays the
/// same.
pub fn ensure_self_signed(flag: &'static str, made: &SelfSigned) -> Result<(), TlsError> {
    let (cert_file, key_file) = (made.cert_file(), made.key_file());
    if cert_file.exists() && key_file.exists() {
        return Ok(());
    }
    let failed = |reason: String| TlsError::Setup(format!("{flag}: {reason}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|error| failed(format!("cannot make a key: {error}")))?;
    let mut params = rcgen::CertificateParams::new(made.hosts.clone())
        .map_err(|error| failed(format!("hosts {:?}: {error}", made.hosts)))?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, "ballot");
    params.distinguished_name = name;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(made.validity_years.max(1)));
    let certificate = params
        .self_signed(&key)
        .map_err(|error| failed(format!("cannot sign the certificate: {error}")))?;
    let write = |path: &Path, contents: String, mode: u32| {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&made.dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(path)
            })
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .map_err(|error| failed(format!("cannot write {}: {error}", path.display())))
    };
    write(&key_file, key.serialize_pem(), 0o600)?;
    write(&cert_file, certificate.pem(), 0o644)?;
    tracing::info!(
        cert = %cert_file.display(),
        hosts = ?made.hosts,
        "made a self-signed certificate ({flag})"
    );
    Ok(())
}

/// A certificate and its key, read from their files and read again at a handshake when either
/// file has changed (inode, size or modification time), so a renewed certificate is used without a
/// restart (etcd reads the files at every handshake). A renewal that cannot be loaded (a file
/// still being written, a key that does not match the certificate) is logged and the previous
/// pair stays in use until the files change again.
#[derive(Debug)]
pub struct ReloadingIdentity {
    files: IdentityFiles,
    state: Mutex<IdentityState>,
}

/// Where a certificate and its key are read from, and the flags that named the files.
#[derive(Debug)]
struct IdentityFiles {
    cert_flag: &'static str,
    cert_file: PathBuf,
    key_flag: &'static str,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
struct IdentityState {
    current: Arc<CertifiedKey>,
    /// The files as `current` was read from them.
    read_from: FileStamps,
    /// The files as a reload last failed on them: not tried again until they change.
    failed_on: Option<FileStamps>,
}

/// Inode, size and modification time of the certificate and key files (`None`: unreadable):
/// a file replaced by a rename (as Kubernetes swaps a secret's files) has a new inode.
type FileStamps = [Option<(u64, u64, SystemTime)>; 2];

impl ReloadingIdentity {
    /// Reads the pair; an error here stops the member's start.
    pub fn load(
        (cert_flag, cert_file): (&'static str, &Path),
        (key_flag, key_file): (&'static str, &Path),
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingIdentity, TlsError> {
        let files = IdentityFiles {
            cert_flag,
            cert_file: cert_file.to_path_buf(),
            key_flag,
            key_file: key_file.to_path_buf(),
            provider,
        };
        let read_from = files.stamps();
        let current = Arc::new(files.read()?);
        Ok(ReloadingIdentity {
            files,
            state: Mutex::new(IdentityState {
                current,
                read_from,
                failed_on: None,
            }),
        })
    }

    /// The pair to present now, read again first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let stamps = self.files.stamps();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if stamps != state.read_from && state.failed_on != Some(stamps) {
            match self.files.read() {
                Ok(renewed) => {
                    tracing::info!(
                        cert = %self.files.cert_file.display(),
                        "read the renewed certificate"
                    );
                    state.current = Arc::new(renewed);
                    state.read_from = stamps;
                    state.failed_on = None;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "the certificate or key file changed but cannot be used; \
                         the previous certificate stays in use"
                    );
                    state.failed_on = Some(stamps);
                }
            }
        }
        Arc::clone(&state.current)
    }
}

impl IdentityFiles {
    fn stamps(&self) -> FileStamps {
        let stamp = |path: &Path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((
                std::os::unix::fs::MetadataExt::ino(&metadata),
                metadata.len(),
                metadata.modified().ok()?,
            ))
        };
        [stamp(&self.cert_file), stamp(&self.key_file)]
    }

    fn read(&self) -> Result<CertifiedKey, TlsError> {
        let certs = certificates(self.cert_flag, &self.cert_file)?;
        let key = private_key(self.key_flag, &self.key_file)?;
        CertifiedKey::from_der(certs, key, &self.provider)
            .map_err(|error| file_error(self.key_flag, &self.key_file, error))
    }
}

impl rustls::server::ResolvesServerCert for ReloadingIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The acceptor for the member's `https` client listeners.
pub fn acceptor(settings: &ClientTls) -> Result<TlsAcceptor, TlsError> {
    if let Some(made) = &settings.self_signed {
        ensure_self_signed("--auto-tls", made)?;
    }
    let provider = member_provider(&settings.cipher_suites)?;
    let identity = ReloadingIdentity::load(
        ("--cert-file", &settings.cert_file),
        ("--key-file", &settings.key_file),
        Arc::clone(&provider),
    )?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?;
    let builder = match &settings.trusted_ca_file {
        Some(path) => {
            let roots = roots("--trusted-ca-file", path)?;
            let crls =
                optional_revocation_lists("--client-crl-file", settings.crl_file.as_deref())?;
            builder.with_client_cert_verifier(with_identity_check(
                client_cert_verifier(roots, &provider, settings.client_cert_auth, crls)?,
                None,
                settings
                    .allowed_hostname
                    .as_ref()
                    .map(|host| ("--client-cert-allowed-hostname", host)),
                "a client connection",
            )?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(identity));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Both ends of TLS between members: the acceptor for `https` peer listeners and the connector
/// for dialling `https` peer URLs.
#[derive(Clone)]
pub struct PeerTlsConfig {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    /// Check a connecting peer's certificate against its address ([`check_client_san`]);
    /// off with `--experimental-peer-skip-client-san-verification`.
    pub verify_client_san: bool,
}

/// Loads the peer TLS files: this member's certificate serves both ends, and peers are checked
/// against the trusted CA both ways (accepting: a certificate is required with
/// `--peer-client-cert-auth`, else checked when presented, as etcd does).
///
/// With `--peer-auto-tls` (no trusted CA) the connection is encrypted but not authenticated, as
/// etcd's is: a connecting peer is not asked for a certificate, and a dialled peer's
/// certificate is not checked beyond the handshake's proof that it holds the key.
pub fn peer(settings: &PeerTls) -> Result<PeerTlsConfig, TlsError> {
    if let Some(made) = &settings.self_signed {
        ensure_self_signed("--peer-auto-tls", made)?;
    }
    let provider = member_provider(&settings.cipher_suites)?;
    let identity = Arc::new(ReloadingIdentity::load(
        ("--peer-cert-file", &settings.cert_file),
        ("--peer-key-file", &settings.key_file),
        Arc::clone(&provider),
    )?);
    let Some(trusted_ca_file) = &settings.trusted_ca_file else {
        return unverified_peer(provider, identity);
    };
    let roots = roots("--peer-trusted-ca-file", trusted_ca_file)?;

    let crls = optional_revocation_lists("--peer-crl-file", settings.crl_file.as_deref())?;
    let verifier = with_identity_check(
        client_cert_verifier(
            Arc::clone(&roots),
            &provider,
            settings.client_cert_auth,
            crls.clone(),
        )?,
        settings
            .allowed_cn
            .as_ref()
            .map(|name| ("--peer-cert-allowed-cn", name)),
        settings
            .allowed_hostname
            .as_ref()
            .map(|host| ("--peer-cert-allowed-hostname", host)),
        "a peer connection",
    )?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    let client = client_config(roots, provider, Some(identity), crls)?;
    Ok(PeerTlsConfig {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        verify_client_san: !settings.skip_client_san_verification,
    })
}

/// etcd's check of the certificate a connecting peer presented against the address it connects
/// from (`checkCertSAN` in etcd's transport package): a certificate with no IP or DNS subject
/// alternative names passes; otherwise the address must be one of its IP names, or one of its
/// DNS names must be the address's reverse (PTR) name (`*.` names match its suffix) or resolve
/// to the address. So a certificate stolen from one member is of no use from another host.
/// The error says why, in etcd's words.
pub async fn check_client_san(
    certificate: &CertificateDer<'_>,
    remote: IpAddr,
) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| format!("unreadable certificate: {error}"))?;
    let mut ips = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(names)) = parsed.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    if ips.is_empty() && dns_names.is_empty() {
        return Ok(());
    }
    let remote = remote.to_canonical();
    if !ips.is_empty() {
        if ips.contains(&remote) {
            return Ok(());
        }
        if dns_names.is_empty() {
            let valid: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            return Err(format!(
                "x509: certificate is valid for {}, not {remote}",
                valid.join(", ")
            ));
        }
    }
    let (wildcards, names): (Vec<&String>, Vec<&String>) =
        dns_names.iter().partition(|name| name.starts_with("*."));
    for reverse in reverse_lookup(remote).await {
        let reverse = reverse.trim_end_matches('.');
        if names.iter().any(|name| name.as_str() == reverse)
            || wildcards
                .iter()
                .any(|wildcard| reverse.ends_with(&wildcard[1..]))
        {
            return Ok(());
        }
    }
    for name in names {
        if let Ok(addresses) = tokio::net::lookup_host((name.as_str(), 0)).await
            && addresses
                .map(|address| address.ip().to_canonical())
                .any(|ip| ip == remote)
        {
            return Ok(());
        }
    }
    Err(format!(
        "tls: {:?} does not match any of DNSNames {dns_names:?}",
        remote.to_string()
    ))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The names `ip` resolves back to, as Go's resolver gives them to etcd: every name the hosts
/// file gives it, then the system resolver's (getnameinfo; for DNS, the PTR record's name).
async fn reverse_lookup(ip: IpAddr) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut names = std::fs::read_to_string(HOSTS_FILE)
            .map(|hosts| hosts_file_names(&hosts, ip))
            .unwrap_or_default();
        if let Some(name) = name_info(ip)
            && !names.contains(&name)
        {
            names.push(name);
        }
        names
    })
    .await
    .unwrap_or_default()
}

const HOSTS_FILE: &str = "/etc/hosts";

/// Every name a hosts file gives `ip` (canonical and aliases, in the file's order), as Go's
/// resolver reads it.
fn hosts_file_names(hosts: &str, ip: IpAddr) -> Vec<String> {
    hosts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('#').next()?.split_whitespace();
            let address: IpAddr = fields.next()?.parse().ok()?;
            (address.to_canonical() == ip).then_some(fields)
        })
        .flatten()
        .map(str::to_owned)
        .collect()
}

/// The system resolver's name for `ip` (getnameinfo with `NI_NAMEREQD`), if it has one.
fn name_info(ip: IpAddr) -> Option<String> {
    let address = std::net::SocketAddr::new(ip, 0);
    let (storage, length) = socket_address(&address);
    let mut host = [0 as libc::c_char; 1025]; // NI_MAXHOST
    // SAFETY: `storage` holds a socket address of `length` bytes and `host` is a writable
    // buffer of the length given; getnameinfo writes a NUL-terminated name into it.
    let result = unsafe {
        libc::getnameinfo(
            (&raw const storage).cast::<libc::sockaddr>(),
            length,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if result != 0 {
        return None;
    }
    // SAFETY: on success getnameinfo left a NUL-terminated string in `host`.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

/// `address` as the C socket address getnameinfo takes.
fn socket_address(address: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (empty) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any socket address.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

/// Both ends of `--peer-auto-tls`: no client certificates asked for, servers' certificates
/// taken unverified ([`AnyServerCertificate`]).
fn unverified_peer(
    provider: Arc<CryptoProvider>,
    identity: Arc<ReloadingIdentity>,
) -> Result<PeerTlsConfig, TlsError> {
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    let client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
        .with_no_client_auth();
    Ok(PeerTlsConfig {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        // No connecting peer is asked for a certificate, so there is none to check.
        verify_client_san: false,
    })
}

/// `--peer-auto-tls`'s dialling side: every member's certificate is self-signed, so none can be
/// verified; the handshake's signatures are still checked (the peer holds the key of the
/// certificate it sent), which keeps the session encrypted to that peer.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate a client presents, with the key's flag and file for an error.
/// A client's TLS settings: servers verified against `roots` (and refused when `crls` lists
/// them), presenting `identity` if given.
fn client_config(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    identity: Option<Arc<ReloadingIdentity>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<ClientConfig, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(setup_error)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?
        .with_webpki_verifier(verifier);
    Ok(match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    })
}

/// The connector of a gRPC client (`ballot bench` on `https` endpoints): servers verified
/// against `--cacert`, a client certificate from `--cert` and `--key` if given (etcdctl's flag
/// names), ALPN `h2`.
pub fn grpc_connector(
    cacert: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<TlsConnector, TlsError> {
    let provider = provider();
    let roots = roots("--cacert", cacert)?;
    let identity = match identity {
        Some((cert, key)) => Some(Arc::new(ReloadingIdentity::load(
            ("--cert", cert),
            ("--key", key),
            Arc::clone(&provider),
        )?)),
        None => None,
    };
    let mut config = client_config(roots, provider, identity, Vec::new())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_for_the_hosts() {
        let dir = std::env::temp_dir().join(format!("ballot-self-signed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = SelfSigned {
            dir: dir.join("fixtures").join("client"),
            hosts: vec!["127.0.0.1".into(), "member-a.example".into()],
            validity_years: 2,
        };
        ensure_self_signed("--auto-tls", &made).expect("made");
        let pem = std::fs::read(made.cert_file()).expect("cert.pem");
        let (_, der) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        let certificate = der.parse_x509().expect("X.509");
        let names: Vec<String> = certificate
            .subject_alternative_name()
            .expect("extension")
            .expect("SANs")
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(
            names,
            ["IPAddress(7f:00:00:01)", "DNSName(member-a.example)"]
        );
        let validity = certificate.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert_eq!(days, 730);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(made.key_file())
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart keeps the certificate it made.
        ensure_self_signed("--auto-tls", &made).expect("kept");
        assert_eq!(std::fs::read(made.cert_file()).expect("cert.pem"), pem);
        // And both ends of peer TLS load from it.
        let settings = PeerTls {
            cert_file: made.cert_file(),
            key_file: made.key_file(),
            trusted_ca_file: None,
            client_cert_auth: false,
            crl_file: None,
            cipher_suites: Vec::new(),
            allowed_cn: None,
            allowed_hostname: None,
            self_signed: Some(made.clone()),
            skip_client_san_verification: false,
        };
        assert!(peer(&settings).is_ok());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// Writes `text` to `path` with the modification time `second` seconds after the epoch, so
    /// each change is seen whatever the clock's granularity.
    fn write_at(path: &Path, text: &str, second: u64) {
        std::fs::write(path, text).expect("write");
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| {
                file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(second))
            })
            .expect("set the modification time");
    }

    #[test]
    fn a_renewed_certificate_is_read_at_the_next_handshake_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("ballot-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("sign");
            (cert.pem(), key.serialize_pem(), cert.der().clone())
        };
        let (first_cert, first_key, first_der) = pair("first.example");
        write_at(&cert_file, &first_cert, 1);
        write_at(&key_file, &first_key, 1);
        let identity = ReloadingIdentity::load(
            ("--cert-file", &cert_file),
            ("--key-file", &key_file),
            provider(),
        )
        .expect("load");
        assert_eq!(identity.current().cert[0], first_der);
        assert_eq!(identity.current().cert[0], first_der, "unchanged files");

        let (second_cert, second_key, second_der) = pair("second.example");
        write_at(&cert_file, &second_cert, 2);
        write_at(&key_file, &second_key, 2);
        assert_eq!(identity.current().cert[0], second_der, "renewed");

        // Half written, then a certificate with another's key: the renewed pair stays.
        write_at(&cert_file, &second_cert[..40], 3);
        assert_eq!(identity.current().cert[0], second_der);
        let (third_cert, third_key, third_der) = pair("third.example");
        write_at(&cert_file, &third_cert, 4);
        assert_eq!(
            identity.current().cert[0],
            second_der,
            "the key does not match"
        );
        write_at(&key_file, &third_key, 4);
        assert_eq!(identity.current().cert[0], third_der, "both files renewed");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A self-signed certificate for `names` (IP addresses or DNS names).
    fn certificate_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        params.self_signed(&key).expect("sign").der().clone()
    }

    #[tokio::test]
    async fn a_peer_certificate_must_name_the_address_it_comes_from() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let elsewhere: IpAddr = "10.1.2.3".parse().unwrap();
        let check = |names: &'static [&'static str], from: IpAddr| async move {
            check_client_san(&certificate_for(names), from).await
        };
        // No addresses or names in the certificate: nothing to check.
        assert_eq!(check(&[], elsewhere).await, Ok(()));
        assert_eq!(check(&["127.0.0.1"], loopback).await, Ok(()));
        assert_eq!(
            check(&["127.0.0.1"], "::ffff:127.0.0.1".parse().unwrap()).await,
            Ok(()),
            "an IPv4 peer on a dual-stack listener"
        );
        assert_eq!(
            check(&["127.0.0.1"], elsewhere).await,
            Err("x509: certificate is valid for 127.0.0.1, not 10.1.2.3".into())
        );
        // A DNS name that resolves to the address (forward or reverse) passes.
        assert_eq!(check(&["localhost"], loopback).await, Ok(()));
        assert_eq!(check(&["10.9.9.9", "localhost"], loopback).await, Ok(()));
        assert_eq!(
            check(&["members.invalid"], loopback).await,
            Err(r#"tls: "127.0.0.1" does not match any of DNSNames ["members.invalid"]"#.into())
        );
        assert!(check(&["*.invalid"], loopback).await.is_err());
        assert!(check(&["localhost"], elsewhere).await.is_err());
    }

    #[test]
    fn every_name_the_hosts_file_gives_an_address_counts() {
        let hosts = "# comment 10.0.0.1 commented\n\
                     127.0.0.1 localhost\n\
                     10.0.0.1\tm1.example m1 # first member\n\
                     ::ffff:10.0.0.2 m2.example\n\
                     fe80::1%eth0 zoned\n\
                     not-an-address m9\n\
                     10.0.0.1 m1-alias\n";
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            hosts_file_names(hosts, ip("10.0.0.1")),
            ["m1.example", "m1", "m1-alias"]
        );
        assert_eq!(hosts_file_names(hosts, ip("10.0.0.2")), ["m2.example"]);
        assert!(hosts_file_names(hosts, ip("10.0.0.3")).is_empty());
    }

    fn names(suites: &[rustls::SupportedCipherSuite]) -> Vec<&'static str> {
        suites
            .iter()
            .map(|suite| suite.suite().as_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn cipher_suites_take_gos_names_in_the_order_given() {
        assert_eq!(tls12_suites(&[]).expect("all").len(), 6);
        let given = [
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ]
        .map(str::to_owned);
        assert_eq!(
            names(&tls12_suites(&given).expect("known")),
            [
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        let error =
            tls12_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()]).expect_err("a CBC suite");
        assert!(
            error.starts_with(
                "unsupported cipher suite 'TLS_RSA_WITH_AES_128_CBC_SHA' (supported: "
            ),
            "{error}"
        );
        // TLS 1.3 stays on whatever the list.
        let provider = member_provider(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()])
            .expect("provider");
        assert_eq!(
            provider
                .cipher_suites
                .iter()
                .filter(|suite| suite.tls13().is_none())
                .count(),
            1
        );
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|suite| suite.tls13().is_some())
        );
    }
}
