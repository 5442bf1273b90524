//! The pipeline: [`StreamEvent`]s in; per connection protocol detection, decoding, connection
//! metadata and service names, topology aggregation (every exchange), task matching and
//! redaction; `(task id, exchange)` pairs out, ready to be stored in batches.
//!
//! Loopback connections are seen from both ends. The client end of a connection to a local
//! address is held back (bounded) until the server end shows up, and then dropped as a mirror:
//! every exchange is decoded and stored once, from the server's side. When the server end
//! never shows up (its process is not captured), the held-back client end is decoded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use deetune_protocols::{
    detect, new_decoder, ConnectionMeta, DecoderConfig, Detection, Direction, Endpoint, Exchange,
    Protocol, Role, StreamDecoder,
};
use deetune_store::TaskId;
use serde::{Deserialize, Serialize};

use crate::events::{ConnInfo, GapReason, StreamEvent};
use crate::services::{canonical, EndpointFacts, ProcCache, ServiceNamer};
use crate::tasks::{Loss, PairCache, Recorded, TaskManager};
use crate::topology::{EdgeId, EdgeKey, TopologyAggregator};

/// Limits of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Decoder limits (the body cap is raised or lowered to what the running tasks ask).
    pub decoder: DecoderConfig,
    /// Bytes kept per connection while detecting its protocol.
    pub detect_bytes: usize,
    /// Bytes held back per client end of a local connection while waiting for its server end.
    pub hold_bytes: usize,
    /// How long (ms) a client end is held back at most.
    pub hold_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            decoder: DecoderConfig::default(),
            detect_bytes: 4096,
            hold_bytes: 256 << 10,
            hold_ms: 1000,
        }
    }
}

/// Counters of the pipeline (since start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineStats {
    /// Events handled.
    pub events: u64,
    /// Payload bytes handled.
    pub bytes: u64,
    /// Connections seen.
    pub connections: u64,
    /// Client ends dropped because the server end of the same loopback connection is captured.
    pub mirrored_connections: u64,
    /// Connections whose protocol was not recognised.
    pub unknown_connections: u64,
    /// Connections that looked like TLS.
    pub encrypted_connections: u64,
    /// Events for connections never opened (dropped).
    pub orphan_events: u64,
    /// Exchanges decoded.
    pub exchanges: u64,
    /// Exchanges flagged with a gap.
    pub exchanges_with_gap: u64,
    /// Gap events by reason, and lost bytes.
    pub gaps_over_cap: u64,
    /// Gaps because the ring buffer was full.
    pub gaps_ring_buffer: u64,
    /// Gaps because the kernel could not read the buffer.
    pub gaps_read_failed: u64,
    /// Gaps because bytes never arrived.
    pub gaps_timeout: u64,
    /// Gaps because bytes moved by sendfile, splice, io_uring, … (not copied).
    pub gaps_other_path: u64,
    /// Bytes lost in gaps.
    pub gap_bytes: u64,
    /// Exchanges handed to tasks to store.
    pub recorded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Client end of a local connection, waiting for the server end.
    Held,
    /// The other end of this connection is the one decoded.
    Mirror,
    /// Decoded.
    Active,
}

enum Chunk {
    Data(Direction, u64, Vec<u8>),
    Gap(Direction, u64, u64),
}

enum Decoding {
    Detecting {
        chunks: Vec<Chunk>,
        req: Vec<u8>,
        resp: Vec<u8>,
    },
    Active(Box<dyn StreamDecoder>),
    Undecodable,
}

struct Conn {
    info: ConnInfo,
    side: Side,
    held: Vec<StreamEvent>,
    held_bytes: usize,
    decoding: Decoding,
    /// Shared by every exchange of the connection.
    meta: Option<Arc<ConnectionMeta>>,
    edge: Option<EdgeId>,
    /// Which running tasks want this connection's service pair.
    pair: PairCache,
    /// Detected protocol (the edge is assigned at the first exchange, when both ends of a
    /// loopback connection are known: a MySQL server speaks before its client is seen).
    protocol: Option<Protocol>,
    pending_sent: u64,
    pending_received: u64,
    loss: Loss,
    seq: u64,
    /// Data or a gap reached this end (with the kernel's loopback dedup a client end whose
    /// server end is captured never carries any).
    carried: bool,
}

