//! `omni stock`: available-to-promise per SKU across the network and per location, pickup
//! stores near a point, holds, receipts and transfers (inventory).

use std::collections::HashMap;

use clap::Subcommand;
use omni_proto::common::GeoPoint;
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::inventory::v1::transfer_service_client::TransferServiceClient;

use crate::config::Service;
use crate::ctx::{Ctx, key, parse_item};
use crate::protojson::to_json;
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, label, required, time,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Network and per-location availability of SKUs (codes, barcodes or ids).
    Show {
        #[arg(required = true)]
        skus: Vec<String>,
        /// Availability as this channel sees it (its quota), by id or name.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Pickup stores within a radius that hold every item, nearest first.
    Nearby {
        /// Items as SKU:QTY.
        #[arg(required = true)]
        items: Vec<String>,
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        #[arg(long, default_value_t = 10.0)]
        radius_km: f64,
    },
    /// Hold stock for a while (items as SKU:QTY).
    Reserve {
        #[arg(required = true)]
        items: Vec<String>,
        /// Hold at these locations only (codes or ids; repeatable).
        #[arg(long = "location")]
        locations: Vec<String>,
        /// The channel holding (id or name); its quota applies.
        #[arg(long)]
        channel: String,
        /// How long the hold lasts.
        #[arg(long, default_value_t = 900)]
        ttl_secs: i64,
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// Record goods received from a supplier at a location.
    Receive {
        /// The location (code or id).
        location: String,
        #[arg(required = true)]
        items: Vec<String>,
        #[arg(long, default_value = "delivery")]
        reason: String,
    },
    /// Move stock between locations through transit (items as SKU:QTY).
    Transfer {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(required = true)]
        items: Vec<String>,
        #[arg(long, default_value = "rebalance")]
        reason: String,
    },
    /// Receive a transfer in full at its destination.
    ReceiveTransfer { transfer_id: String },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    match command {
        Command::Show { skus, channel } => {
            let mut ids = Vec::new();
            for s in &skus {
                ids.push(ctx.sku_id(s).await?);
            }
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let has_channel = !channel_id.is_empty();
            let response = AvailabilityServiceClient::new(ctx.authed(Service::Inventory)?)
                .get_availability(inv::GetAvailabilityRequest {
                    sku_ids: ids.clone(),
                    channel_id,
                    include_locations: true,
                    location_ids: Vec::new(),
                })
                .await
                .answer("inventory")?;
            let names = Names::load(ctx, &ids).await?;
            let mut human = String::new();
            for sku in &response.skus {
                human.push_str(&format!(
                    "{}: {} available in the network{}{}{}\n",
                    names.sku(&sku.sku_id),
                    sku.network_available,
                    if has_channel {
                        format!(", {} for the channel", sku.channel_available)
                    } else {
                        String::new()
                    },
                    if sku.inbound_quantity > 0 {
                        format!(", {} inbound", sku.inbound_quantity)
                    } else {
                        String::new()
                    },
                    if sku.hot { " (hot)" } else { "" },
                ));
                let mut table = Table::new(&[
                    "location",
                    "kind",
                    "available",
                    "on hand",
                    "inbound",
                    "pickup",
                ]);
                for l in &sku.locations {
                    table.row(vec![
                        names.location(&l.location_id),
                        label(l.kind().as_str_name(), "LOCATION_KIND_"),
                        l.available.to_string(),
                        l.on_hand.to_string(),
                        l.inbound_quantity.to_string(),
                        if l.pickup_enabled { "yes" } else { "no" }.to_owned(),
                    ]);
                }
                if !table.is_empty() {
                    human.push_str(&table.render());
                }
                human.push('\n');
            }
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.GetAvailabilityResponse"),
                human,
            ))
        }
        Command::Nearby {
            items,
            lat,
            lon,
            radius_km,
        } => {
            let items = sku_quantities(ctx, &items).await?;
            let response = AvailabilityServiceClient::new(ctx.authed(Service::Inventory)?)
                .find_nearby(inv::FindNearbyRequest {
                    items,
                    point: Some(GeoPoint {
                        latitude: lat,
                        longitude: lon,
                    }),
                    radius_meters: radius_km * 1000.0,
                    limit: 10,
                    channel_id: String::new(),
                })
                .await
                .answer("inventory")?;
            let mut table = Table::new(&["store", "name", "distance", "ready by"]);
            for s in &response.stores {
                let location = s.location.clone().unwrap_or_default();
                table.row(vec![
                    location.code,
                    location.name,
                    format!("{:.1} km", s.distance_meters / 1000.0),
                    time(s.ready_by.as_ref()),
                ]);
            }
            let human = if table.is_empty() {
                format!("no pickup store within {radius_km} km holds every item\n")
            } else {
                table.render()
            };
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.FindNearbyResponse"),
                human,
            ))
        }
        Command::Reserve {
            items,
            locations,
            channel,
            ttl_secs,
            reference,
        } => {
            let mut location_ids = Vec::new();
            for l in &locations {
                location_ids.push(ctx.location_id(l).await?);
            }
            let lines = sku_quantities(ctx, &items)
                .await?
                .into_iter()
                .map(|i| inv::ReserveLine {
                    sku_id: i.sku_id,
                    quantity: i.quantity,
                    location_ids: location_ids.clone(),
                })
                .collect();
            let channel_id = ctx.channel_id(&channel).await?;
            let response = ReservationServiceClient::new(ctx.authed(Service::Inventory)?)
                .reserve(inv::ReserveRequest {
                    idempotency_key: key(),
                    lines,
                    channel_id,
                    ttl: Some(prost_types::Duration {
                        seconds: ttl_secs,
                        nanos: 0,
                    }),
                    reference,
                })
                .await
                .answer("inventory")?;
            let reservation = required(response.reservation.clone(), "reservation")?;
            let ids: Vec<String> = reservation.lines.iter().map(|l| l.sku_id.clone()).collect();
            let names = Names::load(ctx, &ids).await?;
            let mut fields = Fields::new();
            fields
                .add("reservation", &reservation.id)
                .add(
                    "status",
                    label(reservation.status().as_str_name(), "RESERVATION_STATUS_"),
                )
                .add("expires", time(reservation.expires_at.as_ref()));
            let mut table = Table::new(&["sku", "location", "quantity"]);
            for l in &reservation.lines {
                table.row(vec![
                    names.sku(&l.sku_id),
                    names.location(&l.location_id),
                    l.quantity.to_string(),
                ]);
            }
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.ReserveResponse"),
                format!("{}\n{}", fields.render(), table.render()),
            ))
        }
        Command::Receive {
            location,
            items,
            reason,
        } => {
            let location_id = ctx.location_id(&location).await?;
            let lines = sku_quantities(ctx, &items)
                .await?
                .into_iter()
                .map(|i| inv::MovementLine {
                    sku_id: i.sku_id,
                    quantity: i.quantity,
                })
                .collect();
            let response = StockServiceClient::new(ctx.authed(Service::Inventory)?)
                .record_movement(inv::RecordMovementRequest {
                    idempotency_key: key(),
                    location_id,
                    kind: inv::MovementKind::Receipt as i32,
                    lines,
                    reason,
                    reference: String::new(),
                })
                .await
                .answer("inventory")?;
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.RecordMovementResponse"),
                format!("received {} line(s) at {location}\n", items.len()),
            ))
        }
        Command::Transfer {
            from,
            to,
            items,
            reason,
        } => {
            let from_id = ctx.location_id(&from).await?;
            let to_id = ctx.location_id(&to).await?;
            let lines = sku_quantities(ctx, &items).await?;
            let response = TransferServiceClient::new(ctx.authed(Service::Inventory)?)
                .create_transfer(inv::CreateTransferRequest {
                    idempotency_key: key(),
                    from_location_id: from_id,
                    to_location_id: to_id,
                    lines,
                    expected_at: None,
                    reason,
                })
                .await
                .answer("inventory")?;
            let transfer = required(response.transfer.clone(), "transfer")?;
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.CreateTransferResponse"),
                describe_transfer(ctx, &transfer).await?,
            ))
        }
        Command::ReceiveTransfer { transfer_id } => {
            let mut client = TransferServiceClient::new(ctx.authed(Service::Inventory)?);
            let transfer = required(
                client
                    .get_transfer(inv::GetTransferRequest {
                        transfer_id: transfer_id.clone(),
                    })
                    .await
                    .answer("inventory")?
                    .transfer,
                "transfer",
            )?;
            let lines = transfer
                .lines
                .iter()
                .filter(|l| l.quantity > l.received_quantity)
                .map(|l| inv::SkuQuantity {
                    sku_id: l.sku_id.clone(),
                    quantity: l.quantity - l.received_quantity,
                })
                .collect();
            let response = client
                .receive_transfer(inv::ReceiveTransferRequest {
                    idempotency_key: key(),
                    transfer_id,
                    lines,
                })
                .await
                .answer("inventory")?;
            let transfer = required(response.transfer.clone(), "transfer")?;
            Ok(Output::new(
                to_json(&response, "omni.inventory.v1.ReceiveTransferResponse"),
                describe_transfer(ctx, &transfer).await?,
            ))
        }
    }
}

