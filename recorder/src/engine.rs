//! The engine: drives a [`Pipeline`] from an event source, takes commands (start/stop tasks,
//! read the topology), and writes what tasks record to a [`Sink`] in batches.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deetune_protocols::Exchange;
use deetune_store::{
    Appender, BundleHeader, BundleWriter, Store, TaskId, TaskRecord, TaskSpec, TopologyEdge,
};
use tokio::sync::{mpsc, oneshot};

use crate::capture::CaptureStats;
use crate::events::StreamEvent;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::policy::PolicyError;
use crate::tasks::{NotRunning, Recorded};

/// Unix time in ms.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writing to the store or the bundle failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op}: {source}")]
pub struct SinkError {
    /// What was being done.
    pub op: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    fn new(op: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        move |source| Self { op, source }
    }
}

/// What a sink holds that [`Sink::commit`] has not written yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staged {
    /// Exchanges.
    pub exchanges: u64,
    /// Memory they take, in bytes.
    pub bytes: usize,
}

/// Where recorded exchanges, task records and topology edges go.
pub trait Sink: Send {
    /// Exchanges in recorded order, in runs of the same task (handed over: no copy). A sink
    /// may stage them (see [`Self::commit`]).
    ///
    /// # Errors
    /// The write failed.
    fn write(&mut self, batch: Recorded) -> Result<(), SinkError>;
    /// What [`Self::write`] staged and [`Self::commit`] has not written (none by default:
    /// the exchanges are written in `write`).
    fn staged(&self) -> Staged {
        Staged::default()
    }
    /// Writes what [`Self::write`] staged; the engine calls it before it saves task records
    /// (whose counters include those exchanges) and before every flush.
    ///
    /// # Errors
    /// The write failed (the staged exchanges are lost).
    fn commit(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// A task record changed.
    ///
    /// # Errors
    /// The write failed.
    fn put_task(&mut self, task: &TaskRecord) -> Result<(), SinkError>;
    /// The topology, whole.
    ///
    /// # Errors
    /// The write failed.
    fn put_edges(&mut self, edges: &[TopologyEdge]) -> Result<(), SinkError>;
    /// Make everything durable.
    ///
    /// # Errors
    /// The flush failed.
    fn flush(&mut self) -> Result<(), SinkError>;

    /// Make everything durable soon, without waiting when the sink can (the engine's
    /// periodic flush; [`BackgroundFlushSink`] hands it to another thread).
    ///
    /// # Errors
    /// This flush or an earlier one failed.
    fn flush_soon(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

/// The embedded store as a sink (the daemon's). [`Sink::write`] encodes each exchange into
/// its task's [`Appender`] at once (the exchange is freed while still in the cache);
/// [`Sink::commit`] writes each task's blocks in one sled batch.
#[derive(Debug)]
pub struct StoreSink {
    store: Arc<Store>,
    staged: Vec<Appender>,
}

impl StoreSink {
    /// A sink writing to `store`.
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            staged: Vec::new(),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Sink for StoreSink {
    fn write(&mut self, batch: Recorded) -> Result<(), SinkError> {
        // An exchange that cannot be encoded is lost alone: the others of the batch are
        // still staged. The first error is returned.
        let mut first: Option<deetune_store::StoreError> = None;
        for (task, run) in batch.into_runs() {
            let at = match self
                .staged
                .iter()
                .position(|a| a.task_id() == task.as_str())
            {
                Some(at) => at,
                None => match Appender::new(&task) {
                    Ok(a) => {
                        self.staged.push(a);
                        self.staged.len() - 1
                    }
                    Err(e) => {
                        first.get_or_insert(e);
                        continue;
                    }
                },
            };
            let appender = &mut self.staged[at];
            for x in run {
                if let Err(e) = appender.push(&x) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), |e| {
            Err(SinkError::new("append exchanges to the store")(Box::new(e)))
        })
    }

    fn staged(&self) -> Staged {
        self.staged.iter().fold(Staged::default(), |s, a| Staged {
            exchanges: s.exchanges + a.pending(),
            bytes: s.bytes + a.bytes(),
        })
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        // Every task's blocks are written even when one task's fail; the first error is
        // returned. Appenders of tasks with nothing pending are dropped (ended tasks).
        let mut result = Ok(());
        self.staged.retain(|a| a.pending() > 0);
        for appender in &mut self.staged {
            if let Err(e) = self.store.commit(appender) {
                if result.is_ok() {
                    result = Err(SinkError::new("append exchanges to the store")(Box::new(e)));
                }
            }
        }
        result
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<(), SinkError> {
        self.store
            .put_task(task)
            .map_err(|e| SinkError::new("save a task")(Box::new(e)))
    }

    fn put_edges(&mut self, edges: &[TopologyEdge]) -> Result<(), SinkError> {
        self.store
            .put_edges(edges)
            .map_err(|e| SinkError::new("save the topology")(Box::new(e)))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.commit()?;
        self.store
            .flush()
            .map(|_| ())
            .map_err(|e| SinkError::new("flush the store")(Box::new(e)))
    }
}

/// The store as the daemon's sink: writes on the caller's thread (no exchange crosses
/// threads), the periodic `fsync` ([`Sink::flush_soon`]) on a thread of its own, so a slow
/// disk does not stall the thread that drains the ring buffer. [`Sink::flush`] still waits.
pub struct BackgroundFlushSink {
    inner: StoreSink,
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for BackgroundFlushSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundFlushSink")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl BackgroundFlushSink {
    /// Starts the flusher thread.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn new(inner: StoreSink) -> Result<Self, SinkError> {
        // One pending request at most: requests while a flush runs fold into the next one.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let (store, report) = (inner.store.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("deetune-flush".into())
            .spawn(move || {
                for () in rx {
                    if let Err(e) = store.flush() {
                        *report
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(e.to_string());
                    }
                }
            })
            .map_err(|e| SinkError::new("start the store flusher thread")(Box::new(e)))?;
        Ok(Self {
            inner,
            tx: Some(tx),
            thread: Some(thread),
            failed,
        })
    }
}

impl Sink for BackgroundFlushSink {
    fn write(&mut self, batch: Recorded) -> Result<(), SinkError> {
        self.inner.write(batch)
    }

    fn staged(&self) -> Staged {
        self.inner.staged()
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        self.inner.commit()
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<(), SinkError> {
        self.inner.put_task(task)
    }

    fn put_edges(&mut self, edges: &[TopologyEdge]) -> Result<(), SinkError> {
        self.inner.put_edges(edges)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }

    fn flush_soon(&mut self) -> Result<(), SinkError> {
        self.inner.commit()?;
        if let Some(tx) = &self.tx {
            // Full: a flush is pending already and covers what was written so far.
            let _ = tx.try_send(());
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        failed.map_or(Ok(()), |msg| {
            Err(SinkError::new("flush the store")(msg.into()))
        })
    }
}

impl Drop for BackgroundFlushSink {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bundle file as a sink (`deetune record -o`): exchanges in order; the header holds the
/// task as it started; the final record is kept in [`BundleSink::last_task`].
#[derive(Debug)]
pub struct BundleSink {
    writer: Option<BundleWriter>,
    path: PathBuf,
    /// The last task record seen.
    pub last_task: Option<TaskRecord>,
}

impl BundleSink {
    /// Creates the file (`.zst` compresses).
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: PathBuf, task: &TaskRecord) -> Result<Self, SinkError> {
        let writer = BundleWriter::create(&path, &BundleHeader::new(task.clone()))
            .map_err(|e| SinkError::new("create the bundle")(Box::new(e)))?;
        Ok(Self {
            writer: Some(writer),
            path,
            last_task: Some(task.clone()),
        })
    }

    /// Finishes the file; returns the number of exchanges written.
    ///
    /// # Errors
    /// The last write failed.
    pub fn finish(&mut self) -> Result<u64, SinkError> {
        match self.writer.take() {
            Some(w) => w
                .finish()
                .map_err(|e| SinkError::new("finish the bundle")(Box::new(e))),
            None => Ok(0),
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Sink for BundleSink {
    fn write(&mut self, batch: Recorded) -> Result<(), SinkError> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        for (_, e) in batch.iter() {
            w.write(e)
                .map_err(|e| SinkError::new("write to the bundle")(Box::new(e)))?;
        }
        Ok(())
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<(), SinkError> {
        self.last_task = Some(task.clone());
        Ok(())
    }

    fn put_edges(&mut self, _edges: &[TopologyEdge]) -> Result<(), SinkError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Everything in memory (tests, in-process users).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    /// Recorded exchanges.
    pub exchanges: Arc<Mutex<Vec<(TaskId, Exchange)>>>,
    /// Last record of each task.
    pub tasks: Arc<Mutex<Vec<TaskRecord>>>,
    /// Last topology.
    pub edges: Arc<Mutex<Vec<TopologyEdge>>>,
}

impl Sink for MemorySink {
    fn write(&mut self, batch: Recorded) -> Result<(), SinkError> {
        self.exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(batch.into_pairs());
        Ok(())
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<(), SinkError> {
        let mut t = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.retain(|x| x.id != task.id);
        t.push(task.clone());
        Ok(())
    }

    fn put_edges(&mut self, edges: &[TopologyEdge]) -> Result<(), SinkError> {
        *self
            .edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = edges.to_vec();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Something that yields stream events: the capture, a channel, a pcap reader.
pub trait EventSource: Send {
    /// The next event; none when the source ended.
    fn next_event(&mut self) -> impl std::future::Future<Output = Option<StreamEvent>> + Send;

    /// An event that is ready now, without waiting (none: wait with [`Self::next_event`]).
    /// The engine drains ready events in batches between two looks at its commands and
    /// timers.
    fn try_next_event(&mut self) -> Option<StreamEvent> {
        None
    }

    /// The capture's own counters, when the source is a capture: losses the kernel counted
    /// that belong to no connection (a full connection table, lost open/close events, …)
    /// show up only here, not in any task.
    fn capture_stats(&self) -> Option<CaptureStats> {
        None
    }
}

impl EventSource for mpsc::Receiver<StreamEvent> {
    async fn next_event(&mut self) -> Option<StreamEvent> {
        self.recv().await
    }

    fn try_next_event(&mut self) -> Option<StreamEvent> {
        self.try_recv().ok()
    }
}

/// A source that never yields (a daemon without capture).
#[derive(Debug, Default)]
pub struct NoEvents;

impl EventSource for NoEvents {
    async fn next_event(&mut self) -> Option<StreamEvent> {
        std::future::pending().await
    }
}

/// A command to the engine.
#[derive(Debug)]
pub enum Command {
    /// Start a task.
    Start(TaskSpec, oneshot::Sender<Result<TaskRecord, PolicyError>>),
    /// Resume an interrupted or stopped task.
    Resume(TaskRecord, oneshot::Sender<Result<TaskRecord, PolicyError>>),
    /// Stop a running task.
    Stop(TaskId, oneshot::Sender<Result<TaskRecord, NotRunning>>),
    /// The running tasks with their live counters.
    Running(oneshot::Sender<Vec<TaskRecord>>),
    /// The topology.
    Topology(oneshot::Sender<Vec<TopologyEdge>>),
    /// Counters.
    Stats(oneshot::Sender<EngineStats>),
    /// Write everything out now.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// What the engine reports about itself.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    /// Pipeline counters.
    pub pipeline: PipelineStats,
    /// Open connections.
    pub open_connections: u64,
    /// Running tasks.
    pub running_tasks: u64,
    /// Batches of exchanges handed to the sink.
    pub batches: u64,
    /// Sink errors (each also logged).
    pub sink_errors: u64,
    /// The capture's counters, with the losses the kernel counted outside any connection
    /// (none without a capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureCounters>,
}

/// What `GET /v1/status` shows of the capture: events and bytes, and every loss it counted,
/// including those tied to no connection and so to no task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CaptureCounters {
    /// Events the kernel wrote to the ring buffer.
    pub kernel_events: u64,
    /// Payload bytes the kernel wrote to the ring buffer.
    pub kernel_bytes: u64,
    /// Connections opened.
    pub connections: u64,
    /// Bytes left to the server end of loopback connections (dedup; not a loss).
    pub dedup_bytes: u64,
    /// Bytes beyond the per-syscall cap (gaps on their connection).
    pub over_cap_bytes: u64,
    /// Data events that found no room in the ring buffer.
    pub ring_full_events: u64,
    /// Payload bytes of those.
    pub ring_full_bytes: u64,
    /// Bytes the kernel could not copy from the process's memory.
    pub read_failed_bytes: u64,
    /// Bytes moved by sendfile, splice, io_uring, … (not copied; gaps on their connection).
    pub other_path_bytes: u64,
    /// Connections not tracked because the kernel's connection table was full (no
    /// connection, so no task sees this loss).
    pub conn_table_full: u64,
    /// Open, close and gap events lost for want of ring-buffer room (no connection to
    /// charge them to).
    pub control_events_lost: u64,
    /// Bytes on a socket already closed that no tracked connection had (not captured).
    pub after_close_bytes: u64,
    /// Always 0 since connections live in kernel socket storage (kept for the JSON shape).
    pub missed_closes: u64,
    /// Runs of the kernel programs the kernel skipped (nested in themselves on one CPU): a
    /// connection end or bytes nobody saw (see `KernelLosses::skipped_runs`).
    pub skipped_runs: u64,
    /// Records for a connection whose open event was lost (dropped in user space).
    pub orphan_records: u64,
    /// Records too short or of an unknown kind (dropped).
    pub bad_records: u64,
}

impl From<CaptureStats> for CaptureCounters {
    fn from(s: CaptureStats) -> Self {
        Self {
            kernel_events: s.kernel_events,
            kernel_bytes: s.kernel_bytes,
            connections: s.connections,
            dedup_bytes: s.dedup_bytes.max(s.kernel.dedup_bytes),
            over_cap_bytes: s.kernel.over_cap_bytes,
            ring_full_events: s.kernel.ring_full_events,
            ring_full_bytes: s.kernel.ring_full_bytes,
            read_failed_bytes: s.kernel.read_failed_bytes,
            other_path_bytes: s.kernel.other_path_bytes,
            conn_table_full: s.kernel.conn_table_full,
            control_events_lost: s.kernel.control_events_lost,
            after_close_bytes: s.kernel.after_close_bytes,
            missed_closes: s.kernel.missed_closes,
            skipped_runs: s.kernel.skipped_runs,
            orphan_records: s.orphan_records,
            bad_records: s.bad_records,
        }
    }
}

/// How the engine batches.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Flush at least this often.
    pub flush_every: Duration,
    /// Hand recorded exchanges to the sink when this many wait: small, so that a sink that
    /// encodes them ([`StoreSink`]) does so while they are still in the cache and frees
    /// them soon: the ≈ 20 strings of each freed in a burst overflow jemalloc's thread cache
    /// (`engine_cpu` under callgrind: 16,171 instructions per exchange at 64, 14,911 at 16,
    /// 14,945 at 8).
    pub stage: usize,
    /// Commit (see [`Sink::commit`]) when this many exchanges are staged. Each commit is one
    /// sled batch per task, and sled writes its log buffer and waits for the disk once per
    /// batch, on one of its I/O threads: at 2,048 exchanges per batch that was ≈ 12 % of the
    /// daemon's CPU at 60k exchanges/s. Staged exchanges are compressed (≈ 60 bytes each for
    /// small HTTP calls), so holding many costs little memory.
    pub batch: usize,
    /// Commit when the staged exchanges take this many bytes.
    pub batch_bytes: usize,
    /// Stop when no task runs any more (`deetune record`).
    pub exit_when_idle: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            flush_every: Duration::from_millis(200),
            stage: 16,
            batch: 16_384,
            batch_bytes: 8 << 20,
            exit_when_idle: false,
        }
    }
}

/// Events handled in one go before the engine looks at its commands and timers again.
const EVENTS_PER_TURN: usize = 1024;

/// How the engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEnd {
    /// The source ended.
    SourceEnded,
    /// Shut down on request.
    Shutdown,
    /// No task left (with `exit_when_idle`).
    Idle,
}

/// The engine.
pub struct Engine<S: Sink> {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// The sink.
    pub sink: S,
    options: EngineOptions,
    stats: EngineStats,
    /// Tasks that ended, final records, in order.
    pub ended: Vec<TaskRecord>,
}

impl<S: Sink> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Engine<S> {
    /// An engine.
    pub fn new(pipeline: Pipeline, sink: S, options: EngineOptions) -> Self {
        Self {
            pipeline,
            sink,
            options,
            stats: EngineStats::default(),
            ended: Vec::new(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.pipeline = self.pipeline.stats().clone();
        s.open_connections = self.pipeline.open_connections() as u64;
        s.running_tasks = self.pipeline.tasks.running().count() as u64;
        s
    }

    /// Writes waiting exchanges and changed task records.
    ///
    /// # Errors
    /// The sink failed (the exchanges are lost, and counted).
    pub fn flush(&mut self, durable: bool) -> Result<(), SinkError> {
        self.flush_with(durable, true)
    }

    /// Handles one event; hands what tasks recorded to the sink every
    /// [`EngineOptions::stage`] exchanges and commits it (with the task records) when
    /// [`EngineOptions::batch`] or `batch_bytes` is reached. Errors are counted and logged.
    pub fn handle(&mut self, ev: StreamEvent) {
        self.pipeline.handle(ev);
        if self.pipeline.output_len() >= self.options.stage {
            let _ = self.stage();
            if self.commit_due() {
                let _ = self.flush(false);
            }
        }
    }

    /// Hands the waiting exchanges to the sink.
    fn stage(&mut self) -> Result<(), SinkError> {
        let out = self.pipeline.take_recorded();
        if out.is_empty() {
            return Ok(());
        }
        let n = out.len();
        self.stats.batches += 1;
        self.sink.write(out).inspect_err(|e| {
            self.stats.sink_errors += 1;
            tracing::error!(error = %e, batch = n, "Recorded exchanges of this batch (at most all of it) could not be written.");
        })
    }

    /// True when the sink holds enough to commit.
    fn commit_due(&self) -> bool {
        let staged = self.sink.staged();
        staged.exchanges >= self.options.batch as u64 || staged.bytes >= self.options.batch_bytes
    }

    /// [`Self::flush`]; `wait: false` lets the sink make it durable later.
    fn flush_with(&mut self, durable: bool, wait: bool) -> Result<(), SinkError> {
        let mut result = self.stage();
        let staged = self.sink.staged().exchanges;
        if let Err(e) = self.sink.commit() {
            self.stats.sink_errors += 1;
            tracing::error!(error = %e, lost = staged, "Recorded exchanges could not be written.");
            result = Err(e);
        }

        // Persist task records after their exchanges: a record never counts exchanges the
        // store does not have.
        let changed = self.pipeline.tasks.take_changed();
        let ended = self.pipeline.tasks.take_ended();
        for id in changed {
            let rec = self
                .pipeline
                .tasks
                .get(&id)
                .cloned()
                .or_else(|| ended.iter().find(|r| r.id == id).cloned());
            if let Some(rec) = rec {
                if let Err(e) = self.sink.put_task(&rec) {
                    self.stats.sink_errors += 1;
                    tracing::error!(error = %e, task = %rec.id, "A task record could not be saved.");
                    result = Err(e);
                }
            }
        }
        for rec in &ended {
            self.ended.push(rec.clone());
            tracing::info!(task = %rec.id, reason = rec.stop_reason.as_deref().unwrap_or(""), recorded = rec.stats.recorded, "Task ended.");
        }
        if durable {
            if let Err(e) = self
                .sink
                .put_edges(&self.pipeline.topology.edges())
                .and_then(|()| {
                    if wait {
                        self.sink.flush()
                    } else {
                        self.sink.flush_soon()
                    }
                })
            {
                self.stats.sink_errors += 1;
                tracing::error!(error = %e, "The store could not be flushed.");
                result = Err(e);
            }
        }
        result
    }

    fn command(&mut self, cmd: Command, capture: Option<CaptureStats>) {
        let now = now_ms();
        match cmd {
            Command::Start(spec, reply) => {
                let r = self.pipeline.tasks.start(spec, now);
                if let Ok(t) = &r {
                    tracing::info!(task = %t.id, "Task started.");
                }
                let _ = self.flush(true);
                let _ = reply.send(r);
            }
            Command::Resume(rec, reply) => {
                let r = self.pipeline.tasks.resume(rec, now);
                let _ = self.flush(true);
                let _ = reply.send(r);
            }
            Command::Stop(id, reply) => {
                let r = self
                    .pipeline
                    .tasks
                    .stop(&id, crate::tasks::reason::USER, now);
                let _ = self.flush(true);
                let _ = reply.send(r);
            }
            Command::Running(reply) => {
                let _ = reply.send(self.pipeline.tasks.running().cloned().collect());
            }
            Command::Topology(reply) => {
                let _ = reply.send(self.pipeline.topology.edges());
            }
            Command::Stats(reply) => {
                let mut s = self.stats();
                s.capture = capture.map(CaptureCounters::from);
                let _ = reply.send(s);
            }
            Command::Flush(reply) => {
                let _ = reply.send(self.flush(true).map_err(|e| e.to_string()));
            }
        }
    }

    /// Runs until the source ends, `shutdown` fires, or (with `exit_when_idle`) no task is
    /// left; flushes before returning.
    pub async fn run<E: EventSource>(
        &mut self,
        mut source: E,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> EngineEnd {
        let mut tick = tokio::time::interval(self.options.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut commands_open = true;
        let end = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break EngineEnd::Shutdown,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(c) => {
                        let capture = matches!(c, Command::Stats(_))
                            .then(|| source.capture_stats())
                            .flatten();
                        self.command(c, capture);
                    }
                    None => commands_open = false,
                },
                _ = tick.tick() => {
                    self.pipeline.tick(now_ms());
                    let _ = self.flush_with(true, false);
                    if self.options.exit_when_idle && self.pipeline.tasks.is_empty() {
                        break EngineEnd::Idle;
                    }
                }
                ev = source.next_event() => match ev {
                    Some(ev) => {
                        // Then what else is ready, up to a bound: one pass through this
                        // select per batch, not per event.
                        let mut next = Some(ev);
                        let mut n = 0;
                        while let Some(ev) = next {
                            self.handle(ev);
                            if self.options.exit_when_idle && self.pipeline.tasks.is_empty() {
                                break;
                            }
                            n += 1;
                            next = if n < EVENTS_PER_TURN { source.try_next_event() } else { None };
                        }
                        if self.options.exit_when_idle && self.pipeline.tasks.is_empty() {
                            break EngineEnd::Idle;
                        }
                    }
                    None => break EngineEnd::SourceEnded,
                },
            }
        };
        if end == EngineEnd::SourceEnded {
            self.pipeline.close_all(now_ms().saturating_mul(1_000_000));
        }
        let _ = self.flush(true);
        end
    }
}

impl EventSource for crate::capture::Capture {
    async fn next_event(&mut self) -> Option<StreamEvent> {
        crate::capture::Capture::next_event(self).await
    }

    fn try_next_event(&mut self) -> Option<StreamEvent> {
        crate::capture::Capture::try_next_event(self)
    }

    fn capture_stats(&self) -> Option<CaptureStats> {
        Some(crate::capture::Capture::stats(self))
    }
}

/// A new task record for `spec` (state `running`, id `t-…`), to pass to [`record`] and to a
/// bundle header.
#[must_use]
pub fn new_task(spec: TaskSpec) -> TaskRecord {
    let now = now_ms();
    TaskRecord {
        id: format!("t-{now:x}"),
        spec,
        state: deetune_store::TaskState::Running,
        stop_reason: None,
        started_ms: now,
        stopped_ms: None,
        stats: deetune_store::TaskStats::default(),
    }
}

/// Records one task in the foreground until its duration or count ends it, the source ends,
/// or `stop` resolves (Ctrl-C); returns the final task record (state `stopped`, with its
/// counters). `sink` receives the exchanges; `rules` name the services.
///
/// # Errors
/// The policy or a service rule is invalid.
pub async fn record<E: EventSource, S: Sink>(
    task: TaskRecord,
    rules: &[crate::services::ServiceRule],
    source: E,
    sink: S,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(TaskRecord, S, EngineStats), RecordError> {
    let namer = crate::services::ServiceNamer::new(rules)?;
    let mut tasks = crate::tasks::TaskManager::new();
    let task = tasks.resume(task, now_ms())?;
    let pipeline = Pipeline::new(
        crate::pipeline::PipelineConfig::default(),
        namer,
        tasks,
        crate::topology::TopologyAggregator::default(),
    );
    let mut engine = Engine::new(
        pipeline,
        sink,
        EngineOptions {
            exit_when_idle: true,
            ..EngineOptions::default()
        },
    );
    let (_tx, rx) = mpsc::channel(1);
    let end = engine.run(source, rx, stop).await;
    if end != EngineEnd::Idle {
        let _ = engine
            .pipeline
            .tasks
            .stop(&task.id, crate::tasks::reason::USER, now_ms());
        let _ = engine.flush(true);
    }
    let stats = engine.stats();
    let Engine { sink, ended, .. } = engine;
    let final_record = ended
        .into_iter()
        .rev()
        .find(|r| r.id == task.id)
        .unwrap_or(task);
    Ok((final_record, sink, stats))
}

/// [`record`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Invalid policy.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// Invalid service rule.
    #[error(transparent)]
    Rule(#[from] crate::services::ServiceRuleError),
}
