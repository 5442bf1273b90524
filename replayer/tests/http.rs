//! Replays against an in-process hyper service (v1 and a regressed v2) on free ports.

mod support;

use deetune_replayer::{replay_async, Outcome, ReplayConfig, ReplayError, Verdict};
use support::*;

fn verdicts(report: &deetune_replayer::Report) -> Vec<(String, u64, u64, Verdict)> {
    report
        .interfaces
        .iter()
        .flat_map(|i| {
            i.exchanges
                .iter()
                .map(move |x| (i.name.clone(), x.conn, x.seq, x.verdict))
        })
        .collect()
}

// Guards: the same version replays clean, with the session order kept (conn 2's server-side
// counter must match the recorded sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_version_replays_clean_and_in_order() {
    let v1 = start_service(1).await;
    let cfg = ReplayConfig::with_targets(&[format!("shop=http://{v1}")]).unwrap();
    let report = replay_async(ok_source(shop_recording()), cfg)
        .await
        .unwrap();
    let bad: Vec<_> = verdicts(&report)
        .into_iter()
        .filter(|v| v.3 != Verdict::Pass)
        .collect();
    assert!(bad.is_empty(), "{bad:?}\n{}", report.summary());
    assert_eq!(report.totals.counts.pass, 14);
    assert_eq!(report.outcome(), Outcome::Clean);
}

// Guards: exactly the exchanges of the changed endpoint are regressions, at the changed path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_regressions_are_exactly_the_changed_field() {
    let v2 = start_service(2).await;
    let cfg = ReplayConfig::with_targets(&[format!("http://{v2}")]).unwrap();
    let report = replay_async(ok_source(shop_recording()), cfg)
        .await
        .unwrap();
    let regressions: Vec<_> = verdicts(&report)
        .into_iter()
        .filter(|v| v.3 != Verdict::Pass)
        .collect();
    assert_eq!(
        regressions,
        vec![
            ("GET /api/price".to_owned(), 1, 1, Verdict::Regression),
            ("GET /api/price".to_owned(), 1, 2, Verdict::Regression)
        ]
    );
    let price = report
        .interfaces
        .iter()
        .find(|i| i.name == "GET /api/price")
        .unwrap();
    for x in &price.exchanges {
        let f = x.finding.as_ref().unwrap();
        assert_eq!(f.diffs.len(), 1);
        assert_eq!(f.diffs[0].path, "body:$.price");
        assert_eq!(f.diffs[0].expected.as_deref(), Some("4.5"));
        assert_eq!(f.diffs[0].actual.as_deref(), Some("4.75"));
    }
    assert_eq!(report.outcome(), Outcome::Regressions);
}

// Guards: timestamps and random ids are learned as noise from the baseline; the learned rules
// name exactly those fields; a real change next to noise is still a regression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_endpoint_is_noise_with_a_baseline() {
    let base = start_service(1).await;
    let cand = start_service(2).await;
    let mut rec = Vec::new();
    for i in 0..5 {
        rec.push(http_get(
            10,
            i,
            "/api/noisy",
            200,
            r#"{"request_id":"0000000000000001","generated_at":1,"name":"stable"}"#,
        ));
    }
    rec.push(http_get(
        11,
        0,
        "/api/price?x",
        200,
        r#"{"sku":"x","price":4.5,"currency":"EUR"}"#,
    ));
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{cand}")]).unwrap();
    cfg.baselines = vec![deetune_replayer::Target::parse(&format!("http://{base}")).unwrap()];
    let report = replay_async(ok_source(rec.clone()), cfg).await.unwrap();
    let noisy = report
        .interfaces
        .iter()
        .find(|i| i.name == "GET /api/noisy")
        .unwrap();
    assert_eq!(noisy.counts.noise_only, 5, "{}", report.summary());
    let price = report
        .interfaces
        .iter()
        .find(|i| i.name == "GET /api/price")
        .unwrap();
    assert_eq!(price.counts.regression, 1);
    let learned = &report.learned_noise.interface["GET /api/noisy"].ignore;
    assert_eq!(learned, &["body:$.generated_at", "body:$.request_id"]);

    // Without a baseline the same noisy endpoint is a regression…
    let cfg = ReplayConfig::with_targets(&[format!("http://{cand}")]).unwrap();
    let report2 = replay_async(ok_source(rec.clone()), cfg).await.unwrap();
    assert_eq!(
        report2
            .interfaces
            .iter()
            .find(|i| i.name == "GET /api/noisy")
            .unwrap()
            .counts
            .regression,
        5
    );
    // …and the learned rules file silences it.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("noise.toml");
    report.write_noise(&rules).unwrap();
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{cand}")]).unwrap();
    cfg.rules = deetune_replayer::RulesFile::load(&rules).unwrap();
    let report3 = replay_async(ok_source(rec), cfg).await.unwrap();
    let noisy3 = report3
        .interfaces
        .iter()
        .find(|i| i.name == "GET /api/noisy")
        .unwrap();
    assert_eq!(noisy3.counts.noise_only, 5);
}

