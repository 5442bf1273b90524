// SPDX-License-Identifier: GPL-2.0
/*
 * deetune socket capture, on socket tracepoints only (no syscall tracepoints, so processes
 * that do not move bytes on a socket pay nothing).
 *
 * tp_btf/sock_send_length and sock_recv_length fire in sock_sendmsg_nosec /
 * sock_recvmsg_nosec, in the calling task, once the bytes were moved (for a receive, they are
 * already in the user buffer). The syscall's own arguments are in the task's user pt_regs
 * (orig_ax = syscall number, di/si/dx = arguments): for the 8 supported syscalls
 * (read/write/readv/writev/sendto/recvfrom/sendmsg/recvmsg) the fd, the buffer (or iovec, or
 * msghdr) and the returned length give the payload, copied to the ring buffer in chunks, each
 * tagged with the per-direction byte position of its first byte, up to the per-syscall cap;
 * what is not copied is reported as a gap and counted in `stats`. Bytes moved on a known
 * connection by any other path (sendfile, splice, io_uring, sendmmsg, kernel threads) are
 * reported as a gap (DT_GAP_OTHER_PATH) and counted.
 * Connections live in the sock's BPF socket storage: a new sock behind an fd is a new
 * connection, and nothing of a freed sock outlives it. The first
 * data event checks that the fd of the syscall names that sock (task->files->fdt->fd[fd]);
 * later events of the same (tgid, fd) skip the check.
 * tp_btf/inet_sock_set_state gives the role (SYN_SENT -> ESTABLISHED: client,
 * SYN_RECV -> ESTABLISHED: server) and the end (-> CLOSE: close event).
 * x86_64 only (pt_regs layout and syscall numbers).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "deetune_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MSG_PEEK 2

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

/* include/linux/sched.h */
#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47

/* The few kernel fields we read, relocated against the running kernel's BTF (CO-RE). */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_type;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_STREAM 1

/* Whether `fd` of the current process is the socket `sk` (task->files->fdt->fd[fd]). */
static __always_inline int fd_is_sock(struct task_struct *task, __u32 fd, __u64 sk)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	return (__u64)BPF_CORE_READ(so, sk) == sk;
}

/* Whether `sk` is a TCP socket over IPv4 or IPv6. */
static __always_inline int is_tcp(struct sock *sk)
{
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	return BPF_CORE_READ(sk, sk_type) == SOCK_STREAM &&
	       BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

/* User-space layouts read with bpf_probe_read_user (x86_64 LP64). */
struct dt_iovec {
	__u64 base;
	__u64 len;
};

struct dt_user_msghdr {
	__u64 msg_name;
	__u32 msg_namelen;
	__u32 _pad;
	__u64 msg_iov;
	__u64 msg_iovlen;
};

/* Loopback dedup: a connection's 4-tuple, addresses as IPv6 (IPv4 as ::ffff:a.b.c.d). */
struct dt_tuple {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u32 _pad;
};

#define DT_NONE (~0ULL)

struct conn {
	__u64 id;
	__u64 pos[2];       /* next byte position per enum dt_dir */
	__u64 peer;         /* dedup, loopback client ends: 1 once its server end was in lo_servers */
	__u64 peer_id;      /* dedup: the server end's conn id once it had one (0: not yet) */
	__u64 mute_from[2]; /* dedup: where the current run of uncopied bytes began (DT_NONE: none) */
	__u32 tgid;         /* the (tgid, fd) last checked to name this sock */
	__u32 fd;
	__u32 gen;          /* config generation `allowed` was computed at */
	__u32 ok_tgid;      /* the tgid `allowed` was computed for */
	__u16 lport;
	__u16 rport;
	__u8 role;
	__u8 announced;     /* 0: its open event found no room in the ring buffer (retried) */
	__u8 allowed;       /* filters let this connection through (at `gen`, for `ok_tgid`) */
	__u8 lo;            /* a client end with a loopback peer */
	__u8 other_path[2]; /* bytes were moved by another path, per direction */
	__u8 lo_srv;        /* dedup: a server end with a loopback peer (its changes bump lo_epoch) */
	__u8 dec;           /* dedup, client ends: peer_copies() per direction, bit d valid, bit 2+d value */
	__u8 skipped;       /* not a connection (id 0): the port filter keeps it out, at `gen` */
	__u8 _pad[3];
	__u32 dec_epoch;    /* the lo_epoch and config generation `dec` was decided at */
	__u32 dec_gen;
};

struct dt_config {
	__u64 v[DT_CFG_SLOTS];
};

/* What every chunk of one syscall shares: written once per syscall, per CPU. */
struct dt_emit_ctx {
	__u64 conn_id;
	__u64 ts_ns;
	__u64 chunk;     /* payload bytes per event */
	__u64 wake;      /* wake-up threshold (DT_CFG_WAKE_BYTES) */
	__u64 produced;  /* ring bytes this CPU's data events reserved, ever (kept across syscalls) */
	__u32 tgid;
	__u8 dir;
	__u8 syscall;
	__u8 _pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} next_id SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_emit_ctx);
} emit_ctx SEC(".maps");

