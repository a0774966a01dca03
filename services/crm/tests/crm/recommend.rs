//! Next-best products from co-purchase and repurchase reminders, on crafted histories; and
//! associates whose customer lists are scoped to them.

use omni_proto::common::ChannelKind;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::crm::v1::recommendation_service_client::RecommendationServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use tonic::Code;

use crate::support::{World, order_at};

fn recommendations(w: &World) -> RecommendationServiceClient<AuthChannel> {
    RecommendationServiceClient::new(w.crm.admin())
}

#[tokio::test]
async fn next_best_products_come_from_what_buyers_of_the_same_product_bought_within_30_days() {
    let w = World::start().await;
    // Four buyers of the tent: three bought a stove within 30 days, one only 60 days later;
    // two bought a lamp within 30 days. Eve bought only the tent.
    let mut buyers = Vec::new();
    for (i, (stove_after, lamp)) in [
        (Some(5), true),
        (Some(20), true),
        (Some(0), false),
        (None, false),
    ]
    .into_iter()
    .enumerate()
    {
        let id = w
            .register(&format!("+44770090050{i}"), &format!("Camper {i}"))
            .await;
        let mut orders = vec![order_at(
            &id,
            "web",
            ChannelKind::EShop,
            20_000,
            90,
            &[("tent", "camping")],
        )];
        if let Some(after) = stove_after {
            orders.push(order_at(
                &id,
                "store-1",
                ChannelKind::Store,
                5_000,
                90 - after,
                &[("stove", "cooking")],
            ));
        } else {
            orders.push(order_at(
                &id,
                "web",
                ChannelKind::EShop,
                5_000,
                30,
                &[("stove", "cooking")],
            ));
        }
        if lamp {
            orders.push(order_at(
                &id,
                "web",
                ChannelKind::EShop,
                2_000,
                80,
                &[("lamp", "camping")],
            ));
        }
        for o in &orders {
            w.orders.complete(o).await;
        }
        buyers.push((id, orders.len() as i64));
    }
    let eve = w.register("+447700900599", "Eve").await;
    w.orders
        .complete(&order_at(
            &eve,
            "web",
            ChannelKind::EShop,
            20_000,
            3,
            &[("tent", "camping")],
        ))
        .await;
    for (id, n) in &buyers {
        w.view_when(id, |v| v.order_count == *n).await;
    }
    w.view_when(&eve, |v| v.order_count == 1).await;

    let suggestions = recommendations(&w)
        .get_next_best_products(pb::GetNextBestProductsRequest {
            customer_id: eve.clone(),
            limit: 0,
        })
        .await
        .expect("suggestions")
        .into_inner()
        .suggestions;
    let got: Vec<(&str, &str, f64, i64)> = suggestions
        .iter()
        .map(|s| {
            (
                s.product_id.as_str(),
                s.because_of_product_id.as_str(),
                s.confidence,
                s.support,
            )
        })
        .collect();
    // 5 tent buyers (Eve included): 3 stoves and 2 lamps within 30 days.
    assert_eq!(
        got,
        vec![("stove", "tent", 0.6, 3), ("lamp", "tent", 0.4, 2)]
    );
    assert_eq!(suggestions[0].category_id, "cooking");

    // What a customer already bought is left out.
    let first = &buyers[0].0;
    let suggestions = recommendations(&w)
        .get_next_best_products(pb::GetNextBestProductsRequest {
            customer_id: first.clone(),
            limit: 0,
        })
        .await
        .expect("suggestions")
        .into_inner()
        .suggestions;
    assert!(suggestions.is_empty(), "{suggestions:#?}");

    let unknown = recommendations(&w)
        .get_next_best_products(pb::GetNextBestProductsRequest {
            customer_id: "nobody".into(),
            limit: 0,
        })
        .await
        .expect_err("unknown customer");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn customers_are_due_to_repurchase_after_their_own_typical_interval() {
    let w = World::start().await;
    // Ada buys coffee every 30 days, last 35 days ago: due. Bob every 60 days, last 35 days
    // ago: not yet (due in 25 days). Cy bought coffee once: no interval.
    let ada = w.register("+447700900511", "Ada").await;
    let bob = w.register("+447700900512", "Bob").await;
    let cy = w.register("+447700900513", "Cy").await;
    let history = [
        (&ada, vec![95, 65, 35]),
        (&bob, vec![155, 95, 35]),
        (&cy, vec![35]),
    ];
    for (id, days) in &history {
        for d in days {
            w.orders
                .complete(&order_at(
                    id,
                    "store-1",
                    ChannelKind::Store,
                    1_500,
                    *d,
                    &[("beans", "coffee")],
                ))
                .await;
        }
    }
    for (id, days) in &history {
        w.view_when(id, |v| v.order_count == days.len() as i64)
            .await;
    }
    let due = recommendations(&w)
        .list_repurchase_due(pb::ListRepurchaseDueRequest::default())
        .await
        .expect("due")
        .into_inner()
        .reminders;
    assert_eq!(due.len(), 1, "{due:#?}");
    assert_eq!(due[0].customer_id, ada);
    assert_eq!(due[0].category_id, "coffee");
    assert_eq!(due[0].typical_interval_days, 30);
    assert_eq!(due[0].customer_name, "Ada");

    // Looking 30 days ahead, Bob is due too.
    let ahead = chrono::Utc::now().date_naive() + chrono::Duration::days(30);
    use chrono::Datelike;
    let due = recommendations(&w)
        .list_repurchase_due(pb::ListRepurchaseDueRequest {
            due_by: Some(omni_proto::common::Date {
                year: ahead.year(),
                month: ahead.month() as i32,
                day: ahead.day() as i32,
            }),
            ..Default::default()
        })
        .await
        .expect("due")
        .into_inner()
        .reminders;
    let mut who: Vec<&str> = due.iter().map(|r| r.customer_id.as_str()).collect();
    who.sort();
    let mut want = vec![ada.as_str(), bob.as_str()];
    want.sort();
    assert_eq!(who, want);
}

#[tokio::test]
async fn an_associate_sees_only_its_own_customers() {
    let w = World::start().await;
    let ada = w.register("+447700900521", "Ada").await;
    let bob = w.register("+447700900522", "Bob").await;
    w.view_when(&ada, |_| true).await;
    w.view_when(&bob, |_| true).await;
    let views = CustomerViewServiceClient::new(w.crm.admin());
    for (customer, associate) in [(&ada, "assoc-1"), (&bob, "assoc-2")] {
        views
            .clone()
            .assign_associate(pb::AssignAssociateRequest {
                customer_id: customer.clone(),
                associate_id: associate.into(),
                store_id: "store-1".into(),
            })
            .await
            .expect("assign");
    }
    let view = w.view_when(&ada, |v| v.associate.is_some()).await;
    assert_eq!(view.associate.expect("associate").associate_id, "assoc-1");

    let listed = views
        .clone()
        .list_associate_customers(pb::ListAssociateCustomersRequest {
            associate_id: "assoc-1".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .customers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].customer_id, ada);
    assert_eq!(listed[0].name, "Ada");

    // A store associate may not list someone else's customers, nor assign in another store.
    let associate = CustomerViewServiceClient::new(w.crm.with_token(&omni_testkit::token(
        &[Role::StoreAssociate],
        Scope {
            channels: Vec::new(),
            stores: vec!["store-1".into()],
        },
    )));
    let denied = associate
        .clone()
        .list_associate_customers(pb::ListAssociateCustomersRequest {
            associate_id: "assoc-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("someone else's list");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let own = associate
        .clone()
        .list_associate_customers(pb::ListAssociateCustomersRequest::default())
        .await
        .expect("own list")
        .into_inner()
        .customers;
    assert!(own.is_empty());
    let elsewhere = associate
        .clone()
        .assign_associate(pb::AssignAssociateRequest {
            customer_id: bob.clone(),
            associate_id: "assoc-9".into(),
            store_id: "store-2".into(),
        })
        .await
        .expect_err("other store");
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
    let view = w.view_when(&bob, |_| true).await;
    assert_eq!(view.associate.expect("associate").associate_id, "assoc-2");

    // Clearing the assignment removes Ada from the list.
    views
        .clone()
        .assign_associate(pb::AssignAssociateRequest {
            customer_id: ada.clone(),
            ..Default::default()
        })
        .await
        .expect("clear");
    let listed = views
        .clone()
        .list_associate_customers(pb::ListAssociateCustomersRequest {
            associate_id: "assoc-1".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .customers;
    assert!(listed.is_empty());
}
