//! The provider as a user's tool sees it: grpcurl 1.8 (server reflection v1alpha) lists and
//! describes the services and calls them with JSON, and every grpcurl recipe in the README runs
//! as written against a live provider.

use e2e::harness::{run_grpcurl, ConsumerProc, Db, Exchange, Provider};

#[tokio::test]
async fn grpcurl_lists_describes_and_calls() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let addr = p.addr.as_str();

    let (ok, out, err) = run_grpcurl(&["-plaintext", addr, "list"]);
    assert!(ok, "{err}");
    for svc in [
        "documents.v1.DocumentProvider",
        "documents.admin.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(out.lines().any(|l| l == svc), "list lacks {svc}:\n{out}");
    }
    assert!(
        !out.contains("consumer.v1.Consumer"),
        "the provider lists a service it does not serve:\n{out}"
    );

    // And the consumer lists only its own.
    let consumer = ConsumerProc::start(db.url(), &p.url(), &[]).await;
    let (ok, listed, err) = run_grpcurl(&["-plaintext", &consumer.addr, "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.lines().any(|l| l == "consumer.v1.Consumer"),
        "{listed}"
    );
    assert!(
        !listed.contains("documents.v1.DocumentProvider") && !listed.contains("Admin"),
        "{listed}"
    );

    let (ok, out, err) = run_grpcurl(&[
        "-plaintext",
        addr,
        "describe",
        "documents.v1.DocumentProvider",
    ]);
    assert!(ok, "{err}");
    for rpc in ["GetDocument", "GetDocuments", "EnsureDocuments"] {
        assert!(out.contains(&format!("rpc {rpc}")), "{out}");
    }
    let (ok, out, err) = run_grpcurl(&[
        "-plaintext",
        addr,
        "describe",
        "documents.v1.DocumentOptions",
    ]);
    assert!(
        ok && out.contains("optional uint32 cache_hours"),
        "{out}{err}"
    );

    let (ok, out, err) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"identifier":"ASX:GNP","options":{"cache_hours":24}}"#,
        addr,
        "documents.v1.DocumentProvider/GetDocument",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(v["identifier"], "ASX:GNP");
    assert_eq!(v["version"], "1", "int64 is a string in proto3 JSON: {v}");
    assert_eq!(v["outcome"], "OUTCOME_CREATED");
    assert!(!v["documentId"].as_str().unwrap().is_empty());

    // A bad identifier: the status and the rule reach the user.
    let (ok, _, err) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"identifier":"bad id!"}"#,
        addr,
        "documents.v1.DocumentProvider/GetDocument",
    ]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("[A-Z0-9.]"),
        "{err}"
    );
    // The google.rpc details are shown decoded: reflection serves their types too.
    assert!(
        err.contains(r#""reason":"INVALID_IDENTIFIER""#)
            && err.contains(r#""fieldViolations":[{"field":"identifier""#)
            && !err.contains("not recognized"),
        "{err}"
    );
}

/// Lines of the README that are grpcurl commands (inside fenced blocks).
fn readme_recipes() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut in_block = false;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let t = line.trim();
        if t.starts_with("grpcurl ") || !current.is_empty() {
            current.push_str(t.trim_end_matches('\\'));
            current.push(' ');
            if !t.ends_with('\\') {
                out.push(current.trim().to_string());
                current.clear();
            }
        }
    }
    out
}

#[tokio::test]
async fn readme_grpcurl_recipes_run_as_written() {
    let recipes = readme_recipes();
    assert!(
        recipes.len() >= 5,
        "README should carry grpcurl recipes: {recipes:?}"
    );
    let db = Db::sqlite();
    let ex = Exchange::start();
    // Heartbeats often enough that a quiet watch recipe answers within its run.
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_WATCH_HEARTBEAT_MS", "500")]).await;
    let c = ConsumerProc::start(db.url(), &p.url(), &[]).await;
    for recipe in recipes {
        // The README talks to the default addresses; the test's services are on free ports.
        let mut cmd = recipe
            .replace("127.0.0.1:50051", &p.addr)
            .replace("127.0.0.1:50052", &c.addr);
        // A watch runs until stopped: here, until a deadline, having answered meanwhile.
        let watching = recipe.contains("/Watch");
        if watching {
            cmd = cmd.replacen("grpcurl ", "grpcurl -max-time 3 ", 1);
        }
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let watched = watching && stderr.contains("DeadlineExceeded") && stdout.contains('{');
        assert!(
            out.status.success() || watched,
            "README recipe failed: {recipe}\n{stdout}{stderr}"
        );
    }
}

/// With a token required, grpcurl still reaches health (and the reflection it needs for that)
/// without one; the documents service refuses it.
#[tokio::test]
async fn health_needs_no_token_even_through_grpcurl() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_AUTH_TOKEN", "s3cret")]).await;
    let addr = p.addr.as_str();
    let (ok, out, err) = run_grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}{err}");
    let (ok, _, err) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"identifier":"GNP"}"#,
        addr,
        "documents.v1.DocumentProvider/GetDocument",
    ]);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, _, err) = run_grpcurl(&[
        "-plaintext",
        "-H",
        "authorization: bearer s3cret",
        "-d",
        r#"{"identifier":"GNP"}"#,
        addr,
        "documents.v1.DocumentProvider/GetDocument",
    ]);
    assert!(ok, "with the token (lower-case scheme): {err}");
}
