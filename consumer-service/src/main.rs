use clap::Parser;
use consumer_service::{
    app::{processor, Application},
    config::{Cli, Command},
    job::JobRequest,
};
use documents_api::proto::CONSUMER_SERVICE_NAME;
use documents_kit::{health, lifecycle, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck { liveness } => {
            let service = if liveness {
                health::LIVENESS_SERVICE
            } else {
                CONSUMER_SERVICE_NAME
            };
            let tls = cli.config.security.healthcheck_tls()?;
            health::healthcheck_command(&cli.config.listen_addr, service, tls).await
        }
        Command::Process { tickers, json } => {
            let logs = telemetry::init(cli.config.log_format);
            let p = processor(&cli.config).await?;
            let job = JobRequest {
                tickers,
                request_id: consumer_service::job::new_request_id(),
                ..JobRequest::default()
            };
            p.validate(&job)
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            let reports = p.run(&job, None).await;
            let mut failed = 0;
            for r in &reports {
                failed += usize::from(!r.is_ok());
                if json {
                    println!("{}", consumer_service::report::json(r));
                } else {
                    println!("{}", consumer_service::report::text(r));
                }
            }
            if failed > 0 {
                drop(logs);
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Watch { tickers, json } => {
            let _logs = telemetry::init(cli.config.log_format);
            let p = processor(&cli.config).await?;
            let job = JobRequest {
                tickers,
                ..JobRequest::default()
            };
            p.validate(&job)
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            let mut reports = p.follow(job);
            let stop = lifecycle::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    report = futures::StreamExt::next(&mut reports) => {
                        let Some(r) = report else { return Ok(()) };
                        if json {
                            println!("{}", consumer_service::report::json(&r));
                        } else {
                            println!("{}", consumer_service::report::text(&r));
                        }
                    }
                }
            }
        }
        Command::Serve => {
            let _logs = telemetry::init(cli.config.log_format);
            let _traces = documents_kit::trace::init_export("consumer-service")?;
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(lifecycle::shutdown_signal()).await
        }
    }
}
