//! The service host: one start-up and shutdown order for both services, in the manner of
//! zero-to-production's `Application`. [`Host::bind`] takes settings already validated, binds
//! the gRPC (and metrics) listeners and keeps them; [`Host::run`] serves health at once,
//! connects and migrates the database in the background (health turns SERVING when the
//! service's state is built on it), serves until shutdown, then drains the calls, stops the
//! background loops and closes the pool, in that order. A service brings only its own wiring:
//! its routes, and how its state is made from the store.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use documents_store::{self as storage, DocumentStore};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    grpc_server::GrpcServer,
    health::{health_service, set_serving, watch_database, DatabaseStatus},
    shutdown::Background,
};

/// How long the background loops get to stop once the calls are drained.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// The database a service runs on.
#[derive(Clone, Debug)]
pub struct DatabaseSpec {
    pub url: String,
    pub max_connections: u32,
    pub migrate: bool,
    pub topology: storage::Topology,
}

/// What a service tells the host, validated.
pub struct HostSpec {
    /// The service's name in health (SERVING once its state is ready) and in the logs.
    pub name: &'static str,
    pub server: GrpcServer,
    pub database: DatabaseSpec,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<String>,
    /// Called with the store before each scrape (e.g. to sample the pool), once it is ready.
    pub on_scrape: Option<fn(&dyn DocumentStore)>,
}

/// A bound service, its state (`T`) set once the database is ready.
pub struct Host<T> {
    spec: HostSpec,
    listener: TcpListener,
    background: Background,
    health: (HealthReporter, HealthServer<HealthService>),
    state: Arc<OnceLock<T>>,
    store: Arc<OnceLock<Arc<dyn DocumentStore>>>,
    database: DatabaseStatus,
    metrics_addr: Option<SocketAddr>,
}

impl<T: Send + Sync + 'static> Host<T> {
    /// Binds `listen_addr` (and the metrics address): nothing is served until [`Host::run`].
    pub async fn bind(listen_addr: &str, spec: HostSpec) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("binding {listen_addr}"))?;
        // Every background loop obeys this, and stops once the calls are drained.
        let background = Background::new();
        let store: Arc<OnceLock<Arc<dyn DocumentStore>>> = Arc::default();
        let metrics_addr = match spec
            .metrics_addr
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            Some(addr) => {
                let (ready, on_scrape) = (store.clone(), spec.on_scrape);
                let before_scrape: crate::metrics::BeforeScrape = Arc::new(move || {
                    if let (Some(store), Some(sample)) = (ready.get(), on_scrape) {
                        sample(store.as_ref());
                    }
                });
                let registry = spec.server.registry.clone();
                Some(crate::metrics::serve(addr, registry, before_scrape, &background).await?)
            }
            None => None,
        };
        Ok(Host {
            health: health_service(spec.name).await,
            spec,
            listener,
            background,
            state: Arc::default(),
            store,
            database: DatabaseStatus::up(),
            metrics_addr,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The service's state, for its gRPC services: empty until the database is ready (they
    /// answer UNAVAILABLE until then).
    pub fn state(&self) -> Arc<OnceLock<T>> {
        self.state.clone()
    }

    /// Whether the database answers its health ping, for the services to refuse work at once
    /// while it does not.
    pub fn database(&self) -> DatabaseStatus {
        self.database.clone()
    }

    /// The process's background loops (spawned through it, stopped after the drain).
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Serves `routes` (and health, and reflection) until `shutdown` resolves; `ready` makes the
    /// service's state from the store once it is connected and migrated, and may spawn
    /// background loops. Then drains the calls, stops the loops and closes the pool.
    pub async fn run<R>(
        self,
        mut routes: RoutesBuilder,
        ready: R,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        R: FnOnce(Arc<dyn DocumentStore>, &Background) -> anyhow::Result<T> + Send + 'static,
    {
        let Host {
            spec,
            listener,
            background,
            health: (reporter, health),
            state,
            store,
            database,
            metrics_addr: _,
        } = self;
        let HostSpec {
            name,
            server,
            database: db,
            ..
        } = spec;

        // Lame duck: on the signal, NOT_SERVING at once (and for good), still serving for the
        // grace period, then the drain.
        let grace = server.limits.shutdown_grace;
        let (stopping_reporter, stopping) = (reporter.clone(), database.clone());
        let shutdown = async move {
            shutdown.await;
            stopping.stop_serving();
            set_serving(&stopping_reporter, name, false).await;
            if !grace.is_zero() {
                tracing::info!(
                    ?grace,
                    "shutting down: NOT_SERVING, still serving for the grace period"
                );
                tokio::time::sleep(grace).await;
            }
            stopping.start_draining();
        };

        // The database comes up in the background; until then health says NOT_SERVING and
        // calls answer UNAVAILABLE.
        let loops = background.clone();
        let ready_store = store.clone();
        let connecting = tokio::spawn(async move {
            let connected =
                storage::connect_until_ready(&db.url, db.max_connections, db.migrate, &db.topology)
                    .await;
            let _ = ready_store.set(connected.clone());
            match ready(connected.clone(), &loops) {
                Ok(made) => {
                    let _ = state.set(made);
                    if !database.stopping() {
                        set_serving(&reporter, name, true).await;
                    }
                    watch_database(reporter, name, connected, database, &loops);
                    tracing::info!("database ready: serving");
                }
                Err(e) => tracing::error!(error = %e, "cannot start on the database"),
            }
        });

        routes.add_service(health);
        tracing::info!(
            addr = %listener.local_addr()?,
            service = name,
            version = crate::build_info::VERSION,
            revision = crate::build_info::REVISION,
            "gRPC listening"
        );
        let result = server.serve(routes.routes(), listener, shutdown).await;
        // The calls are drained: stop the loops, then close the pool.
        connecting.abort();
        let stopped = background.stop(BACKGROUND_STOP).await;
        if let Some(store) = store.get() {
            store.close().await;
        }
        tracing::info!(
            tasks = stopped,
            "background tasks stopped, database pool closed"
        );
        result
    }
}
