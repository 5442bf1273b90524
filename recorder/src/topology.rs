//! The topology aggregator: every exchange, recorded or not, adds to the edge client service →
//! server service (port, protocol) it was seen on. Cheap: a hash lookup and a histogram bump.

use std::collections::HashMap;

use deetune_protocols::{Exchange, MysqlResponse, Protocol, RespValue, Response};
use deetune_store::TopologyEdge;

/// Identifies an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// Client service.
    pub client: String,
    /// Server service.
    pub server: String,
    /// Server port.
    pub port: u16,
    /// Protocol (none when it was not recognised).
    pub protocol: Option<Protocol>,
}

/// Log-linear latency histogram in microseconds: 8 sub-buckets per power of two (≤ 12.5 %
/// error), fixed size.
#[derive(Debug, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    total: u64,
}

const SUB: u32 = 8;

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: vec![0; (64 * SUB) as usize],
            total: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < u64::from(SUB) {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros(); // ≥ 3
        let mantissa = (us >> (exp - 3)) & u64::from(SUB - 1);
        ((exp - 2) * SUB) as usize + mantissa as usize
    }

    /// Lower bound of a bucket.
    fn value(index: usize) -> u64 {
        let i = index as u64;
        let sub = u64::from(SUB);
        if i < sub {
            return i;
        }
        let exp = i / sub + 2;
        let mantissa = i % sub;
        (sub + mantissa) << (exp - 3)
    }

    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.total += 1;
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "rank within total"
        )]
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::value(i);
            }
        }
        0
    }
}

#[derive(Debug, Clone)]
struct EdgeAcc {
    edge: TopologyEdge,
    latency: Histogram,
}

/// Most edges kept apart; see [`TopologyAggregator`].
pub const MAX_EDGES: usize = 10_000;

/// Client name of the edges folded together past [`MAX_EDGES`].
pub const OTHER: &str = "(other)";

/// Aggregates edges in memory (at most [`MAX_EDGES`] distinct ones, then per-server
/// `(other)` edges). A connection looks its edge up once ([`Self::edge_id`]) and then counts
/// through the [`EdgeId`]: no hashing or string work per exchange.
#[derive(Debug, Default)]
pub struct TopologyAggregator {
    index: HashMap<EdgeKey, usize>,
    edges: Vec<EdgeAcc>,
}

/// A handle on one edge of a [`TopologyAggregator`] (valid for that aggregator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeId(usize);

/// Whether an exchange is an error: HTTP 5xx, a Redis error, a MySQL ERR.
#[must_use]
pub fn is_error(ex: &Exchange) -> bool {
    match &ex.response {
        Some(Response::Http(r)) => r.status >= 500,
        Some(Response::Redis(RespValue::Error(_) | RespValue::BulkError(_))) => true,
        Some(Response::Mysql(MysqlResponse::Err { .. })) => true,
        _ => false,
    }
}

impl TopologyAggregator {
    /// Starts from persisted edges (a daemon restart keeps counting).
    #[must_use]
    pub fn from_edges(edges: Vec<TopologyEdge>) -> Self {
        let mut t = Self::default();
        for e in edges {
            let key = EdgeKey {
                client: e.client.clone(),
                server: e.server.clone(),
                port: e.port,
                protocol: e.protocol,
            };
            if let Some(&i) = t.index.get(&key) {
                t.edges[i].edge = e;
                continue;
            }
            t.index.insert(key, t.edges.len());
            t.edges.push(EdgeAcc {
                edge: e,
                latency: Histogram::new(),
            });
        }
        t
    }

