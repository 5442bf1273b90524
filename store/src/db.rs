//! The embedded store: tasks, their exchanges (in recorded order), topology edges and a
//! format-version record, in sled under a data directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use deetune_protocols::Exchange;
use serde::{Deserialize, Serialize};

use crate::bundle::now_ms;
use crate::codec::{self, VALUE_VERSION};
use crate::lock::LockFile;
use crate::{BundleHeader, StoreError, TaskId, TaskRecord, TaskState, TopologyEdge};

/// Store layout version, kept in the `meta` tree under `format`. Version 2 stores exchanges
/// in binary records (block version 2); version 1 stores (JSON-line blocks) are still read,
/// and opening one upgrades its record to 2, so an older deetune refuses it from then on
/// rather than failing on the first new block.
pub const STORE_FORMAT_VERSION: u32 = 2;

const KEY_FORMAT: &[u8] = b"format";
const PENDING_PREFIX: &[u8] = b"pending:";
const TAG_EXCHANGE: u8 = b'x';
const TAG_INDEX: u8 = b'i';
const TAG_USAGE: u8 = b'u';
/// Next exchange id, in the exchanges tree so it is written in the same batch as the blocks.
const NEXT_ID_KEY: &[u8] = b"next-id";
/// Exchanges per stored block (one sled value): appends and imports write blocks of at most
/// this many, so sled handles one value per block instead of one per exchange.
const BLOCK_MAX: usize = 256;
/// A block is also cut when its JSON reaches this size.
const BLOCK_BYTES: usize = 1 << 20;
/// Largest uncompressed block accepted when reading (a block holds at most one line past
/// `BLOCK_BYTES`, and a line is at most `MAX_LINE_BYTES`).
const BLOCK_DECODE_CAP: u64 = (BLOCK_BYTES + crate::MAX_LINE_BYTES) as u64 + 1;
/// zstd level of stored blocks: fast; JSON compresses several times anyway.
const BLOCK_ZSTD_LEVEL: i32 = 1;
const MAX_TASK_ID: usize = 200;
/// How long to wait for sled to release its file after a store of this process closed.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Removals are applied in batches of this size.
const DELETE_BATCH: usize = 10_000;

/// Store-wide unique exchange id: monotonic across appends and restarts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct ExchangeId(pub u64);

impl std::fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ExchangeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(Self)
    }
}

/// How to open a store. [`Default`] is what [`Store::open`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled writes everything to disk at least this often (ms); a crash loses at most this
    /// much. Default 500.
    pub flush_every_ms: u64,
    /// Page cache size in bytes. Default 64 MiB.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            flush_every_ms: 500,
            cache_bytes: 64 << 20,
        }
    }
}

/// How much a task holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskUsage {
    /// Exchanges stored.
    pub exchanges: u64,
    /// Bytes of stored (zstd-compressed) exchange blocks; keys and sled overhead not counted.
    pub bytes: u64,
}

/// Limits that [`Store::apply_retention`] enforces. Oldest tasks (by start time) go first;
/// a running task is never removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Keep the stored exchange bytes of all tasks at or under this.
    pub max_bytes: Option<u64>,
    /// Remove tasks that ended (or, if never ended, started) longer ago than this (ms).
    pub max_age_ms: Option<u64>,
}

/// Result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Id of the new task.
    pub task_id: TaskId,
    /// Exchanges imported.
    pub exchanges: u64,
}

/// The store. One per data directory at a time: a second opener gets
/// [`StoreError::Locked`]. Dropping it flushes.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    tasks: sled::Tree,
    exchanges: sled::Tree,
    origins: sled::Tree,
    topology: sled::Tree,
    /// Next exchange id; also guards the read-modify-write of task usage in appends.
    next_id: Mutex<u64>,
    // Last: released after sled is closed.
    _lock: LockFile,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The default data directory: `/var/lib/deetune` for root, otherwise
/// `$XDG_DATA_HOME/deetune` (or `~/.local/share/deetune`).
#[must_use]
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/deetune");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return p.join("deetune");
        }
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/deetune"),
        None => PathBuf::from(".deetune"),
    }
}

/// Version byte of a block of JSON lines (stores of format 1; still read).
const BLOCK_VERSION_JSON: u8 = 1;
/// Version byte of a block of records (binary exchanges, or JSON lines kept as imported):
/// what this build writes, and the newest block version it reads.
const BLOCK_VERSION: u8 = 2;
/// Record kinds in a version-2 block.
const RECORD_BINARY: u8 = b'b';
const RECORD_JSON: u8 = b'j';
/// Record header: kind byte, then the length (u32 little-endian).
const RECORD_HEADER: usize = 5;

/// Builds one stored block of records, each a kind byte, a u32 LE length and the bytes:
/// an exchange in the binary form of [`crate::binary`], or a JSON line kept as imported (a
/// line that re-rendering from the model would not reproduce byte for byte, so a re-export
/// gives the bundle back unchanged). Cut at [`BLOCK_MAX`] exchanges or [`BLOCK_BYTES`].
struct BlockBuilder {
    records: Vec<u8>,
    count: u64,
    conns: crate::binary::ConnCache,
}

