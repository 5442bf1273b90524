//! Recording with the real eBPF capture (root only; skips with a reason otherwise): real
//! nginx, redis-server and MariaDB started on free ports, driven by real clients (`curl`,
//! `redis-cli`, `mariadb`), all child processes (the capture never sees the recorder's own
//! process). Each test filters the capture to its server's port, so parallel tests do not
//! see each other's traffic. Also: a daemon (this binary re-run as a child) killed with
//! SIGKILL and restarted keeps its tasks and every exchange flushed before the kill.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deetune_protocols::{Protocol, Request};
use deetune_recorder::{
    new_task, record, run_daemon, Capture, CaptureConfig, Client, MemorySink, ServiceRule,
    StoreSink,
};
use deetune_store::{Store, TaskRecord, TaskSpec, TaskState};

mod common;
use common::files_contain;

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One real-capture test at a time: each loads the eBPF programs and starts servers, and the
/// machine has two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

macro_rules! require_root {
    () => {
        if !is_root() {
            deetune_fixtures::skip(
                "recording with the eBPF capture needs root (CI runs it as root)",
            );
            return;
        }
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    };
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records `spec` with the capture filtered to `port` while `traffic` runs on a thread;
/// ends when the task ends or after `limit`.
fn record_with(
    spec: TaskSpec,
    rules: &[ServiceRule],
    port: u16,
    limit: Duration,
    traffic: impl FnOnce() + Send + 'static,
) -> (TaskRecord, MemorySink, Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // As `deetune record` and the daemon run it: the kernel copies loopback connections
        // once (the server end); the Redis test below keeps both ends copied.
        let capture = Capture::start(CaptureConfig {
            ports: vec![port],
            loopback_dedup: true,
            ..CaptureConfig::default()
        })
        .expect("capture");
        let sink = MemorySink::default();
        let t = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            traffic();
        });
        let started = Instant::now();
        let (task, sink, _) = record(
            new_task(spec),
            rules,
            capture,
            sink,
            tokio::time::sleep(limit),
        )
        .await
        .expect("record");
        let took = started.elapsed();
        t.await.expect("traffic thread");
        (task, sink, took)
    })
}

