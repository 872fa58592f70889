//! Start-up and shutdown: binds the listener, serves health and reflection at once, connects
//! and migrates the database in the background (health turns SERVING when done), and drains
//! in-flight calls on shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::Context;
use documents_api::proto::{
    documents::v1::document_provider_server::DocumentProviderServer, ADMIN_SERVICE_NAME,
    PROVIDER_SERVICE_NAME,
};
use documents_kit::{
    grpc_server::GrpcServer,
    server::{health_service, set_serving},
    shutdown::Background,
};
use documents_store as storage;
use tokio::net::TcpListener;
use tonic::{codec::CompressionEncoding, service::RoutesBuilder};

use crate::{
    config::Config, grpc::ProviderService, metrics::METRICS, provisioner::Provisioner, sources,
};

pub struct Application {
    config: Config,
    listener: TcpListener,
}

impl Application {
    /// Validates the configuration and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Fail fast on bad settings, before anything listens.
        config.settings()?;
        config.source_settings()?;
        config.access()?;
        config.security.server_tls()?;
        config.server.limits()?;
        let url = config.database.url()?;
        // The change feed holds one pooled connection for as long as it listens.
        if config.hit_cache
            && config.database.max_connections < 2
            && (url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            anyhow::bail!(
                "DATABASE_MAX_CONNECTIONS: {} is too few on PostgreSQL: the change feed keeps one \
                 connection of the pool, so calls need at least one more (set 2 or more, or \
                 PROVIDER_HIT_CACHE=false)",
                config.database.max_connections
            );
        }
        let listener = TcpListener::bind(&config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        Ok(Self { config, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application { config, listener } = self;
        let settings = config.settings()?;
        let sources = sources::build(&config.source_settings()?)?;
        let (health, health_svc) = health_service(PROVIDER_SERVICE_NAME).await;
        let limits = config.server.limits()?;
        // Every background loop obeys this, and stops once the calls are drained.
        let background = Background::new();
        crate::hit_log::start(
            std::time::Duration::from_secs(config.hit_log_secs.max(1)),
            &background,
        );
        let provisioner: Arc<OnceLock<Arc<Provisioner>>> = Arc::new(OnceLock::new());
        if let Some(addr) = config
            .metrics_addr
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            let cell = provisioner.clone();
            let sample_pool: documents_kit::metrics::BeforeScrape = Arc::new(move || {
                if let Some(p) = cell.get() {
                    let (open, idle) = p.store().pool_usage();
                    METRICS.pool(open, idle);
                }
            });
            documents_kit::metrics::serve(addr, METRICS.registry.clone(), sample_pool, &background)
                .await?;
        }

        // The database comes up in the background; until then health says NOT_SERVING and
        // calls answer UNAVAILABLE.
        let cell = provisioner.clone();
        let url = config.database.url()?;
        let max_conn = config.database.max_connections;
        let migrate = config.database.migrate;
        let database = documents_kit::server::DatabaseStatus::up();
        let watched = database.clone();
        let loops = background.clone();
        let ready = tokio::spawn(async move {
            let store = storage::connect_until_ready(&url, max_conn, migrate).await;
            let provisioner = Arc::new(Provisioner::new(store.clone(), sources, settings));
            provisioner.start_background(&loops);
            let _ = cell.set(provisioner);
            set_serving(&health, PROVIDER_SERVICE_NAME, true).await;
            documents_kit::server::watch_database(
                health,
                PROVIDER_SERVICE_NAME,
                store,
                watched,
                &loops,
            );
            tracing::info!("database ready: serving");
        });

        let admin = documents_api::proto::documents::admin::v1::admin_server::AdminServer::new(
            crate::admin::AdminService::new(provisioner.clone()),
        );
        let on_stop = provisioner.clone();
        let service = DocumentProviderServer::new(ProviderService::new(
            provisioner,
            database,
            limits.request_timeout,
        ))
        .max_decoding_message_size(limits.max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_svc)
            .add_service(service)
            .add_service(admin);
        tracing::info!(addr = %listener.local_addr()?, "provider-service listening");
        let result = GrpcServer {
            limits,
            tls: config.security.server_tls()?,
            registry: &METRICS.registry,
            services: &[PROVIDER_SERVICE_NAME, ADMIN_SERVICE_NAME],
            access: config.access()?,
        }
        .serve(routes.routes(), listener, shutdown)
        .await;
        // The calls are drained: stop the loops, then close the pool.
        ready.abort();
        let stopped = background.stop(std::time::Duration::from_secs(5)).await;
        if let Some(p) = on_stop.get() {
            p.store().close().await;
        }
        tracing::info!(
            tasks = stopped,
            "background tasks stopped, database pool closed"
        );
        result
    }
}