thread_local! {
    /// One zstd compression context per thread, for every block it seals (creating one per
    /// block cost about 1 % of the daemon's CPU under `ci/bench-record`).
    static BLOCK_ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

impl BlockBuilder {
    fn new() -> Self {
        Self {
            records: Vec::with_capacity(64 * 1024),
            count: 0,
            conns: crate::binary::ConnCache::default(),
        }
    }

    /// Writes a record header for `kind` with a length to fill in; returns where it starts.
    fn open_record(&mut self, kind: u8) -> usize {
        let at = self.records.len();
        self.records.push(kind);
        self.records.extend_from_slice(&[0; 4]);
        at
    }

    fn close_record(&mut self, at: usize) -> Result<(), StoreError> {
        let len = self.records.len() - at - RECORD_HEADER;
        let Ok(len) = u32::try_from(len) else {
            self.records.truncate(at);
            return Err(StoreError::Corrupt {
                what: "exchange".to_owned(),
                detail: format!("{len} bytes encoded, more than a stored record holds"),
            });
        };
        self.records[at + 1..at + RECORD_HEADER].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Adds an exchange in the binary form (as JSON when it cannot be: nested too deep).
    fn push_exchange(&mut self, x: &Exchange) -> Result<(), StoreError> {
        let at = self.open_record(RECORD_BINARY);
        if crate::binary::encode_exchange_cached(x, &mut self.records, &mut self.conns).is_err() {
            self.records.truncate(at);
            let at = self.open_record(RECORD_JSON);
            if let Err(source) = serde_json::to_writer(&mut self.records, x) {
                self.records.truncate(at);
                return Err(StoreError::Encode {
                    what: "exchange",
                    source,
                });
            }
            return self.close_record(at);
        }
        self.close_record(at)
    }

    /// Adds an exchange kept as this JSON line.
    fn push_json(&mut self, line: &[u8]) -> Result<(), StoreError> {
        let at = self.open_record(RECORD_JSON);
        self.records.extend_from_slice(line);
        self.close_record(at)
    }

    fn is_full(&self) -> bool {
        self.count >= BLOCK_MAX as u64 || self.records.len() >= BLOCK_BYTES
    }

    /// The sled value: version byte, uncompressed length (u64 BE), zstd of the records.
    fn seal(&mut self) -> Result<(Vec<u8>, u64), StoreError> {
        let failed = |e: std::io::Error| StoreError::Corrupt {
            what: "exchange block".to_owned(),
            detail: format!("compression failed: {e}"),
        };
        let packed = BLOCK_ZSTD
            .with(|cell| {
                let mut cached = cell.borrow_mut();
                let z = match &mut *cached {
                    Some(z) => z,
                    slot => slot.insert(zstd::bulk::Compressor::new(BLOCK_ZSTD_LEVEL)?),
                };
                z.compress(&self.records)
            })
            .map_err(failed)?;
        let mut v = Vec::with_capacity(packed.len() + 9);
        v.push(BLOCK_VERSION);
        v.extend_from_slice(&(self.records.len() as u64).to_be_bytes());
        v.extend_from_slice(&packed);
        let count = self.count;
        self.records.clear();
        self.count = 0;
        Ok((v, count))
    }
}

/// One task's exchanges on their way into the store: each is encoded into the block being
/// built when it is pushed (so the caller can drop it at once, while it is still in the
/// cache), full blocks are compressed and held, and [`Store::commit`] writes them in one sled
/// batch. sled writes out its log buffer and waits for that write once per batch, so a
/// recorder pushes as exchanges come and commits far less often (the daemon: every 16,384
/// exchanges or 200 ms).
pub struct Appender {
    task_id: String,
    open: BlockBuilder,
    /// Compressed blocks and the exchanges in each.
    sealed: Vec<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("task_id", &self.task_id)
            .field("pending", &self.pending())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Appender {
    /// An empty appender for a task (the task record need not exist yet).
    ///
    /// # Errors
    /// Invalid task id.
    pub fn new(task_id: &str) -> Result<Self, StoreError> {
        check_task_id(task_id)?;
        Ok(Self {
            task_id: task_id.to_owned(),
            open: BlockBuilder::new(),
            sealed: Vec::new(),
        })
    }

    /// The task.
    #[must_use]
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Encodes an exchange into the block being built (sealing it when full).
    ///
    /// # Errors
    /// The exchange cannot be encoded, or its block cannot be compressed (the exchanges of
    /// that block are then lost; the appender stays usable).
    pub fn push(&mut self, x: &Exchange) -> Result<(), StoreError> {
        self.open.push_exchange(x)?;
        if self.open.is_full() {
            self.seal_open()?;
        }
        Ok(())
    }

    fn seal_open(&mut self) -> Result<(), StoreError> {
        if self.open.count == 0 {
            return Ok(());
        }
        match self.open.seal() {
            Ok(block) => {
                self.sealed.push(block);
                Ok(())
            }
            Err(e) => {
                self.open.records.clear();
                self.open.count = 0;
                Err(e)
            }
        }
    }

    /// Exchanges pushed since the last commit.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.sealed.iter().map(|(_, n)| n).sum::<u64>() + self.open.count
    }

    /// Memory the pending exchanges take: compressed blocks plus the open block's records.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.sealed.iter().map(|(b, _)| b.len()).sum::<usize>() + self.open.records.len()
    }
}

/// The uncompressed content of a stored block.
enum BlockBody {
    /// Version 1: exchange JSON lines joined by `\n`.
    Json(Vec<u8>),
    /// Version 2: records (see [`BlockBuilder`]).
    Records(Vec<u8>),
}

/// What an opened block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Version 1: JSON lines.
    Json,
    /// Version 2: records.
    Records,
}

/// Decompresses a stored block (a one-off; readers of many blocks use a [`BlockOpener`]).
fn open_block(value: &[u8]) -> Result<BlockBody, StoreError> {
    let mut opener = BlockOpener::new();
    let kind = opener.open(value)?;
    Ok(match kind {
        BlockKind::Json => BlockBody::Json(opener.buf),
        BlockKind::Records => BlockBody::Records(opener.buf),
    })
}

/// Decompresses stored blocks into one reused buffer with one reused zstd context (a
/// context and a fresh buffer per block cost more than decoding small exchanges).
struct BlockOpener {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    buf: Vec<u8>,
}

impl BlockOpener {
    fn new() -> Self {
        Self {
            zstd: zstd::bulk::Decompressor::new().ok(),
            buf: Vec::new(),
        }
    }

    /// Decompresses `value` into the buffer.
    fn open(&mut self, value: &[u8]) -> Result<BlockKind, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "exchange block".to_owned(),
            detail,
        };
        let (&version, body) = value
            .split_first()
            .ok_or_else(|| corrupt("empty value".to_owned()))?;
        let kind = match version {
            BLOCK_VERSION => BlockKind::Records,
            BLOCK_VERSION_JSON => BlockKind::Json,
            v if v > BLOCK_VERSION => {
                return Err(StoreError::NewerFormat {
                    what: "exchange block".to_owned(),
                    found: u32::from(version),
                    supported: u32::from(BLOCK_VERSION),
                })
            }
            v => return Err(corrupt(format!("unknown block version {v}"))),
        };
        let (len, packed) = body
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("shorter than its header".to_owned()))?;
        let len = u64::from_be_bytes(*len);
        if len > BLOCK_DECODE_CAP {
            return Err(corrupt(format!("claims {len} bytes")));
        }
        let len = usize::try_from(len).map_err(|e| corrupt(e.to_string()))?;
        self.buf.clear();
        let done = match &mut self.zstd {
            Some(zstd) => {
                // The buffer's capacity bounds the output: a block that decompresses to
                // more than its header says is an error, not a large allocation.
                self.buf.reserve_exact(len);
                zstd.decompress_to_buffer(packed, &mut self.buf).map(drop)
            }
            None => zstd::bulk::decompress(packed, len).map(|v| self.buf = v),
        };
        done.map_err(|e| corrupt(e.to_string()))?;
        if self.buf.len() != len {
            return Err(corrupt(format!(
                "{} bytes decompressed, the header says {len}",
                self.buf.len()
            )));
        }
        Ok(kind)
    }
}

/// Where reading an opened block has got to.
struct BlockCursor {
    kind: BlockKind,
    pos: usize,
    next_id: u64,
    done: bool,
}

