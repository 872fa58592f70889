use clap::Parser;
use documents_api::proto::PROVIDER_SERVICE_NAME;
use documents_kit::{health, lifecycle, telemetry};
use provider_service::{
    app::Application,
    config::{Cli, Command},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck { liveness } => {
            let tls = cli.config.security.healthcheck_tls()?;
            let service = if liveness {
                health::LIVENESS_SERVICE
            } else {
                PROVIDER_SERVICE_NAME
            };
            health::healthcheck_command(&cli.config.listen_addr, service, tls).await
        }
        Command::CheckInvariants => {
            let store = cli.config.database.connect(2).await?;
            let violations = store.check_invariants().await?;
            for v in &violations {
                println!("{v}");
            }
            if !violations.is_empty() {
                std::process::exit(1);
            }
            println!("all invariants hold");
            Ok(())
        }
        Command::Migrate => {
            let store = cli.config.database.connect(2).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let _logs = telemetry::init(cli.config.log_format);
            let _traces = documents_kit::trace::init_export("provider-service")?;
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(lifecycle::shutdown_signal()).await
        }
    }
}
