//! The Python client example (`examples/python/client.py`, generated from `proto/` with
//! grpcio-tools) against live services: every RPC of both, gzip, and the google.rpc error
//! details read with grpcio-status, as a Python user would.

use std::{path::PathBuf, process::Command};

use e2e::harness::{ConsumerProc, Db, Exchange, Provider};

/// The Python with grpcio, grpcio-tools and grpcio-status (`scripts/test` makes the venv);
/// `PYTHON` overrides.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/documents/python-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: scripts/test creates it (python3 -m venv, then pip install grpcio grpcio-tools grpcio-status)",
        venv.display()
    );
    venv
}

#[tokio::test]
async fn the_python_example_calls_every_rpc_and_reads_the_error_details() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &p.url(), &[]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args(["--provider", &p.addr, "--consumer", &consumer.addr])
            .output()
            .expect("running the Python example")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all RPCs answered as the contract says"),
        "{stdout}\n{stderr}"
    );
    for rpc in [
        "GetDocument",
        "GetDocuments",
        "EnsureDocuments",
        "StreamDocuments",
        "WatchDocuments",
        "ProcessTickers",
        "GetStored",
    ] {
        assert!(stdout.contains(&format!("\"{rpc}\"")), "{rpc}: {stdout}");
    }
}