/*
 * Per-sock state in BPF socket storage (it lives and dies with the sock, so a new sock at a
 * freed sock's address never inherits it, and no other traffic can evict it): the role learnt
 * at TCP_ESTABLISHED (id 0: not a connection yet), a captured connection (id != 0), or a sock
 * the port filter keeps out (`skipped`, with the config generation of that verdict).
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn);
} conns SEC(".maps");

/* Loopback dedup: server ends (accepted socks) of loopback connections by their tuple, from
 * TCP_ESTABLISHED to TCP_CLOSE, with what their client end needs to decide (a copy of the
 * server end's own state, written where it changes); the client end looks it up by the
 * reversed tuple. */
struct lo_srv {
	__u64 id; /* the server end's conn id (0: it has moved no bytes by a supported syscall) */
	__u32 gen;
	__u8 announced;
	__u8 allowed;
	__u8 other_path[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dt_tuple);
	__type(value, struct lo_srv);
} lo_servers SEC(".maps");

/* Loopback dedup: bumped after every change of a loopback server end that can change what its
 * client end decides (established, stored, announced, allowed, another path, closed), so a
 * client end reuses its last decision, without looking its server end up, until it moves. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lo_epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} filter_pids SEC(".maps");

/*
 * The pid/cgroup filters' verdict on recently seen tasks (threads), per CPU, direct-mapped by
 * thread id, tagged with the task's address and pid/tgid and the config generation it was
 * computed at: a process the filters keep out pays one array lookup (inlined by the verifier)
 * and a compare per socket syscall, before any hash lookup. (BPF task storage did the same
 * with a helper call that cost about as much as the two hash lookups it saved, see
 * docs/benchmarks.md.) A task that moves to another cgroup keeps its verdict until the
 * config changes or its slot is taken by another task.
 */
#define DT_VERDICT_SLOTS 64
struct dt_verdict_slot {
	__u64 task;
	__u64 pid_tgid;
	__u32 gen;
	__u32 allowed;
};

struct dt_verdicts {
	struct dt_verdict_slot slot[DT_VERDICT_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_verdicts);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} filter_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} filter_ports SEC(".maps");

/*
 * Wake-up batching: waking the reader costs a context switch, and a forced wake-up costs the
 * writer an irq_work self-IPI (an APIC write: a VM exit under virtualization). Events are
 * submitted without a wake-up; every CPU counts the ring bytes its data events reserve
 * (emit_ctx.produced, per CPU: no shared cache line, no bpf_ringbuf_query of the consumer
 * position the reader's CPU writes), and the record that makes that count cross a multiple of
 * DT_CFG_WAKE_BYTES forces one wake-up. So however far behind the reader is, it is woken
 * again after at most WAKE_BYTES more bytes per CPU (user space sizes it so that the ring holds
 * several times that for every CPU); below that, user space drains on its own short timer
 * (recorder/src/capture/load.rs, DRAIN_BUSY/DRAIN_IDLE). Earlier rules: a wake-up on every event
 * above a threshold of waiting bytes cost an IPI per event until the reader caught up; a
 * wake-up only at the first crossing let a reader that missed it fall behind to a full ring;
 * a wake-up at every 256 KiB multiple of the waiting bytes cost a bpf_ringbuf_query (a cache
 * miss) per syscall and an IPI per 256 KiB.
 */
#define DT_WAKE_BYTES_DEFAULT (1024 * 1024)

static __always_inline struct dt_stats *get_stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline void count(__u32 slot, __u64 n)
{
	struct dt_stats *st = get_stats();
	if (st && slot < DT_ST_SLOTS)
		st->v[slot] += n; /* per-CPU: no atomics needed */
}

static __always_inline struct dt_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

/* Loopback dedup: a server end changed (after the change: see lo_epoch). */
static __always_inline void lo_bump(void)
{
	__u32 zero = 0;
	__u64 *e = bpf_map_lookup_elem(&lo_epoch, &zero);
	if (e)
		__sync_fetch_and_add(e, 1);
}

/* In-kernel process filter: never ourselves, then the optional pid and cgroup allow-lists. */
static __always_inline int tgid_allowed(struct dt_config *cfg, __u32 tgid)
{
	if (tgid == cfg->v[DT_CFG_SELF_TGID])
		return 0;
	if (cfg->v[DT_CFG_FILTER_PIDS] && !bpf_map_lookup_elem(&filter_pids, &tgid))
		return 0;
	if (cfg->v[DT_CFG_FILTER_CGROUPS]) {
		__u64 cg = bpf_get_current_cgroup_id();
		if (!bpf_map_lookup_elem(&filter_cgroups, &cg))
			return 0;
	}
	return 1;
}

static __always_inline int ports_allowed(struct dt_config *cfg, __u16 lport, __u16 rport)
{
	if (!cfg->v[DT_CFG_FILTER_PORTS])
		return 1;
	return bpf_map_lookup_elem(&filter_ports, &lport) ||
	       bpf_map_lookup_elem(&filter_ports, &rport);
}

static __always_inline void emit_gap(__u64 conn_id, __u32 tgid, __u8 dir, __u64 pos, __u64 len,
				     __u8 reason)
{
	struct dt_gap_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DT_ST_CONTROL_LOST, 1);
		return;
	}
	e->hdr.kind = DT_EV_GAP;
	e->hdr.tgid = tgid;
	e->hdr.conn_id = conn_id;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->pos = pos;
	e->len = len;
	e->dir = dir;
	e->reason = reason;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(DT_ST_EVENTS, 1);
}

