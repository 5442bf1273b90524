use serde::{Deserialize, Serialize};

/// What the kernel side captures. The same struct serves the config file and the CLI flags.
///
/// Empty allow-lists mean "everything". The recorder's own process is always excluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Bytes copied per syscall at most; the rest of a larger read/write is a counted gap.
    /// Clamped to 1 MiB (64 chunks of 16 KiB), the most one syscall can emit.
    pub max_bytes_per_syscall: u32,
    /// Payload bytes per ring-buffer event (1..=16384).
    pub chunk_bytes: u32,
    /// Ring buffer size in bytes (a power of two, at least one page; rounded up).
    pub ring_buffer_bytes: u32,
    /// Only these processes (tgids).
    pub pids: Vec<u32>,
    /// Only these cgroup v2 ids.
    pub cgroups: Vec<u64>,
    /// Only connections whose local or remote port is one of these.
    pub ports: Vec<u16>,
    /// Loopback de-duplication in the kernel (off by default; also settable at run time with
    /// [`crate::Capture::set_loopback_dedup`]).
    ///
    /// A loopback connection (peer `127.0.0.0/8`, `::1` or `::ffff:127.x.y.z`) whose *both*
    /// ends are captured would be copied twice. With this on, the server end (the accepted
    /// socket) is copied as usual, and the **client end produces only
    /// [`crate::StreamEvent::Opened`] (role `Client`) and [`crate::StreamEvent::Closed`], no
    /// `Data` and no `Gap` events**, while its server end is being captured; the bytes it
    /// leaves out are counted in [`crate::CaptureStats::dedup_bytes`] (and
    /// [`crate::KernelLosses::dedup_bytes`] for the kernel's count), never reported as a gap.
    ///
    /// The client end copies (and so produces `Data` as without dedup) whenever the server end
    /// might not have the bytes: the server end is not captured (filtered out by pid, cgroup
    /// or port, or not on this host); bytes the client end *receives* before its server end
    /// moved any byte by a supported syscall; bytes it *sends* before that when a pid or
    /// cgroup filter is set; and, from then on, a direction in which the server end moved
    /// bytes by another path (sendfile/splice: an `OtherPath` gap there, whose bytes the
    /// client end then delivers itself). Bytes the server reads by such a path after the
    /// client end skipped them stay an `OtherPath` gap on the server end (counted, not
    /// silent); a server whose very first bytes on the connection move by splice is not seen
    /// at all (as without dedup), so the client's bytes before that are lost uncounted. A
    /// consumer that keeps, for loopback connections, the server end's exchanges and drops
    /// the client end's (the rule the recorder already follows) gets each exchange once.
    /// Only peers `127.0.0.0/8`, `::1` and `::ffff:127.x.y.z` are deduplicated, not a
    /// connection to the host's own non-loopback address.
    pub loopback_dedup: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            max_bytes_per_syscall: 256 * 1024,
            chunk_bytes: 16 * 1024,
            ring_buffer_bytes: 16 * 1024 * 1024,
            pids: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            loopback_dedup: false,
        }
    }
}

impl CaptureConfig {
    /// The per-syscall cap as the kernel applies it.
    #[must_use]
    pub fn effective_cap(&self) -> u32 {
        let max =
            u32::try_from(deetune_ebpf::CHUNK_MAX * deetune_ebpf::CHUNKS_MAX).unwrap_or(u32::MAX);
        self.max_bytes_per_syscall.min(max)
    }

    /// The chunk size as the kernel applies it.
    #[must_use]
    pub fn effective_chunk(&self) -> u32 {
        let max = u32::try_from(deetune_ebpf::CHUNK_MAX).unwrap_or(u32::MAX);
        self.chunk_bytes.clamp(1, max)
    }

    /// Ring-buffer bytes a CPU writes between two kernel wake-ups of the reader: the kernel
    /// forces a wake-up when one CPU's data events cross a multiple of this (in between, the
    /// reader drains on its timer). An eighth of the ring's share per CPU, as a power of two,
    /// between 64 KiB (or less for a ring under 1 MiB) and a sixteenth of the ring: 1 MiB for
    /// the default 16 MiB ring on 2 CPUs.
    /// However far behind the reader is, it is woken again before the ring holds
    /// `cpus` × this more bytes, which leaves room for several wake-ups before the ring fills.
    #[must_use]
    pub fn wake_bytes(&self, cpus: usize) -> u64 {
        let ring = u64::from(self.effective_ring_bytes());
        let cpus = u64::try_from(cpus.max(1)).unwrap_or(u64::MAX);
        let share = (ring / cpus.saturating_mul(8)).max(1);
        // The largest power of two not above the share.
        let pow = 1u64 << (63 - share.leading_zeros());
        let most = (ring / 16).max(1);
        pow.clamp(most.min(64 * 1024), most)
    }

    /// The ring buffer size handed to the kernel: a power of two of at least 4 KiB.
    #[must_use]
    pub fn effective_ring_bytes(&self) -> u32 {
        self.ring_buffer_bytes
            .max(4096)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps() {
        let c = CaptureConfig {
            max_bytes_per_syscall: u32::MAX,
            chunk_bytes: 0,
            ring_buffer_bytes: 5000,
            ..CaptureConfig::default()
        };
        assert_eq!(c.effective_cap(), 1024 * 1024);
        assert_eq!(c.effective_chunk(), 1);
        assert_eq!(c.effective_ring_bytes(), 8192);
    }

    #[test]
    fn wake_bytes_leave_room_for_every_cpu() {
        let c = CaptureConfig::default(); // 16 MiB ring
        assert_eq!(c.wake_bytes(2), 1024 * 1024);
        assert_eq!(c.wake_bytes(1), 1024 * 1024); // at most a sixteenth of the ring
        assert_eq!(c.wake_bytes(0), 1024 * 1024);
        assert_eq!(c.wake_bytes(3), 512 * 1024);
        assert_eq!(c.wake_bytes(32), 64 * 1024);
        assert_eq!(c.wake_bytes(64), 64 * 1024);
        assert_eq!(c.wake_bytes(100_000), 64 * 1024);
        let small = CaptureConfig {
            ring_buffer_bytes: 4096,
            ..CaptureConfig::default()
        };
        assert_eq!(small.wake_bytes(2), 256);
        for cpus in 1..=256 {
            let w = c.wake_bytes(cpus);
            assert!(w.is_power_of_two());
            let n = u64::try_from(cpus).expect("small");
            assert!(w * n <= u64::from(c.effective_ring_bytes()) / 8 || w == 64 * 1024);
        }
    }

    #[test]
    fn toml_round_trip_with_defaults() {
        let c: CaptureConfig = serde_json::from_str(r#"{"ports":[80]}"#).expect("parses");
        assert_eq!(c.ports, vec![80]);
        assert_eq!(c.chunk_bytes, 16 * 1024);
    }
}
