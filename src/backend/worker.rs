//! The one device worker every backend runs its hardware calls on: threads that each own a
//! connection to the device (a logged-in PKCS#11 session, an open YubiKey), fed by one bounded
//! queue, and a watchdog that replaces workers stuck inside the device.
//!
//! Owns: the queue (a full queue is answered [`BackendError::Busy`] at once, never piled up),
//! each job's deadline (a caller is answered by its deadline even while the device is still busy,
//! and a job still queued at its deadline never touches the device), stuck workers (a worker
//! still inside a job past its deadline plus a grace is abandoned and replaced by a new thread
//! with a fresh connection, up to [`PoolSettings::max_abandoned`]; when every worker is stuck
//! and none may be replaced the pool reports itself stalled), the reply to the caller,
//! [`BackendError::ShuttingDown`] once the workers are gone, an explicit [`Pool::shutdown`] that
//! waits for every thread to leave the device except abandoned ones (and says how many those
//! are), and the reconnect-and-retry policy after a connection fault ([`Device::run`]). A
//! backend supplies only what differs: how to connect, and how to tell a connection fault from
//! any other error ([`Device`]). Never touches a device API itself, JOSE, policy or config.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
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
struct Job<D> {
    /// When the worker running it counts as stuck in the device (the job's deadline plus the
    /// pool's grace); `None` for jobs without a deadline, which may take as long as they take.
    stuck_at: Option<Instant>,
    /// When it was queued, for the queue-wait metric.
    queued: Instant,
    /// The work, replying to its caller.
    run: Box<dyn FnOnce(&mut D) + Send>,
}

/// Where a job's answer arrives.
type Reply<T> = tokio::sync::oneshot::Receiver<Result<T, BackendError>>;

/// Makes the device of a replacement worker, given the new worker's index. Called with the
/// pool's state locked: it must be cheap (connections open lazily on the worker's own thread,
/// at its first job).
pub type DeviceFactory<D> = Box<dyn Fn(usize) -> D + Send + Sync>;

/// How a pool queues jobs and what it does with workers stuck inside the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Jobs that may wait for a worker (at least 1) before callers get
    /// [`BackendError::Busy`].
    pub queue_depth: usize,
    /// How many workers may be abandoned at once: each is a thread still inside a device call
    /// past its job's deadline plus [`PoolSettings::grace`], replaced by a new thread with a
    /// fresh connection so that the pool keeps its capacity. Each holds a thread and a device
    /// connection until the device returns; 0 never replaces a stuck worker.
    pub max_abandoned: usize,
    /// How long past its deadline a job may still run before its worker counts as stuck: a
    /// slow device is not a hung one, and replacing workers costs a connection each.
    pub grace: Duration,
}

/// What a pool's workers are doing, read without queueing (for readiness and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Workers serving the queue (abandoned ones not counted).
    pub workers: usize,
    /// Of those, how many are inside a job past its deadline plus the grace.
    pub stuck: usize,
    /// Abandoned workers still inside the device.
    pub abandoned: usize,
    /// Every worker is stuck and no replacement may be started: jobs wait until a device call
    /// returns, which it may never do.
    pub stalled: bool,
}

