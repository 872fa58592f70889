//! The binary's command line: `--help` lists the options with their environment variables, and
//! `healthcheck` fails when nothing serves on the configured address.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_consumer-service");

#[test]
fn help_lists_every_option_with_its_env_var() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "CONSUMER_LISTEN_ADDR",
        "DATABASE_URL",
        "PROVIDER_URL",
        "PROVIDER_AUTH_TOKEN",
        "CONSUMER_FILTERS",
    ] {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
    for sub in ["healthcheck", "process"] {
        assert!(help.contains(sub), "{help}");
    }
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let out = Command::new(BIN)
        .arg("healthcheck")
        .env("CONSUMER_LISTEN_ADDR", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn secrets_are_never_printed() {
    let out = Command::new(BIN)
        .arg("--help")
        .env("DATABASE_URL", "postgres://app:hunter2-db@db/documents")
        .env("PROVIDER_AUTH_TOKEN", "hunter2-token")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("hunter2"), "{help}");

    // A connection error names the database without its password.
    let out = Command::new(BIN)
        .args(["process", "ASX:GNP"])
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-db@127.0.0.1:1/documents",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("postgres://app:***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
