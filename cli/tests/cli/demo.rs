//! `omni demo` against the real suite: the whole story holds, twice on the same services.

use omni_testkit::Shop;

use crate::support::{admin_token, env_for};

#[tokio::test]
async fn the_demo_walks_the_story_end_to_end() {
    let shop = Shop::start().await.expect("the suite starts");
    let env = env_for(&shop, Some(&admin_token()));
    let out = omni_cli::run_captured(&["--json", "demo"], &env).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let facts = out.json();
    assert_eq!(facts["recognisedOnline"], true);
    assert_eq!(facts["pickup"]["readyWithinPromise"], true);
    assert_eq!(facts["pickup"]["promiseMinutes"], 30);
    assert_eq!(facts["pickup"]["status"], "ORDER_STATUS_COMPLETED");
    assert_eq!(
        facts["livestream"]["sold"], 8,
        "exactly the warehouse's stock"
    );
    assert_eq!(facts["livestream"]["refused"], 5);
    assert_eq!(
        facts["livestream"]["storeAvailableAfter"],
        serde_json::json!([3, 3])
    );
    assert_eq!(facts["return"]["refund"], 2500);
    assert_eq!(facts["return"]["storeAvailableAfter"], 4);
    assert_eq!(
        facts["loyalty"]["couponUsableIn"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(facts["loyalty"]["couponDiscount"], 500);
    assert_eq!(facts["loyalty"]["couponUsableAfterRedemption"], false);
    let before = facts["loyalty"]["pointsBeforeRedemption"]
        .as_i64()
        .expect("points");
    assert_eq!(facts["loyalty"]["pointsAfterRedemption"], before - 20);
    assert!(
        facts["kpi"]["evaluation"]["conditions"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    );

    // Human output, on the same services: a second run keeps its data apart.
    let out = omni_cli::run_captured(&["demo", "--crowd", "3"], &env).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for step in [
        "1. Setting the scene",
        "2. A customer registered in a store is recognised in the e-shop",
        "3. She buys online and picks up in store within 30 minutes",
        "4. The livestream sells a hot SKU without overselling",
        "5. She returns her livestream purchase in a store",
        "6. Her points and coupon work in every channel",
        "7. The channel KPI report and a linked scorecard show the effect",
        "The story held end to end",
    ] {
        assert!(
            out.stdout.contains(step),
            "missing {step:?} in\n{}",
            out.stdout
        );
    }
}