impl BlockCursor {
    fn new(kind: BlockKind, first: u64) -> Self {
        Self {
            kind,
            pos: 0,
            next_id: first,
            done: false,
        }
    }

    /// The next exchange of the block `body`, or none at its end. A damaged record ends
    /// the block (its error is the last item).
    fn next(&mut self, body: &[u8]) -> Option<DecodedItem> {
        if self.done {
            return None;
        }
        let id = self.next_id;
        let rest = body.get(self.pos..).unwrap_or_default();
        match self.kind {
            BlockKind::Records => {
                if rest.is_empty() {
                    self.done = true;
                    return None;
                }
                let mut rs = records(rest);
                match rs.next()? {
                    Ok((kind, bytes)) => {
                        self.pos = body.len() - rs.rest.len();
                        self.next_id += 1;
                        Some(decode_record(kind, bytes, id).map(|x| (ExchangeId(id), x)))
                    }
                    Err(e) => {
                        self.done = true;
                        Some(Err(e))
                    }
                }
            }
            BlockKind::Json => {
                // Lines joined by `\n`: as many lines as newlines plus one.
                let line = match rest.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        self.pos += at + 1;
                        &rest[..at]
                    }
                    None => {
                        self.done = true;
                        rest
                    }
                };
                self.next_id += 1;
                Some(
                    codec::exchange_from_json_line(line)
                        .map(|x| (ExchangeId(id), x))
                        .map_err(|e| StoreError::Corrupt {
                            what: format!("exchange {id}"),
                            detail: e.to_string(),
                        }),
                )
            }
        }
    }
}

/// A task's exchanges decoded one at a time, on the caller's thread.
struct Decoded<I> {
    blocks: I,
    opener: BlockOpener,
    cursor: Option<BlockCursor>,
}

impl<I> Decoded<I> {
    fn new(blocks: I) -> Self {
        Self {
            blocks,
            opener: BlockOpener::new(),
            cursor: None,
        }
    }
}

impl<I: Iterator<Item = BlockItem>> Iterator for Decoded<I> {
    type Item = DecodedItem;

    fn next(&mut self) -> Option<DecodedItem> {
        loop {
            if let Some(cursor) = &mut self.cursor {
                if let Some(item) = cursor.next(&self.opener.buf) {
                    return Some(item);
                }
                self.cursor = None;
            }
            match self.blocks.next()? {
                Err(e) => return Some(Err(e)),
                Ok((first, value)) => match self.opener.open(&value) {
                    Ok(kind) => self.cursor = Some(BlockCursor::new(kind, first)),
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

/// The records of a version-2 block: (kind, bytes); an error ends it.
struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u8, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = self
            .rest
            .split_first_chunk::<RECORD_HEADER>()
            .and_then(|(head, rest)| {
                let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
                let len = usize::try_from(len).ok()?;
                (len <= rest.len()).then(|| (head[0], rest.split_at(len)))
            });
        match parsed {
            Some((kind, (record, rest))) => {
                self.rest = rest;
                Some(Ok((kind, record)))
            }
            None => {
                self.rest = &[];
                Some(Err(StoreError::Corrupt {
                    what: "exchange block".to_owned(),
                    detail: "a record runs past the end of the block".to_owned(),
                }))
            }
        }
    }
}

fn records(body: &[u8]) -> Records<'_> {
    Records { rest: body }
}

/// Decodes one record of a version-2 block.
fn decode_record(kind: u8, record: &[u8], id: u64) -> Result<Exchange, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: format!("exchange {id}"),
        detail,
    };
    match kind {
        RECORD_BINARY => crate::binary::decode_exchange(record).map_err(|e| corrupt(e.to_string())),
        RECORD_JSON => codec::exchange_from_json_line(record).map_err(|e| corrupt(e.to_string())),
        other => Err(corrupt(format!("unknown record kind {other}"))),
    }
}

type DecodedItem = Result<(ExchangeId, Exchange), StoreError>;
type BlockItem = Result<(u64, sled::IVec), StoreError>;

/// Most threads an import validates and compresses on.
const DECODE_THREADS_MAX: usize = 4;
/// Blocks an import appends per sled batch.
const IMPORT_APPEND_BLOCKS: usize = 4;

fn check_task_id(id: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidTaskId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_TASK_ID {
        return bad("longer than 200 bytes");
    }
    if id.bytes().any(|b| b == 0) {
        return bad("contains a NUL byte");
    }
    Ok(())
}

fn exchange_prefix(task: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(task.len() + 10);
    k.push(TAG_EXCHANGE);
    k.extend_from_slice(task.as_bytes());
    k.push(0);
    k
}

fn index_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = TAG_INDEX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn usage_key(task: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(task.len() + 1);
    k.push(TAG_USAGE);
    k.extend_from_slice(task.as_bytes());
    k
}

fn id_from_key(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what: "exchange key".to_owned(),
            detail: format!("{} bytes", key.len()),
        })
}

fn decode_usage(v: &[u8]) -> TaskUsage {
    let n = |r: std::ops::Range<usize>| {
        v.get(r)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    TaskUsage {
        exchanges: n(0..8),
        bytes: n(8..16),
    }
}

fn encode_usage(u: TaskUsage) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&u.exchanges.to_be_bytes());
    v[8..].copy_from_slice(&u.bytes.to_be_bytes());
    v
}

fn edge_key(e: &TopologyEdge) -> Vec<u8> {
    let mut k = Vec::with_capacity(e.client.len() + e.server.len() + 12);
    k.extend_from_slice(e.client.as_bytes());
    k.push(0);
    k.extend_from_slice(e.server.as_bytes());
    k.push(0);
    k.extend_from_slice(&e.port.to_be_bytes());
    k.extend_from_slice(e.protocol.map_or("", |p| p.as_str()).as_bytes());
    k
}

