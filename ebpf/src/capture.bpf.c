// SPDX-License-Identifier: GPL-2.0
/*
 * deetune socket capture.
 *
 * sys_enter_{read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg} look up the file behind
 * the fd (task->files->fdt->fd[fd]); only when it is a TCP socket (IPv4/IPv6) do they remember
 * the sock, fd and buffer (or iovec) per thread in `active` (other files cost no map write).
 * sys_exit_* then copies the returned number of bytes to the ring
 * buffer in chunks, each tagged with the per-direction byte position of its first byte, up to
 * the per-syscall cap; what is not copied is reported as a gap and counted in `stats`.
 * Connections are keyed by (tgid, fd) with a new id when the socket behind the fd changes;
 * connect/accept tell the role, close ends the connection.
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
#define EINPROGRESS 115

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
	struct files_struct *files;
} __attribute__((preserve_access_index));

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_STREAM 1

/*
 * The TCP sock behind `fd` of the current process, or 0: walks task->files->fdt->fd[fd] and
 * checks the inode is a socket. A few kernel reads instead of a map update, so a syscall on
 * a file, pipe or UDP socket costs no map write at all.
 */
static __always_inline __u64 fd_tcp_sock(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
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
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return 0;
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return (__u64)sk;
}

/* User-space layouts read with bpf_probe_read_user (x86_64 / arm64 LP64). */
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

/* Tracepoint contexts (see /sys/kernel/tracing/events/<cat>/<name>/format). */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__s64 ret;
};

/* A syscall in flight on one thread. */
struct active {
	__u64 buf;    /* buffer, or iovec array */
	__u64 sk;     /* the TCP sock behind fd */
	__u32 fd;
	__u32 iovcnt; /* 0: plain buffer */
	__u8 syscall;
	__u8 dir;
	__u8 _pad[6];
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn {
	__u64 id;
	__u64 sk;
	__u64 pos[2]; /* next byte position per enum dt_dir */
	__u16 lport;
	__u16 rport;
	__u8 role;
	__u8 announced; /* the open event reached the ring buffer */
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

/* Plain (preallocated) hash: cheaper than LRU for the update/delete every hooked syscall
 * pays; sys_exit always deletes the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct active);
} active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

/* Role learnt from connect/accept, consumed when the connection's first data is seen. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, __u8);
} roles SEC(".maps");

/* connect() in flight: pid_tgid -> fd. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} connecting SEC(".maps");

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

static __always_inline void enter(__u8 syscall, __u8 dir, __u64 fd, __u64 buf, __u32 iovcnt,
				  __u64 flags)
{
	if (flags & MSG_PEEK)
		return; /* the bytes stay in the socket and are read again */
	struct dt_config *cfg = get_config();
	if (!cfg)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	if (!tgid_allowed(cfg, id >> 32))
		return;
	__u64 sk = fd_tcp_sock(fd);
	if (!sk)
		return;
	struct active a = {};
	a.sk = sk;
	a.buf = buf;
	a.fd = fd;
	a.iovcnt = iovcnt;
	a.syscall = syscall;
	a.dir = dir;
	if (bpf_map_update_elem(&active, &id, &a, BPF_ANY))
		count(DT_ST_ACTIVE_FULL, 1);
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

static __always_inline void emit_close(struct conn *c, __u32 tgid)
{
	struct dt_close_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DT_ST_CONTROL_LOST, 1);
		return;
	}
	e->hdr.kind = DT_EV_CLOSE;
	e->hdr.tgid = tgid;
	e->hdr.conn_id = c->id;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->sent = c->pos[DT_DIR_SEND];
	e->received = c->pos[DT_DIR_RECV];
	bpf_ringbuf_submit(e, wake_flags());
	count(DT_ST_EVENTS, 1);
}

static __always_inline void emit_open(struct conn *c, struct sock *sk, __u32 tgid, __u32 fd)
{
	struct dt_open_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DT_ST_CONTROL_LOST, 1);
		return;
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
	c->announced = 1;
}

