//! The experiment RPCs: definitions and their lifecycle (each start and stop published as an
//! event), deterministic assignment, exposures, outcomes, and the analysis (two-proportion
//! z-test for conversion, Welch's t-test for order value) with a verdict in words.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use omni_proto::events::{ExperimentStatusChanged, event::Payload};
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::experiment_service_server::ExperimentService;
use omni_runtime::auth::{self, Principal, Role};
use omni_runtime::error::Violations;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::outbox::Outbox;
use omni_runtime::{Error, Result, paging};
use prost::Message as _;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::experiment_store::{self as store, ExperimentRow, VariantFigures};
use crate::stats::{self, Comparison, Sample};

const WRITERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const CALLERS: &[Role] = &[Role::Admin, Role::Service, Role::ChannelApp];
const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::Analyst,
    Role::Service,
    Role::ChannelApp,
];

type Reply<T> = std::result::Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Experiments {
    pool: PgPool,
    outbox: Outbox,
    currency: String,
}

impl Experiments {
    pub fn new(pool: PgPool, outbox: Outbox, currency: String) -> Self {
        Self {
            pool,
            outbox,
            currency,
        }
    }
}

fn caller<T>(request: &Request<T>, roles: &[Role]) -> std::result::Result<Principal, Status> {
    let principal = auth::principal(request)?.clone();
    principal.require_any(roles)?;
    Ok(principal)
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(omni_runtime::time::timestamp(t))
}

fn status_name(s: pb::ExperimentStatus) -> Option<&'static str> {
    match s {
        pb::ExperimentStatus::Draft => Some("draft"),
        pb::ExperimentStatus::Running => Some("running"),
        pb::ExperimentStatus::Stopped => Some("stopped"),
        pb::ExperimentStatus::Unspecified => None,
    }
}

fn experiment_pb(row: &ExperimentRow) -> Result<pb::Experiment> {
    let mut e = pb::Experiment::decode(row.body.as_slice())
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored experiment does not decode: {e}")))?;
    e.id = row.id.to_string();
    e.status = match row.status.as_str() {
        "running" => pb::ExperimentStatus::Running,
        "stopped" => pb::ExperimentStatus::Stopped,
        _ => pb::ExperimentStatus::Draft,
    } as i32;
    e.period = row.started_at.map(|start| omni_proto::common::TimeRange {
        start: timestamp(start),
        end: row.stopped_at.and_then(timestamp),
    });
    e.created_at = timestamp(row.created_at);
    Ok(e)
}

/// The control: the named one, or the first variant.
fn control(e: &pb::Experiment) -> String {
    if e.control_variant.is_empty() {
        e.variants
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default()
    } else {
        e.control_variant.clone()
    }
}

fn validate(e: &pb::Experiment) -> Result<()> {
    let mut v = Violations::new();
    if e.name.trim().is_empty() || e.name.len() > 200 {
        v.add("experiment.name", "1 to 200 characters");
    }
    if e.scope.trim().is_empty() || e.scope.len() > 100 {
        v.add("experiment.scope", "1 to 100 characters");
    }
    if !matches!(
        pb::ExperimentSubject::try_from(e.subject),
        Ok(pb::ExperimentSubject::Customer | pb::ExperimentSubject::Order)
    ) {
        v.add("experiment.subject", "must be CUSTOMER or ORDER");
    }
    if !matches!(
        pb::ExperimentMetric::try_from(e.metric),
        Ok(pb::ExperimentMetric::Conversion | pb::ExperimentMetric::OrderValue)
    ) {
        v.add("experiment.metric", "must be CONVERSION or ORDER_VALUE");
    }
    if !matches!(
        pb::OutcomeSource::try_from(e.outcome_source),
        Ok(pb::OutcomeSource::Recorded | pb::OutcomeSource::Orders)
    ) {
        v.add("experiment.outcome_source", "must be RECORDED or ORDERS");
    }
    if e.variants.len() < 2 {
        v.add("experiment.variants", "at least two variants");
    }
    let mut names = HashSet::new();
    for (i, variant) in e.variants.iter().enumerate() {
        if variant.name.trim().is_empty() || variant.name.len() > 64 {
            v.add(
                format!("experiment.variants[{i}].name"),
                "1 to 64 characters",
            );
        } else if !names.insert(variant.name.as_str()) {
            v.add(format!("experiment.variants[{i}].name"), "must be unique");
        }
        if !(0..=10_000).contains(&variant.weight_bps) {
            v.add(format!("experiment.variants[{i}].weight_bps"), "0 to 10000");
        }
    }
    let total: i64 = e.variants.iter().map(|v| i64::from(v.weight_bps)).sum();
    if e.variants.len() >= 2 && total != 10_000 {
        v.add("experiment.variants", "weights must sum to 10000");
    }
    if !e.control_variant.is_empty() && !names.contains(e.control_variant.as_str()) {
        v.add(
            "experiment.control_variant",
            "must name one of the variants",
        );
    }
    for (i, c) in e.channel_ids.iter().enumerate() {
        if let Err(msg) = crate::domain::check_channel_id(c) {
            v.add(format!("experiment.channel_ids[{i}]"), msg);
        }
    }
    v.finish()
}

