//! The TCP accept path: accepts connections itself (rather than leaving it to tonic), so that
//! it can cap the number of open connections, run the TLS handshake under a timeout, and count
//! and log what it refuses; finished streams go to tonic through `serve_with_incoming`.
//!
//! Owns: the accept loop, the connection limit, the TLS handshake and its timeout, the
//! [`ListenerCounters`], and the HTTP/2 settings every listener's server shares
//! ([`server_builder`]). Must never look into requests, authenticate callers (the API layer
//! reads the verified peer certificates that the handshake leaves on the stream) or touch the
//! service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::config::ServerConfig;

/// How long hyper waits for the answer to an HTTP/2 keepalive PING before closing.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Warning lines per second about refused connections, per kind; the rest are counted and
/// summed up in the next line that is written.
const WARNINGS_PER_SECOND: u32 = 5;

/// What the TCP listener accepted and refused since start: read by the operations endpoint
/// (and tests). Monotonic counters, except `open`.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// TCP connections accepted under the limit (handshakes started).
    accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    refused_over_limit: AtomicU64,
    /// TLS handshakes that failed (no or untrusted client certificate, garbage, a peer that
    /// hung up).
    handshake_failed: AtomicU64,
    /// TLS handshakes not finished within `handshake_timeout_ms`.
    handshake_timed_out: AtomicU64,
    /// Connections open now (handshaking or established).
    open: AtomicU64,
    /// Accept errors (such as running out of file descriptors).
    accept_errors: AtomicU64,
}

/// A copy of [`ListenerCounters`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerCounts {
    /// TCP connections accepted under the limit.
    pub accepted: u64,
    /// Connections closed at once because the limit was reached.
    pub refused_over_limit: u64,
    /// TLS handshakes that failed.
    pub handshake_failed: u64,
    /// TLS handshakes that timed out.
    pub handshake_timed_out: u64,
    /// Connections open now.
    pub open: u64,
    /// Accept errors.
    pub accept_errors: u64,
}

impl ListenerCounters {
    /// The counters now (each read on its own; they may be a request apart).
    pub fn snapshot(&self) -> ListenerCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerCounts {
            accepted: get(&self.accepted),
            refused_over_limit: get(&self.refused_over_limit),
            handshake_failed: get(&self.handshake_failed),
            handshake_timed_out: get(&self.handshake_timed_out),
            open: get(&self.open),
            accept_errors: get(&self.accept_errors),
        }
    }

    /// Handshakes refused for any reason (failed or timed out).
    pub fn handshakes_refused(&self) -> u64 {
        let s = self.snapshot();
        s.handshake_failed + s.handshake_timed_out
    }
}

/// The limits of one listener, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Limits {
    /// The limits `[server]` sets.
    pub fn of(server: &ServerConfig) -> Limits {
        Limits {
            max_connections: server.max_connections,
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
        }
    }
}

