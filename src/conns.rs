//! Client connections: how many may be open, and how long each may make Gatehouse wait.
//!
//! pingora's own deadlines are per read (a client trickling one byte at a time keeps a
//! request head open forever), its h2c preface check waits for 24 bytes without a deadline,
//! and it has no connection limit. So every accepted client stream goes through
//! [`Guarded`], a [`ServerApp`] in front of pingora's HTTP app that
//!
//! - counts open connections per listener (and per client address) with a guard that gives
//!   the slot back on drop, and closes a connection beyond the limit at once;
//! - wraps the stream in [`Deadlined`], a transport that enforces whole-phase deadlines:
//!   the request head (from the first byte, or from accept), the keep-alive idle time, and
//!   writes that make no progress. Its `try_peek` answers pingora's h2c check as soon as the
//!   bytes received stop matching the preface, and within the head deadline in any case.
//!
//! The proxy marks the phases through [`Deadlined::request_started`] and
//! [`Deadlined::request_finished`] (HTTP/1 only; an h2 connection is left to pingora's
//! `h2_idle_timeout` and per-stream write timeouts, a stream-level matter the transport
//! cannot see). Body reads are timed by pingora per read (`Session::set_read_timeout`; for
//! HTTP/2 `Session::set_h2_request_body_timeout`, from the patched pingora-proxy).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::model::ClientLimits;
use crate::metrics::{ConnMetrics, Listener, RejectReason, TimeoutKind};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The deadlines one connection lives by.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl From<&ClientLimits> for Deadlines {
    fn from(l: &ClientLimits) -> Self {
        Self {
            header: l.header_timeout,
            idle: l.idle_timeout,
            write: l.write_timeout,
        }
    }
}

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub per_ip: Option<usize>,
}

/// Where an HTTP/1 connection is, for its read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: all of it must be in by the deadline.
    Head(Instant),
    /// A request is being served: body reads are timed by pingora, per read.
    Request,
    /// Between requests: the next one must start by the deadline.
    Idle(Instant),
    /// HTTP/2 (or nothing the transport can judge): no read deadline here.
    Open,
}

impl Phase {
    fn read_deadline(self) -> Option<(Instant, TimeoutKind)> {
        match self {
            Phase::Head(at) => Some((at, TimeoutKind::Header)),
            Phase::Idle(at) => Some((at, TimeoutKind::Idle)),
            Phase::Request | Phase::Open => None,
        }
    }
}

/// A client stream with deadlines. See the module documentation.
pub struct Deadlined {
    inner: Stream,
    deadlines: Deadlines,
    /// Set through a shared reference (the proxy reaches the stream as `&Stream`).
    phase: Mutex<Phase>,
    /// Bytes taken by `try_peek`, served before anything else is read.
    peeked: Vec<u8>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// A deadline passed: every later read or write fails at once (counted once).
    expired: bool,
    metrics: ConnMetrics,
    /// Set by the proxy for an upgraded request of a session: the connection closes when it
    /// turns true, even when no byte moves.
    end_signal: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    /// The wait on `end_signal`, made on the first read after it was set.
    end_wait: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl std::fmt::Debug for Deadlined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlined")
            .field("inner", &self.inner)
            .field("phase", &self.phase())
            .finish()
    }
}

fn timed_out(what: TimeoutKind) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.as_str())
}

impl Deadlined {
    pub fn new(inner: Stream, deadlines: Deadlines, metrics: ConnMetrics) -> Self {
        // TLS with ALPN h2 skips the preface check: HTTP/2 from the start.
        let phase = if matches!(inner.selected_alpn_proto(), Some(ALPN::H2)) {
            Phase::Open
        } else {
            Phase::Head(Instant::now() + deadlines.header)
        };
        Self {
            inner,
            deadlines,
            phase: Mutex::new(phase),
            peeked: Vec::new(),
            read_timer: None,
            write_timer: None,
            expired: false,
            metrics,
            end_signal: Mutex::new(None),
            end_wait: Mutex::new(None),
        }
    }

