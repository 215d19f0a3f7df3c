//! What both fake servers share: binding, the accept loop that can play dead, request
//! faults (whole-request failures, latency), and the handle that stops the server.
//!
//! "Down" is done below HTTP: the listener keeps accepting TCP connections (so clients do
//! not get "connection refused", which is a different failure) and closes each one at once
//! with `SO_LINGER` 0, which the client sees as a connection reset. Connections that were
//! already open when the server went down are killed the same way the next time hyper
//! reads from or writes to them (idle keep-alive connections are woken for that), so a
//! client's pooled connection fails too.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Locks a mutex, taking the data even if a panicking thread poisoned it: the fakes' state
/// stays usable for the assertions of the test that is failing.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Up,
    Down,
    Stopped,
}

/// A planned whole-request failure: the next `remaining` requests get `status`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailPlan {
    pub remaining: usize,
    pub status: u16,
    pub retry_after_secs: Option<u64>,
}

/// Faults shared by the handle, the admin API and the request handlers.
pub(crate) struct Faults {
    mode: watch::Sender<Mode>,
    /// Bumped on every `set_down` so a timed "down for N ms" only brings the server back
    /// up if nobody changed the state in between.
    down_generation: AtomicU64,
    latency: Mutex<Duration>,
    fail: Mutex<Option<FailPlan>>,
    /// Counted requests (bulk, push) being answered now, and the most there ever were.
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// One counted request being answered; see [`Faults::enter`].
pub(crate) struct InFlight<'a>(&'a Faults);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Faults {
    fn new() -> Self {
        let (mode, _) = watch::channel(Mode::Up);
        Self {
            mode,
            down_generation: AtomicU64::new(0),
            latency: Mutex::new(Duration::ZERO),
            fail: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        }
    }

    /// Counts a request (bulk, push) as in flight until the guard is dropped.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    /// The most counted requests that were ever answered at once.
    pub(crate) fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Makes the server play dead (`true`) or answer again (`false`).
    pub(crate) fn set_down(&self, down: bool) {
        self.down_generation.fetch_add(1, Ordering::SeqCst);
        self.mode.send_if_modified(|m| {
            let next = match (*m, down) {
                (Mode::Stopped, _) => Mode::Stopped,
                (_, true) => Mode::Down,
                (_, false) => Mode::Up,
            };
            let changed = *m != next;
            *m = next;
            changed
        });
    }

    /// Goes down now and comes back up after `duration` unless someone changed the state
    /// in the meantime. Needs a tokio runtime.
    pub(crate) fn set_down_for(self: &Arc<Self>, duration: Duration) {
        self.set_down(true);
        let generation = self.down_generation.load(Ordering::SeqCst);
        let faults = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if faults.down_generation.load(Ordering::SeqCst) == generation {
                faults.set_down(false);
            }
        });
    }

    fn stop(&self) {
        self.mode.send_replace(Mode::Stopped);
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    pub(crate) fn latency(&self) -> Duration {
        *lock(&self.latency)
    }

    /// Answers the next `n` requests (of the kind the fake counts: bulk, push) with
    /// `status`; `n == 0` clears the plan.
    pub(crate) fn fail_requests(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        *lock(&self.fail) = (n > 0).then_some(FailPlan {
            remaining: n,
            status,
            retry_after_secs,
        });
    }

    /// Consumes one planned failure, if any.
    pub(crate) fn take_failure(&self) -> Option<FailPlan> {
        let mut fail = lock(&self.fail);
        let plan = (*fail)?;
        if plan.remaining <= 1 {
            *fail = None;
        } else {
            *fail = Some(FailPlan {
                remaining: plan.remaining - 1,
                ..plan
            });
        }
        Some(plan)
    }

    /// Waits for the configured latency.
    pub(crate) async fn delay(&self) {
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

/// Per-connection information handed to handlers (`ConnectInfo<Conn>`).
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    /// Set by the admin `down` handler on its own connection so that its answer still
    /// reaches the client; the connection is then closed gracefully (`Connection: close`).
    pub exempt: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, FaultyListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, FaultyListener>) -> Self {
        Conn {
            exempt: Arc::clone(&stream.io().exempt),
        }
    }
}

/// A TCP listener that resets connections while the server is down.
pub(crate) struct FaultyListener {
    inner: TcpListener,
    mode: watch::Receiver<Mode>,
}

impl Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if *self.mode.borrow() != Mode::Up {
                        reset(&stream);
                        drop(stream);
                        continue;
                    }
                    return (FaultyStream::new(stream, self.mode.clone()), addr);
                }
                Err(e) => {
                    // Same policy as axum's own TcpListener: per-connection errors are
                    // the client's problem, anything else (EMFILE) gets a pause.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Makes the coming close of `stream` send RST instead of FIN.
fn reset(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "could not set SO_LINGER 0; the close will be a FIN");
    }
}

type KillSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server-side connection that fails (and resets) once the server goes down or stops.
pub(crate) struct FaultyStream {
    inner: TcpStream,
    killed: KillSignal,
    dead: bool,
    exempt: Arc<AtomicBool>,
}

impl FaultyStream {
    fn new(inner: TcpStream, mut mode: watch::Receiver<Mode>) -> Self {
        let killed = Box::pin(async move {
            loop {
                if *mode.borrow_and_update() != Mode::Up {
                    return;
                }
                if mode.changed().await.is_err() {
                    // The server is gone: nobody can bring it up again.
                    return;
                }
            }
        });
        Self {
            inner,
            killed,
            dead: false,
            exempt: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Polls the kill signal; `Some(error)` once this connection must die.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.exempt.load(Ordering::SeqCst) {
            return None;
        }
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
            reset(&self.inner);
        }
        self.dead.then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "weir-testkit: server is down",
            )
        })
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A running server: its address, its faults, and the means to stop it.
pub(crate) struct Server {
    addr: SocketAddr,
    faults: Arc<Faults>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves `router` on the current tokio runtime. The router's
    /// handlers may extract `ConnectInfo<Conn>`.
    pub(crate) async fn start(
        addr: SocketAddr,
        router: Router,
        faults: Arc<Faults>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let listener = FaultyListener {
            inner: listener,
            mode: faults.mode.subscribe(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let service = router.into_make_service_with_connect_info::<Conn>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                // Either an explicit stop or the handle being dropped ends the server.
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "fake server ended with an error");
            }
        });
        Ok(Self {
            addr,
            faults,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn signal_stop(&mut self) {
        // Kill open connections first so that graceful shutdown has nothing to wait for.
        self.faults.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and waits until it no longer listens.
    pub(crate) async fn shutdown(mut self) {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Creates the fault state for a new server.
pub(crate) fn new_faults() -> Arc<Faults> {
    Arc::new(Faults::new())
}

/// Applies an admin `POST /_testkit/down`; the answer still reaches the caller, whose
/// connection is then closed gracefully.
pub(crate) fn admin_down(
    faults: &Arc<Faults>,
    conn: &Conn,
    d: &crate::http::DownBody,
) -> axum::response::Response {
    let mut resp = crate::http::json(200, &serde_json::json!({"acknowledged": true}));
    if d.down {
        conn.exempt.store(true, Ordering::SeqCst);
        crate::http::add_header(&mut resp, "Connection", "close");
        match d.for_ms {
            Some(ms) => faults.set_down_for(Duration::from_millis(ms)),
            None => faults.set_down(true),
        }
    } else {
        faults.set_down(false);
    }
    resp
}
