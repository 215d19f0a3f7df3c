//! The node-wide I/O thread(s): write + fdatasync jobs of every shard.
//!
//! Each [`Wal`](crate::Wal) owns a [`WalIo`]: at most one job of a log runs at
//! a time (so the rounds of one log are written in order, each only after the
//! previous one was synced, which recovery relies on; see
//! [`FLAG_BATCH_START`](crate::format::FLAG_BATCH_START)); flushes arriving
//! meanwhile are merged into one pending job, covered by one sync. Jobs of
//! different logs run concurrently: on the pool threads (std backend) or as
//! tasks of one tokio-uring runtime (uring backend).
//!
//! The submission queue is bounded ([`QUEUE_BOUND`] jobs). Since a log has at
//! most one job queued, it only fills with that many logs flushing at once;
//! then [`Wal::flush`](crate::Wal::flush) blocks until there is room.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use crate::format::{FLAG_BATCH_START, FRAME_PREFIX_LEN};
use crate::index::Loc;
use crate::wal::Shared;
use crate::{Error, IoBackend, IoBackendChoice, Result, AUTO_PREFERS};

/// Bound of the submission queue (jobs, i.e. logs with a flush waiting).
pub const QUEUE_BOUND: usize = 1024;
/// Threads of the std backend: how many fdatasyncs can be in flight at once.
pub const STD_POOL_THREADS: usize = 4;

/// One positional write.
pub(crate) struct Write {
    pub file: Arc<File>,
    pub path: Arc<Path>,
    pub seq: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// One write + sync round of one log.
#[derive(Default)]
pub(crate) struct Job {
    pub writes: Vec<Write>,
    /// Directory to fsync after the files (a segment was created).
    pub sync_dir: Option<Arc<Path>>,
    /// Index updates to publish to readers once durable, in order.
    pub updates: Vec<(u64, Loc)>,
    /// Segment holding the end of the written data once this job is done.
    pub end_seq: Option<u64>,
    /// Where the frame flagged BATCH_START is: (write, offset in its data).
    pub first_frame: Option<(usize, usize)>,
    pub done: Vec<TicketTx>,
}

impl Job {
    fn is_noop(&self) -> bool {
        self.writes.is_empty() && self.sync_dir.is_none() && self.updates.is_empty()
    }

    /// Appends `later` to this job: one round, so the later job's
    /// BATCH_START flag is cleared (and its crc recomputed).
    pub fn merge(&mut self, mut later: Job) {
        if let Some((w, off)) = later.first_frame.take() {
            if self.first_frame.is_none() {
                self.first_frame = Some((self.writes.len() + w, off));
            } else {
                clear_batch_start(&mut later.writes[w].data[off..]);
            }
        }
        self.writes.append(&mut later.writes);
        if later.sync_dir.is_some() {
            self.sync_dir = later.sync_dir;
        }
        self.updates.append(&mut later.updates);
        if later.end_seq.is_some() {
            self.end_seq = later.end_seq;
        }
        self.done.append(&mut later.done);
    }
}

fn clear_batch_start(frame: &mut [u8]) {
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let body = FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len;
    assert!(
        frame[FRAME_PREFIX_LEN + 1] & FLAG_BATCH_START != 0,
        "merging a round whose first frame is not flagged"
    );
    frame[FRAME_PREFIX_LEN + 1] &= !FLAG_BATCH_START;
    let crc = crc32fast::hash(&frame[body]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    // Paired check: the re-stamped frame still decodes, without the flag.
    match crate::format::decode_frame(frame) {
        Ok((f, n)) => assert!(
            n == FRAME_PREFIX_LEN + len && !f.batch_start(),
            "re-stamped frame"
        ),
        Err(e) => panic!("re-stamped frame does not decode: {e:?}"),
    }
}

// ---------------------------------------------------------------- tickets

struct TicketState {
    result: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

/// Sender half of a ticket; completes it with `Closed` if dropped unsent.
pub(crate) struct TicketTx(Option<Arc<TicketState>>);

impl TicketTx {
    fn send(mut self, r: Result<()>) {
        if let Some(s) = self.0.take() {
            *lock(&s.result) = Some(r);
            s.cv.notify_all();
        }
    }
}

impl Drop for TicketTx {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            *lock(&s.result) = Some(Err(Error::Closed));
            s.cv.notify_all();
        }
    }
}

/// Completes when everything staged before the [`flush`](crate::Wal::flush)
/// that returned it is durable (written and fdatasynced).
#[must_use = "a flush is only durable once its ticket completes"]
pub struct SyncTicket(Arc<TicketState>);

impl SyncTicket {
    pub(crate) fn pair() -> (TicketTx, SyncTicket) {
        let s = Arc::new(TicketState {
            result: Mutex::new(None),
            cv: Condvar::new(),
        });
        (TicketTx(Some(s.clone())), SyncTicket(s))
    }