static __always_inline void emit_close(struct conn *c)
{
	/* Loopback dedup: the uncopied tail of each direction, so user space skips it. */
	for (int d = 0; d < 2; d++) {
		__u64 from = c->mute_from[d];
		if (from != DT_NONE && c->pos[d] > from)
			emit_gap(c->id, c->tgid, d, from, c->pos[d] - from, DT_GAP_PEER_COPIED);
	}
	struct dt_close_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DT_ST_CONTROL_LOST, 1);
		return;
	}
	e->hdr.kind = DT_EV_CLOSE;
	e->hdr.tgid = c->tgid;
	e->hdr.conn_id = c->id;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->sent = c->pos[DT_DIR_SEND];
	e->received = c->pos[DT_DIR_RECV];
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(DT_ST_EVENTS, 1);
}

/* Returns 0 when the open event reached the ring buffer. */
static __always_inline int emit_open(struct conn *c, struct sock *sk, __u32 tgid, __u32 fd)
{
	struct dt_open_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DT_ST_CONTROL_LOST, 1);
		return -1;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = DT_EV_OPEN;
	e->hdr.tgid = tgid;
	e->hdr.conn_id = c->id;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->fd = fd;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->role = c->role;
	e->lport = c->lport;
	e->rport = c->rport;
	if (e->family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)&e->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)&e->raddr, sk, __sk_common.skc_daddr);
	}
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(DT_ST_EVENTS, 1);
	return 0;
}

/* The tuple of `sk` as IPv6 addresses (IPv4 mapped); `rev` swaps local and remote. Returns
 * whether the remote end is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z). */
static __always_inline int sk_tuple(struct sock *sk, struct dt_tuple *t, int rev)
{
	union {
		__u8 b[16];
		__u32 w[4];
		__u64 q[2];
	} l = {}, r = {};
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6) {
		BPF_CORE_READ_INTO(&l.b, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r.b, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		l.w[2] = r.w[2] = 0xffff0000; /* ::ffff:0:0/96 (bytes 00 00 ff ff, little endian) */
		BPF_CORE_READ_INTO(&l.w[3], sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&r.w[3], sk, __sk_common.skc_daddr);
	}
	__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (rev) {
		__builtin_memcpy(t->laddr, r.b, 16);
		__builtin_memcpy(t->raddr, l.b, 16);
		t->lport = rport;
		t->rport = lport;
	} else {
		__builtin_memcpy(t->laddr, l.b, 16);
		__builtin_memcpy(t->raddr, r.b, 16);
		t->lport = lport;
		t->rport = rport;
	}
	t->_pad = 0;
	if (r.q[0] != 0)
		return 0;
	if (r.w[2] == 0xffff0000)
		return r.b[12] == 127;          /* ::ffff:127.0.0.0/104 */
	return r.w[2] == 0 && r.w[3] == 0x01000000; /* ::1 */
}

/* The socket storage of `sk` (its role, its connection or its skipped verdict), or 0. */
static __always_inline struct conn *sk_conn(struct sock *sk)
{
	return bpf_sk_storage_get(&conns, sk, 0, 0);
}

static __always_inline int sk_closed(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_CLOSE;
}

/* Loopback dedup: the server end `c` (sock `sk`) changed: its copy in lo_servers first, then
 * the epoch (client ends read the epoch before the copy). */
static __always_inline void lo_sync(struct conn *c, struct sock *sk)
{
	struct dt_tuple t;
	if (sk_tuple(sk, &t, 0)) {
		struct lo_srv *s = bpf_map_lookup_elem(&lo_servers, &t);
		if (s) {
			s->gen = c->gen;
			s->announced = c->announced;
			s->allowed = c->allowed;
			s->other_path[0] = c->other_path[0];
			s->other_path[1] = c->other_path[1];
			s->id = c->id;
		}
	}
	lo_bump();
}

/* Announces a stored connection not yet announced; returns whether it is announced now. */
static __always_inline int announce(struct conn *c, struct sock *sk, __u32 tgid, __u32 fd)
{
	if (c->announced)
		return 1;
	if (emit_open(c, sk, tgid, fd))
		return 0;
	c->announced = 1;
	if (c->lo_srv)
		lo_sync(c, sk);
	return 1;
}

/*
 * A new connection for `sk`, first seen by (tgid, fd) (already checked to name it), in its
 * socket storage `st` (0: none yet; a role learnt at TCP_ESTABLISHED, or a skipped verdict of
 * an older config); or 0 when its ports are filtered out: then the storage says so with the
 * config generation, so later data on it costs one lookup until the config changes (it then
 * starts at position 0). Announced by the caller.
 */
