//! inventory's process: telemetry, config, serve until SIGTERM or ctrl-c.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match omni_runtime::telemetry::init(inventory::SERVICE_NAME) {
        Ok(t) => t,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("inventory: cannot start telemetry: {e:#}");
            }
            return ExitCode::FAILURE;
        }
    };
    let code = match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "inventory stopped");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("inventory: {e:#}");
            }
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn serve() -> anyhow::Result<()> {
    let config = inventory::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "inventory listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(omni_runtime::server::cancel_on_signal(shutdown.clone()));
    inventory::run(config, listener, shutdown).await
}
