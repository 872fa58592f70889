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
            let serving =
                server::healthcheck(&cli.config.listen_addr, PROVIDER_SERVICE_NAME).await?;
            if !serving {
                eprintln!(
                    "{PROVIDER_SERVICE_NAME} is not SERVING on {}",
                    cli.config.listen_addr
                );
                std::process::exit(1);
            }
            println!("SERVING");
            Ok(())
        }
        Command::Serve => {
            let _logs = telemetry::init(cli.config.log_format);
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(server::shutdown_signal()).await
        }
    }
}
