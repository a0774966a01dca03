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
    assert!(
        out.stderr
            .contains("orders [##############################] 200/200"),
        "{}",
        out.stderr
    );
    let summary = out.json();
    assert!(
        summary["seconds"].as_i64() < Some(90),
        "too slow: {summary}"
    );
    assert_eq!(summary["skus"], 20, "{summary}");
    assert_eq!(summary["customers"], 20);
    assert_eq!(summary["orders"]["asked"], 200);
    assert_eq!(
        summary["orders"]["failed"],
        serde_json::json!({}),
        "{summary}"
    );
    assert_eq!(summary["orders"]["placed"], 200);
    let completed = summary["orders"]["completed"].as_i64().expect("completed");
    assert!(completed > 150, "{summary}");
    assert!(
        summary["orders"]["returned"].as_i64().expect("returned") > 0,
        "{summary}"
    );

    let found = omni_cli::run_captured(&["--json", "catalog", "search"], &env).await;
    assert_eq!(found.json()["totalSize"], 5, "four sizes of five products");
    // Performance counts the orders as their events arrive.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let report =
            omni_cli::run_captured(&["--json", "kpi", "report", "--days", "1"], &env).await;
        let seen = report.json()["total"]["current"]["orders"]
            .as_i64()
            .unwrap_or(0);
        if seen >= completed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "performance counts {seen} orders of {completed} completed: {}",
            report.stdout
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
