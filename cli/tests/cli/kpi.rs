//! `omni kpi report/scorecard/experiment` against performance, fed by real order events.

use crate::support::{TEE_PRICE, World, eventually};

#[tokio::test]
async fn the_kpi_report_and_a_linked_scorecard_show_the_days_orders() {
    let w = World::start().await;
    for phone in ["+33 6 10 20 30 50", "+33 6 10 20 30 51"] {
        let placed = w
            .json(&[
                "order",
                "place",
                "--channel",
                &w.eshop,
                "--phone",
                phone,
                "--pickup",
                &w.lyon,
                &w.tee,
            ])
            .await;
        let id = placed["id"].as_str().expect("id").to_owned();
        w.json(&["order", "pay", &id]).await;
    }
    let mut report = serde_json::Value::Null;
    eventually(async || {
        let out = w.omni(&["--json", "kpi", "report", "--days", "1"]).await;
        report = out.json();
        report["total"]["current"]["orders"] == 2
    })
    .await;
    let eshop_row = report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["current"]["orders"] == 2))
        .expect("an e-shop row");
    assert!(
        eshop_row["current"]["netSales"]["minorUnits"]
            .as_i64()
            .is_some(),
        "{report}"
    );
    let stores = w
        .text(&["kpi", "report", "--days", "1", "--by-store"])
        .await;
    assert!(stores.contains("STORE"), "{stores}");
    let table = w
        .text(&["kpi", "report", "--days", "1", "--channel", &w.eshop])
        .await;
    assert!(table.contains("E-shop"), "{table}");
    assert!(table.contains("NET SALES"), "{table}");

    let condition = "orders:orders:at-least:2:channel=E-shop";
    let created = w
        .json(&[
            "kpi",
            "scorecard",
            "create",
            "--name",
            "Stores linked to online",
            "--channel",
            &w.store_lyon,
            "--condition",
            condition,
            "--condition",
            "sales:net-sales:at-least:1000.00EUR:kind=e-shop",
        ])
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["conditions"].as_array().map(Vec::len), Some(2));
    let evaluation = w
        .json(&["kpi", "scorecard", "show", &id, "--days", "1"])
        .await;
    let met: Vec<bool> = evaluation["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| c["met"] == true)
        .collect();
    assert_eq!(met, [true, false], "{evaluation}");
    assert_eq!(evaluation["conditionsMet"], 1);
    let text = w.text(&["kpi", "scorecard", "show", &id]).await;
    assert!(text.contains("1 of 2 conditions met"), "{text}");
    let listed = w.json(&["kpi", "scorecard", "list"]).await;
    assert_eq!(listed["scorecards"][0]["id"], id.as_str());
    let _ = TEE_PRICE;

    let bad = w
        .omni(&[
            "kpi",
            "scorecard",
            "create",
            "--name",
            "x",
            "--channel",
            &w.eshop,
            "--condition",
            "a:happiness:at-least:1",
        ])
        .await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("unknown KPI"), "{}", bad.stderr);
}

#[tokio::test]
async fn experiments_are_created_run_and_analysed() {
    let w = World::start().await;
    let created = w
        .json(&[
            "kpi",
            "experiment",
            "create",
            "--name",
            "Free pickup banner",
            "--variants",
            "control,banner",
            "--start",
        ])
        .await;
    assert_eq!(created["status"], "EXPERIMENT_STATUS_RUNNING");
    assert_eq!(created["variants"][1]["weightBps"], 5000);
    let id = created["id"].as_str().expect("id").to_owned();
    let assigned = w
        .json(&["kpi", "experiment", "assign", &id, "customer-1"])
        .await;
    let variant = assigned["variant"].as_str().expect("variant").to_owned();
    assert!(variant == "control" || variant == "banner");
    let again = w
        .json(&["kpi", "experiment", "assign", &id, "customer-1"])
        .await;
    assert_eq!(again["variant"], variant.as_str(), "deterministic");
    for i in 0..20 {
        let subject = format!("customer-{i}");
        let mut args = vec!["kpi", "experiment", "outcome", &id, &subject];
        if i % 3 == 0 {
            args.push("--converted");
        }
        let out = w.json(&args).await;
        assert!(out["variant"].is_string());
    }
    let analysis = w.json(&["kpi", "experiment", "analyze", &id]).await;
    let exposures: i64 = analysis["stats"]
        .as_array()
        .expect("stats")
        .iter()
        .filter_map(|s| s["exposures"].as_i64())
        .sum();
    assert_eq!(exposures, 20);
    let conversions: i64 = analysis["stats"]
        .as_array()
        .expect("stats")
        .iter()
        .filter_map(|s| s["conversions"].as_i64())
        .sum();
    assert_eq!(conversions, 7);
    let text = w.text(&["kpi", "experiment", "analyze", &id]).await;
    assert!(text.contains("verdict:"), "{text}");
    let stopped = w
        .json(&["kpi", "experiment", "status", &id, "stopped"])
        .await;
    assert_eq!(stopped["status"], "EXPERIMENT_STATUS_STOPPED");
    let missing = w
        .omni(&[
            "kpi",
            "experiment",
            "analyze",
            &uuid::Uuid::now_v7().to_string(),
        ])
        .await;
    assert_eq!(missing.code, 4, "{missing:?}");
}
