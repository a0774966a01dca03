//! The transactional outbox: events are written in the same transaction as the change they
//! describe, then a [`Relay`] appends them to the service's Redis stream
//! (`omni:events:{<service>}`) and marks them published.
//!
//! If the relay stops between appending and marking, the next run appends the same events again;
//! consumers apply each event id once, so a duplicate costs nothing. Several replicas may relay
//! at once: rows are claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! Nothing is lost when Redis loses its data (a flush, a failover to an empty replica):
//!
//! - a published row is kept, with the stream position it was published at, until every
//!   consumer group of the stream has acknowledged that position (or for `retention`, a week,
//!   for a group that stopped consuming); rows are deleted when they are known consumed, and
//!   the stream is trimmed to the same point, so Redis keeps no event every group has applied
//!   (an erased customer's data does not outlive its erasure there);
//! - the relay keeps a marker key beside the stream (`omni:events:{<service>}:relay`). When the
//!   marker is gone, Redis has lost what it held: the relay sets it again and marks every kept
//!   row unpublished, so they are all published again (consumers skip those they had applied,
//!   and recreate their groups from the start of the new stream).

use std::sync::Arc;
use std::time::Duration;

use omni_proto::events::{Event, event::Payload};
use prost::Message;
use redis::streams::StreamMaxlen;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::metrics::StreamPos;
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

    /// Rewrites, in the caller's transaction, the kept events of `event_type` that `edit`
    /// changes (it returns whether it did): erasing a customer removes their personal data
    /// from the events not yet known consumed. Returns how many were rewritten. A copy already
    /// in the stream stays there until every group has acknowledged it (see
    /// [`Relay::delete_consumed`]).
    pub async fn redact(
        &self,
        conn: &mut PgConnection,
        event_type: &str,
        mut edit: impl FnMut(&mut Event) -> bool,
    ) -> crate::Result<u64> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, payload FROM outbox WHERE event_type = $1 ORDER BY seq FOR UPDATE",
        )
        .bind(event_type)
        .fetch_all(&mut *conn)
        .await?;
        let mut rewritten = 0;
        for (seq, payload) in rows {
            let Ok(mut event) = Event::decode(payload.as_slice()) else {
                continue;
            };
            if edit(&mut event) {
                sqlx::query("UPDATE outbox SET payload = $2 WHERE seq = $1")
                    .bind(seq)
                    .bind(event.encode_to_vec())
                    .execute(&mut *conn)
                    .await?;
                rewritten += 1;
            }
        }
        Ok(rewritten)
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
            retention: Duration::from_secs(7 * 24 * 3600),
            cleanup_every: Duration::from_secs(5),
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
    /// Published rows are deleted once every group has acknowledged them, or after this long
    /// (a group that stopped consuming does not keep them forever).
    retention: Duration,
    cleanup_every: Duration,
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
            if last_cleanup.elapsed() > self.cleanup_every {
                last_cleanup = tokio::time::Instant::now();
                if let Err(e) = self.delete_consumed().await {
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

    /// Publishes one batch of unpublished events, in order; returns how many. First checks
    /// that Redis still holds what was published before (see the module header).
    pub async fn publish_pending(&self) -> crate::Result<usize> {
        let span = tracing::debug_span!("outbox.relay", stream = %self.stream);
        async {
            self.recover_lost().await?;
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
                );
            }
            let ids: Vec<String> = pipe.query_async(&mut self.redis.conn()).await?;
            let (mut seqs, mut ms, mut seq_in_ms) = (Vec::new(), Vec::new(), Vec::new());
            for ((seq, _), id) in rows.iter().zip(&ids) {
                let pos = StreamPos::parse(id).ok_or_else(|| {
                    crate::Error::internal(format!("Redis answered XADD with {id:?}"))
                })?;
                seqs.push(*seq);
                ms.push(pos.ms);
                seq_in_ms.push(pos.seq);
            }
            sqlx::query(
                "UPDATE outbox SET published_at = now(), stream_ms = p.ms, stream_seq = p.seq \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS p(row_seq, ms, seq) \
                 WHERE outbox.seq = p.row_seq",
            )
            .bind(&seqs)
            .bind(&ms)
            .bind(&seq_in_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::debug!(count = rows.len(), "published events");
            Ok(rows.len())
        }
        .instrument(span)
        .await
    }

    /// When Redis no longer holds the relay's marker, it has lost its data: every kept row is
    /// marked unpublished so the next batches publish it again.
    async fn recover_lost(&self) -> crate::Result<()> {
        let marker = format!("{}:relay", self.stream);
        let fresh: Option<String> = redis::cmd("SET")
            .arg(&marker)
            .arg(chrono::Utc::now().to_rfc3339())
            .arg("NX")
            .query_async(&mut self.redis.conn())
            .await?;
        if fresh.is_none() {
            return Ok(());
        }
        let again = sqlx::query(
            "UPDATE outbox SET published_at = NULL, stream_ms = NULL, stream_seq = NULL \
             WHERE published_at IS NOT NULL",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        if again > 0 {
            tracing::warn!(
                stream = %self.stream,
                events = again,
                "Redis lost the event stream; publishing the events not known consumed again"
            );
        }
        Ok(())
    }

    /// Deletes published rows every consumer group has acknowledged, and rows past retention,
    /// and trims the stream the same way: an entry every group has acknowledged, or older than
    /// retention, leaves Redis too. The stream then holds only what some group still has to
    /// read, so what an event carried is gone from Redis once it has been applied everywhere
    /// (the outbox rows, kept until then, are what a Redis data loss is recovered from).
    pub async fn delete_consumed(&self) -> crate::Result<()> {
        let groups = crate::metrics::groups(&self.redis, &self.stream).await?;
        // Everything before the oldest pending entry and up to the last delivered one is
        // acknowledged by a group; the bound is the lowest over all groups.
        let bound = groups
            .iter()
            .map(|(_, g)| match g.oldest_pending {
                Some(p) => (p, false),
                None => (g.last_delivered, true),
            })
            .min();
        let cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(self.retention).unwrap_or_default();
        // Entries below this id are acknowledged by every group, or past retention.
        let mut keep_from = StreamPos {
            ms: cutoff.timestamp_millis(),
            seq: 0,
        };
        if let Some((pos, inclusive)) = bound {
            let first_unacknowledged = if inclusive {
                StreamPos {
                    ms: pos.ms,
                    seq: pos.seq.saturating_add(1),
                }
            } else {
                pos
            };
            keep_from = keep_from.max(first_unacknowledged);
            let op = if inclusive { "<=" } else { "<" };
            // `op` is one of the two constants above, never input.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM outbox WHERE published_at IS NOT NULL \
                 AND (stream_ms, stream_seq) {op} ($1, $2)"
            )))
            .bind(pos.ms)
            .bind(pos.seq)
            .execute(&self.pool)
            .await?;
        }
        sqlx::query("DELETE FROM outbox WHERE published_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        // Exact trimming (`=`): an acknowledged entry must not linger by the approximation.
        let _: i64 = redis::cmd("XTRIM")
            .arg(&self.stream)
            .arg("MINID")
            .arg("=")
            .arg(keep_from.to_string())
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }
}
