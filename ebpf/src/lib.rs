//! The deetune kernel programs: the compiled eBPF object ([`object`]) and the Rust mirror of
//! its ABI (`ebpf/include/deetune_abi.h`): ring-buffer events ([`DataEvent`], [`OpenEvent`],
//! [`GapEvent`], [`CloseEvent`]), config and stats slots. The object is built by
//! `ci/build-ebpf` from `ebpf/src/capture.bpf.c` and committed, so building needs no clang.
//!
//! Every struct is `#[repr(C)]` with compile-time size and offset assertions: a change on one
//! side only fails the build.

use core::mem::{offset_of, size_of};

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../deetune.bpf.o"));

/// The compiled eBPF object (ELF), 8-byte aligned as loaders expect.
#[must_use]
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// Largest payload of one data event.
pub const CHUNK_MAX: usize = 16384;
/// Most chunks one syscall emits (the per-syscall cap is at most `CHUNK_MAX * CHUNKS_MAX`).
pub const CHUNKS_MAX: usize = 64;
/// Most iovec entries looked at per vectored syscall; the rest is reported as a gap.
pub const IOV_MAX: usize = 16;

/// `enum dt_event_kind`.
pub mod kind {
    /// A connection seen for the first time.
    pub const OPEN: u32 = 1;
    /// Payload bytes.
    pub const DATA: u32 = 2;
    /// Missing bytes.
    pub const GAP: u32 = 3;
    /// The local process closed the fd.
    pub const CLOSE: u32 = 4;
}

/// `enum dt_dir`: direction seen from the local socket.
pub mod dir {
    /// The process wrote.
    pub const SEND: u8 = 0;
    /// The process read.
    pub const RECV: u8 = 1;
}

/// `enum dt_role`.
pub mod role {
    /// Neither connect nor accept was seen (the socket predates the capture).
    pub const UNKNOWN: u8 = 0;
    /// `connect()`.
    pub const CLIENT: u8 = 1;
    /// `accept()`/`accept4()`.
    pub const SERVER: u8 = 2;
}

/// `enum dt_gap_reason`.
pub mod gap {
    /// Beyond the per-syscall cap.
    pub const OVER_CAP: u8 = 1;
    /// No room in the ring buffer.
    pub const RINGBUF_FULL: u8 = 2;
    /// The user buffer could not be read.
    pub const READ_FAILED: u8 = 3;
    /// Beyond the iovec entries looked at.
    pub const IOV_LIMIT: u8 = 4;
    /// Moved by a path the capture does not copy (sendfile, splice, io_uring, sendmmsg,
    /// a kernel thread).
    pub const OTHER_PATH: u8 = 5;
    /// Loopback dedup: not copied on this (client) end because the captured server end of
    /// the same connection has the bytes. User space skips them without a gap.
    pub const PEER_COPIED: u8 = 6;
}

/// `enum dt_syscall`: the syscall that moved the bytes.
pub mod syscall {
    /// `read`.
    pub const READ: u8 = 1;
    /// `write`.
    pub const WRITE: u8 = 2;
    /// `readv`.
    pub const READV: u8 = 3;
    /// `writev`.
    pub const WRITEV: u8 = 4;
    /// `sendto`.
    pub const SENDTO: u8 = 5;
    /// `recvfrom`.
    pub const RECVFROM: u8 = 6;
    /// `sendmsg`.
    pub const SENDMSG: u8 = 7;
    /// `recvmsg`.
    pub const RECVMSG: u8 = 8;
}

/// `enum dt_config_slot`: indices into the `config` map's single `[u64; CONFIG_SLOTS]` value.
pub mod config {
    /// Never capture this tgid (the recorder itself).
    pub const SELF_TGID: usize = 0;
    /// Non-zero: only tgids in `filter_pids`.
    pub const FILTER_PIDS: usize = 1;
    /// Non-zero: only cgroup ids in `filter_cgroups`.
    pub const FILTER_CGROUPS: usize = 2;
    /// Non-zero: only connections with a local or remote port in `filter_ports`.
    pub const FILTER_PORTS: usize = 3;
    /// Bytes copied per syscall at most.
    pub const CAP_BYTES: usize = 4;
    /// Payload bytes per data event.
    pub const CHUNK_BYTES: usize = 5;
    /// Non-zero: loopback client ends of captured server ends copy no payload.
    pub const LOOPBACK_DEDUP: usize = 6;
    /// Bumped on every config write: the kernel caches filter verdicts per generation.
    pub const GEN: usize = 7;
    /// Force a wake-up of the reader when a CPU's produced ring bytes cross a multiple of this
    /// (0: 1 MiB).
    pub const WAKE_BYTES: usize = 8;
}
/// Number of `u64` slots in the config value.
pub const CONFIG_SLOTS: usize = 16;

