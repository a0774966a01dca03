//! The outbox and the event consumer on real Postgres and Redis: every event reaches the
//! consumer and is applied exactly once, when the relay publishes twice and when a consumer
//! dies mid-batch and another takes over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use omni_proto::events::event::Payload;
use omni_proto::events::{CustomerErased, Event};
use omni_runtime::consumer::{Consumer, ConsumerConfig, Handler};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use redis::AsyncCommands as _;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Counts applications per event; the `stall_at`-th application never finishes (the consumer
/// "dies" there when its task is aborted).
struct Counting {
    calls: AtomicUsize,
    stall_at: Option<usize>,
    stalled: Arc<Notify>,
}

/// Counts one application of `event` in the test's `applied` table.
async fn record(conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
    let id: uuid::Uuid = event.id.parse().map_err(anyhow::Error::from)?;
    sqlx::query(
        "INSERT INTO applied (event_id, times) VALUES ($1, 1) \
         ON CONFLICT (event_id) DO UPDATE SET times = applied.times + 1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

impl Handler for Counting {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        record(conn, event).await?;
        if self.stall_at == Some(n) {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn setup() -> (PgPool, Redis) {
    let url = omni_testkit::fresh_database("events").await.expect("db");
    let pool = PgPool::connect(&url).await.expect("pool");
    omni_runtime::db::migrate(
        &pool,
        sqlx::migrate!("./tests/events/migrations"),
        &CancellationToken::new(),
    )
    .await
    .expect("migrate");
    let redis = Redis::new(
        &omni_testkit::redis_url(),
        &omni_testkit::fresh_redis_prefix(),
    )
    .expect("redis");
    (pool, redis)
}

async fn emit(pool: &PgPool, outbox: &Outbox, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut tx = pool.begin().await.expect("tx");
        let event = outbox
            .add(
                &mut tx,
                "test.customer_erased",
                &format!("customer-{i}"),
                "tester",
                Payload::CustomerErased(CustomerErased {
                    customer_id: format!("customer-{i}"),
                    merged_ids: Vec::new(),
                }),
            )
            .await
            .expect("add");
        tx.commit().await.expect("commit");
        ids.push(event.id);
    }
    ids
}

fn config(name: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new("listener", &["source"]);
    config.name = name.to_owned();
    config.block = Duration::from_millis(50);
    config.batch = 8;
    config.reclaim_idle = Duration::ZERO;
    config
}

async fn applied(pool: &PgPool) -> Vec<(uuid::Uuid, i32)> {
    sqlx::query_as("SELECT event_id, times FROM applied ORDER BY event_id")
        .fetch_all(pool)
        .await
        .expect("applied")
}

#[tokio::test]
async fn every_event_is_applied_exactly_once_across_relay_and_consumer_restarts() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    let ids = emit(&pool, &outbox, 20).await;

    // The relay publishes everything, then "crashes" before marking half of it published:
    // the next run publishes those ten again.
    let relay = outbox.relay(pool.clone(), redis.clone(), Duration::from_millis(20));
    assert_eq!(relay.publish_pending().await.expect("publish"), 20);
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT 10)")
        .execute(&pool)
        .await
        .expect("forget");
    assert_eq!(relay.publish_pending().await.expect("republish"), 10);
    assert_eq!(relay.publish_pending().await.expect("nothing left"), 0);
    let mut conn = redis.conn();
    let stream_len: usize = conn.xlen(relay.stream()).await.expect("xlen");
    assert_eq!(stream_len, 30, "ten events are in the stream twice");

    // Consumer A dies inside its fifth application: the batch it was applying (eight events,
    // one transaction) never commits.
    let stalled = Arc::new(Notify::new());
    let handler_a = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        stall_at: Some(5),
        stalled: stalled.clone(),
    });
    let mut a = Consumer::new(config("a"), pool.clone(), redis.clone(), handler_a).expect("a");
    let dying = tokio::spawn(async move {
        loop {
            a.poll_once().await.expect("poll");
        }
    });
    stalled.notified().await;
    dying.abort();
    let _ = dying.await;
    let half_done = applied(&pool).await;
    assert_eq!(
        half_done.len(),
        0,
        "the batch rolled back as a whole: {half_done:?}"
    );

    // Consumer B takes over A's pending entries and reads the rest.
    let handler_b = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        stall_at: None,
        stalled: Arc::new(Notify::new()),
    });
    let mut b = Consumer::new(config("b"), pool.clone(), redis.clone(), handler_b).expect("b");
    for _ in 0..50 {
        b.poll_once().await.expect("poll");
        let pending: redis::streams::StreamPendingReply = conn
            .xpending(relay.stream(), "listener")
            .await
            .expect("xpending");
        if applied(&pool).await.len() == 20 && pending.count() == 0 {
            break;
        }
    }
    let done = applied(&pool).await;
    assert_eq!(done.len(), 20, "every event applied");
    assert!(
        done.iter().all(|(_, times)| *times == 1),
        "none applied twice: {done:?}"
    );
    let mut expected: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().expect("uuid")).collect();
    expected.sort();
    assert_eq!(done.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = 'listener'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(processed, 20);
}

