//! Kernel socket capture: loads the eBPF object, reads its ring buffer without busy polling
//! (tokio `AsyncFd`), keeps the connection table and reassembles each direction of each
//! connection by byte position into [`StreamEvent`]s with explicit gaps.

mod config;
mod conns;
mod error;
mod load;
mod reassembly;
mod ring;
mod stats;

pub use config::CaptureConfig;
pub use error::CaptureError;
pub use load::Capture;
pub use stats::{CaptureStats, KernelLosses};