impl Experiments {
    async fn load(&self, raw: &str) -> Result<(ExperimentRow, pb::Experiment)> {
        let id =
            Uuid::parse_str(raw).map_err(|_| Error::invalid("experiment_id", "is not an id"))?;
        let row = store::get(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("experiment {raw}")))?;
        let e = experiment_pb(&row)?;
        Ok((row, e))
    }

    fn variant(e: &pb::Experiment, subject: &str) -> String {
        let variants: Vec<(String, i32)> = e
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.weight_bps))
            .collect();
        crate::domain::assign(&e.id, subject, &variants).to_owned()
    }
}

fn subject(v: &mut Violations, raw: &str) -> String {
    if raw.trim().is_empty() || raw.len() > 100 {
        v.add("subject_id", "1 to 100 characters");
    }
    raw.to_owned()
}

fn require_running(row: &ExperimentRow) -> Result<()> {
    if row.status == "running" {
        Ok(())
    } else {
        Err(Error::precondition(
            "EXPERIMENT_STATUS",
            format!("experiment/{}", row.id),
            format!("the experiment is {}, not running", row.status),
        ))
    }
}

#[tonic::async_trait]
impl ExperimentService for Experiments {
    #[tracing::instrument(name = "performance.create_experiment", skip_all, err)]
    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Reply<pb::CreateExperimentResponse> {
        let who = caller(&request, WRITERS)?;
        let r = request.into_inner();
        let e = r.experiment.clone().unwrap_or_default();
        validate(&e)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let scope = "performance.create_experiment";
        if let Claim::Replay(reply) = idempotency::claim(
            &mut tx,
            scope,
            &who.id,
            "idempotency_key",
            &r.idempotency_key,
            &r,
        )
        .await?
        {
            return Ok(Response::new(reply));
        }
        let body = pb::Experiment {
            id: String::new(),
            status: 0,
            period: None,
            created_at: None,
            ..e.clone()
        };
        let row = store::insert(&mut tx, Uuid::now_v7(), &e.scope, &body.encode_to_vec()).await?;
        let reply = pb::CreateExperimentResponse {
            experiment: Some(experiment_pb(&row)?),
        };
        idempotency::complete(&mut tx, scope, &who.id, &r.idempotency_key, &reply).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(reply))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Reply<pb::GetExperimentResponse> {
        caller(&request, READERS)?;
        let (_, e) = self.load(&request.into_inner().experiment_id).await?;
        Ok(Response::new(pb::GetExperimentResponse {
            experiment: Some(e),
        }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Reply<pb::ListExperimentsResponse> {
        caller(&request, READERS)?;
        let r = request.into_inner();
        let size = paging::page_size(r.page_size)?;
        let status = pb::ExperimentStatus::try_from(r.status)
            .map_err(|_| Error::invalid("status", "is not an experiment status"))?;
        let after =
            match paging::decode_token(&r.page_token)? {
                None => None,
                Some(t) => Some(Uuid::parse_str(&t).map_err(|_| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?),
            };
        let rows = store::list(&self.pool, &r.scope, status_name(status), after, size).await?;
        let last = rows.last().map(|r| r.id.to_string());
        let count = rows.len();
        let experiments = rows.iter().map(experiment_pb).collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments,
            next_page_token: paging::next_token(count, size, last),
        }))
    }

    #[tracing::instrument(name = "performance.set_experiment_status", skip_all, err)]
    async fn set_experiment_status(
        &self,
        request: Request<pb::SetExperimentStatusRequest>,
    ) -> Reply<pb::SetExperimentStatusResponse> {
        let principal = caller(&request, WRITERS)?;
        let r = request.into_inner();
        let (from, to) = match pb::ExperimentStatus::try_from(r.status) {
            Ok(pb::ExperimentStatus::Running) => ("draft", "running"),
            Ok(pb::ExperimentStatus::Stopped) => ("running", "stopped"),
            _ => return Err(Error::invalid("status", "must be RUNNING or STOPPED").into()),
        };
        let (row, _) = self.load(&r.experiment_id).await?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let Some(updated) = store::set_status(&mut tx, row.id, from, to).await? else {
            return Err(Error::precondition(
                "EXPERIMENT_STATUS",
                format!("experiment/{}", row.id),
                format!("only a {from} experiment can become {to}"),
            )
            .into());
        };
        let e = experiment_pb(&updated)?;
        self.outbox
            .add(
                &mut tx,
                "performance.experiment_status_changed",
                &e.id,
                &principal.id,
                Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                    experiment_id: e.id.clone(),
                    scope: e.scope.clone(),
                    subject: e.subject,
                    status: e.status,
                    variants: e.variants.clone(),
                    control_variant: control(&e),
                    period: e.period,
                }),
            )
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        self.outbox.wake();
        tracing::info!(experiment = %e.id, status = to, "experiment status changed");
        Ok(Response::new(pb::SetExperimentStatusResponse {
            experiment: Some(e),
        }))
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Reply<pb::GetAssignmentResponse> {
        caller(&request, READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject = subject(&mut v, &r.subject_id);
        v.finish()?;
        let (row, e) = self.load(&r.experiment_id).await?;
        let running = row.status == "running";
        let variant = if running {
            Self::variant(&e, &subject)
        } else {
            control(&e)
        };
        Ok(Response::new(pb::GetAssignmentResponse {
            experiment_id: e.id,
            variant,
            running,
        }))
    }

    #[tracing::instrument(name = "performance.record_exposure", skip_all, err)]
    async fn record_exposure(
        &self,
        request: Request<pb::RecordExposureRequest>,
    ) -> Reply<pb::RecordExposureResponse> {
        caller(&request, CALLERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject = subject(&mut v, &r.subject_id);
        if !r.channel_id.is_empty() {
            v.check("channel_id", crate::domain::check_channel_id(&r.channel_id));
        }
        let at = r
            .exposed_at
            .as_ref()
            .map(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)));
        if matches!(at, Some(None)) {
            v.add("exposed_at", "is not a valid time");
        }
        v.finish()?;
        let (row, e) = self.load(&r.experiment_id).await?;
        require_running(&row)?;
        if !e.channel_ids.is_empty() && !e.channel_ids.contains(&r.channel_id) {
            return Err(Error::precondition(
                "EXPERIMENT_CHANNEL",
                format!("channel/{}", r.channel_id),
                "the experiment does not run in this channel",
            )
            .into());
        }
        let variant = Self::variant(&e, &subject);
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        store::expose(
            &mut conn,
            row.id,
            &subject,
            &variant,
            &r.channel_id,
            at.flatten().unwrap_or_else(Utc::now),
        )
        .await?;
        Ok(Response::new(pb::RecordExposureResponse { variant }))
    }

