//! Least privilege on PostgreSQL, tried by an attacker who holds a service's database
//! credentials. The database is set up as deployments are (deploy/postgres/roles.sql, the
//! migrations run by the provider's own role); the consumer's real job runs with its role and
//! DATABASE_MIGRATE=false; then a session of each role tries the known ways around the
//! policies, each with the exact refusal it must meet, and the provider's rows (the victim:
//! a document, its attachment link, its lease, the kind_writers table) must stay byte for byte
//! what they were.

use documents_api::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider, Kind,
};
use e2e::harness::{ConsumerProc, Db, Exchange, Provider};
use sqlx::{Connection, PgConnection};

/// How an attack must be refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// An error with this SQLSTATE whose message contains this text.
    Error(&'static str, &'static str),
    /// The statement runs but changes nothing: the rows are not the role's to see or write.
    NoRows,
}

/// An attack: `setup` runs first on a fresh session of the role (each must succeed: it is what
/// the attacker prepares), then `attempt`, which must meet `refusal`.
struct Attack {
    name: &'static str,
    setup: &'static [&'static str],
    attempt: &'static str,
    refusal: Refusal,
}

const PERMISSION: &str = "42501";
const RLS: Refusal = Refusal::Error(PERMISSION, "violates row-level security policy");

const TAMPER: &str =
    "UPDATE documents SET title = 'tampered', version = version + 1 WHERE source_type = 'announcement'";
const SHADOW_TABLE: &[&str] = &[
    "CREATE TEMP TABLE kind_writers (source_type text, role_name text)",
    "INSERT INTO kind_writers VALUES ('announcement', 'documents_consumer')",
];

/// Ways around name resolution, tried while the role may still create temporary objects (a
/// deployment that has the migrations but has not run today's roles.sql): each must be beaten
/// by the functions' pinned search path alone.
const SHADOWING: &[Attack] = &[
    Attack {
        name: "temporary table shadows kind_writers",
        setup: SHADOW_TABLE,
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "temporary table shadows kind_writers, pg_temp first on the search path",
        setup: &[
            "CREATE TEMP TABLE kind_writers (source_type text, role_name text)",
            "INSERT INTO kind_writers VALUES ('announcement', 'documents_consumer')",
            "SET search_path = pg_temp, public",
        ],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "temporary view shadows kind_writers",
        setup: &["CREATE TEMP VIEW kind_writers AS \
                  SELECT 'announcement'::text AS source_type, 'documents_consumer'::text AS role_name"],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "temporary view shadows pg_roles, searched before pg_catalog",
        setup: &[
            "CREATE TEMP VIEW pg_roles AS SELECT 'documents_provider'::name AS rolname, oid \
             FROM pg_catalog.pg_roles WHERE rolname = 'documents_consumer'",
            "SET search_path = pg_temp, pg_catalog, public",
        ],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "temporary function shadows pg_has_role",
        setup: &[
            "CREATE FUNCTION pg_temp.pg_has_role(name, oid, text) RETURNS boolean \
             LANGUAGE sql AS 'SELECT true'",
            "SET search_path = pg_temp, pg_catalog, public",
        ],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "temporary function shadows documents_writable",
        setup: &[
            "CREATE FUNCTION pg_temp.documents_writable(text) RETURNS boolean \
             LANGUAGE sql AS 'SELECT true'",
            "SET search_path = pg_temp, public",
        ],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "shadowed kind_writers, forging a new announcement",
        setup: SHADOW_TABLE,
        attempt: "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                  content_json, tags, content_hash, version, last_synced) VALUES ('forged', \
                  'announcement', 'ASX:XYZ:announcement', 't', '', '{}', '{}', 'h', 1, now())",
        refusal: RLS,
    },
    Attack {
        name: "shadowed kind_writers, taking the provider's lease",
        setup: SHADOW_TABLE,
        attempt: "UPDATE fill_leases SET holder = 'me', token = token + 1 \
                  WHERE source_type = 'announcement'",
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "shadowed kind_writers, attaching a file to the provider's document",
        setup: SHADOW_TABLE,
        attempt: "INSERT INTO document_attachments (document_id, name, attachment_hash) \
                  SELECT id, 'planted', 'victim-hash' FROM documents WHERE source_type = 'announcement'",
        refusal: RLS,
    },
    Attack {
        name: "shadowed kind_writers, deleting the provider's document",
        setup: SHADOW_TABLE,
        attempt: "DELETE FROM documents WHERE source_type = 'announcement'",
        refusal: Refusal::Error(PERMISSION, "permission denied for table documents"),
    },
];

