//! Health: the `grpc.health.v1` service whose readiness follows the database (NOT_SERVING until
//! it is connected and migrated, and while it does not answer its ping), the liveness entry that
//! follows only the process, and the `healthcheck` probe both binaries ship.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use tonic_health::{
    pb::health_server::HealthServer,
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::{HealthReporter, HealthService},
};

/// Health service name that answers SERVING as long as the process runs, whatever the database
/// does: the liveness probe (a database outage makes a replica not ready, not dead).
pub const LIVENESS_SERVICE: &str = "liveness";

/// Health service with `service_name` (and the overall "" entry) reported NOT_SERVING until the
/// caller marks it ready; [`LIVENESS_SERVICE`] SERVING from the start.
pub async fn health_service(service_name: &str) -> (HealthReporter, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    set_serving(&reporter, service_name, false).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// Marks `service_name` and the overall server SERVING or NOT_SERVING.
pub async fn set_serving(reporter: &HealthReporter, service_name: &str, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status(service_name, status).await;
    reporter.set_service_status("", status).await;
}

/// Whether the database answered the last health ping. The watcher sets it; a service refuses
/// work at once with UNAVAILABLE while it is down, instead of every call waiting on the pool.
/// Once the process is shutting down (`stopping`), nothing turns health SERVING again.
#[derive(Clone, Debug)]
pub struct DatabaseStatus(
    Arc<AtomicBool>,
    Arc<std::sync::Mutex<String>>,
    Arc<AtomicBool>,
    /// Set when the drain starts: endless calls (watches) end then.
    Arc<tokio::sync::watch::Sender<bool>>,
);

impl DatabaseStatus {
    /// A status that says "up" until the watcher finds otherwise.
    pub fn up() -> Self {
        Self(
            Arc::new(AtomicBool::new(true)),
            Arc::default(),
            Arc::default(),
            Arc::new(tokio::sync::watch::channel(false).0),
        )
    }

    /// The server starts draining its calls (after the lame-duck grace).
    pub fn start_draining(&self) {
        self.3.send_replace(true);
    }

    /// Resolves once the server drains: a call that would otherwise never end (a watch) ends
    /// then, so the drain does not wait on it.
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.3.subscribe();
        async move {
            if rx.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The process is shutting down: health stays NOT_SERVING from now on.
    pub fn stop_serving(&self) {
        self.2.store(true, Ordering::Release);
    }

    /// Whether the process is shutting down.
    pub fn stopping(&self) -> bool {
        self.2.load(Ordering::Acquire)
    }

    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Why the database is down, as the last ping found it.
    pub fn cause(&self) -> String {
        self.1.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Keeps health in step with the database after start-up: pings it every second and reports
/// NOT_SERVING while it does not answer or refuses writes (calls then fail with UNAVAILABLE,
/// naming the cause), SERVING again once it takes writes; `status` follows. Runs until the
/// process stops (`background`).
pub fn watch_database(
    reporter: HealthReporter,
    service_name: &'static str,
    store: Arc<dyn documents_store::DocumentStore>,
    status: DatabaseStatus,
    background: &crate::shutdown::Background,
) {
    background.spawn(async move {
        let mut serving = true;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cause = match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the database did not answer its ping within 2 s".to_string()),
            };
            let ok = cause.is_none();
            if let (Some(c), Ok(mut slot)) = (&cause, status.1.lock()) {
                if !serving && *slot != *c {
                    tracing::warn!(cause = %c, "database still unusable, for another reason");
                }
                slot.clone_from(c);
            }
            if ok != serving {
                serving = ok;
                status.0.store(ok, Ordering::Release);
                if !status.stopping() {
                    set_serving(&reporter, service_name, ok).await;
                }
                match cause {
                    None => tracing::info!("database takes writes again: serving"),
                    Some(cause) => tracing::warn!(%cause, "database unusable: not serving"),
                }
            }
        }
    });
}

/// The `healthcheck` subcommand of both binaries: prints SERVING and succeeds, or exits 1.
pub async fn healthcheck_command(
    listen_addr: &str,
    service_name: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    if !healthcheck_with_tls(listen_addr, service_name, tls).await? {
        eprintln!("{service_name} is not SERVING on {listen_addr}");
        std::process::exit(1);
    }
    println!("SERVING");
    Ok(())
}

/// Calls `grpc.health.v1.Health/Check` for `service_name` on `listen_addr` and answers whether
/// it is SERVING. A wildcard listen address is probed on loopback.
pub async fn healthcheck(listen_addr: &str, service_name: &str) -> anyhow::Result<bool> {
    healthcheck_with_tls(listen_addr, service_name, None).await
}

/// [`healthcheck`] over TLS when `tls` is set; the server's certificate must be valid for
/// `localhost`, the name a service's own probe uses.
pub async fn healthcheck_with_tls(
    listen_addr: &str,
    service_name: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<bool> {
    let mut addr: SocketAddr = listen_addr
        .parse()
        .with_context(|| format!("listen address {listen_addr:?} is not host:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(match &tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    })?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.domain_name("localhost"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service_name.to_string(),
        })
        .await
        .with_context(|| format!("health check of {service_name:?} on {addr}"))?;
    Ok(resp.into_inner().status() == ServingStatus::Serving)
}
