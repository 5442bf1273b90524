//! The connection table: turns decoded kernel records into [`StreamEvent`]s.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use deetune_ebpf as abi;
use deetune_protocols::{Direction, Role};

use super::reassembly::{Piece, Stream};
use super::stats::CaptureStats;
use crate::{ConnInfo, GapReason, StreamEvent};

const AF_INET6: u16 = 10;

struct Conn {
    role: Role,
    /// Indexed by `abi::dir` (send, recv).
    streams: [Stream; 2],
}

impl Conn {
    /// The connection-relative direction of bytes the local socket sent or received.
    fn direction(&self, kdir: u8) -> Direction {
        let sent = kdir == abi::dir::SEND;
        match (self.role, sent) {
            (Role::Client, true) | (Role::Server, false) => Direction::Request,
            (Role::Client, false) | (Role::Server, true) => Direction::Response,
        }
    }
}

/// Guesses the role of a socket whose connect/accept the capture did not see: the side with
/// the ephemeral port (>= 32768, Linux's default `ip_local_port_range` start) is the client;
/// when both or neither are ephemeral, the higher port is the client.
pub(crate) fn guess_role(lport: u16, rport: u16) -> Role {
    const EPHEMERAL: u16 = 32768;
    match (lport >= EPHEMERAL, rport >= EPHEMERAL) {
        (true, false) => Role::Client,
        (false, true) => Role::Server,
        _ if lport > rport => Role::Client,
        _ => Role::Server,
    }
}

fn addr(family: u16, raw: [u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        let v6 = Ipv6Addr::from(raw);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    };
    SocketAddr::new(ip, port)
}

fn gap_reason(r: u8) -> GapReason {
    match r {
        abi::gap::RINGBUF_FULL => GapReason::RingBufferFull,
        abi::gap::READ_FAILED => GapReason::ReadFailed,
        abi::gap::OTHER_PATH => GapReason::OtherPath,
        _ => GapReason::OverCap,
    }
}

/// Hasher for kernel connection ids (sequential, chosen by the kernel, not by a peer): one
/// multiply instead of SipHash's rounds, three lookups per record.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Connections by kernel id, and the clock offset to turn kernel timestamps into Unix time.
pub(crate) struct Table {
    conns: IdMap<Conn>,
    infos: IdMap<ConnInfo>,
    /// Unix ns minus monotonic ns.
    clock_offset: i128,
    pieces: Vec<Piece>,
}

impl Table {
    pub(crate) fn new(clock_offset: i128) -> Self {
        Self {
            conns: IdMap::default(),
            infos: IdMap::default(),
            clock_offset,
            pieces: Vec::new(),
        }
    }

    fn unix(&self, mono: u64) -> u64 {
        u64::try_from(i128::from(mono) + self.clock_offset).unwrap_or(0)
    }

    /// The open connection with this id.
    pub(crate) fn info(&self, id: u64) -> Option<&ConnInfo> {
        self.infos.get(&id)
    }

