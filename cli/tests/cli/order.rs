//! `omni order place/show/pay/ready/pickup/return/change-address` against order-management.

use crate::support::{TEE_PRICE, World};

#[tokio::test]
async fn a_pickup_order_goes_from_placement_to_return() {
    let w = World::start().await;
    let placed = w
        .json(&[
            "order",
            "place",
            "--channel",
            &w.eshop,
            "--phone",
            "+33 6 11 22 33 44",
            "--name",
            "Mei Lin",
            "--pickup",
            &w.lyon,
            &w.tee,
        ])
        .await;
    assert_eq!(placed["status"], "ORDER_STATUS_PENDING_PAYMENT");
    assert_eq!(placed["total"]["minorUnits"], TEE_PRICE);
    let number = placed["orderNumber"].as_str().expect("number").to_owned();

    let wrong = w.omni(&["order", "pay", &number, "--amount", "1.00"]).await;
    assert_eq!(wrong.code, 5, "the amount must equal the total: {wrong:?}");
    assert!(
        wrong.stderr.contains("order-management answered"),
        "{}",
        wrong.stderr
    );

    let paid = w.json(&["order", "pay", &number]).await;
    assert_eq!(paid["status"], "ORDER_STATUS_ALLOCATED");
    assert!(paid["pickup"]["promisedReadyAt"].is_string());
    let ready = w.json(&["order", "ready", &number]).await;
    assert_eq!(ready["status"], "ORDER_STATUS_READY_FOR_PICKUP");
    assert_eq!(ready["pickup"]["readyWithinPromise"], true);
    let code = ready["pickup"]["pickupCode"]
        .as_str()
        .expect("code")
        .to_owned();

    let bad = w
        .omni(&["--json", "order", "pickup", &number, "--code", "000000"])
        .await;
    assert_eq!(bad.code, 5, "{bad:?}");
    assert_eq!(
        bad.json()["error"]["fieldViolations"][0]["field"],
        "pickup_code"
    );

    let done = w.text(&["order", "pickup", &number, "--code", &code]).await;
    assert!(
        done.contains("status:") && done.contains("completed"),
        "{done}"
    );

    let returned = w
        .json(&[
            "order",
            "return",
            &number,
            "--store",
            &w.lyon,
            "--channel",
            &w.store_lyon,
        ])
        .await;
    assert_eq!(returned["status"], "RETURN_STATUS_COMPLETED");
    assert_eq!(returned["refundTotal"]["minorUnits"], TEE_PRICE);
    let shown = w.json(&["order", "show", &number]).await;
    assert_eq!(shown["lines"][0]["returnedQuantity"], 1);
    let twice = w
        .omni(&["order", "return", &number, "--item", &w.tee])
        .await;
    assert_eq!(twice.code, 5, "no unit returned twice: {twice:?}");
}

#[tokio::test]
async fn shipped_orders_change_address_and_tills_take_payment_at_once() {
    let w = World::start().await;
    let placed = w
        .json(&[
            "order",
            "place",
            "--channel",
            &w.livestream,
            "--phone",
            "+33 6 11 22 33 55",
            "--ship",
            "--line",
            "3 rue de Gerland",
            "--city",
            "Lyon",
            "--postal-code",
            "69007",
            "--country",
            "FR",
            "--lat",
            "45.73",
            "--lon",
            "4.833",
            &w.mug,
        ])
        .await;
    let id = placed["id"].as_str().expect("id").to_owned();
    assert_eq!(placed["delivery"]["kind"], "DELIVERY_KIND_SHIP");
    let changed = w
        .json(&[
            "order",
            "change-address",
            &id,
            "--line",
            "12 cours Emile Zola",
            "--city",
            "Villeurbanne",
            "--postal-code",
            "69100",
            "--country",
            "FR",
            "--lat",
            "45.771",
            "--lon",
            "4.883",
        ])
        .await;
    assert_eq!(
        changed["order"]["delivery"]["address"]["city"], "Villeurbanne",
        "{changed}"
    );
    let text = w.text(&["order", "show", &id]).await;
    assert!(text.contains("12 cours Emile Zola"), "{text}");

    let till = w
        .json(&[
            "order",
            "place",
            "--channel",
            &w.store_lyon,
            "--carry-out",
            &w.lyon,
            "--pay",
            &w.tee,
        ])
        .await;
    assert_eq!(till["status"], "ORDER_STATUS_COMPLETED", "{till}");
    assert_eq!(till["customerId"], "", "an anonymous till sale");
    let till_id = till["id"].as_str().expect("id").to_owned();
    let back = w
        .text(&["order", "return", &till_id, "--store", &w.lyon, "--damaged"])
        .await;
    assert!(back.contains("TEE-M") && back.contains("damaged"), "{back}");
    assert!(
        back.contains("refund:") && back.contains("20.00 EUR"),
        "{back}"
    );

    let nowhere = w
        .omni(&["order", "place", "--channel", &w.eshop, &w.tee])
        .await;
    assert_eq!(nowhere.code, 2);
    let short = w
        .omni(&[
            "--json",
            "order",
            "place",
            "--channel",
            &w.eshop,
            "--phone",
            "+33 6 11 22 33 66",
            "--pickup",
            &w.lyon,
            &format!("{}:9", w.tee),
        ])
        .await;
    assert_eq!(short.code, 5, "{short:?}");
    assert_eq!(short.json()["error"]["code"], "FAILED_PRECONDITION");
}
