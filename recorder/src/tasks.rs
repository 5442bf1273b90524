//! Running tasks: which exchanges each one keeps, its counters, and when it stops.

use std::hash::{Hash as _, Hasher as _};

use deetune_protocols::{Body, Exchange, Payload, Request, Response};
use deetune_store::{TaskId, TaskRecord, TaskSpec, TaskState, TaskStats};

use crate::policy::{Policy, PolicyError};

/// Why the bytes of an exchange's connection went missing, as far as the pipeline knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Loss {
    /// No loss.
    #[default]
    None,
    /// The kernel ring buffer had no room.
    RingBuffer,
    /// A syscall moved more than the capture's per-syscall cap (a body larger than
    /// `max_bytes_per_syscall` in one read or write): counted as `dropped_body_over_cap`.
    OverCap,
    /// Any other gap (unreadable buffer, bytes that never arrived, sendfile/splice).
    Gap,
}

/// Stop reasons, as stored in [`TaskRecord::stop_reason`].
pub mod reason {
    /// The duration elapsed.
    pub const DURATION: &str = "duration";
    /// `count` exchanges were recorded.
    pub const COUNT: &str = "count";
    /// `task stop` or the end of `deetune record`.
    pub const USER: &str = "stopped by user";
}

/// Where [`TaskManager::offer`] puts what tasks keep: each exchange with its task.
pub trait RecordedOut {
    /// Queues `ex`, kept by `task`.
    fn keep(&mut self, task: &TaskId, ex: Exchange);
}

impl RecordedOut for Vec<(TaskId, Exchange)> {
    fn keep(&mut self, task: &TaskId, ex: Exchange) {
        self.push((task.clone(), ex));
    }
}

/// Exchanges to store, in recorded order, in runs of the same task: the task id is kept once
/// per run (not cloned per exchange), and a run is the slice the store appends as it is (no
/// regrouping move).
#[derive(Debug, Default)]
pub struct Recorded {
    runs: Vec<(TaskId, Vec<Exchange>)>,
    len: usize,
    /// Capacity of the first run (the size of the last batch): no reallocation while it fills.
    room: usize,
}

impl Recorded {
    /// Empty, new runs starting with room for `room` exchanges.
    #[must_use]
    pub fn with_room(room: usize) -> Self {
        Self {
            runs: Vec::new(),
            len: 0,
            room,
        }
    }

    /// Exchanges queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when none is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The runs: each task with its exchanges, in recorded order.
    #[must_use]
    pub fn runs(&self) -> &[(TaskId, Vec<Exchange>)] {
        &self.runs
    }

    /// The runs, handed over.
    #[must_use]
    pub fn into_runs(self) -> Vec<(TaskId, Vec<Exchange>)> {
        self.runs
    }

    /// Each exchange with its task, in recorded order.
    pub fn iter(&self) -> impl Iterator<Item = (&TaskId, &Exchange)> {
        self.runs
            .iter()
            .flat_map(|(t, xs)| xs.iter().map(move |x| (t, x)))
    }

    /// Each exchange with its task, in recorded order, handed over.
    #[must_use]
    pub fn into_pairs(self) -> Vec<(TaskId, Exchange)> {
        let mut v = Vec::with_capacity(self.len);
        for (t, xs) in self.runs {
            v.extend(xs.into_iter().map(|x| (t.clone(), x)));
        }
        v
    }
}

impl RecordedOut for Recorded {
    #[inline]
    fn keep(&mut self, task: &TaskId, ex: Exchange) {
        self.len += 1;
        if let Some((t, xs)) = self.runs.last_mut() {
            if t == task {
                xs.push(ex);
                return;
            }
        }
        // The first run gets the room of a whole batch; later ones (several tasks taking
        // turns) grow as they fill, so short runs do not each hold a batch's worth.
        let room = if self.runs.is_empty() { self.room } else { 0 };
        let mut xs = Vec::with_capacity(room.max(1));
        xs.push(ex);
        self.runs.push((task.clone(), xs));
    }
}