impl Store {
    /// Opens (creating, mode 0700) the store in `dir` with default options.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it, [`StoreError::NewerFormat`]
    /// when a newer deetune wrote it, [`StoreError::Dir`]/[`StoreError::Sled`] otherwise.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens the store in `dir` with `options`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(dir: impl AsRef<Path>, options: &StoreOptions) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StoreError::Dir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let lock = LockFile::acquire(&dir)?;
        let config = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(Some(options.flush_every_ms.max(1)))
            .cache_capacity(options.cache_bytes);
        // We hold the directory lock, so sled's own lock can only be held by a store of this
        // process that was just dropped: sled releases its file when its background threads
        // finish, shortly after the drop. Wait for that (bounded) instead of failing.
        let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(StoreError::sled("open")(e)),
            }
        };
        let tree = |name: &'static str| db.open_tree(name).map_err(StoreError::sled("open tree"));
        let mut store = Self {
            meta: tree("meta")?,
            tasks: tree("tasks")?,
            exchanges: tree("exchanges")?,
            origins: tree("origins")?,
            topology: tree("topology")?,
            db,
            dir,
            next_id: Mutex::new(1),
            _lock: lock,
        };
        store.check_format()?;
        store.recover_pending()?;
        let next = store
            .exchanges
            .get(NEXT_ID_KEY)
            .map_err(StoreError::sled("read next id"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
        *store
            .next_id
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next.max(1);
        tracing::debug!(dir = %store.dir.display(), "Store opened.");
        Ok(store)
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self
            .meta
            .get(KEY_FORMAT)
            .map_err(StoreError::sled("read format"))?
        {
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StoreError::Corrupt {
                        what: "format record".to_owned(),
                        detail: format!("{} bytes", v.len()),
                    }
                })?;
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        what: format!("the store in {}", self.dir.display()),
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
                if found < STORE_FORMAT_VERSION {
                    tracing::info!(
                        dir = %self.dir.display(),
                        from = found,
                        to = STORE_FORMAT_VERSION,
                        "Store format upgraded; existing exchanges stay readable."
                    );
                    self.meta
                        .insert(KEY_FORMAT, &STORE_FORMAT_VERSION.to_be_bytes())
                        .map_err(StoreError::sled("write format"))?;
                }
            }
            None => {
                self.meta
                    .insert(KEY_FORMAT, &STORE_FORMAT_VERSION.to_be_bytes())
                    .map_err(StoreError::sled("write format"))?;
            }
        }
        Ok(())
    }

    /// Removes what an import that did not finish (crash) left behind.
    fn recover_pending(&self) -> Result<(), StoreError> {
        for item in self.meta.scan_prefix(PENDING_PREFIX) {
            let (k, _) = item.map_err(StoreError::sled("scan pending"))?;
            let task = String::from_utf8_lossy(&k[PENDING_PREFIX.len()..]).into_owned();
            tracing::warn!(task = %task, "Removing the remains of an unfinished import.");
            self.purge_task(&task)?;
            self.meta
                .remove(k)
                .map_err(StoreError::sled("remove pending"))?;
        }
        Ok(())
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes everything to disk now. Returns the bytes flushed.
    ///
    /// # Errors
    /// sled cannot write.
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(StoreError::sled("flush"))
    }

    /// Bytes the store takes on disk (sled's figure).
    ///
    /// # Errors
    /// sled cannot tell.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(StoreError::sled("size on disk"))
    }

    /// A fresh task id (`t-` and 8 hex digits) not used in this store.
    ///
    /// # Errors
    /// sled cannot generate or read.
    pub fn new_task_id(&self) -> Result<TaskId, StoreError> {
        loop {
            let n = self
                .db
                .generate_id()
                .map_err(StoreError::sled("generate id"))?;
            // Mix in the time so ids differ between stores.
            let mixed = (n ^ now_ms().rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
            let id = format!("t-{mixed:08x}");
            if !self
                .tasks
                .contains_key(id.as_bytes())
                .map_err(StoreError::sled("read task"))?
            {
                return Ok(id);
            }
        }
    }

    // ---- tasks ----

    /// Inserts or replaces a task.
    ///
    /// # Errors
    /// Invalid id, or sled cannot write.
    pub fn put_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        check_task_id(&task.id)?;
        let v = codec::encode("task", task)?;
        self.tasks
            .insert(task.id.as_bytes(), v)
            .map_err(StoreError::sled("write task"))?;
        Ok(())
    }

    /// The task with this id, if any.
    ///
    /// # Errors
    /// sled cannot read, or the record is corrupt or newer.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.tasks
            .get(id.as_bytes())
            .map_err(StoreError::sled("read task"))?
            .map(|v| codec::decode(&format!("task {id}"), &v))
            .transpose()
    }

    /// All tasks, oldest start first.
    ///
    /// # Errors
    /// sled cannot read, or a record is corrupt or newer.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = Vec::new();
        for item in &self.tasks {
            let (k, v) = item.map_err(StoreError::sled("scan tasks"))?;
            out.push(codec::decode::<TaskRecord>(
                &format!("task {}", String::from_utf8_lossy(&k)),
                &v,
            )?);
        }
        out.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Deletes a task and all its exchanges. A running task is refused
    /// ([`StoreError::TaskRunning`]).
    ///
    /// # Errors
    /// No such task, running, or sled fails.
    pub fn delete_task(&self, id: &str) -> Result<(), StoreError> {
        let task = self
            .task(id)?
            .ok_or_else(|| StoreError::NoTask { id: id.to_owned() })?;
        if task.state == TaskState::Running {
            return Err(StoreError::TaskRunning { id: id.to_owned() });
        }
        self.purge_task(id)
    }

    /// Removes a task's exchanges, usage, origin and record (in that order, so a crash in
    /// between leaves a task with fewer exchanges, never exchanges without a task record
    /// that could not be removed again).
    fn purge_task(&self, id: &str) -> Result<(), StoreError> {
        let prefix = exchange_prefix(id);
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in self
                .exchanges
                .scan_prefix(&prefix)
                .keys()
                .take(DELETE_BATCH)
            {
                let k = item.map_err(StoreError::sled("scan exchanges"))?;
                batch.remove(&index_key(id_from_key(&k)?));
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                break;
            }
            self.exchanges
                .apply_batch(batch)
                .map_err(StoreError::sled("delete exchanges"))?;
        }
        self.exchanges
            .remove(usage_key(id))
            .map_err(StoreError::sled("delete usage"))?;
        self.origins
            .remove(id.as_bytes())
            .map_err(StoreError::sled("delete origin"))?;
        self.tasks
            .remove(id.as_bytes())
            .map_err(StoreError::sled("delete task"))?;
        Ok(())
    }

    /// Exchanges and bytes a task holds.
    ///
    /// # Errors
    /// sled cannot read.
    pub fn task_usage(&self, id: &str) -> Result<TaskUsage, StoreError> {
        Ok(self
            .exchanges
            .get(usage_key(id))
            .map_err(StoreError::sled("read usage"))?
            .map(|v| decode_usage(&v))
            .unwrap_or_default())
    }

    // ---- exchanges ----

    /// Appends exchanges to a task in one atomic batch; returns their ids (monotonic and
    /// consecutive, in the order given). The task record need not exist yet. Reading the
    /// task back gives them in this order after those appended before.
    ///
    /// # Errors
    /// Invalid task id, or sled fails.
    pub fn append(
        &self,
        task_id: &str,
        exchanges: &[Exchange],
    ) -> Result<Vec<ExchangeId>, StoreError> {
        let mut appender = Appender::new(task_id)?;
        for x in exchanges {
            appender.push(x)?;
        }
        self.commit(&mut appender)
    }

    /// Writes what `appender` holds (its sealed blocks and the one being built) in one
    /// atomic batch, like [`Self::append`] with those exchanges; the appender is empty
    /// afterwards, also when this fails (the exchanges not written are then lost).
    ///
    /// # Errors
    /// sled fails.
    pub fn commit(&self, appender: &mut Appender) -> Result<Vec<ExchangeId>, StoreError> {
        // A block that cannot be sealed is lost alone: the others are still written.
        let sealed = appender.seal_open();
        let blocks = std::mem::take(&mut appender.sealed);
        let ids = self.append_blocks(&appender.task_id, blocks)?;
        sealed.map(|()| ids)
    }

    /// Appends sealed blocks (see [`BlockBuilder::seal`]) of `count` exchanges in one sled
    /// batch. Ids of a block are consecutive from the block's first id.
    fn append_blocks(
        &self,
        task_id: &str,
        blocks: Vec<(Vec<u8>, u64)>,
    ) -> Result<Vec<ExchangeId>, StoreError> {
        check_task_id(task_id)?;
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = exchange_prefix(task_id);
        let mut batch = sled::Batch::default();
        let mut ids = Vec::new();
        let mut next = self
            .next_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut usage = self.task_usage(task_id)?;
        let mut id = *next;
        for (block, count) in blocks {
            let mut key = Vec::with_capacity(prefix.len() + 8);
            key.extend_from_slice(&prefix);
            key.extend_from_slice(&id.to_be_bytes());
            let count32 = u32::try_from(count).unwrap_or(u32::MAX);
            let mut index = Vec::with_capacity(4 + task_id.len());
            index.extend_from_slice(&count32.to_be_bytes());
            index.extend_from_slice(task_id.as_bytes());
            usage.exchanges += count;
            usage.bytes += block.len() as u64;
            batch.insert(&index_key(id), index);
            batch.insert(key, block);
            ids.extend((id..id + count).map(ExchangeId));
            id += count;
        }
        batch.insert(usage_key(task_id), &encode_usage(usage));
        batch.insert(NEXT_ID_KEY, &id.to_be_bytes());
        self.exchanges
            .apply_batch(batch)
            .map_err(StoreError::sled("append exchanges"))?;
        *next = id;
        Ok(ids)
    }

    /// A task's exchanges in recorded order, streamed: one block (at most `BLOCK_MAX`
    /// exchanges) is decompressed at a time and its exchanges decoded from the binary form
    /// one by one as the iterator is advanced, on the caller's thread.
    ///
    /// Decoding on the caller's thread costs less CPU than decoding ahead on worker threads
    /// (which version 1, with JSON blocks, did): with the binary form, the malloc/free of
    /// every exchange's strings dominates, and strings allocated on one thread and freed on
    /// another contend on the allocator (~680 ns CPU per small HTTP exchange inline against
    /// ~950 ns with one worker; see `docs/benchmarks.md`).
    pub fn exchanges(
        &self,
        task_id: &str,
    ) -> impl Iterator<Item = Result<(ExchangeId, Exchange), StoreError>> + Send + 'static {
        Decoded::new(self.blocks(task_id))
    }

    /// A task's stored blocks: (first exchange id, value).
    fn blocks(
        &self,
        task_id: &str,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), StoreError>> + Send + 'static {
        self.exchanges
            .scan_prefix(exchange_prefix(task_id))
            .map(|item| {
                let (k, v) = item.map_err(StoreError::sled("scan exchanges"))?;
                Ok((id_from_key(&k)?, v))
            })
    }

    /// One exchange by id, with its task.
    ///
    /// # Errors
    /// [`StoreError::NoExchange`] when there is none; sled or decoding errors.
    pub fn exchange(&self, id: ExchangeId) -> Result<(TaskId, Exchange), StoreError> {
        let missing = || StoreError::NoExchange { id: id.0 };
        // The block holding `id` is the one with the greatest first id <= id.
        let (k, v) = self
            .exchanges
            .range(..=index_key(id.0))
            .next_back()
            .transpose()
            .map_err(StoreError::sled("read exchange index"))?
            .ok_or_else(missing)?;
        if k.len() != 9 || k[0] != TAG_INDEX || v.len() < 4 {
            return Err(missing());
        }
        let first = id_from_key(&k)?;
        let count = u64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        if id.0 >= first + count {
            return Err(missing());
        }
        let task = String::from_utf8_lossy(&v[4..]).into_owned();
        let mut key = exchange_prefix(&task);
        key.extend_from_slice(&first.to_be_bytes());
        let block = self
            .exchanges
            .get(key)
            .map_err(StoreError::sled("read exchange"))?
            .ok_or_else(missing)?;
        let nth = usize::try_from(id.0 - first).unwrap_or(usize::MAX);
        let x = match open_block(&block)? {
            BlockBody::Records(body) => {
                let (kind, record) = records(&body).nth(nth).ok_or_else(missing)??;
                decode_record(kind, record, id.0)?
            }
            BlockBody::Json(body) => {
                let line = body.split(|&b| b == b'\n').nth(nth).ok_or_else(missing)?;
                codec::exchange_from_json_line(line).map_err(|e| StoreError::Corrupt {
                    what: format!("exchange {id}"),
                    detail: e.to_string(),
                })?
            }
        };
        Ok((task, x))
    }

    // ---- topology ----

    /// Inserts or replaces edges (keyed by client, server, port and protocol).
    ///
    /// # Errors
    /// sled fails.
    pub fn put_edges(&self, edges: &[TopologyEdge]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for e in edges {
            batch.insert(edge_key(e), codec::encode("topology edge", e)?);
        }
        self.topology
            .apply_batch(batch)
            .map_err(StoreError::sled("write edges"))
    }

    /// All edges, ordered by client, server, port, protocol.
    ///
    /// # Errors
    /// sled fails or a record is corrupt or newer.
    pub fn edges(&self) -> Result<Vec<TopologyEdge>, StoreError> {
        self.topology
            .iter()
            .values()
            .map(|v| codec::decode("topology edge", &v.map_err(StoreError::sled("scan edges"))?))
            .collect()
    }

    // ---- retention ----

    /// Removes tasks over the limits: first every non-running task older than `max_age_ms`
    /// (by end time, or start time when it never ended), then the oldest non-running tasks
    /// until the stored bytes are at or under `max_bytes`. Returns the removed ids.
    ///
    /// # Errors
    /// sled fails or a task record cannot be read.
    pub fn apply_retention(
        &self,
        limits: &Retention,
        now_ms: u64,
    ) -> Result<Vec<TaskId>, StoreError> {
        let mut removed = Vec::new();
        let mut total = 0u64;
        let mut candidates = Vec::new();
        for t in self.tasks()? {
            let usage = self.task_usage(&t.id)?;
            total += usage.bytes;
            if t.state != TaskState::Running {
                candidates.push((t, usage));
            }
        }
        for (t, usage) in candidates {
            let age_ref = t.stopped_ms.unwrap_or(t.started_ms);
            let too_old = limits
                .max_age_ms
                .is_some_and(|max| now_ms.saturating_sub(age_ref) > max);
            let too_big = limits.max_bytes.is_some_and(|max| total > max);
            if too_old || too_big {
                self.purge_task(&t.id)?;
                total = total.saturating_sub(usage.bytes);
                tracing::info!(task = %t.id, bytes = usage.bytes, too_old, "Retention removed a task.");
                removed.push(t.id);
            }
        }
        Ok(removed)
    }

    // ---- bundles ----

    /// The header of the bundle a task was imported from, if it was.
    ///
    /// # Errors
    /// sled fails or the record is corrupt.
    pub fn origin(&self, id: &str) -> Result<Option<BundleHeader>, StoreError> {
        self.origins
            .get(id.as_bytes())
            .map_err(StoreError::sled("read origin"))?
            .map(|v| codec::decode(&format!("origin of {id}"), &v))
            .transpose()
    }

    /// The header an export of this task writes: the original bundle's header for an
    /// imported task (so a re-export reproduces the bundle byte for byte), a new one
    /// otherwise.
    ///
    /// # Errors
    /// No such task, or sled fails.
    pub fn export_header(&self, id: &str) -> Result<BundleHeader, StoreError> {
        if let Some(h) = self.origin(id)? {
            return Ok(h);
        }
        let task = self
            .task(id)?
            .ok_or_else(|| StoreError::NoTask { id: id.to_owned() })?;
        Ok(BundleHeader::new(task))
    }

    /// Writes a task to a bundle file (`.zst` compresses). Returns the exchanges written.
    ///
    /// # Errors
    /// No such task, store read errors, or file errors.
    pub fn export_bundle(&self, id: &str, path: &Path) -> Result<u64, crate::BundleError> {
        let wrap = |e: StoreError| crate::BundleError::Store(Box::new(e));
        // An imported task: its header line exactly as it was imported.
        let kept = self
            .origins
            .get(id.as_bytes())
            .map_err(|e| wrap(StoreError::sled("read origin")(e)))?;
        let mut w = match kept {
            Some(v) => crate::BundleWriter::create_with_header_line(
                path,
                codec::body(&format!("origin of {id}"), &v).map_err(wrap)?,
            )?,
            None => crate::BundleWriter::create(path, &self.export_header(id).map_err(wrap)?)?,
        };
        self.render_blocks(id, |text, lines| w.write_json_lines(text, lines))?;
        w.finish()
    }

    /// Renders a task's blocks as JSON lines (see [`render_block`]) and hands each block's
    /// text to `write`, in stored order. Blocks are rendered on worker threads (one per core,
    /// at most [`DECODE_THREADS_MAX`]; each allocates and frees its own exchanges) while this
    /// thread writes; buffers go back to the workers for reuse.
    fn render_blocks(
        &self,
        id: &str,
        mut write: impl FnMut(&[u8], u64) -> Result<(), crate::BundleError>,
    ) -> Result<(), crate::BundleError> {
        use std::sync::mpsc::sync_channel;
        type Rendered = Result<(Vec<u8>, u64), StoreError>;
        let wrap = |e: StoreError| crate::BundleError::Store(Box::new(e));
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(DECODE_THREADS_MAX);
        let blocks = self.blocks(id);
        if workers < 2 {
            let mut opener = BlockOpener::new();
            let mut text = Vec::new();
            for item in blocks {
                let lines = render_block(&mut opener, item, &mut text).map_err(wrap)?;
                write(&text, lines)?;
            }
            return Ok(());
        }
        std::thread::scope(|s| {
            let mut inputs = Vec::with_capacity(workers);
            let mut ends = Vec::with_capacity(workers);
            for _ in 0..workers {
                let (in_tx, in_rx) = sync_channel::<BlockItem>(1);
                let (out_tx, out_rx) = sync_channel::<Rendered>(1);
                let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(2);
                s.spawn(move || {
                    let mut opener = BlockOpener::new();
                    for item in in_rx {
                        let mut text = spare_rx.try_recv().unwrap_or_default();
                        let rendered =
                            render_block(&mut opener, item, &mut text).map(|lines| (text, lines));
                        if out_tx.send(rendered).is_err() {
                            break;
                        }
                    }
                });
                inputs.push(in_tx);
                ends.push((out_rx, spare_tx));
            }
            s.spawn(move || {
                for (item, to) in blocks.zip(inputs.iter().cycle()) {
                    if to.send(item).is_err() {
                        break;
                    }
                }
            });
            // Results in stored order: blocks were dealt round-robin. A worker that ends
            // without a result for its turn means the scan ended. Returning early drops the
            // receivers, which ends the workers and then the feeder.
            for (results, spares) in ends.iter().cycle() {
                let Ok(rendered) = results.recv() else {
                    break;
                };
                let (text, lines) = rendered.map_err(wrap)?;
                write(&text, lines)?;
                let _ = spares.try_send(text);
            }
            Ok(())
        })
    }

    /// Writes a task's HTTP exchanges as a HAR 1.2 file. Returns the entries written.
    ///
    /// # Errors
    /// No such task, a non-HTTP exchange, store read errors, or file errors.
    pub fn export_har(&self, id: &str, path: &Path) -> Result<u64, crate::BundleError> {
        let wrap = |e: StoreError| crate::BundleError::Store(Box::new(e));
        if self.task(id).map_err(wrap)?.is_none() {
            return Err(wrap(StoreError::NoTask { id: id.to_owned() }));
        }
        crate::har::write_har_file(
            path,
            self.exchanges(id).map(|r| r.map(|(_, x)| x).map_err(wrap)),
        )
    }

    /// Imports a bundle as a new task (state `imported`), all or nothing: on any error the
    /// store is left as it was (also after a crash mid-import: the next open removes the
    /// remains). Returns the new task id.
    ///
    /// # Errors
    /// [`StoreError::Import`] naming the first bad line; sled errors.
    pub fn import_bundle(&self, path: &Path) -> Result<ImportSummary, StoreError> {
        let import_err = |e: crate::BundleError| StoreError::Import {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        let mut reader = crate::BundleReader::open(path).map_err(import_err)?;
        let header = reader.header().clone();
        let task_id = self.new_task_id()?;
        let mut pending = PENDING_PREFIX.to_vec();
        pending.extend_from_slice(task_id.as_bytes());
        self.meta
            .insert(&pending, &[])
            .map_err(StoreError::sled("mark import"))?;
        let result = self.import_exchanges(&task_id, &mut reader);
        let count = match result {
            Ok(n) => n,
            Err(e) => {
                self.purge_task(&task_id)?;
                self.meta
                    .remove(&pending)
                    .map_err(StoreError::sled("unmark import"))?;
                return Err(match e {
                    ImportFailure::Bundle(b) => import_err(b),
                    ImportFailure::Store(s) => s,
                });
            }
        };
        let mut task = header.task.clone();
        task.id.clone_from(&task_id);
        task.state = TaskState::Imported;
        self.origins
            .insert(task_id.as_bytes(), {
                // Kept as read (it parsed as a header), for a byte-identical re-export.
                let mut v = Vec::with_capacity(reader.header_line().len() + 1);
                v.push(VALUE_VERSION);
                v.extend_from_slice(reader.header_line());
                v
            })
            .map_err(StoreError::sled("write origin"))?;
        self.put_task(&task)?;
        self.meta
            .remove(&pending)
            .map_err(StoreError::sled("unmark import"))?;
        self.flush()?;
        Ok(ImportSummary {
            task_id,
            exchanges: count,
        })
    }

    /// Reads the bundle in blocks on one thread, validates (parses every line) and compresses
    /// blocks on worker threads (one per core, at most [`DECODE_THREADS_MAX`]), and appends
    /// them in file order on this one. Lines are stored as read, so a re-export gives the
    /// bundle's own bytes back. The first bad line in file order is the error.
    fn import_exchanges(
        &self,
        task_id: &str,
        reader: &mut crate::BundleReader,
    ) -> Result<u64, ImportFailure> {
        use std::sync::mpsc::sync_channel;
        type Sealed = Result<(Vec<u8>, u64), ImportFailure>;
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, DECODE_THREADS_MAX);
        let path = reader.path().to_path_buf();
        std::thread::scope(|s| {
            let mut inputs = Vec::with_capacity(workers);
            let mut results = Vec::with_capacity(workers);
            for _ in 0..workers {
                let (in_tx, in_rx) = sync_channel::<Result<ImportChunk, crate::BundleError>>(1);
                let (out_tx, out_rx) = sync_channel::<Sealed>(1);
                let path = &path;
                s.spawn(move || {
                    let mut scratch = Vec::with_capacity(4096);
                    for chunk in in_rx {
                        let sealed = match chunk {
                            Err(e) => Err(ImportFailure::Bundle(e)),
                            Ok(chunk) => chunk
                                .into_block(path, &mut scratch)
                                .and_then(|mut block| block.seal().map_err(ImportFailure::Store)),
                        };
                        if out_tx.send(sealed).is_err() {
                            break;
                        }
                    }
                });
                inputs.push(in_tx);
                results.push(out_rx);
            }
            s.spawn(move || {
                let mut to = inputs.iter().cycle();
                let mut send = |item| to.next().is_some_and(|tx| tx.send(item).is_ok());
                loop {
                    let mut chunk = ImportChunk::new();
                    chunk.first_line = reader.line() + 1;
                    let mut last = None;
                    while !chunk.is_full() {
                        match reader.next_exchange_line() {
                            Ok(Some(line)) => chunk.push_line(line),
                            Ok(None) => {
                                last = Some(Ok(()));
                                break;
                            }
                            Err(e) => {
                                last = Some(Err(e));
                                break;
                            }
                        }
                    }
                    if chunk.count > 0 && !send(Ok(chunk)) {
                        return;
                    }
                    match last {
                        None => {}
                        Some(Ok(())) => return,
                        Some(Err(e)) => {
                            send(Err(e));
                            return;
                        }
                    }
                }
            });
            // Results in file order: blocks were dealt round-robin. A worker that ends
            // without a result for its turn means the reader ended.
            let mut count = 0u64;
            let mut blocks = Vec::with_capacity(IMPORT_APPEND_BLOCKS);
            for rx in results.iter().cycle() {
                let Ok(sealed) = rx.recv() else { break };
                let (block, n) = sealed?;
                count += n;
                blocks.push((block, n));
                if blocks.len() >= IMPORT_APPEND_BLOCKS {
                    self.append_blocks(task_id, std::mem::take(&mut blocks))
                        .map_err(ImportFailure::Store)?;
                }
            }
            self.append_blocks(task_id, blocks)
                .map_err(ImportFailure::Store)?;
            Ok(count)
        })
    }
}

