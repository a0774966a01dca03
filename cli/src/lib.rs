//! The `omni` command: a channel team's tool over Omni's services and a walk through the
//! omnichannel story. Everything lives here so tests run commands in-process through [`run`]
//! with their own environment; `main.rs` only wires the process's arguments, environment and
//! standard streams to it.
//!
//! Each command group is a module under `commands/`; they share [`ctx`] (endpoints, token,
//! look-ups) and [`render`] (tables, JSON, errors and exit codes).

pub mod commands;
pub mod config;
pub mod ctx;
pub mod protojson;
pub mod render;

use std::io::{BufRead, Write};

use clap::{Parser, Subcommand};

pub use config::Env;
use config::{Endpoints, Profile};
use ctx::Ctx;
use render::{CliResult, Output, exit};

const AFTER_HELP: &str = "\
Exit codes: 0 ok; 1 failure; 2 bad command line; 3 not logged in, token refused or not \
allowed; 4 not found; 5 refused by the service (invalid argument, failed precondition, \
already exists); 6 service unavailable, too slow or not implemented.

Environment: OMNI_PROFILE, OMNI_TOKEN, OMNI_HOST, OMNI_<SERVICE>_URL (IDENTITY, CATALOG, \
INVENTORY, ORDERS, CRM, PERFORMANCE), OMNI_PASSWORD / OMNI_API_KEY for `omni login`, \
XDG_CONFIG_HOME (profiles live in $XDG_CONFIG_HOME/omni, else ~/.config/omni).";

#[derive(Debug, Parser)]
#[command(
    name = "omni",
    version,
    about = "Omni from the command line: customers, catalog, stock, orders, crm and KPIs",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The profile whose token and endpoints to use [env: OMNI_PROFILE] [default: default].
    #[arg(long, global = true)]
    profile: Option<String>,
    /// A service's address, e.g. `--endpoint orders=http://10.0.0.5:50054` (repeatable).
    #[arg(long = "endpoint", global = true, value_name = "SERVICE=URL")]
    endpoints: Vec<String>,
    /// The host every service runs on, at scripts/dev-up's ports [env: OMNI_HOST].
    #[arg(long, global = true)]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign in with a staff login or an API key; the token is kept in the profile.
    Login(commands::login::LoginArgs),
    /// Forget the profile's token.
    Logout,
    /// Who the profile's token belongs to and where the services are.
    Whoami,
    /// Customers across channels (identity).
    #[command(subcommand)]
    Customer(commands::customer::Command),
    /// Products, SKUs and prices (catalog).
    #[command(subcommand)]
    Catalog(commands::catalog::Command),
    /// Stock, availability, holds and transfers (inventory).
    #[command(subcommand)]
    Stock(commands::stock::Command),
    /// Orders, payments, pickups, returns (order-management).
    #[command(subcommand)]
    Order(Box<commands::order::Command>),
    /// Customer 360, tickets, points, coupons, campaigns (crm).
    #[command(subcommand)]
    Crm(commands::crm::Command),
    /// KPI reports, scorecards and experiments (performance).
    #[command(subcommand)]
    Kpi(commands::kpi::Command),
    /// Dead letters of the event consumers: list and replay (admin).
    #[command(subcommand)]
    Events(commands::events::Command),
    /// Walk through the omnichannel story against the running services.
    Demo(commands::demo::DemoArgs),
    /// Fill the services with a realistic demo dataset.
    Seed(commands::seed::SeedArgs),
}

/// The process's standard streams, or test buffers.
pub struct Io<'a> {
    pub stdin: &'a mut dyn BufRead,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
}