/// A tonic server builder with the HTTP/2 settings of `[server]` (streams per connection,
/// keepalive) and the per-connection request limit; the same for every listener.
pub fn server_builder(server: &ServerConfig) -> tonic::transport::Server {
    let keepalive =
        (server.keepalive_seconds > 0).then(|| Duration::from_secs(server.keepalive_seconds));
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(server.concurrency_per_connection)
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// A connection handed to tonic: the stream, and its slot under `max_connections`, freed when
/// tonic drops the connection.
pub struct Limited<S> {
    /// The TLS (or, with `danger_plaintext`, TCP) stream.
    inner: S,
    /// The connection's slot.
    _slot: Slot,
}

/// One slot under the connection limit; counts the connection as open while it lives.
struct Slot {
    /// The semaphore permit that is the slot.
    _permit: OwnedSemaphorePermit,
    /// Where `open` is counted down.
    counters: Arc<ListenerCounters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Connected> Connected for Limited<S> {
    // The inner stream's info: for TLS that carries the verified peer certificates, which the
    // API layer reads as the caller's identity (`Request::peer_certs`).
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream of established connections tonic serves.
pub type Incoming<S> = ReceiverStream<std::io::Result<Limited<S>>>;

/// Accept TLS connections on `listener` until `stop` completes (or tonic stops reading):
/// at most `limits.max_connections` open, each handshake within `limits.handshake_timeout`.
/// Each handshake uses the TLS configuration in effect when its connection was accepted, so
/// a reload ([`super::reload`]) reaches new connections and leaves established ones alone.
pub fn tls(
    listener: TcpListener,
    config: Arc<super::reload::CurrentTls>,
    limits: Limits,
    counters: Arc<ListenerCounters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Incoming<tokio_rustls::server::TlsStream<TcpStream>> {
    accept(listener, limits, counters, stop, move |tcp| {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.get());
        async move { acceptor.accept(tcp).await }
    })
}

/// Accept plain TCP connections (`danger_plaintext`), at most `limits.max_connections` open.
pub fn plain(
    listener: TcpListener,
    limits: Limits,
    counters: Arc<ListenerCounters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Incoming<TcpStream> {
    accept(
        listener,
        limits,
        counters,
        stop,
        |tcp| async move { Ok(tcp) },
    )
}

/// The accept loop, on its own task: take a slot or close the connection at once, then run
/// `handshake` on a task of its own under the timeout and pass the result on.
fn accept<S, H, F>(
    listener: TcpListener,
    limits: Limits,
    counters: Arc<ListenerCounters>,
    stop: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) -> Incoming<S>
where
    S: Send + 'static,
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = std::io::Result<S>> + Send + 'static,
{
    warn_if_few_open_files(limits.max_connections);
    // A connection waits here only between its handshake and tonic picking it up.
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        let over_limit = Throttle::new();
        let refused = Arc::new(Throttle::new());
        let accept_failed = Throttle::new();
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                () = tx.closed() => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(more) = accept_failed.admit() {
                        tracing::warn!(error = %e, not_logged_before = more, "cannot accept a connection");
                    }
                    // Out of file descriptors (or similar): give closing connections a moment
                    // rather than spinning on the same error.
                    if !is_per_connection(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = over_limit.admit() {
                    tracing::warn!(
                        %peer,
                        max_connections = limits.max_connections,
                        refused_total = counters.snapshot().refused_over_limit,
                        not_logged_before = more,
                        "connection refused: too many open connections"
                    );
                }
                drop(tcp);
                continue;
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            counters.open.fetch_add(1, Ordering::Relaxed);
            let slot = Slot {
                _permit: permit,
                counters: Arc::clone(&counters),
            };
            let _ = tcp.set_nodelay(true);
            let (tx, counters, refused) = (tx.clone(), Arc::clone(&counters), Arc::clone(&refused));
            let handshake = handshake(tcp);
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Ok(Limited {
                                inner: stream,
                                _slot: slot,
                            }))
                            .await;
                        return;
                    }
                    Ok(Err(e)) => {
                        counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                        e.to_string()
                    }
                    Err(_) => {
                        counters.handshake_timed_out.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "not finished within {} ms",
                            limits.handshake_timeout.as_millis()
                        )
                    }
                };
                if let Some(more) = refused.admit() {
                    tracing::warn!(
                        %peer,
                        %reason,
                        handshakes_refused = counters.handshakes_refused(),
                        not_logged_before = more,
                        "TLS handshake refused"
                    );
                }
            });
        }
        tracing::debug!("TCP listener closed");
    });
    ReceiverStream::new(rx)
}

/// File descriptors the daemon needs besides its connections (device sessions, logs, the
/// audit file, the runtime).
const OTHER_FILES: u64 = 64;

