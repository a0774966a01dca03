//! Inventory value snapshots from the inventory service: every so often, the end-of-day value
//! of each location (`ListInventoryValues`) from the last day already held (or a month back)
//! up to today, stored in `inventory_values` (today's figure is replaced until the day is
//! over). Inventory's `InventoryValued` events, when it publishes them, land in the same table.

use std::time::Duration;

use chrono::{Datelike as _, NaiveDate, Utc};
use omni_proto::common::{Date, DateRange};
use omni_proto::omni::inventory::v1::ListInventoryValuesRequest;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_runtime::client::AuthChannel;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// How far back the first read goes when nothing is held yet.
const BACKFILL_DAYS: i64 = 31;

/// Reads inventory values from inventory.
#[derive(Debug, Clone)]
pub struct InventoryFeed {
    pub client: StockServiceClient<AuthChannel>,
    pub every: Duration,
}

fn date(d: NaiveDate) -> Option<Date> {
    Some(Date {
        year: d.year(),
        month: i32::try_from(d.month()).unwrap_or_default(),
        day: i32::try_from(d.day()).unwrap_or_default(),
    })
}

impl InventoryFeed {
    /// Reads now and then every `every` until `shutdown`; a failed read is logged and retried
    /// at the next turn.
    pub async fn run(self, pool: PgPool, currency: String, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.read_once(&pool, &currency).await {
                tracing::warn!(error = %e, "cannot read inventory values; retrying later");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One read of every value from the last day held up to today; returns how many were
    /// stored.
    #[tracing::instrument(name = "performance.read_inventory_values", skip_all, err)]
    pub async fn read_once(&self, pool: &PgPool, currency: &str) -> anyhow::Result<usize> {
        let today = Utc::now().date_naive();
        let held: Option<NaiveDate> = sqlx::query_scalar("SELECT max(day) FROM inventory_values")
            .fetch_one(pool)
            .await?;
        let first = held
            .unwrap_or(today - chrono::Duration::days(BACKFILL_DAYS))
            .min(today);
        let mut request = ListInventoryValuesRequest {
            days: Some(DateRange {
                start: date(first),
                end: date(today),
            }),
            location_ids: Vec::new(),
            page_size: 500,
            page_token: String::new(),
        };
        let mut client = self.client.clone();
        let mut stored = 0;
        loop {
            let page = client
                .list_inventory_values(request.clone())
                .await?
                .into_inner();
            let mut tx = pool.begin().await?;
            for v in &page.values {
                let day = v.day.as_ref().and_then(|d| {
                    NaiveDate::from_ymd_opt(
                        d.year,
                        u32::try_from(d.month).ok()?,
                        u32::try_from(d.day).ok()?,
                    )
                });
                let (Some(day), Some(value)) = (day, v.value.as_ref()) else {
                    continue;
                };
                if !value.currency.is_empty() && value.currency != currency {
                    tracing::warn!(location = %v.location_id, currency = %value.currency, "inventory value in another currency; ignored");
                    continue;
                }
                store::apply_inventory_value(&mut tx, &v.location_id, day, value.minor_units)
                    .await?;
                stored += 1;
            }
            tx.commit().await?;
            if page.next_page_token.is_empty() {
                return Ok(stored);
            }
            request.page_token = page.next_page_token;
        }
    }
}
