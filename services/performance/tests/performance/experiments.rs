//! A/B experiments through the contract: validation, lifecycle (published as events),
//! deterministic assignment, and analyses checked against textbook values: a two-proportion
//! z-test (250/1000 against 200/1000) and Welch's t-test (a published worked example).

use futures::StreamExt as _;
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::experiment_service_client::ExperimentServiceClient;
use omni_runtime::auth::Role;

use crate::support::*;

fn experiment(metric: pb::ExperimentMetric) -> pb::Experiment {
    pb::Experiment {
        name: "Store-first sourcing".into(),
        scope: "orders.sourcing".into(),
        subject: pb::ExperimentSubject::Customer as i32,
        variants: vec![
            pb::Variant {
                name: "control".into(),
                weight_bps: 5_000,
            },
            pb::Variant {
                name: "store_first".into(),
                weight_bps: 5_000,
            },
        ],
        metric: metric as i32,
        outcome_source: pb::OutcomeSource::Recorded as i32,
        ..Default::default()
    }
}

async fn running(p: &mut Performance, metric: pb::ExperimentMetric) -> pb::Experiment {
    let created = p
        .experiments
        .create_experiment(pb::CreateExperimentRequest {
            idempotency_key: format!("{metric:?}"),
            experiment: Some(experiment(metric)),
        })
        .await
        .expect("create")
        .into_inner()
        .experiment
        .expect("experiment");
    p.experiments
        .set_experiment_status(pb::SetExperimentStatusRequest {
            experiment_id: created.id.clone(),
            status: pb::ExperimentStatus::Running as i32,
        })
        .await
        .expect("start")
        .into_inner()
        .experiment
        .expect("experiment")
}

/// `count` subjects that fall into `variant`.
fn subjects(e: &pb::Experiment, variant: &str, count: usize) -> Vec<String> {
    let variants: Vec<(String, i32)> = e
        .variants
        .iter()
        .map(|v| (v.name.clone(), v.weight_bps))
        .collect();
    (0..)
        .map(|i| format!("{variant}-{i}"))
        .filter(|s| performance::domain::assign(&e.id, s, &variants) == variant)
        .take(count)
        .collect()
}

