//! Pipeline tests with synthetic stream events built from real byte streams (the fixture
//! streams under `fixtures/streams/`, captured from real servers, and hand-written HTTP):
//! loopback de-duplication, service naming, task scoping, interface filters, exact counts,
//! redaction down to the stored bytes, topology counts, and loss accounting.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use deetune_protocols::{Direction, Payload, Protocol, Request, Role};
use deetune_recorder::{
    BackgroundFlushSink, CaptureStats, Command, ConnInfo, Engine, EngineOptions, EventSource,
    GapReason, MemorySink, Pipeline, PipelineConfig, ServiceNamer, ServiceRule, StoreSink,
    StreamEvent, TaskManager, TopologyAggregator,
};
use deetune_store::{Store, TaskSpec, TaskState};

mod common;
use common::files_contain;

const T0: u64 = 1_800_000_000_000_000_000;

fn fixture(rel: &str) -> Vec<(Direction, Vec<u8>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        dir: Direction,
        data: Payload,
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/streams")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Line = serde_json::from_str(l).expect("fixture line");
            (line.dir, line.data.0)
        })
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn info(id: u64, pid: u32, comm: &str, role: Role, local: &str, remote: &str) -> ConnInfo {
    ConnInfo {
        id,
        pid,
        comm: comm.into(),
        cgroup_id: 0,
        role,
        local: addr(local),
        remote: addr(remote),
        opened_ns: T0,
    }
}

/// Events of one loopback connection seen from both ends (client end `id+1`), interleaved
/// the way the capture can deliver them: the client end opens and writes first.
fn loopback(
    id: u64,
    client: &str,
    server: &str,
    port: u16,
    client_port: u16,
    chunks: &[(Direction, Vec<u8>)],
) -> Vec<StreamEvent> {
    let s_local = format!("127.0.0.1:{port}");
    let c_local = format!("127.0.0.1:{client_port}");
    let mut ev = vec![StreamEvent::Opened(info(
        id + 1,
        2000 + u32::try_from(id).unwrap(),
        client,
        Role::Client,
        &c_local,
        &s_local,
    ))];
    let mut ts = T0;
    let mut server_opened = false;
    for (dir, bytes) in chunks {
        ts += 1_000_000;
        ev.push(StreamEvent::Data {
            conn: id + 1,
            dir: *dir,
            ts_ns: ts,
            bytes: bytes.clone(),
        });
        if !server_opened {
            ev.push(StreamEvent::Opened(info(
                id,
                1000,
                server,
                Role::Server,
                &s_local,
                &c_local,
            )));
            server_opened = true;
        }
        ev.push(StreamEvent::Data {
            conn: id,
            dir: *dir,
            ts_ns: ts + 1000,
            bytes: bytes.clone(),
        });
    }
    ev.push(StreamEvent::Closed {
        conn: id + 1,
        ts_ns: ts + 2_000_000,
    });
    ev.push(StreamEvent::Closed {
        conn: id,
        ts_ns: ts + 3_000_000,
    });
    ev
}

fn http_get(path: &str, extra: &str) -> (Direction, Vec<u8>) {
    (
        Direction::Request,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes(),
    )
}

fn http_post(path: &str, extra: &str, body: &str) -> (Direction, Vec<u8>) {
    (
        Direction::Request,
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len()).into_bytes(),
    )
}

