//! The embedded store (sled) and the portable recording bundle: [`Store`] keeps tasks
//! ([`TaskRecord`]), their exchanges in recorded order ([`ExchangeId`]) and topology edges
//! ([`TopologyEdge`]) under a data directory ([`default_data_dir`]); [`BundleWriter`] and
//! [`BundleReader`] write and stream JSON Lines bundles (`.zst` compressed when the name says
//! so; see `docs/bundle-format.md`); [`write_har`] exports HTTP exchanges as HAR 1.2.
//!
//! The bundle is the portable, versioned contract; sled's on-disk format is not.

mod binary;
mod bundle;
mod codec;
mod db;
mod error;
mod har;
mod lock;
mod task;
mod topology;

pub use bundle::{
    host_name, BundleHeader, BundleReader, BundleWriter, BUNDLE_FORMAT, BUNDLE_OLDEST_VERSION,
    BUNDLE_VERSION, MAX_LINE_BYTES,
};
pub use db::{
    default_data_dir, Appender, ExchangeId, ExchangeQuery, ImportSummary, Retention, Store,
    StoreOptions, TaskUsage, STORE_FORMAT_VERSION,
};
pub use error::{BundleError, StoreError};
pub use har::write_har;
pub use task::{TaskId, TaskRecord, TaskSpec, TaskState, TaskStats};
pub use topology::TopologyEdge;

// The daemon shares one store between threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Store>();
    fn sendable<T: Send>() {}
    sendable::<BundleReader>();
};