async fn outcomes(
    client: &ExperimentServiceClient<omni_runtime::client::AuthChannel>,
    id: &str,
    subjects: Vec<(String, bool, Option<i64>)>,
) {
    futures::stream::iter(subjects)
        .map(|(subject, converted, value)| {
            let mut client = client.clone();
            let id = id.to_owned();
            async move {
                client
                    .record_outcome(pb::RecordOutcomeRequest {
                        idempotency_key: format!("{id}/{subject}"),
                        experiment_id: id,
                        subject_id: subject,
                        converted,
                        order_value: value.and_then(eur),
                        occurred_at: None,
                    })
                    .await
                    .expect("outcome");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test]
async fn one_variant_is_refused_and_nothing_is_written() {
    let mut p = start().await;
    let mut one = experiment(pb::ExperimentMetric::Conversion);
    one.variants.truncate(1);
    one.variants[0].weight_bps = 10_000;
    let status = p
        .experiments
        .create_experiment(pb::CreateExperimentRequest {
            idempotency_key: "one".into(),
            experiment: Some(one),
        })
        .await
        .expect_err("one variant");
    assert_eq!(bad_fields(&status), ["experiment.variants"]);
    let mut bad_weights = experiment(pb::ExperimentMetric::Conversion);
    bad_weights.variants[1].weight_bps = 4_000;
    let status = p
        .experiments
        .create_experiment(pb::CreateExperimentRequest {
            idempotency_key: "weights".into(),
            experiment: Some(bad_weights),
        })
        .await
        .expect_err("weights");
    assert_eq!(bad_fields(&status), ["experiment.variants"]);
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&p.db)
        .await
        .expect("count");
    assert_eq!(written, 0);
}

#[tokio::test]
async fn assignment_is_deterministic_and_follows_the_lifecycle() {
    let mut p = start().await;
    let draft = p
        .experiments
        .create_experiment(pb::CreateExperimentRequest {
            idempotency_key: "lifecycle".into(),
            experiment: Some(experiment(pb::ExperimentMetric::Conversion)),
        })
        .await
        .expect("create")
        .into_inner()
        .experiment
        .expect("experiment");
    assert_eq!(draft.status, pb::ExperimentStatus::Draft as i32);
    let before = p
        .experiments
        .get_assignment(pb::GetAssignmentRequest {
            experiment_id: draft.id.clone(),
            subject_id: "store_first-x".into(),
        })
        .await
        .expect("assignment")
        .into_inner();
    assert!(!before.running);
    assert_eq!(before.variant, "control");
    let exposure = p
        .experiments
        .record_exposure(pb::RecordExposureRequest {
            experiment_id: draft.id.clone(),
            subject_id: "c-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("not running");
    assert_eq!(exposure.code(), tonic::Code::FailedPrecondition);
    let stop = p
        .experiments
        .set_experiment_status(pb::SetExperimentStatusRequest {
            experiment_id: draft.id.clone(),
            status: pb::ExperimentStatus::Stopped as i32,
        })
        .await
        .expect_err("a draft cannot stop");
    assert_eq!(stop.code(), tonic::Code::FailedPrecondition);

    let started = p
        .experiments
        .set_experiment_status(pb::SetExperimentStatusRequest {
            experiment_id: draft.id.clone(),
            status: pb::ExperimentStatus::Running as i32,
        })
        .await
        .expect("start")
        .into_inner()
        .experiment
        .expect("experiment");
    assert!(started.period.and_then(|p| p.start).is_some());
    let listed = p
        .experiments
        .list_experiments(pb::ListExperimentsRequest {
            scope: "orders.sourcing".into(),
            status: pb::ExperimentStatus::Running as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .experiments;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, draft.id);
    let read = p
        .experiments
        .get_experiment(pb::GetExperimentRequest {
            experiment_id: draft.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .experiment
        .expect("experiment");
    assert_eq!(read.variants.len(), 2);
    assert_eq!(read.status, pb::ExperimentStatus::Running as i32);
    let mut service = ExperimentServiceClient::new(p.svc.as_roles(&[Role::Service]));
    for variant in ["control", "store_first"] {
        for subject in subjects(&draft, variant, 5) {
            for _ in 0..2 {
                let a = service
                    .get_assignment(pb::GetAssignmentRequest {
                        experiment_id: draft.id.clone(),
                        subject_id: subject.clone(),
                    })
                    .await
                    .expect("assignment")
                    .into_inner();
                assert!(a.running);
                assert_eq!(a.variant, variant);
            }
        }
    }
    let seen = service
        .record_exposure(pb::RecordExposureRequest {
            experiment_id: draft.id.clone(),
            subject_id: "c-1".into(),
            channel_id: "eshop".into(),
            exposed_at: None,
        })
        .await
        .expect("exposure")
        .into_inner();
    assert!(["control", "store_first"].contains(&seen.variant.as_str()));

    // The start reached the performance stream for order-management and crm.
    let stream = p.redis.event_stream("performance");
    let mut conn = p.redis.conn();
    let mut published = 0usize;
    for _ in 0..2_000 {
        published = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("xlen");
        if published > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(published, 1);
}

#[tokio::test]
async fn conversion_is_compared_with_a_two_proportion_z_test() {
    let mut p = start().await;
    let e = running(&mut p, pb::ExperimentMetric::Conversion).await;
    // control: 250 of 1000 convert; store_first: 200 of 1000.
    let mut all = Vec::new();
    for (variant, converted) in [("control", 250), ("store_first", 200)] {
        for (i, s) in subjects(&e, variant, 1000).into_iter().enumerate() {
            all.push((s, i < converted, None));
        }
    }
    outcomes(&p.experiments, &e.id, all).await;
    let analysis = p
        .experiments
        .analyze_experiment(pb::AnalyzeExperimentRequest {
            experiment_id: e.id.clone(),
            range: None,
        })
        .await
        .expect("analysis")
        .into_inner();
    assert_eq!(analysis.control_variant, "control");
    let exposures: Vec<(i64, i64)> = analysis
        .stats
        .iter()
        .map(|s| (s.exposures, s.conversions))
        .collect();
    assert_eq!(exposures, [(1000, 250), (1000, 200)]);
    let c = &analysis.comparisons[0];
    assert_eq!(c.variant, "store_first");
    assert!((c.difference + 0.05).abs() < 1e-12);
    assert!((c.statistic + 2.677_398).abs() < 1e-5, "{}", c.statistic);
    assert!((c.p_value - 0.007_420).abs() < 1e-5, "{}", c.p_value);
    assert!(c.ci_high < 0.0 && c.significant);
    assert_eq!(c.degrees_of_freedom, None);
    assert_eq!(analysis.verdict, pb::Verdict::ControlWins as i32);
    assert!(
        analysis.summary.contains("5.0 points worse"),
        "{}",
        analysis.summary
    );
}

#[tokio::test]
async fn order_value_is_compared_with_welchs_t_test() {
    let mut p = start().await;
    let e = running(&mut p, pb::ExperimentMetric::OrderValue).await;
    // Welch's worked example (x10 to make minor units): t = -2.46, df = 24.99, p = 0.021.
    let a1 = [
        275, 210, 190, 236, 170, 179, 169, 201, 219, 226, 231, 196, 190, 217, 214,
    ];
    let a2 = [
        271, 220, 208, 234, 234, 235, 258, 220, 248, 202, 219, 221, 229, 205, 244,
    ];
    let mut all = Vec::new();
    for (variant, values) in [("control", a2), ("store_first", a1)] {
        for (s, v) in subjects(&e, variant, values.len()).into_iter().zip(values) {
            all.push((s, true, Some(v)));
        }
    }
    // Exposed subjects who did not convert do not count in order value.
    for s in subjects(&e, "control", 20).into_iter().skip(15) {
        all.push((s, false, None));
    }
    outcomes(&p.experiments, &e.id, all).await;
    let analysis = p
        .experiments
        .analyze_experiment(pb::AnalyzeExperimentRequest {
            experiment_id: e.id.clone(),
            range: None,
        })
        .await
        .expect("analysis")
        .into_inner();
    let control = &analysis.stats[0];
    assert_eq!((control.exposures, control.conversions), (20, 15));
    let c = &analysis.comparisons[0];
    assert!((c.statistic + 2.46).abs() < 5e-3, "{}", c.statistic);
    assert!((c.degrees_of_freedom.expect("df") - 24.99).abs() < 5e-3);
    assert!((c.p_value - 0.021).abs() < 1e-3, "{}", c.p_value);
    assert!(c.significant);
    assert_eq!(analysis.verdict, pb::Verdict::ControlWins as i32);
}

#[tokio::test]
async fn a_sourcing_experiment_reads_outcomes_and_fulfilment_from_orders() {
    use omni_proto::common::ChannelKind;
    use omni_proto::events::{self as ev, event::Payload};
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let mut sourcing = experiment(pb::ExperimentMetric::Conversion);
    sourcing.subject = pb::ExperimentSubject::Order as i32;
    sourcing.outcome_source = pb::OutcomeSource::Orders as i32;
    sourcing.variants[0].name = "online_first".into();
    sourcing.channel_ids = vec!["eshop".into()];
    let created = p
        .experiments
        .create_experiment(pb::CreateExperimentRequest {
            idempotency_key: "sourcing".into(),
            experiment: Some(sourcing),
        })
        .await
        .expect("create")
        .into_inner()
        .experiment
        .expect("experiment");
    p.experiments
        .set_experiment_status(pb::SetExperimentStatusRequest {
            experiment_id: created.id.clone(),
            status: pb::ExperimentStatus::Running as i32,
        })
        .await
        .expect("start");
    let online = subjects(&created, "online_first", 2);
    let store = subjects(&created, "store_first", 2);
    for subject in online.iter().chain(&store) {
        p.experiments
            .record_exposure(pb::RecordExposureRequest {
                experiment_id: created.id.clone(),
                subject_id: subject.clone(),
                channel_id: "eshop".into(),
                exposed_at: ts(at(3, 1, 8, 0)),
            })
            .await
            .expect("exposure");
    }
    let elsewhere = p
        .experiments
        .record_exposure(pb::RecordExposureRequest {
            experiment_id: created.id.clone(),
            subject_id: "x".into(),
            channel_id: "live".into(),
            exposed_at: None,
        })
        .await
        .expect_err("another channel");
    assert_eq!(elsewhere.code(), tonic::Code::FailedPrecondition);

    // (order, variant, split, hours to complete, line locations: (location, from store)).
    let orders = [
        (
            &online[0],
            "online_first",
            false,
            24,
            vec![("W1", false), ("W1", false)],
        ),
        (
            &online[1],
            "online_first",
            true,
            48,
            vec![("S1", true), ("W1", false)],
        ),
        (
            &store[0],
            "store_first",
            false,
            4,
            vec![("S1", true), ("S1", true)],
        ),
    ];
    let mut events = Vec::new();
    for (id, variant, split, hours, lines) in orders {
        let placed = at(3, 1, 9, 0);
        let mut facts = Order {
            id,
            channel: "eshop",
            store: "",
            associate: "",
            customer: "",
            placed_at: placed,
            quantity: 1,
            net: 1000,
            unit_cost: 400,
        }
        .facts();
        facts.lines = lines
            .iter()
            .enumerate()
            .map(|(i, (location, _))| ev::OrderLineFacts {
                line_id: format!("{id}-{i}"),
                quantity: 1,
                net_amount: eur(500),
                unit_cost: eur(200),
                location_id: (*location).to_owned(),
                ..Default::default()
            })
            .collect();
        facts.fulfilments = lines
            .iter()
            .map(|(location, from_store)| ev::FulfilmentFacts {
                location_id: (*location).to_owned(),
                from_store: *from_store,
                ..Default::default()
            })
            .collect();
        facts.split = split;
        facts.experiment_id = created.id.clone();
        facts.variant = variant.to_owned();
        facts.completed_at = ts(placed + chrono::Duration::hours(hours));
        events.push((
            "orders.order_fulfilled",
            Payload::OrderFulfilled(ev::OrderFulfilled {
                order: Some(facts),
                fulfilled_at: None,
            }),
        ));
    }
    p.publish("orders", events).await;

    let analysis = p
        .experiments
        .analyze_experiment(pb::AnalyzeExperimentRequest {
            experiment_id: created.id.clone(),
            range: None,
        })
        .await
        .expect("analysis")
        .into_inner();
    let stats: Vec<(&str, i64, i64)> = analysis
        .stats
        .iter()
        .map(|s| (s.variant.as_str(), s.exposures, s.conversions))
        .collect();
    assert_eq!(stats, [("online_first", 2, 2), ("store_first", 2, 1)]);
    let f = &analysis.fulfilment;
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].variant.as_str(), f[0].orders), ("online_first", 2));
    assert_eq!(f[0].split_rate, Some(0.5));
    assert!((f[0].mean_hours_to_complete.expect("hours") - 36.0).abs() < 1e-9);
    assert_eq!(f[0].store_fulfilled_share, Some(0.25));
    assert_eq!((f[1].variant.as_str(), f[1].orders), ("store_first", 1));
    assert_eq!(f[1].split_rate, Some(0.0));
    assert!((f[1].mean_hours_to_complete.expect("hours") - 4.0).abs() < 1e-9);
    assert_eq!(f[1].store_fulfilled_share, Some(1.0));
}
