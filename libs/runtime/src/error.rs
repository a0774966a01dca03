//! One error type for every service and its one mapping to `tonic::Status`.
//!
//! Handlers return [`Result`]; the `From<Error> for Status` below decides what the caller sees:
//! bad input becomes `INVALID_ARGUMENT` with `google.rpc.BadRequest` field violations, broken
//! business rules `FAILED_PRECONDITION` with `google.rpc.PreconditionFailure`, and anything
//! unexpected `INTERNAL`, logged with the trace id and sent without internals. Database errors
//! are classified here, once, by SQLSTATE and constraint name, never by matching messages in
//! handlers.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
pub use tonic_types::{FieldViolation, PreconditionViolation};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was written.
    #[error("invalid argument: {}", describe_fields(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named thing does not exist, e.g. `customer 0193…`.
    #[error("{0} not found")]
    NotFound(String),
    /// The thing a request field names does not exist; the caller sees the field.
    #[error("{field}: {what} not found")]
    NotFoundAt { field: String, what: String },
    /// A unique thing already exists; the violation names the field.
    #[error("already exists: {}", describe_fields(.0))]
    AlreadyExists(Vec<FieldViolation>),
    /// A business rule refuses the call in the current state.
    #[error("{message}")]
    FailedPrecondition {
        message: String,
        violations: Vec<PreconditionViolation>,
    },
    /// A concurrent change won (stale version, serialization failure); the caller may retry.
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A dependency (Postgres, Redis, another service) cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller went over a limit; it may try again after `retry_after`.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The most violations one answer carries: they travel in response headers, which HTTP/2
/// peers limit (16 KiB by default); a request with thousands of bad lines gets the first ones.
pub const MAX_REPORTED_VIOLATIONS: usize = 20;

fn describe_fields(violations: &[FieldViolation]) -> String {
    let mut described = violations
        .iter()
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|v| {
            let mut d = format!("{}: {}", v.field, v.description);
            if d.len() > 200 {
                let cut = (0..=200)
                    .rev()
                    .find(|i| d.is_char_boundary(*i))
                    .unwrap_or(0);
                d.truncate(cut);
                d.push('…');
            }
            d
        })
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_REPORTED_VIOLATIONS {
        described.push_str(&format!(
            "; and {} more",
            violations.len() - MAX_REPORTED_VIOLATIONS
        ));
    }
    described
}