/// Renders a stored block as JSON lines joined by `\n` into `out` (cleared first): the
/// lines of a version-1 block as they are, the records of a version-2 block through
/// [`render_json_lines`]. Returns the number of lines.
fn render_block(
    opener: &mut BlockOpener,
    item: BlockItem,
    out: &mut Vec<u8>,
) -> Result<u64, StoreError> {
    let (first, block) = item?;
    match opener.open(&block)? {
        BlockKind::Json => {
            out.clear();
            out.extend_from_slice(&opener.buf);
            Ok(opener.buf.iter().filter(|&&b| b == b'\n').count() as u64 + 1)
        }
        BlockKind::Records => render_json_lines(&opener.buf, first, out),
    }
}

/// Renders the records of a version-2 block as JSON lines joined by `\n` into `out`
/// (cleared first): binary exchanges re-encoded as canonical JSON, kept lines copied.
/// Returns the number of lines.
fn render_json_lines(body: &[u8], first: u64, out: &mut Vec<u8>) -> Result<u64, StoreError> {
    out.clear();
    let mut n = 0u64;
    for (record, id) in records(body).zip(first..) {
        let (kind, bytes) = record?;
        if n > 0 {
            out.push(b'\n');
        }
        n += 1;
        if kind == RECORD_JSON {
            out.extend_from_slice(bytes);
        } else {
            let x = decode_record(kind, bytes, id)?;
            serde_json::to_writer(&mut *out, &x).map_err(|source| StoreError::Encode {
                what: "exchange",
                source,
            })?;
        }
    }
    Ok(n)
}

