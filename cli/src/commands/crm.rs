//! `omni crm`: the customer 360, service tickets, points, coupons and campaigns (crm).
//! Customers may be named by id, member number or phone everywhere.

use clap::Subcommand;
use omni_proto::common::Money;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::campaign_service_client::CampaignServiceClient;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_proto::omni::crm::v1::segment_service_client::SegmentServiceClient;
use omni_proto::omni::crm::v1::ticket_service_client::TicketServiceClient;
use serde_json::json;

use crate::config::Service;
use crate::ctx::{Ctx, key, parse_amount};
use crate::protojson::{list_to_json, to_json};
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, format_minor, label, money, or_dash,
    required, time,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One customer across every channel: orders, spend per channel, points, tier, tickets.
    View {
        customer: String,
        #[arg(long, default_value_t = 10)]
        orders: i32,
    },
    /// Service tickets.
    #[command(subcommand)]
    Ticket(TicketCommand),
    /// A customer's points and tier; --redeem spends points.
    Points {
        customer: String,
        /// Points to redeem.
        #[arg(long)]
        redeem: Option<i64>,
        /// The channel redeeming (id or name); needed with --redeem.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Coupons that work in every channel.
    #[command(subcommand)]
    Coupon(CouponCommand),
    /// Campaigns to a segment of customers.
    #[command(subcommand)]
    Campaign(CampaignCommand),
}

