//! The replay engine: streams the recording, groups it into sessions (one per recorded
//! connection, in order, on one target connection), paces and bounds them, and collects
//! verdicts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deetune_protocols::{Exchange, Protocol, Request, Response};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use crate::diff::{self, Difference};
use crate::path::Path;
use crate::report::{
    Counts, ErrorInfo, ExchangeResult, Finding, InterfaceReport, Report, Totals, Verdict,
};
use crate::rules::{InterfaceRules, Rules, RulesFile};
use crate::send::{self, Reply, SendOptions, Sender};
use crate::target;
use crate::{Pace, ReplayConfig, ReplayError, SendError};

/// Largest rendering of a whole response kept for the HTML report.
const MAX_DETAIL: usize = 16 << 10;
/// Bad records whose message is kept.
const MAX_INPUT_ERRORS: usize = 20;
/// Exchanges the reader hands over at once.
const BATCH: usize = 64;
/// Exchanges read ahead of the dispatcher (bounded memory).
const IN_FLIGHT: usize = 1024;
/// Replayed exchanges waiting to be freed by the reader thread; beyond this the sessions
/// free them themselves.
const MAX_RECYCLED: usize = 4 * IN_FLIGHT;

/// What the dispatcher hands a session: a recorded exchange and its interface.
type SessionTx = mpsc::Sender<(Box<Exchange>, Iface)>;

/// Replayed exchanges go back to the reader thread, which frees them: they were allocated
/// there, and freeing memory of another thread's malloc arena costs the runtime thread
/// more than freeing its own.
#[derive(Default)]
struct Recycler {
    #[expect(
        clippy::vec_box,
        reason = "the exchanges arrive boxed; unboxing would copy each one"
    )]
    dead: Mutex<Vec<Box<Exchange>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Recycler {
    fn put(&self, ex: Box<Exchange>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut dead = self
            .dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if dead.len() < MAX_RECYCLED {
            dead.push(ex);
        }
    }

    #[expect(
        clippy::vec_box,
        reason = "the exchanges arrive boxed; unboxing would copy each one"
    )]
    fn take(&self) -> Vec<Box<Exchange>> {
        std::mem::take(
            &mut *self
                .dead
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The reader is done: from now on sessions free their exchanges themselves.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        drop(self.take());
    }
}

/// Replays `source` with `config` on a runtime of its own (do not call from inside a tokio
/// runtime; use [`replay_async`] there).
///
/// # Errors
/// A [`ReplayError`] when the replay cannot run (bad rules, production target, runtime).
/// Failures of single exchanges are verdicts in the report.
pub fn replay<I, E>(source: I, config: ReplayConfig) -> Result<Report, ReplayError>
where
    I: IntoIterator<Item = Result<Exchange, E>> + Send + 'static,
    I::IntoIter: Send,
    E: std::fmt::Display + Send + 'static,
{
    // The recording is parsed on a thread of its own, and the targets usually run on the same
    // machine in CI: on two cores a single-threaded runtime for the sessions is faster than
    // worker threads waking and stealing from each other (see docs/benchmarks.md, Replay).
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let rt = if cores <= 2 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores - 1)
            .enable_all()
            .build()
    }
    .map_err(ReplayError::Runtime)?;
    rt.block_on(replay_async(source, config))
}

struct Shared {
    rules: Rules,
    opts: Arc<SendOptions>,
    pace: Pace,
    start: Instant,
    t0_ns: AtomicU64,
    rps_slot: AtomicU64,
    /// Records read (counted outside the collector's lock).
    read: AtomicU64,
    collector: Mutex<Collector>,
    max_details: usize,
    baseline_mode: bool,
    recycler: Arc<Recycler>,
}

#[derive(Default)]
struct InterfaceAcc {
    name: String,
    protocol: Option<Protocol>,
    results: Vec<ExchangeResult>,
}

/// An interface (`GET /api/orders`) as the dispatcher names it: a small id for the
/// collector, the name for rules and reports.
#[derive(Clone)]
struct Iface {
    id: usize,
    name: Arc<str>,
}

/// Interface names seen so far, each computed once: the dispatcher builds the name of an
/// HTTP exchange in a reused buffer and only allocates for a new one.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, (Iface, bool)>,
    key: String,
}