/// Lines of a bundle read for import, before they are validated: JSON lines joined by `\n`.
struct ImportChunk {
    lines: Vec<u8>,
    count: u64,
    first_line: u64,
}

impl ImportChunk {
    fn new() -> Self {
        Self {
            lines: Vec::with_capacity(256 * 1024),
            count: 0,
            first_line: 0,
        }
    }

    fn push_line(&mut self, line: &[u8]) {
        if self.count > 0 {
            self.lines.push(b'\n');
        }
        self.count += 1;
        self.lines.extend_from_slice(line);
    }

    fn is_full(&self) -> bool {
        self.count >= BLOCK_MAX as u64 || self.lines.len() >= BLOCK_BYTES
    }

    /// Parses every line (the first bad one is the error, with its line number) and builds
    /// the stored block: a line in canonical form (what rendering its exchange gives) is
    /// stored binary, any other line as it is, so a re-export reproduces the bundle.
    fn into_block(self, path: &Path, scratch: &mut Vec<u8>) -> Result<BlockBuilder, ImportFailure> {
        let mut block = BlockBuilder::new();
        if self.count == 0 {
            return Ok(block);
        }
        for (line, no) in self.lines.split(|&b| b == b'\n').zip(self.first_line..) {
            let x: Exchange = codec::exchange_from_json_line(line).map_err(|source| {
                ImportFailure::Bundle(crate::BundleError::BadRecord {
                    path: path.to_path_buf(),
                    line: no,
                    source,
                })
            })?;
            scratch.clear();
            let canonical = serde_json::to_writer(&mut *scratch, &x).is_ok() && scratch == line;
            if canonical {
                block.push_exchange(&x)
            } else {
                block.push_json(line)
            }
            .map_err(ImportFailure::Store)?;
        }
        Ok(block)
    }
}

