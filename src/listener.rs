//! Every listener of the server (OTLP/gRPC, OTLP/HTTP, the API and UI) serves its connections
//! here, so none can be held by clients that connect and never finish:
//!
//! - at most `max_connections` connections per listener: when a new one arrives at the cap, the
//!   connection idle the longest (no request in flight) is closed to make room; when none is idle
//!   the new one is refused (HTTP: `503` with `Retry-After`; gRPC: closed, which clients retry as
//!   `UNAVAILABLE`);
//! - request headers must arrive within the header-read timeout, and a connection with no request
//!   in flight and no bytes moving for the idle timeout is closed;
//! - when the process runs out of file descriptors, a descriptor kept in reserve is given up to
//!   answer the waiting connection (`503` with `Retry-After` on HTTP) and the idlest connection is
//!   closed, instead of leaving clients hanging in the accept queue.
//!
//! With TLS (`--tls-cert`), the handshake runs in the connection's own task, within the
//! header-read timeout, and a connection the listener cannot take is closed without an answer.
//!
//! On shutdown a listener stops accepting, asks every connection to finish (requests in flight
//! complete, idle connections close) and returns once all are gone.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerLimits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Time a client has to send a request's headers (HTTP/1).
    pub(crate) header_read_timeout: Duration,
    /// A connection with nothing in flight and no bytes moving for this long is closed.
    pub(crate) idle_timeout: Duration,
}

/// What a listener speaks, which decides how a connection it cannot take is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Grpc,
    /// Over TLS: turned away by closing.
    Closed,
}

/// How long a refused connection gets to receive its `503` before it is closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection asked to close (evicted, idle) may take to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` is cancelled and every
/// connection has ended.
pub(crate) async fn serve(
    listener: TcpListener,
    name: &'static str,
    protocol: Protocol,
    app: Router,
    limits: ListenerLimits,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // A refusal in plain HTTP means nothing to a TLS client: it is closed instead.
    let protocol = if tls.is_some() { Protocol::Closed } else { protocol };
    let table = Arc::new(ConnectionTable::default());
    let mut spare = reserve_descriptor();
    let mut warned_exhaustion: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                match table.admit(limits.max_connections) {
                    Some(connection) => {
                        let tls = tls.as_ref().map(|tls| tls.acceptor());
                        let task = serve_connection(stream, tls, connection, Arc::clone(&table), app.clone(), limits);
                        tokio::spawn(task);
                    }
                    None => {
                        tracing::warn!(
                            listener = name,
                            limit = limits.max_connections,
                            "connection limit reached with no idle connection to close; refusing a connection"
                        );
                        tokio::spawn(refuse(stream, protocol, "too many connections"));
                    }
                }
            }
            Err(e) if out_of_descriptors(&e) => {
                if warned_exhaustion.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(listener = name, error = %e, "out of file descriptors: refusing connections and closing idle ones (raise `ulimit -n` or lower --max-connections)");
                    warned_exhaustion = Some(Instant::now());
                }
                table.evict_idlest();
                // Give up the reserve to take the connection that waits, and answer it.
                if spare.take().is_some()
                    && let Ok(Ok((stream, _))) =
                        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    tokio::spawn(refuse(stream, protocol, "the server is out of file descriptors"));
                }
                spare = reserve_descriptor();
                if spare.is_none() {
                    // Nothing to answer with until a connection closes: do not spin on accept.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => tracing::debug!(listener = name, error = %e, "accept failed"),
        }
    }
    table.close_all();
    table.wait_empty().await;
    Ok(())
}

/// A descriptor held in reserve for answering a connection when the process has no other.
fn reserve_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// Answers a connection that cannot be served, then closes it.
async fn refuse(mut stream: TcpStream, protocol: Protocol, why: &str) {
    if protocol == Protocol::Http {
        let body = serde_json::json!({ "error": format!("{why}; retry shortly") }).to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connection: Arc<Connection>,
    table: Arc<ConnectionTable>,
    app: Router,
    limits: ListenerLimits,
) {
    // Out of the table however the task ends: a handler that panics unwinds through here, and a
    // connection left listed would hold its slot (and shutdown's wait) for good.
    let _listed = Listed { table: Arc::clone(&table), id: connection.id };
    let tracked = Tracked { inner: stream, connection: Arc::clone(&connection) };
    match tls {
        None => serve_io(tracked, connection, table, app, limits).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked)) => handshake,
                _ = connection.close.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_io(stream, connection, table, app, limits).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake not finished within the header-read timeout"),
            }
        }
    }
}

