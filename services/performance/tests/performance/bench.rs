//! The KPI benchmark (ignored by default; run it with
//! `cargo test -p performance --test performance -- --ignored --nocapture kpi_benchmark`):
//! a year of orders (1,000,000 by default, `OMNI_BENCH_ORDERS`) across 6 channels and 50
//! stores, then a channel KPI report from the rollups, the same report from a plain scan of the
//! raw facts (identical numbers required), and a scorecard evaluation.

// A benchmark reports its figures on stderr.
#![allow(clippy::print_stderr)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::scorecard_condition::Threshold;

use crate::support::*;

const CHUNK: i64 = 50_000;

fn progress(done: i64, total: i64) {
    let width = 40;
    let filled = usize::try_from(done * width / total.max(1)).unwrap_or(0);
    eprint!(
        "\r  generating orders [{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(usize::try_from(width).unwrap_or(40) - filled)
    );
    let _ = std::io::stderr().flush();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
#[ignore = "a benchmark: minutes of data generation"]
async fn kpi_benchmark() {
    let orders: i64 = std::env::var("OMNI_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut p = start().await;
    let channels: Vec<_> = (0..6)
        .map(|i| {
            channel(
                &format!("ch{i}"),
                if i == 1 {
                    omni_proto::common::ChannelKind::Store
                } else {
                    omni_proto::common::ChannelKind::EShop
                },
            )
        })
        .collect();
    p.publish("catalog", channels).await;

    // Facts straight into the service's tables (as events would leave them), then the rebuild
    // computes the rollups from them.
    let started = Instant::now();
    let mut done = 0;
    while done < orders {
        let upto = (done + CHUNK).min(orders);
        sqlx::query(
            "INSERT INTO order_facts (order_id, channel_id, store_id, associate_id, customer_id, \
               placed_at, day, sales, cost, units, cancelled) \
             SELECT 'o' || g, 'ch' || (g % 6), \
               CASE WHEN g % 6 = 1 THEN 's' || (g % 50) ELSE '' END, \
               CASE WHEN g % 6 = 1 AND g % 3 = 0 THEN 'u' || (g % 200) ELSE '' END, \
               'c' || ((g * 7919) % ($3 / 5)), t, (t AT TIME ZONE 'UTC')::date, \
               1000 + (g * 37) % 9000, 400 + (g * 17) % 3000, 1 + g % 3, g % 50 = 0 \
             FROM generate_series($1::bigint, $2::bigint) g, \
               LATERAL (SELECT timestamptz '2025-01-01 00:00:00+00' \
                 + make_interval(secs => (g * 31535999.0 / $3)) AS t) x",
        )
        .bind(done + 1)
        .bind(upto)
        .bind(orders)
        .execute(&p.db)
        .await
        .expect("generate orders");
        done = upto;
        progress(done, orders);
    }
    sqlx::query(
        "INSERT INTO return_facts (return_id, order_id, channel_id, store_id, associate_id, \
           customer_id, day, refund, cost, repeat) \
         SELECT 'r' || order_id, order_id, channel_id, store_id, associate_id, customer_id, \
           least(day + 3, date '2025-12-31'), sales / 2, cost / 2, true \
         FROM order_facts WHERE NOT cancelled AND (substr(order_id, 2)::bigint) % 20 = 7",
    )
    .execute(&p.db)
    .await
    .expect("generate returns");
    sqlx::query(
        "INSERT INTO traffic (channel_id, day, visits, impressions, interactions, reach) \
         SELECT 'ch' || c, d::date, 5000 + c * 100, 20000, 900, 4000 \
         FROM generate_series(0, 5) c, generate_series(date '2025-01-01', date '2025-12-31', \
           interval '1 day') d",
    )
    .execute(&p.db)
    .await
    .expect("traffic");
    sqlx::query(
        "INSERT INTO spend (channel_id, day, category, amount) \
         SELECT 'ch' || c, d::date, 'marketing', 100000 + c * 1000 \
         FROM generate_series(0, 5) c, generate_series(date '2025-01-01', date '2025-12-31', \
           interval '1 day') d",
    )
    .execute(&p.db)
    .await
    .expect("spend");
    sqlx::query("ANALYZE")
        .execute(&p.db)
        .await
        .expect("analyze");
    eprintln!("\n  generated in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    // The rebuild's own code, called directly: over gRPC it would outlast the test client's
    // 30-second deadline at this size.
    let rebuilt = performance::store::rebuild(&p.db, None)
        .await
        .expect("rebuild");
    sqlx::query("ANALYZE")
        .execute(&p.db)
        .await
        .expect("analyze");
    eprintln!(
        "  rollups built from {} facts in {:.1} s ({} rows)",
        rebuilt.facts_scanned,
        started.elapsed().as_secs_f64(),
        rebuilt.rows_written
    );

    let year = pb::GetKpiReportRequest {
        range: range(day(2025, 7, 1), day(2025, 12, 31)),
        ..Default::default()
    };
    let mut rollup_times = Vec::new();
    let mut report = None;
    for _ in 0..5 {
        let t = Instant::now();
        report = Some(p.report(year.clone()).await);
        rollup_times.push(t.elapsed());
    }
    let mut raw_times = Vec::new();
    let mut raw = None;
    for _ in 0..1 {
        let t = Instant::now();
        raw = Some(
            p.report(pb::GetKpiReportRequest {
                source: pb::KpiSource::RawFacts as i32,
                ..year.clone()
            })
            .await,
        );
        raw_times.push(t.elapsed());
    }
    let (report, raw) = (report.expect("report"), raw.expect("raw"));
    assert_eq!(report.rows, raw.rows, "rollups and the raw scan must agree");
    assert_eq!(report.total, raw.total);

    let scorecard = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "bench".into(),
            scorecard: Some(pb::Scorecard {
                name: "bench".into(),
                channel_id: "ch0".into(),
                conditions: vec![
                    pb::ScorecardCondition {
                        id: "cac".into(),
                        kpi: pb::Kpi::CustomerAcquisitionCost as i32,
                        channel_ids: vec!["ch0".into()],
                        comparison: pb::Comparison::DecreaseByAtLeast as i32,
                        threshold: Some(Threshold::ChangeBps(1000)),
                        ..Default::default()
                    },
                    pb::ScorecardCondition {
                        id: "repeat".into(),
                        kpi: pb::Kpi::NewCustomerRepeatRate as i32,
                        channel_kind: omni_proto::common::ChannelKind::Store as i32,
                        comparison: pb::Comparison::IncreaseByAtLeast as i32,
                        threshold: Some(Threshold::ChangeBps(500)),
                        ..Default::default()
                    },
                ],
                payout_rules: vec![pb::PayoutRule {
                    condition_ids: vec!["cac".into(), "repeat".into()],
                    min_met: 1,
                    payout_bps: 5000,
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("scorecard")
        .into_inner()
        .scorecard
        .expect("scorecard");
    let mut scorecard_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        p.scorecards
            .evaluate_scorecard(pb::EvaluateScorecardRequest {
                scorecard_id: scorecard.id.clone(),
                range: range(day(2025, 10, 1), day(2025, 12, 31)),
                baseline_range: None,
            })
            .await
            .expect("evaluate");
        scorecard_times.push(t.elapsed());
    }
    let (rollup, scan, card) = (
        median(rollup_times),
        median(raw_times),
        median(scorecard_times),
    );
    eprintln!(
        "  channel KPI report (6 months + previous 6 months): rollups {:.1} ms, raw scan {:.1} ms \
         ({:.1}x), identical numbers\n  scorecard evaluation (2 conditions): {:.1} ms",
        rollup.as_secs_f64() * 1e3,
        scan.as_secs_f64() * 1e3,
        scan.as_secs_f64() / rollup.as_secs_f64(),
        card.as_secs_f64() * 1e3,
    );
}
