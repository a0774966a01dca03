//! `omni login`, `logout` and `whoami`: a staff password or an API key is exchanged with
//! identity's AuthService for a token, kept in the profile file (mode 0600) with the endpoints
//! it was obtained against.

use std::io::{BufRead, IsTerminal as _, Write as _};

use clap::Args;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::auth_service_client::AuthServiceClient;
use serde_json::json;

use crate::config::{Endpoints, Env, Profile, Service};
use crate::ctx::Ctx;
use crate::render::{Answer as _, CliError, CliResult, Fields, Output, label, required};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("credential").required(true).args(["user", "api_key"])))]
pub struct LoginArgs {
    /// Staff login; the password comes from OMNI_PASSWORD or the first line of standard input.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Sign in with an API key (`omni_...`) from OMNI_API_KEY or the first line of standard
    /// input.
    #[arg(long)]
    api_key: bool,
}

pub async fn login(
    ctx: &Ctx,
    env: &Env,
    profile_name: &str,
    args: LoginArgs,
    stdin: &mut dyn BufRead,
) -> CliResult<Output> {
    let credential = match (&args.user, args.api_key) {
        (Some(user), _) => id::authenticate_request::Credential::Password(id::PasswordCredential {
            login: user.clone(),
            password: secret(env, "OMNI_PASSWORD", "password", stdin)?,
        }),
        (None, _) => id::authenticate_request::Credential::ApiKey(secret(
            env,
            "OMNI_API_KEY",
            "API key",
            stdin,
        )?),
    };
    let response = AuthServiceClient::new(ctx.plain(Service::Identity)?)
        .authenticate(id::AuthenticateRequest {
            credential: Some(credential),
        })
        .await
        .answer("identity")?;
    let principal = required(response.principal, "principal")?;
    let roles: Vec<String> = principal
        .roles()
        .map(|r| label(r.as_str_name(), "ROLE_"))
        .collect();
    let profile = Profile {
        token: response.access_token,
        expires_at: response.expires_at.map_or(0, |t| t.seconds),
        principal: principal.name.clone(),
        roles: roles.clone(),
        endpoints: ctx.endpoints.non_default(),
    };
    let path = profile.save(env, profile_name)?;
    let expires = crate::render::time(response.expires_at.as_ref());
    Ok(Output::new(
        json!({
            "profile": profile_name,
            "principal": principal.name,
            "principalId": principal.id,
            "roles": roles,
            "expiresAt": profile.expires_at,
            "path": path.display().to_string(),
        }),
        format!(
            "logged in as {} ({}) in profile {profile_name}; token valid until {expires}\n",
            principal.name,
            roles.join(", ")
        ),
    ))
}

/// A secret from its environment variable, else the first line of standard input.
fn secret(env: &Env, var: &str, what: &str, stdin: &mut dyn BufRead) -> CliResult<String> {
    if let Some(value) = env.get(var) {
        return Ok(value.to_owned());
    }
    // Typed at a terminal: prompt, and keep the secret off the screen.
    let typed = std::io::stdin().is_terminal();
    if typed {
        let mut tty = std::io::stderr();
        let _ = write!(tty, "{what}: ");
        let _ = tty.flush();
        echo(false);
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if typed {
        echo(true);
        let _ = writeln!(std::io::stderr());
    }
    read?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(CliError::Usage(format!(
            "no {what}: set {var} or give it on standard input"
        )));
    }
    Ok(line)
}

/// Turns the terminal's echo off or on (best effort: without `stty` the secret is echoed).
fn echo(on: bool) {
    let _ = std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .status();
}

pub fn logout(env: &Env, profile_name: &str) -> CliResult<Output> {
    let removed = Profile::remove(env, profile_name)?;
    Ok(Output::new(
        json!({"profile": profile_name, "removed": removed}),
        if removed {
            format!("logged out of profile {profile_name}\n")
        } else {
            format!("profile {profile_name} had no token\n")
        },
    ))
}

pub fn whoami(
    endpoints: &Endpoints,
    profile_name: &str,
    profile: Option<&Profile>,
    token: Result<String, String>,
) -> CliResult<Output> {
    let mut fields = Fields::new();
    fields.add("profile", profile_name);
    let mut urls = serde_json::Map::new();
    for service in Service::ALL {
        urls.insert(service.name().to_owned(), json!(endpoints.url(service)));
    }
    let (principal, roles, expires) = profile.map_or((String::new(), Vec::new(), 0), |p| {
        (p.principal.clone(), p.roles.clone(), p.expires_at)
    });
    fields.add("principal", crate::render::or_dash(&principal));
    fields.add("roles", roles.join(", "));
    fields.add(
        "token",
        match &token {
            Ok(_) => "usable".to_owned(),
            Err(why) => why.clone(),
        },
    );
    for service in Service::ALL {
        fields.add(service.name(), endpoints.url(service));
    }
    Ok(Output::new(
        json!({
            "profile": profile_name,
            "principal": principal,
            "roles": roles,
            "expiresAt": expires,
            "loggedIn": token.is_ok(),
            "endpoints": urls,
        }),
        fields.render(),
    ))
}
