//! `omni`: hands the process's arguments, environment and standard streams to
//! [`omni_cli::run`] and exits with its code.

use std::io::Write as _;

#[tokio::main]
async fn main() {
    let env = omni_cli::Env::from_process();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let code = omni_cli::run(
        std::env::args().skip(1),
        &env,
        omni_cli::Io {
            stdin: &mut stdin,
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    )
    .await;
    let _ = stdout.flush();
    std::process::exit(code);
}
