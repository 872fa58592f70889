//! The sample exchange binary: serves deterministic, fictional exchange data on the real
//! upstreams' paths (see the library part of this crate). Prints its address on the first stdout line.

use clap::Parser;
use sample_exchange::{router, Control};
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "sample-exchange",
    about = "Local stand-in for the exchange's upstreams, with sample data"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        env = "SAMPLE_EXCHANGE_LISTEN_ADDR",
        default_value = "127.0.0.1:8700"
    )]
    listen: String,
    /// Latency added to every upstream answer, in milliseconds.
    #[arg(long, env = "SAMPLE_EXCHANGE_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!("sample-exchange listening on http://{addr}");
    std::io::stdout().flush()?;
    let control = Control {
        latency_ms: args.latency_ms,
        ..Control::default()
    };
    axum::serve(listener, router(control))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