/// Everything else, on a database set up with today's roles.sql.
const DIRECT: &[Attack] = &[
    Attack {
        name: "temporary objects at all",
        setup: &[],
        attempt: "CREATE TEMP TABLE kind_writers (source_type text, role_name text)",
        refusal: Refusal::Error(PERMISSION, "permission denied to create temporary tables"),
    },
    Attack {
        name: "writing kind_writers",
        setup: &[],
        attempt: "INSERT INTO kind_writers VALUES ('announcement', 'documents_consumer')",
        refusal: Refusal::Error(PERMISSION, "permission denied for table kind_writers"),
    },
    Attack {
        name: "rewriting kind_writers",
        setup: &[],
        attempt: "UPDATE kind_writers SET role_name = 'documents_consumer'",
        refusal: Refusal::Error(PERMISSION, "permission denied for table kind_writers"),
    },
    Attack {
        name: "emptying kind_writers",
        setup: &[],
        attempt: "DELETE FROM kind_writers",
        refusal: Refusal::Error(PERMISSION, "permission denied for table kind_writers"),
    },
    Attack {
        name: "overwriting the provider's document",
        setup: &[],
        attempt: TAMPER,
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "relabelling the provider's document as the consumer's kind",
        setup: &[],
        attempt: "UPDATE documents SET source_type = 'announcement_download' \
                  WHERE source_type = 'announcement'",
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "relabelling its own document as the provider's kind",
        setup: &[],
        attempt: "UPDATE documents SET source_type = 'announcement' \
                  WHERE source_type = 'announcement_download'",
        refusal: Refusal::Error("23514", "keeps its ID and source key for life"),
    },
    Attack {
        name: "forging an announcement",
        setup: &[],
        attempt: "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                  content_json, tags, content_hash, version, last_synced) VALUES ('forged', \
                  'announcement', 'ASX:XYZ:announcement', 't', '', '{}', '{}', 'h', 1, now())",
        refusal: RLS,
    },
    Attack {
        name: "taking over the provider's document by its source key",
        setup: &[],
        attempt: "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                  content_json, tags, content_hash, version, last_synced) \
                  SELECT 'forged', source_type, source_id, 't', '', '{}', '{}', 'h', 1, now() \
                  FROM documents WHERE source_type = 'announcement' \
                  ON CONFLICT (source_type, source_id) DO UPDATE SET title = 'tampered'",
        refusal: RLS,
    },
    Attack {
        name: "deleting the provider's document",
        setup: &[],
        attempt: "DELETE FROM documents WHERE source_type = 'announcement'",
        refusal: Refusal::Error(PERMISSION, "permission denied for table documents"),
    },
    Attack {
        name: "truncating documents",
        setup: &[],
        attempt: "TRUNCATE documents CASCADE",
        refusal: Refusal::Error(PERMISSION, "permission denied for table documents"),
    },
    Attack {
        name: "taking the provider's lease",
        setup: &[],
        attempt: "UPDATE fill_leases SET holder = 'me', token = token + 1 \
                  WHERE source_type = 'announcement'",
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "claiming a lease of the provider's kind",
        setup: &[],
        attempt: "INSERT INTO fill_leases (source_type, source_id, holder, token, claimed_at, \
                  expires_at) VALUES ('announcement', 'ASX:ZZZ:announcement', 'me', 1, now(), now())",
        refusal: RLS,
    },
    Attack {
        name: "deleting leases",
        setup: &[],
        attempt: "DELETE FROM fill_leases",
        refusal: Refusal::Error(PERMISSION, "permission denied for table fill_leases"),
    },
    Attack {
        name: "attaching a file to the provider's document",
        setup: &[],
        attempt: "INSERT INTO document_attachments (document_id, name, attachment_hash) \
                  SELECT id, 'planted', 'victim-hash' FROM documents WHERE source_type = 'announcement'",
        refusal: RLS,
    },
    Attack {
        name: "re-pointing the provider's attachment link",
        setup: &[],
        attempt: "UPDATE document_attachments SET attachment_hash = attachment_hash \
                  WHERE document_id IN (SELECT id FROM documents WHERE source_type = 'announcement')",
        refusal: Refusal::NoRows,
    },
    Attack {
        name: "unlinking the provider's attachment",
        setup: &[],
        attempt: "DELETE FROM document_attachments",
        refusal: Refusal::Error(PERMISSION, "permission denied for table document_attachments"),
    },
    Attack {
        name: "rewriting an attachment's bytes",
        setup: &[],
        attempt: "UPDATE attachments SET data = 'x'",
        refusal: Refusal::Error(PERMISSION, "permission denied for table attachments"),
    },
    Attack {
        name: "deleting attachments",
        setup: &[],
        attempt: "DELETE FROM attachments",
        refusal: Refusal::Error(PERMISSION, "permission denied for table attachments"),
    },
    Attack {
        name: "a table in public",
        setup: &[],
        attempt: "CREATE TABLE public.kind_writers_shadow (x int)",
        refusal: Refusal::Error(PERMISSION, "permission denied for schema public"),
    },
    Attack {
        name: "a function in public",
        setup: &[],
        attempt: "CREATE FUNCTION public.pg_has_role(name, oid, text) RETURNS boolean \
                  LANGUAGE sql AS 'SELECT true'",
        refusal: Refusal::Error(PERMISSION, "permission denied for schema public"),
    },
    Attack {
        name: "replacing the policy function",
        setup: &[],
        attempt: "CREATE OR REPLACE FUNCTION public.documents_writable(kind text) \
                  RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        refusal: Refusal::Error(PERMISSION, "permission denied for schema public"),
    },
    Attack {
        name: "re-pointing the policy function's search path",
        setup: &[],
        attempt: "ALTER FUNCTION public.documents_writable(text) SET search_path = pg_temp, public",
        refusal: Refusal::Error(PERMISSION, "must be owner of function"),
    },
    Attack {
        name: "a schema of its own",
        setup: &[],
        attempt: "CREATE SCHEMA evil",
        refusal: Refusal::Error(PERMISSION, "permission denied for database"),
    },
    Attack {
        name: "switching row-level security off",
        setup: &[],
        attempt: "ALTER TABLE documents DISABLE ROW LEVEL SECURITY",
        refusal: Refusal::Error(PERMISSION, "must be owner of table documents"),
    },
    Attack {
        name: "dropping a policy",
        setup: &[],
        attempt: "DROP POLICY documents_update ON documents",
        refusal: Refusal::Error(PERMISSION, "must be owner of relation documents"),
    },
    Attack {
        name: "a permissive policy of its own",
        setup: &[],
        attempt: "CREATE POLICY mine ON documents FOR UPDATE USING (true)",
        refusal: Refusal::Error(PERMISSION, "must be owner of table documents"),
    },
    Attack {
        name: "switching the history guard off",
        setup: &[],
        attempt: "ALTER TABLE documents DISABLE TRIGGER documents_history_guard",
        refusal: Refusal::Error(PERMISSION, "must be owner of table documents"),
    },
    Attack {
        name: "switching every trigger off for the session",
        setup: &[],
        attempt: "SET session_replication_role = replica",
        refusal: Refusal::Error(PERMISSION, "permission denied to set parameter"),
    },
    Attack {
        name: "becoming the provider",
        setup: &[],
        attempt: "SET ROLE documents_provider",
        refusal: Refusal::Error(PERMISSION, "permission denied to set role"),
    },
    Attack {
        name: "becoming the superuser",
        setup: &[],
        attempt: "SET SESSION AUTHORIZATION postgres",
        refusal: Refusal::Error(PERMISSION, "permission denied to set session authorization"),
    },
    Attack {
        name: "joining the provider's role",
        setup: &[],
        attempt: "GRANT documents_provider TO documents_consumer",
        refusal: Refusal::Error(PERMISSION, "must have admin option on role"),
    },
    Attack {
        name: "bypassing row-level security by role attribute",
        setup: &[],
        attempt: "ALTER ROLE documents_consumer BYPASSRLS",
        refusal: Refusal::Error(PERMISSION, "must be superuser to change bypassrls"),
    },
    Attack {
        name: "copying documents out to a server file",
        setup: &[],
        attempt: "COPY documents TO '/tmp/documents.copy'",
        refusal: Refusal::Error(PERMISSION, "pg_write_server_files"),
    },
    Attack {
        name: "copying from a server program",
        setup: &[],
        attempt: "COPY attachments FROM PROGRAM 'id'",
        refusal: Refusal::Error(PERMISSION, "pg_execute_server_program"),
    },
];

