//! What every Omni service shares, so each service's own code is only its domain:
//!
//! - [`config`]: typed configuration from the environment, validated at start;
//! - [`telemetry`]: `tracing` with JSON logs, OpenTelemetry spans (OTLP when configured) and
//!   W3C trace-context propagation;
//! - [`server`]: the gRPC host (health, reflection, per-RPC spans, graceful shutdown);
//! - [`client`]: outgoing channels with timeouts, trace injection and the caller's own token;
//! - [`auth`]: Ed25519 JWTs, principals, roles and scopes, the verifying interceptor;
//! - [`error`]: one error type and its mapping to `tonic::Status` with `google.rpc` details;
//! - [`db`], [`redis`]: Postgres with embedded migrations, Redis with a key namespace;
//! - [`outbox`], [`consumer`]: events written in the caller's transaction, relayed to Redis
//!   Streams, and applied once by consumers;
//! - [`idempotency`], [`paging`], [`time`]: retried mutations answered once, keyset page
//!   tokens, times on the wire.

pub mod auth;
pub mod client;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod paging;
pub mod redis;
pub mod server;
pub mod telemetry;
pub mod time;

pub use error::{Error, Result};