#[tokio::test]
async fn the_relay_wakes_on_commit_and_stops_on_shutdown() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    let shutdown = CancellationToken::new();
    let relay = outbox.relay(pool.clone(), redis.clone(), Duration::from_secs(3600));
    let stream = relay.stream().to_owned();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    emit(&pool, &outbox, 3).await;
    outbox.wake();
    // The poll interval is an hour: only the wake-up can publish within the wait below (a
    // minute at most, however loaded the machine).
    let mut conn = redis.conn();
    let published = tokio::time::timeout(Duration::from_secs(60), async {
        while conn.xlen::<_, usize>(&stream).await.expect("xlen") < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "the wake-up published the three events");
    assert_eq!(conn.xlen::<_, usize>(&stream).await.expect("xlen"), 3);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the relay stops")
        .expect("join");
}

#[tokio::test]
async fn undecodable_entries_go_to_dead_letters_without_blocking_the_rest() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    let mut conn = redis.conn();
    let stream = redis.event_stream("source");
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[("event", b"\xff\xfe not protobuf".as_slice())],
        )
        .await
        .expect("xadd");
    emit(&pool, &outbox, 2).await;
    outbox
        .relay(pool.clone(), redis.clone(), Duration::from_millis(20))
        .publish_pending()
        .await
        .expect("publish");

    let handler = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        stall_at: None,
        stalled: Arc::new(Notify::new()),
    });
    let mut consumer = Consumer::new(config("c"), pool.clone(), redis.clone(), handler).expect("c");
    for _ in 0..20 {
        consumer.poll_once().await.expect("poll");
        if applied(&pool).await.len() == 2 {
            break;
        }
    }
    assert_eq!(applied(&pool).await.len(), 2);
    let dead: usize = conn
        .xlen(redis.key("omni:dead-letters:listener"))
        .await
        .expect("xlen");
    assert_eq!(dead, 1);
}

/// Applies events like [`Counting`], but refuses (or panics on) the events of `customer-1`
/// (or `customer-2`) while `refuse` is set.
struct Picky {
    refuse: std::sync::atomic::AtomicBool,
}

