//! Erasure erases: after identity's EraseCustomer, the customer's name, phone and email (and
//! those of a duplicate merged into them) appear in no table of any service and in no event
//! Redis still holds, once the erasure has reached every consumer.

use std::time::Duration;

use omni_proto::events::event::Payload;
use omni_proto::events::{CustomerRegistered, Event};
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::crm::v1::ticket_service_client::TicketServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_runtime::redis::Redis;
use prost::Message as _;
use sqlx::PgPool;

use crate::support::{World, address, eventually, key, line, payment, ship_to};

/// A value no other test writes: a random number in a name, phone and email.
struct Person {
    name: String,
    phone: String,
    email: String,
}

impl Person {
    fn new() -> Person {
        let n: u32 = rand::random::<u32>() % 100_000_000;
        Person {
            name: format!("Ysolde Quarrington{n:08}"),
            phone: format!("+3369{n:08}"),
            email: format!("ysolde.{n:08}@erasure.example"),
        }
    }

    fn needles(&self) -> [&str; 3] {
        [&self.name, &self.phone, &self.email]
    }
}

/// Dead letters holding `people`'s registrations (`(customer id, person)`), as a consumer
/// writes one for an event it could not apply, in every group that reads identity's stream;
/// returns the dead-letter streams' keys.
async fn dead_letter_registrations(redis: &Redis, people: &[(&str, &Person)]) -> Vec<String> {
    let mut conn = redis.conn();
    let mut keys = Vec::new();
    for group in ["crm", "order-management", "performance"] {
        let dead = omni_runtime::consumer::dead_letter_stream(redis, group);
        for (customer_id, person) in people {
            let event = Event {
                id: key(),
                r#type: "identity.customer_registered".into(),
                aggregate_id: (*customer_id).to_owned(),
                source: "identity".into(),
                payload: Some(Payload::CustomerRegistered(CustomerRegistered {
                    customer_id: (*customer_id).to_owned(),
                    phone: person.phone.clone(),
                    email: person.email.clone(),
                    name: person.name.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let _: String = redis::cmd("XADD")
                .arg(&dead)
                .arg("*")
                .arg("reason")
                .arg("refused by the handler")
                .arg("event_id")
                .arg(&event.id)
                .arg("event_type")
                .arg(&event.r#type)
                .arg("event")
                .arg(event.encode_to_vec())
                .query_async(&mut conn)
                .await
                .expect("xadd");
        }
        keys.push(dead);
    }
    keys
}

/// Where `needle` still appears: "<database>.<table>" rows whose text (or, for bytes, whose
/// hex) holds it.
async fn in_tables(label: &str, db: &PgPool, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .expect("tables");
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    let mut found = Vec::new();
    for table in tables {
        let sql = format!(
            "SELECT count(*) FROM \"{table}\" t
             WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0"
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .bind(&hex)
            .fetch_one(db)
            .await
            .expect("scan");
        if n > 0 {
            found.push(format!("{label}.{table} ({n} rows)"));
        }
    }
    found
}

/// The keys under `prefix` whose values (stream entries, strings, hashes) hold `needle`.
async fn in_redis(redis: &Redis, prefix: &str, needle: &str) -> Vec<String> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut found = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("type");
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "stream" => {
                let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .expect("xrange");
                entries.into_iter().flat_map(|(_, f)| f).collect()
            }
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("get"),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("hgetall"),
            _ => Vec::new(),
        };
        if values
            .iter()
            .any(|v| v.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(key);
        }
    }
    found
}

#[tokio::test]
async fn an_erased_customer_is_gone_from_every_service_and_every_retained_event() {
    let w = World::start().await;
    let (person, duplicate) = (Person::new(), Person::new());
    let mut identity = IdentityServiceClient::new(w.shop.identity.admin());
    let mut register = async |p: &Person| {
        identity
            .resolve_customer(id::ResolveCustomerRequest {
                phone: p.phone.clone(),
                name: p.name.clone(),
                email: p.email.clone(),
                ..Default::default()
            })
            .await
            .expect("resolve")
            .into_inner()
            .customer
            .expect("customer")
            .id
    };
    let customer = register(&person).await;
    let merged = register(&duplicate).await;

    // Their copies everywhere: crm's profile, a shipped order (recipient, phone, the request
    // and reply kept for its idempotency key), a support ticket about it.
    let mut view = CustomerViewServiceClient::new(w.shop.crm.admin());
    eventually(async || {
        view.get_customer_view(crm::GetCustomerViewRequest {
            customer_id: merged.clone(),
            ..Default::default()
        })
        .await
        .is_ok_and(|v| {
            v.into_inner()
                .view
                .and_then(|v| v.profile)
                .is_some_and(|p| p.name == duplicate.name)
        })
    })
    .await;
    w.receive(&w.warehouse, &w.tee_m, 5).await;
    let mut to = address("8 rue Ysolde", "Villeurbanne", 45.7710, 4.8830);
    to.recipient_name = person.name.clone();
    to.phone = person.phone.clone();
    let mut request = w.request(&w.eshop, vec![line(&w.tee_m, 1)], ship_to(to));
    request.customer = Some(pb::CustomerRef {
        customer_id: customer.clone(),
        ..Default::default()
    });
    let order = w.place(request).await.expect("order placed");
    w.orders_admin()
        .record_payment(pb::RecordPaymentRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            payment: Some(payment(order.total.as_ref().expect("total").minor_units)),
        })
        .await
        .expect("paid");
    TicketServiceClient::new(w.shop.crm.admin())
        .open_ticket(crm::OpenTicketRequest {
            idempotency_key: key(),
            customer_id: customer.clone(),
            kind: crm::TicketKind::Question as i32,
            channel_id: w.eshop.id.clone(),
            order_id: order.id.clone(),
            subject: format!("Where is {}'s parcel?", person.name),
            description: format!("Call back on {} or {}", person.phone, person.email),
            ..Default::default()
        })
        .await
        .expect("ticket");
    identity
        .merge_customers(id::MergeCustomersRequest {
            survivor_id: customer.clone(),
            duplicate_id: merged.clone(),
            reason: format!("same person as {}", duplicate.name),
        })
        .await
        .expect("merge");

    let services = [
        ("identity", &w.shop.identity),
        ("catalog", &w.shop.catalog),
        ("inventory", &w.shop.inventory),
        ("orders", &w.shop.orders),
        ("crm", &w.shop.crm),
        ("performance", &w.shop.performance),
    ];
    let mut dbs = Vec::new();
    for (label, service) in services {
        dbs.push((label, service.db().await.expect("db")));
    }
    let redis = Redis::new(&omni_testkit::redis_url(), "").expect("redis");
    let prefix = w.shop.orders.redis_prefix().to_owned();
    let everywhere = async |needle: &str| {
        let mut found = Vec::new();
        for (label, db) in &dbs {
            found.extend(in_tables(label, db, needle).await);
        }
        found.extend(in_redis(&redis, &prefix, needle).await);
        found
    };
    // Copies that failed to apply: both registrations, dead-lettered in every group that
    // reads identity's stream.
    let dead_lettered = dead_letter_registrations(
        &Redis::new(&omni_testkit::redis_url(), &prefix).expect("redis"),
        &[(&customer, &person), (&merged, &duplicate)],
    )
    .await;
    // The copies are really there, so the scan can see them.
    let before = everywhere(&person.phone).await;
    for copy in [
        "identity.customers",
        "orders.orders",
        "crm.customers",
        "crm.tickets",
    ]
    .into_iter()
    .chain(dead_lettered.iter().map(String::as_str))
    {
        assert!(
            before.iter().any(|f| f.starts_with(copy)),
            "{copy} holds the phone before erasure: {before:?}"
        );
    }

    identity
        .erase_customer(id::EraseCustomerRequest {
            customer_id: customer.clone(),
            reason: "the customer asked".into(),
        })
        .await
        .expect("erase");

    // Consumers apply the erasure, relays drop what every group has applied (every 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut left = Vec::new();
    loop {
        left.clear();
        for p in [&person, &duplicate] {
            for needle in p.needles() {
                for place in everywhere(needle).await {
                    left.push(format!("{needle} in {place}"));
                }
            }
        }
        if left.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        left.is_empty(),
        "personal data left after erasure: {left:#?}"
    );

    // What the business keeps stays: the order, its lines and where it went.
    let kept = w.get(&order.id).await;
    let address = kept
        .delivery
        .and_then(|d| d.address)
        .expect("the order keeps its address");
    assert_eq!(address.recipient_name, "");
    assert_eq!(address.city, "Villeurbanne");
    assert_eq!(kept.lines.len(), 1);
}
