// SPDX-License-Identifier: GPL-2.0
/*
 * deetune socket capture, on socket tracepoints only (no syscall tracepoints, so processes
 * that do not move bytes on a socket pay nothing).
 *
 * raw_tracepoint/sock_send_length and sock_recv_length fire in sock_sendmsg_nosec /
 * sock_recvmsg_nosec, in the calling task, once the bytes were moved (for a receive, they are
 * already in the user buffer). The syscall's own arguments are in the task's user pt_regs
 * (orig_ax = syscall number, di/si/dx = arguments): for the 8 supported syscalls
 * (read/write/readv/writev/sendto/recvfrom/sendmsg/recvmsg) the fd, the buffer (or iovec, or
 * msghdr) and the returned length give the payload, copied to the ring buffer in chunks, each
 * tagged with the per-direction byte position of its first byte, up to the per-syscall cap;
 * what is not copied is reported as a gap and counted in `stats`. Bytes moved on a known
 * connection by any other path (sendfile, splice, io_uring, sendmmsg, kernel threads) are
 * reported as a gap (DT_GAP_OTHER_PATH) and counted.
 * Connections are keyed by the sock: a new sock behind an fd is a new connection. The first
 * data event checks that the fd of the syscall names that sock (task->files->fdt->fd[fd]);
 * later events of the same (tgid, fd) skip the check.
 * raw_tracepoint/inet_sock_set_state gives the role (SYN_SENT -> ESTABLISHED: client,
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

struct conn {
	__u64 id;
	__u64 pos[2]; /* next byte position per enum dt_dir */
	__u32 tgid;   /* the (tgid, fd) last checked to name this sock */
	__u32 fd;
	__u16 lport;
	__u16 rport;
	__u8 role;
	__u8 announced; /* 0: its open event found no room in the ring buffer (retried) */
	__u8 _pad[2];
};

struct dt_config {
	__u64 v[DT_CFG_SLOTS];
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
	__uint(max_entries, DT_ST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
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
	__type(value, struct dt_data_event);
} scratch SEC(".maps");

/* Captured connections by sock address; deleted when the sock reaches TCP_CLOSE. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/* Sockets the port filter keeps out, by sock address -> lport << 16 | rport: kept apart from
 * `conns` so that other traffic never evicts a captured connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} skipped SEC(".maps");

/* Role learnt at TCP_ESTABLISHED, by sock address; consumed at the first data event. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} roles SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} filter_pids SEC(".maps");

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
 * Wake-up batching: waking the reader for every event costs a context switch per syscall.
 * Events are submitted without a wake-up until DT_WAKE_BYTES are waiting; user space also
 * drains the ring on a short timer (see recorder/src/capture/load.rs, DRAIN_EVERY).
 */
#define DT_WAKE_BYTES (64 * 1024)

static __always_inline __u64 wake_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= DT_WAKE_BYTES ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += n; /* per-CPU: no atomics needed */
}

static __always_inline struct dt_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
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
	bpf_ringbuf_submit(e, wake_flags());
	count(DT_ST_EVENTS, 1);
}

static __always_inline void emit_close(struct conn *c)
{
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
	bpf_ringbuf_submit(e, wake_flags());
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
	bpf_ringbuf_submit(e, wake_flags());
	count(DT_ST_EVENTS, 1);
	return 0;
}

/* Announces a stored connection not yet announced; returns whether it is announced now. */
static __always_inline int announce(struct conn *c, struct sock *sk, __u32 tgid, __u32 fd)
{
	if (c->announced)
		return 1;
	if (emit_open(c, sk, tgid, fd))
		return 0;
	c->announced = 1;
	return 1;
}

/*
 * A new connection for `skp`, first seen by (tgid, fd) (already checked to name it), stored in
 * `conns`; or 0 when its ports are filtered out: then remembered in `skipped`, so later data
 * on it costs two lookups, until the port filter lets it through (it then starts at
 * position 0). Announced by the caller.
 */
