//! A loopback TCP proxy that a test can cut and restore, to make Postgres, Redis or another
//! service unreachable for one service without stopping the shared server, or slow: every
//! reply held back by a delay, as a saturated dependency answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct TcpProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Milliseconds every reply (target to client) is held back.
    delay_ms: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards connections on a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (cut, cuts) = watch::channel(0u64);
        let accepting = open.clone();
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward(inbound, outbound, delay) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            open,
            delay_ms,
            cut,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Holds back every byte the target sends by `delay` (zero: none), in order, on open and
    /// new connections alike: requests arrive and are acted on at once, replies come late.
    pub fn delay_replies(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// Client to target as it comes; target to client through a queue that releases each chunk
/// once the delay in force when it arrived has passed.
async fn forward(inbound: TcpStream, outbound: TcpStream, delay_ms: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut target_read, mut target_write) = outbound.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut target_write).await;
        let _ = target_write.shutdown().await;
    };
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let replies_in = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match target_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due =
                        Instant::now() + Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                    if queue.send((due, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let replies_out = async {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if client_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, async { tokio::join!(replies_in, replies_out) });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