type Tuple = (SocketAddr, SocketAddr);

/// Hashes the recorder's own connection ids (not attacker-chosen) with one multiply instead
/// of SipHash: the connection table is looked up on every event.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

fn is_local(info: &ConnInfo) -> bool {
    let r = canonical(info.remote.ip());
    r.is_loopback() || r == canonical(info.local.ip()) || r.is_unspecified()
}

/// The pipeline.
pub struct Pipeline {
    config: PipelineConfig,
    namer: ServiceNamer,
    procs: ProcCache,
    /// Boxed: a connection is taken out of the table and put back per event (a pointer move).
    conns: IdMap<Box<Conn>>,
    by_tuple: HashMap<Tuple, u64>,
    /// Running tasks.
    pub tasks: TaskManager,
    /// The topology.
    pub topology: TopologyAggregator,
    stats: PipelineStats,
    out: Recorded,
    scratch: Vec<Exchange>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn now_ms_of(ts_ns: u64) -> u64 {
    ts_ns / 1_000_000
}

impl Pipeline {
    /// A pipeline with these service rules and tasks.
    #[must_use]
    pub fn new(
        config: PipelineConfig,
        namer: ServiceNamer,
        tasks: TaskManager,
        topology: TopologyAggregator,
    ) -> Self {
        Self {
            config,
            namer,
            procs: ProcCache::default(),
            conns: IdMap::default(),
            by_tuple: HashMap::new(),
            tasks,
            topology,
            stats: PipelineStats::default(),
            out: Recorded::default(),
            scratch: Vec::new(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Open connections.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// The exchanges to store since the last call, each with its task.
    pub fn take_output(&mut self) -> Vec<(TaskId, Exchange)> {
        self.take_recorded().into_pairs()
    }

    /// The exchanges to store since the last call, in runs of the same task (what the
    /// engine hands to its sink).
    pub fn take_recorded(&mut self) -> Recorded {
        // The next batch's runs start with room for as many: no reallocation (and move of
        // every exchange so far) while they fill.
        let room = self.out.len().max(16);
        std::mem::replace(&mut self.out, Recorded::with_room(room))
    }

    /// Whether output is waiting.
    #[must_use]
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Handles one event.
    pub fn handle(&mut self, ev: StreamEvent) {
        self.stats.events += 1;
        match ev {
            StreamEvent::Opened(info) => self.opened(info),
            StreamEvent::Data {
                conn,
                dir,
                ts_ns,
                bytes,
            } => {
                self.stats.bytes += bytes.len() as u64;
                self.data_or_gap(
                    conn,
                    StreamEvent::Data {
                        conn,
                        dir,
                        ts_ns,
                        bytes,
                    },
                );
            }
            StreamEvent::Gap {
                conn,
                dir,
                ts_ns,
                len,
                reason,
            } => {
                self.stats.gap_bytes += len;
                match reason {
                    GapReason::OverCap => self.stats.gaps_over_cap += 1,
                    GapReason::RingBufferFull => self.stats.gaps_ring_buffer += 1,
                    GapReason::ReadFailed => self.stats.gaps_read_failed += 1,
                    GapReason::Timeout => self.stats.gaps_timeout += 1,
                    GapReason::OtherPath => self.stats.gaps_other_path += 1,
                }
                self.data_or_gap(
                    conn,
                    StreamEvent::Gap {
                        conn,
                        dir,
                        ts_ns,
                        len,
                        reason,
                    },
                );
            }
            StreamEvent::Closed { conn, ts_ns } => self.closed(conn, ts_ns),
        }
    }

    /// Periodic work: releases client ends held too long, stops tasks past their duration.
    pub fn tick(&mut self, now_ms: u64) {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.side == Side::Held && now_ms >= now_ms_of(c.info.opened_ns) + self.config.hold_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.release(id);
        }
        self.tasks.tick(now_ms);
    }

    /// Ends every connection (decoders flush what they hold), e.g. at shutdown.
    pub fn close_all(&mut self, ts_ns: u64) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.closed(id, ts_ns);
        }
    }

