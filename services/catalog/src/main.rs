//! catalog's process: telemetry, config, serve until SIGTERM or ctrl-c.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    omni_runtime::server::run_process(
        catalog::SERVICE_NAME,
        catalog::Config::from_env,
        |c| c.common.listen_addr,
        catalog::run,
    )
    .await
}
