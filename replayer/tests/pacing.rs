//! Pacing (`--rps`, `--speed`) and `--only-reads`, against the in-process hyper service.
//! Timing assertions are lower bounds only (a slow machine may take longer, never less).

mod support;

use std::time::{Duration, Instant};

use deetune_protocols::{Body, Exchange, HttpRequest, Request};
use deetune_replayer::{replay_async, Outcome, Pace, ReplayConfig, Verdict};
use support::*;

/// `n` ordered GETs of `/api/seq` on each of `conns` connections, recorded `gap_ms` apart
/// (connection after connection, as one timeline).
fn seq_recording(conns: u64, n: u64, gap_ms: u64) -> Vec<Exchange> {
    let mut v = Vec::new();
    let t0 = 1_700_000_000_000_000_000u64;
    for c in 1..=conns {
        for i in 0..n {
            let mut x = http_get(
                c,
                i,
                &format!("/api/seq?i={i}"),
                200,
                &format!(r#"{{"on_this_connection":{i},"query":"i={i}"}}"#),
            );
            let t = t0 + ((c - 1) * n + i) * gap_ms * 1_000_000;
            x.timing.request_start_ns = t;
            x.timing.request_end_ns = t + 1000;
            x.timing.response_start_ns = t + 2000;
            x.timing.response_end_ns = t + 3000;
            v.push(x);
        }
    }
    v.sort_by_key(|x| x.timing.request_start_ns);
    v
}

async fn timed(rec: Vec<Exchange>, cfg: ReplayConfig) -> (deetune_replayer::Report, Duration) {
    let start = Instant::now();
    let report = replay_async(ok_source(rec), cfg).await.unwrap();
    (report, start.elapsed())
}

// Guards: --rps 40 spreads 20 exchanges (over 4 sessions) across at least 19/40 s, and
// pacing keeps every session's order (all pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rps_paces_all_sessions_together() {
    let addr = start_service(1).await;
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{addr}")]).unwrap();
    cfg.pace = Pace::Rps(40.0);
    let (report, took) = timed(seq_recording(4, 5, 0), cfg).await;
    assert_eq!(report.totals.counts.pass, 20, "{}", report.summary());
    assert!(took >= Duration::from_millis(450), "{took:?}");

    // The same recording unpaced is not held back by the limit (a loose upper bound, far
    // above the paced run's lower bound, so this never flakes on a slow machine).
    let cfg = ReplayConfig::with_targets(&[format!("http://{addr}")]).unwrap();
    let (report, _) = timed(seq_recording(4, 5, 0), cfg).await;
    assert_eq!(report.totals.counts.pass, 20, "{}", report.summary());
}

// Guards: --speed follows the recorded timeline scaled: 8 exchanges recorded 100 ms apart
// (700 ms) take at least 350 ms at 2x and at least 700 ms at 1x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_scales_the_recorded_timeline() {
    let addr = start_service(1).await;
    for (factor, at_least_ms) in [("2x", 340), ("1x", 690)] {
        let mut cfg = ReplayConfig::with_targets(&[format!("http://{addr}")]).unwrap();
        cfg.pace = Pace::parse_speed(factor).unwrap();
        let (report, took) = timed(seq_recording(2, 4, 100), cfg).await;
        assert_eq!(report.totals.counts.pass, 8, "{}", report.summary());
        assert!(
            took >= Duration::from_millis(at_least_ms),
            "{factor}: {took:?}"
        );
    }
    assert!(Pace::parse_speed("0x").is_err());
    assert!(Pace::parse_speed("fast").is_err());
    assert_eq!(Pace::parse_speed("2.5X"), Ok(Pace::Speed(2.5)));
}

fn write(conn: u64, seq: u64, method: &str, target: &str) -> Exchange {
    let mut x = http_get(conn, seq, target, 200, r#"{"ok":true}"#);
    let Request::Http(HttpRequest {
        method: m, body, ..
    }) = &mut x.request
    else {
        unreachable!()
    };
    method.clone_into(m);
    *body = Body {
        raw: r#"{"qty":1}"#.into(),
        decoded: None,
        len: 9,
        truncated: false,
    };
    x
}

// Guards: --only-reads never sends a write. The service counts requests per connection, so
// a POST or DELETE sent between the recorded GETs would shift the later GETs' counters (and
// they would regress); with --only-reads the writes are counted as filtered and the GETs,
// renumbered as the target sees them, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reads_sends_no_writes() {
    let addr = start_service(1).await;
    let rec = vec![
        http_get(
            1,
            0,
            "/api/seq?i=0",
            200,
            r#"{"on_this_connection":0,"query":"i=0"}"#,
        ),
        write(1, 1, "POST", "/api/seq?w=1"),
        write(1, 2, "DELETE", "/api/seq?w=2"),
        // The recorded answers are the ones a server that never saw the writes gives.
        http_get(
            1,
            3,
            "/api/seq?i=1",
            200,
            r#"{"on_this_connection":1,"query":"i=1"}"#,
        ),
        write(1, 4, "PUT", "/api/seq?w=3"),
        http_get(
            1,
            5,
            "/api/seq?i=2",
            200,
            r#"{"on_this_connection":2,"query":"i=2"}"#,
        ),
    ];
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{addr}")]).unwrap();
    cfg.only_reads = true;
    let report = replay_async(ok_source(rec.clone()), cfg).await.unwrap();
    assert_eq!(report.totals.filtered, 3, "{}", report.summary());
    assert_eq!(report.totals.counts.pass, 3, "{}", report.summary());
    assert_eq!(report.outcome(), Outcome::Clean);
    assert!(report.interfaces.iter().all(|i| i.name == "GET /api/seq"));

    // Control: without --only-reads the writes are sent, and the counters show it.
    let cfg = ReplayConfig::with_targets(&[format!("http://{addr}")]).unwrap();
    let report = replay_async(ok_source(rec), cfg).await.unwrap();
    assert_eq!(report.totals.filtered, 0);
    let get = report
        .interfaces
        .iter()
        .find(|i| i.name == "GET /api/seq")
        .unwrap();
    let regressed: Vec<u64> = get
        .exchanges
        .iter()
        .filter(|x| x.verdict == Verdict::Regression)
        .map(|x| x.seq)
        .collect();
    assert_eq!(regressed, vec![3, 5], "{}", report.summary());
}
