use std::path::PathBuf;

/// Why the capture could not start or be changed. Every variant names what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Not root and missing the capabilities to load eBPF programs.
    #[error(
        "capturing needs root (or CAP_BPF + CAP_PERFMON): running as uid {euid} without {missing}; \
         run with sudo"
    )]
    NotPermitted {
        /// Effective uid.
        euid: u32,
        /// The missing capabilities, e.g. `CAP_BPF, CAP_PERFMON`.
        missing: String,
    },
    /// The kernel exposes no BTF, which the programs need (CO-RE).
    #[error("the kernel has no BTF at {path} (CONFIG_DEBUG_INFO_BTF=y is needed)")]
    NoBtf {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The kernel's BTF exists but could not be read or parsed.
    #[error("the kernel's BTF at {path} could not be read: {detail}")]
    BadBtf {
        /// The file read.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// tracefs is neither mounted nor mountable.
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed")]
    Tracefs {
        /// The mount error.
        #[source]
        source: std::io::Error,
    },
    /// A tracepoint the capture needs does not exist on this kernel.
    #[error("the kernel has no tracepoint {category}:{name} (or it cannot be attached)")]
    TracepointMissing {
        /// Tracepoint category, e.g. `sock`.
        category: String,
        /// Tracepoint name.
        name: String,
        /// What aya said.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The kernel verifier rejected a program.
    #[error("the kernel verifier rejected program {program}:\n{log}")]
    Verifier {
        /// Program name.
        program: String,
        /// The verifier log.
        log: String,
    },
    /// The object could not be loaded (maps, relocations).
    #[error("loading the eBPF object failed")]
    Load {
        /// What aya said.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A kernel map was missing or could not be read/written.
    #[error("eBPF map {map}: {op} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// What aya said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Registering the ring buffer with the async runtime failed (no tokio runtime?).
    #[error("watching the ring buffer failed (call inside a tokio runtime)")]
    Runtime {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Too many entries for an in-kernel allow-list.
    #[error("the {list} allow-list holds at most {max} entries, got {got}")]
    FilterTooLong {
        /// Which list.
        list: &'static str,
        /// Its limit.
        max: usize,
        /// Requested size.
        got: usize,
    },
}
