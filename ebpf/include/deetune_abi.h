/* SPDX-License-Identifier: Apache-2.0 */
/*
 * deetune kernel <-> user space ABI: the ring-buffer event layout, the config slots, the
 * stats slots. Mirrored in Rust by ebpf/src/lib.rs with size/offset assertions: change both.
 * Only fixed-width types; every struct is 8-byte aligned with explicit padding.
 */
#ifndef DEETUNE_ABI_H
#define DEETUNE_ABI_H

#ifndef __VMLINUX_H__
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
#endif

/* Largest payload of one data event (the per-CPU scratch and the event size). */
#define DT_CHUNK_MAX 16384
/* Most chunks one syscall emits: the per-syscall cap is at most DT_CHUNK_MAX * DT_CHUNKS_MAX. */
#define DT_CHUNKS_MAX 64
/* Most iovec entries looked at per readv/writev/sendmsg/recvmsg; the rest is a gap. */
#define DT_IOV_MAX 16

enum dt_event_kind {
	DT_EV_OPEN = 1,
	DT_EV_DATA = 2,
	DT_EV_GAP = 3,
	DT_EV_CLOSE = 4,
};

/* Direction as seen by the local socket. */
enum dt_dir {
	DT_DIR_SEND = 0,
	DT_DIR_RECV = 1,
};

enum dt_role {
	DT_ROLE_UNKNOWN = 0,
	DT_ROLE_CLIENT = 1, /* connect() */
	DT_ROLE_SERVER = 2, /* accept()/accept4() */
};

enum dt_gap_reason {
	DT_GAP_OVER_CAP = 1,
	DT_GAP_RINGBUF_FULL = 2,
	DT_GAP_READ_FAILED = 3,
	DT_GAP_IOV_LIMIT = 4,
	DT_GAP_OTHER_PATH = 5, /* moved by sendfile/splice/io_uring/sendmmsg/a kernel thread */
	DT_GAP_PEER_COPIED = 6, /* loopback dedup: not copied here, the captured server end has them */
};

enum dt_syscall {
	DT_SYS_READ = 1,
	DT_SYS_WRITE = 2,
	DT_SYS_READV = 3,
	DT_SYS_WRITEV = 4,
	DT_SYS_SENDTO = 5,
	DT_SYS_RECVFROM = 6,
	DT_SYS_SENDMSG = 7,
	DT_SYS_RECVMSG = 8,
};

/* Slots of the `config` array map (u64 each), written by user space. */
enum dt_config_slot {
	DT_CFG_SELF_TGID = 0,     /* never capture this process */
	DT_CFG_FILTER_PIDS = 1,   /* non-zero: only tgids in `filter_pids` */
	DT_CFG_FILTER_CGROUPS = 2,/* non-zero: only cgroup ids in `filter_cgroups` */
	DT_CFG_FILTER_PORTS = 3,  /* non-zero: only connections with a port in `filter_ports` */
	DT_CFG_CAP_BYTES = 4,     /* bytes copied per syscall at most */
	DT_CFG_CHUNK_BYTES = 5,   /* payload bytes per data event (<= DT_CHUNK_MAX) */
	DT_CFG_LOOPBACK_DEDUP = 6,/* non-zero: loopback client ends of captured servers copy nothing */
	DT_CFG_GEN = 7,           /* bumped by user space on every config write (cached verdicts) */
	DT_CFG_WAKE_BYTES = 8,    /* wake the reader when a CPU's produced bytes cross a multiple */
	DT_CFG_SLOTS = 16,
};

/* Slots of the per-CPU `stats` array map (u64 each), counted by the kernel. */
enum dt_stat_slot {
	DT_ST_EVENTS = 0,          /* events written to the ring buffer */
	DT_ST_BYTES = 1,           /* payload bytes written to the ring buffer */
	DT_ST_GAP_OVER_CAP = 2,    /* bytes beyond the per-syscall cap (or iovec limit) */
	DT_ST_RB_FULL_EVENTS = 3,  /* events that found no room in the ring buffer */
	DT_ST_RB_FULL_BYTES = 4,   /* payload bytes of those */
	DT_ST_READ_FAILED = 5,     /* bytes the kernel could not copy from user memory */
	DT_ST_ACTIVE_FULL = 6,     /* unused since the socket-tracepoint capture (always 0) */
	DT_ST_CONN_FULL = 7,       /* connections not tracked: no memory for their socket storage */
	DT_ST_CONTROL_LOST = 8,    /* open/close/gap events that found no room */
	DT_ST_OTHER_PATH = 9,      /* bytes of known connections moved by an unsupported path */
	DT_ST_DEDUP_BYTES = 10,    /* loopback dedup: client-end bytes left to the server end */
	DT_ST_AFTER_CLOSE = 11,    /* bytes on a sock already closed, with no tracked connection */
	DT_ST_STALE = 12,          /* unused since connections live in socket storage (always 0) */
	DT_ST_SLOTS = 16,
};

/* The per-CPU `stats` map's single value. */
struct dt_stats {
	__u64 v[DT_ST_SLOTS];
};

struct dt_header {
	__u32 kind;    /* enum dt_event_kind */
	__u32 tgid;
	__u64 conn_id; /* unique per capture: one per socket (a new socket behind an fd: new id) */
	__u64 ts_ns;   /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
};

struct dt_open_event {
	struct dt_header hdr;
	__u64 cgroup_id;
	__u32 fd;
	__u16 family;  /* AF_INET or AF_INET6 */
	__u8 role;     /* enum dt_role */
	__u8 _pad0;
	__u16 lport;   /* host byte order */
	__u16 rport;   /* host byte order */
	__u32 _pad1;
	__u8 laddr[16]; /* network byte order; IPv4 in the first 4 bytes */
	__u8 raddr[16];
	char comm[16];
};

struct dt_data_event {
	struct dt_header hdr;
	__u64 pos;     /* per-direction byte position of data[0] */
	__u32 len;     /* bytes in data */
	__u8 dir;      /* enum dt_dir */
	__u8 syscall;  /* enum dt_syscall */
	__u16 _pad;
	__u8 data[DT_CHUNK_MAX]; /* only `len` bytes are sent */
};

struct dt_gap_event {
	struct dt_header hdr;
	__u64 pos;     /* position of the first missing byte */
	__u64 len;     /* missing bytes */
	__u8 dir;
	__u8 reason;   /* enum dt_gap_reason */
	__u8 _pad[6];
};

struct dt_close_event {
	struct dt_header hdr;
	__u64 sent;     /* final send position */
	__u64 received; /* final receive position */
};

#endif
