//! `omni catalog search/sku/quote` against the catalog.

use crate::support::{MUG_PRICE, TEE_PRICE, World};

#[tokio::test]
async fn products_are_searched_skus_shown_and_carts_quoted() {
    let w = World::start().await;
    let found = w.json(&["catalog", "search", "tee"]).await;
    let products = found["products"].as_array().expect("products");
    assert_eq!(products.len(), 1, "{found}");
    assert_eq!(products[0]["name"], "Organic tee");
    assert_eq!(products[0]["skus"][0]["skuCode"], w.tee.as_str());
    let table = w.text(&["catalog", "search", "--channel", &w.eshop]).await;
    assert!(
        table.contains("Organic tee") && table.contains("Stoneware mug"),
        "{table}"
    );
    assert!(table.contains("2 of 2 matching products"), "{table}");

    let sku = w
        .json(&["catalog", "sku", &w.tee, "--channel", &w.eshop])
        .await;
    assert_eq!(sku["sku"]["id"], w.tee_id.as_str());
    assert_eq!(sku["listing"]["price"]["minorUnits"], TEE_PRICE);
    let text = w.text(&["catalog", "sku", &w.tee]).await;
    assert!(text.contains("list price:"), "{text}");
    assert!(text.contains("20.00 EUR"), "{text}");
    assert!(text.contains("size:"), "{text}");

    let item = format!("{}:2", w.tee);
    let quote = w
        .json(&["catalog", "quote", "--channel", &w.eshop, &item, &w.mug])
        .await;
    assert_eq!(quote["total"]["minorUnits"], 2 * TEE_PRICE + MUG_PRICE);
    assert_eq!(quote["lines"].as_array().map(Vec::len), Some(2));
    let text = w
        .text(&["catalog", "quote", "--channel", &w.eshop, &item])
        .await;
    assert!(text.contains("total:"), "{text}");
    assert!(text.contains("40.00 EUR"), "{text}");

    let missing = w.omni(&["--json", "catalog", "sku", "NOPE-1"]).await;
    assert_eq!(missing.code, 4, "{missing:?}");
    assert_eq!(missing.json()["error"]["code"], "NOT_FOUND");
    let unknown_channel = w
        .omni(&["catalog", "quote", "--channel", "Nowhere", &item])
        .await;
    assert_eq!(unknown_channel.code, 2);
    assert!(
        unknown_channel.stderr.contains("no channel named"),
        "{}",
        unknown_channel.stderr
    );
}