/// Worker threads, each owning one [`Device`], behind one bounded queue, and a watchdog that
/// replaces workers stuck in the device.
pub struct Pool<D: Device> {
    /// The queue; `None` once [`Pool::shutdown`] closed it.
    tx: RwLock<Option<Sender<Job<D>>>>,
    /// Capacity of the queue, reported in [`BackendError::Busy`].
    queue_depth: usize,
    /// What the workers and the watchdog share.
    watch: Arc<Watch<D>>,
    /// The watchdog thread, joined by [`Pool::shutdown`].
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

/// What the workers, the watchdog and the pool share.
struct Watch<D> {
    /// Prefix of the thread names.
    name: String,
    /// Limits.
    settings: PoolSettings,
    /// The queue's receiving end, read by every worker.
    rx: Receiver<Job<D>>,
    /// Devices for replacement workers (`None`: never replaced, and `max_abandoned` is 0).
    replace: Option<DeviceFactory<D>>,
    /// [`State::abandoned`], readable without the lock (see [`Pool::abandoned_gauge`]).
    abandoned_now: Arc<AtomicUsize>,
    /// Set by [`Pool::shutdown`]: jobs still queued are dropped unrun (their callers get
    /// [`BackendError::ShuttingDown`]) instead of delaying the shutdown, and stuck workers are
    /// abandoned without replacement.
    closing: AtomicBool,
    /// The threads and what they are doing.
    state: Mutex<State>,
    /// Signalled when a job with an earlier deadline starts than the watchdog waits for, when
    /// a thread leaves, and at shutdown.
    changed: Condvar,
}

/// The threads and what they are doing.
struct State {
    /// Every worker thread still running, abandoned ones included.
    threads: Vec<Thread>,
    /// Index of the next thread started (its name's suffix).
    next_index: usize,
    /// Abandoned threads still inside the device.
    abandoned: usize,
    /// When the watchdog looks next (`None`: when signalled), so a starting job signals it only
    /// when its deadline comes earlier.
    watch_until: Option<Instant>,
    /// Cleared to stop the watchdog.
    watching: bool,
}

/// One worker thread.
struct Thread {
    /// Its index (the suffix of its name).
    index: usize,
    /// The job it is running, if any.
    busy: Option<Busy>,
    /// Given up on: it leaves when its device call returns, without taking another job.
    abandoned: bool,
}

/// A job in progress.
struct Busy {
    /// When the thread counts as stuck (see [`Job::stuck_at`]).
    stuck_at: Option<Instant>,
    /// Whether the watchdog has logged that it cannot replace this thread.
    reported: bool,
}

impl Busy {
    fn stuck(&self, now: Instant) -> bool {
        self.stuck_at.is_some_and(|at| at <= now)
    }
}

impl<D: Device> Pool<D> {
    /// Start one thread per device, named `{name}-{i}`, behind a queue of
    /// `settings.queue_depth` jobs, and the watchdog (`{name}-watch`) that replaces stuck
    /// workers with threads whose devices come from `replace` (`None`: a device that cannot
    /// be opened twice, such as a card; stuck workers are then never replaced).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when a thread cannot be started (the threads already
    /// started are stopped again).
    pub fn start(
        name: &str,
        devices: Vec<D>,
        settings: PoolSettings,
        replace: Option<DeviceFactory<D>>,
    ) -> Result<Self, BackendError> {
        let queue_depth = settings.queue_depth.max(1);
        // Nothing to replace a worker with: a stuck one stays and counts.
        let settings = PoolSettings {
            max_abandoned: if replace.is_some() {
                settings.max_abandoned
            } else {
                0
            },
            ..settings
        };
        let (tx, rx) = crossbeam_channel::bounded::<Job<D>>(queue_depth);
        let watch = Arc::new(Watch {
            name: name.to_owned(),
            settings,
            rx,
            replace,
            abandoned_now: Arc::new(AtomicUsize::new(0)),
            closing: AtomicBool::new(false),
            state: Mutex::new(State {
                threads: Vec::new(),
                next_index: 0,
                abandoned: 0,
                watch_until: None,
                watching: true,
            }),
            changed: Condvar::new(),
        });
        let pool = Pool {
            tx: RwLock::new(Some(tx)),
            queue_depth,
            watch: Arc::clone(&watch),
            watchdog: Mutex::new(None),
        };
        {
            let mut state = watch.lock();
            for device in devices {
                if let Err(e) = watch.spawn(&mut state, device) {
                    drop(state);
                    pool.shutdown();
                    return Err(BackendError::Unavailable(format!(
                        "cannot start a worker {name}: {e}"
                    )));
                }
            }
        }
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-watch"))
            .spawn(move || watchdog(&watch));
        match spawned {
            Ok(handle) => {
                *pool.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
                Ok(pool)
            }
            Err(e) => {
                pool.shutdown();
                Err(BackendError::Unavailable(format!(
                    "cannot start the watchdog {name}-watch: {e}"
                )))
            }
        }
    }

