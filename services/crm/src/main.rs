//! crm's process: telemetry, config, serve until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    omni_runtime::server::run_process(
        crm::SERVICE_NAME,
        crm::Config::from_env,
        |c| c.common.listen_addr,
        crm::run,
    )
    .await
}