impl Interner {
    /// The exchange's interface and whether the `--interface` filter admits it.
    fn get(&mut self, ex: &Exchange, filter: Option<&GlobSet>) -> (Iface, bool) {
        self.key.clear();
        match &ex.request {
            // Exactly `Request::interface` for HTTP, without a new String each time.
            Request::Http(r) => {
                self.key.push_str(&r.method);
                self.key.push(' ');
                self.key
                    .push_str(r.target.split(['?', '#']).next().unwrap_or(""));
            }
            _ => self.key.push_str(&ex.interface()),
        }
        if let Some((iface, admitted)) = self.ids.get(self.key.as_str()) {
            return (iface.clone(), *admitted);
        }
        let name: Arc<str> = Arc::from(self.key.as_str());
        let iface = Iface {
            id: self.ids.len(),
            name: Arc::clone(&name),
        };
        let admitted = filter.is_none_or(|f| f.is_match(&*name));
        self.ids.insert(name, (iface.clone(), admitted));
        (iface, admitted)
    }
}

#[derive(Default)]
struct Collector {
    /// By [`Iface::id`].
    interfaces: Vec<InterfaceAcc>,
    noise: BTreeMap<String, BTreeSet<Path>>,
    details: usize,
    totals: Totals,
    input_errors: Vec<String>,
    progress: Option<indicatif::ProgressBar>,
}

impl Collector {
    fn record(&mut self, interface: &Iface, protocol: Protocol, result: ExchangeResult) {
        if let Some(p) = &self.progress {
            p.inc(1);
        }
        if self.interfaces.len() <= interface.id {
            self.interfaces
                .resize_with(interface.id + 1, InterfaceAcc::default);
        }
        let acc = &mut self.interfaces[interface.id];
        if acc.protocol.is_none() {
            acc.protocol = Some(protocol);
            acc.name = interface.name.to_string();
        }
        acc.results.push(result);
    }
}

