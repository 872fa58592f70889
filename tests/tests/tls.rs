//! TLS and mutual TLS with throwaway certificates made at run time, and the bearer token read
//! from a file: a plaintext client fails, a client trusting the CA succeeds, with mTLS a client
//! without a certificate, or with one from a foreign CA, fails; the healthcheck subcommand and the consumer work over TLS. The
//! consumer's own server takes the same access settings under its own names.

use std::{path::PathBuf, process::Command, time::Duration};

use documents_api::{ClientConfig, DocumentOptions, DocumentProvider, ProviderClient};
use documents_kit::security::client_tls;
use e2e::harness::{bin, consumer_command, ConsumerProc, Db, Exchange, Proc, Provider};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

struct Pki {
    _dir: tempfile::TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A client certificate signed by another CA, which the server does not trust.
    foreign_cert: String,
    foreign_key: String,
    token_file: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| -> String {
        let p: PathBuf = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["consumer".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let foreign_ca_key = KeyPair::generate().unwrap();
    let mut foreign_ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    foreign_ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let foreign_ca = foreign_ca_params.self_signed(&foreign_ca_key).unwrap();
    let foreign_key = KeyPair::generate().unwrap();
    let foreign = CertificateParams::new(vec!["consumer".to_string()])
        .unwrap()
        .signed_by(&foreign_key, &foreign_ca, &foreign_ca_key)
        .unwrap();
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server.pem()),
        server_key: write("server.key", &server_key.serialize_pem()),
        client_cert: write("client.pem", &client.pem()),
        client_key: write("client.key", &client_key.serialize_pem()),
        foreign_cert: write("foreign.pem", &foreign.pem()),
        foreign_key: write("foreign.key", &foreign_key.serialize_pem()),
        token_file: write("token", "s3cret-from-a-file\n"),
        _dir: dir,
    }
}

/// Waits until the provider's own `healthcheck` subcommand, run with `env`, says SERVING.
async fn wait_healthy(p: &Provider, env: &[(&str, &str)]) {
    wait_healthy_at(
        "provider-service",
        "PROVIDER_LISTEN_ADDR",
        &p.addr,
        env,
        &p.proc,
    )
    .await
}

