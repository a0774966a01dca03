//! `omni events`: the dead letters of a service's event consumer (crm, performance,
//! inventory, orders): events it refused for good, listed with their error and replayed once the cause
//! is mended (admin).

use clap::{Subcommand, ValueEnum};
use omni_proto::events as ev;
use omni_proto::events::dead_letter_service_client::DeadLetterServiceClient;

use crate::config::Service;
use crate::ctx::Ctx;
use crate::protojson::to_json;
use crate::render::{Answer as _, CliResult, Output, Table, or_dash};

/// The services that consume events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Consumer {
    Crm,
    Performance,
    Inventory,
    Orders,
}

impl From<Consumer> for Service {
    fn from(c: Consumer) -> Self {
        match c {
            Consumer::Crm => Service::Crm,
            Consumer::Performance => Service::Performance,
            Consumer::Inventory => Service::Inventory,
            Consumer::Orders => Service::Orders,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The consumer's dead letters, oldest first.
    DeadLetters {
        service: Consumer,
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// The page token a previous listing printed.
        #[arg(long, default_value = "")]
        page: String,
    },
    /// Apply a dead letter once (not again if it was applied since) and remove it.
    Replay { service: Consumer, id: String },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    match command {
        Command::DeadLetters {
            service,
            limit,
            page,
        } => {
            let name = Service::from(service).name();
            let mut client = DeadLetterServiceClient::new(ctx.authed(service.into())?);
            let response = client
                .list_dead_letters(ev::ListDeadLettersRequest {
                    page_size: limit,
                    page_token: page,
                })
                .await
                .answer(name)?;
            let mut table = Table::new(&["ID", "EVENT", "TYPE", "REASON"]);
            for d in &response.dead_letters {
                table.row(vec![
                    d.id.clone(),
                    or_dash(&d.event_id),
                    or_dash(&d.event_type),
                    d.reason.clone(),
                ]);
            }
            let mut human = if table.is_empty() {
                format!("{name} has no dead letters\n")
            } else {
                table.render()
            };
            if !response.next_page_token.is_empty() {
                human.push_str(&format!("more: --page {}\n", response.next_page_token));
            }
            Ok(Output::new(
                to_json(&response, "omni.events.v1.ListDeadLettersResponse"),
                human,
            ))
        }
        Command::Replay { service, id } => {
            let name = Service::from(service).name();
            let mut client = DeadLetterServiceClient::new(ctx.authed(service.into())?);
            let response = client
                .replay_dead_letter(ev::ReplayDeadLetterRequest { id: id.clone() })
                .await
                .answer(name)?;
            let human = if response.applied {
                format!("{id} applied by {name} and removed from its dead letters\n")
            } else {
                format!("{id} had been applied already; removed from {name}'s dead letters\n")
            };
            Ok(Output::new(
                to_json(&response, "omni.events.v1.ReplayDeadLetterResponse"),
                human,
            ))
        }
    }
}
