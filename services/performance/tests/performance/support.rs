//! Starting performance and feeding it events the way other services publish them: written to
//! an outbox, relayed into the Redis stream of the service under test, applied by its consumer.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use omni_proto::common::{ChannelKind, Date, DateRange, Money};
use omni_proto::events::{self as ev, Event, event::Payload};
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::experiment_service_client::ExperimentServiceClient;
use omni_proto::omni::performance::v1::input_service_client::InputServiceClient;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;
use omni_proto::omni::performance::v1::scorecard_service_client::ScorecardServiceClient;
use omni_runtime::client::AuthChannel;
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_testkit::Service;
use prost::Message as _;
use sqlx::PgPool;
use tonic_types::StatusExt as _;

pub const CURRENCY: &str = "EUR";

pub struct Performance {
    pub svc: Service,
    pub db: PgPool,
    pub inputs: InputServiceClient<AuthChannel>,
    pub kpis: KpiServiceClient<AuthChannel>,
    pub scorecards: ScorecardServiceClient<AuthChannel>,
    pub experiments: ExperimentServiceClient<AuthChannel>,
    feed: PgPool,
    pub redis: Redis,
    /// Every event published so far, to publish again.
    pub published: Vec<(&'static str, Event)>,
}

pub async fn start() -> Performance {
    start_with(None).await
}

/// Performance, reading inventory values from `inventory` when given.
pub async fn start_with(inventory: Option<performance::InventoryFeed>) -> Performance {
    let common = omni_testkit::common_config("performance")
        .await
        .expect("config");
    let config = performance::Config {
        common: common.clone(),
        currency: CURRENCY.to_owned(),
    };
    let svc = Service::start("performance", common, move |listener, shutdown| {
        performance::run_with(config, inventory, listener, shutdown)
    })
    .await
    .expect("performance starts");
    let db = svc.db().await.expect("db");
    // The emitting services' side: a database with the runtime's outbox.
    let feed_url = omni_testkit::fresh_database("performance_feed")
        .await
        .expect("feed db");
    let feed = PgPool::connect(&feed_url).await.expect("feed pool");
    omni_runtime::db::migrate(&feed, sqlx::migrate::Migrator::DEFAULT, &Default::default())
        .await
        .expect("migrate feed");
    let redis = Redis::new(&omni_testkit::redis_url(), svc.redis_prefix()).expect("redis");
    let admin = svc.admin();
    Performance {
        inputs: InputServiceClient::new(admin.clone()),
        kpis: KpiServiceClient::new(admin.clone()),
        scorecards: ScorecardServiceClient::new(admin.clone()),
        experiments: ExperimentServiceClient::new(admin),
        svc,
        db,
        feed,
        redis,
        published: Vec::new(),
    }
}

impl Performance {
    /// Publishes events from `source` through an outbox and its relay, then waits until the
    /// service has applied them.
    pub async fn publish(&mut self, source: &'static str, events: Vec<(&str, Payload)>) {
        let outbox = Outbox::new(source);
        let before = self.applied().await;
        let count = events.len() as i64;
        let mut tx = self.feed.begin().await.expect("tx");
        for (kind, payload) in events {
            let event = outbox
                .add(&mut tx, kind, "aggregate", "test", payload)
                .await
                .expect("outbox add");
            self.published.push((source, event));
        }
        tx.commit().await.expect("commit");
        let relay = outbox.relay(
            self.feed.clone(),
            self.redis.clone(),
            Duration::from_millis(50),
        );
        while relay.publish_pending().await.expect("relay") > 0 {}
        self.wait_applied(before + count).await;
    }

    /// Puts already published events into their streams again, as a relay that crashed before
    /// marking them published would; then a fresh marker event, so that once the marker is
    /// applied every duplicate before it has been read.
    pub async fn publish_again(&mut self) {
        let before = self.applied().await;
        let mut conn = self.redis.conn();
        for (source, event) in &self.published {
            let _: String = redis::cmd("XADD")
                .arg(self.redis.event_stream(source))
                .arg("*")
                .arg("event")
                .arg(event.encode_to_vec())
                .query_async(&mut conn)
                .await
                .expect("xadd");
        }
        let sources: Vec<&'static str> = {
            let mut s: Vec<_> = self.published.iter().map(|(s, _)| *s).collect();
            s.sort();
            s.dedup();
            s
        };
        let published = std::mem::take(&mut self.published);
        for source in sources {
            let marker = Payload::ChannelChanged(ev::ChannelChanged {
                channel_id: format!("marker-{source}"),
                ..Default::default()
            });
            self.publish(source, vec![("catalog.channel_changed", marker)])
                .await;
        }
        self.published = published;
        assert!(self.applied().await > before);
    }

    async fn applied(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    async fn wait_applied(&self, wanted: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let applied = self.applied().await;
            if applied >= wanted {
                assert_eq!(applied, wanted, "more events applied than published");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "events not applied: {applied} of {wanted}"
            );
            tokio::task::yield_now().await;
        }
    }

    pub async fn report(&mut self, request: pb::GetKpiReportRequest) -> pb::GetKpiReportResponse {
        self.kpis
            .get_kpi_report(request)
            .await
            .expect("report")
            .into_inner()
    }
}

pub fn day(y: i32, m: i32, d: i32) -> Date {
    Date {
        year: y,
        month: m,
        day: d,
    }
}