    /// Decodes one ring-buffer record and appends the resulting events to `out`.
    pub(crate) fn record(
        &mut self,
        rec: &[u8],
        stats: &mut CaptureStats,
        out: &mut Vec<StreamEvent>,
    ) {
        stats.records += 1;
        let Some(hdr) = abi::read::<abi::Header>(rec) else {
            stats.bad_records += 1;
            return;
        };
        match hdr.kind {
            abi::kind::OPEN => {
                let Some(e) = abi::read::<abi::OpenEvent>(rec) else {
                    stats.bad_records += 1;
                    return;
                };
                self.open(&e, stats, out);
            }
            abi::kind::DATA => {
                let Some(e) = abi::read::<abi::DataEvent>(rec) else {
                    stats.bad_records += 1;
                    return;
                };
                let start = size_of::<abi::DataEvent>();
                let Some(payload) = usize::try_from(e.len)
                    .ok()
                    .and_then(|n| rec.get(start..start + n))
                else {
                    stats.bad_records += 1;
                    return;
                };
                let ts = self.unix(e.hdr.ts_ns);
                let id = e.hdr.conn_id;
                let Some(c) = self.conns.get_mut(&id) else {
                    stats.orphan_records += 1;
                    return;
                };
                let d = usize::from(e.dir & 1);
                let dir = c.direction(e.dir & 1);
                // Chunks of one syscall (same timestamp) in order: extend its event rather
                // than allocate one per chunk.
                if let Some(StreamEvent::Data {
                    conn,
                    dir: last_dir,
                    ts_ns,
                    bytes,
                }) = out.last_mut()
                {
                    if *conn == id
                        && *last_dir == dir
                        && *ts_ns == ts
                        && c.streams[d].try_append(e.pos, payload.len() as u64)
                    {
                        bytes.extend_from_slice(payload);
                        count_bytes(stats, dir, payload.len() as u64);
                        return;
                    }
                }
                c.streams[d].data(e.pos, ts, payload.to_vec(), &mut self.pieces);
                self.flush(id, e.dir & 1, stats, out);
            }
            abi::kind::GAP => {
                let Some(e) = abi::read::<abi::GapEvent>(rec) else {
                    stats.bad_records += 1;
                    return;
                };
                let ts = self.unix(e.hdr.ts_ns);
                let Some(c) = self.conns.get_mut(&e.hdr.conn_id) else {
                    stats.orphan_records += 1;
                    return;
                };
                let d = usize::from(e.dir & 1);
                if e.reason == abi::gap::PEER_COPIED {
                    stats.dedup_bytes += e.len;
                    c.streams[d].skip(e.pos, ts, e.len, &mut self.pieces);
                } else {
                    c.streams[d].gap(e.pos, ts, e.len, gap_reason(e.reason), &mut self.pieces);
                }
                self.flush(e.hdr.conn_id, e.dir & 1, stats, out);
            }
            abi::kind::CLOSE => {
                let Some(e) = abi::read::<abi::CloseEvent>(rec) else {
                    stats.bad_records += 1;
                    return;
                };
                self.close(e.hdr.conn_id, e.hdr.ts_ns, [e.sent, e.received], stats, out);
            }
            _ => stats.bad_records += 1,
        }
    }

    fn open(&mut self, e: &abi::OpenEvent, stats: &mut CaptureStats, out: &mut Vec<StreamEvent>) {
        let id = e.hdr.conn_id;
        if self.conns.contains_key(&id) {
            return; // re-announced after a lost open: already known
        }
        let role = match e.role {
            abi::role::CLIENT => Role::Client,
            abi::role::SERVER => Role::Server,
            _ => guess_role(e.lport, e.rport),
        };
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        let info = ConnInfo {
            id,
            pid: e.hdr.tgid,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            cgroup_id: e.cgroup_id,
            role,
            local: addr(e.family, e.laddr, e.lport),
            remote: addr(e.family, e.raddr, e.rport),
            opened_ns: self.unix(e.hdr.ts_ns),
        };
        self.conns.insert(
            id,
            Conn {
                role,
                streams: [Stream::default(), Stream::default()],
            },
        );
        self.infos.insert(id, info.clone());
        stats.connections += 1;
        stats.events += 1;
        out.push(StreamEvent::Opened(info));
    }

    fn close(
        &mut self,
        id: u64,
        mono: u64,
        ends: [u64; 2],
        stats: &mut CaptureStats,
        out: &mut Vec<StreamEvent>,
    ) {
        let ts_ns = self.unix(mono);
        if !self.conns.contains_key(&id) {
            stats.orphan_records += 1;
            return;
        }
        for d in 0..2u8 {
            if let Some(c) = self.conns.get_mut(&id) {
                c.streams[usize::from(d)].finish(ends[usize::from(d)], ts_ns, &mut self.pieces);
            }
            self.flush(id, d, stats, out);
        }
        self.conns.remove(&id);
        self.infos.remove(&id);
        stats.closed += 1;
        stats.events += 1;
        out.push(StreamEvent::Closed { conn: id, ts_ns });
    }

