//! TLS with real `ballot` processes. On `https://` client URLs, with a gRPC client over TLS:
//! server certificates, client certificates (`--client-cert-auth`), refusals, and clear errors
//! for bad certificate files. Between members on `https://` peer URLs: a three-member cluster
//! replicating and catching up over TLS, and its peer port refusing plain text and certificates
//! from another CA. Certificates are made for each test with rcgen.

mod api_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api_support::{Cluster, TempDir, eventually, free_port, get, put};
use ballot_proto::etcdserverpb::kv_client::KvClient;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, date_time_ymd,
};
use tonic::transport::{Certificate as CaCertificate, Channel, ClientTlsConfig, Identity};

/// A CA, and PEM files under `dir` for a server certificate (localhost and 127.0.0.1) and a
/// client certificate, both signed by it.
struct Pki {
    ca_pem: String,
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert_pem: String,
    client_key_pem: String,
    /// A client certificate from the same CA, listed in `crl_file`.
    revoked_cert_pem: String,
    revoked_key_pem: String,
    crl_file: PathBuf,
}

fn leaf(
    names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    leaf_with_serial(names, usages, ca, ca_key, None)
}

fn leaf_with_serial(
    names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca: &Certificate,
    ca_key: &KeyPair,
    serial: Option<u64>,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(names).expect("params");
    params.extended_key_usages = usages;
    params.serial_number = serial.map(SerialNumber::from);
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// The serial number of the certificates the test CRLs revoke.
const REVOKED_SERIAL: u64 = 0x5ea1;

/// A revocation list from `ca` listing [`REVOKED_SERIAL`], in PEM.
fn revocation_list(ca: &Certificate, ca_key: &KeyPair) -> String {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2026, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(REVOKED_SERIAL),
            revocation_time: date_time_ymd(2026, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(ca, ca_key)
    .expect("sign the CRL")
    .pem()
    .expect("CRL PEM")
}

fn certificate_authority(name: &str) -> (Certificate, KeyPair) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    (ca, ca_key)
}

fn pki(dir: &Path) -> Pki {
    let (ca, ca_key) = certificate_authority("ballot test CA");
    let (server_pem, server_key_pem) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        &ca,
        &ca_key,
    );
    let (client_cert_pem, client_key_pem) = leaf(
        vec!["client".into()],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &ca,
        &ca_key,
    );
    let (revoked_cert_pem, revoked_key_pem) = leaf_with_serial(
        vec!["revoked".into()],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &ca,
        &ca_key,
        Some(REVOKED_SERIAL),
    );
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    };
    Pki {
        ca_pem: ca.pem(),
        ca_file: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key_pem),
        client_cert_pem,
        client_key_pem,
        revoked_cert_pem,
        revoked_key_pem,
        crl_file: write("crl.pem", &revocation_list(&ca, &ca_key)),
    }
}