/// Serves HTTP/1 and HTTP/2 on one connection's byte stream (plain or TLS) until it ends, is asked
/// to close, or stays idle too long.
async fn serve_io<S>(
    stream: S,
    connection: Arc<Connection>,
    table: Arc<ConnectionTable>,
    app: Router,
    limits: ListenerLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = {
        let connection = Arc::clone(&connection);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = connection.request_started();
            let response = app.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = connection.close.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = check.tick() => {
                match closing {
                    // Evicted or idle, and still not done: drop it. (On shutdown requests in flight
                    // may take as long as they take.)
                    Some(since) if since.elapsed() > CLOSE_GRACE && !table.shutting_down() => break,
                    Some(_) => {}
                    None if connection.idle_for() >= limits.idle_timeout => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    None => {}
                }
            }
        }
    }
}

/// A connection's place in its table, given up when dropped.
struct Listed {
    table: Arc<ConnectionTable>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// The open connections of one listener.
#[derive(Default)]
struct ConnectionTable {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    shutting_down: std::sync::atomic::AtomicBool,
    emptied: tokio::sync::Notify,
    epoch: std::sync::OnceLock<Instant>,
}

impl ConnectionTable {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// A new connection, closing the idlest one to make room at the cap; `None` when the table is
    /// full of connections with requests in flight.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Arc<Connection>> {
        let mut open = self.open.lock().expect("connection table lock");
        // Connections already asked to close are on their way out and do not count against the cap.
        let live = open.values().filter(|c| !c.close.is_cancelled()).count();
        if live >= max {
            let idlest = open
                .values()
                .filter(|c| !c.close.is_cancelled() && c.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed))?;
            idlest.close.cancel();
        }
        // Closing ones still hold a descriptor until they are gone (at most the close grace).
        if open.len() >= max.saturating_mul(2) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            table: Arc::downgrade(self),
            last_active_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        if self.shutting_down.load(Ordering::Acquire) {
            connection.close.cancel();
        }
        open.insert(id, Arc::clone(&connection));
        Some(connection)
    }

    /// Closes the connection idle the longest (with no request in flight), if there is one.
    fn evict_idlest(&self) {
        let open = self.open.lock().expect("connection table lock");
        if let Some(idlest) = open
            .values()
            .filter(|c| !c.close.is_cancelled() && c.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed))
        {
            idlest.close.cancel();
        }
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().expect("connection table lock");
        open.remove(&id);
        if open.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn close_all(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for connection in self.open.lock().expect("connection table lock").values() {
            connection.close.cancel();
        }
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.open.lock().expect("connection table lock").is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

/// One open connection: when it last moved bytes, how many requests it has in flight, and the
/// signal that asks it to close.
struct Connection {
    id: u64,
    table: std::sync::Weak<ConnectionTable>,
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    close: CancellationToken,
}

impl Connection {
    fn touch(&self) {
        if let Some(table) = self.table.upgrade() {
            self.last_active_ms.store(table.now_ms(), Ordering::Relaxed);
        }
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self.table.upgrade().map_or(0, |t| t.now_ms());
        Duration::from_millis(now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)))
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(Arc::clone(self))
    }
}

/// A request being served on a connection.
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that notes when bytes last moved.
struct Tracked {
    inner: TcpStream,
    connection: Arc<Connection>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.connection.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The default connection cap of each listener: a share of the descriptors the process may open,
/// leaving room for span files, the WAL and queries.
pub(crate) fn default_max_connections(descriptors: u64, listeners: u64) -> usize {
    let reserved = 64 + descriptors / 4;
    let per_listener = descriptors.saturating_sub(reserved) / listeners.max(1);
    per_listener.clamp(8, 4_096) as usize
}

/// Raises the soft limit on open files to the hard limit and returns it (the limit in force when
/// it cannot be raised or read).
pub(crate) fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1_024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_leave_descriptors_for_files() {
        // 512 descriptors: three listeners share about 300 of them.
        let cap = default_max_connections(512, 3);
        assert!(cap * 3 < 512 - 64, "{cap}");
        assert!(cap >= 64, "{cap}");
        assert_eq!(default_max_connections(1 << 20, 3), 4_096);
    }

    #[tokio::test]
    async fn a_full_table_closes_its_idlest_connection() {
        let table = Arc::new(ConnectionTable::default());
        let first = table.admit(2).unwrap();
        let busy = table.admit(2).unwrap();
        let _request = busy.request_started();
        // At the cap: the idle one is asked to close, the busy one is not.
        let third = table.admit(2).expect("room made by closing an idle connection");
        assert!(first.close.is_cancelled());
        assert!(!busy.close.is_cancelled());
        assert!(!third.close.is_cancelled());
        table.remove(first.id);
        // Full of connections with requests in flight: nothing can make room.
        let _r3 = third.request_started();
        assert!(table.admit(2).is_none(), "every connection has a request in flight");
    }
}