static __always_inline struct conn *new_conn(struct dt_config *cfg, __u32 tgid, __u32 fd,
					     struct sock *sk, struct conn *st, __u64 len)
{
	__u32 zero = 0;
	/* A sock already closed (e.g. a request read after the peer's reset): its TCP_CLOSE event
	 * has passed, so user space would never see this connection end. Not tracked; its bytes
	 * are counted. */
	if (sk_closed(sk)) {
		count(DT_ST_AFTER_CLOSE, len);
		return 0;
	}
	if (!st) {
		st = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			count(DT_ST_CONN_FULL, 1); /* no memory for the storage */
			return 0;
		}
	}
	if (st->id)
		return st; /* another CPU made it a connection first */
	__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__u32 gen = cfg->v[DT_CFG_GEN];
	st->gen = gen;
	if (!ports_allowed(cfg, lport, rport)) {
		st->skipped = 1;
		return 0;
	}
	__u64 *ids = bpf_map_lookup_elem(&next_id, &zero);
	if (!ids)
		return 0;
	__u64 id = __sync_fetch_and_add(ids, 1) + 1;
	st->skipped = 0;
	st->lport = lport;
	st->rport = rport;
	st->tgid = tgid;
	st->fd = fd;
	st->ok_tgid = tgid;
	st->allowed = 1;
	st->mute_from[0] = DT_NONE;
	st->mute_from[1] = DT_NONE;
	if (cfg->v[DT_CFG_LOOPBACK_DEDUP] && st->role != DT_ROLE_UNKNOWN) {
		struct dt_tuple t;
		if (st->role == DT_ROLE_CLIENT)
			st->lo = sk_tuple(sk, &t, 0);
		else
			st->lo_srv = sk_tuple(sk, &t, 0);
	}
	if (__sync_val_compare_and_swap(&st->id, 0, id) != 0)
		return st; /* another CPU made it a connection in the meantime */
	if (sk_closed(sk)) {
		/* Closed in the meantime (on another CPU): its close event has passed; undo
		 * (nothing announced). */
		bpf_sk_storage_delete(&conns, sk);
		count(DT_ST_AFTER_CLOSE, len);
		return 0;
	}
	if (st->lo_srv)
		lo_sync(st, sk);
	return st;
}

/*
 * Loopback dedup: whether the bytes a loopback client end moves in `dir` are (or will be)
 * copied on its server end, so this end need not copy them. Yes when the server end is a
 * captured connection that has not lost bytes of that stream to another path (sendfile,
 * splice: then this end copies them); also yes for bytes this end *sends* while the server
 * end is established but has moved no bytes yet and no pid/cgroup filter could keep its
 * process out (the port filter treats both ends alike). In every other case this end copies:
 * a duplicate, never a loss (limit: a server whose very first bytes on the connection are
 * read by splice is not seen at all, so what the client sent before is lost, uncounted).
 * The server end's state comes from its lo_servers entry (its tuple is this end's, reversed).
 */
static __always_inline int peer_decide(struct dt_config *cfg, struct conn *c, struct sock *sk,
				       __u8 dir)
{
	struct dt_tuple t;
	sk_tuple(sk, &t, 1);
	struct lo_srv *s = bpf_map_lookup_elem(&lo_servers, &t);
	if (!s && !c->peer)
		return 0; /* server end not established (yet), or not on this host */
	if (s) {
		c->peer = 1;
		/* The same connection: a tuple can come back for another one. */
		if (s->id && (!c->peer_id || s->id == c->peer_id)) {
			c->peer_id = s->id;
			return s->announced && s->allowed && s->gen == cfg->v[DT_CFG_GEN] &&
			       !s->other_path[dir ^ 1];
		}
	}
	if (c->peer_id)
		/* The server end closed: what this end still moves was sent before that (copied
		 * there) or is never read. Keep the last decision. */
		return c->mute_from[dir] != DT_NONE;
	/* The server end has moved no bytes by a supported syscall yet. What this end receives
	 * was then sent some other way (or by a filtered-out process): copy it here. What this
	 * end sends, the server end reads later and copies. */
	return dir == DT_DIR_SEND && !cfg->v[DT_CFG_FILTER_PIDS] && !cfg->v[DT_CFG_FILTER_CGROUPS];
}

/* peer_decide(), reused while neither lo_epoch nor the config moved (the epoch is read before
 * the server end's state, which its writers change before they bump it). */
static __always_inline int peer_copies(struct dt_config *cfg, struct conn *c, struct sock *sk,
				       __u8 dir)
{
	if (!c->lo || !cfg->v[DT_CFG_LOOPBACK_DEDUP])
		return 0;
	__u32 zero = 0;
	__u64 *ep = bpf_map_lookup_elem(&lo_epoch, &zero);
	if (!ep)
		return peer_decide(cfg, c, sk, dir);
	__u32 epoch = (__u32)*ep;
	__u32 gen = cfg->v[DT_CFG_GEN];
	dir &= 1;
	if (c->dec_epoch == epoch && c->dec_gen == gen) {
		if (c->dec & (1 << dir))
			return (c->dec >> (2 + dir)) & 1;
	} else {
		c->dec = 0;
		c->dec_epoch = epoch;
		c->dec_gen = gen;
	}
	int yes = peer_decide(cfg, c, sk, dir) ? 1 : 0;
	c->dec |= (1 << dir) | (yes << (2 + dir));
	return yes;
}

/* Loopback dedup: `n` bytes at `pos` left to the server end (one run per direction). */
static __always_inline void mute(struct conn *c, __u8 dir, __u64 pos, __u64 n)
{
	if (c->mute_from[dir] == DT_NONE)
		c->mute_from[dir] = pos;
	count(DT_ST_DEDUP_BYTES, n);
}

/* Loopback dedup: this end copies again from `pos`: tells user space (one gap record of reason
 * DT_GAP_PEER_COPIED, which it skips silently) which bytes before it the server end has. */
