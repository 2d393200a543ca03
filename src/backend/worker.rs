//! The one device worker every backend runs its hardware calls on: threads that each own a
//! connection to the device (a logged-in PKCS#11 session, an open YubiKey), fed by one bounded
//! queue.
//!
//! Owns: the queue (a full queue is answered [`BackendError::Busy`] at once, never piled up),
//! each job's deadline (a caller is answered by its deadline even while the device is still busy,
//! and a job still queued at its deadline never touches the device), the reply to the caller,
//! [`BackendError::ShuttingDown`] once the workers are gone, an explicit [`Pool::shutdown`] that
//! waits for every thread to leave the device, and the reconnect-and-retry policy after a
//! connection fault ([`Device::run`]). A backend supplies only what differs: how to connect, and
//! how to tell a connection fault from any other error ([`Device`]). Never touches a device API
//! itself, JOSE, policy or config.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{BackendError, BackendFuture};

/// How much earlier than its deadline a caller is answered, so that a caller who gives up at
/// the deadline itself still receives the backend's own answer (which may say more, such as
/// [`BackendError::TouchRequired`]) rather than a bare timeout of its own.
pub const REPLY_MARGIN: Duration = Duration::from_millis(10);

/// What a device error means for the connection it happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation failed for its own reasons (no such key, bad input, refused PIN): the
    /// connection is fine and the error goes to the caller as it is.
    Operation,
    /// The connection broke (session closed, card reset or removed) and the operation may
    /// have run on the device before it did.
    Connection,
    /// The connection was already gone when the operation was sent: it surely did not run.
    ConnectionBeforeRun,
}

/// Which operations may run a second time after a connection fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Idempotent (sign, read, check): reconnect and run once more after any connection fault.
    Idempotent,
    /// Not idempotent (generate, create, destroy): run once more only when the fault shows the
    /// operation did not run ([`Fault::ConnectionBeforeRun`]); otherwise report the fault, since
    /// a second run could make a second key or object.
    IfNotRun,
}

/// A failure inside a job: a raw device error, still to be classified by [`Device::fault`], or
/// one the backend has already put in its own words.
#[derive(Debug)]
pub enum Failure<E> {
    /// A device call failed.
    Device(E),
    /// Already a [`BackendError`].
    Backend(BackendError),
}

impl<E> From<BackendError> for Failure<E> {
    fn from(e: BackendError) -> Self {
        Failure::Backend(e)
    }
}

/// The state one worker thread owns: a connection to the device, opened lazily and opened again
/// after a fault. The backend says how to connect and how to read its errors; the retry policy
/// is [`Device::run`]'s and the same for every backend.
pub trait Device: Send + 'static {
    /// The device API's error type.
    type Error;

    /// Open the connection (session and login, card and PIN) unless it is open.
    ///
    /// # Errors
    /// Why the device cannot be reached; the job is answered with it.
    fn connect(&mut self) -> Result<(), BackendError>;

    /// Drop the connection after a connection fault, so that the next [`Device::connect`]
    /// opens a fresh one (and forget what was learnt on it, such as cached handles).
    fn disconnect(&mut self);

    /// What `e` means for the connection.
    fn fault(&self, e: &Self::Error) -> Fault;

    /// `e` in the backend's vocabulary, for the caller and the log (keeping the device's code,
    /// such as `CKR_…`).
    fn map_error(&self, e: &Self::Error) -> BackendError;

    /// Run `f` on this device, connecting first when needed. After a connection fault the
    /// connection is dropped, and `f` runs once more on a fresh one when `retry` allows it.
    ///
    /// # Errors
    /// What `f` or the connection failed with, mapped by [`Device::map_error`].
    fn run<T>(
        &mut self,
        retry: Retry,
        mut f: impl FnMut(&mut Self) -> Result<T, Failure<Self::Error>>,
    ) -> Result<T, BackendError>
    where
        Self: Sized,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.connect()?;
            let e = match f(self) {
                Ok(v) => return Ok(v),
                Err(Failure::Backend(e)) => return Err(e),
                Err(Failure::Device(e)) => e,
            };
            let fault = self.fault(&e);
            if fault == Fault::Operation {
                return Err(self.map_error(&e));
            }
            let error = self.map_error(&e);
            tracing::warn!(%error, attempt, ?fault, "device connection fault; reconnecting");
            self.disconnect();
            let may_retry = match retry {
                Retry::Idempotent => true,
                Retry::IfNotRun => fault == Fault::ConnectionBeforeRun,
            };
            if attempt >= 2 || !may_retry {
                return Err(error);
            }
        }
    }
}

