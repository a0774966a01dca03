//! The event consumer: reads other services' streams with a Redis consumer group and applies
//! each event exactly once, in batches.
//!
//! Each stream a consumer reads has a reader of its own, with its own blocking connection, and
//! the readers run side by side: on a Redis Cluster the streams may live on different masters,
//! where one `XREADGROUP` over all of them would be refused (`CROSSSLOT`). Events of different
//! streams were never ordered with each other; within a stream they are applied in order.
//!
//! A poll reads up to `batch` entries and applies them in one transaction: one
//! `processed_events` insert for the whole batch tells which events are new (a conflict means
//! "already applied"), the [`Handler`] applies the new ones in stream order, the transaction
//! commits, then one `XACK`. A crash before the commit leaves the entries pending and
//! unapplied; a crash after it leaves them pending but recorded. Either way another consumer (or
//! this one, restarted) reclaims pending entries idle longer than `reclaim_idle` and the outcome
//! is the same: applied once.
//!
//! Failures are of two kinds, told apart by [`is_transient`]:
//!
//! - **transient** (the database or another service unreachable, a pool timeout, a lost race):
//!   nothing is acknowledged and nothing is dead-lettered. The consumer backs off, reports that
//!   it cannot read (health NOT_SERVING, `omni_consumer_up` 0) and retries the same entries from
//!   its own pending list, however long the outage lasts;
//! - **deterministic** (the handler refuses the event, or panics): the batch is retried one
//!   entry at a time, so the others go through; an entry that fails `max_failures` times is moved
//!   to the dead-letter stream (`omni:dead-letters:<group>`) with its error, and acknowledged.
//!   Entries that cannot be decoded go there at once. [`DeadLetters`] lists and replays them.
//!   A group that applies a customer's erasure (`identity.customer_erased`) drops its dead
//!   letters about that customer first ([`forget_dead_letters_about`]): they hold the events'
//!   contact details.
//!
//! When Redis loses its data (a flush, a failover to an empty replica) the group disappears;
//! the next read fails with `NOGROUP`, and the consumer creates the group again from the start
//! of the stream. The outbox relays re-publish what was lost (see [`crate::outbox`]), and
//! `processed_events` skips whatever had been applied already.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use omni_proto::events::Event;
use omni_proto::events::event::Payload;
use prost::Message as _;
use redis::AsyncCommands as _;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::Error;
use crate::metrics::StreamPos;
use crate::redis::{Conn, Redis};

/// Applies events inside the consumer's transaction. Return an error to have them retried
/// (the transaction is rolled back); see the module header for which errors are retried
/// forever and which lead to the dead-letter stream.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Event,
    ) -> impl Future<Output = crate::Result<()>> + Send;

    /// Applies a batch of new events, in stream order, in one transaction. The default
    /// applies them one by one; a handler overrides it to share work between the events of a
    /// batch (e.g. refresh a customer once, not once per event).
    fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Event],
    ) -> impl Future<Output = crate::Result<()>> + Send {
        async move {
            for event in events {
                self.handle(conn, event).await?;
            }
            Ok(())
        }
    }
}

/// Whether a failure may go away by itself (retry without limit) rather than recur for the
/// same event (count it toward the dead-letter stream).
pub fn is_transient(error: &Error) -> bool {
    matches!(error, Error::Unavailable(_) | Error::Aborted(_))
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group, normally the consuming service's name.
    pub group: String,
    /// This instance's name within the group (e.g. the pod name).
    pub name: String,
    /// The emitting services whose streams to read, e.g. `["identity", "orders"]`.
    pub sources: Vec<String>,
    /// Entries read, and applied in one transaction, at a time.
    pub batch: usize,
    pub block: Duration,
    /// Pending entries idle longer than this are taken over from their (presumed dead) owner.
    pub reclaim_idle: Duration,
    /// Deterministic failures of one entry before it is dead-lettered.
    pub max_failures: u32,
}

