//! No secret leaves the process. Both services run with canary secrets (the market-data API
//! token, the bearer tokens of both scopes, the database password on PostgreSQL, the TLS private
//! key), logging at DEBUG, exporting spans and serving metrics; the upstream is put through every
//! fault knob the sample exchange has (and one that reflects the token back in a redirect), and
//! on PostgreSQL the database drops the provider's connections. Then the answers, both logs, a
//! dump of the database, both metrics pages and every exported span are searched for each canary.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, routing::post, Router};
use documents_api::{
    proto::{
        consumer::v1::ProcessTickersRequest,
        documents::admin::v1::{admin_client::AdminClient, DescribeDocumentRequest},
    },
    ClientConfig, DocumentOptions, DocumentProvider, Kind, ProviderClient,
};
use documents_kit::security::client_tls;
use e2e::{
    harness::{postgres_admin_url, scrape_metrics, ConsumerProc, Db, Exchange, Provider, EOD_PATH},
    on_both_databases,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use sample_exchange::Control;

/// An OTLP/HTTP receiver that keeps every export body as it came (protobuf: strings inside are
/// verbatim bytes).
async fn raw_receiver() -> (String, Arc<Mutex<Vec<u8>>>) {
    let bodies: Arc<Mutex<Vec<u8>>> = Arc::default();
    let store = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().unwrap().extend_from_slice(&body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), bodies)
}

fn canary(what: &str) -> String {
    format!("{what}-canary-{}", uuid::Uuid::now_v7().simple())
}

/// A CA and a server certificate for localhost, written to `dir`: (ca, cert, key) paths and the
/// key's PEM.
fn tls_files(dir: &std::path::Path) -> (String, String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let key_pem = key.serialize_pem();
    (
        write("ca.pem", &ca.pem()),
        write("server.pem", &cert.pem()),
        write("server.key", &key_pem),
        key_pem,
    )
}

/// Every fault the sample exchange can put on the prices API, and one more: an upstream that
/// reflects the caller's token into a redirect to a host that is down.
fn faults(token: &str) -> Vec<(&'static str, Control)> {
    let on = |p: &str| vec![p.to_string()];
    let eod = EOD_PATH.to_string();
    vec![
        (
            "dropped connection",
            Control {
                reset: on(EOD_PATH),
                ..Default::default()
            },
        ),
        (
            "half an answer",
            Control {
                half_answer: on(EOD_PATH),
                ..Default::default()
            },
        ),
        (
            "500",
            Control {
                status: [(eod.clone(), 500)].into(),
                ..Default::default()
            },
        ),
        (
            "403",
            Control {
                status: [(eod.clone(), 403)].into(),
                ..Default::default()
            },
        ),
        (
            "429",
            Control {
                status: [(eod.clone(), 429)].into(),
                ..Default::default()
            },
        ),
        (
            "malformed",
            Control {
                malformed: on(EOD_PATH),
                ..Default::default()
            },
        ),
        (
            "not JSON",
            Control {
                not_pdf: on(EOD_PATH),
                ..Default::default()
            },
        ),
        (
            "oversize",
            Control {
                oversize: on(EOD_PATH),
                ..Default::default()
            },
        ),
        (
            "slower than the timeout",
            Control {
                delay_ms: [(eod.clone(), 2_500)].into(),
                ..Default::default()
            },
        ),
        (
            "random failures",
            Control {
                fail_rate: 1.0,
                ..Default::default()
            },
        ),
        (
            "token reflected into a redirect",
            Control {
                redirect: [(eod, format!("http://127.0.0.1:1/echo?api_token={token}"))].into(),
                ..Default::default()
            },
        ),
    ]
}