static __always_inline void unmute(struct conn *c, __u32 tgid, __u8 dir, __u64 pos)
{
	__u64 from = c->mute_from[dir];
	if (from == DT_NONE)
		return;
	c->mute_from[dir] = DT_NONE;
	if (pos > from)
		emit_gap(c->id, tgid, dir, from, pos - from, DT_GAP_PEER_COPIED);
}

/* Ring record sizes: a data event reserves the smallest class that holds its payload (the
 * verifier wants a constant size), so one copy goes from user memory straight into the ring.
 * Classes a quarter to a half apart keep the unused tail of a record (and so the ring space
 * per byte, which matters when the reader falls behind) within 33 % above 1 KiB. */
#define DT_DATA_HDR 40 /* offsetof(struct dt_data_event, data) */
#define DT_EMIT_CLASS(SZ)                                                                  \
	if (n <= (SZ)) {                                                                   \
		rec = DT_DATA_HDR + (SZ);                                                  \
		e = bpf_ringbuf_reserve(&events, DT_DATA_HDR + (SZ), 0);                   \
		if (!e)                                                                    \
			goto full;                                                         \
		if (bpf_probe_read_user(e->data, n, (void *)src))                          \
			goto unreadable;                                                   \
		goto filled;                                                               \
	}

/* Submit flags for a record of `rec` ring bytes: a wake-up only for the one that makes this
 * CPU's produced bytes cross a multiple of the threshold (see DT_WAKE_BYTES_DEFAULT). */
static __always_inline __u64 wake_flags(struct dt_emit_ctx *x, __u64 rec)
{
	__u64 before = x->produced;
	__u64 after = before + rec;
	__u64 wake = x->wake;
	x->produced = after;
	if (wake && before / wake != after / wake)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/*
 * One data event: `n` bytes at user address `src` at stream position `pos`; the rest of the
 * event comes from this CPU's emit_ctx. A global (not inlined) function so the verifier
 * checks it once rather than in every iteration of the caller's loop. Returns 0 when the
 * event reached the ring buffer.
 */
__noinline int dt_emit_chunk(__u64 pos, __u64 src, __u64 n)
{
	__u32 zero = 0;
	struct dt_emit_ctx *x = bpf_map_lookup_elem(&emit_ctx, &zero);
	struct dt_stats *st = get_stats();
	struct dt_data_event *e;
	__u64 rec = 0;
	if (!x || !st)
		return -1;
	if (n > DT_CHUNK_MAX)
		n = DT_CHUNK_MAX;
	if (n == 0)
		return 0;
	DT_EMIT_CLASS(128)
	DT_EMIT_CLASS(256)
	DT_EMIT_CLASS(512)
	DT_EMIT_CLASS(1024)
	DT_EMIT_CLASS(1536)
	DT_EMIT_CLASS(2048)
	DT_EMIT_CLASS(3072)
	DT_EMIT_CLASS(4096)
	DT_EMIT_CLASS(6144)
	DT_EMIT_CLASS(8192)
	DT_EMIT_CLASS(12288)
	DT_EMIT_CLASS(DT_CHUNK_MAX)
	return -1;
filled:
	e->hdr.kind = DT_EV_DATA;
	e->hdr.tgid = x->tgid;
	e->hdr.conn_id = x->conn_id;
	e->hdr.ts_ns = x->ts_ns;
	e->pos = pos;
	e->len = n;
	e->dir = x->dir;
	e->syscall = x->syscall;
	e->_pad = 0;
	bpf_ringbuf_submit(e, wake_flags(x, rec));
	st->v[DT_ST_EVENTS] += 1;
	st->v[DT_ST_BYTES] += n;
	return 0;
unreadable:
	bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
	st->v[DT_ST_READ_FAILED] += n;
	emit_gap(x->conn_id, x->tgid, x->dir, pos, n, DT_GAP_READ_FAILED);
	return -1;
full:
	st->v[DT_ST_RB_FULL_EVENTS] += 1;
	st->v[DT_ST_RB_FULL_BYTES] += n;
	emit_gap(x->conn_id, x->tgid, x->dir, pos, n, DT_GAP_RINGBUF_FULL);
	return -1;
}

/*
 * Emits `len` bytes at user address `src` in chunks; returns the bytes accounted for (all of
 * them: a chunk that failed is reported as a gap by dt_emit_chunk). Global, verified once.
 */
__noinline __u64 dt_emit_range(__u64 pos, __u64 src, __u64 len)
{
	__u32 zero = 0;
	struct dt_emit_ctx *x = bpf_map_lookup_elem(&emit_ctx, &zero);
	if (!x)
		return 0;
	__u64 chunk = x->chunk;
	__u64 done = 0;
	for (int i = 0; i < DT_CHUNKS_MAX; i++) {
		if (done >= len)
			break;
		__u64 n = len - done;
		if (n > chunk)
			n = chunk;
		dt_emit_chunk(pos + done, src + done, n);
		done += n;
	}
	return done;
}

/*
 * Vectored I/O of at most SZ bytes (`left`) in one data event: every iovec piece is copied
 * into one ring record, so a writev of a header and a body costs one reserve/submit, not one
 * per piece. Every piece must start in the first DT_GATHER_HEAD bytes (a header, then a
 * body: nginx's and most servers' writev), and there be at most DT_GATHER_IOV pieces (their
 * iovecs are read in one copy): the verifier bounds a piece's offset and length
 * separately, so the record is HDR + DT_GATHER_HEAD + SZ. Returns the bytes copied (all of
 * `left`), or -1 when the caller should copy piece by piece (pieces further in, no room in
 * the ring, an unreadable iovec or piece: that path reports those exactly). Global, verified
 * once per class.
 */
#define DT_GATHER_HEAD 512
#define DT_GATHER_IOV 4 /* iovecs read at once (one helper call); more: piece by piece */
#define DT_GATHER(SZ)                                                                     \
	__noinline int dt_gather_##SZ(__u64 pos, __u64 iovp, __u64 n_iov, __u64 left)    \
	{                                                                                 \
		__u32 zero = 0;                                                           \
		struct dt_emit_ctx *x = bpf_map_lookup_elem(&emit_ctx, &zero);            \
		struct dt_stats *st = get_stats();                                        \
		if (!x || !st || left > (SZ) || n_iov > DT_GATHER_IOV || n_iov == 0)        \
			return -1;                                                        \
		struct dt_iovec iovs[DT_GATHER_IOV];                                      \
		if (bpf_probe_read_user(iovs, n_iov * sizeof(struct dt_iovec),            \
					(void *)iovp))                                    \
			return -1;                                                        \
		struct dt_data_event *e = bpf_ringbuf_reserve(                            \
			&events, DT_DATA_HDR + DT_GATHER_HEAD + (SZ), 0);                 \
		if (!e)                                                                   \
			return -1;                                                        \
		__u64 off = 0;                                                            \
		for (int j = 0; j < DT_GATHER_IOV; j++) {                                 \
			if (j >= n_iov || off >= left)                                    \
				break;                                                    \
			if (off >= DT_GATHER_HEAD)                                        \
				goto fail;                                                \
			struct dt_iovec iov = iovs[j];                                    \
			__u64 n = left - off;                                             \
			if (iov.len < n)                                                  \
				n = iov.len;                                              \
			if (n > (SZ))                                                     \
				n = (SZ);                                                 \
			if (bpf_probe_read_user(e->data + off, n, (void *)iov.base))      \
				goto fail;                                                \
			off += n;                                                         \
		}                                                                         \
		if (off < left)                                                           \
			goto fail; /* fewer iovec bytes than the syscall moved: odd */    \
		e->hdr.kind = DT_EV_DATA;                                                 \
		e->hdr.tgid = x->tgid;                                                    \
		e->hdr.conn_id = x->conn_id;                                              \
		e->hdr.ts_ns = x->ts_ns;                                                  \
		e->pos = pos;                                                             \
		e->len = off;                                                             \
		e->dir = x->dir;                                                          \
		e->syscall = x->syscall;                                                  \
		e->_pad = 0;                                                              \
		bpf_ringbuf_submit(e, wake_flags(x, DT_DATA_HDR + DT_GATHER_HEAD + (SZ)));\
		st->v[DT_ST_EVENTS] += 1;                                                 \
		st->v[DT_ST_BYTES] += off;                                                \
		return off;                                                               \
	fail:                                                                             \
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);                                 \
		return -1;                                                                \
	}

