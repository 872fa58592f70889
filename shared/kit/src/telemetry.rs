//! Logging set-up shared by the binaries: human-readable lines by default, JSON on request,
//! filtered by `RUST_LOG` (default `info`). Lines are written to stderr by a background thread,
//! so a request never waits on the log's write; none are dropped (a full buffer makes writers
//! wait instead). Every line, and every panic message, is scrubbed of the process's secrets
//! ([`crate::secrets`]) on its way out.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, EnvFilter};

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Keep the returned guard alive for the life of the program:
/// dropping it flushes what is still buffered.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(crate::secrets::Scrubbing(writer))
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    scrub_panics();
    guard
}

/// Panic messages go to the log, scrubbed of secrets, instead of straight to stderr.
fn scrub_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = crate::secrets::scrub(&info.to_string()).into_owned();
        tracing::error!(panic = %message, "panicked");
        eprintln!("{message}");
    }));
}