/// `enum dt_stat_slot`: indices into the per-CPU `stats` map.
pub mod stat {
    /// Events written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Payload bytes written to the ring buffer.
    pub const BYTES: u32 = 1;
    /// Bytes beyond the per-syscall cap or iovec limit.
    pub const GAP_OVER_CAP: u32 = 2;
    /// Data events that found no room in the ring buffer.
    pub const RB_FULL_EVENTS: u32 = 3;
    /// Payload bytes of those.
    pub const RB_FULL_BYTES: u32 = 4;
    /// Bytes the kernel could not copy from user memory.
    pub const READ_FAILED: u32 = 5;
    /// Unused since the capture hooks socket tracepoints (always 0).
    pub const ACTIVE_FULL: u32 = 6;
    /// Connections not tracked because the `conns` map was full.
    pub const CONN_FULL: u32 = 7;
    /// Open, close or gap events that found no room in the ring buffer.
    pub const CONTROL_LOST: u32 = 8;
    /// Bytes of known connections moved by a path the capture does not copy.
    pub const OTHER_PATH: u32 = 9;
    /// Loopback dedup: bytes a client end did not copy because its server end has them.
    pub const DEDUP_BYTES: u32 = 10;
    /// Bytes moved on a sock already closed that no tracked connection had (e.g. a request
    /// read after the peer's reset): not captured.
    pub const AFTER_CLOSE: u32 = 11;
    /// Unused since connections live in socket storage (always 0).
    pub const STALE: u32 = 12;
}
/// Number of stats slots (`struct dt_stats`: the per-CPU `stats` map's one value).
pub const STAT_SLOTS: u32 = 16;

/// Names of the kernel maps user space touches.
pub mod maps {
    /// Ring buffer of events.
    pub const EVENTS: &str = "events";
    /// `[u64; CONFIG_SLOTS]` at index 0.
    pub const CONFIG: &str = "config";
    /// Per-CPU `[u64; STAT_SLOTS]` counters at index 0.
    pub const STATS: &str = "stats";
    /// `u32` tgid → `u8`.
    pub const FILTER_PIDS: &str = "filter_pids";
    /// `u64` cgroup id → `u8`.
    pub const FILTER_CGROUPS: &str = "filter_cgroups";
    /// `u16` port → `u8`.
    pub const FILTER_PORTS: &str = "filter_ports";
}

/// The tracepoints the object attaches to, as BTF-typed tracepoints (`tp_btf`): (program name,
/// category, tracepoint). Only socket tracepoints: no syscall tracepoint, so syscalls that move
/// no bytes on a socket pay nothing.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("dt_sock_send", "sock", "sock_send_length"),
    ("dt_sock_recv", "sock", "sock_recv_length"),
    ("dt_sock_state", "sock", "inet_sock_set_state"),
];

/// `struct dt_header`: first bytes of every event.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Connection id, unique per loaded object.
    pub conn_id: u64,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
}

/// `struct dt_open_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenEvent {
    /// Common header.
    pub hdr: Header,
    /// cgroup v2 id of the process.
    pub cgroup_id: u64,
    /// The fd.
    pub fd: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// One of [`role`].
    pub role: u8,
    /// Padding.
    pub _pad0: u8,
    /// Local port (host order).
    pub lport: u16,
    /// Remote port (host order).
    pub rport: u16,
    /// Padding.
    pub _pad1: u32,
    /// Local address, network order (IPv4 in the first 4 bytes).
    pub laddr: [u8; 16],
    /// Remote address.
    pub raddr: [u8; 16],
    /// Process name, NUL padded.
    pub comm: [u8; 16],
}