/// The violations an answer carries (see [`MAX_REPORTED_VIOLATIONS`]).
fn reported(mut violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    violations.truncate(MAX_REPORTED_VIOLATIONS);
    violations
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// `NOT_FOUND` naming the request field that referred to the missing thing, e.g.
    /// `not_found_at("lines[2].sku_id", "sku 0193…")`.
    pub fn not_found_at(field: impl Into<String>, what: impl Into<String>) -> Self {
        Self::NotFoundAt {
            field: field.into(),
            what: what.into(),
        }
    }

    pub fn already_exists(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::AlreadyExists(vec![FieldViolation::new(field, description)])
    }

    /// A broken business rule: `kind` is a SCREAMING_SNAKE_CASE type (e.g. `STOCK`), `subject`
    /// what it is about (e.g. `sku/ABC-1`).
    pub fn precondition(
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let description = description.into();
        Self::FailedPrecondition {
            message: description.clone(),
            violations: vec![PreconditionViolation::new(kind, subject, description)],
        }
    }

    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::Unauthenticated(reason.into())
    }

    pub fn permission_denied(reason: impl Into<String>) -> Self {
        Self::PermissionDenied(reason.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(anyhow::anyhow!(message.into()))
    }

    /// What another service's refusal means for this service's caller. Caller errors keep
    /// their code and details (field violations, precondition violations), so a bad SKU in a
    /// catalog quote reaches the channel as the same `lines[2].sku_id` violation; an
    /// unreachable or timed-out `dependency`, or a call whose connection broke, is
    /// `UNAVAILABLE`; anything else is this
    /// service's `INTERNAL`, with the dependency's message logged, not sent.
    pub fn from_dependency(dependency: &str, status: &Status) -> Self {
        let details = status.get_error_details();
        let fields = || {
            details
                .bad_request()
                .map(|b| b.field_violations.clone())
                .unwrap_or_default()
        };
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                let mut violations = fields();
                if violations.is_empty() {
                    violations.push(FieldViolation::new("", status.message()));
                }
                Self::InvalidArgument(violations)
            }
            Code::NotFound => match fields().into_iter().next() {
                Some(v) => Self::NotFoundAt {
                    what: v
                        .description
                        .trim_end_matches(" not found")
                        .trim_end_matches(" does not exist")
                        .to_owned(),
                    field: v.field,
                },
                None => Self::NotFound(status.message().trim_end_matches(" not found").to_owned()),
            },
            Code::AlreadyExists => Self::AlreadyExists(fields()),
            Code::FailedPrecondition => Self::FailedPrecondition {
                message: status.message().to_owned(),
                violations: details
                    .precondition_failure()
                    .map(|p| p.violations.clone())
                    .unwrap_or_default(),
            },
            Code::Aborted => Self::Aborted(status.message().to_owned()),
            Code::PermissionDenied | Code::Unauthenticated => Self::Internal(anyhow::anyhow!(
                "{dependency} refused this service's credentials: {}",
                status.message()
            )),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Self::Unavailable(format!("{dependency} is unavailable: {}", status.message()))
            }
            // Made on this side from a broken connection (the replica died mid-call, the
            // stream was reset): as ambiguous as a timeout, and worth a retry elsewhere.
            Code::Unknown if std::error::Error::source(status).is_some() => {
                Self::Unavailable(format!(
                    "{dependency} is unavailable: the connection broke ({})",
                    status.message()
                ))
            }
            _ => Self::Internal(anyhow::anyhow!(
                "{dependency} failed: {:?} {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// Renames every field and precondition subject this error names (e.g. a batch call's
    /// `quotes[3].lines[0].sku_id` back to the caller's own `orders[7].lines[0].sku_id`).
    #[must_use]
    pub fn renamed(self, rename: impl Fn(&str) -> String) -> Self {
        let fields = |violations: Vec<FieldViolation>| {
            violations
                .into_iter()
                .map(|v| FieldViolation::new(rename(&v.field), v.description))
                .collect()
        };
        match self {
            Self::InvalidArgument(violations) => Self::InvalidArgument(fields(violations)),
            Self::AlreadyExists(violations) => Self::AlreadyExists(fields(violations)),
            Self::NotFoundAt { field, what } => Self::NotFoundAt {
                field: rename(&field),
                what,
            },
            Self::FailedPrecondition {
                message,
                violations,
            } => Self::FailedPrecondition {
                message,
                violations: violations
                    .into_iter()
                    .map(|v| {
                        PreconditionViolation::new(v.r#type, rename(&v.subject), v.description)
                    })
                    .collect(),
            },
            other => other,
        }
    }

    /// Prefixes every field this error names with `prefix` (e.g. `customer.` when a nested
    /// request was passed on to another service).
    pub fn within(self, prefix: &str) -> Self {
        // A precondition's subject names a thing (`sku/ABC-1`), not a field of this request.
        if matches!(self, Self::FailedPrecondition { .. }) {
            return self;
        }
        self.renamed(|field| {
            if field.is_empty() {
                prefix.trim_end_matches('.').to_owned()
            } else {
                format!("{prefix}{field}")
            }
        })
    }
}

/// Collects field violations while validating a request, so one call reports all of them.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation of a field-level `Result`, returning its value when valid.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was reported, else `INVALID_ARGUMENT` with every violation.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// Maps database errors: constraint violations become caller errors naming the field (taken
/// from the constraint name, `<table>_<field>_key`/`_fkey`/`_check`), lost races become
/// `ABORTED`, an unreachable database `UNAVAILABLE`, the rest `INTERNAL`.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                let field = constraint_field(
                    db.table().unwrap_or_default(),
                    db.constraint().unwrap_or_default(),
                );
                match db.code().as_deref() {
                    // unique_violation
                    Some("23505") => Error::already_exists(
                        field.clone(),
                        "a record with this value already exists",
                    ),
                    // foreign_key_violation
                    Some("23503") => Error::precondition(
                        "REFERENCE",
                        field.clone(),
                        "refers to a record that does not exist",
                    ),
                    // check_violation
                    Some("23514") => Error::precondition(
                        "CONSTRAINT",
                        field.clone(),
                        "the change would break a rule of the data",
                    ),
                    // serialization_failure, deadlock_detected, lock_not_available
                    Some("40001" | "40P01" | "55P03") => {
                        Error::Aborted("a concurrent change won; retry".into())
                    }
                    // query_canceled: the statement ran past the service's statement_timeout
                    Some("57014") => {
                        Error::Unavailable("the database took too long to answer".into())
                    }
                    // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
                    Some("57P01" | "57P02" | "57P03" | "53300") => {
                        Error::Unavailable("the database is not available".into())
                    }
                    _ => Error::Internal(err.into()),
                }
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Error::Unavailable("the database is not reachable".into()),
            _ => Error::Internal(err.into()),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
            Error::Unavailable("the cache is not reachable".into())
        } else {
            Error::Internal(err.into())
        }
    }
}