static __always_inline struct conn *new_conn(struct dt_config *cfg, __u32 tgid, __u32 fd,
					     __u64 skp)
{
	struct sock *sk = (struct sock *)skp;
	struct conn nc = {};
	__u32 zero = 0;
	__u64 *ids = bpf_map_lookup_elem(&next_id, &zero);
	if (!ids)
		return 0;
	nc.id = __sync_fetch_and_add(ids, 1) + 1;
	nc.tgid = tgid;
	nc.fd = fd;
	nc.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	nc.rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!ports_allowed(cfg, nc.lport, nc.rport)) {
		__u32 ports = (__u32)nc.lport << 16 | nc.rport;
		bpf_map_update_elem(&skipped, &skp, &ports, BPF_ANY);
		return 0;
	}
	__u8 *role = bpf_map_lookup_elem(&roles, &skp);
	if (role) {
		nc.role = *role;
		bpf_map_delete_elem(&roles, &skp);
	}
	if (bpf_map_update_elem(&conns, &skp, &nc, BPF_NOEXIST)) {
		/* Another CPU stored it first (or the table is full): use what is there. */
		struct conn *c = bpf_map_lookup_elem(&conns, &skp);
		if (!c)
			count(DT_ST_CONN_FULL, 1);
		return c;
	}
	return bpf_map_lookup_elem(&conns, &skp);
}

/*
 * One data event: `n` bytes at user address `src`. A global (not inlined) function so the
 * verifier checks it once rather than in every iteration of the caller's loop.
 * meta = tgid | dir << 32 | syscall << 40. Returns 0 when the event reached the ring buffer.
 */
__noinline int dt_emit_chunk(__u64 conn_id, __u64 meta, __u64 pos, __u64 src, __u64 n)
{
	__u32 zero = 0;
	__u32 tgid = meta;
	__u8 dir = (meta >> 32) & 1;
	__u8 syscall = meta >> 40;
	struct dt_data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return -1;
	if (n > DT_CHUNK_MAX)
		n = DT_CHUNK_MAX;
	e->hdr.kind = DT_EV_DATA;
	e->hdr.tgid = tgid;
	e->hdr.conn_id = conn_id;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->pos = pos;
	e->len = n;
	e->dir = dir;
	e->syscall = syscall;
	e->_pad = 0;
	if (bpf_probe_read_user(e->data, n, (void *)src)) {
		count(DT_ST_READ_FAILED, n);
		emit_gap(conn_id, tgid, dir, pos, n, DT_GAP_READ_FAILED);
		return -1;
	}
	if (bpf_ringbuf_output(&events, e, offsetof(struct dt_data_event, data) + n,
			       wake_flags())) {
		count(DT_ST_RB_FULL_EVENTS, 1);
		count(DT_ST_RB_FULL_BYTES, n);
		emit_gap(conn_id, tgid, dir, pos, n, DT_GAP_RINGBUF_FULL);
		return -1;
	}
	count(DT_ST_EVENTS, 1);
	count(DT_ST_BYTES, n);
	return 0;
}

/*
 * Emits `len` bytes at user address `src` in chunks; returns the bytes accounted for (all of
 * them: a chunk that failed is reported as a gap by dt_emit_chunk). Global, verified once.
 */
__noinline __u64 dt_emit_range(__u64 conn_id, __u64 meta, __u64 pos, __u64 src, __u64 len)
{
	__u64 chunk = DT_CHUNK_MAX;
	struct dt_config *cfg = get_config();
	if (cfg && cfg->v[DT_CFG_CHUNK_BYTES] > 0 && cfg->v[DT_CFG_CHUNK_BYTES] < DT_CHUNK_MAX)
		chunk = cfg->v[DT_CFG_CHUNK_BYTES];
	__u64 done = 0;
	for (int i = 0; i < DT_CHUNKS_MAX; i++) {
		if (done >= len)
			break;
		__u64 n = len - done;
		if (n > chunk)
			n = chunk;
		dt_emit_chunk(conn_id, meta, pos + done, src + done, n);
		done += n;
	}
	return done;
}

