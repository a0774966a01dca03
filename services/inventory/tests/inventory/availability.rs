//! Availability reads: Redis written through and rebuilt, nearby stores, the watch stream.

use omni_proto::common::GeoPoint;
use omni_proto::omni::inventory::v1 as pb;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::support::{self, fields, sku};

#[tokio::test]
async fn reads_follow_every_change_and_survive_a_lost_cache() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let store = inv.store("ST-1", 45.76, 4.83, true).await;
    let sku = sku();
    assert_eq!(
        inv.availability(&sku, "").await.network_available,
        0,
        "unknown SKUs have nothing"
    );
    inv.receive(&wh, &sku, 7).await;
    inv.receive(&store, &sku, 3).await;
    let a = inv.availability(&sku, "").await;
    assert_eq!(a.network_available, 10);
    assert_eq!(a.locations.len(), 2);
    inv.stock
        .set_stock_settings(pb::SetStockSettingsRequest {
            sku_id: sku.clone(),
            location_id: store.clone(),
            safety_stock: 2,
            low_stock_threshold: 1,
        })
        .await
        .expect("settings");
    assert_eq!(
        inv.availability(&sku, "").await.network_available,
        8,
        "safety stock is not promised"
    );
    inv.flush_redis().await;
    assert_eq!(
        inv.availability(&sku, "").await.network_available,
        8,
        "rebuilt from postgres"
    );
    let low: i64 = inv
        .count("SELECT count(*) FROM outbox WHERE event_type = 'inventory.stock_changed'")
        .await;
    assert!(low >= 1, "stock signals are published");
    let err = inv
        .availability
        .get_availability(pb::GetAvailabilityRequest {
            sku_ids: vec!["x".into()],
            ..Default::default()
        })
        .await
        .expect_err("bad sku");
    assert_eq!(fields(&err), ["sku_ids[0]"]);
}

#[tokio::test]
async fn nearby_stores_come_nearest_first_and_only_when_they_can_hand_over() {
    let mut inv = support::start().await;
    // Around Lyon's Place Bellecour (45.7578, 4.8320).
    let near = inv.store("ST-NEAR", 45.7600, 4.8350, true).await; // ~300 m
    let mid = inv.store("ST-MID", 45.7800, 4.8600, true).await; // ~3.2 km
    let far = inv.store("ST-FAR", 45.9000, 5.0000, true).await; // ~20 km
    let empty = inv.store("ST-EMPTY", 45.7580, 4.8325, true).await; // ~50 m, no stock
    let no_pickup = inv.store("ST-NOPICK", 45.7590, 4.8330, false).await;
    // Closes for pickups a minute after midnight: never able to hand over today.
    let closed = inv
        .location(pb::Location {
            code: "ST-CLOSED".into(),
            name: "Closed for pickups".into(),
            kind: pb::LocationKind::Store as i32,
            channel_id: uuid::Uuid::now_v7().to_string(),
            address: Some(omni_proto::common::Address {
                location: Some(GeoPoint {
                    latitude: 45.7579,
                    longitude: 4.8321,
                }),
                ..Default::default()
            }),
            pickup_enabled: true,
            time_zone: "Europe/Paris".into(),
            pickup_cutoff_minute: 1,
            ..Default::default()
        })
        .await;
    let sku = sku();
    for s in [&near, &mid, &far, &no_pickup, &closed] {
        inv.receive(s, &sku, 2).await;
    }
    inv.receive(&empty, &sku, 1).await;
    let found = inv
        .availability
        .find_nearby(pb::FindNearbyRequest {
            items: vec![pb::SkuQuantity {
                sku_id: sku.clone(),
                quantity: 2,
            }],
            point: Some(GeoPoint {
                latitude: 45.7578,
                longitude: 4.8320,
            }),
            radius_meters: 10_000.0,
            limit: 0,
            channel_id: String::new(),
        })
        .await
        .expect("nearby")
        .into_inner()
        .stores;
    let ids: Vec<_> = found
        .iter()
        .map(|s| s.location.as_ref().expect("l").id.clone())
        .collect();
    assert_eq!(
        ids,
        [near, mid],
        "nearest first; empty, non-pickup, closed and far stores excluded"
    );
    assert!(found[0].distance_meters < found[1].distance_meters);
    assert!(found[0].ready_by.is_some());
    let err = inv
        .availability
        .find_nearby(pb::FindNearbyRequest {
            items: vec![],
            point: None,
            radius_meters: 0.0,
            limit: 0,
            channel_id: String::new(),
        })
        .await
        .expect_err("bad request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["lines", "point", "radius_meters"]);
}

#[tokio::test]
async fn the_watch_stream_sends_current_figures_then_changes() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 1).await;
    let mut watch = inv
        .availability
        .watch_availability(pb::WatchAvailabilityRequest {
            sku_ids: vec![sku.clone()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("initial").expect("ok");
    assert!(first.initial);
    assert_eq!(first.availability.expect("a").network_available, 1);
    inv.receive(&wh, &sku, 4).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let update = watch.next().await.expect("update").expect("ok");
            let a = update.availability.expect("a");
            if a.network_available == 5 {
                return update.initial;
            }
        }
    })
    .await
    .expect("a change arrives");
    assert!(!next);
}