/* The connection behind (tgid, fd) now backed by `skp`: existing, or new (open event). */
static __always_inline struct conn *get_conn(struct dt_config *cfg, __u32 tgid, __u32 fd,
					     __u64 skp)
{
	struct conn_key key = { .tgid = tgid, .fd = fd };
	struct sock *sk = (struct sock *)skp;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->sk == skp) {
		if (!c->announced)
			emit_open(c, sk, tgid, fd);
		return c;
	}
	if (c) {
		/* The fd now names another socket (dup2, or a missed close). */
		emit_close(c, tgid);
		bpf_map_delete_elem(&conns, &key);
	}
	__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!ports_allowed(cfg, lport, rport))
		return 0;

	struct conn nc = {};
	__u32 zero = 0;
	__u64 *ids = bpf_map_lookup_elem(&next_id, &zero);
	if (!ids)
		return 0;
	nc.id = __sync_fetch_and_add(ids, 1) + 1;
	nc.sk = skp;
	nc.lport = lport;
	nc.rport = rport;
	__u8 *role = bpf_map_lookup_elem(&roles, &key);
	if (role) {
		nc.role = *role;
		bpf_map_delete_elem(&roles, &key);
	}
	if (bpf_map_update_elem(&conns, &key, &nc, BPF_ANY)) {
		count(DT_ST_CONN_FULL, 1);
		return 0;
	}
	c = bpf_map_lookup_elem(&conns, &key);
	if (c)
		emit_open(c, sk, tgid, fd);
	return c;
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

static __always_inline void on_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct active *ap = bpf_map_lookup_elem(&active, &id);
	if (!ap)
		return;
	struct active a = *ap;
	bpf_map_delete_elem(&active, &id);
	if (ret <= 0)
		return;
	struct dt_config *cfg = get_config();
	if (!cfg)
		return;
	__u32 tgid = id >> 32;
	struct conn *c = get_conn(cfg, tgid, a.fd, a.sk);
	if (!c)
		return;
	__u8 dir = a.dir & 1;
	__u64 total = ret;
	__u64 pos0 = __sync_fetch_and_add(&c->pos[dir], total);
	if (!ports_allowed(cfg, c->lport, c->rport))
		return; /* filtered out after the connection was first seen */

	__u64 conn_id = c->id;
	__u64 meta = tgid | ((__u64)dir << 32) | ((__u64)a.syscall << 40);
	__u64 cap = cfg->v[DT_CFG_CAP_BYTES];
	if (cap > (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX)
		cap = (__u64)DT_CHUNK_MAX * DT_CHUNKS_MAX;
	__u64 left = total < cap ? total : cap; /* bytes we may copy */
	__u64 done = 0;                        /* bytes accounted for */
	if (!a.iovcnt) {
		done = dt_emit_range(conn_id, meta, pos0, a.buf, left);
	} else {
		__u32 iovcnt = a.iovcnt < DT_IOV_MAX ? a.iovcnt : DT_IOV_MAX;
		for (__u32 j = 0; j < DT_IOV_MAX; j++) {
			if (j >= iovcnt || done >= left)
				break;
			struct dt_iovec iov = {};
			if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(a.buf + j * sizeof(iov))))
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

/* Reads the iovec pointer and count out of a user msghdr. */
static __always_inline void enter_msg(__u8 syscall, __u8 dir, __u64 fd, __u64 msgp, __u64 flags)
{
	struct dt_user_msghdr m = {};
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msgp))
		return;
	if (m.msg_iovlen == 0)
		return;
	enter(syscall, dir, fd, m.msg_iov, m.msg_iovlen > 0xffff ? 0xffff : m.msg_iovlen, flags);
}

