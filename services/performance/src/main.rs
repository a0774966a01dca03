//! performance's process: telemetry, config, serve until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    omni_runtime::server::run_process(
        performance::SERVICE_NAME,
        performance::Process::from_env,
        |p| p.config.common.listen_addr,
        performance::run_process,
    )
    .await
}
