//! Recording bundles: JSON Lines files (optionally zstd-compressed) that carry one task's
//! exchanges between machines. See `docs/bundle-format.md`.
//!
//! Line 1 is a [`BundleHeader`], then one [`Exchange`] per line, then an end record
//! `{"end":{"exchanges":N}}` so a cut file is refused rather than silently short.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use deetune_protocols::Exchange;
use serde::{Deserialize, Serialize};

use crate::{BundleError, TaskRecord};

/// Format name in every bundle header.
pub const BUNDLE_FORMAT: &str = "deetune-bundle";
/// Bundle format version this build writes (and the newest it reads).
pub const BUNDLE_VERSION: u32 = 1;
/// Oldest bundle format version this build reads.
pub const BUNDLE_OLDEST_VERSION: u32 = 1;
/// Longest line a reader accepts (64 MiB): bounds memory on garbage input.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Lines longer than this are never taken for the end record (it is ~30 bytes).
const END_RECORD_MAX: usize = 4096;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const ZSTD_LEVEL: i32 = 3;

/// First line of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleHeader {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Format version ([`BUNDLE_VERSION`]).
    pub version: u32,
    /// The task that recorded the exchanges, as it was when the bundle was written.
    pub task: TaskRecord,
    /// Host name of the machine that wrote the bundle.
    pub host: String,
    /// Unix ms when the bundle was written.
    pub created_ms: u64,
}

impl BundleHeader {
    /// A header for `task`, written now on this host.
    #[must_use]
    pub fn new(task: TaskRecord) -> Self {
        Self {
            format: BUNDLE_FORMAT.to_owned(),
            version: BUNDLE_VERSION,
            task,
            host: host_name(),
            created_ms: now_ms(),
        }
    }
}

/// The last line of a bundle.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndRecord {
    end: EndInfo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndInfo {
    exchanges: u64,
}

/// Only what is needed to decide whether line 1 is a header we can read.
#[derive(Deserialize)]
struct HeaderProbe {
    format: Option<String>,
    version: Option<u32>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This machine's host name (`unknown` when it cannot be read).
#[must_use]
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Plain(w) => w,
            Self::Zstd(w) => w,
        }
    }
}

/// Writes a bundle: [`create`](Self::create) writes the header, [`write`](Self::write) one
/// exchange a line, [`finish`](Self::finish) the end record. The file appears under its name
/// only when `finish` succeeds (it is written to a temporary name beside it first).
pub struct BundleWriter {
    path: PathBuf,
    tmp: PathBuf,
    sink: Option<Sink>,
    count: u64,
    line: Vec<u8>,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("path", &self.path)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl BundleWriter {
    /// Starts a bundle at `path` (zstd-compressed when the name ends in `.zst`) and writes
    /// the header line.
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn create(path: impl AsRef<Path>, header: &BundleHeader) -> Result<Self, BundleError> {
        let mut w = Self::start(path.as_ref())?;
        w.write_record(header)?;
        Ok(w)
    }

    /// Starts a bundle whose header line is given as JSON (a header kept from an import).
    pub(crate) fn create_with_header_line(
        path: &Path,
        header_json: &[u8],
    ) -> Result<Self, BundleError> {
        let mut w = Self::start(path)?;
        w.write_bytes(header_json)?;
        Ok(w)
    }

    fn start(path: &Path) -> Result<Self, BundleError> {
        let path = path.to_path_buf();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|source| BundleError::Io {
            op: "create",
            path: tmp.clone(),
            source,
        })?;
        let buffered = BufWriter::with_capacity(1 << 20, file);
        let sink = if file_name.ends_with(".zst") {
            let mut enc =
                zstd::Encoder::new(buffered, ZSTD_LEVEL).map_err(|source| BundleError::Io {
                    op: "start compressing",
                    path: path.clone(),
                    source,
                })?;
            // Two cores shared: one extra worker helps; failure (no multithread support) is fine.
            let _ = enc.multithread(1);
            Sink::Zstd(enc)
        } else {
            Sink::Plain(buffered)
        };
        Ok(Self {
            path,
            tmp,
            sink: Some(sink),
            count: 0,
            line: Vec::with_capacity(4096),
        })
    }

