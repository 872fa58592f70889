//! docker-compose.yml checked against the binaries, fast and without a Docker engine (the real
//! engine runs it in `scripts/compose-test`): every variable it sets is one the binary accepts,
//! commands and health checks exist, ports and URLs agree, secrets come from files; and the
//! binaries started with exactly the compose environment and secrets (hostnames mapped to
//! 127.0.0.1, ports to free ones, the database to a fresh one) run a round.

use std::{collections::BTreeMap, process::Command};

use documents_api::proto::consumer::v1::ProcessTickersRequest;
use e2e::harness::{bin, free_addr, wait_serving, Db, Exchange, Proc};
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => String::new(),
                    };
                    (k.as_str().unwrap().to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The content of the compose secret a `/run/secrets/NAME` path names (its default file).
fn secret(c: &Yaml, path: &str) -> String {
    let name = path
        .strip_prefix("/run/secrets/")
        .unwrap_or_else(|| panic!("{path}"));
    let file = c["secrets"][name]["file"].as_str().unwrap();
    let file = expand(file, &BTreeMap::new());
    let file = file.strip_prefix("./").unwrap();
    std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .trim()
        .to_string()
}

/// Environment variables a binary's --help names.
fn accepted_env(binary: &str) -> Vec<String> {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(String::from)
        .collect()
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn compose_file_agrees_with_the_binaries() {
    let c = compose();
    let services = &c["services"];
    for name in ["provider", "consumer", "sample-exchange"] {
        let svc = &services[name];
        let command = strings(&svc["command"]);
        let binary = command
            .first()
            .unwrap_or_else(|| panic!("{name} has no command"))
            .clone();
        assert!(
            bin(&binary).exists(),
            "{name}: command {binary} is not a workspace binary"
        );
        let accepted = accepted_env(&binary);
        let env = environment(svc);
        for key in env.keys() {
            assert!(
                accepted.contains(key),
                "{name}: {key} is not a variable {binary} accepts ({accepted:?})"
            );
        }
        let health = strings(&svc["healthcheck"]["test"]);
        if !health.is_empty() {
            // The services' probe is their `healthcheck` subcommand; the sample exchange, which
            // has no subcommands, takes a `--healthcheck` flag.
            let probe = if name == "sample-exchange" {
                "--healthcheck"
            } else {
                "healthcheck"
            };
            assert_eq!(
                health,
                vec!["CMD".to_string(), binary.clone(), probe.into()],
                "{name}"
            );
            let help = String::from_utf8(
                Command::new(bin(&binary))
                    .arg("--help")
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            assert!(
                help.contains("healthcheck"),
                "{binary} has no healthcheck subcommand"
            );
        }
        // Published container port = the port the service listens on.
        let listen = env
            .iter()
            .find(|(k, _)| k.ends_with("LISTEN_ADDR"))
            .map(|(_, v)| v.clone())
            .unwrap();
        let ports = strings(&svc["ports"]);
        assert!(
            ports
                .iter()
                .any(|p| p.rsplit(':').next() == Some(port_of(&listen))),
            "{name}: ports {ports:?} do not publish the listen port of {listen}"
        );
        for p in &ports {
            assert!(
                expand(p, &BTreeMap::new()).starts_with("127.0.0.1:"),
                "{name}: {p} is published beyond the host's loopback"
            );
        }
        assert_eq!(svc["restart"].as_str(), Some("unless-stopped"), "{name}");
        for (k, v) in &env {
            assert!(
                !k.ends_with("PASSWORD") && !v.contains('@'),
                "{name}: {k} holds a secret in the compose file; use a *_FILE secret"
            );
        }
    }
    assert!(
        services["postgres"]["ports"].is_badvalue(),
        "PostgreSQL is not published (a server on the host may hold 5432)"
    );
    let provider_env = environment(&services["provider"]);
    let consumer_env = environment(&services["consumer"]);
    assert_eq!(
        consumer_env["PROVIDER_URL"],
        format!(
            "dns:///provider:{}",
            port_of(&provider_env["PROVIDER_LISTEN_ADDR"])
        ),
        "the consumer calls every replica of the provider service on its listen port"
    );
    for (env, role) in [
        (&provider_env, "documents_provider"),
        (&consumer_env, "documents_consumer"),
    ] {
        let url = secret(&c, &env["DATABASE_URL_FILE"]);
        assert!(
            url.contains("@postgres:5432/documents"),
            "one shared database: {url}"
        );
        assert!(
            url.starts_with(&format!("postgres://{role}:")),
            "each service has its own role"
        );
    }
    assert_eq!(
        consumer_env["DATABASE_MIGRATE"], "false",
        "the consumer role cannot migrate"
    );
    let volumes = strings(&services["postgres"]["volumes"]).join(" ");
    assert!(
        volumes.contains("./deploy/postgres/roles.sql:/docker-entrypoint-initdb.d/"),
        "{volumes}"
    );
    // Start-up order by health.
    assert_eq!(
        services["provider"]["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        services["consumer"]["depends_on"]["provider"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(strings(&services["postgres"]["healthcheck"]["test"])
        .join(" ")
        .contains("pg_isready"));
    assert!(
        !c["volumes"]["pgdata"].is_badvalue(),
        "named volume for PostgreSQL"
    );
    assert_eq!(
        strings(&services["sample-exchange"]["profiles"]),
        vec!["offline"]
    );
}

/// `${VAR:-default}` as compose expands it, with `vars` as the shell environment.
fn expand(value: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = value.to_string();
    while let Some(start) = out.find("${") {
        let end = out[start..].find('}').map(|e| start + e).unwrap();
        let inner = &out[start + 2..end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        let v = vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string());
        out.replace_range(start..=end, &v);
    }
    out
}

#[tokio::test]
async fn binaries_run_a_round_with_the_compose_environment() {
    let c = compose();
    let db = Db::postgres();
    let ex = Exchange::start();
    let provider_addr = free_addr();
    let consumer_addr = free_addr();
    // The offline profile: the operator sets UPSTREAM_BASE_URL to the sample exchange.
    let shell: BTreeMap<&str, String> = [
        (
            "UPSTREAM_BASE_URL",
            "http://sample-exchange:8700".to_string(),
        ),
        (
            "CONSUMER_DOWNLOAD_ALLOWED_ORIGINS",
            "http://sample-exchange:8700".to_string(),
        ),
    ]
    .into();
    let db_name = db.url().rsplit('/').next().unwrap().to_string();
    // What the postgres image does on first start: run the roles script.
    let roles = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres/roles.sql");
    let out = Command::new("psql")
        .arg(db.url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-f", roles])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map = |v: String| -> String {
        v.replace(
            "@postgres:5432/documents",
            &format!("@127.0.0.1:5432/{db_name}"),
        )
        .replace("http://sample-exchange:8700", &ex.url)
        .replace("provider:50051", &provider_addr)
        .replace("0.0.0.0:50051", &provider_addr)
        .replace("0.0.0.0:50052", &consumer_addr)
    };
    // A service's environment as compose gives it, with each secret file mounted (here: copied
    // into a temporary folder with the addresses mapped).
    let secrets = tempfile::tempdir().unwrap();
    let compose_env = |svc: &Yaml| -> Vec<(String, String)> {
        environment(svc)
            .into_iter()
            .map(|(k, v)| {
                let v = map(expand(&v, &shell));
                if k.ends_with("_FILE") {
                    let file = secrets.path().join(k.to_lowercase());
                    std::fs::write(&file, map(secret(&c, &v))).unwrap();
                    (k, file.to_string_lossy().into_owned())
                } else {
                    (k, v)
                }
            })
            .collect()
    };
    let start = |name: &str| {
        let svc = &c["services"][name];
        let binary = strings(&svc["command"])[0].clone();
        let mut cmd = Command::new(bin(&binary));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in compose_env(svc) {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::null());
        Proc::spawn(name, cmd)
    };
    let provider = start("provider");
    wait_serving(
        &provider_addr,
        documents_api::proto::PROVIDER_SERVICE_NAME,
        &provider,
    )
    .await;
    let consumer = start("consumer");
    wait_serving(
        &consumer_addr,
        documents_api::proto::CONSUMER_SERVICE_NAME,
        &consumer,
    )
    .await;
    // The health checks exactly as compose runs them, with the services' environment.
    for (name, proc) in [("provider", &provider), ("consumer", &consumer)] {
        let svc = &c["services"][name];
        let test = strings(&svc["healthcheck"]["test"]);
        let mut cmd = Command::new(bin(&test[1]));
        cmd.args(&test[2..]).env_clear();
        for (k, v) in compose_env(svc) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{name} healthcheck failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            proc.logs()
        );
    }
    let mut client = documents_api::proto::consumer::v1::consumer_client::ConsumerClient::connect(
        format!("http://{consumer_addr}"),
    )
    .await
    .unwrap();
    let report = client
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}\n{}", consumer.logs());
    assert!(!report.downloaded.is_empty());
    assert!(
        provider.logs().contains("\"outcome\":\"created\""),
        "JSON logs as configured: {}",
        provider.logs()
    );
}
