//! Prometheus metrics plumbing both services share: one registry per process, process metrics
//! (memory, descriptors, threads, CPU), and the HTTP endpoint (`GET /metrics` on its own port,
//! off unless an address is configured) that renders the registry in the format the scraper
//! asks for: OpenMetrics when its `Accept` names it (as Prometheus does), else the classic text
//! format 0.0.4 (what `promtool check metrics` and `curl` read).

use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::{
    http::{header, HeaderMap},
    routing::get,
    Router,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
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
    background: &crate::shutdown::Background,
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
    // What is running, as the usual constant-1 info series, so dashboards can tell a rollout's
    // old and new replicas apart.
    let build =
        prometheus_client::metrics::family::Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".into(), crate::build_info::VERSION.into()),
            ("revision".into(), crate::build_info::REVISION.into()),
            ("build_date".into(), crate::build_info::BUILD_DATE.into()),
        ])
        .set(1);
    registry.lock().expect("metrics registry lock").register(
        "build_info",
        "The running build: version, source revision and build date (always 1)",
        build,
    );
    let process = ProcessMetrics::register(&mut registry.lock().expect("metrics registry lock"));
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let registry = registry.clone();
            let before_scrape = before_scrape.clone();
            let tasks = tasks.clone();
            let process = process.clone();
            async move {
                tasks.set(
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks() as i64,
                );
                process.sample();
                before_scrape();
                let mut body = String::new();
                let registry = registry.lock().expect("metrics registry lock");
                if encode(&mut body, &registry).is_err() {
                    body.clear();
                }
                let openmetrics = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                if openmetrics {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                } else {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        classic_text(&body),
                    )
                }
            }
        }),
    );
    background.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics endpoint listening");
    Ok(bound)
}

/// The OpenMetrics text as the classic Prometheus text format 0.0.4: counters are named with
/// their `_total` suffix in `# HELP`/`# TYPE`, `unknown` is `untyped`, and the `# UNIT` and
/// `# EOF` lines (which the classic format does not have) are left out.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Written once the type (and so the name) is known.
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Resident memory, open descriptors, threads and CPU time of this process, read from
/// `/proc/self` at each scrape (Linux; elsewhere they stay 0).
#[derive(Clone, Default)]
struct ProcessMetrics {
    resident: Gauge<i64, std::sync::atomic::AtomicI64>,
    fds: Gauge<i64, std::sync::atomic::AtomicI64>,
    max_fds: Gauge<i64, std::sync::atomic::AtomicI64>,
    threads: Gauge<i64, std::sync::atomic::AtomicI64>,
    cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    cpu_seen: Arc<Mutex<f64>>,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident.clone(),
        );
        registry.register("process_open_fds", "Open file descriptors", m.fds.clone());
        registry.register(
            "process_max_fds",
            "Limit of open file descriptors",
            m.max_fds.clone(),
        );
        registry.register("process_threads", "OS threads", m.threads.clone());
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            m.cpu.clone(),
        );
        m
    }

    fn sample(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let value = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmRSS:") {
                    self.resident.set(value(line) * 1024);
                } else if line.starts_with("Threads:") {
                    self.threads.set(value(line));
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(soft) = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<i64>().ok())
            {
                self.max_fds.set(soft);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which may hold spaces) start after the last ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            // utime and stime are fields 14 and 15 of the line: 12 and 13 after the command.
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                // Clock ticks per second: 100 on Linux for every architecture in use.
                let seconds = (user + system) / 100.0;
                let mut seen = self.cpu_seen.lock().expect("cpu lock");
                if seconds > *seen {
                    self.cpu.inc_by(seconds - *seen);
                    *seen = seconds;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_their_suffix() {
        let om = "# HELP calls Calls made.\n# TYPE calls counter\ncalls_total{a=\"b\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP calls_total Calls made.\n# TYPE calls_total counter\ncalls_total{a=\"b\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
