//! Stock levels and the ledger: every sequence of operations keeps levels equal to the ledger.

use omni_proto::omni::inventory::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;

use crate::support::{self, assert_ledger_consistent, fields, key, precondition_types, sku};

#[derive(Debug, Clone)]
enum Op {
    Receive(usize, i64),
    Adjust(usize, i64),
    Count(usize, i64),
    WriteOff(usize, i64),
    Reserve(usize, i64),
    Release(usize),
    Fulfil(usize),
    Transfer(usize, usize, i64),
    ReceiveTransfer(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 1..20i64).prop_map(|(l, q)| Op::Receive(l, q)),
        (0..2usize, -5..5i64)
            .prop_filter("non-zero", |(_, q)| *q != 0)
            .prop_map(|(l, q)| Op::Adjust(l, q)),
        (0..2usize, 0..15i64).prop_map(|(l, q)| Op::Count(l, q)),
        (0..2usize, 1..5i64).prop_map(|(l, q)| Op::WriteOff(l, q)),
        (0..2usize, 1..6i64).prop_map(|(l, q)| Op::Reserve(l, q)),
        (0..4usize).prop_map(Op::Release),
        (0..4usize).prop_map(Op::Fulfil),
        (0..2usize, 0..2usize, 1..6i64).prop_map(|(a, b, q)| Op::Transfer(a, b, q)),
        (0..4usize).prop_map(Op::ReceiveTransfer),
    ]
}

/// Whatever happens, on hand equals the ledger and reserved equals what reservations hold;
/// refused operations change nothing.
#[test]
fn levels_equal_the_ledger_after_any_sequence_of_operations() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut started = runtime.block_on(support::start());
    let wh = runtime.block_on(started.warehouse("WH-P"));
    let store = runtime.block_on(started.store("ST-P", 45.7, 4.8, true));
    let locations = [wh, store];
    // The property closure is `Fn`: the service handle is shared through a lock.
    let inv = tokio::sync::Mutex::new(started);
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..25), |ops| {
            runtime.block_on(async {
                let mut inv = inv.lock().await;
                let sku = sku();
                let mut reservations: Vec<String> = Vec::new();
                let mut transfers: Vec<(String, i64)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Receive(l, q) => {
                            inv.movement(&locations[l], pb::MovementKind::Receipt, &sku, q).await;
                        }
                        Op::Adjust(l, q) | Op::Count(l, q) | Op::WriteOff(l, q) => {
                            let kind = match op_kind(&op) {
                                Some(k) => k,
                                None => continue,
                            };
                            let _ = inv
                                .stock
                                .record_movement(pb::RecordMovementRequest {
                                    idempotency_key: key(),
                                    location_id: locations[l].clone(),
                                    kind: kind as i32,
                                    lines: vec![pb::MovementLine { sku_id: sku.clone(), quantity: q }],
                                    reason: String::new(),
                                    reference: String::new(),
                                })
                                .await;
                        }
                        Op::Reserve(l, q) => {
                            if let Ok(r) = inv.reserve(&sku, q, &[&locations[l]]).await {
                                reservations.push(r.id);
                            }
                        }
                        Op::Release(i) | Op::Fulfil(i) => {
                            let Some(id) = reservations.get(i).cloned() else { continue };
                            if matches!(op, Op::Release(_)) {
                                let _ = inv
                                    .reservations
                                    .release(pb::ReleaseRequest { idempotency_key: key(), reservation_id: id, lines: vec![], reason: String::new() })
                                    .await;
                            } else {
                                let _ = inv
                                    .reservations
                                    .fulfil(pb::FulfilRequest { idempotency_key: key(), reservation_id: id, lines: vec![], reference: String::new() })
                                    .await;
                            }
                        }
                        Op::Transfer(a, b, q) => {
                            if a == b {
                                continue;
                            }
                            if let Ok(t) = inv
                                .transfers
                                .create_transfer(pb::CreateTransferRequest {
                                    idempotency_key: key(),
                                    from_location_id: locations[a].clone(),
                                    to_location_id: locations[b].clone(),
                                    lines: vec![pb::SkuQuantity { sku_id: sku.clone(), quantity: q }],
                                    expected_at: None,
                                    reason: String::new(),
                                })
                                .await
                            {
                                transfers.push((t.into_inner().transfer.expect("t").id, q));
                            }
                        }
                        Op::ReceiveTransfer(i) => {
                            let Some((id, q)) = transfers.get(i).cloned() else { continue };
                            let _ = inv
                                .transfers
                                .receive_transfer(pb::ReceiveTransferRequest {
                                    idempotency_key: key(),
                                    transfer_id: id,
                                    lines: vec![pb::SkuQuantity { sku_id: sku.clone(), quantity: q }],
                                })
                                .await;
                        }
                    }
                }
                assert_ledger_consistent(&inv.db).await;
                // Redis agrees with Postgres once the writes went through.
                let a = inv.availability(&sku, "").await;
                let expected: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(greatest(on_hand - reserved - safety_stock, 0)), 0)::bigint FROM stock_levels \
                     WHERE sku_id = $1 AND location_id <> '00000000-0000-7000-8000-000000000001'",
                )
                .bind(&sku)
                .fetch_one(&inv.db)
                .await
                .expect("sum");
                assert_eq!(a.network_available, expected);
            });
            Ok(())
        })
        .expect("property holds");
}

fn op_kind(op: &Op) -> Option<pb::MovementKind> {
    match op {
        Op::Adjust(..) => Some(pb::MovementKind::Adjustment),
        Op::Count(..) => Some(pb::MovementKind::Count),
        Op::WriteOff(..) => Some(pb::MovementKind::WriteOff),
        _ => None,
    }
}