impl Handler for Picky {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            match event.aggregate_id.as_str() {
                "customer-1" => {
                    return Err(omni_runtime::Error::precondition(
                        "TEST",
                        "customer-1",
                        "refused by the test",
                    ));
                }
                "customer-2" => panic!("the handler panics on customer-2"),
                _ => {}
            }
        }
        record(conn, event).await?;
        Ok(())
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        calls: AtomicUsize::new(0),
        stall_at: None,
        stalled: Arc::new(Notify::new()),
    })
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn assert_each_applied_once(pool: &PgPool, ids: &[String]) {
    let done = applied(pool).await;
    assert!(
        done.iter().all(|(_, times)| *times == 1),
        "none applied twice: {done:?}"
    );
    let mut expected: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().expect("uuid")).collect();
    expected.sort();
    assert_eq!(done.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn a_flushed_redis_loses_no_event_and_the_group_comes_back() {
    let private = omni_testkit::PrivateRedis::start().await.expect("redis");
    let (pool, _) = setup().await;
    let redis = Redis::new(private.url(), &omni_testkit::fresh_redis_prefix()).expect("redis");
    let outbox = Outbox::new("source");
    let relay = outbox.relay(pool.clone(), redis.clone(), Duration::from_millis(20));
    let mut ids = emit(&pool, &outbox, 10).await;
    assert_eq!(relay.publish_pending().await.expect("publish"), 10);

    // The consumer applies four of them, then Redis loses everything.
    let mut first = config("a");
    first.batch = 4;
    let mut consumer =
        Consumer::new(first, pool.clone(), redis.clone(), counting()).expect("consumer");
    assert_eq!(consumer.poll_once().await.expect("poll"), 4);
    private.flush_all().await.expect("flush");

    // More events after the loss: the relay notices, publishes the ten again with the new ones.
    ids.extend(emit(&pool, &outbox, 5).await);
    assert_eq!(relay.publish_pending().await.expect("publish"), 15);
    for _ in 0..20 {
        consumer.poll_once().await.expect("poll");
        if applied(&pool).await.len() == 15 {
            break;
        }
    }
    assert_each_applied_once(&pool, &ids).await;

    // Every group has acknowledged every event: the outbox keeps nothing.
    assert!(
        outbox_rows(&pool).await > 0,
        "published rows kept until consumed"
    );
    relay.delete_consumed().await.expect("cleanup");
    assert_eq!(outbox_rows(&pool).await, 0);
}

#[tokio::test]
async fn a_database_outage_longer_than_the_reclaim_horizon_dead_letters_nothing() {
    let (direct, redis) = setup().await;
    let url = direct.connect_options();
    let target = std::net::SocketAddr::from((
        url.get_host()
            .parse::<std::net::IpAddr>()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        url.get_port(),
    ));
    let proxy = omni_testkit::TcpProxy::start(target).await.expect("proxy");
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy_with(
            (*url)
                .clone()
                .host(&proxy.addr().ip().to_string())
                .port(proxy.addr().port()),
        );
    let outbox = Outbox::new("source");
    let ids = emit(&direct, &outbox, 6).await;
    outbox
        .relay(direct.clone(), redis.clone(), Duration::from_millis(20))
        .publish_pending()
        .await
        .expect("publish");

    // Postgres is gone for the consumer; reclaim_idle is zero, so every poll is past the
    // reclaim horizon and redelivers the pending entries.
    let mut consumer =
        Consumer::new(config("a"), through_proxy, redis.clone(), counting()).expect("consumer");
    proxy.cut();
    for _ in 0..15 {
        let failed = consumer.poll_once().await;
        assert!(
            matches!(failed, Err(omni_runtime::Error::Unavailable(_))),
            "the outage is reported as unavailable: {failed:?}"
        );
    }
    let mut conn = redis.conn();
    let dead = redis.key("omni:dead-letters:listener");
    let dead_count: usize = conn.xlen(&dead).await.expect("xlen");
    assert_eq!(dead_count, 0, "a transient failure never dead-letters");

    proxy.restore();
    for _ in 0..20 {
        consumer.poll_once().await.expect("poll after the outage");
        if applied(&direct).await.len() == 6 {
            break;
        }
    }
    assert_each_applied_once(&direct, &ids).await;
    let dead_count: usize = conn.xlen(&dead).await.expect("xlen");
    assert_eq!(dead_count, 0);
}

#[tokio::test]
async fn refused_events_are_dead_lettered_with_their_error_and_replay_once() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    let ids = emit(&pool, &outbox, 4).await;
    outbox
        .relay(pool.clone(), redis.clone(), Duration::from_millis(20))
        .publish_pending()
        .await
        .expect("publish");
    let handler = Arc::new(Picky {
        refuse: std::sync::atomic::AtomicBool::new(true),
    });
    let mut consumer =
        Consumer::new(config("a"), pool.clone(), redis.clone(), handler.clone()).expect("c");
    let dead_letters = omni_runtime::consumer::DeadLetters::new(
        "listener",
        pool.clone(),
        redis.clone(),
        handler.clone(),
    );
    for _ in 0..30 {
        consumer
            .poll_once()
            .await
            .expect("a refusal is not a consumer failure");
        if dead_letters.list("", 10).await.expect("list").len() == 2 {
            break;
        }
    }
    // The two others went through although they shared a batch with the refused ones.
    assert_eq!(applied(&pool).await.len(), 2);
    let dead = dead_letters.list("", 10).await.expect("list");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead[0].reason.contains("refused by the test"),
        "{:?}",
        dead[0].reason
    );
    assert!(dead[1].reason.contains("panicked"), "{:?}", dead[1].reason);
    assert_eq!(dead[0].event_id, ids[1]);
    assert_eq!(dead[0].event_type, "test.customer_erased");

    // Still refused: the replay fails and the dead letter stays.
    let again = dead_letters.replay(&dead[0].id).await;
    assert!(
        matches!(again, Err(omni_runtime::Error::FailedPrecondition { .. })),
        "{again:?}"
    );
    assert_eq!(dead_letters.list("", 10).await.expect("list").len(), 2);

    handler.refuse.store(false, Ordering::SeqCst);
    use omni_runtime::consumer::Replayed;
    assert_eq!(
        dead_letters.replay(&dead[0].id).await.expect("replay"),
        Replayed::Applied
    );
    assert!(matches!(
        dead_letters.replay(&dead[0].id).await,
        Err(omni_runtime::Error::NotFoundAt { .. })
    ));
    assert!(matches!(
        dead_letters.replay("not-an-id").await,
        Err(omni_runtime::Error::InvalidArgument(_))
    ));
    // An event applied since (here: by hand) is not applied twice by its replay.
    sqlx::query("INSERT INTO processed_events (consumer, event_id) VALUES ('listener', $1)")
        .bind(ids[2].parse::<uuid::Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("mark");
    assert_eq!(
        dead_letters.replay(&dead[1].id).await.expect("replay"),
        Replayed::AlreadyApplied
    );
    assert!(dead_letters.list("", 10).await.expect("list").is_empty());
    let done = applied(&pool).await;
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done.iter().all(|(_, times)| *times == 1));
}

