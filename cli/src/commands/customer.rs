//! `omni customer`: resolve a customer from what a channel knows (phone, member number,
//! channel account), show one by any key, merge a duplicate into a survivor (identity).

use clap::Subcommand;
use omni_proto::common::ChannelKind;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use serde_json::json;

use crate::config::Service;
use crate::ctx::{Ctx, customer_key};
use crate::protojson::to_json;
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, label, or_dash, required, time,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find the customer behind a phone, member number and/or channel account, creating or
    /// linking as needed.
    Resolve {
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        member: Option<String>,
        /// A channel account as KIND:EXTERNAL_ID, e.g. `e-shop:web-1001` (kinds: e-shop,
        /// store, livestream, social, associate, marketplace).
        #[arg(long)]
        account: Option<String>,
        /// Used when the customer is created.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Show a customer by id, member number or phone.
    Show {
        /// An id, a ten-digit member number, or a phone number.
        key: Option<String>,
        /// A channel account as KIND:EXTERNAL_ID instead of KEY.
        #[arg(long)]
        account: Option<String>,
    },
    /// Merge a duplicate customer into a survivor (admin or channel manager).
    Merge {
        survivor: String,
        duplicate: String,
        #[arg(long, default_value = "duplicate record")]
        reason: String,
    },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    let mut client = IdentityServiceClient::new(ctx.authed(Service::Identity)?);
    match command {
        Command::Resolve {
            phone,
            member,
            account,
            name,
            email,
        } => {
            if phone.is_none() && member.is_none() && account.is_none() {
                return Err(CliError::Usage(
                    "give at least one of --phone, --member and --account".into(),
                ));
            }
            let response = client
                .resolve_customer(id::ResolveCustomerRequest {
                    channel_account: account.as_deref().map(channel_account).transpose()?,
                    phone: phone.unwrap_or_default(),
                    member_number: member.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                    email: email.unwrap_or_default(),
                })
                .await
                .answer("identity")?;
            let customer = required(response.customer.clone(), "customer")?;
            let mut human = String::new();
            if response.created {
                human.push_str("new customer\n");
            } else if response.linked {
                human.push_str("known customer; channel account linked\n");
            } else {
                human.push_str("known customer\n");
            }
            human.push_str(&describe(&customer));
            Ok(Output::new(
                to_json(&response, "omni.identity.v1.ResolveCustomerResponse"),
                human,
            ))
        }
        Command::Show { key, account } => {
            let key = match (key, account) {
                (_, Some(account)) => {
                    id::customer_key::Key::ChannelAccount(channel_account(&account)?)
                }
                (Some(key), None) => customer_key(&key),
                (None, None) => {
                    return Err(CliError::Usage("give a customer KEY or --account".into()));
                }
            };
            let response = client
                .get_customer(id::GetCustomerRequest {
                    key: Some(id::CustomerKey { key: Some(key) }),
                })
                .await
                .answer("identity")?;
            let customer = required(response.customer.clone(), "customer")?;
            let mut human = String::new();
            if !response.alias_of.is_empty() {
                human.push_str(&format!(
                    "{} was merged into {}\n",
                    response.alias_of, customer.id
                ));
            }
            human.push_str(&describe(&customer));
            Ok(Output::new(
                to_json(&response, "omni.identity.v1.GetCustomerResponse"),
                human,
            ))
        }
        Command::Merge {
            survivor,
            duplicate,
            reason,
        } => {
            let survivor = ctx.customer_id(&survivor).await?;
            let duplicate = ctx.customer_id(&duplicate).await?;
            let response = client
                .merge_customers(id::MergeCustomersRequest {
                    survivor_id: survivor,
                    duplicate_id: duplicate.clone(),
                    reason,
                })
                .await
                .answer("identity")?;
            let customer = required(response.survivor.clone(), "survivor")?;
            Ok(Output::new(
                json!({
                    "duplicateId": duplicate,
                    "survivor": to_json(&customer, "omni.identity.v1.Customer"),
                }),
                format!(
                    "merged {duplicate} into {}\n{}",
                    customer.id,
                    describe(&customer)
                ),
            ))
        }
    }
}

fn describe(c: &id::Customer) -> String {
    let mut fields = Fields::new();
    fields
        .add("id", &c.id)
        .add("member number", or_dash(&c.member_number))
        .add("name", or_dash(&c.name))
        .add("phone", or_dash(&c.phone))
        .add("email", or_dash(&c.email))
        .add("created", time(c.created_at.as_ref()));
    if c.erased {
        fields.add("erased", "yes");
    }
    let mut out = fields.render();
    if !c.channel_accounts.is_empty() {
        let mut table = Table::new(&["channel", "account", "linked"]);
        for a in &c.channel_accounts {
            table.row(vec![
                label(a.channel_kind().as_str_name(), "CHANNEL_KIND_"),
                a.external_id.clone(),
                time(a.linked_at.as_ref()),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    out
}

/// `KIND:EXTERNAL_ID`.
pub fn channel_account(text: &str) -> CliResult<id::ChannelAccountRef> {
    let (kind, external) = text
        .split_once(':')
        .ok_or_else(|| CliError::Usage(format!("{text:?}: expected KIND:EXTERNAL_ID")))?;
    Ok(id::ChannelAccountRef {
        channel_kind: channel_kind(kind)? as i32,
        external_id: external.to_owned(),
    })
}

/// A channel kind from `e-shop`, `store`, `livestream`, `social`, `associate`, `marketplace`.
pub fn channel_kind(text: &str) -> CliResult<ChannelKind> {
    let normal = text.to_ascii_lowercase().replace(['-', '_', ' '], "");
    Ok(match normal.as_str() {
        "eshop" | "web" | "online" => ChannelKind::EShop,
        "store" | "pos" => ChannelKind::Store,
        "livestream" | "live" => ChannelKind::Livestream,
        "social" => ChannelKind::Social,
        "associate" => ChannelKind::Associate,
        "marketplace" => ChannelKind::Marketplace,
        _ => {
            return Err(CliError::Usage(format!(
                "{text:?} is not a channel kind (e-shop, store, livestream, social, associate, marketplace)"
            )));
        }
    })
}
