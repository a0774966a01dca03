//! The event consumer: reads other services' streams with a Redis consumer group and applies
//! each event exactly once.
//!
//! For every entry: begin a transaction, insert `(group, event id)` into `processed_events`
//! (a conflict means "already applied": skip), run the [`Handler`] in the same transaction,
//! commit, then `XACK`. A crash before the commit leaves the entry pending and unapplied; a crash
//! after it leaves it pending but recorded. Either way another consumer (or this one, restarted)
//! reclaims pending entries idle longer than `reclaim_idle` and the outcome is the same: applied
//! once. Entries that cannot be decoded, or fail `max_deliveries` times, go to a dead-letter
//! stream (`omni:dead-letters:<group>`) instead of blocking the rest.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use omni_proto::events::Event;
use prost::Message as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::redis::Redis;

/// Applies one event inside the consumer's transaction. Return an error to have the event
/// retried later (the transaction is rolled back).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Event,
    ) -> impl Future<Output = crate::Result<()>> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group, normally the consuming service's name.
    pub group: String,
    /// This instance's name within the group (e.g. the pod name).
    pub name: String,
    /// The emitting services whose streams to read, e.g. `["identity", "orders"]`.
    pub sources: Vec<String>,
    pub batch: usize,
    pub block: Duration,
    /// Pending entries idle longer than this are taken over from their (presumed dead) owner.
    pub reclaim_idle: Duration,
    pub max_deliveries: usize,
}

impl ConsumerConfig {
    pub fn new(group: &str, sources: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            name: format!("{group}-{}", Uuid::now_v7().simple()),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            batch: 64,
            block: Duration::from_millis(500),
            reclaim_idle: Duration::from_secs(30),
            max_deliveries: 10,
        }
    }
}

pub struct Consumer<H> {
    config: ConsumerConfig,
    pool: PgPool,
    redis: Redis,
    conn: ConnectionManager,
    streams: Vec<String>,
    handler: Arc<H>,
    groups_ready: bool,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        config: ConsumerConfig,
        pool: PgPool,
        redis: Redis,
        handler: Arc<H>,
    ) -> anyhow::Result<Self> {
        let conn = redis.dedicated(config.block)?;
        crate::metrics::register_consumer(&config.group, &config.sources, &redis);
        let streams = config
            .sources
            .iter()
            .map(|s| redis.event_stream(s))
            .collect();
        Ok(Self {
            config,
            pool,
            redis,
            conn,
            streams,
            handler,
            groups_ready: false,
        })
    }

    /// Consumes until `shutdown`; the entry being applied is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let step = tokio::select! {
                () = shutdown.cancelled() => return,
                step = self.poll_once() => step,
            };
            match step {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, group = %self.config.group, "consumer failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Reclaims stale pending entries, then reads new ones (blocking up to `block`), applying
    /// each. Returns how many entries were handled.
    pub async fn poll_once(&mut self) -> crate::Result<usize> {
        if !self.groups_ready {
            self.create_groups().await?;
            self.groups_ready = true;
        }
        let mut handled = self.reclaim().await?;
        let ids = vec![">"; self.streams.len()];
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.config.name)
            .count(self.config.batch)
            .block(self.config.block.as_millis() as usize);
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&self.streams, &ids, &options)
            .await?;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                self.apply(&stream.key, &entry).await?;
                handled += 1;
            }
        }
        Ok(handled)
    }

    async fn create_groups(&mut self) -> crate::Result<()> {
        for stream in &self.streams {
            // From the start of the stream: a new group catches up on everything retained.
            let created: redis::RedisResult<()> = self
                .conn
                .xgroup_create_mkstream(stream, &self.config.group, "0")
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Takes over entries other (dead) consumers left pending, dead-lettering those that keep
    /// failing.
    async fn reclaim(&mut self) -> crate::Result<usize> {
        let idle_ms = self.config.reclaim_idle.as_millis() as usize;
        let mut handled = 0;
        for stream in self.streams.clone() {
            let pending: redis::streams::StreamPendingCountReply = self
                .conn
                .xpending_count(&stream, &self.config.group, "-", "+", self.config.batch)
                .await?;
            let stale: Vec<_> = pending
                .ids
                .into_iter()
                .filter(|p| p.last_delivered_ms >= idle_ms)
                .collect();
            if stale.is_empty() {
                continue;
            }
            let ids: Vec<&str> = stale.iter().map(|p| p.id.as_str()).collect();
            let claimed: redis::streams::StreamClaimReply = self
                .conn
                .xclaim(
                    &stream,
                    &self.config.group,
                    &self.config.name,
                    idle_ms,
                    &ids,
                )
                .await?;
            for entry in claimed.ids {
                let deliveries = stale
                    .iter()
                    .find(|p| p.id == entry.id)
                    .map_or(0, |p| p.times_delivered);
                if deliveries >= self.config.max_deliveries {
                    self.dead_letter(&stream, &entry, "delivered too many times")
                        .await?;
                } else {
                    self.apply(&stream, &entry).await?;
                }
                handled += 1;
            }
        }
        Ok(handled)
    }

    async fn apply(&mut self, stream: &str, entry: &StreamId) -> crate::Result<()> {
        let Some(bytes) = entry.get::<Vec<u8>>("event") else {
            return self.dead_letter(stream, entry, "no event field").await;
        };
        let event = match Event::decode(bytes.as_slice()) {
            Ok(event) => event,
            Err(_) => return self.dead_letter(stream, entry, "undecodable event").await,
        };
        let Ok(event_id) = Uuid::parse_str(&event.id) else {
            return self
                .dead_letter(stream, entry, "event id is not a uuid")
                .await;
        };
        let span = tracing::info_span!(
            "event.consume",
            otel.name = %format!("consume {}", event.r#type),
            consumer = %self.config.group,
            event.id = %event.id,
            event.r#type = %event.r#type,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::telemetry::adopt_parent(
            &span,
            crate::telemetry::context_from_trace_headers(&event.traceparent, &event.tracestate),
        );
        let applied = async {
            let mut tx = self.pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.config.group)
            .bind(event_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                self.handler.handle(&mut tx, &event).await?;
                tx.commit().await?;
                tracing::debug!("event applied");
            } else {
                tracing::debug!("event already applied; skipped");
            }
            Ok::<(), crate::Error>(())
        }
        .instrument(span)
        .await;
        match applied {
            Ok(()) => {
                let _: usize = self
                    .conn
                    .xack(stream, &self.config.group, &[&entry.id])
                    .await?;
                Ok(())
            }
            // Left pending: reclaimed and retried after `reclaim_idle`.
            Err(e) => {
                tracing::warn!(error = %e, entry = %entry.id, "event not applied; will retry");
                Ok(())
            }
        }
    }

    async fn dead_letter(
        &mut self,
        stream: &str,
        entry: &StreamId,
        reason: &str,
    ) -> crate::Result<()> {
        tracing::error!(stream, entry = %entry.id, reason, "event moved to dead letters");
        let dead = self
            .redis
            .key(&format!("omni:dead-letters:{}", self.config.group));
        let payload = entry.get::<Vec<u8>>("event").unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.xadd(
            &dead,
            "*",
            &[
                ("stream", stream.as_bytes()),
                ("entry", entry.id.as_bytes()),
                ("reason", reason.as_bytes()),
                ("event", payload.as_slice()),
            ],
        )
        .ignore()
        .xack(stream, &self.config.group, &[&entry.id])
        .ignore();
        pipe.query_async::<()>(&mut self.conn).await?;
        Ok(())
    }
}
