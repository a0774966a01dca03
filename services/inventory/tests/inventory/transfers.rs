//! Transfers through in-transit stock, and rebalancing from sales velocity.

use omni_proto::omni::inventory::v1 as pb;
use tonic::Code;

use crate::support::{self, assert_ledger_consistent, fields, key, precondition_types, sku};

fn lines(sku: &str, quantity: i64) -> Vec<pb::SkuQuantity> {
    vec![pb::SkuQuantity {
        sku_id: sku.into(),
        quantity,
    }]
}

#[tokio::test]
async fn a_transfer_moves_stock_through_transit_with_partial_receipts() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let store = inv.store("ST-1", 45.76, 4.83, true).await;
    let sku = sku();
    inv.receive(&wh, &sku, 20).await;
    let transfer = inv
        .transfers
        .create_transfer(pb::CreateTransferRequest {
            idempotency_key: key(),
            from_location_id: wh.clone(),
            to_location_id: store.clone(),
            lines: lines(&sku, 10),
            expected_at: None,
            reason: "restock".into(),
        })
        .await
        .expect("create")
        .into_inner()
        .transfer
        .expect("t");
    assert_eq!(transfer.status, pb::TransferStatus::InTransit as i32);
    assert_eq!(inv.level(&sku, &wh).await.on_hand, 10);
    let a = inv.availability(&sku, "").await;
    assert_eq!(a.network_available, 10, "in-transit stock is not promised");
    assert_eq!(a.inbound_quantity, 10);
    let at_store = a
        .locations
        .iter()
        .find(|l| l.location_id == store)
        .map(|l| (l.available, l.inbound_quantity));
    assert_eq!(
        at_store,
        Some((0, 10)),
        "the store shows what is on its way"
    );

    let receive = |quantity: i64| pb::ReceiveTransferRequest {
        idempotency_key: key(),
        transfer_id: transfer.id.clone(),
        lines: lines(&sku, quantity),
    };
    let partial = inv
        .transfers
        .receive_transfer(receive(4))
        .await
        .expect("partial")
        .into_inner()
        .transfer
        .expect("t");
    assert_eq!(partial.status, pb::TransferStatus::PartiallyReceived as i32);
    assert_eq!(inv.level(&sku, &store).await.on_hand, 4);
    let err = inv
        .transfers
        .receive_transfer(receive(7))
        .await
        .expect_err("more than sent");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(precondition_types(&err), ["OVER_RECEIPT"]);
    let done = inv
        .transfers
        .receive_transfer(receive(6))
        .await
        .expect("rest")
        .into_inner()
        .transfer
        .expect("t");
    assert_eq!(done.status, pb::TransferStatus::Received as i32);
    assert_eq!(inv.level(&sku, &store).await.on_hand, 10);
    assert_eq!(inv.availability(&sku, "").await.network_available, 20);
    assert_ledger_consistent(&inv.db).await;
}

#[tokio::test]
async fn bad_transfers_are_refused_and_move_nothing() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let store = inv.store("ST-1", 45.76, 4.83, true).await;
    let sku = sku();
    inv.receive(&wh, &sku, 3).await;
    let request = |from: &str, to: &str, quantity: i64| pb::CreateTransferRequest {
        idempotency_key: key(),
        from_location_id: from.into(),
        to_location_id: to.into(),
        lines: lines(&sku, quantity),
        expected_at: None,
        reason: String::new(),
    };
    let err = inv
        .transfers
        .create_transfer(request(&wh, &wh, 1))
        .await
        .expect_err("to itself");
    assert_eq!(fields(&err), ["to_location_id"]);
    let err = inv
        .transfers
        .create_transfer(request(&wh, &store, 0))
        .await
        .expect_err("zero");
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let err = inv
        .transfers
        .create_transfer(request(&wh, &store, 4))
        .await
        .expect_err("more than available");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = inv
        .transfers
        .create_transfer(request(&wh, &uuid::Uuid::now_v7().to_string(), 1))
        .await
        .expect_err("unknown destination");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(inv.count("SELECT count(*) FROM transfers").await, 0);
    assert_eq!(inv.level(&sku, &wh).await.on_hand, 3);
}

#[tokio::test]
async fn rebalancing_moves_stock_toward_where_it_sells_and_flags_surges() {
    let mut inv = support::start().await;
    let wh = inv.warehouse("WH-1").await;
    let store = inv.store("ST-1", 45.76, 4.83, true).await;
    let sku = sku();
    inv.receive(&wh, &sku, 100).await;
    inv.receive(&store, &sku, 30).await;
    // The store sold 28 units this week (through real reservations) and the warehouse none.
    let sold = inv.reserve(&sku, 28, &[&store]).await.expect("reserve");
    inv.reservations
        .fulfil(pb::FulfilRequest {
            idempotency_key: key(),
            reservation_id: sold.id,
            lines: vec![],
            reference: "pos".into(),
        })
        .await
        .expect("fulfil");
    // The week before, it sold 10: history crafted straight into the ledger.
    sqlx::query(
        "INSERT INTO movements (id, sku_id, location_id, kind, quantity_delta, actor_id, occurred_at) \
         VALUES ($1, $2, $3::uuid, 'sale', -10, 'test', now() - interval '10 days')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&sku)
    .bind(&store)
    .execute(&inv.db)
    .await
    .expect("history");

    let suggestion = inv
        .transfers
        .suggest_rebalance(pb::SuggestRebalanceRequest {
            sku_ids: vec![sku.clone()],
            ..Default::default()
        })
        .await
        .expect("suggest")
        .into_inner();
    assert_eq!(suggestion.moves.len(), 1, "{suggestion:?}");
    let m = &suggestion.moves[0];
    assert_eq!(
        (m.from_location_id.as_str(), m.to_location_id.as_str()),
        (wh.as_str(), store.as_str())
    );
    assert!(
        m.quantity >= 80,
        "most of the idle warehouse stock goes where it sells: {m:?}"
    );
    assert!(m.transfer_id.is_empty());
    assert_eq!(suggestion.surging.len(), 1);
    assert_eq!(suggestion.surging[0].growth_bps, 18_000);
    assert_eq!(
        inv.count("SELECT count(*) FROM transfers").await,
        0,
        "suggesting moves nothing"
    );

    let auto = inv
        .transfers
        .suggest_rebalance(pb::SuggestRebalanceRequest {
            idempotency_key: key(),
            sku_ids: vec![sku.clone()],
            auto_create: true,
            ..Default::default()
        })
        .await
        .expect("auto")
        .into_inner();
    assert!(!auto.moves[0].transfer_id.is_empty());
    let transfer = inv
        .transfers
        .get_transfer(pb::GetTransferRequest {
            transfer_id: auto.moves[0].transfer_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .transfer
        .expect("t");
    assert!(transfer.automatic);
    assert_eq!(transfer.to_location_id, store);
}
