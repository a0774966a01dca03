//! Linked scorecards: "online CAC down at least 10% AND store new-customer repeat rate up at
//! least 5% → 100%, one of them → 50%", evaluated on the crafted dataset; bad conditions
//! refused with nothing written.

use omni_proto::common::ChannelKind;
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::scorecard_condition::Threshold;
use omni_runtime::auth::Role;

use crate::kpis::crafted;
use crate::support::*;

fn linked() -> pb::Scorecard {
    pb::Scorecard {
        name: "Online growth, offline loyalty".into(),
        channel_id: "eshop".into(),
        conditions: vec![
            pb::ScorecardCondition {
                id: "online_cac".into(),
                kpi: pb::Kpi::CustomerAcquisitionCost as i32,
                channel_ids: vec!["eshop".into()],
                comparison: pb::Comparison::DecreaseByAtLeast as i32,
                threshold: Some(Threshold::ChangeBps(1000)),
                label: "online CAC down at least 10%".into(),
                ..Default::default()
            },
            pb::ScorecardCondition {
                id: "offline_repeat".into(),
                kpi: pb::Kpi::NewCustomerRepeatRate as i32,
                channel_kind: ChannelKind::Store as i32,
                comparison: pb::Comparison::IncreaseByAtLeast as i32,
                threshold: Some(Threshold::ChangeBps(500)),
                label: "offline new-customer repeat rate up at least 5%".into(),
                ..Default::default()
            },
        ],
        payout_rules: vec![
            pb::PayoutRule {
                condition_ids: vec!["online_cac".into(), "offline_repeat".into()],
                min_met: 0,
                payout_bps: 10_000,
            },
            pb::PayoutRule {
                condition_ids: vec!["online_cac".into(), "offline_repeat".into()],
                min_met: 1,
                payout_bps: 5_000,
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_linked_scorecard_pays_for_the_conditions_met() {
    let mut p = start().await;
    crafted(&mut p).await;
    let created = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "sc-1".into(),
            scorecard: Some(linked()),
        })
        .await
        .expect("create")
        .into_inner()
        .scorecard
        .expect("scorecard");
    assert_eq!(created.version, 1);
    let retried = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "sc-1".into(),
            scorecard: Some(linked()),
        })
        .await
        .expect("retry")
        .into_inner()
        .scorecard
        .expect("scorecard");
    assert_eq!(retried.id, created.id);

    let evaluation = p
        .scorecards
        .evaluate_scorecard(pb::EvaluateScorecardRequest {
            scorecard_id: created.id.clone(),
            range: range(day(2026, 3, 1), day(2026, 3, 7)),
            baseline_range: None,
        })
        .await
        .expect("evaluate")
        .into_inner()
        .evaluation
        .expect("evaluation");
    assert_eq!(
        evaluation.baseline_range,
        range(day(2026, 2, 22), day(2026, 2, 28))
    );
    // Online CAC: 3000 / 1 new customer against 4000 / 1 before: down 25%.
    let cac = &evaluation.conditions[0];
    assert_eq!(cac.condition_id, "online_cac");
    assert_eq!(
        cac.current.as_ref().and_then(|f| f.figure.clone()),
        Some(pb::kpi_figure::Figure::Amount(eur(3000).expect("money")))
    );
    assert_eq!(
        cac.baseline.as_ref().and_then(|f| f.figure.clone()),
        Some(pb::kpi_figure::Figure::Amount(eur(4000).expect("money")))
    );
    assert_eq!(cac.change_bps, Some(-2500));
    assert!(cac.met);
    let inputs: Vec<&str> = cac.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["marketing_spend", "new_customers"]);
    assert_eq!(
        cac.inputs[1]
            .current
            .as_ref()
            .and_then(|f| f.figure.clone()),
        Some(pb::kpi_figure::Figure::Count(1))
    );
    // Store new-customer repeat rate: 0 of 1 now, undefined before (no new customers): not
    // met, and no change figure.
    let repeat = &evaluation.conditions[1];
    assert_eq!(
        repeat.current.as_ref().and_then(|f| f.figure.clone()),
        Some(pb::kpi_figure::Figure::Ratio(0.0))
    );
    assert_eq!(
        repeat.baseline.as_ref().and_then(|f| f.figure.clone()),
        None
    );
    assert_eq!(repeat.change_bps, None);
    assert!(!repeat.met);
    assert_eq!(evaluation.conditions_met, 1);
    assert_eq!(evaluation.payout_bps, 5_000);
    assert_eq!(evaluation.payout_rule_index, Some(1));

    // With the second condition on a level (a store new-customer repeat rate of at most 0)
    // both are met and the full payout applies.
    let mut easier = created.clone();
    easier.conditions[1].comparison = pb::Comparison::AtMost as i32;
    easier.conditions[1].threshold = Some(Threshold::Value(0.0));
    let updated = p
        .scorecards
        .update_scorecard(pb::UpdateScorecardRequest {
            scorecard: Some(easier.clone()),
        })
        .await
        .expect("update")
        .into_inner()
        .scorecard
        .expect("scorecard");
    assert_eq!(updated.version, 2);
    let stale = p
        .scorecards
        .update_scorecard(pb::UpdateScorecardRequest {
            scorecard: Some(easier),
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), tonic::Code::Aborted);
    let full = p
        .scorecards
        .evaluate_scorecard(pb::EvaluateScorecardRequest {
            scorecard_id: created.id.clone(),
            range: range(day(2026, 3, 1), day(2026, 3, 7)),
            baseline_range: None,
        })
        .await
        .expect("evaluate")
        .into_inner()
        .evaluation
        .expect("evaluation");
    assert_eq!(full.conditions_met, 2);
    assert_eq!(full.payout_bps, 10_000);
    assert_eq!(full.payout_rule_index, Some(0));

    let read = p
        .scorecards
        .get_scorecard(pb::GetScorecardRequest {
            scorecard_id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .scorecard
        .expect("scorecard");
    assert_eq!(read.version, 2);
    assert_eq!(read.conditions[1].comparison, pb::Comparison::AtMost as i32);
    let listed = p
        .scorecards
        .list_scorecards(pb::ListScorecardsRequest {
            channel_id: "eshop".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .scorecards;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.id);

    let analyst =
        omni_proto::omni::performance::v1::scorecard_service_client::ScorecardServiceClient::new(
            p.svc.as_roles(&[Role::Analyst]),
        )
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "sc-2".into(),
            scorecard: Some(linked()),
        })
        .await
        .expect_err("analysts do not write");
    assert_eq!(analyst.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_condition_on_an_unknown_kpi_or_channel_is_refused_and_nothing_written() {
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let mut bad = linked();
    bad.conditions[0].kpi = 99;
    let status = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "bad-1".into(),
            scorecard: Some(bad),
        })
        .await
        .expect_err("unknown kpi");
    assert_eq!(bad_fields(&status), ["scorecard.conditions[0].kpi"]);

    let mut bad = linked();
    bad.conditions[0].channel_ids = vec!["nowhere".into()];
    let status = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "bad-2".into(),
            scorecard: Some(bad),
        })
        .await
        .expect_err("unknown channel");
    assert_eq!(bad_fields(&status), ["scorecard.conditions[0].channel_ids"]);

    let mut bad = linked();
    bad.payout_rules[0].condition_ids.push("missing".into());
    bad.conditions[1].threshold = None;
    let status = p
        .scorecards
        .create_scorecard(pb::CreateScorecardRequest {
            idempotency_key: "bad-3".into(),
            scorecard: Some(bad),
        })
        .await
        .expect_err("dangling rule");
    assert_eq!(
        bad_fields(&status),
        [
            "scorecard.conditions[1].change_bps",
            "scorecard.payout_rules[0].condition_ids"
        ]
    );
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM scorecards")
        .fetch_one(&p.db)
        .await
        .expect("count");
    assert_eq!(written, 0);
    let missing = p
        .scorecards
        .evaluate_scorecard(pb::EvaluateScorecardRequest {
            scorecard_id: uuid::Uuid::now_v7().to_string(),
            range: range(day(2026, 3, 1), day(2026, 3, 7)),
            baseline_range: None,
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
