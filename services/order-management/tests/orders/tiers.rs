//! The tier an order is priced with comes from crm's tier announcements, kept by
//! order-management, not from a crm call per order.

use chrono::{DateTime, Utc};

use crate::support::{World, eventually, home_villeurbanne, line, ship_to};

async fn kept(w: &World, customer: &str) -> Option<(String, DateTime<Utc>)> {
    let db = w.shop.orders.db().await.expect("db");
    let row = sqlx::query_as("SELECT tier, as_of FROM customer_tiers WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(&db)
        .await
        .expect("tier");
    db.close().await;
    row
}

async fn keep(w: &World, customer: &str, tier: &str, as_of: DateTime<Utc>) {
    let db = w.shop.orders.db().await.expect("db");
    sqlx::query("UPDATE customer_tiers SET tier = $2, as_of = $3 WHERE customer_id = $1")
        .bind(customer)
        .bind(tier)
        .bind(as_of)
        .execute(&db)
        .await
        .expect("update");
    db.close().await;
}

#[tokio::test]
async fn orders_are_priced_with_the_tier_crm_announced() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_m, 40).await;
    let order = |units: i32| {
        w.place(w.request(
            &w.eshop,
            vec![line(&w.tee_m, units)],
            ship_to(home_villeurbanne()),
        ))
    };
    let first = order(1).await.expect("placed");
    let customer = first.customer_id.clone();
    w.pay(&first).await;
    eventually(async || kept(&w, &customer).await.is_some_and(|k| k.0 == "member")).await;

    // 25 more tees take the rolling spend past silver's 500 EUR: crm applies the order,
    // announces the new tier, and order-management keeps it.
    let big = order(25).await.expect("placed");
    assert_eq!(big.customer_tier, "member");
    w.pay(&big).await;
    eventually(async || kept(&w, &customer).await.is_some_and(|k| k.0 == "silver")).await;
    assert_eq!(order(1).await.expect("placed").customer_tier, "silver");

    // What is kept is what prices the order: crm is not asked while it is fresh.
    keep(&w, &customer, "gold", Utc::now()).await;
    assert_eq!(order(1).await.expect("placed").customer_tier, "gold");

    // A day-old tier may have lapsed with time: crm is asked again, and its answer kept.
    keep(
        &w,
        &customer,
        "gold",
        Utc::now() - chrono::Duration::days(2),
    )
    .await;
    assert_eq!(order(1).await.expect("placed").customer_tier, "silver");
    assert_eq!(
        kept(&w, &customer).await.map(|k| k.0).as_deref(),
        Some("silver")
    );
}