    #[tracing::instrument(name = "performance.record_outcome", skip_all, err)]
    async fn record_outcome(
        &self,
        request: Request<pb::RecordOutcomeRequest>,
    ) -> Reply<pb::RecordOutcomeResponse> {
        let who = caller(&request, CALLERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject = subject(&mut v, &r.subject_id);
        let value = match &r.order_value {
            None => None,
            Some(m) if m.currency != self.currency => {
                v.add("order_value.currency", format!("must be {}", self.currency));
                None
            }
            Some(m) if m.minor_units < 0 => {
                v.add("order_value", "must not be negative");
                None
            }
            Some(m) => Some(m.minor_units),
        };
        let at = r
            .occurred_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        v.finish()?;
        let (row, e) = self.load(&r.experiment_id).await?;
        require_running(&row)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let scope = format!("performance.record_outcome/{}", row.id);
        if let Claim::Replay(reply) = idempotency::claim(
            &mut tx,
            &scope,
            &who.id,
            "idempotency_key",
            &r.idempotency_key,
            &r,
        )
        .await?
        {
            return Ok(Response::new(reply));
        }
        let variant = Self::variant(&e, &subject);
        // An outcome implies the subject saw its variant.
        store::expose(&mut tx, row.id, &subject, &variant, "", at).await?;
        store::record_outcome(&mut tx, row.id, &subject, &variant, r.converted, value, at).await?;
        let reply = pb::RecordOutcomeResponse { variant };
        idempotency::complete(&mut tx, &scope, &who.id, &r.idempotency_key, &reply).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(reply))
    }

