//! Error types of the store and of bundles.

use std::path::PathBuf;

use crate::TaskId;

/// What went wrong with the embedded store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created or opened.
    #[error("cannot use data directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another handle in this process) holds the store.
    #[error(
        "store {path} is in use by {}; stop it or talk to the daemon that owns the store",
        holder.map_or_else(|| "another process".to_owned(), |p| format!("process {p}"))
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// Process id written by the holder, when it could be read.
        holder: Option<u32>,
    },
    /// The store (or one of its records) was written by a newer deetune.
    #[error(
        "{what} has store format version {found}, this deetune reads up to version {supported}; \
         upgrade deetune, or export the recordings with the newer version and import them here"
    )]
    NewerFormat {
        /// Which record.
        what: String,
        /// Version found.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A stored record could not be decoded.
    #[error("corrupt {what} in the store: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// No task with this id.
    #[error("no task `{id}` in the store")]
    NoTask {
        /// The id.
        id: TaskId,
    },
    /// No exchange with this id.
    #[error("no exchange {id} in the store")]
    NoExchange {
        /// The id.
        id: u64,
    },
    /// A task that is still recording cannot be deleted.
    #[error("task `{id}` is running; stop it first")]
    TaskRunning {
        /// The id.
        id: TaskId,
    },
    /// A task id that cannot be stored (empty, NUL byte, too long).
    #[error("invalid task id {id:?}: {reason}")]
    InvalidTaskId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// An interface glob that does not parse.
    #[error("invalid interface pattern `{pattern}`")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Cause.
        #[source]
        source: globset::Error,
    },
    /// Importing a bundle failed; the store is unchanged.
    #[error("import of {path} failed; the store is unchanged")]
    Import {
        /// The bundle.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<BundleError>,
    },
    /// sled reported an error.
    #[error("store operation `{op}` failed")]
    Sled {
        /// Which operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: sled::Error,
    },
    /// Encoding a record failed (should not happen with the model types).
    #[error("cannot encode {what}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> Self {
        move |source| Self::Sled { op, source }
    }
}

/// What went wrong reading or writing a bundle file. Line numbers count from 1 (the header).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The file could not be opened, created, read or written.
    #[error("{op} {path}")]
    Io {
        /// What we were doing (`open`, `read`, `write`, …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid zstd stream (or it is cut).
    #[error("{path}: line {line}: bad zstd data (corrupt or truncated file)")]
    Compression {
        /// The file.
        path: PathBuf,
        /// Line being read when it failed.
        line: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty: no header line.
    #[error("{path}: empty file, not a deetune bundle")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The first line is not a bundle header.
    #[error("{path}: line 1: not a deetune bundle header: {detail}")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The bundle was written by a newer deetune.
    #[error(
        "{path}: line 1: bundle format version {found}, this deetune reads up to version \
         {supported}; upgrade deetune to read it"
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Version in the header.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The bundle declares a version older than any this build reads.
    #[error(
        "{path}: line 1: bundle format version {found} is not supported (oldest read: \
         {oldest}); re-export it with the deetune that wrote it"
    )]
    OlderVersion {
        /// The file.
        path: PathBuf,
        /// Version in the header.
        found: u32,
        /// Oldest version this build reads.
        oldest: u32,
    },
    /// A line is not valid JSON or not a valid exchange.
    #[error("{path}: line {line}: bad record: {source}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Line number (1 is the header).
        line: u64,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A line is longer than the limit (protects memory against garbage input).
    #[error("{path}: line {line}: longer than {limit} bytes")]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// Line number.
        line: u64,
        /// The limit.
        limit: usize,
    },
    /// The file ends before its end line: it was cut.
    #[error("{path}: line {line}: file ends without the end record (truncated bundle)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Line where the end record was expected.
        line: u64,
    },
    /// The end line's count disagrees with the number of exchanges read.
    #[error("{path}: line {line}: end record says {declared} exchanges, the file has {found}")]
    CountMismatch {
        /// The file.
        path: PathBuf,
        /// Line of the end record.
        line: u64,
        /// Count in the end record.
        declared: u64,
        /// Exchanges read.
        found: u64,
    },
    /// Data after the end line.
    #[error("{path}: line {line}: data after the end record")]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// First line after the end record.
        line: u64,
    },
    /// Serializing a record failed (should not happen with the model types).
    #[error("cannot encode a bundle record for {path}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// HAR export was asked for a recording that contains non-HTTP exchanges.
    #[error("exchange {index} is {protocol}, HAR holds only HTTP exchanges")]
    NotHttp {
        /// Position in the recording, from 0.
        index: u64,
        /// Its protocol.
        protocol: deetune_protocols::Protocol,
    },
    /// Reading the store while exporting failed.
    #[error("reading the store failed")]
    Store(#[source] Box<StoreError>),
}

impl BundleError {
    /// The line number this error is about, when it is about one line.
    #[must_use]
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Compression { line, .. }
            | Self::BadRecord { line, .. }
            | Self::LineTooLong { line, .. }
            | Self::Truncated { line, .. }
            | Self::CountMismatch { line, .. }
            | Self::TrailingData { line, .. } => Some(*line),
            Self::NotABundle { .. } | Self::NewerVersion { .. } | Self::OlderVersion { .. } => {
                Some(1)
            }
            _ => None,
        }
    }
}