#[tokio::test]
async fn movements_record_the_ledger_and_refuse_taking_reserved_stock() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 10).await;
    let counted = inv.movement(&wh, pb::MovementKind::Count, &sku, 8).await;
    assert_eq!(counted.movements[0].quantity_delta, -2);
    assert_eq!(counted.levels[0].on_hand, 8);
    inv.reserve(&sku, 6, &[&wh]).await.expect("reserve");
    let before = inv.count("SELECT count(*) FROM movements").await;
    let err = inv
        .stock
        .record_movement(pb::RecordMovementRequest {
            idempotency_key: key(),
            location_id: wh.clone(),
            kind: pb::MovementKind::WriteOff as i32,
            lines: vec![pb::MovementLine {
                sku_id: sku.clone(),
                quantity: 3,
            }],
            reason: "damaged".into(),
            reference: String::new(),
        })
        .await
        .expect_err("would take reserved stock");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(precondition_types(&err), ["RESERVED_STOCK"]);
    assert_eq!(inv.count("SELECT count(*) FROM movements").await, before);

    let listed = inv
        .stock
        .list_movements(pb::ListMovementsRequest {
            sku_id: sku.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.movements.len(), 1);
    assert_eq!(
        listed.movements[0].kind,
        pb::MovementKind::Count as i32,
        "newest first"
    );
    let next = inv
        .stock
        .list_movements(pb::ListMovementsRequest {
            sku_id: sku.clone(),
            page_size: 1,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(next.movements[0].kind, pb::MovementKind::Receipt as i32);
}

#[tokio::test]
async fn bad_movements_get_field_details_and_write_nothing() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    let request =
        |location: &str, kind: pb::MovementKind, quantity: i64| pb::RecordMovementRequest {
            idempotency_key: key(),
            location_id: location.into(),
            kind: kind as i32,
            lines: vec![pb::MovementLine {
                sku_id: sku.clone(),
                quantity,
            }],
            reason: String::new(),
            reference: String::new(),
        };
    let err = inv
        .stock
        .record_movement(request(&wh, pb::MovementKind::Receipt, 0))
        .await
        .expect_err("zero");
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let err = inv
        .stock
        .record_movement(request(&wh, pb::MovementKind::Receipt, -3))
        .await
        .expect_err("negative");
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let err = inv
        .stock
        .record_movement(request(&wh, pb::MovementKind::Sale, 1))
        .await
        .expect_err("sale");
    assert_eq!(fields(&err), ["kind"]);
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = inv
        .stock
        .record_movement(request(&unknown, pb::MovementKind::Receipt, 1))
        .await
        .expect_err("unknown location");
    assert_eq!(err.code(), Code::NotFound);
    let err = inv
        .stock
        .record_movement(request(&wh, pb::MovementKind::WriteOff, 1))
        .await
        .expect_err("unknown sku");
    assert_eq!(err.code(), Code::NotFound);
    let mut replay = request(&wh, pb::MovementKind::Receipt, 5);
    inv.stock
        .record_movement(replay.clone())
        .await
        .expect("first");
    let again = inv
        .stock
        .record_movement(replay.clone())
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(
        again.levels[0].on_hand, 5,
        "the replay returns the first result"
    );
    replay.lines[0].quantity = 6;
    let err = inv
        .stock
        .record_movement(replay)
        .await
        .expect_err("reused key");
    assert_eq!(fields(&err), ["idempotency_key"]);
    assert_eq!(inv.count("SELECT count(*) FROM movements").await, 1);
    assert_eq!(inv.level(&sku, &wh).await.on_hand, 5);
}

/// A movement carries at most 100 lines and a billion units a line, and never takes on hand
/// past its ceiling: each is refused with a clear error and changes nothing.
#[tokio::test]
async fn movements_are_bounded_and_on_hand_cannot_overflow() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let sku = sku();
    inv.receive(&wh, &sku, 5).await;
    let movement = |lines: Vec<pb::MovementLine>| pb::RecordMovementRequest {
        idempotency_key: key(),
        location_id: wh.clone(),
        kind: pb::MovementKind::Receipt as i32,
        lines,
        reason: "delivery".into(),
        reference: String::new(),
    };
    let line = |sku: &str, quantity: i64| pb::MovementLine {
        sku_id: sku.into(),
        quantity,
    };
    let ledger = inv.count("SELECT count(*) FROM movements").await;

    let err = inv
        .stock
        .record_movement(movement(vec![line(&sku, i64::MAX)]))
        .await
        .expect_err("huge quantity");
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let err = inv
        .stock
        .record_movement(movement((0..101).map(|_| line(&sku, 1)).collect()))
        .await
        .expect_err("too many lines");
    assert!(fields(&err).contains(&"lines".to_owned()), "{err:?}");
    // A thousand lines (within the request limits) are refused at once, not compared pairwise.
    let many: Vec<_> = (0..1000).map(|_| line(&support::sku(), 1)).collect();
    let err = inv
        .stock
        .record_movement(movement(many))
        .await
        .expect_err("too many lines");
    assert_eq!(err.code(), Code::InvalidArgument);

    let db = inv.svc.db().await.expect("db");
    sqlx::query("UPDATE stock_levels SET on_hand = 1000000000000 - 3 WHERE sku_id = $1")
        .bind(&sku)
        .execute(&db)
        .await
        .expect("near the ceiling");
    let err = inv
        .stock
        .record_movement(movement(vec![line(&sku, 10)]))
        .await
        .expect_err("past the ceiling");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(precondition_types(&err), ["ON_HAND_LIMIT"]);
    assert_eq!(inv.count("SELECT count(*) FROM movements").await, ledger);
    assert_eq!(inv.level(&sku, &wh).await.on_hand, 1_000_000_000_000 - 3);
}
