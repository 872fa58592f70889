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
    /// Checks that the sample exchange answers on the listen address (`GET /_stats`), for
    /// container health checks: exits 0 when it does.
    #[arg(long)]
    healthcheck: bool,
}

/// `GET /_stats` on `listen` (a wildcard address on loopback): whether it answers 200.
fn answers(listen: &str) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut addr: std::net::SocketAddr = listen.parse()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /_stats HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.healthcheck {
        if answers(&args.listen).unwrap_or(false) {
            println!("OK");
            return Ok(());
        }
        eprintln!("sample-exchange does not answer on {}", args.listen);
        std::process::exit(1);
    }
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
