//! `omni catalog`: search products, show a SKU (with its listing on a channel), and price a
//! cart the way a channel would (catalog).

use clap::Subcommand;
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;

use crate::config::Service;
use crate::ctx::{Ctx, parse_item};
use crate::protojson::to_json;
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, label, money, or_dash, required,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Search products by name, brand, description or SKU code.
    Search {
        /// Text to match; empty lists everything.
        #[arg(default_value = "")]
        query: String,
        /// Only products listed on this channel (id or name).
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Show a SKU by code, barcode or id.
    Sku {
        sku: String,
        /// Also show its listing on this channel (id or name).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Price a cart on a channel: SKU:QTY items, promotions applied.
    Quote {
        /// The channel (id or name).
        #[arg(long)]
        channel: String,
        /// Items as SKU:QTY (code, barcode or id).
        #[arg(required = true)]
        items: Vec<String>,
        /// The customer's crm tier, e.g. gold.
        #[arg(long)]
        tier: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    match command {
        Command::Search {
            query,
            channel,
            limit,
        } => {
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let response = ProductServiceClient::new(ctx.authed(Service::Catalog)?)
                .search_products(cat::SearchProductsRequest {
                    query,
                    channel_id,
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .answer("catalog")?;
            let mut table = Table::new(&["product", "brand", "status", "skus"]);
            for p in &response.products {
                table.row(vec![
                    p.name.clone(),
                    or_dash(&p.brand),
                    label(p.status().as_str_name(), "PRODUCT_STATUS_"),
                    p.skus
                        .iter()
                        .map(|s| s.sku_code.clone())
                        .collect::<Vec<_>>()
                        .join(" "),
                ]);
            }
            let mut human = table.render();
            human.push_str(&format!(
                "{} of {} matching products\n",
                response.products.len(),
                response.total_size
            ));
            Ok(Output::new(
                to_json(&response, "omni.catalog.v1.SearchProductsResponse"),
                human,
            ))
        }
        Command::Sku { sku, channel } => {
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let found = ctx.sku(&sku).await?;
            let response = ProductServiceClient::new(ctx.authed(Service::Catalog)?)
                .get_sku(cat::GetSkuRequest {
                    key: Some(cat::get_sku_request::Key::SkuId(found.id)),
                    channel_id,
                })
                .await
                .answer("catalog")?;
            let s = required(response.sku.clone(), "SKU")?;
            let mut fields = Fields::new();
            fields
                .add("sku", &s.sku_code)
                .add("id", &s.id)
                .add("product", &s.product_name)
                .add("barcode", or_dash(&s.barcode))
                .add("status", label(s.status().as_str_name(), "SKU_STATUS_"))
                .add("list price", money(s.list_price.as_ref()))
                .add("unit cost", money(s.unit_cost.as_ref()));
            let mut variant: Vec<_> = s.variant_attributes.iter().collect();
            variant.sort();
            for (k, v) in variant {
                fields.add(k, v);
            }
            if let Some(listing) = &response.listing {
                fields
                    .add("channel price", money(listing.price.as_ref()))
                    .add("listed", if listing.listed { "yes" } else { "no" });
            }
            Ok(Output::new(
                to_json(&response, "omni.catalog.v1.GetSkuResponse"),
                fields.render(),
            ))
        }
        Command::Quote {
            channel,
            items,
            tier,
        } => {
            let channel_id = ctx.channel_id(&channel).await?;
            let mut lines = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let (sku, quantity) = parse_item(item)?;
                lines.push(cat::QuoteLineInput {
                    sku_id: ctx.sku_id(&sku).await?,
                    quantity: i32::try_from(quantity)
                        .map_err(|_| CliError::Usage(format!("{item:?}: quantity too large")))?,
                    line_ref: (i + 1).to_string(),
                });
            }
            let response = QuoteServiceClient::new(ctx.authed(Service::Catalog)?)
                .quote(cat::QuoteRequest {
                    channel_id,
                    customer_tier: tier.unwrap_or_default(),
                    lines,
                    ..Default::default()
                })
                .await
                .answer("catalog")?;
            let mut table = Table::new(&["sku", "product", "qty", "unit", "discount", "net"]);
            for l in &response.lines {
                table.row(vec![
                    l.sku_code.clone(),
                    l.product_name.clone(),
                    l.quantity.to_string(),
                    money(l.unit_price.as_ref()),
                    money(l.discount_amount.as_ref()),
                    money(l.net_amount.as_ref()),
                ]);
            }
            let mut human = table.render();
            for a in &response.adjustments {
                human.push_str(&format!("{}: -{}\n", a.label, money(a.amount.as_ref())));
            }
            let mut fields = Fields::new();
            fields
                .add("subtotal", money(response.subtotal.as_ref()))
                .add("discounts", money(response.discount_total.as_ref()))
                .add("total", money(response.total.as_ref()));
            human.push('\n');
            human.push_str(&fields.render());
            Ok(Output::new(
                to_json(&response, "omni.catalog.v1.QuoteResponse"),
                human,
            ))
        }
    }
}
