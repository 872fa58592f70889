//! The API crate a caller depends on stays small: `cargo tree -e normal` of `documents-api` lists
//! fewer than 130 crates, and none of the database, web-server or command-line stacks.

use std::{collections::BTreeSet, process::Command};

#[test]
fn the_api_crate_pulls_no_database_server_or_cli_stack() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "documents-api",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "name vX.Y.Z (...)": one entry per crate (a crate seen twice is marked "(*)").
    let crates: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(words.next()?).filter(|_| words.next().is_some())
        })
        .collect();
    assert!(
        crates.len() < 130,
        "{} crates in the API crate's tree: {crates:?}",
        crates.len()
    );
    for heavy in [
        "sqlx",
        "axum",
        "clap",
        "prometheus-client",
        "opentelemetry_sdk",
        "libsqlite3-sys",
    ] {
        assert!(
            !crates.contains(heavy),
            "{heavy} is in the API crate's tree"
        );
    }
    eprintln!("{} crates in documents-api's tree", crates.len());
}
