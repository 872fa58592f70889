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
