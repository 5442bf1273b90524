//! The store: a model-based test against a `BTreeMap` (with close and reopen), the lock, the
//! format version, retention, and a writer killed with SIGKILL mid-batch.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use deetune_store::{
    ExchangeId, ExchangeQuery, Retention, Store, StoreError, StoreOptions, TaskRecord, TaskState,
    TopologyEdge,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    PutTask {
        task: u8,
        state: u8,
        started: u16,
    },
    Append {
        task: u8,
        n: u8,
        start: u16,
    },
    Delete {
        task: u8,
    },
    Edge {
        client: u8,
        port: u16,
        exchanges: u64,
    },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4u8, 0..3u8, any::<u16>()).prop_map(|(task, state, started)| Op::PutTask {
            task,
            state,
            started
        }),
        (0..4u8, 0..20u8, any::<u16>()).prop_map(|(task, n, start)| Op::Append { task, n, start }),
        (0..4u8).prop_map(|task| Op::Delete { task }),
        (0..3u8, 0..3u16, any::<u64>()).prop_map(|(client, port, exchanges)| Op::Edge {
            client,
            port,
            exchanges
        }),
        Just(Op::Flush),
        Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    tasks: BTreeMap<String, TaskRecord>,
    exchanges: BTreeMap<String, Vec<(ExchangeId, deetune_protocols::Exchange)>>,
    edges: BTreeMap<(String, u16), TopologyEdge>,
}

fn check(store: &Store, model: &Model) {
    let mut tasks = store.tasks().unwrap();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(tasks, model.tasks.values().cloned().collect::<Vec<_>>());
    for t in 0..4u8 {
        let id = format!("t-{t}");
        let got: Vec<_> = store.exchanges(&id).map(Result::unwrap).collect();
        let want = model.exchanges.get(&id).cloned().unwrap_or_default();
        assert_eq!(got, want, "task {id}");
        assert_eq!(store.task_usage(&id).unwrap().exchanges, want.len() as u64);
        for (xid, x) in &want {
            assert_eq!(store.exchange(*xid).unwrap(), (id.clone(), x.clone()));
        }
    }
    let edges = store.edges().unwrap();
    assert_eq!(edges, model.edges.values().cloned().collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let mut model = Model::default();
        let mut last_id = None;
        for op in ops {
            match op {
                Op::PutTask { task, state, started } => {
                    let state = [TaskState::Running, TaskState::Stopped, TaskState::Imported]
                        [usize::from(state)];
                    let t = common::task(&format!("t-{task}"), state, u64::from(started));
                    store.put_task(&t).unwrap();
                    model.tasks.insert(t.id.clone(), t);
                }
                Op::Append { task, n, start } => {
                    let id = format!("t-{task}");
                    let xs: Vec<_> = (0..u64::from(n))
                        .map(|i| match i % 3 {
                            0 => common::http(u64::from(start) + i),
                            1 => common::redis(i),
                            _ => common::http_binary(i),
                        })
                        .collect();
                    let ids = store.append(&id, &xs).unwrap();
                    prop_assert_eq!(ids.len(), xs.len());
                    for xid in &ids {
                        prop_assert!(last_id < Some(*xid), "ids not monotonic");
                        last_id = Some(*xid);
                    }
                    model
                        .exchanges
                        .entry(id)
                        .or_default()
                        .extend(ids.into_iter().zip(xs));
                }
                Op::Delete { task } => {
                    let id = format!("t-{task}");
                    let res = store.delete_task(&id);
                    match model.tasks.get(&id).map(|t| t.state) {
                        None => prop_assert!(matches!(res, Err(StoreError::NoTask { .. })), "{:?}", res),
                        Some(TaskState::Running) => {
                            prop_assert!(matches!(res, Err(StoreError::TaskRunning { .. })), "{:?}", res);
                        }
                        Some(_) => {
                            res.unwrap();
                            model.tasks.remove(&id);
                            model.exchanges.remove(&id);
                        }
                    }
                }
                Op::Edge { client, port, exchanges } => {
                    let e = TopologyEdge {
                        client: format!("c{client}"),
                        server: "s".to_owned(),
                        port,
                        protocol: Some(deetune_protocols::Protocol::Http),
                        exchanges,
                        ..TopologyEdge::default()
                    };
                    store.put_edges(std::slice::from_ref(&e)).unwrap();
                    model.edges.insert((e.client.clone(), port), e);
                }
                Op::Flush => {
                    store.flush().unwrap();
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(tmp.path()).unwrap();
                }
            }
            check(&store, &model);
        }
    }
}

