//! Starts crm beside the real identity service on one Redis namespace, and publishes order
//! events through a real `orders` outbox.

use std::time::Duration;

use omni_proto::common::{ChannelKind, Money};
use omni_proto::events::event::Payload;
use omni_proto::events::{
    OrderCancelled, OrderFacts, OrderFulfilled, OrderLineFacts, OrderPaid, OrderPlaced,
    ReturnCompleted,
};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::identity::v1 as idpb;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_runtime::outbox::{Outbox, Relay};
use omni_runtime::redis::Redis;
use omni_testkit::Service;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const EUR: &str = "EUR";

pub struct World {
    pub crm: Service,
    /// crm's way to its database, when started with [`World::start_with_database_link`].
    pub database_link: Option<omni_testkit::TcpProxy>,
    pub identity: Service,
    pub orders: Orders,
}

/// The order-management side: its outbox on a scratch database, relayed on demand.
pub struct Orders {
    pub pool: PgPool,
    outbox: Outbox,
    relay: Relay,
}

impl World {
    pub async fn start() -> World {
        Self::start_inner(false).await
    }

    /// crm reaching its database through a proxy the test can cut, and taking over pending
    /// entries after 200 ms instead of 30 s.
    pub async fn start_with_database_link() -> World {
        Self::start_inner(true).await
    }

    async fn start_inner(linked: bool) -> World {
        let mut common = omni_testkit::common_config("crm")
            .await
            .expect("crm config");
        let database_link = if linked {
            let (proxy, url) = omni_testkit::database_link(common.database_url.expose())
                .await
                .expect("database link");
            common.database_url = omni_runtime::config::Secret::new(url);
            common.consumer_reclaim_idle = Duration::from_millis(200);
            Some(proxy)
        } else {
            None
        };
        let mut identity_common = omni_testkit::common_config("identity")
            .await
            .expect("identity config");
        identity_common.redis_prefix = common.redis_prefix.clone();
        let identity = omni_testkit::identity_with(identity_common)
            .await
            .expect("identity");

        let orders_db = omni_testkit::fresh_database("orders").await.expect("db");
        let pool = PgPool::connect(&orders_db).await.expect("pool");
        omni_runtime::db::migrate(
            &pool,
            sqlx::migrate::Migrator::DEFAULT,
            &CancellationToken::new(),
        )
        .await
        .expect("migrate");
        let redis = Redis::new(&omni_testkit::redis_url(), &common.redis_prefix).expect("redis");
        let outbox = Outbox::new("orders");
        let relay = outbox.relay(pool.clone(), redis, Duration::from_millis(50));

        let config = crm::Config {
            common: common.clone(),
        };
        let crm = Service::start("crm", common, move |listener, shutdown| {
            crm::run(config, listener, shutdown)
        })
        .await
        .expect("crm");
        World {
            crm,
            database_link,
            identity,
            orders: Orders {
                pool,
                outbox,
                relay,
            },
        }
    }

    pub fn identity_client(&self) -> IdentityServiceClient<omni_runtime::client::AuthChannel> {
        IdentityServiceClient::new(self.identity.admin())
    }

    pub fn views(&self) -> CustomerViewServiceClient<omni_runtime::client::AuthChannel> {
        CustomerViewServiceClient::new(self.crm.admin())
    }

    /// Registers a customer in the real identity service; crm hears of it by event.
    pub async fn register(&self, phone: &str, name: &str) -> String {
        self.identity_client()
            .resolve_customer(idpb::ResolveCustomerRequest {
                phone: phone.into(),
                name: name.into(),
                email: format!("{}@example.test", name.to_lowercase().replace(' ', ".")),
                ..Default::default()
            })
            .await
            .expect("resolve")
            .into_inner()
            .customer
            .expect("customer")
            .id
    }