enum ImportFailure {
    Bundle(crate::BundleError),
    Store(StoreError),
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, dir = %self.dir.display(), "Flushing the store on close failed.");
        }
    }
}

/// Which exchanges [`Store::find_exchanges`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeQuery {
    /// Glob over the interface (`GET /api/*`, `SET`, `SELECT users`); case-sensitive.
    pub interface: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl Store {
    /// A task's exchanges matching `query`, in recorded order.
    ///
    /// # Errors
    /// No such task, a bad glob, sled or decoding errors.
    pub fn find_exchanges(
        &self,
        task_id: &str,
        query: &ExchangeQuery,
    ) -> Result<Vec<(ExchangeId, Exchange)>, StoreError> {
        if self.task(task_id)?.is_none() {
            return Err(StoreError::NoTask {
                id: task_id.to_owned(),
            });
        }
        let matcher = query
            .interface
            .as_deref()
            .map(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|source| StoreError::Pattern {
                        pattern: p.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.exchanges(task_id) {
            let (id, x) = item?;
            if matcher.as_ref().is_none_or(|m| m.is_match(x.interface())) {
                out.push((id, x));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use deetune_protocols::{
        Flags, Payload, Protocol, RedisCommand, Request, RespValue, Response, Timing,
    };

    use super::*;

    fn redis(n: u64) -> Exchange {
        Exchange {
            conn: std::sync::Arc::default(),
            seq: n,
            protocol: Protocol::Redis,
            request: Request::Redis(RedisCommand {
                args: vec![
                    Payload::from("GET"),
                    Payload::from(format!("k{n}").as_str()),
                ],
                inline: false,
            }),
            response: Some(Response::Redis(RespValue::Bulk(Payload(vec![0xff, 1])))),
            timing: Timing::default(),
            flags: Flags::default(),
            session: None,
        }
    }

    /// A block as stores of format 1 wrote it: JSON lines, zstd, version byte 1.
    fn json_block(xs: &[Exchange]) -> (Vec<u8>, u64) {
        let lines: Vec<Vec<u8>> = xs.iter().map(|x| serde_json::to_vec(x).unwrap()).collect();
        let lines = lines.join(&b'\n');
        let mut v = vec![BLOCK_VERSION_JSON];
        v.extend_from_slice(&(lines.len() as u64).to_be_bytes());
        v.extend_from_slice(&zstd::bulk::compress(&lines, 1).unwrap());
        (v, xs.len() as u64)
    }

    /// Guards the format bump: a store written by format 1 (JSON-line blocks) opens, gets its
    /// format record upgraded, and reads, looks up, exports and appends as before.
    #[test]
    fn format_1_store_stays_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let old: Vec<Exchange> = (0..300).map(redis).collect();
        {
            let store = Store::open(tmp.path()).unwrap();
            store
                .put_task(&crate::TaskRecord {
                    id: "t-old".to_owned(),
                    spec: crate::TaskSpec::default(),
                    state: TaskState::Stopped,
                    stop_reason: None,
                    started_ms: 1,
                    stopped_ms: Some(2),
                    stats: crate::TaskStats::default(),
                })
                .unwrap();
            store
                .append_blocks(
                    "t-old",
                    vec![json_block(&old[..256]), json_block(&old[256..])],
                )
                .unwrap();
            store.meta.insert(KEY_FORMAT, &1u32.to_be_bytes()).unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        let format = store.meta.get(KEY_FORMAT).unwrap().unwrap();
        assert_eq!(format.as_ref(), &STORE_FORMAT_VERSION.to_be_bytes());
        let got: Vec<_> = store.exchanges("t-old").map(|r| r.unwrap().1).collect();
        assert!(got == old);
        assert!(store.exchange(ExchangeId(1 + 257)).unwrap().1 == old[257]);

        // Export copies the old lines; the new blocks appended after them render the same
        // canonical JSON, so the bundle is what format 1 gave for the same exchanges.
        let new: Vec<Exchange> = (300..400).map(redis).collect();
        store.append("t-old", &new).unwrap();
        let all: Vec<_> = store.exchanges("t-old").map(|r| r.unwrap().1).collect();
        assert!(all[..300] == old[..] && all[300..] == new[..]);
        let path = tmp.path().join("b.jsonl");
        assert_eq!(store.export_bundle("t-old", &path).unwrap(), 400);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (line, x) in lines[1..401].iter().zip(old.iter().chain(&new)) {
            assert_eq!(*line, serde_json::to_string(x).unwrap());
        }
    }

    /// A block of a newer version is refused with `NewerFormat`; damaged blocks and records
    /// are `Corrupt`, never a panic.
    #[test]
    fn newer_and_damaged_blocks() {
        let mut b = BlockBuilder::new();
        b.push_exchange(&redis(1)).unwrap();
        b.push_json(br#"{"not": "an exchange"}"#).unwrap();
        let (mut v, _) = b.seal().unwrap();
        let one = |value: &[u8]| -> Vec<DecodedItem> {
            Decoded::new(std::iter::once(Ok((1, sled::IVec::from(value))))).collect()
        };
        let decoded = one(&v);
        assert_eq!(decoded.len(), 2);
        assert!(decoded[0].as_ref().is_ok_and(|(_, x)| *x == redis(1)));
        assert!(matches!(decoded[1], Err(StoreError::Corrupt { .. })));
        for cut in 0..v.len() {
            let items = one(&v[..cut]);
            assert!(items.iter().any(Result::is_err), "cut at {cut}");
        }
        v[0] = BLOCK_VERSION + 1;
        assert!(matches!(
            open_block(&v),
            Err(StoreError::NewerFormat { found, .. }) if found == u32::from(BLOCK_VERSION) + 1
        ));
        // A record whose length runs past the block.
        let mut body = Vec::new();
        body.push(RECORD_BINARY);
        body.extend_from_slice(&1000u32.to_le_bytes());
        body.push(0);
        let items: Vec<_> = records(&body).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }
}
