use clap::Parser;
use provider_service::{
    app::Application,
    config::{Cli, Command},
};
use shared::{proto::PROVIDER_SERVICE_NAME, server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck => {
            let tls = cli.config.healthcheck_tls()?;
            server::healthcheck_command(&cli.config.listen_addr, PROVIDER_SERVICE_NAME, tls).await
        }
        Command::CheckInvariants => {
            let store = shared::storage::connect(&cli.config.database_url, 2).await?;
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
        Command::Serve => {
            let _logs = telemetry::init(cli.config.log_format);
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(server::shutdown_signal()).await
        }
    }
}