// Guards: a refused connection is an error verdict from the target, and a replay where nothing
// was answered could not run (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_an_error_and_could_not_run() {
    let port = dead_port();
    let cfg = ReplayConfig::with_targets(&[format!("http://127.0.0.1:{port}")]).unwrap();
    let report = replay_async(ok_source(shop_recording()), cfg)
        .await
        .unwrap();
    assert_eq!(report.totals.counts.error, 14);
    let x = &report.interfaces[0].exchanges[0];
    assert_eq!(
        x.finding.as_ref().unwrap().error.as_ref().unwrap().origin,
        deetune_replayer::Origin::Target
    );
    assert_eq!(report.outcome(), Outcome::CouldNotRun);
}

// Guards: the recorded production address is refused unless allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_target_is_refused() {
    let v1 = start_service(1).await;
    let mut rec = shop_recording();
    for x in &mut rec {
        std::sync::Arc::make_mut(&mut x.conn).server.addr = v1.ip();
        std::sync::Arc::make_mut(&mut x.conn).server.port = v1.port();
    }
    let cfg = ReplayConfig::with_targets(&[format!("http://{v1}")]).unwrap();
    let err = replay_async(ok_source(rec.clone()), cfg).await.unwrap_err();
    assert!(matches!(err, ReplayError::ProductionTarget { .. }), "{err}");
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{v1}")]).unwrap();
    cfg.allow_production_target = true;
    assert_eq!(
        replay_async(ok_source(rec), cfg).await.unwrap().outcome(),
        Outcome::Clean
    );
}

// Guards: bad records are counted, not fatal; filters leave exchanges out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_and_filters() {
    let v1 = start_service(1).await;
    let mut src: Vec<Result<deetune_protocols::Exchange, String>> =
        shop_recording().into_iter().map(Ok).collect();
    src.push(Err("line 7: expected value".to_owned()));
    let mut cfg = ReplayConfig::with_targets(&[format!("http://{v1}")]).unwrap();
    cfg.interfaces = vec!["GET /api/items".into()];
    let report = replay_async(src, cfg).await.unwrap();
    assert_eq!(report.totals.input_errors, 1);
    assert_eq!(report.totals.filtered, 12);
    assert_eq!(report.totals.counts.pass, 2);
}

// Guards: a HEAD response (Content-Length, no body) is framed as such, so the next exchange
// on the same connection still gets its own response. The response decoder is shown a bare
// request line with the recorded method instead of the request sent (`Wire::round_trip_as`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_then_get_on_one_connection() {
    let v1 = start_service(1).await;
    let mut head = http_get(7, 0, "/api/items", 200, "");
    if let deetune_protocols::Request::Http(r) = &mut head.request {
        r.method = "HEAD".into();
    }
    let get = http_get(
        7,
        1,
        "/api/items",
        200,
        r#"{"items":[{"id":1,"name":"tea"},{"id":2,"name":"cake"}]}"#,
    );
    let mut cfg = ReplayConfig::with_targets(&[format!("shop=http://{v1}")]).unwrap();
    cfg.timeout = std::time::Duration::from_secs(2);
    let report = replay_async(ok_source(vec![head, get]), cfg).await.unwrap();
    assert_eq!(report.totals.counts.pass, 2, "{}", report.summary());
    let names: Vec<&str> = report.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["GET /api/items", "HEAD /api/items"]);
}
