//! Bundles: round trips (store → bundle → store → bundle byte-identical), HAR 1.2 checked
//! against a strict model of the spec, and bad input refused with the line number while the
//! store stays unchanged.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use deetune_store::{
    BundleError, BundleHeader, BundleReader, BundleWriter, Store, StoreError, TaskState,
};

fn dump(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for t in store.tasks().unwrap() {
        out.push(serde_json::to_string(&t).unwrap());
        for item in store.exchanges(&t.id) {
            let (id, x) = item.unwrap();
            out.push(format!("{id} {}", serde_json::to_string(&x).unwrap()));
        }
    }
    out
}

fn seeded(dir: &Path) -> Store {
    let store = Store::open(dir).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1000))
        .unwrap();
    store.append("t-1", &common::mixed(50)).unwrap();
    store
}

#[test]
fn store_bundle_store_bundle_is_byte_identical() {
    for name in ["a.jsonl", "a.jsonl.zst"] {
        let tmp = tempfile::tempdir().unwrap();
        let store = seeded(&tmp.path().join("s1"));
        let first = tmp.path().join(name);
        assert_eq!(store.export_bundle("t-1", &first).unwrap(), 51);
        drop(store);

        let store2 = Store::open(tmp.path().join("s2")).unwrap();
        let imported = store2.import_bundle(&first).unwrap();
        assert_eq!(imported.exchanges, 51);
        let task = store2.task(&imported.task_id).unwrap().unwrap();
        assert_eq!(task.state, TaskState::Imported);
        let second = tmp.path().join(format!("b-{name}"));
        store2.export_bundle(&imported.task_id, &second).unwrap();

        let (a, b) = (
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
        );
        assert!(a == b, "{name}: re-export differs");

        // The exchanges themselves survive unchanged.
        let orig: Vec<_> = common::mixed(50);
        let back: Vec<_> = store2
            .exchanges(&imported.task_id)
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(orig, back);
    }
}

#[test]
fn writer_and_reader_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.jsonl");
    let header = BundleHeader::new(common::task("t-9", TaskState::Stopped, 5));
    let mut w = BundleWriter::create(&path, &header).unwrap();
    for x in common::mixed(10) {
        w.write(&x).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 11);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 13);
    assert!(text.lines().last().unwrap() == r#"{"end":{"exchanges":11}}"#);
    let r = BundleReader::open(&path).unwrap();
    assert_eq!(r.header(), &header);
    let got: Vec<_> = r.map(Result::unwrap).collect();
    assert_eq!(got, common::mixed(10));
}

#[test]
fn unfinished_writer_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.jsonl.zst");
    let header = BundleHeader::new(common::task("t-9", TaskState::Stopped, 5));
    let mut w = BundleWriter::create(&path, &header).unwrap();
    w.write(&common::http(1)).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// Reads every exchange; returns the first error.
fn read_all(path: &Path) -> Result<u64, BundleError> {
    let mut n = 0;
    for x in BundleReader::open(path)? {
        x?;
        n += 1;
    }
    Ok(n)
}

struct Bad {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    good: Vec<u8>,
    good_zst: Vec<u8>,
}

