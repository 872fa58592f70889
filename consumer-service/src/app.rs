//! The consumer's wiring on the service host ([`documents_kit::host`]): [`Application::build`]
//! validates every setting once, makes the provider client and the downloader, and binds;
//! [`Application::run_until_stopped`] adds the consumer's route and builds the processor once the
//! database is ready. The life cycle itself (health, background connect, drain, shutdown order)
//! is the host's. Also builds the processor for the one-shot CLI mode.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use documents_api::{
    proto::{consumer::v1::consumer_server::ConsumerServer, CONSUMER_SERVICE_NAME},
    ProviderClient,
};
use documents_kit::{
    access::Access,
    grpc_server::GrpcServer,
    host::{DatabaseSpec, Host, HostSpec},
};
use documents_store as storage;
use tonic::{codec::CompressionEncoding, service::RoutesBuilder};

use crate::{
    config::Config,
    download::Downloader,
    grpc::ConsumerService,
    job::{JobSettings, Processor},
    metrics::METRICS,
};

/// What a processor is made of besides its store: made once, from validated settings.
#[derive(Clone)]
struct Parts {
    provider: ProviderClient,
    downloader: Downloader,
    settings: JobSettings,
}

impl Parts {
    fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Parts {
            provider: ProviderClient::with_config(&config.provider_url, config.client_config()?)?,
            downloader: Downloader::new(config.download_limits()?)?,
            settings: config.job_settings(),
        })
    }

    fn processor(self, store: Arc<dyn storage::DocumentStore>) -> Processor {
        Processor::new(self.provider, store, self.downloader, self.settings)
    }
}

/// Connects the database (migrating it) and the provider client into a processor (the
/// one-shot CLI mode).
pub async fn processor(config: &Config) -> anyhow::Result<Processor> {
    let parts = Parts::new(config)?;
    config.database.serving_topology()?;
    let store = config
        .database
        .connect(config.database.max_connections)
        .await?;
    if config.database.migrate {
        store.migrate().await.context("migrating the database")?;
    } else {
        store
            .schema_ready()
            .await
            .context("checking the database schema")?;
    }
    Ok(parts.processor(store))
}

/// A consumer, validated and bound.
pub struct Application {
    host: Host<Processor>,
    parts: Parts,
    max_message_bytes: usize,
    connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
}

impl Application {
    /// Validates the configuration (failing fast, before anything listens) and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let parts = Parts::new(&config)?;
        let limits = config.server.limits()?;
        let (max_message_bytes, connection_age) = (limits.max_message_bytes, limits.connection_age);
        let spec = HostSpec {
            name: CONSUMER_SERVICE_NAME,
            server: GrpcServer {
                limits,
                tls: config.security.server_tls()?,
                registry: &METRICS.registry,
                services: &[CONSUMER_SERVICE_NAME],
                // The consumer's server has one token, for every method.
                access: Access::new(config.security.required_token()?.as_deref(), None, &[]),
            },
            database: DatabaseSpec {
                url: config.database.url()?,
                max_connections: config.database.max_connections,
                migrate: config.database.migrate,
                topology: config.database.serving_topology()?,
            },
            metrics_addr: config.metrics_addr.clone(),
            on_scrape: None,
        };
        let host = Host::bind(&config.listen_addr, spec).await?;
        tracing::info!(provider = %config.provider_url, "calling the provider");
        Ok(Self {
            host,
            parts,
            max_message_bytes,
            connection_age,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            host,
            parts,
            max_message_bytes,
            connection_age,
        } = self;
        let service = ConsumerServer::new(ConsumerService::new(
            host.state(),
            host.database(),
            connection_age,
        ))
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
        let mut routes = RoutesBuilder::default();
        routes.add_service(service);
        host.run(
            routes,
            move |store, _background| Ok(parts.processor(store)),
            shutdown,
        )
        .await
    }
}