    /// The customer view once `done` holds for it, polling crm up to ten seconds.
    pub async fn view_when(
        &self,
        customer_id: &str,
        done: impl Fn(&pb::CustomerView) -> bool,
    ) -> pb::CustomerView {
        let mut last = None;
        for _ in 0..500 {
            let reply = self
                .views()
                .get_customer_view(pb::GetCustomerViewRequest {
                    customer_id: customer_id.into(),
                    ..Default::default()
                })
                .await;
            if let Ok(reply) = reply {
                let view = reply.into_inner().view.expect("view");
                if done(&view) {
                    return view;
                }
                last = Some(view);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the view never reached the expected state; last: {last:#?}");
    }
}

impl World {
    /// Sets a marketing consent in the real identity service; crm hears of it by event.
    pub async fn consent(&self, customer_id: &str, kind: ChannelKind, opt_in: bool) {
        self.identity_client()
            .set_consent(idpb::SetConsentRequest {
                customer_id: customer_id.into(),
                channel_kind: kind as i32,
                marketing_opt_in: opt_in,
            })
            .await
            .expect("set consent");
    }

    /// Every event crm has published to its stream so far.
    pub async fn crm_events(&self) -> Vec<omni_proto::events::Event> {
        use prost::Message;
        let redis = Redis::new(&omni_testkit::redis_url(), self.crm.redis_prefix()).expect("redis");
        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(redis.event_stream("crm"))
            .arg("-")
            .arg("+")
            .query_async(&mut redis.conn())
            .await
            .expect("xrange");
        entries
            .into_iter()
            .filter_map(|(_, fields)| fields.get(1).cloned())
            .map(|payload| {
                omni_proto::events::Event::decode(payload.as_slice()).expect("event decodes")
            })
            .collect()
    }

    /// crm's events once `done` holds for them, polling up to ten seconds.
    pub async fn crm_events_when(
        &self,
        done: impl Fn(&[omni_proto::events::Event]) -> bool,
    ) -> Vec<omni_proto::events::Event> {
        for _ in 0..500 {
            let events = self.crm_events().await;
            if done(&events) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("crm's stream never reached the expected state");
    }
}

/// An order placed `days_ago` with one line per (product, category), each worth `total` split
/// evenly.
pub fn order_at(
    customer_id: &str,
    channel_id: &str,
    kind: ChannelKind,
    total: i64,
    days_ago: i64,
    lines: &[(&str, &str)],
) -> OrderFacts {
    let mut o = order(customer_id, channel_id, kind, total);
    let at = std::time::SystemTime::now()
        - std::time::Duration::from_secs(u64::try_from(days_ago).expect("days") * 86_400);
    o.placed_at = Some(at.into());
    if !lines.is_empty() {
        let share = total / lines.len() as i64;
        o.lines = lines
            .iter()
            .enumerate()
            .map(|(i, (product, category))| OrderLineFacts {
                line_id: format!("l{i}"),
                sku_id: format!("{product}-sku"),
                product_id: (*product).into(),
                category_id: (*category).into(),
                quantity: 1,
                net_amount: eur(share),
                ..Default::default()
            })
            .collect();
    }
    o
}

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: EUR.into(),
    })
}

/// The facts of a one-line order of `total` minor units.
pub fn order(customer_id: &str, channel_id: &str, kind: ChannelKind, total: i64) -> OrderFacts {
    let id = Uuid::now_v7().to_string();
    OrderFacts {
        order_id: id.clone(),
        order_number: format!("O-{}", &id[id.len() - 6..]),
        channel_id: channel_id.into(),
        channel_kind: kind as i32,
        customer_id: customer_id.into(),
        store_id: if kind == ChannelKind::Store {
            "store-1".into()
        } else {
            String::new()
        },
        status: 1,
        lines: vec![OrderLineFacts {
            line_id: "l1".into(),
            sku_id: "sku-1".into(),
            category_id: "cat-1".into(),
            quantity: 2,
            net_amount: eur(total),
            ..Default::default()
        }],
        total: eur(total),
        subtotal: eur(total),
        placed_at: Some(std::time::SystemTime::now().into()),
        ..Default::default()
    }
}

impl Orders {
    /// Records an event in the orders outbox and relays everything pending.
    pub async fn publish(&self, event_type: &str, aggregate: &str, payload: Payload) {
        let mut tx = self.pool.begin().await.expect("tx");
        self.outbox
            .add(&mut tx, event_type, aggregate, "test", payload)
            .await
            .expect("outbox");
        tx.commit().await.expect("commit");
        self.relay_all().await;
    }

    /// Records an event that happened at `occurred_at` (so it can arrive after a later one, as
    /// a reclaimed or re-published entry does) and relays everything pending.
    pub async fn publish_as_of(
        &self,
        event_type: &str,
        aggregate: &str,
        payload: Payload,
        occurred_at: std::time::SystemTime,
    ) {
        use prost::Message as _;
        let id = Uuid::now_v7();
        let event = omni_proto::events::Event {
            id: id.to_string(),
            r#type: event_type.into(),
            occurred_at: Some(occurred_at.into()),
            aggregate_id: aggregate.into(),
            source: "orders".into(),
            actor_id: "test".into(),
            payload: Some(payload),
            ..Default::default()
        };
        sqlx::query("INSERT INTO outbox (event_id, event_type, payload) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(event_type)
            .bind(event.encode_to_vec())
            .execute(&self.pool)
            .await
            .expect("outbox");
        self.relay_all().await;
    }

    pub async fn relay_all(&self) {
        while self.relay.publish_pending().await.expect("relay") > 0 {}
    }

    /// Publishes every event of this outbox again, with the same ids.
    pub async fn replay_all(&self) {
        sqlx::query("UPDATE outbox SET published_at = NULL")
            .execute(&self.pool)
            .await
            .expect("reset");
        self.relay_all().await;
    }

    /// Placed, paid and fulfilled, as order-management would say it.
    pub async fn complete(&self, facts: &OrderFacts) {
        let mut f = facts.clone();
        self.publish(
            "orders.order_placed",
            &f.order_id,
            Payload::OrderPlaced(OrderPlaced {
                order: Some(f.clone()),
            }),
        )
        .await;
        f.status = 2;
        self.publish(
            "orders.order_paid",
            &f.order_id,
            Payload::OrderPaid(OrderPaid {
                order: Some(f.clone()),
                amount: f.total.clone(),
                ..Default::default()
            }),
        )
        .await;
        f.status = 7;
        self.publish(
            "orders.order_fulfilled",
            &f.order_id,
            Payload::OrderFulfilled(OrderFulfilled {
                order: Some(f.clone()),
                fulfilled_at: f.placed_at,
            }),
        )
        .await;
    }

    pub async fn cancel(&self, facts: &OrderFacts) {
        let mut f = facts.clone();
        f.status = 8;
        let id = f.order_id.clone();
        self.publish(
            "orders.order_cancelled",
            &id,
            Payload::OrderCancelled(OrderCancelled {
                order: Some(f),
                ..Default::default()
            }),
        )
        .await;
    }

    pub async fn return_of(&self, facts: &OrderFacts, refund: i64) {
        self.publish(
            "orders.return_completed",
            &facts.order_id,
            Payload::ReturnCompleted(ReturnCompleted {
                return_id: Uuid::now_v7().to_string(),
                order_id: facts.order_id.clone(),
                customer_id: facts.customer_id.clone(),
                order_channel_id: facts.channel_id.clone(),
                channel_id: facts.channel_id.clone(),
                refund_total: eur(refund),
                ..Default::default()
            }),
        )
        .await;
    }
}