#[test]
fn second_opener_gets_locked_with_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let start = std::time::Instant::now();
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    match err {
        StoreError::Locked { holder, .. } => assert_eq!(holder, Some(std::process::id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    Store::open(tmp.path()).unwrap();
}

#[test]
fn data_dir_is_created_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/data");
    let _store = Store::open(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The store's sled database, opened without the store. sled releases its file lock when its
/// background thread ends, shortly after the store is dropped (later on a loaded machine):
/// retry for a while.
fn open_sled_directly(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir.join("db")) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("sled not released yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn newer_store_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    {
        let db = open_sled_directly(tmp.path());
        db.open_tree("meta")
            .unwrap()
            .insert("format", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade deetune"));
}

#[test]
fn newer_record_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        store
            .put_task(&common::task("t-1", TaskState::Stopped, 1))
            .unwrap();
    }
    {
        let db = open_sled_directly(tmp.path());
        let tasks = db.open_tree("tasks").unwrap();
        let mut v = tasks.get("t-1").unwrap().unwrap().to_vec();
        v[0] = 7;
        tasks.insert("t-1", v).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    let err = store.task("t-1").unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 7, .. }),
        "{err:?}"
    );
}

#[test]
fn retention_removes_oldest_first_never_running() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // t-0 running (oldest), t-1..t-3 stopped, each with 100 exchanges.
    for i in 0..4u64 {
        let state = if i == 0 {
            TaskState::Running
        } else {
            TaskState::Stopped
        };
        let id = format!("t-{i}");
        store
            .put_task(&common::task(&id, state, 1000 * (i + 1)))
            .unwrap();
        store.append(&id, &common::mixed(99)).unwrap();
    }
    let per_task = store.task_usage("t-1").unwrap().bytes;
    // Room for two tasks: t-1 (oldest stopped) and t-2 go; t-0 is running and stays.
    let removed = store
        .apply_retention(
            &Retention {
                max_bytes: Some(per_task * 2),
                max_age_ms: None,
            },
            10_000,
        )
        .unwrap();
    assert_eq!(removed, vec!["t-1".to_owned(), "t-2".to_owned()]);
    let left: Vec<_> = store.tasks().unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(left, ["t-0", "t-3"]);
    assert_eq!(store.exchanges("t-1").count(), 0);
    // Age: t-3 stopped at 5000; older than 1 s at 10 s. t-0 (running) stays.
    let removed = store
        .apply_retention(
            &Retention {
                max_bytes: None,
                max_age_ms: Some(1000),
            },
            10_000,
        )
        .unwrap();
    assert_eq!(removed, vec!["t-3".to_owned()]);
    assert_eq!(store.exchanges("t-0").count(), 100);
}

#[test]
fn find_exchanges_filters_by_interface_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1))
        .unwrap();
    store.append("t-1", &common::mixed(40)).unwrap();
    let q = |interface: Option<&str>, limit| ExchangeQuery {
        interface: interface.map(str::to_owned),
        limit,
    };
    assert_eq!(
        store.find_exchanges("t-1", &q(None, None)).unwrap().len(),
        41
    );
    assert_eq!(
        store
            .find_exchanges("t-1", &q(Some("POST /api/*"), None))
            .unwrap()
            .len(),
        21
    );
    assert_eq!(
        store
            .find_exchanges("t-1", &q(Some("SET"), None))
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        store
            .find_exchanges("t-1", &q(Some("SELECT u*"), Some(3)))
            .unwrap()
            .len(),
        3
    );
    assert!(matches!(
        store.find_exchanges("t-9", &q(None, None)),
        Err(StoreError::NoTask { .. })
    ));
    assert!(matches!(
        store.find_exchanges("t-1", &q(Some("[oops"), None)),
        Err(StoreError::Pattern { .. })
    ));
}

#[test]
fn an_appender_holds_its_exchanges_until_committed_then_adds_them_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let read = |task: &str| -> Vec<(ExchangeId, deetune_protocols::Exchange)> {
        store.exchanges(task).map(Result::unwrap).collect()
    };
    // Two tasks' appenders filled in turns; 600 exchanges are more than two full blocks.
    let input = common::mixed(600);
    let mut a = deetune_store::Appender::new("t-a").unwrap();
    let mut b = deetune_store::Appender::new("t-b").unwrap();
    for (i, x) in input.iter().enumerate() {
        if i % 3 == 0 {
            b.push(x).unwrap();
        } else {
            a.push(x).unwrap();
        }
    }
    assert_eq!((a.pending(), b.pending()), (400, 201));
    assert!(a.bytes() > 0 && b.bytes() > 0);
    assert_eq!(
        store.task_usage("t-a").unwrap().exchanges,
        0,
        "nothing before commit"
    );
    assert!(read("t-a").is_empty());

    let ids = store.commit(&mut a).unwrap();
    assert_eq!(
        (a.pending(), a.bytes()),
        (0, 0),
        "a commit empties the appender"
    );
    assert_eq!(ids.len(), 400);
    assert!(
        ids.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive ids"
    );
    let expected_a: Vec<_> = input
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, x)| x.clone())
        .collect();
    let got: Vec<_> = read("t-a").into_iter().map(|(_, x)| x).collect();
    assert_eq!(got, expected_a);
    assert_eq!(store.task_usage("t-a").unwrap().exchanges, 400);
    assert!(
        read("t-b").is_empty(),
        "the other task's appender is not committed"
    );

    // The appender goes on: more exchanges land after those committed.
    a.push(&input[0]).unwrap();
    let more = store.commit(&mut a).unwrap();
    assert!(more[0].0 > ids[399].0);
    let got = read("t-a");
    assert_eq!(got.len(), 401);
    assert_eq!(got[400].1, input[0]);
    assert!(
        store.commit(&mut a).unwrap().is_empty(),
        "an empty commit adds nothing"
    );
    store.commit(&mut b).unwrap();
    assert_eq!(read("t-b").len(), 201);
    assert!(matches!(
        deetune_store::Appender::new(""),
        Err(StoreError::InvalidTaskId { .. })
    ));
}