    #[tracing::instrument(name = "performance.analyze_experiment", skip_all, err)]
    async fn analyze_experiment(
        &self,
        request: Request<pb::AnalyzeExperimentRequest>,
    ) -> Reply<pb::AnalyzeExperimentResponse> {
        caller(
            &request,
            &[Role::Admin, Role::ChannelManager, Role::Analyst],
        )?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let days = match &r.range {
            None => None,
            Some(range) => {
                let start = range.start.as_ref().and_then(|d| {
                    chrono::NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32)
                });
                let end = range.end.as_ref().and_then(|d| {
                    chrono::NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32)
                });
                match (start, end) {
                    (Some(s), Some(e)) if s <= e => Some((s, e)),
                    (Some(_), Some(_)) => {
                        v.add("range", "end is before start");
                        None
                    }
                    _ => {
                        v.add("range", "needs a valid start and end");
                        None
                    }
                }
            }
        };
        v.finish()?;
        let (row, e) = self.load(&r.experiment_id).await?;
        let from_orders = e.outcome_source == pb::OutcomeSource::Orders as i32;
        let order_subject = e.subject == pb::ExperimentSubject::Order as i32;
        let figures = store::figures(&self.pool, row.id, days, from_orders, order_subject).await?;
        let metric = pb::ExperimentMetric::try_from(e.metric).unwrap_or_default();
        let control_name = control(&e);
        let analysis = analyze(&e, &control_name, metric, &figures);
        let fulfilment = if order_subject {
            store::fulfilment(&self.pool, &e.id)
                .await?
                .into_iter()
                .map(|f| pb::VariantFulfilmentStats {
                    variant: f.variant,
                    orders: f.orders,
                    split_rate: crate::domain::ratio(f.split, f.orders),
                    mean_hours_to_complete: f.mean_hours,
                    store_fulfilled_share: crate::domain::ratio(f.store_units, f.units),
                })
                .collect()
        } else {
            Vec::new()
        };
        let stats = e
            .variants
            .iter()
            .map(|variant| {
                let f = figures.iter().find(|f| f.variant == variant.name);
                let exposures = f.map_or(0, |f| f.exposures);
                let conversions = f.map_or(0, |f| f.conversions);
                pb::VariantStats {
                    variant: variant.name.clone(),
                    exposures,
                    conversions,
                    conversion_rate: crate::domain::ratio(conversions, exposures),
                    mean_order_value: f.and_then(|f| f.mean_value),
                    stddev_order_value: f.and_then(|f| f.variance_value).map(f64::sqrt),
                    currency: self.currency.clone(),
                }
            })
            .collect();
        Ok(Response::new(pb::AnalyzeExperimentResponse {
            experiment_id: e.id.clone(),
            metric: metric as i32,
            control_variant: control_name,
            stats,
            comparisons: analysis.comparisons,
            verdict: analysis.verdict as i32,
            winning_variant: analysis.winner,
            summary: analysis.summary,
            fulfilment,
        }))
    }
}

struct Analysis {
    comparisons: Vec<pb::VariantComparison>,
    verdict: pb::Verdict,
    winner: String,
    summary: String,
}