    /// The edge of `key`, created when new. Bounded memory: past [`MAX_EDGES`], new edges
    /// fold into one per server under the client name [`OTHER`].
    pub fn edge_id(&mut self, key: &EdgeKey, now_ms: u64) -> EdgeId {
        if let Some(&i) = self.index.get(key) {
            return EdgeId(i);
        }
        let folded;
        let key = if self.edges.len() >= MAX_EDGES {
            folded = EdgeKey {
                client: OTHER.to_owned(),
                ..key.clone()
            };
            if let Some(&i) = self.index.get(&folded) {
                return EdgeId(i);
            }
            &folded
        } else {
            key
        };
        let i = self.edges.len();
        self.index.insert(key.clone(), i);
        self.edges.push(EdgeAcc {
            edge: TopologyEdge {
                client: key.client.clone(),
                server: key.server.clone(),
                port: key.port,
                protocol: key.protocol,
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                ..TopologyEdge::default()
            },
            latency: Histogram::new(),
        });
        EdgeId(i)
    }

    fn acc(&mut self, id: EdgeId, now_ms: u64) -> Option<&mut EdgeAcc> {
        let acc = self.edges.get_mut(id.0)?;
        acc.edge.last_seen_ms = acc.edge.last_seen_ms.max(now_ms);
        Some(acc)
    }

    /// A connection on `key`.
    pub fn connection(&mut self, key: &EdgeKey, now_ms: u64) {
        let id = self.edge_id(key, now_ms);
        self.connection_on(id, now_ms);
    }

    /// A connection on the edge `id`.
    pub fn connection_on(&mut self, id: EdgeId, now_ms: u64) {
        if let Some(a) = self.acc(id, now_ms) {
            a.edge.connections += 1;
        }
    }

    /// Bytes on `key`.
    pub fn bytes(&mut self, key: &EdgeKey, sent: u64, received: u64, now_ms: u64) {
        let id = self.edge_id(key, now_ms);
        self.bytes_on(id, sent, received, now_ms);
    }

    /// Bytes on the edge `id`.
    pub fn bytes_on(&mut self, id: EdgeId, sent: u64, received: u64, now_ms: u64) {
        if let Some(a) = self.acc(id, now_ms) {
            a.edge.bytes_sent += sent;
            a.edge.bytes_received += received;
        }
    }

    /// An exchange on `key`.
    pub fn exchange(&mut self, key: &EdgeKey, ex: &Exchange, now_ms: u64) {
        let id = self.edge_id(key, now_ms);
        self.exchange_on(id, ex, now_ms);
    }

    /// An exchange on the edge `id`.
    pub fn exchange_on(&mut self, id: EdgeId, ex: &Exchange, now_ms: u64) {
        let Some(acc) = self.acc(id, now_ms) else {
            return;
        };
        acc.edge.exchanges += 1;
        if is_error(ex) {
            acc.edge.errors += 1;
        }
        if let Some(ns) = ex.timing.latency_ns() {
            acc.latency.record(ns / 1000);
        }
    }

    /// The edges, sorted by client, server, port.
    #[must_use]
    pub fn edges(&self) -> Vec<TopologyEdge> {
        let mut v: Vec<_> = self
            .edges
            .iter()
            .map(|a| {
                let mut e = a.edge.clone();
                // After a restart the histogram starts empty: keep the persisted figures.
                if a.latency.total > 0 {
                    e.p50_us = a.latency.quantile(0.5);
                    e.p99_us = a.latency.quantile(0.99);
                }
                e
            })
            .collect();
        v.sort_by(|a, b| (&a.client, &a.server, a.port).cmp(&(&b.client, &b.server, b.port)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_bounded() {
        let mut t = TopologyAggregator::default();
        for i in 0..(MAX_EDGES + 50) {
            let key = EdgeKey {
                client: format!("10.0.{}.{}", i / 256, i % 256),
                server: "db".into(),
                port: 5432,
                protocol: None,
            };
            t.connection(&key, 1);
        }
        let edges = t.edges();
        assert_eq!(edges.len(), MAX_EDGES + 1);
        let other = edges
            .iter()
            .find(|e| e.client == OTHER)
            .expect("folded edge");
        assert_eq!(other.connections, 50);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((440..=500).contains(&p50), "{p50}");
        assert!((870..=990).contains(&p99), "{p99}");
        for i in 0..200 {
            assert!(Histogram::value(i) <= Histogram::value(i + 1));
            assert_eq!(Histogram::index(Histogram::value(i)), i);
        }
    }
}