/// What the provider role itself may not do: it owns the schema (it migrates), so its limits
/// are those of the cluster.
const PROVIDER_LIMITS: &[Attack] = &[
    Attack {
        name: "provider: becoming the superuser",
        setup: &[],
        attempt: "SET ROLE postgres",
        refusal: Refusal::Error(PERMISSION, "permission denied to set role"),
    },
    Attack {
        name: "provider: making roles",
        setup: &[],
        attempt: "CREATE ROLE intruder LOGIN",
        refusal: Refusal::Error(PERMISSION, "permission denied to create role"),
    },
    Attack {
        name: "provider: temporary objects",
        setup: &[],
        attempt: "CREATE TEMP TABLE t (x int)",
        refusal: Refusal::Error(PERMISSION, "permission denied to create temporary tables"),
    },
    Attack {
        name: "provider: server files",
        setup: &[],
        attempt: "COPY documents TO '/tmp/documents.copy'",
        refusal: Refusal::Error(PERMISSION, "pg_write_server_files"),
    },
];

/// The provider's rows an attack must leave untouched, read by the superuser (who sees past
/// every policy), as text, one part per table: the announcement documents, their attachment
/// links, every attachment, the announcement leases, and the kind_writers table.
async fn victim(admin: &mut PgConnection) -> Vec<String> {
    let mut parts = Vec::new();
    for sql in [
        "SELECT json_agg(d ORDER BY id)::text FROM documents d WHERE source_type = 'announcement'",
        "SELECT json_agg(l ORDER BY document_id, name)::text FROM document_attachments l \
         JOIN documents d ON d.id = l.document_id WHERE d.source_type = 'announcement'",
        "SELECT json_agg(a ORDER BY hash)::text FROM attachments a",
        "SELECT json_agg(f ORDER BY source_id)::text FROM fill_leases f \
         WHERE source_type = 'announcement'",
        "SELECT json_agg(k ORDER BY source_type, role_name)::text FROM kind_writers k",
    ] {
        let part: Option<String> = sqlx::query_scalar(sql)
            .fetch_one(&mut *admin)
            .await
            .unwrap();
        parts.push(part.unwrap_or_default());
    }
    parts
}

