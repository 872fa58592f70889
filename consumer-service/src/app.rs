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
use shared::{
    proto::{consumer::v1::consumer_server::ConsumerServer, CONSUMER_SERVICE_NAME},
    server::{health_service, reflection_services, serve_with_drain, set_serving},
    storage, ProviderClient,
};
use tokio::net::TcpListener;
use tonic::transport::{server::TcpIncoming, Server};

use crate::{config::Config, download::Downloader, grpc::ConsumerService, job::Processor};

/// Connects the database (migrating it) and the provider client into a processor.
pub async fn processor(config: &Config) -> anyhow::Result<Processor> {
    let url = config.database.url()?;
    let store = storage::connect(&url, config.database.max_connections)
        .await
        .with_context(|| format!("connecting to {}", shared::config::redact_url(&url)))?;
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
    let downloader = Downloader::new(config.download_limits())?;
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
        shared::client::parse_targets(&config.provider_url, Duration::from_secs(1), None)?;
        config.client_config()?;
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
        let (reflection_v1, reflection_v1alpha) = reflection_services(&[CONSUMER_SERVICE_NAME])?;
        let cell = Arc::new(OnceLock::new());
        if let Some(addr) = config
            .metrics_addr
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            shared::metrics::serve(
                addr,
                crate::metrics::METRICS.registry.clone(),
                Arc::new(|| {}),
            )
            .await?;
        }

        let ready_cell = cell.clone();
        let ready_config = config.clone();
        let url = config.database.url()?;
        let database = shared::server::DatabaseStatus::up();
        let watched = database.clone();
        let ready = tokio::spawn(async move {
            let store = storage::connect_until_ready(
                &url,
                ready_config.database.max_connections,
                ready_config.database.migrate,
            )
            .await;
            match processor_with(&ready_config, store.clone()) {
                Ok(p) => {
                    let _ = ready_cell.set(p);
                    set_serving(&health, CONSUMER_SERVICE_NAME, true).await;
                    shared::server::watch_database(health, CONSUMER_SERVICE_NAME, store, watched);
                    tracing::info!("database ready: serving");
                }
                Err(e) => tracing::error!(error = %e, "cannot build the processor"),
            }
        });

        let cap = Duration::from_millis(config.request_timeout_ms);
        let router = Server::builder()
            .timeout(cap)
            .tcp_nodelay(true)
            .initial_stream_window_size(shared::client::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(shared::client::HTTP2_CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Outermost: it sees every answer, refusals by the layers below included.
            .layer(shared::observe::ObserveLayer::new(
                &crate::metrics::METRICS.registry,
                &[CONSUMER_SERVICE_NAME],
            ))
            .layer(tower::util::MapResponseLayer::new(
                shared::server::conventional_status,
            ))
            .layer(shared::server::DeadlineLayer::new(cap))
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ConsumerServer::new(ConsumerService::new(cell, database))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .send_compressed(tonic::codec::CompressionEncoding::Gzip),
            );
        tracing::info!(addr = %listener.local_addr()?, provider = %config.provider_url, "consumer-service listening");
        // Options on accepted connections: tonic only applies its own when it binds itself.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let result = serve_with_drain(
            move |stop| router.serve_with_incoming_shutdown(incoming, stop),
            shutdown,
            Duration::from_millis(config.drain_timeout_ms),
        )
        .await;
        ready.abort();
        result
    }
}