SEC("tracepoint/syscalls/sys_enter_read")
int dt_enter_read(struct sys_enter_ctx *ctx)
{
	enter(DT_SYS_READ, DT_DIR_RECV, ctx->args[0], ctx->args[1], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int dt_enter_write(struct sys_enter_ctx *ctx)
{
	enter(DT_SYS_WRITE, DT_DIR_SEND, ctx->args[0], ctx->args[1], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_readv")
int dt_enter_readv(struct sys_enter_ctx *ctx)
{
	if (ctx->args[2])
		enter(DT_SYS_READV, DT_DIR_RECV, ctx->args[0], ctx->args[1], ctx->args[2] & 0xffff, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int dt_enter_writev(struct sys_enter_ctx *ctx)
{
	if (ctx->args[2])
		enter(DT_SYS_WRITEV, DT_DIR_SEND, ctx->args[0], ctx->args[1], ctx->args[2] & 0xffff, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int dt_enter_sendto(struct sys_enter_ctx *ctx)
{
	enter(DT_SYS_SENDTO, DT_DIR_SEND, ctx->args[0], ctx->args[1], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int dt_enter_recvfrom(struct sys_enter_ctx *ctx)
{
	enter(DT_SYS_RECVFROM, DT_DIR_RECV, ctx->args[0], ctx->args[1], 0, ctx->args[3]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int dt_enter_sendmsg(struct sys_enter_ctx *ctx)
{
	enter_msg(DT_SYS_SENDMSG, DT_DIR_SEND, ctx->args[0], ctx->args[1], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int dt_enter_recvmsg(struct sys_enter_ctx *ctx)
{
	enter_msg(DT_SYS_RECVMSG, DT_DIR_RECV, ctx->args[0], ctx->args[1], ctx->args[2]);
	return 0;
}

#define EXIT_PROG(name)                                      \
	SEC("tracepoint/syscalls/sys_exit_" #name)           \
	int dt_exit_##name(struct sys_exit_ctx *ctx)         \
	{                                                    \
		on_exit(ctx->ret);                           \
		return 0;                                    \
	}

EXIT_PROG(read)
EXIT_PROG(write)
EXIT_PROG(readv)
EXIT_PROG(writev)
EXIT_PROG(sendto)
EXIT_PROG(recvfrom)
EXIT_PROG(sendmsg)
EXIT_PROG(recvmsg)

SEC("tracepoint/syscalls/sys_enter_connect")
int dt_enter_connect(struct sys_enter_ctx *ctx)
{
	struct dt_config *cfg = get_config();
	if (!cfg)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	if (!tgid_allowed(cfg, id >> 32))
		return 0;
	__u32 fd = ctx->args[0];
	bpf_map_update_elem(&connecting, &id, &fd, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int dt_exit_connect(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 *fdp = bpf_map_lookup_elem(&connecting, &id);
	if (!fdp)
		return 0;
	struct conn_key key = { .tgid = id >> 32, .fd = *fdp };
	bpf_map_delete_elem(&connecting, &id);
	if (ctx->ret == 0 || ctx->ret == -EINPROGRESS) {
		__u8 role = DT_ROLE_CLIENT;
		bpf_map_update_elem(&roles, &key, &role, BPF_ANY);
	}
	return 0;
}

static __always_inline void accepted(long ret)
{
	if (ret < 0)
		return;
	struct dt_config *cfg = get_config();
	if (!cfg)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	if (!tgid_allowed(cfg, id >> 32))
		return;
	struct conn_key key = { .tgid = id >> 32, .fd = ret };
	__u8 role = DT_ROLE_SERVER;
	bpf_map_update_elem(&roles, &key, &role, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int dt_exit_accept(struct sys_exit_ctx *ctx)
{
	accepted(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int dt_exit_accept4(struct sys_exit_ctx *ctx)
{
	accepted(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int dt_enter_close(struct sys_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct conn_key key = { .tgid = id >> 32, .fd = ctx->args[0] };
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c) {
		emit_close(c, key.tgid);
		bpf_map_delete_elem(&conns, &key);
	}
	bpf_map_delete_elem(&roles, &key);
	return 0;
}
