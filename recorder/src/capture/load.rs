//! Loading, attaching and reading the kernel side.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, Map, PerCpuArray};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};
use deetune_ebpf as abi;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::config::CaptureConfig;
use super::conns::{monotonic_ns, Table};
use super::error::CaptureError;
use super::ring::Ring;
use super::stats::{CaptureStats, KernelLosses};
use crate::{ConnInfo, StreamEvent};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Allow-list capacity (the kernel maps' `max_entries`).
const FILTER_MAX: usize = 1024;
/// How long a hole may wait for the bytes before it: concurrent writers on one socket land
/// in the ring buffer within microseconds of each other.
const HOLE_WAIT: Duration = Duration::from_millis(200);
/// The kernel forces a wake-up of the reader only when a CPU's data events cross a multiple
/// of [`CaptureConfig::wake_bytes`] (1 MiB for the default ring on 2 CPUs: a wake-up per event
/// would cost the captured process an IPI and the reader a context switch per syscall); in
/// between, the ring is drained on a timer: every `DRAIN_BUSY` while drains found records in
/// the last `BUSY_FOR` (the bytes are read soon after they were written and the ring stays
/// nearly empty; a timed sleep of the reader, not a busy poll: at most 250 wake-ups a second),
/// every `DRAIN_IDLE` otherwise.
const DRAIN_BUSY: Duration = Duration::from_millis(4);
const DRAIN_IDLE: Duration = Duration::from_millis(20);
/// How long after a drain that found records the reader keeps the `DRAIN_BUSY` timer (a drain
/// right after another one usually finds nothing even under load).
const BUSY_FOR: Duration = Duration::from_millis(100);
/// How often connections of exited processes are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);
const STAT_SLOTS: usize = abi::STAT_SLOTS as usize;

/// A running capture: the loaded programs and the reassembled event stream.
///
/// Start it inside a tokio runtime; read events with [`Capture::next_event`]. Dropping it
/// detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    ring: AsyncFd<Ring>,
    table: Table,
    out: VecDeque<StreamEvent>,
    batch: Vec<StreamEvent>,
    stats: CaptureStats,
    config: CaptureConfig,
    last_reap: std::time::Instant,
    /// When a drain last found records (the drain timer is `DRAIN_BUSY` for `BUSY_FOR` after).
    last_found: std::time::Instant,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Checks that this process may load tracing eBPF programs: root, or CAP_BPF + CAP_PERFMON
/// (CAP_SYS_ADMIN also does).
fn check_permissions() -> Result<(), CaptureError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(CaptureError::NotPermitted {
        euid,
        missing: missing.join(", "),
    })
}