/// `struct dt_data_event` without its payload (which follows, `len` bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataEvent {
    /// Common header.
    pub hdr: Header,
    /// Per-direction position of the first payload byte.
    pub pos: u64,
    /// Payload bytes following the struct.
    pub len: u32,
    /// One of [`dir`].
    pub dir: u8,
    /// One of [`syscall`].
    pub syscall: u8,
    /// Padding.
    pub _pad: u16,
}

/// `struct dt_gap_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapEvent {
    /// Common header.
    pub hdr: Header,
    /// Position of the first missing byte.
    pub pos: u64,
    /// Missing bytes.
    pub len: u64,
    /// One of [`dir`].
    pub dir: u8,
    /// One of [`gap`].
    pub reason: u8,
    /// Padding.
    pub _pad: [u8; 6],
}

/// `struct dt_close_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseEvent {
    /// Common header.
    pub hdr: Header,
    /// Final send position.
    pub sent: u64,
    /// Final receive position.
    pub received: u64,
}

const _: () = assert!(size_of::<Header>() == 24);
const _: () = assert!(offset_of!(Header, conn_id) == 8);
const _: () = assert!(offset_of!(Header, ts_ns) == 16);
const _: () = assert!(size_of::<OpenEvent>() == 96);
const _: () = assert!(offset_of!(OpenEvent, cgroup_id) == 24);
const _: () = assert!(offset_of!(OpenEvent, fd) == 32);
const _: () = assert!(offset_of!(OpenEvent, family) == 36);
const _: () = assert!(offset_of!(OpenEvent, role) == 38);
const _: () = assert!(offset_of!(OpenEvent, lport) == 40);
const _: () = assert!(offset_of!(OpenEvent, rport) == 42);
const _: () = assert!(offset_of!(OpenEvent, laddr) == 48);
const _: () = assert!(offset_of!(OpenEvent, raddr) == 64);
const _: () = assert!(offset_of!(OpenEvent, comm) == 80);
const _: () = assert!(size_of::<DataEvent>() == 40);
const _: () = assert!(offset_of!(DataEvent, pos) == 24);
const _: () = assert!(offset_of!(DataEvent, len) == 32);
const _: () = assert!(offset_of!(DataEvent, dir) == 36);
const _: () = assert!(offset_of!(DataEvent, syscall) == 37);
const _: () = assert!(size_of::<GapEvent>() == 48);
const _: () = assert!(offset_of!(GapEvent, pos) == 24);
const _: () = assert!(offset_of!(GapEvent, len) == 32);
const _: () = assert!(offset_of!(GapEvent, dir) == 40);
const _: () = assert!(offset_of!(GapEvent, reason) == 41);
const _: () = assert!(size_of::<CloseEvent>() == 40);
const _: () = assert!(offset_of!(CloseEvent, sent) == 24);

/// Reads a `#[repr(C)]` ABI struct from the start of `bytes` (unaligned), or `None` when
/// `bytes` is too short.
#[must_use]
pub fn read<T: Abi>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above and `T: Abi` is plain old data of integers and
    // byte arrays, valid for any bit pattern; `read_unaligned` needs no alignment.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Marker for the ABI structs: `#[repr(C)]`, integers and byte arrays only, so any bit
/// pattern is a valid value.
///
/// # Safety
/// Implement only for types made of integers and integer arrays, with no padding invariants.
pub unsafe trait Abi: Copy {}
// SAFETY: integer fields only.
unsafe impl Abi for Header {}
// SAFETY: integer fields only.
unsafe impl Abi for OpenEvent {}
// SAFETY: integer fields only.
unsafe impl Abi for DataEvent {}
// SAFETY: integer fields only.
unsafe impl Abi for GapEvent {}
// SAFETY: integer fields only.
unsafe impl Abi for CloseEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        let o = object();
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!(o.as_ptr() as usize % 8, 0);
        // e_machine == EM_BPF (247)
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247);
    }

    #[test]
    fn read_rejects_short_input() {
        assert!(read::<DataEvent>(&[0u8; 39]).is_none());
        let mut b = [0u8; 40];
        b[0] = 2;
        b[24] = 7;
        let e = read::<DataEvent>(&b).expect("long enough");
        assert_eq!(e.hdr.kind, kind::DATA);
        assert_eq!(e.pos, 7);
    }
}