DT_GATHER(1024)
DT_GATHER(2048)
DT_GATHER(3072)
DT_GATHER(4096)

/* Whether the filters let `c` through for `tgid`, cached per config generation. */
static __always_inline int conn_allowed(struct dt_config *cfg, struct conn *c, __u32 tgid,
					struct sock *sk)
{
	__u32 gen = cfg->v[DT_CFG_GEN];
	if (c->gen != gen || c->ok_tgid != tgid) {
		__u8 was = c->allowed;
		__u32 was_gen = c->gen;
		c->allowed = tgid_allowed(cfg, tgid) && ports_allowed(cfg, c->lport, c->rport);
		c->ok_tgid = tgid;
		c->gen = gen;
		if (c->lo_srv && (c->allowed != was || gen != was_gen))
			lo_sync(c, sk);
	}
	return c->allowed;
}

/*
 * A process the pid/cgroup filters keep out moved `ret` bytes on socket `sk`. On a captured
 * connection (a socket shared with an allowed process, or a filter changed at run time) the
 * position still moves, so user space sees the bytes it did not get as a gap rather than a
 * stream silently missing them; on any other socket this costs one lookup.
 */
static __always_inline void filtered_out(struct sock *sk, int ret, __u8 dir)
{
	struct conn *c = sk_conn(sk);
	if (c && c->id)
		__sync_fetch_and_add(&c->pos[dir & 1], (__u64)ret);
}

