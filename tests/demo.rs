//! End-to-end tests of `deetune demo` with the real binary, the real eBPF recorder, real
//! Redis and MariaDB (as root; they skip with a printed reason otherwise).
//!
//! They guard the demo's promise: the report finds exactly the injected regression (shop v2's
//! cart total), the harmless change is noise only, and nothing the demo started outlives it,
//! also when it is interrupted with Ctrl-C (SIGINT).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_deetune");
/// Process names the demo gives its children.
const CHILD_NAMES: [&str; 4] = ["shop-v1", "shop-v2", "shop-v1-base", "web"];

/// One demo at a time: the leftover check looks for the demo's children by name across the
/// host, so a demo run by the other test at the same time looked like a leftover.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    deetune_fixtures::is_root()
}

/// Pids of live (not zombie) processes whose name is one of the demo's children.
fn demo_children_alive() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if CHILD_NAMES.contains(&comm) && !is_zombie(pid) {
            out.push((pid, comm.to_owned()));
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
    })
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// Pids the demo printed for its servers (`… (pid N)`).
fn server_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1)?.trim_end_matches(')').parse().ok())
        .collect()
}

/// tracefs / bpf / debugfs mounts (what an eBPF tool might leave behind).
fn tracing_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["tracefs", "bpf", "debugfs"]
                .iter()
                .any(|t| l.split(' ').nth(2) == Some(t))
        })
        .map(str::to_owned)
        .collect()
}

fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_nothing_left(stdout: &str, mounts_before: &BTreeSet<String>) {
    let servers = server_pids(stdout);
    assert_eq!(
        wait_gone(&servers, Duration::from_secs(5)),
        Vec::<u32>::new(),
        "servers left running"
    );
    let start = Instant::now();
    while !demo_children_alive().is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        demo_children_alive(),
        Vec::new(),
        "demo children left running"
    );
    let after = tracing_mounts();
    let new: Vec<&String> = after.difference(mounts_before).collect();
    assert!(new.is_empty(), "mounts left behind: {new:?}");
}

/// Runs the demo, streaming stdout lines through a channel; returns the child.
fn spawn_demo(out: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("demo")
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start deetune demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("deetune demo did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn interfaces(report: &Value) -> Vec<(String, Value)> {
    report["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| (i["name"].as_str().unwrap_or_default().to_owned(), i.clone()))
        .collect()
}

#[test]
fn demo_finds_exactly_the_injected_regression_and_leaves_nothing_behind() {
    let _one = ONE_DEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_root() {
        deetune_fixtures::skip("the demo records with eBPF and needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounts = tracing_mounts();
    let (mut child, lines) = spawn_demo(dir.path());
    let status = wait_exit(&mut child, Duration::from_secs(180));
    let stdout: String = lines.try_iter().collect::<Vec<_>>().join("\n");
    assert!(status.success(), "demo failed ({status}):\n{stdout}");
    assert!(
        stdout.contains("redis-server on") && stdout.contains("mariadbd on"),
        "{stdout}"
    );
    assert!(stdout.contains("HTML report:"), "{stdout}");
    assert!(dir.path().join("report.html").is_file());

    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let totals = &report["totals"];
    assert_eq!(totals["error"], 0, "{totals}");
    // 16 requests in the plan, all recorded and replayed.
    assert_eq!(totals["read"], 16, "{totals}");

    let ifaces = interfaces(&report);
    let regressed: Vec<&str> = ifaces
        .iter()
        .filter(|(_, i)| i["counts"]["regression"].as_u64() > Some(0))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(regressed, ["POST /api/cart"], "{report:#}");
    let (_, cart) = ifaces.iter().find(|(n, _)| n == "POST /api/cart").unwrap();
    // Exactly one exchange regressed (3 french presses), the two single-item ones pass.
    assert_eq!(cart["counts"]["regression"], 1, "{cart:#}");
    assert_eq!(cart["counts"]["pass"], 2, "{cart:#}");
    let finding = cart["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["verdict"] == "regression")
        .unwrap();
    assert!(finding.to_string().contains("total_cents"), "{finding:#}");

    // The harmless change (health's request id and served_by) is noise only.
    let (_, health) = ifaces.iter().find(|(n, _)| n == "GET /api/health").unwrap();
    assert_eq!(health["counts"]["regression"], 0, "{health:#}");
    assert_eq!(health["counts"]["noise_only"], 3, "{health:#}");

    assert_nothing_left(&stdout, &mounts);

    // A second run works too (nothing from the first run is in the way).
    let (mut again, lines) = spawn_demo(dir.path());
    let status = wait_exit(&mut again, Duration::from_secs(180));
    let stdout: String = lines.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        status.success(),
        "second demo run failed ({status}):\n{stdout}"
    );
    assert!(stdout.contains("REGRESSION in POST /api/cart"), "{stdout}");
    assert_nothing_left(&stdout, &mounts);
}

/// Ctrl-C at several points of the demo stops everything it started.
#[test]
fn sigint_during_the_demo_leaves_no_process_behind() {
    let _one = ONE_DEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_root() {
        deetune_fixtures::skip("the demo records with eBPF and needs root");
        return;
    }
    for point in [
        "==> Starting shop v1",
        "shop-v1 listens",
        "==> Recording",
        "==> Starting shop v2",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mounts = tracing_mounts();
        let (mut child, lines) = spawn_demo(dir.path());
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let reached = loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.starts_with(point);
                    seen.push(l);
                    if hit {
                        break true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => break false,
            }
        };
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let status = wait_exit(&mut child, Duration::from_secs(150));
        seen.extend(lines.try_iter());
        let stdout = seen.join("\n");
        if reached {
            assert_eq!(
                status.code(),
                Some(130),
                "interrupted at {point:?}:\n{stdout}"
            );
        }
        assert_nothing_left(&stdout, &mounts);
    }
}