impl ConsumerConfig {
    pub fn new(group: &str, sources: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            name: format!("{group}-{}", Uuid::now_v7().simple()),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            batch: 256,
            block: Duration::from_millis(500),
            reclaim_idle: Duration::from_secs(30),
            max_failures: 5,
        }
    }

    /// With the batch size and reclaim horizon the service was configured with.
    pub fn tuned(mut self, common: &crate::config::CommonConfig) -> Self {
        self.batch = common.consumer_batch;
        self.reclaim_idle = common.consumer_reclaim_idle;
        self
    }
}

/// The dead-letter stream of a consumer group.
pub fn dead_letter_stream(redis: &Redis, group: &str) -> String {
    redis.key(&format!("omni:dead-letters:{group}"))
}

/// One stream entry, decoded.
struct Entry {
    id: String,
    event: Event,
    event_id: Uuid,
}

/// A consumer group's reader of several streams: one [`StreamReader`] per stream, each with its
/// own blocking connection, run side by side. (One `XREADGROUP` over several streams would need
/// them all in one hash slot of a Redis Cluster; read one by one, they may live on any master.)
pub struct Consumer<H> {
    shared: Shared<H>,
    readers: Vec<StreamReader>,
}

/// What the readers of one consumer share.
struct Shared<H> {
    config: ConsumerConfig,
    pool: PgPool,
    redis: Redis,
    handler: Arc<H>,
}

/// Reads one stream for the group.
struct StreamReader {
    stream: String,
    conn: Conn,
    groups_ready: bool,
    /// Entries of this consumer's own pending list are waiting for a retry.
    own_pending: bool,
    /// Deterministic failures so far, by entry id.
    failures: HashMap<String, u32>,
    /// Whether the last poll could read and apply (health and `omni_consumer_up`).
    up: Arc<AtomicBool>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.shared.config)
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
        let flags = crate::metrics::register_consumer(&config.group, &config.sources, &redis);
        let readers = config
            .sources
            .iter()
            .zip(flags)
            .map(|(source, up)| {
                Ok(StreamReader {
                    stream: redis.event_stream(source),
                    conn: redis.dedicated(config.block)?,
                    groups_ready: false,
                    own_pending: true,
                    failures: HashMap::new(),
                    up,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            shared: Shared {
                config,
                pool,
                redis,
                handler,
            },
            readers,
        })
    }

    /// Consumes until `shutdown`, every stream at once; the batches being applied are finished
    /// first.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { shared, readers } = self;
        let shared = &shared;
        futures::future::join_all(
            readers
                .into_iter()
                .map(|reader| reader.run(shared, shutdown.clone())),
        )
        .await;
    }

    /// One poll of each stream in turn (see [`StreamReader::poll_once`]); returns how many
    /// entries were handled. Each may block up to the configured `block`.
    pub async fn poll_once(&mut self) -> crate::Result<usize> {
        let mut handled = 0;
        for reader in &mut self.readers {
            handled += reader.poll_once(&self.shared).await?;
        }
        Ok(handled)
    }
}