/// The parts of the victim that differ, shortened for a report.
fn changes(before: &[String], after: &[String]) -> String {
    let short = |s: &str| s.chars().take(300).collect::<String>();
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| format!("  {} -> {}", short(b), short(a)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs each attack on a fresh session of the role at `url`; answers the failures.
async fn attack(url: &str, attacks: &[Attack], admin: &mut PgConnection) -> Vec<String> {
    let mut failures = Vec::new();
    for a in attacks {
        let before = victim(admin).await;
        let mut conn = PgConnection::connect(url).await.unwrap();
        for step in a.setup {
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(*step))
                .execute(&mut conn)
                .await
            {
                failures.push(format!("{}: setup {step:?} failed: {e}", a.name));
            }
        }
        let outcome = sqlx::query(sqlx::AssertSqlSafe(a.attempt))
            .execute(&mut conn)
            .await;
        let met = match (a.refusal, &outcome) {
            (Refusal::NoRows, Ok(done)) => done.rows_affected() == 0,
            (Refusal::Error(code, text), Err(sqlx::Error::Database(e))) => {
                e.code().as_deref() == Some(code) && e.message().contains(text)
            }
            _ => false,
        };
        if !met {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                a.name,
                a.refusal,
                outcome.map(|d| format!("{} rows", d.rows_affected()))
            ));
        }
        let _ = conn.close().await;
        let after = victim(admin).await;
        if after != before {
            failures.push(format!(
                "{}: the provider's rows changed:\n{}",
                a.name,
                changes(&before, &after)
            ));
        }
    }
    failures
}