/// Replays `source` with `config` inside the caller's tokio runtime.
///
/// # Errors
/// See [`replay`].
#[expect(
    clippy::too_many_lines,
    reason = "the dispatcher loop reads best in one piece"
)]
pub async fn replay_async<I, E>(source: I, config: ReplayConfig) -> Result<Report, ReplayError>
where
    I: IntoIterator<Item = Result<Exchange, E>> + Send + 'static,
    I::IntoIter: Send,
    E: std::fmt::Display + Send + 'static,
{
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let start = Instant::now();
    let rules = Rules::compile(&config.rules)?;
    let filter = build_filter(&config.interfaces)?;
    let needs_tls = config
        .targets
        .iter()
        .chain(&config.baselines)
        .any(|t| t.scheme == crate::Scheme::Https);
    let tls = if needs_tls {
        Some(send::tls_config(config.insecure, &config.ca_certs)?)
    } else {
        None
    };
    let mut targets = Vec::new();
    for t in &config.targets {
        targets.push(Arc::new(target::resolve(t.clone()).await));
    }
    let mut baselines = Vec::new();
    for t in &config.baselines {
        baselines.push(Arc::new(target::resolve(t.clone()).await));
    }
    let progress =
        (config.progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let p = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            p.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos} exchanges replayed ({per_sec}) {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            p.enable_steady_tick(Duration::from_millis(200));
            p
        });
    let shared = Arc::new(Shared {
        rules,
        opts: Arc::new(SendOptions {
            timeout: config.timeout,
            set_headers: config.set_headers.clone(),
            rewrite_path: config.rewrite_path.clone(),
            tls,
        }),
        pace: config.pace,
        start,
        t0_ns: AtomicU64::new(0),
        rps_slot: AtomicU64::new(0),
        read: AtomicU64::new(0),
        collector: Mutex::new(Collector {
            progress,
            ..Collector::default()
        }),
        max_details: config.max_details,
        baseline_mode: !baselines.is_empty(),
        recycler: Arc::default(),
    });

    // The recording is read on a thread of its own (files and the store block). It hands
    // exchanges over in batches (one wake-up of the runtime per batch, not per exchange) and
    // frees the replayed ones itself, next to where they were allocated.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<Result<Box<Exchange>, String>>>(IN_FLIGHT / BATCH);
    let recycler = Arc::clone(&shared.recycler);
    let reader = std::thread::Builder::new()
        .name("deetune-replay-read".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in source {
                // Boxed: an exchange is several hundred bytes, moved many times on its way.
                batch.push(item.map(Box::new).map_err(|e| e.to_string()));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if in_tx.blocking_send(full).is_err() {
                        batch.clear();
                        break;
                    }
                    drop(recycler.take());
                }
            }
            if !batch.is_empty() {
                let _ = in_tx.blocking_send(batch);
            }
            recycler.close();
        })
        .map_err(ReplayError::Runtime)?;

    let concurrency = config.concurrency.max(1);
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut sessions: HashMap<u64, (SessionTx, u64)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = 0u64;
    let mut reopened = 0u64;
    let mut seen_conns: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut abort: Option<ReplayError> = None;
    let mut interner = Interner::default();

    'read: while let Some(batch) = in_rx.recv().await {
        for item in batch {
            tick += 1;
            let Some((ex, interface)) =
                admit(&shared, &config, filter.as_ref(), &mut interner, item)
            else {
                continue;
            };
            if shared.t0_ns.load(Ordering::Relaxed) == 0 {
                shared
                    .t0_ns
                    .store(ex.timing.request_start_ns.max(1), Ordering::Relaxed);
            }
            let service = ex.conn.server.service.as_deref();
            let Some(target) = target::choose(&targets, ex.protocol, service).cloned() else {
                let reason = format!(
                    "no --target for {} service {}",
                    ex.protocol,
                    service.unwrap_or("(unnamed)")
                );
                skip(&shared, &ex, &interface, reason);
                continue;
            };
            if let Some((tx, last)) = sessions.get_mut(&ex.conn.id) {
                *last = tick;
                if let Err(mpsc::error::SendError((ex, interface))) = tx.send((ex, interface)).await
                {
                    record_error(
                        &shared,
                        &ex,
                        &interface,
                        SendError::internal("the session ended early"),
                    );
                }
                continue;
            }
            // A new session.
            let server = std::net::SocketAddr::new(ex.conn.server.addr, ex.conn.server.port);
            if !config.allow_production_target && ex.conn.server.port != 0 {
                let base = target::choose(&baselines, ex.protocol, service);
                for t in std::iter::once(&target).chain(base) {
                    if t.addrs.contains(&server) {
                        abort = Some(ReplayError::ProductionTarget {
                            target: t.target.display(),
                            server,
                            conn: ex.conn.id,
                        });
                    }
                }
                if abort.is_some() {
                    break 'read;
                }
            }
            if !seen_conns.insert(ex.conn.id) {
                reopened += 1;
            }
            let permit = if let Ok(p) = Arc::clone(&sem).try_acquire_owned() {
                p
            } else {
                // All slots busy: end the least recently used session (it finishes its queue).
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
                {
                    sessions.remove(&oldest);
                }
                match Arc::clone(&sem).acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break 'read,
                }
            };
            let (tx, rx) = mpsc::channel(256);
            let baseline = target::choose(&baselines, ex.protocol, service).cloned();
            let candidate = Sender::new(target, Arc::clone(&shared.opts), &ex);
            let baseline = baseline.map(|b| Sender::new(b, Arc::clone(&shared.opts), &ex));
            let conn = ex.conn.id;
            let _ = tx.send((ex, interface)).await;
            sessions.insert(conn, (tx, tick));
            let shared2 = Arc::clone(&shared);
            tasks.spawn(async move {
                run_session(rx, candidate, baseline, &shared2).await;
                drop(permit);
            });
        }
    }
    drop(in_rx);
    drop(sessions);
    if abort.is_some() {
        tasks.abort_all();
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "A replay session failed.");
            }
        }
    }
    let _ = reader.join();
    if let Some(e) = abort {
        return Err(e);
    }
    if reopened > 0 {
        tracing::info!(
            reopened,
            "Sessions were ended to respect --concurrency and reopened later on a new connection."
        );
    }
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| ReplayError::Runtime(std::io::Error::other("sessions still running")))?;
    let mut collector = shared
        .collector
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    collector.totals.read = shared.read.into_inner();
    if let Some(p) = &collector.progress {
        p.finish_and_clear();
    }
    Ok(finish(
        collector,
        &config,
        started_unix_ms,
        start.elapsed(),
        shared.baseline_mode,
    ))
}

/// Counts a record and applies the filters; the exchange to replay, if any.
fn admit(
    shared: &Shared,
    config: &ReplayConfig,
    filter: Option<&GlobSet>,
    interner: &mut Interner,
    item: Result<Box<Exchange>, String>,
) -> Option<(Box<Exchange>, Iface)> {
    shared.read.fetch_add(1, Ordering::Relaxed);
    let ex = match item {
        Ok(ex) => ex,
        Err(e) => {
            let mut c = lock(shared);
            c.totals.input_errors += 1;
            if c.input_errors.len() < MAX_INPUT_ERRORS {
                c.input_errors.push(e);
            }
            return None;
        }
    };
    let (interface, admitted) = interner.get(&ex, filter);
    if !admitted || (config.only_reads && !crate::config::is_read(&ex)) {
        lock(shared).totals.filtered += 1;
        return None;
    }
    Some((ex, interface))
}