    fn opened(&mut self, mut info: ConnInfo) {
        info.local = canon(info.local);
        info.remote = canon(info.remote);
        self.stats.connections += 1;
        if let Some(old) = self.conns.remove(&info.id) {
            self.by_tuple.remove(&(old.info.local, old.info.remote));
        }
        let peer = self.by_tuple.get(&(info.remote, info.local)).copied();
        let side = match info.role {
            Role::Server => {
                match peer.and_then(|p| self.conns.get_mut(&p)) {
                    Some(p) if p.side == Side::Held => {
                        p.side = Side::Mirror;
                        p.held.clear();
                        p.held_bytes = 0;
                        self.stats.mirrored_connections += 1;
                        Side::Active
                    }
                    // The client end was released (its hold expired) but carried nothing: with
                    // the kernel's loopback dedup its bytes come from this end, keep this one.
                    Some(p) if p.side == Side::Active && !p.carried => {
                        p.side = Side::Mirror;
                        self.stats.mirrored_connections += 1;
                        Side::Active
                    }
                    // The client end was already decoded (it waited too long): keep it.
                    Some(p) if p.side == Side::Active => {
                        self.stats.mirrored_connections += 1;
                        Side::Mirror
                    }
                    _ => Side::Active,
                }
            }
            Role::Client if peer.is_some() => {
                self.stats.mirrored_connections += 1;
                Side::Mirror
            }
            Role::Client if is_local(&info) => Side::Held,
            Role::Client => Side::Active,
        };
        self.by_tuple.insert((info.local, info.remote), info.id);
        self.conns.insert(
            info.id,
            Box::new(Conn {
                info,
                side,
                held: Vec::new(),
                held_bytes: 0,
                decoding: Decoding::Detecting {
                    chunks: Vec::new(),
                    req: Vec::new(),
                    resp: Vec::new(),
                },
                meta: None,
                edge: None,
                pair: PairCache::default(),
                protocol: None,
                pending_sent: 0,
                pending_received: 0,
                loss: Loss::None,
                seq: 0,
                carried: false,
            }),
        );
    }

    fn data_or_gap(&mut self, id: u64, ev: StreamEvent) {
        let Some(c) = self.conns.get_mut(&id) else {
            self.stats.orphan_events += 1;
            return;
        };
        c.carried = true;
        match c.side {
            Side::Mirror => {}
            Side::Held => {
                if let StreamEvent::Data { bytes, .. } = &ev {
                    c.held_bytes += bytes.len();
                }
                c.held.push(ev);
                if c.held_bytes > self.config.hold_bytes {
                    self.release(id);
                }
            }
            Side::Active => self.process(id, ev),
        }
    }

    /// A held client end becomes the decoded one.
    fn release(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.side != Side::Held {
            return;
        }
        c.side = Side::Active;
        let held = std::mem::take(&mut c.held);
        c.held_bytes = 0;
        for ev in held {
            self.process(id, ev);
        }
    }

    fn closed(&mut self, id: u64, ts_ns: u64) {
        self.release(id);
        let Some(mut c) = self.conns.remove(&id) else {
            self.stats.orphan_events += 1;
            return;
        };
        if self.by_tuple.get(&(c.info.local, c.info.remote)) == Some(&id) {
            self.by_tuple.remove(&(c.info.local, c.info.remote));
        }
        if c.side != Side::Active {
            return;
        }
        if let Decoding::Detecting { .. } = c.decoding {
            // Never recognised: the bytes still count in the topology.
            self.give_up_detection(&mut c, ts_ns);
        }
        if let Decoding::Active(d) = &mut c.decoding {
            d.close(ts_ns);
        }
        self.drain(&mut c, ts_ns);
        if c.edge.is_none() {
            let p = c.protocol;
            self.assign_edge(&mut c, p, ts_ns);
        }
    }