/// A one-member `ballot` serving clients on `https://127.0.0.1:<port>`; killed on drop.
struct Member {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, tls_args: &[&str]) -> Member {
    let port = free_port();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("https://127.0.0.1:{port}");
    let log = dir.join("member.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_ballot"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--wal-segment-bytes", "4194304"])
        .args(tls_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start ballot");
    Member { child, port, log }
}

async fn tls_channel(port: u16, pki: &Pki, with_client_cert: bool) -> Result<Channel, String> {
    let identity = with_client_cert.then_some((&pki.client_cert_pem, &pki.client_key_pem));
    tls_channel_as(port, pki, identity).await
}

/// A TLS channel presenting `identity` (certificate and key PEM) if given.
async fn tls_channel_as(
    port: u16,
    pki: &Pki,
    identity: Option<(&String, &String)>,
) -> Result<Channel, String> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(CaCertificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|error| error.to_string())?
        .tls_config(config)
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

/// A TLS channel to `member` once it accepts one (the member may still be starting).
async fn connect_tls(member: &Member, pki: &Pki, with_client_cert: bool) -> Channel {
    let connected = eventually("a TLS connection", || async {
        tls_channel(member.port, pki, with_client_cert).await.ok()
    })
    .await;
    connected.unwrap_or_else(|| {
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        panic!("no TLS connection; log:\n{log}")
    })
}

/// A put and a read over `channel` once the member has a leader.
async fn put_and_get(channel: Channel) -> Result<(), String> {
    let mut kv = KvClient::new(channel);
    let stored = eventually("a put over TLS", || {
        let mut kv = kv.clone();
        async move { kv.put(put("secure", "yes")).await.ok() }
    })
    .await;
    stored.ok_or("no put succeeded")?;
    let got = kv
        .range(get("secure"))
        .await
        .map_err(|status| status.to_string())?;
    match got.into_inner().kvs.first() {
        Some(kv) if kv.value.as_ref() == b"yes" => Ok(()),
        other => Err(format!("read back {other:?}")),
    }
}

fn files(pki: &Pki) -> [&str; 4] {
    [
        "--cert-file",
        pki.server_cert.to_str().expect("UTF-8 path"),
        "--key-file",
        pki.server_key.to_str().expect("UTF-8 path"),
    ]
}

/// A member serving clients over TLS with a fresh [`pki`] under a new directory, once a put
/// and a read over TLS have worked.
async fn serving_over_tls(tag: &str) -> (TempDir, Pki, Member) {
    let dir = TempDir::new(tag);
    let pki = pki(&dir.0);
    let member = start(&dir.0, &files(&pki));
    let channel = connect_tls(&member, &pki, false).await;
    put_and_get(channel).await.expect("KV over TLS");
    (dir, pki, member)
}

#[tokio::test]
async fn https_client_urls_serve_grpc_over_tls_and_refuse_plain_text() {
    let (_dir, _pki, member) = serving_over_tls("tls").await;

    // A plain-text gRPC client gets no answer from the TLS port.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", member.port))
        .expect("URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(plain) = plain {
        let answer = KvClient::new(plain).range(get("secure")).await;
        assert!(answer.is_err(), "plain text answered: {answer:?}");
    }
}

/// A member reads its certificate and key again when their files change (etcd reads them at
/// every handshake): after a renewal by another CA, new connections get the new certificate
/// without a restart.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let (dir, first, member) = serving_over_tls("tls-renew").await;

    let renewed_dir = dir.0.join("renewed");
    std::fs::create_dir_all(&renewed_dir).expect("dir");
    let renewed = pki(&renewed_dir);
    std::fs::copy(&renewed.server_cert, &first.server_cert).expect("renew the certificate");
    std::fs::copy(&renewed.server_key, &first.server_key).expect("renew the key");
    let channel = tls_channel(member.port, &renewed, false)
        .await
        .expect("a connection that trusts the renewed certificate's CA");
    put_and_get(channel).await.expect("KV over the renewed TLS");
    let old_trust = tls_channel(member.port, &first, false).await;
    assert!(old_trust.is_err(), "the old certificate is still served");
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    assert!(log.contains("read the renewed certificate"), "{log}");
}

/// `--auto-tls`: with no certificate files, an https client URL is served with a certificate
/// the member made for its hosts in `<data-dir>/fixtures/client`; a client that trusts that
/// certificate reaches it over TLS.
#[tokio::test]
async fn auto_tls_serves_clients_with_a_certificate_the_member_made() {
    let dir = TempDir::new("auto-tls");
    let member = start(&dir.0, &["--auto-tls"]);
    let cert_file = dir
        .0
        .join("data")
        .join("fixtures")
        .join("client")
        .join("cert.pem");
    let made = eventually("the member to make its certificate", || async {
        std::fs::read_to_string(&cert_file)
            .ok()
            .filter(|pem| pem.ends_with("-----END CERTIFICATE-----\n"))
    })
    .await;
    let made = made.unwrap_or_else(|| {
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        panic!("no certificate made; log:\n{log}")
    });
    let connected = eventually("a TLS connection", || {
        let config = ClientTlsConfig::new()
            .ca_certificate(CaCertificate::from_pem(&made))
            .domain_name("127.0.0.1");
        async move {
            Channel::from_shared(format!("https://127.0.0.1:{}", member.port))
                .ok()?
                .tls_config(config)
                .ok()?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()
        }
    })
    .await;
    let channel = connected.unwrap_or_else(|| {
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        panic!("no TLS connection; log:\n{log}")
    });
    put_and_get(channel).await.expect("KV over auto TLS");
}

/// `--peer-auto-tls`: three members on https peer URLs, each with a certificate it made, form
/// a cluster and replicate over TLS.
#[tokio::test]
async fn peer_auto_tls_replicates_between_self_signed_members() {
    let cluster = Cluster::start_with_peer_scheme(
        TempDir::new("peer-auto-tls"),
        3,
        &["--peer-auto-tls"],
        "https",
        |_| {},
    )
    .await;
    let mut writer = KvClient::new(cluster.members[0].channel().await);
    writer
        .put(put("auto/tls", "1"))
        .await
        .expect("a put replicated over auto TLS");
    let read = KvClient::new(cluster.members[2].channel().await)
        .range(get("auto/tls"))
        .await
        .expect("a linearizable read on another member")
        .into_inner();
    assert_eq!(read.kvs[0].value.as_ref(), b"1");
    for member in &cluster.members {
        let made = cluster
            .dir
            .0
            .join(&member.name)
            .join("fixtures/peer/cert.pem");
        assert!(made.exists(), "no {}", made.display());
    }
}

#[tokio::test]
async fn client_cert_auth_admits_only_clients_with_a_certificate_from_the_trusted_ca() {
    let dir = TempDir::new("tls-mutual");
    let pki = pki(&dir.0);
    let ca = pki.ca_file.to_str().expect("UTF-8 path");
    let mut args = files(&pki).to_vec();
    args.extend(["--trusted-ca-file", ca, "--client-cert-auth"]);
    let member = start(&dir.0, &args);
    let channel = connect_tls(&member, &pki, true).await;
    put_and_get(channel)
        .await
        .expect("KV with a client certificate");

    // Without a certificate the handshake fails (or the first request does: TLS 1.3 reports a
    // refused client certificate after the client's side of the handshake is done).
    let refused = match tls_channel(member.port, &pki, false).await {
        Err(_) => true,
        Ok(channel) => KvClient::new(channel).range(get("secure")).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
}

/// `--client-crl-file`: a client certificate the CA has revoked is refused; the others from
/// the same CA are served.
/// `--client-cert-allowed-hostname`: a client certificate from the trusted CA must also be valid
/// for that host name; another from the same CA is refused.
#[tokio::test]
async fn client_certificates_must_be_valid_for_the_allowed_hostname() {
    let dir = TempDir::new("tls-client-host");
    let pki = pki(&dir.0);
    let ca = pki.ca_file.to_str().expect("UTF-8 path");
    let mut args = files(&pki).to_vec();
    args.extend(["--trusted-ca-file", ca, "--client-cert-auth"]);
    args.extend(["--client-cert-allowed-hostname", "client"]);
    let member = start(&dir.0, &args);
    let channel = connect_tls(&member, &pki, true).await;
    put_and_get(channel)
        .await
        .expect("KV with a certificate for the allowed host");
    // The "revoked" certificate (not revoked here: no CRL is given) names another host.
    let other = (&pki.revoked_cert_pem, &pki.revoked_key_pem);
    let refused = match tls_channel_as(member.port, &pki, Some(other)).await {
        Err(_) => true,
        Ok(channel) => KvClient::new(channel).range(get("secure")).await.is_err(),
    };
    assert!(refused, "a certificate for another host was served");
    api_support::await_log(
        &member.log,
        &["not valid for --client-cert-allowed-hostname"],
    )
    .await
    .expect("the refusal is logged");
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let dir = TempDir::new("tls-crl");
    let pki = pki(&dir.0);
    let ca = pki.ca_file.to_str().expect("UTF-8 path");
    let crl = pki.crl_file.to_str().expect("UTF-8 path");
    let mut args = files(&pki).to_vec();
    args.extend([
        "--trusted-ca-file",
        ca,
        "--client-cert-auth",
        "--client-crl-file",
        crl,
    ]);
    let member = start(&dir.0, &args);
    let channel = connect_tls(&member, &pki, true).await;
    put_and_get(channel)
        .await
        .expect("KV with a certificate that is not revoked");
    let identity = Some((&pki.revoked_cert_pem, &pki.revoked_key_pem));
    let refused = match tls_channel_as(member.port, &pki, identity).await {
        Err(_) => true,
        Ok(channel) => KvClient::new(channel).range(get("secure")).await.is_err(),
    };
    assert!(refused, "a revoked certificate was served");
}

/// `ballot bench` on an `https` endpoint: verified against `--cacert`, and with `--cert` and
/// `--key` admitted by a member that requires client certificates.
#[tokio::test]
async fn bench_runs_against_https_endpoints() {
    let dir = TempDir::new("tls-bench");
    let pki = pki(&dir.0);
    let ca = pki.ca_file.to_str().expect("UTF-8 path");
    let mut args = files(&pki).to_vec();
    args.extend(["--trusted-ca-file", ca, "--client-cert-auth"]);
    let member = start(&dir.0, &args);
    put_and_get(connect_tls(&member, &pki, true).await)
        .await
        .expect("the member serves");
    let client_cert = dir.0.join("client.pem");
    let client_key = dir.0.join("client-key.pem");
    std::fs::write(&client_cert, &pki.client_cert_pem).expect("write");
    std::fs::write(&client_key, &pki.client_key_pem).expect("write");
    let endpoint = format!("https://127.0.0.1:{}", member.port);
    let bench = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ballot"))
            .args(["bench", "put", "--total", "50", "--json"])
            .args(["--endpoints", &endpoint])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run ballot bench")
    };
    let cert = client_cert.to_str().expect("UTF-8 path");
    let key = client_key.to_str().expect("UTF-8 path");
    let output = bench(&["--cacert", ca, "--cert", cert, "--key", key]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"ops\":50,\"errors\":0"), "{stdout}");

