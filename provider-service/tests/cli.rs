//! The binary's command line: `--help` lists every option with its environment variable, and
//! `healthcheck` fails when nothing serves on the configured address.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_provider-service");

#[test]
fn help_lists_every_option_with_its_env_var() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "PROVIDER_LISTEN_ADDR",
        "DATABASE_URL",
        "UPSTREAM_BASE_URL",
        "PROVIDER_AUTH_TOKEN",
        "PROVIDER_MAX_BATCH_SIZE",
        "PROVIDER_DEFAULT_CACHE_HOURS",
    ] {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
    assert!(help.contains("healthcheck"), "{help}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let out = Command::new(BIN)
        .arg("healthcheck")
        .env("PROVIDER_LISTEN_ADDR", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn bad_settings_are_refused_at_start() {
    let out = Command::new(BIN)
        .env("PROVIDER_DEFAULT_EXCHANGE", "MOON")
        .env("PROVIDER_LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MOON"));
}

#[test]
fn migrating_through_a_transaction_pooler_needs_a_session_url() {
    let out = Command::new(BIN)
        .env("DATABASE_URL", "postgres://app@127.0.0.1:6432/documents")
        .env("DATABASE_POOLER", "transaction")
        .env("PROVIDER_LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATABASE_MIGRATE") && err.contains("DATABASE_LISTEN_URL"),
        "{err}"
    );
}

#[test]
fn version_names_the_revision_and_build_date() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        line.starts_with(&format!(
            "provider-service {} (revision ",
            env!("CARGO_PKG_VERSION")
        )),
        "{line}"
    );
    // Built from this checkout: its revision, and its commit's date.
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let (Some(rev), Some(date)) = (
        git(&["rev-parse", "--short=12", "HEAD"]),
        git(&["log", "-1", "--format=%cs", "HEAD"]),
    ) {
        assert!(
            line.ends_with(&format!("(revision {rev}, built {date})")),
            "{line}"
        );
    }
}

#[test]
fn help_never_prints_a_secret() {
    let out = Command::new(BIN)
        .arg("--help")
        .env("DATABASE_URL", "postgres://app:hunter2-db@db/documents")
        .env("PROVIDER_AUTH_TOKEN", "hunter2-token")
        .env("MARKET_DATA_API_TOKEN", "hunter2-api")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!help.contains("hunter2"), "{help}");
    assert!(help.contains("DATABASE_URL_FILE"), "{help}");
}

#[test]
fn the_database_url_can_come_from_a_file_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("database-url");
    // Nothing listens on port 1: the connection fails, and the message must not show the password.
    std::fs::write(&file, "postgres://app:hunter2-db@127.0.0.1:1/documents\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-invariants")
        .env("DATABASE_URL_FILE", &file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // The file was read: the failure is about the database, not the URL.
    assert!(stderr.to_lowercase().contains("database"), "{stderr}");

    let out = Command::new(BIN)
        .arg("check-invariants")
        .env("DATABASE_URL", "mysql://app:hunter2-db@db/documents")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not supported"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn a_pool_the_change_feed_would_exhaust_is_refused_at_start() {
    let out = Command::new(BIN)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/documents")
        .env("DATABASE_MAX_CONNECTIONS", "1")
        .env("PROVIDER_LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("DATABASE_MAX_CONNECTIONS") && stderr.contains("at least"),
        "{stderr}"
    );
}

/// `migrate` applies the migrations and exits (a Kubernetes Job runs it once); the schema is then
/// ready for services that may not migrate.
#[test]
fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("documents.db").display());
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    let out = Command::new(BIN)
        .arg("check-invariants")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all invariants hold"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
