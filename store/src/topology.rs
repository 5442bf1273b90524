//! Service topology edges as persisted.

use serde::{Deserialize, Serialize};

/// One edge: client service → server service on a port and protocol, with its figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologyEdge {
    /// Client service name.
    pub client: String,
    /// Server service name.
    pub server: String,
    /// Server port.
    pub port: u16,
    /// Protocol.
    pub protocol: Option<deetune_protocols::Protocol>,
    /// Connections seen.
    pub connections: u64,
    /// Exchanges seen.
    pub exchanges: u64,
    /// Exchanges that were errors (HTTP 5xx, Redis error, MySQL ERR).
    pub errors: u64,
    /// Median latency (µs).
    pub p50_us: u64,
    /// 99th percentile latency (µs).
    pub p99_us: u64,
    /// Bytes client → server.
    pub bytes_sent: u64,
    /// Bytes server → client.
    pub bytes_received: u64,
    /// Unix ms first seen.
    pub first_seen_ms: u64,
    /// Unix ms last seen.
    pub last_seen_ms: u64,
}