/// What a command printed, and its exit code.
#[derive(Debug)]
pub struct Captured {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    /// The standard output parsed as JSON (for `--json` runs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs `omni` with `args` (without the program name) and returns its exit code and output.
pub async fn run_captured<S: AsRef<str>>(args: &[S], env: &Env) -> Captured {
    let mut stdin = std::io::empty();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let code = run(
        args.iter().map(|a| a.as_ref().to_owned()),
        env,
        Io {
            stdin: &mut stdin,
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    )
    .await;
    Captured {
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `omni` with `args` (without the program name); returns the exit code.
pub async fn run(args: impl IntoIterator<Item = String>, env: &Env, io: Io<'_>) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once("omni".to_owned()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let stream: &mut dyn Write = if e.use_stderr() { io.stderr } else { io.stdout };
            let _ = stream.write_all(text.as_bytes());
            return code;
        }
    };
    let json = cli.json;
    let result = dispatch(cli, env, io.stdin, &mut *io.stdout, &mut *io.stderr).await;
    let written = match result {
        Ok(output) => {
            let written = if json {
                serde_json::to_string_pretty(&output.json)
                    .map(|text| writeln!(io.stdout, "{text}"))
                    .unwrap_or(Ok(()))
            } else if output.human.is_empty() {
                Ok(())
            } else {
                io.stdout.write_all(output.human.as_bytes())
            };
            written.map(|()| exit::OK)
        }
        Err(error) => {
            let written = if json {
                serde_json::to_string_pretty(&error.to_json())
                    .map(|text| writeln!(io.stdout, "{text}"))
                    .unwrap_or(Ok(()))
            } else {
                Ok(())
            };
            written
                .and_then(|()| io.stderr.write_all(error.human().as_bytes()))
                .map(|()| error.exit_code())
        }
    };
    let _ = io.stdout.flush();
    written.unwrap_or(exit::FAILURE)
}

async fn dispatch(
    cli: Cli,
    env: &Env,
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> CliResult<Output> {
    let profile_name = cli
        .profile
        .clone()
        .or_else(|| env.get("OMNI_PROFILE").map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned());
    let profile = Profile::load(env, &profile_name)?;
    let endpoints = Endpoints::resolve(env, &cli.endpoints, cli.host.as_deref(), profile.as_ref())?;

    let token = token(env, &profile_name, profile.as_ref());
    let ctx = Ctx::new(endpoints, token.clone());
    // Long-running commands report progress as they go: on stdout for people, on stderr when
    // stdout carries the JSON result.
    let progress: &mut dyn Write = if cli.json { stderr } else { stdout };
    match cli.command {
        Command::Login(args) => commands::login::login(&ctx, env, &profile_name, args, stdin).await,
        Command::Logout => commands::login::logout(env, &profile_name),
        Command::Whoami => {
            commands::login::whoami(&ctx.endpoints, &profile_name, profile.as_ref(), token)
        }
        Command::Customer(c) => commands::customer::run(&ctx, c).await,
        Command::Catalog(c) => commands::catalog::run(&ctx, c).await,
        Command::Stock(c) => commands::stock::run(&ctx, c).await,
        Command::Order(c) => commands::order::run(&ctx, *c).await,
        Command::Crm(c) => commands::crm::run(&ctx, c).await,
        Command::Kpi(c) => commands::kpi::run(&ctx, c).await,
        Command::Events(c) => commands::events::run(&ctx, c).await,
        Command::Demo(args) => commands::demo::run(&ctx, args, progress).await,
        Command::Seed(args) => commands::seed::run(&ctx, args, progress).await,
    }
}

/// The token to call with: `OMNI_TOKEN`, else the profile's if it has not expired; otherwise
/// why there is none.
fn token(env: &Env, profile_name: &str, profile: Option<&Profile>) -> Result<String, String> {
    if let Some(token) = env.get("OMNI_TOKEN") {
        return Ok(token.to_owned());
    }
    match profile {
        None => Err(format!(
            "not logged in (profile {profile_name:?}): run `omni login` or set OMNI_TOKEN"
        )),
        Some(p) if p.token.is_empty() => Err(format!(
            "profile {profile_name:?} has no token: run `omni login`"
        )),
        Some(p) if p.expires_at <= chrono::Utc::now().timestamp() => Err(format!(
            "the token of profile {profile_name:?} expired at {}: run `omni login` again",
            chrono::DateTime::from_timestamp(p.expires_at, 0)
                .map_or_else(|| p.expires_at.to_string(), |t| t.to_rfc3339())
        )),
        Some(p) => Ok(p.token.clone()),
    }
}
