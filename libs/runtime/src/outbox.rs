//! The transactional outbox: events are written in the same transaction as the change they
//! describe, then a [`Relay`] appends them to the service's Redis stream
//! (`omni:events:<service>`) and marks them published.
//!
//! If the relay stops between appending and marking, the next run appends the same events again;
//! consumers apply each event id once, so a duplicate costs nothing. Several replicas may relay
//! at once: rows are claimed with `FOR UPDATE SKIP LOCKED`.

use std::sync::Arc;
use std::time::Duration;

use omni_proto::events::{Event, event::Payload};
use prost::Message as _;
use redis::streams::StreamMaxlen;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::redis::Redis;

/// Writes a service's events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    source: &'static str,
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox of `source`, the emitting service's name (e.g. `identity`).
    pub fn new(source: &'static str) -> Self {
        Self {
            source,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Records an event in the caller's transaction and returns it. It carries the current
    /// span's trace context, so consumers continue the trace of the call that caused it.
    /// Call [`Outbox::wake`] after the transaction commits.
    pub async fn add(
        &self,
        conn: &mut PgConnection,
        event_type: &str,
        aggregate_id: &str,
        actor_id: &str,
        payload: Payload,
    ) -> Result<Event, sqlx::Error> {
        let (traceparent, tracestate) = crate::telemetry::current_trace_headers();
        let id = Uuid::now_v7();
        let now = std::time::SystemTime::now();
        let event = Event {
            id: id.to_string(),
            r#type: event_type.to_owned(),
            occurred_at: Some(now.into()),
            aggregate_id: aggregate_id.to_owned(),
            source: self.source.to_owned(),
            traceparent,
            tracestate,
            actor_id: actor_id.to_owned(),
            payload: Some(payload),
        };
        sqlx::query("INSERT INTO outbox (event_id, event_type, payload) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(event_type)
            .bind(event.encode_to_vec())
            .execute(conn)
            .await?;
        Ok(event)
    }

    /// Tells this process's relay that committed events are waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The relay that publishes this outbox's events.
    pub fn relay(&self, pool: PgPool, redis: Redis, poll: Duration) -> Relay {
        Relay {
            stream: redis.event_stream(self.source),
            pool,
            redis,
            wake: self.wake.clone(),
            poll,
            batch: 256,
            max_len: 1_000_000,
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Moves committed outbox rows to the service's Redis stream.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    redis: Redis,
    stream: String,
    wake: Arc<Notify>,
    poll: Duration,
    batch: i64,
    /// Streams are trimmed (approximately) to this many entries.
    max_len: usize,
    /// Published rows are deleted after this long.
    retention: Duration,
}

impl Relay {
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Publishes until `shutdown`, waking on [`Outbox::wake`] or every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.poll;
        let mut last_cleanup = tokio::time::Instant::now();
        loop {
            let wait = match self.publish_pending().await {
                Ok(n) if n as i64 == self.batch => Duration::ZERO,
                Ok(_) => {
                    backoff = self.poll;
                    self.poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = tokio::time::Instant::now();
                if let Err(e) = self.delete_published().await {
                    tracing::warn!(error = %e, "outbox cleanup failed");
                }
            }
            if wait.is_zero() {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    // One last pass so events committed during the drain are not left behind.
                    let _ = self.publish_pending().await;
                    return;
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes one batch of unpublished events, in order; returns how many.
    pub async fn publish_pending(&self) -> crate::Result<usize> {
        let span = tracing::debug_span!("outbox.relay", stream = %self.stream);
        async {
            let mut tx = self.pool.begin().await?;
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, payload FROM outbox WHERE published_at IS NULL \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            )
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let mut pipe = redis::pipe();
            for (_, payload) in &rows {
                pipe.xadd_maxlen(
                    &self.stream,
                    StreamMaxlen::Approx(self.max_len),
                    "*",
                    &[("event", payload.as_slice())],
                )
                .ignore();
            }
            pipe.query_async::<()>(&mut self.redis.conn()).await?;
            let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq).collect();
            sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
                .bind(&seqs)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::debug!(count = rows.len(), "published events");
            Ok(rows.len())
        }
        .instrument(span)
        .await
    }

    async fn delete_published(&self) -> Result<(), sqlx::Error> {
        let cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(self.retention).unwrap_or_default();
        sqlx::query("DELETE FROM outbox WHERE published_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}
