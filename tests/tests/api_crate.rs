//! The crates under `shared/` keep to their concerns: the API crate a caller depends on stays
//! small (`cargo tree -e normal` of `documents-api` lists fewer than 130 crates, and none of the
//! database, web-server or command-line stacks), and the store has no gRPC types in its tree.

use std::{collections::BTreeSet, process::Command};

/// The crates in `package`'s normal dependency tree, by name.
fn tree(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            package,
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
    // "name vX.Y.Z (...)": one entry per crate (a crate seen twice is marked "(*)").
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(words.next()?.to_string()).filter(|_| words.next().is_some())
        })
        .collect()
}

#[test]
fn the_api_crate_pulls_no_database_server_or_cli_stack() {
    let crates = tree("documents-api");
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

#[test]
fn the_store_has_no_grpc_types() {
    let crates = tree("documents-store");
    for grpc in ["tonic", "prost", "documents-api", "h2"] {
        assert!(!crates.contains(grpc), "{grpc} is in the store's tree");
    }
}