#[derive(Debug, Subcommand)]
pub enum TicketCommand {
    /// Open a ticket for a customer.
    Open {
        customer: String,
        /// complaint, question or after-sales.
        #[arg(long, default_value = "question")]
        kind: String,
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The order concerned (id).
        #[arg(long)]
        order: Option<String>,
        /// The channel it came through (id or name).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Show a ticket.
    Show { ticket: String },
    /// A customer's tickets.
    List { customer: String },
}

#[derive(Debug, Subcommand)]
pub enum CouponCommand {
    /// Create a template and issue one coupon of it to a customer.
    Issue {
        customer: String,
        /// An amount off, e.g. 5.00 (or use --percent-off).
        #[arg(long, conflicts_with = "percent_off")]
        amount_off: Option<String>,
        /// A percentage off, e.g. 10.
        #[arg(long)]
        percent_off: Option<u32>,
        /// The currency of --amount-off.
        #[arg(long, default_value = "EUR")]
        currency: String,
        #[arg(long, default_value = "Welcome")]
        name: String,
        #[arg(long, default_value_t = 30)]
        valid_days: i32,
        /// The channel credited with issuing it (id or name).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Whether a code is usable by a customer in a channel, and why not.
    Check {
        code: String,
        #[arg(long)]
        customer: String,
        /// The channel (id or name).
        #[arg(long)]
        channel: String,
    },
    /// Show a coupon by code.
    Show { code: String },
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign to the customers a segment rule selects.
    Create {
        #[arg(long)]
        name: String,
        /// A crm segment rule, e.g. `order_count >= 1` or `bought(channel_kind = "livestream")`.
        #[arg(long)]
        segment: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
        /// Channels to send through (ids or names; repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
    /// Send a campaign (or count who it would reach with --dry-run).
    Send {
        campaign: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Delivery figures of a campaign.
    Report { campaign: String },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    match command {
        Command::View { customer, orders } => view(ctx, &customer, orders).await,
        Command::Ticket(t) => ticket(ctx, t).await,
        Command::Points {
            customer,
            redeem,
            channel,
        } => points(ctx, &customer, redeem, channel.as_deref()).await,
        Command::Coupon(c) => coupon(ctx, c).await,
        Command::Campaign(c) => campaign(ctx, c).await,
    }
}

async fn view(ctx: &Ctx, customer: &str, order_limit: i32) -> CliResult<Output> {
    let customer_id = ctx.customer_id(customer).await?;
    let response = CustomerViewServiceClient::new(ctx.authed(Service::Crm)?)
        .get_customer_view(crm::GetCustomerViewRequest {
            customer_id,
            order_limit,
            interaction_limit: 0,
        })
        .await
        .answer("crm")?;
    let v = required(response.view.clone(), "view")?;
    let profile = v.profile.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .add("customer", &profile.customer_id)
        .add("name", or_dash(&profile.name))
        .add("member number", or_dash(&profile.member_number))
        .add("phone", or_dash(&profile.phone))
        .add("tier", or_dash(&v.tier))
        .add("points", v.points_balance.to_string())
        .add("orders", v.order_count.to_string())
        .add("total spend", money(v.total_spend.as_ref()))
        .add("first purchase", time(v.first_purchase_at.as_ref()))
        .add("last purchase", time(v.last_purchase_at.as_ref()))
        .add("open tickets", v.open_tickets.len().to_string());
    let mut out = fields.render();
    let names = crate::commands::kpi::channel_names(ctx).await;
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| or_dash(id));
    let mut spend = Table::new(&["channel", "kind", "orders", "net spend"]);
    for s in &v.spend_per_channel {
        spend.row(vec![
            name(&s.channel_id),
            label(s.channel_kind().as_str_name(), "CHANNEL_KIND_"),
            s.order_count.to_string(),
            money(s.net_spend.as_ref()),
        ]);
    }
    if !spend.is_empty() {
        out.push('\n');
        out.push_str(&spend.render());
    }
    let mut orders = Table::new(&["order", "channel", "status", "total", "refunded", "placed"]);
    for o in &v.orders {
        orders.row(vec![
            o.order_number.clone(),
            label(o.channel_kind().as_str_name(), "CHANNEL_KIND_"),
            label(o.status().as_str_name(), "ORDER_STATUS_"),
            money(o.total.as_ref()),
            money(o.refunded.as_ref()),
            time(o.placed_at.as_ref()),
        ]);
    }
    if !orders.is_empty() {
        out.push('\n');
        out.push_str(&orders.render());
    }
    Ok(Output::new(to_json(&v, "omni.crm.v1.CustomerView"), out))
}

async fn ticket(ctx: &Ctx, command: TicketCommand) -> CliResult<Output> {
    let mut tickets = TicketServiceClient::new(ctx.authed(Service::Crm)?);
    match command {
        TicketCommand::Open {
            customer,
            kind,
            subject,
            description,
            order,
            channel,
        } => {
            let kind = match kind.to_ascii_lowercase().replace('_', "-").as_str() {
                "complaint" => crm::TicketKind::Complaint,
                "question" => crm::TicketKind::Question,
                "after-sales" => crm::TicketKind::AfterSales,
                other => {
                    return Err(CliError::Usage(format!(
                        "{other:?}: kind is complaint, question or after-sales"
                    )));
                }
            };
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let response = tickets
                .open_ticket(crm::OpenTicketRequest {
                    idempotency_key: key(),
                    customer_id: ctx.customer_id(&customer).await?,
                    kind: kind as i32,
                    channel_id,
                    store_id: String::new(),
                    order_id: order.unwrap_or_default(),
                    subject,
                    description,
                })
                .await
                .answer("crm")?;
            let t = required(response.ticket, "ticket")?;
            Ok(Output::new(
                to_json(&t, "omni.crm.v1.Ticket"),
                describe_ticket(&t),
            ))
        }
        TicketCommand::Show { ticket } => {
            let response = tickets
                .get_ticket(crm::GetTicketRequest { ticket_id: ticket })
                .await
                .answer("crm")?;
            let t = required(response.ticket, "ticket")?;
            Ok(Output::new(
                to_json(&t, "omni.crm.v1.Ticket"),
                describe_ticket(&t),
            ))
        }
        TicketCommand::List { customer } => {
            let response = tickets
                .list_tickets(crm::ListTicketsRequest {
                    customer_id: ctx.customer_id(&customer).await?,
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .answer("crm")?;
            let mut table = Table::new(&["ticket", "kind", "status", "subject", "respond by"]);
            for t in &response.tickets {
                table.row(vec![
                    t.id.clone(),
                    label(t.kind().as_str_name(), "TICKET_KIND_"),
                    label(t.status().as_str_name(), "TICKET_STATUS_"),
                    t.subject.clone(),
                    time(t.response_due_at.as_ref()),
                ]);
            }
            Ok(Output::new(
                json!({"tickets": list_to_json(&response.tickets, "omni.crm.v1.Ticket")}),
                table.render(),
            ))
        }
    }
}

fn describe_ticket(t: &crm::Ticket) -> String {
    let mut fields = Fields::new();
    fields
        .add("ticket", &t.id)
        .add("customer", &t.customer_id)
        .add("kind", label(t.kind().as_str_name(), "TICKET_KIND_"))
        .add("status", label(t.status().as_str_name(), "TICKET_STATUS_"))
        .add("subject", &t.subject)
        .add("respond by", time(t.response_due_at.as_ref()))
        .add("resolve by", time(t.resolution_due_at.as_ref()));
    fields.render()
}

async fn points(
    ctx: &Ctx,
    customer: &str,
    redeem: Option<i64>,
    channel: Option<&str>,
) -> CliResult<Output> {
    let customer_id = ctx.customer_id(customer).await?;
    let mut loyalty = LoyaltyServiceClient::new(ctx.authed(Service::Crm)?);
    let mut redeemed = serde_json::Value::Null;
    let mut human = String::new();
    if let Some(points) = redeem {
        let channel = channel.ok_or_else(|| CliError::Usage("--redeem needs --channel".into()))?;
        let response = loyalty
            .redeem_points(crm::RedeemPointsRequest {
                idempotency_key: key(),
                customer_id: customer_id.clone(),
                points,
                channel_id: ctx.channel_id(channel).await?,
                order_id: String::new(),
            })
            .await
            .answer("crm")?;
        human.push_str(&format!(
            "redeemed {points} points{}\n",
            crate::commands::demo::worth(response.value.as_ref())
        ));
        redeemed = to_json(&response, "omni.crm.v1.RedeemPointsResponse");
    }
    let account = required(
        loyalty
            .get_loyalty_account(crm::GetLoyaltyAccountRequest {
                customer_id: customer_id.clone(),
            })
            .await
            .answer("crm")?
            .account,
        "account",
    )?;
    let mut fields = Fields::new();
    fields
        .add("customer", &customer_id)
        .add("points", account.points_balance.to_string())
        .add("tier", or_dash(&account.tier))
        .add("12-month spend", money(account.rolling_spend.as_ref()));
    if !account.next_tier.is_empty() {
        fields.add(
            "next tier",
            format!(
                "{} in {}",
                account.next_tier,
                money(account.spend_to_next_tier.as_ref())
            ),
        );
    }
    human.push_str(&fields.render());
    Ok(Output::new(
        json!({
            "account": to_json(&account, "omni.crm.v1.LoyaltyAccount"),
            "redeemed": redeemed,
        }),
        human,
    ))
}

async fn coupon(ctx: &Ctx, command: CouponCommand) -> CliResult<Output> {
    let mut coupons = CouponServiceClient::new(ctx.authed(Service::Crm)?);
    match command {
        CouponCommand::Issue {
            customer,
            amount_off,
            percent_off,
            currency,
            name,
            valid_days,
            channel,
        } => {
            let discount = match (amount_off, percent_off) {
                (Some(a), _) => crm::coupon_template::Discount::AmountOff(Money {
                    minor_units: parse_amount(&a)?,
                    currency,
                }),
                (None, Some(p)) => crm::coupon_template::Discount::PercentOffBps(
                    i32::try_from(p * 100)
                        .map_err(|_| CliError::Usage("--percent-off too large".into()))?,
                ),
                (None, None) => {
                    return Err(CliError::Usage("give --amount-off or --percent-off".into()));
                }
            };
            let customer_id = ctx.customer_id(&customer).await?;
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let code =
                issue_coupon(ctx, &customer_id, &name, discount, valid_days, &channel_id).await?;
            let coupon = required(
                coupons
                    .get_coupon(crm::GetCouponRequest { code })
                    .await
                    .answer("crm")?
                    .coupon,
                "coupon",
            )?;
            Ok(Output::new(
                to_json(&coupon, "omni.crm.v1.Coupon"),
                describe_coupon(&coupon),
            ))
        }
        CouponCommand::Check {
            code,
            customer,
            channel,
        } => {
            let response = coupons
                .check_coupon(crm::CheckCouponRequest {
                    code,
                    customer_id: ctx.customer_id(&customer).await?,
                    channel_id: ctx.channel_id(&channel).await?,
                })
                .await
                .answer("crm")?;
            let mut human = if response.usable {
                "usable\n".to_owned()
            } else {
                format!("not usable: {}\n", or_dash(&response.reason))
            };
            if let Some(c) = &response.coupon {
                human.push_str(&describe_coupon(c));
            }
            Ok(Output::new(
                to_json(&response, "omni.crm.v1.CheckCouponResponse"),
                human,
            ))
        }
        CouponCommand::Show { code } => {
            let coupon = required(
                coupons
                    .get_coupon(crm::GetCouponRequest { code })
                    .await
                    .answer("crm")?
                    .coupon,
                "coupon",
            )?;
            Ok(Output::new(
                to_json(&coupon, "omni.crm.v1.Coupon"),
                describe_coupon(&coupon),
            ))
        }
    }
}

/// Creates a one-off template and issues a coupon of it to the customer; returns its code.
pub async fn issue_coupon(
    ctx: &Ctx,
    customer_id: &str,
    name: &str,
    discount: crm::coupon_template::Discount,
    valid_days: i32,
    channel_id: &str,
) -> CliResult<String> {
    let mut coupons = CouponServiceClient::new(ctx.authed(Service::Crm)?);
    let template = required(
        coupons
            .create_coupon_template(crm::CreateCouponTemplateRequest {
                idempotency_key: key(),
                template: Some(crm::CouponTemplate {
                    name: name.to_owned(),
                    discount: Some(discount),
                    valid_days,
                    issuing_channel_id: channel_id.to_owned(),
                    active: true,
                    ..Default::default()
                }),
            })
            .await
            .answer("crm")?
            .template,
        "template",
    )?;
    let issued = coupons
        .issue_coupons(crm::IssueCouponsRequest {
            idempotency_key: key(),
            template_id: template.id,
            recipients: Some(crm::issue_coupons_request::Recipients::CustomerId(
                customer_id.to_owned(),
            )),
            issuing_channel_id: channel_id.to_owned(),
        })
        .await
        .answer("crm")?;
    issued
        .coupons
        .into_iter()
        .next()
        .map(|c| c.code)
        .ok_or_else(|| CliError::Other(anyhow::anyhow!("crm issued no coupon")))
}

fn describe_coupon(c: &crm::Coupon) -> String {
    let effect = c.effect.clone().unwrap_or_default();
    let discount = match effect.discount {
        Some(omni_proto::common::coupon_effect::Discount::AmountOff(m)) => {
            format_minor(m.minor_units, &m.currency)
        }
        Some(omni_proto::common::coupon_effect::Discount::PercentOffBps(bps)) => {
            format!("{}%", f64::from(bps) / 100.0)
        }
        None => "-".to_owned(),
    };
    let mut fields = Fields::new();
    fields
        .add("code", &c.code)
        .add("customer", or_dash(&c.customer_id))
        .add("status", label(c.status().as_str_name(), "COUPON_STATUS_"))
        .add("discount", discount)
        .add(
            "valid until",
            time(c.validity.as_ref().and_then(|v| v.end.as_ref())),
        );
    if !c.redeemed_order_id.is_empty() {
        fields.add("redeemed on order", &c.redeemed_order_id);
    }
    fields.render()
}

async fn campaign(ctx: &Ctx, command: CampaignCommand) -> CliResult<Output> {
    let mut campaigns = CampaignServiceClient::new(ctx.authed(Service::Crm)?);
    match command {
        CampaignCommand::Create {
            name,
            segment,
            title,
            body,
            channels,
        } => {
            let segment = required(
                SegmentServiceClient::new(ctx.authed(Service::Crm)?)
                    .create_segment(crm::CreateSegmentRequest {
                        idempotency_key: key(),
                        segment: Some(crm::Segment {
                            name: format!("{name} audience"),
                            rule: segment,
                            ..Default::default()
                        }),
                        validate_only: false,
                    })
                    .await
                    .answer("crm")?
                    .segment,
                "segment",
            )?;
            let mut channel_ids = Vec::new();
            for c in &channels {
                channel_ids.push(ctx.channel_id(c).await?);
            }
            let created = required(
                campaigns
                    .create_campaign(crm::CreateCampaignRequest {
                        idempotency_key: key(),
                        campaign: Some(crm::Campaign {
                            name,
                            segment_id: segment.id.clone(),
                            content: Some(crm::MessageContent {
                                title,
                                body,
                                ..Default::default()
                            }),
                            channel_ids,
                            ..Default::default()
                        }),
                    })
                    .await
                    .answer("crm")?
                    .campaign,
                "campaign",
            )?;
            let mut fields = Fields::new();
            fields
                .add("campaign", &created.id)
                .add("name", &created.name)
                .add(
                    "segment",
                    format!("{} ({} members)", segment.id, segment.member_count),
                )
                .add(
                    "status",
                    label(created.status().as_str_name(), "CAMPAIGN_STATUS_"),
                );
            Ok(Output::new(
                json!({
                    "campaign": to_json(&created, "omni.crm.v1.Campaign"),
                    "segment": to_json(&segment, "omni.crm.v1.Segment"),
                }),
                fields.render(),
            ))
        }
        CampaignCommand::Send { campaign, dry_run } => {
            let response = campaigns
                .send_campaign(crm::SendCampaignRequest {
                    idempotency_key: key(),
                    campaign_id: campaign,
                    dry_run,
                })
                .await
                .answer("crm")?;
            let report = required(response.report, "report")?;
            Ok(Output::new(
                to_json(&report, "omni.crm.v1.CampaignReport"),
                describe_report(&report, dry_run),
            ))
        }
        CampaignCommand::Report { campaign } => {
            let response = campaigns
                .get_campaign_report(crm::GetCampaignReportRequest {
                    campaign_id: campaign,
                })
                .await
                .answer("crm")?;
            let report = required(response.report, "report")?;
            Ok(Output::new(
                to_json(&report, "omni.crm.v1.CampaignReport"),
                describe_report(&report, false),
            ))
        }
    }
}

fn describe_report(r: &crm::CampaignReport, dry_run: bool) -> String {
    let mut fields = Fields::new();
    if dry_run {
        fields.add("dry run", "nothing was sent");
    }
    fields
        .add("campaign", &r.campaign_id)
        .add("targeted", r.targeted.to_string())
        .add("suppressed", r.suppressed.to_string())
        .add("deliveries", r.deliveries.to_string())
        .add("delivered", r.delivered.to_string())
        .add("failed", r.failed.to_string())
        .add("clicked", r.clicked.to_string());
    fields.render()
}