    /// Queue `f` for a worker, without a deadline: the caller waits as long as the device
    /// takes (operations whose abandonment would leave objects behind on the device), and the
    /// worker is never counted as stuck. A full queue is answered [`BackendError::Busy`] at
    /// once, a closed one [`BackendError::ShuttingDown`].
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        match self.enqueue(None, None, f) {
            Ok(rx) => Box::pin(async move { rx.await.map_err(|_| BackendError::ShuttingDown)? }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Queue `f` for a worker, answering the caller by `deadline` (a [`REPLY_MARGIN`] early)
    /// with `late()` when no worker has answered by then. A job that a worker picks up only
    /// after that is dropped without touching the device; a worker still inside the job at
    /// the deadline plus the pool's grace is abandoned and replaced (see
    /// [`PoolSettings::max_abandoned`]). A full queue is answered [`BackendError::Busy`] at
    /// once, a closed one [`BackendError::ShuttingDown`].
    pub fn submit_by<T: Send + 'static>(
        &self,
        deadline: Instant,
        late: impl FnOnce() -> BackendError + Send + 'static,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        let answer_by = deadline.checked_sub(REPLY_MARGIN).unwrap_or(deadline);
        let stuck_at = deadline.checked_add(self.watch.settings.grace);
        match self.enqueue(Some(answer_by), stuck_at, f) {
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
        stuck_at: Option<Instant>,
        f: impl FnOnce(&mut D) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<Reply<T>, BackendError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            stuck_at,
            queued: Instant::now(),
            run: Box::new(move |device: &mut D| {
                if answer_by.is_some_and(|d| Instant::now() >= d) {
                    // The caller has had its late answer; the device stays untouched.
                    let _ = reply.send(Err(BackendError::Unavailable(
                        "the request's deadline passed while it waited for a device worker".into(),
                    )));
                    return;
                }
                // The caller may have gone (deadline, cancelled request): nothing to do then.
                let _ = reply.send(f(device));
            }),
        };
        // Counted before it is sent, so a worker never takes it off the count first.
        let queued = crate::metrics::metrics().job_queued();
        let sent = match &*self.tx.read().unwrap_or_else(PoisonError::into_inner) {
            Some(tx) => tx.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        queued.sent(sent.is_ok());
        match sent {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(BackendError::Busy(self.queue_depth)),
            Err(TrySendError::Disconnected(_)) => Err(BackendError::ShuttingDown),
        }
    }

    /// What the workers are doing now; cheap (one lock, no queueing), so readiness can ask
    /// while every worker is stuck.
    pub fn status(&self) -> PoolStatus {
        let state = self.watch.lock();
        let now = Instant::now();
        let live = || state.threads.iter().filter(|t| !t.abandoned);
        let workers = live().count();
        let stuck = live()
            .filter(|t| t.busy.as_ref().is_some_and(|b| b.stuck(now)))
            .count();
        PoolStatus {
            workers,
            stuck,
            abandoned: state.abandoned,
            stalled: !self.watch.closing.load(Ordering::Acquire)
                && stuck == workers
                && state.abandoned >= self.watch.settings.max_abandoned,
        }
    }

    /// The number of abandoned threads still inside the device, kept current by the pool: a
    /// backend that must not pull the device API out from under a call (PKCS#11
    /// `C_Finalize` while re-initialising) reads it without asking the pool.
    pub fn abandoned_gauge(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.watch.abandoned_now)
    }

    /// Close the queue and wait until every worker thread has finished its current job and
    /// dropped its device (closing sessions, releasing the card). Jobs still queued are
    /// answered [`BackendError::ShuttingDown`] without running; later submissions too.
    ///
    /// A worker inside a job past the job's deadline plus the grace is not waited for: it is
    /// abandoned (it leaves once the device returns). Returns how many abandoned threads may
    /// still be inside the device API; only when that is 0 may a backend finalise its module.
    ///
    /// Blocks for as long as the slowest job in flight (a card waiting for a touch: up to ~15
    /// s; a job without a deadline: as long as it takes); call it from a blocking context,
    /// never from a worker's own job.
    pub fn shutdown(&self) -> usize {
        self.watch.closing.store(true, Ordering::Release);
        drop(
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let mut state = self.watch.lock();
        // Idle workers see the closed queue and leave; busy ones leave after their job; the
        // watchdog abandons those stuck past their deadline (woken now for those already are).
        self.watch.changed.notify_all();
        while state.threads.iter().any(|t| !t.abandoned) {
            state = self
                .watch
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let abandoned = state.abandoned;
        state.watching = false;
        self.watch.changed.notify_all();
        drop(state);
        let watchdog = self
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = watchdog
            && w.join().is_err()
        {
            tracing::error!(pool = %self.watch.name, "device watchdog panicked");
        }
        if abandoned > 0 {
            tracing::warn!(pool = %self.watch.name, abandoned, "shut down with worker threads still inside the device");
        }
        abandoned
    }
}

impl<D: Device> Drop for Pool<D> {
    /// Without [`Pool::shutdown`]: the workers leave as the queue closes; the watchdog is told
    /// to stop (not waited for).
    fn drop(&mut self) {
        self.watch.closing.store(true, Ordering::Release);
        self.watch.lock().watching = false;
        self.watch.changed.notify_all();
    }
}

impl<D: Device> Watch<D> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start a worker thread owning `device`, registered in `state` (locked by the caller, so
    /// the thread cannot leave before it is registered).
    fn spawn(self: &Arc<Self>, state: &mut State, device: D) -> std::io::Result<()> {
        let index = state.next_index;
        state.next_index += 1;
        state.threads.push(Thread {
            index,
            busy: None,
            abandoned: false,
        });
        let watch = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{index}", self.name))
            .spawn(move || work(index, &watch, device));
        match spawned {
            // Not joined: shutdown waits on the state instead, so that it need not wait for
            // an abandoned thread. A thread drops its device before it leaves the state.
            Ok(_detached) => Ok(()),
            Err(e) => {
                state.threads.retain(|t| t.index != index);
                Err(e)
            }
        }
    }

    /// Thread `index` starts a job.
    fn begin(&self, index: usize, stuck_at: Option<Instant>) {
        let mut state = self.lock();
        if let Some(t) = state.threads.iter_mut().find(|t| t.index == index) {
            t.busy = Some(Busy {
                stuck_at,
                reported: false,
            });
        }
        if let Some(at) = stuck_at
            && state.watch_until.is_none_or(|w| at < w)
        {
            self.changed.notify_all();
        }
    }

    /// Thread `index` finished its job; `true` when it was abandoned meanwhile.
    fn end(&self, index: usize) -> bool {
        let mut state = self.lock();
        match state.threads.iter_mut().find(|t| t.index == index) {
            Some(t) => {
                t.busy = None;
                t.abandoned
            }
            None => true,
        }
    }

    /// Abandon every worker stuck at `now`: replaced while [`PoolSettings::max_abandoned`]
    /// allows, during shutdown without replacement (so it is not waited for).
    fn abandon_stuck(self: &Arc<Self>, state: &mut State, now: Instant) {
        let closing = self.closing.load(Ordering::Acquire);
        let stuck: Vec<usize> = state
            .threads
            .iter()
            .filter(|t| !t.abandoned && t.busy.as_ref().is_some_and(|b| b.stuck(now)))
            .map(|t| t.index)
            .collect();
        for index in stuck {
            let replace = self
                .replace
                .as_ref()
                .filter(|_| state.abandoned < self.settings.max_abandoned);
            let Some(t) = state.threads.iter_mut().find(|t| t.index == index) else {
                continue;
            };
            let worker = format!("{}-{index}", self.name);
            if closing {
                t.abandoned = true;
                state.abandoned += 1;
                self.abandoned_now.store(state.abandoned, Ordering::Release);
                tracing::warn!(%worker, "device worker still inside a call past its deadline at shutdown; not waiting for it");
                // Shutdown waits for this.
                self.changed.notify_all();
            } else if let Some(replace) = replace {
                t.abandoned = true;
                state.abandoned += 1;
                self.abandoned_now.store(state.abandoned, Ordering::Release);
                let device = replace(state.next_index);
                match self.spawn(state, device) {
                    Ok(()) => {
                        tracing::warn!(%worker, abandoned = state.abandoned, "device worker stuck past its job's deadline; abandoned, and replaced by a new worker with a fresh connection")
                    }
                    Err(e) => {
                        tracing::error!(%worker, error = %e, "device worker stuck past its job's deadline; abandoned, but its replacement could not be started")
                    }
                }
            } else if let Some(b) = t.busy.as_mut()
                && !b.reported
            {
                b.reported = true;
                tracing::error!(%worker, abandoned = state.abandoned, max_abandoned = self.settings.max_abandoned, "device worker stuck past its job's deadline; not replaced: the limit of abandoned workers is reached");
            }
        }
    }
}

/// The watchdog's loop: sleep until the earliest moment a running job would count as stuck
/// (or until signalled), abandon and replace the stuck workers, repeat. It never polls: with
/// no job in progress it waits for a signal.
fn watchdog<D: Device>(watch: &Arc<Watch<D>>) {
    let mut state = watch.lock();
    while state.watching {
        let now = Instant::now();
        watch.abandon_stuck(&mut state, now);
        let next = state
            .threads
            .iter()
            .filter(|t| !t.abandoned)
            .filter_map(|t| t.busy.as_ref()?.stuck_at)
            .filter(|&at| at > now)
            .min();
        state.watch_until = next;
        state = match next {
            None => watch
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(at) => {
                watch
                    .changed
                    .wait_timeout(state, at.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

/// Removes a worker thread from the pool's state when it ends, normally or by a panic, after
/// its device is dropped.
struct Leave<'a, D> {
    /// The pool's shared state.
    watch: &'a Watch<D>,
    /// The thread's index.
    index: usize,
}

impl<D> Drop for Leave<'_, D> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(worker = %format!("{}-{}", self.watch.name, self.index), "device worker panicked");
        }
        let mut state = self
            .watch
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = state.threads.iter().position(|t| t.index == self.index) {
            let t = state.threads.swap_remove(i);
            if t.abandoned {
                state.abandoned = state.abandoned.saturating_sub(1);
                self.watch
                    .abandoned_now
                    .store(state.abandoned, Ordering::Release);
            }
        }
        // The watchdog may replace a stuck worker now; shutdown may be waiting for this.
        self.watch.changed.notify_all();
    }
}

/// A worker thread's loop: run jobs until the queue is closed or the thread was abandoned
/// while inside a job, then drop the device here, on the thread that used it.
fn work<D: Device>(index: usize, watch: &Watch<D>, device: D) {
    // Declared before the device, so dropped after it: the thread leaves the state only
    // once its device is released.
    let _leave = Leave { watch, index };
    let mut device = device;
    while let Ok(job) = watch.rx.recv() {
        let metrics = crate::metrics::metrics();
        if watch.closing.load(Ordering::Acquire) {
            metrics.job_dropped();
            // Dropping the job drops its reply channel: the caller gets ShuttingDown.
            continue;
        }
        let started = metrics.job_started(job.queued);
        watch.begin(index, job.stuck_at);
        (job.run)(&mut device);
        metrics.job_done(started);
        if watch.end(index) {
            tracing::warn!(worker = %format!("{}-{index}", watch.name), "abandoned device worker returned from the device; releasing its connection and leaving");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

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

    /// Pool settings for tests: a short grace, so a stuck worker is seen quickly.
    fn settings(queue_depth: usize, max_abandoned: usize) -> PoolSettings {
        PoolSettings {
            queue_depth,
            max_abandoned,
            grace: Duration::from_millis(50),
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
        let pool = Pool::start(
            "fake",
            vec![Fake::new(&seen)],
            settings(queue_depth, 0),
            None,
        )
        .unwrap();
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
        let devices = (0..3).map(|_| Fake::new(&seen)).collect();
        let pool = Pool::start("fake", devices, settings(8, 0), None).unwrap();
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

    /// A pool of `workers` fakes (replacements made the same way, counted in `made`).
    fn pool(workers: usize, max_abandoned: usize) -> (Pool<Fake>, Arc<Seen>, Arc<AtomicUsize>) {
        let seen = Arc::new(Seen::default());
        let made = Arc::new(AtomicUsize::new(0));
        let devices = (0..workers).map(|_| Fake::new(&seen)).collect();
        let replace: DeviceFactory<Fake> = Box::new({
            let (seen, made) = (Arc::clone(&seen), Arc::clone(&made));
            move |_| {
                made.fetch_add(1, Ordering::SeqCst);
                Fake::new(&seen)
            }
        });
        let pool =
            Pool::start("fake", devices, settings(16, max_abandoned), Some(replace)).unwrap();
        (pool, seen, made)
    }

    /// A job that hangs inside the device until the returned sender is used (or dropped), and
    /// a receiver that tells when it entered the device.
    fn hung_job() -> (
        impl FnOnce(&mut Fake) -> Result<u32, BackendError> + Send + 'static,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    ) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let job = move |d: &mut Fake| {
            entered_tx.send(()).unwrap();
            held.recv().ok();
            d.run(Retry::Idempotent, |d| d.op(&mut vec![]))
        };
        (job, release, entered)
    }

    /// The name of the thread that runs a job.
    fn thread_name(d: &mut Fake) -> Result<String, BackendError> {
        d.run(Retry::Idempotent, |d| d.op(&mut vec![]))?;
        Ok(std::thread::current().name().unwrap_or("").to_owned())
    }

    /// Wait (bounded) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn a_hung_worker_is_replaced_and_leaves_when_the_device_returns() {
        let (pool, seen, made) = pool(1, 1);
        let (job, release, entered) = hung_job();
        let started = Instant::now();
        let r = pool
            .submit_by(started + Duration::from_millis(100), late, job)
            .await;
        // The caller is answered at its deadline while the worker is still inside the device.
        assert!(matches!(r, Err(BackendError::TouchRequired)), "{r:?}");
        entered.recv().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));

        // Past the deadline and the grace, a replacement with a fresh device serves the next
        // job: the pool kept its capacity of one.
        let next = pool
            .submit_by(Instant::now() + Duration::from_secs(5), late, thread_name)
            .await
            .unwrap();
        assert_eq!(next, "fake-1");
        assert_eq!(made.load(Ordering::SeqCst), 1);
        let status = pool.status();
        assert_eq!(
            (
                status.workers,
                status.stuck,
                status.abandoned,
                status.stalled
            ),
            (1, 0, 1, false)
        );
        assert_eq!(
            seen.connects.load(Ordering::SeqCst),
            1,
            "fresh device not yet used twice"
        );

        // The hung call returns: its answer is dropped (the caller had its answer), and the
        // abandoned thread releases its device and leaves instead of taking more jobs.
        release.send(()).unwrap();
        eventually("the abandoned worker left", || pool.status().abandoned == 0);
        assert_eq!(seen.dropped.load(Ordering::SeqCst), 1);
        for _ in 0..4 {
            let name = pool.submit(thread_name).await.unwrap();
            assert_eq!(name, "fake-1");
        }
        assert_eq!(pool.shutdown(), 0);
        assert_eq!(seen.dropped.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_worker_stuck_with_no_replacement_left_is_stalled() {
        let (pool, _seen, made) = pool(1, 1);
        assert!(!pool.status().stalled);
        let (first, release_first, entered) = hung_job();
        let deadline = || Instant::now() + Duration::from_millis(60);
        assert!(pool.submit_by(deadline(), late, first).await.is_err());
        entered.recv().unwrap();
        eventually("the stuck worker replaced", || pool.status().abandoned == 1);
        assert!(!pool.status().stalled);
        // The replacement hangs too.
        let (second, release_second, entered) = hung_job();
        assert!(pool.submit_by(deadline(), late, second).await.is_err());
        entered.recv().unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 1);
        // Both hung, the limit of one abandoned worker reached: stalled, and no new thread.
        eventually("stalled", || pool.status().stalled);
        let status = pool.status();
        assert_eq!((status.workers, status.stuck, status.abandoned), (1, 1, 1));
        // A request meanwhile is answered at its deadline and never reaches the device.
        let r = pool.submit_by(deadline(), late, thread_name).await;
        assert!(matches!(r, Err(BackendError::TouchRequired)), "{r:?}");
        assert_eq!(made.load(Ordering::SeqCst), 1);

        // The first (abandoned) call returns: room for one more abandoned worker, so the
        // stuck one is replaced at once and the pool serves again.
        release_first.send(()).unwrap();
        eventually("no longer stalled", || !pool.status().stalled);
        let name = pool
            .submit_by(Instant::now() + Duration::from_secs(5), late, thread_name)
            .await
            .unwrap();
        assert_eq!(name, "fake-2");
        assert_eq!(made.load(Ordering::SeqCst), 2);
        release_second.send(()).unwrap();
        eventually("both abandoned workers left", || {
            pool.status().abandoned == 0
        });
        assert_eq!(pool.shutdown(), 0);
    }

    #[tokio::test]
    async fn without_replacements_a_stuck_worker_serves_again_once_it_returns() {
        let (pool, seen, made) = pool(1, 0);
        let (job, release, entered) = hung_job();
        assert!(
            pool.submit_by(Instant::now() + Duration::from_millis(60), late, job)
                .await
                .is_err()
        );
        entered.recv().unwrap();
        eventually("stalled", || pool.status().stalled);
        release.send(()).unwrap();
        eventually("not stalled", || !pool.status().stalled);
        // The same thread (never abandoned) takes the next job.
        assert_eq!(pool.submit(thread_name).await.unwrap(), "fake-0");
        assert_eq!(made.load(Ordering::SeqCst), 0);
        assert_eq!(seen.dropped.load(Ordering::SeqCst), 0);
        assert_eq!(pool.shutdown(), 0);
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_worker_stuck_past_its_deadline() {
        for max_abandoned in [0, 1] {
            let (pool, seen, _made) = pool(2, max_abandoned);
            let (job, release, entered) = hung_job();
            let hung = pool.submit_by(Instant::now() + Duration::from_millis(200), late, job);
            entered.recv().unwrap();
            // Shut down while the job is still before its deadline: shutdown waits for it
            // until the deadline and the grace, then leaves it behind.
            let started = Instant::now();
            let pool = Arc::new(pool);
            let stopping = std::thread::spawn({
                let pool = Arc::clone(&pool);
                move || pool.shutdown()
            });
            let until = Instant::now() + Duration::from_secs(5);
            while !stopping.is_finished() {
                assert!(Instant::now() < until, "shutdown hangs on a stuck worker");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                stopping.join().unwrap(),
                1,
                "one thread left inside the device"
            );
            assert!(started.elapsed() >= Duration::from_millis(150));
            assert!(hung.await.is_err());
            // The idle worker has left and dropped its device; the stuck one still holds its.
            assert_eq!(seen.dropped.load(Ordering::SeqCst), 1);
            release.send(()).unwrap();
            eventually("the stuck thread dropped its device", || {
                seen.dropped.load(Ordering::SeqCst) == 2
            });
            assert!(matches!(
                pool.submit(thread_name).await,
                Err(BackendError::ShuttingDown)
            ));
        }
    }
}