    /// Closes this connection once `ended` turns true: an upgraded connection (WebSocket) of
    /// a session ends with the session, even when neither side sends anything.
    pub fn close_when(&self, ended: tokio::sync::watch::Receiver<bool>) {
        *self.end_signal.lock().unwrap_or_else(|e| e.into_inner()) = Some(ended);
    }

    /// `Ready` once the signal set by [`Self::close_when`] has turned true.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self
            .end_signal
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let wait = self.end_wait.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut ended) = signal {
            *wait = Some(Box::pin(async move {
                // A dropped sender means the session is gone too.
                let _ = ended.wait_for(|e| *e).await;
            }));
        }
        match wait {
            Some(future) => future.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// The wrapper under a pingora stream, if this stream is one.
    pub fn of(stream: &Stream) -> Option<&Self> {
        stream.as_ref().as_any().downcast_ref::<Self>()
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// The request head is in: no read deadline while the request is served.
    pub fn request_started(&self) {
        if self.phase() != Phase::Open {
            self.set_phase(Phase::Request);
        }
    }

    /// The response is out: the connection may idle until the next request.
    pub fn request_finished(&self) {
        if self.phase() != Phase::Open {
            self.set_phase(Phase::Idle(Instant::now() + self.deadlines.idle));
        }
    }

    fn expire(&mut self, kind: TimeoutKind) -> io::Error {
        if !self.expired {
            self.expired = true;
            self.metrics.timeout(kind);
            tracing::debug!(kind = kind.as_str(), "client connection deadline passed");
        }
        timed_out(kind)
    }

    /// Polls the read deadline, if the phase has one: `Ready` with the error once it passed.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((at, kind)) = self.phase().read_deadline() else {
            self.read_timer = None;
            return Poll::Pending;
        };
        let timer = self
            .read_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.expire(kind)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Polls the write deadline, armed when a write first waits: `Ready` once it passed.
    fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let write = self.deadlines.write;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.expire(TimeoutKind::Write)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn got_bytes(&mut self) {
        // The first byte of the next request ends the idle time and starts the head's.
        if let Phase::Idle(_) = self.phase() {
            self.set_phase(Phase::Head(Instant::now() + self.deadlines.header));
        }
    }

    fn deadline_passed(&self) -> Option<TimeoutKind> {
        match self.phase().read_deadline() {
            Some((at, kind)) if Instant::now() >= at => Some(kind),
            _ => None,
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "deadline passed",
            )));
        }
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if let Some(kind) = this.deadline_passed() {
            return Poll::Ready(Err(this.expire(kind)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.got_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.poll_end(cx).is_ready() {
                    this.expired = true;
                    tracing::debug!("the session of an upgraded connection ended: closing it");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the session of this connection ended",
                    )));
                }
                match this.poll_read_deadline(cx) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Deadlined {
    /// One write-side poll of the inner stream under the write deadline: a write that waits
    /// arms the deadline, one that gets anywhere disarms it, and a passed deadline fails it.
    fn timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "deadline passed",
            )));
        }
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Pending => match self.poll_write_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .timed_write(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Peek for Deadlined {
    /// Fills `buf` with the first bytes of the connection without consuming them. Unlike
    /// pingora's stream, it returns as soon as the bytes stop matching the h2 preface (a
    /// short HTTP/1 request is then served as HTTP/1), at end of stream, or with an error
    /// when the head deadline passes.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let want = buf.len();
        let mut taken = std::mem::take(&mut self.peeked);
        let mut chunk = [0u8; 64];
        while taken.len() < want {
            let is_preface_prefix = H2_PREFACE.starts_with(&taken);
            if !taken.is_empty() && !is_preface_prefix {
                break;
            }
            let room = (want - taken.len()).min(chunk.len());
            match self.read(&mut chunk[..room]).await {
                Ok(0) => break,
                Ok(n) => taken.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    self.peeked = taken;
                    return Err(e);
                }
            }
        }
        buf.fill(0);
        let n = taken.len().min(want);
        buf[..n].copy_from_slice(&taken[..n]);
        if taken.len() >= H2_PREFACE.len() && taken.starts_with(H2_PREFACE) {
            // HTTP/2 with prior knowledge: pingora's h2 idle timeout takes over.
            self.set_phase(Phase::Open);
        }
        self.peeked = taken;
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Deadlined {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlined {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlined {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Deadlined {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Counts of open connections: in total and per client address.
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its slot back when dropped.
struct Slot {
    app: Arc<Counts>,
    ip: Option<IpAddr>,
    gauge: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.total.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        if let Some(ip) = self.ip {
            let mut map = self.app.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// A pingora app behind a connection limit and the deadlines above.
pub struct Guarded<A> {
    inner: Arc<A>,
    listener: Listener,
    limits: Limits,
    deadlines: Deadlines,
    counts: Arc<Counts>,
    metrics: ConnMetrics,
}

impl<A> Guarded<A> {
    /// `listener` is the metric label (`proxy`, `admin`).
    pub fn new(
        inner: A,
        listener: Listener,
        limits: Limits,
        deadlines: Deadlines,
        metrics: ConnMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            listener,
            limits,
            deadlines,
            counts: Arc::new(Counts {
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
            metrics,
        }
    }

    /// Takes a slot for a connection from `ip`, or says why not.
    fn admit(&self, ip: Option<IpAddr>) -> Result<Slot, RejectReason> {
        let total = self.counts.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max {
            self.counts.total.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::MaxConnections);
        }
        let tracked_ip = match (self.limits.per_ip, ip) {
            (Some(max), Some(ip)) => {
                let mut map = self.counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
                let n = map.entry(ip).or_insert(0);
                if *n >= max {
                    drop(map);
                    self.counts.total.fetch_sub(1, Ordering::AcqRel);
                    return Err(RejectReason::MaxConnectionsPerIp);
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        let gauge = self.metrics.open(self.listener);
        gauge.inc();
        Ok(Slot {
            app: self.counts.clone(),
            ip: tracked_ip,
            gauge,
        })
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = match self.admit(ip) {
            Ok(slot) => slot,
            Err(refusal) => {
                self.metrics.rejected(self.listener, refusal);
                tracing::debug!(
                    listener = self.listener.as_str(),
                    reason = refusal.as_str(),
                    "connection refused"
                );
                // Dropping the stream closes it.
                return None;
            }
        };
        let stream: Stream = Box::new(Deadlined::new(stream, self.deadlines, self.metrics.clone()));
        // pingora's HTTP app never hands a stream back (it loops over keep-alive itself).
        self.inner.process_new(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(max: usize, per_ip: Option<usize>) -> Guarded<()> {
        let metrics = crate::metrics::Metrics::new().unwrap().conns;
        Guarded::new(
            (),
            Listener::Proxy,
            Limits { max, per_ip },
            Deadlines {
                header: Duration::from_secs(1),
                idle: Duration::from_secs(1),
                write: Duration::from_secs(1),
            },
            metrics,
        )
    }

    /// The total limit holds for any number of connections, and a closed connection's slot
    /// can be taken again.
    #[test]
    fn the_connection_limit_admits_exactly_max_and_frees_slots_on_drop() {
        for max in [1usize, 2, 7, 50] {
            let g = guarded(max, None);
            let slots: Vec<Slot> = (0..max).map(|_| g.admit(None).unwrap()).collect();
            for _ in 0..3 {
                assert_eq!(g.admit(None).err(), Some(RejectReason::MaxConnections));
            }
            drop(slots);
            assert!(g.admit(None).is_ok());
            assert_eq!(g.counts.total.load(Ordering::Acquire), 0);
        }
    }

    /// A connected pair: the client socket and the server side wrapped in [`Deadlined`] with a
    /// 200 ms head deadline.
    async fn pair() -> (tokio::net::TcpStream, Deadlined) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        let deadlines = Deadlines {
            header: Duration::from_millis(200),
            idle: Duration::from_millis(200),
            write: Duration::from_millis(200),
        };
        let metrics = crate::metrics::Metrics::new().unwrap().conns;
        (client, Deadlined::new(stream, deadlines, metrics))
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// The h2c check never waits without a deadline: bytes that stop matching the preface
        /// are handed to HTTP/1 at once (and read back whole), bytes that could still be the
        /// preface wait at most until the head deadline.
        #[test]
        fn the_preface_check_returns_at_the_first_mismatch_or_the_deadline(
            sent in proptest::prop_oneof![
                // Every prefix of the preface.
                (1usize..24).prop_map(|n| H2_PREFACE[..n].to_vec()),
                // A prefix whose last byte is wrong: a mismatch as late as it can come.
                (1usize..24, proptest::prelude::any::<u8>()).prop_map(|(n, b)| {
                    let mut v = H2_PREFACE[..n].to_vec();
                    v[n - 1] = if b == H2_PREFACE[n - 1] { b.wrapping_add(1) } else { b };
                    v
                }),
                // Anything short (HTTP/1 requests shorter than the preface included).
                proptest::collection::vec(proptest::prelude::any::<u8>(), 1..24),
                proptest::prelude::Just(b"OPTIONS / HTTP/1.0\r\n\r\n".to_vec()),
            ],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut client, mut conn) = pair().await;
                client.write_all(&sent).await.unwrap();
                let mut buf = [0u8; 24];
                let outcome = tokio::time::timeout(Duration::from_secs(3), conn.try_peek(&mut buf))
                    .await
                    .expect("the preface check waited past its deadline");
                if H2_PREFACE.starts_with(&sent) {
                    let error = outcome.expect_err("a preface prefix then silence must time out");
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                } else {
                    assert!(outcome.unwrap());
                    assert_ne!(&buf[..], H2_PREFACE);
                    // Nothing is lost: HTTP/1 reads every byte that was peeked.
                    let mut back = vec![0u8; sent.len()];
                    conn.read_exact(&mut back).await.unwrap();
                    assert_eq!(back, sent);
                }
            });
        }
    }

    /// The whole preface is HTTP/2: the check says so and the connection leaves the head
    /// deadline to pingora's h2 handling.
    #[tokio::test]
    async fn the_full_preface_is_recognised() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut conn) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 24];
        assert!(conn.try_peek(&mut buf).await.unwrap());
        assert_eq!(&buf[..], H2_PREFACE);
        assert_eq!(conn.phase(), Phase::Open);
    }

    /// A head trickled one byte at a time still ends at the head deadline: it is for the
    /// whole head, not per read.
    #[tokio::test]
    async fn a_trickled_head_ends_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut conn) = pair().await;
        let trickle = tokio::spawn(async move {
            for _ in 0..40 {
                if client.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut buf = [0u8; 64];
        let ended = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Err(e) = conn.read(&mut buf).await {
                    return e;
                }
            }
        })
        .await
        .expect("the trickle kept the head open");
        assert_eq!(ended.kind(), io::ErrorKind::TimedOut);
        trickle.abort();
    }

    /// One address cannot take more than its share; other addresses still get in, and the
    /// per-address table forgets an address with nothing open.
    #[test]
    fn the_per_address_limit_only_holds_back_the_busy_address() {
        let g = guarded(100, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = g.admit(Some(a)).unwrap();
        let _second = g.admit(Some(a)).unwrap();
        assert_eq!(
            g.admit(Some(a)).err(),
            Some(RejectReason::MaxConnectionsPerIp)
        );
        let _other = g.admit(Some(b)).unwrap();
        drop(first);
        let again = g.admit(Some(a));
        assert!(again.is_ok());
        assert_eq!(g.counts.total.load(Ordering::Acquire), 3);
    }
}
