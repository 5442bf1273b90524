//! https targets with a self-signed staging certificate: refused by default, accepted with
//! `ca_certs` (the staging CA) or `insecure`. The certificates are made by the `openssl`
//! command for each run; the server is the in-process hyper service over rustls.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use deetune_replayer::{replay_async, Origin, Outcome, ReplayConfig, ReplayError, Verdict};
use support::*;

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it, in `dir`:
/// `ca.pem`, `server.pem` (the server's chain), `server.key`. None when `openssl` cannot run.
fn make_certs(dir: &Path) -> Option<()> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=deetune test CA",
            "-days",
            "2",
        ],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])
}

fn config(port: u16) -> ReplayConfig {
    ReplayConfig::with_targets(&[format!("shop=https://127.0.0.1:{port}")]).unwrap()
}

// Guards: a self-signed staging target fails certificate verification by default (an error
// verdict from the target, exit 2), and replays clean with its CA given (`--ca-cert`) or with
// verification off (`--insecure`); a CA file without certificates stops the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_target_needs_ca_cert_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    if make_certs(dir.path()).is_none() {
        deetune_fixtures::skip("the openssl command could not make test certificates");
        return;
    }
    let addr = start_tls_service(
        1,
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
    )
    .await;
    let port = addr.port();

    let report = replay_async(ok_source(shop_recording()), config(port))
        .await
        .unwrap();
    assert_eq!(report.totals.counts.error, 14, "{}", report.summary());
    let first = &report.interfaces[0].exchanges[0];
    let error = first.finding.as_ref().unwrap().error.as_ref().unwrap();
    assert_eq!(error.origin, Origin::Target);
    assert_eq!(report.outcome(), Outcome::CouldNotRun);

    let with_ca = ReplayConfig {
        ca_certs: vec![dir.path().join("ca.pem")],
        ..config(port)
    };
    let report = replay_async(ok_source(shop_recording()), with_ca)
        .await
        .unwrap();
    assert_eq!(report.totals.counts.pass, 14, "{}", report.summary());
    assert_eq!(report.outcome(), Outcome::Clean);

    let insecure = ReplayConfig {
        insecure: true,
        ..config(port)
    };
    let report = replay_async(ok_source(shop_recording()), insecure)
        .await
        .unwrap();
    assert_eq!(report.totals.counts.pass, 14, "{}", report.summary());
    assert!(report
        .interfaces
        .iter()
        .all(|i| i.exchanges.iter().all(|x| x.verdict == Verdict::Pass)));

    let not_pem: PathBuf = dir.path().join("server.ext");
    let bad = ReplayConfig {
        ca_certs: vec![not_pem.clone()],
        ..config(port)
    };
    match replay_async(ok_source(shop_recording()), bad).await {
        Err(ReplayError::CaCert { path, .. }) => assert_eq!(path, not_pem),
        other => panic!("expected a CaCert error, got {other:?}"),
    }
}
