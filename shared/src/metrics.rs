//! Prometheus metrics plumbing both services share: one registry per process and the HTTP
//! endpoint (`GET /metrics` on its own port, off unless an address is configured) that renders
//! it in the text exposition format.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::{http::header, routing::get, Router};
use prometheus_client::{encoding::text::encode, metrics::gauge::Gauge, registry::Registry};
use tokio::net::TcpListener;

/// A process's metrics registry, shared by whoever registers metrics in it.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Called before each scrape, to refresh gauges sampled from elsewhere (e.g. pool usage).
pub type BeforeScrape = Arc<dyn Fn() + Send + Sync>;

/// Serves `GET /metrics` on `addr` until the process ends; answers the bound address.
pub async fn serve(
    addr: &str,
    registry: SharedRegistry,
    before_scrape: BeforeScrape,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    // Tasks alive in the runtime: a count that grows with traffic and never comes back down
    // is a task leak.
    let tasks = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    registry.lock().expect("metrics registry lock").register(
        "runtime_tasks_alive",
        "Tokio tasks alive in this process",
        tasks.clone(),
    );
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            let before_scrape = before_scrape.clone();
            let tasks = tasks.clone();
            async move {
                tasks.set(
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks() as i64,
                );
                before_scrape();
                let mut body = String::new();
                let registry = registry.lock().expect("metrics registry lock");
                if encode(&mut body, &registry).is_err() {
                    body.clear();
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics endpoint listening");
    Ok(bound)
}