pub fn range(start: Date, end: Date) -> Option<DateRange> {
    Some(DateRange {
        start: Some(start),
        end: Some(end),
    })
}

pub fn at(m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, m, d, h, min, 0)
        .single()
        .expect("valid time")
}

pub fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: CURRENCY.to_owned(),
    })
}

pub fn channel(id: &str, kind: ChannelKind) -> (&'static str, Payload) {
    (
        "catalog.channel_changed",
        Payload::ChannelChanged(ev::ChannelChanged {
            channel_id: id.to_owned(),
            kind: kind as i32,
            name: id.to_owned(),
            currency: CURRENCY.to_owned(),
            active: true,
            created: true,
            version: 1,
            ..Default::default()
        }),
    )
}

/// An order of one line: `quantity` units costing `unit_cost`, paid `net` in all.
pub struct Order<'a> {
    pub id: &'a str,
    pub channel: &'a str,
    pub store: &'a str,
    pub associate: &'a str,
    pub customer: &'a str,
    pub placed_at: DateTime<Utc>,
    pub quantity: i32,
    pub net: i64,
    pub unit_cost: i64,
}

impl Order<'_> {
    pub fn facts(&self) -> ev::OrderFacts {
        ev::OrderFacts {
            order_id: self.id.to_owned(),
            order_number: self.id.to_uppercase(),
            channel_id: self.channel.to_owned(),
            store_id: self.store.to_owned(),
            associate_id: self.associate.to_owned(),
            customer_id: self.customer.to_owned(),
            lines: vec![ev::OrderLineFacts {
                line_id: format!("{}-1", self.id),
                quantity: self.quantity,
                net_amount: eur(self.net),
                unit_cost: eur(self.unit_cost),
                ..Default::default()
            }],
            total: eur(self.net),
            placed_at: ts(self.placed_at),
            ..Default::default()
        }
    }

    pub fn placed(&self) -> (&'static str, Payload) {
        (
            "orders.order_placed",
            Payload::OrderPlaced(ev::OrderPlaced {
                order: Some(self.facts()),
            }),
        )
    }

    pub fn cancelled(&self) -> (&'static str, Payload) {
        (
            "orders.order_cancelled",
            Payload::OrderCancelled(ev::OrderCancelled {
                order: Some(self.facts()),
                ..Default::default()
            }),
        )
    }

    /// Fulfilled with the pickup promise and readiness in its facts.
    pub fn fulfilled_pickup(
        &self,
        promised: DateTime<Utc>,
        ready: DateTime<Utc>,
    ) -> (&'static str, Payload) {
        let mut facts = self.facts();
        facts.promised_ready_at = ts(promised);
        facts.ready_at = ts(ready);
        (
            "orders.order_fulfilled",
            Payload::OrderFulfilled(ev::OrderFulfilled {
                order: Some(facts),
                fulfilled_at: ts(ready),
            }),
        )
    }
}

pub fn ready_for_pickup(
    order: &str,
    promised: DateTime<Utc>,
    ready: DateTime<Utc>,
) -> (&'static str, Payload) {
    (
        "orders.order_ready_for_pickup",
        Payload::OrderReadyForPickup(ev::OrderReadyForPickup {
            order_id: order.to_owned(),
            promised_ready_at: ts(promised),
            ready_at: ts(ready),
            ready_within_promise: ready <= promised,
            ..Default::default()
        }),
    )
}

pub fn returned(
    id: &str,
    order: &str,
    channel: &str,
    refund: i64,
    quantity: i32,
    unit_cost: i64,
    completed: DateTime<Utc>,
) -> (&'static str, Payload) {
    (
        "orders.return_completed",
        Payload::ReturnCompleted(ev::ReturnCompleted {
            return_id: id.to_owned(),
            order_id: order.to_owned(),
            order_channel_id: channel.to_owned(),
            channel_id: channel.to_owned(),
            lines: vec![ev::ReturnLineFacts {
                quantity,
                refund_amount: eur(refund),
                unit_cost: eur(unit_cost),
                ..Default::default()
            }],
            refund_total: eur(refund),
            completed_at: ts(completed),
            ..Default::default()
        }),
    )
}

pub fn feedback(
    id: &str,
    channel: &str,
    store: &str,
    nps: bool,
    score: i32,
    at: DateTime<Utc>,
) -> (&'static str, Payload) {
    use omni_proto::omni::crm::v1::FeedbackScale;
    (
        "crm.feedback_recorded",
        Payload::FeedbackRecorded(ev::FeedbackRecorded {
            feedback_id: id.to_owned(),
            channel_id: channel.to_owned(),
            store_id: store.to_owned(),
            scale: if nps {
                FeedbackScale::Nps as i32
            } else {
                FeedbackScale::Csat as i32
            },
            score,
            recorded_at: ts(at),
            ..Default::default()
        }),
    )
}

/// The fields of an INVALID_ARGUMENT's BadRequest.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

pub fn minor(m: &Option<Money>) -> Option<i64> {
    m.as_ref().map(|m| m.minor_units)
}

pub fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

pub fn inventory_value(location: &str, d: Date, value: i64) -> (&'static str, Payload) {
    (
        "inventory.inventory_valued",
        Payload::InventoryValued(ev::InventoryValued {
            location_id: location.to_owned(),
            day: Some(d),
            units: 1,
            value: eur(value),
        }),
    )
}