/// A job for a worker: runs with the worker's device and replies through its own channel.
type Job<D> = Box<dyn FnOnce(&mut D) + Send>;

/// Where a job's answer arrives.
type Reply<T> = tokio::sync::oneshot::Receiver<Result<T, BackendError>>;

/// Worker threads, each owning one [`Device`], behind one bounded queue.
pub struct Pool<D: Device> {
    /// The queue; `None` once [`Pool::shutdown`] closed it.
    tx: RwLock<Option<Sender<Job<D>>>>,
    /// Capacity of the queue, reported in [`BackendError::Busy`].
    queue_depth: usize,
    /// Set by [`Pool::shutdown`]: jobs still queued are dropped unrun (their callers get
    /// [`BackendError::ShuttingDown`]) instead of delaying the shutdown.
    closing: Arc<AtomicBool>,
    /// The threads, joined by [`Pool::shutdown`].
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<D: Device> Pool<D> {
    /// Start one thread per device, named `{name}-{i}`, behind a queue of `queue_depth` jobs
    /// (at least 1).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when a thread cannot be started (the threads already
    /// started are stopped again).
    pub fn start(name: &str, devices: Vec<D>, queue_depth: usize) -> Result<Self, BackendError> {
        let queue_depth = queue_depth.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job<D>>(queue_depth);
        let pool = Pool {
            tx: RwLock::new(Some(tx)),
            queue_depth,
            closing: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        };
        for (i, device) in devices.into_iter().enumerate() {
            let (rx, closing) = (rx.clone(), Arc::clone(&pool.closing));
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(device, &rx, &closing));
            match spawned {
                Ok(handle) => pool
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(handle),
                Err(e) => {
                    pool.shutdown();
                    return Err(BackendError::Unavailable(format!(
                        "cannot start worker {name}-{i}: {e}"
                    )));
                }
            }
        }
        Ok(pool)
    }

