//! The store commands through the real binary: `export`, `import`, `exchanges list|show`,
//! exit code 2 with the bad line on a bad bundle, and a clear error when the store is in use.

use std::path::Path;
use std::process::{Command, Output};

use deetune_protocols::{
    Body, ConnectionMeta, Exchange, Flags, Header, HttpRequest, HttpResponse, Protocol, Request,
    Response, Timing,
};
use deetune_store::{Store, TaskRecord, TaskSpec, TaskState, TaskStats};

fn deetune(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deetune"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn http(n: u64, method: &str) -> Exchange {
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: n,
            ..ConnectionMeta::default()
        }),
        seq: 0,
        protocol: Protocol::Http,
        request: Request::Http(HttpRequest {
            method: method.to_owned(),
            target: format!("/items/{n}"),
            version: "HTTP/1.1".to_owned(),
            headers: vec![Header {
                name: "Host".to_owned(),
                value: "shop".into(),
            }],
            body: Body::default(),
        }),
        response: Some(Response::Http(HttpResponse {
            version: "HTTP/1.1".to_owned(),
            status: 200,
            reason: "OK".to_owned(),
            headers: vec![],
            body: Body {
                raw: "hello".into(),
                len: 5,
                ..Body::default()
            },
        })),
        timing: Timing {
            request_start_ns: 1_000_000,
            request_end_ns: 1_100_000,
            response_start_ns: 2_000_000,
            response_end_ns: 3_000_000,
        },
        flags: Flags::default(),
        session: None,
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn export_import_list_show_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("one"), tmp.path().join("two"));
    {
        let store = Store::open(&d1).unwrap();
        store
            .put_task(&TaskRecord {
                id: "t-1".to_owned(),
                spec: TaskSpec::default(),
                state: TaskState::Stopped,
                stop_reason: Some("count".to_owned()),
                started_ms: 1,
                stopped_ms: Some(2),
                stats: TaskStats::default(),
            })
            .unwrap();
        let xs: Vec<_> = (0..6)
            .map(|n| http(n, if n % 2 == 0 { "GET" } else { "PUT" }))
            .collect();
        store.append("t-1", &xs).unwrap();
    }
    let a = tmp.path().join("a.jsonl.zst");
    let o = deetune(&d1, &["export", "--task", "t-1", "-o", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = deetune(&d2, &["import", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let task = stdout(&o).trim().to_owned();
    assert!(task.starts_with("t-"), "{task}");

    let o = deetune(
        &d2,
        &[
            "exchanges",
            "list",
            "--task",
            &task,
            "--interface",
            "GET *",
            "--limit",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].ends_with("GET /items/0") && rows[1].ends_with("GET /items/2"),
        "{out}"
    );
    let id = rows[1].split_whitespace().next().unwrap();

    let o = deetune(&d2, &["exchanges", "show", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["task"], task.as_str());
    assert_eq!(doc["exchange"]["request"]["target"], "/items/2");

    // Re-export of the imported task is the same file.
    let b = tmp.path().join("b.jsonl.zst");
    let o = deetune(&d2, &["export", "--task", &task, "-o", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());

    // HAR by name.
    let har = tmp.path().join("x.har");
    let o = deetune(
        &d2,
        &["export", "--task", &task, "-o", har.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    assert_eq!(doc["log"]["entries"].as_array().unwrap().len(), 6);

    // A bad bundle: exit 2, the message names the line, the store is unchanged.
    let plain = tmp.path().join("p.jsonl");
    let o = deetune(
        &d2,
        &["export", "--task", &task, "-o", plain.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&plain).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "{\"conn\": garbage";
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let before = stdout(&deetune(&d2, &["exchanges", "list", "--task", &task]));
    let o = deetune(&d2, &["import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 4"), "{}", stderr(&o));
    let store = Store::open(&d2).unwrap();
    assert_eq!(store.tasks().unwrap().len(), 1);
    drop(store);
    assert_eq!(
        stdout(&deetune(&d2, &["exchanges", "list", "--task", &task])),
        before
    );

    // Unknown task, unknown exchange: exit 2.
    assert_eq!(
        deetune(&d2, &["exchanges", "list", "--task", "t-none"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        deetune(&d2, &["exchanges", "show", "999999"]).status.code(),
        Some(2)
    );
}

#[test]
fn store_in_use_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let start = std::time::Instant::now();
    let o = deetune(tmp.path(), &["exchanges", "list", "--task", "t-1"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(2));
    let msg = stderr(&o);
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
    drop(store);
}
