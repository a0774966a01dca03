//! `omni kpi`: channel KPI reports with the previous period beside them, linked scorecards
//! (a channel's payout tied to other channels' KPIs), and A/B experiments (performance).

use chrono::{Datelike as _, NaiveDate};
use clap::Subcommand;
use omni_proto::common::{ChannelKind, Date, DateRange, Money};
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::experiment_service_client::ExperimentServiceClient;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;
use omni_proto::omni::performance::v1::scorecard_service_client::ScorecardServiceClient;
use serde_json::json;

use crate::config::Service;
use crate::ctx::{Ctx, key, parse_amount};
use crate::protojson::{list_to_json, to_json};
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, format_minor, label, money, or_dash,
    percent, required,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// KPIs per channel (or store) for a period, with the period before it.
    Report {
        #[command(flatten)]
        period: Period,
        /// Rows per store instead of per channel.
        #[arg(long)]
        by_store: bool,
        /// Only these channels (ids or names; repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
    /// Linked scorecards.
    #[command(subcommand)]
    Scorecard(ScorecardCommand),
    /// A/B experiments.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

#[derive(Debug, clap::Args)]
pub struct Period {
    /// First day (YYYY-MM-DD); default: --days before --to.
    #[arg(long)]
    from: Option<String>,
    /// Last day (YYYY-MM-DD); default: today (UTC).
    #[arg(long)]
    to: Option<String>,
    /// The period's length when --from is not given.
    #[arg(long, default_value_t = 7)]
    days: u32,
}

impl Period {
    fn range(&self) -> CliResult<DateRange> {
        let end = match &self.to {
            Some(d) => parse_day(d)?,
            None => chrono::Utc::now().date_naive(),
        };
        let start = match &self.from {
            Some(d) => parse_day(d)?,
            None => end - chrono::Days::new(u64::from(self.days.max(1) - 1)),
        };
        if start > end {
            return Err(CliError::Usage("--from is after --to".into()));
        }
        Ok(DateRange {
            start: Some(date(start)),
            end: Some(date(end)),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ScorecardCommand {
    /// Create a scorecard: a channel team's payout tied to KPI conditions.
    Create {
        #[arg(long)]
        name: String,
        /// The channel whose team is paid (id or name).
        #[arg(long)]
        channel: String,
        /// ID:KPI:COMPARISON:THRESHOLD[:SCOPE], e.g. `pickups:pickup-sla-hit-rate:at-least:0.9`,
        /// `online:net-sales:increase:10%:kind=e-shop` or `aov:average-order-value:at-least:
        /// 25.00EUR:channel=Livestream`. Comparisons: increase, decrease, at-least, at-most.
        #[arg(long = "condition", required = true)]
        conditions: Vec<String>,
        /// Paid (in basis points of the target payout) when every condition is met.
        #[arg(long, default_value_t = 10000)]
        payout_bps: i32,
    },
    /// Evaluate a scorecard over a period against the period before it.
    Show {
        scorecard: String,
        #[command(flatten)]
        period: Period,
    },
    /// Scorecards, optionally of one channel.
    List {
        #[arg(long)]
        channel: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Create an experiment (a draft until started).
    Create {
        #[arg(long)]
        name: String,
        /// Variant names, the first is the control; equal weights.
        #[arg(long, value_delimiter = ',', required = true)]
        variants: Vec<String>,
        /// conversion or order-value.
        #[arg(long, default_value = "conversion")]
        metric: String,
        /// customer or order.
        #[arg(long, default_value = "customer")]
        subject: String,
        /// Where outcomes come from: recorded (RecordOutcome) or orders.
        #[arg(long, default_value = "recorded")]
        outcomes: String,
        /// Who uses it, e.g. orders.sourcing.
        #[arg(long, default_value = "cli")]
        scope: String,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// Start (running) or stop (stopped) an experiment.
    Status {
        experiment: String,
        /// running or stopped.
        status: String,
    },
    /// The variant of a subject (customer or order id).
    Assign { experiment: String, subject: String },
    /// Record that a subject saw its variant and whether it converted.
    Outcome {
        experiment: String,
        subject: String,
        #[arg(long)]
        converted: bool,
        /// The order value, e.g. 42.00.
        #[arg(long)]
        value: Option<String>,
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// The statistics of an experiment: per variant, the difference with its 95% interval.
    Analyze { experiment: String },
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    match command {
        Command::Report {
            period,
            by_store,
            channels,
        } => {
            let mut channel_ids = Vec::new();
            for c in &channels {
                channel_ids.push(ctx.channel_id(c).await?);
            }
            let response = KpiServiceClient::new(ctx.authed(Service::Performance)?)
                .get_kpi_report(perf::GetKpiReportRequest {
                    range: Some(period.range()?),
                    dimension: if by_store {
                        perf::KpiDimension::Store
                    } else {
                        perf::KpiDimension::Channel
                    } as i32,
                    channel_ids,
                    store_ids: Vec::new(),
                    source: perf::KpiSource::Unspecified as i32,
                })
                .await
                .answer("performance")?;
            let mut names = channel_names(ctx).await;
            if by_store {
                names = ctx
                    .locations()
                    .await?
                    .into_iter()
                    .map(|l| (l.id, l.code))
                    .collect();
            }
            Ok(Output::new(
                to_json(&response, "omni.performance.v1.GetKpiReportResponse"),
                describe_report(&response, &names, by_store),
            ))
        }
        Command::Scorecard(c) => scorecard(ctx, c).await,
        Command::Experiment(c) => experiment(ctx, c).await,
    }
}

/// Channel names by id, for tables (ids when the catalog cannot be read).
pub async fn channel_names(ctx: &Ctx) -> std::collections::HashMap<String, String> {
    use omni_proto::omni::catalog::v1 as cat;
    use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
    let Ok(channel) = ctx.authed(Service::Catalog) else {
        return Default::default();
    };
    ChannelServiceClient::new(channel)
        .list_channels(cat::ListChannelsRequest {
            include_inactive: true,
            page_size: 500,
            ..Default::default()
        })
        .await
        .map(|r| {
            r.into_inner()
                .channels
                .into_iter()
                .map(|c| (c.id, c.name))
                .collect()
        })
        .unwrap_or_default()
}

pub fn describe_report(
    r: &perf::GetKpiReportResponse,
    names: &std::collections::HashMap<String, String>,
    by_store: bool,
) -> String {
    let mut table = Table::new(&[
        if by_store { "store" } else { "channel" },
        "net sales",
        "prev",
        "orders",
        "aov",
        "new cust",
        "conversion",
        "returns",
        "pickup sla",
        "margin",
    ]);
    let mut add = |name: String, row: &perf::KpiRow| {
        let c = row.current.clone().unwrap_or_default();
        let p = row.previous.clone().unwrap_or_default();
        table.row(vec![
            name,
            money(c.net_sales.as_ref()),
            money(p.net_sales.as_ref()),
            c.orders.to_string(),
            money(c.average_order_value.as_ref()),
            c.new_customers.to_string(),
            percent(c.conversion_rate),
            percent(c.return_rate),
            percent(c.pickup_sla_hit_rate),
            money(c.gross_margin.as_ref()),
        ]);
    };
    for row in &r.rows {
        let id = if by_store {
            &row.store_id
        } else {
            &row.channel_id
        };
        let name = names.get(id).cloned().unwrap_or_else(|| or_dash(id));
        add(name, row);
    }
    if let Some(total) = &r.total {
        add("all".to_owned(), total);
    }
    let range = |d: Option<&DateRange>| {
        d.map_or_else(String::new, |d| {
            format!("{} .. {}", day(d.start.as_ref()), day(d.end.as_ref()))
        })
    };
    format!(
        "{} (previous {})\n{}",
        range(r.range.as_ref()),
        range(r.previous_range.as_ref()),
        table.render()
    )
}

async fn scorecard(ctx: &Ctx, command: ScorecardCommand) -> CliResult<Output> {
    let mut client = ScorecardServiceClient::new(ctx.authed(Service::Performance)?);
    match command {
        ScorecardCommand::Create {
            name,
            channel,
            conditions,
            payout_bps,
        } => {
            let mut parsed = Vec::new();
            for c in &conditions {
                parsed.push(condition(ctx, c).await?);
            }
            let response = client
                .create_scorecard(perf::CreateScorecardRequest {
                    idempotency_key: key(),
                    scorecard: Some(perf::Scorecard {
                        name,
                        channel_id: ctx.channel_id(&channel).await?,
                        payout_rules: vec![perf::PayoutRule {
                            condition_ids: parsed.iter().map(|c| c.id.clone()).collect(),
                            min_met: 0,
                            payout_bps,
                        }],
                        conditions: parsed,
                        ..Default::default()
                    }),
                })
                .await
                .answer("performance")?;
            let s = required(response.scorecard, "scorecard")?;
            let mut fields = Fields::new();
            fields
                .add("scorecard", &s.id)
                .add("name", &s.name)
                .add("conditions", s.conditions.len().to_string());
            Ok(Output::new(
                to_json(&s, "omni.performance.v1.Scorecard"),
                fields.render(),
            ))
        }
        ScorecardCommand::Show { scorecard, period } => {
            let range = period.range()?;
            let response = client
                .evaluate_scorecard(perf::EvaluateScorecardRequest {
                    scorecard_id: scorecard,
                    range: Some(range),
                    baseline_range: None,
                })
                .await
                .answer("performance")?;
            let e = required(response.evaluation, "evaluation")?;
            Ok(Output::new(
                to_json(&e, "omni.performance.v1.ScorecardEvaluation"),
                describe_evaluation(&e),
            ))
        }
        ScorecardCommand::List { channel } => {
            let channel_id = match channel {
                Some(c) => ctx.channel_id(&c).await?,
                None => String::new(),
            };
            let response = client
                .list_scorecards(perf::ListScorecardsRequest {
                    channel_id,
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .answer("performance")?;
            let mut table = Table::new(&["scorecard", "name", "channel", "conditions"]);
            for s in &response.scorecards {
                table.row(vec![
                    s.id.clone(),
                    s.name.clone(),
                    s.channel_id.clone(),
                    s.conditions.len().to_string(),
                ]);
            }
            Ok(Output::new(
                json!({"scorecards": list_to_json(&response.scorecards, "omni.performance.v1.Scorecard")}),
                table.render(),
            ))
        }
    }
}

pub fn describe_evaluation(e: &perf::ScorecardEvaluation) -> String {
    let mut table = Table::new(&["condition", "current", "baseline", "change", "met"]);
    for c in &e.conditions {
        table.row(vec![
            if c.label.is_empty() {
                c.condition_id.clone()
            } else {
                c.label.clone()
            },
            figure(c.current.as_ref()),
            figure(c.baseline.as_ref()),
            c.change_bps.map_or_else(
                || "-".to_owned(),
                |b| format!("{:+.1}%", f64::from(b) / 100.0),
            ),
            if c.met { "yes" } else { "no" }.to_owned(),
        ]);
    }
    format!(
        "{}{} of {} conditions met; payout {:.0}% of target\n",
        table.render(),
        e.conditions_met,
        e.conditions.len(),
        f64::from(e.payout_bps) / 100.0
    )
}

fn figure(f: Option<&perf::KpiFigure>) -> String {
    match f.and_then(|f| f.figure.as_ref()) {
        Some(perf::kpi_figure::Figure::Amount(m)) => format_minor(m.minor_units, &m.currency),
        Some(perf::kpi_figure::Figure::Count(n)) => n.to_string(),
        Some(perf::kpi_figure::Figure::Ratio(r)) => format!("{r:.3}"),
        None => "-".to_owned(),
    }
}

/// Parses `ID:KPI:COMPARISON:THRESHOLD[:SCOPE]`.
async fn condition(ctx: &Ctx, text: &str) -> CliResult<perf::ScorecardCondition> {
    let bad = |why: &str| CliError::Usage(format!("--condition {text:?}: {why}"));
    let parts: Vec<&str> = text.splitn(5, ':').collect();
    let [id, kpi, comparison, threshold, rest @ ..] = parts.as_slice() else {
        return Err(bad("expected ID:KPI:COMPARISON:THRESHOLD[:SCOPE]"));
    };
    let kpi = perf::Kpi::from_str_name(&format!(
        "KPI_{}",
        kpi.to_ascii_uppercase().replace('-', "_")
    ))
    .ok_or_else(|| bad("unknown KPI (e.g. net-sales, orders, pickup-sla-hit-rate)"))?;
    let comparison = match *comparison {
        "increase" => perf::Comparison::IncreaseByAtLeast,
        "decrease" => perf::Comparison::DecreaseByAtLeast,
        "at-least" => perf::Comparison::AtLeast,
        "at-most" => perf::Comparison::AtMost,
        _ => return Err(bad("comparison is increase, decrease, at-least or at-most")),
    };
    let threshold = if let Some(p) = threshold.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad("bad percentage"))?;
        perf::scorecard_condition::Threshold::ChangeBps((p * 100.0).round() as i32)
    } else if threshold.len() > 3
        && threshold[threshold.len() - 3..]
            .chars()
            .all(|c| c.is_ascii_uppercase())
    {
        let (amount, currency) = threshold.split_at(threshold.len() - 3);
        perf::scorecard_condition::Threshold::Amount(Money {
            minor_units: parse_amount(amount)?,
            currency: currency.to_owned(),
        })
    } else {
        perf::scorecard_condition::Threshold::Value(
            threshold.parse().map_err(|_| bad("bad threshold"))?,
        )
    };
    let mut condition = perf::ScorecardCondition {
        id: (*id).to_owned(),
        kpi: kpi as i32,
        comparison: comparison as i32,
        threshold: Some(threshold),
        label: text.to_owned(),
        ..Default::default()
    };
    match rest.first().map(|s| s.split_once('=')) {
        None => {}
        Some(Some(("kind", kind))) => {
            condition.channel_kind = crate::commands::customer::channel_kind(kind)? as i32;
        }
        Some(Some(("channel", channel))) => {
            condition.channel_ids = vec![ctx.channel_id(channel).await?];
        }
        Some(_) => return Err(bad("scope is kind=KIND or channel=NAME")),
    }
    Ok(condition)
}

async fn experiment(ctx: &Ctx, command: ExperimentCommand) -> CliResult<Output> {
    let mut client = ExperimentServiceClient::new(ctx.authed(Service::Performance)?);
    match command {
        ExperimentCommand::Create {
            name,
            variants,
            metric,
            subject,
            outcomes,
            scope,
            start,
        } => {
            if variants.len() < 2 {
                return Err(CliError::Usage(
                    "an experiment needs two variants or more".into(),
                ));
            }
            let n = i32::try_from(variants.len()).unwrap_or(i32::MAX);
            let weights: Vec<i32> = (0..n)
                .map(|i| 10_000 / n + i32::from(i < 10_000 % n))
                .collect();
            let metric = match metric.as_str() {
                "conversion" => perf::ExperimentMetric::Conversion,
                "order-value" => perf::ExperimentMetric::OrderValue,
                _ => {
                    return Err(CliError::Usage(
                        "--metric is conversion or order-value".into(),
                    ));
                }
            };
            let subject = match subject.as_str() {
                "customer" => perf::ExperimentSubject::Customer,
                "order" => perf::ExperimentSubject::Order,
                _ => return Err(CliError::Usage("--subject is customer or order".into())),
            };
            let outcomes = match outcomes.as_str() {
                "recorded" => perf::OutcomeSource::Recorded,
                "orders" => perf::OutcomeSource::Orders,
                _ => return Err(CliError::Usage("--outcomes is recorded or orders".into())),
            };
            let mut e = required(
                client
                    .create_experiment(perf::CreateExperimentRequest {
                        idempotency_key: key(),
                        experiment: Some(perf::Experiment {
                            name,
                            scope,
                            subject: subject as i32,
                            control_variant: variants[0].clone(),
                            variants: variants
                                .iter()
                                .zip(weights)
                                .map(|(name, weight_bps)| perf::Variant {
                                    name: name.clone(),
                                    weight_bps,
                                })
                                .collect(),
                            metric: metric as i32,
                            outcome_source: outcomes as i32,
                            ..Default::default()
                        }),
                    })
                    .await
                    .answer("performance")?
                    .experiment,
                "experiment",
            )?;
            if start {
                e = set_status(&mut client, &e.id, perf::ExperimentStatus::Running).await?;
            }
            Ok(experiment_output(&e))
        }
        ExperimentCommand::Status { experiment, status } => {
            let status = match status.as_str() {
                "running" | "start" => perf::ExperimentStatus::Running,
                "stopped" | "stop" => perf::ExperimentStatus::Stopped,
                _ => return Err(CliError::Usage("status is running or stopped".into())),
            };
            let e = set_status(&mut client, &experiment, status).await?;
            Ok(experiment_output(&e))
        }
        ExperimentCommand::Assign {
            experiment,
            subject,
        } => {
            let response = client
                .get_assignment(perf::GetAssignmentRequest {
                    experiment_id: experiment,
                    subject_id: subject.clone(),
                })
                .await
                .answer("performance")?;
            Ok(Output::new(
                to_json(&response, "omni.performance.v1.GetAssignmentResponse"),
                format!(
                    "{subject}: variant {}{}\n",
                    response.variant,
                    if response.running {
                        ""
                    } else {
                        " (not running)"
                    }
                ),
            ))
        }
        ExperimentCommand::Outcome {
            experiment,
            subject,
            converted,
            value,
            currency,
        } => {
            let exposure = client
                .record_exposure(perf::RecordExposureRequest {
                    experiment_id: experiment.clone(),
                    subject_id: subject.clone(),
                    channel_id: String::new(),
                    exposed_at: None,
                })
                .await
                .answer("performance")?;
            let order_value = match value {
                Some(v) => Some(Money {
                    minor_units: parse_amount(&v)?,
                    currency,
                }),
                None => None,
            };
            let outcome = client
                .record_outcome(perf::RecordOutcomeRequest {
                    idempotency_key: key(),
                    experiment_id: experiment,
                    subject_id: subject.clone(),
                    converted,
                    order_value,
                    occurred_at: None,
                })
                .await
                .answer("performance")?;
            Ok(Output::new(
                json!({"subject": subject, "variant": outcome.variant, "exposedVariant": exposure.variant, "converted": converted}),
                format!(
                    "{subject} (variant {}): {}\n",
                    outcome.variant,
                    if converted {
                        "converted"
                    } else {
                        "did not convert"
                    }
                ),
            ))
        }
        ExperimentCommand::Analyze { experiment } => {
            let response = client
                .analyze_experiment(perf::AnalyzeExperimentRequest {
                    experiment_id: experiment,
                    range: None,
                })
                .await
                .answer("performance")?;
            let mut table = Table::new(&["variant", "exposures", "conversions", "rate"]);
            for s in &response.stats {
                table.row(vec![
                    s.variant.clone(),
                    s.exposures.to_string(),
                    s.conversions.to_string(),
                    percent(s.conversion_rate),
                ]);
            }
            let mut human = table.render();
            let mut comparisons =
                Table::new(&["variant", "difference", "95% interval", "p", "significant"]);
            for c in &response.comparisons {
                comparisons.row(vec![
                    c.variant.clone(),
                    format!("{:+.4}", c.difference),
                    format!("[{:.4}, {:.4}]", c.ci_low, c.ci_high),
                    format!("{:.4}", c.p_value),
                    if c.significant { "yes" } else { "no" }.to_owned(),
                ]);
            }
            if !comparisons.is_empty() {
                human.push('\n');
                human.push_str(&comparisons.render());
            }
            human.push_str(&format!(
                "\nverdict: {}{}\n",
                label(response.verdict().as_str_name(), "VERDICT_"),
                if response.summary.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", response.summary)
                }
            ));
            Ok(Output::new(
                to_json(&response, "omni.performance.v1.AnalyzeExperimentResponse"),
                human,
            ))
        }
    }
}

async fn set_status(
    client: &mut ExperimentServiceClient<omni_runtime::client::AuthChannel>,
    id: &str,
    status: perf::ExperimentStatus,
) -> CliResult<perf::Experiment> {
    required(
        client
            .set_experiment_status(perf::SetExperimentStatusRequest {
                experiment_id: id.to_owned(),
                status: status as i32,
            })
            .await
            .answer("performance")?
            .experiment,
        "experiment",
    )
}

fn experiment_output(e: &perf::Experiment) -> Output {
    let mut fields = Fields::new();
    fields
        .add("experiment", &e.id)
        .add("name", &e.name)
        .add(
            "status",
            label(e.status().as_str_name(), "EXPERIMENT_STATUS_"),
        )
        .add(
            "variants",
            e.variants
                .iter()
                .map(|v| format!("{} ({}%)", v.name, f64::from(v.weight_bps) / 100.0))
                .collect::<Vec<_>>()
                .join(", "),
        );
    Output::new(
        to_json(e, "omni.performance.v1.Experiment"),
        fields.render(),
    )
}

fn parse_day(text: &str) -> CliResult<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| CliError::Usage(format!("{text:?}: expected a day as YYYY-MM-DD")))
}

pub fn date(d: NaiveDate) -> Date {
    Date {
        year: d.year(),
        month: i32::try_from(d.month()).unwrap_or(1),
        day: i32::try_from(d.day()).unwrap_or(1),
    }
}

fn day(d: Option<&Date>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
    )
}

/// The channel kind a scope string names, for the demo's scorecard.
pub fn kind_scope(kind: ChannelKind) -> String {
    format!(
        "kind={}",
        label(kind.as_str_name(), "CHANNEL_KIND_").replace(' ', "-")
    )
}