    /// Moves reassembled pieces of (`id`, `kdir`) to `out`.
    fn flush(&mut self, id: u64, kdir: u8, stats: &mut CaptureStats, out: &mut Vec<StreamEvent>) {
        let Some(c) = self.conns.get(&id) else {
            self.pieces.clear();
            return;
        };
        let dir = c.direction(kdir);
        for p in self.pieces.drain(..) {
            stats.events += 1;
            match p {
                Piece::Data { ts_ns, bytes } => {
                    count_bytes(stats, dir, bytes.len() as u64);
                    out.push(StreamEvent::Data {
                        conn: id,
                        dir,
                        ts_ns,
                        bytes,
                    });
                }
                Piece::Gap { ts_ns, len, reason } => {
                    stats.gaps += 1;
                    stats.gap_bytes += len;
                    out.push(StreamEvent::Gap {
                        conn: id,
                        dir,
                        ts_ns,
                        len,
                        reason,
                    });
                }
            }
        }
    }

    /// Declares holes older than `older_than` (monotonic ns) gaps.
    pub(crate) fn expire(
        &mut self,
        older_than_unix: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<StreamEvent>,
    ) {
        let ids: Vec<(u64, u8)> = self
            .conns
            .iter()
            .flat_map(|(id, c)| {
                (0..2u8).filter_map(move |d| {
                    c.streams[usize::from(d)]
                        .oldest_held()
                        .filter(|&t| t < older_than_unix)
                        .map(|_| (*id, d))
                })
            })
            .collect();
        for (id, d) in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.streams[usize::from(d)].skip_hole(GapReason::Timeout, &mut self.pieces);
            }
            self.flush(id, d, stats, out);
        }
    }

    /// Closes the connections of processes that no longer exist (a process that exits
    /// without `close()` gets no close event from the kernel). Call after draining the ring
    /// buffer: a dead process sends nothing more.
    pub(crate) fn reap_dead(
        &mut self,
        alive: impl Fn(u32) -> bool,
        stats: &mut CaptureStats,
        out: &mut Vec<StreamEvent>,
    ) {
        let mut dead: Vec<u64> = self
            .infos
            .values()
            .filter(|i| !alive(i.pid))
            .map(|i| i.id)
            .collect();
        dead.sort_unstable();
        let now = monotonic_ns();
        for id in dead {
            let ends = self.conns.get(&id).map_or([0, 0], |c| {
                [c.streams[0].next_pos(), c.streams[1].next_pos()]
            });
            self.close(id, now, ends, stats, out);
        }
    }

    /// Whether any stream waits for a hole to fill.
    pub(crate) fn any_held(&self) -> bool {
        self.conns
            .values()
            .any(|c| c.streams.iter().any(Stream::has_held))
    }

    /// Unix ns now, by the same clock as event timestamps.
    pub(crate) fn now_unix(&self) -> u64 {
        self.unix(monotonic_ns())
    }
}

fn count_bytes(stats: &mut CaptureStats, dir: Direction, n: u64) {
    stats.bytes += n;
    match dir {
        Direction::Request => stats.request_bytes += n,
        Direction::Response => stats.response_bytes += n,
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_guess_prefers_the_ephemeral_side_as_client() {
        assert_eq!(guess_role(45000, 80), Role::Client);
        assert_eq!(guess_role(6379, 51000), Role::Server);
        assert_eq!(guess_role(8080, 3306), Role::Client);
        assert_eq!(guess_role(40000, 50000), Role::Server);
    }

    #[test]
    fn v4_mapped_becomes_v4() {
        let mut raw = [0u8; 16];
        raw[10] = 0xff;
        raw[11] = 0xff;
        raw[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            addr(AF_INET6, raw, 80),
            "127.0.0.1:80".parse().expect("addr")
        );
    }

    #[test]
    fn garbage_records_never_panic() {
        let mut t = Table::new(0);
        let mut st = CaptureStats::default();
        let mut out = Vec::new();
        for len in 0..200 {
            for k in 0..6u8 {
                let mut rec = vec![0xabu8; len];
                if len > 0 {
                    rec[0] = k;
                }
                t.record(&rec, &mut st, &mut out);
            }
        }
        assert!(st.bad_records > 0);
    }
}