    /// The final path of the bundle.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exchanges written so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends one exchange.
    ///
    /// # Errors
    /// Writing fails.
    pub fn write(&mut self, exchange: &Exchange) -> Result<(), BundleError> {
        self.write_record(exchange)?;
        self.count += 1;
        Ok(())
    }

    /// Appends `count` exchanges already serialized as JSON lines joined by `\n` (no final
    /// newline): the store keeps exchanges in exactly this form, so export copies bytes.
    pub(crate) fn write_json_lines(&mut self, lines: &[u8], count: u64) -> Result<(), BundleError> {
        self.write_bytes(lines)?;
        self.count += count;
        Ok(())
    }

    fn write_record<T: Serialize>(&mut self, value: &T) -> Result<(), BundleError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let res = serde_json::to_writer(&mut line, value).map_err(|source| BundleError::Encode {
            path: self.path.clone(),
            source,
        });
        let res = res.and_then(|()| self.write_bytes(&line));
        self.line = line;
        res
    }

    fn write_bytes(&mut self, json: &[u8]) -> Result<(), BundleError> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        let w = sink.writer();
        w.write_all(json)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|source| BundleError::Io {
                op: "write",
                path: self.tmp.clone(),
                source,
            })
    }

    /// Writes the end record, completes compression, syncs the file to disk and moves it to
    /// its name. Returns the number of exchanges written.
    ///
    /// # Errors
    /// Writing, syncing or renaming fails.
    pub fn finish(mut self) -> Result<u64, BundleError> {
        let end = EndRecord {
            end: EndInfo {
                exchanges: self.count,
            },
        };
        self.write_record(&end)?;
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| BundleError::Io { op, path, source }
        };
        let buffered = match self.sink.take() {
            Some(Sink::Plain(w)) => w,
            Some(Sink::Zstd(enc)) => enc.finish().map_err(io("compress", &self.tmp))?,
            None => return Ok(self.count),
        };
        let file = buffered
            .into_inner()
            .map_err(|e| io("write", &self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io("sync", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io("rename", &self.path))?;
        Ok(self.count)
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if self.sink.take().is_some() {
            // Not finished: leave no half-written file behind.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a bundle, streaming: [`header`](Self::header), then iterate for the exchanges.
/// Memory stays bounded by the longest line, whatever the number of exchanges. The
/// iterator ends after the end record; a missing end record, a bad line, bad zstd data or
/// data after the end is an error naming the line, after which the iterator ends.
pub struct BundleReader {
    path: PathBuf,
    src: Box<dyn BufRead + Send>,
    compressed: bool,
    header: BundleHeader,
    header_line: Vec<u8>,
    line_no: u64,
    count: u64,
    buf: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("path", &self.path)
            .field("line", &self.line_no)
            .finish_non_exhaustive()
    }
}

impl BundleReader {
    /// Opens a bundle (zstd is recognised by its magic number, whatever the name) and reads
    /// and checks its header.
    ///
    /// # Errors
    /// The file cannot be read, is empty, or line 1 is not a header of a supported version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BundleError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| BundleError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        Self::from_reader(path, file)
    }

    /// Reads a bundle from any byte source; `name` is used in errors.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn from_reader(
        name: impl Into<PathBuf>,
        reader: impl Read + Send + 'static,
    ) -> Result<Self, BundleError> {
        let path = name.into();
        let mut raw = BufReader::with_capacity(1 << 20, reader);
        let head = raw.fill_buf().map_err(|source| BundleError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        let compressed = head.starts_with(&ZSTD_MAGIC);
        let src: Box<dyn BufRead + Send> = if compressed {
            let dec =
                zstd::Decoder::with_buffer(raw).map_err(|source| BundleError::Compression {
                    path: path.clone(),
                    line: 1,
                    source,
                })?;
            Box::new(BufReader::with_capacity(1 << 20, dec))
        } else {
            Box::new(raw)
        };
        let mut r = Self {
            path,
            src,
            compressed,
            header: BundleHeader::new(imported_task("")),
            header_line: Vec::new(),
            line_no: 0,
            count: 0,
            buf: Vec::with_capacity(4096),
            done: false,
        };
        if !r.next_line()? {
            return Err(BundleError::Empty { path: r.path });
        }
        r.header = r.parse_header()?;
        r.header_line.clone_from(&r.buf);
        Ok(r)
    }

    /// The header (line 1).
    #[must_use]
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// Line 1 as read.
    pub(crate) fn header_line(&self) -> &[u8] {
        &self.header_line
    }

    /// The file name given at open.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of the last line read (1 is the header).
    #[must_use]
    pub fn line(&self) -> u64 {
        self.line_no
    }

    fn parse_header(&self) -> Result<BundleHeader, BundleError> {
        let not_bundle = |detail: String| BundleError::NotABundle {
            path: self.path.clone(),
            detail,
        };
        let probe: HeaderProbe =
            serde_json::from_slice(&self.buf).map_err(|e| not_bundle(e.to_string()))?;
        if probe.format.as_deref() != Some(BUNDLE_FORMAT) {
            return Err(not_bundle(format!(
                "`format` is {:?}, expected \"{BUNDLE_FORMAT}\"",
                probe.format
            )));
        }
        let Some(version) = probe.version else {
            return Err(not_bundle("no `version`".to_owned()));
        };
        if version > BUNDLE_VERSION {
            return Err(BundleError::NewerVersion {
                path: self.path.clone(),
                found: version,
                supported: BUNDLE_VERSION,
            });
        }
        if version < BUNDLE_OLDEST_VERSION {
            return Err(BundleError::OlderVersion {
                path: self.path.clone(),
                found: version,
                oldest: BUNDLE_OLDEST_VERSION,
            });
        }
        serde_json::from_slice(&self.buf).map_err(|e| not_bundle(e.to_string()))
    }

    /// Reads the next line into `buf` (without the line end). False at end of input.
    fn next_line(&mut self) -> Result<bool, BundleError> {
        self.buf.clear();
        self.line_no += 1;
        loop {
            let avail = match self.src.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(if self.compressed {
                        BundleError::Compression {
                            path: self.path.clone(),
                            line: self.line_no,
                            source,
                        }
                    } else {
                        BundleError::Io {
                            op: "read",
                            path: self.path.clone(),
                            source,
                        }
                    })
                }
            };
            if avail.is_empty() {
                return Ok(!self.buf.is_empty());
            }
            let (take, found) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if self.buf.len() + take > MAX_LINE_BYTES {
                return Err(BundleError::LineTooLong {
                    path: self.path.clone(),
                    line: self.line_no,
                    limit: MAX_LINE_BYTES,
                });
            }
            self.buf.extend_from_slice(&avail[..take]);
            self.src.consume(take + usize::from(found));
            if found {
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                return Ok(true);
            }
        }
    }

    /// The next exchange line, not parsed (the caller must parse it; a failure is
    /// [`BundleError::BadRecord`] at [`line`](Self::line)), or `None` after a valid end
    /// record. A line is the end record exactly when it parses as one (an end record never
    /// parses as an exchange, so this agrees with parsing every line as an exchange first).
    /// Only a line whose first key can be `end` is tried (see [`may_be_end_record`]): an
    /// exchange line (first key `conn`) is never parsed twice.
    pub(crate) fn next_exchange_line(&mut self) -> Result<Option<&[u8]>, BundleError> {
        if self.done {
            return Ok(None);
        }
        if !self.next_line()? {
            return Err(BundleError::Truncated {
                path: self.path.clone(),
                line: self.line_no,
            });
        }
        if self.buf.len() <= END_RECORD_MAX && may_be_end_record(&self.buf) {
            if let Ok(end) = serde_json::from_slice::<EndRecord>(&self.buf) {
                let end_line = self.line_no;
                if end.end.exchanges != self.count {
                    return Err(BundleError::CountMismatch {
                        path: self.path.clone(),
                        line: end_line,
                        declared: end.end.exchanges,
                        found: self.count,
                    });
                }
                if self.next_line()? {
                    return Err(BundleError::TrailingData {
                        path: self.path.clone(),
                        line: self.line_no,
                    });
                }
                self.done = true;
                return Ok(None);
            }
        }
        self.count += 1;
        Ok(Some(&self.buf))
    }

    fn advance(&mut self) -> Result<Option<Exchange>, BundleError> {
        let parsed = match self.next_exchange_line()? {
            None => return Ok(None),
            Some(line) => crate::codec::exchange_from_json_line(line),
        };
        parsed.map(Some).map_err(|source| BundleError::BadRecord {
            path: self.path.clone(),
            line: self.line_no,
            source,
        })
    }
}