fn build_filter(globs: &[String]) -> Result<Option<GlobSet>, ReplayError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|e| ReplayError::BadRule {
            rule: g.clone(),
            reason: e.to_string(),
        })?);
    }
    b.build().map(Some).map_err(|e| ReplayError::BadRule {
        rule: globs.join(", "),
        reason: e.to_string(),
    })
}

fn request_summary(ex: &Exchange) -> String {
    let s = match &ex.request {
        Request::Http(r) => format!("{} {}", r.method, r.target),
        Request::Redis(c) => c
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        Request::Mysql(c) => c.sql().map_or_else(|| c.interface(), str::to_owned),
        Request::Raw { data } => format!("{} raw bytes", data.len()),
    };
    diff::clip(&s)
}

fn skip(shared: &Shared, ex: &Exchange, interface: &Iface, reason: String) {
    let result = ExchangeResult {
        conn: ex.conn.id,
        seq: ex.seq,
        verdict: Verdict::Skipped,
        latency_us: 0,
        finding: Some(Box::new(Finding {
            request: request_summary(ex),
            reason: Some(reason),
            ..Finding::default()
        })),
    };
    lock(shared).record(interface, ex.protocol, result);
}

fn record_error(shared: &Shared, ex: &Exchange, interface: &Iface, e: SendError) {
    let result = ExchangeResult {
        conn: ex.conn.id,
        seq: ex.seq,
        verdict: Verdict::Error,
        latency_us: 0,
        finding: Some(Box::new(Finding {
            request: request_summary(ex),
            error: Some(ErrorInfo {
                origin: e.origin,
                message: e.message,
            }),
            ..Finding::default()
        })),
    };
    lock(shared).record(interface, ex.protocol, result);
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Collector> {
    shared
        .collector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn pace(shared: &Shared, ex: &Exchange) {
    let due = match shared.pace {
        Pace::AsFastAsPossible => return,
        Pace::Speed(f) => {
            let t0 = shared.t0_ns.load(Ordering::Relaxed);
            let offset = ex.timing.request_start_ns.saturating_sub(t0);
            #[expect(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "nanosecond offsets scaled by a speed factor"
            )]
            let scaled = (offset as f64 / f) as u64;
            shared.start + Duration::from_nanos(scaled)
        }
        Pace::Rps(r) => {
            let slot = shared.rps_slot.fetch_add(1, Ordering::Relaxed);
            #[expect(
                clippy::cast_precision_loss,
                reason = "slot counts stay far below 2^52"
            )]
            let secs = slot as f64 / r;
            shared.start + Duration::from_secs_f64(secs)
        }
    };
    tokio::time::sleep_until(due.into()).await;
}

async fn run_session(
    mut rx: mpsc::Receiver<(Box<Exchange>, Iface)>,
    mut candidate: Sender,
    mut baseline: Option<Sender>,
    shared: &Shared,
) {
    while let Some((ex, interface)) = rx.recv().await {
        pace(shared, &ex).await;
        let sent = Instant::now();
        let (cand, base) = match &mut baseline {
            Some(b) => {
                let (c, b) = tokio::join!(candidate.exchange(&ex), b.exchange(&ex));
                (c, Some(b))
            }
            None => (candidate.exchange(&ex).await, None),
        };
        let latency_us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        evaluate(shared, &ex, &interface, cand, base, latency_us);
        shared.recycler.put(ex);
    }
}