    let output = bench(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("https endpoints need --cacert"), "{stderr}");
    // Without a client certificate the member refuses the session: no request succeeds.
    let output = bench(&["--cacert", ca]);
    assert!(
        !output.status.success(),
        "served without a client certificate"
    );
}

#[test]
fn bad_tls_flags_and_files_stop_the_member_with_the_reason() {
    let dir = TempDir::new("tls-bad");
    let pki = pki(&dir.0);
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ballot"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(["--listen-client-urls", "https://127.0.0.1:0"])
            .args(["--advertise-client-urls", "https://127.0.0.1:2379"])
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ballot");
        assert!(!output.status.success(), "started with {args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("needs --cert-file and --key-file"),
        "{stderr}"
    );
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().expect("UTF-8 path");
    let key = pki.server_key.to_str().expect("UTF-8 path");
    let stderr = run(&["--cert-file", missing, "--key-file", key]);
    assert!(
        stderr.contains("--cert-file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let not_a_key = pki.ca_file.to_str().expect("UTF-8 path");
    let cert = pki.server_cert.to_str().expect("UTF-8 path");
    let stderr = run(&["--cert-file", cert, "--key-file", not_a_key]);
    assert!(stderr.contains("--key-file"), "{stderr}");
    let stderr = run(&["--cert-file", cert, "--key-file", key, "--client-cert-auth"]);
    assert!(
        stderr.contains("--client-cert-auth needs --trusted-ca-file"),
        "{stderr}"
    );
    let ca = pki.ca_file.to_str().expect("UTF-8 path");
    let crl = pki.crl_file.to_str().expect("UTF-8 path");
    let stderr = run(&[
        "--cert-file",
        cert,
        "--key-file",
        key,
        "--client-crl-file",
        crl,
    ]);
    assert!(
        stderr.contains("--client-crl-file needs --trusted-ca-file"),
        "{stderr}"
    );
    // A certificate is no revocation list.
    let stderr = run(&[
        "--cert-file",
        cert,
        "--key-file",
        key,
        "--trusted-ca-file",
        ca,
        "--client-crl-file",
        cert,
    ]);
    assert!(
        stderr.contains("--client-crl-file") && stderr.contains("server.pem"),
        "{stderr}"
    );
    assert!(
        !dir.0.join("data").exists(),
        "nothing is written before the TLS files are read"
    );
}

#[test]
fn bad_peer_tls_files_stop_the_member_with_the_reason() {
    let dir = TempDir::new("peer-tls-bad");
    let pki = peer_pki(&dir.0, "good");
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().expect("UTF-8 path");
    let run = |cert: &str, key: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_ballot"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .args(["--listen-peer-urls", "https://127.0.0.1:0"])
            .args(["--initial-advertise-peer-urls", "https://127.0.0.1:2380"])
            .args(["--initial-cluster", "default=https://127.0.0.1:2380"])
            .args(["--peer-cert-file", cert, "--peer-key-file", key])
            .args(["--peer-trusted-ca-file", &pki.ca_file])
            .stdin(Stdio::null())
            .output()
            .expect("run ballot");
        assert!(!output.status.success(), "started with {cert} and {key}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(missing, &pki.key_file);
    assert!(
        stderr.contains("--peer-cert-file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let stderr = run(&pki.cert_file, &pki.ca_file);
    assert!(stderr.contains("--peer-key-file"), "{stderr}");
    assert!(
        !dir.0.join("data").exists(),
        "nothing is written before the TLS files are read"
    );
}

/// A peer certificate (both server and client use, for 127.0.0.1) signed by a CA of its own,
/// with its PEM texts and files under `dir/<tag>-*.pem`.
struct PeerPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    ca_file: String,
    cert_file: String,
    key_file: String,
    /// A peer certificate from the same CA, listed in `crl_file`.
    revoked_cert_pem: String,
    revoked_key_pem: String,
    crl_file: String,
}

impl PeerPki {
    /// The same CA, presenting the revoked certificate.
    fn revoked(&self) -> PeerPki {
        PeerPki {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.revoked_cert_pem.clone(),
            key_pem: self.revoked_key_pem.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: String::new(),
            key_file: String::new(),
            revoked_cert_pem: self.revoked_cert_pem.clone(),
            revoked_key_pem: self.revoked_key_pem.clone(),
            crl_file: self.crl_file.clone(),
        }
    }
}

fn peer_pki(dir: &Path, tag: &str) -> PeerPki {
    let (ca, ca_key) = certificate_authority(&format!("ballot peer CA {tag}"));
    let (cert_pem, key_pem) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        &ca,
        &ca_key,
    );
    let (revoked_cert_pem, revoked_key_pem) = leaf_with_serial(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        &ca,
        &ca_key,
        Some(REVOKED_SERIAL),
    );
    let write = |name: &str, text: &str| write_pem(dir, tag, name, text);
    PeerPki {
        ca_file: write("ca", &ca.pem()),
        cert_file: write("peer", &cert_pem),
        key_file: write("peer-key", &key_pem),
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
        revoked_cert_pem,
        revoked_key_pem,
        crl_file: write("crl", &revocation_list(&ca, &ca_key)),
    }
}

/// Opens a connection to a peer port over TLS (trusting `trust`'s CA, presenting `identity`'s
/// certificate if given) and sends the Ballot peer handshake for cluster 0: a listener that
/// takes the TLS session answers with a refusal status byte (the cluster is wrong); one that
/// refuses the session fails the read.
async fn peer_probe(port: u16, trust: &PeerPki, identity: Option<&PeerPki>) -> Result<u8, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    #[allow(deprecated)]
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(trust.ca_pem.as_bytes()).expect("CA");
    roots.add(ca).expect("root");
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let cert = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).expect("cert");
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(vec![cert], key)
                .expect("identity")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|error| error.to_string())?;
    let mut handshake = b"BLTPEER1".to_vec();
    handshake.push(1);
    handshake.extend_from_slice(&[0u8; 24]);
    stream
        .write_all(&handshake)
        .await
        .map_err(|error| error.to_string())?;
    stream.flush().await.map_err(|error| error.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(5), stream.read_u8()).await;
    match answer {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn peer_flags(pki: &PeerPki) -> Vec<&str> {
    vec![
        "--peer-cert-file",
        &pki.cert_file,
        "--peer-key-file",
        &pki.key_file,
        "--peer-trusted-ca-file",
        &pki.ca_file,
        "--peer-client-cert-auth",
    ]
}

/// A one-member cluster on an `https` peer URL with `flags`, and its peer port.
async fn https_peer_member(flags: &[&str]) -> (Cluster, u16) {
    let cluster =
        Cluster::start_with_peer_scheme(TempDir::new("peer-tls-one"), 1, flags, "https", |_| {})
            .await;
    let port = peer_port(&cluster.members[0]);
    (cluster, port)
}

fn peer_port(member: &api_support::Member) -> u16 {
    let port = member.peer_url.rsplit(':').next().expect("a port");
    port.parse().expect("a numeric port")
}

#[tokio::test]
async fn https_peer_urls_replicate_over_tls_and_refuse_strangers() {
    let dir = TempDir::new("peer-tls");
    let pki = peer_pki(&dir.0, "good");
    let stranger = peer_pki(&dir.0, "stranger");
    let flags = peer_flags(&pki);
    let mut cluster = Cluster::start_with_peer_scheme(
        TempDir::new("peer-tls-cluster"),
        3,
        &flags,
        "https",
        |_| {},
    )
    .await;
    assert!(cluster.members[0].peer_url.starts_with("https://"));

    let mut writer = KvClient::new(cluster.members[0].channel().await);
    writer
        .put(put("over/tls", "1"))
        .await
        .expect("a put replicated over TLS");
    let read = KvClient::new(cluster.members[2].channel().await)
        .range(get("over/tls"))
        .await
        .expect("a linearizable read on another member")
        .into_inner();
    assert_eq!(read.kvs[0].value.as_ref(), b"1");

    // A member killed and restarted redials its peers over TLS and catches up (if it led, the
    // others elect a leader over TLS first: the put is retried until one takes it).
    cluster.restart(1, &flags);
    let stored = eventually("a put while member 1 restarts", || {
        let mut writer = writer.clone();
        async move { writer.put(put("over/tls", "2")).await.ok() }
    })
    .await;
    assert!(stored.is_some(), "logs:\n{}", cluster.logs());
    let restarted = cluster.members[1].client_url.clone();
    let caught_up = eventually("the restarted member catches up over TLS", || {
        let url = restarted.clone();
        async move {
            let channel = api_support::try_connect(&url).await?;
            let mut request = get("over/tls");
            request.serializable = true;
            let read = KvClient::new(channel).range(request).await.ok()?;
            (read.into_inner().kvs.first()?.value.as_ref() == b"2").then_some(())
        }
    })
    .await;
    assert!(caught_up.is_some(), "logs:\n{}", cluster.logs());

    // The peer port speaks TLS only, and with --peer-client-cert-auth only to holders of a
    // certificate from the trusted CA; such a holder then meets the Ballot handshake's checks.
    let port = peer_port(&cluster.members[0]);
    assert_eq!(
        peer_probe(port, &pki, Some(&pki)).await,
        Ok(1),
        "a trusted certificate reaches the handshake, which refuses cluster 0"
    );
    let no_certificate = peer_probe(port, &pki, None).await;
    assert!(no_certificate.is_err(), "{no_certificate:?}");
    let foreign = peer_probe(port, &pki, Some(&stranger)).await;
    assert!(foreign.is_err(), "{foreign:?}");
    let wrong_server = peer_probe(port, &stranger, Some(&pki)).await;
    assert!(wrong_server.is_err(), "{wrong_server:?}");
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut handshake = b"BLTPEER1".to_vec();
    handshake.extend_from_slice(&[1u8; 25]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(&handshake).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert_ne!(answer.first(), Some(&0), "plain text was accepted");
}

/// `--peer-crl-file`: a peer presenting a certificate its CA revoked is refused at the TLS
/// handshake; one with a certificate the list does not name reaches the Ballot handshake.
#[tokio::test]
async fn a_revoked_peer_certificate_is_refused() {
    let dir = TempDir::new("peer-crl");
    let pki = peer_pki(&dir.0, "crl");
    let mut flags = peer_flags(&pki);
    flags.extend(["--peer-crl-file", &pki.crl_file]);
    let (_cluster, port) = https_peer_member(&flags).await;
    assert_eq!(
        peer_probe(port, &pki, Some(&pki)).await,
        Ok(1),
        "a certificate that is not revoked reaches the handshake, which refuses cluster 0"
    );
    let revoked = peer_probe(port, &pki, Some(&pki.revoked())).await;
    assert!(revoked.is_err(), "a revoked certificate got {revoked:?}");
}

/// `--cipher-suites`: a TLS 1.2 client offering only a suite the member was not given is
/// refused; one offering a listed suite, and any TLS 1.3 client, is served.
#[tokio::test]
async fn cipher_suites_limit_what_tls12_clients_may_use() {
    use tokio_rustls::rustls::crypto::ring as ring_crypto;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion, version};

    let dir = TempDir::new("tls-ciphers");
    let pki = pki(&dir.0);
    let mut args = files(&pki).to_vec();
    args.extend(["--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
    let member = start(&dir.0, &args);
    connect_tls(&member, &pki, false).await;

    let handshake = |suite: Option<tokio_rustls::rustls::SupportedCipherSuite>,
                     versions: &'static [&'static SupportedProtocolVersion]| {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA"))
            .expect("root");
        #[allow(deprecated)]
        let mut provider = ring_crypto::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let config = ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let port = member.port;
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|error| error.to_string())?;
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
    };
    static TLS12: [&SupportedProtocolVersion; 1] = [&version::TLS12];
    static TLS13: [&SupportedProtocolVersion; 1] = [&version::TLS13];
    let tls12 = &TLS12;
    handshake(
        Some(ring_crypto::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        tls12,
    )
    .await
    .expect("the listed TLS 1.2 suite");
    let refused = handshake(
        Some(ring_crypto::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        tls12,
    )
    .await;
    assert!(refused.is_err(), "an unlisted TLS 1.2 suite was accepted");
    handshake(None, &TLS13)
        .await
        .expect("TLS 1.3 whatever the list");
}

/// Writes `text` to `<dir>/<tag>-<name>.pem`; returns the path.
fn write_pem(dir: &Path, tag: &str, name: &str, text: &str) -> String {
    let path = dir.join(format!("{tag}-{name}.pem"));
    std::fs::write(&path, text).expect("write a PEM file");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// A member certificate from `ca` with common name `cn` for `names` (IP addresses or DNS
/// names), good as server and as client, written to `dir` under `tag`.
fn signed_identity(
    dir: &Path,
    (ca, ca_key): (&Certificate, &KeyPair),
    tag: &str,
    cn: &str,
    names: &[&str],
) -> PeerPki {
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    let write = |name: &str, text: &str| write_pem(dir, tag, name, text);
    PeerPki {
        ca_file: write("ca", &ca.pem()),
        cert_file: write("peer", &cert.pem()),
        key_file: write("peer-key", &key.serialize_pem()),
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        revoked_cert_pem: String::new(),
        revoked_key_pem: String::new(),
        crl_file: String::new(),
    }
}

/// A connecting peer's certificate must name the address it comes from (etcd's SAN check of
/// peer client certificates), unless `--experimental-peer-skip-client-san-verification`.
#[tokio::test]
async fn a_peer_certificate_for_another_address_is_refused_unless_the_check_is_skipped() {
    let dir = TempDir::new("peer-san");
    let (ca, ca_key) = certificate_authority("ballot peer CA san");
    let member = signed_identity(&dir.0, (&ca, &ca_key), "member", "m", &["127.0.0.1"]);
    let elsewhere = signed_identity(&dir.0, (&ca, &ca_key), "elsewhere", "m", &["10.9.9.9"]);
    let by_name = signed_identity(&dir.0, (&ca, &ca_key), "by-name", "m", &["localhost"]);

    let (cluster, port) = https_peer_member(&peer_flags(&member)).await;
    for allowed in [&member, &by_name] {
        assert_eq!(
            peer_probe(port, &member, Some(allowed)).await,
            Ok(1),
            "a certificate for 127.0.0.1 reaches the handshake, which refuses cluster 0"
        );
    }
    let refused = peer_probe(port, &member, Some(&elsewhere)).await;
    assert!(refused.is_err(), "got {refused:?}");
    cluster.members[0]
        .await_log(&["x509: certificate is valid for 10.9.9.9, not 127.0.0.1"])
        .await
        .expect("the refusal is logged");
    drop(cluster);

    let mut flags = peer_flags(&member);
    flags.push("--experimental-peer-skip-client-san-verification");
    let (_cluster, port) = https_peer_member(&flags).await;
    assert_eq!(peer_probe(port, &member, Some(&elsewhere)).await, Ok(1));
}

/// `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname`: a peer certificate from the
/// trusted CA is also refused unless it carries the allowed common name and is valid for the
/// allowed host name.
#[tokio::test]
async fn peer_certificates_must_carry_the_allowed_name_and_host() {
    let dir = TempDir::new("peer-allowed");
    let (ca, ca_key) = certificate_authority("ballot peer CA allowed");
    // Each certificate serves 127.0.0.1 (the probe checks the member's as a server) and names
    // the member; `cn` and `host` vary.
    let identity = |tag: &str, cn: &str, host: &str| {
        signed_identity(&dir.0, (&ca, &ca_key), tag, cn, &["127.0.0.1", host])
    };
    let member = identity("member", "ballot-member", "members.example");
    let wrong_cn = identity("wrong-cn", "intruder", "members.example");
    let wrong_host = identity("wrong-host", "ballot-member", "elsewhere.example");
    let mut flags = peer_flags(&member);
    flags.extend([
        "--peer-cert-allowed-cn",
        "ballot-member",
        "--peer-cert-allowed-hostname",
        "members.example",
    ]);
    let (cluster, port) = https_peer_member(&flags).await;
    assert_eq!(
        peer_probe(port, &member, Some(&member)).await,
        Ok(1),
        "the allowed name and host reach the handshake, which refuses cluster 0"
    );
    for refused in [&wrong_cn, &wrong_host] {
        let answer = peer_probe(port, &member, Some(refused)).await;
        assert!(answer.is_err(), "got {answer:?}");
    }
    cluster.members[0]
        .await_log(&[
            "is not --peer-cert-allowed-cn",
            "--peer-cert-allowed-hostname",
        ])
        .await
        .expect("both refusals are logged");
}
