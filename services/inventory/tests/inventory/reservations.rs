//! Reservations: never an oversell, with and without the hot gate, with Redis lost mid-sale;
//! expiry, quotas, all-or-nothing lines, idempotency, release and fulfilment.

use std::time::Duration;

use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::auth::{Role, Scope};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::support::{
    self, assert_ledger_consistent, fields, key, precondition_types, reserve_request, sku,
};

/// Fires `buyers` concurrent one-unit reservations; returns (accepted, refused).
async fn flood(inv: &support::Inventory, sku: &str, buyers: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for _ in 0..buyers {
        let mut client = inv.reservations.clone();
        let request = reserve_request(sku, 1, &[], "web");
        tasks.push(tokio::spawn(async move { client.reserve(request).await }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(precondition_types(&status), ["STOCK_SHORTAGE"]);
                refused += 1;
            }
        }
    }
    (accepted, refused)
}

#[tokio::test]
async fn two_hundred_buyers_for_the_last_fifty_units_get_exactly_fifty() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 50).await;
    let (accepted, refused) = flood(&inv, &sku, 200).await;
    assert_eq!((accepted, refused), (50, 150));
    let level = inv.level(&sku, &wh).await;
    assert_eq!(
        (level.on_hand, level.reserved, level.available),
        (50, 50, 0)
    );
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn the_hot_gate_refuses_the_flood_and_still_sells_exactly_the_stock() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 50).await;
    inv.stock
        .set_hot_sku(pb::SetHotSkuRequest {
            sku_id: sku.clone(),
            hot: true,
            reason: "livestream".into(),
            until: None,
        })
        .await
        .expect("hot");
    assert!(inv.availability(&sku, "").await.hot);
    let (accepted, refused) = flood(&inv, &sku, 200).await;
    assert_eq!((accepted, refused), (50, 150));
    // Sold out: the gate answers alone, Postgres sees no new idempotency key.
    let keys_before = inv.count("SELECT count(*) FROM idempotency_keys").await;
    let (accepted, _) = flood(&inv, &sku, 20).await;
    assert_eq!(accepted, 0);
    assert_eq!(
        inv.count("SELECT count(*) FROM idempotency_keys").await,
        keys_before
    );
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn redis_lost_in_the_middle_of_a_hot_sale_never_oversells() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let store = inv.store("ST-1", 45.76, 4.83, true).await;
    let sku = sku();
    inv.receive(&wh, &sku, 60).await;
    inv.receive(&store, &sku, 40).await;
    inv.stock
        .set_hot_sku(pb::SetHotSkuRequest {
            sku_id: sku.clone(),
            hot: true,
            reason: "flash sale".into(),
            until: None,
        })
        .await
        .expect("hot");
    let first = tokio::spawn({
        let inv_clients = inv.reservations.clone();
        let sku = sku.clone();
        async move {
            let mut ok = 0;
            for _ in 0..70 {
                let mut c = inv_clients.clone();
                if c.reserve(reserve_request(&sku, 1, &[], "web"))
                    .await
                    .is_ok()
                {
                    ok += 1;
                }
            }
            ok
        }
    });
    let (concurrent, _) = flood(&inv, &sku, 60).await;
    inv.flush_redis().await;
    let (after_flush, _) = flood(&inv, &sku, 120).await;
    let sequential = first.await.expect("join");
    assert_eq!(
        concurrent + after_flush + sequential,
        100,
        "exactly the stock is sold"
    );
    let a = inv.availability(&sku, "").await;
    assert_eq!(a.network_available, 0);
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn holds_expire_and_release_their_stock() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 5).await;
    let mut watch = inv
        .availability
        .watch_availability(pb::WatchAvailabilityRequest {
            sku_ids: vec![sku.clone()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let initial = watch.next().await.expect("initial").expect("ok");
    assert!(initial.initial);
    let mut request = reserve_request(&sku, 3, &[], "web");
    request.ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let reservation = inv
        .reservations
        .reserve(request)
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("r");
    // The stream shows the hold, then the release when the hold expires.
    let mut seen = Vec::new();
    let wait = async {
        while let Some(update) = watch.next().await {
            let a = update.expect("ok").availability.expect("a");
            seen.push(a.network_available);
            if seen.contains(&2) && a.network_available == 5 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("released within the time limit");
    let got = inv
        .reservations
        .get_reservation(pb::GetReservationRequest {
            reservation_id: reservation.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(got.status, pb::ReservationStatus::Expired as i32);
    assert_eq!(got.lines[0].released_quantity, 3);
    let expired: i64 = inv
        .count("SELECT count(*) FROM outbox WHERE event_type = 'inventory.reservation_expired'")
        .await;
    assert_eq!(expired, 1);
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn a_channel_quota_caps_what_one_channel_can_take() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 100).await;
    inv.stock
        .set_channel_quota(pb::SetChannelQuotaRequest {
            sku_id: sku.clone(),
            channel_id: "livestream".into(),
            limit: Some(5),
            reset_used: false,
        })
        .await
        .expect("quota");
    let a = inv.availability(&sku, "livestream").await;
    assert_eq!((a.network_available, a.channel_available), (100, 5));
    inv.reservations
        .reserve(reserve_request(&sku, 4, &[], "livestream"))
        .await
        .expect("within quota");
    let err = inv
        .reservations
        .reserve(reserve_request(&sku, 2, &[], "livestream"))
        .await
        .expect_err("beyond quota");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(precondition_types(&err), ["CHANNEL_QUOTA"]);
    inv.reservations
        .reserve(reserve_request(&sku, 10, &[], "e-shop"))
        .await
        .expect("other channels are free");
    let a = inv.availability(&sku, "livestream").await;
    assert_eq!((a.network_available, a.channel_available), (86, 1));
    assert_eq!(a.quota.expect("quota").used, 4);
}

#[tokio::test]
async fn lines_are_reserved_all_or_nothing() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let (a, b) = (sku(), sku());
    inv.receive(&wh, &a, 10).await;
    inv.receive(&wh, &b, 1).await;
    let mut request = reserve_request(&a, 3, &[], "web");
    request.lines.push(pb::ReserveLine {
        sku_id: b.clone(),
        quantity: 2,
        location_ids: vec![],
    });
    let err = inv
        .reservations
        .reserve(request)
        .await
        .expect_err("b is short");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let details = tonic_types::StatusExt::get_error_details(&err);
    let violations = &details.precondition_failure().expect("details").violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, "lines[1]");
    assert!(
        violations[0]
            .description
            .contains("requested 2, available 1")
    );
    assert_eq!(
        inv.level(&a, &wh).await.reserved,
        0,
        "line a was not held either"
    );
    assert_eq!(inv.count("SELECT count(*) FROM reservations").await, 0);
}

#[tokio::test]
async fn a_retry_returns_the_first_reservation_and_a_reused_key_is_refused() {
    retries_return_the_first_reservation(false).await;
}

#[tokio::test]
async fn a_retry_of_a_hot_sku_returns_the_first_reservation_too() {
    retries_return_the_first_reservation(true).await;
}

async fn retries_return_the_first_reservation(hot: bool) {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 10).await;
    if hot {
        inv.stock
            .set_hot_sku(pb::SetHotSkuRequest {
                sku_id: sku.clone(),
                hot: true,
                reason: String::new(),
                until: None,
            })
            .await
            .expect("hot");
    }
    let request = reserve_request(&sku, 2, &[], "web");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = inv.reservations.clone();
        let r = request.clone();
        tasks.push(tokio::spawn(async move {
            c.reserve(r)
                .await
                .map(|r| r.into_inner().reservation.expect("r").id)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("join").expect("reserve"));
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(inv.level(&sku, &wh).await.reserved, 2);

    let mut other = request.clone();
    other.lines[0].quantity = 3;
    let err = inv
        .reservations
        .reserve(other)
        .await
        .expect_err("different payload");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["idempotency_key"]);
}

#[tokio::test]
async fn release_and_fulfil_settle_a_reservation() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 10).await;
    let r = inv.reserve(&sku, 6, &[&wh]).await.expect("reserve");
    inv.reservations
        .release(pb::ReleaseRequest {
            idempotency_key: key(),
            reservation_id: r.id.clone(),
            lines: vec![pb::ReservationLinePart {
                sku_id: sku.clone(),
                location_id: wh.clone(),
                quantity: 2,
            }],
            reason: "customer removed two".into(),
        })
        .await
        .expect("partial release");
    let fulfilled = inv
        .reservations
        .fulfil(pb::FulfilRequest {
            idempotency_key: key(),
            reservation_id: r.id.clone(),
            lines: vec![],
            reference: "shipment-1".into(),
        })
        .await
        .expect("fulfil")
        .into_inner();
    let reservation = fulfilled.reservation.expect("r");
    assert_eq!(reservation.status, pb::ReservationStatus::Fulfilled as i32);
    assert_eq!(fulfilled.movements.len(), 1);
    assert_eq!(fulfilled.movements[0].quantity_delta, -4);
    let level = inv.level(&sku, &wh).await;
    assert_eq!((level.on_hand, level.reserved, level.available), (6, 0, 6));
    let err = inv
        .reservations
        .release(pb::ReleaseRequest {
            idempotency_key: key(),
            reservation_id: r.id.clone(),
            lines: vec![],
            reason: String::new(),
        })
        .await
        .expect_err("already fulfilled");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn bad_reservations_are_refused_and_write_nothing() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 3).await;
    let reservations_before = inv.count("SELECT count(*) FROM reservations").await;

    let err = inv
        .reservations
        .reserve(reserve_request(&sku, 0, &[], "web"))
        .await
        .expect_err("zero");
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let err = inv
        .reservations
        .reserve(reserve_request("nope", 1, &[], "web"))
        .await
        .expect_err("bad sku");
    assert_eq!(fields(&err), ["lines[0].sku_id"]);
    let err = inv
        .reservations
        .reserve(reserve_request(&support::sku(), 1, &[], "web"))
        .await
        .expect_err("unknown sku");
    assert_eq!(err.code(), Code::NotFound);
    let unknown_location = uuid::Uuid::now_v7().to_string();
    let err = inv
        .reservations
        .reserve(reserve_request(&sku, 1, &[&unknown_location], "web"))
        .await
        .expect_err("unknown location");
    assert_eq!(err.code(), Code::NotFound);
    let err = inv
        .reservations
        .reserve(reserve_request(&sku, 4, &[], "web"))
        .await
        .expect_err("more than exists");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut no_key = reserve_request(&sku, 1, &[], "web");
    no_key.idempotency_key.clear();
    let err = inv.reservations.reserve(no_key).await.expect_err("no key");
    assert_eq!(fields(&err), ["idempotency_key"]);

    let analyst =
        omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient::new(
            inv.svc.as_roles(&[Role::Analyst]),
        );
    let err = analyst
        .clone()
        .reserve(reserve_request(&sku, 1, &[], "web"))
        .await
        .expect_err("analysts read only");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        inv.count("SELECT count(*) FROM reservations").await,
        reservations_before
    );
    assert_eq!(inv.level(&sku, &wh).await.reserved, 0);

    // A store associate records movements at its own store only.
    let store_a = inv.store("ST-A", 45.0, 4.0, true).await;
    let store_b = inv.store("ST-B", 45.1, 4.1, true).await;
    let associate = inv.svc.with_token(&omni_testkit::token(
        &[Role::StoreAssociate],
        Scope {
            channels: vec![],
            stores: vec![store_a.clone()],
        },
    ));
    let mut stock =
        omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient::new(associate);
    let receipt = |location: &str| pb::RecordMovementRequest {
        idempotency_key: key(),
        location_id: location.into(),
        kind: pb::MovementKind::Receipt as i32,
        lines: vec![pb::MovementLine {
            sku_id: sku.clone(),
            quantity: 1,
        }],
        reason: String::new(),
        reference: String::new(),
    };
    stock
        .record_movement(receipt(&store_a))
        .await
        .expect("own store");
    let err = stock
        .record_movement(receipt(&store_b))
        .await
        .expect_err("another store");
    assert_eq!(err.code(), Code::PermissionDenied);
    // ... and lists its own store's stock only.
    let list = |location: &str| pb::ListStockLevelsRequest {
        sku_ids: vec![sku.clone()],
        location_id: location.into(),
        ..Default::default()
    };
    let own = stock
        .list_stock_levels(list(&store_a))
        .await
        .expect("own store")
        .into_inner();
    assert_eq!(own.levels.len(), 1);
    let err = stock
        .list_stock_levels(list(&store_b))
        .await
        .expect_err("another store");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = stock
        .list_stock_levels(list(""))
        .await
        .expect_err("every store");
    assert_eq!(fields(&err), ["location_id"]);
    // The scope limits whatever the role: an analyst limited to store A reads A only.
    let mut store_analyst =
        omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient::new(
            inv.svc.with_token(&omni_testkit::token(
                &[Role::Analyst],
                Scope {
                    channels: vec![],
                    stores: vec![store_a.clone()],
                },
            )),
        );
    store_analyst
        .list_stock_levels(list(&store_a))
        .await
        .expect("own store");
    let err = store_analyst
        .list_stock_levels(list(&store_b))
        .await
        .expect_err("another store");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn contention_marks_a_sku_hot_by_itself() {
    let mut inv = support::start_with(4).await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 30).await;
    let (accepted, refused) = flood(&inv, &sku, 60).await;
    assert_eq!(
        (accepted, refused),
        (30, 30),
        "detection changes the path, never the outcome"
    );
    let hot = inv
        .stock
        .list_hot_skus(pb::ListHotSkusRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .hot_skus;
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0].sku_id, sku);
    assert_eq!(hot[0].source, pb::HotSource::Detected as i32);
    assert!(hot[0].until.is_some(), "a detected mark ends by itself");
    assert_ledger_consistent(&inv.db).await;
}

