//! `omni stock show/nearby/reserve/receive/transfer/receive-transfer` against inventory.

use crate::support::World;

fn available_at(sku: &serde_json::Value, location_id: &str) -> i64 {
    sku["locations"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["locationId"] == location_id))
        .and_then(|l| l["available"].as_i64())
        .unwrap_or(-1)
}

#[tokio::test]
async fn stock_is_shown_held_and_moved() {
    let w = World::start().await;
    let shown = w.json(&["stock", "show", &w.tee]).await;
    assert_eq!(shown["skus"][0]["networkAvailable"], 13);
    assert_eq!(available_at(&shown["skus"][0], &w.lyon_id), 3);
    let table = w.text(&["stock", "show", &w.tee]).await;
    assert!(table.contains("13 available in the network"), "{table}");
    assert!(
        table.contains(&w.lyon) && table.contains(&w.warehouse),
        "{table}"
    );

    let wanted = format!("{}:2", w.tee);
    let nearby = w
        .json(&[
            "stock", "nearby", &wanted, "--lat", "45.7640", "--lon", "4.8357",
        ])
        .await;
    let stores: Vec<&str> = nearby["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .filter_map(|s| s["location"]["code"].as_str())
        .collect();
    assert_eq!(stores, [w.lyon.as_str()], "only Lyon holds two tees");
    let too_many = format!("{}:5", w.tee);
    let none = w
        .text(&[
            "stock", "nearby", &too_many, "--lat", "45.7640", "--lon", "4.8357",
        ])
        .await;
    assert!(none.contains("no pickup store"), "{none}");

    let held = w
        .json(&[
            "stock",
            "reserve",
            &wanted,
            "--location",
            &w.lyon,
            "--channel",
            &w.store_lyon,
            "--reference",
            "till-7",
        ])
        .await;
    assert_eq!(held["reservation"]["status"], "RESERVATION_STATUS_ACTIVE");
    assert_eq!(held["reservation"]["lines"][0]["quantity"], 2);
    let after = w.json(&["stock", "show", &w.tee]).await;
    assert_eq!(available_at(&after["skus"][0], &w.lyon_id), 1);

    let short = w
        .omni(&[
            "--json",
            "stock",
            "reserve",
            &too_many,
            "--location",
            &w.lyon,
            "--channel",
            &w.store_lyon,
        ])
        .await;
    assert_eq!(short.code, 5, "{short:?}");
    let error = &short.json()["error"];
    assert_eq!(error["code"], "FAILED_PRECONDITION");
    assert!(
        !error["preconditionViolations"]
            .as_array()
            .expect("violations")
            .is_empty(),
        "{error}"
    );
    let human = w
        .omni(&[
            "stock",
            "reserve",
            &too_many,
            "--location",
            &w.lyon,
            "--channel",
            &w.store_lyon,
        ])
        .await;
    assert!(human.stderr.contains("  precondition "), "{}", human.stderr);

    let four = format!("{}:4", w.tee);
    let moved = w
        .json(&[
            "stock",
            "transfer",
            "--from",
            &w.warehouse,
            "--to",
            &w.villeurbanne,
            &four,
        ])
        .await;
    assert_eq!(moved["transfer"]["status"], "TRANSFER_STATUS_IN_TRANSIT");
    let transfer = moved["transfer"]["id"].as_str().expect("id").to_owned();
    let inbound = w.json(&["stock", "show", &w.tee]).await;
    assert_eq!(inbound["skus"][0]["inboundQuantity"], 4);
    let received = w.json(&["stock", "receive-transfer", &transfer]).await;
    assert_eq!(received["transfer"]["status"], "TRANSFER_STATUS_RECEIVED");
    let text = w.text(&["stock", "show", &w.tee]).await;
    let villeurbanne = text
        .lines()
        .find(|l| l.starts_with(&w.villeurbanne))
        .unwrap_or_default();
    assert!(
        villeurbanne.split_whitespace().nth(2) == Some("4"),
        "{text}"
    );

    let more = format!("{}:6", w.mug);
    w.text(&["stock", "receive", &w.villeurbanne, &more]).await;
    let mugs = w.json(&["stock", "show", &w.mug]).await;
    assert_eq!(mugs["skus"][0]["networkAvailable"], 18);
}
