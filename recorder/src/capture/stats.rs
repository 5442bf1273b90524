use serde::Serialize;

/// Losses the kernel counted (per-CPU counters summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KernelLosses {
    /// Bytes beyond the per-syscall cap (or the iovec entries looked at).
    pub over_cap_bytes: u64,
    /// Data events that found no room in the ring buffer.
    pub ring_full_events: u64,
    /// Payload bytes of those.
    pub ring_full_bytes: u64,
    /// Bytes the kernel could not copy from the process's memory.
    pub read_failed_bytes: u64,
    /// Unused since the capture hooks socket tracepoints (always 0; kept for the JSON shape).
    pub active_table_full: u64,
    /// Connections not tracked because the connection table was full.
    pub conn_table_full: u64,
    /// Open/close/gap events that found no room in the ring buffer.
    pub control_events_lost: u64,
    /// Bytes of captured connections moved by a path the capture does not copy (sendfile,
    /// splice, io_uring, sendmmsg, kernel threads); reported as gaps.
    pub other_path_bytes: u64,
    /// Not a loss: loopback dedup ([`crate::CaptureConfig::loopback_dedup`]) left these
    /// client-end bytes to the captured server end of the same connection.
    pub dedup_bytes: u64,
    /// Bytes moved on a socket already closed that no tracked connection had (e.g. a
    /// request read after the peer's reset): not captured, so that no kernel entry outlives
    /// its socket.
    pub after_close_bytes: u64,
    /// Always 0 since connections live in socket storage (kept for the JSON shape): a
    /// skipped close can no longer leave state behind; see `skipped_runs`.
    pub missed_closes: u64,
    /// Runs of the capture's kernel programs the kernel skipped (it does not run a program
    /// nested in itself on one CPU; the programs' `recursion_misses`). A skipped state run
    /// may be a connection end user space does not see; a skipped data run moved bytes whose
    /// position was not advanced, which no gap can show: only this count does.
    pub skipped_runs: u64,
}

impl KernelLosses {
    /// Payload bytes lost for any reason.
    #[must_use]
    pub fn lost_bytes(&self) -> u64 {
        self.over_cap_bytes
            + self.ring_full_bytes
            + self.read_failed_bytes
            + self.other_path_bytes
            + self.after_close_bytes
    }
}

/// Counts of a running capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaptureStats {
    /// Events the kernel wrote to the ring buffer.
    pub kernel_events: u64,
    /// Payload bytes the kernel wrote to the ring buffer.
    pub kernel_bytes: u64,
    /// Ring-buffer records read by user space.
    pub records: u64,
    /// Stream events handed out ([`crate::StreamEvent`]).
    pub events: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connections closed.
    pub closed: u64,
    /// Payload bytes handed out.
    pub bytes: u64,
    /// Of those, client → server.
    pub request_bytes: u64,
    /// Of those, server → client.
    pub response_bytes: u64,
    /// Gap events handed out.
    pub gaps: u64,
    /// Bytes covered by those gaps.
    pub gap_bytes: u64,
    /// Records for a connection whose open event was lost (dropped).
    pub orphan_records: u64,
    /// Loopback dedup: client-end bytes skipped in user space because the server end of the
    /// same connection carries them (not a gap; see [`crate::CaptureConfig::loopback_dedup`]).
    pub dedup_bytes: u64,
    /// Records too short or of an unknown kind (dropped).
    pub bad_records: u64,
    /// What the kernel counted as lost.
    pub kernel: KernelLosses,
}