#[derive(Debug)]
struct Active {
    record: TaskRecord,
    policy: Policy,
    deadline_ms: Option<u64>,
    /// When this run began, and the running time of earlier runs (`stats.running_ms` at the
    /// resume): the record's `running_ms` is their sum plus the time since.
    run_from_ms: u64,
    ran_before_ms: u64,
    rng: u64,
    /// The record changed since the last [`TaskManager::take_changed`] (a flag, not a list
    /// entry per exchange).
    dirty: bool,
}

impl Active {
    fn running_ms(&self, now_ms: u64) -> u64 {
        self.ran_before_ms
            .saturating_add(now_ms.saturating_sub(self.run_from_ms))
    }

    fn sample(&mut self) -> bool {
        let Some(rate) = self.policy.sample else {
            return true;
        };
        // xorshift64*: deterministic per task, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        #[expect(clippy::cast_precision_loss, reason = "53-bit uniform")]
        let u = x as f64 / (1u64 << 53) as f64;
        u < rate
    }
}

/// The running tasks.
#[derive(Debug, Default)]
pub struct TaskManager {
    active: Vec<Active>,
    seq: u64,
    /// Tasks that started or ended since the last [`Self::take_changed`] (running tasks whose
    /// counters changed carry a dirty flag instead).
    changed: Vec<TaskId>,
    ended: Vec<TaskRecord>,
    /// Bumped whenever the set of running tasks changes (a [`PairCache`] is then stale).
    generation: u64,
    /// Scratch: indexes of the tasks keeping the exchange being offered.
    keepers: Vec<usize>,
}

/// Which running tasks want the service pair of one connection: the service globs are
/// matched once per connection and task set, not once per exchange. Keep one per connection
/// and pass it to [`TaskManager::offer`].
#[derive(Debug, Clone, Default)]
pub struct PairCache {
    generation: u64,
    wants: Vec<bool>,
}

/// A task id that is not known.
#[derive(Debug, thiserror::Error)]
#[error("no running task `{0}`")]
pub struct NotRunning(pub TaskId);

fn new_id(now_ms: u64, seq: u64) -> TaskId {
    format!("t-{now_ms:x}-{seq}")
}

impl TaskManager {
    /// No tasks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `spec` and starts a task.
    ///
    /// # Errors
    /// The policy does not make sense.
    pub fn start(&mut self, spec: TaskSpec, now_ms: u64) -> Result<TaskRecord, PolicyError> {
        self.seq += 1;
        let record = TaskRecord {
            id: new_id(now_ms, self.seq),
            spec,
            state: TaskState::Running,
            stop_reason: None,
            started_ms: now_ms,
            stopped_ms: None,
            stats: TaskStats::default(),
        };
        self.resume(record, now_ms)
    }

    /// Runs an existing record again (after a restart), keeping its counters; its duration
    /// and count are what was left (the duration less `stats.running_ms`).
    ///
    /// # Errors
    /// The stored policy no longer compiles.
    pub fn resume(
        &mut self,
        mut record: TaskRecord,
        now_ms: u64,
    ) -> Result<TaskRecord, PolicyError> {
        let policy = Policy::compile(&record.spec)?;
        // The time it was down recorded nothing and does not count: what is left of the
        // duration runs from now.
        let ran_before_ms = record.stats.running_ms;
        let deadline_ms = policy
            .duration_ms
            .map(|d| now_ms.saturating_add(d.saturating_sub(ran_before_ms)));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        record.id.hash(&mut h);
        record.state = TaskState::Running;
        record.stop_reason = None;
        record.stopped_ms = None;
        self.changed.push(record.id.clone());
        let out = record.clone();
        self.active.push(Active {
            record,
            policy,
            deadline_ms,
            run_from_ms: now_ms,
            ran_before_ms,
            rng: h.finish() | 1,
            dirty: false,
        });
        self.generation += 1;
        Ok(out)
    }