    /// Blocks until the flush is durable.
    ///
    /// # Errors
    ///
    /// The write or sync error ([`Error::DiskFull`] for `ENOSPC`): the data
    /// stays staged in the log and the next flush retries it.
    /// [`Error::Closed`] if the I/O thread is gone.
    pub fn wait(self) -> Result<()> {
        let mut g = lock(&self.0.result);
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.0.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the ticket has completed (then `wait` does not block).
    pub fn is_done(&self) -> bool {
        lock(&self.0.result).is_some()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the
/// data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------- per-log state

#[derive(Default)]
struct WalIoInner {
    running: bool,
    pending: Option<Job>,
    /// A failed job, retried in front of the next one.
    carry: Option<Job>,
}

/// The part of a log shared with the I/O thread.
pub(crate) struct WalIo {
    inner: Mutex<WalIoInner>,
    idle: Condvar,
    pub shared: Arc<Shared>,
    /// Fault injection: when non-zero, writes fail with this errno.
    fail_errno: AtomicI32,
}

impl WalIo {
    pub fn new(shared: Arc<Shared>) -> WalIo {
        WalIo {
            inner: Mutex::default(),
            idle: Condvar::new(),
            shared,
            fail_errno: AtomicI32::new(0),
        }
    }

    pub fn set_fail_errno(&self, errno: Option<i32>) {
        self.fail_errno.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Submits a job; the ticket completes once it (and everything before) is durable.
    pub fn submit(self: &Arc<Self>, io: &IoThread, mut job: Job) -> SyncTicket {
        let (tx, ticket) = SyncTicket::pair();
        job.done.push(tx);
        let mut g = lock(&self.inner);
        if let Some(mut carry) = g.carry.take() {
            carry.merge(job);
            job = carry;
        }
        if g.running {
            match &mut g.pending {
                Some(p) => p.merge(job),
                None => g.pending = Some(job),
            }
            return ticket;
        }
        if job.is_noop() {
            drop(g);
            for d in job.done {
                d.send(Ok(()));
            }
            return ticket;
        }
        g.running = true;
        drop(g);
        if let Err(job) = io.send(self.clone(), job) {
            // The I/O thread is gone: keep the data staged, fail the tickets.
            let mut job = job;
            for d in job.done.drain(..) {
                d.send(Err(Error::Closed));
            }
            let mut g = lock(&self.inner);
            g.running = false;
            g.carry = Some(job);
            self.idle.notify_all();
        }
        ticket
    }

    /// Waits until no job of this log is running or pending.
    pub fn wait_idle(&self) {
        let mut g = lock(&self.inner);
        while g.running {
            g = self.idle.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Drops a failed job kept for retry (after `reset`).
    pub fn discard_carry(&self) {
        lock(&self.inner).carry = None;
    }

    /// Called by the backend when a job has run; returns the next job to run.
    fn finish(&self, mut job: Job, res: Result<()>) -> Option<Job> {
        match res {
            Ok(()) => {
                self.shared.publish(&job.updates, job.end_seq);
                for d in job.done.drain(..) {
                    d.send(Ok(()));
                }
                let mut g = lock(&self.inner);
                match g.pending.take() {
                    Some(next) => Some(next),
                    None => {
                        g.running = false;
                        self.idle.notify_all();
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "wal flush failed; the data stays staged and the next flush retries it");
                for d in job.done.drain(..) {
                    d.send(Err(e.duplicate()));
                }
                let mut g = lock(&self.inner);
                match g.pending.take() {
                    Some(next) => {
                        job.merge(next);
                        Some(job)
                    }
                    None => {
                        g.carry = Some(job);
                        g.running = false;
                        self.idle.notify_all();
                        None
                    }
                }
            }
        }
    }

    fn injected_fault(&self, job: &Job) -> Result<()> {
        let errno = self.fail_errno.load(Ordering::SeqCst);
        if errno != 0 {
            if let Some(w) = job.writes.first() {
                return Err(Error::io(
                    w.path.to_path_buf(),
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
        }
        Ok(())
    }
}

/// Files to sync for a job: each distinct file once, in order.
fn distinct_files(job: &Job) -> Vec<(&Arc<File>, &Arc<Path>)> {
    let mut out: Vec<(&Arc<File>, &Arc<Path>)> = Vec::new();
    for w in &job.writes {
        if !out.iter().any(|(f, _)| Arc::ptr_eq(f, &w.file)) {
            out.push((&w.file, &w.path));
        }
    }
    out
}

fn run_std(wio: &WalIo, job: &Job) -> Result<()> {
    wio.injected_fault(job)?;
    for w in &job.writes {
        w.file
            .write_all_at(&w.data, w.offset)
            .map_err(|e| Error::io(w.path.to_path_buf(), e))?;
    }
    for (f, p) in distinct_files(job) {
        f.sync_data().map_err(|e| Error::io(p.to_path_buf(), e))?;
    }
    if let Some(dir) = &job.sync_dir {
        crate::durable::fsync_dir(dir).map_err(|e| Error::io(dir.to_path_buf(), e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- the thread(s)

struct Task {
    wio: Arc<WalIo>,
    job: Job,
}

/// The node-wide dedicated I/O thread(s), shared by every shard's
/// [`Wal`](crate::Wal). Stops when the last `Arc` is dropped (every `Wal`
/// holds one).
pub struct IoThread {
    backend: IoBackend,
    tx: Option<SyncSender<Task>>,
    #[cfg(target_os = "linux")]
    notify: Option<Arc<tokio::sync::Notify>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("backend", &self.backend)
            .finish()
    }
}

impl IoThread {
    /// Starts the I/O thread(s) with the chosen backend and logs it.
    ///
    /// # Errors
    ///
    /// [`Error::UringUnavailable`] when `Uring` is asked for and io_uring
    /// cannot be used here; an I/O error if a thread cannot be spawned.
    pub fn start(choice: IoBackendChoice) -> Result<Arc<IoThread>> {
        let detected = detect_backend();
        let backend = match choice {
            IoBackendChoice::Std => IoBackend::Std,
            IoBackendChoice::Uring => {
                if detected != IoBackend::Uring {
                    return Err(Error::UringUnavailable(
                        probe_uring().err().unwrap_or_default(),
                    ));
                }
                IoBackend::Uring
            }
            IoBackendChoice::Auto => {
                if detected == IoBackend::Uring {
                    AUTO_PREFERS
                } else {
                    IoBackend::Std
                }
            }
        };
        let t = match backend {
            IoBackend::Std => IoThread::start_std()?,
            IoBackend::Uring => IoThread::start_uring()?,
        };
        tracing::info!(backend = %backend, choice = %choice, uring_available = detected == IoBackend::Uring, "wal i/o thread started");
        Ok(Arc::new(t))
    }

    /// The backend running.
    pub fn backend(&self) -> IoBackend {
        self.backend
    }

    fn start_std() -> Result<IoThread> {
        let (tx, rx) = mpsc::sync_channel::<Task>(QUEUE_BOUND);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..STD_POOL_THREADS {
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("weir-wal-io-{i}"))
                .spawn(move || std_worker(&rx))
                .map_err(|e| Error::io("<thread>", e))?;
            threads.push(h);
        }
        Ok(IoThread {
            backend: IoBackend::Std,
            tx: Some(tx),
            #[cfg(target_os = "linux")]
            notify: None,
            threads,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn start_uring() -> Result<IoThread> {
        Err(Error::UringUnavailable("not linux".into()))
    }

    #[cfg(target_os = "linux")]
    fn start_uring() -> Result<IoThread> {
        let (tx, rx) = mpsc::sync_channel::<Task>(QUEUE_BOUND);
        let notify = Arc::new(tokio::sync::Notify::new());
        let (started_tx, started_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let n = notify.clone();
        let h = std::thread::Builder::new()
            .name("weir-wal-uring".into())
            .spawn(move || uring::worker(rx, n, started_tx))
            .map_err(|e| Error::io("<thread>", e))?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = h.join();
                return Err(Error::UringUnavailable(e));
            }
            Err(_) => {
                let _ = h.join();
                return Err(Error::UringUnavailable("uring thread died at start".into()));
            }
        }
        Ok(IoThread {
            backend: IoBackend::Uring,
            tx: Some(tx),
            notify: Some(notify),
            threads: vec![h],
        })
    }

    /// Queues a job; blocks while the queue is full. Gives the job back if
    /// the thread is gone.
    #[allow(clippy::result_large_err)] // the job comes back by value on purpose: it is kept for the retry
    fn send(&self, wio: Arc<WalIo>, job: Job) -> std::result::Result<(), Job> {
        let Some(tx) = &self.tx else { return Err(job) };
        tx.send(Task { wio, job }).map_err(|e| e.0.job)?;
        #[cfg(target_os = "linux")]
        if let Some(n) = &self.notify {
            n.notify_one();
        }
        Ok(())
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.tx = None;
        #[cfg(target_os = "linux")]
        if let Some(n) = &self.notify {
            n.notify_one();
        }
        for h in self.threads.drain(..) {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

fn std_worker(rx: &Mutex<Receiver<Task>>) {
    loop {
        let task = {
            let g = lock(rx);
            g.recv()
        };
        let Ok(Task { wio, job }) = task else { return };
        let mut job = job;
        loop {
            let res = run_std(&wio, &job);
            match wio.finish(job, res) {
                Some(next) => job = next,
                None => break,
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod uring {
    use super::*;
    use std::sync::mpsc::TryRecvError;

    pub(super) fn worker(
        rx: Receiver<Task>,
        notify: Arc<tokio::sync::Notify>,
        started: mpsc::Sender<std::result::Result<(), String>>,
    ) {
        let rt = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = started.send(Err(format!("io_uring runtime: {e}")));
                return;
            }
        };
        let _ = started.send(Ok(()));
        rt.block_on(async move {
            loop {
                match rx.try_recv() {
                    Ok(Task { wio, job }) => {
                        tokio_uring::spawn(run_task(wio, job));
                    }
                    // A permit stored by notify_one between try_recv and
                    // notified() is not lost: notified() then returns at once.
                    Err(TryRecvError::Empty) => notify.notified().await,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        });
    }

    async fn run_task(wio: Arc<WalIo>, mut job: Job) {
        loop {
            let res = run_job(&wio, &mut job).await;
            match wio.finish(job, res) {
                Some(next) => job = next,
                None => break,
            }
        }
    }

    async fn run_job(wio: &WalIo, job: &mut Job) -> Result<()> {
        wio.injected_fault(job)?;
        // One tokio-uring handle (a dup of the fd) per distinct file.
        let mut files: Vec<(Arc<File>, Arc<Path>, tokio_uring::fs::File)> = Vec::new();
        for w in job.writes.iter_mut() {
            let i = match files.iter().position(|(f, _, _)| Arc::ptr_eq(f, &w.file)) {
                Some(i) => i,
                None => {
                    let dup = w
                        .file
                        .try_clone()
                        .map_err(|e| Error::io(w.path.to_path_buf(), e))?;
                    files.push((
                        w.file.clone(),
                        w.path.clone(),
                        tokio_uring::fs::File::from_std(dup),
                    ));
                    files.len() - 1
                }
            };
            let data = std::mem::take(&mut w.data);
            let (res, data) = files[i].2.write_all_at(data, w.offset).await;
            // Keep the bytes: a failed job is retried by the next flush.
            w.data = data;
            res.map_err(|e| Error::io(w.path.to_path_buf(), e))?;
        }
        for (_, path, f) in &files {
            f.sync_data()
                .await
                .map_err(|e| Error::io(path.to_path_buf(), e))?;
        }
        if let Some(dir) = &job.sync_dir {
            let d = File::open(&**dir).map_err(|e| Error::io(dir.to_path_buf(), e))?;
            let d = tokio_uring::fs::File::from_std(d);
            d.sync_all()
                .await
                .map_err(|e| Error::io(dir.to_path_buf(), e))?;
        }
        Ok(())
    }
}

/// Probes whether io_uring can be used here: sets up a ring and runs a no-op
/// through a tokio-uring runtime on a scratch thread. Containers often forbid
/// it (`EPERM`/`ENOSYS` from seccomp). The answer is cached.
pub fn detect_backend() -> IoBackend {
    static DETECTED: OnceLock<IoBackend> = OnceLock::new();
    *DETECTED.get_or_init(|| match probe_uring() {
        Ok(()) => IoBackend::Uring,
        Err(why) => {
            tracing::info!(reason = %why, "io_uring unavailable, using the std backend");
            IoBackend::Std
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn probe_uring() -> std::result::Result<(), String> {
    Err("io_uring is linux-only".into())
}

#[cfg(target_os = "linux")]
fn probe_uring() -> std::result::Result<(), String> {
    let h = std::thread::Builder::new()
        .name("weir-wal-uring-probe".into())
        .spawn(|| -> std::result::Result<(), String> {
            tokio_uring::uring_builder()
                .build(4)
                .map_err(|e| format!("io_uring_setup: {e}"))?;
            let rt = tokio_uring::Runtime::new(&tokio_uring::builder())
                .map_err(|e| format!("io_uring runtime: {e}"))?;
            rt.block_on(tokio_uring::no_op())
                .map_err(|e| format!("io_uring no-op: {e}"))
        })
        .map_err(|e| format!("spawn probe thread: {e}"))?;
    h.join()
        .map_err(|_| "io_uring probe panicked".to_string())?
}