/// JSON whitespace.
fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `line` can parse as the end record: it must be an object whose first key is
/// `end`, so after optional whitespace it starts `{`, whitespace, `"` and then `e` or `\`
/// (the key may be written with escapes). A cheap necessary condition, checked before the
/// parse (which builds an error for every line that is not the end record).
fn may_be_end_record(line: &[u8]) -> bool {
    let mut rest = line.iter().copied().skip_while(|&b| is_json_ws(b));
    if rest.next() != Some(b'{') {
        return false;
    }
    let mut rest = rest.skip_while(|&b| is_json_ws(b));
    rest.next() == Some(b'"') && matches!(rest.next(), Some(b'e' | b'\\'))
}

impl Iterator for BundleReader {
    type Item = Result<Exchange, BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(x) => x.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A bare task record in state `imported` (a placeholder until a bundle's header is read).
fn imported_task(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.to_owned(),
        spec: crate::TaskSpec::default(),
        state: crate::TaskState::Imported,
        stop_reason: None,
        started_ms: 0,
        stopped_ms: None,
        stats: crate::TaskStats::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_record_prefix_check() {
        for yes in [
            &br#"{"end":{"exchanges":0}}"#[..],
            br#" { "end" : {"exchanges":0}}"#,
            b"\t{\r\"\\u0065nd\":{\"exchanges\":0}}",
            br#"{"extra":1}"#,
        ] {
            assert!(may_be_end_record(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &br#"{"conn":{"id":1}}"#[..],
            b"",
            b"{",
            b"{\"",
            br#"["end"]"#,
            br#"{ }"#,
            b"\xff{\"end\"",
        ] {
            assert!(!may_be_end_record(no), "{}", String::from_utf8_lossy(no));
        }
    }

    /// An end record written with spaces and an escaped key is still the end record (the
    /// cheap check must never skip a line that parses as one).
    #[test]
    fn spaced_and_escaped_end_record_ends_the_bundle() {
        let header = serde_json::to_string(&BundleHeader::new(imported_task("t"))).unwrap();
        for end in [
            r#" { "\u0065nd" : { "exchanges" : 0 } } "#,
            "{\"end\":{\"exchanges\":0}}\r",
        ] {
            let text = format!("{header}\n{end}\n");
            let mut r = BundleReader::from_reader("mem", std::io::Cursor::new(text)).unwrap();
            assert!(r.next().is_none(), "{end}");
            assert_eq!(r.line(), 3, "{end}");
        }
        // A count that disagrees is still found (and refused) through the cheap check.
        let text = format!("{header}\n{{\"end\":{{\"exchanges\":2}}}}\n");
        let mut r = BundleReader::from_reader("mem", std::io::Cursor::new(text)).unwrap();
        assert!(matches!(
            r.next(),
            Some(Err(BundleError::CountMismatch { line: 2, .. }))
        ));
    }
}