/// The field a constraint guards, from Postgres's naming convention: on table `customers`,
/// `customers_phone_key` → `phone`. Other names are returned whole.
fn constraint_field(table: &str, constraint: &str) -> String {
    let trimmed = ["_key", "_fkey", "_check", "_excl"]
        .iter()
        .find_map(|suffix| constraint.strip_suffix(suffix))
        .unwrap_or(constraint);
    trimmed
        .strip_prefix(table)
        .and_then(|rest| rest.strip_prefix('_'))
        .filter(|field| !field.is_empty())
        .unwrap_or(trimmed)
        .to_owned()
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let message = format!("invalid argument: {}", describe_fields(&violations));
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(reported(violations)),
                )
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::NotFoundAt { field, what } => {
                let description = format!("{what} not found");
                Status::with_error_details(
                    Code::NotFound,
                    format!("{field}: {description}"),
                    ErrorDetails::with_bad_request(vec![FieldViolation::new(field, description)]),
                )
            }
            Error::AlreadyExists(violations) => {
                let message = format!("already exists: {}", describe_fields(&violations));
                Status::with_error_details(
                    Code::AlreadyExists,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            Error::FailedPrecondition {
                message,
                violations,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_precondition_failure(violations),
            ),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable(m) => {
                tracing::warn!(reason = %m, "dependency unavailable");
                Status::unavailable(m)
            }
            Error::ResourceExhausted {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Error::Internal(e) => {
                let trace_id = crate::telemetry::current_trace_id();
                tracing::error!(error = ?e, %trace_id, "internal error");
                Status::internal(format!("internal error (trace {trace_id})"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_to_a_dependency_is_unavailable_not_internal() {
        use std::error::Error as _;
        // What tonic makes of a connection that broke mid-call: UNKNOWN, with the cause.
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(broken.source().is_some());
        assert!(matches!(
            Error::from_dependency("catalog", &broken),
            Error::Unavailable(_)
        ));
        // An UNKNOWN the dependency itself answered stays this service's internal error.
        let answered = Status::unknown("something odd");
        assert!(matches!(
            Error::from_dependency("catalog", &answered),
            Error::Internal(_)
        ));
    }

    #[test]
    fn fields_are_renamed_and_nested_where_they_are_named() {
        let fields = |e: &Error| match e {
            Error::InvalidArgument(v) | Error::AlreadyExists(v) => {
                v.iter().map(|v| v.field.clone()).collect::<Vec<_>>()
            }
            Error::NotFoundAt { field, .. } => vec![field.clone()],
            Error::FailedPrecondition { violations, .. } => {
                violations.iter().map(|v| v.subject.clone()).collect()
            }
            _ => Vec::new(),
        };
        let batch = |field: &str| field.replacen("quotes[1]", "orders[7]", 1);
        let invalid = Error::InvalidArgument(vec![
            FieldViolation::new("quotes[1].lines[0].sku_id", "must be a UUID"),
            FieldViolation::new("", "bad"),
        ]);
        assert_eq!(
            fields(&invalid.renamed(batch)),
            ["orders[7].lines[0].sku_id", ""]
        );
        let unlisted = Error::precondition("NOT_LISTED", "quotes[1].lines[0]/sku/TEE", "no");
        assert_eq!(
            fields(&unlisted.renamed(batch)),
            ["orders[7].lines[0]/sku/TEE"]
        );
        let missing = Error::not_found_at("sku_id", "sku 1");
        assert_eq!(fields(&missing.within("lines[2].")), ["lines[2].sku_id"]);
        let whole = Error::invalid("", "is required");
        assert_eq!(fields(&whole.within("customer.")), ["customer"]);
        // A precondition's subject names a thing, not a field: nesting leaves it.
        let stock = Error::precondition("STOCK", "sku/TEE", "short");
        assert_eq!(fields(&stock.within("lines[0].")), ["sku/TEE"]);
    }

    #[test]
    fn constraint_names_become_fields() {
        assert_eq!(
            constraint_field("customers", "customers_phone_key"),
            "phone"
        );
        assert_eq!(
            constraint_field("channel_accounts", "channel_accounts_customer_id_fkey"),
            "customer_id"
        );
        assert_eq!(
            constraint_field("t", "stock_non_negative"),
            "stock_non_negative"
        );
    }

    #[test]
    fn invalid_argument_carries_every_field() {
        let mut v = Violations::new();
        v.add("phone", "not a phone number");
        v.add("name", "must not be empty");
        let status = Status::from(v.finish().unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["phone", "name"]);
    }

    #[test]
    fn internals_are_not_sent() {
        let status = Status::from(Error::Internal(anyhow::anyhow!(
            "relation \"x\" does not exist"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("relation"));
    }
}