const CHILD_ENV: &str = "DEETUNE_STORE_CRASH_CHILD";
const BATCH: u64 = 200;
const BACKGROUND_ENV: &str = "DEETUNE_STORE_CRASH_BACKGROUND";

/// The writer that `writer_killed_mid_batch_loses_only_unflushed` kills: appends numbered
/// batches forever, flushing every 5th batch and printing how many exchanges are flushed.
/// Does nothing when run as a normal test.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let background = std::env::var_os(BACKGROUND_ENV).is_some();
    let options = if background {
        StoreOptions::default()
    } else {
        StoreOptions {
            flush_every_ms: 100_000,
            ..StoreOptions::default()
        }
    };
    let store = Store::open_with(Path::new(&dir), &options).unwrap();
    let mut n = 0u64;
    if background {
        // Only the background flusher writes to disk.
        loop {
            let xs: Vec<_> = (n..n + BATCH).map(common::http).collect();
            store.append("t-crash", &xs).unwrap();
            n += BATCH;
            println!("appended {n}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let mut batches = 0u64;
    loop {
        let xs: Vec<_> = (n..n + BATCH).map(common::http).collect();
        store.append("t-crash", &xs).unwrap();
        n += BATCH;
        batches += 1;
        if batches % 5 == 0 {
            store.flush().unwrap();
            println!("flushed {n}");
        }
    }
}

#[test]
fn writer_killed_mid_batch_loses_only_unflushed() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut flushed = 0u64;
        // Wait for a few flushes (more each round), then kill without warning.
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = n.trim().parse().unwrap();
                if flushed >= 5 * BATCH * (3 + round) {
                    break;
                }
            }
        }
        assert!(flushed > 0, "the writer never flushed");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = Store::open(tmp.path()).unwrap();
        let mut count = 0u64;
        let mut last = None;
        for item in store.exchanges("t-crash") {
            let (id, x) = item.expect("a stored exchange does not decode");
            assert!(last < Some(id), "ids out of order");
            last = Some(id);
            // The task is emptied between rounds: one writer run, numbered from 0.
            assert_eq!(x, common::http(count));
            count += 1;
        }
        assert!(
            count >= flushed,
            "round {round}: {count} exchanges after the crash, {flushed} were flushed"
        );
        assert_eq!(count % BATCH, 0, "a batch was split: {count}");
        drop(store);
        // Start the next round from an empty task so numbering restarts.
        let store = Store::open(tmp.path()).unwrap();
        store
            .put_task(&common::task("t-crash", TaskState::Stopped, 1))
            .unwrap();
        store.delete_task("t-crash").unwrap();
        assert_eq!(store.exchanges("t-crash").count(), 0);
    }
}

/// Without any explicit flush, a SIGKILL loses at most what was appended in the last flush
/// interval (500 ms by default; the check allows 1.5 s for a loaded machine).
#[test]
fn background_flush_bounds_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env(BACKGROUND_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("appended ") {
            seen.push((std::time::Instant::now(), n.trim().parse::<u64>().unwrap()));
        }
        if start.elapsed() > std::time::Duration::from_secs(4) {
            break;
        }
    }
    let killed_at = std::time::Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let safe = seen
        .iter()
        .rev()
        .find(|(t, _)| killed_at.duration_since(*t) >= std::time::Duration::from_millis(1500))
        .map_or(0, |(_, n)| *n);
    assert!(safe > 0, "the writer appended nothing early enough");
    let store = Store::open(tmp.path()).unwrap();
    let mut count = 0u64;
    for item in store.exchanges("t-crash") {
        let (_, x) = item.expect("a stored exchange does not decode");
        assert_eq!(x, common::http(count));
        count += 1;
    }
    assert!(
        count >= safe,
        "{count} exchanges after the crash, {safe} were appended 1.5 s before it"
    );
}