    /// Stops a running task.
    ///
    /// # Errors
    /// [`NotRunning`] when no running task has this id.
    pub fn stop(&mut self, id: &str, reason: &str, now_ms: u64) -> Result<TaskRecord, NotRunning> {
        let i = self
            .active
            .iter()
            .position(|a| a.record.id == id)
            .ok_or_else(|| NotRunning(id.to_owned()))?;
        Ok(self.finish(i, reason, now_ms))
    }

    fn finish(&mut self, i: usize, reason: &str, now_ms: u64) -> TaskRecord {
        let mut a = self.active.remove(i);
        a.record.stats.running_ms = a.running_ms(now_ms);
        self.generation += 1;
        a.record.state = TaskState::Stopped;
        a.record.stop_reason = Some(reason.to_owned());
        a.record.stopped_ms = Some(now_ms);
        self.changed.push(a.record.id.clone());
        self.ended.push(a.record.clone());
        a.record
    }

    /// Stops tasks whose duration is over; returns them. The others' running time is brought
    /// up to date, their record marked changed once a second so it is saved.
    pub fn tick(&mut self, now_ms: u64) -> Vec<TaskRecord> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].deadline_ms.is_some_and(|d| now_ms >= d) {
                out.push(self.finish(i, reason::DURATION, now_ms));
            } else {
                let a = &mut self.active[i];
                let ran = a.running_ms(now_ms);
                if ran / 1000 != a.record.stats.running_ms / 1000 {
                    a.dirty = true;
                }
                a.record.stats.running_ms = ran;
                i += 1;
            }
        }
        out
    }

    /// The running tasks' records as of `now_ms` (running time included), e.g. to save them as
    /// interrupted when the daemon stops.
    #[must_use]
    pub fn running_at(&self, now_ms: u64) -> Vec<TaskRecord> {
        self.active
            .iter()
            .map(|a| {
                let mut r = a.record.clone();
                r.stats.running_ms = a.running_ms(now_ms);
                r
            })
            .collect()
    }

    /// Running tasks.
    pub fn running(&self) -> impl Iterator<Item = &TaskRecord> {
        self.active.iter().map(|a| &a.record)
    }

    /// A running task.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.running().find(|r| r.id == id)
    }

    /// No task is running.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether some running task may want exchanges between these services.
    #[must_use]
    pub fn wants_pair(&self, client: &str, server: &str) -> bool {
        self.active
            .iter()
            .any(|a| a.policy.matches_pair(client, server))
    }

    /// The largest body cap a running task asks for (`None`: the decoder default).
    #[must_use]
    pub fn max_body(&self) -> Option<u64> {
        let caps: Vec<Option<u64>> = self.active.iter().map(|a| a.policy.max_body).collect();
        if caps.is_empty() || caps.iter().any(Option::is_none) {
            return None;
        }
        caps.into_iter().flatten().max()
    }

    /// Ids of tasks whose record changed since the last call (to persist them).
    pub fn take_changed(&mut self) -> Vec<TaskId> {
        let mut v = std::mem::take(&mut self.changed);
        for a in &mut self.active {
            if std::mem::take(&mut a.dirty) {
                v.push(a.record.id.clone());
            }
        }
        v.sort();
        v.dedup();
        v
    }

    /// Tasks that ended since the last call.
    pub fn take_ended(&mut self) -> Vec<TaskRecord> {
        std::mem::take(&mut self.ended)
    }

    /// Offers an exchange (services filled in) to every running task; the copies to store,
    /// redacted and cut per task, go to `out` with their task id (the last task that keeps it
    /// gets the exchange itself, the others a copy). Tasks that reach their count stop here.
    pub fn offer(&mut self, ex: Exchange, loss: Loss, now_ms: u64, out: &mut impl RecordedOut) {
        let mut cache = PairCache::default();
        self.offer_cached(ex, loss, now_ms, &mut cache, out);
    }

    /// Whether some running task wants exchanges between these services, through the
    /// connection's cache (the globs run again only when the running tasks changed).
    pub fn wants_cached(&self, cache: &mut PairCache, client: &str, server: &str) -> bool {
        if cache.generation != self.generation || cache.wants.len() != self.active.len() {
            cache.wants.clear();
            cache.wants.extend(
                self.active
                    .iter()
                    .map(|a| a.policy.matches_pair(client, server)),
            );
            cache.generation = self.generation;
        }
        cache.wants.iter().any(|w| *w)
    }

    /// [`Self::offer`] with the connection's [`PairCache`].
    pub fn offer_cached(
        &mut self,
        ex: Exchange,
        loss: Loss,
        now_ms: u64,
        cache: &mut PairCache,
        out: &mut impl RecordedOut,
    ) {
        // Tasks past their duration end first (index-stable loop below).
        if self
            .active
            .iter()
            .any(|a| a.deadline_ms.is_some_and(|d| now_ms >= d))
        {
            self.tick(now_ms);
        }
        let client = ex.conn.client.service.as_deref().unwrap_or("");
        let server = ex.conn.server.service.as_deref().unwrap_or("");
        if !self.wants_cached(cache, client, server) {
            return;
        }
        // Which tasks keep it (matched, no gap, sampled in); counters as they go.
        let mut keepers = std::mem::take(&mut self.keepers);
        keepers.clear();
        let mut iface: Option<String> = None;
        for (i, a) in self.active.iter_mut().enumerate() {
            if !cache.wants[i] || !a.policy.matches_rest(&ex, &mut iface) {
                continue;
            }
            a.dirty = true;
            let st = &mut a.record.stats;
            st.matched += 1;
            if ex.flags.gap {
                match loss {
                    Loss::RingBuffer => st.dropped_ring_buffer += 1,
                    Loss::OverCap => st.dropped_body_over_cap += 1,
                    Loss::Gap | Loss::None => st.dropped_gap += 1,
                }
                continue;
            }
            if !a.sample() {
                a.record.stats.dropped_sampling += 1;
                continue;
            }
            keepers.push(i);
        }
        if let Some((&last, rest)) = keepers.split_last() {
            // Every keeper but the last gets a copy; the last one the exchange itself.
            let mut count_reached = false;
            for &i in rest {
                count_reached |= self.active[i].keep(ex.clone(), out);
            }
            count_reached |= self.active[last].keep(ex, out);
            if count_reached {
                // Highest index first, so the lower ones stay valid.
                for &i in keepers.iter().rev() {
                    let a = &self.active[i];
                    if a.policy.count.is_some_and(|c| a.record.stats.recorded >= c) {
                        self.finish(i, reason::COUNT, now_ms);
                    }
                }
            }
        }
        self.keepers = keepers;
    }
}

