//! Bad input through the real binary: every case exits 2 with one readable `error:` message
//! on stderr and no panic, and leaves the store usable. Guards the "clear error, never a
//! panic" promise of the CLI (unknown task id, malformed policies, bad files, wrong flags).

use std::path::Path;
use std::process::{Command, Output};

fn deetune(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deetune"))
        .arg("--data-dir")
        .arg(data_dir)
        // No daemon: commands open the store in `data_dir` themselves.
        .env("DEETUNE_SOCKET", data_dir.join("no-daemon.sock"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run deetune")
}

fn assert_clear_error(data_dir: &Path, args: &[&str]) {
    let out = deetune(data_dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "deetune {args:?}: {stderr}");
    assert!(stderr.contains("error"), "deetune {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "deetune {args:?}: {stderr}");
}

#[test]
fn malformed_policies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["task", "start", "--from", "web[", "--to", "shop"][..],
        &["task", "start", "--count", "-3"],
        &["task", "start", "--count", "0"],
        &["task", "start", "--protocol", "smtp"],
        &["task", "start", "--duration", "10parsecs"],
        &["task", "start", "--sample", "1.5"],
        &["record", "--count", "0", "-o", "x.jsonl"],
    ] {
        assert_clear_error(dir.path(), args);
    }
}

#[test]
fn unknown_ids_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, b"\x00\xffnot json at all\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    for args in [
        &["task", "show", "t-nope"][..],
        &["export", "--task", "t-nope", "-o", "out.jsonl"],
        &["exchanges", "show", "999999"],
        &["import", garbage],
        &["import", "/nonexistent/bundle.jsonl"],
        &["replay", garbage, "--target", "http://127.0.0.1:9"],
        &[
            "replay",
            "/nonexistent.jsonl",
            "--target",
            "http://127.0.0.1:9",
        ],
        &["replay", garbage, "--target", "ftp://example"],
    ] {
        assert_clear_error(dir.path(), args);
    }
    // The store is still usable after all that.
    let out = deetune(dir.path(), &["task", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrong_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["capture", "--bogus"][..],
        &["capture", "--ring-buffer", "2GiB"],
        &["capture", "--ring-buffer", "lots"],
        &["replay"],
        &["no-such-command"],
        &["topology", "--format", "svg"],
    ] {
        assert_clear_error(dir.path(), args);
    }
}