#[tokio::test]
async fn what_every_group_has_acknowledged_leaves_the_stream_and_the_outbox() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    emit(&pool, &outbox, 10).await;
    let relay = outbox.relay(pool.clone(), redis.clone(), Duration::from_millis(20));
    assert_eq!(relay.publish_pending().await.expect("publish"), 10);
    let stream = relay.stream().to_owned();
    let mut conn = redis.conn();
    for group in ["first", "second"] {
        let _: () = conn
            .xgroup_create(&stream, group, "0")
            .await
            .expect("group");
    }
    // "first" reads and acknowledges six events, "second" reads four and acknowledges two.
    let read = async |group: &str, count: usize, ack: usize| {
        let mut conn = redis.conn();
        let reply: redis::streams::StreamReadReply = conn
            .xread_options(
                &[&stream],
                &[">"],
                &redis::streams::StreamReadOptions::default()
                    .group(group, "c")
                    .count(count),
            )
            .await
            .expect("read");
        let ids: Vec<String> = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
        let _: i64 = conn.xack(&stream, group, &ids[..ack]).await.expect("ack");
    };
    read("first", 6, 6).await;
    read("second", 4, 2).await;
    relay.delete_consumed().await.expect("cleanup");
    // Both groups have acknowledged the first two: those go; the third is pending in "second".
    let len: usize = conn.xlen(&stream).await.expect("xlen");
    assert_eq!(len, 8);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(kept, 8);

    read("second", 6, 6).await;
    relay.delete_consumed().await.expect("cleanup");
    // "second" still has its third and fourth pending.
    let len: usize = conn.xlen(&stream).await.expect("xlen");
    assert_eq!(len, 8);
}

/// A pipeline mixing keys of several hash slots answers in its own order: on a Redis Cluster
/// (scripts/test-scale runs this suite on one) it is split by slot and put back together.
#[tokio::test]
async fn a_pipeline_over_several_slots_answers_in_order() {
    let redis = Redis::new(
        &omni_testkit::redis_url(),
        &omni_testkit::fresh_redis_prefix(),
    )
    .expect("redis");
    let keys: Vec<String> = ["{a}:x", "{b}:x", "{c}:x", "{a}:y"]
        .iter()
        .map(|k| redis.key(k))
        .collect();
    let mut pipe = redis::pipe();
    pipe.set(&keys[0], "1")
        .ignore()
        .set(&keys[1], "2")
        .ignore()
        .incr(&keys[2], 3)
        .get(&keys[0])
        .set(&keys[3], "4")
        .ignore()
        .get(&keys[1])
        .incr(&keys[2], 1)
        .get(&keys[3]);
    let replies: (i64, String, String, i64, String) =
        pipe.query_async(&mut redis.conn()).await.expect("pipeline");
    assert_eq!(
        replies,
        (3, "1".into(), "2".into(), 4, "4".into()),
        "each reply in its command's place"
    );
}

/// Records, per event, the plan cache mode its batch runs under.
#[derive(Default)]
struct Planning {
    modes: std::sync::Mutex<Vec<String>>,
}

impl Handler for Planning {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
        let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
            .fetch_one(&mut *conn)
            .await?;
        self.modes.lock().expect("modes").push(mode);
        record(conn, event).await
    }
}

/// A batch's set-based statements are planned for their own arrays and the tables' sizes of
/// the moment, never with a generic plan kept from when the tables were small.
#[tokio::test]
async fn batches_are_planned_for_their_own_arrays() {
    let (pool, redis) = setup().await;
    let outbox = Outbox::new("source");
    let ids = emit(&pool, &outbox, 3).await;
    let relay = outbox.relay(pool.clone(), redis.clone(), Duration::from_millis(20));
    assert_eq!(relay.publish_pending().await.expect("publish"), 3);
    let handler = Arc::new(Planning::default());
    let mut consumer =
        Consumer::new(config("a"), pool.clone(), redis.clone(), handler.clone()).expect("consumer");
    assert_eq!(consumer.poll_once().await.expect("poll"), 3);
    assert_each_applied_once(&pool, &ids).await;
    assert_eq!(
        *handler.modes.lock().expect("modes"),
        vec!["force_custom_plan"; 3]
    );
}
