//! inventory's process: telemetry, config, serve until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    omni_runtime::server::run_process(
        inventory::SERVICE_NAME,
        inventory::Config::from_env,
        |c| c.common.listen_addr,
        inventory::run,
    )
    .await
}