/// Each variant against the control, and the verdict.
fn analyze(
    e: &pb::Experiment,
    control: &str,
    metric: pb::ExperimentMetric,
    figures: &[VariantFigures],
) -> Analysis {
    let find = |name: &str| figures.iter().find(|f| f.variant == name);
    let sample = |f: Option<&VariantFigures>| Sample {
        n: f.map_or(0, |f| u64::try_from(f.values).unwrap_or(0)),
        mean: f.and_then(|f| f.mean_value).unwrap_or(0.0),
        variance: f.and_then(|f| f.variance_value).unwrap_or(0.0),
    };
    let counts = |f: Option<&VariantFigures>| {
        (
            f.map_or(0, |f| u64::try_from(f.conversions).unwrap_or(0)),
            f.map_or(0, |f| u64::try_from(f.exposures).unwrap_or(0)),
        )
    };
    let base = find(control);
    let mut tested: Vec<(String, Comparison)> = Vec::new();
    for variant in e.variants.iter().filter(|v| v.name != control) {
        let other = find(&variant.name);
        let comparison = match metric {
            pb::ExperimentMetric::OrderValue => stats::welch_t_test(sample(base), sample(other)),
            _ => {
                let (x1, n1) = counts(base);
                let (x2, n2) = counts(other);
                stats::two_proportion_z_test(x1, n1, x2, n2)
            }
        };
        if let Some(c) = comparison {
            tested.push((variant.name.clone(), c));
        }
    }
    let comparisons = tested
        .iter()
        .map(|(name, c)| pb::VariantComparison {
            variant: name.clone(),
            difference: c.difference,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
            p_value: c.p_value,
            statistic: c.statistic,
            degrees_of_freedom: c.degrees_of_freedom,
            significant: c.significant(),
        })
        .collect();
    let (verdict, winner) = verdict(&tested);
    let summary = summary(metric, control, verdict, &winner, &tested);
    Analysis {
        comparisons,
        verdict,
        winner,
        summary,
    }
}

/// Insufficient data when nothing could be tested; the best significantly better variant
/// wins; the control wins when every significant difference favours it.
fn verdict(tested: &[(String, Comparison)]) -> (pb::Verdict, String) {
    if tested.is_empty() {
        return (pb::Verdict::InsufficientData, String::new());
    }
    let best = tested
        .iter()
        .filter(|(_, c)| c.significant() && c.difference > 0.0)
        .max_by(|a, b| a.1.difference.total_cmp(&b.1.difference));
    if let Some((name, _)) = best {
        return (pb::Verdict::VariantWins, name.clone());
    }
    if tested.iter().any(|(_, c)| c.significant()) {
        return (pb::Verdict::ControlWins, String::new());
    }
    (pb::Verdict::NoDifference, String::new())
}

fn summary(
    metric: pb::ExperimentMetric,
    control: &str,
    verdict: pb::Verdict,
    winner: &str,
    tested: &[(String, Comparison)],
) -> String {
    let describe = |name: &str, c: &Comparison| match metric {
        pb::ExperimentMetric::OrderValue => format!(
            "{name} differs from {control} by {:.0} minor units of order value (95% CI {:.0} to {:.0}, p = {:.3})",
            c.difference, c.ci_low, c.ci_high, c.p_value
        ),
        _ => format!(
            "{name} converts {:.1} points {} than {control} (95% CI {:.1} to {:.1}, p = {:.3})",
            (c.difference * 100.0).abs(),
            if c.difference >= 0.0 {
                "better"
            } else {
                "worse"
            },
            c.ci_low * 100.0,
            c.ci_high * 100.0,
            c.p_value
        ),
    };
    match verdict {
        pb::Verdict::InsufficientData | pb::Verdict::Unspecified => {
            "not enough exposures or outcomes to test yet".to_owned()
        }
        pb::Verdict::VariantWins => tested
            .iter()
            .find(|(n, _)| n == winner)
            .map(|(n, c)| describe(n, c))
            .unwrap_or_default(),
        pb::Verdict::ControlWins => format!(
            "{control} is significantly better: {}",
            tested
                .iter()
                .filter(|(_, c)| c.significant())
                .map(|(n, c)| describe(n, c))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        pb::Verdict::NoDifference => format!(
            "no significant difference: {}",
            tested
                .iter()
                .map(|(n, c)| describe(n, c))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(difference: f64, p_value: f64) -> Comparison {
        Comparison {
            difference,
            ci_low: difference - 0.01,
            ci_high: difference + 0.01,
            statistic: 0.0,
            p_value,
            degrees_of_freedom: None,
        }
    }

    #[test]
    fn the_verdict_names_the_best_significant_variant() {
        assert_eq!(verdict(&[]).0, pb::Verdict::InsufficientData);
        let tested = vec![
            ("b".to_owned(), c(0.02, 0.01)),
            ("c".to_owned(), c(0.05, 0.001)),
        ];
        assert_eq!(verdict(&tested), (pb::Verdict::VariantWins, "c".to_owned()));
        let worse = vec![("b".to_owned(), c(-0.02, 0.01))];
        assert_eq!(verdict(&worse).0, pb::Verdict::ControlWins);
        let same = vec![("b".to_owned(), c(0.02, 0.2))];
        assert_eq!(verdict(&same).0, pb::Verdict::NoDifference);
    }
}
