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
    fn toml_round_trip_with_defaults() {
        let c: CaptureConfig = serde_json::from_str(r#"{"ports":[80]}"#).expect("parses");
        assert_eq!(c.ports, vec![80]);
        assert_eq!(c.chunk_bytes, 16 * 1024);
    }
}