    fn process(&mut self, id: u64, ev: StreamEvent) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let ts_ns = match &ev {
            StreamEvent::Data { ts_ns, .. }
            | StreamEvent::Gap { ts_ns, .. }
            | StreamEvent::Closed { ts_ns, .. } => *ts_ns,
            StreamEvent::Opened(i) => i.opened_ns,
        };
        match ev {
            StreamEvent::Data { dir, bytes, .. } => {
                let n = bytes.len() as u64;
                match dir {
                    Direction::Request => c.pending_sent += n,
                    Direction::Response => c.pending_received += n,
                }
                if let Some(e) = c.edge {
                    self.topology
                        .bytes_on(e, c.pending_sent, c.pending_received, now_ms_of(ts_ns));
                    c.pending_sent = 0;
                    c.pending_received = 0;
                }
                match &mut c.decoding {
                    Decoding::Active(d) => d.push(dir, ts_ns, &bytes),
                    Decoding::Undecodable => {}
                    Decoding::Detecting { chunks, req, resp } => {
                        let buf = if dir == Direction::Request {
                            &mut *req
                        } else {
                            &mut *resp
                        };
                        let room = self.config.detect_bytes.saturating_sub(buf.len());
                        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                        chunks.push(Chunk::Data(dir, ts_ns, bytes));
                        let det = detect(req, resp, c.info.remote_or_local_server_port());
                        match det {
                            Detection::Found(p) => self.start_decoder(&mut c, p, ts_ns),
                            Detection::Unknown { encrypted } => {
                                if encrypted {
                                    self.stats.encrypted_connections += 1;
                                }
                                self.give_up_detection(&mut c, ts_ns);
                            }
                            Detection::NeedMore => {
                                if req.len() >= self.config.detect_bytes
                                    || resp.len() >= self.config.detect_bytes
                                {
                                    self.give_up_detection(&mut c, ts_ns);
                                }
                            }
                        }
                    }
                }
            }
            StreamEvent::Gap {
                dir, len, reason, ..
            } => {
                // What the connection's gapped exchanges are charged to, the worst so far:
                // ring buffer (the capture fell behind), then other gaps, then over the
                // per-syscall cap (a body larger than the capture copies).
                c.loss = match (c.loss, reason) {
                    (_, GapReason::RingBufferFull) | (Loss::RingBuffer, _) => Loss::RingBuffer,
                    (Loss::None | Loss::OverCap, GapReason::OverCap) => Loss::OverCap,
                    _ => Loss::Gap,
                };
                match &mut c.decoding {
                    Decoding::Active(d) => d.gap(dir, ts_ns, len),
                    Decoding::Detecting { chunks, .. } => chunks.push(Chunk::Gap(dir, ts_ns, len)),
                    Decoding::Undecodable => {}
                }
            }
            StreamEvent::Opened(_) | StreamEvent::Closed { .. } => {}
        }
        self.drain(&mut c, ts_ns);
        self.conns.insert(id, c);
    }

    fn give_up_detection(&mut self, c: &mut Conn, ts_ns: u64) {
        self.stats.unknown_connections += 1;
        c.decoding = Decoding::Undecodable;
        self.assign_edge(c, None, ts_ns);
    }

    fn start_decoder(&mut self, c: &mut Conn, protocol: Protocol, ts_ns: u64) {
        let mut cfg = self.config.decoder;
        if let Some(m) = self.tasks.max_body() {
            cfg.max_body = usize::try_from(m)
                .unwrap_or(usize::MAX)
                .min(cfg.max_body.max(1));
        }
        let Some(mut d) = new_decoder(protocol, cfg) else {
            self.give_up_detection(c, ts_ns);
            return;
        };
        if let Decoding::Detecting { chunks, .. } =
            std::mem::replace(&mut c.decoding, Decoding::Undecodable)
        {
            for ch in chunks {
                match ch {
                    Chunk::Data(dir, ts, b) => d.push(dir, ts, &b),
                    Chunk::Gap(dir, ts, len) => d.gap(dir, ts, len),
                }
            }
        }
        c.decoding = Decoding::Active(d);
        c.protocol = Some(protocol);
    }

