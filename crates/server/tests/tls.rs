//! TLS on `https://` client URLs with a real `ballot` process and a gRPC client over TLS:
//! server certificates, client certificates (`--client-cert-auth`), refusals, and clear errors
//! for bad certificate files. Certificates are made for each test with rcgen.

mod api_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api_support::{TempDir, eventually, free_port, get, put};
use ballot_proto::etcdserverpb::kv_client::KvClient;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
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
}

fn leaf(
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(names).expect("params");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ballot test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let (server_pem, server_key_pem) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
        &ca_key,
    );
    let (client_cert_pem, client_key_pem) = leaf(
        vec!["client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
        &ca_key,
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
    let mut config = ClientTlsConfig::new()
        .ca_certificate(CaCertificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        config = config.identity(Identity::from_pem(
            &pki.client_cert_pem,
            &pki.client_key_pem,
        ));
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

#[tokio::test]
async fn https_client_urls_serve_grpc_over_tls_and_refuse_plain_text() {
    let dir = TempDir::new("tls");
    let pki = pki(&dir.0);
    let member = start(&dir.0, &files(&pki));
    let channel = connect_tls(&member, &pki, false).await;
    put_and_get(channel).await.expect("KV over TLS");

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
    assert!(
        !dir.0.join("data").exists(),
        "nothing is written before the TLS files are read"
    );
}
