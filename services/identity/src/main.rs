//! identity's process: telemetry, config, serve until SIGTERM or ctrl-c.
//!
//! `identity keygen <dir>` writes a new Ed25519 key pair (`signing.pem`, `public.pem`) for
//! `OMNI_SIGNING_KEY_FILE` and every service's `OMNI_AUTH_PUBLIC_KEY_FILE`.
//!
//! `identity service-key <name>` creates a service principal (role `service`) in the database
//! at `DATABASE_URL` (migrated, e.g. by a running identity) and prints its API key once: how a
//! deployment provisions `OMNI_SERVICE_API_KEY` for a service that calls others.

use std::process::ExitCode;

use omni_runtime::auth::KeyPair;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("keygen") {
        return keygen(args.get(1).map(String::as_str));
    }
    if args.first().map(String::as_str) == Some("service-key") {
        return service_key(args.get(1).map(String::as_str)).await;
    }
    omni_runtime::server::run_process(
        identity::SERVICE_NAME,
        identity::Config::from_env,
        |c| c.common.listen_addr,
        identity::run,
    )
    .await
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn keygen(dir: Option<&str>) -> ExitCode {
    let Some(dir) = dir else {
        eprintln!("usage: identity keygen <dir>");
        return ExitCode::from(2);
    };
    let write = || -> anyhow::Result<()> {
        let keys = KeyPair::generate()?;
        std::fs::create_dir_all(dir)?;
        let signing = std::path::Path::new(dir).join("signing.pem");
        std::fs::write(&signing, keys.private_pem.expose())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::write(
            std::path::Path::new(dir).join("public.pem"),
            &keys.public_pem,
        )?;
        println!("wrote {dir}/signing.pem and {dir}/public.pem");
        Ok(())
    };
    match write() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("identity keygen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn service_key(name: Option<&str>) -> ExitCode {
    let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
        eprintln!("usage: DATABASE_URL=... identity service-key <name>");
        return ExitCode::from(2);
    };
    let create = async {
        let url = omni_runtime::config::required("DATABASE_URL")?;
        let pool = sqlx::PgPool::connect(&url).await?;
        let key = identity::service_key(&pool, name).await?;
        pool.close().await;
        anyhow::Ok(key)
    };
    match create.await {
        Ok(key) => {
            println!("{key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("identity service-key: {e:#}");
            ExitCode::FAILURE
        }
    }
}
