//! `omni crm view/ticket/points/coupon/campaign` against crm, fed by real order events.

use crate::support::{TEE_PRICE, World, eventually};

/// Places, pays, readies and hands over a pickup order for `phone`; returns the customer id.
async fn buy_and_collect(w: &World, phone: &str) -> String {
    let placed = w
        .json(&[
            "order",
            "place",
            "--channel",
            &w.eshop,
            "--phone",
            phone,
            "--name",
            "Mei Lin",
            "--pickup",
            &w.lyon,
            &w.tee,
        ])
        .await;
    let id = placed["id"].as_str().expect("id").to_owned();
    w.json(&["order", "pay", &id]).await;
    let ready = w.json(&["order", "ready", &id]).await;
    let code = ready["pickup"]["pickupCode"]
        .as_str()
        .expect("code")
        .to_owned();
    w.json(&["order", "pickup", &id, "--code", &code]).await;
    placed["customerId"].as_str().expect("customer").to_owned()
}

#[tokio::test]
async fn the_customer_view_points_and_coupons_work_across_channels() {
    let w = World::start().await;
    let phone = "+33 6 10 20 30 40";
    let customer = buy_and_collect(&w, phone).await;
    let points = TEE_PRICE / 100;
    eventually(async || {
        let out = w.omni(&["--json", "crm", "points", phone]).await;
        out.code == 0 && out.json()["account"]["pointsBalance"] == points
    })
    .await;

    let view = w.json(&["crm", "view", phone]).await;
    assert_eq!(view["profile"]["customerId"], customer.as_str());
    assert_eq!(view["orderCount"], 1);
    assert_eq!(view["pointsBalance"], points);
    assert_eq!(view["orders"][0]["channelKind"], "CHANNEL_KIND_E_SHOP");
    let text = w.text(&["crm", "view", &customer]).await;
    assert!(text.contains("points:") && text.contains("20"), "{text}");
    assert!(text.contains("e shop"), "{text}");

    let redeemed = w
        .json(&[
            "crm",
            "points",
            &customer,
            "--redeem",
            "5",
            "--channel",
            &w.store_lyon,
        ])
        .await;
    assert_eq!(redeemed["account"]["pointsBalance"], points - 5);
    assert_eq!(
        redeemed["redeemed"]["entry"]["points"]
            .as_i64()
            .map(i64::abs),
        Some(5)
    );
    let overdraw = w
        .omni(&[
            "--json",
            "crm",
            "points",
            &customer,
            "--redeem",
            "500",
            "--channel",
            &w.livestream,
        ])
        .await;
    assert_eq!(overdraw.code, 5, "{overdraw:?}");
    assert_eq!(overdraw.json()["error"]["code"], "FAILED_PRECONDITION");

    let coupon = w
        .json(&[
            "crm",
            "coupon",
            "issue",
            phone,
            "--amount-off",
            "3.00",
            "--channel",
            &w.eshop,
        ])
        .await;
    let code = coupon["code"].as_str().expect("code").to_owned();
    assert_eq!(coupon["status"], "COUPON_STATUS_ISSUED");
    for channel in [&w.eshop, &w.livestream, &w.store_lyon] {
        let check = w
            .json(&[
                "crm",
                "coupon",
                "check",
                &code,
                "--customer",
                phone,
                "--channel",
                channel,
            ])
            .await;
        assert_eq!(check["usable"], true, "usable on {channel}: {check}");
    }
    let someone_else = w
        .json(&["customer", "resolve", "--phone", "+33 6 10 20 30 99"])
        .await;
    let other = someone_else["customer"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let refused = w
        .text(&[
            "crm",
            "coupon",
            "check",
            &code,
            "--customer",
            &other,
            "--channel",
            &w.eshop,
        ])
        .await;
    assert!(refused.starts_with("not usable"), "{refused}");
    let shown = w.text(&["crm", "coupon", "show", &code]).await;
    assert!(shown.contains("3.00 EUR"), "{shown}");
    let unknown = w.omni(&["crm", "coupon", "show", "NOSUCHCODE"]).await;
    assert_eq!(unknown.code, 4, "{unknown:?}");
}

#[tokio::test]
async fn tickets_and_campaigns_are_opened_and_sent() {
    let w = World::start().await;
    let phone = "+33 6 10 20 30 41";
    let customer = buy_and_collect(&w, phone).await;
    eventually(async || w.omni(&["crm", "view", &customer]).await.code == 0).await;

    let ticket = w
        .json(&[
            "crm",
            "ticket",
            "open",
            phone,
            "--kind",
            "complaint",
            "--subject",
            "Scarf arrived creased",
            "--channel",
            &w.eshop,
        ])
        .await;
    assert_eq!(ticket["status"], "TICKET_STATUS_OPEN");
    assert_eq!(ticket["kind"], "TICKET_KIND_COMPLAINT");
    let id = ticket["id"].as_str().expect("id").to_owned();
    let shown = w.text(&["crm", "ticket", "show", &id]).await;
    assert!(shown.contains("Scarf arrived creased"), "{shown}");
    let listed = w.json(&["crm", "ticket", "list", &customer]).await;
    assert_eq!(listed["tickets"][0]["id"], id.as_str());
    let bad = w
        .omni(&["--json", "crm", "ticket", "open", phone, "--subject", ""])
        .await;
    assert_eq!(bad.code, 5, "{bad:?}");
    assert!(
        !bad.json()["error"]["fieldViolations"]
            .as_array()
            .expect("violations")
            .is_empty()
    );

    let campaign = w
        .json(&[
            "crm",
            "campaign",
            "create",
            "--name",
            "Spring",
            "--segment",
            "order_count >= 1",
            "--title",
            "New linen is in",
            "--channel",
            &w.eshop,
        ])
        .await;
    let campaign_id = campaign["campaign"]["id"].as_str().expect("id").to_owned();
    assert_eq!(campaign["campaign"]["status"], "CAMPAIGN_STATUS_DRAFT");
    let dry = w
        .json(&["crm", "campaign", "send", &campaign_id, "--dry-run"])
        .await;
    assert_eq!(dry["campaignId"], campaign_id.as_str());
    assert!(dry["targeted"].as_i64().is_some(), "{dry}");
    let sent = w.json(&["crm", "campaign", "send", &campaign_id]).await;
    let report = w.json(&["crm", "campaign", "report", &campaign_id]).await;
    assert_eq!(report["targeted"], sent["targeted"]);
    let text = w.text(&["crm", "campaign", "report", &campaign_id]).await;
    assert!(text.contains("targeted:"), "{text}");
}
