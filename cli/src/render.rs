//! How results and errors look: every command returns an [`Output`] holding both its JSON (for
//! `--json`) and its human rendering, built with the [`Table`] and [`Fields`] helpers here, and
//! every failure is a [`CliError`] rendered with its gRPC status code, message and `google.rpc`
//! details, and mapped to an exit code.

use std::fmt::Write as _;

use omni_proto::common::Money;
use serde_json::{Value, json};
use tonic_types::StatusExt as _;

/// What a command printed: machine and human forms of the same result.
#[derive(Debug)]
pub struct Output {
    pub json: Value,
    pub human: String,
}

impl Output {
    pub fn new(json: Value, human: impl Into<String>) -> Self {
        Self {
            json,
            human: human.into(),
        }
    }
}

/// Exit codes, documented in `omni --help`.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not listed below (including INTERNAL and UNKNOWN answers).
    pub const FAILURE: i32 = 1;
    /// The command line itself is wrong.
    pub const USAGE: i32 = 2;
    /// No usable token, or the service refused it (UNAUTHENTICATED, PERMISSION_DENIED).
    pub const AUTH: i32 = 3;
    /// NOT_FOUND.
    pub const NOT_FOUND: i32 = 4;
    /// The request was refused: INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS,
    /// OUT_OF_RANGE, ABORTED, RESOURCE_EXHAUSTED.
    pub const REFUSED: i32 = 5;
    /// The service could not be reached or did not answer in time (UNAVAILABLE,
    /// DEADLINE_EXCEEDED, CANCELLED), or answered UNIMPLEMENTED.
    pub const UNAVAILABLE: i32 = 6;
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// A bad argument the services were never asked about.
    Usage(String),
    /// No token to call with.
    NotLoggedIn(String),
    /// A service answered with an error status.
    Status {
        service: &'static str,
        status: tonic::Status,
    },
    /// Anything else (files, a story step that did not come true).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::Other(e.into())
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Turns a tonic call result into the message, naming the service in the error.
pub trait Answer<T> {
    fn answer(self, service: &'static str) -> CliResult<T>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self, service: &'static str) -> CliResult<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|status| CliError::Status { service, status })
    }
}

/// `Option<T>` from a response that must carry it.
pub fn required<T>(value: Option<T>, what: &str) -> CliResult<T> {
    value.ok_or_else(|| CliError::Other(anyhow::anyhow!("the answer carried no {what}")))
}

/// The canonical name of a gRPC code, e.g. `FAILED_PRECONDITION`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        use tonic::Code::*;
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::NotLoggedIn(_) => exit::AUTH,
            Self::Other(_) => exit::FAILURE,
            Self::Status { status, .. } => match status.code() {
                Unauthenticated | PermissionDenied => exit::AUTH,
                NotFound => exit::NOT_FOUND,
                InvalidArgument | FailedPrecondition | AlreadyExists | OutOfRange | Aborted
                | ResourceExhausted => exit::REFUSED,
                Unavailable | DeadlineExceeded | Cancelled | Unimplemented => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            },
        }
    }

    /// The error as JSON: `{"error": {"code", "message", "service", details...}}`.
    pub fn to_json(&self) -> Value {
        let error = match self {
            Self::Usage(message) => json!({"code": "USAGE", "message": message}),
            Self::NotLoggedIn(message) => json!({"code": "NOT_LOGGED_IN", "message": message}),
            Self::Other(e) => json!({"code": "FAILURE", "message": format!("{e:#}")}),
            Self::Status { service, status } => {
                let details = status.get_error_details();
                let mut error = json!({
                    "service": service,
                    "code": code_name(status.code()),
                    "message": status.message(),
                });
                if let Some(bad) = details.bad_request() {
                    error["fieldViolations"] = bad
                        .field_violations
                        .iter()
                        .map(|v| json!({"field": v.field, "description": v.description}))
                        .collect();
                }
                if let Some(failure) = details.precondition_failure() {
                    error["preconditionViolations"] = failure
                        .violations
                        .iter()
                        .map(|v| {
                            json!({"type": v.r#type, "subject": v.subject, "description": v.description})
                        })
                        .collect();
                }
                if let Some(info) = details.error_info() {
                    error["errorInfo"] = json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata});
                }
                if let Some(info) = details.resource_info() {
                    error["resourceInfo"] = json!({
                        "resourceType": info.resource_type,
                        "resourceName": info.resource_name,
                        "description": info.description,
                    });
                }
                if let Some(info) = details.request_info() {
                    error["requestInfo"] =
                        json!({"requestId": info.request_id, "servingData": info.serving_data});
                }
                error
            }
        };
        json!({ "error": error })
    }

    /// The error for people: a first line with the code and message, then one line per detail.
    pub fn human(&self) -> String {
        match self {
            Self::Usage(message) => format!("error: {message}\n"),
            Self::NotLoggedIn(message) => format!("error: {message}\n"),
            Self::Other(e) => format!("error: {e:#}\n"),
            Self::Status { service, status } => {
                let mut out = format!(
                    "error: {service} answered {}: {}\n",
                    code_name(status.code()),
                    status.message()
                );
                let details = status.get_error_details();
                if let Some(bad) = details.bad_request() {
                    for v in &bad.field_violations {
                        let _ = writeln!(out, "  field {}: {}", v.field, v.description);
                    }
                }
                if let Some(failure) = details.precondition_failure() {
                    for v in &failure.violations {
                        let _ = writeln!(
                            out,
                            "  precondition {} ({}): {}",
                            v.r#type, v.subject, v.description
                        );
                    }
                }
                if let Some(info) = details.error_info() {
                    let _ = writeln!(out, "  reason {} ({})", info.reason, info.domain);
                }
                if let Some(info) = details.resource_info() {
                    let _ = writeln!(
                        out,
                        "  resource {} {}: {}",
                        info.resource_type, info.resource_name, info.description
                    );
                }
                if let Some(info) = details.request_info() {
                    let _ = writeln!(out, "  request id {}", info.request_id);
                }
                if let Some(help) = details.help() {
                    for link in &help.links {
                        let _ = writeln!(out, "  see {} ({})", link.url, link.description);
                    }
                }
                match status.code() {
                    tonic::Code::Unauthenticated => {
                        out.push_str("  hint: your token may have expired; run `omni login`\n");
                    }
                    tonic::Code::Unavailable => {
                        let _ = writeln!(
                            out,
                            "  hint: is {service} running? (scripts/dev-up, or --endpoint {service}=URL)"
                        );
                    }
                    _ => {}
                }
                out
            }
        }
    }
}