fn http_ok(body: &str, extra: &str) -> (Direction, Vec<u8>) {
    (
        Direction::Response,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn pipeline(specs: &[TaskSpec], rules: &[ServiceRule]) -> (Pipeline, Vec<String>) {
    let mut tasks = TaskManager::new();
    let ids = specs
        .iter()
        .map(|s| {
            tasks
                .start(s.clone(), T0 / 1_000_000)
                .expect("valid spec")
                .id
        })
        .collect();
    let p = Pipeline::new(
        PipelineConfig::default(),
        ServiceNamer::new(rules).expect("rules"),
        tasks,
        TopologyAggregator::default(),
    );
    (p, ids)
}

fn feed(p: &mut Pipeline, events: Vec<StreamEvent>) {
    for e in events {
        p.handle(e);
    }
}

#[test]
fn loopback_connection_is_decoded_once_from_the_server_side_with_both_services_named() {
    let chunks = fixture("http/keepalive.jsonl");
    let (mut p, ids) = pipeline(
        &[TaskSpec {
            from: Some("web".into()),
            to: Some("checkout".into()),
            ..TaskSpec::default()
        }],
        &[],
    );
    feed(
        &mut p,
        loopback(10, "web", "checkout", 8080, 40000, &chunks),
    );
    let out = p.take_output();
    assert!(
        !out.is_empty(),
        "the keep-alive fixture decodes to exchanges"
    );
    let requests = {
        let mut d = deetune_protocols::new_decoder(
            Protocol::Http,
            deetune_protocols::DecoderConfig::default(),
        )
        .expect("http");
        for (dir, b) in &chunks {
            d.push(*dir, T0, b);
        }
        d.close(T0);
        let mut v = Vec::new();
        d.drain(&mut v);
        v.len()
    };
    assert_eq!(out.len(), requests, "each exchange once, not twice");
    for (i, (task, ex)) in out.iter().enumerate() {
        assert_eq!(task, &ids[0]);
        assert_eq!(ex.conn.id, 10, "kept the server end");
        assert_eq!(ex.conn.client.service.as_deref(), Some("web"));
        assert_eq!(ex.conn.server.service.as_deref(), Some("checkout"));
        assert_eq!(
            ex.conn.client.pid,
            Some(2010),
            "client pid comes from the mirrored client end"
        );
        assert_eq!(ex.conn.server.port, 8080);
        assert_eq!(ex.seq, i as u64);
        assert_eq!(ex.protocol, Protocol::Http);
    }
    assert_eq!(p.stats().mirrored_connections, 1);
    let edges = p.topology.edges();
    assert_eq!(edges.len(), 1, "{edges:?}");
    let e = &edges[0];
    assert_eq!(
        (e.client.as_str(), e.server.as_str(), e.port, e.protocol),
        ("web", "checkout", 8080, Some(Protocol::Http))
    );
    assert_eq!((e.connections, e.exchanges), (1, requests as u64));
    let sent: usize = chunks
        .iter()
        .filter(|c| c.0 == Direction::Request)
        .map(|c| c.1.len())
        .sum();
    let received: usize = chunks
        .iter()
        .filter(|c| c.0 == Direction::Response)
        .map(|c| c.1.len())
        .sum();
    assert_eq!(
        (e.bytes_sent, e.bytes_received),
        (sent as u64, received as u64),
        "bytes counted once"
    );
}

/// The events of [`loopback`] as the kernel's loopback dedup delivers them: the client end
/// opens and closes, its bytes come only from the server end.
fn deduped(events: Vec<StreamEvent>, client_end: u64) -> Vec<StreamEvent> {
    events
        .into_iter()
        .filter(|e| {
            !matches!(e, StreamEvent::Data { conn, .. } | StreamEvent::Gap { conn, .. } if *conn == client_end)
        })
        .collect()
}

/// Guards the pipeline under `CaptureConfig::loopback_dedup`: a client end without data is
/// still dropped as the mirror, also when its hold expired before the server end showed up
/// (it would otherwise stay the decoded end and every exchange of the server end be lost).
#[test]
fn deduplicated_loopback_client_end_carries_no_data_and_exchanges_come_once() {
    let chunks = vec![
        http_get("/a", ""),
        http_ok("one", ""),
        http_get("/b", ""),
        http_ok("two", ""),
    ];
    let spec = TaskSpec {
        from: Some("web".into()),
        to: Some("checkout".into()),
        ..TaskSpec::default()
    };
    // Server end seen right away.
    let (mut p, _) = pipeline(std::slice::from_ref(&spec), &[]);
    feed(
        &mut p,
        deduped(loopback(10, "web", "checkout", 8080, 40000, &chunks), 11),
    );
    let out = p.take_output();
    let names: Vec<String> = out.iter().map(|(_, e)| e.interface()).collect();
    assert_eq!(names, ["GET /a", "GET /b"]);
    assert!(out.iter().all(|(_, e)| e.conn.id == 10
        && e.conn.client.service.as_deref() == Some("web")
        && e.conn.client.pid == Some(2010)));
    assert_eq!(p.stats().mirrored_connections, 1);

    // Server end seen only after the client end's hold expired (an idle pooled connection).
    let (mut p, _) = pipeline(&[spec], &[]);
    let mut events = deduped(loopback(20, "web", "checkout", 8081, 40001, &chunks), 21);
    let first = events.remove(0);
    assert!(matches!(&first, StreamEvent::Opened(i) if i.id == 21));
    p.handle(first);
    p.tick(T0 / 1_000_000 + 5_000);
    feed(&mut p, events);
    let out = p.take_output();
    let names: Vec<String> = out.iter().map(|(_, e)| e.interface()).collect();
    assert_eq!(names, ["GET /a", "GET /b"], "{:?}", p.stats());
    assert!(out.iter().all(|(_, e)| e.conn.id == 20));
    let edges = p.topology.edges();
    assert_eq!(
        edges.len(),
        1,
        "no edge for the empty client end: {edges:?}"
    );
    assert_eq!((edges[0].connections, edges[0].exchanges), (1, 2));
    assert_eq!(p.stats().unknown_connections, 0);
}

#[test]
fn client_end_alone_is_decoded_when_the_server_is_not_captured() {
    let chunks = vec![http_get("/a", ""), http_ok("hi", "")];
    let (mut p, _) = pipeline(&[TaskSpec::default()], &[]);
    let mut events = vec![StreamEvent::Opened(info(
        5,
        77,
        "curl",
        Role::Client,
        "127.0.0.1:41000",
        "127.0.0.1:9000",
    ))];
    for (i, (d, b)) in chunks.into_iter().enumerate() {
        events.push(StreamEvent::Data {
            conn: 5,
            dir: d,
            ts_ns: T0 + i as u64,
            bytes: b,
        });
    }
    events.push(StreamEvent::Closed {
        conn: 5,
        ts_ns: T0 + 10,
    });
    feed(&mut p, events);
    let out = p.take_output();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.conn.client.service.as_deref(), Some("curl"));
    assert_eq!(
        out[0].1.conn.server.service.as_deref(),
        Some("127.0.0.1:9000"),
        "remote server default name"
    );
}

#[test]
fn pair_scope_interface_filter_and_exact_count() {
    let rules = [ServiceRule {
        name: "checkout".into(),
        port: Some(8080),
        ..ServiceRule::default()
    }];
    let (mut p, ids) = pipeline(
        &[
            TaskSpec {
                from: Some("web".into()),
                to: Some("checkout".into()),
                interfaces: vec!["POST /api/orders*".into()],
                count: Some(7),
                ..TaskSpec::default()
            },
            TaskSpec {
                to: Some("checkout".into()),
                interfaces: vec!["GET /health".into()],
                ..TaskSpec::default()
            },
        ],
        &rules,
    );
    for i in 0..6u16 {
        let chunks = vec![
            http_post(&format!("/api/orders/{i}"), "", "{}"),
            http_ok("ok", ""),
            http_get("/health", ""),
            http_ok("up", ""),
            http_post("/api/users", "", "{}"),
            http_ok("ok", ""),
        ];
        // Same pair, plus another client (batch) calling the same server.
        feed(
            &mut p,
            loopback(
                100 + u64::from(i) * 4,
                "web",
                "python3",
                8080,
                40000 + i,
                &chunks,
            ),
        );
        feed(
            &mut p,
            loopback(
                102 + u64::from(i) * 4,
                "batch",
                "python3",
                8080,
                41000 + i,
                &chunks,
            ),
        );
    }
    let out = p.take_output();
    let orders: Vec<_> = out.iter().filter(|(t, _)| *t == ids[0]).collect();
    assert_eq!(orders.len(), 6, "one matching call per web connection");
    for (_, ex) in &orders {
        assert!(
            ex.interface().starts_with("POST /api/orders"),
            "{}",
            ex.interface()
        );
        assert_eq!(ex.conn.client.service.as_deref(), Some("web"));
    }
    let health = out.iter().filter(|(t, _)| *t == ids[1]).count();
    assert_eq!(health, 12, "the /health task sees both clients");
    // Six more web connections: the task stops at exactly seven.
    for i in 6..12u16 {
        let chunks = vec![http_post("/api/orders/x", "", "{}"), http_ok("ok", "")];
        feed(
            &mut p,
            loopback(
                200 + u64::from(i) * 2,
                "web",
                "python3",
                8080,
                40000 + i,
                &chunks,
            ),
        );
    }
    let more = p
        .take_output()
        .into_iter()
        .filter(|(t, _)| *t == ids[0])
        .count();
    assert_eq!(orders.len() + more, 7, "count stops at exactly N");
    assert!(p.tasks.get(&ids[0]).is_none(), "the counted task stopped");
    let edges = p.topology.edges();
    let web = edges.iter().find(|e| e.client == "web").expect("web edge");
    assert_eq!((web.connections, web.exchanges), (12, 6 * 3 + 6));
    let batch = edges
        .iter()
        .find(|e| e.client == "batch")
        .expect("batch edge");
    assert_eq!((batch.connections, batch.exchanges), (6, 18));
}

#[test]
fn ring_buffer_loss_is_counted_per_task() {
    let (p, st) = lossy_connection(GapReason::RingBufferFull);
    assert_eq!(p.stats().gaps_ring_buffer, 1);
    assert!(st.dropped_ring_buffer >= 1, "{st:?}");
    assert_eq!(
        st.matched,
        st.recorded + st.dropped_ring_buffer + st.dropped_gap,
        "{st:?}"
    );
}

/// Guards `dropped_body_over_cap`: a response larger than the per-syscall capture cap leaves
/// an over-cap gap; its exchange is dropped and counted as over the cap (it was always 0).
#[test]
fn over_cap_loss_is_counted_as_body_over_cap() {
    let (p, st) = lossy_connection(GapReason::OverCap);
    assert_eq!(p.stats().gaps_over_cap, 1);
    assert!(st.dropped_body_over_cap >= 1, "{st:?}");
    assert_eq!(st.dropped_gap + st.dropped_ring_buffer, 0, "{st:?}");
    assert_eq!(st.matched, st.recorded + st.dropped_body_over_cap, "{st:?}");
}

/// One server connection whose first response is lost for `reason`; the task's counters.
fn lossy_connection(reason: GapReason) -> (Pipeline, deetune_store::TaskStats) {
    let (mut p, ids) = pipeline(&[TaskSpec::default()], &[]);
    let mut ev = vec![StreamEvent::Opened(info(
        1,
        10,
        "srv",
        Role::Server,
        "10.0.0.1:80",
        "10.0.0.2:5000",
    ))];
    let (_, req) = http_get("/a", "");
    let (_, resp) = http_ok("hello", "");
    ev.push(StreamEvent::Data {
        conn: 1,
        dir: Direction::Request,
        ts_ns: T0,
        bytes: req.clone(),
    });
    ev.push(StreamEvent::Gap {
        conn: 1,
        dir: Direction::Response,
        ts_ns: T0 + 1,
        len: resp.len() as u64,
        reason,
    });
    ev.push(StreamEvent::Data {
        conn: 1,
        dir: Direction::Request,
        ts_ns: T0 + 2,
        bytes: req,
    });
    ev.push(StreamEvent::Data {
        conn: 1,
        dir: Direction::Response,
        ts_ns: T0 + 3,
        bytes: resp,
    });
    ev.push(StreamEvent::Closed {
        conn: 1,
        ts_ns: T0 + 4,
    });
    feed(&mut p, ev);
    let st = p.tasks.get(&ids[0]).expect("running").stats.clone();
    (p, st)
}

#[tokio::test]
async fn redaction_removes_secrets_from_the_stored_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let spec = TaskSpec {
        redact_headers: vec!["X-Api-Key".into()],
        redact_json: vec!["$.card.number".into()],
        ..TaskSpec::default()
    };
    let (p, ids) = pipeline(&[spec], &[]);
    let mut engine = Engine::new(p, StoreSink::new(store.clone()), EngineOptions::default());
    let chunks = vec![
        http_post("/pay", "Authorization: Bearer SECRET-TOKEN-1\r\nCookie: sid=SECRET-COOKIE-2\r\nX-Api-Key: SECRET-KEY-3\r\n", r#"{"card":{"number":"4111SECRET4","exp":"12/30"}}"#),
        http_ok("{}", "Set-Cookie: sid=SECRET-SETCOOKIE-5\r\n"),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    for e in loopback(1, "web", "pay", 8080, 40001, &chunks) {
        tx.send(e).await.expect("send");
    }
    let mut redis = vec![StreamEvent::Opened(info(
        50,
        9,
        "redis-server",
        Role::Server,
        "127.0.0.1:6379",
        "10.9.9.9:5555",
    ))];
    redis.push(StreamEvent::Data {
        conn: 50,
        dir: Direction::Request,
        ts_ns: T0,
        bytes: b"*2\r\n$4\r\nAUTH\r\n$15\r\nSECRET-REDIS-6x\r\n".to_vec(),
    });
    redis.push(StreamEvent::Data {
        conn: 50,
        dir: Direction::Response,
        ts_ns: T0 + 1,
        bytes: b"+OK\r\n".to_vec(),
    });
    redis.push(StreamEvent::Closed {
        conn: 50,
        ts_ns: T0 + 2,
    });
    for e in redis {
        tx.send(e).await.expect("send");
    }
    drop(tx);
    let (_ctx, crx) = tokio::sync::mpsc::channel(1);
    engine.run(rx, crx, std::future::pending()).await;
    drop(engine);
    let stored: Vec<_> = store
        .exchanges(&ids[0])
        .map(|r| r.expect("exchange").1)
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let Request::Http(req) = &stored[0].request else {
        panic!("http first")
    };
    assert!(
        String::from_utf8_lossy(req.body.raw.as_bytes()).contains("12/30"),
        "the rest of the body stays"
    );
    drop(stored);
    drop(store);
    for secret in [
        "SECRET-TOKEN-1",
        "SECRET-COOKIE-2",
        "SECRET-KEY-3",
        "4111SECRET4",
        "SECRET-SETCOOKIE-5",
        "SECRET-REDIS-6x",
    ] {
        let hits = files_contain(dir.path(), secret.as_bytes());
        assert!(hits.is_empty(), "{secret} found in {hits:?}");
    }
    assert!(
        !files_contain(dir.path(), b"[REDACTED]").is_empty(),
        "the placeholder is stored"
    );
}

#[tokio::test]
async fn memory_sink_and_task_records_are_flushed() {
    let (p, ids) = pipeline(
        &[TaskSpec {
            count: Some(1),
            ..TaskSpec::default()
        }],
        &[],
    );
    let sink = MemorySink::default();
    let mut engine = Engine::new(p, sink.clone(), EngineOptions::default());
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    for e in loopback(
        1,
        "a",
        "b",
        80,
        40002,
        &[
            http_get("/", ""),
            http_ok("x", ""),
            http_get("/", ""),
            http_ok("x", ""),
        ],
    ) {
        tx.send(e).await.expect("send");
    }
    drop(tx);
    let (_ctx, crx) = tokio::sync::mpsc::channel(1);
    engine.run(rx, crx, std::future::pending()).await;
    assert_eq!(sink.exchanges.lock().unwrap().len(), 1);
    let tasks = sink.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, ids[0]);
    assert_eq!(tasks[0].state, TaskState::Stopped);
    assert_eq!(tasks[0].stats.recorded, 1);
}

/// A source standing for the capture: no events, and the counters of a capture whose kernel
/// lost events that belong to no connection.
struct LossySource(CaptureStats);

impl EventSource for LossySource {
    async fn next_event(&mut self) -> Option<StreamEvent> {
        std::future::pending().await
    }

    fn capture_stats(&self) -> Option<CaptureStats> {
        Some(self.0)
    }
}

/// Guards `GET /v1/status` (served from `Command::Stats`): kernel losses tied to no connection
/// (full connection table, lost open/close events) reach no task, so they must show there.
#[tokio::test]
async fn status_shows_kernel_losses_tied_to_no_connection() {
    let (p, _) = pipeline(&[], &[]);
    let mut engine = Engine::new(p, MemorySink::default(), EngineOptions::default());
    let mut stats = CaptureStats {
        kernel_events: 10,
        orphan_records: 2,
        ..CaptureStats::default()
    };
    stats.kernel.conn_table_full = 4;
    stats.kernel.control_events_lost = 3;
    stats.kernel.ring_full_events = 5;
    let (ctx, crx) = tokio::sync::mpsc::channel(4);
    let (reply, answer) = tokio::sync::oneshot::channel();
    ctx.send(Command::Stats(reply)).await.expect("send");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let run = engine.run(LossySource(stats), crx, async {
        let _ = done_rx.await;
    });
    let ask = async {
        let s = answer.await.expect("stats");
        let _ = done_tx.send(());
        s
    };
    let (_, s) = tokio::join!(run, ask);
    let c = s.capture.expect("capture counters");
    assert_eq!(
        (
            c.kernel_events,
            c.conn_table_full,
            c.control_events_lost,
            c.ring_full_events,
            c.orphan_records
        ),
        (10, 4, 3, 5, 2)
    );
    // Through the API's JSON and back, as `deetune` reads it.
    let back: deetune_recorder::EngineStats =
        serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
    assert_eq!(back.capture, Some(c));

    // A source that is not a capture reports none.
    let (p, _) = pipeline(&[], &[]);
    let mut engine = Engine::new(p, MemorySink::default(), EngineOptions::default());
    let (_tx, rx) = tokio::sync::mpsc::channel::<StreamEvent>(1);
    let (ctx, crx) = tokio::sync::mpsc::channel(4);
    let (reply, answer) = tokio::sync::oneshot::channel();
    ctx.send(Command::Stats(reply)).await.expect("send");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let run = engine.run(rx, crx, async {
        let _ = done_rx.await;
    });
    let ask = async {
        let s = answer.await.expect("stats");
        let _ = done_tx.send(());
        s
    };
    let (_, s) = tokio::join!(run, ask);
    assert!(s.capture.is_none());
}

/// Guards the daemon's sink: its periodic flush runs on the flusher thread, and what the engine
/// recorded is in the store, readable after the store is closed and opened again.
#[tokio::test]
async fn background_flush_sink_keeps_everything_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, ids) = pipeline(&[TaskSpec::default()], &[]);
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let sink = BackgroundFlushSink::new(StoreSink::new(store.clone())).expect("sink");
    let mut engine = Engine::new(
        p,
        sink,
        EngineOptions {
            flush_every: std::time::Duration::from_millis(10),
            ..EngineOptions::default()
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    for e in loopback(
        1,
        "a",
        "b",
        80,
        40003,
        &[
            http_get("/1", ""),
            http_ok("x", ""),
            http_get("/2", ""),
            http_ok("y", ""),
        ],
    ) {
        tx.send(e).await.expect("send");
    }
    let (_ctx, crx) = tokio::sync::mpsc::channel(1);
    let stop = async {
        // Several periodic (background) flushes go by before the end.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    engine.run(rx, crx, stop).await;
    drop(tx);
    drop(engine);
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    let n = store.exchanges(&ids[0]).count();
    assert_eq!(n, 2);
}

/// Guards the staged writes: exchanges reach the store in commits (every `batch` staged),
/// and each commit saves the task records after the exchanges they count, so the stored
/// record never counts more than the store holds — between commits and at the end.
#[test]
fn staged_commits_keep_the_stored_task_record_within_the_stored_exchanges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let (p, ids) = pipeline(&[TaskSpec::default()], &[]);
    let mut engine = Engine::new(
        p,
        StoreSink::new(store.clone()),
        EngineOptions {
            stage: 4,
            batch: 10,
            flush_every: std::time::Duration::from_secs(3600),
            ..EngineOptions::default()
        },
    );
    let chunks: Vec<_> = (0..25)
        .flat_map(|i| [http_get(&format!("/{i}"), ""), http_ok("x", "")])
        .collect();
    let stored = |store: &Store| {
        let usage = store.task_usage(&ids[0]).expect("usage").exchanges;
        let record = store
            .task(&ids[0])
            .expect("task")
            .map_or(0, |t| t.stats.recorded);
        (usage, record)
    };
    let mut seen = Vec::new();
    for ev in loopback(1, "a", "b", 80, 40004, &chunks) {
        engine.handle(ev);
        let (usage, record) = stored(&store);
        assert!(
            record <= usage,
            "the stored record counts {record}, the store holds {usage}"
        );
        seen.push(usage);
    }
    // Hand-overs of 4; a commit once 10 or more are staged: at 12 and at 24.
    seen.dedup();
    assert_eq!(seen, [0, 12, 24], "commits as staged");
    assert_eq!(stored(&store), (24, 24));
    engine.flush(true).expect("flush");
    assert_eq!(stored(&store), (25, 25));
    let paths: Vec<String> = store
        .exchanges(&ids[0])
        .map(|r| match r.expect("exchange").1.request {
            Request::Http(h) => h.target,
            other => panic!("not HTTP: {other:?}"),
        })
        .collect();
    let expected: Vec<String> = (0..25).map(|i| format!("/{i}")).collect();
    assert_eq!(paths, expected, "in recorded order");
}