/// A channel app holds stock for the channels in its scope, every hold names its channel (so
/// the channel's quota applies), and only the app that placed a hold (or an admin or service)
/// can read, release, fulfil or extend it.
#[tokio::test]
async fn channel_apps_hold_for_their_channels_and_settle_only_their_own_holds() {
    use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 5).await;
    let app = |channel: &str| {
        ReservationServiceClient::new(inv.svc.with_token(&omni_testkit::token(
            &[Role::ChannelApp],
            Scope {
                channels: vec![channel.into()],
                stores: vec![],
            },
        )))
    };
    let mut web = app("web");
    let mut other_web = app("web");
    let before = inv.count("SELECT count(*) FROM reservations").await;

    let err = web
        .reserve(reserve_request(&sku, 1, &[], "livestream"))
        .await
        .expect_err("another channel");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = web
        .reserve(reserve_request(&sku, 1, &[], ""))
        .await
        .expect_err("no channel");
    assert_eq!(fields(&err), ["channel_id"]);
    assert_eq!(inv.count("SELECT count(*) FROM reservations").await, before);

    let held = web
        .reserve(reserve_request(&sku, 2, &[], "web"))
        .await
        .expect("own channel")
        .into_inner()
        .reservation
        .expect("reservation");
    let id = held.id.clone();
    let denied = [
        other_web
            .get_reservation(pb::GetReservationRequest {
                reservation_id: id.clone(),
            })
            .await
            .map(|_| ()),
        other_web
            .release(pb::ReleaseRequest {
                idempotency_key: key(),
                reservation_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other_web
            .fulfil(pb::FulfilRequest {
                idempotency_key: key(),
                reservation_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other_web
            .extend_reservation(pb::ExtendReservationRequest {
                reservation_id: id.clone(),
                expiry: Some(pb::extend_reservation_request::Expiry::NoExpiry(true)),
            })
            .await
            .map(|_| ()),
    ];
    for (i, outcome) in denied.into_iter().enumerate() {
        let err = outcome.expect_err("not the owner");
        assert_eq!(err.code(), Code::PermissionDenied, "call {i}: {err:?}");
    }
    assert_eq!(inv.level(&sku, &wh).await.reserved, 2);

    web.get_reservation(pb::GetReservationRequest {
        reservation_id: id.clone(),
    })
    .await
    .expect("the owner reads its hold");
    web.release(pb::ReleaseRequest {
        idempotency_key: key(),
        reservation_id: id,
        ..Default::default()
    })
    .await
    .expect("the owner releases its hold");
    assert_eq!(inv.level(&sku, &wh).await.reserved, 0);
}

/// A channel manager sets quotas on its own channels only.
#[tokio::test]
async fn channel_managers_set_quotas_of_their_own_channels() {
    use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
    let inv = support::start().await;
    let manager = inv.svc.with_token(&omni_testkit::token(
        &[Role::ChannelManager],
        Scope {
            channels: vec!["web".into()],
            stores: vec![],
        },
    ));
    let mut quotas = StockServiceClient::new(manager);
    let sku = sku();
    let err = quotas
        .set_channel_quota(pb::SetChannelQuotaRequest {
            sku_id: sku.clone(),
            channel_id: "livestream".into(),
            limit: Some(5),
            ..Default::default()
        })
        .await
        .expect_err("another channel");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(inv.count("SELECT count(*) FROM channel_quotas").await, 0);
    quotas
        .set_channel_quota(pb::SetChannelQuotaRequest {
            sku_id: sku,
            channel_id: "web".into(),
            limit: Some(5),
            ..Default::default()
        })
        .await
        .expect("its own channel");
}