static __always_inline void on_data(__u64 skp, int ret, int flags, __u8 dir)
{
	if (ret <= 0)
		return;
	if (dir == DT_DIR_RECV && (flags & MSG_PEEK))
		return; /* the bytes stay in the socket and are read again */
	struct dt_config *cfg = get_config();
	if (!cfg)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!tgid_allowed(cfg, tgid))
		return;
	struct conn *c = bpf_map_lookup_elem(&conns, &skp);
	if (!c) {
		__u32 *ports = bpf_map_lookup_elem(&skipped, &skp);
		if (ports) {
			if (!ports_allowed(cfg, *ports >> 16, *ports & 0xffff))
				return; /* a known socket the port filter keeps out */
			bpf_map_delete_elem(&skipped, &skp);
		} else if (!is_tcp((struct sock *)skp)) {
			return;
		}
	}

	/* Which syscall moved the bytes, and where they are in user memory. */
	struct task_struct *task = bpf_get_current_task_btf();
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
		if (!fd_is_sock(task, fd, skp))
			syscall = 0;
		else if (c) {
			c->tgid = tgid;
			c->fd = fd;
		}
	}
	if (!syscall) {
		/* Another path (sendfile, splice, io_uring, kernel): a gap on known connections. */
		if (c && c->announced) {
			__u64 p = __sync_fetch_and_add(&c->pos[dir & 1], (__u64)ret);
			count(DT_ST_OTHER_PATH, ret);
			if (ports_allowed(cfg, c->lport, c->rport))
				emit_gap(c->id, tgid, dir & 1, p, ret, DT_GAP_OTHER_PATH);
		}
		return;
	}
	if (!c) {
		c = new_conn(cfg, tgid, fd, skp);
		if (!c)
			return;
	}
	if (!announce(c, (struct sock *)skp, tgid, fd))
		return;
	dir &= 1;
	__u64 total = ret;
	__u64 pos0 = __sync_fetch_and_add(&c->pos[dir], total);
	if (!ports_allowed(cfg, c->lport, c->rport))
		return; /* filtered out after the connection was first seen */

	__u64 conn_id = c->id;
	__u64 meta = tgid | ((__u64)dir << 32) | ((__u64)syscall << 40);
	__u64 cap = cfg->v[DT_CFG_CAP_BYTES];
	if (cap > (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX)
		cap = (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX;
	__u64 left = total < cap ? total : cap; /* bytes we may copy */
	__u64 done = 0;                        /* bytes accounted for */
	if (!iovcnt) {
		done = dt_emit_range(conn_id, meta, pos0, buf, left);
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
			done += dt_emit_range(conn_id, meta, pos0 + done, iov.base, n);
		}
	}
	if (done < total) {
		__u64 missing = total - done;
		count(DT_ST_GAP_OVER_CAP, missing);
		emit_gap(conn_id, tgid, dir, pos0 + done, missing,
			 done >= left ? DT_GAP_OVER_CAP : DT_GAP_IOV_LIMIT);
	}
}

/* TP_PROTO(struct sock *sk, int ret, int flags); the int arguments are zero-extended. */
SEC("raw_tracepoint/sock_send_length")
int dt_sock_send(struct bpf_raw_tracepoint_args *ctx)
{
	on_data(ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], DT_DIR_SEND);
	return 0;
}

SEC("raw_tracepoint/sock_recv_length")
int dt_sock_recv(struct bpf_raw_tracepoint_args *ctx)
{
	on_data(ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], DT_DIR_RECV);
	return 0;
}

/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate). */
SEC("raw_tracepoint/inet_sock_set_state")
int dt_sock_state(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 sk = ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	if (newstate == TCP_ESTABLISHED) {
		__u8 role = oldstate == TCP_SYN_SENT  ? DT_ROLE_CLIENT
			    : oldstate == TCP_SYN_RECV ? DT_ROLE_SERVER
						       : DT_ROLE_UNKNOWN;
		if (role != DT_ROLE_UNKNOWN)
			bpf_map_update_elem(&roles, &sk, &role, BPF_ANY);
	} else if (newstate == TCP_CLOSE) {
		struct conn *c = bpf_map_lookup_elem(&conns, &sk);
		if (c) {
			if (c->announced)
				emit_close(c);
			bpf_map_delete_elem(&conns, &sk);
		} else {
			bpf_map_delete_elem(&skipped, &sk);
		}
		bpf_map_delete_elem(&roles, &sk);
	}
	return 0;
}
