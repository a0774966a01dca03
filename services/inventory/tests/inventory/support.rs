//! Starting inventory and building small networks of locations for the tests.

use std::time::Duration;

use omni_proto::common::{Address, GeoPoint};
use omni_proto::omni::inventory::v1 as pb;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::inventory::v1::transfer_service_client::TransferServiceClient;
use omni_runtime::client::AuthChannel;
use omni_testkit::Service;
use sqlx::PgPool;
use tonic_types::StatusExt as _;
use uuid::Uuid;

pub struct Inventory {
    pub svc: Service,
    pub db: PgPool,
    pub locations: LocationServiceClient<AuthChannel>,
    pub stock: StockServiceClient<AuthChannel>,
    pub availability: AvailabilityServiceClient<AuthChannel>,
    pub reservations: ReservationServiceClient<AuthChannel>,
    pub transfers: TransferServiceClient<AuthChannel>,
}

pub async fn start() -> Inventory {
    start_with(10_000).await
}

/// Inventory marking a SKU hot once `hot_detect_concurrency` reservations of it are in flight.
pub async fn start_with(hot_detect_concurrency: usize) -> Inventory {
    let common = omni_testkit::common_config("inventory")
        .await
        .expect("config");
    let config = inventory::Config {
        common: common.clone(),
        default_ttl: Duration::from_secs(900),
        expiry_interval: Duration::from_millis(50),
        hot_detect_concurrency,
    };
    let svc = Service::start("inventory", common, move |listener, shutdown| {
        inventory::run(config, listener, shutdown)
    })
    .await
    .expect("inventory starts");
    let db = svc.db().await.expect("db");
    let admin = svc.admin();
    Inventory {
        locations: LocationServiceClient::new(admin.clone()),
        stock: StockServiceClient::new(admin.clone()),
        availability: AvailabilityServiceClient::new(admin.clone()),
        reservations: ReservationServiceClient::new(admin.clone()),
        transfers: TransferServiceClient::new(admin),
        svc,
        db,
    }
}

pub fn sku() -> String {
    Uuid::now_v7().to_string()
}

pub fn key() -> String {
    Uuid::now_v7().to_string()
}

impl Inventory {
    pub async fn warehouse(&mut self, code: &str) -> String {
        self.location(pb::Location {
            code: code.into(),
            name: format!("Warehouse {code}"),
            kind: pb::LocationKind::Warehouse as i32,
            ships_orders: true,
            ..Default::default()
        })
        .await
    }

    pub async fn store(
        &mut self,
        code: &str,
        latitude: f64,
        longitude: f64,
        pickup: bool,
    ) -> String {
        self.location(pb::Location {
            code: code.into(),
            name: format!("Store {code}"),
            kind: pb::LocationKind::Store as i32,
            channel_id: Uuid::now_v7().to_string(),
            address: Some(Address {
                city: "Lyon".into(),
                location: Some(GeoPoint {
                    latitude,
                    longitude,
                }),
                ..Default::default()
            }),
            pickup_enabled: pickup,
            ships_orders: true,
            // Whenever the suite runs, the store's day is not over.
            time_zone: omni_testkit::daytime_zone(),
            ..Default::default()
        })
        .await
    }

    pub async fn location(&mut self, location: pb::Location) -> String {
        self.locations
            .create_location(pb::CreateLocationRequest {
                idempotency_key: key(),
                location: Some(location),
            })
            .await
            .expect("create location")
            .into_inner()
            .location
            .expect("location")
            .id
    }

    pub async fn movement(
        &mut self,
        location: &str,
        kind: pb::MovementKind,
        sku: &str,
        quantity: i64,
    ) -> pb::RecordMovementResponse {
        self.stock
            .record_movement(pb::RecordMovementRequest {
                idempotency_key: key(),
                location_id: location.into(),
                kind: kind as i32,
                lines: vec![pb::MovementLine {
                    sku_id: sku.into(),
                    quantity,
                }],
                reason: "test".into(),
                reference: String::new(),
            })
            .await
            .expect("movement")
            .into_inner()
    }

    pub async fn receive(&mut self, location: &str, sku: &str, quantity: i64) {
        self.movement(location, pb::MovementKind::Receipt, sku, quantity)
            .await;
    }

    pub async fn reserve(
        &mut self,
        sku: &str,
        quantity: i64,
        locations: &[&str],
    ) -> Result<pb::Reservation, tonic::Status> {
        self.reservations
            .reserve(reserve_request(sku, quantity, locations, "web"))
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn availability(&mut self, sku: &str, channel: &str) -> pb::SkuAvailability {
        self.availability
            .get_availability(pb::GetAvailabilityRequest {
                sku_ids: vec![sku.into()],
                channel_id: channel.into(),
                include_locations: true,
                location_ids: vec![],
            })
            .await
            .expect("availability")
            .into_inner()
            .skus
            .remove(0)
    }

    pub async fn level(&mut self, sku: &str, location: &str) -> pb::StockLevel {
        self.stock
            .list_stock_levels(pb::ListStockLevelsRequest {
                sku_ids: vec![sku.into()],
                location_id: location.into(),
                ..Default::default()
            })
            .await
            .expect("levels")
            .into_inner()
            .levels
            .pop()
            .unwrap_or_default()
    }

    /// Deletes every Redis key of this service's namespace, as if Redis had lost its data.
    pub async fn flush_redis(&self) {
        let mut conn = omni_runtime::redis::Redis::new(&omni_testkit::redis_url(), "")
            .expect("a redis URL")
            .conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.svc.redis_prefix()))
            .query_async(&mut conn)
            .await
            .expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("count")
    }
}

pub fn reserve_request(
    sku: &str,
    quantity: i64,
    locations: &[&str],
    channel: &str,
) -> pb::ReserveRequest {
    pb::ReserveRequest {
        idempotency_key: key(),
        lines: vec![pb::ReserveLine {
            sku_id: sku.into(),
            quantity,
            location_ids: locations.iter().map(|l| (*l).to_owned()).collect(),
        }],
        channel_id: channel.into(),
        ttl: None,
        reference: "order-1".into(),
    }
}

pub fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

pub fn precondition_types(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .precondition_failure()
        .map(|p| p.violations.iter().map(|v| v.r#type.clone()).collect())
        .unwrap_or_default()
}

/// on_hand equals the ledger for every level, and reserved equals what active reservations hold.
pub async fn assert_ledger_consistent(db: &PgPool) {
    let drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_levels s LEFT JOIN ( \
           SELECT sku_id, location_id, sum(quantity_delta) AS total FROM movements GROUP BY sku_id, location_id \
         ) m USING (sku_id, location_id) WHERE s.on_hand <> coalesce(m.total, 0)",
    )
    .fetch_one(db)
    .await
    .expect("drift");
    assert_eq!(drift, 0, "stock levels differ from the ledger");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_levels s LEFT JOIN ( \
           SELECT l.sku_id, l.location_id, sum(l.quantity - l.fulfilled - l.released) AS held \
           FROM reservation_lines l JOIN reservations r ON r.id = l.reservation_id WHERE r.status = 'active' \
           GROUP BY l.sku_id, l.location_id \
         ) h USING (sku_id, location_id) WHERE s.reserved <> coalesce(h.held, 0)",
    )
    .fetch_one(db)
    .await
    .expect("held");
    assert_eq!(held, 0, "reserved differs from what reservations hold");
}