#[test]
fn http_pair_scope_interface_filter_and_exact_count() {
    require_root!();
    let nginx =
        deetune_fixtures::Nginx::start(r#"location / { return 200 "hello\n"; }"#).expect("nginx");
    let port = nginx.port();
    let rules = [ServiceRule {
        name: "checkout".into(),
        port: Some(port),
        ..ServiceRule::default()
    }];
    let spec = TaskSpec {
        from: Some("curl".into()),
        to: Some("checkout".into()),
        protocol: Some(Protocol::Http),
        interfaces: vec!["POST /api/orders*".into()],
        count: Some(3),
        ..TaskSpec::default()
    };
    let other_client = tempfile::tempdir().expect("tempdir");
    let curl = deetune_fixtures::find_binary("curl").expect("curl installed");
    std::fs::copy(&curl, other_client.path().join("other-client")).expect("copy curl");
    let (task, sink, _) = record_with(spec, &rules, port, Duration::from_secs(20), move || {
        let base = format!("http://127.0.0.1:{port}");
        // First a matching call from another client service: a copy of curl named
        // `other-client` (its process name), which the pair scope must leave out.
        let other = other_client.path().join("other-client");
        run(
            &other.display().to_string(),
            &[
                "-sf",
                "-X",
                "POST",
                "-d",
                "{}",
                &format!("{base}/api/orders/99"),
            ],
        );
        // Then five matching calls on one keep-alive connection, non-matching calls around.
        run("curl", &["-sf", &format!("{base}/health")]);
        let mut args = vec!["-sf".to_owned()];
        for i in 0..5 {
            args.extend([
                "-X".into(),
                "POST".into(),
                "-d".into(),
                "{}".into(),
                format!("{base}/api/orders/{i}"),
            ]);
            args.extend(["--next".into()]);
        }
        args.push(format!("{base}/api/users"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("curl", &refs);
    });
    let recorded = sink.exchanges.lock().unwrap().clone();
    assert_eq!(task.state, TaskState::Stopped);
    assert_eq!(task.stop_reason.as_deref(), Some("count"), "{task:?}");
    assert_eq!(
        recorded.len(),
        3,
        "exactly N: {:?}",
        recorded
            .iter()
            .map(|(_, e)| e.interface())
            .collect::<Vec<_>>()
    );
    assert_eq!(task.stats.recorded, 3);
    for (i, (_, ex)) in recorded.iter().enumerate() {
        assert_eq!(ex.interface(), format!("POST /api/orders/{i}"));
        assert_eq!(ex.conn.client.service.as_deref(), Some("curl"));
        assert_eq!(ex.conn.server.service.as_deref(), Some("checkout"));
        assert!(ex.response.is_some());
    }
}

#[test]
fn duration_stops_on_time() {
    require_root!();
    let nginx =
        deetune_fixtures::Nginx::start(r#"location / { return 200 "hello\n"; }"#).expect("nginx");
    let port = nginx.port();
    let spec = TaskSpec {
        duration_secs: Some(2),
        ..TaskSpec::default()
    };
    let (task, sink, took) = record_with(spec, &[], port, Duration::from_secs(20), move || {
        run("curl", &["-sf", &format!("http://127.0.0.1:{port}/one")]);
    });
    assert_eq!(task.stop_reason.as_deref(), Some("duration"), "{task:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let n = sink.exchanges.lock().unwrap().len();
    assert_eq!(n, 1, "the one call during the task");
}

#[test]
fn redis_auth_is_redacted_in_the_store_and_topology_counts() {
    require_root!();
    let secret = "pw-SECRET-7781";
    let redis = deetune_fixtures::RedisServer::start_with_password(secret).expect("redis");
    let port = redis.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let spec = TaskSpec {
        to: Some("redis-server".into()),
        protocol: Some(Protocol::Redis),
        ..TaskSpec::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let task = new_task(spec);
    let id = task.id.clone();
    let edges = rt.block_on(async {
        let capture = Capture::start(CaptureConfig {
            ports: vec![port],
            ..CaptureConfig::default()
        })
        .expect("capture");
        let traffic = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            let p = port.to_string();
            for i in 0..4 {
                run(
                    "redis-cli",
                    &[
                        "-p",
                        &p,
                        "--no-auth-warning",
                        "-a",
                        secret,
                        "SET",
                        &format!("k{i}"),
                        "v",
                    ],
                );
            }
            run(
                "redis-cli",
                &["-p", &p, "--no-auth-warning", "-a", secret, "GET", "k1"],
            );
        });
        let stop = async move {
            traffic.await.expect("traffic");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        };
        let (_t, mut sink, _) = record(task, &[], capture, StoreSink::new(store.clone()), stop)
            .await
            .expect("record");
        let edges = store.edges().expect("edges");
        let _ = deetune_recorder::Sink::flush(&mut sink);
        edges
    });
    let stored: Vec<_> = store
        .exchanges(&id)
        .map(|r| r.expect("exchange").1)
        .collect();
    let names: Vec<String> = stored
        .iter()
        .map(deetune_protocols::Exchange::interface)
        .collect();
    // redis-cli sends AUTH first on each connection (and may send COMMAND DOCS when
    // interactive; not here).
    assert_eq!(
        names.iter().filter(|n| *n == "AUTH").count(),
        5,
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "SET").count(), 4, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "GET").count(), 1, "{names:?}");
    for ex in &stored {
        if let Request::Redis(c) = &ex.request {
            assert!(c.args.iter().all(|a| a.as_bytes() != secret.as_bytes()));
        }
    }
    let edge = edges
        .iter()
        .find(|e| e.server == "redis-server")
        .expect("redis edge");
    assert_eq!(edge.client, "redis-cli");
    assert_eq!(edge.port, port);
    assert_eq!(edge.connections, 5);
    assert_eq!(edge.exchanges, 10);
    drop(stored);
    drop(store);
    assert!(
        files_contain(dir.path(), secret.as_bytes()).is_empty(),
        "the password is not in the store files"
    );
    assert!(
        !files_contain(dir.path(), b"[REDACTED]").is_empty(),
        "the stored blocks were read"
    );
}

#[test]
fn mysql_interface_filter_and_no_auth_data() {
    require_root!();
    let db = match deetune_fixtures::MariaDb::start() {
        Ok(db) => db,
        Err(e) => panic!("MariaDB does not start: {e}"),
    };
    let port = db.port();
    let cfg = db.config().clone();
    db.sql("CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, name TEXT)")
        .expect("create");
    let spec = TaskSpec {
        to: Some("mariadbd".into()),
        interfaces: vec!["SELECT items".into()],
        ..TaskSpec::default()
    };
    let (task, sink, _) = record_with(spec, &[], port, Duration::from_secs(6), move || {
        let p = port.to_string();
        let pw = format!("-p{}", cfg.password);
        for sql in [
            "INSERT INTO items VALUES (1, 'a')",
            "SELECT name FROM items WHERE id = 1",
            "SELECT 1",
            "SELECT id FROM items",
        ] {
            run(
                "mariadb",
                &[
                    "-h",
                    "127.0.0.1",
                    "-P",
                    &p,
                    "-u",
                    &cfg.user,
                    &pw,
                    &cfg.database,
                    "--skip-ssl",
                    "-e",
                    sql,
                ],
            );
        }
    });
    let recorded = sink.exchanges.lock().unwrap().clone();
    let names: Vec<String> = recorded.iter().map(|(_, e)| e.interface()).collect();
    assert_eq!(names, ["SELECT items", "SELECT items"], "{names:?}");
    assert!(
        task.stats.matched == 2 && task.stats.recorded == 2,
        "{:?}",
        task.stats
    );
    for (_, ex) in &recorded {
        assert_eq!(ex.conn.client.service.as_deref(), Some("mariadb"));
        let json = serde_json::to_string(ex).expect("json");
        assert!(!json.contains(&db.config().password), "no auth data");
    }
}

// ---------------------------------------------------------------- daemon restart

/// The daemon, when this binary is re-run as a child with `DT_DAEMON_DIR` set.
#[test]
fn child_daemon() {
    let Some(dir) = std::env::var_os("DT_DAEMON_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let port: u16 = std::env::var("DT_DAEMON_PORT")
        .expect("port")
        .parse()
        .expect("port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Arc::new(Store::open(dir.join("data")).expect("store"));
        let capture = Capture::start(CaptureConfig {
            ports: vec![port],
            loopback_dedup: true,
            ..CaptureConfig::default()
        })
        .expect("capture");
        run_daemon(
            store,
            &[],
            &dir.join("sock"),
            capture,
            true,
            std::future::pending(),
        )
        .await
        .expect("daemon");
    });
}

fn spawn_daemon(dir: &Path, port: u16) -> std::process::Child {
    let exe = std::env::current_exe().expect("exe");
    let child = Command::new(exe)
        .args(["--exact", "child_daemon", "--nocapture", "--test-threads=1"])
        .env("DT_DAEMON_DIR", dir)
        .env("DT_DAEMON_PORT", port.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    let c = Client::new(dir.join("sock"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(c.status()).is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn daemon_killed_with_sigkill_keeps_tasks_and_flushed_exchanges() {
    require_root!();
    let nginx =
        deetune_fixtures::Nginx::start(r#"location / { return 200 "hello\n"; }"#).expect("nginx");
    let port = nginx.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let c = Client::new(dir.path().join("sock"));

    let mut daemon = spawn_daemon(dir.path(), port);
    let a = rt
        .block_on(c.start(&TaskSpec {
            name: Some("all".into()),
            ..TaskSpec::default()
        }))
        .expect("start");
    let b = rt
        .block_on(c.start(&TaskSpec {
            interfaces: vec!["GET /b*".into()],
            ..TaskSpec::default()
        }))
        .expect("start");
    // Bad input gets a 4xx with a message.
    let err = rt
        .block_on(c.start(&TaskSpec {
            count: Some(0),
            ..TaskSpec::default()
        }))
        .unwrap_err();
    assert!(err.is_client_error(), "{err}");
    assert!(rt.block_on(c.task("t-nope")).unwrap_err().is_not_found());
    let base = format!("http://127.0.0.1:{port}");
    for i in 0..6 {
        run(
            "curl",
            &[
                "-sf",
                &format!("{base}/a{i}"),
                "--next",
                &format!("{base}/b{i}"),
            ],
        );
    }
    // Wait until everything is recorded and a flush (every 200 ms) went by.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = rt.block_on(c.task(&a.id)).expect("task");
        if t.stats.recorded == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "not recorded: {:?}", t.stats);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(800));
    // The status shows the capture's own counters (losses tied to no connection among them).
    let status = rt.block_on(c.status()).expect("status");
    let cap = status
        .stats
        .capture
        .expect("capture counters in the status");
    assert!(cap.kernel_events > 0 && cap.connections > 0, "{cap:?}");
    assert_eq!((cap.conn_table_full, cap.control_events_lost), (0, 0));
    // SAFETY: kill with a valid pid of our child.
    unsafe { libc::kill(i32::try_from(daemon.id()).expect("pid"), libc::SIGKILL) };
    daemon.wait().expect("wait");

    let mut daemon = spawn_daemon(dir.path(), port);
    let tasks = rt.block_on(c.tasks()).expect("tasks");
    assert_eq!(tasks.len(), 2);
    for t in &tasks {
        assert_eq!(t.state, TaskState::Interrupted, "{t:?}");
    }
    let ta = tasks.iter().find(|t| t.id == a.id).expect("a");
    let tb = tasks.iter().find(|t| t.id == b.id).expect("b");
    assert_eq!(ta.stats.recorded, 12);
    assert_eq!(tb.stats.recorded, 6);
    assert_eq!(
        rt.block_on(c.exchanges(&a.id, None, None))
            .expect("exchanges")
            .len(),
        12
    );
    let bx = rt
        .block_on(c.exchanges(&b.id, None, None))
        .expect("exchanges");
    assert_eq!(bx.len(), 6);
    assert!(bx
        .iter()
        .all(|e| e.exchange.interface().starts_with("GET /b")));
    // Resume, record more, stop.
    let r = rt.block_on(c.resume(&a.id)).expect("resume");
    assert_eq!(r.state, TaskState::Running);
    run("curl", &["-sf", &format!("{base}/c")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(c.task(&a.id)).expect("task").stats.recorded < 13 {
        assert!(Instant::now() < deadline, "resumed task records");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = rt.block_on(c.stop(&a.id)).expect("stop");
    assert_eq!(s.state, TaskState::Stopped);
    assert!(
        rt.block_on(c.stop(&a.id)).unwrap_err().is_client_error(),
        "stopping twice is a 409"
    );
    // SAFETY: as above; SIGTERM flushes and exits cleanly.
    unsafe { libc::kill(i32::try_from(daemon.id()).expect("pid"), libc::SIGTERM) };
    let _ = daemon.kill();
    daemon.wait().expect("wait");
}

// ---------------------------------------------------------------- hyper service

/// The demo shop (a hyper HTTP/1.1 service) named `checkout`, when this binary is re-run as
/// a child with `DT_SHOP=1`; it prints `listening 127.0.0.1:PORT` and dies with its stdin.
#[test]
fn child_shop() {
    if std::env::var_os("DT_SHOP").is_none() {
        return;
    }
    let config = deetune_fixtures::ShopConfig {
        version: deetune_fixtures::ShopVersion::V1,
        redis: None,
        mysql: None,
    };
    deetune_fixtures::run_shop_process("checkout", &config, 0, true).expect("shop");
}

#[test]
fn hyper_service_exchanges_and_topology_counts() {
    require_root!();
    use std::io::BufRead as _;
    let mut shop = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_shop", "--nocapture", "--test-threads=1"])
        .env("DT_SHOP", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn shop");
    let mut lines = std::io::BufReader::new(shop.stdout.take().expect("stdout")).lines();
    let port: u16 = loop {
        let line = lines.next().expect("shop output").expect("line");
        // The harness prints `test child_shop ... ` first, on the same line.
        if let Some(addr) = line.split("listening ").nth(1) {
            break addr
                .rsplit(':')
                .next()
                .expect("port")
                .parse()
                .expect("port");
        }
    };
    let spec = TaskSpec {
        from: Some("curl".into()),
        to: Some("checkout".into()),
        // Long enough for four curl runs on a loaded CI machine (3 s failed once under load).
        duration_secs: Some(8),
        ..TaskSpec::default()
    };
    let (task, sink, _) = record_with(spec, &[], port, Duration::from_secs(20), move || {
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..3 {
            run(
                "curl",
                &["-s", "-o", "/dev/null", &format!("{base}/api/health")],
            );
        }
        run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                &format!("{base}/api/products"),
                "--next",
                "-s",
                "-o",
                "/dev/null",
                &format!("{base}/api/nope"),
            ],
        );
    });
    drop(shop.stdin.take());
    let _ = shop.kill();
    let _ = shop.wait();
    let recorded = sink.exchanges.lock().unwrap().clone();
    let names: Vec<String> = recorded.iter().map(|(_, e)| e.interface()).collect();
    assert_eq!(
        names,
        [
            "GET /api/health",
            "GET /api/health",
            "GET /api/health",
            "GET /api/products",
            "GET /api/nope"
        ],
        "{task:?}"
    );
    assert_eq!(task.stats.recorded, 5);
    for (_, ex) in &recorded {
        assert_eq!(ex.conn.server.service.as_deref(), Some("checkout"));
        assert_eq!(ex.conn.server.port, port);
        assert!(ex.response.is_some(), "answered");
    }
    let edges = sink.edges.lock().unwrap().clone();
    let e = edges
        .iter()
        .find(|e| e.client == "curl" && e.server == "checkout")
        .expect("edge curl → checkout");
    assert_eq!((e.connections, e.exchanges, e.port), (4, 5, port), "{e:?}");
    assert!(e.p50_us > 0 && e.p99_us >= e.p50_us, "{e:?}");
    assert!(e.bytes_sent > 0 && e.bytes_received > 0);
}
