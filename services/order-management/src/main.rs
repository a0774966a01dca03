//! order-management's process: telemetry, config, serve until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    omni_runtime::server::run_process(
        order_management::SERVICE_NAME,
        order_management::Config::from_env,
        |c| c.common.listen_addr,
        order_management::run,
    )
    .await
}
