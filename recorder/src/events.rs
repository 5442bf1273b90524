//! What the capture hands the rest of the recorder: connections and their two byte streams,
//! in order, with explicit gaps. Produced by the capture core (kernel events → connection
//! table → per-direction reassembly), consumed by the pipeline (decoders, topology, tasks).
//! A future pcap importer feeds the same events.

use std::net::SocketAddr;

use deetune_protocols::{Direction, Role};

/// A connection the capture saw, from the point of view of the local process that owns the
/// socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Recorder-unique id (a new id when an fd is reused: the generation is folded in).
    pub id: u64,
    /// Process owning the socket.
    pub pid: u32,
    /// Its `comm`.
    pub comm: String,
    /// Its cgroup v2 id.
    pub cgroup_id: u64,
    /// Whether the process connected (client) or accepted (server); guessed from ports when
    /// the connection predates the capture.
    pub role: Role,
    /// The socket's own address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// When it was first seen (Unix ns).
    pub opened_ns: u64,
}

/// Why bytes are missing from a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The syscall moved more bytes than the per-syscall capture cap.
    OverCap,
    /// The ring buffer had no room for the event.
    RingBufferFull,
    /// The kernel could not copy the user buffer.
    ReadFailed,
    /// Bytes never arrived in user space in time (lost events, counted by the kernel).
    Timeout,
    /// Bytes moved by a path the capture does not copy (sendfile, splice, io_uring,
    /// sendmmsg/recvmmsg): the position advanced without data.
    OtherPath,
}

/// One event of the ordered, reassembled stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A connection was seen for the first time.
    Opened(ConnInfo),
    /// Bytes of one direction, in order. `Request` is client → server whatever the role of
    /// the local socket.
    Data {
        /// Connection id.
        conn: u64,
        /// Direction relative to the connection.
        dir: Direction,
        /// When the syscall ran (Unix ns).
        ts_ns: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Bytes of one direction that were lost.
    Gap {
        /// Connection id.
        conn: u64,
        /// Direction.
        dir: Direction,
        /// When (Unix ns).
        ts_ns: u64,
        /// How many bytes.
        len: u64,
        /// Why.
        reason: GapReason,
    },
    /// The connection was closed by the local process.
    Closed {
        /// Connection id.
        conn: u64,
        /// When (Unix ns).
        ts_ns: u64,
    },
}