    /// Names both ends and puts the connection on its topology edge.
    fn assign_edge(&mut self, c: &mut Conn, protocol: Option<Protocol>, ts_ns: u64) {
        let meta = self.meta_of(&c.info);
        let key = EdgeKey {
            client: meta.client.service.clone().unwrap_or_default(),
            server: meta.server.service.clone().unwrap_or_default(),
            port: meta.server.port,
            protocol,
        };
        let now = now_ms_of(ts_ns);
        let id = self.topology.edge_id(&key, now);
        self.topology.connection_on(id, now);
        self.topology
            .bytes_on(id, c.pending_sent, c.pending_received, now);
        c.pending_sent = 0;
        c.pending_received = 0;
        c.edge = Some(id);
        c.meta = Some(Arc::new(meta));
    }

    fn facts(&mut self, info: &ConnInfo) -> EndpointFacts {
        let (exe, cgroup) = self.procs.get(info.pid);
        EndpointFacts {
            addr: Some(info.local.ip()),
            port: info.local.port(),
            pid: Some(info.pid),
            process: Some(info.comm.clone()),
            exe,
            cgroup,
        }
    }

    fn meta_of(&mut self, info: &ConnInfo) -> ConnectionMeta {
        let own = self.facts(info);
        let peer_info = self
            .by_tuple
            .get(&(info.remote, info.local))
            .and_then(|p| self.conns.get(p))
            .map(|p| p.info.clone());
        let peer = match peer_info {
            Some(pi) => self.facts(&pi),
            None => EndpointFacts {
                addr: Some(info.remote.ip()),
                port: info.remote.port(),
                ..EndpointFacts::default()
            },
        };
        let (client, server) = match info.role {
            Role::Client => (own, peer),
            Role::Server => (peer, own),
        };
        let endpoint = |f: &EndpointFacts, name: String| Endpoint {
            addr: f
                .addr
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            port: f.port,
            pid: f.pid,
            process: f.process.clone(),
            cgroup: f.cgroup.clone(),
            service: Some(name),
        };
        let cname = self.namer.name(&client, false);
        let sname = self.namer.name(&server, true);
        ConnectionMeta {
            id: info.id,
            client: endpoint(&client, cname),
            server: endpoint(&server, sname),
        }
    }

    fn drain(&mut self, c: &mut Conn, ts_ns: u64) {
        let Decoding::Active(d) = &mut c.decoding else {
            return;
        };
        d.drain(&mut self.scratch);
        if self.scratch.is_empty() {
            return;
        }
        if c.edge.is_none() {
            let p = c.protocol;
            self.assign_edge(c, p, ts_ns);
        }
        let (Some(meta), Some(edge)) = (&c.meta, c.edge) else {
            return;
        };
        let now = now_ms_of(ts_ns);
        let before = self.out.len();
        // The service globs of the running tasks run once per connection, not per exchange;
        // a connection no task wants costs no copy of its metadata.
        let wanted = !self.tasks.is_empty()
            && self.tasks.wants_cached(
                &mut c.pair,
                meta.client.service.as_deref().unwrap_or(""),
                meta.server.service.as_deref().unwrap_or(""),
            );
        for mut ex in self.scratch.drain(..) {
            ex.seq = c.seq;
            c.seq += 1;
            self.stats.exchanges += 1;
            if ex.flags.gap {
                self.stats.exchanges_with_gap += 1;
            }
            self.topology.exchange_on(edge, &ex, now);
            if wanted {
                ex.conn = meta.clone();
                self.tasks
                    .offer_cached(ex, c.loss, now, &mut c.pair, &mut self.out);
            }
        }
        self.stats.recorded += (self.out.len() - before) as u64;
    }
}

trait ServerPort {
    fn remote_or_local_server_port(&self) -> u16;
}

impl ServerPort for ConnInfo {
    /// The server's port: the peer's for a client socket, our own for a server socket.
    fn remote_or_local_server_port(&self) -> u16 {
        match self.role {
            Role::Client => self.remote.port(),
            Role::Server => self.local.port(),
        }
    }
}