#[tokio::test]
async fn locations_are_created_updated_with_versions_and_listed() {
    let mut inv = support::start().await;
    let id = inv.store("ST-1", 45.76, 4.83, true).await;
    let got = inv
        .locations
        .get_location(pb::GetLocationRequest {
            location_id: id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .location
        .expect("l");
    let mut changed = got.clone();
    changed.name = "Lyon Bellecour".into();
    let updated = inv
        .locations
        .update_location(pb::UpdateLocationRequest {
            location: Some(changed.clone()),
        })
        .await
        .expect("update")
        .into_inner()
        .location
        .expect("l");
    assert_eq!(updated.version, got.version + 1);
    let err = inv
        .locations
        .update_location(pb::UpdateLocationRequest {
            location: Some(changed),
        })
        .await
        .expect_err("stale version");
    assert_eq!(err.code(), Code::Aborted);
    let err = inv
        .locations
        .create_location(pb::CreateLocationRequest {
            idempotency_key: support::key(),
            location: Some(pb::Location {
                code: "ST-1".into(),
                name: "dup".into(),
                kind: pb::LocationKind::Warehouse as i32,
                ..Default::default()
            }),
        })
        .await
        .expect_err("duplicate code");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fields(&err), ["code"]);
    let err = inv
        .locations
        .create_location(pb::CreateLocationRequest {
            idempotency_key: support::key(),
            location: Some(pb::Location {
                code: "ST-2".into(),
                name: "no point".into(),
                kind: pb::LocationKind::Store as i32,
                channel_id: "c".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("a store without a point");
    assert_eq!(fields(&err), ["location.address.location"]);
    let listed = inv
        .locations
        .list_locations(pb::ListLocationsRequest {
            kind: pb::LocationKind::Store as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.locations.len(), 1);
    assert_eq!(listed.locations[0].name, "Lyon Bellecour");
}

#[tokio::test]
async fn a_store_location_is_created_before_its_channel_and_linked_later() {
    let mut inv = support::start().await;
    let id = inv
        .location(pb::Location {
            code: "ST-NEW".into(),
            name: "Store to open".into(),
            kind: pb::LocationKind::Store as i32,
            address: Some(omni_proto::common::Address {
                city: "Lyon".into(),
                location: Some(omni_proto::common::GeoPoint {
                    latitude: 45.76,
                    longitude: 4.83,
                }),
                ..Default::default()
            }),
            time_zone: omni_testkit::daytime_zone(),
            ..Default::default()
        })
        .await;
    let got = inv
        .locations
        .get_location(pb::GetLocationRequest {
            location_id: id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .location
        .expect("location");
    assert_eq!(got.channel_id, "");
    // The catalog's store channel is created with this location's id, then linked here.
    let channel = uuid::Uuid::now_v7().to_string();
    let linked = inv
        .locations
        .update_location(pb::UpdateLocationRequest {
            location: Some(pb::Location {
                channel_id: channel.clone(),
                ..got
            }),
        })
        .await
        .expect("linked")
        .into_inner()
        .location
        .expect("location");
    assert_eq!(linked.channel_id, channel);
}