/// Mounts tracefs at /sys/kernel/tracing when neither it nor debugfs's copy is there (aya
/// reads tracepoint ids from it).
fn ensure_tracefs() -> Result<(), CaptureError> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(CaptureError::Tracefs {
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!("Mounted tracefs at /sys/kernel/tracing.");
    Ok(())
}

fn load_error(e: aya::EbpfError) -> CaptureError {
    CaptureError::Load {
        source: Box::new(e),
    }
}

impl Capture {
    /// Loads and attaches the kernel programs and starts reading events. Call inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`CaptureError::NotPermitted`] without root, [`CaptureError::NoBtf`] or
    /// [`CaptureError::BadBtf`],
    /// [`CaptureError::TracepointMissing`], [`CaptureError::Verifier`] (with the log), and
    /// map or runtime errors.
    pub fn start(config: CaptureConfig) -> Result<Self, CaptureError> {
        check_permissions()?;
        if !Path::new(BTF_PATH).exists() {
            return Err(CaptureError::NoBtf {
                path: BTF_PATH.into(),
            });
        }
        ensure_tracefs()?;
        let btf = Btf::from_sys_fs().map_err(|e| CaptureError::BadBtf {
            path: BTF_PATH.into(),
            detail: e.to_string(),
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            // `conns` is socket storage, which aya has no typed wrapper for (user space never
            // reads it).
            .allow_unsupported_maps()
            .set_max_entries(abi::maps::EVENTS, config.effective_ring_bytes())
            .load(abi::object())
            .map_err(load_error)?;

        // Config and filters before attaching, so nothing unwanted is ever captured.
        let mut slots = [0u64; abi::CONFIG_SLOTS];
        slots[abi::config::SELF_TGID] = u64::from(std::process::id());
        slots[abi::config::CAP_BYTES] = u64::from(config.effective_cap());
        slots[abi::config::CHUNK_BYTES] = u64::from(config.effective_chunk());
        slots[abi::config::LOOPBACK_DEDUP] = u64::from(config.loopback_dedup);
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        slots[abi::config::WAKE_BYTES] = config.wake_bytes(cpus);
        write_config(&mut ebpf, &mut slots)?;
        let mut me = PartialCapture { ebpf, slots };
        me.set_list(
            abi::maps::FILTER_PIDS,
            abi::config::FILTER_PIDS,
            "pid",
            &config.pids,
        )?;
        me.set_list(
            abi::maps::FILTER_CGROUPS,
            abi::config::FILTER_CGROUPS,
            "cgroup",
            &config.cgroups,
        )?;
        me.set_list(
            abi::maps::FILTER_PORTS,
            abi::config::FILTER_PORTS,
            "port",
            &config.ports,
        )?;
        let mut ebpf = me.ebpf;

        for &(prog, category, name) in abi::TRACEPOINTS {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| CaptureError::Verifier {
                    program: prog.into(),
                    log: "missing from the object".into(),
                })?
                .try_into()
                .map_err(|e: ProgramError| CaptureError::Verifier {
                    program: prog.into(),
                    log: e.to_string(),
                })?;
            p.load(name, &btf).map_err(|e| match e {
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => CaptureError::Verifier {
                    program: prog.into(),
                    log: format!("{io_error}\n{verifier_log}"),
                },
                other => CaptureError::Verifier {
                    program: prog.into(),
                    log: other.to_string(),
                },
            })?;
            p.attach().map_err(|e| CaptureError::TracepointMissing {
                category: category.into(),
                name: name.into(),
                source: Box::new(e),
            })?;
        }

        let ring_map = ebpf.take_map(abi::maps::EVENTS).ok_or(CaptureError::Map {
            map: abi::maps::EVENTS,
            op: "find",
            source: Box::new(aya::maps::MapError::InvalidName {
                name: abi::maps::EVENTS.into(),
            }),
        })?;
        let Map::RingBuf(ring_map) = ring_map else {
            return Err(CaptureError::Map {
                map: abi::maps::EVENTS,
                op: "open",
                // Only a broken object gets here (the map is declared a ring buffer).
                source: Box::new(aya::maps::MapError::InvalidName {
                    name: format!("{} (not a ring buffer)", abi::maps::EVENTS),
                }),
            });
        };
        let ring =
            Ring::new(ring_map, config.effective_ring_bytes()).map_err(|e| CaptureError::Map {
                map: abi::maps::EVENTS,
                op: "map",
                source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: e,
                })),
            })?;
        // SAFETY: the ring buffer owns its map fd and its mmap for its whole life; the
        // `AsyncFd` owns the ring buffer, so the fd stays open and the same until it drops.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| CaptureError::Runtime { source: e.into() })?;

        let clock_offset = unix_ns() - i128::from(monotonic_ns());
        tracing::info!(
            programs = abi::TRACEPOINTS.len(),
            "Socket capture attached."
        );
        Ok(Self {
            ebpf,
            ring,
            table: Table::new(clock_offset),
            out: VecDeque::new(),
            batch: Vec::new(),
            stats: CaptureStats::default(),
            config,
            last_reap: std::time::Instant::now(),
            last_found: std::time::Instant::now(),
        })
    }

    /// The next event, waiting for the kernel without busy polling. `None` only when the ring
    /// buffer can no longer be read.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(e) = self.try_next_event() {
                return Some(e);
            }
            if !self.wait_ring().await {
                return None;
            }
        }
    }

    /// Waits (without busy polling) until events are ready, then moves all of them into
    /// `out` (appended): one call per ring-buffer drain instead of one per event. Returns
    /// `false` only when the ring buffer can no longer be read.
    pub async fn next_events(&mut self, out: &mut Vec<StreamEvent>) -> bool {
        loop {
            if self.out.is_empty() {
                self.poll();
            }
            if !self.out.is_empty() {
                out.extend(self.out.drain(..));
                return true;
            }
            if !self.wait_ring().await {
                return false;
            }
        }
    }

    /// Waits for the kernel's wake-up or the drain timer; `false` when the ring failed.
    async fn wait_ring(&mut self) -> bool {
        let every = if self.last_found.elapsed() < BUSY_FOR {
            DRAIN_BUSY
        } else {
            DRAIN_IDLE
        };
        match tokio::time::timeout(every, self.ring.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                guard.clear_ready();
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Reading the capture ring buffer failed.");
                false
            }
            Err(_elapsed) => true,
        }
    }

    /// The next event if one is ready now (never waits).
    pub fn try_next_event(&mut self) -> Option<StreamEvent> {
        if self.out.is_empty() {
            self.poll();
        }
        self.out.pop_front()
    }

    /// Moves every record the ring buffer holds now into the queue of events.
    fn poll(&mut self) {
        let (table, stats, batch) = (&mut self.table, &mut self.stats, &mut self.batch);
        let n = self
            .ring
            .get_mut()
            .drain(|rec| table.record(rec, stats, batch));
        if n > 0 {
            self.last_found = std::time::Instant::now();
        }
        if self.table.any_held() {
            let limit = self
                .table
                .now_unix()
                .saturating_sub(u64::try_from(HOLE_WAIT.as_nanos()).unwrap_or(0));
            self.table.expire(limit, &mut self.stats, &mut self.batch);
        }
        if self.last_reap.elapsed() >= REAP_EVERY {
            self.last_reap = std::time::Instant::now();
            self.table.reap_dead(
                |pid| Path::new(&format!("/proc/{pid}")).exists(),
                &mut self.stats,
                &mut self.batch,
            );
        }
        self.out.extend(self.batch.drain(..));
    }

    /// The connection with this id, while it is open.
    #[must_use]
    pub fn conn(&self, id: u64) -> Option<&ConnInfo> {
        self.table.info(id)
    }

    /// The configuration the capture started with (allow-lists as last set).
    #[must_use]
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Counts so far, including the kernel's per-CPU counters.
    #[must_use]
    pub fn stats(&self) -> CaptureStats {
        let mut s = self.stats;
        if let Some(map) = self.ebpf.map(abi::maps::STATS) {
            if let Ok(arr) = PerCpuArray::<_, [u64; STAT_SLOTS]>::try_from(map) {
                let mut sum = [0u64; STAT_SLOTS];
                if let Ok(per_cpu) = arr.get(&0, 0) {
                    for cpu in per_cpu.iter() {
                        for (t, v) in sum.iter_mut().zip(cpu) {
                            *t += v;
                        }
                    }
                }
                let get = |i: u32| sum.get(i as usize).copied().unwrap_or(0);
                s.kernel_events = get(abi::stat::EVENTS);
                s.kernel_bytes = get(abi::stat::BYTES);
                s.kernel = KernelLosses {
                    over_cap_bytes: get(abi::stat::GAP_OVER_CAP),
                    ring_full_events: get(abi::stat::RB_FULL_EVENTS),
                    ring_full_bytes: get(abi::stat::RB_FULL_BYTES),
                    read_failed_bytes: get(abi::stat::READ_FAILED),
                    active_table_full: get(abi::stat::ACTIVE_FULL),
                    conn_table_full: get(abi::stat::CONN_FULL),
                    control_events_lost: get(abi::stat::CONTROL_LOST),
                    other_path_bytes: get(abi::stat::OTHER_PATH),
                    dedup_bytes: get(abi::stat::DEDUP_BYTES),
                    after_close_bytes: get(abi::stat::AFTER_CLOSE),
                    missed_closes: get(abi::stat::STALE),
                    skipped_runs: self.skipped_runs(),
                };
            }
        }
        s
    }

    /// The kernel's count of skipped runs (`recursion_misses`) over the capture's programs,
    /// from `/proc/self/fdinfo` of their fds (0 where unreadable).
    fn skipped_runs(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                std::fs::read_to_string(path).ok()
            })
            .filter_map(|info| recursion_misses(&info))
            .sum()
    }

    /// Turns loopback de-duplication on or off (see [`CaptureConfig::loopback_dedup`]).
    /// Applies to connections whose first byte moves from now on.
    ///
    /// # Errors
    /// When the kernel config map cannot be written.
    pub fn set_loopback_dedup(&mut self, on: bool) -> Result<(), CaptureError> {
        let mut slots = read_config(&self.ebpf)?;
        slots[abi::config::LOOPBACK_DEDUP] = u64::from(on);
        write_config(&mut self.ebpf, &mut slots)?;
        self.config.loopback_dedup = on;
        Ok(())
    }

    /// Only capture connections with a local or remote port in `ports` (empty: all ports).
    /// Applies to new connections and to the data of known ones from now on.
    ///
    /// # Errors
    /// When the kernel map cannot be written or the list is too long.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), CaptureError> {
        self.with_partial(|p| {
            p.set_list(
                abi::maps::FILTER_PORTS,
                abi::config::FILTER_PORTS,
                "port",
                ports,
            )
        })?;
        self.config.ports = ports.to_vec();
        Ok(())
    }

    /// Only capture these processes (empty: all but the recorder).
    ///
    /// # Errors
    /// When the kernel map cannot be written or the list is too long.
    pub fn set_pids(&mut self, pids: &[u32]) -> Result<(), CaptureError> {
        self.with_partial(|p| {
            p.set_list(
                abi::maps::FILTER_PIDS,
                abi::config::FILTER_PIDS,
                "pid",
                pids,
            )
        })?;
        self.config.pids = pids.to_vec();
        Ok(())
    }

    /// Only capture processes in these cgroup v2 ids (empty: all).
    ///
    /// # Errors
    /// When the kernel map cannot be written or the list is too long.
    pub fn set_cgroups(&mut self, cgroups: &[u64]) -> Result<(), CaptureError> {
        self.with_partial(|p| {
            p.set_list(
                abi::maps::FILTER_CGROUPS,
                abi::config::FILTER_CGROUPS,
                "cgroup",
                cgroups,
            )
        })?;
        self.config.cgroups = cgroups.to_vec();
        Ok(())
    }

    fn with_partial<F>(&mut self, f: F) -> Result<(), CaptureError>
    where
        F: FnOnce(&mut PartialCapture<&mut Ebpf>) -> Result<(), CaptureError>,
    {
        let slots = read_config(&self.ebpf)?;
        let mut p = PartialCapture {
            ebpf: &mut self.ebpf,
            slots,
        };
        f(&mut p)
    }
}