static __always_inline void on_data(struct sock *sk, int ret, int flags, __u8 dir)
{
	if (ret <= 0)
		return;
	if (dir == DT_DIR_RECV && (flags & MSG_PEEK))
		return; /* the bytes stay in the socket and are read again */
	struct dt_config *cfg = get_config();
	if (!cfg)
		return;
	/* Direct (BTF-checked) loads from the task: no helper call for the ids. */
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	__u64 id = ((__u64)tgid << 32) | (__u32)task->pid;
	if (tgid == cfg->v[DT_CFG_SELF_TGID])
		return;
	dir &= 1;
	if (cfg->v[DT_CFG_FILTER_PIDS] || cfg->v[DT_CFG_FILTER_CGROUPS]) {
		/* Filtered-out processes stop here, before any hash lookup. */
		__u32 zero = 0;
		__u32 gen = cfg->v[DT_CFG_GEN];
		struct dt_verdicts *vs = bpf_map_lookup_elem(&verdicts, &zero);
		if (vs) {
			struct dt_verdict_slot *v = &vs->slot[(__u32)id & (DT_VERDICT_SLOTS - 1)];
			if (v->task != (__u64)task || v->pid_tgid != id || v->gen != gen) {
				v->allowed = tgid_allowed(cfg, tgid);
				v->task = (__u64)task;
				v->pid_tgid = id;
				v->gen = gen;
			}
			if (!v->allowed) {
				filtered_out(sk, ret, dir);
				return;
			}
		} else if (!tgid_allowed(cfg, tgid)) {
			filtered_out(sk, ret, dir);
			return;
		}
	}
	struct conn *st = sk_conn(sk); /* the sock's storage: a connection, a role, a verdict */
	struct conn *c = 0;
	if (st) {
		if (st->id)
			c = st;
		else if (st->skipped && st->gen == (__u32)cfg->v[DT_CFG_GEN])
			return; /* a known socket the port filter keeps out */
	}
	if (!c && !is_tcp(sk))
		return;

	/* Loopback dedup, fast path: a known client end whose server end copies these bytes only
	 * moves its position, whichever syscall moved them (the slow path below comes to the same
	 * on both of its branches), so it skips reading the syscall's registers. */
	if (c && c->lo && c->announced && conn_allowed(cfg, c, tgid, sk) &&
	    peer_copies(cfg, c, sk, dir)) {
		mute(c, dir, __sync_fetch_and_add(&c->pos[dir], (__u64)ret), ret);
		return;
	}

	/* Which syscall moved the bytes, and where they are in user memory. */
	__u64 nr = ~0ULL, fd = 0, buf = 0, arg2 = 0;
	/* Direct (BTF-checked) loads: no helper call per field. */
	if (!(task->flags & (PF_KTHREAD | PF_IO_WORKER))) {
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		nr = regs->orig_ax;
		fd = regs->di;
		buf = regs->si;
		arg2 = regs->dx;
	}
	__u8 syscall = 0;
	__u32 iovcnt = 0; /* 0: plain buffer */
	switch (nr) {
	case NR_READ:
		syscall = DT_SYS_READ;
		break;
	case NR_WRITE:
		syscall = DT_SYS_WRITE;
		break;
	case NR_READV:
		syscall = DT_SYS_READV;
		iovcnt = arg2 > 0xffff ? 0xffff : arg2;
		break;
	case NR_WRITEV:
		syscall = DT_SYS_WRITEV;
		iovcnt = arg2 > 0xffff ? 0xffff : arg2;
		break;
	case NR_SENDTO:
		syscall = DT_SYS_SENDTO;
		break;
	case NR_RECVFROM:
		syscall = DT_SYS_RECVFROM;
		break;
	case NR_SENDMSG:
	case NR_RECVMSG: {
		struct dt_user_msghdr m = {};
		if (bpf_probe_read_user(&m, sizeof(m), (void *)buf))
			break;
		syscall = nr == NR_SENDMSG ? DT_SYS_SENDMSG : DT_SYS_RECVMSG;
		buf = m.msg_iov;
		iovcnt = m.msg_iovlen > 0xffff ? 0xffff : m.msg_iovlen;
		break;
	}
	}
	/* A supported syscall on this very socket? Checked once per (tgid, fd) and sock. */
	if (syscall && (!c || c->tgid != tgid || c->fd != (__u32)fd)) {
		if (!fd_is_sock(task, fd, (__u64)sk))
			syscall = 0;
		else if (c) {
			c->tgid = tgid;
			c->fd = fd;
		}
	}
	if (!syscall) {
		/* Another path (sendfile, splice, io_uring, kernel): a gap on known connections
		 * (or, on a deduplicated loopback client end, bytes its server end copies). */
		if (c && c->announced) {
			__u64 p = __sync_fetch_and_add(&c->pos[dir], (__u64)ret);
			if (peer_copies(cfg, c, sk, dir)) {
				mute(c, dir, p, ret);
				return;
			}
			if (!c->other_path[dir]) {
				c->other_path[dir] = 1;
				if (c->lo_srv)
					lo_sync(c, sk);
			}
			count(DT_ST_OTHER_PATH, ret);
			if (ports_allowed(cfg, c->lport, c->rport)) {
				unmute(c, tgid, dir, p);
				emit_gap(c->id, tgid, dir, p, ret, DT_GAP_OTHER_PATH);
			}
		}
		return;
	}
	if (!c) {
		c = new_conn(cfg, tgid, fd, sk, st, ret);
		if (!c)
			return;
	}
	if (!announce(c, sk, tgid, fd))
		return;
	__u64 total = ret;
	__u64 pos0 = __sync_fetch_and_add(&c->pos[dir], total);
	if (!conn_allowed(cfg, c, tgid, sk))
		return; /* filtered out after the connection was first seen */
	if (peer_copies(cfg, c, sk, dir)) {
		mute(c, dir, pos0, total);
		return;
	}
	unmute(c, tgid, dir, pos0);

	__u32 zero = 0;
	struct dt_emit_ctx *x = bpf_map_lookup_elem(&emit_ctx, &zero);
	if (!x)
		return;
	x->conn_id = c->id;
	x->ts_ns = bpf_ktime_get_ns();
	x->tgid = tgid;
	x->dir = dir;
	x->syscall = syscall;
	__u64 chunk = cfg->v[DT_CFG_CHUNK_BYTES];
	x->chunk = chunk > 0 && chunk < DT_CHUNK_MAX ? chunk : DT_CHUNK_MAX;
	__u64 wake = cfg->v[DT_CFG_WAKE_BYTES];
	x->wake = wake ? wake : DT_WAKE_BYTES_DEFAULT;

	__u64 cap = cfg->v[DT_CFG_CAP_BYTES];
	if (cap > (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX)
		cap = (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX;
	__u64 left = total < cap ? total : cap; /* bytes we may copy */
	__u64 done = 0;                        /* bytes accounted for */
	int gathered = -1;
	if (iovcnt > 1 && left <= 4096) {
		__u64 n_iov = iovcnt < DT_IOV_MAX ? iovcnt : DT_IOV_MAX;
		if (left <= 1024)
			gathered = dt_gather_1024(pos0, buf, n_iov, left);
		else if (left <= 2048)
			gathered = dt_gather_2048(pos0, buf, n_iov, left);
		else if (left <= 3072)
			gathered = dt_gather_3072(pos0, buf, n_iov, left);
		else
			gathered = dt_gather_4096(pos0, buf, n_iov, left);
	}
	if (gathered >= 0) {
		done = gathered;
	} else if (!iovcnt && left <= x->chunk) {
		dt_emit_chunk(pos0, buf, left); /* one chunk: no loop (a failure is a gap) */
		done = left;
	} else if (!iovcnt) {
		done = dt_emit_range(pos0, buf, left);
	} else {
		__u32 n_iov = iovcnt < DT_IOV_MAX ? iovcnt : DT_IOV_MAX;
		for (__u32 j = 0; j < DT_IOV_MAX; j++) {
			if (j >= n_iov || done >= left)
				break;
			struct dt_iovec iov = {};
			if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(buf + j * sizeof(iov))))
				break;
			__u64 n = left - done;
			if (iov.len < n)
				n = iov.len;
			done += dt_emit_range(pos0 + done, iov.base, n);
		}
	}
	if (done < total) {
		__u64 missing = total - done;
		count(DT_ST_GAP_OVER_CAP, missing);
		emit_gap(c->id, tgid, dir, pos0 + done, missing,
			 done >= left ? DT_GAP_OVER_CAP : DT_GAP_IOV_LIMIT);
	}
}