async fn no_secret_leaves_the_process(db: Db) {
    let upstream_token = canary("upstream");
    let all_token = canary("all");
    let read_token = canary("read");
    let db_password = canary("dbpassword");
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, key_pem) = tls_files(dir.path());
    let db_url = if db.is_postgres() {
        // Trust authentication takes any password: the canary travels through every setting.
        db.url()
            .replacen("://postgres@", &format!("://postgres:{db_password}@"), 1)
    } else {
        db.url().to_string()
    };
    let (otlp, spans) = raw_receiver().await;
    let ex = Exchange::start();
    let telemetry = [
        ("RUST_LOG", "debug"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut provider_env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db_url),
        ("MARKET_DATA_API_TOKEN", &upstream_token),
        ("PROVIDER_AUTH_TOKEN", &all_token),
        ("PROVIDER_READ_TOKEN", &read_token),
        ("PROVIDER_TLS_CERT", &cert),
        ("PROVIDER_TLS_KEY", &key),
        ("PROVIDER_TLS_CA", &ca),
        ("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT),
        ("PROVIDER_NEGATIVE_CACHE_MS", "0"),
        ("UPSTREAM_TIMEOUT_MS", "1000"),
        ("UPSTREAM_MAX_BODY_BYTES", "1048576"),
    ];
    provider_env.extend(telemetry);
    let mut provider = Provider::spawn(&db_url, &ex.url, &provider_env);
    let provider_metrics = provider.proc.listening("metrics endpoint listening");
    let port = provider.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let client = |token: &str| {
        ProviderClient::with_config(
            &url,
            ClientConfig {
                tls: Some(client_tls(Some(&ca), None, None).unwrap()),
                auth_token: Some(token.to_string()),
                retries: 0,
                timeout: Duration::from_secs(10),
                ..ClientConfig::default()
            },
        )
        .unwrap()
    };
    let admin = client(&all_token);
    let mut answers: Vec<String> = Vec::new();
    // Up: a first document.
    let mut up = false;
    for _ in 0..200 {
        if admin
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the provider never answered:\n{}", provider.proc.logs());

    let prices = DocumentOptions::new()
        .kind(Kind::MarketData)
        .force_refresh(true);
    for (name, control) in faults(&upstream_token) {
        ex.control(&control).await;
        let one = admin.get_document("ASX:BHP", &prices).await;
        let batch = ["ASX:CBA", "ASX:GNP", "nonsense!"].map(String::from);
        let many = admin.get_documents(&batch, &prices).await;
        answers.push(format!("{name}: {one:?} {many:?}"));
    }
    ex.control(&Control::default()).await;
    // What another replica would read of those failures, through the admin view.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(client_tls(Some(&ca), None, None).unwrap())
        .unwrap()
        .connect_lazy();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {all_token}").parse().unwrap();
    let mut describe = AdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    answers.push(format!(
        "{:?}",
        describe
            .describe_document(DescribeDocumentRequest {
                identifier: "ASX:BHP".into(),
                kind: "market_data".into(),
            })
            .await
    ));

    if db.is_postgres() {
        // The database drops the provider's connections in the middle of calls.
        ex.control(&Control {
            delay_ms: [(EOD_PATH.to_string(), 300)].into(),
            ..Default::default()
        })
        .await;
        let name = db.url().rsplit('/').next().unwrap().to_string();
        let calls = {
            let admin = admin.clone();
            let prices = prices.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..5 {
                    seen.push(format!(
                        "{:?}",
                        admin.get_document("ASX:BHP", &prices).await
                    ));
                }
                seen
            })
        };
        let killer = sqlx::PgPool::connect(&postgres_admin_url()).await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .execute(&killer)
            .await
            .unwrap();
        }
        answers.extend(calls.await.unwrap());
        ex.control(&Control::default()).await;
    }

    // The last fill of BHP's prices fails, so its error stays recorded in the database.
    let (_, last) = faults(&upstream_token).swap_remove(0);
    ex.control(&last).await;
    answers.push(format!(
        "{:?}",
        admin.get_document("ASX:BHP", &prices).await
    ));
    let store = db.store().await;
    let lease = store
        .lease(&e2e::harness::key("ASX:BHP:market_data"))
        .await
        .unwrap()
        .expect("BHP's lease");
    assert!(lease.last_error.is_some(), "{lease:?}");

    // The consumer, with the read token, over TLS, on the same database.
    let mut consumer_env: Vec<(&str, &str)> = vec![
        ("PROVIDER_AUTH_TOKEN", &read_token),
        ("PROVIDER_TLS_CA", &ca),
        ("CONSUMER_METRICS_ADDR", e2e::harness::ANY_PORT),
        ("PROVIDER_RETRIES", "0"),
    ];
    consumer_env.extend(telemetry);
    let mut consumer = ConsumerProc::start(&db_url, &url, &consumer_env).await;
    let consumer_metrics = consumer.proc.listening("metrics endpoint listening");
    let report = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into(), "ASX:ZZZ".into(), "bad ticker".into()],
            ..Default::default()
        })
        .await;
    answers.push(format!("{report:?}"));
    assert!(
        report
            .as_ref()
            .is_ok_and(|r| r.get_ref().reports[0].status.is_none()),
        "the consumer worked with the read token: {report:?}"
    );
    let metrics = format!(
        "{}\n{}",
        scrape_metrics(&provider_metrics).await,
        scrape_metrics(&consumer_metrics).await
    );
    assert!(metrics.contains("grpc_server_handled"), "{metrics}");

    // Stopped, so every span still queued is sent.
    for proc in [&mut provider.proc, &mut consumer.proc] {
        proc.signal("TERM");
        assert!(proc.wait_exit(Duration::from_secs(20)).await.is_some());
    }
    let dump = if db.is_postgres() {
        let name = db.url().rsplit('/').next().unwrap();
        let base = postgres_admin_url();
        let target = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
        std::process::Command::new("pg_dump")
            .arg(target)
            .output()
            .unwrap()
            .stdout
    } else {
        let path = db.url().trim_start_matches("sqlite://");
        std::process::Command::new("sqlite3")
            .args([path, ".dump"])
            .output()
            .unwrap()
            .stdout
    };
    let dump = String::from_utf8_lossy(&dump).into_owned();
    assert!(dump.contains("fill_leases"), "a dump of the database");
    let spans = spans.lock().unwrap().clone();
    assert!(!spans.is_empty(), "spans were exported");
    let answers = answers.join("\n");
    let logs = format!("{}\n{}", provider.proc.logs(), consumer.proc.logs());

    // The test can fail: the faults were met and told (with the URL, its token hidden), and the
    // upstream did get the token.
    assert!(answers.contains("api_token=***"), "{answers}");
    let sent = ex
        .stats()
        .await
        .log
        .iter()
        .any(|l| l.path.contains(&upstream_token));
    assert!(sent, "the upstream got the token");

    let mut secrets: Vec<(&str, String)> = vec![
        ("the market-data API token", upstream_token.clone()),
        ("the token with every scope", all_token.clone()),
        ("the read token", read_token.clone()),
    ];
    if db.is_postgres() {
        secrets.push(("the database password", db_password.clone()));
    }
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("the TLS private key", line.to_string()));
    }
    let places: [(&str, &[u8]); 5] = [
        ("an answer", answers.as_bytes()),
        ("a log line", logs.as_bytes()),
        ("the database", dump.as_bytes()),
        ("a metrics page", metrics.as_bytes()),
        ("an exported span", &spans),
    ];
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (place, haystack) in &places {
            if haystack
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
            {
                leaks.push(format!("{what} is in {place}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets left the process:\n{}",
        leaks.join("\n")
    );
}

on_both_databases!(no_secret_leaves_the_process);