impl Active {
    /// Redacts and cuts `ex` for this task, counts it and queues it; true when the task has
    /// now recorded its count.
    #[inline]
    fn keep(&mut self, mut ex: Exchange, out: &mut impl RecordedOut) -> bool {
        self.policy.redactor.apply(&mut ex);
        let cut = self
            .policy
            .max_body
            .is_some_and(|m| cut_bodies(&mut ex, usize::try_from(m).unwrap_or(usize::MAX)));
        let st = &mut self.record.stats;
        if cut || ex.flags.truncated || any_truncated(&ex) {
            ex.flags.truncated = true;
            st.truncated += 1;
        }
        st.recorded += 1;
        out.keep(&self.record.id, ex);
        self.policy.count.is_some_and(|c| st.recorded >= c)
    }
}

fn any_truncated(ex: &Exchange) -> bool {
    let req = matches!(&ex.request, Request::Http(r) if r.body.truncated);
    let resp = matches!(&ex.response, Some(Response::Http(r)) if r.body.truncated);
    req || resp
}

fn cut_payload(p: &mut Payload, max: usize) -> bool {
    if p.len() > max {
        p.0.truncate(max);
        true
    } else {
        false
    }
}

fn cut_body(b: &mut Body, max: usize) -> bool {
    let mut cut = cut_payload(&mut b.raw, max);
    if let Some(d) = &mut b.decoded {
        cut |= cut_payload(d, max);
    }
    if cut {
        b.truncated = true;
    }
    cut
}