/* TP_PROTO(struct sock *sk, int ret, int flags): BTF-typed (tp_btf), so `sk` is a sock pointer
 * the verifier knows, usable with socket storage. */
SEC("tp_btf/sock_send_length")
int dt_sock_send(__u64 *ctx)
{
	on_data((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2], DT_DIR_SEND);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int dt_sock_recv(__u64 *ctx)
{
	on_data((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2], DT_DIR_RECV);
	return 0;
}

/* Ends a stored connection: its close event (if user space knows it), then its storage. */
static __always_inline void forget_conn(struct conn *c, struct sock *sk)
{
	if (c->announced)
		emit_close(c);
	__u8 lo_srv = c->lo_srv;
	bpf_sk_storage_delete(&conns, sk);
	if (lo_srv)
		lo_bump();
}

/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate). A close event the
 * kernel skips (it does not run a program nested in itself on one CPU: a softirq's state
 * change while this program runs for another sock) leaves no stale state behind (the storage
 * goes with the sock), only a connection user space does not see end; the program's
 * recursion misses count those. */
SEC("tp_btf/inet_sock_set_state")
int dt_sock_state(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	if (newstate == TCP_ESTABLISHED) {
		__u8 role = oldstate == TCP_SYN_SENT  ? DT_ROLE_CLIENT
			    : oldstate == TCP_SYN_RECV ? DT_ROLE_SERVER
						       : DT_ROLE_UNKNOWN;
		if (role == DT_ROLE_UNKNOWN)
			return 0;
		struct conn *st = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		/* A connection already (TCP Fast Open data before the handshake ended) keeps its
		 * unknown role, as user space was told. */
		if (st && !st->id)
			st->role = role;
		if (role == DT_ROLE_SERVER) {
			struct dt_config *cfg = get_config();
			struct dt_tuple t;
			if (cfg && cfg->v[DT_CFG_LOOPBACK_DEDUP] && sk_tuple(sk, &t, 0)) {
				struct lo_srv fresh = {};
				bpf_map_update_elem(&lo_servers, &t, &fresh, BPF_ANY);
				lo_bump();
			}
		}
	} else if (newstate == TCP_CLOSE) {
		struct conn *c = sk_conn(sk);
		if (c && c->id) {
			if (c->role == DT_ROLE_SERVER) {
				struct dt_tuple t;
				if (sk_tuple(sk, &t, 0))
					bpf_map_delete_elem(&lo_servers, &t);
			}
			forget_conn(c, sk);
		} else {
			if (c)
				bpf_sk_storage_delete(&conns, sk);
			struct dt_config *cfg = get_config();
			struct dt_tuple t;
			if (cfg && cfg->v[DT_CFG_LOOPBACK_DEDUP] && sk_tuple(sk, &t, 0) &&
			    !bpf_map_delete_elem(&lo_servers, &t))
				lo_bump();
		}
	}
	return 0;
}
