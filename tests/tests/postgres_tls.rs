//! PostgreSQL over TLS, as managed services require it: a private cluster with `ssl=on` and a
//! test CA, whose pg_hba.conf accepts TCP connections only over TLS (and one role only with a
//! client certificate). `sslmode=require`, `verify-full` with `sslrootcert` and client
//! certificates work; a plaintext connection, a wrong CA and a missing client certificate are
//! refused; a real provider migrates, listens for changes and fills documents over TLS.

use std::os::unix::fs::PermissionsExt;

use documents_api::{DocumentOptions, DocumentProvider};
use e2e::harness::{Exchange, PrivateCluster, Provider};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn new_ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

/// A CA, the server's certificate (localhost and 127.0.0.1), a client certificate for the role
/// `certuser`, and another CA nobody uses.
fn pki() -> (Pki, [(String, String); 3]) {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = new_ca();
    let (other_ca, _) = new_ca();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "certuser");
    client_params.distinguished_name = name;
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("other-ca.pem", other_ca.pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    for (name, body) in &files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    std::fs::set_permissions(
        dir.path().join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let server_files = [
        ("server.crt".to_string(), server.pem()),
        ("server.key".to_string(), server_key.serialize_pem()),
        ("root.crt".to_string(), ca.pem()),
    ];
    (Pki { dir }, server_files)
}

/// Connects and pings through the store, as a service would.
async fn try_connect(url: &str) -> Result<(), String> {
    let store = documents_store::connect(url, 2)
        .await
        .map_err(|e| e.to_string())?;
    let r = store.ping().await.map_err(|e| e.to_string());
    store.close().await;
    r
}

#[tokio::test]
async fn postgres_over_tls_with_a_ca_and_client_certificates() {
    let (pki, server_files) = pki();
    let cluster = PrivateCluster::start_configured(
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=root.crt",
        |data| {
            for (name, body) in &server_files {
                std::fs::write(data.join(name), body).unwrap();
            }
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            // TCP only over TLS; certuser only with a client certificate of the CA.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        },
    );
    let base = |user: &str, host: &str, params: &str| {
        format!(
            "postgres://{user}@{host}:{}/postgres?{params}",
            cluster.port
        )
    };
    let ca = pki.path("ca.pem");
    let verify = format!("sslmode=verify-full&sslrootcert={ca}");

    // Plaintext is refused by the server; TLS without checking, and TLS checked against the CA,
    // connect.
    let plain = try_connect(&base("postgres", "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(plain.contains("no encryption"), "{plain}");
    try_connect(&base("postgres", "127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    try_connect(&base("postgres", "localhost", &verify))
        .await
        .unwrap();
    // A server certificate from another CA than the one trusted: refused by the client.
    let wrong_ca = try_connect(&base(
        "postgres",
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pki.path("other-ca.pem")
        ),
    ))
    .await
    .unwrap_err();
    assert!(
        wrong_ca.to_lowercase().contains("certificate"),
        "{wrong_ca}"
    );

    // Client certificates: the role that must present one.
    let admin = sqlx::PgPool::connect(&base("postgres", "localhost", &verify))
        .await
        .unwrap();
    sqlx::query("CREATE ROLE certuser LOGIN SUPERUSER")
        .execute(&admin)
        .await
        .unwrap();
    let without = try_connect(&base("certuser", "localhost", &verify))
        .await
        .unwrap_err();
    assert!(without.contains("certificate"), "{without}");
    let with_cert = format!(
        "{verify}&sslcert={}&sslkey={}",
        pki.path("client.pem"),
        pki.path("client.key")
    );
    try_connect(&base("certuser", "localhost", &with_cert))
        .await
        .unwrap();

    // A real provider over TLS with a client certificate: migrations, the change feed (a
    // session of its own) and fills.
    let ex = Exchange::start();
    let url = base("certuser", "localhost", &with_cert);
    let provider = Provider::start(&url, &ex.url, &[]).await;
    let client = provider.client();
    let first = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    let hit = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(hit.document_id, first.document_id);
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'certuser' AND s.ssl",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(
        encrypted >= 2,
        "the provider's pool and change feed use TLS"
    );
    e2e::harness::assert_invariants_at(&base("postgres", "localhost", &verify)).await;
}
