//! Start-up and shutdown of the consumer: binds the listener, serves health and reflection at
//! once, connects and migrates the database in the background (health turns SERVING when done),
//! and drains in-flight calls on shutdown. Also builds the processor for the one-shot CLI mode.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use documents_api::{
    proto::{consumer::v1::consumer_server::ConsumerServer, CONSUMER_SERVICE_NAME},
    ProviderClient,
};
use documents_kit::{
    grpc_server::GrpcServer,
    server::{health_service, set_serving},
    shutdown::Background,
};
use documents_store as storage;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::{config::Config, download::Downloader, grpc::ConsumerService, job::Processor};

/// Connects the database (migrating it) and the provider client into a processor.
pub async fn processor(config: &Config) -> anyhow::Result<Processor> {
    let url = config.database.url()?;
    let store = storage::connect(&url, config.database.max_connections)
        .await
        .with_context(|| format!("connecting to {}", documents_kit::config::redact_url(&url)))?;
    if config.database.migrate {
        store.migrate().await.context("migrating the database")?;
    } else {
        store
            .schema_ready()
            .await
            .context("checking the database schema")?;
    }
    processor_with(config, store)
}

fn processor_with(
    config: &Config,
    store: Arc<dyn storage::DocumentStore>,
) -> anyhow::Result<Processor> {
    let provider = ProviderClient::with_config(&config.provider_url, config.client_config()?)?;
    let downloader = Downloader::new(config.download_limits()?)?;
    Ok(Processor::new(
        provider,
        store,
        downloader,
        config.job_settings(),
    ))
}

pub struct Application {
    config: Config,
    listener: TcpListener,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Validate what can be validated before listening.
        documents_api::client::parse_targets(&config.provider_url, Duration::from_secs(1), None)?;
        config.client_config()?;
        config.download_limits()?;
        config.server.limits()?;
        config.security.required_token()?;
        config.security.server_tls()?;
        let listener = TcpListener::bind(&config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        Ok(Self { config, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application { config, listener } = self;
        let (health, health_svc) = health_service(CONSUMER_SERVICE_NAME).await;
        let limits = config.server.limits()?;
        // Every background loop obeys this, and stops once the calls are drained.
        let background = Background::new();
        let cell = Arc::new(OnceLock::new());
        if let Some(addr) = config
            .metrics_addr
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            documents_kit::metrics::serve(
                addr,
                crate::metrics::METRICS.registry.clone(),
                Arc::new(|| {}),
                &background,
            )
            .await?;
        }

        let ready_cell = cell.clone();
        let ready_config = config.clone();
        let url = config.database.url()?;
        let database = documents_kit::server::DatabaseStatus::up();
        let watched = database.clone();
        let loops = background.clone();
        let stores: Arc<OnceLock<Arc<dyn storage::DocumentStore>>> = Arc::default();
        let ready_store = stores.clone();
        let ready = tokio::spawn(async move {
            let store = storage::connect_until_ready(
                &url,
                ready_config.database.max_connections,
                ready_config.database.migrate,
            )
            .await;
            let _ = ready_store.set(store.clone());
            match processor_with(&ready_config, store.clone()) {
                Ok(p) => {
                    let _ = ready_cell.set(p);
                    set_serving(&health, CONSUMER_SERVICE_NAME, true).await;
                    documents_kit::server::watch_database(
                        health,
                        CONSUMER_SERVICE_NAME,
                        store,
                        watched,
                        &loops,
                    );
                    tracing::info!("database ready: serving");
                }
                Err(e) => tracing::error!(error = %e, "cannot build the processor"),
            }
        });

        let service = ConsumerServer::new(ConsumerService::new(cell, database))
            .max_decoding_message_size(limits.max_message_bytes)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_svc).add_service(service);
        tracing::info!(addr = %listener.local_addr()?, provider = %config.provider_url, "consumer-service listening");
        let result = GrpcServer {
            limits,
            tls: config.security.server_tls()?,
            registry: &crate::metrics::METRICS.registry,
            services: &[CONSUMER_SERVICE_NAME],
            // The consumer's server has one token, for every method.
            access: documents_kit::access::Access::new(
                config.security.required_token()?.as_deref(),
                None,
                &[],
            ),
        }
        .serve(routes.routes(), listener, shutdown)
        .await;
        // The calls are drained: stop the loops, then close the pool.
        ready.abort();
        let stopped = background.stop(Duration::from_secs(5)).await;
        if let Some(store) = stores.get() {
            store.close().await;
        }
        tracing::info!(
            tasks = stopped,
            "background tasks stopped, database pool closed"
        );
        result
    }
}
