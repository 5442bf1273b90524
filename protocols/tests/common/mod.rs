//! Shared fixture harness for the decoder tests (`mod common;` in a test file).
//!
//! Fixtures live in `fixtures/streams/<proto>/<name>.jsonl`, one JSON object a line, as
//! `fixtures/streams/tap.py` writes them:
//!
//! ```text
//! {"dir": "request",  "data": "GET / HTTP/1.1\r\n..."}     // bytes as UTF-8 text
//! {"dir": "response", "data": {"base64": "..."}}          // or base64 (a `Payload`)
//! {"dir": "response", "gap": 1234}                         // bytes the capture lost
//! ```
//!
//! Typical use, one test per fixture:
//!
//! ```ignore
//! mod common;
//! #[test]
//! fn redis_pipeline() {
//!     let path = common::fixture("redis", "pipeline");
//!     let exchanges = common::assert_split_invariant(Protocol::Redis, &path);
//!     insta::assert_yaml_snapshot!(exchanges);
//! }
//! ```
//!
//! [`assert_split_invariant`] decodes the fixture as recorded, in 1-byte chunks and in every
//! two-way split, asserts identical exchanges and returns them (for a snapshot).
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the harness"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deetune_protocols::{new_decoder, DecoderConfig, Direction, Exchange, Payload, Protocol};
use serde::Deserialize;

/// One line of a fixture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Bytes seen in one direction.
    Data {
        /// Which way they went.
        dir: Direction,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `len` bytes of one direction the capture lost.
    Gap {
        /// Which way they went.
        dir: Direction,
        /// How many.
        len: u64,
    },
}

impl Record {
    /// Bytes of data in this record (0 for a gap).
    pub fn data_len(&self) -> usize {
        match self {
            Self::Data { data, .. } => data.len(),
            Self::Gap { .. } => 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    dir: Direction,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    gap: Option<u64>,
}

/// How [`decode`] feeds the records to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// One `push` per record.
    AsRecorded,
    /// Every byte in its own `push`.
    Bytewise,
    /// As recorded, except that the record holding global data offset `k` (offsets count
    /// data bytes of all records in file order; gaps count 0) is pushed in two pieces,
    /// `[start, k)` and `[k, end)`.
    SplitAt(usize),
}

/// `fixtures/streams/<proto>/<name>.jsonl` in the repository.
pub fn fixture(proto: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/streams")
        .join(proto)
        .join(format!("{name}.jsonl"))
}

/// Every `*.jsonl` fixture of a protocol, sorted.
pub fn fixtures(proto: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/streams")
        .join(proto);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// Read a fixture file. Panics with the file and line on a malformed line.
pub fn load(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
        out.push(match (l.data, l.gap) {
            (Some(d), None) => Record::Data {
                dir: l.dir,
                data: d.0,
            },
            (None, Some(len)) => Record::Gap { dir: l.dir, len },
            _ => panic!(
                "{}:{}: a record has exactly one of `data` and `gap`",
                path.display(),
                i + 1
            ),
        });
    }
    out
}

/// Decode `records` with the default [`DecoderConfig`]; see [`decode_with`].
pub fn decode(protocol: Protocol, records: &[Record], chunking: Chunking) -> Vec<Exchange> {
    decode_with(protocol, DecoderConfig::default(), records, chunking)
}

/// Feed `records` to a fresh `new_decoder(protocol, config)`: record `i` gets the timestamp
/// `i * 1000` ns for all of its bytes, gaps go to `gap`; exchanges are drained after every
/// call (so a decoder that only works when drained at the end fails); then `close` at
/// `records.len() * 1000` and a last `drain`.
pub fn decode_with(
    protocol: Protocol,
    config: DecoderConfig,
    records: &[Record],
    chunking: Chunking,
) -> Vec<Exchange> {
    let mut dec = new_decoder(protocol, config).expect("a decoder for this protocol");
    let mut out = Vec::new();
    let mut offset = 0usize;
    for (i, r) in records.iter().enumerate() {
        let ts = i as u64 * 1000;
        match r {
            Record::Gap { dir, len } => dec.gap(*dir, ts, *len),
            Record::Data { dir, data } => match chunking {
                Chunking::AsRecorded => dec.push(*dir, ts, data),
                Chunking::Bytewise => {
                    for b in data.chunks(1) {
                        dec.push(*dir, ts, b);
                        dec.drain(&mut out);
                    }
                }
                Chunking::SplitAt(k) => {
                    if k > offset && k < offset + data.len() {
                        let (a, b) = data.split_at(k - offset);
                        dec.push(*dir, ts, a);
                        dec.drain(&mut out);
                        dec.push(*dir, ts, b);
                    } else {
                        dec.push(*dir, ts, data);
                    }
                }
            },
        }
        offset += r.data_len();
        dec.drain(&mut out);
    }
    dec.close(records.len() as u64 * 1000);
    dec.drain(&mut out);
    out
}

/// The split offsets [`assert_split_invariant`] tries: every offset when the fixture has at
/// most 64 KiB of data, otherwise about 2,000 evenly spaced ones plus every record boundary
/// ±2.
pub fn split_offsets(records: &[Record]) -> Vec<usize> {
    let total: usize = records.iter().map(Record::data_len).sum();
    if total <= 64 << 10 {
        return (1..total).collect();
    }
    let mut set = BTreeSet::new();
    let step = (total / 2000).max(1);
    set.extend((1..total).step_by(step));
    let mut off = 0usize;
    for r in records {
        off += r.data_len();
        for d in 0..=4 {
            let k = (off + d).saturating_sub(2);
            if k > 0 && k < total {
                set.insert(k);
            }
        }
    }
    set.into_iter().collect()
}

/// Decode the fixture at `path` as recorded, in 1-byte chunks and at every two-way split
/// ([`split_offsets`]); assert all give the same exchanges and return them (for
/// `insta::assert_yaml_snapshot!`).
pub fn assert_split_invariant(protocol: Protocol, path: &Path) -> Vec<Exchange> {
    assert_split_invariant_with(protocol, DecoderConfig::default(), path)
}

/// [`assert_split_invariant`] with a non-default configuration (small caps, …).
pub fn assert_split_invariant_with(
    protocol: Protocol,
    config: DecoderConfig,
    path: &Path,
) -> Vec<Exchange> {
    let records = load(path);
    let name = path.display();
    let expected = decode_with(protocol, config, &records, Chunking::AsRecorded);
    let bytewise = decode_with(protocol, config, &records, Chunking::Bytewise);
    assert_same(&expected, &bytewise, &format!("{name}: 1-byte chunks"));
    for k in split_offsets(&records) {
        let got = decode_with(protocol, config, &records, Chunking::SplitAt(k));
        assert_same(&expected, &got, &format!("{name}: split at byte {k}"));
    }
    expected
}

fn assert_same(expected: &[Exchange], got: &[Exchange], what: &str) {
    if expected != got {
        let e = serde_json::to_string_pretty(expected).unwrap_or_default();
        let g = serde_json::to_string_pretty(got).unwrap_or_default();
        panic!(
            "{what}: exchanges differ from the as-recorded decode \
             ({} vs {} exchanges)\n--- as recorded\n{e}\n--- this split\n{g}",
            expected.len(),
            got.len()
        );
    }
}
