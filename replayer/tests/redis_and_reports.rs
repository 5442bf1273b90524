//! A real redis-server on a free port; JSON / JUnit snapshots; the HTML report in headless
//! Chromium.

mod support;

use deetune_fixtures::RedisServer;
use deetune_protocols::RespValue;
use deetune_replayer::{replay_async, Outcome, ReplayConfig, Verdict};
use support::*;

fn redis_recording() -> Vec<deetune_protocols::Exchange> {
    vec![
        redis(
            1,
            0,
            &["SET", "price:tea", "4.5"],
            RespValue::Simple("OK".into()),
        ),
        redis(1, 1, &["GET", "price:tea"], RespValue::Bulk("4.5".into())),
        redis(1, 2, &["MULTI"], RespValue::Simple("OK".into())),
        redis(
            1,
            3,
            &["INCR", "visits"],
            RespValue::Simple("QUEUED".into()),
        ),
        redis(
            1,
            4,
            &["EXEC"],
            RespValue::Array(vec![RespValue::Integer(1)]),
        ),
        redis(
            2,
            0,
            &["HGETALL", "cart:1"],
            RespValue::Array(vec![
                RespValue::Bulk("tea".into()),
                RespValue::Bulk("2".into()),
            ]),
        ),
    ]
}

// Guards: a real Redis replays clean when it holds the recorded data, and a changed value is
// found at its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_same_data_is_clean_and_a_changed_value_is_found() {
    if !RedisServer::is_installed() {
        deetune_fixtures::skip("redis-server is not installed (ci/setup installs it)");
        return;
    }
    let server = RedisServer::start().unwrap();
    server.command(&["HSET", "cart:1", "tea", "2"]).unwrap();
    let url = format!("redis://127.0.0.1:{}", server.port());
    let report = replay_async(
        ok_source(redis_recording()),
        ReplayConfig::with_targets(&[&url]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(report.totals.counts.pass, 6, "{}", report.summary());
    assert_eq!(report.outcome(), Outcome::Clean);

    server.command(&["HSET", "cart:1", "tea", "3"]).unwrap();
    server.command(&["DEL", "visits"]).unwrap();
    let report = replay_async(
        ok_source(redis_recording()),
        ReplayConfig::with_targets(&[&url]).unwrap(),
    )
    .await
    .unwrap();
    let hg = report
        .interfaces
        .iter()
        .find(|i| i.name == "HGETALL")
        .unwrap();
    assert_eq!(hg.exchanges[0].verdict, Verdict::Regression);
    assert_eq!(
        hg.exchanges[0].finding.as_ref().unwrap().diffs[0].path,
        "value:$[1]"
    );
    assert_eq!(report.totals.counts.regression, 1, "{}", report.summary());
}

/// Replaces the value of every `marker…"` with `with`.
fn replace_attr(text: &str, marker: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        rest = &rest[i + marker.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.push_str(with);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact(text: &str, ports: &[u16]) -> String {
    let mut s = text.to_owned();
    for p in ports {
        s = s.replace(&format!(":{p}"), ":[PORT]");
    }
    s
}

// Guards: the shape of the JSON and JUnit reports (times and ports replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_snapshots() {
    let v2 = start_service(2).await;
    let dead = dead_port();
    let mut rec = shop_recording();
    rec.truncate(3);
    let mut other = http_get(5, 0, "/api/items", 200, "{}");
    std::sync::Arc::make_mut(&mut other.conn).server.service = Some("search".into());
    rec.push(other);
    let cfg = ReplayConfig::with_targets(&[
        format!("shop=http://{v2}"),
        format!("search=http://127.0.0.1:{dead}"),
    ])
    .unwrap();
    let report = replay_async(ok_source(rec), cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("r.json");
    report.write_json(&json_path).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let json =
        serde_json::from_str::<serde_json::Value>(&redact(&json.to_string(), &[v2.port(), dead]))
            .unwrap();
    insta::assert_json_snapshot!("report_json", json, {
        ".started_unix_ms" => "[TIME]",
        ".duration_ms" => "[TIME]",
        ".interfaces[].exchanges[].latency_us" => "[TIME]",
        ".interfaces[].exchanges[].error.message" => "[MESSAGE]",
        // The candidate's whole response carries its Date header.
        ".interfaces[].exchanges[].actual" => "[RESPONSE WITH DATE]",
    });
    let mut xml = Vec::new();
    report.junit_to(&mut xml).unwrap();
    let xml = redact(&String::from_utf8(xml).unwrap(), &[v2.port(), dead]);
    let xml = replace_attr(
        &replace_attr(&xml, "time=\"", "[TIME]"),
        "<error message=\"",
        "[MESSAGE]",
    );
    insta::assert_snapshot!("report_junit", xml);
}

// Guards: the HTML report renders in a real browser and shows the diff rows in their colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_shows_the_diff_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|b| deetune_fixtures::find_binary(b))
    else {
        deetune_fixtures::skip("chromium is not installed (ci/setup installs it)");
        return;
    };
    let v2 = start_service(2).await;
    let mut rec = shop_recording();
    rec.truncate(3);
    let report = replay_async(
        ok_source(rec),
        ReplayConfig::with_targets(&[format!("http://{v2}")]).unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let png_path = dir.path().join("shot.png");
    report.write_html(&html).unwrap();
    let out = tokio::task::spawn_blocking({
        let (html, png_path, dir) = (html.clone(), png_path.clone(), dir.path().join("profile"));
        move || {
            std::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                ])
                .arg(format!("--user-data-dir={}", dir.display()))
                .arg(format!("--screenshot={}", png_path.display()))
                .arg("--window-size=1280,900")
                .arg(format!("file://{}", html.display()))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        png_path.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected colour type {other:?}"),
    };
    let (r, g, b) = deetune_replayer::DIFF_ROW_COLOUR;
    let hits = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p[0] == r && p[1] == g && p[2] == b)
        .count();
    assert!(
        hits > 500,
        "only {hits} pixels of the diff colour in the screenshot"
    );
}
