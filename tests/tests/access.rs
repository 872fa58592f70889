//! Scoped credentials: every RPC of the provider called with every credential (none, a wrong
//! one, the read token, the token with every scope), each answered as the access rules say.
//! Health and reflection are open; the read token opens the read RPCs only, and the others
//! answer it PERMISSION_DENIED with an ErrorInfo naming the missing scope.

use documents_api::proto::documents::{
    admin::v1::{admin_client::AdminClient, DescribeDocumentRequest, ListFillsRequest},
    v1::{
        document_provider_client::DocumentProviderClient, EnsureDocumentsRequest,
        GetDocumentRequest, GetDocumentsRequest, InvalidateDocumentsRequest, WatchDocumentsRequest,
    },
};
use e2e::harness::{run_grpcurl, Db, Exchange, Provider};
use tonic::{transport::Channel, Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;

const ALL: &str = "all-scopes-s3cret";
const READ: &str = "read-only-s3cret";

/// A request carrying `token` as its bearer token, if any.
fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Calls every RPC with `token`; answers (rpc, code, the status when refused).
async fn call_each(channel: &Channel, token: Option<&str>) -> Vec<(&'static str, Code, String)> {
    let mut docs = DocumentProviderClient::new(channel.clone());
    let mut admin = AdminClient::new(channel.clone());
    let mut health = HealthClient::new(channel.clone());
    let one = || GetDocumentRequest {
        identifier: "ASX:GNP".into(),
        ..Default::default()
    };
    let batch = || GetDocumentsRequest {
        identifiers: vec!["ASX:GNP".into()],
        ..Default::default()
    };
    fn outcome<T>(r: Result<T, tonic::Status>) -> (Code, String) {
        match r {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), format!("{s:?}")),
        }
    }
    let mut seen = Vec::new();
    let mut record =
        |rpc: &'static str, (code, status): (Code, String)| seen.push((rpc, code, status));
    record(
        "GetDocument",
        outcome(docs.get_document(with(one(), token)).await),
    );
    record(
        "GetDocuments",
        outcome(docs.get_documents(with(batch(), token)).await),
    );
    record(
        "EnsureDocuments",
        outcome(
            docs.ensure_documents(with(
                EnsureDocumentsRequest {
                    identifiers: vec!["ASX:GNP".into()],
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
    );
    let streamed = match docs.stream_documents(with(batch(), token)).await {
        Ok(s) => {
            let mut s = s.into_inner();
            let mut last = Ok(());
            while let Some(item) = s.message().await.transpose() {
                if let Err(e) = item {
                    last = Err(e);
                }
            }
            outcome(last)
        }
        Err(e) => outcome::<()>(Err(e)),
    };
    record("StreamDocuments", streamed);
    // A watch is answered (its headers) once registered; dropping it ends it.
    record(
        "WatchDocuments",
        outcome(
            docs.watch_documents(with(
                WatchDocumentsRequest {
                    identifiers: vec!["ASX:GNP".into()],
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
    );
    record(
        "InvalidateDocuments",
        outcome(
            docs.invalidate_documents(with(
                InvalidateDocumentsRequest {
                    identifiers: vec!["ASX:GNP".into()],
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
    );
    record(
        "Admin/DescribeDocument",
        outcome(
            admin
                .describe_document(with(
                    DescribeDocumentRequest {
                        identifier: "ASX:GNP".into(),
                        kind: String::new(),
                    },
                    token,
                ))
                .await,
        ),
    );
    record(
        "Admin/ListFills",
        outcome(admin.list_fills(with(ListFillsRequest {}, token)).await),
    );
    record(
        "Health/Check",
        outcome(
            health
                .check(with(
                    HealthCheckRequest {
                        service: documents_api::proto::PROVIDER_SERVICE_NAME.into(),
                    },
                    token,
                ))
                .await,
        ),
    );
    seen
}

const READS: &[&str] = &[
    "GetDocument",
    "GetDocuments",
    "EnsureDocuments",
    "StreamDocuments",
    "WatchDocuments",
];
const ADMIN: &[&str] = &[
    "InvalidateDocuments",
    "Admin/DescribeDocument",
    "Admin/ListFills",
];

#[tokio::test]
async fn each_rpc_answers_each_credential_by_its_scope() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_AUTH_TOKEN", ALL), ("PROVIDER_READ_TOKEN", READ)],
    )
    .await;
    let channel = Channel::from_shared(p.url()).unwrap().connect_lazy();
    let mut wrong = Vec::new();
    for (credential, token) in [
        ("none", None),
        ("a wrong token", Some("guess")),
        ("the read token", Some(READ)),
        ("the token with every scope", Some(ALL)),
    ] {
        for (rpc, code, status) in call_each(&channel, token).await {
            let expected = match (rpc, token) {
                ("Health/Check", _) => Code::Ok,
                (_, Some(ALL)) => Code::Ok,
                (r, Some(READ)) if READS.contains(&r) => Code::Ok,
                (r, Some(READ)) if ADMIN.contains(&r) => Code::PermissionDenied,
                _ => Code::Unauthenticated,
            };
            if code != expected {
                wrong.push(format!(
                    "{rpc} with {credential}: {code:?}, expected {expected:?} {status}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The refusal of the read token names the missing scope, in words and in an ErrorInfo.
    let refused = DocumentProviderClient::new(channel.clone())
        .invalidate_documents(with(
            InvalidateDocumentsRequest {
                identifiers: vec!["ASX:GNP".into()],
                ..Default::default()
            },
            Some(READ),
        ))
        .await
        .unwrap_err();
    assert!(refused.message().contains("\"admin\" scope"), "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "SCOPE_MISSING");
    assert_eq!(
        info.metadata.get("scope").map(String::as_str),
        Some("admin")
    );
    assert_eq!(
        info.metadata.get("method").map(String::as_str),
        Some("/documents.v1.DocumentProvider/InvalidateDocuments")
    );

    // Reflection needs no token (grpcurl's own path).
    let (ok, out, err) = run_grpcurl(&["-plaintext", &p.addr, "list"]);
    assert!(
        ok && out.contains("documents.v1.DocumentProvider"),
        "{out}{err}"
    );
}
