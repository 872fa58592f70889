//! The provider's wiring on the service host ([`documents_kit::host`]): [`Application::build`]
//! validates every setting once, keeps what it made and binds; [`Application::run_until_stopped`]
//! adds the provider's routes (documents and admin) and builds the provisioner once the
//! database is ready. The life cycle itself (health, background connect, drain, shutdown order)
//! is the host's.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use documents_api::proto::{
    documents::{
        admin::v1::admin_server::AdminServer, v1::document_provider_server::DocumentProviderServer,
    },
    ADMIN_SERVICE_NAME, PROVIDER_SERVICE_NAME,
};
use documents_kit::{
    grpc_server::GrpcServer,
    host::{DatabaseSpec, Host, HostSpec},
};
use tonic::{codec::CompressionEncoding, service::RoutesBuilder};

use crate::{
    admin::AdminService,
    config::Config,
    grpc::ProviderService,
    metrics::METRICS,
    provisioner::{Provisioner, Settings},
    sources::{self, Sources},
};

/// A provider, validated and bound.
pub struct Application {
    host: Host<Arc<Provisioner>>,
    settings: Settings,
    sources: Sources,
    request_timeout: Duration,
    connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
    max_message_bytes: usize,
    hit_log_every: Duration,
}

impl Application {
    /// Validates the configuration (failing fast, before anything listens) and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let settings = config.settings()?;
        let sources = sources::build(&config.source_settings()?)?;
        let limits = config.server.limits()?;
        let url = config.database.url()?;
        // The change feed holds one pooled connection for as long as it listens (unless it
        // has a session URL of its own).
        if config.hit_cache
            && config.database.listen_url.is_none()
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
        let (request_timeout, max_message_bytes, connection_age) = (
            limits.request_timeout,
            limits.max_message_bytes,
            limits.connection_age,
        );
        let spec = HostSpec {
            name: PROVIDER_SERVICE_NAME,
            server: GrpcServer {
                limits,
                tls: config.security.server_tls()?,
                registry: &METRICS.registry,
                services: &[PROVIDER_SERVICE_NAME, ADMIN_SERVICE_NAME],
                access: config.access()?,
            },
            database: DatabaseSpec {
                url,
                max_connections: config.database.max_connections,
                migrate: config.database.migrate,
                topology: config.database.serving_topology()?,
            },
            metrics_addr: config.metrics_addr.clone(),
            on_scrape: Some(|store| {
                let (open, idle) = store.pool_usage();
                METRICS.pool(open, idle);
            }),
        };
        Ok(Self {
            host: Host::bind(&config.listen_addr, spec).await?,
            settings,
            sources,
            request_timeout,
            connection_age,
            max_message_bytes,
            hit_log_every: Duration::from_secs(config.hit_log_secs.max(1)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            host,
            settings,
            sources,
            request_timeout,
            connection_age,
            max_message_bytes,
            hit_log_every,
        } = self;
        crate::hit_log::start(hit_log_every, host.background());
        let provisioner = host.state();
        let documents = DocumentProviderServer::new(ProviderService::new(
            provisioner.clone(),
            host.database(),
            request_timeout,
            connection_age,
        ))
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(documents)
            .add_service(AdminServer::new(AdminService::new(provisioner)));
        host.run(
            routes,
            move |store, background| {
                let provisioner = Arc::new(Provisioner::new(store, sources, settings));
                provisioner.start_background(background);
                Ok(provisioner)
            },
            shutdown,
        )
        .await
    }
}