/// The `recursion_misses` of a BPF program's `/proc/<pid>/fdinfo/<fd>` text.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The loaded object and its config slots, before or after attaching.
struct PartialCapture<E> {
    ebpf: E,
    slots: [u64; abi::CONFIG_SLOTS],
}

impl<E: std::borrow::BorrowMut<Ebpf>> PartialCapture<E> {
    /// Writes an allow-list: new keys first, then stale keys out, then the on/off slot, so a
    /// change never lets everything through for a moment.
    fn set_list<K>(
        &mut self,
        map: &'static str,
        slot: usize,
        list: &'static str,
        keys: &[K],
    ) -> Result<(), CaptureError>
    where
        K: aya::Pod + Eq + std::hash::Hash,
    {
        if keys.len() > FILTER_MAX {
            return Err(CaptureError::FilterTooLong {
                list,
                max: FILTER_MAX,
                got: keys.len(),
            });
        }
        let ebpf = self.ebpf.borrow_mut();
        {
            let m = ebpf.map_mut(map).ok_or(CaptureError::Map {
                map,
                op: "find",
                source: Box::new(aya::maps::MapError::InvalidName { name: map.into() }),
            })?;
            let mut h = BpfHashMap::<_, K, u8>::try_from(m).map_err(|e| CaptureError::Map {
                map,
                op: "open",
                source: Box::new(e),
            })?;
            for k in keys {
                h.insert(k, 1, 0).map_err(|e| CaptureError::Map {
                    map,
                    op: "insert",
                    source: Box::new(e),
                })?;
            }
            let wanted: std::collections::HashSet<&K> = keys.iter().collect();
            let stale: Vec<K> = h
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !wanted.contains(k))
                .collect();
            for k in stale {
                h.remove(&k).map_err(|e| CaptureError::Map {
                    map,
                    op: "remove",
                    source: Box::new(e),
                })?;
            }
        }
        self.slots[slot] = u64::from(!keys.is_empty());
        write_config(ebpf, &mut self.slots)
    }
}