async fn describe_transfer(ctx: &Ctx, t: &inv::Transfer) -> CliResult<String> {
    let ids: Vec<String> = t.lines.iter().map(|l| l.sku_id.clone()).collect();
    let names = Names::load(ctx, &ids).await?;
    let mut fields = Fields::new();
    fields
        .add("transfer", &t.id)
        .add("from", names.location(&t.from_location_id))
        .add("to", names.location(&t.to_location_id))
        .add(
            "status",
            label(t.status().as_str_name(), "TRANSFER_STATUS_"),
        );
    let mut table = Table::new(&["sku", "sent", "received"]);
    for l in &t.lines {
        table.row(vec![
            names.sku(&l.sku_id),
            l.quantity.to_string(),
            l.received_quantity.to_string(),
        ]);
    }
    Ok(format!("{}\n{}", fields.render(), table.render()))
}

/// `SKU:QTY` items with their SKU ids looked up.
pub async fn sku_quantities(ctx: &Ctx, items: &[String]) -> CliResult<Vec<inv::SkuQuantity>> {
    let mut out = Vec::new();
    for item in items {
        let (sku, quantity) = parse_item(item)?;
        if quantity <= 0 {
            return Err(CliError::Usage(format!(
                "{item:?}: quantity must be positive"
            )));
        }
        out.push(inv::SkuQuantity {
            sku_id: ctx.sku_id(&sku).await?,
            quantity,
        });
    }
    Ok(out)
}

/// SKU codes and location codes for ids, for tables.
pub struct Names {
    skus: HashMap<String, String>,
    locations: HashMap<String, String>,
}

impl Names {
    pub async fn load(ctx: &Ctx, sku_ids: &[String]) -> CliResult<Self> {
        let mut skus = HashMap::new();
        if !sku_ids.is_empty() {
            let response = ProductServiceClient::new(ctx.authed(Service::Catalog)?)
                .batch_get_skus(cat::BatchGetSkusRequest {
                    sku_ids: sku_ids.to_vec(),
                    channel_id: String::new(),
                })
                .await
                .answer("catalog")?;
            skus = response
                .skus
                .into_iter()
                .map(|s| (s.id, s.sku_code))
                .collect();
        }
        let locations = ctx
            .locations()
            .await?
            .into_iter()
            .map(|l| (l.id, l.code))
            .collect();
        Ok(Self { skus, locations })
    }

    pub fn sku(&self, id: &str) -> String {
        self.skus.get(id).cloned().unwrap_or_else(|| id.to_owned())
    }

    pub fn location(&self, id: &str) -> String {
        if id.is_empty() {
            return "-".to_owned();
        }
        self.locations
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }
}
