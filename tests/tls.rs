//! TLS listeners: certificates picked by SNI, HTTP/2 over ALPN, and old
//! protocol versions refused. The CA is generated in the test (rcgen).

mod support;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::Pushgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Pki {
    ca: CertificateDer<'static>,
    leaves: Vec<CertificateDer<'static>>,
}

/// A CA and one leaf per name list, written as PEM files into `dir`.
fn pki(dir: &std::path::Path, names: &[&[&str]]) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let mut leaves = Vec::new();
    for (i, leaf_names) in names.iter().enumerate() {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(leaf_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("leaf{i}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("leaf{i}-key.pem")), key.serialize_pem()).unwrap();
        leaves.push(cert.der().clone());
    }
    Pki {
        ca: ca.der().clone(),
        leaves,
    }
}

fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn start() -> (Pushgate, Pki) {
    let dir = support::temp_dir("tls");
    let pki = pki(&dir, &[&["a.test"], &["b.test", "*.b.test"]]);
    let yaml = r#"
listen: { http: ["127.0.0.1:0"], https: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
tls:
  certificates:
    - { cert: leaf0.pem, key: leaf0-key.pem }
    - { cert: leaf1.pem, key: leaf1-key.pem }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime: { channels: ["{channel}"] }
"#;
    (Pushgate::start_in(&dir, yaml).await, pki)
}

/// The certificate the server presents for `sni`.
async fn presented(pg: &Pushgate, pki: &Pki, sni: &str) -> CertificateDer<'static> {
    let mut config = client_config(&pki.ca, &[]);
    // Accept whatever is presented: this asks which certificate it is.
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(pg.https.unwrap()).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_with_the_first_as_default() {
    let (pg, pki) = start().await;
    assert_eq!(presented(&pg, &pki, "a.test").await, pki.leaves[0]);
    assert_eq!(presented(&pg, &pki, "b.test").await, pki.leaves[1]);
    assert_eq!(
        presented(&pg, &pki, "x.b.test").await,
        pki.leaves[1],
        "wildcard name"
    );
    assert_eq!(
        presented(&pg, &pki, "unknown.test").await,
        pki.leaves[0],
        "default"
    );
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let (pg, pki) = start().await;
    let addr = pg.https.unwrap();
    for (alpn, version) in [
        (&[&b"h2"[..], b"http/1.1"][..], reqwest::Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], reqwest::Version::HTTP_11),
    ] {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(client_config(&pki.ca, alpn))
            .resolve("b.test", addr)
            .no_proxy()
            .build()
            .unwrap();
        let url = format!("https://b.test:{}/live/x?transport=info", addr.port());
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.version(), version);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["transports"].is_array());
    }
    // A realtime stream over HTTP/2 with TLS.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(client_config(&pki.ca, &[b"h2"]))
        .resolve("a.test", addr)
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://a.test:{}/live/tls", addr.port());
    let poll = tokio::spawn(async move {
        client
            .get(url)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    pg.wait_subscribers("tls", 1).await;
    pg.publish("tls", json!("over h2")).await;
    let answer = support::within("the h2 poll", poll).await.unwrap();
    assert_eq!(answer["messages"][0]["data"], "over h2");
}

/// A TLS 1.1 ClientHello (record and handshake version 0x0302).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES128-SHA, AES256-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn a_tls_1_1_handshake_is_refused() {
    let (pg, _pki) = start().await;
    let mut tcp = TcpStream::connect(pg.https.unwrap()).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = support::within("the refusal", tcp.read_to_end(&mut answer)).await;
    assert!(!answer.is_empty(), "the server answers before closing");
    assert_eq!(
        answer[0], 0x15,
        "an alert record, not a ServerHello: {answer:?}"
    );
    // rustls answers handshake_failure (40) or protocol_version (70).
    assert!(
        matches!(answer.last(), Some(40 | 70)),
        "a fatal handshake alert: {answer:?}"
    );
    assert_eq!(answer.len(), 7, "one alert record and nothing else");
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