/// Writes the config slots with a new generation (the kernel re-checks its cached filter
/// verdicts when the generation changes).
fn write_config(ebpf: &mut Ebpf, slots: &mut [u64; abi::CONFIG_SLOTS]) -> Result<(), CaptureError> {
    slots[abi::config::GEN] = slots[abi::config::GEN].wrapping_add(1) & u64::from(u32::MAX);
    let map = abi::maps::CONFIG;
    let m = ebpf.map_mut(map).ok_or(CaptureError::Map {
        map,
        op: "find",
        source: Box::new(aya::maps::MapError::InvalidName { name: map.into() }),
    })?;
    let mut arr =
        Array::<_, [u64; abi::CONFIG_SLOTS]>::try_from(m).map_err(|e| CaptureError::Map {
            map,
            op: "open",
            source: Box::new(e),
        })?;
    arr.set(0, *slots, 0).map_err(|e| CaptureError::Map {
        map,
        op: "write",
        source: Box::new(e),
    })
}

fn read_config(ebpf: &Ebpf) -> Result<[u64; abi::CONFIG_SLOTS], CaptureError> {
    let map = abi::maps::CONFIG;
    let m = ebpf.map(map).ok_or(CaptureError::Map {
        map,
        op: "find",
        source: Box::new(aya::maps::MapError::InvalidName { name: map.into() }),
    })?;
    let arr = Array::<_, [u64; abi::CONFIG_SLOTS]>::try_from(m).map_err(|e| CaptureError::Map {
        map,
        op: "open",
        source: Box::new(e),
    })?;
    arr.get(&0, 0).map_err(|e| CaptureError::Map {
        map,
        op: "read",
        source: Box::new(e),
    })
}

fn unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::recursion_misses;

    #[test]
    fn recursion_misses_are_read_from_a_programs_fdinfo() {
        // As the kernel prints it (kernel/bpf/syscall.c, bpf_prog_show_fdinfo).
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2082\nprog_type:\t26\n\
                    prog_jited:\t1\nprog_tag:\tbdaf9943837d826e\nmemlock:\t20480\n\
                    prog_id:\t23799\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\n\
                    verified_insns:\t1905\n";
        assert_eq!(recursion_misses(info), Some(17));
        assert_eq!(recursion_misses("prog_type:\t26\n"), None);
        assert_eq!(recursion_misses("recursion_misses:\tmany\n"), None);
    }
}
