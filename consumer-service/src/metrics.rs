//! The consumer's Prometheus metrics: tickers processed by result, PDFs by result.

use std::sync::{Arc, LazyLock, Mutex};

use documents_kit::metrics::SharedRegistry;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

pub struct ConsumerMetrics {
    pub registry: SharedRegistry,
    pub tickers: Family<ResultLabels, Counter>,
    pub downloads: Family<ResultLabels, Counter>,
}

pub static METRICS: LazyLock<ConsumerMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let tickers = Family::<ResultLabels, Counter>::default();
    registry.register(
        "consumer_tickers",
        "Tickers processed, by result (ok, error)",
        tickers.clone(),
    );
    let downloads = Family::<ResultLabels, Counter>::default();
    registry.register(
        "consumer_downloads",
        "Matched announcements by result (downloaded, skipped, failed)",
        downloads.clone(),
    );
    ConsumerMetrics {
        registry: Arc::new(Mutex::new(registry)),
        tickers,
        downloads,
    }
});

impl ConsumerMetrics {
    pub fn count(family: &Family<ResultLabels, Counter>, result: &str, n: usize) {
        family
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n as u64);
    }
}