    /// Queue `f` for a worker, without a deadline: the caller waits as long as the device
    /// takes (operations whose abandonment would leave objects behind on the device). A full
    /// queue is answered [`BackendError::Busy`] at once, a closed one
    /// [`BackendError::ShuttingDown`].
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        match self.enqueue(None, f) {
            Ok(rx) => Box::pin(async move { rx.await.map_err(|_| BackendError::ShuttingDown)? }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Queue `f` for a worker, answering the caller by `deadline` (a [`REPLY_MARGIN`] early)
    /// with `late()` when no worker has answered by then. A job that a worker picks up only
    /// after that is dropped without touching the device. A full queue is answered
    /// [`BackendError::Busy`] at once, a closed one [`BackendError::ShuttingDown`].
    pub fn submit_by<T: Send + 'static>(
        &self,
        deadline: Instant,
        late: impl FnOnce() -> BackendError + Send + 'static,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        let answer_by = deadline.checked_sub(REPLY_MARGIN).unwrap_or(deadline);
        match self.enqueue(Some(answer_by), f) {
            Ok(rx) => Box::pin(async move {
                let at = tokio::time::Instant::from_std(answer_by);
                match tokio::time::timeout_at(at, rx).await {
                    Ok(reply) => reply.map_err(|_| BackendError::ShuttingDown)?,
                    Err(_) => Err(late()),
                }
            }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Put `f` on the queue as a job that answers through the returned channel, and that a
    /// worker drops unrun when it picks it up at or after `answer_by`.
    fn enqueue<T: Send + 'static>(
        &self,
        answer_by: Option<Instant>,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<Reply<T>, BackendError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job<D> = Box::new(move |device| {
            if answer_by.is_some_and(|d| Instant::now() >= d) {
                // The caller has had its late answer; the device stays untouched.
                let _ = reply.send(Err(BackendError::Unavailable(
                    "the request's deadline passed while it waited for a device worker".into(),
                )));
                return;
            }
            // The caller may have gone (deadline, cancelled request): nothing to do then.
            let _ = reply.send(f(device));
        });
        let sent = match &*self.tx.read().unwrap_or_else(PoisonError::into_inner) {
            Some(tx) => tx.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        match sent {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(BackendError::Busy(self.queue_depth)),
            Err(TrySendError::Disconnected(_)) => Err(BackendError::ShuttingDown),
        }
    }

    /// Close the queue and wait until every worker thread has finished its current job and
    /// dropped its device (closing sessions, releasing the card). Jobs still queued are
    /// answered [`BackendError::ShuttingDown`] without running; later submissions too. After
    /// this returns no thread is inside the device API, so a backend may finalise its module.
    ///
    /// Blocks for as long as the slowest job in flight (a card waiting for a touch: up to ~15
    /// s); call it from a blocking context, never from a worker's own job.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        drop(
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let name = t.thread().name().unwrap_or("worker").to_owned();
            if t.join().is_err() {
                tracing::error!(worker = %name, "device worker panicked");
            }
        }
    }
}

/// A worker thread's loop: run jobs until the queue is closed, then drop the device here, on
/// the thread that used it.
fn work<D: Device>(mut device: D, rx: &Receiver<Job<D>>, closing: &AtomicBool) {
    while let Ok(job) = rx.recv() {
        if closing.load(Ordering::Acquire) {
            // Dropping the job drops its reply channel: the caller gets ShuttingDown.
            continue;
        }
        job(&mut device);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A device error of the fake: which fault it stands for.
    #[derive(Debug, Clone, Copy)]
    struct FakeError(Fault);

    /// What the fake device has seen, shared with the test.
    #[derive(Default)]
    struct Seen {
        /// Connections opened.
        connects: AtomicUsize,
        /// Connections dropped after a fault.
        disconnects: AtomicUsize,
        /// Operations that reached the device.
        ran: AtomicUsize,
        /// Devices dropped (threads gone).
        dropped: AtomicUsize,
    }

    /// A fake device: counts what happens to it.
    struct Fake {
        seen: Arc<Seen>,
        connected: bool,
    }

    impl Fake {
        fn new(seen: &Arc<Seen>) -> Self {
            Fake {
                seen: Arc::clone(seen),
                connected: false,
            }
        }

        /// One operation on the device: fails with the given faults in turn, then succeeds.
        fn op(&mut self, faults: &mut Vec<Fault>) -> Result<u32, Failure<FakeError>> {
            assert!(self.connected, "operation on a closed connection");
            self.seen.ran.fetch_add(1, Ordering::SeqCst);
            match faults.pop() {
                Some(f) => Err(Failure::Device(FakeError(f))),
                None => Ok(42),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.seen.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Device for Fake {
        type Error = FakeError;

        fn connect(&mut self) -> Result<(), BackendError> {
            if !self.connected {
                self.connected = true;
                self.seen.connects.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }

        fn disconnect(&mut self) {
            self.connected = false;
            self.seen.disconnects.fetch_add(1, Ordering::SeqCst);
        }

        fn fault(&self, e: &FakeError) -> Fault {
            e.0
        }

        fn map_error(&self, e: &FakeError) -> BackendError {
            BackendError::Unavailable(format!("fake {:?}", e.0))
        }
    }

    fn late() -> BackendError {
        BackendError::TouchRequired
    }

    /// Run one operation that first fails with `faults` (last one first).
    fn run_with(retry: Retry, mut faults: Vec<Fault>) -> (Result<u32, BackendError>, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let mut dev = Fake::new(&seen);
        let r = dev.run(retry, |d| d.op(&mut faults));
        (r, seen)
    }

    #[test]
    fn idempotent_operations_retry_once_on_a_fresh_connection() {
        let (r, seen) = run_with(Retry::Idempotent, vec![Fault::Connection]);
        assert_eq!(r.unwrap(), 42);
        assert_eq!(seen.ran.load(Ordering::SeqCst), 2);
        assert_eq!(seen.connects.load(Ordering::SeqCst), 2);
        assert_eq!(seen.disconnects.load(Ordering::SeqCst), 1);

        // Only once: a second fault is reported.
        let (r, seen) = run_with(
            Retry::Idempotent,
            vec![Fault::ConnectionBeforeRun, Fault::Connection],
        );
        assert!(matches!(r, Err(BackendError::Unavailable(ref m)) if m.contains("BeforeRun")));
        assert_eq!(seen.ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn non_idempotent_operations_retry_only_when_they_did_not_run() {
        let (r, seen) = run_with(Retry::IfNotRun, vec![Fault::Connection]);
        assert!(matches!(r, Err(BackendError::Unavailable(_))));
        assert_eq!(seen.ran.load(Ordering::SeqCst), 1);
        assert_eq!(seen.disconnects.load(Ordering::SeqCst), 1);

        let (r, seen) = run_with(Retry::IfNotRun, vec![Fault::ConnectionBeforeRun]);
        assert_eq!(r.unwrap(), 42);
        assert_eq!(seen.ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn operation_errors_are_neither_retried_nor_disconnected() {
        let (r, seen) = run_with(Retry::Idempotent, vec![Fault::Operation]);
        assert!(matches!(r, Err(BackendError::Unavailable(_))));
        assert_eq!(seen.ran.load(Ordering::SeqCst), 1);
        assert_eq!(seen.disconnects.load(Ordering::SeqCst), 0);

        let seen = Arc::new(Seen::default());
        let mut dev = Fake::new(&seen);
        let r: Result<(), _> = dev.run(Retry::Idempotent, |_| {
            Err(BackendError::KeyNotFound(crate::backend::KeyId(vec![1])).into())
        });
        assert!(matches!(r, Err(BackendError::KeyNotFound(_))));
        assert_eq!(seen.connects.load(Ordering::SeqCst), 1);
    }

    /// A pool of one fake whose worker is held inside a job until the returned sender is used.
    fn held_pool(queue_depth: usize) -> (Pool<Fake>, Arc<Seen>, std::sync::mpsc::Sender<()>) {
        let seen = Arc::new(Seen::default());
        let pool = Pool::start("fake", vec![Fake::new(&seen)], queue_depth).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        drop(pool.submit(move |_| {
            entered_tx.send(()).unwrap();
            held.recv().ok();
            Ok(())
        }));
        entered.recv().unwrap();
        (pool, seen, release)
    }

    fn touch(faults: Vec<Fault>) -> impl FnOnce(&mut Fake) -> Result<u32, BackendError> {
        move |d| {
            let mut faults = faults;
            d.run(Retry::Idempotent, |d| d.op(&mut faults))
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once() {
        let (pool, seen, release) = held_pool(1);
        let queued = pool.submit(touch(vec![]));
        let started = Instant::now();
        let full = pool.submit(touch(vec![])).await;
        assert!(matches!(full, Err(BackendError::Busy(1))), "{full:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
        release.send(()).unwrap();
        assert_eq!(queued.await.unwrap(), 42);
        assert_eq!(seen.ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_job_past_its_deadline_never_touches_the_device() {
        let (pool, seen, release) = held_pool(4);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        let r = pool.submit_by(deadline, late, touch(vec![])).await;
        // The caller is answered at its deadline (a margin early) with the backend's late
        // answer, while the worker is still busy.
        assert!(matches!(r, Err(BackendError::TouchRequired)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(100) - REPLY_MARGIN);
        assert!(started.elapsed() < Duration::from_secs(2));
        // The worker gets to the job only now: it must not run it.
        release.send(()).unwrap();
        let after = pool.submit(touch(vec![])).await;
        assert_eq!(after.unwrap(), 42);
        assert_eq!(seen.ran.load(Ordering::SeqCst), 1);

        // A job whose deadline passed before it was even queued is answered, not run.
        let r = pool.submit_by(Instant::now(), late, touch(vec![])).await;
        assert!(r.is_err());
        pool.shutdown();
        assert_eq!(seen.ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn shutdown_joins_the_threads_and_answers_shutting_down() {
        let seen = Arc::new(Seen::default());
        let pool = Pool::start("fake", (0..3).map(|_| Fake::new(&seen)).collect(), 8).unwrap();
        assert_eq!(pool.submit(touch(vec![])).await.unwrap(), 42);

        // A job in flight finishes; one still queued behind it is dropped unrun.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let in_flight: Vec<_> = (0..3)
            .map(|_| {
                let (held, entered_tx) = (Arc::clone(&held), entered_tx.clone());
                pool.submit(move |d| {
                    entered_tx.send(()).unwrap();
                    held.lock().unwrap().recv().ok();
                    d.run(Retry::Idempotent, |d| d.op(&mut vec![]))
                })
            })
            .collect();
        for _ in 0..3 {
            entered.recv().unwrap();
        }
        let queued = pool.submit(touch(vec![]));
        let stopping = std::thread::spawn({
            let pool = Arc::new(pool);
            let p = Arc::clone(&pool);
            move || {
                p.shutdown();
                pool
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !stopping.is_finished(),
            "shutdown returned with jobs in flight"
        );
        assert_eq!(seen.dropped.load(Ordering::SeqCst), 0);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        let pool = stopping.join().unwrap();
        // Every thread has left its device: all three dropped.
        assert_eq!(seen.dropped.load(Ordering::SeqCst), 3);
        for r in in_flight {
            assert_eq!(r.await.unwrap(), 42);
        }
        assert!(matches!(queued.await, Err(BackendError::ShuttingDown)));
        assert!(matches!(
            pool.submit(touch(vec![])).await,
            Err(BackendError::ShuttingDown)
        ));
        assert_eq!(seen.ran.load(Ordering::SeqCst), 4);
    }
}