/// Warn at start when the soft open-file limit cannot hold `max_connections`: connections
/// below the limit would then fail in `accept` (EMFILE) rather than be served.
fn warn_if_few_open_files(max_connections: usize) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| open_files_soft_limit(&l))
    else {
        return;
    };
    let need = max_connections as u64 + OTHER_FILES;
    if soft < need {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below server.max_connections + {OTHER_FILES}: raise it (systemd LimitNOFILE={need}) or lower max_connections"
        );
    }
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None`: unlimited or absent).
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Errors of one connection that the next `accept` does not repeat.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Rate-limits one kind of warning: [`WARNINGS_PER_SECOND`] lines per second; the lines left
/// out are counted and reported by the next line written.
struct Throttle {
    /// Start of the current second, lines written in it, lines left out since the last one.
    state: std::sync::Mutex<(Instant, u32, u64)>,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            state: std::sync::Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines left out before this one)` when this line may be written.
    fn admit(&self) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, written, skipped) = &mut *s;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *written = 0;
        }
        if *written < WARNINGS_PER_SECOND {
            *written += 1;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_stream::StreamExt as _;

    async fn bound() -> Result<(TcpListener, std::net::SocketAddr), std::io::Error> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let a = l.local_addr()?;
        Ok((l, a))
    }

    /// Read until the peer closes (or resets) the connection, for at most 5 s.
    async fn closed(tcp: &mut TcpStream) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_a_freed_slot_is_taken_again()
    -> Result<(), Box<dyn std::error::Error>> {
        let (listener, addr) = bound().await?;
        let counters = Arc::new(ListenerCounters::default());
        let limits = Limits {
            max_connections: 1,
            handshake_timeout: Duration::from_secs(5),
        };
        let mut incoming = plain(
            listener,
            limits,
            Arc::clone(&counters),
            std::future::pending(),
        );
        let _first = TcpStream::connect(addr).await?;
        let held = incoming.next().await.ok_or("stream ended")??;
        let mut second = TcpStream::connect(addr).await?;
        assert!(
            closed(&mut second).await,
            "the second connection stayed open"
        );
        let s = counters.snapshot();
        assert_eq!((s.accepted, s.refused_over_limit, s.open), (1, 1, 1));
        // Dropping the served connection frees its slot.
        drop(held);
        assert_eq!(counters.snapshot().open, 0);
        let _third = TcpStream::connect(addr).await?;
        let again = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await?
            .ok_or("stream ended")??;
        let s = counters.snapshot();
        assert_eq!((s.accepted, s.refused_over_limit, s.open), (2, 1, 1));
        drop(again);
        Ok(())
    }

    #[tokio::test]
    async fn failed_and_stalled_handshakes_are_counted() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let pki = crate::tls::DevPki::in_dir(dir.path());
        pki.ensure()?;
        let config = crate::tls::server_config(
            &pki.server_cert,
            &pki.server_key,
            std::slice::from_ref(&pki.ca),
        )?;
        let (listener, addr) = bound().await?;
        let counters = Arc::new(ListenerCounters::default());
        let limits = Limits {
            max_connections: 8,
            handshake_timeout: Duration::from_millis(300),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = Arc::new(crate::server::reload::CurrentTls::new(config));
        let _incoming = tls(listener, config, limits, Arc::clone(&counters), async {
            let _ = stop_rx.await;
        });
        // Garbage instead of a ClientHello: refused at once.
        let mut garbage = TcpStream::connect(addr).await?;
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        assert!(closed(&mut garbage).await);
        // Nothing at all: dropped after the timeout.
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await?;
        assert!(closed(&mut silent).await);
        assert!(started.elapsed() >= Duration::from_millis(250));
        // The client may see the close a moment before the counters move.
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = loop {
            let s = counters.snapshot();
            if s.handshake_timed_out + s.handshake_failed >= 2 && s.open == 0
                || Instant::now() > deadline
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!((s.handshake_failed, s.handshake_timed_out), (1, 1));
        assert_eq!(counters.handshakes_refused(), 2);
        // Both slots are free again.
        assert_eq!((s.accepted, s.open), (2, 0));
        // Once stopped, the listener is closed: new connections are refused by the kernel.
        let _ = stop_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after the stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    #[test]
    fn open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             127590               127590               processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(text), Some(1024));
        assert_eq!(
            open_files_soft_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn throttle_writes_a_few_lines_a_second_and_counts_the_rest() {
        let t = Throttle::new();
        for _ in 0..WARNINGS_PER_SECOND {
            assert_eq!(t.admit(), Some(0));
        }
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        if let Ok(mut s) = t.state.lock()
            && let Some(earlier) = s.0.checked_sub(Duration::from_secs(2))
        {
            s.0 = earlier;
        }
        assert_eq!(t.admit(), Some(2));
    }
}