/// Cuts HTTP bodies, Redis arguments and raw data at `max` bytes.
fn cut_bodies(ex: &mut Exchange, max: usize) -> bool {
    let mut cut = false;
    match &mut ex.request {
        Request::Http(r) => cut |= cut_body(&mut r.body, max),
        Request::Redis(c) => {
            for a in &mut c.args {
                cut |= cut_payload(a, max);
            }
        }
        Request::Raw { data } => cut |= cut_payload(data, max),
        Request::Mysql(_) => {}
    }
    match &mut ex.response {
        Some(Response::Http(r)) => cut |= cut_body(&mut r.body, max),
        Some(Response::Raw { data }) => cut |= cut_payload(data, max),
        _ => {}
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use deetune_protocols::{
        ConnectionMeta, Endpoint, Flags, Header, HttpRequest, Protocol, Timing,
    };

    /// Guards the engine's batch form: runs of the same task in recorded order, the same
    /// exchanges with the same tasks as the flat form.
    #[test]
    fn recorded_runs_keep_order_and_tasks() {
        let (a, b) = ("t-a".to_owned(), "t-b".to_owned());
        let mut r = Recorded::with_room(8);
        let mut flat: Vec<(TaskId, Exchange)> = Vec::new();
        for (task, path) in [(&a, "/1"), (&a, "/2"), (&b, "/3"), (&a, "/4")] {
            r.keep(task, ex("x", "y", "GET", path));
            flat.keep(task, ex("x", "y", "GET", path));
        }
        assert_eq!(r.len(), 4);
        let runs: Vec<(&str, usize)> = r
            .runs()
            .iter()
            .map(|(t, x)| (t.as_str(), x.len()))
            .collect();
        assert_eq!(runs, [("t-a", 2), ("t-b", 1), ("t-a", 1)]);
        let seen: Vec<(String, String)> =
            r.iter().map(|(t, x)| (t.clone(), x.interface())).collect();
        let want: Vec<(String, String)> = flat
            .iter()
            .map(|(t, x)| (t.clone(), x.interface()))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(r.into_pairs(), flat);
        assert!(Recorded::default().is_empty());
    }

    fn ex(from: &str, to: &str, method: &str, path: &str) -> Exchange {
        Exchange {
            conn: std::sync::Arc::new(ConnectionMeta {
                id: 1,
                client: Endpoint {
                    service: Some(from.into()),
                    ..Endpoint::default()
                },
                server: Endpoint {
                    service: Some(to.into()),
                    ..Endpoint::default()
                },
            }),
            seq: 0,
            protocol: Protocol::Http,
            request: Request::Http(HttpRequest {
                method: method.into(),
                target: path.into(),
                version: "HTTP/1.1".into(),
                headers: vec![Header {
                    name: "Cookie".into(),
                    value: "sid=1".into(),
                }],
                body: Body {
                    raw: Payload::from("0123456789"),
                    decoded: None,
                    len: 10,
                    truncated: false,
                },
            }),
            response: None,
            timing: Timing::default(),
            flags: Flags::default(),
            session: None,
        }
    }

    #[test]
    fn count_stops_at_exactly_n_and_pairs_scope() {
        let mut m = TaskManager::new();
        let t = m
            .start(
                TaskSpec {
                    from: Some("web".into()),
                    to: Some("checkout".into()),
                    interfaces: vec!["POST /api/orders*".into()],
                    count: Some(3),
                    max_body: Some(4),
                    ..TaskSpec::default()
                },
                1000,
            )
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..5 {
            m.offer(
                ex("web", "checkout", "POST", "/api/orders/1"),
                Loss::None,
                1001,
                &mut out,
            );
            m.offer(
                ex("web", "checkout", "GET", "/api/orders/1"),
                Loss::None,
                1001,
                &mut out,
            );
            m.offer(
                ex("batch", "checkout", "POST", "/api/orders/1"),
                Loss::None,
                1001,
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|(id, _)| *id == t.id));
        let ended = m.take_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].stop_reason.as_deref(), Some(reason::COUNT));
        assert_eq!(ended[0].stats.recorded, 3);
        assert_eq!(ended[0].stats.matched, 3);
        assert_eq!(ended[0].stats.truncated, 3);
        let Request::Http(r) = &out[0].1.request else {
            unreachable!()
        };
        assert_eq!(r.body.raw.as_bytes(), b"0123");
        assert_eq!(r.headers[0].value.as_str(), Some(crate::redact::REDACTED));
        assert!(m.is_empty());
    }

    #[test]
    fn duration_sampling_and_gaps() {
        let mut m = TaskManager::new();
        let t = m
            .start(
                TaskSpec {
                    duration_secs: Some(2),
                    sample: Some(0.25),
                    ..TaskSpec::default()
                },
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..4000 {
            m.offer(ex("a", "b", "GET", "/"), Loss::None, 10, &mut out);
        }
        let mut gap = ex("a", "b", "GET", "/");
        gap.flags.gap = true;
        m.offer(gap.clone(), Loss::RingBuffer, 11, &mut out);
        m.offer(gap.clone(), Loss::OverCap, 11, &mut out);
        m.offer(gap, Loss::Gap, 11, &mut out);
        let st = m.get(&t.id).unwrap().stats.clone();
        assert_eq!(st.matched, 4003);
        assert_eq!(st.recorded + st.dropped_sampling, 4000);
        assert!((800..1200).contains(&st.recorded), "{}", st.recorded);
        assert_eq!(
            (
                st.dropped_ring_buffer,
                st.dropped_body_over_cap,
                st.dropped_gap
            ),
            (1, 1, 1)
        );
        assert!(m.tick(1999).is_empty());
        let ended = m.tick(2000);
        assert_eq!(ended[0].stop_reason.as_deref(), Some(reason::DURATION));
        assert!(matches!(
            m.stop(&t.id, reason::USER, 3000),
            Err(NotRunning(_))
        ));
    }

    #[test]
    fn a_resumed_task_runs_for_what_is_left_of_its_duration() {
        let spec = TaskSpec {
            duration_secs: Some(10),
            ..TaskSpec::default()
        };
        let mut m = TaskManager::new();
        let t = m.start(spec.clone(), 1_000).unwrap();
        m.take_changed();
        // Saved once a second while it runs (what a SIGKILLed daemon leaves behind).
        assert!(m.tick(1_500).is_empty());
        assert!(m.take_changed().is_empty());
        assert!(m.tick(2_100).is_empty());
        assert_eq!(m.take_changed(), std::slice::from_ref(&t.id));
        assert_eq!(m.get(&t.id).unwrap().stats.running_ms, 1_100);
        // Interrupted after 4 s of running, resumed a minute later: 6 s are left.
        let mut rec = m.running_at(5_000).remove(0);
        assert_eq!(rec.stats.running_ms, 4_000);
        rec.state = TaskState::Interrupted;
        let mut m = TaskManager::new();
        m.resume(rec, 65_000).unwrap();
        assert!(m.tick(70_999).is_empty());
        let ended = m.tick(71_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].stop_reason.as_deref(), Some(reason::DURATION));
        assert_eq!(ended[0].stats.running_ms, 10_000);
        // Stopped by hand, its running time is kept too.
        let t2 = m.start(spec, 100_000).unwrap();
        let r2 = m.stop(&t2.id, reason::USER, 102_500).unwrap();
        assert_eq!(r2.stats.running_ms, 2_500);
    }
}