fn render(v: &Value) -> String {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    if s.len() <= MAX_DETAIL {
        return s;
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… ({} more bytes)", &s[..end], s.len() - end)
}

fn evaluate(
    shared: &Shared,
    ex: &Exchange,
    interface: &Iface,
    cand: Result<Reply, SendError>,
    base: Option<Result<Reply, SendError>>,
    latency_us: u32,
) {
    let cand = match cand {
        Err(e) => return record_error(shared, ex, interface, e),
        Ok(Reply::Skip(reason)) => return skip(shared, ex, interface, reason),
        Ok(Reply::Response(r)) => r,
    };
    let base = match base {
        None => None,
        Some(Err(e)) => {
            let e = SendError {
                origin: e.origin,
                message: format!("baseline: {}", e.message),
            };
            return record_error(shared, ex, interface, e);
        }
        Some(Ok(Reply::Skip(reason))) => return skip(shared, ex, interface, reason),
        Some(Ok(Reply::Response(r))) => Some(r),
    };
    let recorded = ex.response.as_ref();
    if base.is_none() && diff::identical(recorded, cand.as_ref(), !shared.rules.builtin.is_empty())
    {
        // Equal under any rules: a pass, without building comparison trees.
        let mut c = lock(shared);
        c.totals.answered += 1;
        c.record(
            interface,
            ex.protocol,
            ExchangeResult {
                conn: ex.conn.id,
                seq: ex.seq,
                verdict: Verdict::Pass,
                latency_us,
                finding: None,
            },
        );
        return;
    }
    let view = shared.rules.view(&interface.name);
    let (expected_resp, learned): (Option<&Response>, Vec<Path>) = match &base {
        None => (recorded, Vec::new()),
        Some(b) => {
            let rb = diff::diff(
                &diff::normalize(recorded, b.as_ref()),
                &diff::normalize(b.as_ref(), recorded),
                view,
            );
            (
                b.as_ref(),
                rb.diffs.iter().map(|d| d.key.generalized()).collect(),
            )
        }
    };
    let expected = diff::normalize(expected_resp, cand.as_ref());
    let actual = diff::normalize(cand.as_ref(), expected_resp);
    let d = diff::diff(&expected, &actual, view);
    let mut c = lock(shared);
    c.totals.answered += 1;
    if !learned.is_empty() {
        c.noise
            .entry(interface.name.to_string())
            .or_default()
            .extend(learned.iter().cloned());
    }
    let verdict = if d.total > 0 {
        Verdict::Regression
    } else if d.ignored_by_rule > 0 || !learned.is_empty() {
        Verdict::NoiseOnly
    } else {
        Verdict::Pass
    };
    let finding = (verdict != Verdict::Pass).then(|| {
        let detailed = c.details < shared.max_details;
        if detailed {
            c.details += 1;
        }
        Box::new(Finding {
            request: request_summary(ex),
            total_diffs: d.total,
            diffs: d.diffs,
            pending: shared.baseline_mode && verdict == Verdict::Regression,
            expected: detailed.then(|| render(&expected)),
            actual: detailed.then(|| render(&actual)),
            ..Finding::default()
        })
    });
    c.record(
        interface,
        ex.protocol,
        ExchangeResult {
            conn: ex.conn.id,
            seq: ex.seq,
            verdict,
            latency_us,
            finding,
        },
    );
}

fn finish(
    collector: Collector,
    config: &ReplayConfig,
    started_unix_ms: u64,
    elapsed: Duration,
    baseline_mode: bool,
) -> Report {
    let Collector {
        interfaces,
        noise,
        mut totals,
        input_errors,
        ..
    } = collector;
    // Ids of interfaces that only had filtered exchanges have nothing recorded.
    let mut interfaces: Vec<InterfaceAcc> = interfaces
        .into_iter()
        .filter(|acc| acc.protocol.is_some())
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(interfaces.len());
    let mut all = Counts::default();
    for acc in interfaces {
        let name = acc.name;
        let noise_here = noise.get(&name);
        let mut results = acc.results;
        results.sort_by_key(|r| (r.conn, r.seq));
        let mut counts = Counts::default();
        for r in &mut results {
            if let Some(f) = &mut r.finding {
                if f.pending {
                    f.pending = false;
                    if let Some(n) = noise_here {
                        for d in &mut f.diffs {
                            d.noise = n.iter().any(|p| p.matches(&d.key));
                        }
                    }
                    let all_noise = f.total_diffs == f.diffs.len()
                        && f.diffs.iter().all(|d: &Difference| d.noise);
                    if all_noise {
                        r.verdict = Verdict::NoiseOnly;
                    }
                }
            }
            counts.add(r.verdict);
            all.add(r.verdict);
        }
        out.push(InterfaceReport {
            name,
            protocol: acc.protocol.unwrap_or(Protocol::Unknown),
            counts,
            exchanges: results,
        });
    }
    totals.counts = all;
    let mut learned = RulesFile::default();
    if baseline_mode {
        for (name, paths) in noise {
            learned.interface.insert(
                name,
                InterfaceRules {
                    ignore: paths.iter().map(ToString::to_string).collect(),
                    ..InterfaceRules::default()
                },
            );
        }
    }
    Report {
        format: "deetune-replay-report",
        version: crate::report::REPORT_VERSION,
        started_unix_ms,
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        targets: config.targets.iter().map(crate::Target::display).collect(),
        baselines: config
            .baselines
            .iter()
            .map(crate::Target::display)
            .collect(),
        totals,
        input_errors,
        interfaces: out,
        learned_noise: learned,
    }
}
