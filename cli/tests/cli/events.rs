//! `omni events dead-letters/replay` against crm's real dead-letter stream.

use omni_proto::events::event::Payload;
use omni_proto::events::{CustomerRegistered, Event};
use omni_runtime::redis::Redis;
use prost::Message as _;

use crate::support::World;

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_once() {
    let w = World::start().await;
    let none = w.omni(&["events", "dead-letters", "crm"]).await;
    assert_eq!(none.code, 0, "{none:?}");
    assert!(
        none.stdout.contains("crm has no dead letters"),
        "{}",
        none.stdout
    );

    // A registration crm once refused for good sits in its dead letters.
    let customer = uuid::Uuid::now_v7().to_string();
    let event = Event {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: "identity.customer_registered".into(),
        occurred_at: Some(std::time::SystemTime::now().into()),
        aggregate_id: customer.clone(),
        source: "identity".into(),
        payload: Some(Payload::CustomerRegistered(CustomerRegistered {
            customer_id: customer.clone(),
            name: "Zoé Replay".into(),
            phone: "+33612345600".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let redis = Redis::new(&omni_testkit::redis_url(), w._shop.crm.redis_prefix()).expect("redis");
    let dead = omni_runtime::consumer::dead_letter_stream(&redis, "crm");
    let _: String = redis::cmd("XADD")
        .arg(&dead)
        .arg("*")
        .arg("stream")
        .arg(redis.event_stream("identity"))
        .arg("entry")
        .arg("1-0")
        .arg("reason")
        .arg("refused by an older crm")
        .arg("event_id")
        .arg(&event.id)
        .arg("event_type")
        .arg(&event.r#type)
        .arg("event")
        .arg(event.encode_to_vec())
        .query_async(&mut redis.conn())
        .await
        .expect("xadd");

    let listed = w.json(&["events", "dead-letters", "crm"]).await;
    let letters = listed["deadLetters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["eventId"], event.id.as_str());
    assert_eq!(letters[0]["reason"], "refused by an older crm");
    let id = letters[0]["id"].as_str().expect("id").to_owned();

    let replayed = w.omni(&["events", "replay", "crm", &id]).await;
    assert_eq!(replayed.code, 0, "{replayed:?}");
    assert!(
        replayed.stdout.contains("applied by crm"),
        "{}",
        replayed.stdout
    );
    let view = w.omni(&["crm", "view", &customer]).await;
    assert!(view.stdout.contains("Zoé Replay"), "{view:?}");

    // Gone once replayed; a malformed id is refused.
    let again = w.omni(&["events", "replay", "crm", &id]).await;
    assert_eq!(again.code, 4, "{again:?}");
    let malformed = w.omni(&["events", "replay", "crm", "yesterday"]).await;
    assert_eq!(malformed.code, 5, "{malformed:?}");
    let listed = w.json(&["events", "dead-letters", "crm"]).await;
    assert_eq!(
        listed["deadLetters"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
}