#[tokio::test]
async fn the_service_roles_hold_against_an_attacker() {
    let db = Db::postgres();
    let (provider_url, consumer_url) = db.with_roles();
    let ex = Exchange::start();
    // As deployed: the provider's own role runs the migrations.
    let provider = Provider::start(&provider_url, &ex.url, &[]).await;
    provider
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();

    // The consumer's real job, with its role: its own writes (document, attachments, round
    // lease) succeed.
    let consumer = ConsumerProc::start(
        &consumer_url,
        &provider.url(),
        &[("DATABASE_MIGRATE", "false")],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}");
    assert!(!report.downloaded.is_empty());
    drop(consumer);

    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    // The victim has an attachment link too (the provider's documents have none of their own).
    sqlx::query(
        "INSERT INTO attachments (hash, content_type, size_bytes, data) \
         VALUES ('victim-hash', 'application/pdf', 1, 'x')",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO document_attachments (document_id, name, attachment_hash) \
         SELECT id, 'victim', 'victim-hash' FROM documents WHERE source_type = 'announcement'",
    )
    .execute(&mut admin)
    .await
    .unwrap();

    let mut failures = Vec::new();
    // A deployment that has the migrations but not today's roles.sql: TEMP still granted.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT TEMPORARY ON DATABASE {} TO documents_consumer",
        db_name(&db)
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    failures.extend(attack(&consumer_url, SHADOWING, &mut admin).await);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "REVOKE TEMPORARY ON DATABASE {} FROM documents_consumer",
        db_name(&db)
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    failures.extend(attack(&consumer_url, DIRECT, &mut admin).await);
    failures.extend(attack(&provider_url, PROVIDER_LIMITS, &mut admin).await);

    // COPY FROM STDIN is its own protocol: refused on a table under row-level security.
    let before = victim(&mut admin).await;
    let mut conn = PgConnection::connect(&consumer_url).await.unwrap();
    match conn.copy_in_raw("COPY documents FROM STDIN").await {
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("0A000")
                && e.message().contains("row-level security") => {}
        Err(e) => failures.push(format!("COPY FROM STDIN: unexpected refusal {e}")),
        Ok(copy) => {
            let _ = copy.abort("not refused").await;
            failures.push("COPY FROM STDIN: not refused".into());
        }
    }
    assert_eq!(victim(&mut admin).await, before);

    assert!(
        failures.is_empty(),
        "{} attacks were not refused as they must be:\n{}",
        failures.len(),
        failures.join("\n")
    );
    e2e::harness::assert_invariants(&db).await;
}

/// Where the schema belongs to another role (an operator migrated it), row-level security
/// applies to the provider too: it writes, and takes leases on, exactly the kinds
/// `kind_writers` lists for it, so each kind it provides needs its row there.
#[tokio::test]
async fn a_provider_that_does_not_own_the_tables_writes_every_kind_it_provides() {
    let db = Db::postgres();
    db.store().await; // migrated by the database's owner
    let (provider_url, _) = db.with_roles();
    let ex = Exchange::start();
    let provider = Provider::start(&provider_url, &ex.url, &[("DATABASE_MIGRATE", "false")]).await;
    for kind in [Kind::Announcement, Kind::MarketData, Kind::Dividends] {
        provider
            .client()
            .get_document("ASX:GNP", &DocumentOptions::new().kind(kind))
            .await
            .unwrap_or_else(|e| panic!("the provider's role cannot write {kind}: {e:?}"));
    }
    // And not the consumer's kind: a direct write of one is refused by the same rule.
    let mut conn = PgConnection::connect(&provider_url).await.unwrap();
    let refused = sqlx::query(
        "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
         content_json, content_hash, version, last_synced) VALUES \
         ('x', 'announcement_download', 'ASX:GNP', 't', '', '{}', 'h', 1, now())",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("row-level security"),
        "{refused}"
    );
}

fn db_name(db: &Db) -> String {
    db.url().rsplit('/').next().unwrap().to_string()
}