fn bad_inputs() -> Bad {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = seeded(&dir.join("src"));
    store.export_bundle("t-1", &dir.join("good.jsonl")).unwrap();
    store
        .export_bundle("t-1", &dir.join("good.jsonl.zst"))
        .unwrap();
    Bad {
        good: std::fs::read(dir.join("good.jsonl")).unwrap(),
        good_zst: std::fs::read(dir.join("good.jsonl.zst")).unwrap(),
        _tmp: tmp,
        dir,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// Every bad input: (file, expected line, check of the variant).
/// A bad file, the line its error must name, and a check of the error variant.
type Case = (PathBuf, Option<u64>, fn(&BundleError) -> bool);

fn cases(b: &Bad) -> Vec<Case> {
    let lines: Vec<&[u8]> = b.good.split(|&c| c == b'\n').collect();
    let first_n = |n: usize| {
        let mut v = lines[..n].join(&b'\n');
        v.push(b'\n');
        v
    };
    // Cut at a line boundary: 10 lines kept (header + 9 exchanges).
    let cut_at_line = first_n(10);
    // Cut inside line 8.
    let mut cut_mid = first_n(7);
    cut_mid.extend_from_slice(&lines[7][..lines[7].len() / 2]);
    // Garbage in line 5.
    let mut garbage = lines.clone();
    garbage[4] = b"this is not json";
    let garbage = garbage.join(&b'\n');
    // A valid JSON line that is not an exchange at line 6.
    let mut not_exchange = lines.clone();
    not_exchange[5] = br#"{"conn":{"id":"x"}}"#;
    let not_exchange = not_exchange.join(&b'\n');
    // Wrong version.
    let header = String::from_utf8(lines[0].to_vec()).unwrap();
    let newer = b.good.clone();
    let newer = String::from_utf8(newer)
        .unwrap()
        .replacen(r#""version":1"#, r#""version":99"#, 1);
    assert!(header.contains(r#""version":1"#));
    let older =
        String::from_utf8(b.good.clone())
            .unwrap()
            .replacen(r#""version":1"#, r#""version":0"#, 1);
    // Truncated and corrupted zstd.
    let zst_cut = &b.good_zst[..b.good_zst.len() * 2 / 3];
    let mut zst_bad = b.good_zst.clone();
    let mid = zst_bad.len() / 2;
    for byte in &mut zst_bad[mid..mid + 16] {
        *byte ^= 0x5a;
    }
    // Data after the end record, count mismatch.
    let mut trailing = b.good.clone();
    trailing.extend_from_slice(b"{}\n");
    let mismatch = String::from_utf8(b.good.clone())
        .unwrap()
        .replace(r#"{"end":{"exchanges":51}}"#, r#"{"end":{"exchanges":50}}"#);
    let d = &b.dir;
    vec![
        (write(d, "cut.jsonl", &cut_at_line), Some(11), |e| {
            matches!(e, BundleError::Truncated { .. })
        }),
        (write(d, "cutmid.jsonl", &cut_mid), Some(8), |e| {
            matches!(e, BundleError::BadRecord { .. })
        }),
        (write(d, "garbage.jsonl", &garbage), Some(5), |e| {
            matches!(e, BundleError::BadRecord { .. })
        }),
        (write(d, "notx.jsonl", &not_exchange), Some(6), |e| {
            matches!(e, BundleError::BadRecord { .. })
        }),
        (write(d, "newer.jsonl", newer.as_bytes()), Some(1), |e| {
            matches!(e, BundleError::NewerVersion { found: 99, .. })
        }),
        (write(d, "older.jsonl", older.as_bytes()), Some(1), |e| {
            matches!(e, BundleError::OlderVersion { found: 0, .. })
        }),
        (
            write(d, "text.jsonl", b"hello world\nsecond\n"),
            Some(1),
            |e| matches!(e, BundleError::NotABundle { .. }),
        ),
        (
            write(d, "other.jsonl", b"{\"format\":\"har\"}\n"),
            Some(1),
            |e| matches!(e, BundleError::NotABundle { .. }),
        ),
        (write(d, "empty.jsonl", b""), None, |e| {
            matches!(e, BundleError::Empty { .. })
        }),
        (write(d, "cut.jsonl.zst", zst_cut), None, |e| {
            matches!(e, BundleError::Compression { .. })
        }),
        (write(d, "bad.jsonl.zst", &zst_bad), None, |e| {
            matches!(
                e,
                BundleError::Compression { .. } | BundleError::BadRecord { .. }
            )
        }),
        (write(d, "trailing.jsonl", &trailing), Some(54), |e| {
            matches!(e, BundleError::TrailingData { .. })
        }),
        (
            write(d, "mismatch.jsonl", mismatch.as_bytes()),
            Some(53),
            |e| {
                matches!(
                    e,
                    BundleError::CountMismatch {
                        declared: 50,
                        found: 51,
                        ..
                    }
                )
            },
        ),
    ]
}

#[test]
fn bad_bundles_are_refused_with_the_line() {
    let b = bad_inputs();
    assert_eq!(read_all(&b.dir.join("good.jsonl")).unwrap(), 51);
    assert_eq!(read_all(&b.dir.join("good.jsonl.zst")).unwrap(), 51);
    for (path, line, check) in cases(&b) {
        let err = read_all(&path).expect_err(&path.display().to_string());
        assert!(check(&err), "{}: unexpected {err:?}", path.display());
        if let Some(line) = line {
            assert_eq!(err.line(), Some(line), "{}: {err}", path.display());
            assert!(
                err.to_string().contains(&format!("line {line}")),
                "{}: {err}",
                path.display()
            );
        } else if !matches!(err, BundleError::Empty { .. }) {
            assert!(err.line().is_some(), "{}: {err}", path.display());
        }
    }
}

#[test]
fn failed_imports_leave_the_store_unchanged() {
    let b = bad_inputs();
    let store = seeded(&b.dir.join("target"));
    let before = dump(&store);
    for (path, _, _) in cases(&b) {
        let err = store.import_bundle(&path).expect_err("bad bundle imported");
        assert!(
            matches!(err, StoreError::Import { .. }),
            "{}: {err:?}",
            path.display()
        );
        assert_eq!(dump(&store), before, "{}", path.display());
    }
    // Still unchanged after a reopen (nothing half-written reappears).
    let dir = store.dir().to_path_buf();
    drop(store);
    let store = Store::open(&dir).unwrap();
    assert_eq!(dump(&store), before);
    // And a good import still works afterwards.
    let ok = store.import_bundle(&b.dir.join("good.jsonl.zst")).unwrap();
    assert_eq!(ok.exchanges, 51);
}

#[test]
fn garbage_never_panics() {
    // Every prefix of a small bundle and a few bit flips: errors, never panics.
    let b = bad_inputs();
    for bytes in [&b.good[..2000], &b.good_zst[..]] {
        for cut in (0..bytes.len()).step_by(37) {
            let p = write(&b.dir, "g.jsonl", &bytes[..cut]);
            let _ = read_all(&p);
            let mut flipped = bytes.to_vec();
            flipped[cut] ^= 0xff;
            let p = write(&b.dir, "f.jsonl", &flipped);
            let _ = read_all(&p);
        }
    }
}

#[test]
fn unknown_task_export_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    let err = store
        .export_bundle("t-nope", &tmp.path().join("x.jsonl"))
        .unwrap_err();
    assert!(
        matches!(err, BundleError::Store(ref s) if matches!(**s, StoreError::NoTask { .. })),
        "{err:?}"
    );
    assert!(!tmp.path().join("x.jsonl").exists());
}

/// Import validates blocks of lines on two threads: the error must still be the first bad
/// line in file order, also when a later block is cut or also bad.
#[test]
fn import_names_the_first_bad_line_across_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1))
        .unwrap();
    store.append("t-1", &common::mixed(1200)).unwrap();
    let good = tmp.path().join("big.jsonl");
    store.export_bundle("t-1", &good).unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let with = |bad: &[usize], keep: usize| {
        let mut v: Vec<&str> = lines[..keep].to_vec();
        for &b in bad {
            v[b - 1] = "{broken";
        }
        let mut s = v.join("\n");
        s.push('\n');
        s
    };
    let n = lines.len();
    let cases: [(&[usize], usize, u64); 5] = [
        (&[300, 700], n, 300),
        (&[700], n, 700),
        (&[1100], n, 1100),
        (&[100], 900, 100),
        (&[], 900, 901),
    ];
    let before = dump(&store);
    for (bad, keep, want) in cases {
        let p = write(tmp.path(), "bad.jsonl", with(bad, keep).as_bytes());
        let err = store.import_bundle(&p).unwrap_err();
        let StoreError::Import { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.line(), Some(want), "{bad:?}/{keep}: {source}");
        // The streaming reader agrees.
        assert_eq!(read_all(&p).unwrap_err().line(), Some(want));
        assert_eq!(dump(&store), before);
    }
    let ok = store.import_bundle(&good).unwrap();
    assert_eq!(ok.exchanges, 1201);
    let again = tmp.path().join("again.jsonl");
    store.export_bundle(&ok.task_id, &again).unwrap();
    assert!(std::fs::read(&good).unwrap() == std::fs::read(&again).unwrap());
}

/// A bundle written by hand (other key order, spaces) comes back byte for byte: import keeps
/// the header and exchange lines as read.
#[test]
fn hand_written_bundle_reexports_identically() {
    let b = bad_inputs();
    let text = String::from_utf8(b.good.clone()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for i in [0, 1, 2] {
        // serde_json::Value sorts keys: a different, still valid, spelling of the line.
        let v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
        lines[i] = serde_json::to_string(&v).unwrap().replace(",\"", ", \"");
        assert_ne!(lines[i], text.lines().nth(i).unwrap());
    }
    let hand = write(&b.dir, "hand.jsonl", (lines.join("\n") + "\n").as_bytes());
    let store = Store::open(b.dir.join("h")).unwrap();
    let t = store.import_bundle(&hand).unwrap();
    let out = b.dir.join("hand-again.jsonl");
    store.export_bundle(&t.task_id, &out).unwrap();
    assert!(std::fs::read(&hand).unwrap() == std::fs::read(&out).unwrap());
    assert_eq!(store.origin(&t.task_id).unwrap().unwrap().version, 1);
    // The kept (non-canonical) lines and the binary ones read back alike, also one by one.
    let all: Vec<_> = store.exchanges(&t.task_id).map(Result::unwrap).collect();
    assert_eq!(all.len() as u64, t.exchanges);
    for (id, x) in &all {
        assert!(store.exchange(*id).unwrap() == (t.task_id.clone(), x.clone()));
    }
}