/// Waits until `binary healthcheck`, run with `env` and its listen address `addr` in `listen_var`,
/// says SERVING.
async fn wait_healthy_at(
    binary: &str,
    listen_var: &str,
    addr: &str,
    env: &[(&str, &str)],
    proc: &Proc,
) {
    for _ in 0..200 {
        let mut cmd = Command::new(bin(binary));
        cmd.arg("healthcheck").env_clear().env(listen_var, addr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if cmd.output().unwrap().status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{binary} over TLS never became healthy:\n{}", proc.logs());
}

/// The call reached the server and the server refused it (a broken handshake or protocol
/// error), rather than failing to connect: a server that is down does not pass.
fn refused_after_connecting(e: &tonic::Status) {
    let m = e.message();
    assert!(
        matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Internal),
        "{e:?}"
    );
    assert!(
        (m.contains("h2 protocol error") || m.contains("connection to the provider broke"))
            && !m.contains("connect error"),
        "{e:?}"
    );
}

fn https(p: &Provider) -> String {
    format!("https://{}", p.addr)
}

fn client(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<&str>,
) -> ProviderClient {
    let config = ClientConfig {
        tls,
        auth_token: token.map(String::from),
        retries: 0,
        timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    ProviderClient::with_config(url, config).unwrap()
}

#[tokio::test]
async fn tls_refuses_plaintext_and_serves_clients_that_trust_the_ca() {
    let pki = pki();
    let db = Db::sqlite();
    let ex = Exchange::start();
    let env = [
        ("PROVIDER_TLS_CERT", pki.server_cert.as_str()),
        ("PROVIDER_TLS_KEY", pki.server_key.as_str()),
        ("PROVIDER_TLS_CA", pki.ca.as_str()),
    ];
    let p = Provider::spawn(db.url(), &ex.url, &env);
    wait_healthy(&p, &env).await;

    let plaintext = client(&p.url(), None, None);
    let e = plaintext
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    // Refused by the TLS server (it does not speak plaintext HTTP/2), not unreachable.
    refused_after_connecting(&e);
    let untrusting = client(
        &https(&p),
        Some(client_tls(None, None, None).unwrap()),
        None,
    );
    let e = untrusting
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert!(
        e.message().contains("UnknownIssuer"),
        "an unknown CA must not be trusted: {e:?}"
    );
    let trusting = client(
        &https(&p),
        Some(client_tls(Some(&pki.ca), None, None).unwrap()),
        None,
    );
    let r = trusting
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    // The same through a name followed by DNS: `dns+https:///` checks the certificate against
    // the name, not the resolved address.
    let port = p.addr.rsplit(':').next().unwrap();
    let by_name = client(
        &format!("dns+https:///localhost:{port}"),
        Some(client_tls(Some(&pki.ca), None, None).unwrap()),
        None,
    );
    let r = by_name
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(r.version, 1);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_its_ca() {
    let pki = pki();
    let db = Db::sqlite();
    let ex = Exchange::start();
    let env = [
        ("PROVIDER_TLS_CERT", pki.server_cert.as_str()),
        ("PROVIDER_TLS_KEY", pki.server_key.as_str()),
        ("PROVIDER_TLS_CLIENT_CA", pki.ca.as_str()),
        ("PROVIDER_TLS_CA", pki.ca.as_str()),
        ("PROVIDER_AUTH_TOKEN_FILE", pki.token_file.as_str()),
    ];
    let p = Provider::spawn(db.url(), &ex.url, &env);
    wait_healthy(&p, &env).await;

    let anonymous = client(
        &https(&p),
        Some(client_tls(Some(&pki.ca), None, None).unwrap()),
        Some("s3cret-from-a-file"),
    );
    let e = anonymous
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    // The server closed the connection during the handshake (no client certificate).
    refused_after_connecting(&e);
    // A certificate from a CA the server does not trust, for the same name, is refused too.
    let foreign = client(
        &https(&p),
        Some(
            client_tls(
                Some(&pki.ca),
                Some(&pki.foreign_cert),
                Some(&pki.foreign_key),
            )
            .unwrap(),
        ),
        Some("s3cret-from-a-file"),
    );
    let e = foreign
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    refused_after_connecting(&e);
    let with_cert = client(
        &https(&p),
        Some(client_tls(Some(&pki.ca), Some(&pki.client_cert), Some(&pki.client_key)).unwrap()),
        Some("s3cret-from-a-file"),
    );
    assert!(with_cert
        .get_document("GNP", &DocumentOptions::new())
        .await
        .is_ok());
    let wrong_token = client(
        &https(&p),
        Some(client_tls(Some(&pki.ca), Some(&pki.client_cert), Some(&pki.client_key)).unwrap()),
        Some("guess"),
    );
    let err = wrong_token
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The consumer over mutual TLS, with its token from a file too.
    let consumer = ConsumerProc::start(
        db.url(),
        &https(&p),
        &[
            ("PROVIDER_TLS_CA", pki.ca.as_str()),
            ("PROVIDER_TLS_CLIENT_CERT", pki.client_cert.as_str()),
            ("PROVIDER_TLS_CLIENT_KEY", pki.client_key.as_str()),
            ("PROVIDER_AUTH_TOKEN_FILE", pki.token_file.as_str()),
        ],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(documents_api::proto::consumer::v1::ProcessTickersRequest {
            tickers: vec!["ASX:BHP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}");
}

#[tokio::test]
async fn without_a_ca_the_client_trusts_the_system_roots() {
    // The consumer is given no PROVIDER_TLS_CA: it must trust the system's roots, which
    // SSL_CERT_FILE names (the standard variable the system-root loader reads).
    let pki = pki();
    let db = Db::sqlite();
    let ex = Exchange::start();
    let env = [
        ("PROVIDER_TLS_CERT", pki.server_cert.as_str()),
        ("PROVIDER_TLS_KEY", pki.server_key.as_str()),
        ("PROVIDER_TLS_CA", pki.ca.as_str()),
    ];
    let p = Provider::spawn(db.url(), &ex.url, &env);
    wait_healthy(&p, &env).await;
    let port = p.addr.rsplit(':').next().unwrap();
    let consumer = ConsumerProc::start(
        db.url(),
        &format!("https://localhost:{port}"),
        &[("SSL_CERT_FILE", pki.ca.as_str())],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(documents_api::proto::consumer::v1::ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(
        report.status.is_none(),
        "a certificate from a root the system trusts must be accepted: {report:?}"
    );
}

#[tokio::test]
async fn the_consumer_serves_tls_and_requires_its_own_token() {
    use documents_api::proto::consumer::v1::{consumer_client::ConsumerClient, GetStoredRequest};
    use tonic::transport::Channel;

    let pki = pki();
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let env = [
        ("CONSUMER_TLS_CERT", pki.server_cert.as_str()),
        ("CONSUMER_TLS_KEY", pki.server_key.as_str()),
        ("CONSUMER_TLS_CA", pki.ca.as_str()),
        ("CONSUMER_AUTH_TOKEN_FILE", pki.token_file.as_str()),
    ];
    let mut cmd = consumer_command(db.url(), &p.url(), &env);
    cmd.env("CONSUMER_LISTEN_ADDR", e2e::harness::ANY_PORT)
        .stdout(std::process::Stdio::null());
    let consumer = Proc::spawn("consumer-service", cmd);
    let addr = consumer.listening("gRPC listening");
    // Its healthcheck subcommand reaches it over TLS, with no token (health needs none).
    wait_healthy_at(
        "consumer-service",
        "CONSUMER_LISTEN_ADDR",
        &addr,
        &env,
        &consumer,
    )
    .await;

    let port = addr.rsplit(':').next().unwrap();
    let call = |url: String, tls: bool, token: Option<&'static str>| {
        let ca = pki.ca.clone();
        async move {
            let mut endpoint = Channel::from_shared(url).unwrap();
            if tls {
                endpoint = endpoint
                    .tls_config(client_tls(Some(&ca), None, None).unwrap())
                    .unwrap();
            }
            let mut client = ConsumerClient::new(endpoint.connect_lazy());
            let mut request = tonic::Request::new(GetStoredRequest {
                ticker: "ASX:GNP".into(),
            });
            if let Some(t) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            client.get_stored(request).await
        }
    };
    let plaintext = call(format!("http://{addr}"), false, Some("s3cret-from-a-file"))
        .await
        .unwrap_err();
    // The TLS server broke off the plaintext connection (a broken pipe or a protocol error,
    // whichever the client notices first); the connect itself succeeded.
    let seen = format!("{plaintext:?}");
    assert!(
        (seen.contains("broken pipe") || seen.contains("h2 protocol error"))
            && !seen.contains("ConnectError"),
        "{seen}"
    );
    let https = format!("https://localhost:{port}");
    let anonymous = call(https.clone(), true, None).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert!(
        anonymous.message().starts_with("authorization:"),
        "{anonymous:?}"
    );
    let wrong = call(https.clone(), true, Some("guess")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    let answered = call(https, true, Some("s3cret-from-a-file")).await;
    assert!(answered.is_ok(), "{answered:?}\n{}", consumer.logs());
}
