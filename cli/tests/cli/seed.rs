//! `omni seed --scale`: a small version of the demo dataset, through the public APIs, that the
//! other commands then see.

use omni_testkit::Shop;

use crate::support::{admin_token, env_for};

#[tokio::test]
async fn a_scaled_down_seed_fills_every_service() {
    let shop = Shop::start().await.expect("the suite starts");
    let env = env_for(&shop, Some(&admin_token()));
    let out = omni_cli::run_captured(
        &["--json", "seed", "--scale", "0.004", "--concurrency", "8"],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for bar in [
        "history [##############################] 199/199",
        "today [##############################] 1/1",
    ] {
        assert!(out.stderr.contains(bar), "{bar}: {}", out.stderr);
    }
    let summary = out.json();
    assert!(
        summary["seconds"].as_i64() < Some(90),
        "too slow: {summary}"
    );
    assert_eq!(summary["skus"], 20, "{summary}");
    assert_eq!(summary["customers"], 20);
    let orders = &summary["orders"];
    assert_eq!(orders["asked"], 200);
    assert_eq!(orders["imported"], 199, "{summary}");
    assert_eq!(orders["placed"], 1, "{summary}");
    assert_eq!(orders["failed"], serde_json::json!({}), "{summary}");
    let count = |name: &str| orders[name].as_i64().unwrap_or_else(|| panic!("{name}"));
    let (history, cancelled, returns) = (
        count("importedCompleted"),
        count("importedCancelled"),
        count("importedReturns"),
    );
    assert_eq!(history + cancelled, 199, "{summary}");
    assert!(history > 180 && returns > 0, "{summary}");
    let today = count("placed");
    // The seed waited until performance had counted every completed order.
    assert_eq!(
        summary["countable"].as_i64(),
        Some(history + count("completed")),
        "{summary}"
    );
    assert!(
        summary["counted"].as_i64() >= summary["countable"].as_i64(),
        "{summary}"
    );

    let found = omni_cli::run_captured(&["--json", "catalog", "search"], &env).await;
    assert_eq!(found.json()["totalSize"], 5, "four sizes of five products");
    // Performance counts the orders as their events arrive: today's live ones, and the
    // history on its own days.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for (days, expected) in [("1", today), ("180", history + today)] {
        loop {
            let report =
                omni_cli::run_captured(&["--json", "kpi", "report", "--days", days], &env).await;
            let seen = report.json()["total"]["current"]["orders"]
                .as_i64()
                .unwrap_or(0);
            if seen >= expected {
                assert_eq!(seen, expected, "{days} days: {}", report.stdout);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "performance counts {seen} orders of {expected} over {days} days: {}",
                report.stdout
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let season = omni_cli::run_captured(&["--json", "kpi", "report", "--days", "180"], &env).await;
    let rows = season.json()["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), 11, "every channel reports: {}", season.stdout);
    let visits = season.json()["total"]["current"]["visits"]
        .as_i64()
        .unwrap_or(0);
    assert!(visits > 180 * 6 * 150, "180 days of traffic: {visits}");
}
