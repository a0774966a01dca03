//! `omni customer resolve/show/merge` against identity.

use crate::support::World;

#[tokio::test]
async fn customers_are_resolved_shown_and_merged() {
    let w = World::start().await;
    let first = w
        .json(&[
            "customer",
            "resolve",
            "--phone",
            "+33 6 12 34 56 78",
            "--name",
            "Mei Lin",
            "--account",
            "store:card-1",
        ])
        .await;
    assert_eq!(first["created"], true);
    let id = first["customer"]["id"].as_str().expect("id").to_owned();
    let member = first["customer"]["memberNumber"]
        .as_str()
        .expect("member")
        .to_owned();
    assert_eq!(member.len(), 10);
    assert_eq!(first["customer"]["phone"], "+33612345678");
    assert_eq!(
        first["customer"]["channelAccounts"][0]["channelKind"],
        "CHANNEL_KIND_STORE"
    );

    // The e-shop knows her by the same phone in another notation.
    let online = w
        .json(&[
            "customer",
            "resolve",
            "--phone",
            "+33612345678",
            "--account",
            "e-shop:web-9",
        ])
        .await;
    assert_eq!(online["customer"]["id"], id.as_str());
    assert_eq!(online["created"], false);
    assert_eq!(online["linked"], true);

    let shown = w.text(&["customer", "show", &member]).await;
    assert!(shown.contains("Mei Lin"), "{shown}");
    assert!(shown.contains("web-9"), "{shown}");
    let by_account = w
        .json(&["customer", "show", "--account", "e-shop:web-9"])
        .await;
    assert_eq!(by_account["customer"]["id"], id.as_str());

    let duplicate = w
        .json(&[
            "customer",
            "resolve",
            "--phone",
            "+33 7 00 00 00 01",
            "--name",
            "M. Lin",
        ])
        .await;
    let duplicate_id = duplicate["customer"]["id"].as_str().expect("id").to_owned();
    let merged = w
        .json(&[
            "customer",
            "merge",
            &id,
            &duplicate_id,
            "--reason",
            "same person",
        ])
        .await;
    assert_eq!(merged["survivor"]["id"], id.as_str());
    let alias = w.json(&["customer", "show", &duplicate_id]).await;
    assert_eq!(alias["customer"]["id"], id.as_str());
    assert_eq!(alias["aliasOf"], duplicate_id.as_str());
    let text = w.text(&["customer", "show", &duplicate_id]).await;
    assert!(
        text.contains(&format!("{duplicate_id} was merged into {id}")),
        "{text}"
    );
}

#[tokio::test]
async fn customer_errors_render_their_status_and_details() {
    let w = World::start().await;
    let missing = w.omni(&["customer", "show", "+33 6 99 99 99 99"]).await;
    assert_eq!(missing.code, 4, "{missing:?}");
    assert!(
        missing.stderr.contains("identity answered NOT_FOUND"),
        "{}",
        missing.stderr
    );

    // A mistyped member number fails its check digit: a field violation.
    let typo = w
        .omni(&["--json", "customer", "resolve", "--member", "1234567890"])
        .await;
    assert_eq!(typo.code, 5, "{typo:?}");
    let error = &typo.json()["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["service"], "identity");
    let fields: Vec<&str> = error["fieldViolations"]
        .as_array()
        .expect("field violations")
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    assert!(
        fields.iter().any(|f| f.contains("member_number")),
        "{error}"
    );
    assert!(typo.stderr.contains("  field "), "{}", typo.stderr);

    let nothing = w.omni(&["customer", "resolve"]).await;
    assert_eq!(nothing.code, 2);
    assert!(nothing.stderr.contains("--phone"), "{}", nothing.stderr);
}
