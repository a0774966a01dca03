//! Cross-channel attribution on the crafted dataset plus pickup, ship-from-store and coupon
//! orders: acquisition matrix, associate, store and coupon credit.

use omni_proto::events::{self as ev, event::Payload};
use omni_proto::omni::orders::v1::DeliveryKind;
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::attribution_service_client::AttributionServiceClient;
use omni_runtime::auth::Role;

use crate::kpis::crafted;
use crate::support::*;

#[tokio::test]
async fn customers_associates_stores_and_coupons_are_credited_across_channels() {
    let mut p = start().await;
    crafted(&mut p).await;
    let pickup = Order {
        id: "o7",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "E",
        placed_at: at(3, 4, 10, 0),
        quantity: 1,
        net: 4500,
        unit_cost: 2000,
    };
    let mut pickup_facts = pickup.facts();
    pickup_facts.delivery_kind = DeliveryKind::Pickup as i32;
    pickup_facts.handover_store_id = "S1".into();
    pickup_facts.coupons = vec![ev::CouponUse {
        code: "WELCOME".into(),
        issuing_channel_id: "live".into(),
        discount: eur(500),
        ..Default::default()
    }];
    let shipped = Order {
        id: "o8",
        net: 2000,
        ..pickup
    };
    let mut shipped_facts = shipped.facts();
    shipped_facts.delivery_kind = DeliveryKind::Ship as i32;
    shipped_facts.fulfilments = vec![ev::FulfilmentFacts {
        location_id: "S2".into(),
        from_store: true,
        ..Default::default()
    }];
    p.publish(
        "orders",
        vec![
            (
                "orders.order_placed",
                Payload::OrderPlaced(ev::OrderPlaced {
                    order: Some(pickup_facts),
                }),
            ),
            (
                "orders.order_fulfilled",
                Payload::OrderFulfilled(ev::OrderFulfilled {
                    order: Some(shipped_facts),
                    fulfilled_at: None,
                }),
            ),
        ],
    )
    .await;
    let mut client = AttributionServiceClient::new(p.svc.as_roles(&[Role::Analyst]));
    let march = range(day(2026, 3, 1), day(2026, 3, 7));

    let cells = client
        .get_acquisition_matrix(pb::GetAcquisitionMatrixRequest { range: march })
        .await
        .expect("matrix")
        .into_inner()
        .cells;
    let cells: Vec<(&str, &str, i64, i64, Option<i64>)> = cells
        .iter()
        .map(|c| {
            (
                c.acquisition_channel_id.as_str(),
                c.purchase_channel_id.as_str(),
                c.customers,
                c.orders,
                minor(&c.net_sales),
            )
        })
        .collect();
    // A and B (acquired online) buy online, E's two orders too; B also buys in store.
    assert_eq!(
        cells,
        [
            ("eshop", "eshop", 3, 4, Some(9_000 + 6_500)),
            ("eshop", "store", 1, 1, Some(6_000)),
            ("store", "store", 1, 1, Some(3_000)),
        ]
    );

    let associates = client
        .get_associate_credit(pb::GetAssociateCreditRequest {
            range: march,
            store_ids: vec![],
        })
        .await
        .expect("associates")
        .into_inner()
        .credits;
    assert_eq!(associates.len(), 1);
    assert_eq!(associates[0].associate_id, "U1");
    assert_eq!(associates[0].orders, 2);
    assert_eq!(minor(&associates[0].net_sales), Some(9_000));

    let stores = client
        .get_store_credit(pb::GetStoreCreditRequest {
            range: march,
            store_ids: vec![],
        })
        .await
        .expect("stores")
        .into_inner()
        .credits;
    let stores: Vec<(&str, &str, i32, i64, Option<i64>)> = stores
        .iter()
        .map(|c| {
            (
                c.store_id.as_str(),
                c.channel_id.as_str(),
                c.role,
                c.orders,
                minor(&c.net_sales),
            )
        })
        .collect();
    assert_eq!(
        stores,
        [
            (
                "S1",
                "eshop",
                pb::FulfilmentRole::Pickup as i32,
                1,
                Some(4_500)
            ),
            (
                "S2",
                "eshop",
                pb::FulfilmentRole::ShipFromStore as i32,
                1,
                Some(2_000)
            ),
        ]
    );

    let coupons = client
        .get_coupon_credit(pb::GetCouponCreditRequest { range: march })
        .await
        .expect("coupons")
        .into_inner()
        .credits;
    assert_eq!(coupons.len(), 1);
    assert_eq!(coupons[0].issuing_channel_id, "live");
    assert_eq!(coupons[0].redeeming_channel_id, "eshop");
    assert_eq!(coupons[0].redemptions, 1);
    assert_eq!(minor(&coupons[0].discount), Some(500));
    assert_eq!(minor(&coupons[0].net_sales), Some(4_500));

    let reversed = client
        .get_acquisition_matrix(pb::GetAcquisitionMatrixRequest {
            range: range(day(2026, 3, 7), day(2026, 3, 1)),
        })
        .await
        .expect_err("reversed");
    assert_eq!(bad_fields(&reversed), ["range"]);
}