impl StreamReader {
    async fn run<H: Handler>(mut self, shared: &Shared<H>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let step = tokio::select! {
                () = shutdown.cancelled() => return,
                step = self.poll_once(shared) => step,
            };
            match step {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, group = %shared.config.group, stream = %self.stream, "consumer cannot apply events; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Retries this consumer's own pending entries, reclaims stale ones of others, then reads
    /// new ones (blocking up to `block`), applying each batch. Returns how many entries were
    /// handled. An error means the consumer could not read or apply (a transient failure);
    /// the entries concerned stay pending and are retried by the next poll.
    async fn poll_once<H: Handler>(&mut self, shared: &Shared<H>) -> crate::Result<usize> {
        let polled = self.poll(shared).await;
        self.up.store(polled.is_ok(), Ordering::Release);
        match polled {
            Err(Error::Internal(e)) if is_missing_group(&e) => {
                tracing::warn!(group = %shared.config.group, stream = %self.stream, "consumer group missing (Redis lost its data?); creating it again");
                self.groups_ready = false;
                self.own_pending = false;
                Ok(0)
            }
            other => other,
        }
    }

    async fn poll<H: Handler>(&mut self, shared: &Shared<H>) -> crate::Result<usize> {
        if !self.groups_ready {
            self.create_group(&shared.config).await?;
            self.groups_ready = true;
        }
        let mut handled = 0;
        if self.own_pending {
            let own = self.read(&shared.config, "0", None).await?;
            if own.is_empty() {
                self.own_pending = false;
            } else {
                handled += own.len();
                self.apply(shared, own).await?;
            }
        }
        let stale = self.reclaim(&shared.config).await?;
        if !stale.is_empty() {
            handled += stale.len();
            self.apply(shared, stale).await?;
        }
        if !self.own_pending {
            let fresh = self
                .read(&shared.config, ">", Some(shared.config.block))
                .await?;
            handled += fresh.len();
            self.apply(shared, fresh).await?;
        }
        Ok(handled)
    }

    async fn read(
        &mut self,
        config: &ConsumerConfig,
        from: &str,
        block: Option<Duration>,
    ) -> crate::Result<Vec<StreamId>> {
        let mut options = StreamReadOptions::default()
            .group(&config.group, &config.name)
            .count(config.batch);
        if let Some(block) = block {
            options = options.block(block.as_millis() as usize);
        }
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream], &[from], &options)
            .await
            .map_err(redis_error)?;
        Ok(reply
            .map(|r| r.keys)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|stream| stream.ids)
            .collect())
    }

    async fn create_group(&mut self, config: &ConsumerConfig) -> crate::Result<()> {
        // From the start of the stream: a new group catches up on everything retained.
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(&self.stream, &config.group, "0")
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes over entries other (dead) consumers left pending for longer than `reclaim_idle`.
    async fn reclaim(&mut self, config: &ConsumerConfig) -> crate::Result<Vec<StreamId>> {
        let idle_ms = config.reclaim_idle.as_millis() as usize;
        let pending: redis::streams::StreamPendingCountReply = self
            .conn
            .xpending_count(&self.stream, &config.group, "-", "+", config.batch)
            .await
            .map_err(redis_error)?;
        let ids: Vec<&str> = pending
            .ids
            .iter()
            .filter(|p| p.last_delivered_ms >= idle_ms && p.consumer != config.name)
            .map(|p| p.id.as_str())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let claimed: redis::streams::StreamClaimReply = self
            .conn
            .xclaim(&self.stream, &config.group, &config.name, idle_ms, &ids)
            .await
            .map_err(redis_error)?;
        Ok(claimed.ids)
    }

    /// Applies `entries` as one batch; on a deterministic failure, one at a time.
    async fn apply<H: Handler>(
        &mut self,
        shared: &Shared<H>,
        entries: Vec<StreamId>,
    ) -> crate::Result<()> {
        let mut batch = Vec::with_capacity(entries.len());
        for raw in entries {
            match decode(&raw) {
                Ok((event, event_id)) => batch.push(Entry {
                    id: raw.id.clone(),
                    event,
                    event_id,
                }),
                Err(reason) => {
                    let payload = raw.get::<Vec<u8>>("event").unwrap_or_default();
                    self.dead_letter(shared, &raw.id, &payload, None, reason)
                        .await?;
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        match shared.apply_batch(&batch).await {
            Ok(()) => {
                self.forget_erased(shared, &batch).await?;
                return self.ack(&shared.config, &batch).await;
            }
            Err(e) if is_transient(&e) => {
                self.own_pending = true;
                return Err(e);
            }
            Err(e) if batch.len() == 1 => {
                return self
                    .failed(shared, batch.pop().expect("one entry"), e)
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, group = %shared.config.group, entries = batch.len(), "batch refused; applying its events one by one");
            }
        }
        for entry in batch {
            match shared.apply_batch(std::slice::from_ref(&entry)).await {
                Ok(()) => {
                    self.forget_erased(shared, std::slice::from_ref(&entry))
                        .await?;
                    self.ack(&shared.config, std::slice::from_ref(&entry))
                        .await?;
                }
                Err(e) if is_transient(&e) => {
                    self.own_pending = true;
                    return Err(e);
                }
                Err(e) => self.failed(shared, entry, e).await?,
            }
        }
        Ok(())
    }

    /// Counts a deterministic failure; dead-letters the entry when it has failed too often.
    async fn failed<H: Handler>(
        &mut self,
        shared: &Shared<H>,
        entry: Entry,
        error: Error,
    ) -> crate::Result<()> {
        let failures = self.failures.entry(entry.id.clone()).or_insert(0);
        *failures += 1;
        if *failures < shared.config.max_failures {
            tracing::warn!(error = %error, entry = %entry.id, event.id = %entry.event.id, failures = *failures, "event refused; will retry");
            self.own_pending = true;
            return Ok(());
        }
        self.failures.remove(&entry.id);
        let payload = entry.event.encode_to_vec();
        self.dead_letter(
            shared,
            &entry.id,
            &payload,
            Some(&entry.event),
            &error.to_string(),
        )
        .await
    }

    /// Once a customer's erasure is applied, drops the group's dead letters about them (see
    /// [`forget_dead_letters_about`]), before the erasure is acknowledged: should Redis fail
    /// here, the erasure is read again and the dead letters dropped then.
    async fn forget_erased<H: Handler>(
        &mut self,
        shared: &Shared<H>,
        batch: &[Entry],
    ) -> crate::Result<()> {
        for entry in batch {
            if let Some(Payload::CustomerErased(erased)) = &entry.event.payload {
                let ids: Vec<&str> = std::iter::once(erased.customer_id.as_str())
                    .chain(erased.merged_ids.iter().map(String::as_str))
                    .filter(|id| !id.is_empty())
                    .collect();
                let dead = dead_letter_stream(&shared.redis, &shared.config.group);
                let dropped = forget_dead_letters_about(&mut self.conn, &dead, &ids).await?;
                if dropped > 0 {
                    tracing::info!(group = %shared.config.group, dropped, "dead letters about an erased customer dropped");
                }
            }
        }
        Ok(())
    }

    async fn ack(&mut self, config: &ConsumerConfig, batch: &[Entry]) -> crate::Result<()> {
        let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
        for id in &ids {
            self.failures.remove(*id);
        }
        let _: usize = self.conn.xack(&self.stream, &config.group, &ids).await?;
        Ok(())
    }

    /// Adds the entry to the dead-letter stream, then acknowledges it (two commands: the two
    /// streams may live on different nodes of a cluster). A crash between them leaves the entry
    /// pending, to be dead-lettered again; [`DeadLetters::replay`] applies an event once.
    async fn dead_letter<H>(
        &mut self,
        shared: &Shared<H>,
        entry_id: &str,
        payload: &[u8],
        event: Option<&Event>,
        reason: &str,
    ) -> crate::Result<()> {
        tracing::error!(stream = %self.stream, entry = %entry_id, reason, "event moved to dead letters");
        let dead = dead_letter_stream(&shared.redis, &shared.config.group);
        let (event_id, event_type) = event.map_or(("", ""), |e| (e.id.as_str(), e.r#type.as_str()));
        let _: String = self
            .conn
            .xadd(
                &dead,
                "*",
                &[
                    ("stream", self.stream.as_bytes()),
                    ("entry", entry_id.as_bytes()),
                    ("reason", reason.as_bytes()),
                    ("event_id", event_id.as_bytes()),
                    ("event_type", event_type.as_bytes()),
                    ("event", payload),
                ],
            )
            .await?;
        let _: usize = self
            .conn
            .xack(&self.stream, &shared.config.group, &[entry_id])
            .await?;
        Ok(())
    }
}

impl<H: Handler> Shared<H> {
    async fn apply_batch(&self, batch: &[Entry]) -> crate::Result<()> {
        let span = tracing::info_span!(
            "event.consume",
            otel.name = %batch_name(batch),
            consumer = %self.config.group,
            events = batch.len(),
            event.id = tracing::field::Empty,
            event.r#type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let [one] = batch {
            // A single event continues the trace of the call that caused it; a batch links
            // nothing (its events come from many traces) but is one span of its own.
            span.record("event.id", one.event.id.as_str());
            span.record("event.type", one.event.r#type.as_str());
            crate::telemetry::adopt_parent(
                &span,
                crate::telemetry::context_from_trace_headers(
                    &one.event.traceparent,
                    &one.event.tracestate,
                ),
            );
        }
        apply_once(&self.pool, &self.config.group, &*self.handler, batch)
            .instrument(span)
            .await
    }
}

/// Deletes the entries of the dead-letter stream `dead` whose event names any of `ids` (an
/// erased customer and the duplicates merged into it); returns how many. A dead letter keeps
/// the event as it was, contact details included, and an erasure must leave no copy behind;
/// what the event would have applied is erased anyway. An id is matched anywhere in the
/// encoded event (ids are UUIDs, so a match is the customer's).
pub async fn forget_dead_letters_about(
    conn: &mut Conn,
    dead: &str,
    ids: &[&str],
) -> crate::Result<usize> {
    const PAGE: usize = 500;
    let mut start = "-".to_owned();
    let mut doomed: Vec<String> = Vec::new();
    loop {
        let page: redis::streams::StreamRangeReply =
            conn.xrange_count(dead, &start, "+", PAGE).await?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        let full = page.ids.len() == PAGE;
        doomed.extend(page.ids.into_iter().filter_map(|entry| {
            let event = entry.get::<Vec<u8>>("event").unwrap_or_default();
            ids.iter()
                .any(|id| event.windows(id.len()).any(|w| w == id.as_bytes()))
                .then_some(entry.id)
        }));
        if !full {
            break;
        }
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    Ok(conn.xdel(dead, &doomed).await?)
}

fn batch_name(batch: &[Entry]) -> String {
    match batch {
        [one] => format!("consume {}", one.event.r#type),
        _ => format!("consume {} events", batch.len()),
    }
}

fn decode(raw: &StreamId) -> Result<(Event, Uuid), &'static str> {
    let bytes = raw
        .get::<Vec<u8>>("event")
        .ok_or("no event field (or the entry is gone from the stream)")?;
    let event = Event::decode(bytes.as_slice()).map_err(|_| "undecodable event")?;
    let event_id = Uuid::parse_str(&event.id).map_err(|_| "event id is not a uuid")?;
    Ok((event, event_id))
}

/// Applies the events of `batch` not yet recorded for `group`, recording them, in one
/// transaction. A panicking handler counts as a deterministic failure.
async fn apply_once<H: Handler>(
    pool: &PgPool,
    group: &str,
    handler: &H,
    batch: &[Entry],
) -> crate::Result<()> {
    let mut tx = pool.begin().await?;
    // Plan every statement of the batch for its own arrays and today's table sizes. Handlers
    // apply a batch in a few set-based statements (`= ANY($1)`, `UNNEST`), each run once per
    // batch on the consumer's long-lived connection; after five runs Postgres may keep a
    // generic plan, chosen while the tables were small (a sequential scan is cheapest then)
    // and kept until the table is next analyzed. Under a stream of events that can be hours:
    // over 100,000 orders both consumers applied events at a quarter of the rate custom
    // plans give, or less (see the README's `scripts/bench events`). Planning costs a
    // fraction of a millisecond per statement, a few statements per batch.
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(group)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if fresh.is_empty() {
        tracing::debug!("events already applied; skipped");
        return Ok(());
    }
    // The same event may sit in a batch twice (re-published); apply it once, in stream order.
    let mut wanted: std::collections::HashSet<Uuid> = fresh.into_iter().collect();
    let events: Vec<Event> = batch
        .iter()
        .filter(|e| wanted.remove(&e.event_id))
        .map(|e| e.event.clone())
        .collect();
    AssertUnwindSafe(handler.handle_batch(&mut tx, &events))
        .catch_unwind()
        .await
        .map_err(|_| Error::internal("the event handler panicked"))??;
    tx.commit().await?;
    tracing::debug!(applied = events.len(), "events applied");
    Ok(())
}

/// Redis errors of the consumer's reads; a missing group is told apart (see
/// [`is_missing_group`]), the rest map as everywhere.
fn redis_error(e: redis::RedisError) -> Error {
    // NOGROUP: the group is gone; UNBLOCKED: the stream was deleted while the read waited.
    if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) {
        Error::Internal(anyhow::Error::new(MissingGroup))
    } else {
        e.into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the consumer group or its stream does not exist")]
struct MissingGroup;

fn is_missing_group(e: &anyhow::Error) -> bool {
    e.downcast_ref::<MissingGroup>().is_some()
}

/// One dead-lettered event, as [`DeadLetters::list`] shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The entry's id in the dead-letter stream (what [`DeadLetters::replay`] takes).
    pub id: String,
    pub stream: String,
    pub entry: String,
    pub reason: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
}

/// A consumer group's dead letters: listed, and replayed through the group's handler.
pub struct DeadLetters<H> {
    group: String,
    pool: PgPool,
    redis: Redis,
    handler: Arc<H>,
}

impl<H> Clone for DeadLetters<H> {
    fn clone(&self) -> Self {
        Self {
            group: self.group.clone(),
            pool: self.pool.clone(),
            redis: self.redis.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<H> std::fmt::Debug for DeadLetters<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Whether a replay applied the event or found it applied already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    Applied,
    AlreadyApplied,
}

impl<H: Handler> DeadLetters<H> {
    pub fn new(group: &str, pool: PgPool, redis: Redis, handler: Arc<H>) -> Self {
        Self {
            group: group.to_owned(),
            pool,
            redis,
            handler,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Up to `limit` dead letters after the entry `after` ("" from the oldest).
    pub async fn list(&self, after: &str, limit: usize) -> crate::Result<Vec<DeadLetter>> {
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .conn()
            .xrange_count(
                dead_letter_stream(&self.redis, &self.group),
                start,
                "+",
                limit,
            )
            .await?;
        Ok(reply.ids.into_iter().map(dead_letter_of).collect())
    }

    /// Applies the dead letter `id` once (a replay of an event already applied changes
    /// nothing) and removes it from the dead-letter stream.
    pub async fn replay(&self, id: &str) -> crate::Result<Replayed> {
        let found = self.list_one(id).await?;
        let event = Event::decode(found.payload.as_slice()).map_err(|_| {
            Error::precondition(
                "UNDECODABLE",
                format!("dead-letter/{id}"),
                "the dead-lettered entry is not an event and cannot be replayed",
            )
        })?;
        let event_id = Uuid::parse_str(&event.id).map_err(|_| {
            Error::precondition(
                "UNDECODABLE",
                format!("dead-letter/{id}"),
                "the dead-lettered event has no valid id",
            )
        })?;
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2)",
        )
        .bind(&self.group)
        .bind(event_id)
        .fetch_one(&self.pool)
        .await?;
        let entry = Entry {
            id: found.entry,
            event,
            event_id,
        };
        if !seen {
            apply_once(&self.pool, &self.group, &*self.handler, std::slice::from_ref(&entry))
                .await
                .map_err(|e| match e {
                    e if is_transient(&e) => e,
                    Error::Internal(e) => {
                        tracing::error!(error = ?e, dead_letter = id, "replayed event failed again");
                        Error::precondition(
                            "EVENT_REFUSED",
                            format!("dead-letter/{id}"),
                            "the event failed again; it stays in the dead letters (see the service's log)",
                        )
                    }
                    other => Error::precondition(
                        "EVENT_REFUSED",
                        format!("dead-letter/{id}"),
                        format!("the event failed again: {other}"),
                    ),
                })?;
        }
        let _: usize = self
            .redis
            .conn()
            .xdel(dead_letter_stream(&self.redis, &self.group), &[id])
            .await?;
        Ok(if seen {
            Replayed::AlreadyApplied
        } else {
            Replayed::Applied
        })
    }

    async fn list_one(&self, id: &str) -> crate::Result<DeadLetter> {
        let well_formed = id
            .split_once('-')
            .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok());
        if !well_formed {
            return Err(Error::invalid(
                "id",
                "not a dead-letter id (e.g. 1733400000000-0)",
            ));
        }
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .conn()
            .xrange_count(dead_letter_stream(&self.redis, &self.group), id, id, 1)
            .await?;
        reply
            .ids
            .into_iter()
            .next()
            .map(dead_letter_of)
            .ok_or_else(|| Error::not_found_at("id", format!("dead letter {id}")))
    }
}

fn dead_letter_of(e: StreamId) -> DeadLetter {
    let text = |field: &str| e.get::<String>(field).unwrap_or_default();
    DeadLetter {
        stream: text("stream"),
        entry: text("entry"),
        reason: text("reason"),
        event_id: text("event_id"),
        event_type: text("event_type"),
        payload: e.get::<Vec<u8>>("event").unwrap_or_default(),
        id: e.id,
    }
}

/// `omni.events.v1.DeadLetterService` over a group's [`DeadLetters`]; admins only.
#[tonic::async_trait]
impl<H: Handler> omni_proto::events::dead_letter_service_server::DeadLetterService
    for DeadLetters<H>
{
    async fn list_dead_letters(
        &self,
        request: tonic::Request<omni_proto::events::ListDeadLettersRequest>,
    ) -> Result<tonic::Response<omni_proto::events::ListDeadLettersResponse>, tonic::Status> {
        crate::auth::principal(&request)?.require_any(&[crate::auth::Role::Admin])?;
        let req = request.into_inner();
        let size = crate::paging::page_size(req.page_size)?;
        let after = crate::paging::decode_token(&req.page_token)?.unwrap_or_default();
        if !after.is_empty() && StreamPos::parse(&after).is_none() {
            return Err(Error::invalid("page_token", "is not a token this service issued").into());
        }
        let rows = self.list(&after, size as usize).await?;
        let next = crate::paging::next_token(rows.len(), size, rows.last().map(|r| r.id.clone()));
        Ok(tonic::Response::new(
            omni_proto::events::ListDeadLettersResponse {
                dead_letters: rows
                    .into_iter()
                    .map(|d| omni_proto::events::DeadLetter {
                        event: Event::decode(d.payload.as_slice()).ok(),
                        id: d.id,
                        stream: d.stream,
                        entry_id: d.entry,
                        reason: d.reason,
                        event_id: d.event_id,
                        event_type: d.event_type,
                    })
                    .collect(),
                next_page_token: next,
            },
        ))
    }

    async fn replay_dead_letter(
        &self,
        request: tonic::Request<omni_proto::events::ReplayDeadLetterRequest>,
    ) -> Result<tonic::Response<omni_proto::events::ReplayDeadLetterResponse>, tonic::Status> {
        crate::auth::principal(&request)?.require_any(&[crate::auth::Role::Admin])?;
        let id = request.into_inner().id;
        let replayed = self.replay(id.trim()).await?;
        Ok(tonic::Response::new(
            omni_proto::events::ReplayDeadLetterResponse {
                applied: replayed == Replayed::Applied,
            },
        ))
    }
}

/// The health name of [`DeadLetters`]' gRPC service.
pub const DEAD_LETTER_SERVICE: &str = "omni.events.v1.DeadLetterService";

impl<H: Handler> DeadLetters<H> {
    /// The gRPC service, behind the service's verifying interceptor.
    pub fn into_service(
        self,
        auth: crate::auth::ServerAuth,
    ) -> tonic::service::interceptor::InterceptedService<
        omni_proto::events::dead_letter_service_server::DeadLetterServiceServer<Self>,
        crate::auth::ServerAuth,
    > {
        omni_proto::events::dead_letter_service_server::DeadLetterServiceServer::with_interceptor(
            self, auth,
        )
    }
}