/// `12.34 EUR`; `-` when unset. Minor units are shown with two decimals.
pub fn money(m: Option<&Money>) -> String {
    m.map_or_else(
        || "-".to_owned(),
        |m| format_minor(m.minor_units, &m.currency),
    )
}

pub fn format_minor(minor_units: i64, currency: &str) -> String {
    let sign = if minor_units < 0 { "-" } else { "" };
    let abs = minor_units.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

/// A timestamp as `2026-11-23 22:55:01Z`; `-` when unset.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
}

/// An enum value's proto name without its prefix, lower case: `ORDER_STATUS_READY_FOR_PICKUP`
/// → `ready for pickup`.
pub fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_lowercase()
        .replace('_', " ")
}

/// A ratio (0.25) as a percentage (`25.0%`); `-` when unset.
pub fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// `-` for an empty string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// A plain text table: a header row, aligned columns two spaces apart.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(
            &self
                .header
                .iter()
                .map(|h| h.to_uppercase())
                .collect::<Vec<_>>(),
        );
        for row in &self.rows {
            line(row);
        }
        out
    }
}

/// `name: value` lines with the names aligned.
#[derive(Debug, Default)]
pub struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.pairs.push((name.to_owned(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let width = self.pairs.iter().map(|(n, _)| n.len()).max().unwrap_or(0) + 1;
        let mut out = String::new();
        for (name, value) in &self.pairs {
            let _ = writeln!(out, "{:<width$} {value}", format!("{name}:"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["sku", "available"]);
        t.row(vec!["TEE-M".into(), "12".into()]);
        t.row(vec!["MUG".into(), "3".into()]);
        assert_eq!(t.render(), "SKU    AVAILABLE\nTEE-M  12\nMUG    3\n");
    }

    #[test]
    fn money_keeps_two_decimals_and_the_sign() {
        assert_eq!(format_minor(-1205, "EUR"), "-12.05 EUR");
        assert_eq!(format_minor(7, "EUR"), "0.07 EUR");
    }

    #[test]
    fn status_details_are_rendered_and_mapped_to_exit_codes() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("lines[0].quantity", "must be at least 1");
        details.add_precondition_failure_violation("STOCK_SHORTAGE", "sku/1", "2 short");
        let status =
            tonic::Status::with_error_details(tonic::Code::FailedPrecondition, "refused", details);
        let e = CliError::Status {
            service: "order-management",
            status,
        };
        assert_eq!(e.exit_code(), exit::REFUSED);
        let human = e.human();
        assert!(human.contains("FAILED_PRECONDITION: refused"), "{human}");
        assert!(human.contains("field lines[0].quantity: must be at least 1"));
        assert!(human.contains("precondition STOCK_SHORTAGE (sku/1): 2 short"));
        let json = e.to_json();
        assert_eq!(
            json["error"]["preconditionViolations"][0]["type"],
            "STOCK_SHORTAGE"
        );
        assert_eq!(
            json["error"]["fieldViolations"][0]["field"],
            "lines[0].quantity"
        );
    }
}
